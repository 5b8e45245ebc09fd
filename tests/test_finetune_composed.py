"""`vlkit finetune` on a composed VLM of every kind (`vlkit.compose_vlm`): SFT batches reach the
model as it reads images, micro-batches are exact, and `RUN/final` reloads what was trained.

Tiny random CLIP / SigLIP towers (16 px, 8 px patches) and Llama / Qwen2 (tied embeddings) LMs
with a ChatML template are saved with transformers in the test and composed with each kind.
The conversations are LLaVA JSON, one row without an image. For each kind: a collated batch
(images concatenated across rows; rows of one, none and two images) gives the token-weighted sum of
its rows' losses and gradients, whatever the micro-batch size; `vlkit finetune --lora` lowers
the loss and its adapter reloads (through `vlkit generate`'s loader) with the trained logits;
full fine-tuning with `micro_batch_size=1` saves a model that reloads with the trained weights;
`vlkit generate --model RUN/final` answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli.main import main
from vlkit.data.datasets.conversation_formats import read_conversations
from vlkit.data.datasets.sft import SFTDataset
from vlkit.models.composition import COMPOSE_KINDS
from vlkit.training.sft_task import SFTTask

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
from test_finetune_llava import CHATML, COLORS, VISION, chatml_tokenizer  # noqa: E402

LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "llava": {},
    "qformer": {"num_queries": 4},
    "flamingo": {"num_queries": 4},
    "cogvlm": {},
    "pixel_shuffle": {"scale_factor": 2},
    "qwen": {"num_queries": 4, "image_size": 24},  # a 3x3 grid from the 2x2 position table
}
# (vision, language) per kind: both towers and both LM families (Qwen2's tied head) are covered.
PAIRS = {"llava": ("clip", "llama"), "qformer": ("siglip", "qwen2"), "flamingo": ("clip", "qwen2"),
         "cogvlm": ("siglip", "llama"), "pixel_shuffle": ("siglip", "llama"),
         "qwen": ("clip", "llama")}  # fmt: skip
LORA = "r=4,alpha=8,targets=q_proj,v_proj"
SETTINGS = ["batch_size=3", "lr=2e-2", "warmup_steps=1", "log_every=1", "device=cpu",
            "progress=false"]  # fmt: skip
TEXT_ONLY = 4  # the row without an image


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread than on two contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _parts(root: Path) -> None:
    """clip, siglip (towers with image processors), llama, qwen2 (LMs with the template)."""
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16)  # fmt: skip
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=VISION)
                           ).save_pretrained(root / "clip")  # fmt: skip
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    ).save_pretrained(root / "clip")
    transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=VISION)
                             ).save_pretrained(root / "siglip")  # fmt: skip
    transformers.SiglipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(
        root / "siglip"
    )
    tokenizer = chatml_tokenizer()
    vocab = tokenizer.get_vocab_size()
    for name, config in (
        ("llama", transformers.LlamaConfig(vocab_size=vocab, **LM)),
        ("qwen2", transformers.Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **LM)),
    ):
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<s>", eos_token="<|im_end|>",
            pad_token="<pad>", unk_token="<unk>",
        )  # fmt: skip
        fast.chat_template = CHATML
        fast.save_pretrained(root / name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A saved composed model per kind and six conversations (row TEXT_ONLY without image)."""
    root = tmp_path_factory.mktemp("finetune_composed")
    _parts(root)
    rows = []
    for n, (color, rgb) in enumerate(list(COLORS.items()) * 2):
        path = root / f"{n}.png"
        noise = np.random.default_rng(n).integers(0, 30, (20, 24, 3))
        Image.fromarray((np.array(rgb) + noise).clip(0, 255).astype(np.uint8)).save(path)
        question = "<image>\nWhat color is it?" if n != TEXT_ONLY else "Name a color."
        rows.append({"id": str(n), "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": color}]})  # fmt: skip
        if n != TEXT_ONLY:
            rows[-1]["image"] = path.name
    (root / "train.json").write_text(json.dumps(rows))
    models = {}
    for kind in COMPOSE_KINDS:
        vision, language = PAIRS[kind]
        model = vlkit.compose_vlm(root / vision, root / language, kind, **KIND_OPTIONS[kind])
        model.save_pretrained(root / kind)
        models[kind] = root / kind
    return {"root": root, "models": models, "train": root / "train.json", "image": root / "0.png"}


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


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_micro_batches_give_the_token_weighted_loss_and_gradients(kind, setup) -> None:
    model = vlkit.from_pretrained(setup["models"][kind]).train()
    if kind == "flamingo":  # open the tanh gates: at 0 the images leave the loss unchanged
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".alpha_" in name:
                    param.fill_(0.5)
    # The kind's trainable parts, plus the LM head as fine-tuning trains the LM: a text-only
    # micro-batch has gradients too.
    model.decoder.lm_head.requires_grad_(True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("vision.") for n in trainable)
    conversations = read_conversations(setup["train"]).rows
    images = conversations[0]["images"] + conversations[1]["images"]
    two = {"id": "two", "images": images, "messages": [
        {"role": "user", "content": "<image>\n<image>\nWhich colors?"},
        {"role": "assistant", "content": "red and green"}]}  # fmt: skip
    processor = vlkit.get_processor(setup["models"][kind])
    dataset = SFTDataset([conversations[0], conversations[TEXT_ONLY], two], processor, strict=True)
    items = list(dataset)
    batch = dataset.collate(items)
    assert batch["pixel_values"].shape[0] == 3  # the images of all rows, in order
    assert batch["images_per_row"].tolist() == [1, 0, 2]
    if kind == "flamingo":  # images per marker read as the (B, M, C, H, W) layout of each row
        per_row = torch.zeros(3, 2, *batch["pixel_values"].shape[1:])
        per_row[0, 0], per_row[2] = batch["pixel_values"][0], batch["pixel_values"][1:]
        args = (batch["input_ids"], batch["attention_mask"])
        with torch.no_grad():
            concatenated = model(args[0], batch["pixel_values"], args[1]).logits
            torch.testing.assert_close(concatenated, model(args[0], per_row, args[1]).logits)
    whole, grads = _step(model, batch)
    # Rows one by one, weighted by their supervised tokens: each row reads its own image.
    rows = [dataset.collate([item]) for item in items]
    tokens = [_supervised(row) for row in rows]
    singles = [_step(model, row) for row in rows]
    expected = sum(loss * n for (loss, _), n in zip(singles, tokens, strict=True)) / sum(tokens)
    assert whole == pytest.approx(expected, rel=1e-5)
    # The same parameters reached (Q-Former's text FFNs never are: its queries run without
    # text), the connector's among them.
    assert set(grads) == set().union(*(g for _, g in singles)) and set(grads) <= trainable
    assert any(not n.startswith("decoder.") or "gated_cross" in n or "expert" in n
               for n in grads)  # fmt: skip
    for name, grad in grads.items():
        weighted = sum(g[name] * n for (_, g), n in zip(singles, tokens, strict=True)
                       if name in g) / sum(tokens)  # fmt: skip
        torch.testing.assert_close(grad, weighted, atol=1e-6, rtol=1e-4, msg=name)
    for size in (1, 2):  # [1 image], [text], [2 images] and [1 image, text], [2 images]
        loss, split = _step(model, batch, micro_batch_size=size)
        assert loss == pytest.approx(whole, rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(split[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    # The images matter: row 0 reading green (and row 2 red, red) changes the loss.
    other = dict(batch, pixel_values=batch["pixel_values"][[2, 1, 0]])
    assert _step(model, other)[0] != pytest.approx(whole, rel=1e-6)


class _KeepModel:
    """Keeps the trained model (LoRA layers unmerged) to compare with what `RUN/final` holds."""

    def on_train_start(self, trainer: Any) -> None:
        self.model = trainer.model


def _logits_and_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        out = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                    batch["labels"])  # fmt: skip
    return out.logits, float(out.loss)


def _finetune(setup: dict[str, Any], kind: str, out: Path, *settings: str, **options: Any
              ) -> tuple[dict[str, Any], torch.nn.Module]:  # fmt: skip
    from vlkit.recipes.finetune import FinetuneConfig, run_finetune

    config = FinetuneConfig(
        model=str(setup["models"][kind]), data=str(setup["train"]), out_dir=str(out), **options
    ).with_overrides([*SETTINGS, *settings])
    kept = _KeepModel()
    summary = run_finetune(config, extra_callbacks=[kept])
    assert summary["sft_items"] == 6 and summary["skipped_rows"] == 0
    return summary, kept.model.eval()


def _generate(setup: dict[str, Any], final: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    code = main(["generate", "--model", str(final), "--image", str(setup["image"]),
                 "--prompt", "What color is it?", "--max-new-tokens", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_lora_lowers_the_loss_and_the_adapter_reloads(kind, setup, tmp_path, capsys) -> None:
    from vlkit.inference.vlm_loading import load_vlm

    out = tmp_path / "run"
    summary, trained = _finetune(
        setup, kind, out, "max_steps=8", "checkpoint_every=8", lora=LORA,
        eval_data=str(setup["train"]), generate_every=4, generate_examples=2, max_new_tokens=2,
    )  # fmt: skip
    assert summary["steps"] == 8 and summary["final_kind"] == "adapter"
    assert len((out / "generations.jsonl").read_text().splitlines()) >= 2  # answered mid-run
    base = vlkit.from_pretrained(setup["models"][kind]).eval()
    dataset = SFTDataset(setup["train"], vlkit.get_processor(setup["models"][kind]), strict=True)
    batch = dataset.collate(list(dataset))
    _, before = _logits_and_loss(base, batch)
    logits, after = _logits_and_loss(trained, batch)
    assert after < before - 0.1, (before, after)
    reloaded = load_vlm(out / "final").model.eval()  # the recorded base + the adapter
    again, loss = _logits_and_loss(reloaded, batch)
    torch.testing.assert_close(again, logits, atol=1e-5, rtol=0)
    assert loss == pytest.approx(after, rel=1e-5)
    _generate(setup, out / "final", capsys)


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_full_finetune_in_micro_batches_saves_what_it_trained(kind, setup, tmp_path, capsys):
    from vlkit.inference.vlm_loading import load_vlm

    out = tmp_path / "run"
    summary, trained = _finetune(setup, kind, out, "max_steps=2", "checkpoint_every=2",
                                 "micro_batch_size=1")  # fmt: skip
    assert summary["final_kind"] == "full"
    base = vlkit.from_pretrained(setup["models"][kind]).state_dict()
    saved = vlkit.from_pretrained(out / "final")
    assert type(saved) is type(trained)
    state = trained.state_dict()
    assert saved.state_dict().keys() == state.keys()
    for name, value in saved.state_dict().items():
        assert torch.equal(value, state[name]), name
    changed = [n for n, v in state.items() if not torch.equal(v, base[n])]
    assert changed and not any(n.startswith("vision.") for n in changed)  # the tower frozen
    assert any(n.startswith("decoder.") for n in changed)  # the LM trained too
    dataset = SFTDataset(setup["train"], vlkit.get_processor(out / "final"), strict=True)
    batch = dataset.collate(list(dataset))
    logits, loss = _logits_and_loss(trained, batch)
    reloaded, again = _logits_and_loss(load_vlm(out / "final").model.eval(), batch)
    torch.testing.assert_close(reloaded, logits, atol=1e-5, rtol=0)
    assert again == pytest.approx(loss, rel=1e-5)
    _generate(setup, out / "final", capsys)
