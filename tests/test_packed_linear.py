"""oneDNN-packed linear layers (`vlkit.layers.packed_linear`) and the CLS-only last ViT block.

Both are inference speed-ups that `vlkit benchmark` uses on the CPU; neither may change what a
model computes beyond float rounding. Packed layers are compared with the `nn.Linear` they
replace (bias or not, 2-D / 3-D / non-contiguous inputs, each MLP activation fused), whole packed
CLIP models with their unpacked copies, and `VisionTransformer.pooled_features` with the full
forward's pooled token; the refusals (gradients, training mode) and the fall-backs (no oneDNN,
non-fp32 weights, attention pooling) are checked too."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vlkit.hub.loading import save_pretrained
from vlkit.layers import packed_linear
from vlkit.layers.mlp import Mlp
from vlkit.layers.packed_linear import PackedLinear, pack_linear_layers, packed_linear_available
from vlkit.layers.transformer import Transformer
from vlkit.models.clip import create_model
from vlkit.models.vit import VisionTransformer, ViTConfig

needs_onednn = pytest.mark.skipif(
    not packed_linear_available(), reason="oneDNN's packed fp32 GEMM needs an x86 CPU (AVX2+)"
)


def _perturbed(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial LayerNorms and biases (zero-initialised ones would hide a dropped bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=g) * 0.05)
    return module.eval()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_linear(bias):
    torch.manual_seed(0)
    linear = nn.Linear(48, 40, bias=bias).eval()
    packed = PackedLinear(linear)
    inputs = [
        torch.randn(7, 48),
        torch.randn(3, 5, 48),
        torch.randn(5, 3, 48).transpose(0, 1),  # non-contiguous
        torch.randn(0, 48),
    ]
    with torch.no_grad():
        for x in inputs:
            expected = linear(x)
            got = packed(x)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert packed.weight is not linear.weight and torch.equal(packed.weight, linear.weight)
    assert "in_features=48, out_features=40" in repr(packed)


@needs_onednn
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu", "gelu_pytorch_tanh"])
def test_packed_mlp_fuses_the_activation(activation):
    torch.manual_seed(0)
    mlp = _perturbed(Mlp(32, 96, activation))
    packed = copy.deepcopy(mlp)
    assert pack_linear_layers(packed) == 2
    assert isinstance(packed.fc1, PackedLinear) and packed.fc1.epilogue != "none"
    x = torch.randn(4, 9, 32) * 2
    with torch.no_grad():
        torch.testing.assert_close(packed(x), mlp(x), rtol=1e-5, atol=1e-5)
    # The original parameters stay what state_dict() reports (QuickGELU's scale is in the copy).
    for key, value in mlp.state_dict().items():
        assert torch.equal(packed.state_dict()[key], value), key


@needs_onednn
def test_packed_clip_model_equals_the_unpacked_one():
    torch.manual_seed(0)
    model = _perturbed(create_model("tiny"))
    packed = copy.deepcopy(model)
    count = pack_linear_layers(packed)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert count == len(linears) > 0
    assert not any(type(m) is nn.Linear for m in packed.modules())
    images = torch.randn(3, 3, 32, 32)
    text = model.config.text
    ids = torch.randint(1, text.vocab_size, (4, text.context_length))
    with torch.no_grad():
        torch.testing.assert_close(
            packed.encode_image(images, normalize=True),
            model.encode_image(images, normalize=True),
            rtol=1e-5,
            atol=1e-6,
        )
        torch.testing.assert_close(
            packed.encode_text(ids, normalize=True),
            model.encode_text(ids, normalize=True),
            rtol=1e-5,
            atol=1e-6,
        )
    assert packed.state_dict().keys() == model.state_dict().keys()


@needs_onednn
def test_packed_layers_refuse_gradients():
    packed = PackedLinear(nn.Linear(8, 8).eval())
    with pytest.raises(RuntimeError, match="for inference"):
        packed(torch.randn(2, 8, requires_grad=True))
    packed.train()
    with pytest.raises(RuntimeError, match="for inference"):
        packed(torch.randn(2, 8))
    with torch.no_grad():  # under no_grad even a module left in train mode may run
        assert packed(torch.randn(2, 8)).shape == (2, 8)


def test_nothing_is_packed_without_onednn_or_fp32(monkeypatch):
    model = create_model("tiny").eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    if packed_linear_available():
        assert pack_linear_layers(bf16) == 0
        assert sum(type(m) is nn.Linear for m in bf16.modules()) > 0
    monkeypatch.setattr(packed_linear, "packed_linear_available", lambda: False)
    assert pack_linear_layers(model) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def _vit(pool: str = "cls", layers: int = 3) -> VisionTransformer:
    torch.manual_seed(0)
    config = ViTConfig(image_size=48, patch_size=16, width=32, layers=layers, heads=4, mlp_dim=64,
                       activation="gelu", pool=pool)  # fmt: skip
    return _perturbed(VisionTransformer(config))


@pytest.mark.parametrize("layers", [1, 3])
def test_vit_pooled_features_equal_the_full_forward(layers):
    tower = _vit(layers=layers)
    images = torch.randn(5, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            tower.pooled_features(images), tower(images).pooled, rtol=1e-5, atol=1e-6
        )
        other = torch.randn(2, 3, 80, 64)  # another size, through interpolated positions
        torch.testing.assert_close(
            tower.pooled_features(other, interpolate_pos_encoding=True),
            tower(other, interpolate_pos_encoding=True).pooled,
            rtol=1e-5,
            atol=1e-6,
        )
        with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
            tower.pooled_features(other)


def test_transformer_forward_prefix_equals_the_first_rows():
    torch.manual_seed(0)
    stack = _perturbed(Transformer(32, 2, 4, 64, "quick_gelu", 1e-5))
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        full, _ = stack(x)
        torch.testing.assert_close(stack.forward_prefix(x, 2), full[:, :2], rtol=1e-5, atol=1e-6)
    stack.train()
    with pytest.raises(RuntimeError, match="eval"):
        stack.forward_prefix(x, 1)


def test_pooled_features_falls_back_to_forward():
    # Attention pooling reads every token; training mode keeps the plain path (dropout shapes).
    tower = _vit(pool="map")
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(tower.pooled_features(images), tower(images).pooled)
    tower = _vit()
    tower.train()
    torch.manual_seed(1)
    first = tower.pooled_features(images)
    torch.manual_seed(1)
    assert torch.equal(first, tower(images).pooled)


def test_benchmark_packs_the_model_unless_asked_not_to(tmp_path):
    from vlkit.recipes.benchmark import _Model

    torch.manual_seed(0)
    save_pretrained(create_model("tiny"), tmp_path / "m", format="vlkit")
    cpu = torch.device("cpu")
    plain, _, _ = _Model(str(tmp_path / "m"), cpu, packed_linear=False).get()
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    packed, _, _ = _Model(str(tmp_path / "m"), cpu, packed_linear=True).get()
    assert any(isinstance(m, PackedLinear) for m in packed.modules()) == packed_linear_available()


@needs_onednn
def test_packing_without_the_original_weights():
    torch.manual_seed(0)
    model = _perturbed(create_model("tiny"))
    lean = copy.deepcopy(model)
    count = pack_linear_layers(lean, keep_weights=False)
    linear_params = sum(p.numel() for m in model.modules() if type(m) is nn.Linear
                        for p in m.parameters())  # fmt: skip
    kept = sum(p.numel() for p in lean.parameters())
    assert count > 0 and kept == sum(p.numel() for p in model.parameters()) - linear_params
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            lean.encode_image(images), model.encode_image(images), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(RuntimeError, match="keep_weights=False"):
        lean.state_dict()


@needs_onednn
def test_packed_model_refuses_what_it_cannot_do():
    import pickle

    model = create_model("tiny").eval()
    state = model.state_dict()
    pack_linear_layers(model)
    for attempt in (
        lambda: copy.deepcopy(model),
        lambda: model.to(torch.bfloat16),
        lambda: model.cpu(),
        lambda: model.load_state_dict(state),
        lambda: pickle.dumps(model),
    ):
        with pytest.raises(RuntimeError, match="before `pack_linear_layers`"):
            attempt()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="fp32 inputs without autocast"), autocast:
            model.encode_image(images)
        layer = next(m for m in model.modules() if isinstance(m, PackedLinear))
        with pytest.raises(RuntimeError, match="fp32 inputs"):
            layer(torch.randn(2, layer.in_features, dtype=torch.bfloat16))


def test_hooks_on_the_tower_see_the_full_forward():
    tower = _vit()
    images = torch.randn(2, 3, 48, 48)
    seen = []
    handle = tower.register_forward_hook(lambda _, __, out: seen.append(out.tokens.shape))
    with torch.no_grad():
        pooled = tower.pooled_features(images)
    handle.remove()
    assert seen == [(2, 10, 32)]  # CLS + 9 patches: the whole forward ran
    last = tower.transformer.blocks[-1]
    handle = last.register_forward_hook(lambda _, __, out: seen.append(out[0].shape))
    with torch.no_grad():
        assert torch.equal(tower.pooled_features(images), pooled)
    handle.remove()
    assert seen[-1] == (2, 10, 32)


def test_forward_prefix_needs_a_block():
    stack = Transformer(32, 0, 4, 64, "gelu", 1e-5).eval()
    with pytest.raises(ValueError, match="at least one block"):
        stack.forward_prefix(torch.randn(1, 3, 32), 1)
