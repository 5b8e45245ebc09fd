"""Which image patches a ViT relies on: attention rollout and gradient-weighted relevance.

Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Sec. 3)
follows attention through the layers: each layer's head-averaged attention plus the identity
(the residual connection), rows renormalised, multiplied from the first layer to the last. It
uses the image alone, so it cannot say which patches matter for a given text.

Text-image relevance (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", Eq. 5-6, and the CLIP notebook of
hila-chefer/Transformer-MM-Explainability) weights each attention map by the gradient of the
image-text score, keeps the positive part, averages the heads,

    A_bar = E_h[(grad_A s * A)^+],    R <- R + A_bar @ R,    R_0 = I,

and reads the CLS row of R over the patch tokens. The attention probabilities come from the
ViT's explicit attention path (`return_attention=True`); the default SDPA path is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlkit.models.clip import CLIP
from vlkit.models.vit import VisionTransformer
from vlkit.viz.attention import attention_grid

__all__ = ["attention_rollout", "relevance_overlay", "rollout_matrix", "text_image_relevance"]

HEAD_FUSIONS = ("mean", "max", "min")


def _fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def rollout_matrix(
    attentions: Sequence[torch.Tensor], discard_ratio: float = 0.0, head_fusion: str = "mean"
) -> torch.Tensor:
    """The rolled-out attention A_L' @ ... @ A_1' with A' = rownorm(fuse_heads(A) + I).

    Args:
        attentions: One (B, H, N, N) attention-probability tensor per layer, first layer first
            (`VisionOutput.attentions`).
        discard_ratio: Fraction of the smallest head-fused weights of each sample set to zero
            before adding the identity (the noise filter of jacobgil/vit-explain); the CLS-to-CLS
            entry is always kept.
        head_fusion: How heads are combined: "mean" (the paper), "max" or "min".

    Returns:
        (B, N, N); every row sums to 1.
    """
    if not attentions:
        raise ValueError("attention rollout needs at least one layer's attention")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    batch, _, tokens, _ = attentions[0].shape
    identity = torch.eye(tokens, dtype=torch.float32, device=attentions[0].device)
    rolled = identity.expand(batch, tokens, tokens)
    for attention in attentions:
        fused = _fuse_heads(attention.detach().float(), head_fusion)  # (B, N, N)
        if discard_ratio > 0:
            flat = fused.reshape(batch, -1).clone()
            drop = flat.topk(int(flat.shape[1] * discard_ratio), dim=1, largest=False).indices
            kept_cls = flat[:, 0].clone()
            flat.scatter_(1, drop, 0.0)
            flat[:, 0] = kept_cls
            fused = flat.view(batch, tokens, tokens)
        layer = fused + identity  # the residual stream carries each token's own value
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rolled = layer @ rolled
    return rolled


def attention_rollout(
    attentions: Sequence[torch.Tensor], discard_ratio: float = 0.0, head_fusion: str = "mean"
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much the CLS token draws from each patch.

    Args:
        attentions: One (B, H, N, N) tensor per layer, token 0 the CLS token
            (`model.vision(pixels, return_attention=True).attentions`).
        discard_ratio: See `rollout_matrix`.
        head_fusion: See `rollout_matrix`.

    Returns:
        (B, N - 1): the CLS row of the rolled-out attention over the patch tokens, in patch
        order (reshape to the (g, g) grid to draw it).
    """
    return rollout_matrix(attentions, discard_ratio, head_fusion)[:, 0, 1:]


def _check_vit_with_cls(model: CLIP) -> VisionTransformer:
    vision = model.vision
    if not isinstance(vision, VisionTransformer):
        raise ValueError(
            f"text-image relevance needs a ViT image tower; this model's is a "
            f"{type(vision).__name__}, which has no self-attention layers to explain"
        )
    if vision.class_token is None:
        raise ValueError(
            "text-image relevance reads the CLS token's row; this ViT has no CLS token "
            "(SigLIP-style attention pooling)"
        )
    return vision


