"""`vlkit finetune` end to end on a tiny random SmolVLM saved by transformers.

- a short run writes its run directory (metrics with tokens/s, held-out generations and
  evaluation, curves, checkpoints) and `OUT/final`, which vlkit and transformers load with the
  trained weights (the same logits);
- SIGKILL after a checkpoint, then `--resume latest`, ends with exactly the weights of an
  uninterrupted run (mid-epoch, across an epoch boundary, LoRA dropout on); a full fine-tuning
  run stopped by an error (in-process) resumes exactly too;
- LoRA runs save a peft adapter that transformers + peft load with vlkit's logits (the example
  covers `--merge`);
- mistakes exit with status 2 and one line.

The runs are shared by the tests (module fixtures) and kept tiny: 8 training rows, batches
of 2, a few steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlkit.cli.main import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("easy_vqa")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "finetune_smolvlm_easy_vqa.py"
SETTINGS = ["batch_size=2", "lr=3e-3", "warmup_steps=1", "log_every=1", "device=cpu",
            "max_new_tokens=3", "progress=false"]  # fmt: skip
# 8 rows / 2 = 4 batches an epoch: a checkpoint at step 2 is mid-epoch 0, step 6 is in epoch 1.
LORA = ["--lora", "r=4,alpha=8,dropout=0.2,targets=q_proj,v_proj,down_proj",
        "max_steps=6", "checkpoint_every=2"]  # fmt: skip
FULL = ["max_steps=4", "checkpoint_every=2"]


def _example():
    spec = importlib.util.spec_from_file_location("finetune_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random SmolVLM, 8 training and 3 held-out easy-VQA questions as parquet."""
    example = _example()
    root = tmp_path_factory.mktemp("finetune")
    train, test = example.easy_vqa_rows("train", 8), example.easy_vqa_rows("test", 3)
    corpus = [
        f"User:{q}<end_of_utterance>\nAssistant: {a}<end_of_utterance>\n" for q, a, _ in train
    ]
    return {
        "root": root,
        "base": example.write_tiny_smolvlm(root / "base", corpus * 20, width=32),
        "train": example.write_cauldron_parquet(train, root / "train.parquet"),
        "test": example.write_cauldron_parquet(test, root / "test.parquet"),
    }


def _args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["finetune", "--model", str(setup["base"]), "--data", str(setup["train"]),
            "--out", str(out), *SETTINGS, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def full_run(setup) -> Path:
    """Full fine-tuning, 4 steps, with held-out evaluation and generation every 2 steps."""
    out = setup["root"] / "full"
    code = main(_args(setup, out, "--eval-data", str(setup["test"]), *FULL, "eval_every=2",
                      "generate_every=2"))  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def lora_run(setup) -> Path:
    """LoRA with dropout, 6 steps (the uninterrupted reference of the SIGKILL test)."""
    out = setup["root"] / "lora"
    assert main(_args(setup, out, *LORA)) == 0
    return out


def _logits(model: torch.nn.Module, setup: dict[str, Path]) -> torch.Tensor:
    """vlkit-processor inputs of one held-out question through `model` (vlkit or transformers)."""
    from vlkit.data.datasets.sft import SFTDataset
    from vlkit.hub.processors import get_processor

    item = SFTDataset(str(setup["test"]), get_processor(setup["base"]))[0]
    inputs = {k: item[k][None] for k in ("input_ids", "attention_mask", "pixel_values",
                                         "pixel_attention_mask")}  # fmt: skip
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_finetune_run_directory_and_final_model(setup, full_run, capsys) -> None:
    import vlkit

    out = full_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_kind"] == "full"
    assert 0 <= summary["eval/heldout/exact_match"] <= 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["tokens_per_second"] > 0 and r["supervised_tokens"] > 0 for r in rows)
    assert "eval/heldout/exact_match" in rows[1] and "eval/heldout/exact_match" not in rows[0]
    generations = [
        json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()
    ]
    assert [g["step"] for g in generations] == [2, 2, 2, 4, 4, 4]  # generate_examples=3
    assert {"prompt", "prediction", "answer"} <= set(generations[0])
    assert (out / "training_curves.png").stat().st_size > 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"

    # OUT/final: vlkit loads the trained weights; transformers gives the same logits.
    trained = load_file(out / "checkpoints" / "step_00000004" / "model.safetensors")
    final = vlkit.from_pretrained(out / "final")
    for name, value in final.state_dict().items():
        assert torch.equal(value, trained[name]), name
    reference = transformers.SmolVLMForConditionalGeneration.from_pretrained(out / "final")
    ours, theirs = _logits(final, setup), _logits(reference, setup)
    assert (ours - theirs).abs().max() < 1e-4
    assert not torch.equal(ours, _logits(vlkit.from_pretrained(setup["base"]), setup))

    # A second fresh run into the same directory is refused in one line.
    capsys.readouterr()
    assert main(_args(setup, out, "max_steps=2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume latest" in err and "--overwrite" in err


KILLER = """
import os, sys, time
import vlkit.cli.finetune as command
run = command.run_finetune

class Stall:  # after the step-{stall} checkpoint is written, wait to be killed
    def on_step_end(self, trainer, metrics):
        if trainer.step == {stall} + 1:
            open(sys.argv[1], "w").write("ready")
            time.sleep(600)

command.run_finetune = lambda *a, **k: run(*a, extra_callbacks=[Stall()], **k)
from vlkit.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _weights(run: Path) -> dict[str, torch.Tensor]:
    adapter = run / "final" / "adapter_model.safetensors"
    return load_file(adapter if adapter.is_file() else run / "final" / "model.safetensors")


def _resume_and_compare(killed: Path, reference: Path, steps: int) -> None:
    """`--resume latest` reads the run's saved settings (--model / --data need not be
    repeated) and must end with the reference run's weights and one metrics row a step."""
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not (killed / "final").exists()
    assert main(["finetune", "--out", str(killed), "--resume", "latest", "progress=false"]) == 0
    ours, expected = _weights(killed), _weights(reference)
    assert ours.keys() == expected.keys()
    for name in expected:
        assert torch.equal(ours[name], expected[name]), name
    rows = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rows] == list(range(1, steps + 1))


