"""Contract 3: every generative kind (`FUSION_KINDS` through `build_fusion_vlm`, plus SmolVLM).

`forward(input_ids, pixel_values=None, attention_mask=None, labels=None) -> output(.logits,
.loss)` with the loss of transformers' causal LMs (shifted next-token cross-entropy, -100 ignored,
mean over the targets), and `generate(input_ids, pixel_values=None, attention_mask=None, *,
max_new_tokens, ...)` returning the prompt plus the new tokens, with transformers' conventions for
positions (left padding changes nothing), padding and stop tokens. `save_pretrained(dir)`: the
llava kind writes a transformers LLaVA directory; the other generative kinds are planned work
(checkpoint formats, a later issue).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from contract_helpers import assert_finite_grads, dead_parameters, generator
from torch import nn

from vlkit.fusion import PixelShuffleConnector
from vlkit.losses import next_token_loss
from vlkit.models import DecoderConfig, DecoderLM
from vlkit.models.fusion_vlm import FUSION_KINDS, FusionVLMConfig, build_fusion_vlm
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.models.smolvlm_vision import SmolVLMVisionConfig, SmolVLMVisionTransformer
from vlkit.training.vlm_task import VQALMTask, build_vlm_inputs

IGNORE_INDEX = -100
STEPS = 4  # new tokens per generation check

VOCAB = 64  # text ids 1..63, 0 = padding
IMAGE_ID = VOCAB  # the decoder has VOCAB + 1 rows
SIZE = 16
GENERATIVE_KINDS = (*FUSION_KINDS, "smolvlm")


class TinyVision(nn.Module):
    """(N, 3, 16, 16) -> (N, 4, 24) tokens, with BatchNorm like a pretrained CNN tower."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 8, stride=8)
        self.norm = nn.BatchNorm2d(24)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(images)).flatten(2).transpose(1, 2)


def _decoder_config() -> DecoderConfig:
    return DecoderConfig(
        vocab_size=VOCAB + 1, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, max_position_embeddings=64,
    )  # fmt: skip


def build_generative(kind: str, seed: int = 0) -> tuple[nn.Module, int]:
    """A tiny random model of `kind` and the number of `<image>` tokens one image fills."""
    torch.manual_seed(seed)
    if kind == "smolvlm":
        vision = SmolVLMVisionTransformer(
            SmolVLMVisionConfig(
                hidden_size=24,
                intermediate_size=48,
                num_hidden_layers=1,
                num_attention_heads=4,
                image_size=SIZE,
                patch_size=4,
            )
        )  # fmt: skip  (16 patches, pixel-shuffled by 2 into 4 tokens)
        connector = PixelShuffleConnector(24, 32, scale_factor=2)
        return GenerativeVLM(vision, connector, DecoderLM(_decoder_config()), IMAGE_ID), 4
    config = FusionVLMConfig(
        kind=kind, decoder=_decoder_config(), image_token_id=IMAGE_ID, num_queries=3,
        qformer_layers=1, perceiver_layers=1, image_size=SIZE,
    )  # fmt: skip
    model = build_fusion_vlm(config, TinyVision())
    return model, model.num_image_tokens


def _with_image(prompt: list[int], count: int) -> list[int]:
    return [IMAGE_ID] * count + prompt


def _left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = [[5, 9, 13], [7, 3, 22, 41, 8]]


def _pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 3, SIZE, SIZE, generator=generator(seed))


