"""The web app: a JSON API and one page for zero-shot classification and image search with a
CLIP model, and questions / captions about an image with a generative VLM (serve/generative.py).

    GET  /                     the page (vlkit/assets/serve/index.html): the available panels
    GET  /api/info             "features" (zeroshot, search, generate), the CLIP model's name,
                               its embedding size, the index size, the template sets, the VLM
                               (kind, name, limits; an ONNX export's "onnx_variant")
    POST /api/zeroshot         multipart: image file, labels ("a cat, a dog"), templates -> ranking
    POST /api/search           JSON {"text": "...", "k": 8} -> hits (text -> image search)
    POST /api/search/image     multipart: image file, k -> hits (image -> image search)
    GET  /api/images/{pos}     the indexed image at that row of the index (nothing else is served)
    POST /api/generate         multipart: image file(s), prompt, max_new_tokens (1-256, default
                               32) -> {"text", "unknown_words", "tokens"} (greedy decoding)
    POST /api/generate/stream  the same as server-sent events: `token` {"text": piece}..., then
                               `done` (the JSON answer) or `error` {"error": ...}

Every error answers its status with `{"error": "<one line naming the problem>"}`
(serve/errors.py): 400 bad input (unreadable image, empty labels or prompt, unknown templates,
out-of-range numbers, a disallowed Host), 401 missing token, 403 cross-origin write or a file
outside the indexed folders, 404 (no CLIP model, no index, no such row, no VLM), 413 (body or
image too large), 503 + Retry-After (busy). The limits are `ServeLimits` (serve/limits.py); the
Host, token, origin, size and admission checks are serve/guard.py.

The models run in FastAPI's thread pool (the endpoints are plain `def`), so a slow request
does not block the event loop; at most `max_concurrent` of them decode and run a model at once
(serve/gate.py). Inference needs no lock because it only reads the weights (see
serve/generative.py for generation). Paths on the server never leave it: models are named by
their directory's name, index hits by their file name.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache
from importlib import resources
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

from vlkit.api import load_clip
from vlkit.data.images import ImageLoadError
from vlkit.evaluation.zero_shot import (
    TEMPLATE_SETS,
    build_zero_shot_classifier,
    label_probabilities,
    load_templates,
)
from vlkit.inference.image_search import ImageSearcher
from vlkit.inference.index import EmbeddingIndex
from vlkit.serve.errors import error_response, install_error_handlers
from vlkit.serve.files import IndexedFiles, Refused
from vlkit.serve.gate import Busy, InferenceGate
from vlkit.serve.generative import VLM, load_served_vlm, stream_events
from vlkit.serve.guard import RequestGuard
from vlkit.serve.limits import LOOPBACK_HOSTS, ServeLimits
from vlkit.serve.uploads import TooLarge, decode_upload

MAX_LABELS = 1000
MAX_HITS = 100
MODEL_ROUTES = ("/api/zeroshot", "/api/search", "/api/search/image", "/api/generate",
                "/api/generate/stream")  # fmt: skip


class SearchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=1000)
    k: int = Field(default=8, ge=1, le=MAX_HITS)


def parse_labels(labels: str) -> list[str]:
    """Comma- or newline-separated class names, stripped, empty ones dropped, order kept."""
    names = [name.strip() for line in labels.splitlines() for name in line.split(",")]
    return [name for name in names if name]


def display_name(path: str) -> str:
    """What the page calls a model: a local directory's name, or a hub id as given."""
    local = Path(path).expanduser()
    return local.resolve().name if local.exists() else str(path)


def create_app(
    model_path: str | None = None,
    index_dir: str | None = None,
    search_templates: str = "none",
    vlm_path: str | None = None,
    limits: ServeLimits | None = None,
    onnx_variant: str | None = None,
) -> FastAPI:
    """Builds the app around a CLIP-like checkpoint (and, optionally, an image index), a
    generative VLM, or both.

    Args:
        model_path: A checkpoint `vlkit.from_pretrained` reads (must be CLIP-like), or None.
        index_dir: A directory written by `vlkit index` / `EmbeddingIndex.save`. Its images must
            have been embedded by the same model (the embedding sizes are checked).
        search_templates: Template set for text queries ("none" searches with the text as is).
        vlm_path: A `vlkit train-vlm` run directory, a SmolVLM / Idefics3 directory or an ONNX
            export of one, or None.
        limits: Upload, pixel, concurrency and prompt limits, allowed hosts and token (default:
            `ServeLimits()`, which allows only loopback host names).
        onnx_variant: Which files of the ONNX export `vlm_path` run ("fp32", "int8", "q4";
            `load_served_vlm`); None: fp32.

    Raises:
        CheckpointError, ValueError, FileNotFoundError: Bad model, index or VLM, or neither a
            model nor a VLM, named in one line.
    """
    if model_path is None and vlm_path is None:
        raise ValueError("nothing to serve: give a CLIP model (--model), a VLM (--vlm) or both")
    if model_path is None and index_dir is not None:
        raise ValueError("an image index needs the CLIP model that embedded it: add --model")
    if onnx_variant is not None and vlm_path is None:
        raise ValueError(f"onnx_variant={onnx_variant!r} needs vlm_path: a VLM ONNX export")
    limits = limits or ServeLimits()
    vlm = None
    if vlm_path is not None:
        vlm = load_served_vlm(vlm_path, onnx_variant)
    if model_path is None:
        return _build_app(None, None, None, search_templates, vlm, limits)
    model, tokenizer, transform = load_clip(model_path)
    searcher = None
    if index_dir is not None:
        searcher = ImageSearcher(
            EmbeddingIndex.load(index_dir), model, tokenizer, transform,
            templates=load_templates(search_templates),
        )  # fmt: skip
    clip = (model, tokenizer, transform)
    return _build_app(model_path, clip, searcher, search_templates, vlm, limits)


