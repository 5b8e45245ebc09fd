"""The configuration of a CLIP-like model: towers, embedding size, temperature, preprocessing.

A nested dataclass that round-trips through JSON (`to_json` / `from_json`); `vlkit.PRESETS` maps
names to instances of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.models.resnet import ResNetConfig
from vlkit.models.text import TextConfig
from vlkit.models.vit import ViTConfig
from vlkit.overrides import check_json_types

__all__ = ["CLIPConfig"]


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
        max_logit_scale: Training clamp for exp(logit_scale) (100 for CLIP), or None: the
            trainer clamps `logit_scale` to [0, ln max_logit_scale] after each optimizer step, as
            open_clip's training/train.py does. The forward never clamps, so a checkpoint whose
            logit_scale exceeds it gives the same logits as in transformers and open_clip.
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
        """Reads `to_json` output; a problem is one ValueError naming the file and the key."""
        try:  # (H7) field by field first, so a mistyped value is named rather than a TypeError
            data = json.loads(Path(path).read_text())
            check_json_types(cls, data)
            return cls.from_dict(data)
        except ValueError as error:  # JSONDecodeError, ConfigError, a constructor's check
            raise ValueError(f"{path}: {error}") from None


def _build(kind: type, values: dict[str, Any], where: str) -> Any:
    known = {name for name, f in kind.__dataclass_fields__.items() if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown keys in {where} config: {unknown}")
    return kind(**values)
