"""A SmolVLM / Idefics3 ONNX export as a `VLMPipeline`, for `vlkit generate` and the web app.

The inputs are built as for the torch checkpoint (`SmolVLMPipeline.prepare`: the directory's
processor, chat template, tiles and video frames), then `OnnxVLM` generates with onnxruntime.
It comes before `SmolVLMPipeline` in `vlm_loading.PIPELINES`: an export's `config.json` is a
SmolVLM config too, and its `onnx/decoder_model_merged.onnx` is what tells them apart. A LLaVA
export (`llava_onnx_export`) loads as an `OnnxLlavaPipeline`: `LlavaPipeline`'s input builder
(the directory's `LlavaProcessor` and chat template) with the same onnxruntime generation.

onnxruntime's `InferenceSession.run` may be called from several threads at once, and each
generation keeps its cache in its own arrays, so the web app's concurrent requests share
nothing that is written (as with the torch pipelines, `serve/generative.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlkit.hub.hf_llava_config import is_llava_directory
from vlkit.inference.llava_pipeline import LlavaPipeline
from vlkit.inference.onnx_vlm import ONNX_VARIANTS, OnnxVLM, is_onnx_vlm_directory
from vlkit.inference.onnx_vlm_sampling import Sampling
from vlkit.inference.smolvlm_pipeline import SmolVLMPipeline
from vlkit.inference.vlm_pipeline import VLMInputs

__all__ = ["OnnxLlavaPipeline", "OnnxPipelineMixin", "OnnxVLMPipeline"]

_QUANTIZED_AT_EXPORT = (
    "an ONNX export is quantized when it is written (vlkit export --quantize), not when it is "
    "loaded: run its {bits} files (onnx variant '{variant}')"
)


class OnnxPipelineMixin:
    """An export's pipeline whatever builds its inputs: `OnnxVLM` generation on the CPU, no
    torch-side quantization (`OnnxVLMPipeline`, `OnnxLlavaPipeline`).

    Args:
        model: The loaded export (`OnnxVLM.load`).
    """

    eos_token_id: int | list[int]  # the input builder's (`VLMPipeline`)

    def __init__(self, model: OnnxVLM) -> None:
        super().__init__(model, model.processor)  # type: ignore[call-arg]
        self.onnx = model

    @classmethod
    def load(
        cls, directory: str | Path, device: str = "cpu", variant: str = "fp32"
    ) -> OnnxPipelineMixin:
        """Opens the export's `variant` files ("fp32", "int8", "q4") with onnxruntime; a LLaVA
        export (`llava_onnx_export`) as an `OnnxLlavaPipeline`, else an `OnnxVLMPipeline`.

        Raises:
            ValueError: A device other than the CPU, or an unknown variant.
            FileNotFoundError, ImportError: See `OnnxVLM.load`.
        """
        if torch.device(device).type != "cpu":
            raise ValueError(f"device={device!r}: an ONNX export runs on the CPU (onnxruntime)")
        if variant not in ONNX_VARIANTS:
            raise ValueError(f"onnx variant {variant!r}: one of {', '.join(ONNX_VARIANTS)}")
        pipeline = OnnxLlavaPipeline if is_llava_directory(directory) else OnnxVLMPipeline
        return pipeline(OnnxVLM.load(directory, variant))

    def details(self) -> dict[str, Any]:
        return {"onnx_variant": self.onnx.variant}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def quantize_int8(self) -> None:
        """An export's weights are quantized when it is written: run its INT8 files instead."""
        raise ValueError(_QUANTIZED_AT_EXPORT.format(bits="INT8", variant="int8"))

    def quantize_int4(self) -> None:
        """An export's weights are quantized when it is written: run its q4 files instead."""
        raise ValueError(_QUANTIZED_AT_EXPORT.format(bits="INT4", variant="q4"))

    def generate(
        self,
        inputs: VLMInputs,
        max_new_tokens: int = 64,
        streamer: Callable[[Any], None] | None = None,
        **generate_options: Any,
    ) -> list[int]:
        """New token ids of the answer, as `VLMPipeline.generate`; `generate_options` are
        `sampling_options(...)`'s (its torch generator gives the numpy generator its seed),
        `top_k` and `pad_token_id`."""
        sequences = self.generate_sequences(inputs, max_new_tokens, streamer, **generate_options)
        return sequences[0, inputs.input_ids.shape[1] :].tolist()

    def generate_sequences(
        self,
        inputs: VLMInputs,
        max_new_tokens: int = 64,
        streamer: Callable[[Any], None] | None = None,
        **generate_options: Any,
    ) -> np.ndarray:
        """(B, P + N) prompt and new ids of every row of a (left-padded) batch, finished rows
        filled with `pad_token_id` (`vlkit.inference.batch_generation`); options as `generate`."""
        options = dict(generate_options)
        generator = options.pop("generator", None)
        sampling = Sampling(
            do_sample=bool(options.pop("do_sample", False)),
            temperature=float(options.pop("temperature", 1.0)),
            top_k=options.pop("top_k", None),
            top_p=options.pop("top_p", None),
            seed=int(generator.initial_seed()) if generator is not None else 0,
        )
        pad_token_id = options.pop("pad_token_id", None)
        if options:
            raise ValueError(f"options an ONNX export does not take: {', '.join(sorted(options))}")
        model_inputs = inputs.model_inputs
        return self.onnx.generate(
            inputs.input_ids,
            model_inputs.get("attention_mask"),
            model_inputs.get("pixel_values"),
            model_inputs.get("pixel_attention_mask"),
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_token_id=self.eos_token_id,
            pad_token_id=pad_token_id,
            streamer=streamer,
        )  # (B, P + N)


class OnnxVLMPipeline(OnnxPipelineMixin, SmolVLMPipeline):
    """An `OnnxVLM` with the SmolVLM input builder; CPU only, any number of images, videos.
    `vlm_loading` tries it for every export directory; `load` opens a LLaVA export as an
    `OnnxLlavaPipeline`."""

    description = "SmolVLM / Idefics3 / LLaVA ONNX export"
    directory_hint = "a VLM ONNX export (onnx/decoder_model_merged.onnx)"

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return is_onnx_vlm_directory(directory)

    @property
    def kind(self) -> str:
        return "smolvlm-onnx"


class OnnxLlavaPipeline(OnnxPipelineMixin, LlavaPipeline):
    """An `OnnxVLM` of a LLaVA export with LLaVA's input builder (`LlavaPipeline.prepare`: the
    directory's processor and chat template); CPU only, images."""

    description = "LLaVA ONNX export"
    directory_hint = "a LLaVA ONNX export (onnx/decoder_model_merged.onnx, model_type llava)"

    @classmethod
    def accepts(cls, directory: Path) -> bool:
        return is_onnx_vlm_directory(directory) and is_llava_directory(directory)

    @property
    def kind(self) -> str:
        return "llava-onnx"
