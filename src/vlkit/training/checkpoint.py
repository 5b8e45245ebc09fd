"""Training checkpoints that lose nothing and never leave half-written state.

A checkpoint is a directory `step_XXXXXXXX/` with
- `model.safetensors` (+ `vlkit_config.json` for CLIP-like models, so `vlkit.from_pretrained`
  loads the checkpoint directly; any other module's weights are saved as its state dict),
- `training_state.pt`: optimizer, scheduler, grad-scaler and RNG states, the data position and
  counters, read back with `torch.load(weights_only=True)` (tensors and plain containers only).
It is written into a temporary directory, every file fsynced, then renamed into place; the
`latest` pointer file is replaced atomically afterwards. A crash at any moment leaves either the
previous checkpoint or the new one, never a torn one. Only the newest `keep_last` are kept.
"""

from __future__ import annotations

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


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    training_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Writes checkpoint `step` atomically and prunes all but the newest `keep_last`."""
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step:08d}."))
    try:
        if isinstance(model, CLIP):
            save_pretrained(model, staging, format="vlkit")
        else:
            write_safetensors(model.state_dict(), staging / "model.safetensors")
        torch.save(training_state, staging / STATE_FILE)
        _fsync_tree(staging)
        if final.exists():  # re-saving the same step (e.g. end of training right after a save)
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    atomic_write(root / LATEST, lambda tmp: tmp.write_text(final.name + "\n"))
    for old in sorted(root.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_resume(checkpoint_dir: str | Path, resume: str) -> Path:
    """The checkpoint directory `resume` names: "latest", a step directory, or a path."""
    root = Path(checkpoint_dir)
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
