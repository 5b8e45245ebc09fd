"""The LM head at target positions only (`next_token_loss_from_hidden`, `GenerativeVLM.forward`
with labels): the same loss, gradients and logits as computing every position's logits.

The full-logit path (`next_token_loss(decoder(...).logits, labels)`) is the reference; the
transformers side of the same numbers is tests/parity/test_transformers_smolvlm_modeling.py and
tests/test_lm_accumulation.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlkit.losses.next_token import next_token_loss, next_token_loss_from_hidden
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.training import accumulated_lm_backward

IMAGE = 5


class _PatchVision(nn.Module):
    """(N, 3, 8, 8) -> (N, 4, 16): four 4x4 patches, linearly embedded."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 16, kernel_size=4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


def _model(tie: bool) -> GenerativeVLM:
    torch.manual_seed(0)
    config = DecoderConfig(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
        num_kv_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )  # fmt: skip
    return GenerativeVLM(_PatchVision(), nn.Linear(16, 32), DecoderLM(config), IMAGE)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(6, 40, (3, 12), generator=g)
    ids[:, 1:5] = IMAGE  # one image (4 placeholders) per row
    labels = torch.full_like(ids, -100)
    labels[0, 8:12] = ids[0, 8:12]
    labels[1, 10:11] = ids[1, 10:11]  # a single target
    labels[2, 6:9] = ids[2, 6:9]  # targets, then right padding
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    pixels = torch.randn(3, 1, 3, 8, 8, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie", [False, True])
def test_vlm_loss_and_gradients_equal_the_full_logits(tie: bool) -> None:
    model, batch = _model(tie), _batch()
    out = model(**batch)
    assert out.hidden_states is not None and out.computed_logits is None  # head not run yet
    out.loss.backward()
    ours = _grads(model)
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reference = model(**inputs)  # no labels: every position's logits, eagerly
    assert reference.computed_logits is not None
    expected = next_token_loss(reference.logits, batch["labels"])
    expected.backward()
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)
    assert ours.keys() == _grads(model).keys()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # The logits are there on access, equal to the eager forward's.
    torch.testing.assert_close(out.logits, reference.logits, rtol=1e-6, atol=1e-6)


def test_num_items_in_batch_divides_the_sum() -> None:
    model, batch = _model(False), _batch()
    count = int((batch["labels"][:, 1:] != -100).sum())
    mean = model(**batch).loss
    summed = model(**batch, num_items_in_batch=1.0).loss
    scaled = model(**batch, num_items_in_batch=2.5 * count).loss
    torch.testing.assert_close(summed, mean * count, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scaled, mean / 2.5, rtol=1e-6, atol=1e-7)


@torch.no_grad()
def test_no_target_is_nan_or_zero_as_the_full_loss() -> None:
    hidden = torch.randn(2, 5, 8)
    head = nn.Linear(8, 11)
    labels = torch.full((2, 5), -100)
    assert math.isnan(float(next_token_loss_from_hidden(hidden, labels, head)))
    assert math.isnan(float(next_token_loss(head(hidden), labels)))
    zero = next_token_loss_from_hidden(hidden, labels, head, num_items_in_batch=4.0)
    assert float(zero) == 0.0
    with pytest.raises(ValueError, match=r"labels of shape \(2, 4\) for a \(batch, length\) of"):
        next_token_loss_from_hidden(hidden, labels[:, :4], head)


def test_accumulation_through_the_model_loss_equals_one_backward() -> None:
    model, batch = _model(True), _batch()
    rows: list[int] = []  # the LM head's input rows per call: the targets, not every position
    hook = model.decoder.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    loss = accumulated_lm_backward(model, batch, micro_batch_size=1)
    hook.remove()
    assert rows == (batch["labels"][:, 1:] != -100).sum(1).tolist()  # [4, 1, 3]
    ours = _grads(model)
    model.zero_grad()
    full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    expected = next_token_loss(full, batch["labels"])
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-7)
    # Three micro-batches sum their gradients in another order than one backward: ~2e-7 apart on
    # gradients of size ~1 (float32 rounding), far below what a wrong target or weight would do.
    for name, grad in _grads(model).items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-5, atol=2e-6, msg=name)
