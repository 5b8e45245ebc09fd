"""Embedding a folder's worth of image files for `vlkit embed` and `vlkit index`.

Unlike `vlkit.evaluation.embeddings.encode_image_files` (the evaluators' loop, where a bad file
must stop the run because it would change the benchmark), a folder of a user's photos usually
holds a few files that do not decode: a half-copied JPEG, a `.png` that is really HTML. Those
are skipped and reported (their path and why), so one bad file neither aborts the job nor
throws away the batches encoded before it; `strict=True` stops at the first instead. A tqdm
bar shows the images per second and the time left.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from vlkit.data.images import ImageLoadError, load_image

__all__ = ["ImageFileEmbeddings", "encode_image_paths"]

ImageTransform = Callable[[Image.Image], torch.Tensor]


@dataclass
class ImageFileEmbeddings:
    """What `encode_image_paths` returns.

    Attributes:
        embeddings: Unit-length rows (N, D), float32 on the CPU, one per file of `paths`.
        paths: The files that were encoded, in input order (bad files left out).
        skipped: (path, reason) of every file that could not be read, in input order.
    """

    embeddings: torch.Tensor
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@torch.no_grad()
def _encode(model: torch.nn.Module, pixels: list[torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    batch = torch.stack(pixels).to(device)  # (B, 3, S, S)
    return model.encode_image(batch, normalize=True).float().cpu()


def encode_image_paths(
    model: torch.nn.Module,
    transform: ImageTransform,
    paths: Sequence[str | os.PathLike[str]],
    batch_size: int = 64,
    strict: bool = False,
    progress: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
) -> ImageFileEmbeddings:
    """Unit-length embeddings of image files, skipping (or, `strict`, stopping at) bad files.

    Args:
        model: A CLIP-like model with `encode_image`.
        transform: The model's preprocessing (PIL image -> (3, S, S)).
        paths: Image files, in the order the rows should have.
        batch_size: Images per forward pass.
        strict: Raise at the first file that cannot be read instead of skipping it.
        progress: Show a tqdm bar (images, rate, ETA) on stderr.
        on_skip: Called with (path, reason) for each skipped file as it is met (the CLI prints a
            warning naming it).

    Raises:
        ImageLoadError: With `strict`, for the first unreadable file (the message names it).
        ValueError: `batch_size` below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    from tqdm.auto import tqdm

    chunks: list[torch.Tensor] = []
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    pending: list[torch.Tensor] = []
    with tqdm(total=len(paths), desc="encode images", unit="img", disable=not progress) as bar:
        for path in paths:
            try:
                pending.append(transform(load_image(path, keep_mode=True)))
            except ImageLoadError as error:
                if strict:
                    raise
                skipped.append((str(path), str(error)))
                if on_skip is not None:
                    on_skip(str(path), str(error))
                bar.update(1)
                continue
            kept.append(str(path))
            if len(pending) == batch_size:
                chunks.append(_encode(model, pending))
                bar.update(len(pending))
                pending = []
        if pending:
            chunks.append(_encode(model, pending))
            bar.update(len(pending))
    dim = model.config.embed_dim
    embeddings = torch.cat(chunks) if chunks else torch.empty(0, dim)
    return ImageFileEmbeddings(embeddings, kept, skipped)
