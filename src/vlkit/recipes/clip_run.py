"""Build a contrastive training run from a TrainConfig and run it (what `vlkit train` calls).

With `eval.every` set, the run also evaluates on held-out data through the evaluator protocol
(`EvaluatorCallback`): zero-shot classification on easy-VQA's test split, image <-> text
retrieval on held-out shapes scenes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from vlkit.data.collate import collate_image_text
from vlkit.data.datasets.easy_vqa import (
    CAPTION_TEMPLATES,
    CLASS_NAMES,
    EasyVQACaptions,
    load_easy_vqa,
)
from vlkit.data.datasets.image_text import ImageTextDataset
from vlkit.data.datasets.shape_scenes import caption
from vlkit.data.datasets.shapes import ShapesDataset
from vlkit.data.transforms import ImageTransform
from vlkit.distributed import DistributedInfo, init_distributed, resolve_device
from vlkit.evaluation.evaluator import Evaluator
from vlkit.evaluation.retrieval import ImageTextRetrieval, RetrievalData
from vlkit.evaluation.zero_shot import ZeroShotClassification
from vlkit.hub import from_pretrained
from vlkit.hub.clip_checkpoint import get_tokenizer
from vlkit.models.clip import CLIP, create_model
from vlkit.models.presets import PRESETS
from vlkit.overrides import ConfigError
from vlkit.training.balanced_data import balanced_training_data
from vlkit.training.callbacks import (
    CurvePlotter,
    EvaluatorCallback,
    JsonlLogger,
    ProgressBar,
    TensorBoardLogger,
)
from vlkit.training.config import TrainConfig
from vlkit.training.data import ShardData
from vlkit.training.freeze import lock_image_tower
from vlkit.training.run_directory import TRAIN_RUN_FILES, prepare_run_directory
from vlkit.training.tasks import build_contrastive_task
from vlkit.training.trainer import Trainer

log = logging.getLogger(__name__)

# Held-out scenes of data.source=shapes when eval.limit is None (easy-VQA's test split has 1,000).
HELD_OUT_SCENES = 1000


def build_model(config: TrainConfig) -> CLIP:
    """A fresh preset (initialised from `config.seed`) or a checkpoint to fine-tune."""
    torch.manual_seed(config.seed)  # identical initial weights on every process
    if config.model in PRESETS:
        return create_model(config.model)
    return from_pretrained(config.model)


def build_dataset(
    config: TrainConfig, model: CLIP, distributed: DistributedInfo | None = None
) -> Dataset | ShardData:
    """The training data named by `config.data.source`: a map-style dataset following the
    (index, seed) contract, or WebDataset shards streamed per process and worker."""
    data = config.data
    transform = ImageTransform(model.config.preprocess, train=data.augment)
    tokenizer = get_tokenizer(model)
    if data.source == "webdataset":
        if not data.shards:
            raise ValueError("data.source=webdataset needs data.shards=DIR_OR_PATTERN")
        distributed = distributed or DistributedInfo()
        return ShardData(data.shards, transform, tokenizer, config.optim.batch_size, config.seed,
                         data.num_workers, distributed.rank, distributed.world_size,
                         data.shuffle_buffer)  # fmt: skip
    if data.source == "easy_vqa":
        return EasyVQACaptions("train", transform=transform, tokenizer=tokenizer, seed=config.seed)
    if data.source == "shapes":
        return ShapesDataset(data.num_samples, model.config.preprocess.image_size, config.seed,
                             transform=transform, tokenizer=tokenizer)  # fmt: skip
    if not data.root or not data.annotations:
        raise ValueError(
            "data.source=folder needs data.root=DIR and data.annotations=FILE.csv|.jsonl"
        )
    return ImageTextDataset(data.root, data.annotations, transform, tokenizer,
                            image_column=data.image_column,
                            caption_column=data.caption_column)  # fmt: skip


class IsolatedEvaluator:
    """Runs an evaluator without autograd and on a forked torch RNG.

    Evaluating in the middle of training then changes none of its numbers: the steps after an
    evaluation draw their dropout masks from the same RNG states as without it, and the RNG
    states saved in checkpoints are the same, so resumed runs stay bit-identical.
    """

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def evaluate(self, model: torch.nn.Module, data: Any) -> dict[str, float]:
        device = next(model.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            return self.evaluator.evaluate(model, data)


def build_evaluators(config: TrainConfig, model: CLIP) -> dict[str, tuple[Evaluator, Any]]:
    """The held-out evaluations of `config.eval` for `config.data.source`, for `EvaluatorCallback`.

    easy_vqa: {"zero_shot": ZeroShotClassification over `CLASS_NAMES` with the caption phrasings
    as prompts, on the test images}. shapes: {"retrieval": ImageTextRetrieval between the "test"
    split's scenes (drawn from `config.seed`) and their canonical captions}. The images are
    decoded and preprocessed (eval transform) once, here.

    Raises:
        ConfigError: The data source has no held-out split.
    """
    settings = config.eval
    transform = ImageTransform(model.config.preprocess, train=False)
    tokenizer = get_tokenizer(model)
    if config.data.source == "easy_vqa":
        examples = load_easy_vqa("test")[: settings.limit]
        images = transform.to_batch([example.path for example in examples])  # (N, 3, S, S)
        labels = torch.tensor([example.label for example in examples])
        zero_shot = ZeroShotClassification(tokenizer, CLASS_NAMES, CAPTION_TEMPLATES,
                                           settings.batch_size)  # fmt: skip
        return {"zero_shot": (IsolatedEvaluator(zero_shot), (images, labels))}
    if config.data.source == "shapes":
        size = model.config.preprocess.image_size
        held_out = ShapesDataset(settings.limit or HELD_OUT_SCENES, size, config.seed, split="test")
        scenes = [held_out.scene(index) for index in range(len(held_out))]
        pairs = RetrievalData(
            images=transform.to_batch([image for image, _ in scenes]),
            texts=[caption(objects) for _, objects in scenes],
            text_image_ids=torch.arange(len(scenes)),
        )
        retrieval = ImageTextRetrieval(tokenizer, batch_size=settings.batch_size)
        return {"retrieval": (IsolatedEvaluator(retrieval), pairs)}
    # TrainConfig refuses eval.every for the other sources; this guards a config changed later.
    raise ConfigError(f"eval.every: data.source={config.data.source} has no held-out split")


def train(
    config: TrainConfig, resume: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Trains, checkpoints and logs into `config.out_dir`; returns the run summary.

    Args:
        config: The run.
        resume: Continue from "latest" (of `out_dir/checkpoints`), a step directory name or a
            checkpoint path; None starts a fresh run.
        overwrite: A fresh run into an `out_dir` that holds a previous run deletes that run's
            files (`TRAIN_RUN_FILES`) first; without it such a run is refused.

    Raises:
        RunDirectoryError: A fresh run, `out_dir` holds a run, and `overwrite` is False.
    """
    distributed = init_distributed(resolve_device(config.device).type)
    # Every process checks (so all stop together); only the main one deletes and creates.
    out = prepare_run_directory(config.out_dir, TRAIN_RUN_FILES, resume=bool(resume),
                                overwrite=overwrite, write=distributed.is_main)  # fmt: skip
    if distributed.enabled:  # no process may look before the main one has cleared the way
        dist.barrier()
    model = build_model(config)
    if config.loss.kind == "siglip" and model.logit_bias is None:
        raise ValueError("loss.kind=siglip needs a model with a logit bias (a SigLIP config)")
    if config.optim.lock_image:
        lock_image_tower(model, config.optim.lock_image_unlocked_groups)
    dataset = build_dataset(config, model, distributed)
    if config.data.balance_by is not None:  # group-balanced batches, weights in balance.json
        dataset = balanced_training_data(
            dataset, config.data.balance_by, collate_image_text, config.optim.batch_size,
            config.seed, out, config.data.num_workers, distributed.rank, distributed.world_size,
            pin_memory=resolve_device(config.device).type == "cuda",
        )  # fmt: skip
    callbacks = []
    if distributed.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.to_json(out / "train_config.json")
        if config.progress:
            callbacks.append(ProgressBar())
        if config.eval.every is not None:  # before the loggers, so they record its metrics
            callbacks.append(EvaluatorCallback(build_evaluators(config, model), config.eval.every))
        callbacks += [
            JsonlLogger(out / "metrics.jsonl", config.log_every),
            TensorBoardLogger(out / "tensorboard", config.log_every),
            CurvePlotter(out / "metrics.jsonl", out / "training_curves.png"),
        ]
    # The loss of config.loss (memory bank, hard negatives, fixed temperature: training/tasks.py).
    task = build_contrastive_task(config, model, distributed)
    trainer = Trainer(config, model, task, dataset, collate_image_text, callbacks, distributed)
    summary = trainer.fit(resume=resume)
    if distributed.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if summary["skipped_samples"]:
            log.warning("skipped %d unusable samples, e.g. %s", summary["skipped_samples"],
                        summary["skipped_examples"][:3])  # fmt: skip
    return summary
