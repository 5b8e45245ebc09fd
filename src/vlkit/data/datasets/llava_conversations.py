"""LLaVA conversation JSON: the instruction-tuning format, written and read for generative VLMs.

The format (LLaVA, Liu et al. 2023, `llava/train/train.py` `LazySupervisedDataset`; the
released `llava_instruct_150k.json` / `blip_laion_cc_sbu_558k.json`) is a JSON list of rows

    {"id": "...", "image": "path" | ["path", ...],
     "conversations": [{"from": "human", "value": "<image>\\nWhat ...?"},
                       {"from": "gpt", "value": "..."}, ...]}

Turns alternate human / gpt (multi-turn); each `<image>` in a human turn is where one image of
`image` goes (a row without `<image>` but with one image gets it prepended to the first turn, as
LLaVA's `preprocess_multimodal` does). Image paths are relative to `image_folder` unless absolute.

`LlavaConversations` renders each row with the LM's own chat template (`HFTokenizer`,
`apply_chat_template`), expands every `<image>` to the model's `image_tokens` placeholders, and
sets labels only on the assistant tokens (the answer text and its end-of-turn token; -100 =
`IGNORE_INDEX` elsewhere), as LLaVA's `preprocess_v1` masks everything but the gpt turns.
Spans are found on the rendered text: the prefix up to turn i with the generation prompt is a
prefix of the render up to and including turn i, and the difference is turn i's answer. Each
segment is tokenized on its own, so a prompt tokenizes exactly as at inference.

Bad rows (missing keys, turns not alternating, more `<image>` than images, unreadable images)
are skipped and counted, with one warning naming the row.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlkit.data.datasets.image_text import parse_key
from vlkit.data.images import ImageLoadError, load_image
from vlkit.losses.next_token import IGNORE_INDEX

__all__ = [
    "IMAGE_TOKEN",
    "LlavaConversations",
    "collate_conversations",
    "easy_vqa_conversations",
    "read_llava_conversations",
    "write_llava_conversations",
]

IMAGE_TOKEN = "<image>"
_ROLES = {"human": "user", "gpt": "assistant"}


def easy_vqa_conversations(split: str = "train", limit: int | None = None) -> list[dict]:
    """easy-VQA questions as LLaVA rows: one single-turn conversation per question.

    Args:
        split: "train" or "test".
        limit: Keep only the first N questions (easy-VQA's order).
    """
    from vlkit.data.datasets.vqa_text import load_easy_vqa_questions

    triples, paths = load_easy_vqa_questions(split)
    rows = []
    for n, (question, answer, image_id) in enumerate(triples[:limit]):
        rows.append(
            {
                "id": f"easy_vqa_{split}_{n}",
                "image": str(paths[image_id]),
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    return rows


def write_llava_conversations(rows: Iterable[dict], path: str | Path) -> Path:
    """Writes rows as one LLaVA conversation JSON file (a list); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=1) + "\n")
    return path


def _row_problem(row: Any) -> str | None:
    """Why a row cannot be used, or None."""
    if not isinstance(row, dict):
        return f"expected an object, got {type(row).__name__}"
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "'conversations' must be a non-empty list"
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return f"conversations[{t}] needs a string 'value'"
        expected = "human" if t % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            return f"conversations[{t}]['from'] must be {expected!r}, got {turn.get('from')!r}"
    if len(turns) % 2:
        return "the last turn must be 'gpt' (an answer to train on)"
    images = _images(row)
    if images is None:
        return "'image' must be a path or a list of paths"
    placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    implicit = placeholders == 0 and len(images) == 1  # LLaVA prepends the one image
    if placeholders != len(images) and not implicit:
        return f"{placeholders} {IMAGE_TOKEN} placeholders for {len(images)} images"
    return None


def _images(row: dict) -> list[str] | None:
    image = row.get("image", [])
    if isinstance(image, str):
        return [image]
    if isinstance(image, list) and all(isinstance(p, str) for p in image):
        return list(image)
    return None


