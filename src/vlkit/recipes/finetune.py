"""Supervised fine-tuning of a pretrained VLM on conversations: `vlkit finetune`.

    summary = run_finetune(FinetuneConfig(model="SMOLVLM_DIR", data="train.parquet",
                                          out_dir="runs/ft", lora="r=16,alpha=32"))
    vlkit finetune --model DIR --data PATH --out RUN [--eval-data PATH] [--lora SPEC] [k=v ...]

The run, top to bottom (issue 13 item 7):

1. The model (`vlkit.from_pretrained`: SmolVLM / Idefics3, LLaVA, composed VLMs) and its
   processor (`vlkit.get_processor`; a composed model carries its own).
2. LoRA on the layers the spec names (`vlkit.training.lora`; the base frozen), or full
   fine-tuning with the vision tower frozen unless `train_vision`.
3. The conversations (`conversation_formats.read_conversations`), rendered by the processor's
   chat template with labels on the assistant turns only (`SFTDataset`).
4. The one `Trainer` with `SFTTask` (exact token-weighted accumulation over micro-batches and
   processes), its resumable sampler and atomic checkpoints: `resume="latest"` continues
   mid-epoch and reproduces an uninterrupted run bit for bit on CPU.
5. What the run shows: a progress bar with tokens/s, metrics.jsonl, TensorBoard scalars,
   `training_curves.png`, greedy answers to a few held-out questions every `generate_every`
   steps (`generations.jsonl`), and held-out exact match / VQA accuracy (`finetune_eval.py`).
6. `OUT/final` (`finetune_output.py`): the merged or fully fine-tuned checkpoint, or the peft
   adapter recording its base; `summary.json`.

Under torchrun (`torchrun --nproc-per-node N -m vlkit.cli.main finetune ...`) every process
joins the process group torchrun describes (`vlkit.distributed.init_distributed`, as `vlkit
train` does) and trains on its share of each global batch; `strategy=ddp` averages gradients,
`strategy=fsdp` shards the model per transformer layer (`training/fsdp.py`) and writes sharded
checkpoints. SFTTask's token weighting makes N processes give the weights of one process on the
same global batch. The main process logs, writes the run files and `OUT/final`; under FSDP the
held-out generation runs on every process with the parameters gathered (`fsdp.gathered`), and
the final weights are gathered to the main process (`fsdp.full_state_dict`) and written from an
unsharded copy of the model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vlkit.distributed import DistributedInfo, init_distributed, resolve_device
from vlkit.hub import from_pretrained
from vlkit.hub.processors import get_processor
from vlkit.hub.weights import load_into
from vlkit.inference.vlm_loading import vlm_directory
from vlkit.recipes.finetune_config import CONFIG_FILE, FinetuneConfig
from vlkit.recipes.finetune_eval import (
    GenerationLog,
    HeldOutVQA,
    heldout_questions,
    model_pipeline,
)
from vlkit.recipes.finetune_output import save_full_model
from vlkit.training.callbacks import (
    CurvePlotter,
    EvaluatorCallback,
    JsonlLogger,
    ProgressBar,
    TensorBoardLogger,
)
from vlkit.training.config import TrainConfig
from vlkit.training.fsdp import full_state_dict, is_sharded
from vlkit.training.run_directory import prepare_run_directory
from vlkit.training.trainer import Callback, Trainer

__all__ = ["FINETUNE_RUN_FILES", "FinetuneConfig", "load_finetune_model", "run_finetune"]

# What a fine-tuning run writes into its out_dir (`prepare_run_directory` guards them).
FINETUNE_RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "generations.jsonl",
    "summary.json",
    CONFIG_FILE,
    "tensorboard",
    "training_curves.png",
    "final",
)


class TokenCounting:
    """`SFTTask` plus the step's "tokens" (attention-mask ones: every token read, prompt and
    images included), which `TokensPerSecond` turns into a rate."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.min_rows = getattr(task, "min_rows", 1)

    def training_step(self, model: nn.Module, batch: dict[str, Any], backward: Any) -> dict:
        losses = dict(self.task.training_step(model, batch, backward))
        tokens = batch["attention_mask"].sum().float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(tokens)  # every process's tokens: the run's rate, not one process's
        losses["tokens"] = tokens
        return losses


