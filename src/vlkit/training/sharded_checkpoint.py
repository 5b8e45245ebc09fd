"""Sharded training checkpoints: torch.distributed.checkpoint (DCP) for FSDP runs.

A sharded checkpoint is a directory `step_XXXXXXXX/`, next to the plain ones of
`training/checkpoint.py` and resumed the same way (`latest`, a step name or a path), with
- `dcp/`: the model and optimizer state written by every rank in parallel through
  `torch.distributed.checkpoint.save` (each rank writes its own shards, `__<rank>_0.distcp`, plus
  one `.metadata` naming every tensor's global shape and where its pieces are),
- `training_state.pt`: scheduler, grad-scaler and RNG states, data position and counters (rank 0;
  the optimizer is in `dcp/`),
- `checkpoint.json`: step, run id, `"format": "dcp"` and the world size that wrote it.

The state goes through `torch.distributed.checkpoint.state_dict.get_state_dict` /
`set_state_dict`, which key the model and the optimizer state by parameter name (not by the
optimizer's parameter order) with the *global* tensor shapes, so DCP's load reshards: a
checkpoint written by 2 processes loads on 1, 4 or 8, sharded or not (torch docs,
"Distributed Checkpoint - torch.distributed.checkpoint": load-time resharding).

Atomic as the plain checkpoints: every rank writes into a staging directory that rank 0 created
(and broadcast), then rank 0 writes the training state, fsyncs the tree, renames the staging
directory into place, replaces `latest` and prunes (the helpers of `training/checkpoint.py`), so a
crash leaves `latest` naming a complete checkpoint.

`consolidated_state_dict(path)` reads the model's full weights from a sharded checkpoint on one
process without the model (shapes and dtypes come from the metadata); `export_safetensors`
writes them as a plain `model.safetensors` for `load_into` + `save_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vlkit.hub import CheckpointError
from vlkit.hub.weights import atomic_write, write_safetensors
from vlkit.training.checkpoint import (
    LATEST,
    META_FILE,
    REPLACED,
    STATE_FILE,
    _fsync_directory,
    _prune,
    _recover_replaced,
)
from vlkit.training.safe_dcp import SafeFileSystemReader, SafeLoadPlanner

DCP_DIR = "dcp"
FORMAT = "dcp"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether checkpoint directory `path` is a DCP one (written by `save_sharded_checkpoint`)."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def _fsync_tree(directory: Path) -> None:
    """fsyncs every file under `directory` and every directory (DCP writes a subdirectory)."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(Path(root))


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """{"model": ..., "optimizer": ...} keyed by parameter name, DTensor shards under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_sharded_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    training_state: dict[str, Any],
    keep_last: int = 2,
    run_id: str | None = None,
) -> Path:
    """Writes checkpoint `step` from every rank, atomically; points `latest` at it; prunes.

    Every rank of the process group must call it (collective), with the same arguments; without a
    process group it writes a one-process checkpoint of the same format.

    Args:
        checkpoint_dir: The run's checkpoint directory (on storage every rank sees).
        step: Names the checkpoint (`step_00000042`).
        model: A sharded (`fully_shard`) or plain model.
        optimizer: Its state is saved sharded along with the model (None: weights only).
        training_state: `Trainer.training_state()`; its "optimizer" entry is dropped (the
            optimizer is saved through DCP), the rest is written by rank 0.
        keep_last, run_id: As `training.checkpoint.save_checkpoint`.

    Returns:
        The checkpoint directory.
    """
    import torch.distributed.checkpoint as dcp

    root = Path(checkpoint_dir)
    final = root / f"step_{step:08d}"
    staging: list[str | None] = [None]
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        _recover_replaced(root)
        for leftover in root.glob(".step_*"):  # staging of a run killed mid-write
            if not leftover.name.endswith(REPLACED):
                shutil.rmtree(leftover, ignore_errors=True)
        staging[0] = tempfile.mkdtemp(dir=root, prefix=f".step_{step:08d}.")
    if _distributed():
        dist.broadcast_object_list(staging, src=0)
    stage = Path(str(staging[0]))
    # Collective: each rank writes its shards; the coordinator (rank 0) writes `.metadata` last.
    dcp.save(_state(model, optimizer), checkpoint_id=str(stage / DCP_DIR))
    _barrier()
    if _rank() == 0:
        _publish(root, stage, final, step, training_state, keep_last, run_id)
    _barrier()
    return final


def _publish(
    root: Path,
    stage: Path,
    final: Path,
    step: int,
    training_state: dict[str, Any],
    keep_last: int,
    run_id: str | None,
) -> None:
    """Rank 0: the training state and metadata, then the renames (as `save_checkpoint`)."""
    replaced = None
    try:
        state = {k: v for k, v in training_state.items() if k != "optimizer"}
        torch.save(state, stage / STATE_FILE)
        world = dist.get_world_size() if _distributed() else 1
        meta = {"step": step, "run_id": run_id, "format": FORMAT, "world_size": world}
        (stage / META_FILE).write_text(json.dumps(meta) + "\n")
        _fsync_tree(stage)
        if final.exists():  # re-saving a step: move the old one aside first
            replaced = root / f".{final.name}{REPLACED}"
            os.replace(final, replaced)
        os.replace(stage, final)
        _fsync_directory(root)
    finally:
        if replaced is not None:
            _recover_replaced(root)
            shutil.rmtree(replaced, ignore_errors=True)
        if stage.exists():
            shutil.rmtree(stage)
    atomic_write(root / LATEST, lambda tmp: tmp.write_text(final.name + "\n"))
    _fsync_directory(root)
    _prune(root, final, run_id, keep_last)


def load_sharded_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Loads a sharded checkpoint into `model` (and `optimizer`), on any number of processes.

    Every rank calls it (collective when a process group exists). The model may be sharded over
    another number of ranks than the writer's, or not sharded at all: DCP reads each rank's
    slice of the global tensors.

    Returns:
        The training state saved next to the shards (`training_state.pt`).

    Raises:
        CheckpointError: `path` is not a sharded checkpoint, or does not match the model (a
            missing or mis-shaped tensor is named).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    # The destination tensors (this rank's slices); a fresh optimizer's state is created by a
    # zero-lr step inside get_state_dict, then overwritten.
    state = _state(model, optimizer)
    unexpected = sorted(set(_saved_model_keys(path)) - set(state["model"]))
    if unexpected:  # DCP loads what the model asks for and would ignore these silently
        raise CheckpointError(
            f"{path} does not match the model: unexpected keys "
            f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
        )
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path / DCP_DIR)),
                 planner=SafeLoadPlanner())  # fmt: skip
    except (Exception, CheckpointException) as error:  # (a BaseException: each rank's failure)
        raise CheckpointError(f"{path} does not match the model: {_last_line(error)}") from error
    set_state_dict(
        model,
        optimizer if optimizer is not None else [],
        model_state_dict=state["model"],
        optim_state_dict=state.get("optimizer", {}),
    )
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return {}
    except Exception as error:
        raise CheckpointError(f"cannot read {path / STATE_FILE}: {error}") from error


def _last_line(error: BaseException) -> str:
    """The cause's own message: the last line of DCP's per-rank tracebacks."""
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:500]


def _saved_model_keys(path: str | Path) -> dict[str, Any]:
    """The model's keys in a sharded checkpoint's metadata -> their storage metadata."""

    metadata = SafeFileSystemReader(str(Path(path) / DCP_DIR)).read_metadata()
    return {key[len("model.") :]: item for key, item in metadata.state_dict_metadata.items()
            if key.startswith("model.")}  # fmt: skip


def consolidated_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model's full weights from a sharded checkpoint, read on one process without a model.

    The tensors' global shapes and dtypes come from the checkpoint's metadata; DCP assembles each
    from the shards of all writers. Call it on one process (outside a process group, or on one
    rank only if the group is not used meanwhile: the read is local).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    weights = {key: torch.empty(item.size, dtype=item.properties.dtype)
               for key, item in _saved_model_keys(path).items()
               if isinstance(item, TensorStorageMetadata)}  # fmt: skip
    dcp.load({"model": weights}, storage_reader=SafeFileSystemReader(str(Path(path) / DCP_DIR)),
             planner=SafeLoadPlanner(), no_dist=True)  # fmt: skip
    return weights


def export_safetensors(path: str | Path, out_file: str | Path) -> Path:
    """Writes a sharded checkpoint's model weights as one plain `model.safetensors` file.

    The result loads like a plain checkpoint's weights: `load_into(model, read_weights(file))`,
    then `model.save_pretrained(dir)` for transformers.
    """
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(consolidated_state_dict(path), out)
    return out


__all__ = [
    "consolidated_state_dict",
    "export_safetensors",
    "is_sharded_checkpoint",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
]
