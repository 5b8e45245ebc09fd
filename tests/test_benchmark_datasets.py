"""Benchmark dataset adapters (vlkit.data.benchmarks) on tiny fixtures in each real format.

The fixtures (tests/benchmark_fixtures.py) are written by the tests. Where CLIP_benchmark's own
builder (`clip_benchmark.datasets.builder.build_dataset(..., download=False)`, clip-benchmark
1.6.2 from PyPI) can read a fixture, vlkit's dataset must hold the same samples in the same
order: the same decoded pixels (mode included), labels, class names and templates. torchvision's
MD5 checks are switched off for that (a fixture cannot match the real files' checksums), and
CLIP_benchmark's ImageNetV2 size check is set to the fixture's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmark_fixtures import (
    FLAT_VAL,
    RETRIEVAL_IMAGES,
    write_cifar10,
    write_cifar100,
    write_coco_clip_benchmark,
    write_coco_karpathy,
    write_dtd,
    write_eurosat,
    write_flickr30k_clip_benchmark,
    write_flickr30k_karpathy,
    write_flowers,
    write_food101,
    write_imagenet_flat_csv,
    write_imagenet_flat_devkit,
    write_imagenet_val_folders,
    write_imagenetv2,
    write_mnist,
    write_pets,
    write_stl10,
    write_wnid_folders,
)

from vlkit.data.benchmarks.classification import CLASSIFICATION, LAYOUTS, classification_dataset
from vlkit.data.benchmarks.karpathy import LAYOUTS as RETRIEVAL_LAYOUTS
from vlkit.data.benchmarks.karpathy import RETRIEVAL, karpathy_dataset
from vlkit.data.benchmarks.names import classnames, imagenet_wnids, templates
from vlkit.errors import DatasetMissing

WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "stl10": write_stl10,
    "food101": write_food101,
    "pets": write_pets,
    "flowers": write_flowers,
    "dtd": write_dtd,
    "eurosat": write_eurosat,
    "mnist": write_mnist,
    "imagenet1k": write_imagenet_val_folders,
    "imagenetv2": write_imagenetv2,
    "imagenet-a": lambda root: write_wnid_folders(
        root, imagenet_wnids("imagenet-a"), suffix=".jpg"
    ),
    "imagenet-r": lambda root: write_wnid_folders(
        root, imagenet_wnids("imagenet-r"), suffix=".jpg", extra={"n12267677": 3}
    ),
}
SPLITS = {
    "cifar10": ("test", "train"),
    "cifar100": ("test", "train"),
    "stl10": ("test", "train"),
    "food101": ("test", "train"),
    "pets": ("test", "trainval"),
    "flowers": ("test", "train", "val"),
    "dtd": ("test", "train", "val"),
    "mnist": ("test", "train"),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    made = {
        name: write(tmp_path_factory.mktemp(name.replace("-", "_")))
        for name, write in WRITERS.items()
    }
    # ImageNet-Sketch's layout is ImageNet's val/ folder of 1,000 <wnid> folders: share it.
    return {**made, "imagenet_sketch": made["imagenet1k"] / "val"}


@pytest.fixture
def builder(monkeypatch):
    """CLIP_benchmark's `build_dataset`, with torchvision's MD5 checks switched off."""
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    import torchvision.datasets.cifar
    import torchvision.datasets.flowers102
    import torchvision.datasets.stl10

    for module in (
        torchvision.datasets.cifar,
        torchvision.datasets.stl10,
        torchvision.datasets.flowers102,
    ):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)

    def build(name: str, root: Path, split: str = "test", task: str = "zeroshot_classification"):
        return builder.build_dataset(
            name, root=str(root), transform=None, split=split, download=False, task=task
        )

    return build


def _pixels(image) -> tuple[str, bytes]:
    return image.mode, np.asarray(image).tobytes()


@pytest.mark.filterwarnings("ignore:split argument ignored")
@pytest.mark.parametrize("name", [*(n for n in WRITERS if n != "imagenetv2"), "imagenet_sketch"])
def test_same_samples_as_clip_benchmark(name, roots, builder):
    root = roots[name]
    for split in SPLITS.get(name, ("test",)):
        reference = builder(name, root, split)
        ours = classification_dataset(name, root, split=split)
        assert len(ours) == len(reference) > 0
        assert ours.classes == list(reference.classes) and ours.classnames == ours.classes
        assert ours.templates == [t.replace("{c}", "{}") for t in reference.templates]
        for i in range(len(ours)):
            (image, label), (ref_image, ref_label) = ours[i], reference[i]
            assert label == ref_label, (name, split, i)
            if i < 20:  # pixels too (decoding mode, array layout); 1,000+ folders are alike
                assert _pixels(image) == _pixels(ref_image), (name, split, i)
        if hasattr(reference, "samples"):
            assert ours.paths == [Path(p) for p, _ in reference.samples]


def test_imagenetv2_same_samples_as_clip_benchmark(roots, builder, monkeypatch):
    import clip_benchmark.datasets.imagenetv2 as v2

    root = roots["imagenetv2"]
    monkeypatch.setattr(v2, "V2_DATASET_SIZE", 6)  # else it downloads the real 10,000 images
    reference = builder("imagenetv2", root)
    ours = classification_dataset("imagenetv2", root)
    # CLIP_benchmark keeps glob order; vlkit sorts by label then file name.
    expected = sorted((int(p.parent.name), p.name, str(p)) for p in reference.fnames)
    assert [(t, p.name, str(p)) for p, t in zip(ours.paths, ours.targets, strict=True)] == expected
    assert ours.classes == reference.classes and ours.targets[-2:] == [999, 999]
    for i, path in enumerate(ours.paths):
        ref_image, ref_label = reference[[Path(p) for p in reference.fnames].index(path)]
        image, label = ours[i]
        assert label == ref_label and _pixels(image) == _pixels(ref_image)


def test_imagenet_class_subsets_follow_clip_benchmark():
    every = imagenet_wnids()
    assert len(every) == 1000 and every == sorted(every)
    names = dict(zip(every, classnames("imagenet1k"), strict=True))
    for subset in ("imagenet-a", "imagenet-r"):
        wnids = imagenet_wnids(subset)
        assert len(wnids) == 200 and wnids == sorted(wnids) and set(wnids) <= set(every)
    assert names["n01440764"] == "tench" and names["n15075141"] == "toilet paper"
    assert len(templates("imagenet1k")) == 80 and templates("imagenet-r") == templates("imagenet1k")
    assert len(templates("cifar10")) == 18 and all(t.count("{}") == 1 for t in templates("dtd"))


def test_imagenet_flat_val_folder_labels(tmp_path):
    folder = classification_dataset(
        "imagenet1k",
        write_wnid_folders(tmp_path / "folders" / "val", sorted({w for _, w in FLAT_VAL})).parent,
    )
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    expected = [index[w] for _, w in sorted(FLAT_VAL)]  # the flat folder sorted by file name
    for write in (write_imagenet_flat_csv, write_imagenet_flat_devkit):
        ds = classification_dataset("imagenet1k", write(tmp_path / write.__name__))
        assert [p.name for p in ds.paths] == [
            f"ILSVRC2012_val_{n:08d}.JPEG" for n, _ in sorted(FLAT_VAL)
        ]
        assert ds.targets == expected and len(ds.classes) == 1000
    assert folder.targets == sorted(set(expected))  # the same classes as wnid folders


def test_devkit_fixture_reads_as_torchvision_reads_it(tmp_path, monkeypatch):
    """The meta.mat / ground-truth fixture is the devkit's format: torchvision's own devkit parser
    (`parse_devkit_archive`, run on the fixture packed as the devkit tarball) gives the same
    WordNet id per validation image as vlkit's labels."""
    imagenet = pytest.importorskip("torchvision.datasets.imagenet")
    import tarfile

    import torch

    root = write_imagenet_flat_devkit(tmp_path)
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(root / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    monkeypatch.setattr(imagenet, "check_integrity", lambda *args, **kwargs: True)
    imagenet.parse_devkit_archive(str(root))
    _, val_wnids = torch.load(root / "meta.bin", weights_only=False)
    ds = classification_dataset("imagenet1k", root)
    wnids = imagenet_wnids()
    for path, label in zip(ds.paths, ds.targets, strict=True):
        number = int(path.stem.rsplit("_", 1)[1])
        assert wnids[label] == val_wnids[number - 1]


def test_retrieval_same_as_clip_benchmark(tmp_path, builder):
    expected = [(name, captions) for _, name, captions in RETRIEVAL_IMAGES]
    coco_cb = write_coco_clip_benchmark(tmp_path / "coco_cb")
    reference = builder("mscoco_captions", coco_cb, task="zeroshot_retrieval")
    ours = RETRIEVAL["mscoco_captions"](coco_cb)
    assert len(ours) == len(reference) == 3
    for i in range(len(ours)):
        image, captions = ours[i]
        ref_image, ref_captions = reference[i]
        assert captions == ref_captions and _pixels(image) == _pixels(ref_image)
    assert [p.name for p in ours.image_paths] == sorted(n for n, _ in expected)  # sorted COCO ids

    flickr_cb = write_flickr30k_clip_benchmark(tmp_path / "flickr_cb")
    reference = builder("flickr30k", flickr_cb, task="zeroshot_retrieval")
    ours = RETRIEVAL["flickr30k"](flickr_cb)
    assert [(p.name, c) for p, c in zip(ours.image_paths, ours.image_captions, strict=True)] == [
        (name, caps) for name, caps in reference.data
    ]
    assert ours.image_captions[0][1] == "A person, on a bicycle, rides."  # comma kept

    # Karpathy's own split files give the same pairs (in the file's order).
    coco = RETRIEVAL["mscoco_captions"](write_coco_karpathy(tmp_path / "coco"))
    assert [
        (p.name, c) for p, c in zip(coco.image_paths, coco.image_captions, strict=True)
    ] == expected
    assert coco.image_paths[0] == tmp_path / "coco" / "val2014" / expected[0][0]
    assert coco.text_image_ids == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2]
    assert coco.captions[2:4] == ["A young girl eats cake.", "Girl with cake"]
    train = RETRIEVAL["mscoco_captions"](tmp_path / "coco", split="train")  # restval is train
    assert train.image_captions == [["A train image."]]
    assert len(karpathy_dataset("coco", tmp_path / "coco", limit=2)) == 2
    flickr = karpathy_dataset("flickr30k", write_flickr30k_karpathy(tmp_path / "flickr"))
    assert flickr.image_captions == [c for _, c in expected] and len(flickr.captions) == 10


