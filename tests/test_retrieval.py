"""Blockwise retrieval metrics vs brute force, a hand-worked example, open_clip and CLIP_benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlkit.evaluation.retrieval import retrieval_metrics, retrieval_ranks, summarize_ranks


def _brute_force_ranks(
    img: np.ndarray, txt: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rank by sorting, one query at a time, ties broken in favour of the positives.

    An independent formulation of the definition: sort the candidates by (score descending,
    positives first) and take the 1-based position of the first positive.
    """
    scores = txt.astype(np.float64) @ img.astype(np.float64).T  # exact for the small-integer data
    n_txt, n_img = scores.shape
    t2i = np.empty(n_txt, dtype=np.int64)
    for j in range(n_txt):
        order = sorted(range(n_img), key=lambda i, j=j: (-scores[j, i], i != ids[j]))
        t2i[j] = order.index(ids[j]) + 1
    i2t = np.empty(n_img, dtype=np.int64)
    for i in range(n_img):
        order = sorted(range(n_txt), key=lambda j, i=i: (-scores[j, i], ids[j] != i))
        i2t[i] = next(pos for pos, j in enumerate(order) if ids[j] == i) + 1
    return i2t, t2i


def _tied_data(n_img: int, n_txt: int, dim: int, seed: int):
    """Small-integer embeddings: float32 dot products are exact, and ties are everywhere."""
    rng = np.random.default_rng(seed)
    img = rng.integers(-2, 3, size=(n_img, dim)).astype(np.float32)
    txt = rng.integers(-2, 3, size=(n_txt, dim)).astype(np.float32)
    # Every image gets at least one caption, the rest are spread at random (1..many per image).
    ids = np.concatenate([rng.permutation(n_img), rng.integers(0, n_img, size=n_txt - n_img)])
    rng.shuffle(ids)
    # Duplicate images and captions make exact ties between a positive and negatives.
    img[1] = img[0]
    txt[3] = txt[2]
    return img, txt, ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ties_and_many_captions(seed):
    img, txt, ids = _tied_data(n_img=37, n_txt=150, dim=4, seed=seed)
    ref_i2t, ref_t2i = _brute_force_ranks(img, txt, ids)
    assert (ref_t2i > 1).any() and (ref_i2t > 1).any()
    for chunk_size, image_chunk_size in [(None, None), (1, 1), (7, 5), (64, 16), (1000, 1000)]:
        i2t, t2i = retrieval_ranks(
            img, txt, ids, chunk_size=chunk_size, image_chunk_size=image_chunk_size
        )
        np.testing.assert_array_equal(i2t.numpy(), ref_i2t)
        np.testing.assert_array_equal(t2i.numpy(), ref_t2i)
    # torch inputs, fp16 storage, ids as a tensor: same ranks (small integers are exact in fp16).
    i2t, t2i = retrieval_ranks(
        torch.from_numpy(img).half(), torch.from_numpy(txt).half(), torch.from_numpy(ids)
    )
    np.testing.assert_array_equal(i2t.numpy(), ref_i2t)
    np.testing.assert_array_equal(t2i.numpy(), ref_t2i)


def test_hand_worked_example():
    # 3 images (one-hot), 5 captions; binary fractions keep every score exact.
    img = torch.eye(3)
    txt = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # c0 -> image 0; scores (1, 0, 0): rank 1
            [0.0, 1.0, 0.0],  # c1 -> image 0; (0, 1, 0): image 1 beats 0, image 2 ties -> rank 2
            [0.5, 0.5, 0.0],  # c2 -> image 1; (.5, .5, 0): image 0 only ties -> rank 1
            [0.0, 0.5, 0.25],  # c3 -> image 2; (0, .5, .25): image 1 beats .25 -> rank 2
            [0.75, 0.0, 0.0],  # c4 -> image 2; (.75, 0, 0): image 0 beats 0 -> rank 2
        ]
    )
    ids = [0, 0, 1, 2, 2]
    # image 0: best caption c0 (1.0), no other caption higher -> 1
    # image 1: its caption c2 scores .5; c1 (image 0's) scores 1 > .5, c3 ties -> 2
    # image 2: best caption c3 (.25); nothing else above .25 -> 1
    i2t, t2i = retrieval_ranks(img, txt, ids)
    assert t2i.tolist() == [1, 2, 1, 2, 2]
    assert i2t.tolist() == [1, 2, 1]
    m = retrieval_metrics(img, txt, ids, ks=(1, 2))
    assert m == pytest.approx(
        {
            "i2t_r1": 2 / 3,
            "i2t_r2": 1.0,
            "t2i_r1": 2 / 5,
            "t2i_r2": 1.0,
            "i2t_mean_rank": 4 / 3,
            "t2i_mean_rank": 8 / 5,
            "i2t_median_rank": 1.0,  # 0-based ranks (0, 1, 0): median 0 -> 1
            "t2i_median_rank": 2.0,  # 0-based ranks (0, 1, 0, 1, 1): median 1 -> 2
        }
    )


def test_median_rank_is_floor_of_zero_based_median_plus_one():
    # Even count: numpy's median averages the middle pair, open_clip floors it.
    assert summarize_ranks(np.array([1, 2]))["median_rank"] == 1.0  # median(0, 1) = .5 -> 0 + 1
    assert summarize_ranks(np.array([1, 4]))["median_rank"] == 2.0  # median(0, 3) = 1.5 -> 1 + 1
    assert summarize_ranks(np.array([3, 1, 2, 9]))["median_rank"] == 2.0  # median(0,1,2,8) = 1.5


