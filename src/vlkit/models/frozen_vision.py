"""A vlkit image tower as the vision encoder of a generative VLM, frozen or trainable.

VLMs read the image as (N, T, Dv) tokens (`tower_tokens`): a tower's output tokens, or for a
ModifiedResNet the feature map after an earlier stage ("layer3": more, finer tokens). A tower
whose parameters are all frozen (`requires_grad=False`) is a fixed feature extractor and stays in
eval mode when the model around it trains (`keep_frozen_in_eval`): training must not update the
BatchNorm running statistics of a pretrained ResNet, nor apply its dropout. `VisionTokens` holds
both rules; the generative VLMs apply the second to whatever vision module they hold, so a raw
frozen tower behaves the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.models.resnet import ModifiedResNet

__all__ = ["TOKEN_SOURCES", "VisionTokens", "is_frozen", "keep_frozen_in_eval", "tower_tokens"]

TOKEN_SOURCES = ("final", "layer1", "layer2", "layer3", "layer4")


def tower_tokens(tower: nn.Module, images: torch.Tensor, source: str = "final") -> torch.Tensor:
    """(N, 3, S, S) images -> (N, T, Dv) tokens of an image tower.

    Args:
        tower: A vlkit image tower (`-> VisionOutput`).
        images: (N, 3, S, S).
        source: "final": the tower's output tokens (a ViT's class + patch tokens; a
            ModifiedResNet's last feature map, (S/32)^2 tokens, before the attention pool).
            "layerK" (ModifiedResNet only): the feature map after stage K, flattened row-major:
            (S/2^(K+1))^2 tokens of width 4 * width * 2^(K-1) ("layer4" equals "final").

    Raises:
        ValueError: An unknown source, or a stage source for a tower that is not a ResNet.
    """
    if source == "final":
        return tower(images).tokens
    if source not in TOKEN_SOURCES:
        raise ValueError(f"token source must be one of {TOKEN_SOURCES}, got {source!r}")
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
        source: Which tokens (`tower_tokens`): "final" or a ResNet stage ("layer3").
        freeze: Freeze the tower now (no gradients, eval mode).
    """

    def __init__(self, tower: nn.Module, source: str = "final", freeze: bool = False) -> None:
        super().__init__()
        if source not in TOKEN_SOURCES:
            raise ValueError(f"token source must be one of {TOKEN_SOURCES}, got {source!r}")
        self.tower = tower.eval().requires_grad_(False) if freeze else tower
        self.source = source

    def train(self, mode: bool = True) -> VisionTokens:
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self.tower)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) images -> (N, T, Dv) token features."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(self.tower)):
            return tower_tokens(self.tower, images, self.source)
