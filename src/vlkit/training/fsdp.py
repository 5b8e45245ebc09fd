"""FSDP2: shard a model's parameters, gradients and optimizer state over the data-parallel ranks.

    model = shard_model(model, device, mixed_precision="bf16")   # before building the optimizer
    optimizer = create_optimizer(model, ...)                     # sees the sharded parameters

For models that do not fit one GPU (a LLaVA-7B-class model in fp32 with AdamW needs ~112 GB):
each rank keeps 1/world of every parameter as a `DTensor` shard. `fully_shard` is applied to every
transformer layer first (decoder layers, vision-encoder layers, Q-Former blocks: the elements of
the `nn.ModuleList`s named `layers` / `blocks`), then to the root, which keeps what is left (the
embeddings, final norm, LM head, connector). A layer's parameters are all-gathered just before its
forward and freed right after (`reshard_after_forward`), so the peak memory is the shards plus
about one full layer; this is the wrapping torchtitan uses for Llama (torchtitan
`parallelize_llama.apply_fsdp`, the FSDP2 tutorial at pytorch.org/tutorials/intermediate/FSDP_tutorial).

Gradients: FSDP2 reduce-scatters every layer's gradients in the backward pass, averaged over the
ranks (gradient divide factor = world size). That is the same reduction as the trainer's manual
all-reduce under `strategy=ddp`, so the SFT task's token weighting (each rank's loss = its summed
cross-entropy / global supervised tokens * world size, `training/sft_task.py`) is exact under
both strategies, and the trainer must not all-reduce again.

Runs on CUDA/NCCL and, for tests, on CPU/gloo (checked on torch 2.14: forward, backward,
`clip_grad_norm_` over DTensor gradients, AdamW, `torch.distributed.checkpoint`). Without an
initialised process group there is nothing to shard over: `shard_model` returns the model as is.

Every rank must issue the same collectives: the SFT task runs the same number of micro-batches
on every rank and the vision path on a blank image where a rank has no images but another has
(`fsdp_micro_batches.synchronized_micro_batches`).

Limits: a model's root parameters are only gathered when its `forward` (or a method registered
with `forward_methods`) runs; code that reaches into a sharded layer's submodules directly, or a
decoder `generate` loop, needs the FSDP unshard/reshard calls of its own (see `gathered`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

# Attribute names of the module lists whose elements are transformer layers in vlkit's models:
# DecoderModel.layers (models/decoder/llama.py, opt.py), SmolVLMEncoder.layers, the Q-Former's
# layers, the ViT/text `Transformer.blocks` (layers/transformer.py), early fusion's blocks.
LAYER_LISTS = ("layers", "blocks")

# Methods that callers use instead of `forward` (the contrastive task's towers): registered so
# that the root's parameters are gathered for them too.
FORWARD_METHODS = ("encode_image", "encode_text")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def fsdp_available() -> bool:
    """Whether this torch has FSDP2 (`torch.distributed.fsdp.fully_shard`, public since 2.6)."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return dist.is_available()


