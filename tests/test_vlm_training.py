"""Generative VLM training on easy-VQA questions: label masking, overfitting, greedy answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlkit
from vlkit.data.datasets.vqa_text import (
    IGNORE_INDEX,
    EasyVQAQuestions,
    collate_vqa_text,
    load_easy_vqa_questions,
)
from vlkit.evaluation.generative import answer_accuracy
from vlkit.models.decoder import DecoderConfig
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.fusion_vlm import FusionVLMConfig, build_fusion_vlm
from vlkit.training import trainer as trainer_module
from vlkit.training.config import TrainConfig
from vlkit.training.vlm_task import VQALMTask, build_vlm_inputs

pytest.importorskip("easy_vqa")

MAX_LENGTH = 16
STEPS = 30


@pytest.fixture(scope="module")
def dataset() -> EasyVQAQuestions:
    """The first 16 easy-VQA train questions (images 0-2, answers of 5 kinds)."""
    triples, paths = load_easy_vqa_questions("train")
    return EasyVQAQuestions(
        transform=vlkit.get_transform("small-rn-64"),
        tokenizer=vlkit.get_tokenizer("clip"),
        max_length=MAX_LENGTH,
        samples=triples[:16],
        image_paths=paths,
    )


def test_sample_labels_mask_prompt_and_padding(dataset: EasyVQAQuestions) -> None:
    tok = dataset.tokenizer
    item = dataset[(1, 7)]  # "what color is the shape?" -> "blue"
    prompt = [tok.sot_token_id, *tok.encode(dataset.question(1))]
    answer = [*tok.encode("blue"), tok.eot_token_id]
    n = len(prompt) + len(answer)
    assert item["image"].shape == (3, 64, 64)
    assert item["input_ids"][:n].tolist() == prompt + answer
    assert (item["input_ids"][n:] == tok.pad_token_id).all()
    expected = [IGNORE_INDEX] * len(prompt) + answer + [IGNORE_INDEX] * (MAX_LENGTH - n)
    assert item["labels"].tolist() == expected
    assert item["attention_mask"].tolist() == [1] * n + [0] * (MAX_LENGTH - n)
    # Keyed and plain access agree on the text; the key is accepted either way.
    assert torch.equal(dataset[1]["labels"], item["labels"])


def test_vlm_inputs_mask_image_positions(dataset: EasyVQAQuestions) -> None:
    batch = collate_vqa_text([dataset[i] for i in range(3)])
    ids, labels, mask = build_vlm_inputs(
        batch["input_ids"], batch["labels"], 4, 999, batch["attention_mask"]
    )
    assert ids.shape == labels.shape == mask.shape == (3, 4 + MAX_LENGTH)
    assert (ids[:, :4] == 999).all() and (labels[:, :4] == IGNORE_INDEX).all()
    assert (mask[:, :4] == 1).all()
    for row in range(3):
        prompt_len = len(dataset.prompt_ids(row))
        targets = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        answer_len = int((batch["labels"][row] != IGNORE_INDEX).sum())
        assert targets == list(range(4 + prompt_len, 4 + prompt_len + answer_len))
        assert torch.equal(ids[row, 4:], batch["input_ids"][row])


@pytest.fixture(scope="module")
def overfit(dataset: EasyVQAQuestions, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Overfits a small LLaVA on the 16 samples with the Trainer (one epoch = one batch).

    The CLIP tower (trainable here) feeds an MLP projector and a small decoder over the CLIP
    vocabulary plus one reserved `<image>` id.
    """
    torch.manual_seed(0)
    clip = vlkit.create_model("small-rn-64")
    vocab = dataset.tokenizer.vocab_size
    decoder = DecoderConfig(
        vocab_size=vocab + 1, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=2,
        num_kv_heads=2,
    )  # fmt: skip
    config = FusionVLMConfig(kind="llava", decoder=decoder, image_token_id=vocab, image_size=64)
    model = build_fusion_vlm(config, VisionTokens(clip.vision))
    assert model.num_image_tokens == 4 and any(p.requires_grad for p in model.vision.parameters())
    config = TrainConfig(
        batch_size=16, max_steps=STEPS, lr=1e-2, warmup_steps=3, weight_decay=0.0,
        device="cpu", out_dir=str(tmp_path_factory.mktemp("vlm")), progress=False,
    )  # fmt: skip
    losses: list[float] = []

    class Record(trainer_module.Callback):
        def on_step_end(self, trainer: trainer_module.Trainer, metrics: dict) -> None:
            losses.append(metrics["loss"])

    trainer = trainer_module.Trainer(
        config, model, VQALMTask(), dataset, collate_vqa_text, callbacks=[Record()]
    )
    summary = trainer.fit()  # also writes a (state-dict) checkpoint of the VLM
    assert (Path(config.out_dir) / "checkpoints" / "latest").is_file()
    return {"model": model, "losses": losses, "summary": summary}


def test_overfit_loss_decreases(overfit: dict) -> None:
    losses = overfit["losses"]
    assert len(losses) == STEPS and overfit["summary"]["steps"] == STEPS
    assert losses[0] > 5.0  # ~ln(49,409) = 10.8 at initialisation
    assert losses[-1] < 0.1 * losses[0]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_overfit_greedy_answers_match(overfit: dict, dataset: EasyVQAQuestions) -> None:
    accuracy, predictions = answer_accuracy(overfit["model"], dataset)
    answers = [dataset.answer(i) for i in range(len(dataset))]
    assert accuracy >= 0.9, list(zip(predictions, answers, strict=True))
