"""Modality gap on constructed embeddings; linear probe on scikit-learn's digits (real data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlkit.evaluation.linear_probe import (
    CLIP_BENCHMARK_WEIGHT_DECAYS,
    _tune_clip_benchmark,
    fit_logistic_regression,
    linear_probe,
)
from vlkit.evaluation.modality_gap import modality_gap

# --------------------------------------------------------------------------------------------
# Modality gap
# --------------------------------------------------------------------------------------------


def test_gap_of_opposite_axes():
    # Unit images e1, e2; texts -e1, -e2. Centroids (.5, .5) and (-.5, -.5): gap (1, 1), |gap| = sqrt 2.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = modality_gap(img, -img)
    assert out["centroid_distance"] == pytest.approx(math.sqrt(2))
    torch.testing.assert_close(out["gap_vector"], torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert out["image_centroid_norm"] == pytest.approx(math.sqrt(0.5))
    assert out["mean_paired_distance"] == pytest.approx(2.0)  # each pair is antipodal
    assert out["mean_paired_cosine"] == pytest.approx(-1.0)


def test_gap_normalizes_first():
    # (3, 4) -> (.6, .8); (0, 2) -> (0, 1): gap (.6, -.2), |gap| = sqrt(.4); cos = .8.
    out = modality_gap(np.array([[3.0, 4.0]]), np.array([[0.0, 2.0]]))
    assert out["centroid_distance"] == pytest.approx(math.sqrt(0.4))
    assert out["mean_paired_distance"] == pytest.approx(math.sqrt(0.4))
    assert out["mean_paired_cosine"] == pytest.approx(0.8)
    # Rescaling any embedding changes nothing.
    scaled = modality_gap(np.array([[30.0, 40.0]]), np.array([[0.0, 0.5]]))
    assert scaled["centroid_distance"] == pytest.approx(out["centroid_distance"])


def test_gap_of_two_cones():
    # Images around +c, texts around -c (c = e_0), symmetric noise in the other coordinates:
    # the noise averages out exactly (each noise vector appears with both signs), so the
    # centroids are (+a, 0...) and (-a, 0...) with a = 1 / sqrt(1 + |n|^2) for |n| constant.
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(50, 7))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)  # |n| = 1 -> a = 1/sqrt(2)
    noise = np.concatenate([noise, -noise])
    ones = np.ones((100, 1))
    img = np.concatenate([ones, noise], axis=1)
    txt = np.concatenate([-ones, noise], axis=1)
    out = modality_gap(img, txt, chunk_size=7)
    assert out["centroid_distance"] == pytest.approx(2 / math.sqrt(2))
    np.testing.assert_allclose(out["gap_vector"].numpy(), [math.sqrt(2)] + [0.0] * 7, atol=1e-12)
    # Pair i differs only in the first coordinate: |x - y| = 2/sqrt(2).
    assert out["mean_paired_distance"] == pytest.approx(math.sqrt(2))
    assert modality_gap(img, img)["centroid_distance"] == pytest.approx(0.0, abs=1e-12)


def test_gap_unpaired_and_validation():
    out = modality_gap(torch.randn(10, 4), torch.randn(3, 4), paired=False)
    assert "mean_paired_distance" not in out and out["centroid_distance"] > 0
    with pytest.raises(ValueError, match="paired"):
        modality_gap(torch.randn(10, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="dims"):
        modality_gap(torch.randn(3, 4), torch.randn(3, 5))


# --------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    # Each L-BFGS step on digits is a ~0.1 ms problem: a second OpenMP thread only adds
    # synchronisation overhead (several times slower on a busy 2-core machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    x, y = datasets.load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return model_selection.train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


def test_probe_on_digits_beats_90_percent(digits, one_thread):
    x_train, x_test, y_train, y_test = digits
    out = linear_probe(x_train, y_train, x_test, y_test, seed=0, max_iter=100)
    assert out["top1"] > 0.9
    assert out["mean_per_class_recall"] > 0.9
    assert out["top5"] > out["top1"]
    assert out["weight_decay"] in CLIP_BENCHMARK_WEIGHT_DECAYS
    assert out["val_top1"] == max(out["val_curve"].values())
    # Train and validation are disjoint and together the whole training set; refit uses both.
    assert not set(out["train_indices"]) & set(out["val_indices"])
    assert len(out["train_indices"]) + len(out["val_indices"]) == len(y_train)
    assert out["num_final_train"] == len(y_train)
    # The chosen penalty is not at the grid's ends (the search found an interior optimum).
    assert 1e-6 < out["weight_decay"] < 1e2


def test_few_shot_never_draws_validation_examples(digits, one_thread):
    x_train, x_test, y_train, y_test = digits
    full = linear_probe(
        x_train, y_train, x_test, y_test, seed=3, weight_decays=[1e-3], max_iter=100
    )
    few = linear_probe(
        x_train,
        y_train,
        x_test,
        y_test,
        seed=3,
        shots_per_class=5,
        weight_decays=[1e-3, 1e-1],
        max_iter=100,
    )
    # The validation split is made first and does not depend on the few-shot setting.
    np.testing.assert_array_equal(few["val_indices"], full["val_indices"])
    assert not set(few["train_indices"]) & set(few["val_indices"])
    assert np.bincount(y_train[few["train_indices"]]).tolist() == [5] * 10
    assert few["num_train"] == few["num_final_train"] == 50  # the final probe stays 5-shot
    refit = linear_probe(
        x_train,
        y_train,
        x_test,
        y_test,
        seed=3,
        shots_per_class=5,
        weight_decays=[1e-3],
        refit_on_train_val=True,
    )
    assert refit["num_final_train"] == 50 + refit["num_val"]
    assert 0.6 < few["top1"] < full["top1"]
    with pytest.raises(ValueError, match="insufficient"):
        linear_probe(x_train, y_train, x_test, y_test, shots_per_class=1000, weight_decays=[1e-3])


def test_explicit_validation_set_and_grid(digits, one_thread):
    x_train, x_test, y_train, y_test = digits
    x_fit, y_fit, x_val, y_val = x_train[:800], y_train[:800], x_train[800:], y_train[800:]
    grid = [1e-5, 1e-3, 1e-1, 10.0]
    out = linear_probe(
        x_fit,
        y_fit,
        x_test,
        y_test,
        val_features=x_val,
        val_labels=y_val,
        weight_decays=grid,
        max_iter=100,
    )
    assert list(out["val_curve"]) == grid
    assert out["val_top1"] == max(out["val_curve"].values())
    first_best = next(wd for wd in grid if out["val_curve"][wd] == out["val_top1"])
    assert out["weight_decay"] == first_best
    assert out["val_curve"][10.0] < out["val_top1"]  # a huge penalty underfits
    assert out["val_indices"] is None and out["num_final_train"] == len(y_train)


def test_search_follows_clip_benchmark():
    calls = []

    def unimodal(wd):  # peak at grid index 37
        calls.append(wd)
        return 1.0 - abs(CLIP_BENCHMARK_WEIGHT_DECAYS.index(wd) - 37) / 100

    assert _tune_clip_benchmark(unimodal) == CLIP_BENCHMARK_WEIGHT_DECAYS[37]
    # 7 coarse points, then (left, peak, right) for steps 8, 4, 2, 1 (CLIP_benchmark re-evaluates
    # the peak each time; here it is 19 calls, cached by linear_probe).
    assert len(calls) == 7 + 4 * 3
    # A flat validation curve: the first strict maximum is kept, so the smallest decay wins.
    assert _tune_clip_benchmark(lambda wd: 0.5) == CLIP_BENCHMARK_WEIGHT_DECAYS[0]


def test_fit_matches_scikit_learn_objective(digits, one_thread):
    linear_model = pytest.importorskip("sklearn.linear_model")
    x_train, _, y_train, _ = digits
    x, y = x_train[:400].astype(np.float64), y_train[:400]
    wd = 1e-2
    ours = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), 10, wd, max_iter=2000)
    # mean CE + wd/2 |W|^2  ==  (1 / (n wd)) * (sum CE) + 1/2 |W|^2  -> C = 1 / (n wd).
    ref = linear_model.LogisticRegression(C=1 / (len(y) * wd), tol=1e-10, max_iter=5000).fit(x, y)
    np.testing.assert_allclose(ours.weight.numpy(), ref.coef_, atol=2e-3)
    # The intercepts are defined up to a common shift (softmax); compare them centred.
    b, rb = ours.bias.numpy(), ref.intercept_
    np.testing.assert_allclose(b - b.mean(), rb - rb.mean(), atol=2e-3)


def test_without_validation(digits, one_thread):
    x_train, x_test, y_train, y_test = digits
    out = linear_probe(x_train[:300], y_train[:300], x_test, y_test, val_fraction=0, max_iter=50)
    assert out["weight_decay"] == 0.0 and math.isnan(out["val_top1"])  # CLIP_benchmark's default
    assert out["num_val"] == 0 and out["num_final_train"] == 300
    with pytest.raises(ValueError, match="no validation"):
        linear_probe(x_train, y_train, x_test, y_test, val_fraction=0, weight_decays=[1e-3, 1e-2])
