"""Reading torch.distributed.checkpoint (DCP) directories without running code from them.

DCP's `FileSystemReader.read_metadata` unpickles `.metadata` with plain `pickle.load`, and its
`DefaultLoadPlanner.load_bytes` reads every non-tensor entry (an optimizer's `param_groups`)
with `torch.load(weights_only=False)` (torch/distributed/checkpoint/filesystem.py,
default_planner.py): a crafted checkpoint could run anything on `--resume`. vlkit's rule is that
loading never executes code from a file, and torch offers no safe mode for DCP, so these two
subclasses replace exactly those two reads:

- `SafeFileSystemReader`: `.metadata` through an unpickler that builds only DCP's own metadata
  classes, `torch.Size`, dtypes, layouts and paths (what `dcp.save` writes there) and refuses
  any other global, naming it.
- `SafeLoadPlanner`: byte entries through `torch.load(weights_only=True)` (numbers, strings,
  lists, dicts, tuples, tensors: all an optimizer's param groups hold).
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from vlkit.hub import CheckpointError

__all__ = ["SafeFileSystemReader", "SafeLoadPlanner"]

_ALLOWED: dict[str, set[str] | None] = {
    # None: every class the module defines (DCP's metadata dataclasses and enums).
    "torch.distributed.checkpoint.metadata": None,
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # rebuilds torch.strided & co. from their names
    "torch": {"Size"},  # and the dtypes, checked below
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get(module, set())
        value = None
        if module in _ALLOWED:
            value = getattr(importlib.import_module(module), name, None)
        if module == "torch" and isinstance(value, torch.dtype):
            return value
        own = isinstance(value, type) and value.__module__ == dcp_metadata.__name__
        if module == dcp_metadata.__name__ and own:
            return value
        if allowed is not None and name in allowed and value is not None:
            return value
        raise CheckpointError(
            f"{self.source}: refusing to load {module}.{name} (a DCP metadata file holds only "
            "checkpoint metadata; this one was not written by torch.distributed.checkpoint)"
        )


class SafeFileSystemReader(FileSystemReader):
    """`FileSystemReader` whose metadata read builds only DCP's own metadata objects."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            try:
                metadata = _MetadataUnpickler(stream, str(path)).load()
            except CheckpointError:
                raise
            except Exception as error:  # a truncated or foreign file
                raise CheckpointError(f"{path}: not a DCP metadata file ({error})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: not a DCP metadata file")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` reading byte entries with `torch.load(weights_only=True)`; the
    placement is the parent's (default_planner.py `load_bytes`)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        fqn = read_item.dest_index.fqn
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj
