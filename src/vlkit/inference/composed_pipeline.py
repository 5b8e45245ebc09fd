"""A composed VLM directory (`vlkit.compose_vlm` + `save_pretrained`) as a `VLMPipeline`.

Two layouts: vlkit's (`composed_vlm_config.json`, the qformer / flamingo / cogvlm /
pixel_shuffle / qwen kinds and an anyres llava) and transformers' LLaVA layout whose config.json records the composition
(`vlkit_composition`). The processor is the model's (`LlavaProcessor`, or a fixed count of
placeholders per image); the prompt is one user turn whose text holds one image token per image,
then the prompt, rendered by the LM's own chat template with the assistant prompt added (plain
LM templates render string contents only, so the image tokens are written into the text).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlkit.data.anyres_processor import AnyResProcessor
from vlkit.hub import from_pretrained
from vlkit.hub.composed_checkpoint import is_composed_directory
from vlkit.hub.hf_llava_config import is_llava_directory
from vlkit.hub.hf_llava_processor import read_llava_processor
from vlkit.inference.llava_pipeline import LlavaPipeline
from vlkit.inference.vlm_pipeline import VLMInputs

__all__ = ["ComposedPipeline", "is_composed_llava_directory"]


def is_composed_llava_directory(directory: Path) -> bool:
    """A transformers LLaVA directory written by a composed model (config.json
    `vlkit_composition`)."""
    if not is_llava_directory(directory):
        return False
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config.get("vlkit_composition"), dict)


class ComposedPipeline(LlavaPipeline):
    """A composed model with its processor; any number of images."""

    description = "composed VLM"
    directory_hint = "a composed VLM directory (composed_vlm_config.json)"

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return is_composed_directory(directory) or is_composed_llava_directory(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> ComposedPipeline:
        model = from_pretrained(directory)
        processor = getattr(model, "processor", None)
        if processor is None:  # transformers' LLaVA layout: the processor files
            processor = read_llava_processor(directory)
        return cls(model.to(device).eval(), processor)

    @property
    def kind(self) -> str:
        composition = getattr(self.model, "composition", None) or {}
        return f"composed {composition.get('kind', 'llava')}"

    def details(self) -> dict[str, object]:
        composition = getattr(self.model, "composition", None) or {}
        return {key: composition[key] for key in ("vision", "language") if key in composition}

    def prepare(self, images: Sequence[Any], prompt: str, video: Any = None) -> VLMInputs:
        """As `LlavaPipeline.prepare`, with the images as one row's (1, N, 3, H, W): Flamingo
        reads a 4-D batch as one image per row. An anyres llava's processor tiles: its
        (N, V, 3, S, S) views go as they are, with the `image_sizes` it returns."""
        if isinstance(self.processor, AnyResProcessor) and images:
            if video is not None:
                raise ValueError("a LLaVA model takes images, not video")
            text = self.prompt_text(len(images), prompt)
            encoded = self.processor(text=text, images=list(images))
            tensors = {key: value.to(self.device) for key, value in encoded.items()}
            names = ("pixel_values", "attention_mask", "image_sizes")
            return VLMInputs(tensors["input_ids"], {name: tensors[name] for name in names})
        inputs = super().prepare(images, prompt, video)
        pixels = inputs.model_inputs.get("pixel_values")
        if pixels is not None and pixels.dim() == 4:
            inputs.model_inputs["pixel_values"] = pixels[None]
        return inputs

    def prompt_text(self, image_count: int, prompt: str) -> str:
        """The chat prompt with one image token per image in the user's text."""
        images = f"{self.processor.image_token}\n" * image_count
        if self.processor.chat_template is None:
            return f"USER: {images}{prompt} ASSISTANT:"
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": images + prompt}], add_generation_prompt=True
        )
        return str(text)
