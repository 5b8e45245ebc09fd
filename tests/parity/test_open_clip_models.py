"""open_clip's model tests, run side by side against vlkit.

open_clip's tests/test_inference.py runs every built-in model config (`open_clip.list_models()`)
against golden outputs of the released weights; tests/test_hf_model.py covers its Hugging Face
text towers. Without downloads, the same coverage here is: every built-in config, shrunk to a
tiny random model that keeps its options (activation, MLP ratio, pooling, eos id, ResNet or ViT,
plus 3 remainder pixels on every ViT image size), is either loaded by vlkit with open_clip's own
outputs, or refused with one line that names each unsupported option (timm and Hugging Face
towers, CoCa, LayerScale, average pooling). Hand-made configs add open_clip options that no
built-in config combines with its own towers (`custom_text`, GELU `act_kwargs`, bidirectional
text with last-token pooling and a biased projection, a logit bias, a logit scale above ln 100).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re

import pytest
import torch
from safetensors.torch import save_file

open_clip = pytest.importorskip("open_clip")

from vlkit.cli import main  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hub import from_pretrained  # noqa: E402
from vlkit.hub.open_clip import config_from_open_clip  # noqa: E402

BUILT_IN = sorted(open_clip.list_models())
# The option-bearing keys of a config, minus sizes: one built-in config per distinct signature is
# run numerically (the others differ only in sizes, which the shrinking removes anyway).
_SIZES = {"layers", "width", "heads", "head_width", "image_size", "patch_size", "context_length",
          "vocab_size", "hf_tokenizer_name", "tokenizer_kwargs"}  # fmt: skip


def _signature(cfg: dict) -> str:
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    return json.dumps({
        "top": {k: v for k, v in cfg.items() if k not in ("vision_cfg", "text_cfg", "embed_dim")},
        "resnet": isinstance(vision.get("layers"), list),
        "vision": {k: v for k, v in vision.items() if k not in _SIZES},
        "text": {k: v for k, v in text.items() if k not in _SIZES},
    }, sort_keys=True)  # fmt: skip


def _shrink(cfg: dict) -> dict:
    """A tiny copy of an open_clip model config that keeps every option."""
    cfg = copy.deepcopy(cfg)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if isinstance(vision.get("layers"), list):
        vision.update(layers=[1, 1, 1, 1], width=16, head_width=16, image_size=32)
    elif "timm_model_name" not in vision:
        patch = vision.get("patch_size", 16)
        vision.update(layers=1, width=32, head_width=16, image_size=2 * patch + 3)
    if "hf_model_name" not in text:
        text.update(layers=1, width=32, heads=4, context_length=8)
        text["vocab_size"] = min(text.get("vocab_size", 49408), 64)
    cfg["embed_dim"] = 24
    return cfg


def _accepted(name: str) -> bool:
    try:
        config_from_open_clip(open_clip.get_model_config(name))
    except CheckpointError:
        return False
    return True


def _one_per_signature(names: list[str]) -> list[str]:
    first: dict[str, str] = {}
    for name in names:
        first.setdefault(_signature(open_clip.get_model_config(name)), name)
    return list(first.values())


NUMERIC = _one_per_signature([n for n in BUILT_IN if _accepted(n)])
REFUSED = [n for n in BUILT_IN if not _accepted(n)]


def _random_open_clip(cfg: dict) -> torch.nn.Module:
    """open_clip's own model for `cfg` (CustomTextCLIP when `custom_text`, as its factory does)."""
    model_class = open_clip.model.CustomTextCLIP if cfg.get("custom_text") else open_clip.model.CLIP
    model = model_class(**{k: v for k, v in cfg.items() if k != "custom_text"})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point() and name not in ("logit_scale", "logit_bias"):
                value.add_(torch.randn(value.shape, generator=g) * 0.05)
                if "running_var" in name:
                    value.abs_()
    return model.eval()


def _save(reference: torch.nn.Module, cfg: dict, directory) -> None:
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, directory / "open_clip_model.safetensors")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))


