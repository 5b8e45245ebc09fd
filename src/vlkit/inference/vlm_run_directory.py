"""A `vlkit train-vlm` run directory: its format, and the run as a `VLMPipeline`.

    run/vlm_config.json   recipe + fusion config + the image tower's CLIP config
    run/model.safetensors the whole model (frozen tower included)
    run/tokenizer.json    the word tokenizer
    run/summary.json      metrics, parameter counts, FLOPs, timings

`save_vlm_run` writes it (at the end of `vlkit.recipes.vlm_run.train_vlm`), `load_vlm_run`
reads it back (weights only, never code: safetensors + JSON) as a `VLMRun`, which answers
questions about one image: its prompt is the layout the model was trained on, the image
placeholders, then `<start>` and the question's words.
`models.fusion_vlm.build_fusion_vlm_on_clip` is the one place a run's architecture is assembled,
for training and for loading alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.data.tokenizers.word import WordTokenizer
from vlkit.data.transforms import ImageTransform
from vlkit.errors import CheckpointError
from vlkit.hub.weights import load_into, read_weights, write_json, write_safetensors
from vlkit.inference.vlm_pipeline import VLMInputs, VLMPipeline
from vlkit.models.clip import CLIP, CLIPConfig
from vlkit.models.fusion_vlm import FusionVLMConfig, build_fusion_vlm_on_clip
from vlkit.training.vlm_recipe import VLMRecipe

__all__ = ["RUN_CONFIG", "VLMRun", "load_vlm_run", "save_vlm_run"]

RUN_CONFIG = "vlm_config.json"


@dataclass
class VLMRun(VLMPipeline):
    """A trained fusion VLM with what it needs to answer: word tokenizer and image transform."""

    model: nn.Module
    tokenizer: WordTokenizer
    transform: Any
    recipe: VLMRecipe
    summary: dict[str, Any] = field(default_factory=dict)

    max_images = 1
    draws_attention = True
    description = "fusion VLM run"
    directory_hint = f"a `vlkit train-vlm` run ({RUN_CONFIG})"

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return (Path(directory) / RUN_CONFIG).is_file()

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> VLMRun:
        return load_vlm_run(directory, device)

    @property
    def kind(self) -> str:
        return f"fusion ({self.recipe.kind})"

    @property
    def needs_prompt(self) -> bool:
        return "captions" not in self.recipe.task  # captioners take no prompt

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eot_token_id

    def details(self) -> dict[str, Any]:
        return {"task": self.recipe.task}

    def prompt_ids(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """(1, P) prompt ids for a free-text question, and its words outside the vocabulary.

        The layout the model was trained on: the image placeholders, then `<start>` and the
        question's words (unknown words become `<unk>`; the answer follows in generation).
        """
        tok = self.tokenizer
        encoding = tok.backend.encode(question, add_special_tokens=False)
        unknown = [question[start:end] for (start, end), i in zip(encoding.offsets, encoding.ids,
                   strict=True) if i == tok.unk_token_id]  # fmt: skip
        image_tokens = [self.model.image_token_id] * self.model.num_image_tokens
        ids = torch.tensor([[*image_tokens, tok.sot_token_id, *encoding.ids]])  # (1, P)
        return ids.to(self.device), unknown

    def prepare(self, images: Sequence[Any], prompt: str, video: Any = None) -> VLMInputs:
        """Prompt ids and (1, 1, 3, S, S) pixels for exactly one RGB PIL image."""
        if len(images) != 1 or video is not None:
            raise ValueError(f"a {self.description} answers about exactly one image")
        ids, unknown = self.prompt_ids(prompt)
        pixels = self.transform(images[0])[None, None].to(ids.device)  # (1, 1, 3, S, S)
        return VLMInputs(ids, {"pixel_values": pixels}, unknown)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def answer(
        self, image: Any, question: str, max_new_tokens: int = 16, **generate_options: Any
    ) -> str:
        """The model's answer (or caption) for one PIL image and a question (or prompt).

        Args:
            image: An RGB PIL image (e.g. `vlkit.data.images.load_image(path)`).
            question: Free text; words outside the training vocabulary become `<unk>`.
            max_new_tokens: Generation budget; generation stops at the end token.
            **generate_options: Passed to the model's `generate` (sampling, `streamer`, ...).
        """
        new = self.generate(self.prepare([image], question), max_new_tokens, **generate_options)
        return self.decode(new)

    @torch.no_grad()
    def answer_attention(
        self, inputs: VLMInputs, new_ids: list[int]
    ) -> tuple[torch.Tensor, list[str]]:
        """(N, T) attention over the image tokens of the positions that produced each generated
        token (up to the end token), and the N tokens' texts.

        Raises:
            ValueError: The fusion kind has no attention maps, or no token was generated.
        """
        if not hasattr(self.model, "attention_maps"):
            raise ValueError(f"this fusion kind ({self.recipe.kind}) has no attention maps")
        new = list(new_ids)
        if self.eos_token_id in new:
            new = new[: new.index(self.eos_token_id)]
        if not new:
            raise ValueError("the model generated no tokens to draw attention maps for")
        prompt_len = inputs.input_ids.shape[1]
        sequence = torch.cat([inputs.input_ids, inputs.input_ids.new_tensor([new])], dim=1)
        maps = self.model.attention_maps(sequence, inputs.model_inputs["pixel_values"])[0]
        # The output at position t predicts token t + 1: generated token j came from prompt_len-1+j.
        rows = maps[prompt_len - 1 : prompt_len - 1 + len(new)]  # (N, T)
        return rows, [self.tokenizer.decode([t]) for t in new]


def save_vlm_run(
    directory: str | Path,
    model: nn.Module,
    recipe: VLMRecipe,
    fusion_config: FusionVLMConfig,
    clip_config: CLIPConfig,
    tokenizer: WordTokenizer,
    summary: dict[str, Any],
) -> None:
    """Writes a run directory (see the module docstring) that `load_vlm_run` reads back."""
    directory = Path(directory)
    model_cpu = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(model_cpu, directory / "model.safetensors", metadata={"format": "pt"})
    write_json(
        {
            "recipe": recipe.to_dict(),
            "fusion": fusion_config.to_dict(),
            "vision_clip": clip_config.to_dict(),
        },
        directory / RUN_CONFIG,
    )
    tokenizer.save(directory / "tokenizer.json")
    write_json(summary, directory / "summary.json")


def load_vlm_run(directory: str | Path, device: str = "cpu") -> VLMRun:
    """Loads a `train_vlm` run directory (weights only, never code: safetensors + JSON).

    Raises:
        FileNotFoundError: The directory lacks `vlm_config.json`, `model.safetensors` or
            `tokenizer.json`.
        vlkit.errors.CheckpointError: Missing, unexpected or mis-shaped weights.
    """
    directory = Path(directory)
    for name in (RUN_CONFIG, "model.safetensors", "tokenizer.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a VLM run directory: no {name}")
    try:  # a hand-edited or truncated vlm_config.json: one error naming the file and the key
        saved = json.loads((directory / RUN_CONFIG).read_text())
        recipe = VLMRecipe.from_dict(saved["recipe"])
        clip = CLIP(CLIPConfig.from_dict(saved["vision_clip"]))
        fusion = FusionVLMConfig.from_dict(saved["fusion"])
    except KeyError as error:
        raise CheckpointError(f"{directory / RUN_CONFIG}: missing key {error}") from error
    except (ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{directory / RUN_CONFIG}: {error}") from error
    model = build_fusion_vlm_on_clip(fusion, clip, recipe.vision.trainable, recipe.vision.tokens)
    weights = directory / "model.safetensors"
    load_into(model, read_weights(weights), str(weights))
    summary_path = directory / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return VLMRun(
        model=model.to(device).eval(),
        tokenizer=WordTokenizer.from_file(directory / "tokenizer.json"),
        transform=ImageTransform(clip.config.preprocess, train=False),
        recipe=recipe,
        summary=summary,
    )
