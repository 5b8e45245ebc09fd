"""A transformers LLaVA directory (`LlavaForConditionalGeneration`) as a `VLMPipeline`, and a
LLaVA-NeXT one (`LlavaNextForConditionalGeneration`) as a `LlavaNextPipeline`.

The directory's `LlavaProcessor` (`vlkit.get_processor`) builds the inputs: one user turn holds
the images, then the prompt, rendered by the chat template with the assistant prompt added
(without a chat template: LLaVA-1.5's `USER: <image>\\n... ASSISTANT:` format); each `<image>`
expands to the tower's tokens. Generation stops at the checkpoint's eos token(s)
(generation_config.json, then config.json), as transformers' `generate` does. LLaVA-NeXT's
processor (`hf_llava_next.read_llava_next_processor`, an `AnyResProcessor`) tiles each image and
expands its `<image>` to its own count; `image_sizes` goes to the model with the views.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from vlkit.data.llava_processor import LlavaProcessor
from vlkit.hub import from_pretrained
from vlkit.hub.hf_llava_config import is_llava_directory
from vlkit.hub.hf_llava_next import (
    check_llava_next_processor,
    is_llava_next_directory,
    read_llava_next_processor,
)
from vlkit.hub.hf_llava_processor import read_llava_processor
from vlkit.inference.vlm_pipeline import VLMInputs, VLMPipeline

__all__ = ["LlavaNextPipeline", "LlavaPipeline"]


class LlavaPipeline(VLMPipeline):
    """A LLaVA `LlavaVLM` with its processor; any number of images.

    Args:
        model: The `LlavaVLM` (`vlkit.from_pretrained(directory)`), in eval mode.
        processor: The directory's `LlavaProcessor`.
    """

    description = "LLaVA model"
    directory_hint = "a LLaVA directory (config.json, model_type llava)"

    def __init__(self, model: nn.Module, processor: LlavaProcessor) -> None:
        self.model = model
        self.processor = processor

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return is_llava_directory(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> LlavaPipeline:
        processor = read_llava_processor(directory)
        return cls(from_pretrained(directory).to(device).eval(), processor)

    @property
    def kind(self) -> str:
        return "llava"

    @property
    def eos_token_id(self) -> int | list[int]:
        eos = getattr(self.model, "eos_token_id", None)
        return self.processor.stop_token_ids if eos is None else eos

    def prompt_text(self, image_count: int, prompt: str) -> str:
        """The prompt string with one `<image>` per image, before expansion."""
        if self.processor.chat_template is None:
            images = f"{self.processor.image_token}\n" * image_count
            return f"USER: {images}{prompt} ASSISTANT:"
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(image_count)]
        content.append({"type": "text", "text": prompt})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        return str(text)

    def prepare(self, images: Sequence[Any], prompt: str, video: Any = None) -> VLMInputs:
        """Chat prompt ids and pixels for RGB PIL images (a LLaVA takes no video)."""
        if video is not None:
            raise ValueError("a LLaVA model takes images, not video")
        text = self.prompt_text(len(images), prompt)
        encoded = self.processor(text=text, images=list(images) or None)
        tensors = {k: v.to(self.device) for k, v in encoded.items()}
        model_inputs = {name: tensors.get(name) for name in ("pixel_values", "attention_mask")}
        if "image_sizes" in tensors:  # an anyres (LLaVA-NeXT) processor's tiles
            model_inputs["image_sizes"] = tensors["image_sizes"]
        return VLMInputs(tensors["input_ids"], model_inputs)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids, skip_special_tokens=True)


class LlavaNextPipeline(LlavaPipeline):
    """A LLaVA-NeXT `AnyResLlavaVLM` with its `AnyResProcessor`; any number of images, each
    tiled for its own size. (Its own type: `batch_generation` batches its views in LLaVA-NeXT's
    (N, V, 3, S, S) layout with `image_sizes`, not LLaVA's (N, 3, H, W).)"""

    description = "LLaVA-NeXT model"
    directory_hint = "a LLaVA-NeXT directory (config.json, model_type llava_next)"

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return is_llava_next_directory(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> LlavaNextPipeline:
        processor = read_llava_next_processor(directory)
        model = from_pretrained(directory)
        check_llava_next_processor(model, processor, directory)  # type: ignore[arg-type]
        return cls(model.to(device).eval(), processor)

    @property
    def kind(self) -> str:
        return "llava_next"
