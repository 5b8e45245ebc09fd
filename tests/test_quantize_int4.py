"""Weight-only INT4: the layer equals a dequantized-weight matmul, models convert and generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlkit.cli import main
from vlkit.inference.quantize_int4 import Int4WeightOnlyLinear, quantize_int4
from vlkit.models.decoder import DecoderConfig, DecoderLM, generate

transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")
from test_smolvlm_processor import _write_processor, write_random_smolvlm  # noqa: E402

PROMPT = "What is in this image?"


def _reference(layer: Int4WeightOnlyLinear, weight: torch.Tensor) -> torch.Tensor:
    """The (out, in) weight INT4 should hold: codes of `weight` against the layer's own scales.

    Written from the scheme (w ~ (q - 8) * scale + zero, q in [0, 15], one scale and zero per
    `group_size` inputs of a row), independently of the kernel's packed layout.
    """
    scale, zero = layer.scale_and_zero[:, : layer.out_features].float().unbind(-1)  # (G, N)
    scale = scale.T.repeat_interleave(layer.group_size, dim=1)  # (N, K)
    zero = zero.T.repeat_interleave(layer.group_size, dim=1)
    codes = ((weight - (zero - 8 * scale)) / scale).round().clamp(0, 15)
    return (codes - 8) * scale + zero


@pytest.mark.parametrize(("group_size", "bias"), [(32, True), (64, False), (128, True)])
@torch.no_grad()
def test_int4_linear_equals_dequantized_matmul(group_size: int, bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 97, bias=bias)  # an odd output width, as a vocabulary can be
    layer = Int4WeightOnlyLinear.from_linear(linear, group_size)
    assert layer.packed_weight.dtype == torch.uint8
    assert layer.packed_weight.shape == (112, 128)  # two codes a byte, rows padded to 16s
    weight = _reference(layer, linear.weight)
    scale = layer.scale_and_zero[:, :97, 0].float().T.repeat_interleave(group_size, dim=1)
    # Rounding to the nearest of 16 levels: at most half a step from the float weight.
    assert ((weight - linear.weight).abs() <= scale / 2 + 1e-6).all()
    x = torch.randn(2, 5, 256)
    # The layer computes in bfloat16 (see quantize_int4.py): compare with the float matmul of
    # bfloat16-rounded inputs, within bfloat16 output rounding.
    expected = F.linear(x.bfloat16().float(), weight, linear.bias)
    got = layer(x)
    assert got.shape == (2, 5, 97) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=2e-3)
    assert (got - linear(x)).abs().max() > 1e-3  # really quantized, not the float layer


def _tiny(hidden: int = 64, tie: bool = False) -> DecoderLM:
    config = DecoderConfig(vocab_size=97, hidden_size=hidden, intermediate_size=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, tie_word_embeddings=tie)  # fmt: skip
    torch.manual_seed(0)
    return DecoderLM(config).eval()


def _names(model: nn.Module, kind: type[nn.Module]) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is kind]


@torch.no_grad()
def test_decoder_converted_close_and_generates() -> None:
    model = _tiny(tie=True)
    linears = _names(model, nn.Linear)
    quantized = quantize_int4(model)
    assert _names(quantized, nn.Linear) == [] and _names(model, nn.Linear) == linears
    assert _names(quantized, Int4WeightOnlyLinear) == linears  # the tied head too, as a copy
    assert quantized.get_input_embeddings().weight.dtype == torch.float32
    ids = torch.randint(3, 97, (2, 9))
    cos = F.cosine_similarity(quantized(ids).logits, model(ids).logits, dim=-1)  # (B, L)
    assert cos.min() > 0.98
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    out = generate(quantized, ids, 6, attention_mask=mask)
    assert out.shape == (2, 15)
    # The buffers are a state dict that loads into a fresh conversion.
    again = quantize_int4(_tiny(tie=True))
    again.load_state_dict(quantized.state_dict())
    assert torch.equal(generate(again, ids, 6, attention_mask=mask), out)


def test_keep_head_float_and_refusals() -> None:
    kept = quantize_int4(_tiny(tie=True), include_lm_head=False)
    assert _names(kept, nn.Linear) == ["lm_head"]
    assert kept.lm_head.weight is kept.get_input_embeddings().weight  # still tied
    with pytest.warns(UserWarning, match="stay float32"):  # 48 inputs: no group of 32 fits
        narrow = quantize_int4(_tiny(hidden=48))
    converted = _names(narrow, Int4WeightOnlyLinear)  # only down_proj reads 128 inputs
    assert converted and all(name.endswith("down_proj") for name in converted)
    with pytest.raises(ValueError, match="group_size must be one of"):
        quantize_int4(_tiny(), group_size=16)
    with pytest.raises(ValueError, match="CPU only"):
        quantize_int4(_tiny().to("meta"))  # stands in for CUDA, which CI does not have
    with pytest.raises(ValueError, match="float32"):
        quantize_int4(_tiny().to(torch.bfloat16))


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SmolVLM2 whose linear layers are all multiples of 32 wide."""

    directory = _write_processor(tmp_path_factory.mktemp("smolvlm_int4"))
    write_random_smolvlm(directory, hidden_size=64, intermediate_size=128)
    return directory


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    return path


@torch.no_grad()
def test_smolvlm_int4_pipeline_close_to_fp32(smolvlm_dir: Path, photo: Path) -> None:
    from vlkit.inference import load_vlm

    fp32 = load_vlm(smolvlm_dir)
    int4 = load_vlm(smolvlm_dir, int4=True)
    assert _names(int4.model, nn.Linear) == []  # vision tower, connector and decoder
    inputs = fp32.prepare([Image.open(photo).convert("RGB")], PROMPT)
    new = int4.generate(inputs, max_new_tokens=5)
    assert 1 <= len(new) <= 5
    logits = [p.model(inputs.input_ids, **inputs.model_inputs).logits for p in (fp32, int4)]
    assert F.cosine_similarity(*logits, dim=-1).min() > 0.98  # (1, P): every prompt position
    with pytest.raises(ValueError, match="int8 and int4"):
        load_vlm(smolvlm_dir, int8=True, int4=True)


def test_generate_cli_int4(smolvlm_dir: Path, photo: Path, capsys) -> None:
    code = main(["generate", "--model", str(smolvlm_dir), "--image", str(photo),
                 "--prompt", PROMPT, "--max-new-tokens", "6", "--int4"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip()
    code = main(["generate", "--model", str(smolvlm_dir), "--image", str(photo),
                 "--prompt", PROMPT, "--int4", "--int8"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--int4 and --int8 exclude each other" in err and "\n" not in err
