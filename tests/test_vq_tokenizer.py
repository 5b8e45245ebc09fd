"""VQ-VAE image tokenizer: straight-through gradients, the two VQ losses, EMA codebook updates,
k-means initialisation (against scikit-learn), dead-code restarts, usage metrics, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlkit.errors import CheckpointError
from vlkit.hub.vq_checkpoint import VQ_TOKENIZER_CONFIG, load_vq_tokenizer, save_vq_tokenizer
from vlkit.layers.vector_quantizer import (
    VectorQuantizer,
    codebook_usage,
    kmeans,
    kmeans_plus_plus,
)
from vlkit.models.vq_tokenizer import VQTokenizer, VQTokenizerConfig, psnr
from vlkit.overrides import ConfigError

TINY = VQTokenizerConfig(
    image_size=16, hidden_channels=(8, 8), num_residual_blocks=1, code_dim=4, num_codes=8
)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation (10x slower
    on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quantizer(codebook: torch.Tensor, **kwargs) -> VectorQuantizer:
    q = VectorQuantizer(codebook.shape[0], codebook.shape[1], kmeans_init=False, **kwargs)
    q.codebook.data.copy_(codebook)
    if q.ema_decay is not None:
        q.ema_embed_sum.copy_(codebook)
    return q


def test_nearest_code_and_straight_through_gradient() -> None:
    torch.manual_seed(0)
    tokenizer = VQTokenizer(VQTokenizerConfig(**{**TINY.to_dict(), "ema_decay": None}))
    images = torch.rand(3, 3, 16, 16)
    z = tokenizer.encoder(images).permute(0, 2, 3, 1)  # (B, h, w, D)
    z.retain_grad()
    q = tokenizer.quantizer(z)
    decoder_input = q.quantized
    decoder_input.retain_grad()
    reconstruction = tokenizer.decoder(decoder_input.permute(0, 3, 1, 2))
    F.mse_loss(reconstruction, images).backward()
    # Forward: each vector is replaced by its nearest code (brute force over the codebook).
    flat = z.detach().reshape(-1, TINY.code_dim)
    nearest = torch.cdist(flat, tokenizer.quantizer.codebook.detach()).argmin(1)
    assert torch.equal(q.codes.flatten(), nearest)
    assert torch.allclose(
        decoder_input.detach().reshape(-1, 4), tokenizer.quantizer.codebook[nearest]
    )
    # Backward: the encoder receives the decoder's gradient unchanged; the codebook none of it.
    assert z.grad.abs().sum() > 0
    assert torch.equal(z.grad, decoder_input.grad)
    assert tokenizer.quantizer.codebook.grad is None
    assert all(p.grad is not None for p in tokenizer.encoder.parameters())


def test_codebook_loss_reaches_only_the_codebook_and_commitment_only_the_encoder() -> None:
    torch.manual_seed(0)
    codebook = torch.randn(5, 3)
    z = torch.randn(2, 4, 3, requires_grad=True)
    q = _quantizer(codebook, beta=0.25)
    out = q(z)
    e = codebook[out.codes]  # (2, 4, 3)
    out.codebook_loss.backward(retain_graph=True)
    assert z.grad is None
    # d/de_k mean ||sg[z] - e||^2 = 2 sum_{i -> k} (e_k - z_i) / numel
    expected = torch.zeros_like(codebook).index_add_(
        0, out.codes.flatten(), (2 * (e - z.detach()) / z.numel()).reshape(-1, 3)
    )
    assert torch.allclose(q.codebook.grad, expected, atol=1e-6)
    q.codebook.grad = None
    out.commitment_loss.backward()
    assert q.codebook.grad is None
    assert torch.allclose(z.grad, 0.25 * 2 * (z.detach() - e) / z.numel(), atol=1e-6)
    assert torch.allclose(out.commitment_loss, 0.25 * ((z - e) ** 2).mean())


def test_ema_update_matches_hand_computation() -> None:
    codebook = torch.tensor([[0.0, 0.0], [4.0, 4.0], [-4.0, 4.0]])
    z = torch.tensor([[0.5, 0.0], [0.0, 1.0], [3.0, 4.0], [5.0, 5.0], [4.0, 3.0]])
    gamma, eps = 0.9, 1e-5
    q = _quantizer(codebook, ema_decay=gamma, eps=eps)
    assert not q.codebook.requires_grad and "codebook" in dict(q.named_buffers())
    out = q(z)
    assert out.codes.tolist() == [0, 0, 1, 1, 1]
    assert float(out.codebook_loss) == 0.0
    # N_k <- g N_k + (1-g) n_k with N initialised to 1; m_k <- g m_k + (1-g) sum z (m = e)
    n = torch.tensor([2.0, 3.0, 0.0])
    size = gamma * 1.0 + (1 - gamma) * n
    sums = torch.stack([z[:2].sum(0), z[2:].sum(0), torch.zeros(2)])
    m = gamma * codebook + (1 - gamma) * sums
    smoothed = (size + eps) / (size.sum() + 3 * eps) * size.sum()
    assert torch.allclose(q.ema_cluster_size, size)
    assert torch.allclose(q.ema_embed_sum, m)
    assert torch.allclose(q.codebook, m / smoothed[:, None], atol=1e-6)
    # The quantized output is the codebook *before* the step's update (sonnet's order).
    assert torch.allclose(out.quantized, codebook[out.codes])
    q.eval()  # no update outside training
    before = q.codebook.clone()
    q(z)
    assert torch.equal(q.codebook, before)


@pytest.mark.parametrize("ema_decay", [None, 0.99])
def test_dead_code_restart_reseeds_exactly_the_unused_codes(ema_decay: float | None) -> None:
    torch.manual_seed(0)
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0], [-50.0, -50.0]])
    q = _quantizer(codebook, ema_decay=ema_decay, restart_after=2)
    near_0_1 = torch.tensor([[0.1, 0.2], [-0.1, 0.0], [9.0, 10.0], [10.5, 11.0]])
    with_code_2 = torch.cat([near_0_1, torch.tensor([[99.0, 99.0]])])
    q(with_code_2)  # code 3 idle for 1 step, code 2 used
    assert q.steps_unused.tolist() == [0, 0, 0, 1]
    before = q.codebook.clone()
    q(near_0_1)  # code 3 idle for 2 steps -> restarted; code 2 idle for 1 step only
    assert q.steps_unused.tolist() == [0, 0, 1, 0]
    # Code 2 is not re-seeded (the EMA's smoothing moves an idle code by a hair only).
    assert torch.allclose(q.codebook[2], before[2], atol=0.05)
    assert any(torch.equal(q.codebook[3], row) for row in near_0_1)
    if ema_decay is None:  # the used codes are untouched (the EMA moves them, by design)
        assert torch.equal(q.codebook[:2], before[:2])
    else:
        assert float(q.ema_cluster_size[3]) == 1.0
        assert torch.equal(q.ema_embed_sum[3], q.codebook[3])
    q(near_0_1)  # now code 2 is idle for 2 steps
    assert q.steps_unused.tolist()[2] == 0
    assert any(torch.equal(q.codebook[2], row) for row in near_0_1)


def test_kmeans_matches_scikit_learn_and_initialises_the_codebook() -> None:
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]], dtype=torch.float64)
    x = (centres[torch.arange(200) % 4] + torch.randn(200, 2, dtype=torch.float64)).contiguous()
    ours = kmeans(x, 4, iterations=50, generator=torch.Generator().manual_seed(1))
    start = kmeans_plus_plus(x, 4, generator=torch.Generator().manual_seed(1))
    reference = sklearn_cluster.KMeans(
        4, init=start.numpy(), n_init=1, max_iter=50, tol=0.0, algorithm="lloyd"
    ).fit(x.numpy())
    assert torch.allclose(ours, torch.from_numpy(reference.cluster_centers_), atol=1e-10)
    # The quantizer's first training batch sets the codebook to its k-means centroids.
    q = VectorQuantizer(4, 2, kmeans_init=True)
    tight = (centres[torch.arange(64) % 4] + 0.01 * torch.randn(64, 2, dtype=torch.float64)).float()
    q.eval()
    q(tight)
    assert bool(q.needs_init)  # evaluation never initialises
    q.train()
    q(tight)
    assert not bool(q.needs_init)
    found = sorted(q.codebook.detach().tolist())
    assert torch.allclose(torch.tensor(found), torch.tensor(sorted(centres.tolist())), atol=0.05)


def test_usage_metrics_and_psnr_by_hand() -> None:
    usage = codebook_usage(torch.tensor([[0, 0], [1, 1]]), num_codes=4)
    assert usage["perplexity"] == pytest.approx(2.0)
    assert usage["used_fraction"] == 0.5
    a, b = torch.full((1, 3, 4, 4), 0.5), torch.full((1, 3, 4, 4), 0.6)
    assert float(psnr(a, b)[0]) == pytest.approx(20.0, abs=1e-4)


def test_tokenizer_shapes_and_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = VQTokenizer(TINY)
    optimizer = torch.optim.Adam(tokenizer.parameters(), 1e-3)
    images = torch.rand(4, 3, 16, 16)
    for _ in range(2):
        out = tokenizer(images)
        optimizer.zero_grad()
        out.losses["loss"].backward()
        optimizer.step()
    assert out.reconstruction.shape == images.shape and out.codes.shape == (4, 4, 4)
    assert set(out.losses) == {"reconstruction", "codebook", "commitment", "loss"}
    tokenizer.eval()
    save_vq_tokenizer(tokenizer, tmp_path / "tok")
    loaded = load_vq_tokenizer(tmp_path / "tok")
    assert loaded.config == TINY
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    codes = tokenizer.encode(images)
    assert codes.shape == (4, TINY.tokens_per_image)
    assert torch.equal(loaded.encode(images), codes)
    decoded = loaded.decode_codes(codes)
    assert decoded.shape == images.shape and 0 <= float(decoded.min()) <= float(decoded.max()) <= 1
    assert torch.equal(decoded, tokenizer.decode_codes(codes))
    with pytest.raises(ValueError, match="16 codes per image"):
        loaded.decode_codes(codes[:, :9])
    # Mistakes name the file and the key.
    config_file = tmp_path / "tok" / VQ_TOKENIZER_CONFIG
    config_file.write_text(json.dumps({**TINY.to_dict(), "num_codes": "8"}))
    with pytest.raises(ConfigError, match="num_codes"):
        load_vq_tokenizer(tmp_path / "tok")
    with pytest.raises(CheckpointError, match="no vq_tokenizer_config.json"):
        load_vq_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="multiple of 2"):
        VQTokenizerConfig(image_size=18, hidden_channels=(8, 8))
