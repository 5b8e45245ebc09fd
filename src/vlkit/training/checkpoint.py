"""Training checkpoints that lose nothing and never leave half-written state.

A checkpoint is a directory `step_XXXXXXXX/` with
- `model.safetensors` (+ `vlkit_config.json` for CLIP-like models, so `vlkit.from_pretrained`
  loads the checkpoint directly; any other module's weights are saved as its state dict),
- `training_state.pt`: optimizer, scheduler, grad-scaler and RNG states, the data position and
  counters, read back with `torch.load(weights_only=True)` (tensors and plain containers only),
- `task_state.safetensors` when the task keeps tensors of its own (`MemoryBankTask`: MoCo's
  queue, its pointer and the momentum key encoder), so that resuming continues exactly,
- `checkpoint.json`: the step and the id of the run that wrote it.
It is written into a temporary directory, every file fsynced, then renamed into place; the
`latest` pointer file is replaced atomically afterwards (write order: checkpoint, directory
fsync, pointer, directory fsync, pruning). A crash at any moment leaves `latest` naming a
complete checkpoint: the previous one or the new one, never a torn one.

Pruning keeps the newest `keep_last` checkpoints *of the current run* and deletes only those:
checkpoints another run left in the directory (another run id, or none recorded: written before
run ids existed) are never deleted. Without this, a fresh run into a directory holding an older,
longer run had its own checkpoints deleted as soon as written (the old run's steps were higher),
while `latest` pointed at them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vlkit.hub import CheckpointError, save_pretrained
from vlkit.hub.weights import atomic_write, read_weights, write_safetensors
from vlkit.models.clip import CLIP

STATE_FILE = "training_state.pt"
TASK_FILE = "task_state.safetensors"
META_FILE = "checkpoint.json"
REPLACED = ".replaced"  # suffix of a checkpoint moved aside while its step is re-saved
LATEST = "latest"


def capture_rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_directory(directory: Path) -> None:
    """Makes renames inside `directory` durable (POSIX: a rename is in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_directory(directory)


def checkpoint_run_id(path: str | Path) -> str | None:
    """The id of the run that wrote checkpoint `path` (None: not recorded or unreadable)."""
    try:
        return json.loads((Path(path) / META_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def save_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    training_state: dict[str, Any],
    keep_last: int = 2,
    run_id: str | None = None,
    task_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Writes checkpoint `step` atomically, points `latest` at it, then prunes.

    Args:
        checkpoint_dir: The run's checkpoint directory.
        step: The step, which names the checkpoint (`step_00000042`).
        model: Its weights are saved.
        training_state: Optimizer, scheduler, RNG states, position... (`Trainer.training_state`).
        keep_last: Checkpoints of this run to keep (0: all). The new one is always kept.
        run_id: The run's id, recorded in `checkpoint.json`; pruning deletes only checkpoints
            with this id (None: those written with None).
        task_state: The task's own tensors (`Task.state_dict()`), written to `TASK_FILE`.

    Returns:
        The checkpoint directory.
    """
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    _recover_replaced(root)
    for leftover in root.glob(".step_*"):  # staging of a process killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / f"step_{step:08d}"
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step:08d}."))
    replaced = None
    try:
        if isinstance(model, CLIP):
            save_pretrained(model, staging, format="vlkit")
        else:
            write_safetensors(model.state_dict(), staging / "model.safetensors")
        torch.save(training_state, staging / STATE_FILE)
        if task_state is not None:
            write_safetensors(task_state, staging / TASK_FILE)
        (staging / META_FILE).write_text(json.dumps({"step": step, "run_id": run_id}) + "\n")
        _fsync_tree(staging)
        if final.exists():  # re-saving a step: move the old one aside (a directory can't be
            replaced = root / f".{final.name}{REPLACED}"  # renamed over a non-empty one)
            os.replace(final, replaced)
        os.replace(staging, final)
        _fsync_directory(root)
    finally:
        if replaced is not None:
            _recover_replaced(root)  # the new one never landed: the old one goes back
            shutil.rmtree(replaced, ignore_errors=True)
        if staging.exists():
            shutil.rmtree(staging)
    atomic_write(root / LATEST, lambda tmp: tmp.write_text(final.name + "\n"))
    _fsync_directory(root)
    _prune(root, final, run_id, keep_last)
    return final


def _recover_replaced(root: Path) -> None:
    """Puts back a checkpoint moved aside for re-saving whose replacement never landed (a crash
    between the two renames), so that `latest` finds it."""
    for moved in root.glob(f".step_*{REPLACED}"):
        final = root / moved.name[1 : -len(REPLACED)]
        if not final.exists():
            os.replace(moved, final)


def _prune(root: Path, newest: Path, run_id: str | None, keep_last: int) -> None:
    """Deletes this run's checkpoints older than `newest` beyond the `keep_last` newest.

    Checkpoints of other runs are never deleted, nor this run's checkpoints of later steps (left
    by the branch a resume from an earlier checkpoint abandoned; they are replaced step by step).
    """
    if keep_last <= 0:
        return
    older = [path for path in sorted(root.glob("step_*"))
             if path.name < newest.name and checkpoint_run_id(path) == run_id
             and (path / META_FILE).is_file()]  # fmt: skip
    for old in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(checkpoint_dir: str | Path, resume: str) -> Path:
    """The checkpoint directory `resume` names: "latest", a step directory, or a path."""
    root = Path(checkpoint_dir)
    if root.is_dir():
        _recover_replaced(root)
    if resume == "latest":
        pointer = root / LATEST
        if not pointer.is_file():
            raise CheckpointError(f"resume='latest': no checkpoint in {root} (no '{LATEST}' file)")
        path = root / pointer.read_text().strip()
    else:
        path = Path(resume)
        if not path.is_dir() and (root / resume).is_dir():
            path = root / resume
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (no {STATE_FILE})")
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights (a state dict) and the training state saved by `save_checkpoint`."""
    path = Path(path)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {path / STATE_FILE}: {error}") from error
    return read_weights(path / "model.safetensors"), state


def load_task_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The task's tensors saved with checkpoint `path` (`save_checkpoint(task_state=...)`).

    Raises:
        CheckpointError: The checkpoint has none (written by a task without state, e.g. a
            loss.kind=clip run resumed as memory_bank).
    """
    file = Path(path) / TASK_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no {TASK_FILE}: it was written by a run whose task keeps no state "
            "(resume it with the loss it was trained with)"
        )
    return read_weights(file)
