"""The trainer: exact mid-epoch resume after SIGKILL, the non-finite guard, LiT, optimizer groups."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlkit
from vlkit.data.collate import collate_image_text
from vlkit.overrides import ConfigError
from vlkit.training.config import (
    CheckpointConfig,
    DataConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
)
from vlkit.training.config_files import load_train_config
from vlkit.training.freeze import lock_image_tower
from vlkit.training.optim import parameter_groups
from vlkit.training.schedule import warmup_cosine
from vlkit.training.trainer import Trainer, TrainingDiverged

TRAIN_ARGS = ["model=tiny", "data=shapes", "num_samples=96", "batch_size=16", "max_steps=14",
              "checkpoint_every=3", "keep_last=3", "warmup_steps=2", "progress=false",
              "lr=1e-3"]  # fmt: skip


def _train_command(out_dir, *extra):
    return [sys.executable, "-m", "vlkit", "train", *TRAIN_ARGS, f"out_dir={out_dir}", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _final_weights(out_dir):
    return load_file(Path(out_dir) / "checkpoints" / "step_00000014" / "model.safetensors")


def test_resume_after_sigkill_mid_epoch_is_bit_identical(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(_train_command(uninterrupted), check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (killed / "checkpoints" / "step_00000014").exists()
    resumed_from = killed / "checkpoints" / latest.read_text().strip()
    state = torch.load(resumed_from / "training_state.pt", weights_only=True)
    assert state["position"]["batch"] != 0  # the checkpoint is in the middle of an epoch

    subprocess.run([*_train_command(killed), "--resume", "latest"], check=True, env=_env(),
                   capture_output=True)  # fmt: skip
    expected, got = _final_weights(uninterrupted), _final_weights(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


class _ScriptedLoss:
    """A task whose loss is NaN on chosen steps."""

    def __init__(self, nan_steps):
        self.nan_steps, self.calls = set(nan_steps), 0

    def training_step(self, model, batch, backward):
        output = model(batch["images"], batch["texts"])
        loss = -output.logits_per_image.diag().mean()
        if self.calls in self.nan_steps:
            loss = loss * float("nan")
        self.calls += 1
        backward(loss)
        return {"loss": loss.detach()}


def _tiny_trainer(tmp_path, task, **overrides):
    from vlkit.data.datasets.shapes import ShapesDataset

    model = vlkit.create_model("tiny")
    dataset = ShapesDataset(64, 32, 0, vlkit.get_transform("tiny"), vlkit.get_tokenizer("tiny"))
    settings = dict(model="tiny", data="shapes", batch_size=8, max_steps=6, warmup_steps=1,
                    out_dir=str(tmp_path), progress=False)  # fmt: skip
    config = TrainConfig(**{**settings, **overrides})
    return Trainer(config, model, task, dataset, collate_image_text)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    trainer = _tiny_trainer(tmp_path, _ScriptedLoss({1, 3}))
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.fit()
    assert summary["nonfinite_steps"] == 2 and summary["steps"] == 6
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_a_callback_needs_only_the_hooks_it_uses(tmp_path):
    class StepLogger:  # not a Callback subclass, and only one hook
        def __init__(self):
            self.steps = []

        def on_step_end(self, trainer, metrics):
            self.steps.append(metrics["step"])

    trainer = _tiny_trainer(tmp_path, _ScriptedLoss(()), max_steps=3)
    logger = StepLogger()
    trainer.callbacks.append(logger)
    trainer.fit()
    assert logger.steps == [1, 2, 3]


def test_too_many_nonfinite_steps_in_a_row_stop_with_a_clear_message(tmp_path):
    trainer = _tiny_trainer(tmp_path, _ScriptedLoss(range(100)), max_nonfinite_steps=3)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps with a non-finite loss"):
        trainer.fit()


def test_logit_scale_is_clamped_after_each_step(tmp_path):
    trainer = _tiny_trainer(tmp_path, _ScriptedLoss(()), lr=5.0, grad_clip=None, max_steps=3)
    trainer.fit()
    assert trainer.model.logit_scale.item() <= math.log(100) + 1e-6


def test_lit_locks_the_image_tower_except_the_last_groups():
    model = vlkit.create_model("tiny")
    lock_image_tower(model, unlocked_groups=0)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    lock_image_tower(model, unlocked_groups=2)  # head (norm_post + projection) and the last block
    trainable = {
        n
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith(("vision", "image"))
    }
    assert "vision.transformer.blocks.1.mlp.fc1.weight" in trainable
    assert "image_projection.weight" in trainable and "vision.norm_post.weight" in trainable
    assert "vision.transformer.blocks.0.mlp.fc1.weight" not in trainable
    assert "vision.position_embedding" not in trainable


def test_weight_decay_excludes_norms_biases_embeddings_and_temperature():
    model = vlkit.create_model("tiny")
    decay, no_decay = parameter_groups(model, weight_decay=0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    excluded = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"logit_scale", "text.token_embedding.weight", "text.position_embedding",
            "vision.class_token", "vision.norm_post.weight"} <= excluded  # fmt: skip
    assert (
        "text_projection.weight" in decayed
        and "vision.transformer.blocks.0.mlp.fc1.weight" in decayed
    )
    assert not any(n.endswith(".bias") for n in decayed)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)


def test_config_overrides_and_unknown_keys(tmp_path):
    config = load_train_config(None, ["batch_size=64", "precision=bf16", "optim.max_steps=5"])
    assert (config.optim.batch_size, config.precision, config.optim.max_steps) == (64, "bf16", 5)
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize' \(allowed: model, seed, .*"
                       r"optim\.\*.*did you mean 'batch_size'\?$"):  # fmt: skip
        load_train_config(None, ["batchsize=3"])
    with pytest.raises(ConfigError, match=r"^unknown key 'optim.lrr' \(allowed: batch_size, "):
        load_train_config(None, ["optim.lrr=3"])
    with pytest.raises(ConfigError, match=r"^optim.batch_size: expected an int, got 'abc'$"):
        load_train_config(None, ["batch_size=abc"])
    with pytest.raises(ConfigError, match=r"^precision: expected one of fp32, bf16, fp16, got"):
        load_train_config(None, ["precision=fp8"])


def test_flat_and_nested_spellings_build_the_same_config(tmp_path):
    flat = ["data=folder", "data_root=imgs", "annotations=a.csv", "loss=siglip", "lr=0.01",
            "betas=0.8,0.9", "grad_clip=none", "checkpoint_every=5", "lock_image=true"]  # fmt: skip
    nested = ["data.source=folder", "data.root=imgs", "data.annotations=a.csv", "loss.kind=siglip",
              "optim.lr=0.01", "optim.betas=(0.8, 0.9)", "optim.grad_clip=null",
              "checkpoint.every=5", "optim.lock_image=1"]  # fmt: skip
    config = load_train_config(None, nested)
    assert load_train_config(None, flat) == config
    assert config.optim.betas == (0.8, 0.9) and config.optim.grad_clip is None
    constructed = TrainConfig(data="folder", data_root="imgs", annotations="a.csv", loss="siglip",
                              lr=0.01, betas=(0.8, 0.9), grad_clip=None, checkpoint_every=5,
                              lock_image=True)  # fmt: skip
    assert constructed == config
    assert (
        TrainConfig(
            data=DataConfig(source="folder", root="imgs", annotations="a.csv"),
            loss=LossConfig(kind="siglip"),
            optim=OptimConfig(lr=0.01, betas=(0.8, 0.9), grad_clip=None, lock_image=True),
            checkpoint=CheckpointConfig(every=5),
        )
        == config
    )


def test_config_round_trips_through_json_and_old_flat_runs_still_load(tmp_path):
    config = load_train_config("shapes_vit_gradcache", ["seed=3"])
    config.to_json(tmp_path / "train_config.json")
    assert TrainConfig.from_json(tmp_path / "train_config.json") == config
    assert load_train_config(str(tmp_path / "train_config.json")) == config
    # A run written before the configs were nested: every field at the top level.
    flat = {"model": "small-64", "data": "shapes", "num_samples": 20000, "loss": "clip",
            "batch_size": 256, "micro_batch_size": 64, "max_steps": 500, "betas": [0.9, 0.98],
            "checkpoint_every": 100, "keep_last": 2, "seed": 3, "data_root": None}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(flat))
    assert load_train_config(str(tmp_path / "old.json")) == config


def test_bf16_autocast_training_runs_on_cpu(tmp_path):
    from vlkit.losses.contrastive import ClipLoss
    from vlkit.training.tasks import ContrastiveTask

    trainer = _tiny_trainer(tmp_path, ContrastiveTask(ClipLoss()), precision="bf16", max_steps=2)
    summary = trainer.fit()
    assert math.isfinite(summary["final_loss"])
    assert trainer.model.text_projection.weight.dtype == torch.float32  # master weights stay fp32


def test_built_in_configs_load():
    config = load_train_config("easy_vqa_clip", ["max_steps=5"])
    assert (config.model, config.data.source, config.optim.max_steps) == (
        "small-rn-64", "easy_vqa", 5
    )  # fmt: skip
    assert load_train_config("shapes_vit_gradcache").optim.micro_batch_size == 64
    with pytest.raises(ValueError, match="no such file or built-in config"):
        load_train_config("nope")


def test_webdataset_shards_train_and_resume_mid_epoch_exactly(tmp_path):
    """`vlkit data shard` output trained on directly; resuming from the step-3 checkpoint (in
    the middle of an epoch) gives the same weights as 6 uninterrupted steps."""
    from vlkit.cli import main
    from vlkit.data.datasets.shapes import ShapesDataset
    from vlkit.recipes.clip_run import train

    ShapesDataset(80, 32, 0, None, None).to_folder(tmp_path / "folder", depth=False)
    assert main(["data", "shard", "--root", str(tmp_path / "folder"), "--annotations",
                 str(tmp_path / "folder" / "captions.csv"), "--out", str(tmp_path / "shards"),
                 "--samples-per-shard", "20"]) == 0  # fmt: skip
    settings = ["model=tiny", "data=webdataset", f"shards={tmp_path / 'shards'}", "batch_size=16",
                "warmup_steps=1", "progress=false", "shuffle_buffer=8"]  # fmt: skip

    def run(out, resume=None):
        overrides = [
            *settings,
            "max_steps=6",
            "checkpoint_every=3",
            "keep_last=3",
            f"out_dir={out}",
        ]
        return train(load_train_config(None, overrides), resume=resume)

    straight = run(tmp_path / "a")
    assert straight["steps"] == 6 and straight["epochs_completed"] >= 1
    middle = tmp_path / "a" / "checkpoints" / "step_00000003"
    state = torch.load(middle / "training_state.pt", weights_only=True)
    assert state["position"]["batch"] == 3  # 80 samples = 5 batches of 16: mid-epoch
    run(tmp_path / "b", resume=str(middle))
    expected = load_file(tmp_path / "a" / "checkpoints" / "step_00000006" / "model.safetensors")
    got = load_file(tmp_path / "b" / "checkpoints" / "step_00000006" / "model.safetensors")
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def _eval_run(out, *extra, resume=None):
    from vlkit.recipes.clip_run import train

    overrides = ["model=tiny", "data=shapes", "num_samples=64", "batch_size=16", "max_steps=4",
                 "warmup_steps=1", "progress=false", "log_every=1", "checkpoint_every=2",
                 f"out_dir={out}", *extra]  # fmt: skip
    summary = train(load_train_config(None, overrides), resume=resume)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_periodic_evaluation_is_logged_and_changes_no_training_number(tmp_path):
    """eval.every=2: held-out retrieval metrics at steps 2 and 4 and in the summary; the losses
    and weights are those of the run without evaluation, also after resuming mid-run."""
    plain, plain_rows = _eval_run(tmp_path / "plain")
    evaluated, rows = _eval_run(tmp_path / "eval", "eval.every=2", "eval.limit=20")
    eval_steps = [row["step"] for row in rows if "eval/retrieval/t2i_r1" in row]
    assert eval_steps == [2, 4]
    final = {key: value for key, value in rows[-1].items() if key.startswith("eval/")}
    assert final and all(evaluated[key] == value for key, value in final.items())
    assert not any(key.startswith("eval/") for key in plain)
    assert [row["loss"] for row in rows] == [row["loss"] for row in plain_rows]

    middle = tmp_path / "eval" / "checkpoints" / "step_00000002"
    _eval_run(tmp_path / "resumed", "eval.every=2", "eval.limit=20", resume=str(middle))
    expected = load_file(tmp_path / "plain" / "checkpoints" / "step_00000004" / "model.safetensors")
    for run in ("eval", "resumed"):
        got = load_file(tmp_path / run / "checkpoints" / "step_00000004" / "model.safetensors")
        for key in expected:
            assert torch.equal(expected[key], got[key]), (run, key)


def test_evaluation_runs_on_a_forked_rng_without_autograd():
    from vlkit.recipes.clip_run import IsolatedEvaluator

    class Draws:
        def evaluate(self, model, data):
            return {"draw": float(torch.rand(())), "grad": float(torch.is_grad_enabled())}

    model = torch.nn.Linear(2, 2)
    before = torch.get_rng_state()
    metrics = IsolatedEvaluator(Draws()).evaluate(model, None)
    assert metrics["grad"] == 0.0
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.every=0", "vlkit: error: eval.every: must be >= 1, got 0"),
        ("eval.every=5", "vlkit: error: eval.every: must be a multiple of log_every=10 "),
        ("data=folder", "vlkit: error: eval.every: data.source=folder has no held-out split "
                        "(eval.every works with data.source easy_vqa or shapes)"),
    ],
)  # fmt: skip
def test_bad_eval_settings_stop_vlkit_train_with_one_line(tmp_path, capsys, override, message):
    from vlkit.cli import main

    args = ["train", "model=tiny", "data=shapes", "eval.every=10", override, f"out_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "train_config.json").exists()