def test_sigkill_then_resume_equals_uninterrupted(setup, lora_run, tmp_path) -> None:
    # LoRA with dropout: the resumed run must replay the dropout draws too.
    killed = tmp_path / "killed"
    marker = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", KILLER.format(stall=2), str(marker),
                                *_args(setup, killed, *LORA)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    _resume_and_compare(killed, lora_run, 6)


class _Crash(RuntimeError):
    pass


class _CrashAt:
    """Stops a run with an error at `step` (after the checkpoint before it was written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, metrics) -> None:
        if trainer.step == self.step:
            raise _Crash(f"stopped at step {self.step}")


def test_full_finetuning_stopped_then_resumed_equals_uninterrupted(setup, full_run, tmp_path):
    # In-process (the SIGKILL test above covers a killed process): the held-out evaluation and
    # generation of the reference run draw no random numbers, so leaving them out here must not
    # change a single weight.
    from vlkit.recipes.finetune import FinetuneConfig, run_finetune

    killed = tmp_path / "stopped"
    config = FinetuneConfig(model=str(setup["base"]), data=str(setup["train"]),
                            out_dir=str(killed)).with_overrides([*SETTINGS, *FULL])  # fmt: skip
    with pytest.raises(_Crash):
        run_finetune(config, extra_callbacks=[_CrashAt(3)])
    _resume_and_compare(killed, full_run, 4)


def test_lora_adapter_loads_in_transformers_peft_and_vlkit(setup, lora_run, capsys) -> None:
    peft = pytest.importorskip("peft")
    from vlkit.inference.vlm_loading import load_vlm

    out = lora_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_kind"] == "adapter"
    assert summary["trainable_parameters"] < summary["total_parameters"] / 5
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == setup["base"].resolve()
    # transformers + peft: the base model from the recorded path, then the adapter.
    base = transformers.SmolVLMForConditionalGeneration.from_pretrained(
        config["base_model_name_or_path"]
    )
    reference = peft.PeftModel.from_pretrained(base, out / "final")
    # vlkit: `load_vlm` (what `vlkit generate --model OUT/final` uses) reads the same directory.
    ours = _logits(load_vlm(out / "final").model, setup)
    theirs = _logits(reference, setup)
    assert (ours - theirs).abs().max() < 1e-4
    with reference.disable_adapter():  # peft wrapped `base` in place: switch the adapter off
        assert (ours - _logits(reference, setup)).abs().max() > 1e-4  # training changed it
    capsys.readouterr()
    image = setup["root"] / "image.png"
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(image)
    code = main(["generate", "--model", str(out / "final"), "--image", str(image),
                 "--prompt", "what color is the shape?", "--max-new-tokens", "3"])  # fmt: skip
    assert code == 0, capsys.readouterr().err


def test_vqa_rows_keep_human_answers_for_official_accuracy(tmp_path) -> None:
    """A VQA row's ten human answers survive reading; held-out scoring then reports VQA
    accuracy (min(#humans that said it / 3, 1)) next to exact match."""
    from PIL import Image

    from vlkit.data.datasets.conversation_formats import read_conversations
    from vlkit.recipes.finetune_eval import heldout_questions, score_answers

    Image.new("RGB", (8, 8)).save(tmp_path / "q.png")
    humans = ["two", "2", "two", "three", "2", "two", "2", "two", "two", "2"]
    (tmp_path / "vqa.json").write_text(json.dumps([
        {"image": "q.png", "question": "How many?", "answers": [{"answer": a} for a in humans]},
        {"image": "q.png", "question": "Which?", "answers": ["left", "right", "right"]}]))  # fmt: skip
    rows = read_conversations(tmp_path / "vqa.json").rows
    assert rows[0]["answers"] == humans and rows[1]["answers"] == ["left", "right", "right"]
    questions = heldout_questions(rows)
    assert questions[0].answer == "two" and questions[0].answers == humans
    scores = score_answers(["2", "left"], questions)
    assert scores["exact_match"] == 0.0
    # official VQA accuracy: "2" said by 4 humans -> 1; "left" by 1 -> 1/3 (averaged over the
    # 10 leave-one-out subsets, as the official script does)
    assert 0.6 < scores["vqa_accuracy"] < 0.7, scores
    # Rows without human answers: exact match only.
    plain = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]}
    assert set(score_answers(["x"], heldout_questions([plain]))) == {"exact_match"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["lr=0"], "optim.lr: must be > 0"),
        (["nope=1"], "unknown key 'nope'"),
        (["precision=fp8"], "precision: expected one of fp32, bf16, fp16"),
        (["--merge"], "merge: only a LoRA run"),
        (["eval_every=2"], "eval_every: needs held-out data"),
        (["max_length=2"], "max_length: must be >= 8"),
        (["device=cuda:7"], "cuda"),
        (["--resume", "latest", "--overwrite"], "--resume continues the run"),
        (["--resume", "latest"], "no checkpoint"),
        (["stray"], "'stray': expected a key=value setting"),
        (["--lora", "r=0"], "r"),
        (["--lora", "rank=4"], "unknown LoRA option 'rank'"),
    ],
)
def test_mistakes_exit_2_with_one_line(setup, tmp_path, capsys, extra, expected) -> None:
    assert main(_args(setup, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vlkit: error: "), err
    assert expected in err, err


def test_missing_inputs_exit_2(setup, tmp_path, capsys) -> None:
    cases = [
        (["finetune", "--data", str(setup["train"]), "--out", str(tmp_path / "a")], "--model"),
        (["finetune", "--model", str(setup["base"]), "--out", str(tmp_path / "b")], "--data"),
        (["finetune", "--model", str(setup["base"]), "--data", str(setup["train"])], "--out"),
        (_args(setup, tmp_path / "c")[:3] + ["--data", str(tmp_path / "none.parquet"),
                                              "--out", str(tmp_path / "c")], "none.parquet"),
        (["finetune", "--model", str(tmp_path / "nomodel"), "--data", str(setup["train"]),
          "--out", str(tmp_path / "d")], "nomodel"),
    ]  # fmt: skip
    # A torn saved config (written atomically now, but from elsewhere) is named, not a bare
    # JSON error.
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "finetune_config.json").write_text('{"model": "x", "da')
    cases.append((["finetune", "--out", str(tmp_path / "e"), "--resume", "latest"],
                  "finetune_config.json: not JSON"))  # fmt: skip
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err


def test_example_quick(tmp_path, monkeypatch, capsys) -> None:
    """examples/finetune_smolvlm_easy_vqa.py --quick (in-process): accuracies before/after and
    the command."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--quick", "--out", str(tmp_path)])
    _example().main()
    out = capsys.readouterr().out
    for label in ("before", "after"):
        line = next(x for x in out.splitlines() if x.startswith(f"{label} fine-tuning"))
        assert 0.0 <= float(line.split("exact match ")[1].split()[0]) <= 1.0
    assert "vlkit finetune --model" in out and "--lora r=16" in out
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()  # --merge
