"""CLIP (Radford et al. 2021) and SigLIP (Zhai et al. 2023): two towers and a learned temperature.

Both embed images and texts into one space; `logits` compares them by cosine similarity times a
learned scale t = exp(logit_scale). CLIP's training keeps t <= 100 (Sec. 2.5: "clipped to prevent
scaling the logits by more than 100"); like transformers (modeling_clip.py) and open_clip
(training/train.py clamps the parameter after each optimizer step), vlkit clamps the parameter in
the training loop (`vlkit.training`), never in the forward, so a loaded checkpoint whose
logit_scale exceeds ln 100 gives the reference logits. SigLIP adds a learned bias b and its released
checkpoints have t > 100, so its training does not clamp.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.models.clip_config import CLIPConfig
from vlkit.models.presets import PRESETS
from vlkit.models.resnet import ModifiedResNet, ResNetConfig
from vlkit.models.text import TextTransformer
from vlkit.models.vit import VisionTransformer

__all__ = ["CLIP", "CLIPConfig", "CLIPOutput", "SigLIP", "create_model"]

# Writes a checkpoint: (model, directory, format) -> None.
CheckpointWriter = Callable[["CLIP", "str | Path", str], None]


@dataclass
class CLIPOutput:
    """Normalized embeddings, the temperature (and bias), and image-text logits (rows: images)."""

    image_embeds: torch.Tensor | None
    text_embeds: torch.Tensor | None
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None


class CLIP(nn.Module):
    """Image tower + text tower + projections + learnable temperature."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        if isinstance(config.vision, ResNetConfig):
            self.vision = ModifiedResNet(config.vision)
        else:
            self.vision = VisionTransformer(config.vision)
        self.text = TextTransformer(config.text)
        self.image_projection = (
            nn.Linear(self.vision.width, config.embed_dim, bias=False)
            if config.vision_projection
            else nn.Identity()
        )
        self.text_projection = nn.Linear(
            config.text.width, config.embed_dim, bias=config.text_projection_bias
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.init_logit_bias)))
            if config.init_logit_bias is not None
            else None
        )
        self._init_projections()

    def _init_projections(self) -> None:
        if isinstance(self.image_projection, nn.Linear):
            nn.init.normal_(self.image_projection.weight, std=self.vision.width**-0.5)
        nn.init.normal_(self.text_projection.weight, std=self.config.text.width**-0.5)
        if self.text_projection.bias is not None:
            nn.init.zeros_(self.text_projection.bias)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer block's activations in backward to save memory."""
        self.vision.set_gradient_checkpointing(enabled)
        self.text.set_gradient_checkpointing(enabled)

    def set_interpolate_pos_encoding(self, enabled: bool = True) -> None:
        """Let `encode_image` take images of any size by default (a runtime mode, never saved;
        see `VisionTransformer.set_interpolate_pos_encoding`). ViT image towers only."""
        self._vit_tower("set_interpolate_pos_encoding").set_interpolate_pos_encoding(enabled)

    def _vit_tower(self, what: str) -> VisionTransformer:
        if not isinstance(self.vision, VisionTransformer):
            raise ValueError(
                f"{what} needs a ViT image tower (learned patch positions); this model's is "
                f"a {type(self.vision).__name__}"
            )
        return self.vision

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        normalize: bool = False,
        interpolate_pos_encoding: bool | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) -> embeddings (B, embed_dim).

        Args:
            interpolate_pos_encoding: Take any H, W, the position embeddings resized as
                transformers' `interpolate_pos_encoding=True` does (ViT towers). None: the
                tower's mode (`set_interpolate_pos_encoding`, off by default).
        """
        if interpolate_pos_encoding:
            tower = self._vit_tower("interpolate_pos_encoding=True")
            pooled = tower.pooled_features(pixel_values, interpolate_pos_encoding=True)
        elif not isinstance(self.vision, VisionTransformer):
            pooled = self.vision(pixel_values).pooled
        else:  # the CLS token alone through the last block (`VisionTransformer.pooled_features`)
            pooled = self.vision.pooled_features(pixel_values, interpolate_pos_encoding)
        embeds = self.image_projection(pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Token ids (B, L) -> embeddings (B, embed_dim).

        Runs the text tower on the columns up to the batch's last end-of-text token when that is
        exact (causal towers in eval mode; `TextTransformer.pooled_features`).
        """
        embeds = self.text_projection(self.text.pooled_features(input_ids, attention_mask))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def temperature(self) -> torch.Tensor:
        """The logit multiplier exp(logit_scale), as stored (no clamp: see the module docstring)."""
        return self.logit_scale.exp()

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities (N_images, N_texts), plus the bias when the model has one."""
        image_emb = F.normalize(image_emb, dim=-1)
        text_emb = F.normalize(text_emb, dim=-1)
        logits = self.temperature() * image_emb @ text_emb.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
    ) -> CLIPOutput:
        image = (
            self.encode_image(pixel_values, True, interpolate_pos_encoding)
            if pixel_values is not None
            else None
        )
        text = (
            self.encode_text(input_ids, attention_mask, normalize=True)
            if input_ids is not None
            else None
        )
        logits = self.logits(image, text) if image is not None and text is not None else None
        return CLIPOutput(image, text, self.temperature(), self.logit_bias, logits)

    # The format layer (`vlkit.hub`) sits above the models, so they cannot import it: vlkit.hub
    # installs its `save_pretrained` here when it is imported (`import vlkit` imports it).
    checkpoint_writer: ClassVar[CheckpointWriter | None] = None

    def save_pretrained(self, directory: str | Path, format: str = "auto") -> None:
        """Writes the model to `directory`; see `vlkit.hub.save_pretrained` (which does it)."""
        writer = CLIP.checkpoint_writer
        if writer is None:
            raise RuntimeError("saving checkpoints needs vlkit.hub: `import vlkit.hub` first")
        writer(self, directory, format)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class SigLIP(CLIP):
    """SigLIP: the same two towers trained with a pairwise sigmoid loss, with a learned logit bias.

    The configuration carries the differences (no CLS token, biased patch embedding, attention
    pooling head, bidirectional text attention with last-token pooling, a biased text head); the
    class exists so that `isinstance` and the Hugging Face format can tell the two apart.
    """

    def __init__(self, config: CLIPConfig) -> None:
        if config.init_logit_bias is None:
            raise ValueError("SigLIP needs init_logit_bias (the SigLIP paper uses -10)")
        super().__init__(config)


def create_model(preset_or_config: str | CLIPConfig | dict[str, Any]) -> CLIP:
    """Builds a randomly initialised model from a preset name, a config or a config dict."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(
                f"unknown preset {preset_or_config!r}; available: {', '.join(sorted(PRESETS))}"
            )
        config = copy.deepcopy(PRESETS[preset_or_config])
    elif isinstance(preset_or_config, dict):
        config = CLIPConfig.from_dict(preset_or_config)
    else:
        config = preset_or_config
    return SigLIP(config) if config.model_type == "siglip" else CLIP(config)
