"""Tiny benchmark datasets in their real on-disk formats, for tests (no download).

Each `write_<name>(root)` writes the files torchvision / CLIP_benchmark / vlkit read for that
dataset under `root` (the folder given to `clip_benchmark eval --dataset_root` and to vlkit's
readers) and returns `root`. Images are small random pixels, decodable by PIL. Importable from
any test in tests/ (`from benchmark_fixtures import write_cifar10`).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from vlkit.data.benchmarks.names import classnames, imagenet_wnids


def image_bytes(seed: int, size: int = 8, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_cifar10(root: Path, n_test: int = 12, n_train_per_batch: int = 3) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    batches = {"test_batch": n_test, **{f"data_batch_{i}": n_train_per_batch for i in range(1, 6)}}
    for seed, (batch, n) in enumerate(batches.items()):
        rng = np.random.default_rng(seed)
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
            "batch_label": batch,
        }
        (base / batch).write_bytes(pickle.dumps(entry))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))
    return root


def write_cifar100(root: Path, n: int = 10) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for seed, split in enumerate(("train", "test")):
        rng = np.random.default_rng(seed)
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": rng.integers(0, 100, n).tolist(),
            "coarse_labels": rng.integers(0, 20, n).tolist(),
        }
        (base / split).write_bytes(pickle.dumps(entry))
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"super_{i}" for i in range(20)],
    }
    (base / "meta").write_bytes(pickle.dumps(meta))
    return root


def write_stl10(root: Path, n: int = 5) -> Path:
    base = root / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    for seed, split in enumerate(("train", "test")):
        rng = np.random.default_rng(seed)
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(base / f"{split}_X.bin")
        rng.integers(1, 11, n, dtype=np.uint8).tofile(base / f"{split}_y.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (base / "class_names.txt").write_text("\n".join(names) + "\n")
    return root


def write_food101(root: Path) -> Path:
    base = root / "food-101"
    # Classes listed out of name order in test.json: the label is the sorted rank.
    test = {
        "waffles": ["waffles/3001", "waffles/3002"],
        "apple_pie": ["apple_pie/1001"],
        "baby_back_ribs": ["baby_back_ribs/2001", "baby_back_ribs/2002"],
    }
    train = {
        "apple_pie": ["apple_pie/1003"],
        "baby_back_ribs": ["baby_back_ribs/2003"],
        "waffles": ["waffles/3003"],
    }
    for split, table in (("test", test), ("train", train)):
        _put(base / "meta" / f"{split}.json", json.dumps(table).encode())
        for seed, rel in enumerate(r for rels in table.values() for r in rels):
            _put(base / "images" / f"{rel}.jpg", image_bytes(seed))
    return root


def write_pets(root: Path) -> Path:
    base = root / "oxford-iiit-pet"
    test = [
        "Abyssinian_1 1 1 1",
        "american_bulldog_10 2 2 1",
        "Abyssinian_2 1 1 1",
        "great_pyrenees_5 3 2 2",
    ]
    train = ["Abyssinian_3 1 1 1", "american_bulldog_11 2 2 1", "great_pyrenees_6 3 2 2"]
    for split, lines in (("test", test), ("trainval", train)):
        _put(base / "annotations" / f"{split}.txt", ("\n".join(lines) + "\n").encode())
        for seed, line in enumerate(lines):
            _put(base / "images" / f"{line.split()[0]}.jpg", image_bytes(seed))
    return root


def write_flowers(root: Path) -> Path:
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = np.array([5, 1, 102, 7, 2, 1, 3], dtype=np.uint8)  # 1-based class of image_0000k.jpg
    # CLIP_benchmark decrements again when ds[0]'s label is 1: keep the first test label != 1.
    base.mkdir(parents=True, exist_ok=True)
    savemat(base / "imagelabels.mat", {"labels": labels[None, :]})
    savemat(
        base / "setid.mat",
        {
            "trnid": np.array([[2, 5]], dtype=np.uint16),
            "valid": np.array([[6, 7]], dtype=np.uint16),
            "tstid": np.array([[4, 1, 3]], dtype=np.uint16),
        },
    )
    for i in range(1, len(labels) + 1):
        _put(base / "jpg" / f"image_{i:05d}.jpg", image_bytes(i))
    return root


def write_dtd(root: Path) -> Path:
    data = root / "dtd" / "dtd"
    rows = {
        "test": [
            "zigzagged/zigzagged_0001.jpg",
            "banded/banded_0002.jpg",
            "banded/banded_0009.jpg",
            "lined/lined_0003.jpg",
        ],
        "train": ["banded/banded_0010.jpg", "lined/lined_0011.jpg"],
        "val": ["zigzagged/zigzagged_0012.jpg"],
    }
    for split, lines in rows.items():
        _put(data / "labels" / f"{split}1.txt", ("\n".join(lines) + "\n").encode())
        for seed, line in enumerate(lines):
            _put(data / "images" / line, image_bytes(seed))
    return root


def write_eurosat(root: Path) -> Path:
    folders = [
        "AnnualCrop",
        "Forest",
        "HerbaceousVegetation",
        "Highway",
        "Industrial",
        "Pasture",
        "PermanentCrop",
        "Residential",
        "River",
        "SeaLake",
    ]
    for c, folder in enumerate(folders):
        for k in range(1 + c % 2):
            _put(
                root / "eurosat" / "2750" / folder / f"{folder}_{k + 1}.jpg",
                image_bytes(c * 10 + k),
            )
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    _put(path, header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n: int = 7) -> Path:
    raw = root / "MNIST" / "raw"
    for seed, prefix in enumerate(("train", "t10k")):
        rng = np.random.default_rng(seed)
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return root


def write_wnid_folders(
    root: Path,
    wnids: list[str],
    per_class: int = 1,
    suffix: str = ".JPEG",
    extra: dict[str, int] | None = None,
) -> Path:
    """`root/<wnid>/<wnid>_<k><suffix>`: `per_class` images per WordNet id (more for `extra`)."""
    data = image_bytes(0)
    for wnid in wnids:
        for k in range((extra or {}).get(wnid, per_class)):
            _put(root / wnid / f"{wnid}_{k}{suffix}", data)
    return root


def write_imagenet_val_folders(root: Path) -> Path:
    """imagenet1k as torchvision's ImageNet keeps it: val/<wnid>/ (all 1,000) and meta.bin."""
    import torch

    wnids = imagenet_wnids()
    write_wnid_folders(root / "val", wnids, extra={wnids[3]: 2, wnids[999]: 3})
    names = classnames("imagenet1k")
    torch.save(({w: (n,) for w, n in zip(wnids, names, strict=True)}, []), root / "meta.bin")
    return root