def text_image_relevance(
    model: CLIP,
    pixels: torch.Tensor,
    token_ids: torch.Tensor,
    start_layer: int = 0,
) -> torch.Tensor:
    """Chefer et al. (2021) relevance of each image patch for each image-text pair's score.

    The score is the model's logit for the pair (temperature times cosine similarity, plus the
    bias for SigLIP), as in the CLIP notebook. Put the model in eval mode (dropout would make
    the map random); its parameters need not require gradients.

    Args:
        model: A CLIP-like model with a ViT image tower that has a CLS token.
        pixels: Preprocessed images (B, 3, S, S).
        token_ids: Token ids (B, L), the text paired with each image, or (1, L) for one text
            against every image.
        start_layer: First layer whose attention enters the sum (the notebook's `start_layer`;
            its default, the last layer only, is `start_layer=-1`).

    Returns:
        (B, g, g) non-negative relevance over the patch grid, g = image_size / patch_size.

    Raises:
        ValueError: The image tower is not a ViT with a CLS token, or the batch sizes disagree.
    """
    vision = _check_vit_with_cls(model)
    batch = pixels.shape[0]
    if token_ids.shape[0] not in (1, batch):
        raise ValueError(f"{token_ids.shape[0]} texts for {batch} images: give 1 or {batch}")
    depth = len(vision.transformer.blocks)
    start = start_layer % depth if start_layer < 0 else start_layer
    if not 0 <= start < depth:
        raise ValueError(f"start_layer {start_layer} is outside the {depth} layers")
    with torch.enable_grad():
        # Requiring the input's gradient puts every attention map in the graph even when the
        # parameters are frozen.
        pixels = pixels.detach().clone().requires_grad_(True)
        out = vision(pixels, return_attention=True)
        image = model.image_projection(out.pooled)  # (B, E)
        text = model.encode_text(token_ids).expand(batch, -1)  # (B, E)
        score = model.logits(image, text).diagonal().sum()  # pairs do not interact
        attentions = out.attentions[start:]
        grads = torch.autograd.grad(score, attentions)
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens, device=pixels.device).expand(batch, tokens, tokens)
    for attention, grad in zip(attentions, grads, strict=True):
        weighted = (grad * attention).detach().float().clamp(min=0).mean(dim=1)  # (B, N, N)
        relevance = relevance + weighted @ relevance
    grid = vision.config.grid_size
    return relevance[:, 0, 1:].reshape(batch, grid, grid)


def relevance_overlay(
    image: Image.Image,
    relevance: torch.Tensor | np.ndarray,
    out_path: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
    dpi: int = 100,
) -> Path:
    """Draws relevance maps as heat maps over the image, one 3 x 3.4 inch panel per map.

    Each map is min-max normalised on its own and bilinearly upsampled over the image (as in
    the Chefer et al. notebook); a constant map is drawn as zero. The written PNG is
    `300 * K` x `340` pixels at the default dpi.

    Args:
        image: The image as the model saw it (resized and cropped: the map covers the crop).
        relevance: (g, g) or (K, g, g) maps, or (K, T) maps over T image tokens (a leading CLS
            token is dropped, see `vlkit.viz.attention.attention_grid`). A square 2-D input
            is one (g, g) map.
        out_path: PNG to write (parent directories are created).
        titles: One title per map.
        dpi: Pixels per inch.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = torch.as_tensor(relevance)
    if maps.dim() == 2 and maps.shape[0] == maps.shape[1]:
        maps = maps[None]
    if maps.dim() == 2:
        grids = [attention_grid(row) for row in maps]
    elif maps.dim() == 3:
        grids = [m.detach().float().cpu().numpy() for m in maps]
    else:
        raise ValueError(f"relevance must be (g, g), (K, g, g) or (K, T), got {tuple(maps.shape)}")
    if titles is not None and len(titles) != len(grids):
        raise ValueError(f"{len(titles)} titles for {len(grids)} relevance maps")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(image.convert("RGB"))
    fig, axes = plt.subplots(1, len(grids), figsize=(3.0 * len(grids), 3.4), squeeze=False)
    for index, (axis, grid) in enumerate(zip(axes[0], grids, strict=True)):
        span = grid.max() - grid.min()
        grid = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
        axis.imshow(rgb)
        extent = (0, rgb.shape[1], rgb.shape[0], 0)
        axis.imshow(grid, cmap="jet", alpha=0.5, extent=extent, interpolation="bilinear")
        axis.set_axis_off()
        if titles is not None:
            axis.set_title(titles[index], fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.05)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
