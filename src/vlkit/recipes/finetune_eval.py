"""What a fine-tuning run shows about held-out data: answers, scores and periodic samples.

Held-out rows are conversations (the canonical rows of `vlkit.data.datasets.conversation_formats`);
each becomes one question: the first user turn (its `<image>` placeholders dropped: the images
go in as images) and, as the reference, the first assistant turn. The model answers through the
`VLMPipeline` of its kind (`vlkit.inference`: SmolVLMPipeline, LlavaPipeline, ComposedPipeline),
the very path `vlkit generate` and the web app take, so the prompt is rendered by the model's own
chat template and its images are tiled / expanded by its own processor.

Why not `evaluation.generative.VQAAccuracy`: it builds `[<image> x T] + prompt` inputs for the
fusion VLMs of `train-vlm` (a fixed T per image), which a SmolVLM (tiles, row/column tokens)
cannot take. The scores are the existing metric functions of `evaluation/vqa.py`:
`exact_match_accuracy` (strip + lower-case) and, for rows that carry the ten human answers of
VQAv2 (`answers`), the official `vqa_accuracy`.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from vlkit.data.images import load_image, to_rgb
from vlkit.evaluation.evaluator import eval_mode
from vlkit.evaluation.vqa import exact_match_accuracy, vqa_accuracy
from vlkit.inference.vlm_loading import vlm_pipeline_class
from vlkit.inference.vlm_pipeline import VLMPipeline
from vlkit.training.fsdp import gathered
from vlkit.training.trainer import Callback, Trainer

__all__ = [
    "GenerationLog",
    "HeldOutQuestion",
    "HeldOutVQA",
    "answer_questions",
    "heldout_questions",
    "model_pipeline",
]

log = logging.getLogger(__name__)
IMAGE_PLACEHOLDER = "<image>"


@dataclass
class HeldOutQuestion:
    """One held-out question: its images, the prompt text and the reference answer(s)."""

    id: str
    images: list[Any]
    prompt: str
    answer: str
    answers: list[str] = field(default_factory=list)  # VQAv2's ten human answers, when known


def heldout_questions(rows: Sequence[dict[str, Any]]) -> list[HeldOutQuestion]:
    """The first user turn and first assistant answer of each conversation row (rows without
    either are left out)."""
    questions = []
    for number, row in enumerate(rows):
        messages = row.get("messages", [])
        user = next((m["content"] for m in messages if m["role"] == "user"), None)
        answer = next((m["content"] for m in messages if m["role"] == "assistant"), None)
        if user is None or answer is None:
            continue
        prompt = " ".join(user.replace(IMAGE_PLACEHOLDER, " ").split())
        answers = [str(a) for a in row.get("answers", []) or []]
        questions.append(HeldOutQuestion(str(row.get("id", number)), list(row.get("images", [])),
                                         prompt, answer.strip(), answers))  # fmt: skip
    return questions


def _pil(image: Any) -> Image.Image:
    """An image of a row (a path, encoded bytes, a {"bytes"/"path"} dict or a PIL image) as RGB."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, dict):  # the `datasets` Image feature's storage
        image = image.get("bytes") or image.get("path")
    if isinstance(image, bytes | bytearray):
        return to_rgb(Image.open(io.BytesIO(image)))
    return load_image(image)


def model_pipeline(model: nn.Module, processor: Any, model_dir: str | Path) -> VLMPipeline:
    """`model` (being fine-tuned, not a copy) with `processor` as the `VLMPipeline` of the kind
    of `model_dir`, the directory it was loaded from."""
    kind = vlm_pipeline_class(model_dir)
    try:
        return kind(model, processor)  # type: ignore[call-arg]
    except TypeError:  # a `train-vlm` run directory: no (model, processor) pipeline
        raise ValueError(
            f"{model_dir}: vlkit finetune takes SmolVLM / Idefics3, LLaVA and composed VLM "
            f"directories, not a {kind.description}"
        ) from None