def test_matches_open_clip_get_clip_metrics():
    train = pytest.importorskip("open_clip_train.train")
    g = torch.Generator().manual_seed(0)
    n, dim = 300, 16
    img = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    txt = F.normalize(img + 0.9 * torch.randn(n, dim, generator=g), dim=-1)  # imperfect matches
    ref = train.get_clip_metrics(img, txt, logit_scale=torch.tensor(100.0))
    ours = retrieval_metrics(img, txt, torch.arange(n), chunk_size=64, image_chunk_size=50)
    for ours_name, ref_name in [("i2t", "image_to_text"), ("t2i", "text_to_image")]:
        assert 0 < ours[f"{ours_name}_r1"] < 1
        for k in (1, 5, 10):
            assert ours[f"{ours_name}_r{k}"] == pytest.approx(ref[f"{ref_name}_R@{k}"], abs=1e-12)
        assert ours[f"{ours_name}_mean_rank"] == pytest.approx(ref[f"{ref_name}_mean_rank"])
        assert ours[f"{ours_name}_median_rank"] == ref[f"{ref_name}_median_rank"]


def _clip_benchmark_recall_at_k(scores, positive_pairs, k):
    """`recall_at_k` of CLIP_benchmark (clip_benchmark/metrics/zeroshot_retrieval.py), verbatim."""
    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def test_matches_clip_benchmark_with_several_captions_per_image():
    g = torch.Generator().manual_seed(1)
    n_img, per_image, dim = 80, 5, 16
    img = F.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    ids = torch.arange(n_img).repeat_interleave(per_image)
    txt = F.normalize(img[ids] + 1.0 * torch.randn(len(ids), dim, generator=g), dim=-1)
    # CLIP_benchmark's evaluate(): scores (texts x images) and a positive-pair matrix.
    scores = txt @ img.T
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), ids] = True
    ours = retrieval_metrics(img, txt, ids, ks=(1, 5, 10), chunk_size=33, image_chunk_size=17)
    for k in (1, 5, 10):
        # "image_retrieval" = text -> image; "text_retrieval" = image -> text (any caption in top K).
        image_retrieval = (
            (_clip_benchmark_recall_at_k(scores, positive_pairs, k) > 0).float().mean().item()
        )
        text_retrieval = (
            (_clip_benchmark_recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
        )
        assert ours[f"t2i_r{k}"] == pytest.approx(image_retrieval, abs=1e-6)
        assert ours[f"i2t_r{k}"] == pytest.approx(text_retrieval, abs=1e-6)
    assert 0 < ours["t2i_r1"] < ours["t2i_r10"] < 1


def test_float32_ties_follow_the_rule_for_the_scores_as_computed():
    """Duplicate images: the positive ties exactly with its copy in the score matrix.

    An elementwise dot product for the positive and a matrix product for the rest disagree in the
    last bit (1.0 vs 1.0000001) for most captions here, which used to rank a tied copy above the
    positive. Every score now comes from the same matrix product, so the rule (1 + strictly
    higher negatives) holds for the scores as computed.
    """
    g = torch.Generator().manual_seed(0)
    unique = F.normalize(torch.randn(50, 512, generator=g), dim=1)
    img = torch.cat([unique, unique])  # image i and i + 50 are identical
    ids = torch.arange(100)
    txt = F.normalize(img + 0.5 * torch.randn(100, 512, generator=g), dim=1)
    scores = txt @ img.T  # the dense (texts x images) matrix: one block, as retrieval_ranks uses
    positive = scores[ids, ids]
    assert ((txt * img[ids]).sum(1) != positive).any()  # the elementwise product differs
    i2t, t2i = retrieval_ranks(img, txt, ids)
    torch.testing.assert_close(t2i, 1 + (scores > positive[:, None]).sum(1), rtol=0, atol=0)
    torch.testing.assert_close(i2t, 1 + (positive[:, None] < scores.T).sum(1), rtol=0, atol=0)
    # Blockwise (captions in chunks of 37, images in blocks of 29): the rule holds for the
    # matrix assembled from the same block products.
    blocks = torch.cat([
        torch.cat([txt[t : t + 37] @ img[i : i + 29].T for i in range(0, 100, 29)], dim=1)
        for t in range(0, 100, 37)
    ])  # fmt: skip
    positive = blocks[ids, ids]
    i2t, t2i = retrieval_ranks(img, txt, ids, chunk_size=37, image_chunk_size=29)
    torch.testing.assert_close(t2i, 1 + (blocks > positive[:, None]).sum(1), rtol=0, atol=0)
    torch.testing.assert_close(i2t, 1 + (positive[:, None] < blocks.T).sum(1), rtol=0, atol=0)


def test_numpy_memmap_input(tmp_path):
    img, txt, ids = _tied_data(n_img=20, n_txt=60, dim=4, seed=5)
    path = tmp_path / "txt.npy"
    np.save(path, txt)
    mm = np.load(path, mmap_mode="r")  # read-only: must not be copied whole or written to
    ref = retrieval_ranks(img, txt, ids)
    got = retrieval_ranks(img, mm, ids, chunk_size=8)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


def test_input_validation():
    img, txt = torch.randn(3, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_ranks(img, txt, [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        retrieval_ranks(img, txt, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="entries"):
        retrieval_ranks(img, txt, [0, 1, 2])
    with pytest.raises(ValueError, match="dims differ"):
        retrieval_ranks(img, torch.randn(4, 5), [0, 1, 2, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    img, txt, ids = _tied_data(n_img=300, n_txt=1000, dim=8, seed=3)
    cpu = retrieval_ranks(img, txt, ids)
    gpu = retrieval_ranks(img, txt, ids, device="cuda", chunk_size=128, image_chunk_size=64)
    assert all(torch.equal(a, b) for a, b in zip(cpu, gpu, strict=True))
