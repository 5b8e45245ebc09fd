"""Dynamic INT8 quantization of exported ONNX towers with onnxruntime (`vlkit export --int8`).

`quantize_onnx_int8` turns a float32 tower written by `vlkit.inference.onnx_export` into one whose
weights are int8. The choices, measured on the trained easy-VQA models with
benchmarks/clip_int8.py:

- Which ops: MatMul (all linear layers; the exporter's Gemm nodes are first rewritten as MatMul,
  which has an integer kernel and Gemm has not) and Gather (the token-embedding table, the bulk
  of a small text tower). Conv stays float, as in `quantize_int8`: onnxruntime's CPU ConvInteger
  takes uint8 weights only, and the ViT's one patch convolution is a small share; the
  ModifiedResNet trunk therefore stays float32.
- Weights int8 (QInt8, symmetric), activations uint8 (dynamic mode has no other choice): the
  U8S8 combination is onnxruntime's default and the one its x86 kernels are built for
  (AVX2 VPMADDUBSW, AVX512-VNNI VPDPBUSD). reduce_range (7-bit weights) is off: it avoids the
  possible int16 saturation of VPMADDUBSW on x86 CPUs without VNNI at the cost of half the weight
  resolution, and the cosine check below would catch a saturation loss on the exporting machine.
- Per-channel weight scales (one per output column): slightly closer to float32 than one scale
  per tensor (min cosine on the test images 0.99991 vs 0.99986 for the trained ViT image tower)
  for about 1% more bytes.
- No `quant_pre_process`: its symbolic shape inference fails on the dynamo exporter's graphs
  (an Expand), the exporter already records every tensor's shape, and with it skipped the
  pre-processing quantizes the same MatMuls to the same accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INT8_OP_TYPES", "PER_CHANNEL", "quantize_onnx_int8"]

# The weights that INT8 quantizes: MatMul (every linear layer, after `_gemm_to_matmul`) and
# Gather (the token-embedding table). Conv stays float (see the module docstring).
INT8_OP_TYPES = ("MatMul", "Gather")
PER_CHANNEL = True  # one weight scale per output column (module docstring)


def _gemm_to_matmul(model_bytes: bytes) -> bytes:
    """Rewrites each Gemm with a constant weight as MatMul (+ Add of the bias), folding alpha,
    beta and transB into the constants.

    onnxruntime's dynamic quantization has an integer kernel for MatMul (MatMulInteger /
    DynamicQuantizeMatMul) but not for Gemm, which it leaves in float. The exporter writes a
    linear layer on a 2-D input as Gemm: the output projections, and CLIP's QuickGELU MLP
    (`Mlp._quick_gelu_forward`, two `addmm`), which holds two thirds of a ViT block's weights.
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(model_bytes)
    graph = proto.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or attributes.get("transA", 0)
            or node.input[1] not in initializers
            or (len(node.input) > 2 and node.input[2] and node.input[2] not in initializers)
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attributes.get("transB", 0):
            weight = weight.T
        weight = np.ascontiguousarray(weight * np.float32(attributes.get("alpha", 1.0)))
        prefix = f"{node.name or node.output[0]}_as_matmul"
        graph.initializer.append(numpy_helper.from_array(weight, f"{prefix}_weight"))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        product = f"{prefix}_product" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{prefix}_weight"], [product],
                                      name=f"{prefix}_matmul"))  # fmt: skip
        if has_bias:
            bias = numpy_helper.to_array(initializers[node.input[2]])
            bias = bias * np.float32(attributes.get("beta", 1.0))
            graph.initializer.append(numpy_helper.from_array(bias, f"{prefix}_bias"))
            nodes.append(helper.make_node("Add", [product, f"{prefix}_bias"], [node.output[0]],
                                          name=f"{prefix}_add"))  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    # Drop the float constants that only the rewritten Gemms read (a subgraph or an output may
    # still name one).
    used = set(_names_read(graph)) | {output.name for output in graph.output}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto.SerializeToString()


def _names_read(graph: Any) -> Iterator[str]:
    """Every tensor name that a node of `graph` or of its subgraphs reads."""
    for node in graph.node:
        yield from node.input
        for attribute in node.attribute:
            for subgraph in [
                *([attribute.g] if attribute.HasField("g") else []),
                *attribute.graphs,
            ]:
                yield from _names_read(subgraph)


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


def quantize_onnx_int8(model_bytes: bytes, per_channel: bool = PER_CHANNEL) -> bytes:
    """Dynamic INT8 quantization of an exported tower (onnxruntime `quantize_dynamic`).

    Weights of MatMul (linear layers) and Gather (token embeddings) are stored as int8; the
    activations are quantized to uint8 per call from their observed range, as torch's dynamic
    quantization does. See the module docstring for the choice of options.

    Args:
        model_bytes: A float32 model from `export_onnx`'s exporter.
        per_channel: One scale per output column of each MatMul weight instead of one per tensor.

    Returns:
        The quantized model, serialised.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(_gemm_to_matmul(model_bytes))
    root = logging.getLogger()
    advice = _DropPreprocessAdvice()
    root.addFilter(advice)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                proto,
                path,
                op_types_to_quantize=list(INT8_OP_TYPES),
                per_channel=per_channel,
                reduce_range=False,
                weight_type=QuantType.QInt8,
            )
            return path.read_bytes()
    finally:
        root.removeFilter(advice)
