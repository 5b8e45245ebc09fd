"""CLIP_benchmark's metric code, ported as the reference, against vlkit's evaluation functions.

CLIP_benchmark (LAION-AI/CLIP_benchmark, MIT licence) is not a dependency, so the logic of its
metric functions is reproduced below, attributed function by function:
clip_benchmark/metrics/zeroshot_classification.py (`accuracy`: top-k from one `topk` call;
`balanced_accuracy_score(target, logits.argmax(1))` as mean per-class recall; top-5 only with
>= 5 classes) and clip_benchmark/metrics/zeroshot_retrieval.py (`recall_at_k` with `topk`, a
query counts when any of its positives is in the top k). The cases: random score matrices,
several (unequal numbers of) captions per image, classes absent from the labels, fewer than five
classes, and exact ties. On ties the conventions differ by design: CLIP_benchmark (and open_clip's
`get_clip_metrics`) resolve them by the order `topk` / `argsort` happen to return, vlkit's
retrieval ranks resolve them in the query's favour (rank = 1 + number of strictly higher
negatives), which equals the reference run on scores where positives win every tie.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlkit.evaluation.retrieval import retrieval_metrics
from vlkit.evaluation.zero_shot import classification_metrics


# --- reference: clip_benchmark/metrics/zeroshot_classification.py -------------------------------
def _cb_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """CLIP_benchmark `accuracy`: the fraction of targets among the first k of one topk call."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    # (`.item()` where the original calls float() on a 1-element array, an error in numpy 2.)
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).item() / n for k in topk]


def _balanced_accuracy(target: np.ndarray, pred: np.ndarray) -> float:
    """sklearn's `balanced_accuracy_score`: mean recall over the classes present in `target`."""
    return float(np.mean([np.mean(pred[target == c] == c) for c in np.unique(target)]))


def _cb_classification(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The metrics of CLIP_benchmark's zero-shot `evaluate` for single-label datasets."""
    pred = logits.argmax(axis=1)
    if logits.shape[1] >= 5:
        acc1, acc5 = _cb_accuracy(logits, target, topk=(1, 5))
    else:
        (acc1,), acc5 = _cb_accuracy(logits, target, topk=(1,)), float("nan")
    recall = _balanced_accuracy(target.numpy(), pred.numpy())
    return {"top1": acc1, "top5": acc5, "mean_per_class_recall": recall}


# --- reference: clip_benchmark/metrics/zeroshot_retrieval.py ------------------------------------
def _cb_recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """CLIP_benchmark `recall_at_k`: per query, positives in the top k / number of positives."""
    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def _cb_retrieval(scores: torch.Tensor, ids: torch.Tensor, ks, batch_size=7) -> dict[str, float]:
    """CLIP_benchmark `evaluate` from its (texts x images) scores, batched like its `batchify`."""
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), ids] = True

    def batched(x, y, k):
        parts = [_cb_recall_at_k(x[s : s + batch_size], y[s : s + batch_size], k)
                 for s in range(0, len(x), batch_size)]  # fmt: skip
        return (torch.cat(parts) > 0).float().mean().item()

    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = batched(scores, positive_pairs, k)
        out[f"text_retrieval_recall@{k}"] = batched(scores.T, positive_pairs.T, k)
    return out


