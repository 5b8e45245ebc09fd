"""`FinetuneConfig`: one supervised fine-tuning run of a pretrained VLM (`vlkit finetune`).

    FinetuneConfig(model="SMOLVLM_DIR", data="train.parquet", out_dir="runs/ft",
                   lora="r=16,alpha=32,targets=q_proj,k_proj,v_proj,o_proj")
    vlkit finetune --model DIR --data PATH --out RUN lr=2e-4 max_steps=300 eval_every=50

A run writes its resolved config to `OUT/finetune_config.json`; `--resume latest` reads it back
(settings given again on the command line replace the saved ones). Every value is checked here,
before any model is loaded, with a one-line `ConfigError` naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlkit.hub.weights import atomic_write
from vlkit.overrides import (
    ConfigError,
    accepts_aliases,
    apply_overrides,
    check_fields,
    check_range,
    from_dict,
    to_dict,
)
from vlkit.training.config import CheckpointConfig, OptimConfig, checkpoint_parts

__all__ = ["FINETUNE_FLAT_KEYS", "FinetuneConfig", "finetune_optim"]

CONFIG_FILE = "finetune_config.json"


def finetune_optim() -> OptimConfig:
    """The optimisation defaults of fine-tuning, as the Hugging Face SmolVLM fine-tuning notebook
    and TRL's SFTTrainer use them: AdamW (beta2 0.999, eps 1e-8), lr 1e-4, no weight decay,
    a short warm-up, one epoch; a global batch of 8."""
    return OptimConfig(batch_size=8, lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                       warmup_steps=10, min_lr_ratio=0.0, grad_clip=1.0)  # fmt: skip


def _finetune_checkpoint() -> CheckpointConfig:
    return CheckpointConfig(every=50, keep_last=2)


# Flat spellings of the nested settings (`lr=2e-4` sets `optim.lr`), as `vlkit train` has them.
FINETUNE_FLAT_KEYS: dict[str, str] = {
    name: f"optim.{name}"
    for name in ("batch_size", "micro_batch_size", "accumulation_steps", "optimizer", "epochs", "max_steps", "max_seconds", "lr",
                 "weight_decay", "betas", "eps", "warmup_steps", "min_lr_ratio", "grad_clip")
}  # fmt: skip
FINETUNE_FLAT_KEYS.update(checkpoint_every="checkpoint.every", keep_last="checkpoint.keep_last")


@accepts_aliases(FINETUNE_FLAT_KEYS)
@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs.

    Attributes:
        model: The pretrained model directory (or hub id): SmolVLM / Idefics3, LLaVA, or a
            composed VLM saved by `vlkit.compose_vlm(...).save_pretrained`.
        data: Training conversations: LLaVA JSON, Cauldron/TRL rows (parquet, JSONL or a
            `datasets.save_to_disk` directory) or a VQA question/answer file.
        out_dir: The run directory.
        eval_data: Held-out conversations (same formats): evaluation and periodic generation.
        lora: A LoRA spec ("r=16,alpha=32,dropout=0.05,targets=q_proj,k_proj,v_proj,o_proj");
            None: full fine-tuning (vision tower frozen unless `train_vision`).
        merge: With LoRA: `OUT/final` holds the merged model (a plain checkpoint of the base
            architecture) instead of the peft adapter.
        train_vision: Full fine-tuning trains the vision tower too (frozen by default, as the
            Hugging Face SmolVLM notebook does).
        max_length: Longest training sequence in tokens; longer rows are skipped and counted.
        strict: Stop at the first unusable row instead of skipping it.
        seed: Data order, LoRA initialisation and dropout.
        device: "auto", "cpu", "cuda", "cuda:1", ... (under torchrun each process takes the
            GPU of its LOCAL_RANK).
        strategy: Data parallelism over torchrun's processes: "ddp" (a full replica per process,
            gradients averaged) or "fsdp" (FSDP2: parameters, gradients and optimizer state
            sharded per transformer layer; sharded checkpoints). One process: the same run.
        precision: "fp32", "bf16" (autocast) or "fp16" (CUDA, grad scaler).
        gradient_checkpointing: Recompute activations per layer in the backward pass: true,
            false, or the parts ("language", "vision", "language,vision").
        quantize_base: "4bit": frozen base linears as bitsandbytes NF4 (QLoRA; CUDA only).
        progress: Show a progress bar (loss, lr, tokens/s).
        log_every: metrics.jsonl / TensorBoard every N steps.
        eval_every: Evaluate on `eval_data` every N steps (and at the end); None: at the end only.
        eval_limit: Evaluate on the first N held-out rows (None: all of them).
        generate_every: Greedy answers to `generate_examples` held-out rows every N steps,
            written to `OUT/generations.jsonl` (0: never).
        generate_examples: How many held-out rows the periodic generation answers.
        max_new_tokens: Generation budget of evaluation and periodic generation.
        optim: Batch, schedule and AdamW (`OptimConfig`; `optim.micro_batch_size` splits each
            batch with exact token-weighted accumulation).
        checkpoint: Checkpoint frequency and retention.
    """

    model: str = ""
    data: str = ""
    out_dir: str = ""
    eval_data: str | None = None
    lora: str | None = None
    merge: bool = False
    train_vision: bool = False
    max_length: int = 2048
    strict: bool = False
    seed: int = 0
    device: str = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool | str = False
    quantize_base: Literal["none", "4bit"] = "none"
    progress: bool = True
    log_every: int = 10
    eval_every: int | None = None
    eval_limit: int | None = 200
    generate_every: int = 0
    generate_examples: int = 3
    max_new_tokens: int = 16
    optim: OptimConfig = field(default_factory=finetune_optim)
    checkpoint: CheckpointConfig = field(default_factory=_finetune_checkpoint)

    def __post_init__(self) -> None:
        check_fields(self)
        checkpoint_parts(self.gradient_checkpointing)
        check_range("max_length", self.max_length, 8)
        check_range("log_every", self.log_every, 1)
        check_range("eval_every", self.eval_every, 1)
        check_range("eval_limit", self.eval_limit, 1)
        check_range("generate_every", self.generate_every, 0)
        check_range("generate_examples", self.generate_examples, 1)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ConfigError("strategy: fsdp supports precision fp32 or bf16, not fp16")
        if self.strategy == "fsdp" and self.quantize_base != "none":
            raise ConfigError("strategy: fsdp does not shard 4-bit base weights "
                              "(quantize_base=4bit needs strategy=ddp)")  # fmt: skip
        if self.merge and not self.lora:
            raise ConfigError("merge: only a LoRA run has an adapter to merge (give --lora)")
        if self.lora is not None and not self.lora.strip():
            raise ConfigError(
                "lora: empty; give a spec such as r=16,alpha=32,targets=q_proj,v_proj"
            )
        if self.eval_every and self.eval_every % self.log_every:
            raise ConfigError(f"eval_every: must be a multiple of log_every={self.log_every} so "
                              f"that every evaluation is logged, got {self.eval_every}")  # fmt: skip
        needs_eval = [n for n in ("eval_every", "generate_every") if getattr(self, n)]
        if needs_eval and not self.eval_data:
            raise ConfigError(f"{needs_eval[0]}: needs held-out data (--eval-data PATH)")

    def check_complete(self) -> None:
        """Refuses a config without its model, data or run directory (the defaults are empty so
        that a saved config reads back through `from_dict`)."""
        for name in ("model", "data", "out_dir"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"{name}: empty; name the {_WHAT[name]}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        return from_dict(cls, values, FINETUNE_FLAT_KEYS)

    def to_json(self, path: str | Path) -> None:
        """Written atomically: `--resume` reads it back, so a crash must not leave half of it."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(Path(path), lambda temporary: temporary.write_text(text))

    @classmethod
    def from_json(cls, path: str | Path) -> FinetuneConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not JSON ({error})") from None
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def with_overrides(self, overrides: list[str]) -> FinetuneConfig:
        """This config with `key=value` settings applied (flat keys of `FINETUNE_FLAT_KEYS`)."""
        return apply_overrides(self, overrides, FINETUNE_FLAT_KEYS)


_WHAT = {
    "model": "pretrained model directory (--model)",
    "data": "training data file (--data)",
    "out_dir": "run directory (--out)",
}
