"""Contract 2: every module exported by `vlkit.fusion`, from an explicit table of tiny cases.

Fusion modules: `forward(text_tokens (B, L, D), media_tokens (B, M, N, Dv), media_mask=None) ->
(B, L, D)`; resamplers / connectors: `forward(media_tokens) -> (B, K, D_out)`; the other modules
(two-stream fusion, a decoder layer, whole models, a pre-training wrapper) are checked through
their own documented signatures.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from contract_helpers import assert_finite_grads, dead_parameters, generator
from torch import nn

from vlkit import fusion
from vlkit.fusion import (
    CrossModalAttention,
    EarlyFusionTransformer,
    GatedCrossAttentionBlock,
    GeminiFusion,
    LlavaProjector,
    PerceiverAttention,
    PerceiverResampler,
    PixelShuffleConnector,
    QFormer,
    QFormerPretrainer,
    QwenResampler,
    TokenFusion,
    VisualExpertLayer,
)

# batch, text length, text width, images, tokens per image, media width
B, L, D, M, N, DV = 2, 5, 32, 2, 4, 24


@dataclass
class FusionCase:
    """One row of the fusion table.

    Attributes:
        role: "fusion" (`forward(text (B, L, D), media (B, M, N, Dv), media_mask=None) ->
            (B, L, D)`), "resampler" (`forward(media_tokens) -> (B, K, D_out)`), or "other": a
            module whose own documented signature is used (two-stream fusion, a decoder layer,
            a whole model, a pre-training wrapper).
        build: A tiny instance.
        inputs: Positional args and keyword args of one call, from a generator.
        shapes: The shape of every tensor the call returns, in order (`_outputs`).
        dead: Parameters that get no gradient by design, as name prefixes (documented why).
        gates: Parameter names of zero-initialised gates: the module is the identity on its
            text input at init, and the backward check opens them first.
    """

    name: str
    role: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple[tuple[Any, ...], dict[str, Any]]]
    shapes: list[tuple[int, ...]]
    dead: tuple[str, ...] = ()
    gates: tuple[str, ...] = ()


def _text(g: torch.Generator) -> torch.Tensor:
    return torch.randn(B, L, D, generator=g)


def _media(g: torch.Generator) -> torch.Tensor:
    return torch.randn(B, M, N, DV, generator=g)


def _media_mask() -> torch.Tensor:
    """Row 0 sees both images; row 1's second image is padding."""
    mask = torch.ones(B, M, N, dtype=torch.bool)
    mask[1, 1] = False
    return mask


