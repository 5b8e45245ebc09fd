"""Dynamic int8 quantization of `nn.Linear` layers for CPU inference.

Dynamic quantization (PyTorch's `torch.ao.quantization.quantize_dynamic`, Jacob et al. 2018 for
the affine int8 scheme) stores each linear weight as int8 with one per-tensor scale and zero
point, and quantizes the activations on the fly, per call, from their observed range; the matmul
runs in int8 (fbgemm / qnnpack kernels) and the result is dequantized to float. No calibration
data is needed. Decoding a small LM on CPU is bound by reading the weights, so int8 weights (a
quarter of fp32) speed it up; the kernels exist on CPU only.

`torch.ao.quantization` is deprecated in favour of torchao (it emits DeprecationWarnings in recent
releases and still works in 2.11 - 2.14); we silence those two warnings here and keep the call in one
function, so a move to `torchao.quantization.quantize_` stays local.

Tied embeddings: with `tie_word_embeddings` the LM head shares its weight with the input
embedding. Only `nn.Linear` modules are converted, so the embedding table stays in float and the
head gets its own int8 copy (the tie is broken; memory grows by the int8 copy, a quarter of the
table). Pass `include_lm_head=False` to keep the head in float and tied.

Linear layers whose weight a parent reads directly stay in float: a dynamically quantized linear
has no `weight` tensor (its `weight()` is a method returning the packed int8 weight), so such a
parent would fail. One exists: SigLIP's attention-pooling head (`AttentionPoolingHead.in_proj`),
which splits its fused QKV weight to project the learned probe and the tokens separately; it is
one (3D, D) matrix applied to a single pooling step, a negligible share of the image tower.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from vlkit.layers.attention_pool import AttentionPoolingHead


def quantize_int8(
    model: nn.Module, include_lm_head: bool = True, inplace: bool = False
) -> nn.Module:
    """Replace every `nn.Linear` of `model` by a dynamically quantized int8 linear layer.

    Works for any module tree: a `DecoderLM`, a `GenerativeVLM` (vision tower, connector and
    decoder), a CLIP model. Convolutions, embeddings and norms stay in float.

    Args:
        model: A float32 model on the CPU.
        include_lm_head: Quantize linear modules named `lm_head` too (see the module docstring on
            tied embeddings).
        inplace: Convert `model` itself instead of a deep copy.

    Returns:
        The quantized model in eval mode (inference only: the int8 layers have no gradients).

    Raises:
        ValueError: When a parameter or buffer is not on the CPU (int8 dynamic kernels are
            CPU-only) or is not float32.
    """
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type != "cpu":
            raise ValueError(
                f"dynamic int8 quantization runs on the CPU only, but {name} is on "
                f"{tensor.device}; call model.cpu() first"
            )
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ValueError(f"quantize a float32 model, {name} is {tensor.dtype}")
    from torch.ao.quantization import quantize_dynamic

    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    # Which modules to convert: by type, or by name when some linear layers stay in float (the
    # head when excluded, those read by raw weight; quantize_dynamic matches a qconfig dict
    # against module types and qualified names).
    from torch.ao.quantization import default_dynamic_qconfig

    keep_float = _raw_weight_linears(model)
    if not include_lm_head:
        keep_float |= {n for n, _ in model.named_modules() if n.split(".")[-1] == "lm_head"}
    spec: set[type[nn.Module]] | dict[str, object] = {nn.Linear}
    if keep_float:
        spec = {
            name: default_dynamic_qconfig
            for name, module in model.named_modules()
            if type(module) is nn.Linear and name not in keep_float
        }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def _raw_weight_linears(model: nn.Module) -> set[str]:
    """Qualified names of the linear layers whose parent reads `.weight` / `.bias` directly."""
    return {
        f"{name}.in_proj" if name else "in_proj"
        for name, module in model.named_modules()
        if isinstance(module, AttentionPoolingHead)
    }
