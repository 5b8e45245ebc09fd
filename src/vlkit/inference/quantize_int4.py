"""Weight-only INT4 linear layers for CPU inference in PyTorch (`vlkit generate --int4`).

Group-wise asymmetric INT4 (the scheme of GPTQ / AWQ checkpoints and of onnxruntime's
MatMulNBits): each row of a linear weight is cut into groups of `group_size` input columns; a
group stores 4-bit codes q in [0, 15], a float scale s = (max - min) / 15 and a float offset, and
w ~ min + q * s. Activations stay in float (no calibration data, nothing quantized per call), so
the error is the weight rounding alone: at most s / 2 per element, s being 1/15 of one group's
range. Decoding a small LM on CPU is bound by reading the weights, and INT4 weights are an eighth
of fp32 (plus one scale and one offset per group).

The matmul is PyTorch's own CPU kernel, `aten._weight_int4pack_mm_for_cpu`, with weights packed
by `aten._convert_weight_to_int4pack_for_cpu` (both in torch since 2.6, so torch 2.11 - 2.14 run
this file). The offset is stored as `zero = min + 8 * s`, the "float zero point" convention of
that kernel (it computes w = (q - 8) * s + zero). Why not torchao: torchao 0.18 reaches this same
kernel only through its prototype namespace (`torchao.prototype.quantization.int4`,
`PrototypeInt4WeightOnlyConfig` -> `Int4OpaqueTensor`; the stable `Int4WeightOnlyConfig` has no
CPU packing format any more, and the path moved between releases), and it swaps `weight` for a
tensor subclass and sets global inductor options on the way. Calling the two aten ops ourselves
is ~60 lines, needs no extra dependency, keeps plain buffers in the state dict and gives the same
numbers: the qparams below are torchao's `_choose_qparams_affine_tinygemm` /
`_quantize_affine_tinygemm` (torchao/quantization/quant_primitives.py) written out (compared
with torchao 0.18's `Int4OpaqueTensor` once by hand, in a throwaway environment: same packed
codes, same scales; torchao is not a dependency, so no test repeats that comparison).

Compute in bfloat16: the CPU kernel's fast path takes bfloat16 activations; with float32 or
float16 ones it was 20-40x slower on this project's CPU (AVX-512; a 576 -> 1536 layer at one
row: ~3 ms vs ~0.1 ms, slower than the float32 matmul itself). So scales and zero points are stored in
bfloat16 (as torchao does for bfloat16 models), activations are cast to bfloat16 on the way in
and the output back to the input dtype. The added rounding (relative 2^-8 on activations and
scales) is small next to the INT4 step of 1/15 of a group's range.

Which layers: every `nn.Linear` whose input width is a multiple of `group_size` (a layer that is
not, and the linear layers a parent reads by raw weight - SigLIP's attention-pooling `in_proj`,
see `quantize.py` - stay in float). Tied LM head: as in `quantize_int8`, the head gets its own
INT4 copy and the embedding table stays float; `include_lm_head=False` keeps the head float and
tied. Embeddings, convolutions and norms stay float.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.inference.quantize import _raw_weight_linears

__all__ = ["GROUP_SIZES", "Int4WeightOnlyLinear", "quantize_int4"]

GROUP_SIZES = (32, 64, 128)  # what the CPU kernel accepts (the K tile it reads per scale)
_MID_POINT = 8  # (quant_max + quant_min + 1) / 2 for codes in [0, 15]
_ROWS_MULTIPLE = 16  # the packing takes a multiple of 16 output rows: others get zero rows


class Int4WeightOnlyLinear(nn.Module):
    """`y = x W^T + b` with W stored as group-wise asymmetric INT4 codes (CPU).

    Buffers: `packed_weight` (rows, in / 2) uint8, the kernel's packing of two codes per byte;
    `scale_and_zero` (in / group_size, rows, 2) bfloat16: per group the scale and the float zero
    point; `bias` (out,) float32 or None. `rows` is `out` rounded up to a multiple of 16 (the
    kernel's packing needs it; a vocabulary of 97 tokens gets 15 zero rows, cut from the output).
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool) -> None:
        super().__init__()
        if group_size not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of {group_size}")
        self.in_features, self.out_features, self.group_size = (
            in_features,
            out_features,
            group_size,
        )
        rows = -(-out_features // _ROWS_MULTIPLE) * _ROWS_MULTIPLE
        self.register_buffer(
            "packed_weight", torch.zeros(rows, in_features // 2, dtype=torch.uint8)
        )
        self.register_buffer(
            "scale_and_zero",
            torch.zeros(in_features // group_size, rows, 2, dtype=torch.bfloat16),
        )
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4WeightOnlyLinear:
        """Quantizes a float32 CPU `nn.Linear` (its weight is left alone)."""
        n, k = linear.weight.shape
        layer = cls(k, n, group_size, linear.bias is not None)
        weight = F.pad(linear.weight.detach().float(), (0, 0, 0, layer.packed_weight.shape[0] - n))
        n = weight.shape[0]  # (N, K), N padded to a multiple of 16
        groups = weight.reshape(n, k // group_size, group_size)  # (N, G, group)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, G)
        scale = ((high - low) / 15).clamp(min=torch.finfo(torch.bfloat16).smallest_normal)
        zero = low + scale * _MID_POINT  # the kernel's float zero point: w = (q - 8) s + zero
        # Codes against the bfloat16 scale and zero the kernel will read, so rounding them does
        # not shift every weight of a group.
        scale, zero = scale.bfloat16().float(), zero.bfloat16().float()
        low = zero - scale * _MID_POINT
        codes = ((groups - low.unsqueeze(-1)) / scale.unsqueeze(-1)).round().clamp(0, 15)
        layer.packed_weight.copy_(
            torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.reshape(n, k).int(), 1)
        )
        # (N, G, 2) -> (G, N, 2): the layout `pack_tinygemm_scales_and_zeros` produces.
        layer.scale_and_zero.copy_(torch.stack([scale, zero], dim=-1).transpose(0, 1))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # (B*L, K)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed_weight, self.group_size, self.scale_and_zero
        ).to(x.dtype)  # (B*L, rows)
        if y.shape[1] != self.out_features:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


def quantize_int4(
    model: nn.Module, group_size: int = 32, include_lm_head: bool = True, inplace: bool = False
) -> nn.Module:
    """Replace the `nn.Linear` layers of `model` by `Int4WeightOnlyLinear` (CPU, inference).

    Args:
        model: A float32 model on the CPU (a `DecoderLM`, a `GenerativeVLM`, a CLIP model).
        group_size: Input columns sharing one scale and zero point: 32, 64 or 128 (smaller is
            more accurate and a little larger; 32 is onnxruntime's MatMulNBits default).
        include_lm_head: Quantize linear modules named `lm_head` too (see the module docstring).
        inplace: Convert `model` itself instead of a deep copy.

    Returns:
        The quantized model in eval mode.

    Raises:
        ValueError: A group size the kernel does not take, or a parameter or buffer that is not
            on the CPU or not float32.
    """
    if group_size not in GROUP_SIZES:
        raise ValueError(f"INT4 group_size must be one of {GROUP_SIZES}, got {group_size}")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type != "cpu":
            raise ValueError(
                f"INT4 weight-only quantization runs on the CPU only, but {name} is on "
                f"{tensor.device}; call model.cpu() first"
            )
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ValueError(f"quantize a float32 model, {name} is {tensor.dtype}")
    if type(model) is nn.Linear:  # the model is itself one linear layer
        return Int4WeightOnlyLinear.from_linear(model, group_size)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    keep_float = _raw_weight_linears(model)
    if not include_lm_head:
        keep_float |= {n for n, _ in model.named_modules() if n.split(".")[-1] == "lm_head"}
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name not in keep_float
    ]
    skipped = [name for name, module in targets if module.in_features % group_size]
    if skipped:
        warnings.warn(
            f"INT4: {len(skipped)} linear layer(s) stay float32, their input width is not a "
            f"multiple of group_size {group_size} (e.g. {skipped[0]})",
            stacklevel=2,
        )
    for name, module in targets:
        if module.in_features % group_size == 0:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, Int4WeightOnlyLinear.from_linear(module, group_size))
    return model
