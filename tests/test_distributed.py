"""Distributed training on CPU (gloo): the same losses, gradients and weights as one process."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlkit.losses.sigmoid import SigLipLoss, sigmoid_loss


def _pairs(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
            F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1))  # fmt: skip


def _siglip_worker(rank, world, init_file, out_dir, exchange):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        image, text = _pairs(12, 8, seed=3)
        rows = slice(rank * 4, rank * 4 + 4)
        i, t = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
        scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        loss = SigLipLoss(distributed=True, exchange=exchange)(i, t, scale, bias)
        loss.backward()
        torch.save({"loss": loss.detach(), "i": i.grad, "t": t.grad, "scale": scale.grad,
                    "bias": bias.grad}, f"{out_dir}/{exchange}-{rank}.pt")  # fmt: skip
        dist.barrier()  # no rank tears the group down while another is still in a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("exchange", ["neighbour", "all_gather"])
def test_distributed_siglip_equals_the_global_batch(tmp_path, exchange):
    """Three ranks of 4: the mean rank loss is the 12-pair loss, and after DDP-style averaging
    the gradients of every input, the scale and the bias are the global batch's."""
    import torch.multiprocessing as mp

    mp.spawn(_siglip_worker, args=(3, str(tmp_path / "init"), str(tmp_path), exchange), nprocs=3,
             join=True)  # fmt: skip
    results = [torch.load(tmp_path / f"{exchange}-{r}.pt") for r in range(3)]
    image, text = _pairs(12, 8, seed=3)
    i, t = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    full = sigmoid_loss(i, t, scale, bias)
    full.backward()
    torch.testing.assert_close(sum(r["loss"] for r in results) / 3, full.detach())
    for name, expected in (("scale", scale.grad), ("bias", bias.grad)):
        torch.testing.assert_close(sum(r[name] for r in results) / 3, expected)
    for rank, result in enumerate(results):
        rows = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(result["i"] / 3, i.grad[rows])
        torch.testing.assert_close(result["t"] / 3, t.grad[rows])


ARGS = ["model=tiny", "data=shapes", "num_samples=64", "batch_size=16", "max_steps=3",
        "warmup_steps=1", "progress=false", "augment=false", "lr=1e-3"]  # fmt: skip


@pytest.mark.parametrize("loss", ["clip"])
def test_torchrun_two_processes_match_one_process(tmp_path, loss):
    """`torchrun --nproc_per_node=2 -m vlkit train` splits each global batch over two gloo
    processes; after three steps the weights equal a single process's on the whole batches."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "vlkit", "train", *ARGS, f"loss={loss}",
                    f"out_dir={single}"], check=True, env=env, capture_output=True)  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_port=29517", "-m", "vlkit", "train"]  # fmt: skip
    result = subprocess.run([*torchrun, *ARGS, f"loss={loss}", f"out_dir={double}"], env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    one = load_file(single / "checkpoints" / "step_00000003" / "model.safetensors")
    two = load_file(double / "checkpoints" / "step_00000003" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=2e-5, rtol=1e-4, msg=key)