def _build_app(
    model_path: str | None,
    clip: tuple[Any, Any, Any] | None,
    searcher: Any,
    search_templates: str,
    vlm: VLM | None,
    limits: ServeLimits,
) -> FastAPI:
    """The routes over what `create_app` loaded (None for what it did not)."""
    model, tokenizer, transform = clip if clip is not None else (None, None, None)
    available = {"zeroshot": clip, "search": searcher, "generate": vlm}
    features = [name for name, part in available.items() if part is not None]
    gate = InferenceGate(limits.max_concurrent, limits.max_queue, limits.queue_timeout_s)
    files = None
    if searcher is not None:
        files = IndexedFiles(searcher.index.names, searcher.index.metadata.get("images_dir"))

    def require_model() -> None:
        if model is None:
            raise HTTPException(404, "this server has no CLIP model: start it with --model DIR")

    @lru_cache(maxsize=32)
    def classifier_for(labels: tuple[str, ...], templates: str) -> torch.Tensor:
        return build_zero_shot_classifier(model, tokenizer, list(labels), load_templates(templates))

    def read_image(upload: UploadFile, keep_mode: bool = False) -> Any:
        # keep_mode: CLIP transforms convert the decoded mode as the checkpoint's reference does
        # (as `vlkit zeroshot` / `search` on the same file); the VLM paths take RGB like `generate`.
        name = upload.filename or "upload"
        try:
            return decode_upload(upload.file.read(), name, limits.max_pixels, keep_mode)
        except TooLarge as error:
            raise HTTPException(413, str(error)) from None
        except ImageLoadError as error:
            raise HTTPException(400, str(error)) from None

    app = FastAPI(title="vlkit", summary="zero-shot classification, image search and VQA")
    install_error_handlers(app)
    app.add_middleware(RequestGuard, limits=limits, gate=gate, model_routes=MODEL_ROUTES)

    @app.exception_handler(Busy)  # no model slot free within queue_timeout_s
    async def busy(request: Any, error: Busy) -> Any:
        return error_response(503, error, {"Retry-After": str(limits.retry_after_s)})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("vlkit").joinpath("assets/serve/index.html").read_text()

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "features": features,
            "model": display_name(model_path) if model_path is not None else None,
            "model_type": type(model).__name__ if model is not None else None,
            "embed_dim": model.config.embed_dim if model is not None else None,
            "image_size": model.config.preprocess.image_size if model is not None else None,
            "index_size": len(searcher.index) if searcher else 0,
            "template_sets": list(TEMPLATE_SETS),
            "search_templates": search_templates,
            "vlm": vlm.info() if vlm is not None else None,
            "limits": {"max_upload_bytes": limits.max_upload_bytes,
                       "max_pixels": limits.max_pixels, "max_prompts": limits.max_prompts},
        }  # fmt: skip

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
        prompts = len(names) * len(load_templates(templates))
        if prompts > limits.max_prompts:
            raise HTTPException(
                400, f"{len(names)} labels x {prompts // len(names)} templates = {prompts} "
                f"prompts: this server encodes at most {limits.max_prompts} (--max-prompts)"
            )  # fmt: skip
        with gate.slot():
            pixels = transform(read_image(image, keep_mode=True)).unsqueeze(0)
            with torch.no_grad():
                embedding = model.encode_image(pixels, normalize=True)
            classifier = classifier_for(tuple(names), templates)
            probs = label_probabilities(model, embedding, classifier)[0]
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
        index = require_index()
        with gate.slot():
            return hits_json(index.search_text(request.text, k=request.k))

    @app.post("/api/search/image")
    def search_by_image(image: UploadFile = File(...), k: int = Form(8)) -> dict[str, Any]:
        if not 1 <= k <= MAX_HITS:
            raise HTTPException(400, f"k={k}: between 1 and {MAX_HITS}")
        index = require_index()
        with gate.slot():
            return hits_json(index.search_image(read_image(image, keep_mode=True), k=k))

    @app.get("/api/images/{position}")
    def indexed_image(position: int) -> FileResponse:
        require_index()
        try:
            return FileResponse(files.path(position))  # type: ignore[union-attr]
        except Refused as refused:
            raise HTTPException(refused.status, str(refused)) from None

    def generate_input(
        images: list[UploadFile] | None, prompt: str, max_new_tokens: str
    ) -> tuple[list[Any], str, int]:
        """Checks and decodes a generate request; call while holding a model slot."""
        if vlm is None:
            raise HTTPException(404, "this server has no generative VLM: start it with --vlm DIR")
        uploads = [upload for upload in images or [] if upload.filename or upload.size]
        if not uploads:
            raise HTTPException(400, "no image: upload one as the form field 'image'")
        try:
            budget = int(max_new_tokens)
        except ValueError:
            raise HTTPException(400, f"max_new_tokens={max_new_tokens!r}: not an integer") from None
        too_many = vlm.image_count_problem(len(uploads))  # before decoding any of them
        if too_many:
            raise HTTPException(400, too_many)
        pictures = [read_image(upload) for upload in uploads]
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
        with gate.slot():
            pictures, prompt, budget = generate_input(image, prompt, max_new_tokens)
            return asdict(vlm.answer(pictures, prompt, budget))  # type: ignore[union-attr]

    @app.post("/api/generate/stream")
    def generate_stream(
        image: list[UploadFile] | None = File(None),
        prompt: str = Form(""),
        max_new_tokens: str = Form("32"),
    ) -> StreamingResponse:
        # The slot is held by the generating thread until the answer is complete.
        gate.acquire()
        try:
            pictures, prompt, budget = generate_input(image, prompt, max_new_tokens)
        except BaseException:
            gate.release()
            raise
        events = stream_events(vlm, pictures, prompt, budget, on_finish=gate.release)  # type: ignore[arg-type]
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or ValueError in one line (port in use, bad address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def serving_limits(host: str, limits: ServeLimits) -> ServeLimits:
    """`limits` with the bound address (and, for a wildcard, this machine's name) allowed."""
    from dataclasses import replace

    extra = [host] if host not in ("0.0.0.0", "::") else [socket.gethostname()]
    hosts = tuple(dict.fromkeys([*limits.allowed_hosts, *LOOPBACK_HOSTS, *extra]))
    return replace(limits, allowed_hosts=hosts)


def run_server(
    model_path: str | None = None,
    index_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    search_templates: str = "none",
    log: Callable[[str], None] = print,
    vlm_path: str | None = None,
    limits: ServeLimits | None = None,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    onnx_variant: str | None = None,
) -> None:
    """Serves the app with uvicorn until interrupted (loopback only unless `host` says else);
    the models are `create_app`'s arguments (`onnx_variant`: the files of an ONNX export VLM).

    Binding a non-loopback address prints a warning: anyone who can reach the address can
    classify, search and read the indexed images, or, with `limits.auth_token`, anyone who has
    the token (sent in clear text over plain HTTP).

    Raises:
        ValueError: The address cannot be bound (named in one line), or a bad model/index/VLM.
    """
    import uvicorn

    limits = serving_limits(host, limits or ServeLimits())
    sock = bind_socket(host, port)  # before loading models: a busy port fails at once
    try:
        app = create_app(model_path, index_dir, search_templates, vlm_path, limits, onnx_variant)
    except BaseException:
        sock.close()
        raise
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host):
        if limits.auth_token is None:
            warn(
                f"WARNING: vlkit serve listens on {host}, reachable from other machines: anyone "
                "who can connect can run the models and read every indexed image."
            )
            warn("WARNING: no --auth-token (or VLKIT_AUTH_TOKEN) is set: no authentication.")
        else:
            # Every /api route (models and indexed images) needs the token (serve/guard.py), but
            # plain HTTP carries it in clear text to anyone on the network path.
            warn(
                f"WARNING: vlkit serve listens on {host}, reachable from other machines: anyone "
                "who has the --auth-token can run the models and read every indexed image; it "
                "travels unencrypted over plain HTTP (put a TLS proxy in front on networks you "
                "do not trust)."
            )
        warn(f"Allowed Host names: {', '.join(limits.allowed_hosts)} (add with --allowed-host).")
    link = f"http://{shown}:{port}/"
    if limits.auth_token is not None:
        link += "?token=" + limits.auth_token
    log(f"vlkit serve: {link} (Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
