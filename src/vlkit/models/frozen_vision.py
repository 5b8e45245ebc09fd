"""A vlkit image tower as the vision encoder of a generative VLM, frozen or trainable.

VLMs read the image as (N, T, Dv) tokens (`tower_tokens`): a tower's output tokens, or for a
ModifiedResNet the feature map after an earlier stage ("layer3": more, finer tokens). A tower
whose parameters are all frozen (`requires_grad=False`) is a fixed feature extractor and stays in
eval mode when the model around it trains (`keep_frozen_in_eval`): training must not update the
BatchNorm running statistics of a pretrained ResNet, nor apply its dropout. `VisionTokens` holds
both rules; the generative VLMs apply the second to whatever vision module they hold, so a raw
frozen tower behaves the same.

LLaVA reads a ViT's hidden states instead of its output (Liu et al. 2024, LLaVA-1.5: the
penultimate layer, CLS dropped): source "hidden:-2" (or "hidden:-2,-5,-8", concatenated along the
width) selects them with transformers' indexing (`vit_hidden_states`), and `drop_first=True` drops
token 0, transformers' `vision_feature_select_strategy="default"`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.models.resnet import ModifiedResNet
from vlkit.models.vit import VisionTransformer

__all__ = [
    "TOKEN_SOURCES",
    "VisionTokens",
    "hidden_layers",
    "is_frozen",
    "keep_frozen_in_eval",
    "tower_tokens",
    "vit_hidden_states",
]

TOKEN_SOURCES = ("final", "layer1", "layer2", "layer3", "layer4")
HIDDEN_PREFIX = "hidden:"


def hidden_layers(source: str) -> list[int] | None:
    """The layer indices of a "hidden:-2" / "hidden:-2,-5" source; None for other sources.

    Raises:
        ValueError: A "hidden:" source whose indices are not integers.
    """
    if not source.startswith(HIDDEN_PREFIX):
        return None
    try:
        layers = [int(part) for part in source[len(HIDDEN_PREFIX) :].split(",")]
    except ValueError:
        raise ValueError(
            f"token source {source!r}: expected 'hidden:' and comma-separated layer indices"
        ) from None
    return layers


def _check_source(source: str) -> None:
    if source not in TOKEN_SOURCES and hidden_layers(source) is None:
        raise ValueError(
            f"token source must be one of {TOKEN_SOURCES} or 'hidden:<layer>[,<layer>...]', "
            f"got {source!r}"
        )


def vit_hidden_states(
    tower: VisionTransformer, images: torch.Tensor, layers: Sequence[int]
) -> list[torch.Tensor]:
    """(N, T, D) hidden states of a ViT at `layers`, indexed as transformers' `hidden_states`.

    Index 0 is the input of the first block (the embeddings, after CLIP's pre-LayerNorm), index i
    the output of block i, negative indices count from the end (-1: the last block's output,
    before the final LayerNorm) -- transformers' `CLIPVisionModel` / `SiglipVisionModel`
    `hidden_states`, which LLaVA's `vision_feature_layer` indexes (modeling_llava.py,
    `get_image_features`). The states are recorded with hooks on the blocks while the tower runs,
    so the embedding code is the tower's own.

    Raises:
        ValueError: An index outside [-(L + 1), L] for L blocks.
    """
    blocks = tower.transformer.blocks
    count = len(blocks) + 1
    for layer in layers:
        if not -count <= layer < count:
            raise ValueError(
                f"vision feature layer {layer} is out of range for a tower of {count - 1} blocks"
            )
    states: list[torch.Tensor] = []
    handles = [blocks[0].register_forward_pre_hook(lambda _, args: states.append(args[0]))]
    handles += [
        block.register_forward_hook(lambda _, __, out: states.append(out[0])) for block in blocks
    ]
    try:
        tower(images)
    finally:
        for handle in handles:
            handle.remove()
    return [states[layer] for layer in layers]


def tower_tokens(tower: nn.Module, images: torch.Tensor, source: str = "final") -> torch.Tensor:
    """(N, 3, S, S) images -> (N, T, Dv) tokens of an image tower.

    Args:
        tower: A vlkit image tower (`-> VisionOutput`).
        images: (N, 3, S, S).
        source: "final": the tower's output tokens (a ViT's class + patch tokens; a
            ModifiedResNet's last feature map, (S/32)^2 tokens, before the attention pool).
            "layerK" (ModifiedResNet only): the feature map after stage K, flattened row-major:
            (S/2^(K+1))^2 tokens of width 4 * width * 2^(K-1) ("layer4" equals "final").
            "hidden:I[,J...]" (VisionTransformer only): the hidden states at those indices
            (`vit_hidden_states`), concatenated along the width (LLaVA's feature layers).

    Raises:
        ValueError: An unknown source, or a stage (hidden) source for a tower that is not a
            ResNet (a VisionTransformer).
    """
    if source == "final":
        return tower(images).tokens
    _check_source(source)
    layers = hidden_layers(source)
    if layers is not None:
        if not isinstance(tower, VisionTransformer):
            raise ValueError(
                f"token source {source!r} needs a VisionTransformer, got {type(tower)}"
            )
        return torch.cat(vit_hidden_states(tower, images, layers), dim=-1)  # (N, T, Dv * k)
    if not isinstance(tower, ModifiedResNet):
        raise ValueError(f"token source {source!r} needs a ModifiedResNet, got {type(tower)}")
    x = images.to(tower.conv1.weight.dtype)
    x = F.relu(tower.bn1(tower.conv1(x)))
    x = F.relu(tower.bn2(tower.conv2(x)))
    x = tower.avgpool(F.relu(tower.bn3(tower.conv3(x))))
    for stage in (tower.layer1, tower.layer2, tower.layer3, tower.layer4)[: int(source[-1])]:
        x = stage(x)
    return x.flatten(2).transpose(1, 2)  # (N, H*W, C)


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of `module` requires a gradient."""
    return not any(p.requires_grad for p in module.parameters())


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put `module` back into eval mode if it is frozen; call after `train(True)`."""
    if is_frozen(module):
        module.eval()


class VisionTokens(nn.Module):
    """A vlkit image tower (`-> VisionOutput`) as a VLM's (N, T, Dv) token source.

    Frozen (`freeze=True`, or its parameters frozen later, e.g. by `fusion_vlm.freeze_vision`),
    the tower stays in eval mode across `train()` and runs under `no_grad`, so no activations
    are kept for it; trainable, it is a plain submodule. The parameter names are the tower's
    under `tower.`, whichever the mode, so checkpoints load either way.

    Args:
        tower: e.g. `vlkit.create_model("small-rn-64").vision`.
        source: Which tokens (`tower_tokens`): "final", a ResNet stage ("layer3") or ViT hidden
            states ("hidden:-2").
        freeze: Freeze the tower now (no gradients, eval mode).
        drop_first: Drop token 0 (a ViT's CLS token): transformers' LLaVA
            `vision_feature_select_strategy="default"`, which drops it whatever the tower.
    """

    def __init__(
        self,
        tower: nn.Module,
        source: str = "final",
        freeze: bool = False,
        drop_first: bool = False,
    ) -> None:
        super().__init__()
        _check_source(source)
        self.tower = tower.eval().requires_grad_(False) if freeze else tower
        self.source = source
        self.drop_first = drop_first

    def train(self, mode: bool = True) -> VisionTokens:
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self.tower)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) images -> (N, T, Dv) token features."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(self.tower)):
            tokens = tower_tokens(self.tower, images, self.source)
        return tokens[:, 1:] if self.drop_first else tokens
