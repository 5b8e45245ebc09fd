"""A Hugging Face SmolVLM / SmolVLM2 / Idefics3 directory as a `VLMPipeline`.

The directory's `SmolVLMProcessor` builds the inputs: one user turn holds the images, then the
video, then the prompt; the chat template adds the assistant prompt; the images are tiled and
video frames sampled as transformers does. Generation stops at the processor's stop tokens
(`<end_of_utterance>`, the eos token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.data.smolvlm.processor import SmolVLMProcessor
from vlkit.hub import from_pretrained
from vlkit.hub.hf_smolvlm import is_smolvlm_directory
from vlkit.inference.vlm_pipeline import VLMInputs, VLMPipeline

__all__ = ["SmolVLMPipeline"]


class SmolVLMPipeline(VLMPipeline):
    """A SmolVLM / Idefics3 `GenerativeVLM` with its processor; any number of images, videos.

    Args:
        model: The `GenerativeVLM` (`vlkit.from_pretrained(directory)`), in eval mode.
        processor: The directory's `SmolVLMProcessor`.
    """

    takes_video = True
    description = "SmolVLM / Idefics3 model"
    directory_hint = "a SmolVLM / Idefics3 directory (config.json)"

    def __init__(self, model: nn.Module, processor: SmolVLMProcessor) -> None:
        self.model = model
        self.processor = processor

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return is_smolvlm_directory(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> SmolVLMPipeline:
        processor = SmolVLMProcessor.from_pretrained(directory)
        return cls(from_pretrained(directory).to(device).eval(), processor)

    @property
    def kind(self) -> str:
        return "smolvlm"

    @property
    def eos_token_id(self) -> list[int]:
        return self.processor.stop_token_ids

    def prepare(self, images: Sequence[Any], prompt: str, video: Any = None) -> VLMInputs:
        """Chat prompt ids, tiled pixels and masks for RGB PIL images and an optional video: a
        `vlkit.data.smolvlm.image_processor.Video`, a frame directory or a video file path."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in images]
        if video is not None:
            content.append({"type": "video"})
        content.append({"type": "text", "text": prompt})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        # A video file is sampled at the checkpoint's fps / max_frames, as transformers'
        # apply_chat_template(tokenize=True) does when it loads a video (it sets fps/num_frames).
        sample = True if isinstance(video, str | Path) and not Path(video).is_dir() else None
        encoded = self.processor(
            text=text,
            images=[list(images)] if images else None,
            videos=video,
            do_sample_frames=sample,
        )
        tensors = {k: v.to(self.device) for k, v in encoded.items() if isinstance(v, torch.Tensor)}
        model_inputs = {
            name: tensors.get(name)
            for name in ("pixel_values", "pixel_attention_mask", "attention_mask")
        }
        return VLMInputs(tensors["input_ids"], model_inputs)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids, skip_special_tokens=True)
