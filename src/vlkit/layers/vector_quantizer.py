"""Vector quantization with a learned codebook: the bottleneck of a VQ-VAE image tokenizer.

van den Oord et al. 2017, "Neural Discrete Representation Learning" (VQ-VAE), Sec. 3.1-3.2:
each encoder output z_e(x) is replaced by its nearest codebook vector e_k (Eq. 1-2); the
decoder's gradient is copied straight through the non-differentiable argmin to the encoder
(the straight-through estimator, Bengio et al. 2013); and the loss (Eq. 3) adds

    ||sg[z_e(x)] - e||^2          (codebook loss: moves the codes towards the encoder outputs)
    beta * ||z_e(x) - sg[e]||^2   (commitment loss: keeps the encoder close to its codes)

where sg is stop-gradient (`.detach()`). Instead of the codebook loss the codes can follow
exponential moving averages of the encoder outputs assigned to them (VQ-VAE Appendix A.1;
Razavi et al. 2019, "VQ-VAE-2", Sec. 3.1), with Laplace smoothing of the cluster sizes as in
DeepMind sonnet's `VectorQuantizerEMA`:

    N_k <- gamma N_k + (1 - gamma) n_k          n_k: outputs assigned to code k in the batch
    m_k <- gamma m_k + (1 - gamma) sum_i z_i    over the outputs assigned to k
    e_k  = m_k / ((N_k + eps) / (N + K eps) * N)     N = sum_k N_k

Two remedies for codebook collapse (codes that are never chosen, so never trained), as in
VQGAN-era tokenizers (Esser et al. 2021; Dhariwal et al. 2020, "Jukebox", Sec. 3.3 restarts):
the codebook starts as k-means centroids of the first training batch's encoder outputs, and a
code unused for `restart_after` training steps is re-seeded with a random encoder output of the
current batch.

Single-process statistics: under data parallelism each rank keeps its own EMA / restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuantizerOutput", "VectorQuantizer", "codebook_usage", "kmeans", "kmeans_plus_plus"]


@dataclass
class QuantizerOutput:
    """Result of `VectorQuantizer.forward`.

    Attributes:
        quantized: (..., D) the nearest codes, with the straight-through gradient to the input.
        codes: (...) long code indices.
        codebook_loss: ||sg[z] - e||^2 (mean); zero with EMA codebook updates.
        commitment_loss: beta * ||z - sg[e]||^2 (mean).
        perplexity: exp(entropy) of the batch's code histogram (K when all codes are equally used).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


def codebook_usage(codes: torch.Tensor, num_codes: int) -> dict[str, float]:
    """Perplexity exp(-sum p log p) of the code histogram and the fraction of codes used.

    Args:
        codes: Code indices of any shape (all the images of an evaluation set).
        num_codes: Codebook size K.
    """
    counts = torch.bincount(codes.flatten(), minlength=num_codes).double()
    p = counts / counts.sum()
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return {
        "perplexity": float(torch.exp(entropy)),
        "used_fraction": float((counts > 0).double().mean()),
    }


def kmeans_plus_plus(
    x: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centroid is a uniformly random
    row of x (N, D), each next one a row drawn with probability proportional to its squared
    distance to the nearest centroid so far. Returns (k, D)."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    centroids = [x[first]]
    nearest = (x - x[first]).pow(2).sum(1)  # (N,) squared distance to the nearest centroid
    for _ in range(1, k):
        if float(nearest.sum()) > 0:
            weights = nearest.double().cpu()
        else:  # fewer distinct rows than k: repeat rows
            weights = torch.ones(x.shape[0], dtype=torch.double)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(x[pick])
        nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(1))
    return torch.stack(centroids)


