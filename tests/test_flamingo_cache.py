"""Flamingo's KV cache: cached logits and generations equal full re-runs without cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from vlkit.models.decoder import DecoderConfig, DecoderLM, StaticKVCache, generate
from vlkit.models.flamingo import FlamingoVLM
from vlkit.models.flamingo_cache import FlamingoKVCache, MediaCache

VOCAB = 32  # text ids 0..31, 0 = padding
IMAGE = VOCAB  # the `<image>` marker; the decoder has VOCAB + 1 rows, so it can generate it
SIZE = 8


class TinyVision(nn.Module):
    """(N, 3, 8, 8) -> (N, 4, 12) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).flatten(2).transpose(1, 2)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(cross_attention_every: int = 1) -> FlamingoVLM:
    """A random Flamingo with open gates (at init the gates are 0 and images change nothing)."""
    torch.manual_seed(0)
    config = DecoderConfig(
        vocab_size=VOCAB + 1,
        hidden_size=32,
        intermediate_size=48,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=64,
    )
    model = FlamingoVLM(TinyVision(), 12, config, IMAGE, num_latents=3, perceiver_layers=1,
                        cross_attention_every=cross_attention_every)  # fmt: skip
    with torch.no_grad():
        for block in model.decoder.gated_cross_attention.values():
            block.alpha_xattn.fill_(0.7)
            block.alpha_ffw.fill_(0.4)
    return model.eval()


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and mask of left-padded prompts."""
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(prompt)
        mask[row, longest - len(prompt) :] = 1
    return ids, mask


# Row 0: two images in the prompt; row 1: one image after some text, shorter (left padded).
PROMPTS = [[IMAGE, 5, 9, IMAGE, 13, 2, 7], [4, 11, IMAGE, 3]]
# Continuations hold markers too: row 0's third marker has no image (no cross-attention after
# it), row 1's second marker switches its later tokens to image 2.
CONTINUATION = torch.tensor([[6, IMAGE, 8, 1, 3], [IMAGE, 9, 2, 12, 5]])


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("every", [1, 2])
def test_cached_logits_equal_full_forward(static: bool, every: int, pixels: torch.Tensor) -> None:
    model = make_model(every)
    ids, mask = left_padded(PROMPTS)
    b, p = ids.shape
    full_ids = torch.cat([ids, CONTINUATION], 1)
    full_mask = torch.cat([mask, torch.ones_like(CONTINUATION)], 1)
    with torch.no_grad():
        full = model(full_ids, pixels, attention_mask=full_mask).logits  # (B, P + N, V)
        media = MediaCache(model.decoder, model.encode_media(pixels), IMAGE)
        if static:
            cache = StaticKVCache(model.decoder.config, b, full_ids.shape[1])
            out = model.decoder(ids, attention_mask=mask, cache=cache, media=media)
        else:
            out = model.decoder(ids, attention_mask=mask, use_cache=True, media=media)
            assert isinstance(out.cache, FlamingoKVCache)
        real = mask.bool()
        assert torch.allclose(out.logits[real], full[:, :p][real], atol=1e-5)
        # One token per step, then the last two tokens together.
        steps = [(t, t + 1) for t in range(CONTINUATION.shape[1] - 2)] + [(3, 5)]
        for start, stop in steps:
            out = model.decoder(
                CONTINUATION[:, start:stop],
                attention_mask=full_mask[:, : p + stop],
                cache=out.cache,
                media=media,
            )
            expected = full[:, p + start : p + stop]
            assert torch.allclose(out.logits, expected, atol=1e-5), (start, static)
    assert media.time.tolist() == [3, 2]


def test_forward_use_cache_continues(pixels: torch.Tensor) -> None:
    model = make_model()
    ids, mask = left_padded(PROMPTS)
    full_ids = torch.cat([ids, CONTINUATION[:, :1]], 1)
    full_mask = torch.cat([mask, torch.ones_like(CONTINUATION[:, :1])], 1)
    with torch.no_grad():
        out = model(ids, pixels, attention_mask=mask, use_cache=True)
        step = model.decoder(CONTINUATION[:, :1], attention_mask=full_mask, cache=out.cache)
        full = model(full_ids, pixels, attention_mask=full_mask).logits
    assert torch.allclose(step.logits[:, -1], full[:, -1], atol=1e-5)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_cached_generate_equals_no_cache_loop(
    cache_implementation: str, pixels: torch.Tensor
) -> None:
    model = make_model()
    ids, mask = left_padded(PROMPTS)
    reference = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=8, use_cache=False)
    streamed: list[torch.Tensor] = []
    cached = model.generate(
        ids, pixels, attention_mask=mask, max_new_tokens=8, streamer=streamed.append,
        cache_implementation=cache_implementation,
    )  # fmt: skip
    assert cached.shape == (2, ids.shape[1] + 8)
    assert torch.equal(cached, reference)
    assert torch.equal(torch.stack(streamed, 1), cached[:, ids.shape[1] :])
    # A stop token: the finished row is padded, both paths agree.
    eos = int(reference[0, ids.shape[1] + 2])
    kwargs = {"attention_mask": mask, "max_new_tokens": 8, "eos_token_id": eos, "pad_token_id": 0}
    assert torch.equal(
        model.generate(ids, pixels, **kwargs),
        model.generate(ids, pixels, use_cache=False, **kwargs),
    )


def test_generated_image_marker_follows_the_media_rule(pixels: torch.Tensor) -> None:
    """Force the model to emit `<image>` and check the next tokens against a full re-run."""
    model = make_model()
    with torch.no_grad():
        model.decoder.lm_head.weight[IMAGE].fill_(0.0)
        model.decoder.lm_head.weight[IMAGE, 0] = 50.0  # some hidden units make IMAGE win
    ids, mask = left_padded(PROMPTS)
    reference = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=6, use_cache=False)
    assert (reference[:, ids.shape[1] :] == IMAGE).any()
    cached = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=6)
    assert torch.equal(cached, reference)


def test_sampling_and_beam_search_run_with_the_cache(pixels: torch.Tensor) -> None:
    model = make_model()
    ids, mask = left_padded(PROMPTS)
    greedy = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=5)
    top1 = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=5, do_sample=True,
                          top_k=1, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(top1, greedy)
    sampled = [
        model.generate(
            ids,
            pixels,
            attention_mask=mask,
            max_new_tokens=5,
            do_sample=True,
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
        for _ in range(2)
    ]
    assert torch.equal(sampled[0], sampled[1])
    beams = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=4, num_beams=3)
    assert torch.equal(beams[:, : ids.shape[1]], ids) and beams.shape[1] <= ids.shape[1] + 4
    with pytest.raises(NotImplementedError):
        model.generate(ids, pixels, attention_mask=mask, use_cache=False, do_sample=True)


def test_closed_gates_generate_as_the_text_lm(pixels: torch.Tensor) -> None:
    """Gates at 0 (initialisation): greedy and beam search equal the text-only LM's."""
    model = make_model()
    with torch.no_grad():
        for block in model.decoder.gated_cross_attention.values():
            block.alpha_xattn.zero_()
            block.alpha_ffw.zero_()
    text_lm = DecoderLM(model.decoder.config).eval()
    text_lm.load_state_dict(model.decoder.state_dict(), strict=False)
    ids, mask = left_padded(PROMPTS)
    for num_beams in (1, 3):
        expected = generate(text_lm, ids, 5, attention_mask=mask, num_beams=num_beams)
        got = model.generate(
            ids, pixels, attention_mask=mask, max_new_tokens=5, num_beams=num_beams
        )
        assert torch.equal(got, expected), num_beams
