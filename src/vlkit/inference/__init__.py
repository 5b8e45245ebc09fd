"""Inference tools: the generative-VLM pipeline, INT8 quantization, ONNX export, a faiss embedding
index, image search."""

from vlkit.inference.embed import embed, zeroshot
from vlkit.inference.image_search import ImageSearcher, build_image_index
from vlkit.inference.index import EmbeddingIndex, SearchHit
from vlkit.inference.llava_onnx_export import export_llava_onnx
from vlkit.inference.onnx_export import ExportReport, export_onnx
from vlkit.inference.onnx_int8 import quantize_onnx_int8
from vlkit.inference.onnx_runtime import OnnxCLIP
from vlkit.inference.onnx_vlm import OnnxVLM
from vlkit.inference.quantize import quantize_int8
from vlkit.inference.quantize_int4 import quantize_int4
from vlkit.inference.smolvlm_onnx_export import export_smolvlm_onnx
from vlkit.inference.text_streamer import TextStreamer
from vlkit.inference.vlm_loading import load_vlm
from vlkit.inference.vlm_pipeline import VLMInputs, VLMPipeline, sampling_options
from vlkit.inference.vlm_run_directory import VLMRun, load_vlm_run

__all__ = [
    "EmbeddingIndex",
    "ExportReport",
    "ImageSearcher",
    "OnnxCLIP",
    "OnnxVLM",
    "SearchHit",
    "TextStreamer",
    "VLMInputs",
    "VLMPipeline",
    "VLMRun",
    "build_image_index",
    "embed",
    "export_llava_onnx",
    "export_onnx",
    "export_smolvlm_onnx",
    "load_vlm",
    "load_vlm_run",
    "quantize_int4",
    "quantize_int8",
    "quantize_onnx_int8",
    "sampling_options",
    "zeroshot",
]
