"""Llama-style decoder LM and generation: KV cache, padding, HF parity, decoding strategies."""

import pytest
import torch

from vlkit.hub.hf_llama import config_from_hf_llama, from_hf_llama_state_dict
from vlkit.models.decoder import DecoderConfig, DecoderLM, KVCache, generate

transformers = pytest.importorskip("transformers")


def _tiny(tie: bool = False) -> DecoderLM:
    cfg = DecoderConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
    )
    return DecoderLM(cfg).eval()


def _hf_llama(tie: bool):
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    ours = from_hf_llama_state_dict(hf.state_dict(), config_from_hf_llama(cfg.to_dict())).eval()
    return hf, ours


def test_kv_cache_matches_full_forward():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 9))
    full = model(ids).logits
    out = model(ids[:, :5], use_cache=True)
    steps = [out.logits]
    for i in range(5, 9):
        out = model(ids[:, i : i + 1], cache=out.cache)
        steps.append(out.logits)
    assert isinstance(out.cache, KVCache) and out.cache.seq_len == 9
    assert out.cache.keys[0].shape == (2, 2, 9, 8)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_inputs_embeds_equals_ids():
    model = _tiny(tie=True)
    ids = torch.randint(0, 97, (2, 6))
    emb = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=emb).logits, model(ids).logits)


def test_greedy_cache_equals_no_cache():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 5))
    got = generate(model, ids, max_new_tokens=8)
    seq = ids
    for _ in range(8):  # no cache: rerun the whole sequence each step
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq)


def test_left_padding_matches_single_prompts():
    model = _tiny()
    a, b = torch.randint(3, 97, (1, 7)), torch.randint(3, 97, (1, 4))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])
    got = generate(model, batch, max_new_tokens=6, attention_mask=mask)
    assert torch.equal(got[0, 7:], generate(model, a, max_new_tokens=6)[0, 7:])
    assert torch.equal(got[1, 7:], generate(model, b, max_new_tokens=6)[0, 4:])
    # Logits of the real tokens also agree.
    torch.testing.assert_close(
        model(batch, attention_mask=mask).logits[1, 3:], model(b).logits[0], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("tie", [False, True])
def test_hf_llama_parity(tie):
    hf, ours = _hf_llama(tie)
    ids = torch.randint(3, 97, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
    got = ours(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, 3:], ref[1, 3:], atol=1e-5, rtol=1e-5)
    hf_tokens = hf.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=10,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert torch.equal(generate(ours, ids, max_new_tokens=10, attention_mask=mask), hf_tokens)


@pytest.mark.parametrize("eos", [None, list(range(3, 97, 4))])
def test_beam_search_matches_hf(eos):
    lengths, differs_from_greedy = set(), False
    for seed in range(6):  # with these stop tokens, some seeds finish early (shorter outputs)
        torch.manual_seed(seed)
        hf, ours = _hf_llama(tie=False)
        ids = torch.randint(3, 97, (1, 6))
        ref = hf.generate(
            ids, max_new_tokens=8, num_beams=3, do_sample=False, pad_token_id=0, eos_token_id=eos
        )
        got = generate(ours, ids, max_new_tokens=8, num_beams=3, pad_token_id=0, eos_token_id=eos)
        assert torch.equal(got, ref)
        lengths.add(got.shape[1])
        differs_from_greedy |= not torch.equal(got, generate(ours, ids, 8, eos_token_id=eos))
    assert differs_from_greedy
    assert len(lengths) > 1 if eos else lengths == {14}


def test_sampling_reproducible_and_top_k1_is_greedy():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 4))

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return generate(model, ids, 10, do_sample=True, generator=g, **kw)

    kw = {"temperature": 1.5, "top_k": 20, "top_p": 0.9}
    assert torch.equal(sample(0, **kw), sample(0, **kw))
    assert not torch.equal(sample(0, temperature=5.0), sample(1, temperature=5.0))
    assert torch.equal(sample(3, top_k=1), generate(model, ids, 10))
    assert torch.equal(sample(3, top_p=1e-6), generate(model, ids, 10))


def test_stop_token_and_streamer():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 4))
    free = generate(model, ids, 8)
    stop = int(free[0, 6])  # row 0 emits it at step 3 (or earlier)
    streamed: list[torch.Tensor] = []
    got = generate(model, ids, 8, eos_token_id=[stop], pad_token_id=0, streamer=streamed.append)
    first = int((free[0, 4:] == stop).nonzero()[0])
    assert got[0, 4 + first] == stop and (got[0, 5 + first :] == 0).all()
    assert torch.equal(torch.stack(streamed, 1), got[:, 4:])  # exactly the new tokens


def test_stop_ends_generation_early():
    model = _tiny()
    ids = torch.randint(0, 97, (1, 4))
    first = int(generate(model, ids, 1)[0, -1])
    got = generate(model, ids, 20, eos_token_id=first)
    assert got.shape == (1, 5)


def test_beam_search_batch_left_padded_matches_hf():
    eos = list(range(3, 97, 4))
    for seed in range(4):
        torch.manual_seed(seed)
        hf, ours = _hf_llama(tie=False)
        ids = torch.randint(3, 97, (2, 6))
        mask = torch.ones_like(ids)
        mask[1, :2] = 0
        # pad_token_id=3 (= eos[0]): HF fills finished beams with `pad_token_id or eos[0]`, so a
        # pad id of 0 would be replaced by eos[0] there; we always fill with pad_token_id.
        kw = {"max_new_tokens": 8, "num_beams": 3, "pad_token_id": 3, "eos_token_id": eos}
        ref = hf.generate(ids, attention_mask=mask, do_sample=False, **kw)
        assert torch.equal(generate(ours, ids, attention_mask=mask, **kw), ref)


