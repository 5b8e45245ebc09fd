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

The refusal suggests resuming only when `resume='latest'` would find a checkpoint: a run killed
before its first checkpoint leaves `checkpoints/` empty beside its config, and telling the user
to resume it would only lead to a second error. Such a directory still counts as a run (its
`train_config.json` and logs are a run's files, and deleting them unasked is what this module
exists to prevent), so the refusal says it holds no checkpoint and names `overwrite` alone.

Within a directory, checkpoint pruning deletes only checkpoints of the current run (each
checkpoint records its run id: `checkpoint.py`), a second safety net for library callers that
build a `Trainer` themselves.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from vlkit.training.checkpoint import LATEST, REPLACED, STATE_FILE

__all__ = [
    "TRAIN_RUN_FILES",
    "VLM_RUN_FILES",
    "RunDirectoryError",
    "has_resumable_checkpoint",
    "prepare_run_directory",
]

# What `vlkit.recipes.clip_run.train` writes into its out_dir.
TRAIN_RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "summary.json",
    "train_config.json",
    "tensorboard",
    "training_curves.png",
    "balance.json",  # data.balance_by's groups and weights (training/balanced_data.py)
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
        resumable: `resume='latest'` would continue it; False: it holds no checkpoint (a run
            stopped before its first one); None: runs of this kind cannot be resumed.
    """

    def __init__(self, out_dir: Path, found: Sequence[str], resumable: bool | None) -> None:
        self.out_dir, self.found, self.resumable = out_dir, list(found), resumable
        what = ", ".join(self.found)
        if resumable:
            hint = "; resume it (resume='latest'),"
        elif resumable is False:
            hint = " but no checkpoint to resume (it stopped before its first one);"
        else:
            hint = ";"
        super().__init__(
            f"out_dir {out_dir} already holds a run ({what}){hint} replace it "
            "(overwrite=True deletes those files) or choose another out_dir"
        )


def has_resumable_checkpoint(checkpoint_dir: Path) -> bool:
    """Whether `resume='latest'` would find a checkpoint in `checkpoint_dir`.

    Mirrors `checkpoint.resolve_resume` without its side effect (it puts back a checkpoint
    moved aside by a crash; this only looks, as the non-main processes of a distributed run
    must): the `latest` pointer names a directory holding the training state, or one moved
    aside (`.step_N.replaced`) that the resume would put back.
    """
    pointer = checkpoint_dir / LATEST
    if not pointer.is_file():
        return False
    name = pointer.read_text().strip()
    if not name:
        return False
    return (checkpoint_dir / name / STATE_FILE).is_file() or (
        checkpoint_dir / f".{name}{REPLACED}" / STATE_FILE
    ).is_file()


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
        ValueError: `out_dir` is empty or a file, or `resume` and `overwrite` are both set.
    """
    if not str(out_dir).strip():  # Path("") is the current directory: never meant
        raise ValueError("out_dir: empty; name the run directory ('.' for the current one)")
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("overwrite=True deletes the run that resume would continue; pass one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file, not a directory")
    found = [name for name in run_files if (out / name).exists() or (out / name).is_symlink()]
    if found and not resume and not overwrite:
        resumable = (
            has_resumable_checkpoint(out / "checkpoints") if "checkpoints" in run_files else None
        )
        raise RunDirectoryError(out, found, resumable)
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
