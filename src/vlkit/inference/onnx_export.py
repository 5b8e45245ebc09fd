"""ONNX export of a CLIP / SigLIP model's two towers (run them with `onnx_runtime.OnnxCLIP`).

`export_onnx(model, out_dir)` writes three files:

    image_encoder.onnx   pixel_values (batch, 3, S, S) float32 -> image_embeds (batch, D)
    text_encoder.onnx    input_ids (batch, L) int64 [, attention_mask (batch, L) int64]
                         -> text_embeds (batch, D)
    onnx_config.json     embed size, image size, context length, temperature, logit bias,
                         preprocessing, input names, vlkit version and opset

The batch axis is dynamic; the image size and the context length are fixed (the tokenizers pad to
the context length). `attention_mask` is an input of the text encoder when the text tower is
bidirectional (SigLIP), where padding changes the result, or when asked for
(`text_attention_mask=True`); a causal CLIP tower pooled at its end-of-text token does not need it.

Exporter: the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`), the default
since PyTorch 2.9 and the same call in 2.11 and 2.14. The TorchScript exporter (`dynamo=False`)
is ten times faster on tiny models, but 2.14 deprecates it with "the feature will be removed", so
an export path built on it would break on a future upgrade. The dynamo exporter needs
`onnxscript` (the `export` extra). Models are serialised in memory (`external_data=False`), which
limits each tower to ONNX's 2 GB protobuf size (ViT-L/14 fits; ViT-bigG does not).

Each file is checked with onnxruntime against torch, on a batch of 2 and of 3 (the dynamic axis),
before it is written, then written atomically (a temporary file in the same directory renamed
over the target), so a failed export leaves no half-written or unverified file behind.

INT8 (`int8=True`, `vlkit export --int8`) also writes `image_encoder.int8.onnx` and
`text_encoder.int8.onnx`: the verified float32 graphs after onnxruntime's dynamic quantization
(`vlkit.inference.onnx_int8`, where the choice of options is explained), recorded under "int8"
in onnx_config.json and loaded with `OnnxCLIP.load(dir, int8=True)`. Exact equality is
impossible, so each INT8 tower must reach a cosine similarity of at least
`DEFAULT_INT8_MIN_COSINE` (0.99) to torch float32 on every row of the verification batches.
Measured minima are 0.9988 or higher (random tiny towers and random-weight ViT-B/32 on random
inputs, the trained easy-VQA towers on the 1,000 test images), so 0.99 allows about eight times
the observed 1 - cosine, while a broken quantization (a wrong scale, saturation, int8 codes read
as floats) lands far below it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlkit.hub.weights import atomic_write
from vlkit.inference.onnx_int8 import INT8_OP_TYPES, PER_CHANNEL, quantize_onnx_int8
from vlkit.inference.onnx_runtime import (
    CONFIG_FILE,
    IMAGE_FILE,
    INT8_IMAGE_FILE,
    INT8_TEXT_FILE,
    TEXT_FILE,
    l2_normalize,
    onnx_session,
)
from vlkit.models.clip import CLIP
from vlkit.version import __version__

__all__ = ["DEFAULT_INT8_MIN_COSINE", "MIN_OPSET", "ExportReport", "export_onnx"]

DEFAULT_ATOL = 1e-4
# Smallest accepted cosine similarity between an INT8 tower's embeddings and torch float32's on
# the verification batches (see the module docstring for the measurements behind it).
DEFAULT_INT8_MIN_COSINE = 0.99
# The dynamo exporter has no translations below opset 18: asked for less, it tries a version
# conversion and silently keeps 18 when that fails, so a lower opset is refused up front.
MIN_OPSET = 18


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how closely onnxruntime matched torch.

    Attributes:
        max_abs_diff: Largest |onnxruntime - torch| per check ("image_batch2", "text_batch3",
            ...), empty when `verify=False`.
        file_sizes: Bytes per written file name.
        int8_min_cosine: Smallest cosine similarity between the INT8 and the torch float32
            embeddings over the verification batches, per tower ("image", "text"); empty
            without `int8`.
    """

    out_dir: str
    opset: int
    normalize: bool
    text_inputs: list[str]
    file_sizes: dict[str, int] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    int8_min_cosine: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ImageEncoder(nn.Module):
    def __init__(self, model: CLIP, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values, normalize=self.normalize)


class _TextEncoder(nn.Module):
    def __init__(self, model: CLIP, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask, normalize=self.normalize)


