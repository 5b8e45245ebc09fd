"""easy-VQA as (image, question, answer) samples for generative (next-token) VQA training.

Each sample is one question about one image. The text is `prompt + answer + eos`, where the
prompt is `[sot] + question ids` and the answer is the tokenized answer followed by the
end-of-text id, which doubles as the stop token for generation. `labels` copy the answer part
and are -100 (ignored by the loss) on the prompt and on padding, so the model is trained only
to produce the answer. Image placeholder tokens are not part of the sample: the VLM task
prepends as many as its connector produces (`vlkit.training.vlm_task`).

Items are dicts `{"image": (3, S, S) float, "input_ids": (L,) long, "labels": (L,) long,
"attention_mask": (L,) long, "index": int}` with L = `max_length` (right padded with the
tokenizer's pad id), or `{"skipped": reason, "index": int}` when the image cannot be read;
`collate_vqa_text` batches them (and drops the skipped ones, as `collate_image_text` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from vlkit.data.datasets.easy_vqa import read_easy_vqa
from vlkit.data.datasets.image_text import parse_key
from vlkit.data.images import ImageLoadError, load_image
from vlkit.losses.next_token import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "EasyVQAQuestions",
    "QuestionAnswerText",
    "collate_vqa_text",
    "load_easy_vqa_questions",
]


def load_easy_vqa_questions(split: str = "train") -> tuple[list[tuple[str, str, int]], dict]:
    """easy-VQA's (question, answer, image id) triples and image id -> PNG path of one split.

    Args:
        split: "train" (38,575 questions) or "test".

    Returns:
        The triples in easy-VQA's order, and the image paths.

    Raises:
        ImportError: The `easy_vqa` package is not installed.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    questions, answers, ids, paths = read_easy_vqa(split)
    triples = [(str(q), str(a), int(i)) for q, a, i in zip(questions, answers, ids, strict=True)]
    return triples, dict(paths)


