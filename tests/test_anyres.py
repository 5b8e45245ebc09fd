"""Any-resolution VLM inputs (issue 16 item 4): LLaVA-NeXT "anyres" tiling and feature packing
against transformers, and the Qwen-VL path (a ViT at any size read by the `QwenResampler`).

References: transformers' `select_best_resolution` (image_processing_utils.py),
`get_anyres_image_grid_shape` / `image_size_to_num_patches` / `unpad_image` /
`LlavaNextModel.pack_image_features` (models/llava_next/modeling_llava_next.py),
`LlavaNextImageProcessor` (the torchvision backend) and `LlavaNextProcessor.
_get_number_of_features` (the placeholder count), on real photos (scikit-image's) and on
image sizes chosen to hit every branch (wide, tall, exact fits, ties, tiny images). The
Qwen-VL path has no reference implementation to compare with: its tests check the fixed query
count at every input size, that the 2-D positions matter, and that gradients reach every part.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from skimage import data as skdata
from transformers import LlavaNextImageProcessor
from transformers.image_processing_utils import select_best_resolution as hf_select
from transformers.models.llava_next import modeling_llava_next as hf_llava_next
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

import vlkit
from vlkit.data.anyres_tiling import (
    LLAVA_NEXT_PINPOINTS,
    anyres_grid_shape,
    anyres_pixel_values,
    select_best_resolution,
)
from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.fusion.projector import LlavaProjector
from vlkit.fusion.qwen_resampler import QwenResampler
from vlkit.models.anyres import (
    AnyResolutionEncoder,
    anyres_token_count,
    pack_anyres_features,
    unpad_features,
)
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.qwen_vl import QwenVLM

TILE, PATCH = 32, 8  # the tiny preset's tower: 32 px inputs, 8 px patches -> 4x4 per view
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # LLaVA-NeXT's grids, scaled
# (height, width): wide, tall, square, exact pinpoint sizes, ties, tiny and large images.
SIZES = [(200, 90), (134, 200), (50, 140), (23, 61), (64, 64), (32, 96), (96, 32), (30, 30),
         (1, 500), (500, 1), (337, 673), (1000, 999), (7, 3)]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread than on two contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("pinpoints", [PINPOINTS, [list(p) for p in LLAVA_NEXT_PINPOINTS]])
@pytest.mark.parametrize("size", SIZES + [(336, 672), (700, 300), (2000, 600), (1, 1)])
def test_grid_selection_equals_transformers(size, pinpoints):
    tile = pinpoints[0][0]
    assert select_best_resolution(size, pinpoints) == tuple(hf_select(size, pinpoints))
    assert anyres_grid_shape(size, pinpoints, tile) == tuple(
        hf_llava_next.get_anyres_image_grid_shape(size, pinpoints, tile)
    )
    rows, cols = anyres_grid_shape(size, pinpoints, tile)
    assert 1 + rows * cols == hf_llava_next.image_size_to_num_patches(size, pinpoints, tile)


def _photos() -> list[Image.Image]:
    """Real photos cut to wide, tall and small shapes."""
    astronaut, coffee, cat = skdata.astronaut(), skdata.coffee(), skdata.chelsea()
    arrays = [astronaut[:200, :90], coffee[::3, ::3], cat[:50, :140], astronaut[:23, :61],
              cat[::4, ::4], coffee[:96, :32]]  # fmt: skip
    return [Image.fromarray(array) for array in arrays]


def test_tiles_equal_llava_next_image_processor():
    processor = LlavaNextImageProcessor(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=PINPOINTS,
    )
    preprocess = PreprocessConfig(image_size=TILE, pipeline="transformers", crop_rounding="floor")
    for image in _photos():
        reference = processor(images=[image], return_tensors="pt")
        views, size = anyres_pixel_values(image, PINPOINTS, preprocess)
        assert size == tuple(reference.image_sizes[0].tolist()) == (image.height, image.width)
        rows, cols = anyres_grid_shape(size, PINPOINTS, TILE)
        assert views.shape == (1 + rows * cols, 3, TILE, TILE)
        torch.testing.assert_close(views, reference.pixel_values[0], atol=0, rtol=0)


def test_tiling_rejects_bad_pinpoints():
    preprocess = PreprocessConfig(image_size=TILE)
    with pytest.raises(ValueError, match="not a multiple of the tile size"):
        anyres_pixel_values(_photos()[0], [[32, 48]], preprocess)
    with pytest.raises(ValueError, match="pinpoints is empty"):
        select_best_resolution((10, 10), [])


def _hf_pack(features, size, newline):
    """transformers' pack_image_features on a stand-in for its model (it reads the config)."""
    config = SimpleNamespace(
        vision_config=SimpleNamespace(image_size=TILE, patch_size=PATCH),
        image_grid_pinpoints=PINPOINTS,
    )
    model = SimpleNamespace(config=config)
    packed, lengths = hf_llava_next.LlavaNextModel.pack_image_features(
        model, [features], torch.tensor([size]), "default", image_newline=newline
    )
    return packed[0], int(lengths[0])


def _hf_token_count(size) -> int:
    """LlavaNextProcessor's placeholder count (`_get_number_of_features`, "default": no CLS)."""
    processor = SimpleNamespace(
        image_processor=SimpleNamespace(image_grid_pinpoints=PINPOINTS),
        patch_size=PATCH,
        num_additional_image_tokens=1,
    )
    processor._get_unpadded_features = lambda *args: LlavaNextProcessor._get_unpadded_features(
        processor, *args
    )
    return LlavaNextProcessor._get_number_of_features(processor, *size, TILE, TILE) - 1


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("with_newline", [True, False])
def test_packing_and_token_count_equal_transformers(size, with_newline):
    rows, cols = anyres_grid_shape(size, PINPOINTS, TILE)
    side = TILE // PATCH
    g = torch.Generator().manual_seed(sum(size))
    features = torch.randn(1 + rows * cols, side * side, 12, generator=g)
    newline = torch.randn(12, generator=g) if with_newline else None
    expected, length = _hf_pack(features, size, newline)
    got = pack_anyres_features(features, size, PINPOINTS, TILE, newline)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    count = anyres_token_count(size, PINPOINTS, TILE, PATCH, newline=with_newline)
    assert got.shape[0] == length == count
    if with_newline:
        assert count == _hf_token_count(size)


