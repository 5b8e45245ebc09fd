"""ONNX export of SmolVLM / SmolVLM2 / Idefics3 in the layout of the onnx-community exports.

`export_smolvlm_onnx(source, out_dir)` (`vlkit export --model SMOLVLM_DIR --format onnx`) writes

    OUT/config.json, generation_config.json, preprocessor_config.json, processor_config.json,
        tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.*, ...
        (every non-weight file of the source directory, copied as it is)
    OUT/onnx/vision_encoder.onnx, embed_tokens.onnx, decoder_model_merged.onnx
        (the graphs and their inputs/outputs: `vlkit.inference.smolvlm_onnx_graphs`)
    OUT/onnx/vision_encoder_int8.onnx, decoder_model_merged_int8.onnx   with quantize="int8"
    OUT/onnx/vision_encoder_q4.onnx, decoder_model_merged_q4.onnx       with quantize="int4"
    OUT/onnx/vlkit_export.json   vlkit version, opset, model kind, source, the graphs' shapes,
        files and sizes, verification and quantization numbers (the `ExportReport`)

as onnx-community/SmolVLM-256M-Instruct does (file names, optimum's input and output names),
so that transformers.js, onnxruntime scripts written for those exports and
`vlkit generate --model OUT` read it.

Before anything is written, onnxruntime runs the graphs on two prompts (`smolvlm_onnx_verify`:
one image; a left-padded batch with two images in a row) and must match vlkit's torch model to
`atol` (1e-4) on the prompt logits and on two decode steps through the cache; otherwise
`ExportMismatch` is raised. Quantized graphs cannot match exactly: their greedy-token agreement
and logit cosine with float32 are measured and reported. Files go to a temporary directory next
to OUT that is renamed to OUT at the end, so a failed export leaves nothing; an existing OUT is
refused.

Exporter: `torch.onnx.export(..., dynamo=True)` as for CLIP (`onnx_export`); it traces the
decoder with a dynamic past length, and the exported graph runs with a past of 0 too. Models are
serialised in memory, which limits each graph to ONNX's 2 GB protobuf size (SmolVLM-256M and
-500M fit; the 2.2B decoder in float32 does not and is refused).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.hub.hf_config_files import config_model_type
from vlkit.hub.hf_smolvlm import is_smolvlm_directory, load_smolvlm
from vlkit.inference.onnx_export import MIN_OPSET
from vlkit.inference.onnx_int4 import INT4_BLOCK_SIZES, quantize_onnx_int4
from vlkit.inference.onnx_int8 import quantize_onnx_int8
from vlkit.inference.smolvlm_onnx_graphs import (
    DecoderWithPast,
    TokenEmbedding,
    VisionEncoder,
    past_names,
    present_names,
)
from vlkit.inference.smolvlm_onnx_verify import (
    OnnxGraphs,
    max_logit_diffs,
    quantized_agreement,
    verification_prompts,
)
from vlkit.inference.vlm_onnx_report import DEFAULT_ATOL, ExportMismatch, ExportReport
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.version import __version__

__all__ = [
    "DECODER_FILE",
    "EMBED_FILE",
    "QUANTIZE_SUFFIXES",
    "REPORT_FILE",
    "VISION_FILE",
    "ExportMismatch",
    "ExportReport",
    "check_export_options",
    "export_smolvlm_onnx",
    "export_text_graphs",
    "export_verified",
    "to_onnx",
]

VISION_FILE, EMBED_FILE = "vision_encoder.onnx", "embed_tokens.onnx"
DECODER_FILE, REPORT_FILE = "decoder_model_merged.onnx", "vlkit_export.json"
# onnx-community's file-name suffixes of the quantized variants.
QUANTIZE_SUFFIXES = {"int8": "_int8", "int4": "_q4"}
_PROTOBUF_LIMIT = 2**31 - 2**26  # 2 GB, less room for the graph itself
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".msgpack", ".h5")


def to_onnx(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
    opset: int | None,
) -> bytes:
    """`module(*inputs)` through the torch.export-based exporter, serialised."""
    optimizer_log = logging.getLogger("onnxscript")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Deprecation and constant-folding notes of the exporter are not actionable here.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                inputs,
                None,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        optimizer_log.setLevel(level)
    return program.model_proto.SerializeToString()


def _export_graphs(model: GenerativeVLM, opset: int | None) -> dict[str, bytes]:
    """The three float32 graphs, with dynamic batch, image-count, sequence and past axes."""
    size = model.vision.config.image_size
    batch, images = torch.export.Dim("batch"), torch.export.Dim("num_images")
    # Example inputs of size >= 2 on every dynamic axis: torch.export specialises sizes 0 and 1.
    pixels = torch.randn(2, 2, 3, size, size)
    pixel_mask = torch.ones(2, 2, size, size, dtype=torch.bool)
    vision = to_onnx(
        VisionEncoder(model).eval(), (pixels, pixel_mask),
        ["pixel_values", "pixel_attention_mask"], ["image_features"],
        ({0: batch, 1: images}, {0: batch, 1: images}), opset,
    )  # fmt: skip
    return {VISION_FILE: vision, **export_text_graphs(model, opset)}


def export_text_graphs(model: GenerativeVLM, opset: int | None) -> dict[str, bytes]:
    """embed_tokens and decoder_model_merged of any `GenerativeVLM` over a `DecoderLM`."""
    config = model.decoder.config
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    total, past = torch.export.Dim("total"), torch.export.Dim("past")
    ids = torch.randint(0, config.vocab_size, (2, 3))
    embed = to_onnx(TokenEmbedding(model).eval(), (ids,), ["input_ids"], ["inputs_embeds"],
                    ({0: batch, 1: seq},), opset)  # fmt: skip
    kv = (2, config.num_kv_heads, 2, config.head_dim)
    cache = tuple(torch.randn(kv) for _ in range(2 * config.num_layers))
    decoder = to_onnx(
        DecoderWithPast(model.decoder).eval(),
        (torch.randn(2, 3, config.hidden_size), torch.ones(2, 5, dtype=torch.long),
         torch.arange(2, 5).expand(2, 3).contiguous(), *cache),
        ["inputs_embeds", "attention_mask", "position_ids", *past_names(config.num_layers)],
        ["logits", *present_names(config.num_layers)],
        ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
         tuple({0: batch, 2: past} for _ in cache)),
        opset,
    )  # fmt: skip
    return {EMBED_FILE: embed, DECODER_FILE: decoder}


def _opset_of(model_bytes: bytes) -> int:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _check_model(model: GenerativeVLM, source: str) -> None:
    for name, parameter in model.named_parameters():
        if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
            raise ValueError(
                f"{source}: export a float32 CPU model ({name} is {parameter.dtype} on "
                f"{parameter.device}): model.float().cpu()"
            )
    decoder_bytes = sum(p.numel() * 4 for p in model.decoder.parameters())
    if decoder_bytes > _PROTOBUF_LIMIT:
        raise ValueError(
            f"{source}: the float32 decoder ({decoder_bytes / 2**30:.1f} GiB) exceeds ONNX's 2 GB "
            "single-file limit; export models up to SmolVLM-500M"
        )


def export_smolvlm_onnx(
    source: str | Path,
    out_dir: str | Path,
    *,
    quantize: str | None = None,
    block_size: int = 32,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    model: GenerativeVLM | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Exports a SmolVLM / SmolVLM2 / Idefics3 checkpoint directory to OUT (module docstring).

    Args:
        source: The transformers checkpoint directory (its non-weight files are copied).
        out_dir: Must not exist; created by renaming a finished temporary directory.
        quantize: None, "int8" (onnxruntime dynamic, per-channel: `onnx_int8`) or "int4"
            (MatMulNBits weight-only: `onnx_int4`), for the vision encoder and the decoder.
        block_size: INT4 block size, one of 32, 64, 128.
        opset: ONNX opset (>= 18); None takes the exporter's default.
        atol: Largest accepted |onnxruntime - torch| of the float32 logits.
        model: The model to export instead of loading `source` (a fine-tuned one in memory);
            `source` still provides the config, processor and tokenizer files.
        progress: Called with a short note before each stage (the CLI prints them).

    Returns:
        The report also written to OUT/onnx/vlkit_export.json.

    Raises:
        ValueError: `source` is not a SmolVLM / Idefics3 directory, OUT exists, bad `quantize`
            or `block_size`, a non-float32 or too large model; `ExportMismatch` when onnxruntime
            and torch disagree.
    """
    source, out = Path(source), Path(out_dir)
    check_export_options(quantize, block_size, opset, out)
    if not is_smolvlm_directory(source):
        raise ValueError(
            f"{source}: not a SmolVLM / SmolVLM2 / Idefics3 checkpoint directory (config.json "
            "with model_type smolvlm or idefics3); the ONNX decoder export handles those"
        )
    note = progress or (lambda _: None)
    if model is None:
        note("loading the model")
        model = load_smolvlm(source)
    size = model.vision.config.image_size
    return export_verified(model, source, out, _export_graphs, verification_prompts, size,
                           quantize=quantize, block_size=block_size, opset=opset, atol=atol,
                           note=note)  # fmt: skip


