"""CIFAR-10/100, STL-10, Food-101, Oxford-IIIT Pets, Flowers-102, DTD, EuroSAT and MNIST as
torchvision stores them (`download=False`), read without torchvision.

Each reader opens the files torchvision's dataset class opens, in its order, with its labels and
class names as CLIP_benchmark's builder sets them (its own list for Flowers, EuroSAT and MNIST,
the dataset's for the others, Food-101's with "_" -> " "). Unlike torchvision, nothing is
checksummed (an MD5 over the files costs time at every start and says nothing a bad label would
not), and a missing file raises `DatasetMissing` naming the expected layout.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from vlkit.data.benchmarks.names import classnames, templates
from vlkit.data.benchmarks.samples import (
    ArrayImages,
    ClassificationDataset,
    image_folder_files,
    missing,
)

__all__ = [
    "LAYOUTS",
    "cifar10",
    "cifar100",
    "dtd",
    "eurosat",
    "flowers",
    "food101",
    "mnist",
    "pets",
    "stl10",
]

LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (the python version, "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)"
    ),
    "cifar100": (
        "cifar-100-python/{train,test,meta} (the python version, "
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)"
    ),
    "stl10": (
        "stl10_binary/{test_X.bin,test_y.bin,train_X.bin,train_y.bin,class_names.txt} "
        "(http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz)"
    ),
    "food101": (
        "food-101/{meta/test.json,meta/train.json,images/<class>/<id>.jpg} "
        "(http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz)"
    ),
    "pets": (
        "oxford-iiit-pet/{images/*.jpg,annotations/test.txt,annotations/trainval.txt} "
        "(images.tar.gz + annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/)"
    ),
    "flowers": (
        "flowers-102/{jpg/image_00001.jpg...,imagelabels.mat,setid.mat} (102flowers.tgz + the "
        "two .mat files from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/)"
    ),
    "dtd": (
        "dtd/dtd/{images/<class>/*.jpg,labels/test1.txt,labels/train1.txt} "
        "(dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/, into dtd/)"
    ),
    "eurosat": (
        "eurosat/2750/<class>/*.jpg (EuroSAT.zip, RGB, from https://github.com/phelber/EuroSAT)"
    ),
    "mnist": (
        "MNIST/raw/{t10k,train}-{images-idx3,labels-idx1}-ubyte (uncompressed, "
        "https://ossci-datasets.s3.amazonaws.com/mnist/)"
    ),
}


def _split(name: str, split: str, allowed: tuple[str, ...]) -> str:
    if split not in allowed:
        raise ValueError(
            f"{name}: split {split!r} is not available (allowed: {', '.join(allowed)})"
        )
    return split


def _need(name: str, root: Path, *files: Path) -> None:
    absent = [f for f in files if not f.exists()]
    if absent:
        raise missing(name, root, LAYOUTS[name], f"no {absent[0]}")


# What CIFAR's pickles may name: numpy arrays and dtypes (Python 2's and 3's spellings, numpy 1's
# `numpy.core` and numpy 2's `numpy._core`), nothing that runs code.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings and numpy arrays only: a data file never
    runs code (plain `pickle.load`, as torchvision uses, would call whatever the file names)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part")
        if module.startswith("numpy.core."):  # numpy 2 keeps numpy.core only as a shim
            module = "numpy._core." + module.removeprefix("numpy.core.")
            try:
                return super().find_class(module, name)
            except ModuleNotFoundError:  # numpy 1
                module = "numpy.core." + module.removeprefix("numpy._core.")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    """A CIFAR pickle (torchvision's latin1 decoding), refused in one line if it holds anything
    but plain containers and numpy arrays."""
    with open(path, "rb") as f:
        try:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not a CIFAR batch file ({error})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: not a CIFAR batch file (a {type(entry).__name__}, not a dict)")
    return entry


def _cifar(name: str, root: Path, limit: int | None, split: str) -> ClassificationDataset:
    _split(name, split, ("train", "test"))
    root = Path(root)
    if name == "cifar10":
        folder, meta, key, label_key = (
            "cifar-10-batches-py",
            "batches.meta",
            "label_names",
            "labels",
        )
        batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    else:
        folder, meta, key, label_key = "cifar-100-python", "meta", "fine_label_names", "fine_labels"
        batches = [split]
    base = root / folder
    _need(name, root, *(base / b for b in [*batches, meta]))
    data, labels = [], []
    for batch in batches:  # torchvision's CIFAR10.__init__: latin1 pickles, CHW rows -> HWC
        entry = _read_pickle(base / batch)
        data.append(entry["data"])
        labels += entry[label_key]
    images = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
    classes = _read_pickle(base / meta)[key]
    return ClassificationDataset(
        name, range(len(labels)), labels, classes, templates(name), ArrayImages(images)
    ).limited(limit)


def cifar10(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """CIFAR-10 (torchvision's CIFAR10 files)."""
    return _cifar("cifar10", root, limit, split)


def cifar100(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """CIFAR-100 fine labels (torchvision's CIFAR100 files)."""
    return _cifar("cifar100", root, limit, split)


def stl10(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """STL-10 test or train (labels 1-10 on disk, 0-9 here, as torchvision)."""
    name = "stl10"
    _split(name, split, ("train", "test"))
    base = Path(root) / "stl10_binary"
    x, y, names = base / f"{split}_X.bin", base / f"{split}_y.bin", base / "class_names.txt"
    _need(name, Path(root), x, y, names)
    labels = np.fromfile(y, dtype=np.uint8).astype(np.int64) - 1
    # Column-major 3x96x96 per image: torchvision transposes (0, 1, 3, 2) then CHW -> HWC, i.e.
    # pixel (row, col, channel) = stored[channel, col, row].
    images = np.fromfile(x, dtype=np.uint8).reshape(-1, 3, 96, 96).transpose((0, 3, 2, 1))
    return ClassificationDataset(
        name,
        range(len(labels)),
        labels.tolist(),
        names.read_text().splitlines(),
        templates(name),
        ArrayImages(images),
    ).limited(limit)


def food101(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """Food-101: meta/<split>.json {class: ["class/id", ...]}, classes sorted by name."""
    name = "food101"
    _split(name, split, ("train", "test"))
    base = Path(root) / "food-101"
    meta = base / "meta" / f"{split}.json"
    _need(name, Path(root), meta, base / "images")
    metadata = json.loads(meta.read_text())
    classes = sorted(metadata)
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for label, relative in metadata.items():
        labels += [index[label]] * len(relative)
        paths += [base / "images" / f"{r}.jpg" for r in relative]
    return ClassificationDataset(
        name, paths, labels, [c.replace("_", " ") for c in classes], templates(name)
    ).limited(limit)


def pets(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """Oxford-IIIT Pets: annotations/<split>.txt "Image_id class species breed" (1-based class).

    Class names as torchvision derives them: the image id's breed part, title-cased words.
    """
    name = "pets"
    split = "trainval" if split == "train" else split
    _split(name, split, ("trainval", "test"))
    base = Path(root) / "oxford-iiit-pet"
    listing = base / "annotations" / f"{split}.txt"
    _need(name, Path(root), listing, base / "images")
    ids, labels = [], []
    for line in listing.read_text().splitlines():
        if line.strip():
            image_id, label, *_ = line.split()
            ids.append(image_id)
            labels.append(int(label) - 1)
    pairs = sorted(
        {(i.rsplit("_", 1)[0], label) for i, label in zip(ids, labels, strict=True)},
        key=lambda p: p[1],
    )
    classes = [" ".join(part.title() for part in raw.split("_")) for raw, _ in pairs]
    return ClassificationDataset(
        name, [base / "images" / f"{i}.jpg" for i in ids], labels, classes, templates(name)
    ).limited(limit)


def flowers(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """Flowers-102: setid.mat's tstid/trnid/valid image numbers, imagelabels.mat (1-based)."""
    name = "flowers"
    key = {"test": "tstid", "train": "trnid", "val": "valid"}[
        _split(name, split, ("train", "val", "test"))
    ]
    base = Path(root) / "flowers-102"
    _need(name, Path(root), base / "setid.mat", base / "imagelabels.mat", base / "jpg")
    try:
        from scipy.io import loadmat
    except ImportError as error:  # scipy comes with scikit-learn; not a vlkit dependency
        raise ValueError(
            "reading Flowers-102's .mat files needs scipy: pip install scipy"
        ) from error
    ids = np.atleast_1d(loadmat(str(base / "setid.mat"), squeeze_me=True)[key]).tolist()
    all_labels = np.atleast_1d(loadmat(str(base / "imagelabels.mat"), squeeze_me=True)["labels"])
    label_of = dict(enumerate((all_labels - 1).tolist(), 1))
    return ClassificationDataset(
        name,
        [base / "jpg" / f"image_{i:05d}.jpg" for i in ids],
        [label_of[i] for i in ids],
        classnames(name),
        templates(name),
    ).limited(limit)


def dtd(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """DTD partition 1: labels/<split>1.txt lines "class/file.jpg", classes sorted."""
    name = "dtd"
    _split(name, split, ("train", "val", "test"))
    data = Path(root) / "dtd" / "dtd"
    listing = data / "labels" / f"{split}1.txt"
    _need(name, Path(root), listing, data / "images")
    rows = [line.strip().split("/") for line in listing.read_text().splitlines() if line.strip()]
    classes = sorted({cls for cls, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    return ClassificationDataset(
        name,
        [data / "images" / cls / file for cls, file in rows],
        [index[cls] for cls, _ in rows],
        classes,
        templates(name),
    ).limited(limit)


def eurosat(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """EuroSAT RGB: the whole eurosat/2750 ImageFolder (CLIP_benchmark ignores the split)."""
    name = "eurosat"
    folder = Path(root) / "eurosat" / "2750"
    _need(name, Path(root), folder)
    listing = image_folder_files(folder)
    names = classnames(name)
    if len(listing) != len(names):
        raise ValueError(
            f"{name}: {folder} has {len(listing)} class folders, expected {len(names)}"
        )
    paths = [p for _, files in listing for p in files]
    labels = [i for i, (_, files) in enumerate(listing) for _ in files]
    return ClassificationDataset(name, paths, labels, names, templates(name)).limited(limit)


def _idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): big-endian magic, dims, then uint8 data."""
    raw = path.read_bytes()
    found, ndim = int.from_bytes(raw[:4], "big"), raw[3]
    if found != magic:
        raise ValueError(f"mnist: {path} is not an IDX file of magic {magic} (found {found})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """MNIST from torchvision's MNIST/raw IDX files; images are "L" mode as torchvision's."""
    name = "mnist"
    prefix = "t10k" if _split(name, split, ("train", "test")) == "test" else "train"
    raw = Path(root) / "MNIST" / "raw"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    _need(name, Path(root), images, labels)
    targets = _idx(labels, 2049).astype(np.int64).tolist()
    return ClassificationDataset(
        name,
        range(len(targets)),
        targets,
        classnames(name),
        templates(name),
        ArrayImages(_idx(images, 2051)),
    ).limited(limit)
