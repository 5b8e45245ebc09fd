"""Generative VLMs for the web app: the HTTP-facing limits and streaming around a `VLMPipeline`.

`load_served_vlm(path, onnx_variant)` loads a `vlkit train-vlm` fusion run, a SmolVLM directory
or an ONNX export (`onnx_variant` picks its fp32 / int8 / q4 files) once (through
`vlkit.inference.load_vlm`, the one generative path the CLI uses too); `VLM.answer(images,
prompt, max_new_tokens)` checks the request against the server's limits, decodes greedily
(deterministic) and returns the text, the prompt's words outside a fusion run's vocabulary and
the number of generated tokens. `stream_events` runs an answer in a thread and yields it as
server-sent events (`token` pieces as they are decoded, then `done` or `error`), holding the
server's model slot until the answer is complete.

No lock guards generation: `generate` with the default dynamic KV cache builds its caches per
call and only reads the weights, and the tokenizers and processors only read their tables, so
concurrent requests share nothing that is written. (The static cache / CUDA graph of
`cache_implementation="static"` is kept on the model between calls and would need a lock; this
module never asks for it.)
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlkit.inference.text_streamer import TextStreamer
from vlkit.inference.vlm_loading import load_vlm
from vlkit.inference.vlm_pipeline import VLMPipeline

MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 2000
MAX_IMAGES = 4  # per request, for models that take several (SmolVLM)

__all__ = ["Answer", "VLM", "load_served_vlm", "stream_events"]


@dataclass
class Answer:
    text: str
    unknown_words: list[str] = field(default_factory=list)
    tokens: int = 0


class _Pieces:
    """A `TextStreamer` output that hands each printed piece to a callback."""

    def __init__(self, on_text: Callable[[str], None] | None) -> None:
        self.on_text = on_text

    def write(self, text: str) -> None:
        if self.on_text is not None:
            self.on_text(text)

    def flush(self) -> None:
        pass


class VLM:
    """A loaded generative VLM behind the server's limits (images, prompt length, tokens).

    Args:
        pipeline: The model (`vlkit.inference.load_vlm`).
        path: Its directory (the server reports only the directory's name).
    """

    def __init__(self, pipeline: VLMPipeline, path: str) -> None:
        self.pipeline = pipeline
        self.path = path
        # What the page shows: the directory's name, never the server's path (or a hub id).
        local = Path(path).expanduser()
        self.name = local.resolve().name if local.exists() else str(path)
        self.kind = pipeline.kind
        self.max_images = min(pipeline.max_images or MAX_IMAGES, MAX_IMAGES)
        self.needs_prompt = pipeline.needs_prompt

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "max_images": self.max_images,
                "needs_prompt": self.needs_prompt, "max_new_tokens": MAX_NEW_TOKENS,
                **self.pipeline.details()}  # fmt: skip

    def image_count_problem(self, count: int) -> str | None:
        """Why `count` images cannot be answered (one line), or None; the server asks before
        decoding any of them."""
        if 1 <= count <= self.max_images:
            return None
        many = "exactly one image" if self.max_images == 1 else f"1 to {self.max_images} images"
        return f"{count} images: this {self.kind} VLM answers about {many}"

    def check(self, images: Sequence[Any], prompt: str, max_new_tokens: int) -> None:
        """Raises ValueError (one line) for input this model cannot answer."""
        problem = self.image_count_problem(len(images))
        if problem:
            raise ValueError(problem)
        if self.needs_prompt and not prompt.strip():
            raise ValueError("prompt is empty: ask a question or give an instruction")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt of {len(prompt)} characters: at most {MAX_PROMPT_CHARS}")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens={max_new_tokens}: between 1 and {MAX_NEW_TOKENS}")

    def answer(
        self,
        images: Sequence[Any],
        prompt: str,
        max_new_tokens: int = 32,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """Greedy answer about RGB PIL images; `on_text` gets the text as it is decoded (if it
        raises, generation stops with that exception)."""
        self.check(images, prompt, max_new_tokens)
        streamer = TextStreamer(self.pipeline.decode, _Pieces(on_text))  # type: ignore[arg-type]
        inputs = self.pipeline.prepare(images, prompt)
        new = self.pipeline.generate(inputs, max_new_tokens, streamer=streamer)
        stops = [i for i, token in enumerate(new) if token in self.pipeline.stop_token_ids]
        return Answer(
            text=self.pipeline.decode(new),
            unknown_words=inputs.unknown_words,
            tokens=stops[0] if stops else len(new),  # the stop token is not counted
        )


def load_served_vlm(path: str, onnx_variant: str | None = None) -> VLM:
    """A fusion run (`vlm_config.json`) or a SmolVLM / Idefics3 directory, loaded for answering;
    a SmolVLM / LLaVA ONNX export runs with onnxruntime (`inference/onnx_vlm_pipeline.py`).

    Args:
        path: The model directory (or hub id), as `vlkit.inference.load_vlm` takes it.
        onnx_variant: Which files of an ONNX export run ("fp32", "int8", "q4"); None: fp32.
            `VLM.info()` reports it as "onnx_variant".

    Raises:
        FileNotFoundError, ValueError, CheckpointError: Not a VLM directory, an `onnx_variant`
            for a model that is not an ONNX export, or a variant the export lacks, in one line.
    """
    return VLM(load_vlm(path, onnx_variant=onnx_variant), str(path))


class _Cancelled(Exception):
    """Raised in the generating thread when the client has gone."""


def stream_events(
    vlm: VLM,
    images: Sequence[Any],
    prompt: str,
    max_new_tokens: int,
    on_finish: Callable[[], None] | None = None,
) -> Iterator[str]:
    """Server-sent events of one answer: `token` {"text": piece}..., then `done` (the `Answer`
    as JSON) or `error` {"error": one line}. Generation starts at once in its own thread (not
    when the events are first read), so `on_finish` (the server's model slot) runs when it ends
    even if no event is ever read; closing the iterator (the client went away) stops it at the
    next token."""
    pieces: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    gone = threading.Event()

    def on_text(text: str) -> None:
        if gone.is_set():
            raise _Cancelled
        pieces.put(("token", {"text": text}))

    def work() -> None:
        try:
            pieces.put(("done", asdict(vlm.answer(images, prompt, max_new_tokens, on_text))))
        except _Cancelled:
            pass
        except Exception as error:  # reported to the client in one line, like the JSON API
            message = " ".join(str(error).split()) or type(error).__name__
            pieces.put(("error", {"error": message}))
        finally:
            if on_finish is not None:
                on_finish()

    threading.Thread(target=work, name="vlkit-generate", daemon=True).start()

    def events() -> Iterator[str]:
        try:
            while True:
                event, data = pieces.get()
                yield f"event: {event}\ndata: {json.dumps(data)}\n\n"
                if event != "token":
                    return
        finally:
            gone.set()

    return events()
