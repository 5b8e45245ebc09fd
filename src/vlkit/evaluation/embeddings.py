"""Unit-length CLIP embeddings of images (tensors, batches or files) and of texts.

The one image and text encoder loop that the evaluators, `vlkit eval`, `vlkit embed` and image
search share. Image files are decoded one batch at a time, so only one batch of pixels is in
memory however large the folder. Embeddings come back as float32 CPU tensors (N, D).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from vlkit.data.images import ImageLoadError, load_image

__all__ = [
    "encode_image_files",
    "encode_images",
    "encode_texts",
    "image_batches",
    "image_file_batches",
    "labelled_batches",
]

ImageTransform = Callable[[Image.Image], torch.Tensor]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def image_batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable:
    """Batches of a (N, 3, S, S) tensor (`batch_size` rows each), or an iterable as it is."""
    if isinstance(images, torch.Tensor):
        return (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    return images


def labelled_batches(data: Any, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of labelled image data.

    Args:
        data: A pair (images (N, 3, S, S), labels (N,)) of tensors, or an iterable of
            (images, labels) batches (a DataLoader).
        batch_size: Rows per batch for the pair of tensors.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data[0], torch.as_tensor(data[1])
        if labels.shape[0] != images.shape[0]:
            raise ValueError("labels are missing or do not match the number of images")
        return zip(image_batches(images, batch_size), labels.split(batch_size), strict=True)
    return data


def image_file_batches(
    paths: Sequence[str | os.PathLike[str]],
    transform: ImageTransform,
    batch_size: int = 64,
    labels: Sequence[int] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[Any]:
    """Preprocessed (B, 3, S, S) batches of image files, decoded lazily batch by batch.

    With `labels`, yields (images, labels) batches instead (the evaluators' labelled data).

    Args:
        on_skip: Without it, the first file that cannot be read raises. With it, such a file is
            left out of the batches (its label too) and `on_skip(path, reason)` is called, so a
            batch may hold fewer than `batch_size` images (or none: empty batches are dropped).

    Raises:
        ImageLoadError: Without `on_skip`, for the first file that cannot be read (the message
            names it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    for start in range(0, len(paths), batch_size):
        pixels: list[torch.Tensor] = []
        kept: list[int] = []
        for i, path in enumerate(paths[start : start + batch_size], start):
            try:
                pixels.append(transform(load_image(path, keep_mode=True)))
            except ImageLoadError as error:
                if on_skip is None:
                    raise
                on_skip(str(path), str(error))
                continue
            kept.append(i)
        if not pixels:
            continue
        batch = torch.stack(pixels)  # (B, 3, S, S)
        if labels is None:
            yield batch
        else:
            yield batch, torch.as_tensor([labels[i] for i in kept])


@torch.no_grad()
def encode_images(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Unit-length image embeddings (N, D), float32 on the CPU, of preprocessed image batches."""
    device = _device(model)
    chunks = [
        model.encode_image(pixels.to(device), normalize=True).float().cpu() for pixels in batches
    ]
    if not chunks:
        return torch.empty(0, model.config.embed_dim)
    return torch.cat(chunks)  # (N, D)


def encode_image_files(
    model: torch.nn.Module,
    transform: ImageTransform,
    paths: Sequence[str | os.PathLike[str]],
    batch_size: int = 64,
) -> torch.Tensor:
    """Unit-length image embeddings (N, D) on the CPU, float32, in the order of `paths`.

    Raises:
        ImageLoadError: For the first file that cannot be read (the message names it).
    """
    return encode_images(model, image_file_batches(paths, transform, batch_size))


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Unit-length text embeddings (N, D), float32 on the CPU."""
    device = _device(model)
    chunks = [
        model.encode_text(tokenizer(list(texts[start : start + batch_size])).to(device),
                          normalize=True).float().cpu()
        for start in range(0, len(texts), batch_size)
    ]  # fmt: skip
    if not chunks:
        return torch.empty(0, model.config.embed_dim)
    return torch.cat(chunks)  # (N, D)
