"""The linear probe's weight decay chosen on a validation split, as CLIP_benchmark chooses it.

CLIP_benchmark (1.6.2, clip_benchmark/metrics/linear_probe.py `evaluate`) with a validation set
(`--val_split`, or `--val_proportion p`: `random_split(train, [1 - p, p])`) searches the weight
decay on the CLIP paper's 97-value log grid, coarse (7 values) then finer, trains the final
layer on train + validation and reports its weight decay. Here its `evaluate` runs on features
written where it caches them (so it skips featurising), on the CPU with its `.cuda()` calls made
no-ops, and vlkit's `linear_probe_adamw` runs on the same features in the same order: the chosen
weight decay and every metric must be equal.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import normalize

from vlkit.models.clip import create_model
from vlkit.recipes.benchmark_contrastive import linear_probe_task

cb = pytest.importorskip("clip_benchmark.metrics.linear_probe")


def _cpu_only(monkeypatch) -> None:
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, device=None: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self if a == ("cuda",)
                        else to(self, *a, **k))  # fmt: skip

    def accuracy(output, target, topk=(1,)):  # numpy 2: .item() instead of float(array)
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum(0).item() / len(target) for k in topk]

    monkeypatch.setattr(cb, "accuracy", accuracy)


def _split(n: int, classes: int, generator: torch.Generator):
    # Class-dependent means, so that the weight decay matters and accuracies are not 0 or 1.
    labels = torch.randint(0, classes, (n,), generator=generator)
    means = torch.randn(classes, 12, generator=torch.Generator().manual_seed(9))
    features = means[labels] + 1.5 * torch.randn(n, 12, generator=generator)
    return normalize(features, dim=-1), labels


def test_weight_decay_search_equals_clip_benchmark(tmp_path, monkeypatch):
    from vlkit.evaluation.linear_probe_adamw import linear_probe_adamw

    _cpu_only(monkeypatch)
    g = torch.Generator().manual_seed(4)
    splits = {"train": _split(48, 6, g), "val": _split(24, 6, g), "test": _split(30, 6, g)}
    folder = tmp_path / "features" / "tiny"
    folder.mkdir(parents=True)
    for name, (features, labels) in splits.items():
        torch.save(features, folder / f"features_{name}.pt")
        torch.save(labels, folder / f"targets_{name}.pt")
    torch.manual_seed(11)  # clip_benchmark orders the train features with the global RNG
    reference = cb.evaluate(torch.nn.Identity(), None, None, -1, 8, 0, 0.1, 2, "tiny", 0,
                            str(tmp_path / "features"), "cuda", val_dataloader=object(),
                            amp=False)  # fmt: skip
    order = torch.randperm(48, generator=torch.Generator().manual_seed(11))
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits.values()
    ours = linear_probe_adamw(train_x[order], train_y[order], test_x, test_y, val_x, val_y,
                              lr=0.1, epochs=2, batch_size=8, seed=0)  # fmt: skip
    assert ours["weight_decay"] == reference["weight_decay"]
    assert 0 < reference["lp_acc1"] < 1 and reference["weight_decay"] != 1e-6
    for key, value in reference.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_linear_probe_task_holds_out_the_val_proportion():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    size = model.config.vision.image_size
    g = torch.Generator().manual_seed(1)
    samples = [(torch.rand(3, size, size, generator=g), i % 3) for i in range(20)]
    cpu = torch.device("cpu")
    run = dict(batch_size=4, workers=0, progress=False, epochs=1)
    metrics, details = linear_probe_task(model, lambda x: x, samples, samples[:6], cpu,
                                         val_proportion=0.25, **run)  # fmt: skip
    assert details == {"train_samples": 15, "val_samples": 5}
    assert metrics["weight_decay"] > 0
    _, plain = linear_probe_task(model, lambda x: x, samples, samples[:6], cpu, **run)
    assert plain == {"train_samples": 20}
    with pytest.raises(ValueError, match="val_proportion"):
        linear_probe_task(model, lambda x: x, samples, samples, cpu, val_proportion=1.0, **run)
