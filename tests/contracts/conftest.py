"""The shared contracts of docs/architecture.md ("Contracts"), one parametrized test per check.

As timm's tests/test_models.py runs every check over `list_models()`, the tests of this folder run
the same checks over every member of a family, so a new preset, fusion module or generative kind
is held to the contract as soon as it is registered:

1. `test_presets.py`: every CLIP preset of `vlkit.models.presets.PRESETS` (built through
   `vlkit.create_model`, at depth 1 and reduced width; the full sizes are shape-checked on the
   meta device),
2. `test_fusion_modules.py`: every module exported by `vlkit.fusion` (an explicit table of tiny
   constructors and inputs),
3. `test_generative_kinds.py`: every generative kind, `FUSION_KINDS` through `build_fusion_vlm`,
   plus a SmolVLM-shaped `GenerativeVLM` (SigLIP tower, pixel-shuffle connector, Llama decoder).

Where vlkit deviates from a written contract on purpose (work planned in a later issue), the check
is marked `xfail` with a reason naming it, so `pytest -rx` lists the deviations and the check runs
for real once the code complies. Shared helpers are in `contract_helpers.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The models here are tiny: one intra-op thread avoids contention on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