# --- cases ---------------------------------------------------------------------------------------
def _logits(n: int, classes: int, ties: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: exact ties between classes everywhere
        logits = torch.randint(0, 3, (n, classes), generator=g).float()
    else:
        logits = torch.randn(n, classes, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[labels == classes - 1] = 0  # a class that never occurs in the labels
    return logits, labels


@pytest.mark.parametrize("classes", [2, 4, 5, 10, 37])
@pytest.mark.parametrize("ties", [False, True])
def test_zero_shot_classification_metrics(classes, ties):
    logits, labels = _logits(300, classes, ties, seed=classes)
    ours = classification_metrics(logits, labels)
    ref = _cb_classification(logits, labels)
    for key in ("top1", "top5", "mean_per_class_recall"):
        if math.isnan(ref[key]):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0 < ours["top1"] < 1


# sklearn warns that a predicted class (5) never occurs in the labels; it is left out, as in vlkit.
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_per_class_recall_is_sklearns_balanced_accuracy():
    metrics = pytest.importorskip("sklearn.metrics")
    logits, labels = _logits(200, 6, ties=False, seed=9)
    expected = metrics.balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert classification_metrics(logits, labels)["mean_per_class_recall"] == pytest.approx(
        expected, abs=1e-6
    )


def _retrieval_case(ties: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(texts x images) scores and each text's image: 1 to 5 captions per image, shuffled."""
    g = torch.Generator().manual_seed(seed)
    n_img = 40
    per_image = torch.randint(1, 6, (n_img,), generator=g)
    ids = torch.arange(n_img).repeat_interleave(per_image)
    ids = ids[torch.randperm(len(ids), generator=g)]
    if ties:
        scores = torch.randint(0, 4, (len(ids), n_img), generator=g).float()
    else:
        scores = torch.randn(len(ids), n_img, generator=g)
        scores[torch.arange(len(ids)), ids] += 1.0  # better than chance, so R@K is in (0, 1)
    return scores, ids


def _vlkit_retrieval(scores: torch.Tensor, ids: torch.Tensor, ks) -> dict[str, float]:
    # Image embeddings = identity, text embeddings = score rows: the dot products are the scores,
    # exactly (every product but one is with 0).
    n_img = scores.shape[1]
    return retrieval_metrics(torch.eye(n_img), scores, ids, ks=ks, chunk_size=16,
                             image_chunk_size=9)  # fmt: skip


KS = (1, 5, 10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_recall_without_ties(seed):
    scores, ids = _retrieval_case(ties=False, seed=seed)
    ours, ref = _vlkit_retrieval(scores, ids, KS), _cb_retrieval(scores, ids, KS)
    for k in KS:  # CLIP_benchmark names a direction by what is retrieved
        assert ours[f"t2i_r{k}"] == pytest.approx(ref[f"image_retrieval_recall@{k}"], abs=1e-6)
        assert ours[f"i2t_r{k}"] == pytest.approx(ref[f"text_retrieval_recall@{k}"], abs=1e-6)
    assert 0 < ours["t2i_r1"] < 1 and 0 < ours["i2t_r1"] < 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_recall_with_exact_ties(seed):
    scores, ids = _retrieval_case(ties=True, seed=seed)
    ours, ref = _vlkit_retrieval(scores, ids, KS), _cb_retrieval(scores, ids, KS)
    # The documented convention: CLIP_benchmark's recall on scores where positives win every tie
    # (integer scores, so +0.5 reorders nothing else).
    positives_first = scores.clone()
    positives_first[torch.arange(len(ids)), ids] += 0.5
    favoured = _cb_retrieval(positives_first, ids, KS)
    differs = False
    for k in KS:
        for ours_key, ref_key in ((f"t2i_r{k}", f"image_retrieval_recall@{k}"),
                                  (f"i2t_r{k}", f"text_retrieval_recall@{k}")):  # fmt: skip
            assert ours[ours_key] == pytest.approx(favoured[ref_key], abs=1e-6)
            assert ours[ours_key] >= ref[ref_key] - 1e-6  # ties never count against the query
            differs |= ours[ours_key] > ref[ref_key] + 1e-6
    assert differs  # the tie convention matters on these scores (a documented difference)


def test_retrieval_ranks_match_open_clip_with_positives_first_on_ties():
    train = pytest.importorskip("open_clip_train.train")
    g = torch.Generator().manual_seed(4)
    n = 60
    scores = torch.randint(0, 5, (n, n), generator=g).float()  # images x texts, pair i <-> i
    # open_clip's get_clip_metrics(image_features, text_features, logit_scale): logits = scale *
    # image @ text.T. With identity text features, the image features are the score rows.
    ours = retrieval_metrics(scores, torch.eye(n), torch.arange(n), ks=KS)
    favoured = scores + 0.5 * torch.eye(n)
    ref = train.get_clip_metrics(favoured, torch.eye(n), logit_scale=torch.tensor(1.0))
    for ours_name, ref_name in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
        for k in KS:
            assert ours[f"{ours_name}_r{k}"] == pytest.approx(ref[f"{ref_name}_R@{k}"], abs=1e-9)
        assert ours[f"{ours_name}_mean_rank"] == pytest.approx(ref[f"{ref_name}_mean_rank"])
        assert ours[f"{ours_name}_median_rank"] == ref[f"{ref_name}_median_rank"]
