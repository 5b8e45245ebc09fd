"""A Hugging Face BLIP-2 directory (`Blip2ForConditionalGeneration`) as a `VLMPipeline`.

Inputs are built as transformers' `Blip2Processor` (5.25, `processing_blip_2.py`) builds them:
the image through the directory's `BlipImageProcessor` (squash resize, rescale, normalise: no
centre crop), the prompt through its `tokenizer.json` (with the tokenizer's special tokens, e.g.
OPT's leading `</s>`), and `num_query_tokens` `<image>` placeholders before the prompt. Without a
prompt the model captions from the placeholders and the LM's BOS token, as
`Blip2ForConditionalGeneration.generate(pixel_values)` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.data.tokenizers.hf_json import HFTokenizer
from vlkit.data.transforms import ImageTransform
from vlkit.errors import CheckpointError
from vlkit.hub import from_pretrained
from vlkit.hub.hf_blip2 import is_blip2_directory
from vlkit.hub.hf_preprocess import preprocess_config_from_hf
from vlkit.inference.vlm_pipeline import VLMInputs, VLMPipeline

__all__ = ["Blip2Pipeline"]


class Blip2Pipeline(VLMPipeline):
    """A BLIP-2 `QFormerVLM` with its tokenizer and image transform; one image, prompt optional.

    Args:
        model: The loaded model (`vlkit.from_pretrained(directory)`), eval mode.
        tokenizer: The directory's `tokenizer.json` (with `<image>` among its added tokens).
        transform: The directory's `preprocessor_config.json` as an image transform.
    """

    max_images = 1
    description = "BLIP-2 model"
    directory_hint = "a BLIP-2 directory (config.json with model_type blip-2)"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: HFTokenizer,
        transform: ImageTransform,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return is_blip2_directory(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> Blip2Pipeline:
        directory = Path(directory)
        model = from_pretrained(directory)
        if not hasattr(model, "generate"):
            raise CheckpointError(
                f"{directory / 'config.json'}: architectures names an image-text retrieval "
                "model, which does not generate text (Blip2ForConditionalGeneration does)"
            )
        if not (directory / "tokenizer.json").is_file():
            raise CheckpointError(f"{directory}: no tokenizer.json in this BLIP-2 directory")
        tokenizer = HFTokenizer.from_pretrained(directory)
        # Released checkpoints keep the image processor in preprocessor_config.json;
        # transformers 5 writes it into processor_config.json under "image_processor".
        path = directory / "preprocessor_config.json"
        if not path.is_file() and (directory / "processor_config.json").is_file():
            path = directory / "processor_config.json"
        try:
            data = json.loads(path.read_text())
            if path.name == "processor_config.json":
                data = data["image_processor"]
            # BlipImageProcessor resizes straight to `size` and has no centre crop.
            data.setdefault("do_center_crop", False)
            transform = ImageTransform(preprocess_config_from_hf(data))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"cannot use {path}: {error}") from error
        return cls(model.to(device).eval(), tokenizer, transform)

    @property
    def kind(self) -> str:
        return "blip2"

    @property
    def needs_prompt(self) -> bool:
        return False  # a captioner: an empty prompt captions the image

    @property
    def eos_token_id(self) -> int | list[int]:
        eos = getattr(self.model, "eos_token_id", None)
        return [] if eos is None else eos

    def prompt_ids(self, prompt: str) -> list[int]:
        """Ids `Blip2Processor(images=..., text=prompt)` gives: Q placeholders, then the text
        with the tokenizer's special tokens; an empty prompt gives the caption prompt."""
        model = self.model
        if not prompt.strip():
            return model.caption_prompt(1)[0].tolist()
        # The special tokens are the post-processor's (OPT's puts `</s>` first); transformers
        # 5.25 goes by tokenizer.json too, whatever `add_bos_token` says.
        text = self.tokenizer.encode(prompt, add_special_tokens=True)
        return [model.image_token_id] * model.num_image_tokens + text

    def prepare(self, images: Sequence[Any], prompt: str, video: Any = None) -> VLMInputs:
        """Prompt ids and pixels for one RGB PIL image."""
        if len(images) != 1 or video is not None:
            raise ValueError("a BLIP-2 model takes exactly one image and no video")
        ids = torch.tensor([self.prompt_ids(prompt)], dtype=torch.long, device=self.device)
        pixels = self.transform.to_batch(list(images)).to(self.device)
        return VLMInputs(ids, {"pixel_values": pixels})

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