def test_unpad_keeps_the_image_region():
    canvas = torch.arange(2 * 8 * 16.0).reshape(2, 8, 16)  # (D, H, W): a 1x2 grid of tiles
    wide = unpad_features(canvas, (10, 40))  # 4:1 image in a 1:2 canvas -> rows cut
    assert wide.shape == (2, 4, 16) and torch.equal(wide, canvas[:, 2:6])
    tall = unpad_features(canvas, (40, 40))  # square image -> columns cut
    assert tall.shape == (2, 8, 8) and torch.equal(tall, canvas[:, :, 4:12])


def test_encoder_on_a_vlkit_tower_has_the_counted_length_and_trains():
    torch.manual_seed(0)
    tower = vlkit.create_model("tiny").vision  # 32 px, 8 px patches, width 64
    encoder = AnyResolutionEncoder(
        VisionTokens(tower, source="hidden:-2", freeze=True, drop_first=True),
        LlavaProjector(64, 24),
        dim=24,
        pinpoints=PINPOINTS,
        tile_size=TILE,
    )
    preprocess = PreprocessConfig(image_size=TILE, pipeline="transformers", crop_rounding="floor")
    for image in _photos()[:3]:
        views, size = anyres_pixel_values(image, PINPOINTS, preprocess)
        features = encoder(views, size)
        assert features.shape == (anyres_token_count(size, PINPOINTS, TILE, PATCH), 24)
        features.square().mean().backward()
    assert encoder.image_newline.grad is not None and encoder.image_newline.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.connector.parameters())
    assert all(p.grad is None for p in tower.parameters())  # the frozen tower gets none


# --- Qwen-VL: the position-aware adapter over a ViT at any resolution ---------------------------

QUERIES, IMAGE_TOKEN = 9, 99  # a 3x3 query grid; the placeholder id of the tiny LM below


def _qwen_vlm(freeze_tower: bool = False) -> QwenVLM:
    torch.manual_seed(0)
    tower = vlkit.create_model("tiny").vision  # 32 px, 8 px patches, width 64, a CLS token
    decoder = DecoderLM(DecoderConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_layers=1, num_heads=4, num_kv_heads=2))  # fmt: skip
    return QwenVLM(
        VisionTokens(tower, freeze=freeze_tower, drop_first=True),
        QwenResampler(32, num_queries=QUERIES, num_heads=4, media_dim=64),
        decoder,
        IMAGE_TOKEN,
    )


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 48), (40, 56), (64, 24), (8, 8),
                                               (35, 41)])  # fmt: skip
def test_qwen_path_gives_the_fixed_query_count_at_every_size(height, width):
    model = _qwen_vlm()
    pixels = torch.rand(2, 1, 3, height, width)
    features = model.encode_images(pixels)
    assert features.shape == (2 * QUERIES, 32)
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * QUERIES + [5, 6]] * 2)
    out = model(ids, pixels, labels=ids)
    out.loss.backward()
    tower = model.vision.tower
    for name, module in [("connector", model.connector), ("tower", tower)]:
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad), name
    # Every learned position row receives gradient through the bicubic resize.
    assert bool((tower.position_embedding.grad.abs().sum(-1) > 0).all())


def test_qwen_positions_make_the_grid_layout_matter():
    resampler = QwenResampler(32, num_queries=QUERIES, num_heads=4, media_dim=64).eval()
    tokens = torch.randn(1, 4 * 6, 64)  # a 4x6 grid
    with torch.no_grad():
        out = resampler(tokens, (4, 6))
        assert out.shape == (1, QUERIES, 32)
        # The same tokens read as a 6x4 grid: other key positions, another result.
        assert not torch.allclose(resampler(tokens, (6, 4)), out, atol=1e-4)
    with pytest.raises(ValueError, match="does not match 24 tokens"):
        resampler(tokens, (5, 5))


def test_qwen_attention_maps_cover_the_interpolated_grid():
    model = _qwen_vlm(freeze_tower=True).eval()
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * QUERIES + [5, 6]])
    maps = model.attention_maps(ids, torch.rand(1, 1, 3, 40, 56))
    assert maps.shape == (1, ids.shape[1], (40 // 8) * (56 // 8))
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, ids.shape[1]))
    with pytest.raises(ValueError, match="pixel_attention_mask"):
        model.encode_images(torch.rand(1, 1, 3, 32, 32), torch.ones(1, 1, 32, 32))


def test_compose_vlm_qwen_options_are_checked_before_loading_the_lm(tmp_path):
    missing = tmp_path / "no-lm"  # never reached: the checks come first
    with pytest.raises(ValueError, match="image_size: only the qwen kind"):
        vlkit.compose_vlm(vlkit.create_model("tiny"), missing, "llava", image_size=48)
    with pytest.raises(ValueError, match="the qwen kind needs a ViT tower"):
        vlkit.compose_vlm(vlkit.create_model("small-rn-64"), missing, "qwen")
    with pytest.raises(ValueError, match="image_size=4: must be at least the tower's patch size"):
        vlkit.compose_vlm(vlkit.create_model("tiny"), missing, "qwen", image_size=4)
