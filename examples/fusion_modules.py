"""The fusion building blocks of generative VLMs, on random tensors: shapes and one property each.

    .venv/bin/python examples/fusion_modules.py

Expected (2-core CPU, 1 thread, 2026-11-27, ~3 s; `--quick` is the same run): 49 image tokens
of width 64 (a 7 x 7 grid) become, for a decoder of width 96,
  LLaVA projector          (2, 49, 96)  one LM token per image token
  pixel-shuffle connector  (2, 16, 96)  s = 2 on an 8 x 8 grid: 4x fewer tokens (SmolVLM)
  Perceiver resampler      (2, 8, 64)   8 latents, whatever the number of input tokens
  Q-Former                 (2, 8, 96)   8 learned queries (BLIP-2)
  gated cross-attention    (2, 5, 96)   text tokens updated in place; identity at init
                                        (max |out - text| = 0), not after the gates open;
and `splice_image_tokens` puts the 49 projected tokens at the `<image>` placeholders.
"""

import argparse

import torch

from vlkit.fusion import (
    GatedCrossAttentionBlock,
    LlavaProjector,
    PerceiverResampler,
    PixelShuffleConnector,
    QFormer,
    splice_image_tokens,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="the same run (already quick)")
parser.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)

B, N, VISION_DIM, TEXT_DIM = 2, 49, 64, 96
image_tokens = torch.randn(B, N, VISION_DIM)  # (B, N, Dv): e.g. a ViT's patch tokens
text_tokens = torch.randn(B, 5, TEXT_DIM)  # (B, L, D): the decoder's hidden states


def show(name, out, note):
    print(f"{name:24s} {str(tuple(out.shape)):13s} {note}")


with torch.no_grad():
    # LLaVA: an MLP maps every image token into the LM's embedding space.
    projector = LlavaProjector(VISION_DIM, TEXT_DIM, projector_type="mlp2x_gelu")
    projected = projector(image_tokens)  # (B, N, D)
    show("LLaVA projector", projected, "one LM token per image token")

    # SmolVLM / Idefics3: pixel shuffle folds s x s neighbours into the channels, then projects.
    grid = torch.randn(B, 64, VISION_DIM)  # an 8 x 8 grid
    shuffled = PixelShuffleConnector(VISION_DIM, TEXT_DIM, scale_factor=2)(grid)
    show("pixel-shuffle connector", shuffled, "s = 2 on an 8 x 8 grid: 4x fewer tokens")

    # Flamingo: a fixed number of latents cross-attend to any number of image tokens.
    resampler = PerceiverResampler(VISION_DIM, depth=2, num_latents=8, num_heads=4, head_dim=16)
    latents = resampler(image_tokens)  # (B, K, Dv)
    more = resampler(torch.randn(B, 3 * N, VISION_DIM))  # 3x the tokens, same output size
    show("Perceiver resampler", latents, f"8 latents, also from {3 * N} tokens: {more.shape[1]}")

    # BLIP-2: learned queries read the frozen image features through cross-attention.
    qformer = QFormer(VISION_DIM, dim=TEXT_DIM, num_queries=8, num_layers=2, num_heads=4,
                      vocab_size=0)  # fmt: skip
    queries, _ = qformer(image_tokens)  # (B, Q, D)
    show("Q-Former", queries, "8 learned queries")

    # Flamingo: text attends to the (resampled) image; tanh(0) gates make it the identity at
    # initialisation, so the pretrained LM is unchanged until training opens the gates.
    block = GatedCrossAttentionBlock(dim=TEXT_DIM, media_dim=VISION_DIM, num_heads=4)
    media = latents[:, None]  # (B, M=1 image, K, Dv)
    fused = block(text_tokens, media)
    show("gated cross-attention", fused, "text tokens updated in place")
    print(f"  at init: max |out - text| = {(fused - text_tokens).abs().max():.1e}")
    block.alpha_xattn.fill_(1.0)  # the two gates, tanh(alpha), as training would open them
    block.alpha_ffw.fill_(1.0)
    opened = block(text_tokens, media)
    print(f"  gates at 1: max |out - text| = {(opened - text_tokens).abs().max():.2f}")

    # LLaVA's splicing: the projected image tokens replace the <image> placeholder ids.
    image_token_id, vocab = 7, 50
    ids = torch.tensor([[1, 2] + [image_token_id] * N + [3, 4]] * B)  # (B, 2 + N + 2)
    embeds = torch.nn.Embedding(vocab, TEXT_DIM)(ids)  # (B, L, D)
    spliced, _ = splice_image_tokens(ids, embeds, projected, image_token_id)
    same = torch.equal(spliced[:, 2 : 2 + N], projected)
    print(f"splice_image_tokens      {str(tuple(spliced.shape)):13s} image slots hold the "
          f"projected tokens: {same}")  # fmt: skip
