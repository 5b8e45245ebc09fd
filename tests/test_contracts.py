"""The shared contracts of docs/architecture.md ("Contracts"), one parametrized test per check.

As timm's tests/test_models.py runs every check over `list_models()`, these run the same checks
over every member of a family, so a new preset, fusion module or generative kind is held to the
contract as soon as it is registered:

1. every CLIP preset of `vlkit.models.presets.PRESETS` (built through `vlkit.create_model`, at
   depth 1 and reduced width; the full sizes are shape-checked on the meta device),
2. every module exported by `vlkit.fusion` (an explicit table of tiny constructors and inputs),
3. every generative kind: `FUSION_KINDS` through `build_fusion_vlm`, plus a SmolVLM-shaped
   `GenerativeVLM` (SigLIP tower, pixel-shuffle connector, Llama decoder).

Where vlkit deviates from a written contract, the check says so with `pytest.xfail(<what>)`, so
the deviation is listed by `pytest -rx` and the check runs for real once the code complies.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlkit
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
from vlkit.models import (
    CLIPConfig,
    DecoderConfig,
    DecoderLM,
    ResNetConfig,
    TextOutput,
    VisionOutput,
    ViTConfig,
)
from vlkit.models.fusion_vlm import FUSION_KINDS, FusionVLMConfig, build_fusion_vlm
from vlkit.models.presets import PRESETS
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.models.smolvlm_vision import SmolVLMVisionConfig, SmolVLMVisionTransformer

IGNORE_INDEX = -100


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The models here are tiny: one intra-op thread avoids contention on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dead_parameters(model: nn.Module) -> set[str]:
    """Trainable parameters that received no gradient (None) or an all-zero one."""
    return {
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    }


def _assert_finite_grads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# =================================================================================================
# 1. CLIP-like presets
# =================================================================================================

PRESET_NAMES = sorted(PRESETS)


def _narrow(width: int, heads: int, mlp_dim: int) -> tuple[int, int]:
    """(width, mlp_dim) at 16 channels per head (never wider than the preset), same MLP ratio."""
    new = min(width, heads * 16)
    return new, mlp_dim * new // width


def reduced_config(name: str) -> CLIPConfig:
    """The preset at depth 1 and reduced width, everything else (image size, patch size, tokens
    per image, vocabulary, context, pooling, activations, embed_dim where free) unchanged."""
    config = copy.deepcopy(PRESETS[name])
    vision = config.vision
    if isinstance(vision, ResNetConfig):
        vision = replace(vision, layers=(1, 1, 1, 1), width=min(vision.width, 16))
    else:
        width, mlp = _narrow(vision.width, vision.heads, vision.mlp_dim)
        vision = replace(vision, layers=1, width=width, mlp_dim=mlp)
    width, mlp = _narrow(config.text.width, config.text.heads, config.text.mlp_dim)
    text = replace(config.text, layers=1, width=width, mlp_dim=mlp)
    embed_dim = config.embed_dim
    if isinstance(vision, ViTConfig) and not config.vision_projection:
        embed_dim = vision.width  # the tower's output is the embedding (SigLIP)
    return replace(config, vision=vision, text=text, embed_dim=embed_dim)


def build_preset(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return vlkit.create_model(reduced_config(name))


def preset_images(config: CLIPConfig, batch: int, seed: int = 1) -> torch.Tensor:
    size = config.vision.image_size
    return torch.randn(batch, 3, size, size, generator=_gen(seed))


def preset_texts(
    config: CLIPConfig, batch: int, length: int = 8, seed: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids ending in end-of-text at different positions, padded after it, and the mask."""
    text = config.text
    ids = torch.randint(2, 1000, (batch, length), generator=_gen(seed))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        end = length - 1 - row % 3
        ids[row, end] = text.eos_token_id
        ids[row, end + 1 :] = text.pad_token_id
        mask[row, end + 1 :] = 0
    return ids, mask