def _to_onnx_bytes(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    output_name: str,
    opset: int | None,
) -> bytes:
    """Exports `module(**inputs)` with a dynamic batch axis on every input and the output."""
    batch = torch.export.Dim("batch")
    optimizer_log = logging.getLogger("onnxscript")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The exporter's deprecation notes and the "skipping constant folding" notes of
            # onnxscript's graph optimizer are not actionable by the caller.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (),
                None,
                kwargs=inputs,
                input_names=list(inputs),
                output_names=[output_name],
                opset_version=opset,
                dynamic_shapes={name: {0: batch} for name in inputs},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        optimizer_log.setLevel(level)
    return program.model_proto.SerializeToString()


def _opset_of(model_bytes: bytes) -> int:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _check(
    name: str,
    model_bytes: bytes,
    module: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    atol: float,
) -> dict[str, float]:
    """Max |onnxruntime - torch| for each batch; raises when one exceeds `atol`."""
    session = onnx_session(model_bytes, None, 1)  # batches of 2-3: one thread, no spinning
    diffs = {}
    for inputs in batches:
        with torch.no_grad():
            expected = module(**inputs).float().cpu().numpy()
        got = session.run(None, {k: v.cpu().numpy() for k, v in inputs.items()})[0]
        size = next(iter(inputs.values())).shape[0]
        if got.shape != expected.shape:
            raise RuntimeError(
                f"{name}: onnxruntime returned shape {got.shape} for batch {size}, torch "
                f"{expected.shape}"
            )
        diff = float(np.abs(got - expected).max())
        diffs[f"{name}_batch{size}"] = diff
        if not diff <= atol:  # also catches NaN
            raise RuntimeError(
                f"{name}: onnxruntime differs from torch by {diff:.3g} (> {atol:g}) on a batch "
                f"of {size}; nothing was written"
            )
    return diffs


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=-1)


