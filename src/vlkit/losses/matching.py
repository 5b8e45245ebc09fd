"""BLIP-2 stage-1 losses: ITC (max over queries), ITM with hard negatives, ITG.

Li et al. 2023, "BLIP-2", Sec. 3.2 (representation learning stage):

* ITC: the Q-Former outputs Q query embeddings Z (B, Q, D) per image and one text embedding
  t (the [CLS] output). "We first compute the pairwise similarity between each query output
  and t, and then select the highest one as the image-text similarity":
  s(i, j) = max_q <z_{i,q}, t_j>, then a symmetric InfoNCE over s (both directions use the
  same matrix, transposed). Embeddings are L2-normalised by the caller.
* ITM: "we adopt the hard negative mining strategy [ALBEF]": for every image a negative text
  is sampled with probability softmax(s(i, :)) with the positive masked out, and for every
  text a negative image likewise from softmax(s(:, j)). The ITM batch is
  `[pos image/pos text; neg image/pos text; pos image/neg text]` (3B pairs, labels
  `[1]*B + [0]*2B`), matching the order of LAVIS's `blip2_qformer.py`.
* ITG: the usual language-modelling cross entropy of the next text token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkit.losses.pairwise import symmetric_cross_entropy

__all__ = [
    "build_itm_batch",
    "itg_loss",
    "itm_loss",
    "qformer_itc_loss",
    "query_text_similarity",
    "sample_hard_negatives",
]


def query_text_similarity(query_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Image-text similarity as the max over queries.

    Args:
        query_emb: (B_i, Q, D) query embeddings (normalised).
        text_emb: (B_t, D) text embeddings (normalised).

    Returns:
        (B_i, B_t) matrix s(i, j) = max_q <query_emb[i, q], text_emb[j]>.
    """
    return torch.einsum("iqd,jd->ijq", query_emb, text_emb).amax(dim=-1)


def qformer_itc_loss(
    query_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP-2's ITC: symmetric InfoNCE over the max-over-queries similarity.

    Args:
        query_emb: (B, Q, D) normalised query outputs; image i matches text i.
        text_emb: (B, D) normalised text [CLS] outputs.
        logit_scale: Multiplier 1 / temperature.
        label_smoothing: Passed to both cross entropies (BLIP-2 uses 0.1).

    Returns:
        `(loss, sim)` with `sim` the (B, B) unscaled similarity (for hard-negative mining).
    """
    sim = query_text_similarity(query_emb, text_emb)
    logits = sim * logit_scale
    labels = torch.arange(sim.shape[0], device=sim.device)
    return symmetric_cross_entropy(logits, logits.t(), labels, label_smoothing), sim


def sample_hard_negatives(
    sim: torch.Tensor,
    logit_scale: torch.Tensor | float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one hard negative per row and per column, never the positive.

    Args:
        sim: (B, B) image-text similarity, positives on the diagonal; B >= 2.
        logit_scale: Applied before the softmax.
        generator: Optional RNG for `torch.multinomial`.

    Returns:
        `(neg_text_idx, neg_image_idx)`, both (B,) long: the negative text for image i and
        the negative image for text j.
    """
    b = sim.shape[0]
    if b < 2:
        raise ValueError("hard negative mining needs a batch of at least 2")
    with torch.no_grad():
        logits = sim.detach().float() * logit_scale
        eye = torch.eye(b, dtype=torch.bool, device=sim.device)
        logits = logits.masked_fill(eye, float("-inf"))
        w_i2t = logits.softmax(dim=1)
        w_t2i = logits.t().softmax(dim=1)
        neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
        neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
    return neg_text, neg_image


def build_itm_batch(
    sim: torch.Tensor,
    logit_scale: torch.Tensor | float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the 3B ITM pairs: B positives, B hard-negative images, B hard-negative texts.

    Args:
        sim: (B, B) image-text similarity with positives on the diagonal.
        logit_scale: Applied before sampling.
        generator: Optional RNG.

    Returns:
        `(image_idx, text_idx, labels)`, each (3B,): pair k is (image `image_idx[k]`, text
        `text_idx[k]`) with label 1 (match) for the first B and 0 for the rest. Gather with
        e.g. `image_feats[image_idx]`, `input_ids[text_idx]`.
    """
    b = sim.shape[0]
    ar = torch.arange(b, device=sim.device)
    neg_text, neg_image = sample_hard_negatives(sim, logit_scale, generator)
    image_idx = torch.cat([ar, neg_image, ar])
    text_idx = torch.cat([ar, ar, neg_text])
    labels = torch.cat(
        [torch.ones(b, dtype=torch.long, device=sim.device), sim.new_zeros(2 * b).long()]
    )
    return image_idx, text_idx, labels


def itm_loss(query_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ITM binary classification loss.

    Args:
        query_logits: (N, Q, 2) per-query ITM-head logits (BLIP-2 averages them over
            queries) or (N, 2) pooled logits.
        labels: (N,) long, 1 = matched pair.

    Returns:
        Scalar cross entropy.
    """
    logits = query_logits.mean(dim=1) if query_logits.dim() == 3 else query_logits
    return F.cross_entropy(logits, labels)


def itg_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Next-token language-modelling loss for ITG.

    Args:
        logits: (B, T, V) LM-head outputs of the text positions (multimodal causal mask).
        input_ids: (B, T) the same text; position t predicts token t + 1.
        padding_mask: Optional (B, T) bool, `True` for real tokens (padding is ignored).
        label_smoothing: BLIP-2 uses 0.1.

    Returns:
        Scalar mean cross entropy over the predicted, non-padded tokens.
    """
    targets = input_ids[:, 1:].clone()
    if padding_mask is not None:
        targets = targets.masked_fill(~padding_mask[:, 1:].bool(), -100)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )
