"""CLIP inference on files: rank labels for images (`zeroshot`), write embeddings (`embed`).

The library side of `vlkit zeroshot` and `vlkit embed`: they load a checkpoint, encode with the
shared encoders of `vlkit.evaluation.embeddings` and return plain Python / numpy values. Bad
input raises ValueError with a one-line message naming the parameter it came from (or the name
the caller gives in `what`: the CLI passes its flags).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from vlkit.data.images import IMAGE_SUFFIXES
from vlkit.distributed import resolve_device
from vlkit.evaluation.embeddings import encode_image_files, encode_texts
from vlkit.evaluation.zero_shot import (
    build_zero_shot_classifier,
    label_probabilities,
    load_templates,
)
from vlkit.hub.clip_checkpoint import load_clip
from vlkit.inference.any_resolution import at_image_size
from vlkit.inference.image_files import encode_image_paths

__all__ = ["embed", "embeddings_path", "zeroshot"]


def zeroshot(
    images: Sequence[str | os.PathLike[str]],
    model_path: str,
    labels: Sequence[str],
    templates: str = "none",
    top: int | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    temperature: float | None = None,
) -> list[dict]:
    """Ranks `labels` for each image.

    Probabilities: softmax over the labels of the scaled similarities for CLIP; for SigLIP, the
    per-label sigmoid of its logits (the probability the model was trained to output, as
    transformers' zero-shot pipeline reports it).

    Args:
        top: Keep the `top` best labels (at least 1); None: all of them.
        device: "cpu", "cuda", "auto", ... (checked by `resolve_device`).
        image_size: Encode images at this size instead of the checkpoint's, with interpolated
            position embeddings (ViT towers; `vlkit.inference.any_resolution`).
        temperature: Probabilities from cos / temperature instead of the model's learned scale
            (> 0; the ranking stays the same); None: the model's.

    Returns:
        One {"image": path, "ranking": [{"label", "probability"}, ...]} per image, best first,
        the `top` best labels only when given.
    """
    if not labels:
        raise ValueError("labels is empty: give at least one class name")
    if top is not None and top < 1:
        raise ValueError(f"top={top}: must be at least 1 (None: every label)")
    target = resolve_device(device)
    model, tokenizer, transform = load_clip(model_path)
    if image_size is not None:
        transform = at_image_size(model, image_size)
    model = model.to(target)
    classifier = build_zero_shot_classifier(model, tokenizer, labels, load_templates(templates))
    # One image per forward pass, as a single-image query would be encoded.
    embeddings = encode_image_files(model, transform, images, batch_size=1)  # (N, D)
    results = []
    for path, image in zip(images, embeddings, strict=True):
        probs = label_probabilities(model, image[None], classifier, temperature)[0]
        order = probs.argsort(descending=True)[:top]
        ranked = [{"label": labels[i], "probability": round(probs[i].item(), 6)} for i in order]
        results.append({"image": str(path), "ranking": ranked})
    return results


def _image_files(images_dir: str, what: str) -> list[str]:
    directory = Path(images_dir)
    if not directory.exists():
        raise FileNotFoundError(f"{what} {directory}: no such directory")
    if not directory.is_dir():
        raise ValueError(f"{what} {directory}: is a file, expected a directory of images")
    names = sorted(str(p) for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise ValueError(
            f"{what} {directory}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return names


def _text_lines(texts_file: str, what: str) -> list[str]:
    path = Path(texts_file)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory, expected a text file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    names = [line for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{what} {path}: no non-empty lines")
    return names


def embeddings_path(out: str | os.PathLike[str]) -> Path:
    """The .npy file `embed(out=...)` writes: `out` itself when it ends in .npy, else `out.npy`
    (numpy's rule). The inputs' names go to the same path with the suffix .json."""
    path = Path(out)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def embed(
    model_path: str,
    out: str,
    images_dir: str | None = None,
    texts_file: str | None = None,
    what: tuple[str, str] = ("images_dir", "texts_file"),
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    strict: bool = False,
    progress: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
    image_size: int | None = None,
) -> np.ndarray:
    """Writes L2-normalised embeddings (N, D) as .npy and the inputs' names next to it (.json).

    Image files that cannot be read are skipped (`on_skip` hears of each) and left out of both
    files, so the .json always names the row each embedding belongs to.

    Args:
        model_path: A CLIP-like checkpoint directory, file or hub id.
        out: The .npy file to write (`embeddings_path(out)`: ".npy" is added when missing; its
            .json sibling lists the inputs in row order).
        images_dir: Embed the image files directly in this folder (not recursive) ...
        texts_file: ... or the non-empty lines of this text file.
        what: How the caller names `images_dir` and `texts_file` in messages (the CLI passes
            its flags, "--images" and "--texts").
        device: "cpu", "cuda", "auto", ... (checked by `resolve_device`).
        batch_size: Images per forward pass.
        strict: Stop at the first unreadable image instead of skipping it.
        progress: Show a tqdm bar while images are encoded.
        on_skip: Called with (path, reason) for each unreadable image that is skipped.
        image_size: Encode images at this size instead of the checkpoint's, with interpolated
            position embeddings (ViT towers; `vlkit.inference.any_resolution`).

    Raises:
        ValueError: Bad arguments, no input, or no image that could be read (ImageLoadError
            for the first bad image with `strict`).
    """
    if (images_dir is None) == (texts_file is None):
        raise ValueError(f"give exactly one of {what[0]} or {what[1]}")
    target = resolve_device(device)
    names = _image_files(images_dir, what[0]) if images_dir is not None else None
    lines = _text_lines(texts_file, what[1]) if texts_file is not None else None
    model, tokenizer, transform = load_clip(model_path)
    if image_size is not None:
        transform = at_image_size(model, image_size)
    model = model.to(target)
    if names is not None:
        encoded = encode_image_paths(model, transform, names, batch_size, strict, progress, on_skip)
        if not encoded.paths:
            raise ValueError(
                f"{what[0]} {images_dir}: none of its {len(names)} images could be read"
            )
        names, embeddings = encoded.paths, encoded.embeddings
    else:
        names = lines
        embeddings = encode_texts(model, tokenizer, names)
    array = embeddings.numpy()
    out_path = embeddings_path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, array)
    out_path.with_suffix(".json").write_text(json.dumps({"inputs": names}, indent=1) + "\n")
    return array
