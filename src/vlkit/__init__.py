"""vlkit: native multimodal (vision-language) models in PyTorch."""

from vlkit.models import CLIP, CLIPConfig, SigLIP
from vlkit.models.clip import create_model
from vlkit.models.presets import PRESETS

__version__ = "0.1.0"

__all__ = ["CLIP", "CLIPConfig", "PRESETS", "SigLIP", "create_model", "__version__"]
