"""Any-resolution ViT towers: interpolated position embeddings (issue 16 item 4).

Parity with transformers' `interpolate_pos_encoding=True` (CLIPVisionEmbeddings and
SiglipVisionEmbeddings in transformers/models/{clip,siglip}/): the position table itself, then
whole random models converted from transformers (as tests/parity/test_transformers_clip_modeling.py
does) at square, non-square and non-multiple-of-the-patch sizes. A briefly trained tower gives
sensible (not identical, not broken) zero-shot results on images twice its training size, and
`vlkit zeroshot --image-size` runs through the same path.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings
from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

import vlkit
from vlkit.cli import main
from vlkit.data.datasets.shape_scenes import SCENE_COLORS, generate_scene
from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.data.transforms import get_transform
from vlkit.hub import from_pretrained
from vlkit.inference.any_resolution import at_image_size, preprocess_at_size
from vlkit.inference.embed import zeroshot
from vlkit.models.clip import CLIP
from vlkit.models.clip_config import CLIPConfig
from vlkit.models.position_interpolation import interpolate_position_embedding
from vlkit.models.text import TextConfig
from vlkit.models.vit import ViTConfig

TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
# (height, width) at image_size 30, patch 4 (a 7x7 grid): the trained size, larger and smaller
# squares, non-square, sizes with remainder pixels, one patch, and 31x31 (7x7 patches again,
# which transformers returns without resizing).
SIZES = [(30, 30), (44, 44), (61, 37), (20, 27), (4, 4), (31, 31), (30, 45)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run ~20x faster on one thread than on two contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (transformers' init zeroes biases, sets LayerNorms to 1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    return model.eval()


def _hf_model(kind: str, image_size: int = 30, patch_size: int = 4) -> torch.nn.Module:
    vision = dict(image_size=image_size, patch_size=patch_size, **TOWER)
    text = dict(vocab_size=99, max_position_embeddings=16, **TOWER)
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        return _randomize(transformers.CLIPModel(config))
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    return _randomize(transformers.SiglipModel(config))


@pytest.fixture(scope="module", params=["clip", "siglip"])
def converted(request, tmp_path_factory):
    """(transformers model, the same weights loaded by vlkit)."""
    torch.manual_seed(0)
    hf_model = _hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(directory)
    return hf_model, from_pretrained(directory).eval()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_position_table_equals_transformers(kind, height, width):
    if kind == "clip":
        config = transformers.CLIPVisionConfig(image_size=30, patch_size=4, **TOWER)
        reference = CLIPVisionEmbeddings(config)
    else:
        config = transformers.SiglipVisionConfig(image_size=30, patch_size=4, **TOWER)
        reference = SiglipVisionEmbeddings(config)
    _randomize(reference)
    table = reference.position_embedding.weight.detach()
    patches = (height // 4) * (width // 4) + int(kind == "clip")
    embeddings = torch.zeros(1, patches, 32)  # only its shape is read
    with torch.no_grad():
        expected = reference.interpolate_pos_encoding(embeddings, height, width)[0]
    got = interpolate_position_embedding(table, height, width, 4, class_token=kind == "clip")
    assert got.shape == expected.shape == (patches, 32)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    if kind == "clip":
        assert torch.equal(got[0], table[0])  # the class token's position is never resized


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_towers_equal_transformers_at_other_sizes(converted, height, width):
    hf_model, ours = converted
    pixels = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(height))
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
        tokens = ours.vision(pixels, interpolate_pos_encoding=True).tokens
        ref_out = hf_model(input_ids=ids, pixel_values=pixels, interpolate_pos_encoding=True)
        out = ours(pixels, ids, interpolate_pos_encoding=True)
    ref_tokens = ref.last_hidden_state
    if isinstance(hf_model, transformers.CLIPModel):  # vlkit's tokens are after the final LN
        ref_tokens = hf_model.vision_model.post_layernorm(ref_tokens)
    cls = int(ours.config.vision.class_token)
    assert tokens.shape == (3, (height // 4) * (width // 4) + cls, 32)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image_embeds, ref_out.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits_per_image, ref_out.logits_per_image, atol=1e-5,
                               rtol=1e-5)  # fmt: skip


def test_mode_flag_and_errors(converted):
    _, ours = converted
    pixels = torch.rand(2, 3, 44, 36)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        ours.encode_image(pixels)
    with pytest.raises(ValueError, match="smaller than one 4x4 patch"):
        ours.encode_image(torch.rand(1, 3, 3, 30), interpolate_pos_encoding=True)
    with torch.no_grad():
        explicit = ours.encode_image(pixels, interpolate_pos_encoding=True)
        ours.set_interpolate_pos_encoding(True)
        try:
            by_mode = ours.encode_image(pixels)
            with pytest.raises(ValueError, match="interpolate_pos_encoding"):
                ours.encode_image(pixels, interpolate_pos_encoding=False)  # explicit wins
        finally:
            ours.set_interpolate_pos_encoding(False)
    torch.testing.assert_close(by_mode, explicit, atol=0, rtol=0)


def test_gradients_reach_the_learned_table():
    model = vlkit.create_model("tiny")  # 32 px, 8 px patches: a 4x4 table
    model.encode_image(torch.rand(2, 3, 56, 40), interpolate_pos_encoding=True).sum().backward()
    grad = model.vision.position_embedding.grad
    assert grad is not None and bool((grad.abs().sum(-1) > 0).all())


def test_bfloat16_tables_are_resized_in_float32():
    table = torch.randn(1 + 16, 8)  # a class row and a 4x4 grid
    expected = interpolate_position_embedding(table, 56, 40, 8, class_token=True)
    got = interpolate_position_embedding(table.bfloat16(), 56, 40, 8, class_token=True)
    assert got.dtype == torch.bfloat16 and got.shape == (1 + 7 * 5, 8)
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.02)


def test_resnet_towers_refuse_with_one_line():
    model = vlkit.create_model("small-rn-64")
    with pytest.raises(ValueError, match="needs a ViT image tower"):
        model.encode_image(torch.rand(1, 3, 96, 96), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="only ViT image towers"):
        at_image_size(model, 96)


def test_preprocess_scales_every_size():
    clip = PreprocessConfig(image_size=224, resize_size=256)  # shortest edge 256, crop 224
    assert preprocess_at_size(clip, 448).resize_size == 512
    assert preprocess_at_size(clip, 448).image_size == 448
    # A non-square output: the crop fits inside the resized image, nothing is zero-padded.
    tall = get_transform(preprocess_at_size(clip, (448, 224)), train=False)
    pixels = tall(Image.new("RGB", (300, 300), (255, 255, 255)))  # (3, 448, 224)
    assert pixels.shape == (3, 448, 224) and torch.allclose(pixels, pixels[:, :1, :1])
    squash = PreprocessConfig(image_size=(224, 224), resize_mode="squash", resize_size=(240, 240))
    assert preprocess_at_size(squash, (112, 448)).resize_size == (120, 480)
    assert preprocess_at_size(PreprocessConfig(), 96).resize_size is None  # derived, as before


# --- a briefly trained tower at twice its training size ---------------------------------------

COLORS = list(SCENE_COLORS)
EOS = len(COLORS) + 1  # prompt ids: [1 + colour, EOS]; EOS is the largest id (argmax pooling)


def _scenes(count: int, seed: int) -> list[tuple[Image.Image, int]]:
    """Single-object scenes rendered at 128 px (the transform resizes them), labelled by colour."""
    rng = random.Random(seed)
    scenes = [generate_scene(rng, image_size=128, max_objects=1) for _ in range(count)]
    return [(image, COLORS.index(objects[0].color)) for image, objects in scenes]


def _prompts(colors: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 + colors, torch.full_like(colors, EOS)], dim=1)  # (N, 2)


def _train_colour_clip(steps: int = 250) -> CLIP:
    """A 32 px, 8 px-patch CLIP trained contrastively on 'colour' prompts (~8 s on one core)."""
    torch.manual_seed(0)
    text = TextConfig(vocab_size=EOS + 1, context_length=2, width=32, layers=1, heads=2,
                      mlp_dim=64, eos_token_id=EOS)  # fmt: skip
    config = CLIPConfig(
        vision=ViTConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_dim=64),
        text=text,
        embed_dim=32,
        preprocess=PreprocessConfig(image_size=32, resize_mode="squash"),
    )
    model = CLIP(config)
    transform = get_transform(config.preprocess)
    data = _scenes(512, seed=0)
    images = torch.stack([transform(image) for image, _ in data])  # (512, 3, 32, 32)
    colors = torch.tensor([color for _, color in data])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(steps):
        batch = torch.randint(0, len(data), (32,))
        image_emb = model.encode_image(images[batch], normalize=True)
        text_emb = model.encode_text(_prompts(colors[batch]), normalize=True)
        # Same-colour pairs are all positives: soft InfoNCE targets spread over them.
        same = (colors[batch][:, None] == colors[batch][None]).float()
        targets = same / same.sum(1, keepdim=True)
        logits = model.temperature() * image_emb @ text_emb.T
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_trained_tower_at_twice_the_size_gives_sensible_zero_shot():
    model = _train_colour_clip()
    test = _scenes(48, seed=1)
    truth = torch.tensor([color for _, color in test])
    embeddings, predictions = {}, {}
    with torch.no_grad():
        classifier = model.encode_text(_prompts(torch.arange(len(COLORS))), normalize=True)
        for size in (32, 64):
            transform = get_transform(preprocess_at_size(model.config.preprocess, size))
            pixels = torch.stack([transform(image) for image, _ in test])  # (48, 3, size, size)
            image_emb = model.encode_image(pixels, normalize=True, interpolate_pos_encoding=True)
            embeddings[size], predictions[size] = image_emb, (image_emb @ classifier.T).argmax(1)
    # Measured (2-core CPU, torch 2.14): accuracy 0.94 at 32 px, 0.98 at 64 px, 92% of the
    # predictions agree, mean cosine 0.91 between the two sizes' embeddings.
    for size in (32, 64):
        assert (predictions[size] == truth).float().mean() >= 0.75, size
    assert (predictions[32] == predictions[64]).float().mean() >= 0.75
    cosine = (embeddings[32] * embeddings[64]).sum(-1)
    assert cosine.mean() >= 0.8
    assert (embeddings[32] - embeddings[64]).abs().max() > 1e-3  # really another input


# --- vlkit zeroshot --image-size ---------------------------------------------------------------


def test_zeroshot_at_another_image_size(checkpoint, tmp_path, capsys):
    image, _ = _scenes(1, seed=2)[0]
    path = tmp_path / "scene.png"
    image.save(path)
    labels = ["a red shape", "a blue shape", "a star"]
    results = zeroshot([path], str(checkpoint), labels, image_size=48)
    model = vlkit.from_pretrained(checkpoint).eval()  # the tiny preset: 32 px, 8 px patches
    tokenizer = vlkit.get_tokenizer(checkpoint)
    with torch.no_grad():
        transform = get_transform(preprocess_at_size(model.config.preprocess, 48))
        pixels = transform(Image.open(path))[None]
        assert pixels.shape == (1, 3, 48, 48)
        image_emb = model.encode_image(pixels, normalize=True, interpolate_pos_encoding=True)
        text_emb = model.encode_text(tokenizer(labels), normalize=True)
        expected = (model.temperature() * image_emb @ text_emb.T).softmax(-1)[0]
    got = {item["label"]: item["probability"] for item in results[0]["ranking"]}
    for label, probability in zip(labels, expected.tolist(), strict=True):
        assert got[label] == pytest.approx(probability, abs=1e-5)
    default = zeroshot([path], str(checkpoint), labels)[0]["ranking"]
    assert {item["label"]: item["probability"] for item in default} != got

    code = main(["zeroshot", str(path), "--model", str(checkpoint), "--labels", "a,b",
                 "--image-size", "48", "--json"])  # fmt: skip
    assert code == 0 and len(json.loads(capsys.readouterr().out)[0]["ranking"]) == 2
    code = main(["zeroshot", str(path), "--model", str(checkpoint), "--labels", "a,b",
                 "--image-size", "4"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "at least the patch size, 8" in err
