"""Training small generative VLMs end to end: data, model, the one `Trainer`, evaluation, run dir.

One `VLMRecipe` names everything a run needs: the fusion architecture (`FUSION_KINDS`: LLaVA
projector, BLIP-2 Q-Former, Flamingo Perceiver + gated cross-attention, CogVLM visual expert,
early fusion), the task (easy-VQA questions, synthetic-scene captions or scene questions), the
frozen CLIP image tower the connectors read, the decoder size and the step budget. `train_vlm`
builds a word-level tokenizer from the training text, trains with `VQALMTask` / `CaptionLMTask`
in the `Trainer`, evaluates (exact-match answer accuracy, or CIDEr-D / BLEU-4 against five
references per scene) and writes a run directory that `load_vlm_run` (and `vlkit generate`)
reads back:

    run/vlm_config.json   recipe + fusion config + the image tower's CLIP config
    run/model.safetensors the whole model (frozen tower included)
    run/tokenizer.json    the word tokenizer
    run/summary.json      metrics, parameter counts, FLOPs, timings

LLaVA's two-stage schedule (Liu et al. 2023, Sec. 4.2) is `connector_only_steps`: first only
the connector trains (decoder frozen), then connector and decoder together for `steps`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.data.tokenizers.word import WordTokenizer
from vlkit.models.decoder import DecoderConfig

__all__ = [
    "TASKS",
    "FrozenVision",
    "VLMRecipe",
    "VLMRun",
    "build_vlm_data",
    "evaluate_vlm",
    "flops_per_sample",
    "load_vlm_run",
    "train_vlm",
]

TASKS = ("easy_vqa", "scene_captions", "scene_questions")
RUN_CONFIG = "vlm_config.json"


@dataclass
class VLMRecipe:
    """Everything one generative-VLM training run needs.

    Attributes:
        kind: Fusion architecture, one of `vlkit.models.fusion_vlm.FUSION_KINDS`.
        task: "easy_vqa", "scene_captions" or "scene_questions".
        vision: Directory of a vlkit CLIP checkpoint whose image tower (frozen) feeds the
            connector; "" builds the `vision_preset` at random (only sensible for "early",
            which ignores it, and for tests).
        vision_preset: Preset used when `vision` is "".
        vision_trainable: Train the image tower with the rest (default: frozen, as LLaVA).
        vision_tokens: Which tower tokens the connector reads (`vlm_task.tower_tokens`):
            "final" (default; `small-rn-64`: its 2x2 last feature map) or, for a ResNet tower,
            an earlier stage's finer map ("layer3": 4x4, "layer2": 8x8 at 64x64 pixels).
        steps: Optimizer steps of the main stage.
        connector_only_steps: LLaVA stage 1 steps before the main stage (decoder frozen).
        batch_size, lr, warmup_steps, weight_decay: Optimisation.
        hidden_size, intermediate_size, layers, heads: Decoder shape (the same for every kind).
        num_queries: Q-Former queries / Perceiver latents.
        max_length: Padded text length.
        train_scenes, test_scenes: Scene counts for the scene tasks.
        max_test: Evaluate on the first N test items only (None: all).
        seed, device: Reproducibility and placement ("auto" picks CUDA when present).
    """

    kind: str = "llava"
    task: str = "easy_vqa"
    vision: str = ""
    vision_preset: str = "small-rn-64"
    vision_trainable: bool = False
    vision_tokens: str = "final"
    steps: int = 1000
    connector_only_steps: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    hidden_size: int = 128
    intermediate_size: int = 512
    layers: int = 2
    heads: int = 4
    num_queries: int = 8
    max_length: int = 24
    train_scenes: int = 20000
    test_scenes: int = 500
    max_test: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        from vlkit.models.fusion_vlm import FUSION_KINDS

        if self.kind not in FUSION_KINDS:
            raise ValueError(f"kind must be one of {FUSION_KINDS}, got {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        from vlkit.training.vlm_task import TOKEN_SOURCES

        if self.vision_tokens not in TOKEN_SOURCES:
            raise ValueError(
                f"vision_tokens must be one of {TOKEN_SOURCES}, got {self.vision_tokens!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLMRecipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known: {sorted(known)}")
        return cls(**data)


class FrozenVision(nn.Module):
    """A CLIP image tower used as a fixed feature extractor: (N, 3, S, S) -> (N, T, Dv) tokens.

    Always in eval mode (a frozen ResNet's BatchNorm statistics must not drift while the VLM
    trains), without gradients, and run under `no_grad` so no activations are kept for it.
    """

    def __init__(self, tower: nn.Module, source: str = "final") -> None:
        super().__init__()
        self.tower = tower.eval().requires_grad_(False)
        self.source = source  # `vlm_task.tower_tokens`: "final" or a ResNet stage

    def train(self, mode: bool = True) -> FrozenVision:
        super().train(mode)
        self.tower.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from vlkit.training.vlm_task import tower_tokens

        with torch.no_grad():
            return tower_tokens(self.tower, images, self.source)


@dataclass
class VLMRun:
    """A trained VLM with what it needs to answer: tokenizer and image transform."""

    model: nn.Module
    tokenizer: WordTokenizer
    transform: Any
    recipe: VLMRecipe
    summary: dict[str, Any] = field(default_factory=dict)

    def prompt_ids(self, question: str) -> tuple[torch.Tensor, list[str]]:
        """(1, P) prompt ids for a free-text question, and its words outside the vocabulary.

        The layout the model was trained on: the image placeholders, then `<start>` and the
        question's words (unknown words become `<unk>`; the answer follows in generation).
        """
        tok = self.tokenizer
        encoding = tok.backend.encode(question, add_special_tokens=False)
        unknown = [question[start:end] for (start, end), i in zip(encoding.offsets, encoding.ids,
                   strict=True) if i == tok.unk_token_id]  # fmt: skip
        image_tokens = [self.model.image_token_id] * self.model.num_image_tokens
        ids = torch.tensor([[*image_tokens, tok.sot_token_id, *encoding.ids]])  # (1, P)
        return ids.to(next(self.model.parameters()).device), unknown

    @torch.no_grad()
    def answer(
        self, image: Any, question: str, max_new_tokens: int = 16, **generate_options: Any
    ) -> str:
        """The model's answer (or caption) for one PIL image and a question (or prompt).

        Args:
            image: An RGB PIL image (e.g. `vlkit.data.images.load_image(path)`).
            question: Free text; words outside the training vocabulary become `<unk>`.
            max_new_tokens: Generation budget; generation stops at the end token.
            **generate_options: Passed to the model's `generate` (sampling, `streamer`, ...).
        """
        ids, _ = self.prompt_ids(question)
        pixels = self.transform(image)[None, None].to(ids.device)  # (1, 1, 3, S, S)
        sequence = self.model.generate(
            ids, pixel_values=pixels, max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eot_token_id, **generate_options,
        )  # fmt: skip
        new = sequence[0, ids.shape[1] :].tolist()
        return self.tokenizer.decode(new)


def _task_corpus(task: str) -> list[str]:
    """The training text the word vocabulary is built from."""
    if task == "easy_vqa":
        from vlkit.data.datasets.vqa_text import load_easy_vqa_questions

        triples, _ = load_easy_vqa_questions("train")
        return sorted({t for q, a, _ in triples for t in (q, a)})
    from vlkit.data.datasets.scenes_text import scene_corpus

    return scene_corpus()


def build_vlm_data(recipe: VLMRecipe, tokenizer: WordTokenizer, transform: Any) -> tuple[Any, Any]:
    """(train, test) datasets of the recipe's task, items in `collate_vqa_text`'s format."""
    from vlkit.data.datasets.scenes_text import SceneCaptions, SceneQuestions
    from vlkit.data.datasets.vqa_text import EasyVQAQuestions

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


def _vision_clip(recipe: VLMRecipe) -> Any:
    import vlkit

    if recipe.vision:
        return vlkit.from_pretrained(recipe.vision)
    torch.manual_seed(recipe.seed)
    return vlkit.create_model(recipe.vision_preset)


def _fusion_config(
    recipe: VLMRecipe, tokenizer: WordTokenizer, vision_dim: int, image_size: int
) -> Any:
    from vlkit.models.fusion_vlm import FusionVLMConfig

    decoder = DecoderConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_layers=recipe.layers,
        num_heads=recipe.heads,
        num_kv_heads=recipe.heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return FusionVLMConfig(
        kind=recipe.kind,
        decoder=decoder,
        image_token_id=tokenizer.image_token_id,
        vision_dim=vision_dim,
        num_queries=recipe.num_queries,
        image_size=image_size,  # the tower's input side (the builder's dry run; early fusion)
    )


def _build_model(
    fusion_config: Any, clip: Any, vision_trainable: bool = False, vision_tokens: str = "final"
) -> nn.Module:
    from vlkit.models.fusion_vlm import build_fusion_vlm
    from vlkit.training.vlm_task import VisionTokens

    wrapper = VisionTokens if vision_trainable else FrozenVision
    return build_fusion_vlm(fusion_config, wrapper(clip.vision, vision_tokens))


def _vision_dim(clip: Any, vision_tokens: str = "final") -> int:
    """Width of the tower's tokens, by a dry run that leaves the tower's mode and flags alone."""
    from vlkit.training.vlm_task import tower_tokens

    size = clip.config.preprocess.image_size
    was_training = clip.vision.training
    clip.vision.eval()  # no BatchNorm statistics update from the dry run
    with torch.no_grad():
        width = tower_tokens(clip.vision, torch.zeros(1, 3, size, size), vision_tokens).shape[-1]
    clip.vision.train(was_training)
    return int(width)


def flops_per_sample(model: nn.Module, task: Any, batch: dict[str, Any]) -> dict[str, float]:
    """Forward and training-step (forward + backward) FLOPs per sample on one real batch.

    Counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention),
    which is what dominates; the frozen tower contributes forward FLOPs only.
    """
    from torch.utils.flop_counter import FlopCounterMode

    b = batch["images"].shape[0]
    counter = FlopCounterMode(display=False)
    with counter:
        task.training_step(model, batch, lambda loss: loss.backward())
    train = counter.get_total_flops() / b
    model.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)
    # Not under no_grad: FlopCounterMode's module tracker hooks autograd and fails there when a
    # module receives a parameter itself (e.g. Q-Former queries). The graph is just dropped.
    with counter:
        task.training_step(model, batch, lambda loss: None)
    return {"forward_gflops": counter.get_total_flops() / b / 1e9, "train_gflops": train / 1e9}


def evaluate_vlm(
    model: nn.Module, test: Any, task: str, max_items: int | None = None, batch_size: int = 256
) -> dict[str, Any]:
    """Greedy-decoded test metrics: answer accuracy (VQA tasks) or caption metrics.

    Returns:
        {"accuracy"} for VQA tasks; {"cider_d", "bleu_4", "rouge_l"} for captions; both with
        a few {"examples"} (prediction, reference).
    """
    from vlkit.evaluation import exact_match_accuracy
    from vlkit.training.vlm_task import answer_accuracy

    indices = list(range(len(test) if max_items is None else min(max_items, len(test))))
    if task != "scene_captions":
        accuracy, predictions = answer_accuracy(
            model, test, indices, batch_size=batch_size, max_new_tokens=3
        )
        examples = [(p, test.answer(i)) for p, i in zip(predictions[:8], indices, strict=False)]
        result: dict[str, Any] = {"accuracy": accuracy}
        types = getattr(test, "types", None)  # scene questions: accuracy per question type
        if types is not None:
            for kind in sorted({types[i] for i in indices}):
                chosen = [(p, test.answer(i)) for p, i in zip(predictions, indices, strict=True)
                          if types[i] == kind]  # fmt: skip
                result[f"accuracy_{kind}"] = exact_match_accuracy(*zip(*chosen, strict=True))
        return {**result, "examples": examples}
    from vlkit.evaluation.caption_metrics import caption_scores

    _, predictions = answer_accuracy(
        model, test, indices, batch_size=batch_size, max_new_tokens=test.max_length
    )
    references = {i: test.references(i) for i in indices}
    candidates = dict(zip(indices, predictions, strict=True))
    scores = caption_scores(references, candidates, metrics=("bleu", "rouge_l", "cider_d"))
    examples = [(candidates[i], references[i][0]) for i in indices[:8]]
    return {
        "cider_d": scores["cider_d"],
        "bleu_4": scores["bleu_4"],
        "rouge_l": scores["rouge_l"],
        "examples": examples,
    }


def _fit(
    recipe: VLMRecipe, model: nn.Module, task: Any, train: Any, steps: int, out_dir: Path
) -> float:
    """Runs one stage in the `Trainer`; returns its training seconds."""
    from vlkit.data.datasets.vqa_text import collate_vqa_text
    from vlkit.training.config import TrainConfig
    from vlkit.training.trainer import Trainer

    config = TrainConfig(
        batch_size=recipe.batch_size,
        max_steps=steps,
        lr=recipe.lr,
        warmup_steps=min(recipe.warmup_steps, steps // 5),
        weight_decay=recipe.weight_decay,
        min_lr_ratio=0.05,
        seed=recipe.seed,
        device=recipe.device,
        out_dir=str(out_dir),
        progress=False,
        log_every=50,
    )
    summary = Trainer(config, model, task, train, collate_vqa_text).fit()
    return float(summary["train_seconds"])


def train_vlm(recipe: VLMRecipe, out_dir: str | Path) -> dict[str, Any]:
    """Trains, evaluates and saves one generative VLM; returns (and writes) its summary.

    Args:
        recipe: The run.
        out_dir: Run directory (created; stage checkpoints go to `out_dir/stage*/`).

    Returns:
        Summary with the test metrics, `trainable_parameters`, `total_parameters`,
        `forward_gflops`/`train_gflops` per sample, `train_seconds` and `examples`.
    """
    from vlkit.data.datasets.vqa_text import collate_vqa_text
    from vlkit.data.transforms import ImageTransform
    from vlkit.hub.weights import write_json, write_safetensors
    from vlkit.training.vlm_task import CaptionLMTask, VQALMTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = _vision_clip(recipe)
    tokenizer = WordTokenizer.train(_task_corpus(recipe.task))
    transform = ImageTransform(clip.config.preprocess, train=False)
    train, test = build_vlm_data(recipe, tokenizer, transform)
    image_size = clip.config.preprocess.image_size
    vision_dim = _vision_dim(clip, recipe.vision_tokens)
    fusion_config = _fusion_config(recipe, tokenizer, vision_dim, image_size)
    torch.manual_seed(recipe.seed)
    model = _build_model(fusion_config, clip, recipe.vision_trainable, recipe.vision_tokens)
    task = CaptionLMTask(tokenizer.pad_token_id) if recipe.task == "scene_captions" else VQALMTask()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    flops = flops_per_sample(model, task, collate_vqa_text([train[i] for i in range(8)]))

    seconds = 0.0
    if recipe.connector_only_steps:
        decoder = getattr(model, "decoder", None)
        if decoder is None:
            raise ValueError(f"connector_only_steps needs a model with a .decoder ({recipe.kind})")
        decoder.requires_grad_(False)
        seconds += _fit(recipe, model, task, train, recipe.connector_only_steps, out_dir / "stage1")
        decoder.requires_grad_(True)
    started = time.perf_counter()
    seconds += _fit(recipe, model, task, train, recipe.steps, out_dir / "stage2")
    wall = time.perf_counter() - started

    metrics = evaluate_vlm(model, test, recipe.task, recipe.max_test)
    summary = {
        "kind": recipe.kind,
        "task": recipe.task,
        **metrics,
        "trainable_parameters": trainable,
        "total_parameters": total,
        **flops,
        "train_seconds": round(seconds, 2),
        "main_stage_wall_seconds": round(wall, 2),
        "steps": recipe.steps + recipe.connector_only_steps,
        "test_items": len(test) if recipe.max_test is None else min(recipe.max_test, len(test)),
        "threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device),
    }
    model_cpu = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(model_cpu, out_dir / "model.safetensors", metadata={"format": "pt"})
    write_json(
        {
            "recipe": asdict(recipe),
            "fusion": fusion_config.to_dict(),
            "vision_clip": clip.config.to_dict(),
        },
        out_dir / RUN_CONFIG,
    )
    tokenizer.save(out_dir / "tokenizer.json")
    write_json(summary, out_dir / "summary.json")
    return summary


def load_vlm_run(directory: str | Path, device: str = "cpu") -> VLMRun:
    """Loads a `train_vlm` run directory (weights only, never code: safetensors + JSON).

    Raises:
        FileNotFoundError: The directory lacks `vlm_config.json`, `model.safetensors` or
            `tokenizer.json`.
        vlkit.errors.CheckpointError: Missing, unexpected or mis-shaped weights.
    """
    from vlkit.data.transforms import ImageTransform
    from vlkit.hub.weights import load_into, read_weights
    from vlkit.models.clip import CLIP, CLIPConfig
    from vlkit.models.fusion_vlm import FusionVLMConfig

    directory = Path(directory)
    for name in (RUN_CONFIG, "model.safetensors", "tokenizer.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a VLM run directory: no {name}")
    saved = json.loads((directory / RUN_CONFIG).read_text())
    recipe = VLMRecipe.from_dict(saved["recipe"])
    clip = CLIP(CLIPConfig.from_dict(saved["vision_clip"]))
    model = _build_model(
        FusionVLMConfig.from_dict(saved["fusion"]), clip, recipe.vision_trainable,
        recipe.vision_tokens,
    )  # fmt: skip
    weights = directory / "model.safetensors"
    load_into(model, read_weights(weights), str(weights))
    summary_path = directory / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return VLMRun(
        model=model.to(device).eval(),
        tokenizer=WordTokenizer.from_file(directory / "tokenizer.json"),
        transform=ImageTransform(clip.config.preprocess, train=False),
        recipe=recipe,
        summary=summary,
    )
