"""CLIP's ModifiedResNet image tower (Radford et al. 2021, Sec. 2.4; OpenAI clip/model.py).

Differences from torchvision's ResNet: a three-convolution stem with an average pool instead of a
max pool; anti-aliased strided convolutions (an average pool of the stride is prepended, Zhang 2019);
and attention pooling: the mean-pooled feature is the query of one multi-head QKV attention over
the spatial grid (plus positional embeddings), whose output projection maps to the embedding size.
Parameter names follow the OpenAI/open_clip checkpoints so weights load one to one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.models.outputs import VisionOutput


@dataclass
class ResNetConfig:
    """Shape of a ModifiedResNet. `output_dim` is the embedding size the attention pool maps to."""

    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    heads: int = 32
    output_dim: int = 1024
    num_channels: int = 3
    type: str = field(default="resnet", init=False)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if len(self.layers) != 4:
            raise ValueError(f"ResNetConfig.layers needs 4 stage depths, got {self.layers}")
        if self.image_size % 32:
            raise ValueError(f"ResNet image_size must be a multiple of 32, got {self.image_size}")


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride > 1 or inplanes != out:
            # Anti-aliased downsampling: average-pool first, then a stride-1 1x1 convolution.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """QKV attention pooling over a (B, C, H, W) feature map; the query is the mean feature."""

    def __init__(self, grid: int, dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the pooled (B, output_dim) and the spatial tokens (B, H*W, C)."""
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1 + HW, C)
        x = x + self.positional_embedding.to(x.dtype)
        batch, length, dim = x.shape
        head_dim = dim // self.heads
        q = self.q_proj(x[:, :1]).view(batch, 1, self.heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh)
        pooled = self.c_proj(pooled.transpose(1, 2).reshape(batch, dim))
        return pooled, tokens


class ModifiedResNet(nn.Module):
    """Images (B, 3, H, W) -> `VisionOutput(tokens (B, HW/32^2, 32*width), pooled (B, output_dim))`."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(config.num_channels, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        stages = []
        for index, depth in enumerate(config.layers):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(1, depth)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(
            config.image_size // 32, width * 32, config.heads, config.output_dim
        )
        self.init_weights()

    @property
    def width(self) -> int:
        return self.config.output_dim

    def init_weights(self) -> None:
        """As open_clip: scaled normal for the attention pool, zero-init of each block's last BN."""
        std = self.attnpool.c_proj.in_features**-0.5
        for linear in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj):
            nn.init.normal_(linear.weight, std=std)
        nn.init.normal_(self.attnpool.c_proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            raise NotImplementedError("gradient checkpointing is implemented for transformers only")

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> VisionOutput:
        if return_attention:
            raise NotImplementedError("ModifiedResNet has no self-attention maps to return")
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.config.num_channels, size, size):
            raise ValueError(
                f"expected images of shape (B, {self.config.num_channels}, {size}, {size}), "
                f"got {tuple(images.shape)}"
            )
        x = images.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32*width, H/32, W/32)
        pooled, tokens = self.attnpool(x)
        return VisionOutput(tokens=tokens, pooled=pooled)
