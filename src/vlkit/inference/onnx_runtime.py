"""`OnnxCLIP`: a CLIP / SigLIP model written by `export_onnx`, run with onnxruntime.

An export directory holds (see `vlkit.inference.onnx_export` for how it is made and checked):

    image_encoder.onnx   pixel_values (batch, 3, S, S) float32 -> image_embeds (batch, D)
    text_encoder.onnx    input_ids (batch, L) int64 [, attention_mask (batch, L) int64]
                         -> text_embeds (batch, D)
    onnx_config.json     embed size, image size, context length, temperature, logit bias,
                         preprocessing, input names, vlkit version and opset
    image_encoder.int8.onnx, text_encoder.int8.onnx   (optional) dynamically quantized towers

The file names and the session options live here, the reader's side, so the exporter writes
and verifies exactly what this runtime loads. onnxruntime is imported only when a session is
opened: it is an optional dependency (the `export` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CONFIG_FILE",
    "IMAGE_FILE",
    "INT8_IMAGE_FILE",
    "INT8_TEXT_FILE",
    "TEXT_FILE",
    "OnnxCLIP",
    "l2_normalize",
    "onnx_session",
]

IMAGE_FILE = "image_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
CONFIG_FILE = "onnx_config.json"
INT8_IMAGE_FILE = "image_encoder.int8.onnx"
INT8_TEXT_FILE = "text_encoder.int8.onnx"
_CONFIG_KEYS = ("embed_dim", "image_size", "context_length", "normalize", "temperature",
                "logit_bias", "image_inputs", "text_inputs")  # fmt: skip


def onnx_session(
    model: bytes | str | Path, providers: list[str] | None, threads: int | None
) -> Any:
    """An onnxruntime `InferenceSession` for a serialised model or a file.

    Args:
        model: The model's bytes or its path.
        providers: onnxruntime execution providers; None: CPU.
        threads: Intra-op threads (inter-op: 1); None: onnxruntime's default.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])


class OnnxCLIP:
    """A CLIP / SigLIP model exported by `export_onnx`, run with onnxruntime. Inputs may be numpy
    arrays or torch tensors; outputs are numpy arrays."""

    def __init__(self, config: dict[str, Any], image_session: Any, text_session: Any) -> None:
        self.config = config
        self.image_session = image_session
        self.text_session = text_session
        self.embed_dim = int(config["embed_dim"])
        self.image_size = int(config["image_size"])
        self.num_channels = int(config.get("num_channels", 3))
        self.context_length = int(config["context_length"])
        self.normalize = bool(config["normalize"])
        self.temperature = float(config["temperature"])
        self.logit_bias = None if config["logit_bias"] is None else float(config["logit_bias"])
        self.text_inputs = list(config["text_inputs"])

    @classmethod
    def load(
        cls,
        directory: str | Path,
        providers: list[str] | None = None,
        num_threads: int | None = None,
        int8: bool = False,
    ) -> OnnxCLIP:
        """Loads an `export_onnx` directory.

        Args:
            providers: onnxruntime execution providers; None: CPU.
            num_threads: onnxruntime intra-op threads; None: onnxruntime's default.
            int8: Run the dynamically quantized towers (`export_onnx(..., int8=True)`).

        Raises:
            FileNotFoundError: A file of the export is missing (its path is named), or `int8`
                for an export without INT8 towers.
            ValueError: `onnx_config.json` is not valid JSON or lacks a key (named).
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        names = [INT8_IMAGE_FILE, INT8_TEXT_FILE] if int8 else [IMAGE_FILE, TEXT_FILE]
        for path in [config_path, *(directory / name for name in names)]:
            if not path.is_file():
                hint = "vlkit export --int8" if int8 else "vlkit export"
                raise FileNotFoundError(f"{path}: no such file (write it with {hint})")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path}: not valid JSON ({error})") from error
        missing = [key for key in _CONFIG_KEYS if key not in config]
        if missing:
            raise ValueError(f"{config_path}: missing keys {missing}")
        if int8 and not config.get("int8"):
            raise FileNotFoundError(
                f"{config_path}: this export has no INT8 towers (the INT8 files beside it are "
                "not from it); export again with vlkit export --int8"
            )
        sessions = [onnx_session(directory / name, providers, num_threads) for name in names]
        return cls(config, *sessions)

    def encode_image(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Preprocessed images (B, C, S, S) -> embeddings (B, embed_dim), float32."""
        pixels = _numpy(pixels, np.float32)
        expected = (self.num_channels, self.image_size, self.image_size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"image_encoder.onnx expects pixel_values of shape (batch, "
                f"{', '.join(map(str, expected))}), got {pixels.shape}"
            )
        return self.image_session.run(None, {"pixel_values": pixels})[0]

    def encode_text(
        self,
        input_ids: np.ndarray | torch.Tensor,
        attention_mask: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray:
        """Token ids (B, L) padded to the context length -> embeddings (B, embed_dim), float32.

        Raises:
            ValueError: Wrong shape, or a mask with padding for a text encoder exported without
                an `attention_mask` input (export again with `text_attention_mask=True`).
        """
        ids = _numpy(input_ids, np.int64)
        if ids.ndim != 2 or ids.shape[1] != self.context_length:
            raise ValueError(
                f"text_encoder.onnx expects input_ids of shape (batch, {self.context_length}), "
                f"got {ids.shape}"
            )
        mask = None if attention_mask is None else _numpy(attention_mask, np.int64)
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {ids.shape}, got {mask.shape}"
            )
        feeds = {"input_ids": ids}
        if "attention_mask" in self.text_inputs:
            feeds["attention_mask"] = mask if mask is not None else np.ones_like(ids)
        elif mask is not None and not mask.all():
            raise ValueError(
                "text_encoder.onnx was exported without an attention_mask input; export with "
                "text_attention_mask=True to use padding masks"
            )
        return self.text_session.run(None, feeds)[0]

    def logits(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """Scaled cosine similarities (N_images, N_texts), plus the bias (SigLIP), as
        `CLIP.logits`."""
        image = l2_normalize(_numpy(image_embeds, np.float32))
        text = l2_normalize(_numpy(text_embeds, np.float32))
        logits = self.temperature * (image @ text.T)
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits.astype(np.float32)


def _numpy(array: np.ndarray | torch.Tensor, dtype: type) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array, dtype=dtype)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """x / max(||x||, eps) along the last axis, as `torch.nn.functional.normalize`."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
