"""LoRA adapters between vlkit and transformers + peft, both ways, on tiny random checkpoints.

Each kind (SmolVLM, Idefics3, LLaVA with a CLIP tower, a Llama LM) is built by transformers with
random weights, saved, and loaded by `vlkit.from_pretrained`. Then:
- vlkit -> peft: `apply_lora` with random non-zero `lora_B`, `save_adapter`,
  `peft.PeftModel.from_pretrained(transformers_model, dir)`: logits within 1e-4 of vlkit's;
- peft -> vlkit: `peft.get_peft_model`, random `lora_B` (and DoRA magnitudes), `save_pretrained`,
  `vlkit.hub.peft.load_adapter`: the same logits;
- merged: `merge_and_unload` gives a plain vlkit model whose weights, in transformers' layout,
  load into the transformers model (through vlkit's `save_pretrained` where the kind has one)
  and give the adapted logits.
LLaVA's `q_proj`/`k_proj`/`v_proj` targets reach the CLIP tower too (peft suffix matching), where
vlkit's fused `qkv` is split for the adapter: that path is covered by every LLaVA case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlkit
from vlkit.hub.peft import load_adapter, save_adapter
from vlkit.training.lora import LoraSpec, apply_lora, merge_and_unload

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ATOL = 1e-4
SMOL_VISION = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 4, "intermediate_size": 32}  # fmt: skip
SMOL_TEXT = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 56, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 2, "pad_token_id": 2,
             "tie_word_embeddings": False}  # fmt: skip
LLAVA_VISION = {"model_type": "clip_vision_model", "image_size": 8, "patch_size": 2,
                "hidden_size": 32, "projection_dim": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 37}  # fmt: skip
LLAMA = {"model_type": "llama", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 37}  # fmt: skip
KINDS = ["smolvlm", "idefics3", "llava", "llama"]
# (vlkit spec, the same for peft): attention everywhere (LLaVA: the fused CLIP qkv too); a
# regex over the LM's projections with rsLoRA and DoRA; all-linear (connectors included).
SPECS = {
    "attention": dict(r=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj")),
    "lm-regex-rslora-dora": dict(
        r=2,
        alpha=4.0,
        targets=r".*(text_model|language_model|model\.layers).*_proj",
        rslora=True,
        dora=True,
    ),  # fmt: skip
    "all-linear": dict(r=3, alpha=5.0, targets="all-linear"),
}


def _peft_config(spec: dict[str, Any]) -> Any:
    targets = spec["targets"]
    return peft.LoraConfig(
        r=spec["r"], lora_alpha=spec["alpha"], use_rslora=spec.get("rslora", False),
        use_dora=spec.get("dora", False), init_lora_weights=True,
        target_modules=targets if isinstance(targets, str) else list(targets),
    )  # fmt: skip


def _build(kind: str, directory: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """A random transformers model saved to `directory` and inputs for it."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    if kind in ("smolvlm", "idefics3"):
        name = "SmolVLM" if kind == "smolvlm" else "Idefics3"
        config = getattr(transformers, f"{name}Config")(
            image_token_id=57, vision_config=SMOL_VISION, text_config=SMOL_TEXT, vocab_size=100,
            scale_factor=2, tie_word_embeddings=False,
        )  # fmt: skip
        model = getattr(transformers, f"{name}ForConditionalGeneration")(config)
        text = torch.randint(3, 57, (2, 6), generator=generator)
        ids = torch.cat([text[:, :3], torch.full((2, 4), 57), text[:, 3:]], dim=1)
        inputs = {
            "input_ids": ids,
            "pixel_values": torch.rand(2, 1, 3, 16, 16, generator=generator),
        }
    elif kind == "llava":
        config = transformers.LlavaConfig(
            text_config=LLAMA, vision_config=LLAVA_VISION, image_token_index=0,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )  # fmt: skip
        model = transformers.LlavaForConditionalGeneration(config)
        text = torch.randint(2, 99, (2, 5), generator=generator)
        ids = torch.cat([text[:, :2], torch.zeros(2, 16, dtype=torch.long), text[:, 2:]], dim=1)
        inputs = {"input_ids": ids, "pixel_values": torch.rand(2, 3, 8, 8, generator=generator)}
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
        inputs = {"input_ids": torch.randint(0, 99, (2, 9), generator=generator)}
    model.eval().save_pretrained(directory)
    return model, inputs


def _vlkit_logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        ids = inputs["input_ids"]
        rest = {k: v for k, v in inputs.items() if k != "input_ids"}
        return model(ids, **rest).logits.float()


