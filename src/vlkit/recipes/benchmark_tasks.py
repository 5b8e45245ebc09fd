"""The tasks `vlkit benchmark` knows: name -> what it measures, where its data lives, how it reads.

    TASKS["cifar10"]            zero-shot classification of CIFAR-10's test set
    TASKS["cifar10_linear_probe"]  a linear probe on CIFAR-10's frozen train features
    TASKS["coco_retrieval"]     image <-> text retrieval on the COCO Karpathy 5k test split
    TASKS["vqav2"], ...         generative tasks (run by recipes/generative_benchmark.py)

Each task's data sits under `--data-root DIR` in `DIR/<data_dir>/` in the dataset's own standard
layout (`layout` says which, and where to get it), or wherever `--data PATH` points. Its `dataset`
callable reads that directory: `dataset(root, limit, split="test")` (the adapters of
`vlkit.data.benchmarks`); a missing dataset raises FileNotFoundError with one line naming the
expected layout, which the runner records as the task's result before it goes on.

`dataset_name` is the name CLIP_benchmark gives the dataset (`clip_benchmark eval --dataset`),
which the result record carries, so that vlkit's results.jsonl reads like CLIP_benchmark's JSON.

Published numbers (`PUBLISHED`): ImageNet-1k and the classification sets for OpenAI's CLIP
ViT-B/32, ViT-B/16 and ViT-L/14, zero-shot top-1 as CLIP_benchmark measured them, from open_clip's
results table (mlfoundations/open_clip, docs/openclip_results.csv); the course quotes the same
ImageNet numbers (63.2 / 68.3 / 75.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# kind -> CLIP_benchmark's task name in its result records ("task").
KINDS = {
    "zeroshot": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "linear_probe": "linear_probe",
    "vqa": "vqa",
    "caption": "captioning",
    "mmvet": "mmvet",
}
CONTRASTIVE_KINDS = ("zeroshot", "retrieval", "linear_probe")

DatasetReader = Callable[..., Any]  # (root: Path, limit: int | None, split: str = "test") -> data


@dataclass(frozen=True)
class BenchmarkTask:
    """One benchmark task.

    Attributes:
        name: The name `--tasks` takes.
        kind: "zeroshot", "retrieval", "linear_probe", "vqa", "caption" or "mmvet".
        dataset: Reads the task's data directory: `dataset(root, limit, split="test")`.
        layout: One line: the on-disk layout expected under the data directory, and where to get it.
        dataset_name: CLIP_benchmark's (or the benchmark's) name of the dataset, for the record.
        data_dir: The sub-directory of `--data-root` (default: the dataset's task name).
        published: {checkpoint key: published value of the task's main metric} (`PUBLISHED_SOURCE`).
        metric: The record's main metric (the report's first column).
    """

    name: str
    kind: str
    dataset: DatasetReader
    layout: str
    dataset_name: str
    data_dir: str
    published: dict[str, float] = field(default_factory=dict)
    metric: str = "acc1"

    @property
    def clip_benchmark_task(self) -> str:
        """CLIP_benchmark's name of the task ("zeroshot_classification", ...)."""
        return KINDS[self.kind]


def _classification(dataset: str) -> DatasetReader:
    """CLIP_benchmark's `dataset` read by `vlkit.data.benchmarks.classification`. The adapters
    import torchvision formats, pyarrow, ...: imported when a task reads its data, not before."""

    def read(root: Path, limit: int | None = None, split: str = "test") -> Any:
        from vlkit.data.benchmarks.classification import CLASSIFICATION

        return CLASSIFICATION[dataset](Path(root), limit=limit, split=split)

    read.__name__ = f"classification({dataset!r})"
    return read


def _retrieval(dataset: str) -> DatasetReader:
    """A Karpathy test split (`vlkit.data.benchmarks.karpathy`), imported when read."""

    def read(root: Path, limit: int | None = None, split: str = "test") -> Any:
        from vlkit.data.benchmarks.karpathy import RETRIEVAL

        return RETRIEVAL[dataset](Path(root), limit=limit, split=split)

    read.__name__ = f"retrieval({dataset!r})"
    return read


def _generative(task: str) -> DatasetReader:
    """A generative set (`vlkit.data.benchmarks.vqa_sets`; one split each), imported when read."""

    def read(root: Path, limit: int | None = None, split: str = "test") -> Any:
        from vlkit.data.benchmarks.vqa_sets import DATASETS

        return DATASETS[task](Path(root), limit=limit)

    read.__name__ = f"generative({task!r})"
    return read


def _mmvet(root: Path, limit: int | None = None, split: str = "test") -> Any:
    """MM-Vet (`vlkit.data.benchmarks.mmvet`; one split), imported when read."""
    from vlkit.data.benchmarks.mmvet import mmvet_dataset

    return mmvet_dataset(Path(root), limit=limit)


# The CLIP paper checkpoints as `vlkit benchmark --model` names them (hub ids, open_clip names).
CHECKPOINT_KEYS = {
    "openai/clip-vit-base-patch32": "ViT-B-32/openai",
    "ViT-B-32/openai": "ViT-B-32/openai",
    "openai/clip-vit-base-patch16": "ViT-B-16/openai",
    "ViT-B-16/openai": "ViT-B-16/openai",
    "openai/clip-vit-large-patch14": "ViT-L-14/openai",
    "ViT-L-14/openai": "ViT-L-14/openai",
}
PUBLISHED_SOURCE = "open_clip docs/openclip_results.csv (CLIP_benchmark zero-shot acc1)"
# dataset -> (ViT-B-32, ViT-B-16, ViT-L-14), OpenAI weights, copied from that CSV.
_OPENAI_ACC1 = {
    "imagenet1k": (0.6332, 0.6834, 0.7554),
    "imagenetv2": (0.5592, 0.6188, 0.6983),
    "imagenet_sketch": (0.4229, 0.4824, 0.5959),
    "imagenet-a": (0.3155, 0.4995, 0.7075),
    "imagenet-r": (0.6933, 0.7770, 0.8784),
    "cifar10": (0.8983, 0.9077, 0.9559),
    "cifar100": (0.6423, 0.6695, 0.7582),
    "stl10": (0.9713, 0.9825, 0.9936),
    "food101": (0.8400, 0.8872, 0.9305),
    "pets": (0.8700, 0.8886, 0.9323),
    "flowers": (0.6670, 0.6907, 0.7923),
    "dtd": (0.4436, 0.4495, 0.5537),
    "eurosat": (0.5044, 0.5594, 0.6263),
    "mnist": (0.4839, 0.5135, 0.7634),
}


def _published(dataset: str) -> dict[str, float]:
    values = _OPENAI_ACC1.get(dataset)
    if values is None:
        return {}
    return dict(zip(("ViT-B-32/openai", "ViT-B-16/openai", "ViT-L-14/openai"), values, strict=True))


# (task name, CLIP_benchmark dataset name, reader module, reader function, reader args, layout)
_CLASSIFICATION = (
    ("imagenet1k", "imagenet1k", "imagenet1k/val/<wnid>/*.JPEG, or imagenet1k/val/*.JPEG + "
     "imagenet1k/LOC_val_solution.csv, or the devkit ground truth (image-net.org)"),
    ("imagenetv2", "imagenetv2", "imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg "
     "(github.com/modestyachts/ImageNetV2)"),
    ("imagenet_sketch", "imagenet_sketch", "imagenet_sketch/<wnid>/*.JPEG (github.com/HaohanWang/ImageNet-Sketch)"),
    ("imagenet-a", "imagenet-a", "imagenet-a/<wnid>/*.jpg, 200 classes (github.com/hendrycks/natural-adv-examples)"),
    ("imagenet-r", "imagenet-r", "imagenet-r/<wnid>/*.jpg, 200 classes (github.com/hendrycks/imagenet-r)"),
    ("cifar10", "cifar10", "cifar10/cifar-10-batches-py/ (torchvision CIFAR10, cs.toronto.edu/~kriz/cifar.html)"),
    ("cifar100", "cifar100", "cifar100/cifar-100-python/ (torchvision CIFAR100, cs.toronto.edu/~kriz/cifar.html)"),
    ("stl10", "stl10", "stl10/stl10_binary/ (torchvision STL10, cs.stanford.edu/~acoates/stl10)"),
    ("food101", "food101", "food101/food-101/ (torchvision Food101)"),
    ("pets", "pets", "pets/oxford-iiit-pet/ (torchvision OxfordIIITPet)"),
    ("flowers", "flowers", "flowers/flowers-102/ (torchvision Flowers102)"),
    ("dtd", "dtd", "dtd/dtd/ (torchvision DTD)"),
    ("eurosat", "eurosat", "eurosat/eurosat/2750/ (torchvision EuroSAT)"),
    ("mnist", "mnist", "mnist/MNIST/raw/ (torchvision MNIST)"),
)  # fmt: skip
# Linear probes need a train split: the torchvision sets that have one.
_PROBED = ("cifar10", "cifar100", "stl10", "food101", "pets", "flowers", "dtd", "eurosat", "mnist")


def _build_tasks() -> dict[str, BenchmarkTask]:
    tasks: dict[str, BenchmarkTask] = {}
    for name, dataset_name, layout in _CLASSIFICATION:
        reader = _classification(dataset_name)
        tasks[name] = BenchmarkTask(name, "zeroshot", reader, layout, dataset_name, name,
                                    _published(dataset_name))  # fmt: skip
        if name in _PROBED:
            probe = f"{name}_linear_probe"
            tasks[probe] = BenchmarkTask(probe, "linear_probe", reader, layout, dataset_name, name,
                                         metric="lp_acc1")  # fmt: skip
    retrieval = (
        ("coco_retrieval", "mscoco_captions", "coco", "coco",
         "coco/dataset_coco.json (Karpathy splits) + coco/val2014/*.jpg (cocodataset.org)"),
        ("flickr30k_retrieval", "flickr30k", "flickr30k", "flickr30k",
         "flickr30k/dataset_flickr30k.json (Karpathy splits) + flickr30k/flickr30k-images/*.jpg"),
    )  # fmt: skip
    for name, dataset_name, data_dir, _, layout in retrieval:
        reader = _retrieval(dataset_name)
        tasks[name] = BenchmarkTask(name, "retrieval", reader, layout, dataset_name, data_dir,
                                    metric="image_retrieval_recall@5")  # fmt: skip
    generative = (
        ("vqav2", "vqa", "vqav2", "vqav2/v2_OpenEnded_mscoco_val2014_questions.json + "
         "v2_mscoco_val2014_annotations.json + val2014/ (visualqa.org)", "vqa_accuracy"),
        ("textvqa", "vqa", "textvqa", "textvqa/TextVQA_0.5.1_val.json + train_images/ "
         "(textvqa.org)", "vqa_accuracy"),
        ("gqa", "vqa", "gqa", "gqa/testdev_balanced_questions.json + images/ "
         "(cs.stanford.edu/people/dorarad/gqa)", "exact_match"),
        ("coco_caption", "caption", "coco", "coco/dataset_coco.json (Karpathy test) + val2014/",
         "cider_d"),
    )  # fmt: skip
    for name, kind, data_dir, layout, metric in generative:
        reader = _generative(name)
        tasks[name] = BenchmarkTask(name, kind, reader, layout, name, data_dir, metric=metric)
    tasks["mmvet"] = BenchmarkTask(
        "mmvet", "mmvet", _mmvet,
        "mmvet/mm-vet.json + mmvet/images/ (github.com/yuweihao/MM-Vet)", "mmvet", "mmvet",
        metric="total",
    )  # fmt: skip
    return tasks


TASKS: dict[str, BenchmarkTask] = _build_tasks()


def resolve_tasks(names: str | list[str]) -> list[BenchmarkTask]:
    """The tasks of a comma-separated list (or a list), in order, each once.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError("--tasks: empty; name at least one task")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"--tasks: unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
    return [TASKS[n] for n in dict.fromkeys(names)]


def checkpoint_key(model: str) -> str | None:
    """The `PUBLISHED` key of a known checkpoint name (a hub id, an open_clip name), else None."""
    text = str(model).rstrip("/")
    for name, key in CHECKPOINT_KEYS.items():
        if text == name or text.endswith("/" + name.split("/")[-1]) and "openai" in text:
            return key
    return None


__all__ = [
    "CHECKPOINT_KEYS",
    "CONTRASTIVE_KINDS",
    "KINDS",
    "PUBLISHED_SOURCE",
    "TASKS",
    "BenchmarkTask",
    "checkpoint_key",
    "resolve_tasks",
]
