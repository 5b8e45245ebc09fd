"""Contracts every model honours, published parameter counts, and configuration round trips."""

import copy
import math

import pytest
import torch

import vlkit
from vlkit.models import CLIPConfig, ResNetConfig

# Published sizes (open_clip / transformers parameter counts of the released checkpoints).
PUBLISHED_PARAMETERS = {
    "clip-vit-b-32": 151.3e6,
    "clip-vit-b-16": 149.6e6,
    "clip-vit-l-14": 427.6e6,
    "clip-rn50": 102.0e6,
    "siglip-b-16-224": 203.2e6,
}


@pytest.mark.parametrize("preset", list(PUBLISHED_PARAMETERS))
def test_preset_parameter_count_matches_published(preset):
    with torch.device("meta"):
        model = vlkit.create_model(preset)
    assert model.num_parameters() == pytest.approx(PUBLISHED_PARAMETERS[preset], rel=0.005)


def _small_variants():
    tiny = vlkit.PRESETS["tiny"]
    siglip = copy.deepcopy(vlkit.PRESETS["siglip-b-16-224"])
    siglip.vision.__init__(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_dim=128,
                           activation="gelu_pytorch_tanh", layer_norm_eps=1e-6, class_token=False,
                           patch_bias=True, pre_norm=False, pool="map")  # fmt: skip
    siglip.text.__init__(vocab_size=300, context_length=16, width=48, layers=2, heads=4,
                         mlp_dim=96, activation="gelu_pytorch_tanh", causal=False,
                         pooling="last", eos_token_id=1, pad_token_id=1)  # fmt: skip
    siglip.embed_dim = 64
    resnet = CLIPConfig(
        vision=ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=4, output_dim=32),
        text=copy.deepcopy(tiny.text),
        embed_dim=32,
        vision_projection=False,
    )
    return {"tiny": tiny, "siglip": siglip, "resnet": resnet}


VARIANTS = _small_variants()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_contract(name):
    """Forward, backward, shapes, dtype and determinism, for every kind of model."""
    config = VARIANTS[name]
    model = vlkit.create_model(copy.deepcopy(config))
    size, length = config.vision.image_size, config.text.context_length
    images = torch.randn(3, 3, size, size)
    ids = torch.randint(1, config.text.vocab_size - 1, (4, length))
    ids[:, -3] = config.text.vocab_size - 1
    vision_out = model.vision(images)
    assert vision_out.tokens.ndim == 3 and vision_out.tokens.shape[0] == 3
    assert vision_out.pooled.shape[0] == 3
    text_out = model.text(ids)
    assert text_out.tokens.shape == (4, length, config.text.width)
    output = model(images, ids)
    assert output.image_embeds.shape == (3, config.embed_dim)
    assert output.text_embeds.shape == (4, config.embed_dim)
    assert output.logits_per_image.shape == (3, 4)
    assert output.image_embeds.dtype == torch.float32
    torch.testing.assert_close(output.image_embeds.norm(dim=-1), torch.ones(3))
    output.logits_per_image.logsumexp(dim=1).sum().backward()
    assert model.logit_scale.grad is not None
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == [], unused
    model.eval()
    with torch.no_grad():
        first = model.encode_image(images)
        assert torch.equal(first, model.encode_image(images))
        # Each row is independent of the rest of the batch.
        torch.testing.assert_close(model.encode_image(images[:1]), first[:1], atol=1e-5, rtol=0)


def test_logits_normalize_scale_and_bias():
    model = vlkit.create_model(VARIANTS["siglip"])
    image, text = torch.randn(2, 64), torch.randn(5, 64)
    expected = (
        model.logit_scale.exp()
        * torch.nn.functional.normalize(image, dim=-1)
        @ torch.nn.functional.normalize(text, dim=-1).T
        + model.logit_bias
    )
    torch.testing.assert_close(model.logits(image, text), expected)
    assert model.logit_scale.item() == pytest.approx(2.302585, abs=1e-6)  # ln 10
    assert model.logit_bias.item() == -10.0
    clip = vlkit.create_model("tiny")
    assert clip.temperature().item() == pytest.approx(1 / 0.07, rel=1e-5)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_json_round_trip(tmp_path, name):
    config = VARIANTS[name]
    config.to_json(tmp_path / "c.json")
    assert CLIPConfig.from_json(tmp_path / "c.json") == config


