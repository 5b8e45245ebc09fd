"""`vlkit explain` and `vlkit similarity`: what a CLIP model looks at, and how it scores pairs.

    vlkit explain --model PATH --image cat.jpg --text "a cat" --text "a dog" --out explain.png
    vlkit similarity --model PATH --images a.jpg b.jpg --texts "a cat,a dog" --out sim.png

`explain` draws, side by side, one text-image relevance map per text (Chefer et al. 2021, see
`vlkit.viz.relevance`) over the image as the model saw it, titled with the cosine similarity;
it needs a ViT image tower with a CLS token. `similarity` draws the caption x image cosine
similarity grid of the CLIP notebook (`vlkit.viz.similarity`); it works for any CLIP-like model.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlkit.api import load_clip
from vlkit.cli.arguments import output_file
from vlkit.cli.errors import UsageError
from vlkit.data.images import load_image
from vlkit.data.transforms import ImageTransform
from vlkit.hub.download import is_hub_id
from vlkit.viz.relevance import relevance_overlay, text_image_relevance
from vlkit.viz.similarity import similarity_figure

__all__ = ["add_viz_parsers", "explain_command", "similarity_command"]

DISPLAY_SIZE = 224  # side of the images drawn in the figures, in pixels


def add_viz_parsers(commands: argparse._SubParsersAction) -> None:
    """Registers `explain` and `similarity` on the `vlkit` command's subparsers."""
    explain = commands.add_parser("explain", help="relevance of image patches for each text (ViT)")
    explain.add_argument("--model", required=True, help="CLIP/SigLIP checkpoint directory")
    explain.add_argument("--image", required=True, help="the image to explain")
    explain.add_argument("--text", action="append", default=[], help="a caption (repeatable)")
    explain.add_argument("--out", required=True, help="PNG to write")
    explain.add_argument("--start-layer", type=int, default=0, help="first layer to use (-1: last)")

    similarity = commands.add_parser("similarity", help="caption x image cosine-similarity grid")
    similarity.add_argument("--model", required=True, help="CLIP/SigLIP checkpoint directory")
    similarity.add_argument("--images", nargs="+", required=True, help="image files")
    similarity.add_argument("--texts", required=True, help='comma-separated captions: "a,b,c"')
    similarity.add_argument("--out", required=True, help="PNG to write")


def _check_files(model: str, images: Sequence[str]) -> None:
    if not Path(model).is_dir() and not is_hub_id(model):  # a hub id is downloaded by load_clip
        raise FileNotFoundError(f"{model}: no such model directory")
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image file")


def _load(model_path: str, image_paths: Sequence[str]):
    """The model, tokenizer, preprocessed images (B, 3, S, S) and their display crops."""
    model, tokenizer, transform = load_clip(model_path)
    # The decoded mode is kept so the transform converts it as the checkpoint's reference does.
    images = [load_image(path, keep_mode=True) for path in image_paths]
    pixels = torch.stack([transform(image) for image in images])
    # The same resize and crop as the model's input, scaled to a size worth looking at.
    preprocess = model.config.preprocess
    scale = max(1.0, DISPLAY_SIZE / min(preprocess.output_size))
    display = ImageTransform(
        dataclasses.replace(
            preprocess,
            image_size=_scaled(preprocess.image_size, scale),
            resize_size=_scaled(preprocess.resize_size, scale),
        )
    )
    return model, tokenizer, pixels, [display.resize_and_crop(image) for image in images]


def _scaled(size: int | tuple[int, int] | None, scale: float) -> int | tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, tuple):
        return (round(size[0] * scale), round(size[1] * scale))
    return round(size * scale)


def _cosine(model: Any, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(ids, normalize=True)
    return image @ text.T  # (N_images, N_texts)


def explain_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit explain`; returns the written path and each text's cosine similarity."""
    texts = [text.strip() for text in args.text if text.strip()]
    if not texts:
        raise UsageError("give at least one non-empty --text")
    output_file(args.out, "--out")
    _check_files(args.model, [args.image])
    model, tokenizer, pixels, display = _load(args.model, [args.image])
    ids = tokenizer(texts)
    relevance = text_image_relevance(  # raises ValueError first for a ResNet image tower
        model, pixels.expand(len(texts), -1, -1, -1), ids, start_layer=args.start_layer
    )
    scores = _cosine(model, pixels, ids)[0]
    titles = [f"{text!r}\ncosine {score:.3f}" for text, score in zip(texts, scores, strict=True)]
    path = relevance_overlay(display[0], relevance, args.out, titles=titles)
    return {
        "out": str(path),
        "image": str(args.image),
        "scores": [
            {"text": text, "similarity": round(score, 6)}
            for text, score in zip(texts, scores.tolist(), strict=True)
        ],
    }


def similarity_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit similarity`; returns the written path and the (images x texts) similarities."""
    texts = [text.strip() for text in args.texts.split(",") if text.strip()]
    if not texts:
        raise UsageError('--texts is empty: give comma-separated captions, e.g. "a cat,a dog"')
    output_file(args.out, "--out")
    _check_files(args.model, args.images)
    model, tokenizer, pixels, display = _load(args.model, args.images)
    similarity = _cosine(model, pixels, tokenizer(texts))
    path = similarity_figure(display, texts, similarity, args.out)
    return {
        "out": str(path),
        "images": [str(p) for p in args.images],
        "texts": texts,
        "similarity": [[round(v, 6) for v in row] for row in similarity.tolist()],
        "best_text": [texts[i] for i in similarity.argmax(dim=1).tolist()],
    }
