"""transformers' own SmolVLM / Idefics3 modelling test cases, run side by side against vlkit.

Ported from `tests/models/smolvlm/test_modeling_smolvlm.py` and
`tests/models/idefics3/test_modeling_idefics3.py` (huggingface/transformers) and the common
`ModelTesterMixin` / `GenerationTesterMixin` cases those modules inherit: the testers' tiny
configs (16x16 images, 4x4 patches, scale factor 2, a 3-layer Llama with vocabulary 100, pad 2,
eos 1, `<image>` 57) are built as random transformers models, saved, loaded into vlkit with
`vlkit.from_pretrained`, and both run on the same inputs. Logits agree to 1e-4 and greedy /
beam tokens exactly, including the testers' `attention_mask = input_ids != eos` masks that have
holes in the middle, explicit `position_ids`, left padding, rows with unequal image counts or
no image, generation with and without a mask, and stop-token lists (empty included).

Logits are compared at every position except left padding before a row's first real token:
there transformers' SDPA query sees no key and yields zeros, while vlkit lets it see itself
(see `vlkit.models.decoder.masks.attention_mask_4d`); no real token reads those positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import vlkit
from vlkit.models.smolvlm import GenerativeVLM

transformers = pytest.importorskip("transformers")

# The testers' configuration (SmolVLMVisionText2TextModelTester / Idefics3VisionText2TextModelTester).
VISION = {
    "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 32, "dropout": 0.1,
    "attention_dropout": 0.1, "initializer_range": 0.02,
}  # fmt: skip
TEXT = {
    "vocab_size": 100, "hidden_size": 64, "intermediate_size": 56, "num_hidden_layers": 3,
    "num_attention_heads": 2, "num_key_value_heads": 2, "hidden_act": "silu",
    "max_position_embeddings": 256, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "pad_token_id": 2, "bos_token_id": 0, "eos_token_id": 1, "image_token_id": 57,
    "tie_word_embeddings": False, "rope_theta": 10000.0, "sliding_window": 32,
    "attention_dropout": 0.0,
}  # fmt: skip
IMAGE, EOS, PAD, SIZE = 57, 1, 2, 16
PER_IMAGE = (SIZE // 4) ** 2 // 2**2  # 4 image tokens per image (scale factor 2)
NUM_IMAGES, BATCH = 2, 2
MODEL_TYPES = ["smolvlm", "idefics3"]


@pytest.fixture(scope="module", params=MODEL_TYPES)
def models(request, tmp_path_factory) -> tuple[Any, GenerativeVLM]:
    """(transformers model, the same checkpoint loaded by vlkit), both in eval mode."""
    if request.param == "smolvlm":
        config_cls = transformers.SmolVLMConfig
        model_cls = transformers.SmolVLMForConditionalGeneration
    else:
        config_cls = transformers.Idefics3Config
        model_cls = transformers.Idefics3ForConditionalGeneration
    config = config_cls(
        use_cache=False, image_token_id=IMAGE, tie_word_embeddings=False,
        vision_config=VISION, text_config=TEXT, vocab_size=100, scale_factor=2,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = model_cls(config).eval()
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    model = vlkit.from_pretrained(directory)
    assert isinstance(model, GenerativeVLM)
    return hf, model


def _pixels(rows: int, images: int, seed: int) -> torch.Tensor:
    """`floats_tensor([B, num_images, 3, 16, 16])` of the testers (uniform in [0, 1))."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, images, 3, SIZE, SIZE, generator=generator)


def _text(n: int, seed: int, eos_at: tuple[int, ...] = ()) -> list[int]:
    """`ids_tensor(..., vocab - 2) + 1` text ids (never the image token), eos at `eos_at`."""
    generator = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, 98, (n,), generator=generator) + 1).tolist()
    ids = [3 if i in (IMAGE, EOS, PAD) else i for i in ids]
    for i in eos_at:
        ids[i] = EOS
    return ids


