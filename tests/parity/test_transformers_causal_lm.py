"""Llama / Qwen2 / Qwen3 causal LMs: `vlkit.from_pretrained` against transformers side by side.

Tiny random checkpoints are built with transformers here (the testers' configs of
`tests/models/{llama,qwen2,qwen3}/test_modeling_*.py`: vocab 99, hidden 32, 2 layers, 4 heads,
intermediate 37, `hidden_act="gelu"`), saved, loaded by vlkit, and compared: logits within 1e-4
under padding masks with holes, with a KV cache fed a masked continuation (the testers'
`create_and_check_decoder_model_past_large_inputs`), RoPE scaling on short and long inputs
(`test_model_rope_scaling_from_config`), and greedy `generate` on left-padded batches, token for
token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import vlkit
from vlkit.errors import CheckpointError
from vlkit.models.decoder import DecoderLM

TESTER = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    hidden_act="gelu",
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
FAMILIES = {
    # name: (config class, model class, config changes)
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "llama-gqa-silu": (LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 2, "hidden_act": "silu"}),
    "llama-mqa-tied": (LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "llama-bias-theta": (LlamaConfig, LlamaForCausalLM, {"attention_bias": True, "mlp_bias": True, "rope_theta": 500.0}),
    "llama3-rope": (LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 2, "rope_scaling": LLAMA3_ROPE, "max_position_embeddings": 64}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"num_key_value_heads": 2}),
    "qwen2-tied": (Qwen2Config, Qwen2ForCausalLM, {"num_key_value_heads": 2, "tie_word_embeddings": True, "hidden_act": "silu"}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"num_key_value_heads": 2, "head_dim": 16}),
    "qwen3-tied-bias": (Qwen3Config, Qwen3ForCausalLM, {"num_key_value_heads": 4, "head_dim": 8, "tie_word_embeddings": True, "attention_bias": True}),
}  # fmt: skip


def build(directory: Path, name: str, seed: int = 0, **changes) -> torch.nn.Module:
    """A random transformers model of `FAMILIES[name]`, saved to `directory` (weights drawn
    wider than the init so that logits and greedy tokens differ clearly between positions)."""
    config_cls, model_cls, family = FAMILIES[name]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TESTER, **family, **changes})).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(directory)
    return model


def both(tmp_path: Path, name: str, **changes) -> tuple[torch.nn.Module, DecoderLM]:
    reference = build(tmp_path / name, name, **changes)
    ours = vlkit.from_pretrained(tmp_path / name)
    assert isinstance(ours, DecoderLM)
    return reference, ours


def holes_mask(batch: int, length: int) -> torch.Tensor:
    """Left padding, a hole in the middle, and a full row."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :3] = 0
    mask[1, 2:4] = 0
    if batch > 3:
        mask[3, :1] = 0
    return mask


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_with_masks(tmp_path: Path, name: str) -> None:
    reference, ours = both(tmp_path, name)
    ids = torch.randint(3, 99, (4, 9), generator=torch.Generator().manual_seed(1))
    # the testers' input mask: lower-triangular rows (right padding of every length)
    tril = torch.tril(torch.ones(4, 9, dtype=torch.long))
    with torch.no_grad():
        for mask in (None, holes_mask(4, 9), tril):
            expected = reference(ids, attention_mask=mask).logits
            got = ours(ids, attention_mask=mask).logits
            keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            assert (got - expected)[keep].abs().max() < 1e-4


@pytest.mark.parametrize("name", ["llama-gqa-silu", "qwen2", "qwen3"])
def test_cached_continuation_with_masked_tokens(tmp_path: Path, name: str) -> None:
    """`create_and_check_decoder_model_past_large_inputs`: 3 new tokens with a random mask after
    a cached prompt equal the same tokens run without a cache."""
    reference, ours = both(tmp_path, name)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 99, (5, 7), generator=gen)
    mask = torch.tril(torch.ones(5, 7, dtype=torch.long))
    next_ids = torch.randint(3, 99, (5, 3), generator=gen)
    next_mask = torch.randint(0, 2, (5, 3), generator=gen)
    full_ids, full_mask = torch.cat([ids, next_ids], 1), torch.cat([mask, next_mask], 1)
    with torch.no_grad():
        cache = ours(ids, attention_mask=mask, use_cache=True).cache
        cached = ours(next_ids, attention_mask=full_mask, cache=cache).logits
        uncached = ours(full_ids, attention_mask=full_mask).logits[:, -3:]
        expected = reference(full_ids, attention_mask=full_mask).logits[:, -3:]
    keep = next_mask.bool()
    assert (cached - uncached)[keep].abs().max() < 1e-4
    assert (cached - expected)[keep].abs().max() < 1e-4


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 10.0},
        {"rope_type": "dynamic", "factor": 10.0},
        LLAMA3_ROPE,
    ],
    ids=lambda r: r["rope_type"],
)
def test_rope_scaling_short_and_long_inputs(tmp_path: Path, rope: dict) -> None:
    """`test_model_rope_scaling_from_config`: inputs of 10 tokens and 1.5 x max_position_embeddings."""
    reference, ours = both(tmp_path, "llama", rope_scaling=rope, max_position_embeddings=32)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for length in (10, 48):
            ids = torch.randint(3, 99, (1, length), generator=gen)
            expected = reference(ids).logits
            assert (ours(ids).logits - expected).abs().max() < 1e-4, length


