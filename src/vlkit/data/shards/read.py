"""Reading image-text shards: the shard list and its order, the raw samples of a shard, their parts.

Shards are read with `webdataset`'s tar iterators, without decoding anything; `sample_captions`
and `image_member` find a raw sample's captions and image member (decoded with
`vlkit.data.images.load_image_bytes`, exactly as image files are).
Bad data never raises here: a shard that cannot be opened or is truncated ends with an
`__error__` entry, and a bad sample gives a one-line reason (the sample contract of
`vlkit.data.datasets.image_text`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vlkit.data.datasets.image_text import valid_captions
from vlkit.data.shards.layout import IMAGE_EXTENSIONS, MANIFEST, one_line

__all__ = [
    "epoch_shards",
    "expand_urls",
    "image_member",
    "raw_samples",
    "sample_captions",
    "seed_from",
    "split_shards",
]


def expand_urls(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The shard list: a folder of shards, a brace pattern, or a list of paths / URLs.

    A folder is read through its `manifest.json` when it has one, else every `*.tar` in it,
    sorted. A string is expanded like webdataset does (`"a-{000..009}.tar"`, `::` joins
    several patterns).
    """
    if isinstance(urls, (str, os.PathLike)):
        text = os.fspath(urls)
        if os.path.isdir(text):
            folder = Path(text)
            manifest = folder / MANIFEST
            if manifest.is_file():
                shards = json.loads(manifest.read_text())["shards"]
                return [str(folder / shard["file"]) for shard in shards]
            found = sorted(str(path) for path in folder.glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in {folder}")
            return found
        # Optional at import time: only reading and writing shards need webdataset.
        from webdataset.shardlists import expand_urls as wds_expand

        return list(wds_expand(text))
    return [os.fspath(url) for url in urls]


def seed_from(*parts: object) -> int:
    """A 63-bit seed from any values; stable across processes and Python versions."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def epoch_shards(urls: Sequence[str], seed: int, epoch: int, shuffle: bool = True) -> list[str]:
    """The shard order of one epoch: a permutation seeded by (seed, epoch), same on all ranks."""
    shards = list(urls)
    if shuffle:
        random.Random(seed_from("shards", seed, epoch)).shuffle(shards)
    return shards


def split_shards(
    shards: Sequence[str], rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
) -> list[str]:
    """The shards of one (rank, DataLoader worker): every world_size-th, then every num_workers-th.

    Same split as `webdataset.split_by_node` followed by `webdataset.split_by_worker`, but with
    explicit arguments, so it does not depend on torch.distributed being initialised. Over all
    (rank, worker) pairs the results are disjoint and cover `shards`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not in [0, {num_workers})")
    return list(shards)[rank::world_size][worker::num_workers]


def raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """Undecoded samples of one shard; a shard error ends it with an `__error__` entry.

    Each sample maps member extensions to bytes, plus `__key__` and `__url__`.
    """
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    errors: list[str] = []

    def files(stream: Any) -> Iterator[dict[str, Any]]:
        iterator = tar_file_iterator(stream)
        while True:
            try:
                member = next(iterator)
            except StopIteration:
                return
            except Exception as error:  # tarfile raises several types for bad data
                errors.append(f"shard {url} is truncated or corrupt: {one_line(error)}")
                return
            member["__url__"] = url
            yield member

    def on_group_error(error: Exception) -> bool:
        # e.g. a duplicate member name: drop that member, keep reading.
        errors.append(f"shard {url}: {one_line(error.args[0] if error.args else error)}")
        return True

    try:
        stream = gopen(url, "rb")
    except Exception as error:
        yield {"__error__": f"cannot open shard {url}: {one_line(error)}", "__url__": url}
        return
    try:
        yield from group_by_keys(files(stream), handler=on_group_error)
    finally:
        stream.close()
    for error in errors:
        yield {"__error__": error, "__url__": url}


def sample_captions(raw: dict[str, Any]) -> tuple[int, list[str], str | None]:
    """`(index, captions, problem)` of one raw sample.

    The index is the dataset index stored in the sample's JSON, else its numeric key, else -1.
    The captions are all captions of the JSON, else the `.txt` caption; `problem` is None for a
    usable caption list, else why there is none.
    """
    key = raw["__key__"]
    meta: Any = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
    meta = meta if isinstance(meta, dict) else {}
    index = meta.get("index")
    if not isinstance(index, int):
        index = int(key) if key.isdigit() else -1
    if isinstance(meta.get("captions"), list):
        return index, *valid_captions(meta["captions"])
    if "txt" in raw:
        try:
            return index, *valid_captions(raw["txt"].decode("utf-8"))
        except UnicodeDecodeError:
            return index, [], "caption is not valid UTF-8"
    return index, [], "no caption (.txt) in the sample"


def image_member(raw: dict[str, Any]) -> str | None:
    """The extension of the sample's image member (`IMAGE_EXTENSIONS` order), or None."""
    return next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
