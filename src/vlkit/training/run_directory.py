"""Run directories that are never destroyed by accident.

A run writes a known set of files into its `out_dir` (`TRAIN_RUN_FILES` for `vlkit train`,
`VLM_RUN_FILES` for `vlkit train-vlm`). Before a run starts, `prepare_run_directory` looks for
them:

- a fresh run (no resume) into a directory that holds any of them is refused with
  `RunDirectoryError`, naming what is there: an older, longer run's checkpoints would otherwise
  sit beside the new run's, its metrics.jsonl would be appended to and its summary overwritten;
- `overwrite=True` deletes exactly those files first, so nothing stale mixes into the new run.
  Files the run does not write (the user's own, another run's sub-directory) are never touched,
  and do not count as "a run is there";
- resuming writes into the directory as it is (the run continues).

Within a directory, checkpoint pruning deletes only checkpoints of the current run (each
checkpoint records its run id: `checkpoint.py`), a second safety net for library callers that
build a `Trainer` themselves.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TRAIN_RUN_FILES", "VLM_RUN_FILES", "RunDirectoryError", "prepare_run_directory"]

# What `vlkit.recipes.clip_run.train` writes into its out_dir.
TRAIN_RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "summary.json",
    "train_config.json",
    "tensorboard",
    "training_curves.png",
)
# What `vlkit.recipes.vlm_run.train_vlm` writes (inference/vlm_run_directory.py's files, the
# stage checkpoints and the logs).
VLM_RUN_FILES = (
    "stage1",
    "stage2",
    "vlm_config.json",
    "model.safetensors",
    "tokenizer.json",
    "summary.json",
    "metrics.jsonl",
    "tensorboard",
    "training_curves.png",
)


class RunDirectoryError(ValueError):
    """A fresh run was pointed at a directory that already holds a run.

    Attributes:
        out_dir: The directory.
        found: The run files found in it.
    """

    def __init__(self, out_dir: Path, found: Sequence[str], resumable: bool) -> None:
        self.out_dir, self.found = out_dir, list(found)
        what = ", ".join(self.found)
        hint = "resume it (resume='latest'), " if resumable else ""
        super().__init__(
            f"out_dir {out_dir} already holds a run ({what}); {hint}replace it "
            "(overwrite=True deletes those files) or choose another out_dir"
        )


def prepare_run_directory(
    out_dir: str | Path,
    run_files: Sequence[str],
    resume: bool = False,
    overwrite: bool = False,
    write: bool = True,
) -> Path:
    """Checks `out_dir` before a run writes into it; creates it, or clears the previous run.

    Args:
        out_dir: The run directory.
        run_files: The files and directories the run writes there (`TRAIN_RUN_FILES`, ...).
        resume: The run continues from a checkpoint: the directory is used as it is.
        overwrite: Delete the previous run's `run_files` first (never any other file).
        write: Create / clear the directory (False on the non-main processes of a distributed
            run, which only check).

    Returns:
        `out_dir` as a Path.

    Raises:
        RunDirectoryError: A fresh run without `overwrite` and `out_dir` holds some `run_files`.
        ValueError: `out_dir` is a file, or `resume` and `overwrite` are both set.
    """
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("overwrite=True deletes the run that resume would continue; pass one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file, not a directory")
    found = [name for name in run_files if (out / name).exists() or (out / name).is_symlink()]
    if found and not resume and not overwrite:
        raise RunDirectoryError(out, found, resumable="checkpoints" in found)
    if write:
        if found and overwrite:
            for name in found:
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        out.mkdir(parents=True, exist_ok=True)
    return out
