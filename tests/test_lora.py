"""LoRA on vlkit modules (`vlkit.training.lora`, `vlkit.hub.peft`): the spec parser, what is
trainable, merge/unmerge, the rsLoRA and DoRA formulas by hand, and one-line refusals.

Side-by-side parity with transformers + peft is in tests/parity/test_peft_parity.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("peft")

from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hub.peft import load_adapter, save_adapter  # noqa: E402
from vlkit.hub.peft_names import UnfusedLinear, fuse_back, unfuse  # noqa: E402
from vlkit.models.decoder import DecoderConfig, DecoderLM  # noqa: E402
from vlkit.overrides.parsing import ConfigError  # noqa: E402
from vlkit.training.lora import (  # noqa: E402
    LoraSpec,
    apply_lora,
    lora_parameters,
    merge_and_unload,
    merge_lora,
    parse_lora_spec,
    unmerge_lora,
)

TINY = DecoderConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=2,
                     num_heads=4, num_kv_heads=2, attention_bias=True)  # fmt: skip


def _model(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(TINY).eval()


def _randomise_b(model: nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))


# --- the spec string --------------------------------------------------------------------------


def test_parse_full_spec() -> None:
    spec = parse_lora_spec("r=16,alpha=32,dropout=0.05,targets=q_proj,k_proj,v_proj,o_proj")
    assert spec == LoraSpec(r=16, alpha=32.0, dropout=0.05,
                            targets=("q_proj", "k_proj", "v_proj", "o_proj"))  # fmt: skip
    assert parse_lora_spec("targets=q_proj,r=4,dora=true,rslora=0") == LoraSpec(
        r=4, targets=("q_proj",), dora=True, rslora=False
    )
    assert parse_lora_spec("targets=re:.*text_model.*(q|v)_proj").targets == (
        ".*text_model.*(q|v)_proj"
    )
    assert parse_lora_spec("targets=all-linear").targets == "all-linear"
    config = parse_lora_spec("r=4,alpha=8,rslora=yes,targets=fc1").to_peft()
    assert (config.r, config.lora_alpha, config.use_rslora) == (4, 8.0, True)
    assert set(config.target_modules) == {"fc1"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("r=16,rank=3", ["'rank'", "allowed: r, alpha, dropout, targets, rslora, dora"]),
        ("r=abc", ["r", "positive integer", "'abc'"]),
        ("r=0", ["r", "positive integer"]),
        ("alpha=-1", ["alpha", "positive"]),
        ("alpha=big", ["alpha", "'big'"]),
        ("dropout=1.5", ["dropout", "[0, 1)"]),
        ("dora=maybe", ["dora", "true or false"]),
        ("r=4,q_proj", ["'q_proj'", "not key=value"]),
        ("r=4,r=8", ["r", "twice"]),
        ("targets=", ["targets", "module names"]),
    ],
)
def test_bad_specs_are_one_line(text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_lora_spec(text)
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert isinstance(info.value, ValueError)


# --- applying, training, merging ---------------------------------------------------------------


def test_only_adapters_are_trainable_and_learn() -> None:
    model = _model()
    adapter = apply_lora(model, "r=2,alpha=4,targets=q_proj,v_proj")
    assert sorted(adapter.names) == [f"model.layers.{i}.self_attn.{p}_proj"
                                     for i in (0, 1) for p in "qv"]  # fmt: skip
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 8 and len(lora_parameters(model)) == 8
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD(lora_parameters(model), lr=0.1)
    model.train()
    model(IDS).logits.logsumexp(-1).mean().backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("options", ["", ",dora=true", ",rslora=true"])
def test_merge_unmerge_and_unload_are_exact(options: str) -> None:
    model = _model()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base = model(IDS).logits.detach()
    apply_lora(model, "r=4,alpha=8,targets=all-linear" + options)
    _randomise_b(model)
    adapted = model(IDS).logits.detach()
    assert (adapted - base).abs().max() > 1e-2
    merge_lora(model)
    torch.testing.assert_close(model(IDS).logits, adapted, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(IDS).logits, adapted, atol=1e-5, rtol=0)
    q = model.model.layers[0].self_attn.q_proj.get_base_layer()
    torch.testing.assert_close(q.weight, base_state["model.layers.0.self_attn.q_proj.weight"],
                               atol=1e-6, rtol=0)  # fmt: skip
    merge_and_unload(model)
    assert set(model.state_dict()) == set(base_state)
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    assert torch.equal(model.lm_head.weight, base_state["lm_head.weight"])  # all-linear skips it
    torch.testing.assert_close(model(IDS).logits, adapted, atol=1e-5, rtol=0)
    apply_lora(model, "targets=q_proj")  # a merged model takes a new adapter


def _delta(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x) - layer.get_base_layer()(x)


def test_lora_and_rslora_scaling_by_hand() -> None:
    x = torch.randn(3, 16)
    for rslora, scale in ((False, 6.0 / 4), (True, 6.0 / math.sqrt(4))):
        model = _model()
        apply_lora(model, LoraSpec(r=4, alpha=6.0, targets=("o_proj",), rslora=rslora))
        _randomise_b(model)
        layer = model.model.layers[1].self_attn.o_proj
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        torch.testing.assert_close(_delta(layer, x), scale * x @ a.T @ b.T, atol=1e-5, rtol=0)


def test_dora_by_hand() -> None:
    """DoRA (Liu et al. 2024, eq. 5): y = m * (W + s B A) x / ||W + s B A||_row + bias, with m
    initialised to the row norms of W."""
    model = _model()
    w0 = model.model.layers[0].self_attn.k_proj.weight.detach().clone()
    apply_lora(model, LoraSpec(r=2, alpha=2.0, targets=("k_proj",), dora=True))
    layer = model.model.layers[0].self_attn.k_proj
    magnitude = layer.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(magnitude, w0.norm(dim=1), atol=1e-6, rtol=0)
    _randomise_b(model)
    with torch.no_grad():
        magnitude.mul_(1.5)
    a, b, bias = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.bias
    merged = w0 + b @ a
    x = torch.randn(5, 16)
    expected = (x @ merged.T) * (magnitude / merged.norm(dim=1)) + bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_fused_linear_split_and_fused_back() -> None:
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(8, 24))
    x = torch.randn(2, 8)
    before = holder(x)
    unfuse(holder, "0", ["q_proj", "k_proj", "v_proj"])
    assert isinstance(holder[0], UnfusedLinear) and holder[0].k_proj.weight.shape == (8, 8)
    torch.testing.assert_close(holder(x), before, atol=1e-6, rtol=0)
    fuse_back(holder)
    assert type(holder[0]) is nn.Linear
    torch.testing.assert_close(holder(x), before, atol=1e-6, rtol=0)


def test_models_without_transformers_names_use_their_own() -> None:
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    adapter = apply_lora(model, LoraSpec(r=1, targets=("encoder.2",)))
    assert adapter.layout == "vlkit" and adapter.names == {"encoder.2": "encoder.2"}


def test_no_match_and_second_adapter_refused() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"match no linear layer.*q_proj") as info:
        apply_lora(model, "targets=query")
    assert "\n" not in str(info.value)
    apply_lora(model, "targets=q_proj")
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(model, "targets=v_proj")


# --- adapter files ------------------------------------------------------------------------------


def _saved(tmp_path: Path) -> Path:
    model = _model()
    apply_lora(model, "r=2,alpha=4,targets=q_proj,v_proj")
    _randomise_b(model)
    save_adapter(model, tmp_path / "adapter", base_model="some/base")
    return tmp_path / "adapter"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    directory = _saved(tmp_path)
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "some/base" and config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (
        2, 4.0, ["q_proj", "v_proj"]
    )  # fmt: skip
    source = _model()
    apply_lora(source, "r=2,alpha=4,targets=q_proj,v_proj")
    _randomise_b(source)
    model = _model()
    load_adapter(model, directory)
    torch.testing.assert_close(model(IDS).logits, source(IDS).logits, atol=1e-6, rtol=0)


def test_adapter_file_refusals_name_file_and_key(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = _saved(tmp_path)
    weights = directory / "adapter_model.safetensors"
    state = load_file(weights)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    bad = {
        **state,
        "base_model.model.model.layers.0.self_attn.query.lora_A.weight": state[key].clone(),
    }
    save_file(bad, weights)
    with pytest.raises(
        CheckpointError, match=r"adapter_model.safetensors: key .*query.* not a linear"
    ):
        load_adapter(_model(), directory)
    save_file({**state, key: torch.zeros(3, 16)}, weights)
    with pytest.raises(
        CheckpointError,
        match=r"adapter_model.safetensors: .*q_proj.lora_A.weight has shape \(3, 16\)",
    ):
        load_adapter(_model(), directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(
        json.dumps({**config, "modules_to_save": ["lm_head"]})
    )
    with pytest.raises(
        CheckpointError,
        match=r"adapter_config.json: modules_to_save=\['lm_head'\] is not supported",
    ):
        load_adapter(_model(), directory)
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_adapter(_model(), tmp_path)
