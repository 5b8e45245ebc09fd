"""The image-text shard layout that `write.py` writes and `read.py` streams.

Each sample is three tar members sharing a key: `{key}.jpg` (or `.png`, `.webp`, ...: the
ORIGINAL file's bytes, never re-encoded), `{key}.txt` (the first caption, UTF-8) and `{key}.json`
(`{"index": dataset index, "image": path as annotated, "captions": [all captions]}`). Keys are
the zero-padded dataset index, so they are unique across the shards of one dataset. Shards are
`shard-000000.tar`, `shard-000001.tar`, ... next to a `manifest.json` that records how many
samples each shard holds (used to plan a mid-epoch resume without reading the shards).
"""

from __future__ import annotations

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST", "SHARD_GLOB", "SHARD_NAME", "one_line"]

# Tar member extensions read as the sample's image, in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "bmp",
    "gif",
    "tif",
    "tiff",
    "ppm",
)
MANIFEST = "manifest.json"
SHARD_NAME = "shard-{:06d}.tar"
SHARD_GLOB = "shard-*.tar"


def one_line(text: object) -> str:
    """`text` with every whitespace run (newlines included) collapsed to one space."""
    return " ".join(str(text).split())
