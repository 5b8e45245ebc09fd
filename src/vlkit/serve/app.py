"""The web app: a JSON API and one page for zero-shot classification and image search.

    GET  /                   the page (vlkit/assets/serve/index.html)
    GET  /api/info           the model, its embedding size, the index size, the template sets
    POST /api/zeroshot       multipart: image file, labels ("a cat, a dog"), templates -> ranking
    POST /api/search         JSON {"text": "...", "k": 8} -> hits (text -> image search)
    POST /api/search/image   multipart: image file, k -> hits (image -> image search)
    GET  /api/images/{pos}   the indexed image at that row of the index (nothing else is served)

Bad input answers 400 (unreadable image, empty labels, unknown templates) or 404 (no index, no
such row) with `{"detail": "<one line naming the problem>"}`, FastAPI's error shape.

The model runs in FastAPI's thread pool (the endpoints are plain `def`), so a slow request
does not block the event loop; inference needs no lock because it only reads the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from vlkit.api import load_clip
from vlkit.data.images import ImageLoadError, load_image_bytes
from vlkit.evaluation.zero_shot import (
    TEMPLATE_SETS,
    build_zero_shot_classifier,
    label_probabilities,
    load_templates,
)

MAX_LABELS = 1000
MAX_HITS = 100


class SearchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=1000)
    k: int = Field(default=8, ge=1, le=MAX_HITS)


def parse_labels(labels: str) -> list[str]:
    """Comma- or newline-separated class names, stripped, empty ones dropped, order kept."""
    names = [name.strip() for line in labels.splitlines() for name in line.split(",")]
    return [name for name in names if name]


def create_app(
    model_path: str,
    index_dir: str | None = None,
    search_templates: str = "none",
) -> FastAPI:
    """Builds the app around a CLIP-like checkpoint and, optionally, an image index.

    Args:
        model_path: A checkpoint `vlkit.from_pretrained` reads (must be CLIP-like).
        index_dir: A directory written by `vlkit index` / `EmbeddingIndex.save`. Its images must
            have been embedded by the same model (the embedding sizes are checked).
        search_templates: Template set for text queries ("none" searches with the text as is).

    Raises:
        CheckpointError, ValueError, FileNotFoundError: Bad model or index, named in one line.
    """
    model, tokenizer, transform = load_clip(model_path)
    searcher = None
    if index_dir is not None:
        from vlkit.inference.image_search import ImageSearcher
        from vlkit.inference.index import EmbeddingIndex

        searcher = ImageSearcher(
            EmbeddingIndex.load(index_dir), model, tokenizer, transform,
            templates=load_templates(search_templates),
        )  # fmt: skip

    @lru_cache(maxsize=32)
    def classifier_for(labels: tuple[str, ...], templates: str) -> torch.Tensor:
        return build_zero_shot_classifier(model, tokenizer, list(labels), load_templates(templates))

    app = FastAPI(title="vlkit", summary="zero-shot classification and image search with CLIP")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("vlkit").joinpath("assets/serve/index.html").read_text()

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "model": str(model_path),
            "model_type": type(model).__name__,
            "embed_dim": model.config.embed_dim,
            "image_size": model.config.preprocess.image_size,
            "index_size": len(searcher.index) if searcher else 0,
            "template_sets": list(TEMPLATE_SETS),
            "search_templates": search_templates,
        }

    @app.post("/api/zeroshot")
    def zeroshot(
        image: UploadFile = File(...), labels: str = Form(...), templates: str = Form("none")
    ) -> dict[str, Any]:
        names = parse_labels(labels)
        if not names:
            raise HTTPException(400, "labels is empty: give comma-separated class names")
        if len(names) > MAX_LABELS:
            raise HTTPException(400, f"{len(names)} labels: at most {MAX_LABELS}")
        if templates not in TEMPLATE_SETS:
            raise HTTPException(400, f"templates {templates!r}: one of {', '.join(TEMPLATE_SETS)}")
        pixels = transform(_read_upload(image)).unsqueeze(0)
        with torch.no_grad():
            embedding = model.encode_image(pixels, normalize=True)
        probs = label_probabilities(model, embedding, classifier_for(tuple(names), templates))[0]
        order = probs.argsort(descending=True).tolist()
        return {
            "image": image.filename,
            "ranking": [{"label": names[i], "probability": probs[i].item()} for i in order],
        }

    def require_index() -> Any:
        if searcher is None:
            raise HTTPException(404, "this server has no image index: start it with --index DIR")
        return searcher

    def hits_json(hits: list) -> dict[str, Any]:
        return {
            "hits": [
                {
                    "position": hit.position,
                    "name": Path(hit.name).name,
                    "score": hit.score,
                    "url": f"/api/images/{hit.position}",
                }
                for hit in hits
            ]
        }

    @app.post("/api/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        return hits_json(require_index().search_text(request.text, k=request.k))

    @app.post("/api/search/image")
    def search_by_image(image: UploadFile = File(...), k: int = Form(8)) -> dict[str, Any]:
        if not 1 <= k <= MAX_HITS:
            raise HTTPException(400, f"k={k}: between 1 and {MAX_HITS}")
        return hits_json(require_index().search_image(_read_upload(image), k=k))

    @app.get("/api/images/{position}")
    def indexed_image(position: int) -> FileResponse:
        names = require_index().index.names
        if not 0 <= position < len(names):
            raise HTTPException(404, f"no image {position}: the index has {len(names)}")
        path = Path(names[position])
        if not path.is_file():
            raise HTTPException(404, f"{path.name}: indexed, but the file is gone")
        return FileResponse(path)

    return app


def _read_upload(upload: UploadFile) -> Any:
    try:
        return load_image_bytes(upload.file.read(), name=upload.filename or "upload")
    except ImageLoadError as error:
        raise HTTPException(400, str(error)) from None


def run_server(
    model_path: str,
    index_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    search_templates: str = "none",
    log: Callable[[str], None] = print,
) -> None:
    """Serves the app with uvicorn until interrupted (loopback only unless `host` says else)."""
    import uvicorn

    app = create_app(model_path, index_dir, search_templates)
    log(f"vlkit serve: http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
