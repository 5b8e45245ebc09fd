"""transformers' own CLIP / SigLIP image-processing cases, run side by side with vlkit.

Ported from transformers (v5) `tests/models/clip/test_image_processing_clip.py`,
`tests/models/clip/test_processing_clip.py`, `tests/models/siglip/test_image_processing_siglip.py`
and the shared `tests/test_image_processing_common.py` (`ImageProcessingTestMixin`:
`test_call_pil`, `test_call_numpy`, `test_call_pytorch`, `test_call_numpy_4_channels`, batched
calls, `from_dict` with `size=42, crop_size=84`). Their random-noise inputs are replaced by
real photos (`photos.py`) in every PIL mode and at odd sizes; their shape checks become
value checks: vlkit's transform for the processor's `preprocessor_config.json` must give the
processor's `pixel_values`, bit for bit, for both backends: the default `CLIPImageProcessor` /
`SiglipImageProcessor` (torchvision) and `...ImageProcessorPil`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vlkit
from vlkit.data.transforms import ImageTransform
from vlkit.hub.hf_preprocess import preprocess_config_from_hf

from .photos import MODES, ODD_SIZES, astronaut, coffee, in_mode, odd_size

transformers = pytest.importorskip("transformers")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# preprocessor_config.json contents, as the reference tests build their processors.
CONFIGS = {
    # CLIPImageProcessingTester.prepare_image_processor_dict
    "clip_tester": {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 20},
        "do_center_crop": True,
        "crop_size": {"height": 18, "width": 18},
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    },
    # test_image_processor_from_dict_with_kwargs: size=42, crop_size=84 (crop > resize: pads)
    "clip_from_dict_kwargs": {
        "image_processor_type": "CLIPImageProcessor",
        "size": 42,
        "crop_size": 84,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    },
    # test_processing_clip: openai/clip-vit-base-patch32's file (legacy int sizes)
    "clip_openai": {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "size": 224,
    },
    # test_save_load_pretrained_additional_features: do_normalize=False
    "clip_openai_no_normalize": {
        "image_processor_type": "CLIPImageProcessor",
        "size": 224,
        "crop_size": 224,
        "do_normalize": False,
    },
    # SiglipImageProcessingTester defaults
    "siglip_tester": {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": 18, "width": 18},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
    # SigLIP test_image_processor_from_dict_with_kwargs: size={"height": 84, "width": 84}
    "siglip_from_dict_kwargs": {
        "image_processor_type": "SiglipImageProcessor",
        "size": {"height": 84, "width": 84},
    },
    # Issue 19 / any valid configuration: non-square crops and resizes, steps switched off.
    "clip_non_square_crop": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 20},
        "crop_size": {"height": 18, "width": 12},
        "resample": 2,
    },
    "siglip_non_square": {
        "image_processor_type": "SiglipImageProcessor",
        "size": {"height": 24, "width": 16},
    },
    "clip_no_resize": {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": False,
        "crop_size": {"height": 18, "width": 18},
    },
    "clip_no_center_crop": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 20},
        "do_center_crop": False,
    },
    "clip_no_rescale_scalar_stats": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 20},
        "crop_size": {"height": 18, "width": 18},
        "do_rescale": False,
        "image_mean": 127.5,
        "image_std": 64.0,
    },
    "siglip_rescale_factor": {
        "image_processor_type": "SiglipImageProcessor",
        "size": {"height": 18, "width": 18},
        "rescale_factor": 1 / 127.5,
        "image_mean": [1.0, 1.0, 1.0],
        "image_std": [1.0, 1.0, 1.0],
    },
}
# Fixed-size outputs; the mode sweep runs on these.
SWEEP = ("clip_tester", "clip_from_dict_kwargs", "siglip_tester")
BACKENDS = ("torchvision", "pil")


def _reference(name: str, backend: str):
    data = CONFIGS[name]
    siglip = "siglip" in data.get("image_processor_type", "").lower()
    classes = {
        ("torchvision", False): transformers.CLIPImageProcessor,
        ("pil", False): transformers.CLIPImageProcessorPil,
        ("torchvision", True): transformers.SiglipImageProcessor,
        ("pil", True): transformers.SiglipImageProcessorPil,
    }
    kwargs = {
        k: v for k, v in data.items() if k not in ("image_processor_type", "feature_extractor_type")
    }
    return classes[backend, siglip](**kwargs)


def _ours(name: str, backend: str) -> ImageTransform:
    config = preprocess_config_from_hf(CONFIGS[name])
    if backend == "pil":
        config.pipeline = "transformers_pil"
    return ImageTransform(config)


def _pixels(processor, images) -> torch.Tensor:
    return processor(images, return_tensors="pt")["pixel_values"]


def _assert_same(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    assert ours.shape == reference.shape, what
    assert ours.dtype == reference.dtype == torch.float32, what
    assert (ours - reference).abs().max().item() <= 1e-6, what


@pytest.fixture(scope="module")
def sweep_images():
    base = {"astronaut": astronaut()}
    base.update({f"{w}x{h}": odd_size(w, h) for w, h in ODD_SIZES})
    return base


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SWEEP)
@pytest.mark.parametrize("mode", MODES)
def test_call_pil_every_mode_and_odd_size(sweep_images, name, backend, mode):
    """`test_call_pil` on real photos in every PIL mode, odd sizes included."""
    reference, ours = _reference(name, backend), _ours(name, backend)
    for label, image in sweep_images.items():
        image = in_mode(image, mode)
        _assert_same(ours(image)[None], _pixels(reference, image), f"{label} {mode}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_configuration(name, backend):
    """Each processor configuration, on an RGB and an RGBA photo, portrait and landscape."""
    reference, ours = _reference(name, backend), _ours(name, backend)
    for image in (
        astronaut(),
        in_mode(coffee().resize((150, 100)), "RGBA"),
        astronaut().rotate(90, expand=True),
    ):
        _assert_same(
            ours(image)[None], _pixels(reference, image), f"{name} {image.mode} {image.size}"
        )


def _arrays(kind: str) -> list:
    """The reference mixin's input kinds, from photos (shapes as `prepare_image_inputs`)."""
    photos = [astronaut(), coffee().resize((97, 61)), odd_size(17, 33)]
    rgb = [np.array(p) for p in photos]
    if kind == "numpy":  # test_call_numpy: channels-last uint8
        return rgb
    if kind == "pytorch":  # test_call_pytorch: channels-first uint8 tensors
        return [torch.from_numpy(a.transpose(2, 0, 1).copy()) for a in rgb]
    if kind == "numpy_4_channels":  # test_call_numpy_4_channels
        return [np.array(in_mode(p, "RGBA")) for p in photos]
    if kind == "numpy_float":  # floats in [0, 1], as a pipeline upstream may hand over
        return [a.astype(np.float32) / 255 for a in rgb]
    if kind == "pytorch_float":
        return [torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 255) for a in rgb]
    if kind == "numpy_grey":  # channels-last, one channel
        return [np.array(p.convert("L"))[..., None] for p in photos]
    raise AssertionError(kind)


