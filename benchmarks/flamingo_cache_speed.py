"""Flamingo greedy generation on the CPU: full re-run per token vs the KV cache.

    python benchmarks/flamingo_cache_speed.py --threads 1 --max-new-tokens 48

The model has the shape of `fusion_comparison.py`'s flamingo (frozen `small-rn-64` tower, decoder
width 128, 2 layers, 4 heads, SwiGLU 512, 8 Perceiver latents), with random weights and the
gates opened (so the cross-attention runs as in a trained model). Each row times whole
`generate` calls (vision tower, prefill and decoding) on a prompt of `<image>` + 12 words with
no stop token, and reports new tokens per second (best of `--rounds`). It first checks that all
modes produce the same tokens.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import vlkit
from vlkit.models.decoder import DecoderConfig
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.fusion_vlm import FusionVLMConfig, build_fusion_vlm

MODES = {
    "no cache (use_cache=False)": {"use_cache": False},
    "dynamic KV cache": {},
    "static KV cache": {"cache_implementation": "static"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = vlkit.create_model("small-rn-64")
    vision = VisionTokens(clip.vision, freeze=True)
    size = clip.config.preprocess.image_size
    with torch.no_grad():
        vision_dim = vision(torch.zeros(1, 3, size, size)).shape[-1]
    vocab = 64  # about the word vocabulary of the easy-VQA task
    decoder = DecoderConfig(vocab_size=vocab, hidden_size=128, intermediate_size=512,
                            num_layers=2, num_heads=4, num_kv_heads=4,
                            max_position_embeddings=256)  # fmt: skip
    config = FusionVLMConfig(kind="flamingo", decoder=decoder, image_token_id=vocab - 1,
                             vision_dim=vision_dim, num_queries=8, image_size=size)  # fmt: skip
    model = build_fusion_vlm(config, vision).eval()
    with torch.no_grad():
        for block in model.decoder.gated_cross_attention.values():
            block.alpha_xattn.fill_(0.5)
            block.alpha_ffw.fill_(0.5)
    n = args.max_new_tokens
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"torch {torch.__version__}, {n} new tokens")  # fmt: skip
    print("| mode | batch | ms per generate | new tok/s | speed-up |\n|---|---|---|---|---|")
    for b in args.batch_sizes:
        gen = torch.Generator().manual_seed(b)
        ids = torch.cat(
            [torch.full((b, 1), vocab - 1), torch.randint(1, vocab - 1, (b, 12), generator=gen)], 1
        )
        pixels = torch.randn(b, 1, 3, size, size, generator=gen)
        outputs, seconds = {}, {}
        for name, kwargs in MODES.items():
            best = float("inf")
            for _ in range(args.rounds):
                start = time.perf_counter()
                outputs[name] = model.generate(ids, pixels, max_new_tokens=n, **kwargs)
                best = min(best, time.perf_counter() - start)
            seconds[name] = best
        reference = outputs["no cache (use_cache=False)"]
        if not all(torch.equal(out, reference) for out in outputs.values()):
            raise SystemExit("modes disagree on the greedy tokens")
        base = seconds["no cache (use_cache=False)"]
        for name, s in seconds.items():
            print(f"| {name} | {b} | {s * 1e3:.1f} | {b * n / s:.1f} | {base / s:.2f}x |")


if __name__ == "__main__":
    main()