def check_export_options(
    quantize: str | None, block_size: int, opset: int | None, out: Path
) -> None:
    """The exporters' argument checks: a ValueError naming the argument and what is allowed."""
    if quantize not in (None, *QUANTIZE_SUFFIXES):
        raise ValueError(f"quantize {quantize!r}: choose int8 or int4 (or none)")
    if block_size not in INT4_BLOCK_SIZES:
        allowed = ", ".join(map(str, INT4_BLOCK_SIZES))
        raise ValueError(f"block_size {block_size}: choose one of {allowed}")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: the ONNX exporter supports opset {MIN_OPSET} or later")
    if out.exists():
        raise ValueError(f"{out}: already exists; choose a new output directory")


def export_verified(
    model: GenerativeVLM, source: Path, out: Path,
    export_graphs: Callable[[GenerativeVLM, int | None], dict[str, bytes]],
    prompts_of: Callable[..., list[dict[str, torch.Tensor]]], image_size: int, *,
    quantize: str | None, block_size: int, opset: int | None, atol: float,
    note: Callable[[str], None],
) -> ExportReport:  # fmt: skip
    """The steps every VLM kind shares (SmolVLM here, LLaVA in `llava_onnx_export`): trace
    `export_graphs(model, opset)` (the three graphs by file name), check onnxruntime against
    torch on `prompts_of(model)` (`verification_prompts`' signature; `prompts_of(model, seed=1,
    count=4)` for the quantized agreement), quantize, write OUT atomically. `image_size` is the
    square input size of the vision graph (for the report)."""
    _check_model(model, str(source))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            note("exporting vision_encoder, embed_tokens, decoder_model_merged")
            graphs = export_graphs(model, opset)
        note("checking onnxruntime against torch")
        prompts = prompts_of(model)
        fp32 = OnnxGraphs(graphs[VISION_FILE], graphs[EMBED_FILE], graphs[DECODER_FILE], model)
        diffs = max_logit_diffs(model, fp32, prompts)
        worst = max(diffs, key=lambda k: (diffs[k] != diffs[k], diffs[k]))  # NaN first
        if not diffs[worst] <= atol:
            raise ExportMismatch(
                f"{source}: onnxruntime logits differ from torch by {diffs[worst]:.3g} "
                f"(> {atol:g}) on {worst}; nothing was written"
            )
        quantization: dict[str, dict[str, Any]] = {}
        if quantize is not None:
            note(f"quantizing to {quantize}")
            quantized, quantization[quantize] = _quantize(
                model, graphs, fp32, quantize, block_size, source, prompts_of
            )
            graphs.update(quantized)
        facts = _graph_facts(model, prompts, image_size)
    finally:
        model.train(was_training)
    report = ExportReport(
        out_dir=str(out), source=str(source), model_type=str(config_model_type(source)),
        opset=_opset_of(graphs[DECODER_FILE]),
        vlkit_version=__version__, variants=["fp32", *([quantize] if quantize else [])],
        graphs=facts, max_abs_diff=diffs, atol=atol,
        quantization=quantization,
    )  # fmt: skip
    note(f"writing {out}")
    _write_directory(source, out, graphs, report, model)
    return report


