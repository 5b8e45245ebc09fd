"""Vision Transformer image tower (Dosovitskiy et al. 2021) as used by CLIP and SigLIP.

CLIP (Radford et al. 2021, Sec. 2.4): conv patch embedding without bias, a CLS token, learnable
positions, an extra LayerNorm before the blocks, pooled = LN(CLS). SigLIP (Zhai et al. 2023):
biased patch embedding, no CLS token, no pre-norm, LN over all tokens, then a multihead
attention-pooling head. Images of another size than the pretrained one go through with
`interpolate_pos_encoding=True` (the position table resized as transformers resizes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules import module as _module

from vlkit.layers import AttentionPoolingHead, Transformer
from vlkit.models.outputs import VisionOutput
from vlkit.models.position_interpolation import interpolate_position_embedding, patch_grid


@dataclass
class ViTConfig:
    """Shape and variant of a Vision Transformer.

    Attributes:
        pool: "cls" takes the CLS token (CLIP); "map" uses multihead attention pooling (SigLIP).
    """

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    class_token: bool = True
    patch_bias: bool = False
    pre_norm: bool = True
    pool: str = "cls"
    num_channels: int = 3
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    type: str = field(default="vit", init=False)

    def __post_init__(self) -> None:
        if self.pool not in ("cls", "map"):
            raise ValueError(f"ViTConfig.pool must be 'cls' or 'map', got {self.pool!r}")
        if self.pool == "cls" and not self.class_token:
            raise ValueError("ViTConfig.pool='cls' needs class_token=True")
        if not 0 < self.patch_size <= self.image_size:
            raise ValueError(
                f"ViTConfig.patch_size must be in [1, image_size={self.image_size}], "
                f"got {self.patch_size}"
            )

    @property
    def grid_size(self) -> int:
        """Patches per side. An image size that is not a multiple of the patch size leaves its
        last `image_size % patch_size` rows and columns unused, as the stride-p convolution of
        transformers' CLIPVisionEmbeddings and open_clip's VisionTransformer does."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid_size**2 + int(self.class_token)


class VisionTransformer(nn.Module):
    """Images (B, C, H, W) -> `VisionOutput(tokens (B, N, D), pooled (B, D))`."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.patch_embed = nn.Conv2d(
            config.num_channels,
            width,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.patch_bias,
        )
        self.class_token = nn.Parameter(torch.zeros(width)) if config.class_token else None
        self.position_embedding = nn.Parameter(torch.zeros(config.num_positions, width))
        self.norm_pre = (
            nn.LayerNorm(width, eps=config.layer_norm_eps) if config.pre_norm else nn.Identity()
        )
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_dim, config.activation,
            config.layer_norm_eps, config.dropout, config.attention_dropout, config.drop_path,
        )  # fmt: skip
        self.norm_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attention_pool = (
            AttentionPoolingHead(
                width, config.heads, config.mlp_dim, config.activation, config.layer_norm_eps
            )
            if config.pool == "map"
            else None
        )
        self.interpolate_pos_encoding = False  # runtime mode: set_interpolate_pos_encoding
        self.init_weights()

    @property
    def width(self) -> int:
        return self.config.width

    def init_weights(self) -> None:
        """Initialisation as in open_clip's `VisionTransformer` (scaled normal)."""
        scale = self.config.width**-0.5
        if self.class_token is not None:
            nn.init.normal_(self.class_token, std=scale)
        nn.init.normal_(self.position_embedding, std=scale)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.gradient_checkpointing = enabled

    def set_interpolate_pos_encoding(self, enabled: bool = True) -> None:
        """Make `forward` default to `interpolate_pos_encoding=enabled`: a runtime mode (like
        gradient checkpointing, never saved) so that helpers that only call `encode_image`
        (zero-shot, embedding, search) can run on images of another size."""
        self.interpolate_pos_encoding = enabled

    def forward(
        self,
        images: torch.Tensor,
        return_attention: bool = False,
        interpolate_pos_encoding: bool | None = None,
    ) -> VisionOutput:
        """Encode images.

        Args:
            images: (B, C, H, W); H = W = `config.image_size` unless interpolating.
            return_attention: Also return each block's attention maps.
            interpolate_pos_encoding: Accept any H, W >= patch size, resizing the learned
                position embeddings to the `(H // p, W // p)` grid as transformers'
                `interpolate_pos_encoding=True` does (`vlkit.models.position_interpolation`).
                None: the mode set by `set_interpolate_pos_encoding` (off by default).
        """
        x = self._embed(images, interpolate_pos_encoding)
        x, attentions = self.transformer(x, return_attention=return_attention)
        x = self.norm_post(x)
        pooled = x[:, 0] if self.attention_pool is None else self.attention_pool(x)
        return VisionOutput(tokens=x, pooled=pooled, attentions=attentions)

    def pooled_features(
        self, images: torch.Tensor, interpolate_pos_encoding: bool | None = None
    ) -> torch.Tensor:
        """`forward(images, ...).pooled` (B, D) alone. A CLS-pooled tower in eval mode runs its
        last block for the CLS token only (`Transformer.forward_prefix`): about 6% less compute
        for a 12-block ViT, equal to the full forward up to float reassociation in the smaller
        matrix products. Use `forward` when the per-token features are needed. A forward hook
        on the tower or on its last block (feature extraction, visualisation) gets the full
        forward it expects: with one, this calls `forward`.
        """
        if (
            self.attention_pool is not None
            or self.training
            or self.config.layers == 0
            or self._hooked()
        ):
            return self(images, interpolate_pos_encoding=interpolate_pos_encoding).pooled
        x = self._embed(images, interpolate_pos_encoding)
        return self.norm_post(self.transformer.forward_prefix(x, 1))[:, 0]

    def _hooked(self) -> bool:
        """Whether forward hooks watch the tower or its last block (`forward_prefix` bypasses
        both modules' `__call__`, so their hooks would not fire)."""
        last = self.transformer.blocks[-1]
        return any(
            module._forward_hooks or module._forward_pre_hooks for module in (self, last)
        ) or bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)

    def _embed(self, images: torch.Tensor, interpolate_pos_encoding: bool | None) -> torch.Tensor:
        """Images (B, C, H, W) -> the first block's input (B, N, D): patches, CLS, positions."""
        if interpolate_pos_encoding is None:
            interpolate_pos_encoding = self.interpolate_pos_encoding
        size, channels = self.config.image_size, self.config.num_channels
        if images.ndim != 4 or images.shape[1] != channels:
            raise ValueError(
                f"expected images of shape (B, {channels}, H, W), got {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        if not interpolate_pos_encoding and (height, width) != (size, size):
            raise ValueError(
                f"expected images of shape (B, {channels}, {size}, {size}), got "
                f"{tuple(images.shape)} (other sizes need interpolate_pos_encoding=True)"
            )
        patch_grid(height, width, self.config.patch_size)  # at least one patch, or a ValueError
        # Stride-p convolution: (B, D, h, w), h = H // p (remainder pixels unused).
        x = self.patch_embed(images.to(self.patch_embed.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        if self.class_token is not None:
            cls = self.class_token.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + h*w, D)
        positions = self.position_embedding
        if interpolate_pos_encoding:
            positions = interpolate_position_embedding(
                positions, height, width, self.config.patch_size, self.class_token is not None
            )  # (1 + h*w, D) or (h*w, D)
        x = x + positions.to(x.dtype)
        return self.norm_pre(x)
