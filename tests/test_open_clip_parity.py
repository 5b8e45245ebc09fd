"""vlkit against open_clip on tiny random ViT and ModifiedResNet models saved as checkpoints."""

import json

import pytest
import torch
from safetensors.torch import save_file

open_clip = pytest.importorskip("open_clip")

from vlkit.hub import CheckpointError, from_pretrained  # noqa: E402

MODEL_CFGS = {
    "vit-quick_gelu": {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16,
                       "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 4,
                     "layers": 2},
    },
    "vit-gelu-no-ln-pre": {
        "embed_dim": 20,
        "vision_cfg": {"image_size": 30, "layers": 1, "width": 36, "head_width": 12,
                       "patch_size": 6, "no_ln_pre": True, "mlp_ratio": 2.5},
        "text_cfg": {"context_length": 12, "vocab_size": 300, "width": 24, "heads": 3,
                     "layers": 2, "mlp_ratio": 3.0},
    },
    "rn": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 4,
                     "layers": 1},
    },
}  # fmt: skip


def _random_open_clip(model_cfg):
    model = open_clip.model.CLIP(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=model_cfg["vision_cfg"],
        text_cfg=model_cfg["text_cfg"],
        quick_gelu=model_cfg.get("quick_gelu", False),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point() and name != "logit_scale":
                value.add_(torch.randn(value.shape, generator=g) * 0.05)
                if "running_var" in name:
                    value.abs_()
    return model.eval()


@pytest.mark.parametrize("name", list(MODEL_CFGS))
def test_open_clip_checkpoint_matches_open_clip(tmp_path, name):
    model_cfg = MODEL_CFGS[name]
    reference = _random_open_clip(model_cfg)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    ours = from_pretrained(tmp_path)
    size = model_cfg["vision_cfg"]["image_size"]
    pixels = torch.randn(2, 3, size, size)
    text = model_cfg["text_cfg"]
    ids = torch.randint(1, text["vocab_size"] - 1, (3, text["context_length"]))
    ids[:, 5] = text["vocab_size"] - 1  # the end-of-text token has the largest id
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_image(pixels), reference.encode_image(pixels), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            ours.encode_text(ids), reference.encode_text(ids), atol=1e-5, rtol=0
        )
        image_features, text_features, scale = reference(pixels, ids)
        torch.testing.assert_close(
            ours.logits(ours.encode_image(pixels), ours.encode_text(ids)),
            scale * image_features @ text_features.T,
            atol=1e-4,
            rtol=0,
        )


def test_open_clip_training_checkpoint_file_with_config(tmp_path):
    """open_clip's `epoch_N.pt` layout: {"epoch", "state_dict" with DDP "module." prefixes}."""
    model_cfg = MODEL_CFGS["vit-quick_gelu"]
    reference = _random_open_clip(model_cfg)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, tmp_path / "epoch_3.pt")
    (tmp_path / "ViT-tiny.json").write_text(json.dumps(model_cfg))
    with pytest.raises(CheckpointError, match="pass open_clip_config="):
        from_pretrained(tmp_path / "epoch_3.pt")
    ours = from_pretrained(tmp_path / "epoch_3.pt", open_clip_config=tmp_path / "ViT-tiny.json")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_image(pixels), reference.encode_image(pixels), atol=1e-5, rtol=0
        )


def test_unsupported_open_clip_options_are_named():
    from vlkit.hub.open_clip import config_from_open_clip

    cfg = json.loads(json.dumps(MODEL_CFGS["vit-quick_gelu"]))
    cfg["vision_cfg"]["timm_model_name"] = "vit_base_patch16_224"
    with pytest.raises(CheckpointError, match="timm_model_name"):
        config_from_open_clip(cfg)
