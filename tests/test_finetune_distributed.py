"""`vlkit finetune` over 2 gloo processes on CPU == 1 process on the same global batches.

The recipe (`run_finetune`) is called in each of 2 spawned processes with torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT), so it joins the process group itself, as
under `torchrun -m vlkit finetune`. One spawn runs both strategies:

- `strategy=ddp`, full fine-tuning: OUT/final (a SmolVLM directory) equals the 1-process run's;
- `strategy=fsdp`, LoRA, with held-out evaluation and periodic generation (generated under
  `fsdp.gathered` on both processes): the gathered adapter equals the 1-process run's, the
  generations and scores are the same, and sharded checkpoints were written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from vlkit.recipes.finetune import FinetuneConfig, run_finetune
from vlkit.training.fsdp import fsdp_available

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_smolvlm_easy_vqa.py"
COMMON = ["batch_size=4", "max_steps=3", "lr=3e-3", "warmup_steps=1", "log_every=1",
          "device=cpu", "progress=false", "checkpoint_every=2", "max_new_tokens=3"]  # fmt: skip
LORA = "r=4,alpha=8,targets=q_proj,v_proj,down_proj"


def _configs(root: Path, out: Path) -> dict[str, FinetuneConfig]:
    base = FinetuneConfig(model=str(root / "base"), data=str(root / "train.json"), out_dir="")
    ddp = base.with_overrides([*COMMON, f"out_dir={out / 'ddp'}"])
    fsdp = base.with_overrides([*COMMON, f"out_dir={out / 'fsdp'}", "strategy=fsdp",
                                f"eval_data={root / 'train.json'}", "eval_every=3",
                                "generate_every=3", "generate_examples=2"])  # fmt: skip
    fsdp.lora = LORA
    return {"ddp": ddp, "fsdp": fsdp}


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    try:
        for name, config in _configs(Path(root), Path(out)).items():
            if name == "fsdp" and not fsdp_available():
                continue
            run_finetune(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SmolVLM and 8 one-image conversations (LLaVA JSON)."""
    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location("finetune_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    root = tmp_path_factory.mktemp("finetune_ddp")
    colors = ["red", "green", "blue", "yellow"]
    rows = []
    for n in range(8):
        path = root / f"{n}.png"
        pixels = np.random.default_rng(n).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        answer = " ".join(colors[: 1 + n % 4])  # unequal label counts per row
        rows.append({"id": str(n), "image": path.name, "conversations": [
            {"from": "human", "value": "<image>\nWhich colors?"},
            {"from": "gpt", "value": answer}]})  # fmt: skip
    (root / "train.json").write_text(json.dumps(rows))
    corpus = [f"User:Which colors?<end_of_utterance>\nAssistant: {' '.join(colors)}"] * 40
    example.write_tiny_smolvlm(root / "base", corpus, width=32)
    return root


def _close(actual: dict, expected: dict) -> None:
    # Sums over 2 processes round differently; AdamW's first steps (update ~ lr * sign(grad))
    # magnify that for gradients near 0: ~2e-6 on weights that moved by ~7e-3.
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4, msg=key)


def test_two_processes_equal_one(root: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    mp.spawn(_worker, args=(2, _free_port(), str(root), str(two)), nprocs=2, join=True)
    configs = _configs(root, one)
    run_finetune(configs["ddp"])
    # ddp, full fine-tuning: the SmolVLM directory written by the main process.
    summary = json.loads((two / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    _close(load_file(two / "ddp" / "final" / "model.safetensors"),
           load_file(one / "ddp" / "final" / "model.safetensors"))  # fmt: skip
    metrics = [json.loads(line) for line in (two / "ddp" / "metrics.jsonl").open()]
    reference = [json.loads(line) for line in (one / "ddp" / "metrics.jsonl").open()]
    for ours, theirs in zip(metrics, reference, strict=True):  # global token-mean loss
        assert ours["supervised_tokens"] == theirs["supervised_tokens"]
        assert abs(ours["loss"] - theirs["loss"]) < 1e-5
    if not fsdp_available():
        pytest.skip("this torch has no FSDP2 (fully_shard): the ddp half ran")
    # fsdp, LoRA: sharded checkpoints; the adapter gathered to the main process.
    run_finetune(configs["fsdp"])
    step = two / "fsdp" / "checkpoints" / "step_00000002"
    assert json.loads((step / "checkpoint.json").read_text())["format"] == "dcp"
    _close(load_file(two / "fsdp" / "final" / "adapter_model.safetensors"),
           load_file(one / "fsdp" / "final" / "adapter_model.safetensors"))  # fmt: skip
    ours = [json.loads(line) for line in (two / "fsdp" / "generations.jsonl").open()]
    theirs = [json.loads(line) for line in (one / "fsdp" / "generations.jsonl").open()]
    assert [g["step"] for g in ours] == [3, 3]
    assert [g["prediction"] for g in ours] == [g["prediction"] for g in theirs]
    summary = json.loads((two / "fsdp" / "summary.json").read_text())
    expected = json.loads((one / "fsdp" / "summary.json").read_text())
    assert summary["strategy"] == "fsdp" and summary["final_kind"] == "adapter"
    assert summary["eval/heldout/exact_match"] == expected["eval/heldout/exact_match"]
