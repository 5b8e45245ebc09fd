"""Seeing the run: progress bar, JSONL and TensorBoard metrics, periodic evaluation, PNG curves."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlkit.evaluation.evaluator import Evaluator
from vlkit.training.trainer import Callback, Trainer


class ProgressBar(Callback):
    """tqdm bar (steps, rate, elapsed and ETA) with loss, learning rate, temperature (contrastive
    models) and samples/s.

    Args:
        desc: The bar's label ("train"; `train_vlm` names its stages).
    """

    def __init__(self, desc: str = "train") -> None:
        self.desc = desc

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=self.desc,
                        unit="step", dynamic_ncols=True)  # fmt: skip

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.bar.update(1)
        if "loss" in metrics:
            postfix = {"loss": f"{metrics['loss']:.4f}", "lr": f"{metrics['lr']:.2e}"}
            if "temperature" in metrics:
                postfix["temp"] = f"{metrics['temperature']:.1f}"
            postfix["sps"] = f"{metrics['samples_per_second']:.0f}"
            self.bar.set_postfix(postfix)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        self.bar.close()


class JsonlLogger(Callback):
    """Appends one JSON object per logged step to `metrics.jsonl` (kept across resumes).

    Args:
        path: The file.
        every: Log every N steps (and the last one).
        step_offset: Added to the logged "step": a later stage of a multi-stage run (`train_vlm`)
            continues the step count of the earlier ones in the same file.
        extra: Constant fields added to each row (e.g. {"stage": 2}).
    """

    def __init__(
        self,
        path: str | Path,
        every: int = 10,
        step_offset: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.every = max(1, every)
        self.step_offset = step_offset
        self.extra = dict(extra or {})

    def on_train_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop lines past the resumed step: they will be redone
            last = trainer.step + self.step_offset
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= last]  # fmt: skip
            self.path.write_text("".join(line + "\n" for line in kept))

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.step % self.every == 0 or trainer.step == trainer.total_steps:
            row = {**metrics, **self.extra}
            if self.step_offset:
                row["step"] = trainer.step + self.step_offset
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


class TensorBoardLogger(Callback):
    """Scalars to TensorBoard when the `tensorboard` package is installed (the `train` extra;
    else a no-op). `step_offset` as `JsonlLogger`'s."""

    def __init__(self, log_dir: str | Path, every: int = 10, step_offset: int = 0) -> None:
        self.log_dir = str(log_dir)
        self.every = max(1, every)
        self.step_offset = step_offset
        self.writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(self.log_dir)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.writer is not None and trainer.step % self.every == 0:
            for name, value in metrics.items():
                if name not in ("step", "epoch"):
                    self.writer.add_scalar(f"train/{name}", value,
                                           trainer.step + self.step_offset)  # fmt: skip

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()


class EvaluatorCallback(Callback):
    """Periodic evaluation: runs evaluators through `Evaluator.evaluate(model, data)`.

    Every `every` steps, and once more when training ends (unless that step was just evaluated),
    each evaluator runs on the trainer's model (the evaluators switch it to eval mode and back).
    Its metrics join the step's metrics as "eval/<name>/<metric>", so loggers listed after this
    callback (JsonlLogger, TensorBoardLogger) record them; the last ones are added to the run
    summary and every evaluation is kept in `history`.

    Args:
        evaluators: {name: (evaluator, data)}, e.g.
            {"zero_shot": (ZeroShotClassification(tokenizer, classes), (images, labels))}.
        every: Evaluate every N optimizer steps; None: only at the end of training.
    """

    def __init__(self, evaluators: Mapping[str, tuple[Evaluator, Any]], every: int | None = None):
        self.evaluators = dict(evaluators)
        self.every = every
        self.history: list[dict[str, float]] = []
        self._evaluated_step = -1

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Runs every evaluator now; returns {"eval/<name>/<metric>": value}."""
        metrics: dict[str, float] = {}
        for name, (evaluator, data) in self.evaluators.items():
            for key, value in evaluator.evaluate(trainer.model, data).items():
                metrics[f"eval/{name}/{key}"] = value
        self.history.append({"step": trainer.step, **metrics})
        self._evaluated_step = trainer.step
        return metrics

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.every and trainer.step % self.every == 0:
            metrics.update(self.evaluate(trainer))

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self._evaluated_step != trainer.step:
            self.evaluate(trainer)
        summary.update({k: v for k, v in self.history[-1].items() if k != "step"})


def plot_training_curves(metrics_file: str | Path, out_file: str | Path) -> Path:
    """Loss and temperature against step, side by side, from a metrics.jsonl (the learning rate
    instead of the temperature for models without one, such as `train_vlm`'s; a dotted line
    where a multi-stage run's "stage" changes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line]
    rows = [row for row in rows if "loss" in row]
    steps = [row["step"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(steps, [row["loss"] for row in rows])
    left.set(xlabel="step", ylabel="loss", title="training loss")
    if any("temperature" in row for row in rows):
        right.plot(steps, [row.get("temperature", float("nan")) for row in rows],
                   color="tab:orange")  # fmt: skip
        right.set(xlabel="step", ylabel="exp(logit_scale)", title="temperature")
    else:
        right.plot(steps, [row.get("lr", float("nan")) for row in rows], color="tab:orange")
        right.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for before, after in zip(rows, rows[1:], strict=False):
        if before.get("stage") != after.get("stage"):
            for axis in (left, right):
                axis.axvline(before["step"], color="gray", linestyle=":")
    figure.tight_layout()
    figure.savefig(out_file, dpi=120)
    plt.close(figure)
    return Path(out_file)


class CurvePlotter(Callback):
    """Writes `training_curves.png` from the JSONL log when training ends."""

    def __init__(self, metrics_file: str | Path, out_file: str | Path) -> None:
        self.metrics_file, self.out_file = Path(metrics_file), Path(out_file)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.metrics_file.exists():
            plot_training_curves(self.metrics_file, self.out_file)
