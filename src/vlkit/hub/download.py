"""Downloading a checkpoint from the Hugging Face hub: only the files vlkit reads.

Every hub-id entry point (`from_pretrained`, `get_tokenizer`, `get_transform`, `load_clip`,
`load_vlm`, `vlkit generate/zeroshot/... --model ORG/NAME`) comes through `download_checkpoint`,
which asks the hub for the repository's file list and downloads (through `huggingface_hub`, so
its cache, `HF_HOME`/`HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` apply):

- one set of weights, picked for the format the loader will read: for an open_clip repository
  (`open_clip_config.json`) `open_clip_model.safetensors`, else `open_clip_pytorch_model.bin`;
  otherwise `model.safetensors`, its shard index (`model.safetensors.index.json` + the shards
  it names), `pytorch_model.bin`, or `pytorch_model.bin.index.json` + shards, first found wins
  - safetensors whenever the repository has them, never two copies of the same weights
  (repositories often carry `.bin`, `.safetensors`, `flax_model.msgpack` and `tf_model.h5`);
- every top-level config / tokenizer / processor file: `*.json`, `*.txt`, `*.model`, `*.jinja`
  (`config.json`, `preprocessor_config.json`, `processor_config.json`, `chat_template.json`,
  `chat_template.jinja`, `generation_config.json`, `tokenizer.json`, `vocab.json`,
  `merges.txt`, `spiece.model`, ...); sub-folders (`onnx/`, `runs/`) are skipped.

Offline (`HF_HUB_OFFLINE=1`, or the hub unreachable) the same selection is made from the
listing `huggingface_hub` cached at download time, so a warm cache loads without the network.
Every failure is one `CheckpointError` line naming the repository and what to do.

Hub ids are `ORG/NAME`, optionally `hf-hub:ORG/NAME` (open_clip's spelling) and `@REVISION`
(a branch, tag or commit; as in `hf://` URIs).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vlkit.errors import CheckpointError

__all__ = [
    "HUB_PREFIX",
    "HubId",
    "download_checkpoint",
    "is_hub_id",
    "parse_hub_id",
    "select_files",
]

HUB_PREFIX = "hf-hub:"
# The weights each loader reads, in the order it looks for them (hub/loading.py, weights.py
# HF_WEIGHT_FILES, open_clip.py OPEN_CLIP_WEIGHT_FILES).
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
VLKIT_WEIGHTS = ("model.safetensors",)
HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
METADATA_SUFFIXES = (".json", ".txt", ".model", ".jinja")
_SHARD_INDEX = ".index.json"


@dataclass(frozen=True)
class HubId:
    """A parsed hub id: `repo_id` ("ORG/NAME") and an optional `revision`."""

    repo_id: str
    revision: str | None = None


def parse_hub_id(name: str) -> HubId | None:
    """The `HubId` that `name` spells (`ORG/NAME`, `hf-hub:ORG/NAME`, `...@REVISION`), or None
    when it cannot be one (a path: absolute, relative with `./`, `~`, or not exactly one `/`)."""
    name = str(name).strip()
    if name.startswith(HUB_PREFIX):
        name = name[len(HUB_PREFIX) :]
    repo_id, _, revision = name.partition("@")
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")) or "\\" in repo_id:
        return None
    if not all(repo_id.split("/")):
        return None
    return HubId(repo_id, revision or None)


def is_hub_id(name: str | Path) -> bool:
    """Whether `name` is not an existing path and is spelled like a hub id (see `parse_hub_id`)."""
    return not Path(str(name)).expanduser().exists() and parse_hub_id(str(name)) is not None


def select_files(files: Iterable[str], repo: str = "the repository") -> tuple[list[str], str]:
    """The files of a repository listing that vlkit reads: (metadata files, weights file).

    Raises:
        CheckpointError: The listing holds no weights file vlkit reads (both named).
    """
    top = sorted({f for f in files if "/" not in f})
    if "open_clip_config.json" in top:
        choices = OPEN_CLIP_WEIGHTS
    elif "vlkit_config.json" in top:
        choices = VLKIT_WEIGHTS
    else:
        choices = HF_WEIGHTS
    weights = next((name for name in choices if name in top), None)
    if weights is None:
        found = ", ".join(top[:12]) + (", ..." if len(top) > 12 else "") or "no files"
        raise CheckpointError(
            f"{repo} has no weights vlkit reads (looked for {', '.join(choices)}; it has "
            f"{found}); pass a checkpoint directory or another repository"
        )
    metadata = [f for f in top if f.endswith(METADATA_SUFFIXES) and not f.endswith(_SHARD_INDEX)]
    return metadata, weights


def download_checkpoint(
    name: str, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """Downloads (or finds in the cache) what vlkit needs of hub repository `name`.

    Args:
        name: A hub id (see `parse_hub_id`).
        revision: Branch, tag or commit; overrides an `@REVISION` in `name` (default "main").
        token: Passed to `huggingface_hub` (default: `HF_TOKEN` or the stored login).

    Returns:
        The snapshot directory in the hub cache, holding the selected files.

    Raises:
        CheckpointError: One line naming the repository and what to do: no such repository or
            revision, no weights, a missing file, an interrupted download, offline with a cold
            cache, hub unreachable.
    """
    hub = parse_hub_id(name)
    if hub is None:
        raise CheckpointError(f"{name!r} is neither a local path nor a hub id (ORG/NAME)")
    revision = revision or hub.revision
    prefix = f"{name!r} is not a local path and could not be downloaded from the Hugging Face hub"
    if revision and revision != hub.revision:
        prefix += f" (revision {revision!r})"
    try:
        return _download(hub.repo_id, revision, token)
    except CheckpointError as error:
        raise CheckpointError(f"{prefix}: {error}") from error
    except Exception as error:  # classified below; unknown ones still give one line
        raise CheckpointError(f"{prefix}: {_explain(error, hub.repo_id)}") from error


def _download(repo_id: str, revision: str | None, token: str | bool | None) -> Path:
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    if getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)():
        return _from_cache(repo_id, revision)
    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision)
    except Exception as error:
        if not _is_connection_error(error):
            raise
        return _from_cache(repo_id, revision, unreachable=error)
    listing = [sibling.rfilename for sibling in info.siblings or []]
    metadata, weights = select_files(listing, "the repository")
    files = [*metadata, weights]
    if weights.endswith(_SHARD_INDEX):
        # The shards are named only inside the index: fetch it first (pinned to the listed
        # commit), then the shards it names, as transformers' `get_checkpoint_shard_files` does.
        index = hf_hub_download(repo_id, weights, revision=info.sha, token=token)
        shards = _shards(Path(index))
        missing = [shard for shard in shards if shard not in listing]
        if missing:
            raise CheckpointError(
                f"{weights} names {', '.join(missing)}, which the repository does not have"
            )
        files += shards
    path = snapshot_download(
        repo_id, revision=revision, token=token, allow_patterns=[glob.escape(f) for f in files]
    )
    return Path(path)


def _from_cache(repo_id: str, revision: str | None, unreachable: Exception | None = None) -> Path:
    """The cached snapshot, checked against the same selection made from the cached listing."""
    from huggingface_hub import constants, snapshot_download

    if unreachable is None:
        reason = "HF_HUB_OFFLINE is set"
        todo = "unset HF_HUB_OFFLINE to download it, or pass a local directory"
    else:
        reason = f"the hub at {constants.ENDPOINT} cannot be reached ({_first_line(unreachable)})"
        todo = "check the network and HF_ENDPOINT, or pass a local directory"
    try:
        # allow_patterns=[]: only locate the snapshot of `revision`; what it must hold is checked
        # below against vlkit's selection, not against every file of the repository.
        snapshot = Path(
            snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=[])
        )
    except Exception as error:
        raise CheckpointError(
            f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}: {todo}"
        ) from error
    try:  # the listing huggingface_hub (>= 2) cached when it downloaded the snapshot
        from huggingface_hub import get_cached_repo_tree

        listing = [entry.path for entry in get_cached_repo_tree(repo_id, revision=revision)]
    except Exception:  # no such listing: a cache filled file by file (e.g. by transformers)
        listing = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    metadata, weights = select_files(listing, "the cached copy")
    files = [*metadata, weights]
    if weights.endswith(_SHARD_INDEX) and (snapshot / weights).is_file():
        files += _shards(snapshot / weights)
    absent = [name for name in files if not (snapshot / name).is_file()]
    if absent:
        raise CheckpointError(
            f"the cached copy in {snapshot} is incomplete (missing {', '.join(absent)}) and "
            f"{reason}: run it again with the network on to finish the download"
        )
    return snapshot


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"cannot read the shard index {index.name}: {error}") from error
    if not weight_map:
        raise CheckpointError(f"{index.name} has no 'weight_map'")
    return sorted(set(weight_map.values()))


def _is_connection_error(error: Exception) -> bool:
    """The hub could not be reached, or is down (5xx), as opposed to answering with an error.
    (Class names, not classes: they come from `huggingface_hub`'s HTTP client.)"""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ConnectError", "TimeoutException", "OfflineModeIsEnabled"}:
        return True
    status = getattr(getattr(error, "response", None), "status_code", None)
    return "HfHubHTTPError" in names and isinstance(status, int) and status >= 500


def _explain(error: Exception, repo_id: str) -> str:
    """One line for an error `huggingface_hub` (or its HTTP client) raised. Matched by class
    name, so that the hub's versions (its errors moved between modules) all read the same."""
    from huggingface_hub import constants

    names = {cls.__name__ for cls in type(error).__mro__}
    endpoint = constants.ENDPOINT
    if "GatedRepoError" in names:
        return (
            f"the repository is gated: accept its terms at {endpoint}/{repo_id} and log in "
            "(`hf auth login` or HF_TOKEN)"
        )
    if "RevisionNotFoundError" in names:
        return "no such revision: check the branch, tag or commit"
    if "RepositoryNotFoundError" in names:
        return (
            f"no such model repository on {endpoint} (or it is private: log in with "
            "`hf auth login` or set HF_TOKEN); check the id, or pass a local directory"
        )
    if names & {"RemoteEntryNotFoundError", "EntryNotFoundError"}:
        url = str(getattr(getattr(error, "response", None), "url", "") or "")
        missing = url.split("/resolve/", 1)[-1].split("/", 1)[-1] if "/resolve/" in url else ""
        return f"the hub does not have {missing or 'a file'} it lists; try again later"
    if "HFValidationError" in names:
        return f"not a valid repository id ({_first_line(error)})"
    if _is_connection_error(error):
        return f"cannot reach the hub at {endpoint} ({_first_line(error)}); check the network"
    if "HfHubHTTPError" in names:
        return f"the hub answered {_first_line(error)}; try again later"
    return (
        f"the download was interrupted ({type(error).__name__}: {_first_line(error)}); run it "
        "again (the files that arrived stay in the cache)"
    )


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
