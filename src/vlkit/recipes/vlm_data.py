"""The data of a VLM recipe: the word-vocabulary corpus and the (train, test) datasets of its task."""

from __future__ import annotations

from typing import Any

from vlkit.data.datasets.scenes_text import SceneCaptions, SceneQuestions, scene_corpus
from vlkit.data.datasets.vqa_text import EasyVQAQuestions, load_easy_vqa_questions
from vlkit.data.tokenizers.word import WordTokenizer
from vlkit.training.vlm_recipe import VLMRecipe

__all__ = ["build_vlm_data", "task_corpus"]


def task_corpus(task: str) -> list[str]:
    """The training text the word vocabulary of a task is built from."""
    if task == "easy_vqa":
        triples, _ = load_easy_vqa_questions("train")
        return sorted({t for q, a, _ in triples for t in (q, a)})
    return scene_corpus()


def build_vlm_data(recipe: VLMRecipe, tokenizer: WordTokenizer, transform: Any) -> tuple[Any, Any]:
    """(train, test) datasets of the recipe's task, items in `collate_vqa_text`'s format."""
    n = recipe.max_length
    if recipe.task == "easy_vqa":
        return (
            EasyVQAQuestions("train", transform, tokenizer, n),
            EasyVQAQuestions("test", transform, tokenizer, n),
        )
    if recipe.task == "scene_captions":
        return (
            SceneCaptions(recipe.train_scenes, "train", transform, tokenizer, n),
            SceneCaptions(recipe.test_scenes, "test", transform, tokenizer, n),
        )
    return (
        SceneQuestions(recipe.train_scenes, "train", transform, tokenizer, n),
        SceneQuestions(recipe.test_scenes, "test", transform, tokenizer, n),
    )
