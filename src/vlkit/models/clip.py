"""CLIP (Radford et al. 2021) and SigLIP (Zhai et al. 2023): two towers and a learned temperature.

Both embed images and texts into one space; `logits` compares them by cosine similarity times a
learned scale t = exp(logit_scale). CLIP clamps t at 100 (Sec. 2.5: "clipped to prevent scaling the
logits by more than 100"); SigLIP adds a learned bias b and its released checkpoints have t > 100,
so it is not clamped.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.models.resnet import ModifiedResNet, ResNetConfig
from vlkit.models.text import TextConfig, TextTransformer
from vlkit.models.vit import VisionTransformer, ViTConfig


@dataclass
class CLIPConfig:
    """A CLIP-like model: its towers, embedding size, temperature and expected preprocessing.

    Attributes:
        model_type: "clip" or "siglip" (selects the class and the Hugging Face format).
        vision_projection: A bias-free linear map from the image tower's width to `embed_dim`
            (CLIP ViTs); SigLIP and ResNets output `embed_dim` directly.
        text_projection_bias: SigLIP's text head has a bias; CLIP's projection does not.
        init_logit_scale: log of the initial temperature multiplier (ln(1/0.07) for CLIP, ln 10
            for SigLIP, Sec. 3.1 of the SigLIP paper).
        init_logit_bias: Initial logit bias (-10 for SigLIP), or None for no bias.
        max_logit_scale: Clamp for exp(logit_scale) (100 for CLIP), or None.
    """

    vision: ViTConfig | ResNetConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    model_type: str = "clip"
    vision_projection: bool = True
    text_projection_bias: bool = False
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    max_logit_scale: float | None = 100.0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.model_type not in ("clip", "siglip"):
            raise ValueError(f"model_type must be 'clip' or 'siglip', got {self.model_type!r}")
        if isinstance(self.vision, ResNetConfig) and self.vision_projection:
            raise ValueError("a ResNet image tower projects itself: set vision_projection=False")
        vision_out = self.vision.output_dim if isinstance(self.vision, ResNetConfig) else None
        if not self.vision_projection:
            width = vision_out if vision_out is not None else self.vision.width
            if width != self.embed_dim:
                raise ValueError(
                    f"without a vision projection the image tower's output size ({width}) must "
                    f"equal embed_dim ({self.embed_dim})"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPConfig:
        """Inverse of `to_dict`; unknown keys raise an error that names them."""
        data = dict(data)
        vision = dict(data.pop("vision", {}))
        vision_cls = ResNetConfig if vision.pop("type", "vit") == "resnet" else ViTConfig
        sections = {
            "vision": (vision_cls, vision),
            "text": (TextConfig, data.pop("text", {})),
            "preprocess": (PreprocessConfig, data.pop("preprocess", {})),
        }
        built = {name: _build(kind, values, name) for name, (kind, values) in sections.items()}
        return _build(cls, {**data, **built}, "CLIPConfig")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> CLIPConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(kind: type, values: dict[str, Any], where: str) -> Any:
    known = {name for name, f in kind.__dataclass_fields__.items() if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown keys in {where} config: {unknown}")
    return kind(**values)


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

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) -> embeddings (B, embed_dim)."""
        embeds = self.image_projection(self.vision(pixel_values).pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Token ids (B, L) -> embeddings (B, embed_dim)."""
        embeds = self.text_projection(self.text(input_ids, attention_mask).pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def temperature(self) -> torch.Tensor:
        """The logit multiplier exp(logit_scale), clamped at `config.max_logit_scale`."""
        scale = self.logit_scale.exp()
        if self.config.max_logit_scale is not None:
            scale = scale.clamp(max=self.config.max_logit_scale)
        return scale

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
    ) -> CLIPOutput:
        image = (
            self.encode_image(pixel_values, normalize=True) if pixel_values is not None else None
        )
        text = (
            self.encode_text(input_ids, attention_mask, normalize=True)
            if input_ids is not None
            else None
        )
        logits = self.logits(image, text) if image is not None and text is not None else None
        return CLIPOutput(image, text, self.temperature(), self.logit_bias, logits)

    def save_pretrained(self, directory: str | Path, format: str = "auto") -> None:
        """Writes the model to `directory`; see `vlkit.hub.save_pretrained`."""
        from vlkit.hub import save_pretrained

        save_pretrained(self, directory, format=format)

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
    from vlkit.models.presets import PRESETS

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
