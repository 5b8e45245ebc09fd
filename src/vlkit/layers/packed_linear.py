"""Linear layers with oneDNN pre-packed weights, for fp32 inference on x86 CPUs.

PyTorch runs an fp32 `nn.Linear` on the CPU through its BLAS (MKL in the official wheels), which
re-reads the weight in its plain (out, in) layout on every call. oneDNN can instead reorder the
weight once into the blocked layout its GEMM kernels read, and fuse the activation that follows
(GELU, SiLU) into the GEMM's epilogue, saving one pass over the MLP's wide hidden activations.
`torch.compile`'s CPU freezing pass packs weights too (inductor's `mkldnn_fusion.py`: these
oneDNN operators for bf16 / fp16 and dynamic shapes, MKL's packed GEMM for fp32); here it is done
eagerly, with no compile time, which is what a one-off evaluation wants. oneDNN rather than MKL's
packed fp32 GEMM because on the AMD CPU measured, MKL's is no faster than its plain one (it is bit
for bit the same GEMM) while oneDNN's runs 10-50% faster per layer: on a 2-core AMD EPYC (Zen 4)
the ViT-B/32 image tower runs about 20% faster (benchmarks/zeroshot_eval.py, RESULTS.md).

The numbers are those of a different fp32 GEMM: equal to `nn.Linear`'s within rounding (a few
units in the last place, ~1e-6 relative), not bitwise. Inference only: the packed weight is a
copy that no optimizer updates and no autograd formula differentiates, so a packed layer refuses
to run where gradients are wanted, under autocast, or on other dtypes; and an opaque oneDNN tensor
cannot be copied, moved, converted, pickled or loaded into, so a packed layer refuses those too
(pack last, after `.to(...)`; save or convert the model before packing).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vlkit.layers.activations import gelu_tanh, quick_gelu
from vlkit.layers.mlp import QUICK_GELU_SCALE, Mlp

__all__ = ["PackedLinear", "pack_linear_layers", "packed_linear_available"]

# oneDNN epilogues for the activations an `Mlp` can hold: (attr, algorithm) of
# `torch.ops.mkldnn._linear_pointwise`. QuickGELU(h) = SiLU(1.702 h) / 1.702 (mlp.py), so it is a
# "swish" epilogue on a layer whose weight and bias are scaled by 1.702, the next layer's weight
# divided by it (oneDNN's swish takes no alpha through this operator).
_EPILOGUES = {torch.nn.functional.gelu: ("gelu", "none"), gelu_tanh: ("gelu", "tanh")}


def packed_linear_available() -> bool:
    """Whether this PyTorch build and CPU run oneDNN's packed fp32 GEMM (x86 with AVX2 or better).

    Elsewhere (ARM, builds without oneDNN) PyTorch's own kernels are kept: oneDNN's fp32 path
    there is not the faster one.
    """
    mkldnn = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available() or not hasattr(mkldnn, "_linear_pointwise"):
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


class PackedLinear(nn.Module):
    """`nn.Linear` (optionally followed by an activation) on a oneDNN-packed copy of its weight.

    With `keep_weights` the original `weight` and `bias` stay as frozen parameters, so
    `state_dict()`, `parameters()` and `repr` still describe the layer (the packed copy is extra
    memory: the layer's size once more); without, they are dropped (`vlkit benchmark` does so: the
    model is only evaluated) and `state_dict()` refuses the layer.
    """

    def __init__(
        self,
        linear: nn.Linear,
        epilogue: str = "none",
        algorithm: str = "",
        output_scale: float = 1.0,
        input_scale: float = 1.0,
        keep_weights: bool = True,
    ) -> None:
        """Packs `linear`; the packed layer computes `epilogue(output_scale * linear(x / input_scale))`
        (the scales fold QuickGELU's constant into the weights; `weight` keeps the original)."""
        super().__init__()
        if linear.weight.device.type != "cpu" or linear.weight.dtype != torch.float32:
            raise ValueError(
                f"PackedLinear packs fp32 CPU weights; this one is {linear.weight.dtype} on "
                f"{linear.weight.device}"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.epilogue, self.algorithm = epilogue, algorithm
        weight, bias = linear.weight.detach(), linear.bias
        bias = None if bias is None else bias.detach()
        self.weight = nn.Parameter(weight, requires_grad=False) if keep_weights else None
        self.bias = (
            nn.Parameter(bias, requires_grad=False) if keep_weights and bias is not None else None
        )
        self._packed_bias = None if bias is None else bias * output_scale
        # The batch-size hint only picks among equivalent blocked layouts; None lets oneDNN choose.
        scaled = weight * (output_scale / input_scale)
        self._packed_weight = torch.ops.mkldnn._reorder_linear_weight(scaled, None)
        self.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.training):
            raise RuntimeError(
                "PackedLinear is for inference: run it under torch.no_grad() / inference_mode() "
                "and in eval mode (its packed weight has no gradient)"
            )
        if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            raise RuntimeError(
                f"PackedLinear runs fp32 inputs without autocast (got {x.dtype}"
                f"{', autocast on' if torch.is_autocast_enabled('cpu') else ''}): pack only "
                "fp32 models evaluated in fp32"
            )
        return torch.ops.mkldnn._linear_pointwise(
            x, self._packed_weight, self._packed_bias, self.epilogue, [], self.algorithm
        )

    def extra_repr(self) -> str:
        epilogue = "" if self.epilogue == "none" else f", epilogue={self.epilogue}"
        return f"in_features={self.in_features}, out_features={self.out_features}{epilogue}"

    # The packed weight is an opaque oneDNN tensor: no storage to copy, move, convert or pickle.
    # Each refusal names the way out instead of PyTorch's "Cannot access storage" traceback.
    def _refuse(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"a packed model cannot be {what}: do it before `pack_linear_layers` (packing is the "
            "last step before inference)"
        )

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's signature)
        raise self._refuse("moved or converted (.to / .half / .cpu / ...)")

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        raise self._refuse("deep-copied")

    def __getstate__(self) -> dict:
        raise self._refuse("pickled (torch.save of the module)")

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise self._refuse("loaded into (load_state_dict)")

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        if self.weight is None:
            raise RuntimeError(
                f"{prefix or 'this layer'}: packed without its original weights "
                "(pack_linear_layers(keep_weights=False)), so it has no state_dict"
            )
        super()._save_to_state_dict(destination, prefix, keep_vars)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _pack_mlp(mlp: Mlp, keep: bool) -> int:
    """Packs both layers of an MLP, the activation fused into the first where oneDNN has it."""
    layers = (mlp.fc1, mlp.fc2)
    if not all(type(layer) is nn.Linear and _packable(layer) for layer in layers):
        return 0
    pack = partial(PackedLinear, keep_weights=keep)
    if mlp.quick_gelu or mlp.activation is quick_gelu:
        s = QUICK_GELU_SCALE
        mlp.fc1 = pack(mlp.fc1, "swish", "", output_scale=s)  # SiLU(1.702 h)
        mlp.fc2 = pack(mlp.fc2, input_scale=s)  # the / 1.702
    elif mlp.activation in _EPILOGUES:
        mlp.fc1 = pack(mlp.fc1, *_EPILOGUES[mlp.activation])
        mlp.fc2 = pack(mlp.fc2)
    else:  # an activation oneDNN has no epilogue for: packed GEMMs around it
        mlp.fc1, mlp.fc2 = pack(mlp.fc1), pack(mlp.fc2)
        return 2
    mlp.activation = _identity
    mlp.quick_gelu = False
    return 2


def pack_linear_layers(module: nn.Module, keep_weights: bool = True) -> int:
    """Replaces, in place, every fp32 CPU `nn.Linear` under `module` by a `PackedLinear`, fusing
    the activation of each `Mlp` into its first layer. Returns the number of layers packed (0
    where `packed_linear_available()` is false). The module is then for fp32 inference only and
    cannot be moved, converted, copied or loaded into (see `PackedLinear`).

    Args:
        keep_weights: Keep each layer's original weight (state_dict() and parameters() as
            before, the linear weights' memory twice); False frees them.
    """
    if not packed_linear_available():
        return 0
    packed = 0
    for parent in list(module.modules()):
        if isinstance(parent, Mlp):
            packed += _pack_mlp(parent, keep_weights)
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and _packable(child):
                setattr(parent, name, PackedLinear(child, keep_weights=keep_weights))
                packed += 1
    return packed


def _packable(linear: nn.Linear) -> bool:
    return linear.weight.device.type == "cpu" and linear.weight.dtype == torch.float32
