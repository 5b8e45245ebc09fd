"""Linear-probe evaluation of frozen features (CLIP paper, App. A.3; CLIP_benchmark).

Protocol, as CLIP_benchmark's `linear_probe.evaluate` with a validation set:

1. A validation split is carved out of the training set (or given explicitly).
2. Optionally (`shots_per_class=k`), k examples per class are drawn for training from what is
   left AFTER the validation split, so validation examples never appear in the few-shot set.
3. The L2 penalty ("weight decay") is tuned on the validation split with CLIP_benchmark's search
   (`tune_weight_decay`): 97 values logspace(-6, 2); first the 7 values logspace(-6, 2, 7), then
   around the best one with steps of 8, 4, 2, 1 grid positions (left, peak, right each time); the
   first value with the strictly highest validation top-1 wins.
4. The probe is retrained with the chosen value on train + validation (CLIP_benchmark's
   `feature_train_val_loader`) and evaluated on the test set: top-1, top-5, mean per-class recall.

Differences from CLIP_benchmark, on purpose:

* The probe is fitted by full-batch L-BFGS (as the CLIP paper's scikit-learn logistic regression
  did) instead of mini-batch AdamW with a cosine schedule: the objective is convex, so the result
  is deterministic and does not depend on a learning rate or an epoch count. Objective:
  mean cross-entropy + weight_decay / 2 * ||W||^2 (bias not penalised); scikit-learn's
  `LogisticRegression(C=...)` is the same problem with C = 1 / (weight_decay * n_train).
* The validation split is stratified (every class keeps at least one training example).
* With `shots_per_class`, the final model is trained on the k-shot set only by default
  (CLIP_benchmark concatenates the whole validation set, a TODO in its code, which would make the
  final training set much larger than k per class). `refit_on_train_val=True` restores that.

Features are used as given: CLIP_benchmark L2-normalises image features before probing, so do it
beforehand when comparing with its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vlkit.evaluation.embeddings import encode_images, labelled_batches
from vlkit.evaluation.evaluator import eval_mode
from vlkit.evaluation.zero_shot import classification_metrics

# CLIP_benchmark's grid: np.logspace(-6, 2, num=97); its first pass uses the grid points that are
# also in np.logspace(-6, 2, num=7), which are the indices 0, 16, ..., 96.
CLIP_BENCHMARK_WEIGHT_DECAYS: tuple[float, ...] = tuple(np.logspace(-6, 2, num=97).tolist())
_COARSE = tuple(np.logspace(-6, 2, num=7).tolist())
_COARSE_IDX = tuple(i for i, v in enumerate(CLIP_BENCHMARK_WEIGHT_DECAYS) if v in _COARSE)


def _features(x: Any, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    if t.ndim != 2:
        raise ValueError(f"{name}: expected (n, dim) features, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def _labels(y: Any, name: str, n: int) -> torch.Tensor:
    t = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y))
    t = t.reshape(-1).long()
    if t.numel() != n:
        raise ValueError(f"{name}: {t.numel()} labels for {n} feature rows")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0")
    return t


def stratified_split(
    labels: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): round(val_fraction * n_c) of each class c go to validation.

    A class with n_c >= 2 examples puts at least 1 and at most n_c - 1 of them in validation; a
    class with a single example keeps it for training.
    """
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(idx)))
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def few_shot_indices(
    labels: np.ndarray, shots_per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """k random indices per class (every class present in `labels`); error if a class has fewer."""
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < shots_per_class:
            raise ValueError(
                f"insufficient data for {shots_per_class} shots per class: class {c} has only "
                f"{len(idx)} training examples (after the validation split)"
            )
        out.append(rng.permutation(idx)[:shots_per_class])
    return np.sort(np.concatenate(out))


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 1000,
) -> torch.nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS, from a zero initialisation.

    Minimises mean cross-entropy + weight_decay / 2 * ||W||^2 (the bias is not penalised).

    Args:
        features: (n, dim) float features (their device and dtype are used).
        labels: (n,) int64 class indices in [0, num_classes).
        num_classes: Number of outputs.
        weight_decay: L2 penalty strength (>= 0).
        max_iter: L-BFGS iterations at most.

    Returns:
        The fitted `torch.nn.Linear(dim, num_classes)`.
    """
    probe = torch.nn.Linear(
        features.shape[1], num_classes, device=features.device, dtype=features.dtype
    )
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    labels = labels.to(features.device)
    optimizer = torch.optim.LBFGS(
        probe.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    probe.requires_grad_(False)
    return probe


def _top1(probe: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (probe(features).argmax(dim=1).cpu() == labels).double().mean().item()


def _tune_clip_benchmark(val_top1: Callable[[float], float]) -> float:
    """CLIP_benchmark's `tune_weight_decay` over its 97-value grid (same order, same tie rule)."""
    grid = CLIP_BENCHMARK_WEIGHT_DECAYS

    def find_peak(idxs: Sequence[int]) -> int:
        # CLIP_benchmark starts from index 0 with accuracy 0 and keeps the first strict maximum.
        best_idx, max_acc = 0, 0.0
        for idx in idxs:
            acc = val_top1(grid[idx])
            if max_acc < acc:
                best_idx, max_acc = idx, acc
        return best_idx

    peak = find_peak(_COARSE_IDX)
    step = 8
    while step > 0:
        left, right = max(peak - step, 0), min(peak + step, len(grid) - 1)
        peak = find_peak([left, peak, right])
        step //= 2
    return grid[peak]


