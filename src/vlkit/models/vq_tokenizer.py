"""VQ-VAE image tokenizer: images <-> a grid of discrete codes, the image tokens of Chameleon.

Chameleon Team 2024, "Chameleon: Mixed-Modal Early-Fusion Foundation Models", Sec. 2.1: an image
tokenizer in the style of Gafni et al. 2022 (Make-A-Scene), itself a VQGAN (Esser et al. 2021),
encodes a 512x512 image into 1024 discrete tokens from a codebook of 8192, which the LM reads and
writes like words. This is the VQ-VAE of van den Oord et al. 2017 (Sec. 3 and Sec. 4.2: strided
convolutions down, two residual 3x3 blocks, the mirror image up) at the scale of easy-VQA's 64x64
shapes (8x8 = 64 codes per image by default), trained with a pixel MSE plus the quantizer's
losses (VQ-VAE Eq. 3); VQGAN's perceptual and adversarial losses are left out.

    tokenizer = VQTokenizer(VQTokenizerConfig())
    out = tokenizer(images)                 # images (B, 3, 64, 64) in [0, 1]
    out.losses["loss"].backward()
    codes = tokenizer.encode(images)        # (B, 64) long
    images = tokenizer.decode_codes(codes)  # (B, 3, 64, 64)

Saved and loaded as safetensors + JSON config by `vlkit.hub.vq_checkpoint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.layers.vector_quantizer import VectorQuantizer
from vlkit.overrides import check_range, from_dict, to_dict

__all__ = ["VQTokenizer", "VQTokenizerConfig", "VQTokenizerOutput", "psnr"]


@dataclass
class VQTokenizerConfig:
    """Shape and quantizer of a `VQTokenizer` (JSON round-trippable: `to_dict` / `from_dict`).

    Attributes:
        image_size: Input side S (square images with pixel values in [0, 1]).
        channels: Image channels C.
        hidden_channels: Width of each stride-2 stage; len = number of halvings, so the code
            grid is S / 2^len on a side.
        num_residual_blocks: Residual 3x3 blocks at the lowest resolution, in both directions.
        code_dim: Width D of the codes.
        num_codes: Codebook size K.
        beta: Commitment weight (VQ-VAE Eq. 3).
        ema_decay: EMA codebook updates with this decay; None learns the codebook by gradient.
        kmeans_init: Initialise the codebook with k-means of the first batch's encoder outputs.
        restart_after: Re-seed codes unused for this many steps; None never does.
    """

    image_size: int = 64
    channels: int = 3
    hidden_channels: tuple[int, ...] = (32, 64, 64)
    num_residual_blocks: int = 2
    code_dim: int = 32
    num_codes: int = 128
    beta: float = 0.25
    ema_decay: float | None = 0.99
    kmeans_init: bool = True
    restart_after: int | None = 20

    def __post_init__(self) -> None:
        check_range("image_size", self.image_size, 1)
        check_range("code_dim", self.code_dim, 1)
        check_range("num_codes", self.num_codes, 2)
        check_range("beta", self.beta, 0)
        check_range("ema_decay", self.ema_decay, 0, 1, high_open=True)
        check_range("restart_after", self.restart_after, 1)
        if not self.hidden_channels:
            raise ValueError("hidden_channels: at least one stride-2 stage is needed")
        if self.image_size % 2 ** len(self.hidden_channels):
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of "
                f"2^{len(self.hidden_channels)} (one halving per hidden_channels entry)"
            )

    @property
    def grid_size(self) -> int:
        """Codes per side of the image, S / 2^len(hidden_channels)."""
        return self.image_size // 2 ** len(self.hidden_channels)

    @property
    def tokens_per_image(self) -> int:
        """Codes per image (the grid, raster order)."""
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQTokenizerConfig:
        return from_dict(cls, data)


@dataclass
class VQTokenizerOutput:
    """Result of `VQTokenizer.forward`.

    Attributes:
        reconstruction: (B, C, S, S) decoded images.
        codes: (B, h, w) code indices.
        losses: "reconstruction" (pixel MSE), "codebook", "commitment" and their sum "loss".
        perplexity: Code perplexity over the batch.
    """

    reconstruction: torch.Tensor
    codes: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    perplexity: torch.Tensor | None = None


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio 10 log10(1 / MSE) of [0, 1] images, one per image (B,)."""
    mse = (images.clamp(0, 1) - reference).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) (VQ-VAE Sec. 4.2's residual block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


# The encoder reads pixels mapped to [-1, 1] and the decoder writes that range, which centres
# easy-VQA's mostly white images; `VQTokenizer` maps to and from [0, 1].
class VQEncoder(nn.Module):
    """(B, C, S, S) -> (B, D, S/2^n, S/2^n): n stride-2 4x4 convolutions, residual blocks, 1x1 to D."""

    def __init__(self, config: VQTokenizerConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = config.channels
        for out in config.hidden_channels:
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
            width = out
        layers.pop()  # the residual blocks start with their own ReLU
        layers += [ResidualBlock(width) for _ in range(config.num_residual_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(width, config.code_dim, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class VQDecoder(nn.Module):
    """The encoder's mirror: (B, D, h, w) -> 3x3 conv, residual blocks, n stride-2 4x4
    transposed convolutions -> (B, C, S, S) (no output squashing; the loss is pixel MSE)."""

    def __init__(self, config: VQTokenizerConfig) -> None:
        super().__init__()
        widths = list(reversed(config.hidden_channels))
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, widths[0], 3, padding=1)]
        layers += [ResidualBlock(widths[0]) for _ in range(config.num_residual_blocks)]
        layers.append(nn.ReLU())
        for width, out in zip(widths, widths[1:] + [config.channels], strict=True):
            layers += [nn.ConvTranspose2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
        layers.pop()  # linear output
        self.layers = nn.Sequential(*layers)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        return self.layers(quantized)


class VQTokenizer(nn.Module):
    """Encoder -> `VectorQuantizer` -> decoder (VQ-VAE, van den Oord et al. 2017, Fig. 1)."""

    def __init__(self, config: VQTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VQEncoder(config)
        self.quantizer = VectorQuantizer(
            config.num_codes,
            config.code_dim,
            beta=config.beta,
            ema_decay=config.ema_decay,
            kmeans_init=config.kmeans_init,
            restart_after=config.restart_after,
        )
        self.decoder = VQDecoder(config)

    def forward(self, images: torch.Tensor) -> VQTokenizerOutput:
        """Reconstruct images (B, C, S, S) in [0, 1] through the codes; losses of VQ-VAE Eq. 3."""
        z = self.encoder(images * 2 - 1).permute(0, 2, 3, 1)  # (B, h, w, D)
        q = self.quantizer(z)
        reconstruction = self.decoder(q.quantized.permute(0, 3, 1, 2)) / 2 + 0.5  # (B, C, S, S)
        losses = {
            "reconstruction": F.mse_loss(reconstruction, images),
            "codebook": q.codebook_loss,
            "commitment": q.commitment_loss,
        }
        losses["loss"] = sum(losses.values())
        return VQTokenizerOutput(reconstruction, q.codes, losses, q.perplexity)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) -> (B, h*w) codes in raster order (the image tokens)."""
        z = self.encoder(images * 2 - 1).permute(0, 2, 3, 1)  # (B, h, w, D)
        return self.quantizer.nearest_codes(z.reshape(-1, z.shape[-1])).view(z.shape[0], -1)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h*w) codes in raster order -> (B, C, S, S) images clamped to [0, 1]."""
        side = math.isqrt(codes.shape[1])
        if side * side != codes.shape[1] or side != self.config.grid_size:
            raise ValueError(
                f"expected {self.config.tokens_per_image} codes per image, got {codes.shape[1]}"
            )
        q = self.quantizer.lookup(codes).view(codes.shape[0], side, side, -1)  # (B, h, w, D)
        return (self.decoder(q.permute(0, 3, 1, 2)) / 2 + 0.5).clamp(0, 1)
