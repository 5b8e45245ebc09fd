"""ImageNet-1k validation and its robustness variants (V2, Sketch, A, R) from their folders.

Labels are the standard ImageNet indices (the 1,000 WordNet ids sorted, the order of OpenAI's
class names), or the index in the 200-class subset for ImageNet-A / -R, whose class names are the
ImageNet names of those 200 ids (CLIP_benchmark's builder masks `all_imagenet_wordnet_ids` the
same way). A label comes from the folder's WordNet id rather than its rank among the folders
present, so a partial copy is still labelled correctly; with every folder present this is exactly
torchvision's ImageFolder index that CLIP_benchmark uses.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from vlkit.data.benchmarks.names import classnames, imagenet_wnids, templates
from vlkit.data.benchmarks.samples import (
    IMG_EXTENSIONS,
    ClassificationDataset,
    image_folder_files,
    missing,
    open_raw,
)

__all__ = [
    "LAYOUTS",
    "imagenet1k",
    "imagenet_a",
    "imagenet_r",
    "imagenet_sketch",
    "imagenetv2",
]

_IMAGENET = "https://image-net.org/download"
LAYOUTS = {
    "imagenet1k": (
        "val/<wnid>/*.JPEG, or val/*.JPEG with LOC_val_solution.csv (Kaggle's ImageNet "
        "Object Localization Challenge) or with ILSVRC2012_devkit_t12/data/{meta.mat,"
        "ILSVRC2012_validation_ground_truth.txt} (train split: train/<wnid>/*.JPEG); "
        f"ILSVRC2012_img_val.tar and the devkit from {_IMAGENET}"
    ),
    "imagenetv2": (
        "ImageNetV2-matched-frequency/<class index 0-999>/*.jpeg (imagenetv2-matched-frequency"
        ".tar.gz from https://huggingface.co/datasets/vaishaal/ImageNetV2)"
    ),
    "imagenet_sketch": (
        "<wnid>/*.JPEG, 1,000 folders (the sketch/ folder of ImageNet-Sketch.zip from "
        "https://github.com/HaohanWang/ImageNet-Sketch)"
    ),
    "imagenet-a": (
        "<wnid>/*.jpg, 200 folders (imagenet-a.tar from "
        "https://github.com/hendrycks/natural-adv-examples)"
    ),
    "imagenet-r": (
        "<wnid>/*.jpg, 200 folders (imagenet-r.tar from https://github.com/hendrycks/imagenet-r)"
    ),
}

_WNID = re.compile(r"n\d{8}")
_SPLITS = {"test": "val", "val": "val", "train": "train"}


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(
            f"{name}: split {split!r} is not available (allowed: {', '.join(allowed)})"
        )


def _wnid_dirs(directory: Path) -> bool:
    return directory.is_dir() and any(
        p.is_dir() and _WNID.fullmatch(p.name) for p in directory.iterdir()
    )


def _folder_samples(name: str, directory: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """Files and labels of a `<wnid>/*` tree; a folder outside `wnids` is an error."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    for folder, files in image_folder_files(directory):
        if folder not in index:
            raise ValueError(
                f"{name}: folder {directory / folder} is not one of the dataset's "
                f"{len(wnids)} WordNet ids"
            )
        paths += files
        labels += [index[folder]] * len(files)
    if not paths:
        raise missing(name, directory, LAYOUTS[name], "the class folders hold no images")
    return paths, labels


def _flat_labels(name: str, root: Path, files: list[Path]) -> list[int]:
    """Labels of a flat val folder from LOC_val_solution.csv or the devkit's ground truth."""
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    solution = root / "LOC_val_solution.csv"
    devkit = next(
        (
            d
            for d in (root / "ILSVRC2012_devkit_t12" / "data", root / "data", root)
            if (d / "ILSVRC2012_validation_ground_truth.txt").is_file()
            and (d / "meta.mat").is_file()
        ),
        None,
    )
    if solution.is_file():
        # Kaggle: "ImageId,PredictionString" with boxes "wnid x0 y0 x1 y1 ..."; the class is the
        # first box's WordNet id (every box of an image has the same class).
        with open(solution, newline="") as f:
            rows = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
        wnid_of = {p: rows.get(p.stem) for p in files}
        source = solution
    elif devkit is not None:
        wnid_of = _devkit_wnids(devkit, files)
        source = devkit / "ILSVRC2012_validation_ground_truth.txt"
    else:
        raise missing(name, root, LAYOUTS[name], "a flat val/ folder but no labels file")
    unlabelled = [p.name for p, w in wnid_of.items() if w is None]
    if unlabelled:
        raise ValueError(
            f"{name}: {source} has no label for {unlabelled[0]} ({len(unlabelled)} images)"
        )
    return [index[wnid_of[p]] for p in files]


