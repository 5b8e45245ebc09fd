"""Group-balanced sampling: inverse-frequency weights, balanced frequencies, exact resume, and
`data.balance_by` in a training run (weights saved in balance.json, resume bit-identical)."""

import csv
import json
from collections import Counter

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlkit.data.datasets.metadata_columns import MISSING_VALUE, read_metadata_column
from vlkit.data.datasets.shapes import ShapesDataset
from vlkit.overrides import ConfigError
from vlkit.recipes.clip_run import train
from vlkit.training.balanced_data import group_labels
from vlkit.training.balanced_sampler import BalancedBatchSampler, inverse_frequency_weights
from vlkit.training.config import CheckpointConfig, DataConfig, OptimConfig, TrainConfig

# 90% of group "a", 10% of group "b".
LABELS = ["a"] * 180 + ["b"] * 20


def test_inverse_frequency_weights_by_hand():
    weights, summary = inverse_frequency_weights(["x", "y", "x", "x"])
    # Two groups: each gets mass 1/2; x's three samples 1/6 each, y's one sample 1/2.
    assert weights.tolist() == pytest.approx([1 / 6, 1 / 2, 1 / 6, 1 / 6])
    assert summary == {
        "groups": {"x": {"count": 3, "weight": 1 / 6}, "y": {"count": 1, "weight": 0.5}}
    }
    assert float(weights.sum()) == pytest.approx(1.0)


def test_sampled_group_frequencies_are_balanced():
    weights, _ = inverse_frequency_weights(LABELS)
    drawn = Counter()
    for epoch in range(10):
        for batch in BalancedBatchSampler(weights, batch_size=20, seed=1, epoch=epoch):
            drawn.update(LABELS[index] for index, _ in batch)
    total = sum(drawn.values())
    assert total == 10 * 200  # an epoch is as long as an unweighted one
    # 2,000 draws from a fair coin: within 0.5 +- 0.035 (3.1 standard deviations).
    assert abs(drawn["b"] / total - 0.5) < 0.035
    # Without balancing the minority is 10% of the draws.
    assert Counter(LABELS)["b"] / len(LABELS) == 0.1


def test_balanced_sampler_resumes_and_splits_exactly():
    weights, _ = inverse_frequency_weights(LABELS)
    full = list(BalancedBatchSampler(weights, batch_size=10, seed=3, epoch=2))
    assert list(BalancedBatchSampler(weights, 10, 3, epoch=2, start_batch=7)) == full[7:]
    assert list(BalancedBatchSampler(weights, 10, 3, epoch=3)) != full  # a new permutation
    ranks = [list(BalancedBatchSampler(weights, 10, 3, 2, rank=r, world_size=2)) for r in (0, 1)]
    for whole, first, second in zip(full, *ranks, strict=True):
        assert sorted(first + second) == sorted(whole)
    # A sample drawn twice gets two different sample seeds (two augmentations).
    keys = [key for batch in full for key in batch]
    assert len({seed for _, seed in keys}) == len(keys)


def test_metadata_column_is_aligned_with_the_records(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"image": "1.png", "g": "x"}\n\nnot json\n{"image": "2.png"}\n')
    assert read_metadata_column(path, "g") == ["x", MISSING_VALUE, MISSING_VALUE]
    with pytest.raises(ValueError, match="no column 'sex'"):
        read_metadata_column(path, "sex")


def test_balance_by_needs_a_source_with_metadata():
    with pytest.raises(ConfigError, match="data.balance_by"):
        DataConfig(source="shapes", balance_by="colour")
    with pytest.raises(ConfigError, match="has no metadata columns"):
        group_labels(ShapesDataset(4), "colour")


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory):
    """24 images: 20 red (group "red"), 4 blue, with captions and a group column."""
    root = tmp_path_factory.mktemp("imbalanced")
    with open(root / "train.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption", "colour"])
        for i in range(24):
            colour = "blue" if i % 6 == 0 else "red"
            rgb = (30, 40, 200) if colour == "blue" else (200, 40, 30)
            Image.new("RGB", (32, 32), tuple(c + i for c in rgb)).save(root / f"{i}.png")
            writer.writerow([f"{i}.png", f"a {colour} square", colour])
    return root


def _config(root, out, steps):
    return TrainConfig(
        model="tiny", seed=0, device="cpu", out_dir=str(out), progress=False, log_every=1,
        data=DataConfig(source="folder", root=str(root), annotations=str(root / "train.csv"),
                        balance_by="colour", augment=True),
        optim=OptimConfig(batch_size=8, max_steps=steps, warmup_steps=1, lr=1e-3),
        checkpoint=CheckpointConfig(every=2, keep_last=0),
    )  # fmt: skip


def test_balanced_training_run_saves_weights_and_resumes_exactly(imbalanced_folder, tmp_path):
    whole = tmp_path / "whole"
    train(_config(imbalanced_folder, whole, 4))
    balance = json.loads((whole / "balance.json").read_text())
    assert balance["column"] == "colour" and balance["num_samples"] == 24
    assert balance["groups"] == {
        "blue": {"count": 4, "weight": 1 / 8},
        "red": {"count": 20, "weight": 1 / 40},
    }
    # Resume from step 2 (mid-epoch: an epoch is 24 // 8 = 3 batches) in a new directory, on
    # through the end of the epoch into the next one's new draw.
    resumed = tmp_path / "resumed"
    train(_config(imbalanced_folder, resumed, 4), resume=str(whole / "checkpoints/step_00000002"))
    final = "checkpoints/step_00000004/model.safetensors"
    a, b = load_file(whole / final), load_file(resumed / final)
    assert all(torch.equal(a[name], b[name]) for name in a)
    # Other data than the run was balanced with: the resume is refused.
    (resumed / "balance.json").write_text(json.dumps({**balance, "num_samples": 23}))
    with pytest.raises(ConfigError, match="cannot resume exactly"):
        train(_config(imbalanced_folder, resumed, 5), resume="latest")
