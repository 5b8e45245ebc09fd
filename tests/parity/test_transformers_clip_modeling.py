"""transformers' CLIP and SigLIP modelling tests, run side by side against vlkit.

Cases ported from transformers' tests/models/clip/test_modeling_clip.py (`CLIPVisionModelTester`,
`CLIPTextModelTester`, `CLIPModelTester`) and tests/models/siglip/test_modeling_siglip.py: their
tiny configs (30 px images, 2 px patches, width 32, 4 heads, MLP 37, vocabulary 99, 7-token
texts, 512 positions, projection 64), attention masks of unequal lengths (ones up to a random
position, as the testers build them), the output shapes (`num_patches + 1` vision tokens,
`logits_per_image` (images, texts), `logits_per_text` its transpose) and the learned
temperature. Added beyond the testers: image sizes that are not a multiple of the patch size
(transformers ignores the remainder pixels), a `logit_scale` above ln 100, text pooling variants,
vlkit's checkpoints loaded back in transformers, and the SmolVLM/Idefics3 SigLIP vision tower with
remainder pixels. Each case builds a random transformers model, saves it, loads it with vlkit.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.models.smolvlm import modeling_smolvlm

import vlkit
from vlkit.hub import from_pretrained
from vlkit.models.smolvlm_vision import SmolVLMVisionConfig, SmolVLMVisionTransformer

BATCH, SEQ, VOCAB = 12, 7, 99  # the testers' batch_size, seq_length, vocab_size
# (image_size, patch_size): the testers' 30/2, then sizes with remainder pixels.
GRIDS = [(30, 2), (30, 4), (30, 7), (17, 4), (33, 8)]
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def _randomize(model: torch.nn.Module, logit_scale: float) -> torch.nn.Module:
    """Non-trivial values everywhere (transformers' init zeroes biases, sets LayerNorms to 1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("logit_scale"):
                param.fill_(logit_scale)
            elif name.endswith("logit_bias"):
                param.fill_(-1.7)
            else:
                param.add_(torch.randn(param.shape, generator=g) * 0.05)
    return model.eval()


def _inputs(image_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids_tensor / random_attention_mask / floats_tensor as the testers build them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    mask = torch.zeros(BATCH, SEQ, dtype=torch.long)
    for row, start in enumerate(torch.randint(1, SEQ - 1, (BATCH,), generator=g).tolist()):
        mask[row, :start] = 1  # unequal lengths: ones up to a random position
    pixels = torch.rand(BATCH, 3, image_size, image_size, generator=g)
    return ids, mask, pixels


def _hf_clip(image: int, patch: int, eos: int = 49407, scale: float = 2.6592):
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, max_position_embeddings=512, eos_token_id=eos,
                         projection_dim=32, **TOWER),
        vision_config=dict(image_size=image, patch_size=patch, projection_dim=32, **TOWER),
        projection_dim=64,
    )  # fmt: skip
    return _randomize(transformers.CLIPModel(config), scale)


def _hf_siglip(image: int, patch: int, scale: float = 2.3):
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=VOCAB, max_position_embeddings=512, **TOWER),
        vision_config=dict(image_size=image, patch_size=patch, **TOWER),
    )
    return _randomize(transformers.SiglipModel(config), scale)


def _loaded(hf_model: torch.nn.Module, directory) -> vlkit.CLIP:
    hf_model.save_pretrained(directory)
    return from_pretrained(directory).eval()


