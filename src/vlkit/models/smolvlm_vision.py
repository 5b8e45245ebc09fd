"""SigLIP vision tower as Idefics3 / SmolVLM use it (Laurençon et al. 2024; Marafioti et al. 2025).

A SigLIP ViT (Zhai et al. 2023) without the attention-pooling head: patch embedding (Conv2d with
bias), learned position embeddings, pre-LN encoder blocks and a final LayerNorm; the output is the
(B, N, D) patch tokens. Images may be padded (NaViT-style, Dehghani et al. 2023): a boolean
patch attention mask marks real patches, their fractional (row, column) coordinates inside the
real region are bucketized into the pretrained position grid, and padded patches are masked out
as attention keys. Parameter names equal transformers' `SmolVLMVisionTransformer` /
`Idefics3VisionTransformer` (`embeddings.patch_embedding.weight`, `encoder.layers.N.self_attn.
q_proj.weight`, ..., `post_layernorm.weight`), so loading is an identity mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.layers.checkpointing import checkpoint_modules

_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


@dataclass
class SmolVLMVisionConfig:
    """Shape of the vision tower (field names follow transformers' `SmolVLMVisionConfig`)."""

    hidden_size: int = 1152
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.hidden_act not in _ACTIVATIONS:
            raise NotImplementedError(f"vision activation {self.hidden_act!r} is not supported")


class SmolVLMVisionEmbeddings(nn.Module):
    """Patch embedding plus bucketized position embeddings for (possibly padded) images."""

    def __init__(self, config: SmolVLMVisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_patches_per_side = config.image_size // config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(self.num_patches_per_side**2, config.hidden_size)

    def position_ids(self, patch_attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, h, w) bool patch mask -> (B, h*w) position ids (0 for padded patches).

        The real region of each image spans `nb_h x nb_w` patches; patch (i, j) gets the
        fractional coordinates (i / nb_h, j / nb_w), bucketized into the `side x side` grid.
        """
        b, h, w = patch_attention_mask.shape
        side, device = self.num_patches_per_side, patch_attention_mask.device
        boundaries = torch.arange(1 / side, 1.0, 1 / side, device=device)  # (side - 1,)
        nb_h = patch_attention_mask[:, :, 0].sum(dim=1)  # (B,)
        nb_w = patch_attention_mask[:, 0, :].sum(dim=1)  # (B,)
        rows = torch.arange(h, device=device, dtype=torch.float32)[None] * (1.0 / nb_h)[:, None]
        cols = torch.arange(w, device=device, dtype=torch.float32)[None] * (1.0 / nb_w)[:, None]
        rows = torch.bucketize(rows.clamp(max=1.0 - 1e-6), boundaries, right=True)  # (B, h)
        cols = torch.bucketize(cols.clamp(max=1.0 - 1e-6), boundaries, right=True)  # (B, w)
        pos = (rows[:, :, None] * side + cols[:, None, :]).reshape(b, -1)  # (B, h*w)
        return torch.where(patch_attention_mask.reshape(b, -1), pos, torch.zeros_like(pos))

    def forward(
        self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, C, H, W) pixels, (B, H/p, W/p) bool mask -> (B, N, D) embeddings."""
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.position_embedding(self.position_ids(patch_attention_mask))


class SmolVLMVisionAttention(nn.Module):
    """Bidirectional multi-head self-attention with separate q/k/v projections (with bias)."""

    def __init__(self, config: SmolVLMVisionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, d // config.num_attention_heads
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, D); mask (B, 1, 1, N) bool (True = real key) or None -> (B, N, D)."""
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class SmolVLMVisionMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, config: SmolVLMVisionConfig) -> None:
        super().__init__()
        self.act = _ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SmolVLMEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: SmolVLMVisionConfig) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.self_attn = SmolVLMVisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = SmolVLMVisionMLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class SmolVLMEncoder(nn.Module):
    """Stack of encoder layers (holds `layers` so that parameter names match transformers)."""

    def __init__(self, config: SmolVLMVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SmolVLMEncoderLayer(config) for _ in range(config.num_hidden_layers)
        )


class SmolVLMVisionTransformer(nn.Module):
    """SigLIP vision tower without pooling head: pixels -> (B, N, D) post-LayerNorm tokens."""

    def __init__(self, config: SmolVLMVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.embeddings = SmolVLMVisionEmbeddings(config)
        self.encoder = SmolVLMEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def hidden_size(self) -> int:
        """Token width D."""
        return self.config.hidden_size

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder layer's activations in the backward pass (training only;
        `vlkit.layers.checkpointing`)."""
        checkpoint_modules(self.encoder.layers, enabled)

    def patch_mask(self, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, H, W) pixel mask -> (B, H/p, W/p) bool: a patch is real if any pixel in it is."""
        p = self.patch_size
        grid = pixel_attention_mask.unfold(1, p, p).unfold(2, p, p)  # (B, H/p, W/p, p, p)
        return grid.sum(dim=(-1, -2)) > 0

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        patch_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode images.

        Args:
            pixel_values: (B, C, H, W) images (padded to a common size).
            pixel_attention_mask: (B, H, W) 1 for real pixels; converted to a patch mask.
            patch_attention_mask: (B, H/p, W/p) bool patch mask; takes precedence. All patches
                are real when neither mask is given.

        Returns:
            (B, N, D) tokens, N = (H/p) * (W/p), after the final LayerNorm.
        """
        b, _, h, w = pixel_values.shape
        if patch_attention_mask is None:
            if pixel_attention_mask is not None:
                patch_attention_mask = self.patch_mask(pixel_attention_mask)
            else:
                shape = (b, h // self.patch_size, w // self.patch_size)
                patch_attention_mask = torch.ones(
                    shape, dtype=torch.bool, device=pixel_values.device
                )
        patch_attention_mask = patch_attention_mask.bool()
        x = self.embeddings(pixel_values, patch_attention_mask)  # (B, N, D)
        flat = patch_attention_mask.reshape(b, -1)  # (B, N)
        mask = None if bool(flat.all()) else flat[:, None, None, :]  # (B, 1, 1, N)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.post_layernorm(x)
