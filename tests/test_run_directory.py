"""Run directories are never destroyed by accident (issue 18): a fresh run into a directory that
holds a run is refused, `--overwrite` starts over cleanly, pruning deletes only the current
run's checkpoints, `latest` always names a complete checkpoint, a crashed run resumes; and
`vlkit train-vlm` shows progress and writes metrics.jsonl, curves and TensorBoard logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlkit
from vlkit.cli import main
from vlkit.data.collate import collate_image_text
from vlkit.data.datasets.shapes import ShapesDataset
from vlkit.losses import ClipLoss
from vlkit.recipes.clip_run import train
from vlkit.training import checkpoint as checkpoint_module
from vlkit.training.checkpoint import (
    LATEST,
    checkpoint_run_id,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from vlkit.training.config import TrainConfig
from vlkit.training.config_files import load_train_config
from vlkit.training.run_directory import (
    TRAIN_RUN_FILES,
    RunDirectoryError,
    prepare_run_directory,
)
from vlkit.training.tasks import ContrastiveTask
from vlkit.training.trainer import Trainer

TINY = ["model=tiny", "data=shapes", "num_samples=32", "batch_size=8", "warmup_steps=1",
        "checkpoint_every=2", "keep_last=2", "progress=false", "log_every=1"]  # fmt: skip


def _steps(out: Path) -> list[str]:
    return sorted(path.name for path in (out / "checkpoints").glob("step_*"))


def _metrics_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4) to reuse the directory of."""
    out = tmp_path_factory.mktemp("old_run")
    train(load_train_config(None, [*TINY, "max_steps=4", f"out_dir={out}"]))
    return out


