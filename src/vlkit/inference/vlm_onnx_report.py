"""What a VLM ONNX export (`smolvlm_onnx_export`, `llava_onnx_export`) wrote and how it was checked.

The `ExportReport` is written to OUT/onnx/vlkit_export.json and returned to the caller (the
`vlkit export` command prints it as JSON); `ExportMismatch` is the refusal when onnxruntime and
torch disagree, a ValueError so that the CLI shows it in one line (exit 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEFAULT_ATOL", "ExportMismatch", "ExportReport"]

DEFAULT_ATOL = 1e-4


class ExportMismatch(ValueError):
    """onnxruntime's outputs differ from vlkit's torch model by more than the tolerance."""


@dataclass
class ExportReport:
    """What an export wrote and how it was checked (also OUT/onnx/vlkit_export.json).

    Attributes:
        files: Bytes on disk per written file under OUT/onnx.
        max_abs_diff: Max |onnxruntime - torch| of the logits per check ("prompt0_prefill",
            "prompt1_decode", ...).
        quantization: Per variant ("int8", "int4"): files, options, and against float32 the
            greedy-token agreement and the mean / min logit cosine (`quantized_agreement`).
        graphs: Shapes a reader needs: num_layers, num_kv_heads, head_dim, hidden_size,
            vocab_size, image_size, image_seq_len, image_token_id, input and output names.
    """

    out_dir: str
    source: str
    model_type: str
    opset: int
    vlkit_version: str
    variants: list[str]
    graphs: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    atol: float = DEFAULT_ATOL
    quantization: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