def _hf_logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-zero B (and perturbed DoRA magnitudes), so the adapter changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.1 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("kind", KINDS)
def test_vlkit_adapter_loads_in_peft(tmp_path: Path, kind: str, spec_name: str) -> None:
    hf, inputs = _build(kind, tmp_path / "base")
    base = _hf_logits(hf, inputs)
    model = vlkit.from_pretrained(tmp_path / "base").eval()
    adapter = apply_lora(model, LoraSpec(**SPECS[spec_name]))
    if kind == "llava" and spec_name == "attention":  # the CLIP tower's fused qkv, split
        assert "vision.tower.transformer.blocks.0.attention.qkv.k_proj" in adapter.names
    _randomise(model, seed=3)
    ours = _vlkit_logits(model, inputs)
    assert (ours - base).abs().max() > 1e-2  # the adapter does something
    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    reference = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    torch.testing.assert_close(ours, _hf_logits(reference, inputs), atol=ATOL, rtol=0)
    # peft adapted the same layers vlkit did (no target silently lost or added)
    saved = vlkit.hub.weights.read_weights(tmp_path / "adapter" / "adapter_model.safetensors")
    assert set(peft.get_peft_model_state_dict(reference)) == set(saved)


@pytest.mark.parametrize("spec_name", ["attention", "lm-regex-rslora-dora"])
@pytest.mark.parametrize("kind", KINDS)
def test_peft_adapter_loads_in_vlkit(tmp_path: Path, kind: str, spec_name: str) -> None:
    hf, inputs = _build(kind, tmp_path / "base")
    reference = peft.get_peft_model(hf, _peft_config(SPECS[spec_name]))
    _randomise(reference, seed=4)
    reference.save_pretrained(tmp_path / "adapter")
    expected = _hf_logits(reference.eval(), inputs)
    model = vlkit.from_pretrained(tmp_path / "base").eval()
    load_adapter(model, tmp_path / "adapter")
    torch.testing.assert_close(_vlkit_logits(model, inputs), expected, atol=ATOL, rtol=0)


def _hf_state_of(model: Any, kind: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The merged vlkit model's weights as the transformers checkpoint holds them: through
    `save_pretrained` where vlkit writes this kind, else renamed here (SmolVLM has no writer
    yet; the prefixes are `hf_smolvlm`'s)."""
    if kind in ("llava", "llama"):
        model.save_pretrained(tmp_path / "merged")
        return vlkit.hub.weights.read_weights(tmp_path / "merged" / "model.safetensors")
    state = {}
    for key, value in model.state_dict().items():
        for old, new in (("vision.", "model.vision_model."), ("connector.", "model.connector."),
                         ("decoder.model.", "model.text_model."), ("decoder.", "")):  # fmt: skip
            if key.startswith(old):
                state[new + key[len(old) :]] = value
                break
    return state


@pytest.mark.parametrize("kind", KINDS)
def test_merged_model_is_an_ordinary_checkpoint(tmp_path: Path, kind: str) -> None:
    hf, inputs = _build(kind, tmp_path / "base")
    model = vlkit.from_pretrained(tmp_path / "base").eval()
    apply_lora(model, LoraSpec(r=4, alpha=8.0, targets="all-linear", dora=kind == "llama"))
    _randomise(model, seed=5)
    adapted = _vlkit_logits(model, inputs)
    merge_and_unload(model)
    assert not any("lora" in key or "base_layer" in key for key in model.state_dict())
    torch.testing.assert_close(_vlkit_logits(model, inputs), adapted, atol=ATOL, rtol=0)
    if kind in ("llava", "llama"):  # transformers loads vlkit's saved directory itself
        _hf_state_of(model, kind, tmp_path)
        hf = type(hf).from_pretrained(tmp_path / "merged").eval()
    else:
        missing, unexpected = hf.load_state_dict(_hf_state_of(model, kind, tmp_path), strict=False)
        assert not unexpected and all("rotary" in key for key in missing)
    torch.testing.assert_close(_hf_logits(hf, inputs), adapted, atol=ATOL, rtol=0)


def test_llava_adapter_in_transformers_4_layout_loads(tmp_path: Path) -> None:
    """Adapters trained under transformers 4 name LLaVA's modules `language_model.model.*`,
    `vision_tower.vision_model.*` and `multi_modal_projector.*`: the same weights load."""
    hf, inputs = _build("llava", tmp_path / "base")
    reference = peft.get_peft_model(hf, _peft_config(SPECS["all-linear"]))
    _randomise(reference, seed=6)
    reference.save_pretrained(tmp_path / "adapter")
    expected = _hf_logits(reference.eval(), inputs)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    renames = (("model.vision_tower.", "vision_tower.vision_model."),
               ("model.language_model.", "language_model.model."),
               ("model.multi_modal_projector.", "multi_modal_projector."),
               ("lm_head.", "language_model.lm_head."))  # fmt: skip
    old = {}
    for key, value in load_file(weights).items():
        name = key.removeprefix("base_model.model.")
        for new, legacy in renames:
            name = legacy + name[len(new) :] if name.startswith(new) else name
        old["base_model.model." + name] = value
    assert any(key.startswith("base_model.model.vision_tower.vision_model.") for key in old)
    save_file(old, weights)
    model = vlkit.from_pretrained(tmp_path / "base").eval()
    load_adapter(model, tmp_path / "adapter")
    torch.testing.assert_close(_vlkit_logits(model, inputs), expected, atol=ATOL, rtol=0)