# The flat val folder: (image number, wnid) pairs of a few ImageNet validation images.
FLAT_VAL = [
    (1, "n01751748"),
    (2, "n09193705"),
    (3, "n02105855"),
    (7, "n01440764"),
    (12, "n15075141"),
    (15, "n01751748"),
]


def write_imagenet_flat_csv(root: Path) -> Path:
    """val/ILSVRC2012_val_%08d.JPEG + Kaggle's LOC_val_solution.csv (rows shuffled, with boxes)."""
    rows = ["ImageId,PredictionString"]
    for number, wnid in reversed(FLAT_VAL):
        _put(root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG", image_bytes(number))
        rows.append(f"ILSVRC2012_val_{number:08d},{wnid} 10 20 30 40 {wnid} 1 2 3 4 ")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root


def write_imagenet_flat_devkit(root: Path) -> Path:
    """val/ILSVRC2012_val_%08d.JPEG + ILSVRC2012_devkit_t12/data/{meta.mat, ground truth}.

    As in the real devkit, ILSVRC2012_ID is not the sorted-WordNet-id order and meta.mat also
    holds non-leaf synsets (num_children > 0), which are not classes.
    """
    from scipy.io import savemat

    wnids = imagenet_wnids()
    ids = np.random.default_rng(1).permutation(1000) + 1  # wnids[i] has ILSVRC2012_ID ids[i]
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    synsets = np.zeros((1002, 1), dtype=[(f, "O") for f in fields])
    for i, wnid in enumerate(wnids):
        synsets[i, 0] = (ids[i], wnid, f"words {i}", "gloss", 0, np.zeros((1, 0)), 0, 1300)
    for j in (1000, 1001):  # non-leaf synsets, ids beyond 1000 as in the real meta.mat
        synsets[j, 0] = (
            j + 1,
            f"n9999999{j - 1000}",
            "entity",
            "gloss",
            2,
            np.array([[1, 2]]),
            5,
            0,
        )
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True, exist_ok=True)
    savemat(data / "meta.mat", {"synsets": synsets})
    id_of = {w: int(ids[i]) for i, w in enumerate(wnids)}
    truth = [id_of[wnids[(7 * n) % 1000]] for n in range(1, 21)]  # 20 ground-truth lines
    for number, _ in FLAT_VAL:
        truth[number - 1] = id_of[dict(FLAT_VAL)[number]]
        _put(root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG", image_bytes(number))
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, truth)) + "\n")
    return root