def _assert_same(reference: torch.nn.Module, cfg: dict, directory) -> None:
    _save(reference, cfg, directory)
    ours = from_pretrained(directory)
    size = ours.config.vision.image_size
    text = cfg["text_cfg"]
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, size, size, generator=g)
    ids = torch.randint(1, text["vocab_size"] - 1, (3, text["context_length"]), generator=g)
    eos = text.get("eos_id", text["vocab_size"] - 1)  # argmax pooling: the largest id
    ids[0, 2], ids[1, 5], ids[2, -1] = eos, eos, eos  # texts of unequal lengths
    with torch.no_grad():
        image, text_emb = ours.encode_image(pixels), ours.encode_text(ids)
        torch.testing.assert_close(image, reference.encode_image(pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text_emb, reference.encode_text(ids), atol=1e-5, rtol=1e-5)
        out = reference(pixels, ids)
        expected = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        if out.get("logit_bias") is not None:
            expected = expected + out["logit_bias"]
        logits = ours.logits(image, text_emb)
    torch.testing.assert_close(logits, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)


@pytest.mark.parametrize("name", NUMERIC)
def test_built_in_config_matches_open_clip(tmp_path, name):
    cfg = _shrink(open_clip.get_model_config(name))
    _assert_same(_random_open_clip({**cfg, "output_dict": True}), cfg, tmp_path)


_DEFAULTS = {
    section: {f.name: f.default for f in dataclasses.fields(kind)}
    for section, kind in (("vision_cfg", open_clip.model.CLIPVisionCfg),
                          ("text_cfg", open_clip.model.CLIPTextCfg))
}  # fmt: skip


@pytest.mark.parametrize("name", REFUSED)
def test_built_in_config_is_refused_naming_each_unsupported_option(name):
    cfg = open_clip.get_model_config(name)
    with pytest.raises(CheckpointError) as error:
        config_from_open_clip(cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith("open_clip config options not supported")
    named = re.findall(r"(vision_cfg|text_cfg)\.(\w+)=", message)
    assert named or "multimodal_cfg" in message
    for section, option in named:  # every option named is set, and not to open_clip's default
        assert cfg[section][option] != _DEFAULTS[section][option]
    if "hf_model_name" in cfg["text_cfg"]:  # open_clip's tests/test_hf_model.py towers
        assert "text_cfg.hf_model_name=" in message and "Hugging Face text tower" in message


HAND_MADE = {
    # A SigLIP-style text tower on open_clip's own ViT (CustomTextCLIP layout, text.* keys).
    "custom-text-siglip-style": {
        "embed_dim": 24, "custom_text": True, "init_logit_bias": -10.0,
        "vision_cfg": {"image_size": 19, "patch_size": 8, "width": 32, "head_width": 16,
                       "layers": 1, "act_kwargs": {"approximate": "tanh"},
                       "norm_kwargs": {"eps": 1e-6}},
        "text_cfg": {"width": 32, "heads": 4, "layers": 2, "context_length": 8, "vocab_size": 64,
                     "no_causal_mask": True, "pool_type": "last", "proj_bias": True,
                     "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}},
    },
    # eos pooling without eos_id: open_clip's CLIPTextCfg default (2).
    "eos-pool-default-id": {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 30, "patch_size": 4, "width": 32, "head_width": 8,
                       "layers": 2, "no_ln_pre": True, "final_ln_after_pool": True},
        "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 8, "vocab_size": 64,
                     "pool_type": "eos", "final_ln_after_pool": True},
    },
    "odd-mlp-ratio-quick-gelu": {
        "embed_dim": 13, "quick_gelu": True,
        "vision_cfg": {"image_size": 17, "patch_size": 5, "width": 48, "head_width": 12,
                       "layers": 1, "mlp_ratio": 2.6},
        "text_cfg": {"width": 24, "heads": 3, "layers": 1, "context_length": 8, "vocab_size": 64,
                     "mlp_ratio": 3.3},
    },
}  # fmt: skip


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_hand_made_config_matches_open_clip(tmp_path, name):
    cfg = HAND_MADE[name]
    _assert_same(_random_open_clip({**cfg, "output_dict": True}), cfg, tmp_path)


@pytest.mark.parametrize("scale", [math.log(100) + 0.2, 6.0])
def test_logit_scale_above_ln_100_gives_open_clips_logits(tmp_path, scale):
    # open_clip clamps logit_scale in its training loop (training/train.py), not in the forward.
    cfg = HAND_MADE["odd-mlp-ratio-quick-gelu"]
    reference = _random_open_clip({**cfg, "output_dict": True})
    with torch.no_grad():
        reference.logit_scale.fill_(scale)
    _assert_same(reference, cfg, tmp_path)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["vision_cfg"].update(act_kwargs={"approximate": "cubic"}), "act_kwargs"),
        (lambda c: c["text_cfg"].update(block_type="custom"), "text_cfg.block_type='custom'"),
        (
            lambda c: c.update(quick_gelu=True) or c["text_cfg"].update(act_kwargs={"a": 1}),
            "text_cfg.act_kwargs",
        ),
        (lambda c: c["vision_cfg"].update(image_size=[30, 20]), "image_size"),
    ],
)
def test_other_unsupported_options_are_named(edit, named):
    cfg = copy.deepcopy(HAND_MADE["eos-pool-default-id"])
    edit(cfg)
    with pytest.raises(CheckpointError, match=re.escape(named)):
        config_from_open_clip(cfg)


def test_cli_refuses_a_hugging_face_text_tower_in_one_line(tmp_path, capsys):
    directory = tmp_path / "xlm-roberta"
    directory.mkdir()
    cfg = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({"logit_scale": torch.zeros(())}, directory / "open_clip_model.safetensors")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    code = main(["zeroshot", "--model", str(directory), "--labels", "a,b", str(image)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("vlkit: error:") and "text_cfg.hf_model_name='xlm-roberta-base'" in err
