"""FLOPs of one training step, per sample, counted on a real batch.

`torch.utils.flop_counter.FlopCounterMode` counts matmuls, convolutions and attention, which is
what dominates; a frozen tower run under `no_grad` contributes forward FLOPs only.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["flops_per_sample"]


def flops_per_sample(model: nn.Module, task: Any, batch: dict[str, Any]) -> dict[str, float]:
    """Forward and training-step (forward + backward) GFLOPs per sample on one real batch.

    Args:
        model: The model the task trains (its gradients are cleared afterwards).
        task: A `Trainer` task (`training_step(model, batch, backward)`).
        batch: A collated batch with `images` (B, ...).

    Returns:
        {"forward_gflops", "train_gflops"} per sample.
    """
    b = batch["images"].shape[0]
    counter = FlopCounterMode(display=False)
    with counter:
        task.training_step(model, batch, lambda loss: loss.backward())
    train = counter.get_total_flops() / b
    model.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)
    # Not under no_grad: FlopCounterMode's module tracker hooks autograd and fails there when a
    # module receives a parameter itself (e.g. Q-Former queries). The graph is just dropped.
    with counter:
        task.training_step(model, batch, lambda loss: None)
    return {"forward_gflops": counter.get_total_flops() / b / 1e9, "train_gflops": train / 1e9}