def _assert_same_outputs(hf_model, ours, ids, mask, pixels) -> None:
    with torch.no_grad():
        ref = hf_model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        out = ours(pixels, ids, mask)
        tokens = ours.vision(pixels).tokens
    image, patch = ours.config.vision.image_size, ours.config.vision.patch_size
    cls = int(ours.config.vision.class_token)
    # The testers' shape checks: (image_size // patch_size)**2 patches (+ 1 CLS token for CLIP).
    assert tokens.shape == (BATCH, (image // patch) ** 2 + cls, 32)
    assert ref.vision_model_output.last_hidden_state.shape == tokens.shape
    assert out.logits_per_image.shape == ref.logits_per_image.shape == (BATCH, BATCH)
    torch.testing.assert_close(out.image_embeds, ref.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text_embeds, ref.text_embeds, atol=1e-5, rtol=1e-5)
    scale = float(ref.logits_per_image.abs().max())
    torch.testing.assert_close(out.logits_per_image, ref.logits_per_image, atol=1e-5 * scale,
                               rtol=1e-5)  # fmt: skip
    torch.testing.assert_close(out.logits_per_image.T, ref.logits_per_text, atol=1e-5 * scale,
                               rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize(("image", "patch"), GRIDS)
@pytest.mark.parametrize("use_mask", [True, False])
def test_clip_tester_config(tmp_path, image, patch, use_mask):
    hf_model = _hf_clip(image, patch)
    ours = _loaded(hf_model, tmp_path)
    ids, mask, pixels = _inputs(image)
    _assert_same_outputs(hf_model, ours, ids, mask if use_mask else None, pixels)


@pytest.mark.parametrize(("image", "patch"), GRIDS)
@pytest.mark.parametrize("use_mask", [True, False])
def test_siglip_tester_config(tmp_path, image, patch, use_mask):
    hf_model = _hf_siglip(image, patch)
    ours = _loaded(hf_model, tmp_path)
    assert isinstance(ours, vlkit.SigLIP)
    ids, mask, pixels = _inputs(image, seed=1)
    _assert_same_outputs(hf_model, ours, ids, mask if use_mask else None, pixels)


# eos 49407 (CLIPTextConfig's default, absent from a 99-token vocabulary: transformers pools at
# position 0), 2 (configs before transformers PR #24773: argmax(input_ids)), 98 (present).
@pytest.mark.parametrize("eos", [49407, 2, 98])
def test_clip_text_pooling(tmp_path, eos):
    hf_model = _hf_clip(30, 4, eos=eos)
    ours = _loaded(hf_model, tmp_path)
    ids, mask, pixels = _inputs(30, seed=2)
    ids[::2, 3] = 98  # half of the texts hold token 98
    _assert_same_outputs(hf_model, ours, ids, mask, pixels)


# logit_scale: CLIP's init ln(1/0.07); 4.7 > ln 100 (exp 110, like google/siglip-base-patch16-224);
# 6 (exp 403). transformers multiplies by exp(logit_scale) unclamped; so must vlkit.
@pytest.mark.parametrize("scale", [math.log(1 / 0.07), 4.7, 6.0])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_temperature_is_not_clamped_in_the_forward(tmp_path, scale, kind):
    hf_model = _hf_clip(30, 4, scale=scale) if kind == "clip" else _hf_siglip(30, 4, scale)
    ours = _loaded(hf_model, tmp_path)
    assert ours.temperature().item() == pytest.approx(math.exp(scale), rel=1e-6)
    ids, mask, pixels = _inputs(30, seed=3)
    _assert_same_outputs(hf_model, ours, ids, mask, pixels)


@pytest.mark.parametrize(("image", "patch"), [(30, 4), (17, 4)])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_vlkit_checkpoint_loads_in_transformers(tmp_path, image, patch, kind):
    source = _hf_clip(image, patch) if kind == "clip" else _hf_siglip(image, patch)
    ours = _loaded(source, tmp_path / "source")
    ours.save_pretrained(tmp_path / "saved", format="hf")
    model_class = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    reloaded = model_class.from_pretrained(tmp_path / "saved").eval()
    ids, mask, pixels = _inputs(image, seed=4)
    _assert_same_outputs(reloaded, ours, ids, mask, pixels)


@pytest.mark.parametrize(("image", "patch"), [(30, 4), (30, 7), (32, 8)])
@pytest.mark.parametrize("padded", [False, True])
def test_smolvlm_vision_tower_with_remainder_pixels(image, patch, padded):
    hf_config = transformers.SmolVLMVisionConfig(image_size=image, patch_size=patch, **TOWER)
    reference = _randomize(modeling_smolvlm.SmolVLMVisionTransformer(hf_config), 0.0)
    ours = SmolVLMVisionTransformer(SmolVLMVisionConfig(image_size=image, patch_size=patch,
                                                         **TOWER))  # fmt: skip
    ours.load_state_dict(reference.state_dict())
    pixels = torch.rand(3, 3, image, image, generator=torch.Generator().manual_seed(5))
    patch_mask = None
    if padded:  # the second image fills the top-left 2/3 of the canvas (Idefics3 padding)
        side = image // patch
        patch_mask = torch.ones(3, side, side, dtype=torch.bool)
        patch_mask[1, 2 * side // 3 :] = False
        patch_mask[1, :, 2 * side // 3 :] = False
    with torch.no_grad():
        expected = reference(pixels, patch_attention_mask=patch_mask).last_hidden_state
        got = ours(pixels, patch_attention_mask=patch_mask)
    assert got.shape == (3, (image // patch) ** 2, 32)
    real = slice(None) if patch_mask is None else patch_mask.reshape(3, -1)
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