def pooled_positions(config: CLIPConfig, ids: torch.Tensor) -> torch.Tensor:
    """Where the text contract says the pooled feature comes from, per row."""
    pooling = config.text.pooling
    if pooling == "last":
        return torch.full((ids.shape[0],), ids.shape[1] - 1)
    if pooling == "argmax":
        return ids.argmax(-1)
    return (ids == config.text.eos_token_id).int().argmax(-1)


def vision_token_shape(config: CLIPConfig) -> tuple[int, int]:
    """(N, D) of the image tower's token output for the config's image size."""
    vision = config.vision
    if isinstance(vision, ResNetConfig):
        return (vision.image_size // 32) ** 2, vision.width * 32
    return vision.grid_size**2 + int(vision.class_token), vision.width


def test_reduced_presets_keep_their_geometry() -> None:
    """The reductions below keep what the contract checks depend on: they must stay reductions."""
    for name in PRESET_NAMES:
        full, small = PRESETS[name], reduced_config(name)
        assert vision_token_shape(small)[0] == vision_token_shape(full)[0], name
        assert small.vision.image_size == full.vision.image_size, name
        assert small.text.vocab_size == full.text.vocab_size, name
        assert (small.model_type, small.text.pooling) == (full.model_type, full.text.pooling)
        if full.vision_projection or isinstance(full.vision, ResNetConfig):
            assert small.embed_dim == full.embed_dim, name


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_full_size_shapes_on_meta(name: str) -> None:
    """The unreduced preset, on the meta device (no memory, no compute): every output shape."""
    config = PRESETS[name]
    with torch.device("meta"):
        model = vlkit.create_model(name).eval()
        images = torch.empty(2, 3, config.vision.image_size, config.vision.image_size)
        ids = torch.zeros(3, config.text.context_length, dtype=torch.long)
        vision, text = model.vision(images), model.text(ids)
        image_emb, text_emb = model.encode_image(images), model.encode_text(ids)
        logits = model.logits(image_emb, text_emb)
    assert vision.tokens.shape == (2, *vision_token_shape(config))
    assert vision.pooled.shape == (2, model.vision.width)
    assert text.tokens.shape == (3, config.text.context_length, config.text.width)
    assert image_emb.shape == (2, config.embed_dim) and text_emb.shape == (3, config.embed_dim)
    assert logits.shape == (2, 3)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_encoders_and_logits(name: str) -> None:
    model = build_preset(name).eval()
    config = model.config
    images = preset_images(config, 3)
    ids, mask = preset_texts(config, 2)
    with torch.no_grad():
        image_emb = model.encode_image(images)
        text_emb = model.encode_text(ids, mask)
        logits = model.logits(image_emb, text_emb)
        out = model(pixel_values=images, input_ids=ids, attention_mask=mask)
        # Float32 in, float32 out; other float inputs are cast to the model's dtype.
        from_double = model.encode_image(images.double())
    assert image_emb.shape == (3, config.embed_dim) and text_emb.shape == (2, config.embed_dim)
    assert image_emb.dtype == text_emb.dtype == logits.dtype == from_double.dtype == torch.float32
    torch.testing.assert_close(from_double, image_emb)
    # Rows are images, columns texts: scaled cosine similarity (+ the bias when there is one).
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    cosine = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    bias = 0.0 if model.logit_bias is None else model.logit_bias
    torch.testing.assert_close(logits, model.temperature() * cosine + bias)
    torch.testing.assert_close(out.logits_per_image, logits)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(2))
    # One tower alone: the other side and the logits are absent.
    alone = model(pixel_values=images)
    assert alone.text_embeds is None and alone.logits_per_image is None


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_tower_contracts(name: str) -> None:
    """Vision: VisionOutput(tokens (B, N, D), pooled (B, D)); text: TextOutput likewise."""
    model = build_preset(name).eval()
    config = model.config
    images = preset_images(config, 2)
    ids, mask = preset_texts(config, 3)
    with torch.no_grad():
        vision = model.vision(images)
        text = model.text(ids, mask)
    assert isinstance(vision, VisionOutput)
    assert vision.tokens.shape == (2, *vision_token_shape(config))
    assert vision.pooled.shape == (2, model.vision.width)
    assert torch.isfinite(vision.tokens).all() and torch.isfinite(vision.pooled).all()
    if isinstance(config.vision, ViTConfig) and config.vision.pool == "cls":
        assert torch.equal(vision.pooled, vision.tokens[:, 0])
    assert isinstance(text, TextOutput)
    assert text.tokens.shape == (3, ids.shape[1], config.text.width)
    assert text.pooled.shape == (3, config.text.width)
    rows = torch.arange(3)
    assert torch.equal(text.pooled, text.tokens[rows, pooled_positions(config, ids)])


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.xfail(
    raises=(ValueError, RuntimeError),
    strict=False,
    reason="contract: other image sizes through interpolated positions (towers accept one size)",
)
def test_preset_vision_tower_other_image_size(name: str) -> None:
    model = build_preset(name).eval()
    size = model.config.vision.image_size + 32  # a multiple of every patch size and of 32
    with torch.no_grad():
        out = model.vision(torch.randn(1, 3, size, size))
    assert out.pooled.shape == (1, model.vision.width)


