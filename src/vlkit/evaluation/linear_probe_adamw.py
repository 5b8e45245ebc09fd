"""CLIP_benchmark's linear probe: a linear layer trained with AdamW on frozen image features.

CLIP_benchmark (LAION-AI/CLIP_benchmark, MIT licence; clip_benchmark/metrics/linear_probe.py)
replaces the CLIP paper's L-BFGS logistic regression (vlkit's `linear_probe`) with a
`torch.nn.Linear` trained by AdamW: `epochs` passes over the shuffled features in batches of
`batch_size`, cross-entropy, a cosine learning-rate schedule without warm-up, seeded with
`torch.manual_seed(seed)` before the layer is created. Without a validation set the weight decay
is 0; with one it is tuned on the same 97-value log grid and coarse-to-fine search as the CLIP
paper (`CLIP_BENCHMARK_WEIGHT_DECAYS`), then the final layer is trained on train + validation.

The training loop below makes the same calls in the same order (layer init, one shuffled
`DataLoader` per epoch drawing its order from the global torch RNG, AdamW, the scheduler), so on
the same features in the same order it trains the same layer. CLIP_benchmark runs it on CUDA only
(`assert device == 'cuda'`); this one runs on any device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

__all__ = ["clip_benchmark_accuracy", "linear_probe_adamw", "train_probe_adamw"]


def clip_benchmark_accuracy(
    logits: torch.Tensor, target: torch.Tensor, with_top5: bool
) -> tuple[float, float, float]:
    """(acc1, acc5, mean per-class recall) computed as CLIP_benchmark computes them.

    The same predictions as `vlkit.evaluation.classification_metrics`, with CLIP_benchmark's
    arithmetic so that the floats are equal to the last digit: top-k = (number correct) / n in
    Python floats (`accuracy`), mean per-class recall = sklearn's `balanced_accuracy_score`
    (float64 recall of each class present in `target`, their numpy mean). acc5 is NaN unless
    `with_top5`.
    """
    pred = logits.topk(5 if with_top5 else 1, 1, True, True)[1].t()  # (k, N)
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    acc1 = correct[:1].reshape(-1).float().sum().item() / n
    acc5 = correct[:5].reshape(-1).float().sum().item() / n if with_top5 else math.nan
    predicted, truth = logits.argmax(dim=1).numpy(), target.numpy()
    recalls = [np.sum(predicted[truth == c] == c) / np.sum(truth == c) for c in np.unique(truth)]
    return acc1, acc5, float(np.mean(recalls))


class _Features(torch.utils.data.Dataset):
    """CLIP_benchmark's `FeatureDataset`: (features[i], targets[i])."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i], self.targets[i]


def _cosine_lr(base_lr: float, step: int, steps: int) -> float:
    # CLIP_benchmark's `cosine_lr` with warmup_length 0.
    return 0.5 * (1 + np.cos(np.pi * step / steps)) * base_lr


def train_probe_adamw(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> torch.nn.Linear:
    """CLIP_benchmark's `train`: a Linear(dim, num_classes) fitted with AdamW + cosine schedule."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = torch.nn.Linear(features.shape[1], num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    criterion = torch.nn.CrossEntropyLoss()
    loader = DataLoader(_Features(features, targets), batch_size=batch_size, shuffle=True)
    steps = epochs * len(loader)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(lr, i + epoch * len(loader), steps)
            optimizer.zero_grad()
            with torch.autocast(device.type, enabled=amp):
                loss = criterion(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def _logits(model: torch.nn.Module, features: torch.Tensor, device: torch.device, amp: bool):
    with torch.autocast(device.type, enabled=amp):
        return model(features.to(device)).float().cpu()


def linear_probe_adamw(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    val_features: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> dict[str, Any]:
    """CLIP_benchmark's linear-probe metrics, with its keys.

    Returns:
        {"lp_acc1", "lp_acc5" (NaN when the largest test label is < 5, as there),
        "lp_mean_per_class_recall", "weight_decay", "epochs", "seed", "fewshot_k": -1,
        "normalized": True}.
    """
    device = torch.device(device)
    num_classes = int(train_labels.max()) + 1
    if val_features is None:
        best_wd = 0.0
        final_x, final_y = train_features, train_labels
    else:
        from vlkit.evaluation.linear_probe import CLIP_BENCHMARK_WEIGHT_DECAYS

        grid = list(CLIP_BENCHMARK_WEIGHT_DECAYS)
        coarse = np.logspace(-6, 2, num=7).tolist()

        def peak(indices: list[int]) -> int:
            best, best_acc = 0, 0.0
            for index in indices:
                model = train_probe_adamw(train_features, train_labels, num_classes, grid[index],
                                          lr, epochs, batch_size, seed, device, amp)  # fmt: skip
                logits = _logits(model, val_features, device, amp)
                acc = (logits.argmax(1) == val_labels).float().mean().item()
                if best_acc < acc:
                    best, best_acc = index, acc
            return best

        index = peak([i for i, value in enumerate(grid) if value in coarse])
        span = 8
        while span > 0:
            index = peak([max(index - span, 0), index, min(index + span, len(grid) - 1)])
            span //= 2
        best_wd = grid[index]
        final_x = torch.cat([train_features, val_features])
        final_y = torch.cat([train_labels, val_labels])
    model = train_probe_adamw(final_x, final_y, num_classes, best_wd, lr, epochs, batch_size,
                              seed, device, amp)  # fmt: skip
    logits = _logits(model, test_features, device, amp)
    # CLIP_benchmark decides top-5 by the largest test label here (not the number of classes).
    acc1, acc5, recall = clip_benchmark_accuracy(logits, test_labels, int(test_labels.max()) >= 5)
    return {
        "lp_acc1": acc1,
        "lp_acc5": acc5,
        "lp_mean_per_class_recall": recall,
        "weight_decay": best_wd,
        "epochs": epochs,
        "seed": seed,
        "fewshot_k": -1,
        "normalized": True,
    }
