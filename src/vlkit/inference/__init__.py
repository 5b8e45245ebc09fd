"""Inference tools: INT8 quantization, ONNX export, a faiss embedding index, image search."""

from vlkit.inference.export import ExportReport, OnnxCLIP, export_onnx
from vlkit.inference.image_search import ImageSearcher, build_image_index
from vlkit.inference.index import EmbeddingIndex, SearchHit
from vlkit.inference.onnx_int8 import quantize_onnx_int8
from vlkit.inference.quantize import quantize_int8

__all__ = [
    "EmbeddingIndex",
    "ExportReport",
    "ImageSearcher",
    "OnnxCLIP",
    "SearchHit",
    "build_image_index",
    "export_onnx",
    "quantize_int8",
    "quantize_onnx_int8",
]
