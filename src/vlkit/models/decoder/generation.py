"""Autoregressive decoding for `DecoderLM`: greedy, sampling (temperature / top-k / top-p) and beam
search, with a KV cache, left-padded batches, stop tokens and a streaming callback.

Positions and masks follow transformers' `GenerationMixin` (5.25): without an attention mask the
prompt mask is inferred from `pad_token_id` (`_prepare_attention_mask_for_generation`); the
prompt's RoPE positions are `cumsum(mask) - 1` (`_prepare_position_ids_for_generation`) and each
new token takes its row's last position + 1 (`_update_model_kwargs_for_generation`), so a
left-padded row or a prompt with holes in its mask generates what it would alone.

Greedy and sampled decoding can also run over a preallocated `StaticKVCache`
(`cache_implementation="static"`, transformers' name), whose one-token step is replayed from a CUDA
graph on GPUs (`fast_decode.DecodeStep`); the tokens equal those of the dynamic cache.

Sampling warpers run in Hugging Face's order (temperature, top-k, top-p; nucleus sampling of
Holtzman et al. 2020). Beam search ports HF's vectorised implementation with its defaults
(`length_penalty=1.0`, `early_stopping=False`): a finished hypothesis scores
`sum(log p) / new_tokens ** length_penalty`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from vlkit.models.decoder.fast_decode import decode_step_for
from vlkit.models.decoder.kv_cache import KVCache
from vlkit.models.decoder.llama import DecoderLM
from vlkit.models.decoder.masks import position_ids_from_mask


def _warp(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Apply temperature, top-k and top-p filtering to (B, V) logits (filtered entries -> -inf)."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)  # ascending cumulative probability
        remove = cum <= 1 - top_p
        remove[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return logits


def stop_ids(eos_token_id: int | Sequence[int] | None, device: torch.device) -> torch.Tensor | None:
    """The (S,) stop tokens, or None for no stop token (None or an empty list, as in
    transformers, where `eos_token_id=[]` generates to `max_new_tokens`)."""
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    if not ids:
        return None
    return torch.tensor(ids, dtype=torch.long, device=device)


def prompt_attention_mask(
    input_ids: torch.Tensor, pad_token_id: int | None, stop: torch.Tensor | None
) -> torch.Tensor:
    """The (B, P) mask of a prompt given without one, as transformers infers it
    (`GenerationMixin._prepare_attention_mask_for_generation`): `input_ids != pad_token_id`
    when the pad token occurs in the prompt and is not a stop token, else all ones."""
    ones = torch.ones_like(input_ids)
    if pad_token_id is None or input_ids.shape[1] == 0:
        return ones
    is_pad = input_ids == pad_token_id
    if not bool(is_pad.any()) or (stop is not None and bool((stop == pad_token_id).any())):
        return ones
    return (~is_pad).long()


@torch.no_grad()
def generate(
    model: DecoderLM,
    input_ids: torch.Tensor | None,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    eos_token_id: int | Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
    cache_implementation: Literal["dynamic", "static"] = "dynamic",
    cuda_graph: bool | None = None,
    max_cache_len: int | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate continuations of a (possibly left-padded) batch of prompts.

    Args:
        model: The decoder.
        input_ids: (B, P) prompt ids. May be None when `inputs_embeds` is given; the result then
            holds only the new tokens (as in Hugging Face).
        max_new_tokens: Number of tokens to generate at most.
        do_sample: Sample instead of greedy / deterministic beam search.
        temperature: Softmax temperature for sampling.
        top_k: Keep the k most likely tokens when sampling.
        top_p: Nucleus sampling: keep the smallest set with cumulative probability >= top_p.
        num_beams: > 1 runs beam search (deterministic; `do_sample` is not supported with it).
        eos_token_id: Stop token(s); a sequence that emits one is finished. None or an empty
            list: no stop token.
        attention_mask: (B, P) prompt padding mask, 1 = keep (left padding). None: inferred
            as transformers does, `input_ids != pad_token_id` when `pad_token_id` is given,
            occurs in the prompt and is not a stop token, else all ones.
        inputs_embeds: (B, P, D) prompt embeddings used instead of embedding `input_ids`
            (VLMs: text with image features spliced in).
        streamer: Called after each step with the (B,) LongTensor of new tokens (finished rows
            get the pad token). Not supported with beam search.
        generator: Random generator for reproducible sampling.
        pad_token_id: Filler after a row finishes (and the id the mask is inferred from);
            defaults to the first stop token, or 0 without one.
        cache_implementation: "dynamic" grows a `KVCache` by concatenation; "static" writes into
            a preallocated `StaticKVCache` of `max_cache_len` slots and decodes with a
            `fast_decode.DecodeStep` (same tokens; not with beam search). The step and its
            cache are kept for the next call of the same shape (`fast_decode.release` frees them).
        cuda_graph: With the static cache, replay the decode step from a CUDA graph. None = on
            CUDA devices; True on a CPU raises ValueError.
        max_cache_len: Slots of the static cache; default prompt length + `max_new_tokens`.
        position_ids: (B, P) RoPE positions of the prompt; default `cumsum(mask) - 1` (0 at
            masked columns). New tokens continue from each row's last position.

    Returns:
        (B, P + N) LongTensor of prompt plus new tokens, N <= max_new_tokens (shorter when all
        rows stopped early).
    """
    if input_ids is None and inputs_embeds is None:
        raise ValueError("pass input_ids or inputs_embeds")
    ref = inputs_embeds if inputs_embeds is not None else input_ids
    b, p, device = ref.shape[0], ref.shape[1], ref.device
    if input_ids is None:
        input_ids = torch.empty(b, 0, dtype=torch.long, device=device)
    stop = stop_ids(eos_token_id, device)
    if attention_mask is None:
        # Only a pad token the caller gave (not the default below) says where padding is.
        if pad_token_id is not None and (inputs_embeds is None or input_ids.shape[1] == p):
            attention_mask = prompt_attention_mask(input_ids, pad_token_id, stop)
        else:
            attention_mask = torch.ones(b, p, dtype=torch.long, device=device)
    if pad_token_id is None:
        pad_token_id = int(stop[0]) if stop is not None else 0
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)  # (B, P)
    position_ids = position_ids.expand(b, p)
    if cache_implementation not in ("dynamic", "static"):
        raise ValueError(f"unknown cache_implementation {cache_implementation!r}")
    static = cache_implementation == "static"
    if cuda_graph and not static:
        raise ValueError('cuda_graph needs cache_implementation="static"')
    if num_beams > 1:
        if static:
            raise NotImplementedError("beam search runs with the dynamic cache only")
        if do_sample or streamer is not None:
            raise NotImplementedError("beam search supports neither do_sample nor a streamer")
        return _beam_search(
            model,
            input_ids,
            inputs_embeds,
            attention_mask,
            position_ids,
            max_new_tokens,
            num_beams,
            stop,
            pad_token_id,
        )

    prompt_ids = None if inputs_embeds is not None else input_ids
    if static:
        slots = p + max_new_tokens if max_cache_len is None else max_cache_len
        needed = p + max(max_new_tokens - 1, 0)  # the last new token is never written
        if slots < needed:
            raise ValueError(f"max_cache_len {slots} < {needed} (prompt + new tokens - 1)")
        if inputs_embeds is not None:
            dtype = inputs_embeds.dtype
        else:
            dtype = model.get_input_embeddings().weight.dtype
        decode_step = decode_step_for(model, b, slots, device, dtype, cuda_graph)
        # The prompt runs eagerly (its length varies); it fills slots 0..P-1 in place.
        out = model(
            input_ids=prompt_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=decode_step.cache,
        )
    else:
        out = model(
            input_ids=prompt_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
        )
        cache: KVCache = out.cache
    position = position_ids[:, -1:]  # (B, 1) last position; each new token adds 1
    logits = out.logits[:, -1].float()  # (B, V)
    sequences = input_ids
    unfinished = torch.ones(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        if do_sample:
            probs = _warp(logits, temperature, top_k, top_p).softmax(-1)
            next_tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        else:
            next_tok = logits.argmax(-1)
        next_tok = torch.where(unfinished, next_tok, torch.full_like(next_tok, pad_token_id))
        sequences = torch.cat([sequences, next_tok[:, None]], dim=1)
        if streamer is not None:
            streamer(next_tok)
        if stop is not None:
            unfinished &= ~torch.isin(next_tok, stop)
        if not unfinished.any() or step == max_new_tokens - 1:
            break
        position = position + 1
        if static:  # the step marks its slot as real in the static cache's slot mask
            logits = decode_step(next_tok, position)
            continue
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], dim=1)
        out = model(
            input_ids=next_tok[:, None],
            attention_mask=attention_mask,
            position_ids=position,
            cache=cache,
        )
        logits = out.logits[:, -1].float()
    return sequences