def _fusion_inputs(g: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (_text(g), _media(g)), {"media_mask": _media_mask()}


def _ids(g: torch.Generator, vocab: int = 50) -> torch.Tensor:
    return torch.randint(1, vocab, (B, L), generator=g)


def _qformer(vocab_size: int = 50) -> QFormer:
    return QFormer(
        encoder_dim=DV, dim=D, num_queries=4, num_layers=2, num_heads=4, vocab_size=vocab_size,
        max_text_len=16, mlp_ratio=2.0,
    )  # fmt: skip


FUSION_CASES = [
    FusionCase(
        "CrossModalAttention", "fusion",
        lambda: CrossModalAttention(D, num_heads=4, media_dim=DV),
        _fusion_inputs, [(B, L, D)],
    ),
    FusionCase(
        "GatedCrossAttentionBlock", "fusion",
        lambda: GatedCrossAttentionBlock(D, media_dim=DV, num_heads=4, ff_mult=2),
        _fusion_inputs, [(B, L, D)], gates=("alpha_xattn", "alpha_ffw"),
    ),
    FusionCase(
        "PerceiverResampler", "resampler",
        lambda: PerceiverResampler(DV, depth=2, num_latents=6, num_heads=4, head_dim=8,
                                   max_num_frames=M),
        lambda g: ((_media(g),), {}), [(B, 6, DV)],
    ),
    FusionCase(
        "PixelShuffleConnector", "resampler",
        lambda: PixelShuffleConnector(DV, D, scale_factor=2),
        lambda g: ((torch.randn(B, 16, DV, generator=g),), {}), [(B, 4, D)],
    ),
    FusionCase(
        "LlavaProjector", "resampler",
        lambda: LlavaProjector(DV, D, "mlp2x_gelu"),
        lambda g: ((torch.randn(B, 9, DV, generator=g),), {}), [(B, 9, D)],
    ),
    FusionCase(
        "QwenResampler", "resampler",
        lambda: QwenResampler(D, num_queries=4, num_heads=4, media_dim=DV),
        lambda g: ((torch.randn(B, 9, DV, generator=g),), {}), [(B, 4, D)],
    ),
    # The Q-Former returns (query_out, text_out): a resampler when run without text.
    FusionCase(
        "QFormer", "other",
        _qformer,
        lambda g: ((torch.randn(B, 6, DV, generator=g), _ids(g)), {"mode": "itg"}),
        [(B, 4, D), (B, L, D)],
    ),
    FusionCase(
        "QFormer/queries-only", "other",
        lambda: _qformer(vocab_size=0),
        lambda g: ((torch.randn(B, 6, DV, generator=g),), {}),
        [(B, 4, D)],
        # Without text the text-side FFNs never run (BLIP-2 stage 2 / `QFormerConnector`).
        dead=("layers.0.ffn_text.", "layers.1.ffn_text."),
    ),
    FusionCase(
        "QFormerPretrainer", "other",
        lambda: QFormerPretrainer(_qformer(), embed_dim=16),
        lambda g: ((torch.randn(B, 6, DV, generator=g), _ids(g)), {"generator": generator(7)}),
        [(), (), (), ()],
    ),
    FusionCase(
        "PerceiverAttention", "other",
        lambda: PerceiverAttention(D, num_heads=4, head_dim=8),
        lambda g: ((torch.randn(B, 8, D, generator=g), torch.randn(B, 6, D, generator=g)), {}),
        [(B, 6, D)],
    ),
    FusionCase(
        "GeminiFusion", "other",
        lambda: GeminiFusion(D, num_heads=4),
        lambda g: ((torch.randn(B, 9, D, generator=g), torch.randn(B, 9, D, generator=g)), {}),
        [(B, 9, D), (B, 9, D)],
    ),
    FusionCase(
        "TokenFusion", "other",
        # threshold 0.5 (not the paper's 0.02) so that at init some tokens of each modality are
        # substituted and both projections are exercised.
        lambda: TokenFusion(D, threshold=0.5, scale_by_score=True),
        lambda g: ((torch.randn(B, 9, D, generator=g), torch.randn(B, 9, D, generator=g)), {}),
        [(B, 9, D), (B, 9, D), (B, 9), (B, 9)],
    ),
    FusionCase(
        "VisualExpertLayer", "other",
        lambda: VisualExpertLayer(D, num_heads=4, mlp_ratio=2.0),
        lambda g: ((torch.randn(B, 7, D, generator=g), torch.arange(7).expand(B, 7) < 3), {}),
        [(B, 7, D)],
    ),
    FusionCase(
        "EarlyFusionTransformer", "other",
        lambda: EarlyFusionTransformer(vocab_size=50, image_size=16, patch_size=8, dim=D,
                                       depth=1, num_heads=4, max_text_len=16, mlp_ratio=2.0),
        lambda g: ((torch.randn(B, 3, 16, 16, generator=g), _ids(g)), {}),
        [(B, 4 + L, D), (B, L, 50)],
    ),
]  # fmt: skip
FUSION_IDS = [case.name for case in FUSION_CASES]
CONTRACT_CASES = [case for case in FUSION_CASES if case.role != "other"]
FUSION_ROLE_CASES = [case for case in FUSION_CASES if case.role == "fusion"]
GATED_CASES = [case for case in FUSION_CASES if case.gates]


def _name(case: FusionCase) -> str:
    return case.name


def _outputs(out: Any) -> list[torch.Tensor]:
    """The tensors a call returned, in order (None entries of a tuple, e.g. no text, dropped)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return [o for o in out if o is not None]


def _run(case: FusionCase, module: nn.Module, seed: int = 3) -> list[torch.Tensor]:
    args, kwargs = case.inputs(generator(seed))
    return _outputs(module(*args, **kwargs))


def _build(case: FusionCase, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return case.build()


def _open_gates(case: FusionCase, module: nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.rsplit(".", 1)[-1] in case.gates:
                p.fill_(0.5)


def test_fusion_table_covers_the_package() -> None:
    """Every module class exported by `vlkit.fusion` has a row (add one with a new module)."""
    exported = {
        name
        for name in fusion.__all__
        if inspect.isclass(getattr(fusion, name)) and issubclass(getattr(fusion, name), nn.Module)
    }
    covered = {case.name.split("/")[0] for case in FUSION_CASES}
    assert exported == covered


@pytest.mark.parametrize("case", FUSION_CASES, ids=FUSION_IDS)
def test_fusion_shapes_and_finite(case: FusionCase) -> None:
    module = _build(case).eval()
    with torch.no_grad():
        outputs = _run(case, module)
    assert [tuple(o.shape) for o in outputs] == case.shapes
    for o in outputs:
        assert o.dtype == torch.float32 and torch.isfinite(o).all()


@pytest.mark.parametrize(
    "case", [c for c in FUSION_CASES if c.role != "other"], ids=lambda case: case.name
)
def test_fusion_contract_signature(case: FusionCase) -> None:
    """The contract's call form: positional `(text, media)` / `(media)`, `media_mask` optional."""
    module = _build(case).eval()
    args, _ = case.inputs(generator(3))
    with torch.no_grad():
        out = module(*args)
    assert isinstance(out, torch.Tensor) and out.ndim == 3
    if case.role == "fusion":
        text = args[0]
        assert out.shape == text.shape
        assert "media_mask" in inspect.signature(module.forward).parameters
        # (B, N, Dv) is one image per row: the same as (B, 1, N, Dv).
        single = args[1][:, 0]
        with torch.no_grad():
            torch.testing.assert_close(module(text, single), module(text, single[:, None]))
    else:
        assert out.shape[0] == B and out.shape[2] == case.shapes[0][2]


@pytest.mark.parametrize("case", FUSION_CASES, ids=FUSION_IDS)
def test_fusion_backward(case: FusionCase) -> None:
    module = _build(case).train()
    _open_gates(case, module)
    args, kwargs = case.inputs(generator(3))
    args = tuple(a.requires_grad_() if a.is_floating_point() else a for a in args)
    outputs = _outputs(module(*args, **kwargs))
    # A random projection of every output: a plain sum would be blind to anything feeding a
    # final LayerNorm (whose outputs sum to a constant).
    weights = [torch.randn(o.shape, generator=generator(i)) for i, o in enumerate(outputs)]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
    loss.backward()
    assert_finite_grads(module)
    dead = dead_parameters(module)
    expected = {n for n, _ in module.named_parameters() if n.startswith(case.dead)}
    assert dead == expected
    for i, a in enumerate(args):
        if a.is_floating_point():  # every tensor input (text and media) influences the output
            assert a.grad is not None and a.grad.abs().sum() > 0, f"input {i} gets no gradient"


@pytest.mark.parametrize("case", FUSION_CASES, ids=FUSION_IDS)
def test_fusion_determinism(case: FusionCase) -> None:
    module = _build(case).eval()
    with torch.no_grad():
        first, second = _run(case, module), _run(case, module)
        rebuilt = _run(case, _build(case).eval())
        other_input = _run(case, module, seed=4)
    for a, b, c, d in zip(first, second, rebuilt, other_input, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
        if a.ndim:  # (scalar losses may coincide)
            assert not torch.equal(a, d), "the output ignores its input"


@pytest.mark.parametrize("case", GATED_CASES, ids=_name)
def test_fusion_zero_gates_are_the_identity(case: FusionCase) -> None:
    """Flamingo's gates start at 0: the block leaves the frozen LM's hidden states untouched."""
    module = _build(case).eval()
    args, kwargs = case.inputs(generator(3))
    with torch.no_grad():
        assert torch.equal(module(*args, **kwargs), args[0])
        _open_gates(case, module)
        assert not torch.allclose(module(*args, **kwargs), args[0])


@pytest.mark.parametrize(
    "case", [c for c in FUSION_CASES if c.role == "fusion"], ids=lambda case: case.name
)
def test_fusion_media_mask_hides_tokens(case: FusionCase) -> None:
    """Masked media tokens have no influence; unmasked ones do."""
    module = _build(case).eval()
    _open_gates(case, module)
    (text, media), kwargs = case.inputs(generator(3))
    mask = kwargs["media_mask"]
    noise = torch.randn(media.shape, generator=generator(9))
    with torch.no_grad():
        base = module(text, media, media_mask=mask)
        hidden = module(text, torch.where(mask[..., None], media, noise), media_mask=mask)
        visible = module(text, torch.where(mask[..., None], noise, media), media_mask=mask)
    assert torch.equal(base, hidden)
    assert not torch.allclose(base, visible)
