"""The web app: a JSON API and one page for zero-shot classification and image search with a
CLIP model, and questions / captions about an image with a generative VLM (serve/generative.py).

    GET  /                     the page (vlkit/assets/serve/index.html): the available panels
    GET  /api/info             "features" (zeroshot, search, generate), the CLIP model, its
                               embedding size, the index size, the template sets, the VLM
    POST /api/zeroshot         multipart: image file, labels ("a cat, a dog"), templates -> ranking
    POST /api/search           JSON {"text": "...", "k": 8} -> hits (text -> image search)
    POST /api/search/image     multipart: image file, k -> hits (image -> image search)
    GET  /api/images/{pos}     the indexed image at that row of the index (nothing else is served)
    POST /api/generate         multipart: image file(s), prompt, max_new_tokens (1-256, default
                               32) -> {"text", "unknown_words", "tokens"} (greedy decoding)
    POST /api/generate/stream  the same as server-sent events: `token` {"text": piece}..., then
                               `done` (the JSON answer) or `error` {"detail": ...}

Bad input answers 400 (unreadable image, empty labels or prompt, unknown templates, out-of-range
max_new_tokens) or 404 (no CLIP model, no index, no such row, no VLM) with
`{"detail": "<one line naming the problem>"}`, FastAPI's error shape.

The models run in FastAPI's thread pool (the endpoints are plain `def`), so a slow request
does not block the event loop; inference needs no lock because it only reads the weights (see
serve/generative.py for generation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

from vlkit.api import load_clip
from vlkit.data.images import ImageLoadError, load_image_bytes
from vlkit.evaluation.zero_shot import (
    TEMPLATE_SETS,
    build_zero_shot_classifier,
    label_probabilities,
    load_templates,
)
from vlkit.inference.image_search import ImageSearcher
from vlkit.inference.index import EmbeddingIndex
from vlkit.serve.generative import VLM, load_served_vlm, stream_events

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
    model_path: str | None = None,
    index_dir: str | None = None,
    search_templates: str = "none",
    vlm_path: str | None = None,
) -> FastAPI:
    """Builds the app around a CLIP-like checkpoint (and, optionally, an image index), a
    generative VLM, or both.

    Args:
        model_path: A checkpoint `vlkit.from_pretrained` reads (must be CLIP-like), or None.
        index_dir: A directory written by `vlkit index` / `EmbeddingIndex.save`. Its images must
            have been embedded by the same model (the embedding sizes are checked).
        search_templates: Template set for text queries ("none" searches with the text as is).
        vlm_path: A `vlkit train-vlm` run directory or a SmolVLM / Idefics3 directory, or None.

    Raises:
        CheckpointError, ValueError, FileNotFoundError: Bad model, index or VLM, or neither a
            model nor a VLM, named in one line.
    """
    if model_path is None and vlm_path is None:
        raise ValueError("nothing to serve: give a CLIP model (--model), a VLM (--vlm) or both")
    if model_path is None and index_dir is not None:
        raise ValueError("an image index needs the CLIP model that embedded it: add --model")
    vlm = None
    if vlm_path is not None:
        vlm = load_served_vlm(vlm_path)
    if model_path is None:
        return _build_app(None, None, None, search_templates, vlm)
    model, tokenizer, transform = load_clip(model_path)
    searcher = None
    if index_dir is not None:
        searcher = ImageSearcher(
            EmbeddingIndex.load(index_dir), model, tokenizer, transform,
            templates=load_templates(search_templates),
        )  # fmt: skip
    return _build_app(model_path, (model, tokenizer, transform), searcher, search_templates, vlm)


def _build_app(
    model_path: str | None,
    clip: tuple[Any, Any, Any] | None,
    searcher: Any,
    search_templates: str,
    vlm: VLM | None,
) -> FastAPI:
    """The routes over what `create_app` loaded (None for what it did not)."""
    model, tokenizer, transform = clip if clip is not None else (None, None, None)
    available = {"zeroshot": clip, "search": searcher, "generate": vlm}
    features = [name for name, part in available.items() if part is not None]

    def require_model() -> None:
        if model is None:
            raise HTTPException(404, "this server has no CLIP model: start it with --model DIR")

    @lru_cache(maxsize=32)
    def classifier_for(labels: tuple[str, ...], templates: str) -> torch.Tensor:
        return build_zero_shot_classifier(model, tokenizer, list(labels), load_templates(templates))

    app = FastAPI(title="vlkit", summary="zero-shot classification, image search and VQA")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("vlkit").joinpath("assets/serve/index.html").read_text()

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "features": features,
            "model": str(model_path) if model is not None else None,
            "model_type": type(model).__name__ if model is not None else None,
            "embed_dim": model.config.embed_dim if model is not None else None,
            "image_size": model.config.preprocess.image_size if model is not None else None,
            "index_size": len(searcher.index) if searcher else 0,
            "template_sets": list(TEMPLATE_SETS),
            "search_templates": search_templates,
            "vlm": vlm.info() if vlm is not None else None,
        }

    @app.post("/api/zeroshot")
    def zeroshot(
        image: UploadFile = File(...), labels: str = Form(...), templates: str = Form("none")
    ) -> dict[str, Any]:
        require_model()
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
        require_model()
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

    def generate_input(
        images: list[UploadFile] | None, prompt: str, max_new_tokens: str
    ) -> tuple[list[Any], str, int]:
        if vlm is None:
            raise HTTPException(404, "this server has no generative VLM: start it with --vlm DIR")
        uploads = [upload for upload in images or [] if upload.filename or upload.size]
        if not uploads:
            raise HTTPException(400, "no image: upload one as the form field 'image'")
        try:
            budget = int(max_new_tokens)
        except ValueError:
            raise HTTPException(400, f"max_new_tokens={max_new_tokens!r}: not an integer") from None
        pictures = [_read_upload(upload) for upload in uploads]
        try:
            vlm.check(pictures, prompt, budget)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        return pictures, prompt, budget

    @app.post("/api/generate")
    def generate(
        image: list[UploadFile] | None = File(None),
        prompt: str = Form(""),
        max_new_tokens: str = Form("32"),
    ) -> dict[str, Any]:
        pictures, prompt, budget = generate_input(image, prompt, max_new_tokens)
        return asdict(vlm.answer(pictures, prompt, budget))

    @app.post("/api/generate/stream")
    def generate_stream(
        image: list[UploadFile] | None = File(None),
        prompt: str = Form(""),
        max_new_tokens: str = Form("32"),
    ) -> StreamingResponse:
        pictures, prompt, budget = generate_input(image, prompt, max_new_tokens)
        return StreamingResponse(
            stream_events(vlm, pictures, prompt, budget), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )  # fmt: skip

    return app


def _read_upload(upload: UploadFile) -> Any:
    try:
        return load_image_bytes(upload.file.read(), name=upload.filename or "upload")
    except ImageLoadError as error:
        raise HTTPException(400, str(error)) from None


def run_server(
    model_path: str | None = None,
    index_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    search_templates: str = "none",
    log: Callable[[str], None] = print,
    vlm_path: str | None = None,
) -> None:
    """Serves the app with uvicorn until interrupted (loopback only unless `host` says else)."""
    import uvicorn

    app = create_app(model_path, index_dir, search_templates, vlm_path)
    log(f"vlkit serve: http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
