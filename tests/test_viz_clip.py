"""Attention rollout, text-image relevance, the similarity figure and `vlkit explain/similarity`."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import vlkit
import vlkit.api
from vlkit.cli.main import build_parser, main
from vlkit.cli.viz import explain_command, similarity_command
from vlkit.models.clip import CLIPConfig
from vlkit.models.resnet import ResNetConfig
from vlkit.viz.relevance import (
    attention_rollout,
    relevance_overlay,
    rollout_matrix,
    text_image_relevance,
)
from vlkit.viz.similarity import similarity_figure, similarity_figure_size

GRID = 32 // 8  # the tiny preset: 32 px images, 8 px patches


def _tiny() -> vlkit.CLIP:
    torch.manual_seed(0)
    return vlkit.create_model("tiny").eval()


def _tiny_resnet() -> vlkit.CLIP:
    config = CLIPConfig(
        vision=ResNetConfig(image_size=32, layers=(1, 1, 1, 1), width=8, heads=2, output_dim=64),
        text=vlkit.PRESETS["tiny"].text,
        embed_dim=64,
        vision_projection=False,
    )
    config.preprocess.image_size = 32
    return vlkit.create_model(config).eval()


def test_rollout_matches_a_hand_computed_example():
    # Tokens [CLS, p1, p2]. Layer 1 has two heads whose mean is A1; layer 2 one head, A2.
    a1_heads = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[0.2, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        ]
    )  # mean: CLS row [0.6, 0.4, 0]
    a2 = torch.tensor([[[0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    # (A + I) / 2: A1' CLS row [0.8, 0.2, 0]; A2' = [[.5, 0, .5], [.25, .75, 0], [0, 0, 1]].
    # Rollout A2' @ A1', CLS row: 0.5 * [0.8, 0.2, 0] + 0.5 * [0, 0, 1] = [0.4, 0.1, 0.5].
    rolled = rollout_matrix([a1_heads[None], a2[None]])
    torch.testing.assert_close(rolled[0, 0], torch.tensor([0.4, 0.1, 0.5]))
    torch.testing.assert_close(rolled[0, 1], torch.tensor([0.25 * 0.8, 0.25 * 0.2 + 0.75, 0.0]))
    torch.testing.assert_close(
        attention_rollout([a1_heads[None], a2[None]]), torch.tensor([[0.1, 0.5]])
    )
    # "max" fusion: layer 1's CLS row is max([1, 0, 0], [.2, .8, 0]) = [1, .8, 0]; plus I and
    # renormalised, [2, .8, 0] / 2.8 = [5/7, 2/7, 0]; rolled: 0.5 * that + 0.5 * [0, 0, 1].
    maxed = attention_rollout([a1_heads[None], a2[None]], head_fusion="max")
    torch.testing.assert_close(maxed, torch.tensor([[1 / 7, 0.5]]))


@pytest.mark.parametrize(("discard_ratio", "head_fusion"), [(0.0, "mean"), (0.5, "max")])
def test_rollout_rows_sum_to_one_on_a_vit(discard_ratio, head_fusion):
    model = _tiny()
    with torch.no_grad():
        attentions = model.vision(torch.randn(2, 3, 32, 32), return_attention=True).attentions
    rolled = rollout_matrix(attentions, discard_ratio, head_fusion)
    assert rolled.shape == (2, GRID**2 + 1, GRID**2 + 1)
    assert rolled.min() >= 0
    torch.testing.assert_close(rolled.sum(-1), torch.ones(2, GRID**2 + 1))
    assert attention_rollout(attentions, discard_ratio, head_fusion).shape == (2, GRID**2)
    with pytest.raises(ValueError, match="head_fusion"):
        rollout_matrix(attentions, head_fusion="median")


def test_explicit_attention_path_gives_the_sdpa_embeddings():
    model = _tiny()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fast = model.encode_image(pixels)
        out = model.vision(pixels, return_attention=True)
    torch.testing.assert_close(model.image_projection(out.pooled), fast, atol=1e-5, rtol=0)
    assert len(out.attentions) == model.config.vision.layers
    for attention in out.attentions:
        torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4, GRID**2 + 1))


def _brute_force_relevance(model, pixels, ids, start_layer=0):
    """Chefer et al. Eq. 5-6 written out: backward() with retained grads, loops over heads."""
    out = model.vision(pixels, return_attention=True)
    for attention in out.attentions:
        attention.retain_grad()
    image = torch.nn.functional.normalize(model.image_projection(out.pooled), dim=-1)
    text = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
    scores = model.temperature() * (image * text).sum(-1)  # (B,): each image with its text
    scores.sum().backward()
    maps = []
    for b in range(pixels.shape[0]):
        tokens = out.attentions[0].shape[-1]
        relevance = torch.eye(tokens, dtype=torch.float64)
        for attention in out.attentions[start_layer:]:
            heads = attention.shape[1]
            layer = sum(
                (attention.grad[b, h] * attention[b, h]).double().relu() for h in range(heads)
            )
            relevance = relevance + (layer / heads).detach() @ relevance
        maps.append(relevance[0, 1:].reshape(GRID, GRID))
    return torch.stack(maps).float()


@pytest.mark.parametrize("start_layer", [0, -1])
def test_relevance_equals_a_brute_force_recomputation(start_layer):
    model = _tiny()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(1, 1000, (2, 32))
    relevance = text_image_relevance(model, pixels, ids, start_layer=start_layer)
    assert relevance.shape == (2, GRID, GRID)
    assert relevance.min() >= 0 and relevance.max() > 0
    expected = _brute_force_relevance(model, pixels, ids, start_layer % 2)
    torch.testing.assert_close(relevance, expected, atol=1e-6, rtol=1e-4)
    # One text for all images is the same as repeating it.
    torch.testing.assert_close(
        text_image_relevance(model, pixels, ids[:1], start_layer),
        text_image_relevance(model, pixels, ids[:1].expand(2, -1), start_layer),
    )


def test_relevance_in_constructed_cases():
    model = _tiny()
    ids = torch.randint(1, 1000, (1, 32))
    pixels = torch.randn(1, 3, 32, 32)
    assert text_image_relevance(model, pixels, ids).std() > 0  # random image: patches differ
    # With no patch content and no positions every patch token is the same: equal relevance.
    with torch.no_grad():
        model.vision.patch_embed.weight.zero_()
        model.vision.position_embedding.zero_()
    uniform = text_image_relevance(model, pixels, ids)
    assert uniform.mean() > 0
    torch.testing.assert_close(uniform, uniform.mean().expand_as(uniform), atol=1e-7, rtol=1e-5)
    # A score that does not depend on the image has no relevant patch.
    model = _tiny()
    with torch.no_grad():
        model.image_projection.weight.zero_()
    assert text_image_relevance(model, pixels, ids).abs().max() == 0


def test_relevance_rejects_a_resnet_tower():
    model = _tiny_resnet()
    with pytest.raises(ValueError, match="ModifiedResNet"):
        text_image_relevance(model, torch.randn(1, 3, 32, 32), torch.randint(1, 99, (1, 32)))


def _photos() -> list[Image.Image]:
    return [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.coffee()),
            Image.fromarray(skimage.data.chelsea())]  # fmt: skip


def test_figures_have_the_documented_pixel_size(tmp_path):
    photos = _photos()
    texts = ["an astronaut", "a cup of coffee", "a cat", "a dog"]
    similarity = torch.rand(3, 4)
    path = similarity_figure(photos, texts, similarity, tmp_path / "sim.png", dpi=50)
    width, height = similarity_figure_size(texts, 3)
    assert abs(Image.open(path).size[0] - width * 50) <= 1
    assert abs(Image.open(path).size[1] - height * 50) <= 1
    wider = similarity_figure(photos, texts[:2], similarity[:, :2], tmp_path / "s2.png", dpi=50)
    assert Image.open(wider).size[1] < Image.open(path).size[1]  # fewer caption rows
    with pytest.raises(ValueError, match=r"expected \(3, 4\)"):
        similarity_figure(photos, texts, similarity.T, tmp_path / "bad.png")

    overlay = relevance_overlay(photos[2], torch.rand(2, GRID, GRID), tmp_path / "rel.png",
                                titles=["a", "b"])  # fmt: skip
    image = Image.open(overlay)
    assert image.size == (600, 340)
    # The heat map is drawn: the overlay differs from a plain, unmodified photo panel.
    assert np.asarray(image.convert("RGB")).std() > 10
    single = relevance_overlay(photos[0], np.random.rand(GRID**2 + 1)[None], tmp_path / "one.png")
    assert Image.open(single).size == (300, 340)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    _tiny().save_pretrained(root / "vit")
    _tiny_resnet().save_pretrained(root / "resnet")
    paths = []
    for name, photo in zip(["astronaut", "coffee", "chelsea"], _photos(), strict=True):
        paths.append(str(root / f"{name}.png"))
        photo.save(paths[-1])
    return root, paths


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)  # the `vlkit` command's own parser


def test_explain_and_similarity_commands_end_to_end(checkpoints):
    root, photos = checkpoints
    texts = ["an astronaut", "a cat"]
    args = _parse(["explain", "--model", str(root / "vit"), "--image", photos[0],
                   "--text", texts[0], "--text", texts[1], "--out", str(root / "explain.png")])  # fmt: skip
    result = explain_command(args)
    assert Image.open(result["out"]).size == (600, 340)
    model, tokenizer, transform = vlkit.api.load_clip(root / "vit")
    with torch.no_grad():
        image = model.encode_image(transform(Image.open(photos[0]))[None], normalize=True)
        expected = image @ model.encode_text(tokenizer(texts), normalize=True).T
    assert [s["text"] for s in result["scores"]] == texts
    got = torch.tensor([s["similarity"] for s in result["scores"]])
    torch.testing.assert_close(got, expected[0], atol=1e-5, rtol=0)

    args = _parse(["similarity", "--model", str(root / "resnet"), "--images", *photos,
                   "--texts", "an astronaut, a cup of coffee,a cat", "--out", str(root / "s.png")])  # fmt: skip
    result = similarity_command(args)
    assert result["texts"] == ["an astronaut", "a cup of coffee", "a cat"]
    similarity = torch.tensor(result["similarity"])
    assert similarity.shape == (3, 3) and similarity.abs().max() <= 1
    assert result["best_text"] == [result["texts"][i] for i in similarity.argmax(1)]
    width, height = similarity_figure_size(result["texts"], 3)
    assert abs(Image.open(result["out"]).size[0] - width * 100) <= 1


def test_commands_report_bad_input(checkpoints):
    root, photos = checkpoints
    explain = ["explain", "--model", str(root / "vit"), "--out", str(root / "x.png")]
    with pytest.raises(FileNotFoundError, match="missing.png: no such image file"):
        explain_command(_parse([*explain, "--image", "missing.png", "--text", "a cat"]))
    with pytest.raises(ValueError, match="at least one non-empty --text"):
        explain_command(_parse([*explain, "--image", photos[0]]))
    with pytest.raises(ValueError, match="needs a ViT image tower.*ModifiedResNet"):
        explain_command(_parse(["explain", "--model", str(root / "resnet"), "--image", photos[0],
                                "--text", "a cat", "--out", str(root / "x.png")]))  # fmt: skip
    with pytest.raises(ValueError, match="--texts is empty"):
        similarity_command(_parse(["similarity", "--model", str(root / "vit"), "--images",
                                   photos[0], "--texts", " , ", "--out", str(root / "y.png")]))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        similarity_command(_parse(["similarity", "--model", str(root / "nope"), "--images",
                                   photos[0], "--texts", "a", "--out", str(root / "y.png")]))  # fmt: skip
    assert not (root / "x.png").exists() and not (root / "y.png").exists()
    assert main([*explain, "--image", "missing.png", "--text", "a cat"]) == 2