class QuestionAnswerText(Dataset):
    """(image, question, answer) samples tokenized for next-token training: the shared core.

    Subclasses say how an image key becomes a PIL image (`load_pil`); everything else (prompt
    and answer ids, labels, padding, keyed augmentation) is here. Keys are an index or
    `(index, sample_seed)` (the trainer's `ResumableBatchSampler`); with a seed the transform
    draws from `torch.Generator().manual_seed(sample_seed)`, so an item is a pure function of
    its key.

    Args:
        samples: (question, answer, image key) triples.
        transform: PIL image -> (3, S, S) float tensor (called with `generator=` for keyed items).
        tokenizer: Has `encode(text) -> list[int]`, `sot_token_id`, `eot_token_id` and
            `pad_token_id` (`vlkit.get_tokenizer("clip")`, or a `WordTokenizer`).
        max_length: Padded text length L (prompt + answer + eos must fit).

    Raises:
        ValueError: A sample's text does not fit in `max_length`.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, str, Any]],
        transform: Callable[..., torch.Tensor] | None,
        tokenizer: Any,
        max_length: int = 24,
    ) -> None:
        if transform is None or tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs a transform and a tokenizer")
        self.samples = [(str(q), str(a), i) for q, a, i in samples]
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_token_id = int(getattr(tokenizer, "pad_token_id", 0))
        self.eos_token_id = int(tokenizer.eot_token_id)
        # VQA corpora repeat a few dozen question and answer strings: tokenize each one once.
        encoded: dict[str, list[int]] = {}
        for text in {t for q, a, _ in self.samples for t in (q, a)}:
            encoded[text] = list(tokenizer.encode(text))
        sot = int(tokenizer.sot_token_id)
        self._prompts = [[sot, *encoded[q]] for q, _, _ in self.samples]
        self._answers = [[*encoded[a], self.eos_token_id] for _, a, _ in self.samples]
        for (question, answer, _), p, a in zip(
            self.samples, self._prompts, self._answers, strict=True
        ):
            if len(p) + len(a) > self.max_length:
                raise ValueError(
                    f"{question!r} -> {answer!r} needs {len(p) + len(a)} tokens, "
                    f"more than max_length={self.max_length}"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def question(self, index: int) -> str:
        """The question text of item `index`."""
        return self.samples[index][0]

    def answer(self, index: int) -> str:
        """The reference answer of item `index`."""
        return self.samples[index][1]

    def prompt_ids(self, index: int) -> torch.Tensor:
        """(P,) unpadded prompt ids of item `index` (`[sot] + question`), for generation."""
        return torch.tensor(self._prompts[index], dtype=torch.long)

    def load_pil(self, image_key: Any) -> Any:
        """The PIL image of an image key (the third element of a sample)."""
        raise NotImplementedError

    def load_image(self, key: int | tuple[int, int]) -> torch.Tensor:
        """(3, S, S) pixels of item `key` (transform drawn from the key's seed, if any).

        Raises:
            vlkit.data.images.ImageLoadError: The file cannot be read.
        """
        index, sample_seed = parse_key(key, len(self))
        image = self.load_pil(self.samples[index][2])
        if sample_seed is None:
            return self.transform(image)
        return self.transform(image, generator=torch.Generator().manual_seed(sample_seed))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, _ = parse_key(key, len(self))
        try:
            pixels = self.load_image(key)  # (3, S, S)
        except ImageLoadError as error:
            return {"skipped": str(error).splitlines()[0], "index": index}
        prompt, answer = self._prompts[index], self._answers[index]
        n = len(prompt) + len(answer)
        input_ids = torch.full((self.max_length,), self.pad_token_id, dtype=torch.long)  # (L,)
        input_ids[:n] = torch.tensor(prompt + answer, dtype=torch.long)
        labels = torch.full((self.max_length,), IGNORE_INDEX, dtype=torch.long)  # (L,)
        labels[len(prompt) : n] = torch.tensor(answer, dtype=torch.long)
        attention_mask = torch.zeros(self.max_length, dtype=torch.long)  # (L,)
        attention_mask[:n] = 1
        return {
            "image": pixels,
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "index": index,
        }


class EasyVQAQuestions(QuestionAnswerText):
    """One item per easy-VQA (image, question, answer), tokenized for next-token training.

    Args:
        split: "train" or "test".
        transform: PIL image -> (3, S, S) float tensor (called with `generator=` for keyed items).
        tokenizer: See `QuestionAnswerText` (e.g. `vlkit.get_tokenizer("clip")`).
        max_length: Padded text length L (prompt + answer + eos must fit).
        samples: Use these (question, answer, image id) triples instead of the whole split
            (e.g. a subset for overfitting tests).
        image_paths: image id -> PNG path; loaded from `split` when None.

    Raises:
        ValueError: A sample's text does not fit in `max_length`.
    """

    def __init__(
        self,
        split: str = "train",
        transform: Callable[..., torch.Tensor] | None = None,
        tokenizer: Any = None,
        max_length: int = 24,
        samples: Sequence[tuple[str, str, int]] | None = None,
        image_paths: Mapping[int, str] | None = None,
    ) -> None:
        if transform is None or tokenizer is None:
            raise ValueError("EasyVQAQuestions needs a transform and a tokenizer")
        if samples is None or image_paths is None:
            all_samples, paths = load_easy_vqa_questions(split)
            samples = all_samples if samples is None else samples
            image_paths = paths if image_paths is None else image_paths
        self.image_paths = dict(image_paths)
        super().__init__([(q, a, int(i)) for q, a, i in samples], transform, tokenizer, max_length)

    def load_pil(self, image_key: Any) -> Any:
        return load_image(self.image_paths[image_key])


def collate_vqa_text(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stacks the good samples of a batch; lists the reasons of the skipped ones.

    Args:
        samples: Items of `EasyVQAQuestions` (or any dataset with the same keys).

    Returns:
        A dict with `images` (B, 3, S, S), `input_ids` (B, L), `labels` (B, L),
        `attention_mask` (B, L), `indices` (B,) and `skipped` (list of reasons). The key
        `images` is what the trainer counts samples by.
    """
    good = [s for s in samples if "skipped" not in s]
    skipped = [str(s["skipped"]) for s in samples if "skipped" in s]
    if not good:
        return {
            "images": torch.empty((0, 0, 0, 0)),
            "input_ids": torch.empty((0, 0), dtype=torch.long),
            "labels": torch.empty((0, 0), dtype=torch.long),
            "attention_mask": torch.empty((0, 0), dtype=torch.long),
            "indices": torch.empty((0,), dtype=torch.long),
            "skipped": skipped,
        }
    return {
        "images": torch.stack([s["image"] for s in good]),
        "input_ids": torch.stack([s["input_ids"] for s in good]).long(),
        "labels": torch.stack([s["labels"] for s in good]).long(),
        "attention_mask": torch.stack([s["attention_mask"] for s in good]).long(),
        "indices": torch.tensor([int(s["index"]) for s in good], dtype=torch.long),
        "skipped": skipped,
    }