def test_unknown_config_keys_are_named():
    data = vlkit.PRESETS["tiny"].to_dict()
    data["vision"]["patchsize"] = 4
    with pytest.raises(ValueError, match=r"unknown keys in vision config: \['patchsize'\]"):
        CLIPConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown preset 'vit-huge'"):
        vlkit.create_model("vit-huge")


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_explicit_attention_path_equals_sdpa_and_returns_maps(tower):
    model = vlkit.create_model("tiny").eval()
    with torch.no_grad():
        if tower == "vision":
            inputs = (torch.randn(2, 3, 32, 32),)
            fast, slow = model.vision(*inputs), model.vision(*inputs, return_attention=True)
            tokens = 1 + (32 // 8) ** 2
        else:
            ids = torch.randint(1, 1000, (2, 32))
            fast, slow = model.text(ids), model.text(ids, return_attention=True)
            tokens = 32
    torch.testing.assert_close(slow.pooled, fast.pooled, atol=1e-5, rtol=0)
    assert len(slow.attentions) == 2
    attention = slow.attentions[0]
    assert attention.shape == (2, 4, tokens, tokens)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, tokens))
    if tower == "text":  # causal: nothing attends to the future
        assert attention.triu(1).abs().max() == 0


def test_text_padding_mask_does_not_change_the_end_of_text_feature():
    model = vlkit.create_model("tiny").eval()
    ids = torch.zeros(1, 32, dtype=torch.long)
    ids[0, :6] = torch.tensor([49406, 320, 1125, 539, 320, 49407])
    mask = (ids != 0).long()
    mask[0, 0] = 1
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(ids), model.encode_text(ids, mask), atol=1e-5, rtol=0
        )


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = vlkit.create_model("tiny").train()
    images, ids = torch.randn(4, 3, 32, 32), torch.randint(1, 1000, (4, 32))

    def grads():
        model.zero_grad()
        model(images, ids).logits_per_image.logsumexp(1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_gradient_checkpointing(True)
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_wrong_input_shapes_are_named():
    model = vlkit.create_model("tiny")
    with pytest.raises(
        ValueError, match=r"expected images of shape \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"
    ):
        model.encode_image(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="L <= 32"):
        model.encode_text(torch.zeros(1, 40, dtype=torch.long))


def test_image_size_need_not_be_a_multiple_of_the_patch_size():
    # transformers and open_clip ignore the remainder pixels (stride-p convolution).
    config = copy.deepcopy(vlkit.PRESETS["tiny"])
    config.vision.image_size, config.vision.patch_size = 30, 8  # 3x3 patches, 6 pixels unused
    model = vlkit.create_model(CLIPConfig.from_dict(config.to_dict())).eval()
    pixels = torch.randn(2, 3, 30, 30)
    assert model.vision(pixels).tokens.shape[1] == 3 * 3 + 1
    changed = pixels.clone()
    changed[:, :, 24:, :] = changed[:, :, :, 24:] = 5.0  # only the unused rows and columns
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(changed), model.encode_image(pixels))
    with pytest.raises(ValueError, match=r"patch_size must be in \[1, image_size=30\], got 31"):
        vlkit.models.vit.ViTConfig(image_size=30, patch_size=31)


def test_temperature_is_not_clamped_outside_training():
    # CLIP's clamp at 100 is applied to the parameter by the trainer after each optimizer step
    # (as open_clip's training/train.py does); loaded checkpoints keep their value.
    model = vlkit.create_model("tiny")
    with torch.no_grad():
        model.logit_scale.fill_(5.0)
    image, text = torch.randn(2, 64), torch.randn(3, 64)
    cosine = (
        torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    )
    torch.testing.assert_close(model.logits(image, text), math.exp(5.0) * cosine)
