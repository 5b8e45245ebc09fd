"""`ShapesDataset`: the synthetic scenes of `shape_scenes.py` as an image-caption dataset.

It serves scenes in the image-text sample contract of `vlkit.data.datasets.image_text`, and
`ShapesDataset.to_folder` writes PNGs plus JSONL/CSV annotations, so the folder, CSV and shard
pipelines can be demonstrated on it.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vlkit.data.datasets.image_text import SampleKey, parse_key
from vlkit.data.datasets.shape_scenes import (
    SceneObject,
    caption,
    generate_scene,
    questions,
    render_depth,
)

__all__ = ["ShapesDataset"]


class ShapesDataset(Dataset):
    """Synthetic scenes as an image-caption dataset (sample contract of `image_text`).

    Scene `i` is generated on the fly from `(seed, split, i)`, identically every time and in
    every process; "train" and "test" draw from different streams. With a key `(i, s)`, the
    caption phrasing and the augmentation come from `torch.Generator().manual_seed(s)`; with a
    plain index, the canonical caption is used and the transform draws from its default RNG.
    Generated samples are never skipped.

    Args:
        num_samples: Dataset length.
        image_size: Side of the rendered scenes (the transform then resizes to its own size).
        seed: Dataset seed.
        transform: Called as `transform(pil_image, generator=generator)`.
        tokenizer: Called as `tokenizer([caption])`, returning `(1, L)`.
        split: "train" or "test".
        max_objects: Most objects per scene.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 64,
        seed: int = 0,
        transform: Callable[..., torch.Tensor] | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        split: str = "train",
        max_objects: int = 3,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.transform = transform
        self.tokenizer = tokenizer
        self.split = split
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int, purpose: str) -> random.Random:
        # String seeds go through SHA-512 in `random.Random`, so they are stable across
        # processes (unlike hash()).
        return random.Random(f"vlkit-shapes:{self.split}:{self.seed}:{index}:{purpose}")

    def scene(self, index: int) -> tuple[Image.Image, list[SceneObject]]:
        """The rendered scene `index` and its objects."""
        index, _ = parse_key(index, len(self))
        return generate_scene(self._rng(index, "scene"), self.image_size, self.max_objects)

    def depth(self, index: int) -> np.ndarray:
        """The depth map of scene `index` (see `render_depth`)."""
        return render_depth(self.scene(index)[1], self.image_size)

    def questions(self, index: int) -> list[dict[str, str]]:
        """QA pairs of scene `index` (see `questions`)."""
        return questions(self.scene(index)[1])

    def captions(self, index: int, count: int = 5) -> list[str]:
        """Up to `count` distinct captions of scene `index`, the canonical one first."""
        objects = self.scene(index)[1]
        rng = self._rng(index, "captions")
        found = [caption(objects)]
        for _ in range(count * 10):
            if len(found) >= count:
                break
            text = caption(objects, rng)
            if text not in found:
                found.append(text)
        return found

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        if self.transform is None or self.tokenizer is None:
            raise RuntimeError("ShapesDataset needs a transform and a tokenizer to serve samples")
        index, seed = parse_key(key, len(self))
        image, objects = self.scene(index)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        if generator is None:
            text = caption(objects)
        else:
            # The phrasing RNG is seeded from the sample generator: all randomness of the
            # sample still comes from `seed` (caption first, then the crop).
            phrasing = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
            text = caption(objects, phrasing)
        pixels = self.transform(image, generator=generator)
        tokens = self.tokenizer([text])[0]
        return {"image": pixels, "text": tokens.to(torch.long), "index": index}

    def to_folder(
        self,
        out_dir: str | os.PathLike[str],
        n: int | None = None,
        captions_per_image: int = 5,
        depth: bool = True,
    ) -> dict[str, Path]:
        """Writes the first `n` scenes as PNG files with annotations.

        Layout: `images/000000.png`, ...; `depth/000000.png` (8-bit, value = depth * 255) when
        `depth`; `annotations.jsonl` with one line per image, `{"image": "images/....png",
        "caption": [captions], "objects": [...], "questions": [...], "depth": "depth/....png"}`;
        `captions.csv` with columns `image,caption` (the canonical caption). Both annotation
        files work with `ImageTextDataset(out_dir, ...)` and `vlkit data shard`.

        Args:
            out_dir: Output folder (created; existing files of the same names are replaced).
            n: Number of scenes; default all of the dataset.
            captions_per_image: Captions listed per image in the JSONL.
            depth: Also write depth maps.

        Returns:
            `{"root", "jsonl", "csv"}` paths.
        """
        n = len(self) if n is None else n
        if not 0 <= n <= len(self):
            raise ValueError(f"n must be in [0, {len(self)}], got {n}")
        root = Path(out_dir)
        (root / "images").mkdir(parents=True, exist_ok=True)
        if depth:
            (root / "depth").mkdir(exist_ok=True)
        jsonl, table = root / "annotations.jsonl", root / "captions.csv"
        with open(jsonl, "w", encoding="utf-8") as lines, open(table, "w", newline="") as rows:
            writer = csv.writer(rows)
            writer.writerow(["image", "caption"])
            for index in range(n):
                image, objects = self.scene(index)
                name = f"images/{index:06d}.png"
                image.save(root / name)
                texts = self.captions(index, captions_per_image)
                record: dict[str, Any] = {
                    "image": name,
                    "caption": texts,
                    "objects": [o.to_dict() for o in objects],
                    "questions": questions(objects),
                }
                if depth:
                    record["depth"] = f"depth/{index:06d}.png"
                    values = render_depth(objects, self.image_size)
                    Image.fromarray(np.rint(values * 255).astype(np.uint8)).save(
                        root / record["depth"]
                    )
                lines.write(json.dumps(record) + "\n")
                writer.writerow([name, texts[0]])
        return {"root": root, "jsonl": jsonl, "csv": table}