def _devkit_wnids(devkit: Path, files: list[Path]) -> dict[Path, str | None]:
    """WordNet id of ILSVRC2012_val_%08d.JPEG from the ground truth line of that number, whose
    ILSVRC2012_ID maps to a WordNet id in meta.mat (torchvision's `parse_meta_mat`)."""
    try:
        from scipy.io import loadmat
    except ImportError as error:  # scipy comes with scikit-learn; not a vlkit dependency
        raise ValueError(
            "reading the ImageNet devkit's meta.mat needs scipy: pip install scipy"
        ) from error
    synsets = loadmat(str(devkit / "meta.mat"), squeeze_me=True)["synsets"]
    idx_to_wnid = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}
    truth = (devkit / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    out: dict[Path, str | None] = {}
    for path in files:
        match = re.search(r"(\d+)$", path.stem)
        number = int(match.group(1)) if match else 0
        out[path] = idx_to_wnid.get(int(truth[number - 1])) if 0 < number <= len(truth) else None
    return out


def imagenet1k(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """ImageNet-1k validation ("test", as CLIP_benchmark names it) or train split."""
    name = "imagenet1k"
    _check_split(name, split, tuple(_SPLITS))
    root = Path(root)
    sub = _SPLITS[split]
    candidates = (root / sub, root / "ILSVRC" / "Data" / "CLS-LOC" / sub)
    directory = next((d for d in candidates if d.is_dir()), None)
    if directory is None:
        raise missing(name, root, LAYOUTS[name], f"no {sub}/ folder")
    if _wnid_dirs(directory):
        paths, labels = _folder_samples(name, directory, imagenet_wnids())
    else:
        if sub == "train":
            raise missing(name, directory, LAYOUTS[name], "no <wnid> folders")
        # torchvision's parse_val_archive lists the flat folder sorted by name.
        paths = sorted(p for p in directory.iterdir() if p.name.lower().endswith(IMG_EXTENSIONS))
        if not paths:
            raise missing(name, directory, LAYOUTS[name], "no images")
        labels = _flat_labels(name, root, paths)
    return ClassificationDataset(
        name, paths, labels, classnames("imagenet1k"), templates(name)
    ).limited(limit)


def imagenetv2(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """ImageNetV2 matched-frequency: `<label>/*.jpeg`, the folder name is the ImageNet index.

    CLIP_benchmark globs "**/*.jpeg" (filesystem order); here the files are sorted by label,
    then name. Images are returned in their own mode, as CLIP_benchmark opens them.
    """
    name = "imagenetv2"
    _check_split(name, split, ("test",))
    root = Path(root)
    candidates = (
        root / "ImageNetV2-matched-frequency",
        root / "imagenetv2-matched-frequency-format-val",
        root,
    )
    directory = next((d for d in candidates if (d / "0").is_dir()), None)
    if directory is None:
        raise missing(name, root, LAYOUTS[name])
    labelled = sorted(
        (int(p.parent.name), p.name, p)
        for p in directory.glob("**/*.jpeg")
        if p.parent.name.isdigit() and p.parent.parent == directory
    )
    bad = [label for label, _, _ in labelled if not 0 <= label < 1000]
    if bad:
        raise ValueError(f"{name}: folder {directory / str(bad[0])} is not a class index 0-999")
    if not labelled:
        raise missing(name, directory, LAYOUTS[name], "no .jpeg files")
    return ClassificationDataset(
        name,
        [p for _, _, p in labelled],
        [label for label, _, _ in labelled],
        classnames("imagenet1k"),
        templates(name),
        loader=open_raw,
    ).limited(limit)


def _wnid_folder_dataset(
    name: str, root: Path, inner: str, subset: str, limit: int | None, split: str
) -> ClassificationDataset:
    _check_split(name, split, ("test",))
    root = Path(root)
    directory = next((d for d in (root, root / inner) if _wnid_dirs(d)), None)
    if directory is None:
        raise missing(name, root, LAYOUTS[name])
    wnids = imagenet_wnids(subset)
    paths, labels = _folder_samples(name, directory, wnids)
    every = imagenet_wnids()
    all_names = dict(zip(every, classnames("imagenet1k"), strict=True))
    return ClassificationDataset(
        name, paths, labels, [all_names[w] for w in wnids], templates(name)
    ).limited(limit)


def imagenet_sketch(
    root: Path, limit: int | None = None, split: str = "test"
) -> ClassificationDataset:
    """ImageNet-Sketch: `<wnid>/*.JPEG` for the 1,000 ImageNet classes (root or root/sketch)."""
    return _wnid_folder_dataset("imagenet_sketch", root, "sketch", "imagenet1k", limit, split)


def imagenet_a(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """ImageNet-A: `<wnid>/*.jpg` for its 200 classes (root or root/imagenet-a)."""
    return _wnid_folder_dataset("imagenet-a", root, "imagenet-a", "imagenet-a", limit, split)


def imagenet_r(root: Path, limit: int | None = None, split: str = "test") -> ClassificationDataset:
    """ImageNet-R: `<wnid>/*.jpg` for its 200 classes (root or root/imagenet-r)."""
    return _wnid_folder_dataset("imagenet-r", root, "imagenet-r", "imagenet-r", limit, split)