def _contrastive_loss(model: nn.Module, out: Any) -> torch.Tensor:
    """The loss each model type trains with: CLIP's symmetric InfoNCE, SigLIP's sigmoid loss."""
    logits = out.logits_per_image
    target = torch.arange(logits.shape[0])
    if model.config.model_type == "siglip":
        signs = 2 * torch.eye(logits.shape[0]) - 1
        return -F.logsigmoid(signs * logits).sum() / logits.shape[0]
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_backward_reaches_every_parameter(name: str) -> None:
    model = build_preset(name).train()
    if isinstance(model.config.vision, ResNetConfig):
        # Each bottleneck's last BatchNorm starts at zero (open_clip), which zeroes the gradient
        # of everything before it in the residual branch; a nonzero scale exposes the wiring.
        tower = model.vision
        for stage in (tower.layer1, tower.layer2, tower.layer3, tower.layer4):
            for block in stage:
                nn.init.ones_(block.bn3.weight)
    config = model.config
    ids, mask = preset_texts(config, 3)
    out = model(pixel_values=preset_images(config, 3), input_ids=ids, attention_mask=mask)
    loss = _contrastive_loss(model, out)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    _assert_finite_grads(model)
    assert _dead_parameters(model) == set()


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_determinism(name: str) -> None:
    model = build_preset(name).eval()
    images = preset_images(model.config, 2)
    ids, mask = preset_texts(model.config, 2)
    with torch.no_grad():
        first = model(pixel_values=images, input_ids=ids, attention_mask=mask)
        second = model(pixel_values=images, input_ids=ids, attention_mask=mask)
    assert torch.equal(first.logits_per_image, second.logits_per_image)
    assert torch.equal(first.image_embeds, second.image_embeds)
    # The same seed builds the same model; another seed does not.
    assert _same_weights(model, build_preset(name, seed=0))
    assert not _same_weights(model, build_preset(name, seed=1))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_bfloat16(name: str) -> None:
    """A bfloat16 model takes float32 images and answers in bfloat16, close to float32."""
    model = build_preset(name).eval()
    images = preset_images(model.config, 2)
    ids, mask = preset_texts(model.config, 2)
    with torch.no_grad():
        reference = model.encode_image(images), model.encode_text(ids, mask)
        model.to(torch.bfloat16)
        half = model.encode_image(images), model.encode_text(ids, mask)
    for ref, low in zip(reference, half, strict=True):
        assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
        assert F.cosine_similarity(ref, low.float(), dim=-1).min() > 0.98


# =================================================================================================
# 2. Fusion modules
# =================================================================================================