def _quantize(
    model: GenerativeVLM,
    graphs: dict[str, bytes],
    fp32: OnnxGraphs,
    quantize: str,
    block_size: int,
    source: Path,
    prompts_of: Callable[..., list[dict[str, torch.Tensor]]],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The quantized vision encoder and decoder, and their agreement with float32."""
    files = {}
    for name in (VISION_FILE, DECODER_FILE):
        quantized_name = name.replace(".onnx", f"{QUANTIZE_SUFFIXES[quantize]}.onnx")
        if quantize == "int8":
            files[quantized_name] = quantize_onnx_int8(graphs[name])
        else:
            files[quantized_name] = quantize_onnx_int4(graphs[name], block_size)
    vision, decoder = files.values()
    quantized = OnnxGraphs(vision, graphs[EMBED_FILE], decoder, model)
    prompts = prompts_of(model, seed=1, count=4)
    agreement = quantized_agreement(fp32, quantized, prompts)
    if not agreement["mean_cosine"] == agreement["mean_cosine"]:  # NaN: a broken graph
        raise ExportMismatch(f"{source}: the {quantize} graphs return NaN; nothing was written")
    options: dict[str, Any] = {"files": list(files)}
    if quantize == "int8":
        options.update(method="onnxruntime dynamic", weights="int8 per-channel symmetric",
                       activations="uint8 dynamic")  # fmt: skip
    else:
        options.update(method="MatMulNBits", weights="int4 asymmetric", block_size=block_size)
    options["agreement_with_fp32"] = {**agreement, "method": (
        "teacher-forced top-1 along the fp32 greedy continuation (8 tokens per row), "
        "random-token prompts with random images"
    )}  # fmt: skip
    return files, options


def _graph_facts(
    model: GenerativeVLM, prompts: list[dict[str, torch.Tensor]], size: int
) -> dict[str, Any]:
    config = model.decoder.config
    with torch.no_grad():
        seq = model.encode_images(torch.ones(1, 1, 3, size, size)).shape[0]
    return {
        "num_layers": config.num_layers, "num_kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size, "image_size": size, "image_seq_len": seq,
        "image_token_id": model.image_token_id,
        "decoder_inputs": ["inputs_embeds", "attention_mask", "position_ids",
                           *past_names(config.num_layers)],
        "decoder_outputs": ["logits", *present_names(config.num_layers)],
        "verified_on": [list(p["input_ids"].shape) for p in prompts],
    }  # fmt: skip


def _write_directory(
    source: Path, out: Path, graphs: dict[str, bytes], report: ExportReport, model: GenerativeVLM
) -> None:
    """Writes everything into a temporary directory next to `out`, then renames it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for path in sorted(source.iterdir()):
            if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(path, tmp / path.name)
        if not (tmp / "generation_config.json").is_file():
            generation = {key: value for key in ("eos_token_id", "pad_token_id")
                          if (value := getattr(model, key, None)) is not None}  # fmt: skip
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        (tmp / "onnx").mkdir()
        for name, data in graphs.items():
            (tmp / "onnx" / name).write_bytes(data)
        report.files = {name: (tmp / "onnx" / name).stat().st_size for name in graphs}
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        (tmp / "onnx" / REPORT_FILE).write_text(text)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an export is meant to be shared
        if out.exists():  # created while exporting: never replace it
            raise ValueError(f"{out}: already exists; choose a new output directory")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
