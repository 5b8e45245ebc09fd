"""LLM judges: a prompt in, a short reply out, for graders such as MM-Vet's (`mmvet.py`).

A judge has an `identity` (what it is, for the reply cache and the results) and
`complete(prompt, temperature=..., max_tokens=..., seed=...) -> JudgeReply`. Two kinds:

* `OpenAIChatJudge`: any OpenAI-compatible `POST {base_url}/chat/completions` endpoint (OpenAI,
  Azure-style proxies, vLLM, llama.cpp, Ollama, ...), through the standard library's urllib.
  `OpenAIChatJudge.from_env()` reads:
    - `VLKIT_JUDGE_BASE_URL`: the API base, as the openai client's `base_url` (ends in /v1);
      default https://api.openai.com/v1.
    - `VLKIT_JUDGE_MODEL`: the model; default gpt-4-0613 (MM-Vet's official grader).
    - `VLKIT_JUDGE_API_KEY`, else `OPENAI_API_KEY`: the bearer key (required for
      api.openai.com; optional for other endpoints, e.g. a local vLLM).
  Each request has a timeout; rate limits (429), server errors (5xx) and network errors are
  retried a bounded number of times with exponential backoff (honouring Retry-After).
* `LocalJudge`: a vlkit causal LM (a Llama / Qwen2 / Qwen3 directory, `vlkit.from_pretrained`)
  with its `tokenizer.json` and chat template; greedy at temperature 0, seeded sampling above.

`JudgeCache` keeps replies on disk (one JSON line per reply, appended as they come), keyed by
the judge's identity, the prompt and the request's settings, so a rerun (or an interrupted run)
never asks the judge twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from vlkit.data.tokenizers.hf_json import HFTokenizer
from vlkit.evaluation.mmvet import OFFICIAL_JUDGE_MODEL
from vlkit.hub.hf_causal_lm import is_causal_lm_directory
from vlkit.hub.loading import from_pretrained

__all__ = [
    "DEFAULT_BASE_URL",
    "Judge",
    "JudgeCache",
    "JudgeError",
    "JudgeReply",
    "LocalJudge",
    "OpenAIChatJudge",
    "judge_from_spec",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
JUDGE_SPECS = "'openai', 'openai:MODEL' (endpoint from VLKIT_JUDGE_BASE_URL) or 'local:PATH'"


class JudgeError(RuntimeError):
    """A judge that cannot answer: an endpoint refusing the request, retries exhausted (one line)."""


@dataclass(frozen=True)
class JudgeReply:
    """A judge's reply: its text and the model that wrote it (the endpoint's `model` field)."""

    text: str
    model: str


class Judge(Protocol):
    """What graders need of a judge."""

    @property
    def identity(self) -> str:
        """What the judge is (kind, model, endpoint): part of every cache key."""
        ...

    def complete(
        self, prompt: str, *, temperature: float = 0.0, max_tokens: int = 3, seed: int = 0
    ) -> JudgeReply:
        """The reply to `prompt` as one user message."""
        ...


class OpenAIChatJudge:
    """An OpenAI-compatible chat-completions endpoint (see the module docstring).

    Args:
        model: The endpoint's model name.
        base_url: API base (…/v1); `/chat/completions` is appended.
        api_key: Bearer key, or None for endpoints that need none.
        timeout: Seconds per request.
        max_retries: Retries of a request after a 429, a 5xx or a network error.
        backoff: First wait between retries in seconds (doubled each time, at most
            `max_backoff`; a Retry-After header is honoured up to `max_backoff`).
        sleep: The wait function (tests pass a no-op).
    """

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base URL {base_url!r}: must start with http:// or https://")
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries}: must be >= 0")
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.max_retries, self.backoff, self.max_backoff, self.sleep = (
            max_retries, backoff, max_backoff, sleep,
        )  # fmt: skip

    @classmethod
    def from_env(
        cls, model: str | None = None, environ: Mapping[str, str] | None = None, **options: Any
    ) -> OpenAIChatJudge:
        """The judge the environment names (VLKIT_JUDGE_BASE_URL, VLKIT_JUDGE_MODEL,
        VLKIT_JUDGE_API_KEY / OPENAI_API_KEY); `model` overrides VLKIT_JUDGE_MODEL.

        Raises:
            ValueError: api.openai.com without a key (one line naming the variables).
        """
        env = os.environ if environ is None else environ
        base_url = env.get("VLKIT_JUDGE_BASE_URL") or DEFAULT_BASE_URL
        key = env.get("VLKIT_JUDGE_API_KEY") or env.get("OPENAI_API_KEY") or None
        if key is None and "api.openai.com" in base_url:
            raise ValueError(
                "the OpenAI judge needs an API key: set OPENAI_API_KEY (or VLKIT_JUDGE_API_KEY), "
                "or VLKIT_JUDGE_BASE_URL to another OpenAI-compatible endpoint"
            )
        chosen = model or env.get("VLKIT_JUDGE_MODEL") or OFFICIAL_JUDGE_MODEL
        return cls(chosen, base_url=base_url, api_key=key, **options)

    @property
    def identity(self) -> str:
        return f"openai-chat:{self.model}@{self.base_url}"

    def complete(
        self, prompt: str, *, temperature: float = 0.0, max_tokens: int = 3, seed: int = 0
    ) -> JudgeReply:
        """POSTs the prompt as one user message (MM-Vet's request: model, max_tokens,
        temperature, messages; `seed` is not sent, as the official evaluator sends none).

        Raises:
            JudgeError: A 4xx other than 429, a malformed response, or retries exhausted.
        """
        body = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "messages": [{"role": "user", "content": prompt}],
        }
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        wait = self.backoff
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._reply(response.read())
            except urllib.error.HTTPError as error:
                detail = error.read()[:200].decode(errors="replace").replace("\n", " ")
                if error.code != 429 and error.code < 500:
                    raise JudgeError(f"judge {self.url}: HTTP {error.code} {detail}") from None
                problem = f"HTTP {error.code} {detail}"
                retry_after = _seconds(error.headers.get("Retry-After") if error.headers else None)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                problem, retry_after = f"{type(error).__name__}: {error}", None
            if attempt == self.max_retries:
                break
            self.sleep(min(self.max_backoff, retry_after if retry_after is not None else wait))
            wait *= 2
        raise JudgeError(
            f"judge {self.url}: {self.max_retries + 1} attempts failed, last: {problem}"
        )

    def _reply(self, raw: bytes) -> JudgeReply:
        try:
            response = json.loads(raw)
            content = response["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
            raise JudgeError(
                f"judge {self.url}: not a chat-completions response ({type(error).__name__}: "
                f"{raw[:120]!r})"
            ) from None
        return JudgeReply(text=content or "", model=str(response.get("model", self.model)))


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP-date Retry-After: use the backoff instead


class LocalJudge:
    """A local causal LM as judge: the prompt rendered with the tokenizer's chat template (with
    the assistant opener; the raw prompt when there is no template), then `generate`.

    Args:
        model: A `vlkit.models.decoder.DecoderLM` (anything with its `generate`).
        tokenizer: Its `vlkit.data.tokenizers.HFTokenizer`.
        name: Shown in `identity` (the directory, for `from_directory`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name

    @classmethod
    def from_directory(cls, directory: str | Path, device: str = "cpu") -> LocalJudge:
        """Loads a Llama / Qwen2 / Qwen3 causal-LM directory and its tokenizer.json.

        Raises:
            ValueError: Not a causal-LM directory, or no tokenizer.json (one line).
        """
        path = Path(directory).expanduser()
        if not path.is_dir() or not is_causal_lm_directory(path):
            raise ValueError(
                f"local judge {directory}: not a causal-LM directory (config.json with model_type "
                "llama, qwen2 or qwen3)"
            )
        model = from_pretrained(path).to(device)
        return cls(model, HFTokenizer.from_pretrained(path), str(path))

    @property
    def identity(self) -> str:
        return f"local:{self.name}"

    @torch.no_grad()
    def complete(
        self, prompt: str, *, temperature: float = 0.0, max_tokens: int = 3, seed: int = 0
    ) -> JudgeReply:
        """Greedy at temperature 0; else sampling at `temperature` with a generator seeded by
        `seed` (so a retry at a raised temperature can change the reply, reproducibly)."""
        messages = [{"role": "user", "content": prompt}]
        if self.tokenizer.chat_template is not None:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        else:
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        options: dict[str, Any] = {}
        if temperature > 0:
            generator = torch.Generator(device=device).manual_seed(seed)
            options = {"do_sample": True, "temperature": temperature, "generator": generator}
        sequence = self.model.generate(input_ids, max_new_tokens=max_tokens, **options)
        text = self.tokenizer.decode(sequence[0, input_ids.shape[1] :].tolist())
        return JudgeReply(text=text, model=self.identity)


class JudgeCache:
    """Judge replies on disk (`path`, JSON lines appended as replies come; None: in memory only).

    The key is a SHA-256 of the judge's identity, the prompt and the request's settings
    (temperature, max_tokens, and `run`: separate judge runs must not share replies). A line
    cut short by an interrupted run is ignored when the file is read back.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.hits = self.misses = 0
        self._replies: dict[str, JudgeReply] = {}
        if self.path is not None and self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                # A line torn by an interrupted write: cut it off, or the next reply appended
                # would join it on one unreadable line and be lost (and asked for again).
                text = text[: text.rfind("\n") + 1]
                with self.path.open("r+b") as file:
                    file.truncate(len(text.encode("utf-8")))
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self._replies[entry["key"]] = JudgeReply(entry["text"], entry["model"])
                except (ValueError, KeyError, TypeError):
                    continue  # an interrupted write

    @staticmethod
    def key(identity: str, prompt: str, temperature: float, max_tokens: int, run: int) -> str:
        settings = [identity, prompt, float(temperature), int(max_tokens), int(run)]
        return hashlib.sha256(json.dumps(settings).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> JudgeReply | None:
        reply = self._replies.get(key)
        if reply is None:
            self.misses += 1
        else:
            self.hits += 1
        return reply

    def put(self, key: str, reply: JudgeReply, request: Mapping[str, Any] | None = None) -> None:
        """Stores a reply (and, on disk, `request`: what was asked, for a human reading it)."""
        self._replies[key] = reply
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "text": reply.text, "model": reply.model, **(request or {})}
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(entry, ensure_ascii=False) + "\n")


def judge_from_spec(spec: str, device: str = "cpu") -> Judge:
    """A judge from a short spec: "openai" (all from the environment), "openai:MODEL" (the
    model named, the endpoint from the environment) or "local:PATH" (a causal-LM directory).

    Raises:
        ValueError: Another spec, or what `OpenAIChatJudge.from_env` / `LocalJudge` refuse.
    """
    kind, _, value = spec.partition(":")
    if kind == "openai":
        return OpenAIChatJudge.from_env(model=value or None)
    if kind == "local" and value:
        return LocalJudge.from_directory(value, device=device)
    raise ValueError(f"judge {spec!r}: expected {JUDGE_SPECS}")
