"""The one generative-VLM path: load a model, build its inputs, generate (and stream) tokens.

Every generative model vlkit can answer with is a `VLMPipeline`: a model plus what turns
images and a prompt into its inputs (`prepare`) and token ids back into text (`decode`).
`generate` runs the model's `generate` (greedy, or sampling with `sampling_options`) and
returns the new token ids; a `TextStreamer` passed as `streamer` sees them as they come.

    pipeline = load_vlm("runs/vlm")                 # vlkit.inference.vlm_loading
    inputs = pipeline.prepare([image], "what color is the shape?")
    text = pipeline.decode(pipeline.generate(inputs, max_new_tokens=16))

Kinds (one subclass each, listed in `vlm_loading.PIPELINES`):

* `VLMRun` (vlm_run_directory.py): a `vlkit train-vlm` run directory (`vlm_config.json`): a
  fusion VLM with its word tokenizer and the image tower's transform; exactly one image.
* `SmolVLMPipeline` (smolvlm_pipeline.py): a Hugging Face SmolVLM / SmolVLM2 / Idefics3
  directory (`config.json`); its processor builds the chat prompt, tiles the images and samples
  video frames.
* `LlavaPipeline` (llava_pipeline.py): a transformers LLaVA directory (`config.json`, model_type
  llava); its `LlavaProcessor` renders the chat template and expands `<image>`; any number of
  images.

A new kind is one more subclass with `accepts`,
`load`, `prepare`, `decode` and `eos_token_id`, added to `PIPELINES`. The CLI (`vlkit
generate`) and the web app (`vlkit serve --vlm`) only go through this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.inference.quantize import quantize_int8
from vlkit.inference.quantize_int4 import quantize_int4

__all__ = ["VLMInputs", "VLMPipeline", "sampling_options"]


@dataclass
class VLMInputs:
    """One prompt, ready for a model's `generate` (batch 1).

    Attributes:
        input_ids: (1, P) prompt ids (image placeholders included).
        model_inputs: Further `generate` keywords: `pixel_values` and what the kind needs
            (`pixel_attention_mask`, `attention_mask`), already on the model's device.
        unknown_words: Prompt words outside the model's vocabulary (they became `<unk>`).
    """

    input_ids: torch.Tensor
    model_inputs: dict[str, torch.Tensor | None] = field(default_factory=dict)
    unknown_words: list[str] = field(default_factory=list)


def sampling_options(
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """`generate` keywords for sampling (a seeded generator on `device`), or {} for greedy.

    Raises:
        ValueError: With `do_sample`, a temperature that is not > 0 (greedy decoding is
            `do_sample=False`) or a top_p outside (0, 1].
    """
    if not do_sample:
        return {}
    if not temperature > 0:
        raise ValueError(
            f"temperature={temperature}: must be > 0 when sampling (greedy: no sampling)"
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    generator = torch.Generator(device=device).manual_seed(seed)
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "generator": generator}


class VLMPipeline(ABC):
    """A loaded generative VLM with its input builder and decoder (see the module docstring).

    Class attributes say what a kind takes: `max_images` (None: any number), `takes_video`,
    `draws_attention` (`answer_attention` is available), `description` (for messages) and
    `directory_hint` (what its directory looks like, for "not a VLM directory" messages).
    """

    model: nn.Module
    max_images: int | None = None
    takes_video = False
    draws_attention = False
    description = "generative VLM"
    directory_hint = ""

    @classmethod
    @abstractmethod
    def accepts(cls, directory: Path) -> bool:
        """Whether `directory` holds a model of this kind (checked by its files, not loaded)."""
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> VLMPipeline:
        """Loads the model of `directory` (weights only, never code) onto `device`, eval mode."""
        raise NotImplementedError

    @property
    @abstractmethod
    def kind(self) -> str:
        """Short name of the model kind (shown by the web app)."""
        raise NotImplementedError

    @property
    def needs_prompt(self) -> bool:
        """Whether an empty prompt is an error (a captioner takes none)."""
        return True

    @property
    @abstractmethod
    def eos_token_id(self) -> int | list[int]:
        """The id(s) that end an answer; an empty list means none (generation then runs to
        `max_new_tokens`, as transformers does with `eos_token_id=[]`)."""
        raise NotImplementedError

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """`eos_token_id` as a set."""
        eos = self.eos_token_id
        return frozenset([eos] if isinstance(eos, int) else eos)

    def details(self) -> dict[str, Any]:
        """Kind-specific facts worth showing next to `kind` (e.g. a run's task)."""
        return {}

    @abstractmethod
    def prepare(self, images: Sequence[Any], prompt: str, video: Any = None) -> VLMInputs:
        """The model's inputs for RGB PIL images (and a video) and a prompt."""
        raise NotImplementedError

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of generated ids (special tokens dropped; ends at the stop token)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def quantize_int8(self) -> None:
        """Replaces the model by its dynamic INT8 version (`inference.quantize`; CPU only)."""
        self.model = quantize_int8(self.model)

    def quantize_int4(self) -> None:
        """Replaces the model by its weight-only INT4 version (`inference.quantize_int4`; CPU)."""
        self.model = quantize_int4(self.model)

    @torch.no_grad()
    def generate(
        self,
        inputs: VLMInputs,
        max_new_tokens: int = 64,
        streamer: Callable[[torch.Tensor], None] | None = None,
        **generate_options: Any,
    ) -> list[int]:
        """New token ids of the answer (the stop token, when generated, is the last id).

        Args:
            inputs: From `prepare`.
            max_new_tokens: Generation budget; generation stops at `eos_token_id`.
            streamer: Called with each step's new token (e.g. a `TextStreamer`).
            **generate_options: Further `generate` options (`sampling_options(...)`, ...).
        """
        sequence = self.model.generate(
            inputs.input_ids,
            **inputs.model_inputs,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_id,
            streamer=streamer,
            **generate_options,
        )  # (1, P + N)
        return sequence[0, inputs.input_ids.shape[1] :].tolist()

    def answer_attention(
        self, inputs: VLMInputs, new_ids: list[int]
    ) -> tuple[torch.Tensor, list[str]]:
        """(N, T) attention over the image's T tokens of the positions that produced each of
        the N generated tokens, and the tokens' texts (kinds with `draws_attention`)."""
        raise NotImplementedError(f"a {self.description} draws no attention maps")
