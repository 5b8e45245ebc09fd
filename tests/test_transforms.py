"""Image loading and preprocessing, checked against open_clip and transformers on real photos."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.data.images import ImageLoadError, load_image, load_images, to_rgb
from vlkit.data.preprocess_config import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    PreprocessConfig,
)
from vlkit.data.transforms import (
    ImageTransform,
    get_transform,
    random_resized_crop_params,
    to_batch,
)
from vlkit.errors import CheckpointError
from vlkit.hub.hf_preprocess import preprocess_config_from_hf, preprocess_config_to_hf

# Float32 rounding of the reference; observed differences against PIL-based references are 0.
EXACT = 1e-6

CLIP = PreprocessConfig()
CLIP_FLOOR = PreprocessConfig(crop_rounding="floor")
SIGLIP = PreprocessConfig(resize_mode="squash", mean=SIGLIP_MEAN, std=SIGLIP_STD)
# What preprocess_config_from_hf gives for transformers' default processors.
HF_CLIP = PreprocessConfig(crop_rounding="floor", pipeline="transformers")
HF_SIGLIP = PreprocessConfig(
    resize_mode="squash",
    mean=SIGLIP_MEAN,
    std=SIGLIP_STD,
    crop_rounding="floor",
    center_crop=False,
    pipeline="transformers",
)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """Real photos of several sizes / aspect ratios, plus crops that stress the edge cases."""
    data = pytest.importorskip("skimage.data")
    arrays = {
        "astronaut": data.astronaut(),  # 512x512
        "coffee": data.coffee(),  # 600x400, landscape
        "chelsea": data.chelsea(),  # 451x300, odd width
        "rocket": data.rocket(),  # 640x427: resized long side 335, excess 111 -> crops differ
        "camera": data.camera(),  # 512x512 grayscale ("L")
    }
    arrays["portrait"] = arrays["rocket"][:, 100:333]  # 233 wide x 427 tall
    arrays["odd"] = arrays["chelsea"][1:300, 3:450]  # 447 x 299
    arrays["tiny"] = arrays["coffee"][100:137, 200:253]  # 53 x 37, upscaled
    # Aspect ratio within (3/4, 4/3), so a 0.9-1.0 area random crop fits (wider photos fall
    # back to the center crop every time).
    arrays["near_square"] = arrays["rocket"][:, 100:580]  # 480 x 427
    return {name: Image.fromarray(np.ascontiguousarray(a)) for name, a in arrays.items()}


@pytest.fixture(scope="module")
def open_clip():
    return pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hf(processor, image: Image.Image) -> torch.Tensor:
    return torch.as_tensor(np.asarray(processor(image, return_tensors="pt")["pixel_values"][0]))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape == (3, 224, 224)
    assert a.dtype == torch.float32
    return (a - b).abs().max().item()


def _alpha_photo(photo: Image.Image) -> Image.Image:
    """An RGBA photo with a left-to-right alpha ramp (fully transparent at the left)."""
    rgba = photo.convert("RGBA")
    ramp = np.tile(np.linspace(0, 255, photo.width).astype(np.uint8), (photo.height, 1))
    rgba.putalpha(Image.fromarray(ramp))
    return rgba


# --------------------------------------------------------------------------- eval parity


def test_eval_matches_open_clip(photos, open_clip):
    reference = open_clip.image_transform(
        224, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD
    )
    ours = ImageTransform(CLIP)
    for name, photo in photos.items():
        assert _max_diff(ours(photo), reference(photo)) <= EXACT, name


def test_eval_matches_open_clip_squash_and_bilinear(photos, open_clip):
    squash = open_clip.image_transform(
        224, is_train=False, mean=SIGLIP_MEAN, std=SIGLIP_STD, resize_mode="squash"
    )
    bilinear = open_clip.image_transform(224, is_train=False, interpolation="bilinear")
    ours_squash = ImageTransform(SIGLIP)
    ours_bilinear = ImageTransform(PreprocessConfig(interpolation="bilinear"))
    for name, photo in photos.items():
        assert _max_diff(ours_squash(photo), squash(photo)) <= EXACT, name
        assert _max_diff(ours_bilinear(photo), bilinear(photo)) <= EXACT, name


def test_eval_matches_transformers_pil_backend(photos, transformers):
    clip = transformers.CLIPImageProcessorPil()
    clip_bilinear = transformers.CLIPImageProcessorPil(resample=2)
    siglip = transformers.SiglipImageProcessorPil()
    ours_clip = ImageTransform(PreprocessConfig(crop_rounding="floor", pipeline="transformers_pil"))
    ours_bilinear = ImageTransform(
        PreprocessConfig(
            interpolation="bilinear", crop_rounding="floor", pipeline="transformers_pil"
        )
    )
    ours_siglip = ImageTransform(
        PreprocessConfig(
            resize_mode="squash", mean=SIGLIP_MEAN, std=SIGLIP_STD, pipeline="transformers_pil"
        )
    )
    # Transparency is composited onto white by both sides.
    inputs = dict(photos, rgba=_alpha_photo(photos["chelsea"]))
    inputs["palette_transparent"] = photos["coffee"].quantize(64)
    inputs["palette_transparent"].info["transparency"] = 0
    for name, photo in inputs.items():
        assert _max_diff(ours_clip(photo), _hf(clip, photo)) <= EXACT, name
        assert _max_diff(ours_bilinear(photo), _hf(clip_bilinear, photo)) <= EXACT, name
        assert _max_diff(ours_siglip(photo), _hf(siglip, photo)) <= EXACT, name


def test_crop_rounding_round_vs_floor(photos):
    # torchvision rounds (half to even) the crop offset, transformers floors: one pixel apart
    # exactly when the excess is 3 mod 4 (rocket: 335 - 224 = 111).
    round_, floor = ImageTransform(CLIP), ImageTransform(CLIP_FLOOR)
    rocket = photos["rocket"]
    assert not torch.equal(round_(rocket), floor(rocket))
    assert torch.equal(round_(rocket)[:, :, :-1], floor(rocket)[:, :, 1:])
    assert torch.equal(round_(photos["coffee"]), floor(photos["coffee"]))  # excess 112


def test_eval_matches_transformers_default_torchvision_backend(photos, transformers):
    """`CLIPImageProcessor` / `SiglipImageProcessor` (what AutoImageProcessor gives by default)
    resize uint8 tensors with torch's antialiased interpolate; pipeline="transformers" does
    the same, bit for bit."""
    assert transformers.CLIPImageProcessor().backend == "torchvision"
    cases = [
        (ImageTransform(HF_CLIP), transformers.CLIPImageProcessor()),
        (ImageTransform(HF_SIGLIP), transformers.SiglipImageProcessor()),
    ]
    inputs = dict(photos, rgba=_alpha_photo(photos["chelsea"]))
    for ours, processor in cases:
        for name, photo in inputs.items():
            assert torch.equal(ours(photo), _hf(processor, photo)), name


def test_pipelines_differ_on_non_rgb(photos, open_clip):
    # open_clip resizes RGBA premultiplied and drops alpha; transformers composites onto white
    # first. The same geometry gives different pixels: the pipeline field must follow origin.
    rgba = _alpha_photo(photos["chelsea"])
    assert not torch.equal(ImageTransform(CLIP)(rgba), ImageTransform(HF_CLIP)(rgba))
    reference = open_clip.image_transform(224, is_train=False)
    assert torch.equal(ImageTransform(CLIP)(rgba), reference(rgba))


# --------------------------------------------------------------------------- HF config files


@pytest.mark.parametrize(
    ("config", "model_type"),
    [
        (HF_CLIP, "clip"),
        (HF_SIGLIP, "siglip"),
        (
            PreprocessConfig(
                image_size=160,
                interpolation="bilinear",
                crop_rounding="floor",
                pipeline="transformers_pil",
            ),
            "clip",
        ),
        (CLIP, "clip"),  # default rounding and pipeline: written down, ignored by transformers
        (PreprocessConfig(image_size=(18, 12), resize_size=20, pipeline="transformers"), "clip"),
    ],
)
def test_hf_config_round_trip(tmp_path, photos, transformers, config, model_type):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(preprocess_config_to_hf(config, model_type))
    )
    assert preprocess_config_from_hf(tmp_path) == config
    pil_cls, tv_cls = {
        "clip": (transformers.CLIPImageProcessorPil, transformers.CLIPImageProcessor),
        "siglip": (transformers.SiglipImageProcessorPil, transformers.SiglipImageProcessor),
    }[model_type]
    auto = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto) is tv_cls
    pil = pil_cls.from_pretrained(tmp_path)
    tv = tv_cls.from_pretrained(tmp_path)
    ours = vlkit.get_transform(tmp_path)
    # transformers floors the crop offset; compare on a photo where both roundings agree.
    photo = photos["chelsea"]
    reference = tv if config.pipeline == "transformers" else pil
    expected = _hf(reference, photo)
    assert expected.shape == (3, *config.output_size)
    assert (ours(photo) - expected).abs().max().item() <= EXACT


def test_hf_config_from_real_style_files():
    # openai/clip-vit-base-patch32 style (legacy ints, feature extractor type).
    legacy = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "resample": 3,
        "size": 224,
    }
    assert preprocess_config_from_hf(legacy) == HF_CLIP
    # google/siglip-base-patch16-224 style: no do_center_crop key.
    siglip = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 384, "width": 384},
    }
    expected = PreprocessConfig(
        image_size=384,
        resize_mode="squash",
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        crop_rounding="floor",
        center_crop=False,
        pipeline="transformers",
    )
    assert preprocess_config_from_hf(siglip) == expected
    with pytest.raises(ValueError, match="resample"):
        preprocess_config_from_hf(dict(legacy, resample=1))
    with pytest.raises(ValueError, match="size"):
        preprocess_config_from_hf(dict(siglip, size={"longest_edge": 224}))
    with pytest.raises(ValueError, match="do_pad"):
        preprocess_config_from_hf(dict(siglip, do_pad=True))
    with pytest.raises(ValueError, match="do_convert_rgb"):
        preprocess_config_from_hf(dict(siglip, do_convert_rgb=False))
    # Shapes the old reader refused: a non-square squash, a crop smaller than the resize.
    wide = preprocess_config_from_hf(dict(siglip, size={"height": 224, "width": 256}))
    assert wide.image_size == (224, 256) and wide.resize_size is None
    small_crop = preprocess_config_from_hf(dict(legacy, size={"shortest_edge": 20}, crop_size=18))
    assert (small_crop.image_size, small_crop.resize_size) == (18, 20)
    with pytest.raises(ValueError, match="longest"):
        preprocess_config_to_hf(PreprocessConfig(resize_mode="longest"), "clip")
    with pytest.raises(ValueError, match="model_type"):
        preprocess_config_to_hf(CLIP, "llava")


def test_get_transform_sources(tmp_path, photos):
    assert get_transform(CLIP).config is CLIP
    assert get_transform(CLIP, train=True).train
    # The data layer takes configs only; checkpoint directories go through vlkit.get_transform.
    with pytest.raises(TypeError, match="vlkit.get_transform"):
        get_transform(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        preprocess_config_from_hf(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "preprocessor_config.json" in str(info.value)
    with pytest.raises(CheckpointError, match="no preprocessor_config.json"):
        vlkit.get_transform(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(preprocess_config_to_hf(HF_SIGLIP, "siglip"))
    )
    transform = vlkit.get_transform(str(tmp_path))
    assert transform.config == HF_SIGLIP
    assert torch.equal(transform(photos["tiny"]), ImageTransform(HF_SIGLIP)(photos["tiny"]))


# --------------------------------------------------------------------------- train mode


def test_random_resized_crop_params_match_torchvision():
    transforms = pytest.importorskip("torchvision.transforms")
    shapes = [(640, 427), (233, 427), (53, 37), (1000, 10), (10, 1000)]  # last two: fallback
    for width, height in shapes:
        image = Image.new("RGB", (width, height))
        for seed in range(5):
            for scale in [(0.9, 1.0), (0.08, 1.0)]:
                torch.manual_seed(seed)
                expected = transforms.RandomResizedCrop.get_params(
                    image, list(scale), [3 / 4, 4 / 3]
                )
                torch.manual_seed(seed)
                assert random_resized_crop_params(width, height, scale) == expected


def test_train_matches_open_clip(photos, open_clip):
    reference = open_clip.image_transform(
        224, is_train=True, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD
    )
    ours = ImageTransform(CLIP, train=True)
    for seed, name in enumerate(["near_square", "astronaut", "camera", "coffee"]):
        torch.manual_seed(seed)
        expected = reference(photos[name])
        torch.manual_seed(seed)
        assert _max_diff(ours(photos[name]), expected) <= EXACT, name


def test_train_generator_is_seedable(photos):
    photo = photos["near_square"]
    ours = ImageTransform(CLIP, train=True)
    first = ours(photo, torch.Generator().manual_seed(1))
    again = ImageTransform(CLIP, train=True, generator=torch.Generator().manual_seed(1))(photo)
    other = ours(photo, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (3, 224, 224)


# --------------------------------------------------------------------------- batching


def test_to_batch(tmp_path, photos):
    path = tmp_path / "tiny.png"
    photos["tiny"].save(path)
    batch = to_batch([photos["tiny"], path, photos["camera"]], CLIP)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    single = ImageTransform(CLIP)
    assert torch.equal(batch[0], single(photos["tiny"]))
    assert torch.equal(batch[1], batch[0])  # PNG is lossless
    assert torch.equal(batch[2], single(photos["camera"]))
    assert torch.equal(single.to_batch([photos["camera"]])[0], batch[2])
    with pytest.raises(ValueError):
        to_batch([], CLIP)


# --------------------------------------------------------------------------- image loading


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    # 40 wide x 20 tall: red left half, blue right half. Orientation 6 means "rotate 90 degrees
    # clockwise to display", after which the left half (red) is on top.
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(array), tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert pixels[:15, :, 0].mean() > 200 and pixels[:15, :, 2].mean() < 60  # red on top
    assert pixels[25:, :, 2].mean() > 200 and pixels[25:, :, 0].mean() < 60  # blue below


def test_modes_become_rgb(tmp_path):
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (4, 1))  # 4 x 32
    cases = {}
    cases["gray.png"] = (Image.fromarray(gray), np.stack([gray] * 3, -1))
    # 16-bit PNG: clipped at 255 by PIL's convert, as transformers and open_clip see it.
    wide = (gray.astype(np.uint16) * 257).astype(np.uint16)
    cases["gray16.png"] = (Image.fromarray(wide), np.stack([np.minimum(wide, 255)] * 3, -1))
    assert Image.fromarray(wide).mode == "I;16"
    # 32-bit float TIFF: clipped too (values in [0, 1] become 0 or 1).
    floats = gray.astype(np.float32) / 255
    cases["float.tiff"] = (Image.fromarray(floats), np.stack([np.rint(floats)] * 3, -1))
    # Palette, plain.
    rgb = np.zeros((4, 32, 3), np.uint8)
    rgb[:, :16] = (10, 200, 30)
    rgb[:, 16:] = (250, 20, 90)
    cases["palette.png"] = (Image.fromarray(rgb).quantize(4), rgb)
    # Palette with a transparent index: that colour becomes white.
    transparent = Image.fromarray(rgb).quantize(4)
    index = transparent.getpixel((0, 0))
    transparent.info["transparency"] = index
    expected = rgb.copy()
    expected[:, :16] = 255
    cases["palette_transparent.png"] = (transparent, expected)
    # RGBA: composited onto white (transformers' convert_to_rgb), alpha 0 -> white,
    # alpha 255 -> the colour, alpha 128 -> halfway.
    rgba = np.concatenate([rgb, np.zeros((4, 32, 1), np.uint8)], -1)
    rgba[:, 8:16, 3] = 255
    rgba[:, 16:, 3] = 128
    expected = np.full_like(rgb, 255)
    expected[:, 8:16] = rgb[:, 8:16]
    expected[:, 16:] = np.round((rgb[:, 16:].astype(int) * 128 + 255 * 127) / 255)
    cases["rgba.png"] = (Image.fromarray(rgba), expected)
    # Grayscale + alpha.
    la = Image.merge("LA", [Image.fromarray(gray), Image.new("L", (32, 4), 0)])
    cases["la.png"] = (la, np.full((4, 32, 3), 255, np.uint8))
    for name, (image, expected) in cases.items():
        loaded = load_image(_save(image, tmp_path / name))
        assert loaded.mode == "RGB" and loaded.size == (32, 4), name
        np.testing.assert_allclose(np.asarray(loaded).astype(int), expected, atol=1, err_msg=name)
    # CMYK JPEG (lossy: loose tolerance), and in-memory modes via to_rgb.
    cmyk = Image.fromarray(rgb).convert("CMYK")
    loaded = load_image(_save(cmyk, tmp_path / "cmyk.jpg", quality=100))
    assert loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded).astype(int) - rgb).mean() < 8
    assert to_rgb(Image.fromarray(gray)).mode == "RGB"
    wide32 = Image.fromarray(gray.astype(np.int32) * 257)
    assert np.asarray(to_rgb(wide32))[0, -1, 0] == 255  # clipped
    # The documented opt-in scales instead.
    assert np.asarray(to_rgb(wide32, rescale_high_bit_depth=True))[0, -1, 0] == 248
    assert np.asarray(to_rgb(Image.fromarray(wide), rescale_high_bit_depth=True))[0, -1, 0] == 248
    assert load_image(tmp_path / "rgba.png", keep_mode=True).mode == "RGBA"


def test_load_errors_name_the_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "JPEG"
    )
    data = buffer.getvalue()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not an image\n")
    missing = tmp_path / "missing.png"
    for path, words in [
        (truncated, "truncated"),
        (not_image, "not a recognised image"),
        (missing, "no such file"),
        (tmp_path, "directory"),
    ]:
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message
        assert isinstance(info.value, ValueError)
    good = _save(Image.new("RGB", (5, 7), (1, 2, 3)), tmp_path / "good.png")
    images = load_images([good, str(good)])
    assert [im.size for im in images] == [(5, 7), (5, 7)]
    with pytest.raises(ImageLoadError, match="missing.png"):
        load_images([good, missing])


# --------------------------------------------------------------------------- config options


@pytest.mark.parametrize("pipeline", ["open_clip", "transformers", "transformers_pil"])
def test_high_bit_depth_clips_unless_rescaling_is_asked_for(photos, pipeline):
    grey = photos["camera"]  # "L"
    wide = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # "I;16", full range
    clip = ImageTransform(PreprocessConfig(image_size=32, pipeline=pipeline))
    rescale = ImageTransform(
        PreprocessConfig(image_size=32, pipeline=pipeline, rescale_high_bit_depth=True)
    )
    white = clip(Image.new("L", grey.size, 255))
    # The references clip at 255: a 16-bit photo is (almost) white.
    assert (clip(wide) - white).abs().max().item() < 0.05
    # The opt-in scales 65535 -> 255: the photo looks like its 8-bit version.
    assert (rescale(wide) - clip(grey)).abs().max().item() <= EXACT


def test_config_errors_name_the_field():
    for field, value in [
        ("resize_mode", "letterbox"),
        ("interpolation", "lanczos"),
        ("pipeline", "timm"),
        ("crop_rounding", "ceil"),
    ]:
        with pytest.raises(ValueError, match=field):
            PreprocessConfig(**{field: value})
    with pytest.raises(ValueError, match="image_size"):
        PreprocessConfig(image_size=(1, 2, 3))
    with pytest.raises(ValueError, match="longest"):
        PreprocessConfig(resize_mode="longest", pipeline="transformers")
    with pytest.raises(TypeError, match="numpy array"):
        ImageTransform(CLIP)("not an image")


def test_array_and_tensor_inputs_match_the_pil_image(photos):
    photo = photos["chelsea"]
    array = np.asarray(photo)
    for config in (CLIP, HF_CLIP, PreprocessConfig(pipeline="transformers_pil")):
        transform = ImageTransform(config)
        expected = transform(photo)
        assert torch.equal(transform(array), expected)
        assert torch.equal(transform(torch.from_numpy(array.copy()).permute(2, 0, 1)), expected)
        assert transform.output_size == (224, 224) and transform.image_size == 224