def _check_int8(
    name: str,
    model_bytes: bytes,
    module: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    min_cosine: float,
) -> float:
    """Smallest cosine similarity between onnxruntime INT8 and torch fp32 embeddings over the
    rows of `batches`; raises when it is below `min_cosine`."""
    session = onnx_session(model_bytes, None, 1)  # batches of 2-3: one thread, no spinning
    worst = 1.0
    for inputs in batches:
        with torch.no_grad():
            expected = module(**inputs).float().cpu().numpy()
        got = session.run(None, {k: v.cpu().numpy() for k, v in inputs.items()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"{name} int8: shape {got.shape}, torch {expected.shape}")
        worst = min(worst, float(_cosine_rows(got, expected).min()))
        if not worst >= min_cosine:  # also catches NaN
            raise RuntimeError(
                f"{name} int8: cosine similarity to torch fp32 is {worst:.4f} (< {min_cosine:g}) "
                f"on a batch of {got.shape[0]}; nothing was written"
            )
    return worst


def _text_batch(model: CLIP, size: int, use_mask: bool, generator: torch.Generator):
    text = model.config.text
    device = next(model.parameters()).device
    shape = (size, text.context_length)
    ids = torch.randint(0, text.vocab_size, shape, generator=generator).to(device)
    inputs = {"input_ids": ids}
    if use_mask:
        mask = torch.ones(shape, dtype=torch.long)
        mask[0, text.context_length // 2 :] = 0  # right padding on one row
        inputs["attention_mask"] = mask.to(device)
    return inputs


def export_onnx(
    model: CLIP,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    normalize: bool = True,
    verify: bool = True,
    text_attention_mask: bool | None = None,
    atol: float = DEFAULT_ATOL,
    int8: bool = False,
    int8_min_cosine: float = DEFAULT_INT8_MIN_COSINE,
) -> ExportReport:
    """Writes `image_encoder.onnx`, `text_encoder.onnx` and `onnx_config.json` to `out_dir`.

    Args:
        model: A float32 CLIP or SigLIP model (training mode is restored afterwards).
        out_dir: Created if missing; existing files of the same names are replaced.
        opset: ONNX opset, at least `MIN_OPSET` (18); None takes the exporter's default (the
            opset used is reported).
        normalize: Export L2-normalised embeddings (what zero-shot and retrieval use).
        verify: Compare onnxruntime with torch on random batches of 2 and 3 before writing.
        text_attention_mask: Give the text encoder an `attention_mask` input; None: only for a
            bidirectional text tower (SigLIP).
        atol: Largest accepted |onnxruntime - torch| when verifying.
        int8: Also write `image_encoder.int8.onnx` and `text_encoder.int8.onnx`, dynamically
            quantized (`quantize_onnx_int8`) from the verified float32 files.
        int8_min_cosine: Smallest accepted cosine similarity between the INT8 and the torch
            float32 embeddings of the verification batches (checked even with `verify=False`:
            quantization error, unlike exporter error, depends on the weights).

    Returns:
        The report: opset, file sizes, when verified the max abs differences, and with `int8`
        the smallest INT8 cosine similarities.

    Raises:
        ValueError: When the model has non-float32 parameters or `opset` < 18.
        RuntimeError: When onnxruntime disagrees with torch by more than `atol`, or an INT8
            tower's cosine similarity falls below `int8_min_cosine`.
    """
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: the ONNX exporter supports opset {MIN_OPSET} or later")
    for name, parameter in model.named_parameters():
        if parameter.dtype != torch.float32:
            raise ValueError(f"export a float32 model ({name} is {parameter.dtype}): model.float()")
    config = model.config
    use_mask = (not config.text.causal) if text_attention_mask is None else text_attention_mask
    image_size, channels = config.vision.image_size, config.vision.num_channels
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    image_shape = (channels, image_size, image_size)
    image_batches = [
        {"pixel_values": torch.randn(n, *image_shape, generator=generator).to(device)}
        for n in (2, 3)
    ]
    text_batches = [_text_batch(model, n, use_mask, generator) for n in (2, 3)]

    was_training = model.training
    model.eval()
    try:
        image_encoder = _ImageEncoder(model, normalize).eval()
        text_encoder = _TextEncoder(model, normalize).eval()
        diffs: dict[str, float] = {}
        image_bytes = _to_onnx_bytes(image_encoder, image_batches[0], "image_embeds", opset)
        if verify:
            diffs.update(_check("image", image_bytes, image_encoder, image_batches, atol))
        text_bytes = _to_onnx_bytes(text_encoder, text_batches[0], "text_embeds", opset)
        if verify:
            diffs.update(_check("text", text_bytes, text_encoder, text_batches, atol))
        int8_files: dict[str, bytes] = {}
        cosines: dict[str, float] = {}
        if int8:
            for name, file_name, data, module, batches in (
                ("image", INT8_IMAGE_FILE, image_bytes, image_encoder, image_batches),
                ("text", INT8_TEXT_FILE, text_bytes, text_encoder, text_batches),
            ):
                int8_files[file_name] = quantize_onnx_int8(data)
                cosines[name] = _check_int8(
                    name, int8_files[file_name], module, batches, int8_min_cosine
                )
        temperature = float(model.temperature().detach())
        bias = float(model.logit_bias.detach()) if model.logit_bias is not None else None
    finally:
        model.train(was_training)

    used_opset = _opset_of(image_bytes)
    int8_config = None
    if int8:
        int8_config = {
            "image_file": INT8_IMAGE_FILE,
            "text_file": INT8_TEXT_FILE,
            "op_types": list(INT8_OP_TYPES),
            "weight_type": "int8",
            "activation_type": "uint8 (dynamic)",
            "per_channel": PER_CHANNEL,
            "min_cosine": cosines,
        }
    text_inputs = list(text_batches[0])
    onnx_config = {
        "model_type": config.model_type,
        "embed_dim": config.embed_dim,
        "image_size": image_size,
        "num_channels": channels,
        "context_length": config.text.context_length,
        "normalize": normalize,
        "temperature": temperature,
        "logit_bias": bias,
        "image_inputs": ["pixel_values"],
        "text_inputs": text_inputs,
        "text": {
            "vocab_size": config.text.vocab_size,
            "pooling": config.text.pooling,
            "eos_token_id": config.text.eos_token_id,
            "pad_token_id": config.text.pad_token_id,
        },
        "preprocess": asdict(config.preprocess),
        "vlkit_version": __version__,
        "opset": used_opset,
        "int8": int8_config,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_bytes = (json.dumps(onnx_config, indent=2) + "\n").encode()
    # The config goes last: a reader never sees it name INT8 files that are not there yet.
    files = [(IMAGE_FILE, image_bytes), (TEXT_FILE, text_bytes), *int8_files.items(),
             (CONFIG_FILE, config_bytes)]  # fmt: skip
    for file_name, data in files:
        atomic_write(out / file_name, lambda tmp, data=data: _write_bytes(tmp, data))
    if not int8:  # INT8 files of an earlier export would not match the new float32 ones
        for stale in (INT8_IMAGE_FILE, INT8_TEXT_FILE):
            (out / stale).unlink(missing_ok=True)
    sizes = {name: (out / name).stat().st_size for name, _ in files}
    return ExportReport(str(out), used_opset, normalize, text_inputs, sizes, diffs, cosines)


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)  # mkstemp creates 0600; an exported model is meant to be shared
