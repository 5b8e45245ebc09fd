"""Training data batched by the group-balanced sampler, with the weights saved in the run.

`data.balance_by=COLUMN` (`vlkit.training.config.DataConfig`) makes `recipes/clip_run.py` wrap
its dataset with `balanced_training_data`: the groups come from the dataset's metadata
(`group_labels`), the inverse-frequency weights from `balanced_sampler`, and the batches from
`BalancedBatchSampler` (exact mid-epoch resume, as the plain sampler).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from vlkit.data.datasets.easy_vqa import EasyVQACaptions
from vlkit.data.datasets.image_text import ImageTextDataset
from vlkit.data.datasets.metadata_columns import read_metadata_column
from vlkit.hub.weights import atomic_write
from vlkit.overrides import ConfigError
from vlkit.training.balanced_sampler import inverse_frequency_weights
from vlkit.training.data import MapStyleData

__all__ = ["BALANCE_FILE", "balanced_training_data", "group_labels"]

BALANCE_FILE = "balance.json"
# easy-VQA's own labels, for data.source=easy_vqa.
_EASY_VQA_COLUMNS = ("class", "color", "shape")


def group_labels(dataset: Dataset, column: str) -> list[str]:
    """The value of metadata `column` for each sample of a training dataset.

    A folder dataset (`ImageTextDataset`) reads any column of its annotation file; easy-VQA
    knows "class" ("<colour> <shape>"), "color" and "shape".

    Raises:
        ConfigError: The dataset has no such column, or no metadata at all (names
            `data.balance_by` and what is allowed).
    """
    if isinstance(dataset, ImageTextDataset):
        try:
            return read_metadata_column(dataset.annotations, column)
        except ValueError as error:
            raise ConfigError(f"data.balance_by={column}: {error}") from None
    if isinstance(dataset, EasyVQACaptions):
        if column not in _EASY_VQA_COLUMNS:
            raise ConfigError(f"data.balance_by={column}: easy-VQA has the columns "
                              f"{', '.join(_EASY_VQA_COLUMNS)}")  # fmt: skip
        values = {"class": lambda e: f"{e.color} {e.shape}",
                  "color": lambda e: e.color, "shape": lambda e: e.shape}[column]  # fmt: skip
        return [values(example) for example in dataset.examples]
    raise ConfigError(
        f"data.balance_by={column}: the {type(dataset).__name__} data has no metadata columns "
        "(balance data.source=folder by a column of its annotation file, or easy_vqa by "
        f"{'/'.join(_EASY_VQA_COLUMNS)})"
    )


def balanced_training_data(
    dataset: Dataset,
    column: str,
    collate: Callable,
    batch_size: int,
    seed: int,
    run_dir: str | Path | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> MapStyleData:
    """`dataset` batched by a `BalancedBatchSampler` over `column`, for the trainer.

    With `run_dir`, the groups, counts and weights go to `run_dir/balance.json` (written by
    rank 0); when that file already exists (a resumed run) it must match, since other weights
    would make the resumed batches differ from the uninterrupted run's.

    Raises:
        ConfigError: As `group_labels`, or `balance.json` disagrees with the data.
    """
    labels = group_labels(dataset, column)
    weights, summary = inverse_frequency_weights(labels)
    summary = {"column": column, "num_samples": len(labels), **summary}
    if run_dir is not None:
        path = Path(run_dir) / BALANCE_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved != json.loads(json.dumps(summary)):
                raise ConfigError(
                    f"data.balance_by={column}: {path} records other groups or counts than the "
                    "data now gives; the run cannot resume exactly (start a new run)"
                )
        elif rank == 0:
            text = json.dumps(summary, indent=2) + "\n"
            atomic_write(path, lambda tmp: tmp.write_text(text))
    return MapStyleData(dataset, collate, batch_size, seed, num_workers, rank, world_size,
                        pin_memory=pin_memory, sample_weights=weights)  # fmt: skip
