"""Image-text pairs as WebDataset tar shards: writing them, and streaming them for training.

* layout.py: what a shard holds (members per sample, shard names, `manifest.json`).
* write.py: `write_shards` (a dataset or pairs), `write_annotated_shards` (a folder + annotation
  file; `vlkit data shard`).
* read.py: the shard list and its per-epoch order and split (`expand_urls`, `epoch_shards`,
  `split_shards`), raw samples and their decoding.
* stream.py: `WebDatasetImageText` (batches per rank and DataLoader worker, exact mid-epoch
  resume) and `webdataset_loader` (its DataLoader).
"""

from vlkit.data.shards.layout import IMAGE_EXTENSIONS, MANIFEST
from vlkit.data.shards.read import epoch_shards, expand_urls, split_shards
from vlkit.data.shards.stream import WebDatasetImageText, webdataset_loader
from vlkit.data.shards.write import write_annotated_shards, write_shards

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST",
    "WebDatasetImageText",
    "epoch_shards",
    "expand_urls",
    "split_shards",
    "webdataset_loader",
    "write_annotated_shards",
    "write_shards",
]
