"""Token-weighted next-token accumulation (`accumulated_lm_backward`, `SFTTask`), side by side
with transformers (issue 13 items 2, 3 and the DDP part of 6).

Tiny random SmolVLM / Idefics3 (the transformers testers' configs, as
tests/parity/test_transformers_smolvlm_modeling.py) and LLaVA (as
tests/parity/test_transformers_llava.py) checkpoints are built with transformers, saved, and
loaded by `vlkit.from_pretrained`. SFT-shaped batches: right padding, rows of unequal lengths,
image counts and numbers of supervised (assistant) tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import vlkit
from vlkit.hub.hf_llava import llava_state_dict
from vlkit.hub.hf_smolvlm import smolvlm_state_dict
from vlkit.overrides import ConfigError
from vlkit.training import SFTTask, TrainConfig, Trainer, accumulated_lm_backward
from vlkit.training.config_files import load_train_config
from vlkit.training.lm_accumulation import supervised_tokens

SMOL_VISION = {
    "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 32, "dropout": 0.0, "attention_dropout": 0.0,
}  # fmt: skip
SMOL_TEXT = {
    "vocab_size": 100, "hidden_size": 64, "intermediate_size": 56, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "hidden_act": "silu",
    "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "pad_token_id": 2, "bos_token_id": 0,
    "eos_token_id": 1, "image_token_id": 57, "tie_word_embeddings": False,
}  # fmt: skip
LLAVA_VISION = {
    "model_type": "clip_vision_model", "image_size": 8, "patch_size": 2, "num_channels": 3,
    "hidden_size": 32, "projection_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 37, "dropout": 0.0, "attention_dropout": 0.0,
}  # fmt: skip
LLAVA_TEXT = {
    "model_type": "llama", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 512,
    "pad_token_id": 1,
}  # fmt: skip
# (image id, pad, bos, eos, image size, placeholders per image, first text id, vocabulary)
SMOL = (57, 2, 0, 1, 16, 4, 3, 57)
LLAVA = (0, 1, 3, 2, 8, 16, 4, 99)
# Rows: (prompt tokens, images, answer tokens) -- unequal lengths and label counts.
TIGHT = {"rtol": 1e-6, "atol": 1e-10}
SPEC = [(3, 1, 9), (1, 1, 1), (6, 2, 4), (2, 1, 2), (5, 1, 12)]


def _hf_model(kind: str) -> Any:
    # Imported here, not at the top: the gloo test's spawned processes import this module.
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "llava":
        config = transformers.LlavaConfig(
            text_config=LLAVA_TEXT, vision_config=LLAVA_VISION, image_token_index=0,
            projector_hidden_act="gelu", vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )  # fmt: skip
        return transformers.LlavaForConditionalGeneration(config).eval()
    config_cls, model_cls = {
        "smolvlm": (transformers.SmolVLMConfig, transformers.SmolVLMForConditionalGeneration),
        "idefics3": (transformers.Idefics3Config, transformers.Idefics3ForConditionalGeneration),
    }[kind]
    config = config_cls(
        use_cache=False, image_token_id=57, tie_word_embeddings=False, vision_config=SMOL_VISION,
        text_config=SMOL_TEXT, vocab_size=100, scale_factor=2,
    )  # fmt: skip
    return model_cls(config).eval()


@pytest.fixture(scope="module", params=["smolvlm", "idefics3", "llava"])
def pair(request, tmp_path_factory) -> tuple[str, Any, torch.nn.Module]:
    """(kind, transformers model, the same checkpoint loaded by vlkit), both in eval mode."""
    hf = _hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    model = vlkit.from_pretrained(directory).eval()
    # vlkit's LLaVA loads with its vision tower frozen (LLaVA's recipe); train it all here, as
    # the transformers model does, so that every gradient is compared.
    return request.param, hf, model.requires_grad_(True)


def sft_batch(kind: str, spec: list[tuple[int, int, int]], seed: int = 0) -> dict[str, Any]:
    """An SFT batch: [bos] <image>... prompt answer [eos], labels on answer + eos, right padding."""
    image, pad, bos, eos, size, per_image, low, high = LLAVA if kind == "llava" else SMOL
    generator = torch.Generator().manual_seed(seed)
    rows, targets = [], []
    most = 1 if kind == "llava" else max(m for _, m, _ in spec)
    pixels = torch.zeros(len(spec), most, 3, size, size)
    for row, (prompt, images, answer) in enumerate(spec):
        images = 1 if kind == "llava" else images
        text = torch.randint(low, high, (prompt + answer,), generator=generator).tolist()
        ids = [bos, *[image] * (per_image * images), *text[:prompt]] + text[prompt:] + [eos]
        rows.append(ids)
        targets.append([-100] * (len(ids) - answer - 1) + text[prompt:] + [eos])
        pixels[row, :images] = torch.rand(images, 3, size, size, generator=generator)
    width = max(len(r) for r in rows)
    batch = {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([t + [-100] * (width - len(t)) for t in targets]),
        "pixel_values": pixels[:, 0] if kind == "llava" else pixels,
    }
    return batch


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in model.named_parameters()
    }


def _full_batch_grads(
    model: torch.nn.Module, batch: dict[str, Any], in_dtype: bool = False
) -> tuple[torch.Tensor, dict]:
    """The reference: one forward of the whole batch, `model(..., labels=...).loss.backward()`;
    `in_dtype`: the mean cross-entropy in the logits' own dtype (the models' loss is float32)."""
    model.zero_grad(set_to_none=True)
    if in_dtype:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        flat = logits[:, :-1].reshape(-1, logits.shape[-1])
        loss = torch.nn.functional.cross_entropy(flat, batch["labels"][:, 1:].reshape(-1))
    else:
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), _grads(model)


def _assert_grads(ours: dict, expected: dict, **tolerance: float) -> None:
    assert ours.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], msg=name, **tolerance)


# SmolVLM and Idefics3 are the same vlkit model: the transformers parity covers both, the
# accumulation tests one of them.
VLKIT_KINDS = pytest.mark.parametrize("pair", ["smolvlm", "llava"], indirect=True)


@VLKIT_KINDS
def test_accumulation_equals_the_full_batch_in_float64(pair):
    """Micro-batches of 1, 2 and 3 rows (the last one shorter, with 1..12 targets each) leave the
    full batch's gradient of the token-mean loss; right padding is trimmed per micro-batch,
    left padding is kept. The weights are float64, but `DecoderLM` returns float32 logits (as
    transformers' loss upcasts), so the agreement is float32 rounding at the logits (1e-7
    relative), against a 1e-2 difference for the per-micro-batch mean below."""
    kind, _, model = pair
    model = model.double()
    try:
        batch = sft_batch(kind, SPEC)
        expected_loss, expected = _full_batch_grads(model, batch, in_dtype=True)
        widths: list[int] = []
        hook = model.register_forward_pre_hook(
            lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
        )
        try:
            for micro in (1, 2, 3):
                model.zero_grad(set_to_none=True)
                loss = accumulated_lm_backward(model, batch, micro)
                torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)
                _assert_grads(_grads(model), expected, **TIGHT)
        finally:
            hook.remove()
        assert min(widths) < batch["input_ids"].shape[1]  # row 1 alone ran without its padding
        # Left padding (positions then start at the padding, as in transformers' forward): nothing
        # is trimmed, the gradient is the left-padded full batch's.
        left = _left_padded(batch)
        _, expected = _full_batch_grads(model, left, in_dtype=True)
        widths.clear()
        with model.register_forward_pre_hook(
            lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
        ):
            model.zero_grad(set_to_none=True)
            accumulated_lm_backward(model, left, 2)
        assert set(widths) == {left["input_ids"].shape[1]}
        _assert_grads(_grads(model), expected, **TIGHT)
    finally:
        model.float()


def _left_padded(batch: dict[str, Any]) -> dict[str, Any]:
    """The same rows padded on the left (rolled so that each row ends at the last column)."""
    out = dict(batch)
    for key in ("input_ids", "attention_mask", "labels"):
        out[key] = batch[key].clone()
    for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        for key in ("input_ids", "attention_mask", "labels"):
            out[key][row] = torch.roll(batch[key][row], int(batch[key].shape[1] - length))
    return out


@VLKIT_KINDS
def test_per_micro_batch_means_differ(pair):
    """The pre-4.46 transformers recipe (mean of the micro-batches' mean losses) is a different
    loss with a different gradient; the token-weighted accumulation is not."""
    kind, _, model = pair
    batch = sft_batch(kind, SPEC)
    expected_loss, expected = _full_batch_grads(model, batch)
    model.zero_grad(set_to_none=True)
    parts = [slice(0, 2), slice(2, 4), slice(4, 5)]
    means = []
    for part in parts:
        loss = model(**{k: v[part] for k, v in batch.items()}).loss / len(parts)
        loss.backward()
        means.append(loss.detach())
    assert abs(float(sum(means)) - float(expected_loss)) > 1e-3
    head = next(n for n in expected if n.endswith("lm_head.weight"))
    buggy = _grads(model)[head]
    assert (buggy - expected[head]).norm() > 1e-2 * expected[head].norm()
    model.zero_grad(set_to_none=True)
    accumulated_lm_backward(model, batch, 2)
    torch.testing.assert_close(_grads(model)[head], expected[head], rtol=1e-5, atol=1e-7)


def _hf_grads_as_vlkit(kind: str, hf: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers' gradients under vlkit's parameter names (through the hub converters)."""
    grads = _grads(hf)
    if kind == "llava":
        return llava_state_dict(grads, model, "gradients")
    return smolvlm_state_dict(grads, model)


def test_loss_and_gradients_equal_transformers(pair):
    """`model(..., labels=...).loss` and every parameter's gradient equal transformers' for the
    same SFT batch within 1e-5; vlkit's micro-batched accumulation equals both, and so does
    transformers' own exact accumulation (`num_items_in_batch`, 4.46+)."""
    kind, hf, model = pair
    batch = sft_batch(kind, SPEC)
    ref_loss, _ = _full_batch_grads(hf, batch)
    reference = _hf_grads_as_vlkit(kind, hf, model)
    loss, ours = _full_batch_grads(model, batch)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    _assert_grads(ours, reference, atol=1e-5, rtol=1e-4)
    model.zero_grad(set_to_none=True)
    loss = accumulated_lm_backward(model, batch, 2)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    _assert_grads(_grads(model), reference, atol=1e-5, rtol=1e-4)
    # transformers' accumulation with the global token count; the same micro-batches.
    hf.zero_grad(set_to_none=True)
    count = torch.tensor(supervised_tokens(batch["labels"]))
    for part in (slice(0, 2), slice(2, 4), slice(4, 5)):
        hf(**{k: v[part] for k, v in batch.items()}, num_items_in_batch=count).loss.backward()
    _assert_grads(_hf_grads_as_vlkit(kind, hf, model), reference, atol=1e-6, rtol=1e-5)


@VLKIT_KINDS
def test_sft_task_in_one_process(pair):
    """The trainer's task: the full batch's loss and gradient, and the token count."""
    kind, _, model = pair
    batch = {**sft_batch(kind, SPEC), "index": list(range(5)), "skipped": []}
    expected_loss, expected = _full_batch_grads(
        model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    )
    model.zero_grad(set_to_none=True)
    out = SFTTask(micro_batch_size=3).training_step(model, batch, torch.Tensor.backward)
    torch.testing.assert_close(out["loss"], expected_loss, atol=1e-6, rtol=0)
    assert int(out["supervised_tokens"]) == sum(a + 1 for _, _, a in SPEC)
    _assert_grads(_grads(model), expected, rtol=1e-5, atol=1e-7)


def test_accumulation_steps_config():
    """batch_size = micro_batch_size x accumulation_steps: derived, or refused in one line."""
    config = load_train_config(None, ["optim.batch_size=32", "optim.accumulation_steps=4"])
    assert config.optim.micro_batch_size == 8
    again = TrainConfig.from_dict(config.to_dict())
    assert (again.optim.micro_batch_size, again.optim.accumulation_steps) == (8, 4)
    with pytest.raises(ConfigError, match=r"optim\.micro_batch_size=4 x optim\.accumulation_st"):
        load_train_config(None, ["batch_size=32", "accumulation_steps=4", "micro_batch_size=4"])
    with pytest.raises(ConfigError, match=r"optim\.batch_size=32 is not divisible"):
        load_train_config(None, ["optim.batch_size=32", "optim.accumulation_steps=3"])
    with pytest.raises(ConfigError, match=r"^optim\.accumulation_steps: must be >= 1"):
        load_train_config(None, ["optim.accumulation_steps=0"])


# ------------------------------------------------------------------ data parallel (gloo)
DDP_ROWS = [(2, 1, 1), (4, 2, 9), (1, 1, 3), (3, 1, 14), (2, 2, 2), (6, 1, 1), (1, 1, 7), (2, 1, 5)]


class _SFTRows(torch.utils.data.Dataset):
    """SFT items keyed by the trainer's (index, sample_seed); no "images" key in the batch."""

    def __init__(self) -> None:
        batch = sft_batch("smolvlm", DDP_ROWS, seed=3)
        self.items = [
            {k: v[i] for k, v in batch.items()} | {"index": i} for i in range(len(DDP_ROWS))
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return self.items[key[0]]


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks the rows, dropping the padding columns every row shares (as collate_sft would)."""
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0] if k != "index"}
    width = int(batch["attention_mask"].sum(1).max())
    for key in ("input_ids", "attention_mask", "labels"):
        batch[key] = batch[key][:, :width]
    return batch | {"index": [item["index"] for item in items], "skipped": []}


def _train(directory: str, out_dir: str, rank: int = 0, world: int = 1) -> dict[str, Any]:
    from vlkit.distributed import DistributedInfo

    torch.manual_seed(0)
    model = vlkit.from_pretrained(directory).double()
    config = TrainConfig(
        device="cpu", out_dir=out_dir, progress=False, seed=1, batch_size=4, max_steps=2,
        accumulation_steps=4, warmup_steps=0, lr=1e-2, weight_decay=0.0, grad_clip=None,
    )  # fmt: skip
    assert config.optim.micro_batch_size == 1
    task = SFTTask(config.optim.micro_batch_size)
    trainer = Trainer(config, model, task, _SFTRows(), _collate,
                      distributed=DistributedInfo(rank, world, rank))  # fmt: skip
    trainer.fit()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _ddp_worker(rank: int, world: int, init_file: str, directory: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        weights = _train(directory, f"{out}/run", rank, world)
        if rank == 0:
            torch.save(weights, f"{out}/weights.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path: Path):
    """Trainer + SFTTask (`optim.accumulation_steps=4`: micro-batches of one row) on 2 gloo
    processes ends with the weights of one process on the same global batches, although the
    processes hold different numbers of supervised tokens (a per-process mean would weight them
    differently)."""
    import torch.multiprocessing as mp

    from vlkit.training.sampler import ResumableBatchSampler

    _hf_model("smolvlm").save_pretrained(tmp_path / "model")
    labels = sft_batch("smolvlm", DDP_ROWS, seed=3)["labels"]
    counts = [
        [supervised_tokens(labels[[i for i, _ in rows]]) for rows in
         ResumableBatchSampler(len(DDP_ROWS), 4, seed=1, rank=rank, world_size=2)]
        for rank in range(2)
    ]  # fmt: skip
    assert counts[0] != counts[1]  # the test would not tell the weighting apart otherwise
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "model"),
             str(tmp_path / "two")), nprocs=2, join=True)  # fmt: skip
    two = torch.load(tmp_path / "two" / "weights.pt")
    one = _train(str(tmp_path / "model"), str(tmp_path / "one"))
    initial = dict(vlkit.from_pretrained(tmp_path / "model").double().named_parameters())
    assert one.keys() == two.keys()
    moved = 0
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-9, atol=1e-11, msg=name)
        moved += not torch.equal(one[name], initial[name])
    assert moved > len(one) // 2  # the steps did train


def test_text_rows_that_reach_no_trainable_parameter_add_zero():
    """LoRA on the vision side only: a micro-batch of text rows has a loss without a graph; it
    adds 0 to every gradient instead of failing in backward."""
    from types import SimpleNamespace

    class VisionOnlyTrainable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(12, 12).requires_grad_(False)
            self.vision = torch.nn.Linear(4, 12)

        def forward(self, input_ids, pixel_values=None):
            logits = self.embed(input_ids)  # (b, L, V)
            if pixel_values is not None:  # one image per row of this micro-batch's image rows
                logits = logits + self.vision(pixel_values).sum(0)
            return SimpleNamespace(logits=logits)

    torch.manual_seed(0)
    model = VisionOnlyTrainable()
    ids = torch.randint(0, 12, (2, 5))
    batch = {"input_ids": ids, "labels": ids.clone(), "pixel_values": torch.randn(1, 4),
             "images_per_row": torch.tensor([1, 0])}  # fmt: skip
    loss = accumulated_lm_backward(model, batch, micro_batch_size=1)
    grad = model.vision.weight.grad.clone()
    model.zero_grad()
    alone = {k: v[:1] for k, v in batch.items() if k != "images_per_row"}
    tokens = supervised_tokens(batch["labels"])
    accumulated_lm_backward(model, alone, None, num_tokens=tokens)
    torch.testing.assert_close(grad, model.vision.weight.grad)  # row 1 added nothing
    assert torch.isfinite(loss)
