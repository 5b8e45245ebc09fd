"""Reading and writing weight files without executing code from them.

safetensors files are plain tensors; `.bin`/`.pt` pickles are read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlkit.errors import CheckpointError

# The weights of a transformers checkpoint directory, in the order `from_pretrained` looks for
# them (safetensors first; an `.index.json` names the shards of a split file).
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# The `torch.nn.init` functions modules call to draw their initial weights (nn.Linear, Conv2d,
# LayerNorm and Embedding's `reset_parameters`, and vlkit's own `_init_*` methods).
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
    "sparse_",
)  # fmt: skip


@contextmanager
def skip_weight_init() -> Iterator[None]:
    """Builds models without drawing their random initial weights, for a model that a strict
    `load_into` fills next: the draws cost more than reading the checkpoint (0.7 s of a 1 s
    ViT-B/32 load on a 2-core CPU) and the load overwrites every parameter and persistent buffer.

    transformers' `no_init_weights` does the same. Non-persistent buffers (rotary frequencies,
    sin-cos tables) are computed, not drawn, and are unaffected. Not thread-safe: another thread
    building a model meanwhile would skip its initialisation too.
    """

    def skip(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return tensor

    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    try:
        for name in saved:
            setattr(nn.init, name, skip)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Loads a `.safetensors`, `.bin`, `.pt` or `.pth` file, or a sharded `*.index.json`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{path}: no 'weight_map' in the shard index")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_weights(path.parent / shard))
        return state
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own message advises `weights_only=False`, i.e. running the file's code: not
        # advice to pass on. Name what was refused and the safe ways forward instead.
        blocked = _blocked_global(str(error))
        raise CheckpointError(
            f"{path}: refused to load: the pickle holds more than tensors{blocked}, and "
            "unpickling it could run code from the file. Use a .safetensors copy of the weights, "
            "or convert this file to safetensors yourself only if you trust where it came from"
        ) from error
    except Exception as error:  # corrupt or truncated file
        raise CheckpointError(f"cannot read weights from {path}: {_first_line(error)}") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a training checkpoint (open_clip's `epoch_N.pt`)
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(loaded).__name__})")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def _blocked_global(message: str) -> str:
    """' (posix.system)' from torch's "unsupported GLOBAL posix.system ..." message, or ''."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return f" ({match.group(1)})" if match else ""


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def find_weights(directory: Path, names: Iterable[str]) -> Path:
    """The first of `names` that exists in `directory`, or a CheckpointError listing them."""
    names = list(names)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"no weights in {directory}: looked for {', '.join(names)}")


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Calls `write(tmp_path)`, fsyncs, then renames over `path`, so readers never see half a file.

    The file gets the permissions a plain `open(path, "w")` would give it (0644 under the usual
    umask 022): `mkstemp` creates its file 0600, which made saved models unreadable to anyone
    else sharing them (issue 18).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # After `write`: some writers (safetensors) replace the file rather than fill it.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_safetensors(
    state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None
) -> None:
    # A tied weight (an LM head sharing the embedding) is written under each of its names:
    # safetensors refuses tensors that share memory, and a checkpoint is loaded by name.
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().contiguous().cpu()
        storage = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if storage in storages else tensor
        storages.add(storage)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_json(data: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def state_dict_problems(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], against: str
) -> list[str]:
    """Every way `found` (a checkpoint) differs from `expected` in keys and shapes.

    Args:
        expected: The state dict the checkpoint must match.
        found: The checkpoint's state dict.
        against: What `expected` comes from ("model", "config"), named in shape problems.

    Returns:
        One entry each for missing, unexpected and mis-shaped keys (only those that occur);
        empty when the two match.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = [
        f"{key}: checkpoint {tuple(found[key].shape)} vs {against} {tuple(expected[key].shape)}"
        for key in sorted(set(found) & set(expected))
        if found[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mis_shaped:
        problems.append(f"mis-shaped keys [{'; '.join(mis_shaped)}]")
    return problems


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copies `state` into `model`, raising one error that names every missing, unexpected or
    mis-shaped key (instead of PyTorch's first-failure traceback)."""
    problems = state_dict_problems(model.state_dict(), state, "model")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
