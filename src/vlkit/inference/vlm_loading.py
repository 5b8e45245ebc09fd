"""`load_vlm`: any generative model vlkit has, from its directory, as a `VLMPipeline`.

The kinds are tried in `PIPELINES` order; each recognises its directory by its files
(`accepts`) before anything is loaded. A new kind (LLaVA or BLIP-2 composed from Hugging Face
checkpoints, ...) is a `VLMPipeline` subclass added to this tuple.
"""

from __future__ import annotations

from pathlib import Path

from vlkit.distributed import resolve_device
from vlkit.hub.download import download_checkpoint, is_hub_id
from vlkit.inference.adapter_directory import adapter_base, merge_adapter
from vlkit.inference.blip2_pipeline import Blip2Pipeline
from vlkit.inference.composed_pipeline import ComposedPipeline
from vlkit.inference.llava_pipeline import LlavaNextPipeline, LlavaPipeline
from vlkit.inference.onnx_vlm_pipeline import OnnxVLMPipeline
from vlkit.inference.smolvlm_pipeline import SmolVLMPipeline
from vlkit.inference.vlm_pipeline import VLMPipeline
from vlkit.inference.vlm_run_directory import VLMRun

__all__ = ["PIPELINES", "load_vlm", "vlm_directory", "vlm_pipeline_class"]

# ComposedPipeline before LlavaPipeline: a composed llava is also a LLaVA directory; an ONNX
# export before SmolVLMPipeline: its config.json is a SmolVLM config too.
PIPELINES: tuple[type[VLMPipeline], ...] = (
    VLMRun, OnnxVLMPipeline, SmolVLMPipeline, Blip2Pipeline, ComposedPipeline, LlavaPipeline,
    LlavaNextPipeline,
)  # fmt: skip


def vlm_directory(path: str | Path, what: str = "VLM directory") -> Path:
    """`path` itself when it is a directory; a hub id (`HuggingFaceTB/SmolVLM-256M-Instruct`)
    downloaded into the Hugging Face cache (`vlkit.hub.download`: weights, configs, tokenizer,
    processor files and chat template only).

    Raises:
        FileNotFoundError: No such directory, and not spelled like a hub id.
        vlkit.errors.CheckpointError: A hub id that could not be downloaded (one line).
    """
    directory = Path(path).expanduser()
    if directory.is_dir():
        return directory
    if is_hub_id(str(path)):
        return download_checkpoint(str(path))
    raise FileNotFoundError(f"{path}: no such {what}")


def vlm_pipeline_class(path: str | Path) -> type[VLMPipeline]:
    """The `VLMPipeline` kind of a model directory, decided by its files (nothing is loaded).

    Raises:
        FileNotFoundError: No such directory.
        ValueError: A directory no kind accepts.
    """
    directory = vlm_directory(path)
    base = adapter_base(directory)  # a peft adapter directory: the kind of its base model
    if base is not None:
        directory = vlm_directory(base, "base model directory")
    for pipeline in PIPELINES:
        if pipeline.accepts(directory):
            return pipeline
    raise ValueError(f"{path}: neither {' nor '.join(p.directory_hint for p in PIPELINES)}")


def load_vlm(
    path: str | Path,
    device: str = "cpu",
    int8: bool = False,
    onnx_variant: str | None = None,
    int4: bool = False,
) -> VLMPipeline:
    """Loads a generative VLM directory (weights only, never code) for answering.

    Args:
        path: A `vlkit train-vlm` run, a SmolVLM / SmolVLM2 / Idefics3, BLIP-2, LLaVA or
            LLaVA-NeXT directory, or a hub id of one (downloaded through `vlm_directory`); or a
            peft LoRA adapter directory, whose recorded base is loaded with the adapter merged
            in (`adapter_directory.py`).
        device: Where the model runs.
        int8: Dynamic INT8 linear layers (`inference.quantize`; CPU only).
        int4: Weight-only INT4 linear layers (`inference.quantize_int4`; CPU only).
        onnx_variant: Which files of a SmolVLM ONNX export run ("fp32", "int8", "q4";
            `onnx_vlm.py`); None: fp32. Only for an export directory.

    Raises:
        FileNotFoundError, ValueError, vlkit.errors.CheckpointError: Not a VLM directory, or
            broken files, named in one line.
    """
    device = str(resolve_device(device))  # an unavailable device fails before any loading
    if int8 and int4:
        raise ValueError("int8 and int4 exclude each other: choose one")
    directory = vlm_directory(path)
    if onnx_variant is not None or OnnxVLMPipeline.accepts(directory):
        if not OnnxVLMPipeline.accepts(directory):
            raise ValueError(f"onnx_variant={onnx_variant!r}: {path} is not an ONNX export "
                             "(onnx/decoder_model_merged.onnx)")  # fmt: skip
        pipeline = OnnxVLMPipeline.load(directory, device, onnx_variant or "fp32")
        if int8:
            pipeline.quantize_int8()  # refuses, naming the export's INT8 files
        if int4:
            pipeline.quantize_int4()  # refuses, naming the export's q4 files
        return pipeline
    base = adapter_base(directory)  # a peft adapter: its base, then the adapter merged in
    if base is not None:
        base_directory = vlm_directory(base, "base model directory")
        pipeline = vlm_pipeline_class(base_directory).load(base_directory, device)
        pipeline.model = merge_adapter(pipeline.model, directory).eval()
    else:
        pipeline = vlm_pipeline_class(directory).load(directory, device)
    if int8:
        pipeline.quantize_int8()
    if int4:
        pipeline.quantize_int4()
    return pipeline
