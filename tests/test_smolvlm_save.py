"""`GenerativeVLM.save_pretrained` (`vlkit.hub.hf_smolvlm.save_smolvlm`): a SmolVLM / Idefics3
loaded by vlkit, changed, and saved loads in transformers with vlkit's logits (1e-4), and back
in vlkit unchanged; tied LM heads are stored once; a model without a transformers config is
refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

import vlkit
import vlkit.hub
from vlkit.errors import CheckpointError

transformers = pytest.importorskip("transformers")

VISION = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 4, "intermediate_size": 32}  # fmt: skip
TEXT = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "pad_token_id": 2,
        "bos_token_id": 0, "eos_token_id": 1}  # fmt: skip
IMAGE = 57


@pytest.mark.parametrize(("kind", "tied"), [("smolvlm", False), ("idefics3", True)])
def test_saved_smolvlm_loads_in_transformers_with_the_same_logits(tmp_path, kind, tied) -> None:
    name = "SmolVLM" if kind == "smolvlm" else "Idefics3"
    config_cls = getattr(transformers, f"{name}Config")
    model_cls = getattr(transformers, f"{name}ForConditionalGeneration")
    config = config_cls(image_token_id=IMAGE, tie_word_embeddings=tied, vision_config=VISION,
                        text_config={**TEXT, "tie_word_embeddings": tied}, vocab_size=100,
                        scale_factor=2)  # fmt: skip
    torch.manual_seed(0)
    model_cls(config).save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "tokenizer_config.json").write_text("{}")  # a file to carry over
    model = vlkit.from_pretrained(tmp_path / "base")
    with torch.no_grad():  # "fine-tuned": every weight moves
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    vlkit.hub.save_pretrained(model, tmp_path / "saved")  # == model.save_pretrained(...)
    saved = tmp_path / "saved"
    assert (saved / "tokenizer_config.json").is_file()
    assert json.loads((saved / "config.json").read_text())["model_type"] == kind
    reference = model_cls.from_pretrained(saved).eval()
    ids = torch.tensor([[0, 5, *[IMAGE] * 4, 7, 9, 11], [0, 6, *[IMAGE] * 4, 8, 3, 12]])
    pixels = torch.randn(2, 1, 3, 16, 16)
    with torch.no_grad():
        ours = model.eval()(input_ids=ids, pixel_values=pixels).logits
        theirs = reference(input_ids=ids, pixel_values=pixels).logits
    assert (ours - theirs).abs().max() < 1e-4
    again = vlkit.from_pretrained(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    from safetensors.torch import load_file

    assert ("lm_head.weight" in load_file(saved / "model.safetensors")) is not tied


def test_save_without_a_transformers_config_is_refused(tmp_path) -> None:
    from vlkit.models.smolvlm import GenerativeVLM

    bare = GenerativeVLM(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Module(), IMAGE)
    with pytest.raises(CheckpointError, match="no transformers config to write"):
        bare.save_pretrained(tmp_path / "x")
