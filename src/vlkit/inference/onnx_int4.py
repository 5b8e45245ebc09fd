"""INT4 weight-only quantization of exported ONNX graphs with onnxruntime's MatMulNBits.

`quantize_onnx_int4` stores the weight of every MatMul with a constant weight (the linear layers
of the decoder and of the vision tower) as 4-bit integers in blocks of `block_size` input rows,
each block with its own float scale and zero point, and replaces the MatMul with onnxruntime's
`com.microsoft.MatMulNBits` contrib op, which unpacks the weights inside its kernel. This is the
"q4" of the onnx-community exports and of onnxruntime-genai's model builder; it runs in
onnxruntime only (not in other ONNX runtimes).

Options (onnxruntime's `MatMulNBitsQuantizer`, the library's own tool rather than a hand-written
packer):
- block_size 32 (default), 64 or 128: smaller blocks follow the weights more closely (more
  scales, slightly larger files); 32 is the onnx-community q4 choice.
- Asymmetric (a zero point per block): closer to float than symmetric for 4 bits, where one
  value of 16 matters.
- accuracy_level 4: the CPU kernel quantizes each activation block to int8 and multiplies in
  integers (onnxruntime-genai's CPU default), which is what makes INT4 decoding fast on a CPU;
  the logits' agreement with float32 is measured by the exporter and reported.
The token-embedding Gather is left in float32 (a lookup costs no multiply-adds).
"""

from __future__ import annotations

import logging

__all__ = ["INT4_ACCURACY_LEVEL", "INT4_BLOCK_SIZES", "quantize_onnx_int4"]

INT4_BLOCK_SIZES = (32, 64, 128)
INT4_ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits (module docstring)


def quantize_onnx_int4(model_bytes: bytes, block_size: int = 32) -> bytes:
    """MatMulNBits INT4 weight-only quantization of a float32 graph.

    Args:
        model_bytes: A serialised float32 model (from the torch.export-based exporter).
        block_size: Input rows per quantization block, one of `INT4_BLOCK_SIZES`.

    Returns:
        The quantized model, serialised.

    Raises:
        ValueError: `block_size` is not one of `INT4_BLOCK_SIZES`.
    """
    if block_size not in INT4_BLOCK_SIZES:
        allowed = ", ".join(map(str, INT4_BLOCK_SIZES))
        raise ValueError(f"block_size {block_size}: INT4 block size must be one of {allowed}")
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # one INFO line per quantized MatMul otherwise
    try:
        quantizer = MatMulNBitsQuantizer(
            onnx.load_from_string(model_bytes),
            bits=4,
            block_size=block_size,
            is_symmetric=False,
            accuracy_level=INT4_ACCURACY_LEVEL,
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
        return quantizer.model.model.SerializeToString()
    finally:
        quantizer_log.setLevel(level)
