"""ClipLoss against open_clip's reference and a hand-written formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlkit.losses import ClipLoss, clip_loss

open_clip_loss = pytest.importorskip("open_clip.loss")


def _pairs(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    return image, text


def _by_hand(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float = 0.0) -> float:
    """CLIP Fig. 3 written out: -log softmax of the matching pair, by rows and by columns."""
    n = image.shape[0]
    sims = [[scale * float(image[i] @ text[j]) + bias for j in range(n)] for i in range(n)]
    rows = sum(-sims[i][i] + math.log(sum(math.exp(s) for s in sims[i])) for i in range(n))
    cols = sum(
        -sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(n))) for j in range(n)
    )
    return (rows + cols) / (2 * n)


@pytest.mark.parametrize("n, d, scale", [(8, 16, 1 / 0.07), (5, 4, 1.0), (32, 64, 100.0)])
def test_matches_open_clip(n: int, d: int, scale: float) -> None:
    image, text = _pairs(n, d)
    reference = open_clip_loss.ClipLoss()(image, text, torch.tensor(scale, dtype=torch.float64))
    ours = ClipLoss()(image, text, torch.tensor(scale, dtype=torch.float64))
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_matches_open_clip_with_bias() -> None:
    image, text = _pairs()
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-2.5, dtype=torch.float64)
    reference = open_clip_loss.ClipLoss()(image, text, scale, logit_bias=bias)
    torch.testing.assert_close(ClipLoss()(image, text, scale, bias), reference)


def test_matches_hand_formula() -> None:
    image, text = _pairs(6, 8, seed=3)
    for scale, bias in [(1.0, 0.0), (14.3, 0.0), (10.0, -3.0)]:
        expected = _by_hand(image, text, scale, bias)
        got = clip_loss(image, text, scale, bias if bias else None).item()
        assert got == pytest.approx(expected, rel=1e-10)


def test_gradients_match_open_clip() -> None:
    image, text = _pairs(8, 16, seed=1)
    scale = torch.tensor(5.0, dtype=torch.float64)
    grads = []
    for loss_fn in (ClipLoss(), open_clip_loss.ClipLoss()):
        i, t, s = (x.clone().requires_grad_() for x in (image, text, scale))
        loss_fn(i, t, s).backward()
        grads.append((i.grad, t.grad, s.grad))
    for ours, reference in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference)


def test_label_smoothing() -> None:
    image, text = _pairs()
    logits = 3.0 * image @ text.T
    labels = torch.arange(len(image))
    expected = (
        F.cross_entropy(logits, labels, label_smoothing=0.1)
        + F.cross_entropy(logits.T, labels, label_smoothing=0.1)
    ) / 2
    torch.testing.assert_close(ClipLoss(label_smoothing=0.1)(image, text, 3.0), expected)
    assert ClipLoss(0.1)(image, text, 3.0) != ClipLoss()(image, text, 3.0)


def test_perfect_alignment_gives_low_loss_and_bad_input_raises() -> None:
    eye = torch.eye(4)
    assert clip_loss(eye, eye, 100.0).item() < 1e-6
    # Uniform logits: the loss is log(N).
    assert clip_loss(eye, eye, 0.0).item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="shape"):
        clip_loss(eye, torch.eye(3), 1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        ClipLoss(label_smoothing=1.0)


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        image, text = _pairs(8, 16, seed=5)
        rows = slice(rank * 4, rank * 4 + 4)
        i, t = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
        scale = torch.tensor(7.0, dtype=torch.float64)
        loss = ClipLoss(label_smoothing=0.1, distributed=True)(i, t, scale)
        loss.backward()
        torch.save({"loss": loss.detach(), "i": i.grad, "t": t.grad}, f"{out_dir}/{rank}.pt")
        dist.barrier()  # no rank tears the group down while another is still in a collective
    finally:
        dist.destroy_process_group()


def test_distributed_equals_global_batch(tmp_path) -> None:
    """Two gloo ranks with 4 pairs each: mean rank loss = the 8-pair loss; each rank's embedding
    gradients = world_size x the global loss's (DDP then averages parameter gradients)."""
    import torch.multiprocessing as mp

    mp.spawn(
        _distributed_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    image, text = _pairs(8, 16, seed=5)
    i, t = image.clone().requires_grad_(), text.clone().requires_grad_()
    full = ClipLoss(label_smoothing=0.1)(i, t, torch.tensor(7.0, dtype=torch.float64))
    full.backward()
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, full.detach())
    for rank, result in enumerate(results):
        rows = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(result["i"], 2 * i.grad[rows])
        torch.testing.assert_close(result["t"], 2 * t.grad[rows])


def test_distributed_flag_without_process_group_is_single_process() -> None:
    image, text = _pairs()
    torch.testing.assert_close(
        ClipLoss(distributed=True)(image, text, 3.0), ClipLoss()(image, text, 3.0)
    )


@pytest.mark.parametrize("bias", [-10.0, -1.5])
def test_siglip_loss_matches_open_clip(bias: float) -> None:
    from open_clip.loss import SigLipLoss as OpenClipSigLipLoss

    from vlkit.losses import SigLipLoss

    image, text = _pairs(7, 12)
    image.requires_grad_(True)
    ours_scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    ours = SigLipLoss()(image, text, ours_scale, torch.tensor(bias, dtype=torch.float64))
    ours.backward()
    ours_grad, image.grad = image.grad.clone(), None
    theirs_scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    theirs = OpenClipSigLipLoss()(
        image, text, theirs_scale, torch.tensor(bias, dtype=torch.float64)
    )
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grad, image.grad)
    torch.testing.assert_close(ours_scale.grad, theirs_scale.grad)