def test_limit_spreads_over_the_dataset(roots):
    full = classification_dataset("imagenet-r", roots["imagenet-r"])
    few = classification_dataset("imagenet-r", roots["imagenet-r"], limit=4)
    assert len(full) == 202 and len(few) == 4  # 200 classes, the last one with 3 images
    assert few.paths == [full.paths[i] for i in (0, 50, 101, 151)]
    assert few.targets == [0, 50, 101, 151]
    assert few.classes == full.classes and few.templates == full.templates
    assert len(classification_dataset("dtd", roots["dtd"], limit=100)) == 4
    with pytest.raises(ValueError, match="limit=0"):
        classification_dataset("dtd", roots["dtd"], limit=0)


def test_transform_and_dataloader(roots):
    torch = pytest.importorskip("torch")
    ds = classification_dataset("cifar10", roots["cifar10"])
    ds.transform = lambda image: torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == ds.targets[:4]


@pytest.mark.parametrize("name", [*CLASSIFICATION, *RETRIEVAL])
def test_missing_dataset_is_one_line_naming_the_layout(name, tmp_path):
    build = CLASSIFICATION.get(name) or RETRIEVAL[name]
    layout = LAYOUTS.get(name) or RETRIEVAL_LAYOUTS[name]
    with pytest.raises(DatasetMissing) as caught:
        build(tmp_path / "absent")
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)
    assert "\n" not in message and str(tmp_path / "absent") in message and layout in message
    assert "http" in layout


