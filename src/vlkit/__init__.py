"""vlkit: native multimodal (vision-language) models in PyTorch."""

from vlkit.api import compose_vlm, get_processor, get_tokenizer, get_transform, load_clip
from vlkit.hub import CheckpointError, from_pretrained
from vlkit.models import CLIP, CLIPConfig, SigLIP
from vlkit.models.clip import create_model
from vlkit.models.presets import PRESETS
from vlkit.version import __version__

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CheckpointError",
    "PRESETS",
    "SigLIP",
    "__version__",
    "compose_vlm",
    "create_model",
    "from_pretrained",
    "get_processor",
    "get_tokenizer",
    "get_transform",
    "load_clip",
]