@torch.no_grad()
def linear_probe(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    val_features: Any = None,
    val_labels: Any = None,
    val_fraction: float = 0.2,
    shots_per_class: int | None = None,
    weight_decays: Sequence[float] | None = None,
    refit_on_train_val: bool | None = None,
    seed: int = 0,
    max_iter: int = 1000,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Train a logistic-regression probe on frozen features, tuning weight decay on validation.

    Args:
        train_features: (n_train, dim) features (torch or numpy) of the training set.
        train_labels: (n_train,) integer class labels.
        test_features: (n_test, dim) features of the test set.
        test_labels: (n_test,) labels of the test set.
        val_features: Optional explicit validation features; then `val_fraction` is ignored and
            the whole training set is available for training.
        val_labels: Labels of `val_features`.
        val_fraction: Fraction of each training class carved out for validation when no explicit
            validation set is given. 0 disables tuning (weight decay 0, as CLIP_benchmark without
            a validation set, or the single value in `weight_decays`).
        shots_per_class: If given, train on k random examples per class, drawn from the training
            examples left after the validation split.
        weight_decays: Values to try (all of them, in order, first best wins). Default: the
            CLIP_benchmark grid logspace(-6, 2, 97) with its coarse-to-fine search.
        refit_on_train_val: Retrain the final probe on train + validation. Default: True without
            `shots_per_class` (CLIP_benchmark), False with it (keeps the probe k-shot).
        seed: Seeds the validation split and the few-shot draw (the fit itself is deterministic).
        max_iter: L-BFGS iterations per fit.
        device: Where to fit (default: the training features' device, CPU for numpy).
        dtype: Dtype of the fit (float32; float64 for tight convergence on small problems).

    Returns:
        {"top1", "top5" (NaN with < 5 classes), "mean_per_class_recall"} on the test set, plus
        "weight_decay" (chosen), "val_top1" (its validation top-1, NaN without validation),
        "val_curve" ({weight_decay: validation top-1} for every value tried), "num_train",
        "num_val", "num_final_train", "shots_per_class", "train_indices" / "val_indices" (into
        the given training set; val_indices is None for an explicit validation set) and "probe"
        (the final `torch.nn.Linear`, on the CPU).
    """
    if device is None:
        device = train_features.device if isinstance(train_features, torch.Tensor) else "cpu"
    dev = torch.device(device)
    x_train = _features(train_features, "train_features", dev, dtype)
    y_train = _labels(train_labels, "train_labels", x_train.shape[0])
    x_test = _features(test_features, "test_features", dev, dtype)
    y_test = _labels(test_labels, "test_labels", x_test.shape[0])
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError("train and test features differ in dimension")
    if (val_features is None) != (val_labels is None):
        raise ValueError("give both val_features and val_labels, or neither")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    if shots_per_class is not None and shots_per_class < 1:
        raise ValueError("shots_per_class must be >= 1")
    rng = np.random.default_rng(seed)

    # 1. Validation split first, so that a few-shot draw can never pick validation examples.
    labels_np = y_train.numpy()
    if val_features is not None:
        x_val = _features(val_features, "val_features", dev, dtype)
        y_val = _labels(val_labels, "val_labels", x_val.shape[0])
        pool, val_idx = np.arange(len(labels_np)), None
    elif val_fraction > 0:
        pool, val_idx = stratified_split(labels_np, val_fraction, rng)
        x_val, y_val = (
            x_train[torch.from_numpy(val_idx).to(dev)],
            y_train[torch.from_numpy(val_idx)],
        )
    else:
        pool, val_idx, x_val, y_val = np.arange(len(labels_np)), None, None, None

    # 2. Few-shot draw among the remaining training examples.
    train_idx = (
        pool
        if shots_per_class is None
        else pool[few_shot_indices(labels_np[pool], shots_per_class, rng)]
    )
    x_fit, y_fit = (
        x_train[torch.from_numpy(train_idx).to(dev)],
        y_train[torch.from_numpy(train_idx)],
    )

    all_labels = [y_train, y_test] + ([y_val] if y_val is not None else [])
    num_classes = int(max(int(y.max()) for y in all_labels if y.numel())) + 1

    # 3. Weight-decay search on the validation split.
    curve: dict[float, float] = {}

    def val_top1(wd: float) -> float:
        if wd not in curve:
            probe = fit_logistic_regression(x_fit, y_fit, num_classes, wd, max_iter)
            curve[wd] = _top1(probe, x_val, y_val)
        return curve[wd]

    if x_val is None or x_val.shape[0] == 0:
        if weight_decays is not None and len(weight_decays) > 1:
            raise ValueError("several weight_decays but no validation data to choose between them")
        best_wd = float(weight_decays[0]) if weight_decays else 0.0
        best_val = math.nan
    elif weight_decays is None:
        best_wd = _tune_clip_benchmark(val_top1)
        best_val = curve[best_wd]
    else:
        if not len(weight_decays):
            raise ValueError("weight_decays is empty")
        best_wd, best_val = float(weight_decays[0]), -1.0
        for wd in weight_decays:
            if val_top1(float(wd)) > best_val:
                best_wd, best_val = float(wd), curve[float(wd)]

    # 4. Final probe (train + validation unless few-shot), evaluated on the test set.
    if refit_on_train_val is None:
        refit_on_train_val = shots_per_class is None
    if refit_on_train_val and x_val is not None:
        x_final, y_final = torch.cat([x_fit, x_val]), torch.cat([y_fit, y_val])
    else:
        x_final, y_final = x_fit, y_fit
    probe = fit_logistic_regression(x_final, y_final, num_classes, best_wd, max_iter)
    logits = probe(x_test).float().cpu()
    metrics = classification_metrics(logits, y_test)
    return {
        **metrics,
        "weight_decay": best_wd,
        "val_top1": best_val,
        "val_curve": dict(sorted(curve.items())),
        "num_train": len(train_idx),
        "num_val": 0 if x_val is None else int(x_val.shape[0]),
        "num_final_train": int(x_final.shape[0]),
        "shots_per_class": shots_per_class,
        "train_indices": train_idx,
        "val_indices": val_idx,
        "probe": probe.cpu(),
    }


class ProbeData(NamedTuple):
    """Labelled images for `LinearProbe`: each split a pair (images (N, 3, S, S), labels (N,))
    or an iterable of (images, labels) batches, as `ZeroShotClassification` takes them."""

    train: Any
    test: Any
    val: Any = None


class LinearProbe:
    """Linear-probe evaluator: `linear_probe` on the model's frozen image embeddings.

    `data` is a `ProbeData`. Image features are L2-normalised, as CLIP_benchmark's are.

    Args:
        batch_size: Images per forward pass for tensor inputs.
        **options: Keyword arguments of `linear_probe` (val_fraction, shots_per_class,
            weight_decays, refit_on_train_val, seed, max_iter, device, dtype).
    """

    def __init__(self, batch_size: int = 256, **options: Any) -> None:
        self.batch_size = batch_size
        self.options = options

    def predict(self, model: torch.nn.Module, data: ProbeData) -> dict[str, tuple | None]:
        """{"train" | "test" | "val": (features (N, D), labels (N,)) or None}."""
        features: dict[str, tuple | None] = {}
        with eval_mode(model):
            for split, split_data in zip(("train", "test", "val"), data, strict=True):
                if split_data is None:
                    features[split] = None
                    continue
                batches = list(labelled_batches(split_data, self.batch_size))
                images = encode_images(model, (images for images, _ in batches))
                labels = torch.cat([torch.as_tensor(labels) for _, labels in batches])
                features[split] = (images, labels)
        return features

    def score(self, features: dict[str, tuple | None], data: Any = None) -> dict[str, float]:
        """top1, top5, mean_per_class_recall (test), weight_decay and val_top1 of the probe."""
        val = features.get("val") or (None, None)
        result = linear_probe(*features["train"], *features["test"], val_features=val[0],
                              val_labels=val[1], **self.options)  # fmt: skip
        keys = ("top1", "top5", "mean_per_class_recall", "weight_decay", "val_top1")
        return {key: float(result[key]) for key in keys}

    def evaluate(self, model: torch.nn.Module, data: ProbeData) -> dict[str, float]:
        """Test top-1 / top-5 / mean per-class recall of the tuned probe, and its weight decay."""
        return self.score(self.predict(model, data), data)


__all__ = [
    "CLIP_BENCHMARK_WEIGHT_DECAYS",
    "LinearProbe",
    "ProbeData",
    "few_shot_indices",
    "fit_logistic_regression",
    "linear_probe",
    "stratified_split",
]