def _row(text: list[int], images: int, suffix: list[int]) -> list[int]:
    return text + [IMAGE] * (PER_IMAGE * images) + suffix


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _logits(hf: Any, model: GenerativeVLM, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        ref = hf(**inputs).logits.float()
        ids = inputs.pop("input_ids")
        ours = model(ids, **inputs).logits
    return ours, ref


def _assert_logits(hf: Any, model: GenerativeVLM, **inputs: Any) -> torch.Tensor:
    """vlkit's logits equal transformers' to 1e-4 at every position after a row's first real
    token (holes in the mask included); returns vlkit's logits."""
    mask = inputs.get("attention_mask")
    ours, ref = _logits(hf, model, **dict(inputs))
    seen = torch.ones(ours.shape[:2], dtype=torch.bool)
    if mask is not None:
        seen = mask.long().cumsum(-1) > 0
    torch.testing.assert_close(ours[seen], ref[seen], atol=1e-4, rtol=0)
    return ours


def _assert_generate(hf: Any, model: GenerativeVLM, **inputs: Any) -> torch.Tensor:
    """Same tokens from both `generate`s (greedy unless `num_beams` says otherwise)."""
    options = {"max_new_tokens": 6, "do_sample": False, **inputs}
    with torch.no_grad():
        ref = hf.generate(**options)
    ids = options.pop("input_ids")
    ours = model.generate(ids, **options)
    assert ours.tolist() == ref.tolist()
    return ours


# --- forward (ModelTesterMixin) ------------------------------------------------------------------


def case_tester_inputs(hf: Any, model: GenerativeVLM) -> None:
    """`prepare_config_and_inputs_for_common`: all 8 tokens are image tokens, mask `ids != eos`."""
    ids = torch.full((BATCH, PER_IMAGE * NUM_IMAGES), IMAGE)
    _assert_logits(hf, model, input_ids=ids, pixel_values=_pixels(BATCH, NUM_IMAGES, 0),
                   attention_mask=ids.ne(EOS))  # fmt: skip


def case_mask_with_holes(hf: Any, model: GenerativeVLM) -> None:
    """The testers' `attention_mask = input_ids != eos` with eos tokens inside the text."""
    ids = torch.tensor([
        _row(_text(6, 1, eos_at=(2,)), 2, _text(5, 2, eos_at=(1, 3))),
        _row(_text(6, 3, eos_at=(0, 4)), 2, _text(5, 4)),
    ])  # fmt: skip
    mask = ids.ne(EOS).long()
    assert (mask == 0).any() and bool(mask[:, -1].all())
    _assert_logits(hf, model, input_ids=ids, pixel_values=_pixels(2, 2, 1), attention_mask=mask)


def case_explicit_position_ids(hf: Any, model: GenerativeVLM) -> None:
    """`position_ids` passed explicitly (mask-derived as `generate` does, and an offset)."""
    ids = torch.tensor([_row(_text(4, 5, eos_at=(1,)), 2, _text(3, 6, eos_at=(0,)))] * 2)
    mask = ids.ne(EOS).long()
    from_mask = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    offset = torch.arange(ids.shape[1])[None].repeat(2, 1) + torch.tensor([[7], [0]])
    for position_ids in (from_mask, offset):
        _assert_logits(hf, model, input_ids=ids, pixel_values=_pixels(2, 2, 2),
                       attention_mask=mask, position_ids=position_ids)  # fmt: skip


def case_left_padding_compatibility(hf: Any, model: GenerativeVLM) -> None:
    """`test_left_padding_compatibility`: left padding (with mask-derived position_ids, as the
    common test passes them) leaves the last-token logits unchanged; both match transformers."""
    row = _row(_text(5, 7), 1, _text(4, 8))
    ids = torch.tensor([row, row])
    pixels = _pixels(1, 1, 3).repeat(2, 1, 1, 1, 1)
    unpadded = _assert_logits(hf, model, input_ids=ids, pixel_values=pixels)
    pad = 3
    padded_ids = torch.cat([torch.full((2, pad), PAD), ids], dim=1)
    mask = torch.cat([torch.zeros(2, pad, dtype=torch.long), torch.ones_like(ids)], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    padded = _assert_logits(hf, model, input_ids=padded_ids, pixel_values=pixels,
                            attention_mask=mask, position_ids=positions)  # fmt: skip
    torch.testing.assert_close(padded[:, -1], unpadded[:, -1], atol=1e-5, rtol=0)
    # Without position_ids both libraries place left-padded tokens at arange(L): the same logits
    # again, as RoPE only sees position differences.
    _assert_logits(hf, model, input_ids=padded_ids, pixel_values=pixels, attention_mask=mask)


def case_batching_equivalence(hf: Any, model: GenerativeVLM) -> None:
    """`test_batching_equivalence`: a row alone gives the logits it gives inside the batch."""
    ids = torch.tensor([_row(_text(3, 9), 2, _text(3, 10)), _row(_text(3, 11), 2, _text(3, 12))])
    pixels = _pixels(2, 2, 4)
    batched = _assert_logits(hf, model, input_ids=ids, pixel_values=pixels)
    for i in range(2):
        alone = _assert_logits(hf, model, input_ids=ids[i : i + 1], pixel_values=pixels[i : i + 1])
        torch.testing.assert_close(alone[0], batched[i], atol=1e-5, rtol=0)


def case_unequal_image_counts(hf: Any, model: GenerativeVLM) -> None:
    """Row 0 has two images, row 1 one (its second image is all-zero padding); left padded."""
    ids, mask = _left_pad([_row(_text(3, 13), 2, _text(2, 14)), _row(_text(2, 15), 1, [4])])
    pixels = _pixels(2, 2, 5)
    pixels[1, 1] = 0.0
    _assert_logits(hf, model, input_ids=ids, pixel_values=pixels, attention_mask=mask)
    _assert_generate(hf, model, input_ids=ids, pixel_values=pixels, attention_mask=mask)


def case_text_only_row(hf: Any, model: GenerativeVLM) -> None:
    """One row without any image (all-zero pixels, no `<image>` token) next to one with two."""
    ids, mask = _left_pad([_row(_text(3, 16), 2, _text(2, 17)), _text(7, 18, eos_at=(3,))])
    mask = mask * ids.ne(EOS)
    pixels = _pixels(2, 2, 6)
    pixels[1] = 0.0
    _assert_logits(hf, model, input_ids=ids, pixel_values=pixels, attention_mask=mask)
    # And a text-only batch without pixel values at all.
    _assert_logits(hf, model, input_ids=ids[1:, 3:], attention_mask=mask[1:, 3:])


def case_image_token_mismatch(hf: Any, model: GenerativeVLM) -> None:
    """`test_mismatching_num_image_tokens`: one image's features, two images' placeholders."""
    ids = torch.tensor([_row(_text(2, 19), 2, [4])])
    pixels = _pixels(1, 1, 7)
    with pytest.raises(ValueError):
        hf(input_ids=ids, pixel_values=pixels)
    with pytest.raises(ValueError, match="do not match"):
        model(ids, pixels)


# --- generate (GenerationTesterMixin) ------------------------------------------------------------


def case_greedy_with_mask_holes(hf: Any, model: GenerativeVLM) -> None:
    """`test_greedy_generate` with the testers' `ids != eos` mask: positions from the mask."""
    ids = torch.tensor([
        _row(_text(5, 20, eos_at=(1,)), 2, _text(4, 21, eos_at=(2,))),
        _row(_text(5, 22), 2, _text(4, 23, eos_at=(0,))),
    ])  # fmt: skip
    _assert_generate(hf, model, input_ids=ids, pixel_values=_pixels(2, 2, 8),
                     attention_mask=ids.ne(EOS).long(), eos_token_id=None)  # fmt: skip


def case_greedy_without_mask(hf: Any, model: GenerativeVLM) -> None:
    """No attention mask: inferred as `ids != pad` when the pad token occurs (and is no stop
    token), else all ones (`_prepare_attention_mask_for_generation`)."""
    with_pad = torch.tensor(
        [_row([PAD, PAD, 5, PAD, 6], 1, [7, 8]), _row([9, 10, 11, 12, 13], 1, [14, 15])]
    )
    without_pad = with_pad.masked_fill(with_pad == PAD, 3)
    pixels = _pixels(2, 1, 9)
    for ids in (with_pad, without_pad):
        _assert_generate(hf, model, input_ids=ids, pixel_values=pixels, eos_token_id=None)


def case_greedy_left_padded_batch(hf: Any, model: GenerativeVLM) -> None:
    """`test_left_padding_compatibility` for generate: rows of different lengths."""
    ids, mask = _left_pad([_row(_text(2, 24), 1, _text(6, 25)), _row(_text(1, 26), 1, [4])])
    _assert_generate(hf, model, input_ids=ids, pixel_values=_pixels(2, 1, 10),
                     attention_mask=mask, max_new_tokens=8, eos_token_id=None)  # fmt: skip


def case_greedy_explicit_position_ids(hf: Any, model: GenerativeVLM) -> None:
    """`generate(position_ids=...)`: new tokens continue from each row's last position."""
    ids = torch.tensor([_row(_text(4, 27), 1, _text(2, 28))] * 2)
    positions = torch.arange(ids.shape[1])[None] + torch.tensor([[0], [5]])
    _assert_generate(hf, model, input_ids=ids, pixel_values=_pixels(2, 1, 11),
                     position_ids=positions, eos_token_id=None)  # fmt: skip


def case_eos_token_id_int_and_list(hf: Any, model: GenerativeVLM) -> None:
    """`test_eos_token_id_int_and_list_greedy_search`: an int, a list, and a list that contains
    a token greedy decoding emits (rows stop there; finished rows get the pad token 2)."""
    ids, mask = _left_pad([_row(_text(3, 29), 1, _text(2, 30)), _row(_text(2, 31), 1, [4, 5])])
    pixels = _pixels(2, 1, 12)
    free = _assert_generate(hf, model, input_ids=ids, pixel_values=pixels, attention_mask=mask,
                            max_new_tokens=8, eos_token_id=[])  # fmt: skip
    assert free.shape[1] == ids.shape[1] + 8  # no stop token: runs to max_new_tokens
    emitted = free[0, ids.shape[1] + 2].item()
    for eos in (EOS, [EOS, 99], [98, emitted]):
        out = _assert_generate(hf, model, input_ids=ids, pixel_values=pixels,
                               attention_mask=mask, max_new_tokens=8, eos_token_id=eos)  # fmt: skip
        if eos == [98, emitted]:
            assert out.shape[1] <= free.shape[1]
            assert emitted in out[0, ids.shape[1] :].tolist()


def case_beam_search_with_mask_holes(hf: Any, model: GenerativeVLM) -> None:
    """`test_beam_search_generate` (2 beams) on a mask with holes and left padding."""
    ids, mask = _left_pad(
        [_row(_text(4, 32, eos_at=(1,)), 1, _text(3, 33)), _row(_text(2, 34), 1, [4])]
    )
    mask = mask * ids.ne(EOS)
    _assert_generate(hf, model, input_ids=ids, pixel_values=_pixels(2, 1, 13), attention_mask=mask,
                     num_beams=2, max_new_tokens=5, eos_token_id=None)  # fmt: skip


def case_static_cache_matches_reference(hf: Any, model: GenerativeVLM) -> None:
    """vlkit's static cache (transformers skips `test_generate_with_static_cache` for these
    models) gives transformers' dynamic-cache greedy tokens on a holed, left-padded batch."""
    ids, mask = _left_pad(
        [_row(_text(4, 35, eos_at=(2,)), 1, _text(3, 36)), _row(_text(1, 37), 1, [4])]
    )
    mask = mask * ids.ne(EOS)
    pixels = _pixels(2, 1, 14)
    inputs = {"pixel_values": pixels, "attention_mask": mask, "max_new_tokens": 6}
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, do_sample=False, eos_token_id=None, **inputs)
    ours = model.generate(ids, eos_token_id=[], cache_implementation="static", **inputs)
    assert ours.tolist() == ref.tolist()


CASES: dict[str, Callable[[Any, GenerativeVLM], None]] = {
    name.removeprefix("case_"): value
    for name, value in dict(globals()).items()
    if name.startswith("case_")
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_modeling_case(models: tuple[Any, GenerativeVLM], case: str) -> None:
    hf, model = models
    torch.manual_seed(0)
    CASES[case](hf, model)


def test_loaded_defaults_match_generation_config(models: tuple[Any, GenerativeVLM]) -> None:
    """vlkit picks transformers' default stop and pad tokens from the saved generation config."""
    hf, model = models
    assert model.eos_token_id == hf.generation_config.eos_token_id == EOS
    assert model.pad_token_id == hf.generation_config.pad_token_id == PAD


def test_case_count() -> None:
    """The number of ported cases (reported in the docs) stays what it is."""
    assert len(CASES) == 15
