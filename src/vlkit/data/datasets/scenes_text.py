"""The synthetic scenes (`shape_scenes.py`) as next-token captioning and VQA data for generative VLMs.

- `SceneCaptions`: one item per scene; the text is `[sot] + caption + [eos]` and every caption
  token (not `[sot]`, not padding) is a target. Keyed items `(index, seed)` draw the phrasing
  from the seed (list, count, relation, position; see `shape_scenes.caption`), plain indices use the
  canonical list caption. `references(i)` gives five distinct captions of scene `i` for
  CIDEr-D, the canonical one first.
- `SceneQuestions`: one item per (scene, question) from `shape_scenes.questions` (counting, colour,
  shape, size, existence, left-of / above), in the format of `vqa_text.QuestionAnswerText`.

Both yield the keys of `vqa_text.collate_vqa_text`: `image`, `input_ids`, `labels`,
`attention_mask`, `index`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from vlkit.data.datasets.image_text import parse_key
from vlkit.data.datasets.shape_scenes import caption
from vlkit.data.datasets.shapes import ShapesDataset
from vlkit.data.datasets.vqa_text import IGNORE_INDEX, QuestionAnswerText

__all__ = ["SceneCaptions", "SceneQuestions", "scene_corpus"]


class SceneCaptions(Dataset):
    """Scenes with captions as image-conditioned next-token targets.

    Args:
        num_samples: Number of scenes.
        split: "train" or "test" (different scene streams).
        transform: PIL image -> (3, S, S) float tensor (called with `generator=` for keyed items).
        tokenizer: `encode`, `sot_token_id`, `eot_token_id`, `pad_token_id` (a `WordTokenizer`).
        max_length: Padded text length L.
        seed: Scene seed (`ShapesDataset`).
        max_objects: Most objects per scene.

    Raises:
        ValueError: A caption does not fit in `max_length` (checked when the item is built).
    """

    def __init__(
        self,
        num_samples: int,
        split: str = "train",
        transform: Callable[..., torch.Tensor] | None = None,
        tokenizer: Any = None,
        max_length: int = 32,
        seed: int = 0,
        max_objects: int = 3,
    ) -> None:
        if transform is None or tokenizer is None:
            raise ValueError("SceneCaptions needs a transform and a tokenizer")
        self.scenes = ShapesDataset(num_samples, seed=seed, split=split, max_objects=max_objects)
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_token_id = int(tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.scenes)

    def references(self, index: int, count: int = 5) -> list[str]:
        """Up to `count` distinct true captions of scene `index` (canonical first)."""
        return self.scenes.captions(index, count)

    def answer(self, index: int) -> str:
        """The canonical caption (so exact-match helpers work on captions too)."""
        return self.references(index, 1)[0]

    def prompt_ids(self, index: int) -> torch.Tensor:
        """(1,) the generation prompt: just `[sot]`."""
        return torch.tensor([self.tokenizer.sot_token_id], dtype=torch.long)

    def load_image(self, key: int | tuple[int, int]) -> torch.Tensor:
        """(3, S, S) pixels of scene `key` (augmentation drawn from the key's seed, if any)."""
        index, sample_seed = parse_key(key, len(self))
        image, _ = self.scenes.scene(index)
        if sample_seed is None:
            return self.transform(image)
        return self.transform(image, generator=torch.Generator().manual_seed(sample_seed))

    def caption(self, key: int | tuple[int, int]) -> str:
        """The caption an item trains on: drawn from the key's seed, else canonical."""
        index, sample_seed = parse_key(key, len(self))
        objects = self.scenes.scene(index)[1]
        if sample_seed is None:
            return caption(objects)
        return caption(objects, random.Random(f"vlkit-scene-caption:{sample_seed}"))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, _ = parse_key(key, len(self))
        tok = self.tokenizer
        ids = [tok.sot_token_id, *tok.encode(self.caption(key)), tok.eot_token_id]
        if len(ids) > self.max_length:
            raise ValueError(
                f"scene {index}: caption needs {len(ids)} tokens, more than "
                f"max_length={self.max_length}"
            )
        n = len(ids)
        input_ids = torch.full((self.max_length,), self.pad_token_id, dtype=torch.long)  # (L,)
        input_ids[:n] = torch.tensor(ids)
        labels = torch.full((self.max_length,), IGNORE_INDEX, dtype=torch.long)  # (L,)
        labels[1:n] = input_ids[1:n]  # every caption token and eos; not the prompt's sot
        attention_mask = torch.zeros(self.max_length, dtype=torch.long)
        attention_mask[:n] = 1
        return {
            "image": self.load_image(key),
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "index": index,
        }


class SceneQuestions(QuestionAnswerText):
    """Every question of `num_scenes` scenes (counting, attributes, existence, spatial).

    Args:
        num_scenes: Number of scenes; the item count is the total of their questions.
        split, seed, max_objects: As `SceneCaptions`.
        transform, tokenizer, max_length: As `vqa_text.QuestionAnswerText`.
        kinds: Keep only these question kinds (e.g. ("count", "spatial")); None keeps all.
    """

    def __init__(
        self,
        num_scenes: int,
        split: str = "train",
        transform: Callable[..., torch.Tensor] | None = None,
        tokenizer: Any = None,
        max_length: int = 24,
        seed: int = 0,
        max_objects: int = 3,
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        self.scenes = ShapesDataset(num_scenes, seed=seed, split=split, max_objects=max_objects)
        chosen = [
            (qa, index)
            for index in range(num_scenes)
            for qa in self.scenes.questions(index)
            if kinds is None or qa["type"] in kinds
        ]
        self.types = [qa["type"] for qa, _ in chosen]  # "count", "spatial", ... per item
        samples = [(qa["question"], qa["answer"], index) for qa, index in chosen]
        super().__init__(samples, transform, tokenizer, max_length)

    def load_pil(self, image_key: Any) -> Any:
        return self.scenes.scene(int(image_key))[0]


def scene_corpus(num_scenes: int = 200, seed: int = 0) -> list[str]:
    """Captions (every phrasing) and QA text of some scenes: a vocabulary-building corpus."""
    scenes = ShapesDataset(num_scenes, seed=seed)
    texts: list[str] = []
    for index in range(num_scenes):
        texts += scenes.captions(index, count=8)
        texts += [f"{qa['question']} {qa['answer']}" for qa in scenes.questions(index)]
    return texts
