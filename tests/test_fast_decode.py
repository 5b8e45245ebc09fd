"""Static KV cache and the (CUDA-graph) decode step: same logits and tokens as the dynamic cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlkit.models.decoder import (
    DecoderConfig,
    DecoderLM,
    KVCache,
    StaticKVCache,
    fast_decode,
    generate,
)
from vlkit.models.decoder.fast_decode import DecodeStep, decode_step_for


def _tiny(tie: bool = False) -> DecoderLM:
    cfg = DecoderConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        tie_word_embeddings=tie,
    )
    return DecoderLM(cfg).eval()


def _left_padded(b: int = 2, p: int = 7, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (b, p))
    mask = torch.ones_like(ids)
    if b > 1:  # the last row is shorter
        mask[-1, :pad] = 0
        ids[-1, :pad] = 0
    return ids, mask


@torch.no_grad()
def test_static_cache_logits_match_dynamic_left_padded() -> None:
    model = _tiny()
    ids, mask = _left_padded()
    more = torch.randint(3, 97, (2, 4))
    static = StaticKVCache(model.config, batch_size=2, max_len=16)
    dyn = model(ids, attention_mask=mask, use_cache=True)
    out = model(ids, attention_mask=mask, cache=static)
    keep = mask.bool()
    torch.testing.assert_close(out.logits[keep], dyn.logits[keep], atol=1e-5, rtol=1e-5)
    for i in range(more.shape[1]):  # decode one token at a time, both caches
        mask = torch.cat([mask, mask.new_ones(2, 1)], 1)
        dyn = model(more[:, i : i + 1], attention_mask=mask, cache=dyn.cache)
        out = model(more[:, i : i + 1], attention_mask=mask, cache=static)
        torch.testing.assert_close(out.logits, dyn.logits, atol=1e-5, rtol=1e-5)
    assert static.seq_len == dyn.cache.seq_len == 11
    assert static.keys[0].shape == (2, 2, 16, 8)  # (B, H_kv, S, Dh), never reallocated
    written = static.keys[1][:, :, :11]
    torch.testing.assert_close(written, dyn.cache.keys[1], atol=1e-5, rtol=1e-5)
    assert (static.keys[1][:, :, 11:] == 0).all()  # unwritten slots untouched
    assert static.slot_mask[1].tolist() == [False] * 3 + [True] * 8 + [False] * 5


@torch.no_grad()
def test_decode_step_matches_dynamic_and_no_mask_prefill() -> None:
    """The captured code path (explicit cache_position, no attention mask), run eagerly."""
    model = _tiny(tie=True)
    ids = torch.randint(3, 97, (1, 5))
    static = StaticKVCache(model.config, batch_size=1, max_len=9)
    step = DecodeStep(model, static)
    assert not step.cuda_graph  # CPU: eager fallback
    out = model(ids, cache=static)  # no mask: all prompt tokens are real
    dyn = model(ids, use_cache=True)
    torch.testing.assert_close(out.logits, dyn.logits, atol=1e-5, rtol=1e-5)
    tok = dyn.logits[:, -1].argmax(-1)
    for _ in range(4):
        logits = step(tok)
        dyn = model(tok[:, None], cache=dyn.cache)
        torch.testing.assert_close(logits, dyn.logits[:, -1], atol=1e-5, rtol=1e-5)
        tok = logits.argmax(-1)
    assert static.seq_len == 9 and step.calls == 4
    with pytest.raises(ValueError, match="full"):
        step(tok)


@torch.no_grad()
def test_decode_step_needs_no_tensor_values_on_the_host() -> None:
    """The step runs on meta tensors (shapes only, no data): it never copies a value to the host
    (no `.item()`, no data-dependent shape), which a CUDA graph capture would reject."""
    model = _tiny().to("meta")
    step = DecodeStep(model, StaticKVCache(model.config, 2, 12, device="meta"))
    assert step(torch.zeros(2, dtype=torch.long, device="meta")).shape == (2, 97)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("tie", [False, True])
def test_static_greedy_equals_dynamic_with_stop_and_streamer(batch: int, tie: bool) -> None:
    model = _tiny(tie)
    ids, mask = _left_padded(batch)
    free = generate(model, ids, 12, attention_mask=mask)
    assert torch.equal(
        free, generate(model, ids, 12, attention_mask=mask, cache_implementation="static")
    )
    eos = [int(free[0, 10])]  # row 0 stops at or before its 4th new token
    runs = {}
    for impl in ("dynamic", "static"):
        streamed: list[torch.Tensor] = []
        runs[impl] = generate(
            model,
            ids,
            12,
            attention_mask=mask,
            eos_token_id=eos,
            pad_token_id=0,
            streamer=streamed.append,
            cache_implementation=impl,
        )
        assert torch.equal(torch.stack(streamed, 1), runs[impl][:, 7:])
    assert torch.equal(runs["static"], runs["dynamic"])
    first = runs["static"][0, 7:].tolist().index(eos[0])  # row 0 stopped and was padded
    assert (runs["static"][0, 8 + first :] == 0).all()


def test_static_sampling_equals_dynamic() -> None:
    model = _tiny()
    ids, mask = _left_padded()
    kw = {"do_sample": True, "temperature": 1.3, "top_k": 30, "top_p": 0.9, "attention_mask": mask}
    dyn = generate(model, ids, 10, generator=torch.Generator().manual_seed(1), **kw)
    static = generate(
        model,
        ids,
        10,
        generator=torch.Generator().manual_seed(1),
        cache_implementation="static",
        **kw,
    )
    assert torch.equal(static, dyn)


def test_decode_step_is_reused_for_the_same_shape() -> None:
    model = _tiny()
    ids = torch.randint(3, 97, (1, 4))
    first = decode_step_for(model, 1, 10, torch.device("cpu"), torch.float32)
    first.cache.seq_len = 3
    again = decode_step_for(model, 1, 10, torch.device("cpu"), torch.float32)
    assert again is first and again.cache.seq_len == 0  # reset in place
    other = decode_step_for(model, 2, 10, torch.device("cpu"), torch.float32)
    assert other is not first
    assert decode_step_for(model, 1, 10, torch.device("cpu"), torch.float32) is first
    for n in range(fast_decode.MAX_STEPS_PER_MODEL):  # evicts the least recently used
        decode_step_for(model, 1, 11 + n, torch.device("cpu"), torch.float32)
    assert len(fast_decode._STEPS[model]) == fast_decode.MAX_STEPS_PER_MODEL
    assert decode_step_for(model, 1, 10, torch.device("cpu"), torch.float32) is not first
    ref = generate(model, ids, 6)
    for _ in range(2):  # the second call reuses the first call's step
        assert torch.equal(generate(model, ids, 6, cache_implementation="static"), ref)
    fast_decode.release(model)
    assert model not in fast_decode._STEPS


def test_static_cache_errors() -> None:
    model = _tiny()
    ids = torch.randint(3, 97, (1, 4))
    with pytest.raises(NotImplementedError, match="beam"):
        generate(model, ids, 4, num_beams=2, cache_implementation="static")
    with pytest.raises(ValueError, match="CUDA"):
        generate(model, ids, 4, cache_implementation="static", cuda_graph=True)
    with pytest.raises(ValueError, match="static"):
        generate(model, ids, 4, cuda_graph=True)
    with pytest.raises(ValueError, match="max_cache_len"):
        generate(model, ids, 4, cache_implementation="static", max_cache_len=5)
    with pytest.raises(ValueError, match="unknown"):
        generate(model, ids, 4, cache_implementation="paged")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache_position needs"):
        model(ids, cache=KVCache(), cache_position=torch.tensor([0]))


def test_tiny_smolvlm_static_equals_dynamic(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from test_smolvlm import IMAGE_SIZE, _hf_model, _left_pad, _prompt, _save_and_load

    model = _save_and_load(_hf_model("smolvlm", 4, tied=True), tmp_path).eval()
    seq = 4  # 64 patches / 4**2
    torch.manual_seed(4)
    single = torch.tensor([_prompt(1, seq, [1, 7, 8], [9, 10])])
    ids, attn = _left_pad([_prompt(1, seq, [1, 7, 8], [9, 10]), _prompt(1, seq, [1], [12])])
    cases = [
        (single, None, torch.randn(1, 1, 3, IMAGE_SIZE, IMAGE_SIZE)),
        (ids, attn, torch.randn(2, 1, 3, IMAGE_SIZE, IMAGE_SIZE)),
    ]
    for prompt, mask, pixels in cases:
        free = model.generate(prompt, pixels, attention_mask=mask, max_new_tokens=8)
        eos = int(free[0, prompt.shape[1] + 2])
        runs = {}
        for impl in ("dynamic", "static"):
            streamed: list[torch.Tensor] = []
            runs[impl] = model.generate(
                prompt,
                pixels,
                attention_mask=mask,
                max_new_tokens=8,
                eos_token_id=eos,
                pad_token_id=0,
                streamer=streamed.append,
                cache_implementation=impl,
            )
            assert torch.equal(torch.stack(streamed, 1), runs[impl][:, prompt.shape[1] :])
        assert torch.equal(runs["static"], runs["dynamic"])
        assert eos in runs["static"][0].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_greedy_equals_eager() -> None:
    model = _tiny().cuda()
    ids, mask = _left_padded()
    ids, mask = ids.cuda(), mask.cuda()
    ref = generate(model, ids, 12, attention_mask=mask)
    eager = generate(
        model, ids, 12, attention_mask=mask, cache_implementation="static", cuda_graph=False
    )
    graphed = generate(model, ids, 12, attention_mask=mask, cache_implementation="static")
    step = list(fast_decode._STEPS[model].values())[-1]
    assert step.cuda_graph and step.graph is not None  # captured after the warm-up steps
    again = generate(model, ids, 12, attention_mask=mask, cache_implementation="static")
    assert torch.equal(eager, ref) and torch.equal(graphed, ref) and torch.equal(again, ref)