def is_sharded(model: nn.Module) -> bool:
    """Whether `fully_shard` was applied to `model` (its parameters are DTensor shards)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2 shards nothing
        return False
    return isinstance(model, FSDPModule)


def transformer_layers(model: nn.Module, names: Sequence[str] = LAYER_LISTS) -> list[nn.Module]:
    """The modules `shard_model` shards one by one: elements of `nn.ModuleList`s named `names`.

    Elements that are themselves containers (a `ModuleList` of sub-blocks, as in the Perceiver
    resampler) are left to their parent: a container has no `forward`, so FSDP's hooks on it
    would never gather its parameters. Elements without parameters are skipped.
    """
    found: list[nn.Module] = []
    for module in model.modules():
        for name in names:
            children = getattr(module, name, None)
            if not isinstance(children, nn.ModuleList):
                continue
            for child in children:
                if isinstance(child, nn.ModuleList | nn.ModuleDict):
                    continue
                if any(True for _ in child.parameters()):
                    found.append(child)
    return found


def mixed_precision_policy(precision: str | torch.dtype | None):
    """FSDP2's `MixedPrecisionPolicy`: parameters gathered in `precision`, gradients reduced in
    fp32 (reducing bf16 gradients over many ranks loses bits; torchtitan's default too).

    None or "fp32": no policy (full precision throughout).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = _DTYPES.get(precision, precision) if isinstance(precision, str) else precision
    if isinstance(precision, str) and precision not in _DTYPES:
        raise ValueError(f"mixed_precision {precision!r}: use one of {', '.join(_DTYPES)}")
    if dtype is None or dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard_model(
    model: nn.Module,
    device: torch.device | str | None = None,
    *,
    mixed_precision: str | torch.dtype | None = None,
    reshard_after_forward: bool = True,
    layers: Iterable[nn.Module] | None = None,
    forward_methods: Sequence[str] = FORWARD_METHODS,
) -> nn.Module:
    """Applies FSDP2's `fully_shard` to each transformer layer, then to the root.

    Call it before building the optimizer: sharding replaces every `nn.Parameter` by a DTensor
    one. Every rank must call it with the same model (same init or the same loaded weights): each
    keeps its slice of the full tensor it holds.

    Args:
        model: The model, on CPU or already on `device`. FSDP moves each layer's slice to the
            mesh's device as it shards it, so the full model never sits on the GPU at once.
        device: The mesh device type comes from it ("cuda" -> NCCL ranks, "cpu" -> gloo).
            None: CUDA when available.
        mixed_precision: "bf16" / "fp16" / a dtype: the dtype of gathered parameters (compute),
            with fp32 gradient reduction; None / "fp32": full precision.
        reshard_after_forward: Free gathered layers after forward (ZeRO-3; gathered again in
            backward). False keeps them until the backward (ZeRO-2-like: more memory, less
            communication). The root is never resharded after forward (its parameters are
            needed at once by the backward).
        layers: The modules to shard separately; default `transformer_layers(model)`.
        forward_methods: Root methods to gather parameters for, besides `forward`, when the
            model has them.

    Returns:
        The model itself (now an `FSDPModule`), or moved to `device` unchanged when no process
        group is initialised.

    Raises:
        RuntimeError: This torch has no FSDP2.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not (dist.is_available() and dist.is_initialized()):
        log.info("strategy fsdp without a process group: nothing to shard, training as is")
        return model.to(device)
    if not fsdp_available():
        raise RuntimeError(
            f"strategy fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6), "
            f"this is torch {torch.__version__}"
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision_policy(mixed_precision)
    chosen = transformer_layers(model) if layers is None else list(layers)
    # Innermost first: FSDP2 shards bottom-up (a parent sharded first would claim the
    # parameters of the layers nested in it).
    for layer in reversed(chosen):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    for name in forward_methods:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    log.info("FSDP2: %d layers + root sharded over %d ranks (%s)", len(chosen),
             dist.get_world_size(), device.type)  # fmt: skip
    return model


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Every FSDP module of `model` unsharded (full parameters) inside the block, resharded after.

    For code that uses the parameters outside `forward`, such as periodic generation during an
    FSDP run: `with gathered(model): model.generate(...)`. Needs the full model's memory.
    A no-op for an unsharded model.
    """
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()


def full_state_dict(model: nn.Module, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """The whole model's state dict as plain tensors, on rank 0 (other ranks get `{}`).

    What `save_pretrained` needs at the end of an FSDP run: load it into an unsharded copy of the
    model (`vlkit.hub.weights.load_into`) on rank 0 and save that. Every rank must call this (it
    all-gathers). For an unsharded model it is `model.state_dict()` (on every rank).
    """
    if not is_sharded(model):
        return {k: v.detach().cpu() if cpu_offload else v for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)
    return get_model_state_dict(model, options=options)


__all__ = [
    "LAYER_LISTS",
    "fsdp_available",
    "full_state_dict",
    "gathered",
    "is_sharded",
    "mixed_precision_policy",
    "shard_model",
    "transformer_layers",
]