class TokensPerSecond(Callback):
    """Adds "tokens_per_second" to each step's metrics (tokens read over the wall time since
    the previous step, data loading included) before the loggers and the bar see them."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.last = time.perf_counter()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if "tokens" in metrics:
            metrics["tokens_per_second"] = metrics["tokens"] / max(now - self.last, 1e-9)
        self.last = now


class FinetuneProgress(ProgressBar):
    """The tqdm bar with loss, learning rate and tokens/s."""

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.bar.update(1)
        if "loss" in metrics:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                 tok_s=f"{metrics.get('tokens_per_second', 0):.0f}")  # fmt: skip


def load_finetune_model(model_dir: str | Path) -> tuple[nn.Module, Any]:
    """(model, processor) of a pretrained model directory, the model in train mode."""
    model = from_pretrained(model_dir)
    processor = getattr(model, "processor", None)  # a composed model carries its own
    if processor is None:
        processor = get_processor(model_dir)
    return model.train(), processor


def _prepare_parameters(model: nn.Module, config: FinetuneConfig) -> None:
    """LoRA adapters (base frozen), or full fine-tuning with the vision tower frozen unless
    `train_vision` (the Hugging Face SmolVLM notebook's choice for full fine-tuning)."""
    if config.lora:
        from vlkit.training.lora import apply_lora, parse_lora_spec

        torch.manual_seed(config.seed)  # the adapters' initialisation
        apply_lora(model, parse_lora_spec(config.lora))
        return
    model.requires_grad_(True)
    vision = getattr(model, "vision", None)
    if vision is not None and not config.train_vision:
        vision.requires_grad_(False)


def _sft_data(config: FinetuneConfig, processor: Any) -> tuple[Any, Any, dict[str, int]]:
    """(dataset, collate, counts): the training conversations as SFT items."""
    from vlkit.data.datasets.conversation_formats import read_conversations
    from vlkit.data.datasets.sft import SFTDataset

    rows = read_conversations(config.data, strict=config.strict)
    if not rows.rows:
        raise ValueError(f"--data {config.data}: no usable row ({len(rows.skipped)} skipped)")
    dataset = SFTDataset(rows, processor, max_length=config.max_length, strict=config.strict)
    return dataset, dataset.collate, {"rows": len(rows)}


def _heldout(config: FinetuneConfig) -> list:
    if not config.eval_data:
        return []
    from vlkit.data.datasets.conversation_formats import read_conversations

    rows = read_conversations(config.eval_data, strict=config.strict).rows
    questions = heldout_questions(rows)
    if not questions:
        raise ValueError(
            f"--eval-data {config.eval_data}: no row with a user and an assistant turn"
        )
    return questions[: config.eval_limit] if config.eval_limit else questions


def _train_config(config: FinetuneConfig, out: Path) -> TrainConfig:
    return TrainConfig(
        optim=config.optim, checkpoint=config.checkpoint, seed=config.seed, device=config.device,
        strategy=config.strategy, precision=config.precision, gradient_checkpointing=config.gradient_checkpointing,
        quantize_base=config.quantize_base,
        out_dir=str(out), progress=config.progress, log_every=config.log_every,
    )  # fmt: skip


def _sft_task(config: FinetuneConfig) -> Any:
    from vlkit.training.sft_task import SFTTask

    return TokenCounting(SFTTask(micro_batch_size=config.optim.micro_batch_size))


def _save_final(model: nn.Module, processor: Any, model_dir: Path, config: FinetuneConfig,
                directory: Path, distributed: DistributedInfo) -> str:  # fmt: skip
    """Writes `OUT/final` (on the main process); returns what it holds ("adapter", "merged" or
    "full"). A sharded (FSDP) model's full weights are gathered to the main process first and
    loaded into an unsharded copy of the model (every process must call this then)."""
    kind = ("adapter" if not config.merge else "merged") if config.lora else "full"
    if is_sharded(model):
        state = full_state_dict(model)  # collective: {} on every process but the main one
        if not distributed.is_main:
            return kind
        model, _ = load_finetune_model(model_dir)
        _prepare_parameters(model, config)  # the same LoRA layers, so the names line up
        load_into(model, state, "the gathered FSDP weights")
    elif not distributed.is_main:
        return kind
    if kind == "adapter":
        from vlkit.hub.peft import save_adapter

        save_adapter(model, directory, base_model=str(model_dir.resolve()))
        return kind
    if config.lora:  # the update added into the base weights, the LoRA layers removed
        from vlkit.training.lora import merge_and_unload

        model = merge_and_unload(model)
    save_full_model(model, processor, directory)
    return kind


def run_finetune(
    config: FinetuneConfig,
    resume: str | None = None,
    overwrite: bool = False,
    extra_callbacks: list[Callback] | None = None,
) -> dict[str, Any]:
    """Fine-tunes, evaluates and saves; returns (and writes to `OUT/summary.json`) the summary.

    Args:
        config: The run (`config.out_dir` is the run directory).
        resume: "latest" or a checkpoint directory: continue that run mid-epoch.
        overwrite: Delete a previous run's files in `out_dir` first (never others').
        extra_callbacks: More `Trainer` callbacks (tests use one to stop a run).

    Raises:
        RunDirectoryError: A fresh run into an `out_dir` that holds a run.
        ConfigError, ValueError, OSError: Bad settings, data or model directory, in one line.
    """
    import json

    config.check_complete()
    model_dir = vlm_directory(config.model, "model directory")
    distributed = init_distributed(resolve_device(config.device, "device").type)
    # Every process checks (so all stop together); only the main one deletes and creates.
    out = prepare_run_directory(config.out_dir, FINETUNE_RUN_FILES, resume=bool(resume),
                                overwrite=overwrite, write=distributed.is_main)  # fmt: skip
    if distributed.enabled:  # no process may look before the main one has cleared the way
        dist.barrier()
    model, processor = load_finetune_model(model_dir)
    _prepare_parameters(model, config)  # seeded: the same adapters on every process
    train, collate, counts = _sft_data(config, processor)
    questions = _heldout(config)
    if distributed.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.to_json(out / CONFIG_FILE)
    callbacks = _callbacks(config, model, processor, model_dir, out, questions, distributed)
    callbacks += list(extra_callbacks or [])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    trainer = Trainer(_train_config(config, out), model, _sft_task(config), train, collate,
                      callbacks, distributed)  # fmt: skip
    summary = trainer.fit(resume=resume)
    kind = _save_final(trainer.model, processor, model_dir, config, out / "final", distributed)
    summary.update(
        model=str(model_dir), data=config.data, final=str(out / "final"), final_kind=kind,
        lora=config.lora, trainable_parameters=trainable, total_parameters=total,
        train_rows=counts["rows"], sft_items=len(train),
        skipped_rows=int(getattr(train, "skipped", 0) or 0),
        heldout_questions=len(questions), device=str(trainer.device),
        threads=torch.get_num_threads(), processes=distributed.world_size,
        strategy=config.strategy,
    )  # fmt: skip
    if distributed.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if distributed.enabled:  # OUT/final and the summary exist when any process returns
        dist.barrier()
    return summary


def _callbacks(config: FinetuneConfig, model: nn.Module, processor: Any, model_dir: Path,
               out: Path, questions: list, distributed: DistributedInfo) -> list[Callback]:  # fmt: skip
    """The run's callbacks on this process. The main process has them all; under FSDP the
    others run the held-out generation and evaluation too (gathering a sharded model's layers
    is collective, so every process must generate in step), writing nothing."""
    sharded_generation = config.strategy == "fsdp" and distributed.enabled
    callbacks: list[Callback] = []
    if distributed.is_main:
        callbacks.append(TokensPerSecond())
        if config.progress:
            callbacks.append(FinetuneProgress("finetune"))
    if questions and (distributed.is_main or sharded_generation):
        pipeline = model_pipeline(model, processor, model_dir)
        if config.generate_every:
            samples = questions[: config.generate_examples]
            callbacks.append(GenerationLog(pipeline, samples, out / "generations.jsonl",
                                           config.generate_every, config.max_new_tokens,
                                           write=distributed.is_main))  # fmt: skip
        evaluator = HeldOutVQA(pipeline, config.max_new_tokens)
        callbacks.append(EvaluatorCallback({"heldout": (evaluator, questions)}, config.eval_every))
    if distributed.is_main:
        callbacks += [
            JsonlLogger(out / "metrics.jsonl", config.log_every),
            TensorBoardLogger(out / "tensorboard", config.log_every),
            CurvePlotter(out / "metrics.jsonl", out / "training_curves.png"),
        ]
    return callbacks