def read_llava_conversations(path: str | Path) -> tuple[list[dict], int]:
    """The usable rows of a LLaVA conversation JSON file and the number skipped.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not JSON or not a list (names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a LLaVA conversation file is a JSON list of rows")
    rows, skipped = [], 0
    for n, row in enumerate(data):
        problem = _row_problem(row)
        if problem is None:
            rows.append(row)
            continue
        skipped += 1
        name = row.get("id", n) if isinstance(row, dict) else n
        warnings.warn(f"{path}: skipped row {n} (id {name!r}): {problem}", stacklevel=2)
    return rows, skipped


def _messages(row: dict, image_text: str) -> list[dict[str, str]]:
    """The row as chat messages, each `<image>` replaced by `image_text`."""
    turns = row["conversations"]
    values = [t["value"] for t in turns]
    if len(_images(row) or []) == 1 and not any(IMAGE_TOKEN in v for v in values):
        values[0] = f"{IMAGE_TOKEN}\n{values[0]}"
    return [
        {"role": _ROLES[t["from"]], "content": v.replace(IMAGE_TOKEN, image_text)}
        for t, v in zip(turns, values, strict=True)
    ]


class LlavaConversations(Dataset):
    """LLaVA conversation rows as model inputs through the LM's chat template.

    Items: `{"pixel_values": (N, 3, S, S), "input_ids": (L,), "labels": (L,),
    "attention_mask": (L,), "index"}` (L = the row's length, at most `max_length`; the collate
    right-pads), or `{"skipped": reason, "index"}` when an image cannot be read.

    Args:
        rows: Rows (as `read_llava_conversations` returns) or the path of a JSON file.
        tokenizer: An `HFTokenizer` with a chat template and the `image_token` as a token.
        transform: PIL image -> (3, S, S) tensor.
        image_tokens: Placeholders one image fills (the model's `num_image_tokens`).
        image_folder: Base of relative image paths.
        max_length: Longer rows are truncated (their labels too).
        image_token: The placeholder token's text.
    """

    def __init__(
        self,
        rows: Sequence[dict] | str | Path,
        tokenizer: Any,
        transform: Callable[[Any], torch.Tensor],
        image_tokens: int,
        image_folder: str | Path | None = None,
        max_length: int = 256,
        image_token: str = IMAGE_TOKEN,
    ) -> None:
        self.skipped = 0
        if isinstance(rows, (str, Path)):
            rows, self.skipped = read_llava_conversations(rows)
        self.rows = list(rows)
        self.tokenizer = tokenizer
        self.transform = transform
        self.image_tokens = int(image_tokens)
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.max_length = max_length
        self.image_text = image_token * self.image_tokens

    def __len__(self) -> int:
        return len(self.rows)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _segments(self, index: int) -> list[tuple[str, bool]]:
        """The rendered row as (text, is_answer) segments."""
        messages = _messages(self.rows[index], self.image_text)
        segments: list[tuple[str, bool]] = []
        done = ""
        for i in range(1, len(messages), 2):
            prompt = self._render(messages[:i], True)
            full = self._render(messages[: i + 1], False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ValueError(
                    f"row {index}: the chat template's render of a conversation prefix is not "
                    "a prefix of the full render; assistant spans cannot be found"
                )
            answer = full[len(prompt) :]
            # The answer and its end-of-turn token are targets; the newline after it is not.
            target = answer.rstrip("\n")
            segments += [(prompt[len(done) :], False), (target, True)]
            segments.append((answer[len(target) :], False))
            done = full
        return [s for s in segments if s[0]]

    def image_paths(self, index: int) -> list[Path]:
        paths = [Path(p) for p in _images(self.rows[index]) or []]
        if self.image_folder is None:
            return paths
        return [p if p.is_absolute() else self.image_folder / p for p in paths]

    def load_image(self, index: int) -> torch.Tensor:
        """(3, S, S) pixels of the row's first image."""
        return self.transform(load_image(self.image_paths(index)[0]))

    def prompt_ids(self, index: int) -> torch.Tensor:
        """(P,) ids of the row up to its last answer, with the generation prompt."""
        messages = _messages(self.rows[index], self.image_text)
        text = self._render(messages[:-1], True)
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.long)

    def answer(self, index: int) -> str:
        """The row's last gpt turn."""
        return self.rows[index]["conversations"][-1]["value"]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, _ = parse_key(key, len(self.rows))  # the Trainer's sampler passes (index, seed)
        try:
            pixels = torch.stack(
                [self.transform(load_image(p)) for p in self.image_paths(index)]
            ) if self.image_paths(index) else torch.zeros(0)  # fmt: skip
        except (ImageLoadError, OSError) as error:
            return {"skipped": f"row {index}: {error}", "index": index}
        ids: list[int] = []
        labels: list[int] = []
        for text, is_answer in self._segments(index):
            piece = self.tokenizer.encode(text)
            ids += piece
            labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        return {
            "pixel_values": pixels,
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "index": index,
        }


def collate_conversations(samples: Sequence[dict], pad_token_id: int = 0) -> dict[str, Any]:
    """Right-pads items of `LlavaConversations` into a batch (skipped items dropped).

    Returns:
        {"images": (B, N, 3, S, S), "input_ids", "labels" (-100 on padding),
        "attention_mask" (B, L), "index": list, "skipped": reasons}. Rows must hold the same
        number N of images (the `Trainer` counts `images` rows).
    """
    items = [s for s in samples if "skipped" not in s]
    skipped = [str(s["skipped"]) for s in samples if "skipped" in s]
    if not items:  # the Trainer skips a batch with fewer than two images
        return {"images": torch.zeros(0), "skipped": skipped}
    width = max(len(s["input_ids"]) for s in items)
    b = len(items)
    ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for row, s in enumerate(items):
        n = len(s["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
    return {
        "images": torch.stack([s["pixel_values"] for s in items]),
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "index": [s["index"] for s in items],
        "skipped": skipped,
    }