def write_imagenetv2(root: Path) -> Path:
    data = image_bytes(5)
    for label, count in ((0, 2), (7, 1), (999, 2), (123, 1)):
        for k in range(count):
            _put(root / "ImageNetV2-matched-frequency" / str(label) / f"{k:04x}abcd.jpeg", data)
    return root


# Retrieval: 3 test images (one with 6 captions), 1 train image; COCO ids deliberately unsorted.
RETRIEVAL_IMAGES = [
    (
        391895,
        "COCO_val2014_000000391895.jpg",
        ["A man riding a bike.", "A person, on a bicycle, rides."],
    ),
    (
        60623,
        "COCO_val2014_000000060623.jpg",
        ["A young girl eats cake.", "Girl with cake", "c3", "c4", "c5", "c6"],
    ),
    (483108, "COCO_val2014_000000483108.jpg", ["A train, at a station.", "Train."]),
]


def write_coco_karpathy(root: Path) -> Path:
    """dataset_coco.json (Karpathy's format) with the images under val2014/ and train2014/."""
    entries = []
    for seed, (cocoid, name, captions) in enumerate(RETRIEVAL_IMAGES):
        _put(root / "val2014" / name, image_bytes(seed))
        entries.append(
            {
                "filepath": "val2014",
                "filename": name,
                "split": "test",
                "cocoid": cocoid,
                "imgid": seed,
                "sentids": list(range(len(captions))),
                "sentences": [
                    {"raw": c, "tokens": c.lower().split(), "imgid": seed} for c in captions
                ],
            }
        )
    _put(root / "train2014" / "COCO_train2014_000000000009.jpg", image_bytes(9))
    entries.insert(
        1,
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000009.jpg",
            "split": "restval",
            "cocoid": 9,
            "sentences": [{"raw": "A train image."}],
        },
    )
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return root


def write_coco_clip_benchmark(root: Path) -> Path:
    """CLIP_benchmark's coco_test_karpathy.json (COCO captions format) + val2014/."""
    images, annotations = [], []
    for seed, (cocoid, name, captions) in enumerate(RETRIEVAL_IMAGES):
        _put(root / "val2014" / name, image_bytes(seed))
        images.append({"id": cocoid, "file_name": name})
        annotations += [
            {"image_id": cocoid, "id": len(annotations) + k, "caption": c}
            for k, c in enumerate(captions)
        ]
    annotations.append(annotations.pop(0))  # an image's captions need not be contiguous
    (root / "coco_test_karpathy.json").write_text(
        json.dumps({"images": images, "annotations": annotations})
    )
    return root


def _flickr_name(cocoid: int) -> str:
    return f"{cocoid}.jpg"


def write_flickr30k_karpathy(root: Path) -> Path:
    entries = []
    for seed, (cocoid, _, captions) in enumerate(RETRIEVAL_IMAGES):
        _put(root / "flickr30k-images" / _flickr_name(cocoid), image_bytes(seed))
        entries.append(
            {
                "filename": _flickr_name(cocoid),
                "split": "test",
                "sentences": [{"raw": c} for c in captions],
            }
        )
    entries.append({"filename": "1.jpg", "split": "train", "sentences": [{"raw": "x"}]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    return root


def write_flickr30k_clip_benchmark(root: Path) -> Path:
    lines = ["image,caption"]
    for seed, (cocoid, _, captions) in enumerate(RETRIEVAL_IMAGES):
        _put(root / _flickr_name(cocoid), image_bytes(seed))
        lines += [f"{_flickr_name(cocoid)},{c}" for c in captions]
    (root / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return root
