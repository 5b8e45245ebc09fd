"""Loading and writing weights: `skip_weight_init` and tied tensors in safetensors files.

Loaders build models inside `skip_weight_init` (no random draws that the strict load would
overwrite); the loaded weights must equal, bit for bit, the ones saved, and torch's init
functions must come back even when building fails. `write_safetensors` writes a tied weight (an
LM head sharing the embedding's memory, which safetensors refuses) under each of its names.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlkit.hub.loading import from_pretrained, save_pretrained
from vlkit.hub.weights import skip_weight_init
from vlkit.models.clip import create_model


def _perturbed(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=g) * 0.05)
    return module.eval()


@pytest.mark.parametrize("fmt", ["hf", "vlkit"])
def test_skip_weight_init_loads_the_same_model(tmp_path, fmt):
    torch.manual_seed(0)
    model = _perturbed(create_model("tiny"))
    save_pretrained(model, tmp_path / "m", format=fmt)
    loaded = from_pretrained(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_skip_weight_init_restores_torch_init():
    before = {name: getattr(nn.init, name) for name in ("normal_", "kaiming_uniform_", "zeros_")}
    tensor = torch.full((4,), 3.0)
    with pytest.raises(KeyError), skip_weight_init():
        assert nn.init.normal_(tensor) is tensor and torch.equal(tensor, torch.full((4,), 3.0))
        nn.Linear(4, 4)  # builds without drawing
        raise KeyError("a failure while building")
    for name, function in before.items():
        assert getattr(nn.init, name) is function
    nn.init.zeros_(tensor)
    assert torch.equal(tensor, torch.zeros(4))


def test_tied_weights_are_written_under_each_name(tmp_path):
    # An LM head tied to the embedding shares its memory; safetensors refuses such tensors.
    from safetensors.torch import load_file

    from vlkit.hub.weights import write_safetensors

    embedding = torch.randn(5, 3)
    state = {"embed.weight": embedding, "head.weight": embedding, "rows": embedding[1:3]}
    write_safetensors(state, tmp_path / "tied.safetensors")
    loaded = load_file(tmp_path / "tied.safetensors")
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
