"""Mistral causal LMs (`MistralForCausalLM`, and as a LLaVA `text_config`) against transformers.

Tiny random checkpoints are built with transformers (the Llama testers' sizes: vocab 99, hidden
32, 2 layers, 4 heads of which 2 key/value, intermediate 37), saved, loaded by
`vlkit.from_pretrained` and compared: logits within 1e-4 under a left-padded mask with holes,
greedy `generate` token for token, and `save_pretrained` loading back in transformers. A
`sliding_window` shorter than `max_position_embeddings` is refused in one line naming the key
(vlkit's decoder has no window); one at least as long masks nothing and loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vlkit  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hub.hf_causal_lm import causal_lm_config  # noqa: E402
from vlkit.models.decoder import DecoderLM  # noqa: E402
from vlkit.models.llava import LlavaVLM  # noqa: E402

TEXT: dict[str, Any] = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=37, max_position_embeddings=64, rope_theta=1e6,
    rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2, sliding_window=None,
)  # fmt: skip


def _build(directory: Path, seed: int = 0, **changes: Any) -> Any:
    """A random `MistralForCausalLM` saved to `directory` (weights drawn wider than the init so
    that greedy tokens differ between positions)."""
    torch.manual_seed(seed)
    config = transformers.MistralConfig(**{**TEXT, **changes})
    model = transformers.MistralForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(directory)
    return model


def _holes(batch: int, length: int) -> torch.Tensor:
    """Left padding on two rows, a hole in the middle of another, one full row."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :3] = 0
    mask[1, 2:4] = 0
    mask[2, :1] = 0
    return mask


def _same_logits(reference: Any, ours: Any, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    assert (got - expected)[keep].abs().max() < 1e-4


# head_dim 16 (not hidden // heads = 8): v0.3-style configs set it explicitly.
@pytest.mark.parametrize("changes", [{}, {"head_dim": 16}, {"tie_word_embeddings": True}],
                         ids=["plain", "head_dim", "tied"])  # fmt: skip
def test_logits_match_with_holes(tmp_path: Path, changes: dict[str, Any]) -> None:
    reference = _build(tmp_path, **changes)
    ours = vlkit.from_pretrained(tmp_path)
    assert isinstance(ours, DecoderLM)
    assert ours.config.head_dim == changes.get("head_dim", 8)
    assert not ours.config.attention_bias and not ours.config.qkv_bias
    ids = torch.randint(3, 99, (4, 9), generator=torch.Generator().manual_seed(1))
    for mask in (_holes(4, 9), None):
        _same_logits(reference, ours, ids, mask)


def test_greedy_generate_left_padded(tmp_path: Path) -> None:
    reference = _build(tmp_path)
    ours = vlkit.from_pretrained(tmp_path)
    ids = torch.randint(3, 99, (3, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[1, :4] = 0
    ids = ids.masked_fill(mask == 0, 0)  # the pad id
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        got = ours.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert got.shape[1] > ids.shape[1]


def test_save_pretrained_loads_in_transformers(tmp_path: Path) -> None:
    reference = _build(tmp_path / "hf", head_dim=16)
    ours = vlkit.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["model_type"] == "mistral"
    assert written["architectures"] == ["MistralForCausalLM"]
    assert written["sliding_window"] is None and written["head_dim"] == 16
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(again).__name__ == "MistralForCausalLM"
    ids = torch.randint(3, 99, (4, 9), generator=torch.Generator().manual_seed(2))
    _same_logits(reference, again, ids, _holes(4, 9))
    _same_logits(again, vlkit.from_pretrained(tmp_path / "ours"), ids, _holes(4, 9))


def test_sliding_window_shorter_than_context_is_refused(tmp_path: Path) -> None:
    _build(tmp_path, sliding_window=4)
    with pytest.raises(CheckpointError) as error:
        vlkit.from_pretrained(tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "config.json") in message
    assert "sliding_window 4 is below max_position_embeddings 64" in message
    # An absent key is MistralConfig's default window of 4096, below its default 131072.
    config = {
        k: v for k, v in TEXT.items() if k not in ("sliding_window", "max_position_embeddings")
    }
    with pytest.raises(CheckpointError, match="sliding_window 4096 is below"):
        causal_lm_config({"model_type": "mistral", **config})


def test_sliding_window_as_long_as_context_masks_nothing(tmp_path: Path) -> None:
    """transformers' window of W lets each token see W tokens (itself included), so W >=
    max_position_embeddings masks nothing up to that length: the whole 16-token context here
    (with the window at 15 it would, and the logits of the last token would differ)."""
    reference = _build(tmp_path, sliding_window=16, max_position_embeddings=16)
    ours = vlkit.from_pretrained(tmp_path)
    ids = torch.randint(3, 99, (4, 16), generator=torch.Generator().manual_seed(3))
    _same_logits(reference, ours, ids, _holes(4, 16))
    reference.config.sliding_window = 15  # the check can fail: a window that bites differs
    with torch.no_grad():
        windowed = reference(ids).logits[:, -1]
        assert (windowed - ours(ids).logits[:, -1]).abs().max() > 1e-3


# LlavaVisionText2TextModelTester's CLIP tower (tests/parity/test_transformers_llava.py).
VISION = {
    "model_type": "clip_vision_model", "image_size": 8, "patch_size": 2, "num_channels": 3,
    "hidden_size": 32, "projection_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 37,
}  # fmt: skip


def test_llava_with_mistral_text_config(tmp_path: Path) -> None:
    text = {"model_type": "mistral", **TEXT, "pad_token_id": 1}
    config = transformers.LlavaConfig(
        text_config=text, vision_config=VISION, image_token_index=0,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.LlavaForConditionalGeneration(config).eval()
    reference.save_pretrained(tmp_path / "llava")
    model = vlkit.from_pretrained(tmp_path / "llava")
    assert isinstance(model, LlavaVLM)
    count = (8 // 2) ** 2  # CLS dropped by the "default" strategy
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 99, (3, count + 6), generator=gen)
    ids[:, :count] = 0
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    pixels = torch.rand(3, 3, 8, 8, generator=gen)
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        got = model(ids, pixels, mask).logits
    keep = mask.bool()
    assert (got - expected)[keep].abs().max() < 1e-4
    model.save_pretrained(tmp_path / "ours")
    again = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert again.config.text_config.model_type == "mistral"
    assert again.config.text_config.sliding_window is None
    with torch.no_grad():
        resaved = again(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    assert (resaved - expected)[keep].abs().max() < 1e-4
    # A sparse text_config takes MistralConfig's defaults: an absent sliding_window is 4096.
    raw = json.loads((tmp_path / "llava" / "config.json").read_text())
    raw["text_config"].pop("sliding_window", None)
    raw["text_config"].pop("max_position_embeddings", None)
    (tmp_path / "llava" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="text_config: sliding_window 4096 is below"):
        vlkit.from_pretrained(tmp_path / "llava")
