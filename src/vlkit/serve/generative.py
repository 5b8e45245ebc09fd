"""Generative VLMs for the web app: a `vlkit train-vlm` fusion run or a SmolVLM directory.

`load_vlm(path)` loads either once; `VLM.answer(images, prompt, max_new_tokens)` decodes greedily
(deterministic) and returns the text, the prompt's words outside a fusion run's vocabulary and
the number of generated tokens. `stream_events` runs an answer in a thread and yields it as
server-sent events (`token` pieces as they are decoded, then `done` or `error`).

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

from vlkit.cli.generate import TextStreamer, smolvlm_answer_ids

MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 2000
MAX_SMOLVLM_IMAGES = 4

__all__ = ["Answer", "VLM", "load_vlm", "stream_events"]


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
    """A loaded generative VLM. Subclasses set `kind`, `max_images`, `needs_prompt`, `_stops`."""

    kind = ""
    max_images = 1
    needs_prompt = True
    _stops: frozenset[int] = frozenset()  # the stop tokens (not counted as generated tokens)

    def __init__(self, path: str) -> None:
        self.path = path

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "max_images": self.max_images,
                "needs_prompt": self.needs_prompt, "max_new_tokens": MAX_NEW_TOKENS}  # fmt: skip

    def check(self, images: Sequence[Any], prompt: str, max_new_tokens: int) -> None:
        """Raises ValueError (one line) for input this model cannot answer."""
        if not 1 <= len(images) <= self.max_images:
            many = "exactly one image" if self.max_images == 1 else f"1 to {self.max_images} images"
            raise ValueError(f"{len(images)} images: this {self.kind} VLM answers about {many}")
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
        streamer = TextStreamer(self._decode, _Pieces(on_text))  # type: ignore[arg-type]
        text, unknown = self._answer(images, prompt, max_new_tokens, streamer)
        new = streamer.tokens
        stops = [i for i, token in enumerate(new) if token in self._stops]
        return Answer(text=text, unknown_words=unknown, tokens=stops[0] if stops else len(new))

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _answer(
        self, images: Sequence[Any], prompt: str, max_new_tokens: int, streamer: TextStreamer
    ) -> tuple[str, list[str]]:
        raise NotImplementedError


class FusionRunVLM(VLM):
    """A `vlkit train-vlm` run directory (`VLMRun`): one image, a word-level vocabulary."""

    max_images = 1

    def __init__(self, path: str) -> None:
        from vlkit.recipes.vlm_run import load_vlm_run

        super().__init__(path)
        self.run = load_vlm_run(path)
        self.kind = f"fusion ({self.run.recipe.kind})"
        self.needs_prompt = "captions" not in self.run.recipe.task  # captioners take no prompt
        self._stops = frozenset([self.run.tokenizer.eot_token_id])

    def info(self) -> dict[str, Any]:
        return {**super().info(), "task": self.run.recipe.task}

    def _decode(self, ids: list[int]) -> str:
        return self.run.tokenizer.decode(ids)

    def _answer(
        self, images: Sequence[Any], prompt: str, max_new_tokens: int, streamer: TextStreamer
    ) -> tuple[str, list[str]]:
        _, unknown = self.run.prompt_ids(prompt)
        return self.run.answer(images[0], prompt, max_new_tokens, streamer=streamer), unknown


class SmolVLM(VLM):
    """A Hugging Face SmolVLM / SmolVLM2 / Idefics3 directory (its processor builds the chat)."""

    kind = "smolvlm"
    max_images = MAX_SMOLVLM_IMAGES

    def __init__(self, path: str) -> None:
        from vlkit.data.smolvlm.processor import SmolVLMProcessor
        from vlkit.hub import from_pretrained

        super().__init__(path)
        self.processor = SmolVLMProcessor.from_pretrained(path)
        self.model = from_pretrained(path).eval()
        self._stops = frozenset(self.processor.stop_token_ids)

    def _decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids, skip_special_tokens=True)

    def _answer(
        self, images: Sequence[Any], prompt: str, max_new_tokens: int, streamer: TextStreamer
    ) -> tuple[str, list[str]]:
        ids = smolvlm_answer_ids(self.model, self.processor, images, prompt,
                                 max_new_tokens=max_new_tokens, streamer=streamer)  # fmt: skip
        return self._decode(ids), []


def load_vlm(path: str) -> VLM:
    """A fusion run (`vlm_config.json`) or a SmolVLM / Idefics3 directory, loaded for answering.

    Raises:
        FileNotFoundError, ValueError, CheckpointError: Not a VLM directory, named in one line.
    """
    from vlkit.hub import _hf_model_type
    from vlkit.hub.hf_smolvlm import SMOLVLM_MODEL_TYPES
    from vlkit.recipes.vlm_run import RUN_CONFIG

    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{path}: no such VLM directory")
    if (directory / RUN_CONFIG).is_file():
        return FusionRunVLM(str(path))
    if (directory / "config.json").is_file() and _hf_model_type(directory) in SMOLVLM_MODEL_TYPES:
        return SmolVLM(str(path))
    raise ValueError(
        f"{path}: neither a `vlkit train-vlm` run ({RUN_CONFIG}) nor a SmolVLM / Idefics3 "
        "directory (config.json)"
    )


class _Cancelled(Exception):
    """Raised in the generating thread when the client has gone."""


def stream_events(
    vlm: VLM, images: Sequence[Any], prompt: str, max_new_tokens: int
) -> Iterator[str]:
    """Server-sent events of one answer: `token` {"text": piece}..., then `done` (the `Answer`
    as JSON) or `error` {"detail": one line}. Generation runs in its own thread; closing the
    iterator (the client went away) stops it at the next token."""
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
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            pieces.put(("error", {"detail": message}))

    threading.Thread(target=work, name="vlkit-generate", daemon=True).start()
    try:
        while True:
            event, data = pieces.get()
            yield f"event: {event}\ndata: {json.dumps(data)}\n\n"
            if event != "token":
                return
    finally:
        gone.set()
