"""The models the course scripts run on: a trained checkpoint, or a tiny random CLIP for --quick.

The scripts are run from the repository root (`python examples/course/chN_*.py`), which puts this
folder on `sys.path`, so they import this module by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import vlkit

DEMO_MODEL = "runs/demo/model"  # `vlkit demo --out runs/demo` (about 2.5 min on a CPU)


def load_model(path: str | None, quick: bool) -> tuple[Any, Any, Any, str]:
    """(model in eval mode, tokenizer, transform, what it is). With `quick`, or when `path` is
    None, a tiny CLIP with random weights (seeded): the numbers then show the mechanics only."""
    if quick or path is None:
        torch.manual_seed(0)
        model = vlkit.create_model("tiny").eval()
        tokenizer = vlkit.get_tokenizer("tiny")
        return model, tokenizer, vlkit.get_transform(model), "tiny CLIP, random weights"
    if not Path(path).is_dir():
        raise SystemExit(f"--model {path}: no such directory (make one with `vlkit demo --out "
                         f"{Path(path).parent}`, or pass --quick)")  # fmt: skip
    model, tokenizer, transform = vlkit.load_clip(path)
    return model, tokenizer, transform, f"checkpoint {path}"