def _batch(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two prompts after their image's placeholders, left padded (as a processor does)."""
    return _left_padded([_with_image(p, count) for p in PROMPTS])


def _next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shifted cross-entropy: position t predicts label t + 1 (transformers' convention)."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


def _labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ids.masked_fill((ids == IMAGE_ID) | (mask == 0), IGNORE_INDEX)


def _open_gates_of(model: nn.Module) -> None:
    """Sets Flamingo's tanh gates (zero at init) to 0.5; no-op for the other kinds."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("alpha_xattn", "alpha_ffw"):
                p.fill_(0.5)


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_signature(kind: str) -> None:
    """forward(input_ids, pixel_values=None, attention_mask=None, labels=None, *, ...) and
    generate(input_ids, pixel_values=None, attention_mask=None, *, max_new_tokens=..., ...)."""
    model, _ = build_generative(kind)
    for method in (model.forward, model.generate):
        params = list(inspect.signature(method).parameters.values())
        positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert positional[:3] == ["input_ids", "pixel_values", "attention_mask"], method
        # Everything after the contract's positional arguments is passed by keyword.
        assert positional[3:] in ([], ["labels"]), method
        assert all(p.default is None for p in params[1:3]), method
        assert not any(p.kind == p.VAR_POSITIONAL for p in params), method
    forward = inspect.signature(model.forward).parameters
    assert list(forward)[:4] == ["input_ids", "pixel_values", "attention_mask", "labels"]
    assert forward["labels"].default is None
    assert "max_new_tokens" in inspect.signature(model.generate).parameters


_SAVE_PLANNED = pytest.mark.xfail(
    strict=False,
    reason="planned (checkpoint formats): save_pretrained round trip for the from-scratch kinds "
    "(today: compose_vlm models and loaded LLaVA / BLIP-2 / SmolVLM checkpoints save; a train-vlm "
    "run is saved as a run directory, vlkit.inference.vlm_run_directory)",
)


# A round trip, not just a method: save, load with vlkit.from_pretrained, same logits. Composed
# and converted checkpoints have their own round-trip tests (tests/test_compose_vlm.py,
# tests/parity/test_transformers_llava.py); the contract's toy-tower kinds are planned.
@pytest.mark.parametrize("kind", [pytest.param(k, marks=_SAVE_PLANNED) for k in GENERATIVE_KINDS])
def test_generative_save_pretrained(kind: str, tmp_path) -> None:
    import vlkit

    model, count = build_generative(kind)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = vlkit.from_pretrained(tmp_path).eval()
    ids, mask = _batch(count)
    with torch.no_grad():
        expected = model(ids, _pixels(), mask).logits
        got = loaded(ids, _pixels(), mask).logits
    assert torch.equal(expected, got)


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_forward(kind: str) -> None:
    model, count = build_generative(kind)
    model.eval()
    ids, mask = _batch(count)
    pixels = _pixels()
    with torch.no_grad():
        logits = model(ids, pixel_values=pixels, attention_mask=mask).logits
        again = model(ids, pixel_values=pixels, attention_mask=mask).logits
        rebuilt = build_generative(kind)[0].eval()(ids, pixel_values=pixels, attention_mask=mask)
        positional = model(ids, pixels, mask).logits  # the contract's positional order
    assert logits.shape == (2, ids.shape[1], VOCAB + 1) and logits.dtype == torch.float32
    assert torch.isfinite(logits[mask.bool()]).all()
    assert torch.equal(logits, again) and torch.equal(logits, rebuilt.logits)
    assert torch.equal(logits, positional)
    # Left padding changes nothing at the real positions (transformers' position convention).
    with torch.no_grad():
        for row, prompt in enumerate(PROMPTS):
            alone = torch.tensor([_with_image(prompt, count)])
            single = model(alone, pixel_values=pixels[row : row + 1]).logits[0]
            torch.testing.assert_close(logits[row][mask[row].bool()], single, atol=1e-5, rtol=0)
    # The images matter (once Flamingo's gates are open: at init they do not, by design).
    _open_gates_of(model)
    with torch.no_grad():
        logits = model(ids, pixel_values=pixels, attention_mask=mask).logits
        other = model(ids, pixel_values=_pixels(seed=5), attention_mask=mask).logits
    assert not torch.allclose(other[mask.bool()], logits[mask.bool()])


# Parameters that get no gradient by design, per kind.
GENERATIVE_DEAD = {
    # `qformer_vlm.QFormerConnector` runs the Q-Former's queries without text (BLIP-2 stage 2),
    # so the text-side FFN of each block (`ffn_text`, built by `QFormer` for its stage-1 text
    # path) never runs: known and kept, the weights stay loadable from a stage-1 checkpoint.
    "qformer": {
        f"connector.qformer.layers.0.ffn_text.{part}.{p}"
        for part in ("fc1", "fc2", "norm")
        for p in ("weight", "bias")
    },
}


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_loss_backward(kind: str) -> None:
    model, count = build_generative(kind)
    model.train()
    _open_gates_of(model)  # Flamingo's zero-initialised gates would hide the gated branches
    ids, mask = _batch(count)
    labels = _labels(ids, mask)
    out = model(ids, pixel_values=_pixels(), attention_mask=mask, labels=labels)
    loss = out.loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss, _next_token_loss(out.logits, labels))
    assert 0.5 * torch.log(torch.tensor(VOCAB + 1.0)) < loss < 2 * torch.log(torch.tensor(VOCAB))
    loss.backward()
    assert_finite_grads(model)
    assert dead_parameters(model) == GENERATIVE_DEAD.get(kind, set())


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_labels_give_the_loss(kind: str) -> None:
    """`.loss` is transformers' causal-LM loss: shifted, -100 ignored, mean over the targets."""
    model, count = build_generative(kind)
    model.eval()
    ids, mask = _batch(count)
    labels = _labels(ids, mask)
    with torch.no_grad():
        out = model(ids, pixel_values=_pixels(), attention_mask=mask, labels=labels)
        plain = model(ids, pixel_values=_pixels(), attention_mask=mask)
    assert plain.loss is None and torch.equal(plain.logits, out.logits)
    torch.testing.assert_close(out.loss, _next_token_loss(out.logits, labels))
    # The mean is over the supervised tokens: a row's weight is its number of targets.
    targets = (labels[:, 1:] != IGNORE_INDEX).sum()
    per_token = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none"
    )
    torch.testing.assert_close(out.loss, per_token.sum() / targets)


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_loss_is_the_training_loss(kind: str) -> None:
    """The VLM training task's loss and the model's `.loss` are one function: the same bits."""
    model, count = build_generative(kind)
    model.eval()  # (BatchNorm in the tiny tower: the same statistics for both calls)
    g = generator(11)
    text = torch.randint(1, VOCAB, (2, 6), generator=g)
    labels = text.clone()
    labels[:, :3] = IGNORE_INDEX  # the question is not a target
    images = _pixels(seed=3)[:, 0]  # (B, 3, S, S) as the datasets yield them
    batch = {"images": images, "input_ids": text, "labels": labels}
    losses: list[torch.Tensor] = []
    with torch.no_grad():
        VQALMTask().training_step(model, batch, losses.append)
        ids, full_labels, _ = build_vlm_inputs(text, labels, count, IMAGE_ID)
        out = model(ids, pixel_values=images[:, None], labels=full_labels)
    assert torch.equal(losses[0], out.loss)
    assert torch.equal(out.loss, next_token_loss(out.logits, full_labels))


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_text_only(kind: str) -> None:
    """No images: forward and generate on text alone (greedy = argmax of full re-runs)."""
    model, _ = build_generative(kind)
    model.eval()
    _open_gates_of(model)
    ids = torch.tensor(PROMPTS[1:])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], VOCAB + 1) and torch.isfinite(logits).all()
    out = model.generate(ids, max_new_tokens=STEPS)
    seq = ids
    with torch.no_grad():
        for _ in range(STEPS):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_position_ids(kind: str) -> None:
    """`position_ids` as in transformers: forward places tokens at arange(L) whatever the mask
    unless given; generate derives them from the mask (`cumsum - 1`), so a masked text token in
    the middle of a prompt acts as if it were absent."""
    model, count = build_generative(kind)
    model.eval()
    _open_gates_of(model)
    prompt = _with_image(PROMPTS[1], count)
    hole = count + 2
    ids = torch.tensor([prompt[:hole] + [17] + prompt[hole:]])
    mask = torch.ones_like(ids)
    mask[0, hole] = 0
    keep = mask[0].bool()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    pixels = _pixels(batch=1)
    with torch.no_grad():
        alone = model(torch.tensor([prompt]), pixel_values=pixels).logits[0]
        holed = model(ids, pixels, mask, position_ids=positions).logits[0, keep]
        default = model(ids, pixels, mask).logits[0]
        arange = model(ids, pixels, mask, position_ids=torch.arange(ids.shape[1])[None]).logits[0]
    torch.testing.assert_close(holed, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(default, arange, atol=0, rtol=0)
    assert not torch.allclose(default[keep], alone, atol=1e-4)  # the hole shifts later positions
    new = model.generate(ids, pixels, mask, max_new_tokens=STEPS)[0, ids.shape[1] :]
    reference = model.generate(torch.tensor([prompt]), pixels, max_new_tokens=STEPS)
    assert new.tolist() == reference[0, len(prompt) :].tolist()
    if kind == "flamingo":  # its cache-free reference loop positions tokens the same way
        rerun = model.generate(ids, pixels, mask, max_new_tokens=STEPS, use_cache=False)
        assert rerun[0, ids.shape[1] :].tolist() == new.tolist()


def test_flamingo_text_only_is_text_before_any_image() -> None:
    """Flamingo without images computes what it computes for tokens before a row's first image."""
    model, _ = build_generative("flamingo")
    model.eval()
    _open_gates_of(model)
    ids = torch.tensor(PROMPTS[1:])  # no <image> marker: no token sees the image
    with torch.no_grad():
        alone = model(ids).logits
        with_image = model(ids, pixel_values=_pixels(batch=1)).logits
    torch.testing.assert_close(alone, with_image, atol=0, rtol=0)


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_greedy_generate(kind: str) -> None:
    """Prompt + new tokens; deterministic; with the KV cache equal to argmax over full forwards."""
    model, count = build_generative(kind)
    model.eval()
    ids, mask = _batch(count)
    pixels = _pixels()
    streamed: list[torch.Tensor] = []
    out = model.generate(
        ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=STEPS,
        streamer=streamed.append,
    )  # fmt: skip
    again = model.generate(ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=STEPS)
    prompt_len = ids.shape[1]
    assert out.shape == (2, prompt_len + STEPS) and out.dtype == torch.long
    assert torch.equal(out[:, :prompt_len], ids)
    assert torch.equal(out, again)
    assert torch.equal(torch.stack(streamed, 1), out[:, prompt_len:])
    # Reference: each row unpadded, the whole sequence re-run per token, no cache.
    with torch.no_grad():
        for row, prompt in enumerate(PROMPTS):
            seq = torch.tensor([_with_image(prompt, count)])
            for _ in range(STEPS):
                logits = model(seq, pixel_values=pixels[row : row + 1]).logits
                seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            assert out[row, prompt_len:].tolist() == seq[0, -STEPS:].tolist(), row


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_stop_token(kind: str) -> None:
    """A row that emits a stop token is padded from then on; all rows stopped -> shorter output."""
    model, count = build_generative(kind)
    model.eval()
    ids, mask = _batch(count)
    pixels = _pixels()
    reference = model.generate(ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=STEPS)
    prompt_len = ids.shape[1]
    eos = int(reference[0, prompt_len])  # row 0 stops at once
    pad = 0
    out = model.generate(
        ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=STEPS, eos_token_id=eos,
        pad_token_id=pad,
    )  # fmt: skip
    stops = [
        row.index(eos) + 1 if eos in row else STEPS for row in reference[:, prompt_len:].tolist()
    ]
    new = max(stops)  # generation ends when every row has stopped
    assert out.shape == (2, prompt_len + new)
    assert torch.equal(out[:, :prompt_len], ids)
    for row, stop in enumerate(stops):
        tokens = out[row, prompt_len:].tolist()
        assert tokens[:stop] == reference[row, prompt_len : prompt_len + stop].tolist()
        assert tokens[stop:] == [pad] * (new - stop)


def test_generative_kinds_are_distinct() -> None:
    """Each kind builds its own architecture (a typo in the dispatch would alias two kinds)."""
    counts = {}
    for kind in GENERATIVE_KINDS:
        model, _ = build_generative(kind)
        counts[kind] = (type(model).__name__, sum(p.numel() for p in model.parameters()))
    assert len(set(counts.values())) == len(GENERATIVE_KINDS), counts