def _copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def test_a_fresh_run_into_a_used_out_dir_is_refused_in_one_line(old_run, tmp_path, capsys):
    out = _copy_of(old_run, tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = main(["train", *TINY, "max_steps=2", f"out_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"vlkit: error: out_dir {out} already holds a run (checkpoints, ")
    assert "--resume latest" in err and "--overwrite" in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing deleted

    with pytest.raises(RunDirectoryError, match="resume='latest'.*overwrite=True"):
        train(load_train_config(None, [*TINY, "max_steps=2", f"out_dir={out}"]))
    code = main(["train", *TINY, f"out_dir={out}", "--resume", "latest", "--overwrite"])
    assert code == 2 and "pass one" in capsys.readouterr().err


def test_overwrite_starts_over_without_stale_files(old_run, tmp_path, capsys):
    out = _copy_of(old_run, tmp_path)
    (out / "notes.txt").write_text("mine")  # not a run file: kept
    assert main(["train", *TINY, "max_steps=2", f"out_dir={out}", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert _steps(out) == ["step_00000002"]  # the old step 4 is gone, not mixed in
    assert _metrics_steps(out) == [1, 2]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert resolve_resume(out / "checkpoints", "latest").name == "step_00000002"


def test_resume_latest_then_settings_after_it(old_run, tmp_path, capsys):
    out = _copy_of(old_run, tmp_path)
    # key=value before and after --resume (argparse alone rejects the ones after it).
    args = ["train", *TINY, f"out_dir={out}", "--resume", "latest", "max_steps=6"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 6
    assert _steps(out) == ["step_00000004", "step_00000006"]
    assert _metrics_steps(out) == [1, 2, 3, 4, 5, 6]
    run_ids = {checkpoint_run_id(out / "checkpoints" / step) for step in _steps(out)}
    assert len(run_ids) == 1  # the resumed run keeps its id, so it prunes its own checkpoints


def test_bare_train_commands_print_help_and_start_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in ("train", "train-vlm"):
        assert main([command]) == 2
        err = capsys.readouterr().err
        assert "optim.  batch_size=" in err and "--default" in err
        assert err.splitlines()[-1].startswith(f"vlkit: error: {command}: no settings given")
    assert list(tmp_path.iterdir()) == []  # no default run was started
    assert main(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "built-in configs (--config NAME):\n  easy_vqa_clip" in help_text
    assert "checkpoint.  every=0  keep_last=2" in help_text


# ------------------------------------------------------------------ checkpoints and pruning


def _save(root: Path, step: int, run_id: str | None, keep_last: int = 2) -> Path:
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.weight, float(step))
    return save_checkpoint(root, step, model, {"position": {"step": step}}, keep_last, run_id)


def test_pruning_deletes_only_the_current_runs_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (100, 200, 300):  # an older, longer run that kept every checkpoint
        _save(root, step, "old", keep_last=0)
    legacy = root / "step_00000400"  # written before run ids existed: no checkpoint.json
    _save(root, 400, "old", keep_last=0)
    (legacy / "checkpoint.json").unlink()
    for step in range(1, 6):  # the new run, keep_last=2
        _save(root, step, "new")
        assert resolve_resume(root, "latest").name == f"step_{step:08d}"
    names = sorted(path.name for path in root.glob("step_*"))
    assert names == ["step_00000004", "step_00000005", "step_00000100", "step_00000200",
                     "step_00000300", "step_00000400"]  # fmt: skip
    weights, state = load_checkpoint(resolve_resume(root, "latest"))
    assert state["position"]["step"] == 5 and torch.all(weights["weight"] == 5.0)


def _tiny_trainer(out: Path, **overrides) -> Trainer:
    torch.manual_seed(0)
    model = vlkit.create_model("tiny")
    dataset = ShapesDataset(32, 32, 0, vlkit.get_transform("tiny"), vlkit.get_tokenizer("tiny"))
    settings = dict(model="tiny", data="shapes", batch_size=8, max_steps=4, warmup_steps=1,
                    checkpoint_every=2, keep_last=2, out_dir=str(out), progress=False)  # fmt: skip
    config = TrainConfig(**{**settings, **overrides})
    return Trainer(config, model, ContrastiveTask(ClipLoss()), dataset, collate_image_text)


def test_latest_names_a_complete_checkpoint_whatever_write_a_crash_stops(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    _save(root, 1, "run")

    def crash(*args, **kwargs):
        raise OSError("killed")

    # A crash while the training state is written: no step directory, no staging left over.
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module.torch, "save", crash)
        with pytest.raises(OSError, match="killed"):
            _save(root, 2, "run")
    assert not (root / "step_00000002").exists() and not list(root.glob(".step_*"))
    # A crash after the checkpoint was renamed into place, before `latest` was replaced.
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "atomic_write", crash)
        with pytest.raises(OSError, match="killed"):
            _save(root, 3, "run")
    assert (root / "step_00000003").is_dir()
    assert (root / LATEST).read_text().strip() == "step_00000001"
    weights, state = load_checkpoint(resolve_resume(root, "latest"))
    assert state["position"]["step"] == 1 and torch.all(weights["weight"] == 1.0)
    # A process killed mid-write (SIGKILL: no cleanup) leaves a hidden staging directory; the
    # next save clears it.
    (root / ".step_00000004.x1y2").mkdir()
    _save(root, 4, "run")
    assert not list(root.glob(".step_*"))
    # Re-saving step 4 moves the old copy aside; a crash before the new one lands puts it back.
    real_replace = checkpoint_module.os.replace

    def replace_fails_for_the_new_copy(source, target):
        name = Path(source).name  # the staging directory, renamed into place
        if name.startswith(".step_00000004.") and not name.endswith(".replaced"):
            raise OSError("killed")
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module.os, "replace", replace_fails_for_the_new_copy)
        with pytest.raises(OSError, match="killed"):
            _save(root, 4, "run")
    assert not list(root.glob(".step_*"))
    assert load_checkpoint(resolve_resume(root, "latest"))[1]["position"]["step"] == 4
    # Killed between the two renames (no cleanup at all): `latest` still resolves.
    real_replace(root / "step_00000004", root / ".step_00000004.replaced")
    assert resolve_resume(root, "latest").name == "step_00000004"


def test_a_run_crashed_between_checkpoint_writes_resumes_exactly(tmp_path, monkeypatch):
    """A Trainer beside an older, longer run's checkpoint (step 50) crashes after writing its
    step 4 but before pointing `latest` at it; resuming gives the uninterrupted weights, and the
    old run's checkpoint is still there."""
    uninterrupted = _tiny_trainer(tmp_path / "straight")
    uninterrupted.fit()

    root = tmp_path / "crashed" / "checkpoints"
    _save(root, 50, "an-older-run")
    crashed = _tiny_trainer(tmp_path / "crashed")
    real_atomic_write = checkpoint_module.atomic_write
    saves = []

    def crash_on_second_pointer(path, write):
        saves.append(path)
        if len(saves) == 2:  # step 4's checkpoint is on disk, `latest` still names step 2
            raise OSError("killed")
        real_atomic_write(path, write)

    monkeypatch.setattr(checkpoint_module, "atomic_write", crash_on_second_pointer)
    with pytest.raises(OSError, match="killed"):
        crashed.fit()
    monkeypatch.setattr(checkpoint_module, "atomic_write", real_atomic_write)
    assert resolve_resume(root, "latest").name == "step_00000002"

    resumed = _tiny_trainer(tmp_path / "crashed")
    assert resumed.fit(resume="latest")["steps"] == 4
    straight = tmp_path / "straight" / "checkpoints"
    expected = load_file(straight / "step_00000004" / "model.safetensors")
    got = load_file(root / "step_00000004" / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert sorted(p.name for p in root.glob("step_*")) == [
        "step_00000002", "step_00000004", "step_00000050"
    ]  # fmt: skip
    assert resolve_resume(root, "latest").name == "step_00000004"


def test_prepare_run_directory_refuses_a_file_and_touches_only_run_files(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        prepare_run_directory(tmp_path / "file", TRAIN_RUN_FILES)
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000001").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "data.csv").write_text("keep")
    with pytest.raises(RunDirectoryError) as refused:
        prepare_run_directory(out, TRAIN_RUN_FILES)
    assert refused.value.found == ["checkpoints", "metrics.jsonl"]
    assert prepare_run_directory(out, TRAIN_RUN_FILES, resume=True) == out  # used as it is
    assert (out / "metrics.jsonl").exists()
    prepare_run_directory(out, TRAIN_RUN_FILES, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["data.csv"]
    # A directory with only other files is no run: a fresh run may go there.
    assert prepare_run_directory(out, TRAIN_RUN_FILES) == out


# ----------------------------------------------------------------- logs: TensorBoard, VLM runs


def test_tensorboard_event_files_appear(old_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((old_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(old_run / "tensorboard"))
    accumulator.Reload()
    losses = accumulator.Scalars("train/loss")
    assert [event.step for event in losses] == [1, 2, 3, 4]


VLM = ["kind=llava", "task=scene_questions", "train_scenes=16", "test_scenes=1", "max_test=1",
       "batch_size=8", "hidden_size=32", "intermediate_size=64", "layers=1", "heads=2",
       "num_queries=4", "device=cpu", "steps=2", "connector_only_steps=1"]  # fmt: skip


def test_train_vlm_shows_progress_and_writes_metrics_curves_and_refuses_reuse(tmp_path, capsys):
    out = tmp_path / "vlm"
    assert main(["train-vlm", *VLM, f"out_dir={out}"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["steps"] == 3
    # One tqdm bar per stage, with its rate and the remaining-time estimate.
    assert "stage 1/2: 100%" in captured.err and "stage 2/2: 100%" in captured.err
    assert "step/s]" in captured.err or "s/step]" in captured.err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Every 10 steps and each stage's last; stage 2's steps count on from stage 1's.
    assert [(row["step"], row["stage"]) for row in rows] == [(1, 1), (3, 2)]
    assert all("loss" in row and "lr" in row for row in rows)
    assert (out / "training_curves.png").stat().st_size > 1000
    if _has_tensorboard():
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    assert main(["train-vlm", *VLM, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--overwrite" in err
    assert "--resume" not in err  # train-vlm has no resume
    assert main(["train-vlm", *VLM, "steps=1", "connector_only_steps=0", f"out_dir={out}",
                 "--overwrite"]) == 0  # fmt: skip
    capsys.readouterr()
    assert not (out / "stage1").exists()  # the old run's stage 1 is gone
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()] == [1]


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_demo_rewrites_its_directory_on_each_run(tmp_path):
    from vlkit.recipes.demo import run_demo

    options = dict(train_limit=32, test_limit=24, batch_size=8, warmup_steps=1, plots=False,
                   progress=False, threads=1)  # fmt: skip
    run_demo(tmp_path, steps=3, **options)
    summary = run_demo(tmp_path, steps=2, **options)  # a rerun (`make demo` twice) works
    assert summary["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "train" / "checkpoints").glob("step_*")) == [
        "step_00000002"
    ]  # the first run's step 3 is gone
    assert [json.loads(line)["step"] for line in (tmp_path / "train" / "metrics.jsonl").open()] == [
        1, 2
    ]  # fmt: skip


def test_a_start_killed_before_its_first_checkpoint_is_not_offered_a_resume(tmp_path, capsys):
    # What `vlkit train ... out_dir=kk` killed with kill -9 during startup leaves behind.
    out = tmp_path / "kk"
    (out / "checkpoints").mkdir(parents=True)
    (out / "tensorboard").mkdir()
    TrainConfig().to_json(out / "train_config.json")
    assert main(["train", *TINY, "max_steps=2", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err
    assert "it holds no checkpoint to resume" in err and "--overwrite" in err
    assert "--resume" not in err  # it would fail: "no checkpoint in .../checkpoints"
    with pytest.raises(RunDirectoryError) as refused:
        prepare_run_directory(out, TRAIN_RUN_FILES)
    assert refused.value.resumable is False and "resume='latest'" not in str(refused.value)
    # `latest` naming a checkpoint that is not there is no resumable run either.
    (out / "checkpoints" / LATEST).write_text("step_00000002\n")
    with pytest.raises(RunDirectoryError, match="no checkpoint to resume"):
        prepare_run_directory(out, TRAIN_RUN_FILES)
    assert main(["train", *TINY, "max_steps=2", f"out_dir={out}", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2


def test_an_empty_out_dir_is_refused(tmp_path, monkeypatch, capsys):
    # Path("") is the current directory: `out_dir=` used to train into it with exit 0.
    monkeypatch.chdir(tmp_path)
    for argv in (["train", *TINY, "max_steps=1", "out_dir="], ["train-vlm", *VLM, "out_dir= "]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "out_dir: empty" in err, err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="^out_dir: empty"):
        TrainConfig(out_dir="")
    with pytest.raises(ValueError, match="^out_dir: empty"):
        prepare_run_directory("", TRAIN_RUN_FILES)


def test_resuming_a_run_already_past_max_steps_says_nothing_was_trained(
    old_run, tmp_path, capsys, caplog
):
    out = _copy_of(old_run, tmp_path)  # at step 4
    args = ["train", *TINY, f"out_dir={out}", "--resume", "latest", "max_steps=3"]
    with caplog.at_level("WARNING", logger="vlkit.training.trainer"):
        assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4
    notices = [r.getMessage() for r in caplog.records if r.name == "vlkit.training.trainer"]
    assert notices == [
        "the resumed run is already at step 4 >= optim.max_steps=3: nothing trained "
        "(raise it to train on)"
    ]
    assert _steps(out) == ["step_00000002", "step_00000004"]  # nothing rewritten or pruned