def test_wrong_split_and_foreign_folder(roots, tmp_path):
    with pytest.raises(ValueError, match=r"split 'val' is not available \(allowed: train, test\)"):
        classification_dataset("cifar10", roots["cifar10"], split="val")
    with pytest.raises(ValueError, match="unknown classification dataset 'imagenet'"):
        classification_dataset("imagenet", roots["cifar10"])
    # A folder outside ImageNet-A's 200 classes is named, not silently mislabelled.
    write_wnid_folders(tmp_path, ["n01440764"])
    with pytest.raises(ValueError, match="n01440764 is not one of the dataset's 200 WordNet ids"):
        classification_dataset("imagenet-a", tmp_path)
    # Images of a partial ImageNet-R copy keep their 200-class labels.
    write_wnid_folders(tmp_path / "r", ["n01443537", "n12267677"])
    assert classification_dataset("imagenet-r", tmp_path / "r").targets == [0, 199]


class _RunsCode:
    """Unpickling this calls os.system: what a hostile "CIFAR batch" can hold."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_never_run_code(tmp_path, monkeypatch, protocol):
    import pickle

    write_cifar10(tmp_path)
    base = tmp_path / "cifar-10-batches-py"
    # Arrays pickled with any protocol (numpy 2's `_frombuffer` at 5) still read.
    entry = pickle.loads((base / "test_batch").read_bytes())
    (base / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))
    assert len(classification_dataset("cifar10", tmp_path)) == len(entry["labels"])
    monkeypatch.chdir(tmp_path)
    entry["batch_label"] = _RunsCode()
    (base / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR batch file \(posix.system"):
        classification_dataset("cifar10", tmp_path)
    assert not (tmp_path / "PWNED").exists()
