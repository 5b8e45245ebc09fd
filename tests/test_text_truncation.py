"""The text tower runs on the columns up to the batch's last pooled token only when that is exact.

`CLIP.encode_text` cuts CLIP's 77 columns to (last end-of-text position + 1) for causal towers
in eval mode (`TextTransformer.pooled_features`); the unit embeddings (what zero-shot and
retrieval compare) must equal the full-width ones within 1e-6
(the padding after the end-of-text token cannot reach it through causal attention) for every
pooling rule vlkit reads from open_clip and Hugging Face checkpoints, with and without an
attention mask. Bidirectional towers (SigLIP), last-position pooling, training mode and traced
graphs keep every column.
"""

from __future__ import annotations

import pytest
import torch

from vlkit.models.clip import create_model
from vlkit.models.clip_config import CLIPConfig
from vlkit.models.text import TextConfig

LENGTH = 20
VOCAB = 300


def _model(pooling: str, causal: bool = True, eos: int = VOCAB - 1):
    config = CLIPConfig.from_dict(create_model("tiny").config.to_dict())
    config.text = TextConfig(
        vocab_size=VOCAB, context_length=LENGTH, width=32, layers=2, heads=4, mlp_dim=64,
        causal=causal, pooling=pooling, eos_token_id=eos,
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for parameter in model.text.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def _ids(eos: int, ends: list[int], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids below `eos` with end-of-text at each row's `end`, padding after it."""
    g = torch.Generator().manual_seed(len(ends))
    ids = torch.randint(1, eos, (len(ends), LENGTH), generator=g)
    mask = torch.ones_like(ids)
    for row, end in enumerate(ends):
        ids[row, end], ids[row, end + 1 :], mask[row, end + 1 :] = eos, pad, 0
    return ids, mask


class _TextEncoder(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids, normalize=True)


def _full_width(model, ids, mask):
    with torch.no_grad():
        embeds = model.text_projection(model.text(ids, mask).pooled)
    return torch.nn.functional.normalize(embeds, dim=-1)


# argmax: open_clip and HF configs with eos_token_id 2 (end-of-text is the largest id);
# eos: HF configs naming eos_token_id (here not the largest id, so argmax would be wrong).
@pytest.mark.parametrize("pooling,eos", [("argmax", VOCAB - 1), ("eos", 150)])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("pad_with_eos", [False, True])  # HF's openai/clip tokenizers pad with it
def test_causal_towers_are_cut_after_the_last_end_of_text(pooling, eos, use_mask, pad_with_eos):
    model = _model(pooling, eos=eos)
    ids, mask = _ids(eos, [3, 7, 5, 1], pad=eos if pad_with_eos else 0)
    mask = mask if use_mask else None
    assert model.text.exact_prefix_length(ids) == 8
    shapes = []
    hook = model.text.register_forward_hook(lambda m, args, out: shapes.append(args[0].shape))
    with torch.no_grad():
        cut = model.encode_text(ids, mask, normalize=True)
    hook.remove()
    assert shapes == [(4, 8)]
    full = _full_width(model, ids, mask)
    assert cut.shape == full.shape
    torch.testing.assert_close(cut, full, atol=1e-6, rtol=0)


def test_eos_pooling_row_without_end_of_text_keeps_position_zero():
    model = _model("eos", eos=150)
    ids, _ = _ids(150, [4, 2])
    ids[1, 2] = 7  # no end-of-text: pooled at position 0, as transformers' argmax of all-False
    assert model.text.exact_prefix_length(ids) == 5
    with torch.no_grad():
        cut = model.encode_text(ids, normalize=True)
    torch.testing.assert_close(cut, _full_width(model, ids, None), atol=1e-6, rtol=0)


def test_end_of_text_in_the_last_column_keeps_every_column():
    model = _model("argmax")
    ids, _ = _ids(VOCAB - 1, [LENGTH - 1, 2])
    assert model.text.exact_prefix_length(ids) == LENGTH


@pytest.mark.parametrize("pooling,causal", [("last", False), ("argmax", False), ("last", True)])
def test_bidirectional_or_last_pooled_towers_are_not_cut(pooling, causal):
    # SigLIP's tower attends to the padding both ways and pools the last position.
    model = _model(pooling, causal=causal)
    ids, mask = _ids(VOCAB - 1, [3, 5])
    assert model.text.exact_prefix_length(ids) == LENGTH
    calls = []
    hook = model.text.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    with torch.no_grad():
        model.encode_text(ids, mask)
    hook.remove()
    assert calls == [(2, LENGTH)]


def test_training_mode_keeps_every_column_and_a_traced_graph_does_not_freeze_a_cut():
    model = _model("argmax")
    short, _ = _ids(VOCAB - 1, [3, 5])
    model.train()
    assert model.text.exact_prefix_length(short) == LENGTH
    model.eval()
    # A graph traced on short prompts (as ONNX export traces) must serve longer ones.
    with torch.no_grad():
        traced = torch.jit.trace(_TextEncoder(model), short, check_trace=False)
        long, _ = _ids(VOCAB - 1, [12, 17])
        torch.testing.assert_close(
            traced(long), model.encode_text(long, normalize=True), atol=1e-6, rtol=0
        )


def test_prompts_encoded_by_length_come_back_in_their_order():
    from vlkit.evaluation.zero_shot import encode_by_length

    model = _model("argmax")
    ends = [9, 2, 15, 4, 4, 11, 1]
    ids, _ = _ids(VOCAB - 1, ends)
    texts = [f"{row}{'x' * end}" for row, end in enumerate(ends)]  # length ~ tokens
    rows = {text: row for row, text in enumerate(texts)}
    shapes = []
    hook = model.text.register_forward_hook(lambda m, args, out: shapes.append(args[0].shape))
    with torch.no_grad():
        got = encode_by_length(
            lambda batch: model.encode_text(ids[[rows[t] for t in batch]], normalize=True),
            texts,
            batch_size=3,
        )
    hook.remove()
    assert shapes == [(3, 5), (3, 12), (1, 16)]  # (1, 2, 4), (4, 9, 11), (15,) + 1
    torch.testing.assert_close(got, _full_width(model, ids, None), atol=1e-6, rtol=0)
