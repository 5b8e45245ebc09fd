"""FSDP2 on CPU with gloo: two sharded processes train a tiny SmolVLM to the same weights as one
process on the same global batches, and their sharded checkpoint resumes on one process.

One `mp.spawn` of 2 ranks does all the distributed work (spawning costs seconds); the
single-process runs happen in the test process. The rows have different numbers of supervised
tokens, so the ranks' token counts differ and only the token-weighted loss (`SFTTask`) averaged
by FSDP's reduce-scatter gives the single process's gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from vlkit.distributed import DistributedInfo
from vlkit.hub.hf_smolvlm import build_smolvlm
from vlkit.hub.weights import load_into, read_weights
from vlkit.overrides import ConfigError
from vlkit.training import TrainConfig, Trainer
from vlkit.training.config import CheckpointConfig, OptimConfig
from vlkit.training.fsdp import fsdp_available, full_state_dict, gathered, is_sharded, shard_model
from vlkit.training.sft_task import SFTTask
from vlkit.training.sharded_checkpoint import (
    consolidated_state_dict,
    export_safetensors,
    is_sharded_checkpoint,
)

IMAGE_TOKEN, SEQ = 99, 24
STEPS = 4


def _model():
    """A tiny SmolVLM (2 vision layers, 2 decoder layers), the same on every rank."""
    config = {
        "model_type": "smolvlm", "scale_factor": 2, "image_token_id": IMAGE_TOKEN,
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 4},
        "text_config": {"vocab_size": 100, "hidden_size": 48, "intermediate_size": 96,
                        "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "max_position_embeddings": 128},
    }  # fmt: skip
    model = build_smolvlm(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


class _Rows(Dataset):
    """One image (16 placeholder tokens after pixel shuffle) + text; row i supervises i % 5 + 2
    tokens, so the two ranks' shares of a batch have different token counts."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index = key[0]  # (index, sample seed), as the trainer's sampler asks
        generator = torch.Generator().manual_seed(index)
        ids = torch.randint(0, 90, (SEQ,), generator=generator)
        ids[1:17] = IMAGE_TOKEN
        labels = torch.full((SEQ,), -100)
        targets = index % 5 + 2
        labels[-targets:] = ids[-targets:]
        pixels = torch.rand(1, 3, 32, 32, generator=generator)
        return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "pixel_values": pixels, "index": index}  # fmt: skip


def _collate(items: list[dict]) -> dict:
    batch = {key: torch.stack([item[key] for item in items])
             for key in ("input_ids", "labels", "attention_mask", "pixel_values")}  # fmt: skip
    batch["index"] = [item["index"] for item in items]
    return batch


