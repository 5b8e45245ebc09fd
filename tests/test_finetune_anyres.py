"""Fine-tuning a LLaVA-NeXT ("anyres") composed model: `SFTDataset` rows carry each image's
tiles and original size, `collate_sft` batches them in transformers' `LlavaNext` layout
(`pixel_values` (images, most views, 3, S, S) zero-padded, `image_sizes` (images, 2)), and
`SFTTask` hands every micro-batch its rows' images and sizes.

A tiny random CLIP tower (16 px, 8 px patches) and Llama LM with a ChatML template are saved
with transformers in the test and composed with `anyres=True`. A batch of images with different
tile counts gives the token-weighted sum of its rows' losses (and gradients), whatever the
micro-batch size and whatever the padding views hold; `vlkit finetune --lora` lowers the loss
and its adapter reloads with the trained logits; the batch's loss equals transformers'
`LlavaNextForConditionalGeneration` holding the same weights.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.data.datasets.sft import SFTDataset
from vlkit.models.llava_next import AnyResLlavaVLM
from vlkit.training.sft_task import SFTTask

transformers = pytest.importorskip("transformers")
from test_finetune_llava import CHATML, COLORS, VISION, chatml_tokenizer  # noqa: E402

LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
# (height, width): 2x2 tiles (+ global view = 5 views), 1x3 (4 views), 1x2 (3 views).
SIZES = [(20, 20), (20, 45), (16, 30)]
SETTINGS = ["batch_size=3", "max_steps=8", "lr=2e-2", "warmup_steps=1", "log_every=1",
            "device=cpu", "progress=false", "checkpoint_every=8"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread than on two contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A saved anyres composed model and six conversations: images of SIZES in turn, and one
    row without an image."""
    root = tmp_path_factory.mktemp("finetune_anyres")
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16)  # fmt: skip
    clip = transformers.CLIPConfig(text_config=text, vision_config=VISION)
    transformers.CLIPModel(clip).save_pretrained(root / "clip")
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    ).save_pretrained(root / "clip")
    tokenizer = chatml_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip
    fast.chat_template = CHATML
    llama = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), **LM)
    transformers.AutoModelForCausalLM.from_config(llama).save_pretrained(root / "llama")
    fast.save_pretrained(root / "llama")
    model = vlkit.compose_vlm(root / "clip", root / "llama", "llava", anyres=True)
    model.save_pretrained(root / "composed")
    rows = []
    for n, (color, rgb) in enumerate(list(COLORS.items()) * 2):
        path = root / f"{n}.png"
        height, width = SIZES[n % len(SIZES)]
        noise = np.random.default_rng(n).integers(0, 30, (height, width, 3))
        Image.fromarray((np.array(rgb) + noise).clip(0, 255).astype(np.uint8)).save(path)
        question = "<image>\nWhat color is it?" if n != 4 else "Name a color."
        rows.append({"id": str(n), "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": color}]})  # fmt: skip
        if n != 4:
            rows[-1]["image"] = path.name
    (root / "train.json").write_text(json.dumps(rows))
    return {"root": root, "model": root / "composed", "train": root / "train.json"}


def _dataset(processor: Any, setup: dict[str, Any]) -> SFTDataset:
    return SFTDataset(setup["train"], processor, strict=True)


def _step(model: torch.nn.Module, batch: dict[str, Any], micro_batch_size: int | None = None,
          ) -> tuple[float, dict[str, torch.Tensor]]:  # fmt: skip
    """SFTTask's loss and the gradients it accumulates (then cleared)."""
    model.zero_grad(set_to_none=True)
    loss = SFTTask(micro_batch_size).training_step(model, batch, torch.Tensor.backward)["loss"]
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss), grads


