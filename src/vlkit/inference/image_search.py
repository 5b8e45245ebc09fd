"""Image search: embed a folder of images with a CLIP model, index them, query by text or image.

`build_image_index` embeds every image under a folder into an `EmbeddingIndex` that remembers
the model; `ImageSearcher` pairs such an index with that model for text -> image search (the
query optionally a prompt ensemble, as zero-shot classification builds class vectors) and
image -> image search. Scores are cosine similarities.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from vlkit.data.images import IMAGE_SUFFIXES
from vlkit.distributed import resolve_device
from vlkit.evaluation.embeddings import encode_image_files
from vlkit.evaluation.zero_shot import build_zero_shot_classifier, load_templates
from vlkit.hub.clip_checkpoint import load_clip
from vlkit.inference.image_files import encode_image_paths
from vlkit.inference.index import KINDS, EmbeddingIndex, SearchHit

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSearcher",
    "build_image_index",
    "encode_image_files",
    "list_image_files",
]


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def list_image_files(directory: str | os.PathLike[str], what: str = "") -> list[str]:
    """Image files under `directory` (recursively, by suffix: IMAGE_SUFFIXES), sorted.

    Args:
        what: How the caller names `directory` in messages (the CLI passes "--images").
    """
    root = Path(directory)
    name = f"{what} {root}" if what else str(root)
    if not root.exists():
        raise FileNotFoundError(f"{name}: no such directory")
    if not root.is_dir():
        raise ValueError(f"{name}: is a file, expected a directory of images")
    files = sorted(
        str(path)
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not files:
        raise ValueError(f"{name}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _absolute_model_path(model_path: str) -> str:
    path = Path(model_path).expanduser()
    return str(path.resolve()) if path.exists() else model_path  # a hub id stays as given


def build_image_index(
    model_path: str,
    images_dir: str,
    out_dir: str | None = None,
    kind: str = "flat",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    strict: bool = False,
    progress: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
    what: str = "images_dir",
) -> EmbeddingIndex:
    """Embeds every image under `images_dir` with a CLIP model and indexes them.

    Rows are named by absolute image path; `metadata` records the model (absolute path, or the
    hub id), the image folder, `"modality": "image"` and the files skipped because they could
    not be read (`"skipped"`: [path, ...]). Saved to `out_dir` when given.

    Args:
        device: Where the model runs ("cpu", "cuda", "auto", ...; checked by `resolve_device`).
        strict: Stop at the first unreadable image instead of skipping it.
        progress: Show a tqdm bar while images are encoded.
        on_skip: Called with (path, reason) for each unreadable image that is skipped.
        what: How the caller names `images_dir` in messages (the CLI passes "--images").

    Raises:
        ValueError: An unknown kind or device, no images, or none that could be read.
    """
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    target = resolve_device(device)
    root = Path(images_dir).expanduser().resolve()
    paths = list_image_files(root, what)
    model, _, transform = load_clip(model_path)
    model = model.to(target)
    encoded = encode_image_paths(model, transform, paths, batch_size, strict, progress, on_skip)
    if not encoded.paths:
        raise ValueError(f"{what} {root}: none of its {len(paths)} images could be read")
    metadata = {"model": _absolute_model_path(model_path), "images_dir": str(root),
                "modality": "image", "skipped": [path for path, _ in encoded.skipped]}  # fmt: skip
    index = EmbeddingIndex.build(encoded.embeddings, encoded.paths, kind=kind, metadata=metadata)
    if out_dir is not None:
        index.save(out_dir)
    return index


class ImageSearcher:
    """An index plus the CLIP model that made it: text->image and image->image search."""

    def __init__(
        self,
        index: EmbeddingIndex,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        transform: Callable[[Image.Image], torch.Tensor],
        templates: list[str] | None = None,
    ) -> None:
        """
        Args:
            templates: Prompt templates with one `{}`; a text query becomes the mean of its
                normalised template embeddings, normalised again (as zero-shot classification
                builds class vectors). None: the text alone.
        """
        embed_dim = model.config.embed_dim
        if embed_dim != index.dim:
            source = index.metadata.get("model", "another model")
            raise ValueError(
                f"the model makes {embed_dim}-dimensional embeddings but the index holds "
                f"{index.dim}-dimensional ones (built with {source}): use the index's model"
            )
        if templates is not None and not templates:
            raise ValueError("templates is empty: pass None for the text alone")
        self.index = index
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform
        self.templates = list(templates) if templates is not None else None

    @classmethod
    def from_directory(
        cls,
        index_dir: str | os.PathLike[str],
        model_path: str | None = None,
        templates: str = "none",
    ) -> ImageSearcher:
        """Loads a saved index and its model (from the index metadata unless `model_path`).

        Args:
            templates: A template-set name or file for `vlkit.evaluation.load_templates`.
        """
        index = EmbeddingIndex.load(index_dir)
        if model_path is None:
            model_path = index.metadata.get("model")
            if not model_path:
                raise ValueError(f"{index_dir}: the index names no model; pass model_path")
            if os.path.isabs(model_path) and not os.path.exists(model_path):
                raise FileNotFoundError(
                    f"{index_dir} was built with the model {model_path}, which no longer "
                    "exists; pass its new location as model_path"
                )
        template_list = load_templates(templates)
        model, tokenizer, transform = load_clip(model_path)
        return cls(index, model, tokenizer, transform, template_list)

    @torch.no_grad()
    def embed_text(self, text: str) -> torch.Tensor:
        """The unit-length query vector (D,) for `text` (a prompt ensemble over the templates)."""
        if not text.strip():
            raise ValueError("the text query is empty")
        templates = self.templates if self.templates is not None else ["{}"]
        return build_zero_shot_classifier(self.model, self.tokenizer, [text], templates)[0].cpu()

    @torch.no_grad()
    def embed_image(self, image: Image.Image) -> torch.Tensor:
        """The unit-length query vector (D,) for a PIL image of any mode (the transform converts it)."""
        pixels = self.transform(image).unsqueeze(0).to(_model_device(self.model))
        return self.model.encode_image(pixels, normalize=True).float()[0].cpu()

    def search_text(self, text: str, k: int = 10) -> list[SearchHit]:
        """The `k` indexed images most similar to `text`, best first."""
        return self.index.search(self.embed_text(text), k)[0]

    def search_image(self, image: Image.Image, k: int = 10) -> list[SearchHit]:
        """The `k` indexed images most similar to `image`, best first."""
        return self.index.search(self.embed_image(image), k)[0]