def kmeans(
    x: torch.Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lloyd's k-means of the rows of x (N, D): k-means++ seeding, then `iterations` rounds of
    (assign each row to the nearest centroid, move each centroid to its members' mean).

    Hand-written rather than scikit-learn's `KMeans` (a dev-only dependency here) because it
    runs once on a (B*h*w, D) batch on the model's own device; an empty cluster keeps its
    centroid. tests/test_vq_tokenizer.py checks it against `sklearn.cluster.KMeans`.

    Returns:
        (k, D) centroids.
    """
    centroids = kmeans_plus_plus(x, k, generator)
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(1)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of (..., D) vectors with a (K, D) codebook.

    Args:
        num_codes: Codebook size K.
        dim: Code width D.
        beta: Commitment weight (VQ-VAE Eq. 3; 0.25 in the paper).
        ema_decay: gamma of the EMA codebook updates; None learns the codebook by gradient
            through the codebook loss (the codebook is then an `nn.Parameter`).
        eps: Laplace smoothing of the EMA cluster sizes.
        kmeans_init: Set the codebook to k-means centroids of the first training batch.
        kmeans_iterations: Lloyd iterations of that initialisation.
        restart_after: Re-seed codes unused for this many training steps; None never does.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        ema_decay: float | None = None,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iterations: int = 10,
        restart_after: int | None = None,
    ) -> None:
        super().__init__()
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        if restart_after is not None and restart_after < 1:
            raise ValueError(f"restart_after must be >= 1 or None, got {restart_after}")
        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.ema_decay, self.eps = ema_decay, eps
        self.kmeans_iterations, self.restart_after = kmeans_iterations, restart_after
        codebook = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema_decay is None:
            self.codebook = nn.Parameter(codebook)
        else:  # moved by the EMA, not by the optimiser
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_cluster_size", torch.ones(num_codes))
            self.register_buffer("ema_embed_sum", codebook.clone())
        # Whether the codebook still waits for its k-means initialisation (saved with it).
        self.register_buffer("needs_init", torch.tensor(bool(kmeans_init)))
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors -> (N,) index of the nearest code (squared Euclidean distance)."""
        codebook = self.codebook.detach()
        distances = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * flat @ codebook.t()
            + codebook.pow(2).sum(1)[None]
        )  # (N, K)
        return distances.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(...) code indices -> (..., D) code vectors."""
        return F.embedding(codes, self.codebook)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize z (..., D); in training mode also initialise, EMA-update and restart codes."""
        flat = z.reshape(-1, self.dim)  # (N, D)
        if self.training and bool(self.needs_init):
            self._set_codes(torch.arange(self.num_codes), kmeans(flat.detach(), self.num_codes))
            self.needs_init.fill_(False)
        codes = self.nearest_codes(flat.detach())  # (N,)
        counts = torch.bincount(codes, minlength=self.num_codes)
        quantized = self.lookup(codes).view_as(z)  # the codes before this step's update
        if self.training and self.ema_decay is not None:
            self._ema_update(flat.detach(), codes, counts)
        if self.ema_decay is None:
            codebook_loss = F.mse_loss(quantized, z.detach())
        else:
            codebook_loss = z.new_zeros(())
        commitment_loss = self.beta * F.mse_loss(z, quantized.detach())
        p = counts.float() / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        if self.training and self.restart_after is not None:
            self._restart_dead_codes(flat.detach(), counts)
        # Straight-through: the forward value is the code, the gradient w.r.t. z is the identity.
        quantized = z + (quantized - z).detach()
        return QuantizerOutput(
            quantized, codes.view(z.shape[:-1]), codebook_loss, commitment_loss, perplexity
        )

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        gamma = self.ema_decay
        sums = torch.zeros_like(self.ema_embed_sum).index_add_(0, codes, flat.to(self.codebook))
        self.ema_cluster_size.mul_(gamma).add_(counts.to(self.codebook), alpha=1 - gamma)
        self.ema_embed_sum.mul_(gamma).add_(sums, alpha=1 - gamma)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = torch.nonzero(self.steps_unused >= self.restart_after).flatten()
        if dead.numel():
            rows = torch.randint(flat.shape[0], (dead.numel(),), device=flat.device)
            self._set_codes(dead, flat[rows])

    @torch.no_grad()
    def _set_codes(self, index: torch.Tensor, vectors: torch.Tensor) -> None:
        """Sets codes `index` to `vectors` (K', D), resetting their EMA state and idle count."""
        index = index.to(self.codebook.device)
        self.codebook.data[index] = vectors.to(self.codebook)
        self.steps_unused[index] = 0
        if self.ema_decay is not None:  # as a code that was just used once at `vectors`
            self.ema_cluster_size[index] = 1.0
            self.ema_embed_sum[index] = vectors.to(self.codebook)