@pytest.mark.parametrize("name", ["llama3-rope", "qwen2-tied", "qwen3"])
def test_greedy_generate_left_padded_batch(tmp_path: Path, name: str) -> None:
    reference, ours = both(tmp_path, name)
    ids = torch.randint(3, 99, (3, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    mask[1, :4] = 0
    ids = ids.masked_fill(mask == 0, 0)  # the pad id
    options = dict(max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        for m in (mask, None):  # None: transformers and vlkit infer it from pad_token_id
            expected = reference.generate(ids, attention_mask=m, **options)
            got = ours.generate(ids, attention_mask=m, **options)
            assert got.tolist() == expected.tolist()
            assert got.shape[1] <= ids.shape[1] + 12


def test_generation_config_eos_stops_rows(tmp_path: Path) -> None:
    """The stop token comes from generation_config.json (written by transformers), here a token
    greedy decoding reaches, so rows finish early and are filled with the pad id."""
    reference = build(tmp_path / "plain", "llama-gqa-silu")
    ids = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        free = reference.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    eos = int(free[0, 5 + 2])  # the third new token of row 0
    reference.generation_config.eos_token_id = [eos]
    reference.save_pretrained(tmp_path / "eos")
    assert json.loads((tmp_path / "eos" / "generation_config.json").read_text())["eos_token_id"]
    ours = vlkit.from_pretrained(tmp_path / "eos")
    assert ours.config.eos_token_id == [eos]
    with torch.no_grad():
        expected = reference.generate(ids, max_new_tokens=8, do_sample=False)
        got = ours.generate(ids, max_new_tokens=8, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert got[0, 5:8].tolist() == free[0, 5:8].tolist() and int(got[0, 7]) == eos
    assert (got[0, 8:] == ours.config.pad_token_id).all()  # finished: filled with the pad id


def test_inputs_embeds_match_input_ids(tmp_path: Path) -> None:
    reference, ours = both(tmp_path, "qwen3")
    ids = torch.randint(3, 99, (2, 6))
    with torch.no_grad():
        embeds = ours.get_input_embeddings()(ids)
        got = ours(inputs_embeds=embeds).logits
        expected = reference(inputs_embeds=reference.get_input_embeddings()(ids)).logits
    assert (got - expected).abs().max() < 1e-4


def _write_config(tmp_path: Path, name: str, **changes) -> Path:
    directory = tmp_path / name
    build(directory, "qwen2" if "qwen" in name else "llama")
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
         ["config.json", "rope_type", "'yarn'"]),
        ({"use_sliding_window": True, "sliding_window": 4}, ["config.json", "use_sliding_window"]),
        ({"hidden_act": "swish_beta"}, ["config.json", "hidden_act", "'swish_beta'"]),
    ],
    ids=["rope-yarn", "sliding-window", "hidden-act"],
)  # fmt: skip
def test_unsupported_configs_are_one_line(tmp_path: Path, changes: dict, words: list[str]) -> None:
    name = "qwen-bad" if "use_sliding_window" in changes else "llama-bad"
    directory = _write_config(tmp_path, name, **changes)
    with pytest.raises(CheckpointError) as info:
        vlkit.from_pretrained(directory)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_model_type_names_config_and_value(tmp_path: Path) -> None:
    directory = _write_config(tmp_path, "mystery", model_type="mistery_lm", architectures=["X"])
    with pytest.raises(CheckpointError) as info:
        vlkit.from_pretrained(directory)
    assert "config.json" in str(info.value) and "mistery_lm" in str(info.value)


def test_architectures_dispatch_without_model_type(tmp_path: Path) -> None:
    directory = _write_config(tmp_path, "arch-only", model_type=None)
    assert isinstance(vlkit.from_pretrained(directory), DecoderLM)


def test_dynamic_rope_generation_crosses_max_positions(tmp_path: Path) -> None:
    """Dynamic NTK rescales once positions pass max_position_embeddings mid-generation; the
    cached keys keep their earlier rotation, in both implementations."""
    rope = {"rope_type": "dynamic", "factor": 4.0}
    reference, ours = both(tmp_path, "llama", rope_scaling=rope, max_position_embeddings=8)
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        expected = reference.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        got = ours.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("name", ["llama3-rope", "qwen2-tied", "qwen3"])
def test_save_pretrained_round_trips_through_transformers(tmp_path: Path, name: str) -> None:
    """transformers -> vlkit -> save_pretrained -> transformers: same family, same logits."""
    from transformers import AutoModelForCausalLM

    reference, ours = both(tmp_path, name)
    ours.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert type(again) is type(reference)
    reloaded = vlkit.from_pretrained(tmp_path / "saved")
    assert reloaded.config == ours.config
    ids = torch.randint(3, 99, (2, 8))
    mask = holes_mask(2, 8)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        for model in (again, reloaded):
            got = model(ids, attention_mask=mask).logits
            assert (got - expected)[mask.bool()].abs().max() < 1e-4


def test_beam_search_left_padded_matches(tmp_path: Path) -> None:
    reference, ours = both(tmp_path, "qwen3")
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    options = dict(attention_mask=mask, max_new_tokens=8, num_beams=3, do_sample=False)
    with torch.no_grad():
        assert ours.generate(ids, **options).tolist() == reference.generate(ids, **options).tolist()