B, L, D, M, N, DV = (
    2,
    5,
    32,
    2,
    4,
    24,
)  # batch, text length, text width, images, tokens, media width


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
        lambda g: ((torch.randn(B, 6, DV, generator=g), _ids(g)), {"generator": _gen(7)}),
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
    args, kwargs = case.inputs(_gen(seed))
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
    args, _ = case.inputs(_gen(3))
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
    args, kwargs = case.inputs(_gen(3))
    args = tuple(a.requires_grad_() if a.is_floating_point() else a for a in args)
    outputs = _outputs(module(*args, **kwargs))
    # A random projection of every output: a plain sum would be blind to anything feeding a
    # final LayerNorm (whose outputs sum to a constant).
    weights = [torch.randn(o.shape, generator=_gen(i)) for i, o in enumerate(outputs)]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
    loss.backward()
    _assert_finite_grads(module)
    dead = _dead_parameters(module)
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
    args, kwargs = case.inputs(_gen(3))
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
    (text, media), kwargs = case.inputs(_gen(3))
    mask = kwargs["media_mask"]
    noise = torch.randn(media.shape, generator=_gen(9))
    with torch.no_grad():
        base = module(text, media, media_mask=mask)
        hidden = module(text, torch.where(mask[..., None], media, noise), media_mask=mask)
        visible = module(text, torch.where(mask[..., None], noise, media), media_mask=mask)
    assert torch.equal(base, hidden)
    assert not torch.allclose(base, visible)


# =================================================================================================
# 3. Generative VLMs
# =================================================================================================

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
    return torch.randn(batch, 1, 3, SIZE, SIZE, generator=_gen(seed))


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
    """forward(input_ids, pixel_values=None, attention_mask=None, labels=None) and
    generate(input_ids, pixel_values=..., attention_mask=..., ...), save_pretrained(dir)."""
    model, _ = build_generative(kind)
    forward = list(inspect.signature(model.forward).parameters.values())
    names = [p.name for p in forward]
    assert names[0] == "input_ids" and {"pixel_values", "attention_mask"} <= set(names)
    deviations = []
    generate = inspect.signature(model.generate).parameters
    if not {"input_ids", "pixel_values", "attention_mask", "max_new_tokens"} <= set(generate):
        deviations.append(f"generate's signature does not name its arguments: {list(generate)}")
    if names[1:3] != ["pixel_values", "attention_mask"]:
        deviations.append(f"forward's positional order is {names[:4]}")
    if forward[names.index("pixel_values")].default is not None:
        deviations.append("pixel_values has no None default (text-only forward)")
    if "labels" not in names:
        deviations.append("forward takes no labels (no output.loss)")
    if not callable(getattr(model, "save_pretrained", None)):
        deviations.append("no save_pretrained(dir)")
    if deviations:
        pytest.xfail(f"{type(model).__name__}: " + "; ".join(deviations))


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
    assert logits.shape == (2, ids.shape[1], VOCAB + 1) and logits.dtype == torch.float32
    assert torch.isfinite(logits[mask.bool()]).all()
    assert torch.equal(logits, again) and torch.equal(logits, rebuilt.logits)
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
    # The Q-Former connector runs its queries without text: the text-side FFN weights it
    # inherits from `QFormer` are never used (see the report of this test file).
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
    logits = model(ids, pixel_values=_pixels(), attention_mask=mask).logits
    loss = _next_token_loss(logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert 0.5 * torch.log(torch.tensor(VOCAB + 1.0)) < loss < 2 * torch.log(torch.tensor(VOCAB))
    loss.backward()
    _assert_finite_grads(model)
    assert _dead_parameters(model) == GENERATIVE_DEAD.get(kind, set())


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_labels_give_the_loss(kind: str) -> None:
    model, count = build_generative(kind)
    if "labels" not in inspect.signature(model.forward).parameters:
        pytest.xfail(f"contract: {type(model).__name__}.forward takes no labels")
    model.eval()
    ids, mask = _batch(count)
    labels = _labels(ids, mask)
    with torch.no_grad():
        out = model(ids, pixel_values=_pixels(), attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, _next_token_loss(out.logits, labels))


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_generative_text_only_forward(kind: str) -> None:
    model, _ = build_generative(kind)
    if inspect.signature(model.forward).parameters["pixel_values"].default is not None:
        pytest.xfail(f"contract: {type(model).__name__}.forward needs pixel_values")
    model.eval()
    ids = torch.tensor(PROMPTS[1:])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], VOCAB + 1) and torch.isfinite(logits).all()


STEPS = 4


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
