"""Class names, prompt templates and ImageNet WordNet ids shipped in vlkit/assets/benchmarks/.

The files are CLIP_benchmark 1.6.2's own (MIT; each JSON names its source in "source"), so a
zero-shot run reads exactly the prompts `clip_benchmark eval` uses: a dataset without its own
template list falls back to ImageNet's 80 OpenAI templates, as CLIP_benchmark's builder does
(`value_from_first_key_found(..., keys=[name, "imagenet1k"])`).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["classnames", "imagenet_wnids", "templates"]


@cache
def _asset(name: str) -> Any:
    return json.loads(resources.files("vlkit").joinpath(f"assets/benchmarks/{name}").read_text())


def classnames(dataset: str) -> list[str]:
    """CLIP_benchmark's English class names of `dataset` (e.g. "imagenet1k", "flowers")."""
    names = _asset("en_classnames.json")["classnames"]
    if dataset not in names:
        raise ValueError(
            f"no shipped class names for {dataset!r} (have: {', '.join(sorted(names))})"
        )
    return list(names[dataset])


def templates(dataset: str) -> list[str]:
    """CLIP_benchmark's English zero-shot templates of `dataset` with vlkit's "{}" placeholder.

    CLIP_benchmark writes "{c}" (`template.format(c=name)`); every shipped template holds exactly
    one placeholder, so `template.format(name)` gives the same text.
    """
    table = _asset("en_zeroshot_classification_templates.json")["templates"]
    chosen = table.get(dataset, table["imagenet1k"])
    return [t.replace("{c}", "{}") for t in chosen]


def imagenet_wnids(subset: str = "imagenet1k") -> list[str]:
    """Sorted WordNet ids: the 1,000 ImageNet classes ("imagenet1k", the standard label order),
    or the 200-class subsets of "imagenet-a" / "imagenet-r" (their label order)."""
    return list(_asset("imagenet_wnids.json")[subset])