def _beam_search(
    model: DecoderLM,
    input_ids: torch.Tensor,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: int,
    k: int,
    stop: torch.Tensor | None,
    pad_token_id: int,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """Beam search, a port of HF `GenerationMixin._beam_search` with `early_stopping=False`.

    Each step keeps the top `max(2, 1 + n_stop) * k` continuations of all beams; finished ones
    (stop token or length limit) among the top k enter the finished pool with length-normalised
    scores, the best k unfinished ones keep running. Returns the best finished hypothesis per row.
    """
    b, device = attention_mask.shape[0], attention_mask.device
    n_keep = max(2, 1 + (0 if stop is None else stop.numel())) * k
    top_k_mask = torch.arange(n_keep, device=device) < k  # (K2,)
    neg = -1.0e9
    # Expand prompts to (B*k, ...) beams.
    rep = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
    out = model(
        input_ids=None if inputs_embeds is not None else rep(input_ids),
        inputs_embeds=None if inputs_embeds is None else rep(inputs_embeds),
        attention_mask=rep(attention_mask),
        position_ids=rep(position_ids),
        use_cache=True,
    )
    cache: KVCache = out.cache
    mask = rep(attention_mask)
    position = rep(position_ids)[:, -1:]  # (B*k, 1) last position of each beam
    run_seq = torch.full((b, k, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    run_scores = torch.zeros(b, k, device=device)
    run_scores[:, 1:] = neg  # only beam 0 is live at the first step (all beams are identical)
    fin_seq, fin_len = run_seq.clone(), torch.zeros(b, k, dtype=torch.long, device=device)
    fin_scores = torch.full((b, k), neg, device=device)
    fin_flag = torch.zeros(b, k, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        logp = out.logits[:, -1].float().log_softmax(-1)  # (B*k, V)
        vocab = logp.shape[-1]
        logp = (logp.view(b, k, vocab) + run_scores[..., None]).view(b, k * vocab)
        top_lp, top_idx = torch.topk(logp, n_keep)  # (B, K2)
        src_beam, tok = top_idx // vocab, top_idx % vocab
        cand = torch.gather(run_seq, 1, src_beam[..., None].expand(-1, -1, max_new_tokens)).clone()
        cand[:, :, t] = tok  # (B, K2, N)
        hits = torch.zeros_like(tok, dtype=torch.bool) if stop is None else torch.isin(tok, stop)
        hits |= t + 1 >= max_new_tokens
        # Running beams: best k continuations that did not stop.
        run_lp = top_lp + hits.float() * neg
        nxt = torch.topk(run_lp, k).indices  # (B, k)
        run_seq = torch.gather(cand, 1, nxt[..., None].expand(-1, -1, max_new_tokens))
        run_scores = torch.gather(run_lp, 1, nxt)
        beam_src = torch.gather(src_beam, 1, nxt)  # (B, k) previous beam of each running beam
        # Finished pool: merge newly stopped top-k candidates, keep the best k.
        just = hits & top_k_mask[None]
        new_scores = top_lp / ((t + 1) ** length_penalty)
        new_scores = new_scores + (~improvable).float() * neg + (~just).float() * neg
        m_scores = torch.cat([fin_scores, new_scores], 1)
        best = torch.topk(m_scores, k).indices
        fin_seq = torch.gather(
            torch.cat([fin_seq, cand], 1), 1, best[..., None].expand(-1, -1, max_new_tokens)
        )
        fin_len = torch.gather(torch.cat([fin_len, torch.full_like(tok, t + 1)], 1), 1, best)
        fin_flag = torch.gather(torch.cat([fin_flag, just], 1), 1, best)
        fin_scores = torch.gather(m_scores, 1, best)
        # HF's early-stop heuristic (early_stopping=False): best running score at the current length.
        worst = torch.where(
            fin_flag.any(1, keepdim=True), fin_scores.min(1, keepdim=True).values, neg
        )
        improvable &= (run_scores[:, :1] / ((t + 1) ** length_penalty) > worst).any(
            -1, keepdim=True
        )
        if not improvable.any() or hits.all():
            break
        flat_src = (beam_src + torch.arange(b, device=device)[:, None] * k).flatten()
        cache.reorder(flat_src)
        mask = torch.cat([mask.index_select(0, flat_src), mask.new_ones(b * k, 1)], dim=1)
        position = position.index_select(0, flat_src) + 1
        out = model(
            input_ids=run_seq[:, :, t].reshape(-1, 1),
            attention_mask=mask,
            position_ids=position,
            cache=cache,
        )
    n = int(fin_len[:, 0].max())
    return torch.cat([input_ids, fin_seq[:, 0, :n]], dim=1)
