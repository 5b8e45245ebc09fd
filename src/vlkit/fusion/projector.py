"""LLaVA vision-language projector and image-token splicing.

LLaVA (Liu et al. 2023, "Visual Instruction Tuning", Sec. 4.1) maps CLIP patch features to
the LLM word-embedding space with a single linear layer ``W``; LLaVA-1.5 (Liu et al. 2024,
"Improved Baselines with Visual Instruction Tuning", Sec. 3.2) uses a two-layer MLP
(``mlp2x_gelu``: Linear -> GELU -> Linear). The projected features replace the image
placeholder tokens in the text embedding sequence, and those positions are excluded from
the language-modelling loss (label ``-100``).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from vlkit.losses.next_token import IGNORE_INDEX

# transformers' `projector_hidden_act` names (activations.py ACT2FN) -> modules. "gelu_new" and
# "gelu_pytorch_tanh" are both the tanh approximation (equal up to float rounding).
PROJECTOR_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": lambda: QuickGELU(),
    "silu": lambda: nn.SiLU(),
    "relu": lambda: nn.ReLU(),
}


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), OpenAI CLIP's GELU approximation (transformers' "quick_gelu")."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def build_projector(
    projector_type: str,
    vision_dim: int,
    text_dim: int,
    bias: bool = True,
    activation: str = "gelu",
) -> nn.Module:
    """Build a LLaVA projector.

    Args:
        projector_type: ``"linear"``, ``"identity"`` or ``"mlp{N}x_gelu"`` (e.g.
            ``"mlp2x_gelu"``: Linear -> GELU -> Linear).
        vision_dim: Vision feature width ``Dv``.
        text_dim: LLM hidden width ``D``.
        bias: Biases in the linear layers (transformers' ``multimodal_projector_bias``).
        activation: The MLP's activation, a key of ``PROJECTOR_ACTIVATIONS`` (transformers'
            ``projector_hidden_act``; LLaVA-1.5's ``mlp2x_gelu`` is ``"gelu"``).

    Returns:
        A module mapping (..., Dv) -> (..., D).
    """
    if activation not in PROJECTOR_ACTIVATIONS:
        raise ValueError(
            f"projector activation {activation!r} is not supported "
            f"(supported: {', '.join(PROJECTOR_ACTIVATIONS)})"
        )
    if projector_type == "linear":
        return nn.Linear(vision_dim, text_dim, bias=bias)
    if projector_type == "identity":
        if vision_dim != text_dim:
            raise ValueError("identity projector needs vision_dim == text_dim")
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match:
        depth = int(match.group(1))
        layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim, bias=bias)]
        for _ in range(1, depth):
            layers += [
                PROJECTOR_ACTIVATIONS[activation](),
                nn.Linear(text_dim, text_dim, bias=bias),
            ]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown projector_type {projector_type!r}")


class LlavaProjector(nn.Module):
    """Connector ``forward(media_tokens (B, N, Dv)) -> (B, N, D)``.

    Args:
        vision_dim: Vision feature width ``Dv``.
        text_dim: LLM hidden width ``D``.
        projector_type: See :func:`build_projector`.
        bias, activation: See :func:`build_projector` (transformers' LLaVA:
            ``multimodal_projector_bias``, ``projector_hidden_act``).
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        projector_type: str = "mlp2x_gelu",
        bias: bool = True,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.projector_type = projector_type
        self.bias = bias
        self.activation = activation
        self.proj = build_projector(projector_type, vision_dim, text_dim, bias, activation)

    def forward(self, media_tokens: Tensor) -> Tensor:
        """Project (B, N, Dv) -> (B, N, D)."""
        return self.proj(media_tokens)  # (B, N, D)


def _placeholder_runs(row: Tensor) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of True in a 1-D bool tensor."""
    runs: list[tuple[int, int]] = []
    idx = row.nonzero().flatten().tolist()
    for i in idx:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def splice_image_tokens(
    input_ids: Tensor,
    text_embeds: Tensor,
    image_features: Tensor | list[Tensor],
    image_token_id: int,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Replace each run of image placeholder tokens by one image's projected features.

    Runs are matched to images in reading order (batch row, then position). Each run must
    have exactly as many placeholders as its image has feature vectors (the prompt is
    assumed already expanded, as in HF LLaVA processors).

    Args:
        input_ids: (B, S) token ids.
        text_embeds: (B, S, D) token embeddings.
        image_features: (num_images, P, D) or a list of (P_i, D) projected features.
        image_token_id: Placeholder token id.
        labels: Optional (B, S) LM labels.

    Returns:
        ``(embeds, labels)``: (B, S, D) embeddings with image features spliced in, and the
        labels with ``-100`` at image positions (None if ``labels`` is None).

    Raises:
        ValueError: If the number of runs / placeholders does not match the features.
    """
    feats = (
        list(image_features.unbind(0))
        if isinstance(image_features, Tensor)
        else list(image_features)
    )
    is_image = input_ids == image_token_id  # (B, S)
    runs = [(b, s, n) for b in range(input_ids.shape[0]) for s, n in _placeholder_runs(is_image[b])]
    n_tokens = int(is_image.sum())
    n_feat_tokens = sum(f.shape[0] for f in feats)
    if len(runs) != len(feats) or n_tokens != n_feat_tokens:
        raise ValueError(
            f"found {len(runs)} image placeholder run(s) with {n_tokens} placeholder token(s), "
            f"but got {len(feats)} image(s) with {n_feat_tokens} feature vector(s)"
        )
    embeds = text_embeds.clone()  # (B, S, D)
    for i, ((b, start, length), feat) in enumerate(zip(runs, feats, strict=True)):
        if feat.shape[0] != length:
            raise ValueError(
                f"image {i}: placeholder run has {length} token(s) but the image has "
                f"{feat.shape[0]} feature vector(s)"
            )
        embeds[b, start : start + length] = feat.to(embeds.dtype)
    if labels is not None:
        labels = labels.masked_fill(is_image, IGNORE_INDEX)  # (B, S)
    return embeds, labels


__all__ = [
    "IGNORE_INDEX",
    "PROJECTOR_ACTIVATIONS",
    "LlavaProjector",
    "build_projector",
    "splice_image_tokens",
]