def _supervised(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def test_a_batch_of_different_tile_counts_is_the_token_weighted_sum_of_its_rows(setup) -> None:
    model = vlkit.from_pretrained(setup["model"])
    assert isinstance(model, AnyResLlavaVLM)
    model.requires_grad_(False)
    for part in (model.connector, model.decoder.lm_head):  # gradients to compare
        part.requires_grad_(True)
    model.image_newline.requires_grad_(True)
    dataset = _dataset(model.processor, setup)
    items = [dataset[0], dataset[1], dataset[4], dataset[2]]  # 5, 4, no image, 3 views
    assert [len(i["pixel_values"][0]) if "pixel_values" in i else 0 for i in items] == [5, 4, 0, 3]
    assert model.view_counts(items[3]["image_sizes"]) == [3]
    for item in (items[0], items[1], items[3]):  # each row's placeholders: its image's count
        ((height, width),) = item["image_sizes"].tolist()
        placed = int((item["input_ids"] == model.image_token_id).sum())
        assert placed == model.processor.num_image_tokens(height, width)
    batch = dataset.collate(items)
    # transformers' LlavaNext layout: images of all rows in order, views padded with zeros.
    assert batch["pixel_values"].shape == (3, 5, 3, 16, 16)
    assert batch["image_sizes"].tolist() == [list(SIZES[0]), list(SIZES[1]), list(SIZES[2])]
    assert batch["images_per_row"].tolist() == [1, 1, 0, 1]
    views = model.view_counts(batch["image_sizes"])
    for image, count in enumerate(views):
        assert batch["pixel_values"][image, count:].abs().sum() == 0
        assert torch.equal(batch["pixel_values"][image, :count],
                           items[[0, 1, 3][image]]["pixel_values"][0, :count])  # fmt: skip

    whole, grads = _step(model, batch)
    # Rows one by one, weighted by their supervised tokens.
    rows = [dataset.collate([item]) for item in items]
    tokens = [_supervised(row) for row in rows]
    assert sum(tokens) == _supervised(batch) and min(tokens) > 0
    singles = [_step(model, row) for row in rows]
    expected = sum(loss * n for (loss, _), n in zip(singles, tokens, strict=True)) / sum(tokens)
    assert whole == pytest.approx(expected, rel=1e-5)
    assert set(grads) >= {"image_newline", "decoder.lm_head.weight"}
    for name, grad in grads.items():
        weighted = sum(g[name] * n for (_, g), n in zip(singles, tokens, strict=True)
                       if name in g) / sum(tokens)  # fmt: skip
        torch.testing.assert_close(grad, weighted, atol=1e-6, rtol=1e-4)
    # Any micro-batch split gives the same loss and gradients.
    for size in (1, 2, 3):
        loss, split = _step(model, batch, micro_batch_size=size)
        assert loss == pytest.approx(whole, rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(split[name], grad, atol=1e-6, rtol=1e-4)
    # The padding views never reach the model: filling them with noise changes nothing.
    noisy = dict(batch, pixel_values=batch["pixel_values"].clone())
    for image, count in enumerate(views):
        noisy["pixel_values"][image, count:] = torch.randn_like(
            noisy["pixel_values"][image, count:]
        )
    assert _step(model, noisy)[0] == whole


class _KeepModel:
    """Keeps the trained model (LoRA layers unmerged) to compare with the saved adapter."""

    def on_train_start(self, trainer: Any) -> None:
        self.model = trainer.model


def _logits_and_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        out = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                    batch["labels"], image_sizes=batch["image_sizes"])  # fmt: skip
    return out.logits, float(out.loss)


def test_vlkit_finetune_lora_lowers_the_loss_and_the_adapter_reloads(setup, tmp_path) -> None:
    from vlkit.inference.vlm_loading import load_vlm
    from vlkit.recipes.finetune import FinetuneConfig, run_finetune

    out = tmp_path / "run"
    config = FinetuneConfig(
        model=str(setup["model"]), data=str(setup["train"]), out_dir=str(out),
        lora="r=4,alpha=8,targets=q_proj,v_proj", eval_data=str(setup["train"]),
        generate_every=4, generate_examples=2, max_new_tokens=2,
    ).with_overrides(SETTINGS)  # fmt: skip
    kept = _KeepModel()
    summary = run_finetune(config, extra_callbacks=[kept])
    assert summary["steps"] == 8 and summary["final_kind"] == "adapter"
    assert summary["sft_items"] == 6 and summary["skipped_rows"] == 0
    assert len((out / "generations.jsonl").read_text().splitlines()) >= 2  # answered images
    base = vlkit.from_pretrained(setup["model"]).eval()
    dataset = _dataset(base.processor, setup)
    batch = dataset.collate(list(dataset))
    _, before = _logits_and_loss(base, batch)
    trained, after = _logits_and_loss(kept.model.eval(), batch)
    assert after < before - 0.1, (before, after)
    reloaded = load_vlm(out / "final").model.eval()  # base from the adapter's record + adapter
    logits, loss = _logits_and_loss(reloaded, batch)
    torch.testing.assert_close(logits, trained, atol=1e-5, rtol=0)
    assert loss == pytest.approx(after, rel=1e-5)


def test_the_collated_loss_equals_transformers_llava_next(setup, tmp_path) -> None:
    from vlkit.models.llava import LlavaVLM

    model = vlkit.from_pretrained(setup["model"]).eval()
    plain = LlavaVLM(model.vision, model.connector, model.decoder, model.image_token_id,
                     model.num_image_tokens)  # fmt: skip
    plain.save_pretrained(tmp_path / "llava")  # the same names; LLaVA-NeXT adds image_newline
    llava = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava")
    next_config = transformers.LlavaNextConfig(
        vision_config=llava.config.vision_config, text_config=llava.config.text_config,
        image_token_index=model.image_token_id, image_grid_pinpoints=model.pinpoints,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )  # fmt: skip
    reference = transformers.LlavaNextForConditionalGeneration(next_config).eval()
    missing, unexpected = reference.load_state_dict(llava.state_dict(), strict=False)
    assert missing == ["model.image_newline"] and unexpected == []
    with torch.no_grad():
        reference.model.image_newline.copy_(model.image_newline)
    dataset = _dataset(model.processor, setup)
    batch = dataset.collate([dataset[0], dataset[4], dataset[1], dataset[2]])
    names = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "labels")
    theirs = reference(**{k: batch[k] for k in names})
    theirs.loss.backward()
    ours, grads = _step(model, batch)
    assert ours == pytest.approx(float(theirs.loss.detach()), abs=1e-5)
    torch.testing.assert_close(grads["image_newline"], reference.model.image_newline.grad,
                               atol=1e-6, rtol=1e-4)  # fmt: skip
    # SFTTask drives transformers' model too (image_sizes by name, micro-batches of rows).
    reference.zero_grad(set_to_none=True)
    assert _step(reference, batch, micro_batch_size=1)[0] == pytest.approx(ours, abs=1e-5)
