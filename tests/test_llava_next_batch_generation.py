"""Batched LLaVA-NeXT answers (`vlkit.inference.batch_generation` over `LlavaNextPipeline`).

The tiny random transformers LLaVA-NeXT directory of tests/test_hf_llava_next.py (32 px tiles,
LLaVA-NeXT's grids scaled down, so images of different sizes get different view counts) answers
requests of different prompt lengths and images in one `model.generate` call whose answers equal
each request answered alone, and `vlkit benchmark`'s recipe predicts the same with batches of 3
as with batches of 1. A composed anyres llava (`vlkit.compose_vlm(..., anyres=True)`, the
fixture parts of tests/test_llava_next_compose.py) batches the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import vlkit
from vlkit.data.benchmarks.vqa_sets import DATASETS
from vlkit.inference.batch_generation import batchable, generate_batch
from vlkit.inference.composed_pipeline import ComposedPipeline
from vlkit.inference.llava_pipeline import LlavaNextPipeline
from vlkit.inference.vlm_loading import load_vlm
from vlkit.recipes.generative_benchmark import run_generative_task

pytest.importorskip("transformers")
from test_generative_benchmark import data_root  # noqa: E402, F401 (a fixture)
from test_hf_llava_next import checkpoint, one_thread  # noqa: E402, F401 (fixtures)
from test_llava_next_compose import parts  # noqa: E402, F401 (a fixture)

NEW = 8


@pytest.fixture(scope="module")
def pipeline(checkpoint: dict[str, Any]) -> LlavaNextPipeline:  # noqa: F811
    loaded = load_vlm(checkpoint["dir"])
    assert type(loaded) is LlavaNextPipeline
    return loaded


def _requests(photos: list[Image.Image]) -> list[tuple[list[Image.Image], str]]:
    """Prompts of different lengths; photos (wide, tall, square) of 4, 3 and 5 views."""
    wide, tall, square = photos
    return [
        ([wide, tall], "what?"),
        ([square], "what color is the shape? what color is the shape? what color is it?"),
        ([tall], "what color is the shape?"),
    ]


def _alone(pipeline: LlavaNextPipeline, requests: list[Any]) -> list[str]:
    return [
        pipeline.decode(pipeline.generate(pipeline.prepare(images, prompt), max_new_tokens=NEW))
        for images, prompt in requests
    ]


def test_batched_answers_equal_each_request_alone(pipeline, checkpoint) -> None:  # noqa: F811
    assert batchable(pipeline)
    requests = _requests(checkpoint["photos"])
    prepared = [pipeline.prepare(images, prompt) for images, prompt in requests]
    assert len({inputs.input_ids.shape[1] for inputs in prepared}) == 3  # left padding needed
    views = [pipeline.model.view_counts(p.model_inputs["image_sizes"]) for p in prepared]
    assert views == [[4, 3], [5], [3]]  # the batch pads every image to 5 views
    alone = _alone(pipeline, requests)
    assert any(answer.strip() for answer in alone)
    assert generate_batch(pipeline, requests, max_new_tokens=NEW) == alone


def test_one_generate_call_per_batch(pipeline, checkpoint, monkeypatch) -> None:  # noqa: F811
    calls: list[dict[str, Any]] = []
    original = pipeline.model.generate

    def spy(input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append({"input_ids": input_ids, **kwargs})
        return original(input_ids, **kwargs)

    monkeypatch.setattr(pipeline.model, "generate", spy)
    generate_batch(pipeline, _requests(checkpoint["photos"]), max_new_tokens=NEW)
    assert len(calls) == 1
    call = calls[0]
    assert call["input_ids"].shape[0] == 3
    # The rows' 4 images in row order, each zero-padded to the largest count of views.
    assert call["pixel_values"].shape == (4, 5, 3, 32, 32)
    assert call["image_sizes"].tolist() == [[40, 100], [60, 30], [50, 50], [60, 30]]
    assert not call["pixel_values"][1, 3:].any() and not call["pixel_values"][3, 3:].any()
    mask = call["attention_mask"]
    assert (mask[:, 0] == 0).sum() == 2 and mask[:, -1].all()  # left-padded: two shorter rows


def test_benchmark_predicts_the_same_with_batches_of_3_and_1(
    pipeline,
    checkpoint,  # noqa: F811
    data_root,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = DATASETS["vqav2"](data_root / "vqav2")  # 4 images of 4 heights
    calls: list[int] = []
    original = pipeline.model.generate

    def spy(input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append(input_ids.shape[0])
        return original(input_ids, **kwargs)

    monkeypatch.setattr(pipeline.model, "generate", spy)
    rows = {}
    for batch_size in (3, 1):
        record = run_generative_task(checkpoint["dir"], "vqav2", dataset, tmp_path / str(batch_size),
                                     batch_size=batch_size, max_new_tokens=NEW, pipeline=pipeline,
                                     progress=False)  # fmt: skip
        assert record["samples"] == 4 and record["model"] == "llava_next"
        rows[batch_size] = json.loads(Path(record["submission"]).read_text())
    assert calls == [3, 1, 1, 1, 1, 1]  # batched: one call for 3 samples, then the last alone
    assert rows[3] == rows[1]
    assert [row["question_id"] for row in rows[3]] == [1000, 1001, 1002, 1003]


def test_composed_anyres_llava_batches_alike(parts, tmp_path: Path) -> None:  # noqa: F811
    """`compose_vlm(..., anyres=True)` saved and loaded: a `ComposedPipeline` whose `prepare`
    gives the same views and `image_sizes`, batched the same way."""
    torch.manual_seed(0)
    model = vlkit.compose_vlm(parts["clip"], parts["llama"], "llava", anyres=True)
    model.save_pretrained(tmp_path / "composed")
    composed = load_vlm(tmp_path / "composed")
    assert type(composed) is ComposedPipeline and batchable(composed)
    requests = _requests(parts["photos"])
    alone = _alone(composed, requests)
    assert any(answer.strip() for answer in alone)
    assert generate_batch(composed, requests, max_new_tokens=NEW) == alone
