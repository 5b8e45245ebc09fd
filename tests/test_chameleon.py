"""Chameleon-style shared vocabulary: layout, logits over the joint vocabulary, the two sequence
layouts, modality-constrained generation (left-padded prompts included), a tiny model that
overfits one caption both ways, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlkit.errors import CheckpointError
from vlkit.hub.vq_checkpoint import load_chameleon, save_chameleon
from vlkit.models.chameleon import ChameleonConfig, ChameleonLM
from vlkit.models.vq_tokenizer import VQTokenizer, VQTokenizerConfig

TINY = ChameleonConfig(
    text_vocab_size=10,
    num_image_codes=16,
    tokens_per_image=4,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    max_position_embeddings=32,
)
CAPTION = torch.tensor([5, 6, 7])  # "a red circle" in some word vocabulary
CODES = torch.tensor([3, 15, 0, 9])


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation (10x slower
    on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> ChameleonLM:
    torch.manual_seed(seed)
    return ChameleonLM(TINY).eval()


def _biased_head(model: ChameleonLM, favourite: int) -> None:
    """Replace the LM head by one whose argmax is always `favourite` (a bias, zero weights)."""
    head = nn.Linear(TINY.hidden_size, TINY.vocab_size, bias=True)
    nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[favourite] = 10.0
    model.lm.lm_head = head


def test_joint_vocabulary_layout_and_logits() -> None:
    assert (TINY.boi_token_id, TINY.eoi_token_id, TINY.image_code_offset) == (10, 11, 12)
    assert TINY.vocab_size == 10 + 2 + 16
    model = _model()
    assert model.image_span(CODES).tolist() == [10, 15, 27, 12, 21, 11]
    ids, labels = model.caption_sequence(CODES, CAPTION)
    assert ids.tolist() == [2, 10, 15, 27, 12, 21, 11, 5, 6, 7, 3]
    assert labels.tolist() == [-100] * 7 + [5, 6, 7, 3]
    ids2, labels2 = model.generation_sequence(CAPTION, CODES)
    assert ids2.tolist() == [2, 5, 6, 7, 10, 15, 27, 12, 21, 11]
    assert labels2.tolist() == [-100] * 5 + [15, 27, 12, 21, 11]
    batch = model.collate([(ids, labels), (ids2, labels2)], TINY.pad_token_id)
    out = model(**batch)
    assert out.logits.shape == (2, 11, TINY.vocab_size)
    # The loss is the mean cross-entropy of the labelled next tokens of both rows.
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    expected = F.cross_entropy(out.logits[:, :-1][keep], targets[keep])
    assert torch.allclose(out.loss, expected)
    assert batch["attention_mask"][1].tolist() == [1] * 10 + [0]
    with pytest.raises(ValueError, match="4 codes per image"):
        model.image_span(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.image_span(torch.tensor([1, 2, 3, 16]))


def test_image_span_generation_emits_only_image_codes() -> None:
    model = _model()
    _biased_head(model, favourite=5)  # unconstrained, every step would be the word 5
    unconstrained = model.lm.generate(torch.tensor([[2, 5, 6, 10]]), max_new_tokens=4)
    assert unconstrained[0, 4:].tolist() == [5, 5, 5, 5]
    greedy = model.generate_image_codes([CAPTION, CAPTION[:1]], do_sample=False)
    assert greedy.shape == (2, TINY.tokens_per_image)
    sampled = model.generate_image_codes(
        [CAPTION] * 8, temperature=2.0, generator=torch.Generator().manual_seed(0)
    )
    for codes in (greedy, sampled):
        assert int(codes.min()) >= 0 and int(codes.max()) < TINY.num_image_codes
    assert sampled.unique().numel() > 1  # sampling, not a constant
    # The codes decode to images with a tokenizer of the same grid and codebook.
    tokenizer = VQTokenizer(
        VQTokenizerConfig(image_size=4, hidden_channels=(4,), code_dim=4, num_codes=16)
    ).eval()
    assert tokenizer.decode_codes(sampled).shape == (8, 3, 4, 4)
    # Captioning conversely emits only text tokens, even when an image code is favoured.
    _biased_head(model, favourite=TINY.image_code_offset + 3)
    text = model.generate_text(CODES[None], max_new_tokens=3)
    assert text.shape == (1, 3) and int(text.max()) < TINY.text_vocab_size


def test_left_padded_prompts_generate_what_each_prompt_generates_alone() -> None:
    model = _model(seed=1)
    prompts = [CAPTION, torch.tensor([8]), torch.tensor([4, 9])]
    together = model.generate_image_codes(prompts, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate_image_codes([prompt], do_sample=False)
        assert torch.equal(together[row], alone[0])


def test_tiny_model_overfits_one_caption_both_ways() -> None:
    model = _model().train()
    caption = model.caption_sequence(CODES, CAPTION)
    drawing = model.generation_sequence(CAPTION, CODES)
    batch = model.collate([caption, drawing], TINY.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert float(loss.detach()) < 0.05
    # Generation stops once every row has emitted <eos>.
    assert model.generate_text(CODES[None], max_new_tokens=5)[0].tolist() == [5, 6, 7, 3]
    assert model.generate_image_codes([CAPTION], do_sample=False)[0].tolist() == CODES.tolist()


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _model()
    save_chameleon(model, tmp_path / "chameleon")
    loaded = load_chameleon(tmp_path / "chameleon")
    assert loaded.config == TINY
    ids = model.caption_sequence(CODES, CAPTION)[0][None]
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    with pytest.raises(CheckpointError, match="no chameleon_config.json"):
        load_chameleon(tmp_path)
    with pytest.raises(ValueError, match="bos_token_id"):
        ChameleonConfig(text_vocab_size=2, bos_token_id=2)