KINDS = ("numpy", "pytorch", "numpy_4_channels", "numpy_float", "pytorch_float", "numpy_grey")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["clip_tester", "siglip_tester"])
@pytest.mark.parametrize("kind", KINDS)
def test_call_arrays_single_and_batched(kind, name, backend):
    """`test_call_numpy` / `test_call_pytorch` / `test_call_numpy_4_channels`: one image, then
    the batch (images of different sizes; the reference groups them by shape)."""
    if kind == "numpy_4_channels" and name.startswith("siglip"):
        pytest.skip("SiglipImageProcessingTest skips test_call_numpy_4_channels")
    reference, ours = _reference(name, backend), _ours(name, backend)
    images = _arrays(kind)
    _assert_same(ours(images[0])[None], _pixels(reference, images[0]), f"{kind} single")
    _assert_same(ours.to_batch(images), _pixels(reference, images), f"{kind} batched")


@pytest.mark.parametrize("backend", BACKENDS)
def test_call_pil_batched(backend):
    """`test_call_pil`'s batched call: PIL images of different sizes and modes in one batch."""
    reference, ours = _reference("clip_tester", backend), _ours("clip_tester", backend)
    images = [in_mode(astronaut(), "RGBA"), in_mode(coffee(), "P"), odd_size(17, 33, "L")]
    _assert_same(ours.to_batch(images), _pixels(reference, images), "batch")


@pytest.mark.parametrize("name", ["clip_openai", "siglip_tester"])
def test_saved_directory_loads_with_the_default_backend(tmp_path, name):
    """`test_image_processor_save_load_with_autoimageprocessor`: a processor saved by
    transformers loads in AutoImageProcessor as the torchvision backend (the default a user
    gets), and `vlkit.get_transform` on the same directory gives the same pixels."""
    _reference(name, "torchvision").save_pretrained(tmp_path)
    auto = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert auto.backend == "torchvision"
    ours = vlkit.get_transform(tmp_path)
    assert ours.config.pipeline == "transformers"
    image = in_mode(astronaut(), "RGBA")
    _assert_same(ours(image)[None], _pixels(auto, image), name)
    pil = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert pil.backend == "pil"
    # use_fast is the deprecated spelling of backend= in transformers 5.
    assert type(transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)) is type(
        pil
    )
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"]