def test_generate_from_inputs_embeds():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 5))
    emb = model.get_input_embeddings()(ids)
    ref = generate(model, ids, 6)
    assert torch.equal(generate(model, None, 6, inputs_embeds=emb), ref[:, 5:])  # new tokens only
    assert torch.equal(generate(model, ids, 6, inputs_embeds=emb), ref)


def test_greedy_stop_tokens_match_hf():
    hf, ours = _hf_llama(tie=True)
    ids = torch.randint(3, 97, (2, 5))
    free = generate(ours, ids, 12)
    eos = [int(free[0, 8]), 1]  # row 0 stops at or before step 3; row 1 may run on
    ref = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    got = generate(ours, ids, 12, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, ref)
    assert (got[0, 9:] == 0).all()  # finished row padded


def test_converter_with_vlm_prefix():
    model = _tiny()
    sd = {k.replace("model.", "model.text_model.", 1): v for k, v in model.state_dict().items()}
    loaded = from_hf_llama_state_dict(sd, model.config, prefix="model.text_model.").eval()
    ids = torch.randint(0, 97, (1, 5))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def _holed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0 with holes in the middle of its mask, row 1 left padded plus a hole."""
    ids = torch.randint(3, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, [2, 5]] = 0
    mask[1, :3] = 0
    mask[1, 6] = 0
    return ids, mask


@pytest.mark.parametrize("tie", [False, True])
def test_hf_llama_parity_mask_with_holes(tie):
    """transformers' forward places tokens at arange(L) whatever the mask (holes included), or
    at the given position_ids; its generate derives positions from the mask. Logits agree at
    every position a query sees a key (the holes too), tokens exactly (dynamic and static)."""
    hf, ours = _hf_llama(tie)
    ids, mask = _holed_batch()
    seen = mask.cumsum(-1) > 0
    from_mask = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    for position_ids in (None, from_mask, from_mask[:1] + 4):
        with torch.no_grad():
            ref = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        got = ours(ids, attention_mask=mask, position_ids=position_ids).logits
        torch.testing.assert_close(got[seen], ref[seen], atol=1e-5, rtol=1e-5)
    options = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref = hf.generate(ids, eos_token_id=None, **options)
    for cache in ("dynamic", "static"):
        assert torch.equal(generate(ours, ids, cache_implementation=cache, **options), ref), cache
    positions = torch.arange(9)[None] + torch.tensor([[0], [11]])
    ref = hf.generate(ids, eos_token_id=None, position_ids=positions, **options)
    assert torch.equal(generate(ours, ids, position_ids=positions, **options), ref)


def test_forward_default_positions_ignore_the_mask():
    """Without position_ids a hole changes no position (RoPE sees arange); with generate's
    mask-derived positions a masked token is as if it were absent."""
    model = _tiny()
    ids = torch.randint(3, 97, (1, 6))
    mask = torch.tensor([[1, 1, 0, 1, 1, 1]])
    kept = ids[:, mask[0].bool()]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    holed = model(ids, attention_mask=mask, position_ids=positions).logits[:, mask[0].bool()]
    torch.testing.assert_close(holed, model(kept).logits, atol=1e-5, rtol=1e-5)
    default = model(ids, attention_mask=mask).logits[:, mask[0].bool()]
    assert not torch.allclose(default, model(kept).logits, atol=1e-4)
    arange = model(ids, attention_mask=mask, position_ids=torch.arange(6)).logits
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, arange)
    # generate: the holed prompt continues as the prompt without the masked token.
    got = generate(model, ids, max_new_tokens=5, attention_mask=mask)
    assert torch.equal(got[:, 6:], generate(model, kept, max_new_tokens=5)[:, 5:])
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, position_ids=torch.arange(5))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_empty_stop_list_means_no_stop_token(num_beams):
    """`eos_token_id=[]` (transformers: no stop token) runs to max_new_tokens, pads with 0."""
    model = _tiny()
    ids = torch.randint(3, 97, (2, 4))
    greedy = generate(model, ids, max_new_tokens=6, num_beams=num_beams)
    got = generate(model, ids, max_new_tokens=6, num_beams=num_beams, eos_token_id=[])
    assert torch.equal(got, greedy) and got.shape == (2, 10)
    got = generate(model, ids, 6, num_beams=num_beams, eos_token_id=(), cache_implementation=(
        "static" if num_beams == 1 else "dynamic"))  # fmt: skip
    assert torch.equal(got, greedy)


def test_mask_inferred_from_pad_token_as_transformers():
    """No attention mask: `ids != pad_token_id` when the pad token occurs and is no stop token
    (transformers' `_prepare_attention_mask_for_generation`), else all ones."""
    hf, ours = _hf_llama(tie=False)
    ids = torch.randint(3, 97, (2, 7))
    ids[0, :2] = 0  # pad token 0 (left padding) and a pad in the middle of row 1
    ids[1, 3] = 0
    for eos in (2, 0):  # pad 0 is a stop token in the second case: no inference
        ref = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=eos)
        got = generate(ours, ids, max_new_tokens=6, pad_token_id=0, eos_token_id=eos)
        assert torch.equal(got, ref), eos
    inferred = generate(ours, ids, 6, pad_token_id=0, eos_token_id=2)
    explicit = generate(ours, ids, 6, pad_token_id=0, eos_token_id=2, attention_mask=ids.ne(0))
    assert torch.equal(inferred, explicit)
    # Without a pad token (transformers: none set) the mask is all ones, even if 0 occurs.
    ones = generate(ours, ids, 6, eos_token_id=None, attention_mask=torch.ones_like(ids))
    assert torch.equal(generate(ours, ids, 6, eos_token_id=None), ones)
    assert not torch.equal(ones, generate(ours, ids, 6, pad_token_id=0, eos_token_id=None))
