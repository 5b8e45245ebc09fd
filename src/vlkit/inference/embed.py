"""CLIP inference on files: rank labels for images (`zeroshot`), write embeddings (`embed`).

The library side of `vlkit zeroshot` and `vlkit embed`: they load a checkpoint, encode with the
shared encoders of `vlkit.evaluation.embeddings` and return plain Python / numpy values. Bad
input raises ValueError with a one-line message naming the parameter it came from (or the name
the caller gives in `what`: the CLI passes its flags).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlkit.data.images import IMAGE_SUFFIXES
from vlkit.evaluation.embeddings import encode_image_files, encode_texts
from vlkit.evaluation.zero_shot import (
    build_zero_shot_classifier,
    label_probabilities,
    load_templates,
)
from vlkit.hub.clip_checkpoint import load_clip

__all__ = ["embed", "zeroshot"]


def zeroshot(
    images: Sequence[str | os.PathLike[str]],
    model_path: str,
    labels: Sequence[str],
    templates: str = "none",
    top: int | None = None,
) -> list[dict]:
    """Ranks `labels` for each image.

    Probabilities: softmax over the labels of the scaled similarities for CLIP; for SigLIP, the
    per-label sigmoid of its logits (the probability the model was trained to output, as
    transformers' zero-shot pipeline reports it).

    Returns:
        One {"image": path, "ranking": [{"label", "probability"}, ...]} per image, best first,
        the `top` best labels only when given.
    """
    if not labels:
        raise ValueError("labels is empty: give at least one class name")
    model, tokenizer, transform = load_clip(model_path)
    classifier = build_zero_shot_classifier(model, tokenizer, labels, load_templates(templates))
    # One image per forward pass, as a single-image query would be encoded.
    embeddings = encode_image_files(model, transform, images, batch_size=1)  # (N, D)
    results = []
    for path, image in zip(images, embeddings, strict=True):
        probs = label_probabilities(model, image[None], classifier)[0]
        order = probs.argsort(descending=True)[:top]
        ranked = [{"label": labels[i], "probability": round(probs[i].item(), 6)} for i in order]
        results.append({"image": str(path), "ranking": ranked})
    return results


def _image_files(images_dir: str, what: str) -> list[str]:
    directory = Path(images_dir)
    if not directory.is_dir():
        raise ValueError(f"{what} {directory}: not a directory")
    names = sorted(str(p) for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise ValueError(
            f"{what} {directory}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return names


def _text_lines(texts_file: str, what: str) -> list[str]:
    path = Path(texts_file)
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file")
    names = [line for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{what} {path}: no non-empty lines")
    return names


def embed(
    model_path: str,
    out: str,
    images_dir: str | None = None,
    texts_file: str | None = None,
    what: tuple[str, str] = ("images_dir", "texts_file"),
) -> np.ndarray:
    """Writes L2-normalised embeddings (N, D) as .npy and the inputs' names next to it (.json).

    Args:
        model_path: A CLIP-like checkpoint directory, file or hub id.
        out: The .npy file to write (its .json sibling lists the inputs in row order).
        images_dir: Embed the image files directly in this folder (not recursive) ...
        texts_file: ... or the non-empty lines of this text file.
        what: How the caller names `images_dir` and `texts_file` in messages (the CLI passes
            its flags, "--images" and "--texts").
    """
    if (images_dir is None) == (texts_file is None):
        raise ValueError(f"give exactly one of {what[0]} or {what[1]}")
    model, tokenizer, transform = load_clip(model_path)
    if images_dir is not None:
        names = _image_files(images_dir, what[0])
        embeddings = encode_image_files(model, transform, names)
    else:
        names = _text_lines(texts_file, what[1])
        embeddings = encode_texts(model, tokenizer, names)
    array = embeddings.numpy()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, array)
    out_path.with_suffix(".json").write_text(json.dumps({"inputs": names}, indent=1) + "\n")
    return array