@torch.no_grad()
def answer_questions(
    pipeline: VLMPipeline, questions: Sequence[HeldOutQuestion], max_new_tokens: int = 16
) -> list[str]:
    """Greedy answers, one question at a time (the model in eval mode for the duration).

    A model sharded by FSDP answers with its parameters gathered (`training.fsdp.gathered`):
    every process of the run must call this with the same questions."""
    predictions = []
    with eval_mode(pipeline.model), gathered(pipeline.model):
        for question in questions:
            inputs = pipeline.prepare([_pil(image) for image in question.images], question.prompt)
            new = pipeline.generate(inputs, max_new_tokens=max_new_tokens)
            predictions.append(pipeline.decode(new).strip())
    return predictions


def score_answers(predictions: Sequence[str], questions: Sequence[HeldOutQuestion]) -> dict:
    """{"exact_match"} and, when every question has human answers, {"vqa_accuracy"}."""
    scores = {"exact_match": exact_match_accuracy(predictions, [q.answer for q in questions])}
    if questions and all(q.answers for q in questions):
        per_question = [
            vqa_accuracy(p, q.answers) for p, q in zip(predictions, questions, strict=True)
        ]
        scores["vqa_accuracy"] = sum(per_question) / len(per_question)
    return scores


class HeldOutVQA:
    """The `Evaluator` (`evaluate(model, questions) -> metrics`) of held-out questions.

    Args:
        pipeline: The model's pipeline (`model_pipeline`); `evaluate` answers with its model.
        max_new_tokens: Generation budget per answer.
    """

    def __init__(self, pipeline: VLMPipeline, max_new_tokens: int = 16) -> None:
        self.pipeline = pipeline
        self.max_new_tokens = max_new_tokens

    def evaluate(self, model: nn.Module, data: Sequence[HeldOutQuestion]) -> dict[str, float]:
        self.pipeline.model = model
        predictions = answer_questions(self.pipeline, data, self.max_new_tokens)
        return score_answers(predictions, data)


class GenerationLog(Callback):
    """Every `every` steps, greedy answers to a few held-out questions, appended to a JSONL file
    ({"step", "id", "prompt", "prediction", "answer"} per line) and logged.

    Lines past the step a resumed run restarts from are dropped first (they will be redone), as
    `JsonlLogger` does with metrics.jsonl. Greedy decoding draws no random numbers, so the run's
    RNG stream, and thus an exact resume, is untouched. `write=False` (the other processes of
    an FSDP run, which must generate in step with the main one) generates without writing.
    """

    def __init__(
        self,
        pipeline: VLMPipeline,
        questions: Sequence[HeldOutQuestion],
        path: str | Path,
        every: int,
        max_new_tokens: int = 16,
        write: bool = True,
    ) -> None:
        self.pipeline, self.questions = pipeline, list(questions)
        self.path, self.every, self.max_new_tokens = Path(path), every, max_new_tokens
        self.writes = write

    def on_train_start(self, trainer: Trainer) -> None:
        if self.writes and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= trainer.step]  # fmt: skip
            self.path.write_text("".join(line + "\n" for line in kept))

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.every and trainer.step % self.every == 0:
            self.write(trainer.step)

    def write(self, step: int) -> list[str]:
        """Answers the questions now; appends them at `step`; returns the answers."""
        predictions = answer_questions(self.pipeline, self.questions, self.max_new_tokens)
        if not self.writes:
            return predictions
        with self.path.open("a") as handle:
            for question, prediction in zip(self.questions, predictions, strict=True):
                row = {"step": step, "id": question.id, "prompt": question.prompt,
                       "prediction": prediction, "answer": question.answer}  # fmt: skip
                handle.write(json.dumps(row) + "\n")
                log.info("step %d | %s -> %r (reference %r)", step, question.prompt,
                         prediction, question.answer)  # fmt: skip
        return predictions
