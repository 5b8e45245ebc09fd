"""Dynamic int8 quantization: every linear layer converted, logits close to fp32, still generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from vlkit.inference import quantize_int8
from vlkit.models.decoder import DecoderConfig, DecoderLM, generate


def _tiny(tie: bool = False) -> DecoderLM:
    cfg = DecoderConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        tie_word_embeddings=tie,
    )
    return DecoderLM(cfg).eval()


def _linear_names(model: nn.Module, kind: type[nn.Module]) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is kind]


@pytest.mark.parametrize("tie", [False, True])
@torch.no_grad()
def test_decoder_linears_replaced_and_logits_close(tie: bool) -> None:
    model = _tiny(tie)
    names = _linear_names(model, nn.Linear)
    assert len(names) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + lm_head
    quantized = quantize_int8(model)
    assert _linear_names(quantized, nn.Linear) == []
    assert _linear_names(quantized, DynamicQuantizedLinear) == names
    assert _linear_names(model, nn.Linear) == names  # the input model is left alone
    assert quantized.get_input_embeddings().weight.dtype == torch.float32
    ids = torch.randint(0, 97, (2, 9))
    cos = F.cosine_similarity(quantized(ids).logits, model(ids).logits, dim=-1)  # (B, L)
    assert cos.min() > 0.99


def test_keep_tied_lm_head() -> None:
    model = _tiny(tie=True)
    quantized = quantize_int8(model, include_lm_head=False)
    assert _linear_names(quantized, nn.Linear) == ["lm_head"]
    assert quantized.lm_head.weight is quantized.get_input_embeddings().weight  # still tied
    assert len(_linear_names(quantized, DynamicQuantizedLinear)) == 14


def test_quantized_decoder_generates() -> None:
    model = _tiny()
    quantized = quantize_int8(model)
    ids = torch.randint(3, 97, (2, 5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    out = generate(quantized, ids, 8, attention_mask=mask)
    assert out.shape == (2, 13)
    static = generate(quantized, ids, 8, attention_mask=mask, cache_implementation="static")
    assert torch.equal(static, out)
    agree = (out[:, 5:] == generate(model, ids, 8, attention_mask=mask)[:, 5:]).float().mean()
    assert agree > 0.5  # a random tiny model: most greedy tokens survive int8


@torch.no_grad()
def test_quantized_smolvlm_close_and_generates(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from test_smolvlm import IMAGE_SIZE, _hf_model, _prompt, _save_and_load

    model = _save_and_load(_hf_model("smolvlm", 4, tied=True), tmp_path).eval()
    quantized = quantize_int8(model)
    assert _linear_names(quantized.decoder, nn.Linear) == []
    assert _linear_names(quantized, nn.Linear) == []  # vision tower and connector too
    ids = torch.tensor([_prompt(1, 4, [1, 7, 8], [9, 10])])
    pixels = torch.randn(1, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    cos = F.cosine_similarity(quantized(ids, pixels).logits, model(ids, pixels).logits, dim=-1)
    assert cos.min() > 0.99
    out = quantized.generate(ids, pixels, max_new_tokens=5)
    assert out.shape == (1, ids.shape[1] + 5)


def test_refuses_non_cpu_model() -> None:
    model = _tiny().to("meta")  # stands in for CUDA, which CI does not have
    with pytest.raises(ValueError, match="CPU only"):
        quantize_int8(model)
    with pytest.raises(ValueError, match="float32"):
        quantize_int8(_tiny().to(torch.bfloat16))
