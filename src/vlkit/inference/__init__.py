"""Inference-time model transforms (e.g. dynamic int8 quantization for CPU decoding)."""

from vlkit.inference.quantize import quantize_int8

__all__ = ["quantize_int8"]