class _Record:
    """Keeps every step's loss and gradient norm (AdamW hides a uniform gradient scale error in
    the weights; the norm shows it)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []

    def on_step_end(self, trainer, metrics) -> None:
        self.rows.append((metrics["loss"], metrics["grad_norm"]))


def _trainer(out_dir, strategy, rank=0, world=1, max_steps=STEPS, model=None) -> Trainer:
    config = TrainConfig(
        device="cpu", out_dir=str(out_dir), progress=False, strategy=strategy,
        optim=OptimConfig(batch_size=4, max_steps=max_steps, lr=3e-3, warmup_steps=1,
                          weight_decay=0.1),
        checkpoint=CheckpointConfig(every=2, keep_last=0),
    )  # fmt: skip
    return Trainer(config, model or _model(), SFTTask(micro_batch_size=1), _Rows(), _collate,
                   callbacks=[_Record()], distributed=DistributedInfo(rank, world, 0))  # fmt: skip


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = _trainer(out_dir, "fsdp", rank, world)
        assert is_sharded(trainer.model)
        trainer.fit()
        full = full_state_dict(trainer.model)  # collective: every rank calls it
        if rank == 0:
            torch.save(full, f"{out_dir}/full.pt")
            torch.save(trainer.callbacks[0].rows, f"{out_dir}/metrics.pt")

        # bf16 parameters (fp32 reduction): the loss follows the fp32 model's closely.
        model = shard_model(_model(), "cpu", mixed_precision="bf16")
        batch = _collate([_Rows()[i, 0] for i in (rank, rank + 2)])
        out = model(batch["input_ids"], batch["pixel_values"], labels=batch["labels"])
        out.loss.backward()
        grad = next(p.grad for p in model.parameters() if p.grad is not None)
        ids = batch["input_ids"][:1, :20]
        with gathered(model), torch.no_grad():  # generation outside forward
            generated = model.generate(ids, batch["pixel_values"][:1], max_new_tokens=3)
        if rank == 0:
            torch.save({"loss": out.loss.detach().float(), "grad_dtype": str(grad.dtype),
                        "generated": generated}, f"{out_dir}/bf16.pt")  # fmt: skip
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key].float(), expected[key].float(), atol=3e-6, rtol=1e-4,
                                   msg=key)  # fmt: skip


@pytest.mark.skipif(not fsdp_available(), reason="this torch has no FSDP2 (fully_shard)")
def test_fsdp_two_processes_match_one_and_resume_on_one(tmp_path):
    torch.set_num_threads(1)
    two = tmp_path / "two"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(two)), nprocs=2, join=True)

    # 1 process, plain model, the same 4 global batches (ddp strategy, world 1).
    single = _trainer(tmp_path / "one", "ddp")
    single.fit()
    reference = {k: v.detach() for k, v in single.model.state_dict().items()}

    # The sharded checkpoint of 2 ranks: consolidated on one process without a model, it is
    # the single process's model; so is rank 0's full_state_dict.
    step4 = two / "checkpoints" / "step_00000004"
    assert is_sharded_checkpoint(step4)
    assert len(list((step4 / "dcp").glob("*.distcp"))) == 2
    _assert_same_weights(consolidated_state_dict(step4), reference)
    _assert_same_weights(torch.load(two / "full.pt"), reference)
    torch.testing.assert_close(torch.load(two / "metrics.pt"), single.callbacks[0].rows, rtol=1e-5,
                               atol=1e-6)  # fmt: skip

    # Resume the 2-rank step-2 checkpoint in 1 process (model and AdamW state resharded):
    # steps 3-4 continue exactly as the 2-rank run did.
    resumed = _trainer(tmp_path / "resumed", "fsdp")
    resumed.fit(resume=str(two / "checkpoints" / "step_00000002"))
    assert resumed.step == STEPS
    torch.testing.assert_close(resumed.callbacks[0].rows, torch.load(two / "metrics.pt")[2:],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    _assert_same_weights(resumed.model.state_dict(), consolidated_state_dict(step4))
    assert is_sharded_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000004")

    # Plain safetensors for load_into / save_pretrained.
    exported = export_safetensors(step4, tmp_path / "export" / "model.safetensors")
    fresh = _model()
    load_into(fresh, read_weights(exported), str(exported))
    _assert_same_weights(fresh.state_dict(), reference)

    # bf16 mixed precision: fp32 gradients, a loss near the fp32 one, generation as unsharded.
    bf16 = torch.load(two / "bf16.pt")
    batch = _collate([_Rows()[i, 0] for i in (0, 2)])
    model = _model()
    loss = model(batch["input_ids"], batch["pixel_values"], labels=batch["labels"]).loss
    assert bf16["grad_dtype"] == "torch.float32"
    torch.testing.assert_close(bf16["loss"], loss.detach(), atol=0.05, rtol=0.02)
    assert bf16["generated"].shape == (1, 23)


def test_fsdp_config_refusals():
    with pytest.raises(ConfigError, match="strategy: fsdp supports precision fp32 or bf16"):
        TrainConfig(strategy="fsdp", precision="fp16")
    with pytest.raises(ConfigError, match="strategy"):
        TrainConfig(strategy="zero3")


def test_sharded_checkpoint_on_one_process_names_mismatches(tmp_path):
    """Without a process group the same format is written (one shard); a model that differs
    from the checkpoint is one CheckpointError naming the key, never a silent partial load."""
    from vlkit.hub import CheckpointError
    from vlkit.training.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    path = save_sharded_checkpoint(tmp_path, 7, model, optimizer, {"optimizer": None, "k": 1})
    assert (tmp_path / "latest").read_text().strip() == "step_00000007"
    assert not list(tmp_path.glob(".step_*"))  # the staging directory was renamed into place

    copy = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    copy_optimizer = torch.optim.AdamW(copy.parameters())
    assert load_sharded_checkpoint(path, copy, copy_optimizer) == {"k": 1}
    assert torch.equal(copy[1].weight, model[1].weight)
    assert copy_optimizer.state_dict()["state"][0]["step"] == 1
    with pytest.raises(CheckpointError, match=r"unexpected keys 1\.bias, 1\.weight"):
        load_sharded_checkpoint(path, torch.nn.Sequential(torch.nn.Linear(4, 3)))
    with pytest.raises(CheckpointError, match=r"Size mismatch .* for model\.1\.weight"):
        load_sharded_checkpoint(
            path, torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 5))
        )


class _RunsCode:
    """Unpickling this calls `os.system`: what a crafted checkpoint file could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_sharded_checkpoint_loading_never_runs_code(tmp_path):
    """DCP unpickles `.metadata` and `torch.load`s byte entries with weights_only=False; vlkit's
    reader and planner (training/safe_dcp.py) build only checkpoint data and refuse the rest."""
    import pickle

    from vlkit.hub import CheckpointError
    from vlkit.training.sharded_checkpoint import (
        consolidated_state_dict,
        load_sharded_checkpoint,
        save_sharded_checkpoint,
    )

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.25)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    path = save_sharded_checkpoint(tmp_path / "ok", 1, model, optimizer, {"k": 1})
    copy = torch.nn.Sequential(torch.nn.Linear(4, 3))
    copy_optimizer = torch.optim.AdamW(copy.parameters(), lr=1.0)
    load_sharded_checkpoint(path, copy, copy_optimizer)  # the safe path reads real checkpoints
    assert copy_optimizer.param_groups[0]["lr"] == 0.25  # a byte entry, read weights_only
    assert torch.equal(consolidated_state_dict(path)["0.weight"], model[0].weight)

    marker = tmp_path / "ran"
    metadata = path / "dcp" / ".metadata"
    metadata.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(
        CheckpointError, match=r"refusing to load posix\.system|refusing to load os"
    ):
        load_sharded_checkpoint(path, copy, copy_optimizer)
    with pytest.raises(CheckpointError, match="refusing to load"):
        consolidated_state_dict(path)
    assert not marker.exists()

    # A byte entry (an optimizer's param groups) holding an object: refused, never run.
    import io

    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    from vlkit.training.safe_dcp import SafeLoadPlanner

    planner = SafeLoadPlanner(flatten_state_dict=False)
    planner.state_dict = {"groups": None}
    size = torch.Size([0])
    item = ReadItem(LoadItemType.BYTE_IO, MetadataIndex("groups"), size,
                    MetadataIndex("groups"), size, size)  # fmt: skip
    buffer = io.BytesIO()
    torch.save([{"lr": 0.5, "betas": (0.9, 0.99)}], buffer)
    buffer.seek(0)
    planner.load_bytes(item, buffer)
    assert planner.state_dict["groups"] == [{"lr": 0.5, "betas": (0.9, 0.99)}]
    buffer = io.BytesIO()
    torch.save(_RunsCode(marker), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        planner.load_bytes(item, buffer)
    assert not marker.exists()
