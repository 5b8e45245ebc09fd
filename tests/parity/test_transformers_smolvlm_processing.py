"""transformers' own SmolVLM / Idefics3 processor, image-processor and video-processor test cases
(tests/models/smolvlm/test_processing_smolvlm.py, test_image_processing_smolvlm.py,
test_video_processing_smolvlm.py, tests/models/idefics3/test_processing_idefics3.py,
test_image_processing_idefics3.py, and the shared ProcessorTesterMixin kwargs cases), run side by
side: vlkit's `SmolVLMProcessor` against transformers 5 on the same tiny processor directories.

Every case compares the whole output, not a shape: ids, attention masks and pixel masks equal;
pixels equal to transformers' PIL backend (`*ImageProcessorPil`). Video frames are compared with
transformers' torchvision-only video processor within one Lanczos rounding step (1/255 before
the 0.5 normalisation). Video files are decoded by transformers' own PyAV reader
(`video_utils.load_video(backend="pyav")`, sampled by `SmolVLMVideoProcessor.sample_frames`):
its default backends (torchcodec, torchvision's removed decoder) are not installed.
"""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.data.smolvlm import SmolVLMProcessor, Video
from vlkit.data.smolvlm.prompts import number_to_words

from .photos import MODES, ODD_SIZES, astronaut, coffee, in_mode, odd_size

transformers = pytest.importorskip("transformers")
av = pytest.importorskip("av")
processing_smolvlm = pytest.importorskip("transformers.models.smolvlm.processing_smolvlm")
from test_smolvlm_processor import _write_processor  # noqa: E402
from transformers.image_utils import PILImageResampling  # noqa: E402
from transformers.models.idefics3.image_processing_pil_idefics3 import (  # noqa: E402
    Idefics3ImageProcessorPil,
)
from transformers.models.smolvlm.image_processing_pil_smolvlm import (  # noqa: E402
    SmolVLMImageProcessorPil,
)
from transformers.video_utils import load_video  # noqa: E402

VIDEO_ATOL = 1 / 255 / 0.5 + 1e-6  # torchvision's Lanczos vs Pillow's, one uint8 level
CHAT = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What do these images show?"},
            {"type": "image"},
            {"type": "image"},
        ],
    },
    {"role": "assistant", "content": [{"type": "text", "text": "A cat and a cup."}]},
    {"role": "user", "content": [{"type": "text", "text": "And who is that?"}]},
]


@pytest.fixture(scope="module", autouse=True)
def _num2words():
    """transformers' SmolVLMProcessor needs `num2words`; stand ours in when it is missing."""
    if processing_smolvlm.num2words is not None:
        yield
        return
    processing_smolvlm.num2words = number_to_words
    yield
    processing_smolvlm.num2words = None


def _write_idefics3(directory: Path) -> Path:
    """An Idefics3-style directory: the SmolVLM files, a tokenizer whose post-processor adds a
    BOS token (as Llama 3's does), no video settings."""
    from tokenizers import Tokenizer, processors

    _write_processor(directory, padding_side="left")
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    bos = "<|im_start|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    config = json.loads((directory / "preprocessor_config.json").read_text())
    config.pop("video_sampling")
    config["image_processor_type"] = "Idefics3ImageProcessor"
    (directory / "preprocessor_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple]:
    """{name: (vlkit processor, transformers processor with the PIL image backend)}."""
    root = tmp_path_factory.mktemp("smolvlm_parity")
    smol = _write_processor(root / "smolvlm", padding_side="left")
    reference = transformers.SmolVLMProcessor.from_pretrained(smol)
    reference.image_processor = SmolVLMImageProcessorPil.from_pretrained(smol)
    # The same processor as transformers 5 saves it: processor_config.json + chat_template.jinja.
    reference.save_pretrained(root / "resaved")
    idefics = _write_idefics3(root / "idefics3")
    idefics_reference = transformers.Idefics3Processor.from_pretrained(idefics)
    idefics_reference.image_processor = Idefics3ImageProcessorPil.from_pretrained(idefics)
    return {
        "smolvlm": (SmolVLMProcessor.from_pretrained(smol), reference),
        "resaved": (SmolVLMProcessor.from_pretrained(root / "resaved"), reference),
        "idefics3": (SmolVLMProcessor.from_pretrained(idefics), idefics_reference),
    }


def _same(ours: dict, reference, video: bool = False) -> None:
    keys = set(reference.keys()) - {"rows", "cols"}
    assert set(ours) - {"rows", "cols"} == keys
    for key in keys:
        expected = reference[key]
        if not isinstance(expected, torch.Tensor):
            assert ours[key] == expected, key
            continue
        assert ours[key].shape == expected.shape, key
        assert ours[key].dtype == expected.dtype, key
        if video and key == "pixel_values":
            assert (ours[key] - expected).abs().max().item() <= VIDEO_ATOL
        else:
            assert torch.equal(ours[key], expected), key


def _run(pair, **kwargs) -> None:
    ours, reference = pair
    _same(ours(**kwargs), reference(**kwargs, return_tensors="pt"))


def _raises_both(pair, **kwargs) -> None:
    ours, reference = pair
    with pytest.raises(ValueError):
        reference(**kwargs, return_tensors="pt")
    with pytest.raises(ValueError):
        ours(**kwargs)


PHOTO = astronaut()
COFFEE = coffee()
SMALL = in_mode(COFFEE.resize((40, 30)), "RGB")

# ---------------------------------------------------------------------------------------------
# test_processing_smolvlm.py / test_processing_idefics3.py (on both kinds of directory)

PROCESSOR_CASES = {
    # test_process_interleaved_images_prompts_{no_,}image_splitting: images alone, one prompt,
    # a left-padded batch of one and two images.
    "images_only": dict(images=PHOTO),
    "images_only_nested": dict(images=[[PHOTO], [COFFEE, SMALL]]),
    "one_prompt": dict(text="<image>In this image, we see", images=PHOTO),
    "batch": dict(
        text=["<image>In this image, we see", "bla, bla<image><image>"],
        images=[[PHOTO], [COFFEE, SMALL]],
        padding=True,
    ),  # fmt: skip
    "batch_no_split": dict(
        text=["<image>In this image, we see", "<image><image>In this image"],
        images=[[PHOTO], [COFFEE, SMALL]],
        padding=True,
        do_image_splitting=False,
    ),  # fmt: skip
    # test_add_special_tokens_processor
    "no_special_tokens": dict(text="In this image<image>", images=PHOTO, add_special_tokens=False),
    # test_text_only_inference
    "text_only": dict(text="This is a simple text without images."),
    "text_only_batch": dict(text=["First text.", "Second piece of text."], padding=True),
    # test_unstructured_kwargs{,_batched}: image and text kwargs side by side
    "unstructured_batched": dict(
        text=["<image>lower", "<image>upper case"],
        images=[[PHOTO], [COFFEE]],
        padding="max_length",
        max_length=120,
        truncation=True,
        max_image_size={"longest_edge": 48},
    ),  # fmt: skip
    "unstructured": dict(
        text="<image>lower",
        images=PHOTO,
        do_rescale=True,
        rescale_factor=-1.0,
        padding="max_length",
        max_length=90,
    ),  # fmt: skip
    # test_structured_kwargs_nested: per-modality dicts
    "structured_nested": dict(
        text="<image>lower",
        images=PHOTO,
        images_kwargs={"size": {"longest_edge": 64}},
        text_kwargs={"padding": "max_length", "max_length": 100},
    ),  # fmt: skip
    # test_tokenizer_defaults / kwargs_overrides_default_*: padding in every spelling
    "padding_longest_right": dict(
        text=["<image>a", "<image>a longer prompt"],
        images=[[SMALL], [SMALL]],
        padding="longest",
        padding_side="right",
    ),  # fmt: skip
    "pad_to_multiple_of": dict(
        text=["<image>a", "<image>a longer prompt"],
        images=[[SMALL], [SMALL]],
        padding=True,
        pad_to_multiple_of=16,
    ),  # fmt: skip
    "padding_false_equal": dict(text=["<image>a", "<image>b"], images=[[SMALL], [SMALL]]),
    "truncation_text_tail": dict(
        text="<image>" + "a long tail of words " * 8,
        images=SMALL,
        truncation=True,
        max_length=30,
        do_image_splitting=False,
    ),  # fmt: skip
    # image-processor keyword arguments through the processor
    "image_kwargs": dict(
        text="<image>x",
        images=COFFEE,
        size={"longest_edge": 48},
        max_image_size={"longest_edge": 24},
        resample=PILImageResampling.BICUBIC,
        image_mean=[0.4, 0.5, 0.6],
        image_std=0.3,
    ),  # fmt: skip
    "size_height_width": dict(text="<image>x", images=COFFEE, size={"height": 40, "width": 70}),
    "size_int": dict(text="<image>x", images=COFFEE, size=42),
    "no_resize": dict(text="<image>x", images=SMALL, do_resize=False),
    "no_normalize": dict(text="<image>x", images=SMALL, do_normalize=False),
}


@pytest.mark.parametrize("kind", ["smolvlm", "resaved", "idefics3"])
@pytest.mark.parametrize("case", sorted(PROCESSOR_CASES))
def test_processor_case(pairs, kind, case):
    kwargs = dict(PROCESSOR_CASES[case])
    if kind == "idefics3" and case == "padding_false_equal":
        kwargs["padding"] = False
    _run(pairs[kind], **kwargs)


def test_padding_false_default_differs_only_by_raising(pairs):
    """transformers pads nothing by default and fails on ragged rows; vlkit pads (documented)."""
    ours, reference = pairs["smolvlm"]
    kwargs = dict(text=["<image>a", "<image>a longer prompt"], images=[[SMALL], [SMALL]])
    with pytest.raises(ValueError):
        reference(**kwargs, return_tensors="pt")
    with pytest.raises(ValueError, match="padding"):
        ours(**kwargs, padding=False)
    _same(ours(**kwargs), reference(**kwargs, padding=True, return_tensors="pt"))


# transformers' text padding options with return_tensors="pt" (vlkit returns tensors only): the
# same tensors where transformers builds them, a ValueError where it cannot ("Unable to create
# tensor"), with vlkit's message naming the cause.
TEXT_PADDING_CASES = {
    "false_equal": (dict(text=["a b", "a c"], padding=False), None),
    "false_ragged": (dict(text=["a", "a longer prompt"], padding=False), "padding=False"),
    "do_not_pad_ragged": (dict(text=["a", "a longer prompt"], padding="do_not_pad"), "unpadded"),
    "max_length_pads": (dict(text=["a", "a b"], padding="max_length", max_length=10), None),
    "max_length_overflow": (
        dict(
            text=["a", "a much longer prompt than ten tokens"], padding="max_length", max_length=10
        ),
        "longer than max_length=10.*truncation=True or a larger max_length",
    ),  # fmt: skip
    "max_length_overflow_single": (
        dict(text="a much longer prompt than ten tokens", padding="max_length", max_length=3),
        None,  # one row: nothing ragged, neither cuts it
    ),
    "max_length_truncation": (
        dict(
            text=["a", "a much longer prompt than ten tokens"],
            padding="max_length",
            max_length=5,
            truncation=True,
        ),
        None,
    ),  # fmt: skip
    "longest_ignores_max_length": (
        dict(text=["a", "a much longer prompt"], padding="longest", max_length=3),
        None,
    ),
    "multiple_of": (dict(text=["a", "a b c"], padding=True, pad_to_multiple_of=8), None),
}


@pytest.mark.parametrize("case", sorted(TEXT_PADDING_CASES))
def test_text_padding_matches_return_tensors_pt(pairs, case):
    kwargs, error = TEXT_PADDING_CASES[case]
    if error is None:
        _run(pairs["smolvlm"], **kwargs)
        return
    ours, reference = pairs["smolvlm"]
    assert isinstance(reference(**kwargs)["input_ids"][0], list)  # ragged lists without "pt"
    with pytest.raises(ValueError, match="Unable to create tensor"):
        reference(**kwargs, return_tensors="pt")
    with pytest.raises(ValueError, match=error):
        ours(**kwargs)


def test_padding_default_is_explicitly_true(pairs):
    """vlkit's documented default (docs/differences.md "Padding default"): pad to the longest."""
    import inspect

    ours, reference = pairs["smolvlm"]
    assert inspect.signature(type(ours).__call__).parameters["padding"].default is True
    kwargs = dict(text=["a", "a longer prompt"])
    _same(ours(**kwargs), reference(**kwargs, padding="longest", return_tensors="pt"))
    _same(ours(**kwargs), ours(**kwargs, padding=True))


ERROR_CASES = {
    # test_process_interleaved_images_prompts_image_error (cases 1-8)
    "no_token_two_images": (["This is a test.", "In this other"], [[SMALL], [SMALL]]),
    "no_token_one_and_empty": (["This is a test.", "In this other"], [[SMALL], []]),
    "one_token_each_1_2": (["a<image>", "b<image>"], [[SMALL], [SMALL, SMALL]]),
    "one_token_each_empty_1": (["a<image>", "b<image>"], [[], [SMALL]]),
    "one_token_each_flat_3": (["a<image>", "b<image>"], [SMALL, SMALL, SMALL]),
    "one_token_each_flat_1": (["a<image>", "b<image>"], [SMALL]),
    "mixed_1_empty": (["a", "b<image>"], [[SMALL], []]),
    "mixed_flat_2": (["a", "b<image>"], [SMALL, SMALL]),
    # test_missing_images_error
    "missing_images": ("Let me show you this image: <image> What do you think?", None),
    "missing_images_batch": (["First <image> token.", "Second <image> token."], None),
}


@pytest.mark.parametrize("kind", ["smolvlm", "idefics3"])
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_processor_error_case(pairs, kind, case):
    text, images = ERROR_CASES[case]
    _raises_both(pairs[kind], text=text, images=images, padding=True)


def test_special_mm_token_truncation(pairs):
    """test_special_mm_token_truncation: truncation that cuts `<image>` tokens is an error."""
    kwargs = dict(text=["<image>lower", "<image>upper"], images=[[PHOTO], [COFFEE]], padding=True)
    _run(pairs["smolvlm"], truncation=None, **kwargs)
    _raises_both(pairs["smolvlm"], truncation=True, max_length=20, **kwargs)


@pytest.mark.parametrize("generation", [None, True, False])
def test_apply_chat_template(pairs, generation):
    """test_apply_chat_template, and transformers' default `add_generation_prompt=False`."""
    ours, reference = pairs["smolvlm"]
    kwargs = {} if generation is None else {"add_generation_prompt": generation}
    rendered = ours.apply_chat_template(CHAT, **kwargs)
    assert rendered == reference.apply_chat_template(CHAT, **kwargs)
    expected = (
        "<|im_start|>User: What do these images show?<image><image><end_of_utterance>\n"
        "Assistant: A cat and a cup.<end_of_utterance>\nUser: And who is that?<end_of_utterance>\n"
    )
    assert rendered == expected + ("Assistant:" if generation else "")


def test_resaved_directory_layout(pairs, tmp_path):
    """transformers 5's save: nested processor_config.json, chat_template.jinja, no
    preprocessor_config.json; read exactly as the older layout."""
    directory = tmp_path / "saved"
    pairs["smolvlm"][1].save_pretrained(directory)
    assert not (directory / "preprocessor_config.json").exists()
    assert (directory / "chat_template.jinja").is_file()
    resaved = SmolVLMProcessor.from_pretrained(directory)
    original = pairs["smolvlm"][0]
    assert resaved.image_config == original.image_config
    assert resaved.chat_template == original.chat_template
    assert resaved.video_config.max_frames == original.video_config.max_frames


# ---------------------------------------------------------------------------------------------
# test_image_processing_smolvlm.py / test_image_processing_idefics3.py: the image processor

IMAGE_PROCESSOR_DICT = {
    "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": 40},
    "max_image_size": {"longest_edge": 20}, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "do_pad": True, "do_image_splitting": True,
}  # fmt: skip


def _random_images(kind: str, seed: int, channels: int = 3) -> list[list]:
    """ImageProcessingTester.prepare_image_inputs: 7 samples of 1-3 random 30..40 px images."""
    rng = np.random.default_rng(seed)
    batch = []
    for count in (1, 2, 1, 3, 1, 1, 2):
        sample = []
        for _ in range(count):
            width, height = rng.integers(30, 40, size=2)
            array = rng.integers(0, 255, size=(channels, width, height), dtype=np.uint8)
            if kind == "pil":
                sample.append(Image.fromarray(np.moveaxis(array, 0, -1)))
            elif kind == "numpy":
                sample.append(array.transpose(1, 2, 0))
            else:
                sample.append(torch.from_numpy(array))
        batch.append(sample)
    return batch


@pytest.mark.parametrize("reference_class", [SmolVLMImageProcessorPil, Idefics3ImageProcessorPil])
@pytest.mark.parametrize(
    "inputs", ["pil", "numpy", "torch", "numpy_4_channels", "pil_no_split", "bicubic"]
)
@pytest.mark.parametrize("batched", [False, True])
def test_image_processor_call(pairs, reference_class, inputs, batched):
    """test_call_pil / _numpy / _pytorch / _numpy_4_channels, unbatched and batched, and
    test_backends_equivalence(_batched) with return_row_col_info (rows, cols)."""
    settings = dict(IMAGE_PROCESSOR_DICT)
    if inputs == "pil_no_split":
        settings["do_image_splitting"] = False
    if inputs == "bicubic":
        settings["resample"] = PILImageResampling.BICUBIC
    reference = reference_class(**settings)
    ours = pairs["smolvlm"][0].image_processor
    kind = {"numpy_4_channels": "numpy", "pil_no_split": "pil", "bicubic": "torch"}.get(
        inputs, inputs
    )
    images = _random_images(kind, seed=len(inputs), channels=4 if "4" in inputs else 3)
    images = images if batched else images[0]
    expected = reference(images, return_tensors="pt", return_row_col_info=True)
    got = ours(images, return_tensors="pt", return_row_col_info=True, **settings)
    _same(got, expected)
    assert got["rows"] == expected["rows"] and got["cols"] == expected["cols"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split", [True, False])
def test_real_photo_in_every_mode(pairs, mode, split):
    ours, reference = pairs["smolvlm"]
    image = in_mode(PHOTO, mode)
    kwargs = dict(text="<image>What is it?", images=image, do_image_splitting=split)
    _run((ours, reference), **kwargs)


@pytest.mark.parametrize("size", ODD_SIZES, ids=[f"{w}x{h}" for w, h in ODD_SIZES])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_odd_sizes(pairs, size, mode):
    _run(pairs["smolvlm"], text="<image>odd", images=odd_size(*size, mode=mode))


# ---------------------------------------------------------------------------------------------
# Videos: test_video_processing_smolvlm.py, test_unstructured_kwargs_batched_video, and
# test_apply_chat_template_video_frame_sampling (on files written here)


def _frames(count: int, height: int = 60, width: int = 90, seed: int = 0) -> np.ndarray:
    """Frames panning over the coffee photo, (T, H, W, 3) uint8."""
    photo = np.asarray(COFFEE)
    return np.stack([photo[5 * k : 5 * k + height, 7 * k : 7 * k + width] for k in range(count)])


def _video_reference(reference, **kwargs):
    """transformers' SmolVLMProcessor with its own (torchvision) video processor."""
    return reference(**kwargs, return_tensors="pt")


@pytest.mark.parametrize(
    ("counts", "sample"),
    [((3, 5), False), ((5, 3, 4), False), ((8, 12), True), ((2, 9), True)],
)
def test_videos_of_different_lengths(pairs, counts, sample):
    """Issue 19 item 2: each video's intro names its own frame count."""
    ours, reference = pairs["smolvlm"]
    clips = [_frames(n) for n in counts]
    metadata = [{"total_num_frames": n, "fps": 2.0, "duration": n / 2.0} for n in counts]
    if not sample:
        for entry, n in zip(metadata, counts, strict=True):
            entry["frames_indices"] = list(range(n))
    text = [f"<video>Clip {i}" for i in range(len(counts))]
    expected = _video_reference(
        reference, text=text, videos=clips, video_metadata=metadata, do_sample_frames=sample,
        padding=True,
    )  # fmt: skip
    videos = [Video([Image.fromarray(f) for f in c], fps=2.0, duration=len(c) / 2) for c in clips]
    got = ours(text=text, videos=videos, do_sample_frames=sample)
    _same(got, expected, video=True)
    assert "series of three frames" in ours.decode(got["input_ids"][0]) or counts[0] != 3


@pytest.mark.parametrize(
    ("num_frames", "fps", "expected_frames"), [(6, 3, 6), (3, 3, 3), (None, None, 2)]
)
def test_video_call_sample_frames(pairs, num_frames, fps, expected_frames):
    """test_call_sample_frames: 8 frames of a 2 s video at 4 fps, sampled at `fps` up to
    `num_frames` (the checkpoint's 1 fps / 8 frames when None)."""
    ours, reference = pairs["smolvlm"]
    frames = _frames(8)
    metadata = [{"duration": 2.0, "total_num_frames": 8, "fps": 4}]
    options = {k: v for k, v in dict(num_frames=num_frames, fps=fps).items() if v is not None}
    expected = _video_reference(
        reference, text="<video>go", videos=[frames], video_metadata=metadata,
        do_sample_frames=True, **options,
    )  # fmt: skip
    video = Video([Image.fromarray(f) for f in frames], fps=4, duration=2.0)
    got = ours(text="<video>go", videos=video, do_sample_frames=True, **options)
    _same(got, expected, video=True)
    assert got["pixel_values"].shape[1] == expected_frames


def test_video_unstructured_kwargs(pairs):
    """test_unstructured_kwargs_batched_video: image kwargs reach the frames, text kwargs the ids."""
    ours, reference = pairs["smolvlm"]
    clips = [_frames(2), _frames(2)]
    metadata = [{"total_num_frames": 2, "fps": 1.0, "frames_indices": [0, 1]}] * 2
    kwargs = dict(
        text=["<video>a", "<video>b"], do_rescale=True, rescale_factor=-1.0,
        padding="max_length", max_length=172,
    )  # fmt: skip
    expected = _video_reference(reference, videos=clips, video_metadata=metadata, **kwargs)
    got = ours(videos=[Video([Image.fromarray(f) for f in c], fps=1.0) for c in clips], **kwargs)
    pixels, reference_pixels = got.pop("pixel_values"), expected.pop("pixel_values")
    _same(got, expected)
    # One uint8 level of Lanczos rounding is 1 / 0.5 units at rescale_factor -1.
    assert (pixels - reference_pixels).abs().max().item() <= 2.0 + 1e-4
    assert got["input_ids"].shape[1] == 172 and pixels[0].mean() <= 0


def _write_video(path: Path, codec: str, count: int, fps: int) -> Path:
    frames = _frames(count, height=64, width=96)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


VIDEO_FILES = [
    ("mp4", "mpeg4", 24, 8),
    ("mp4", "h264", 30, 10),
    ("mov", "mpeg4", 12, 4),
    ("webm", "libvpx", 10, 5),
    ("webm", "libvpx-vp9", 6, 2),
]


@pytest.mark.parametrize(("suffix", "codec", "count", "fps"), VIDEO_FILES)
@pytest.mark.parametrize("sample", [True, False])
def test_video_file(pairs, tmp_path, suffix, codec, count, fps, sample):
    """The same frames, timestamps and prompt as transformers' PyAV reader + sampling give."""
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV has no {codec} encoder here")
    ours, reference = pairs["smolvlm"]
    path = _write_video(tmp_path / f"clip.{suffix}", codec, count, fps)
    sample_frames = partial(reference.video_processor.sample_frames, num_frames=8, fps=1)

    def sampler(metadata, **_):
        if metadata.total_num_frames == 0:
            # WebM stores no frame count: transformers' PyAV reader would see 0 frames and keep
            # frame 0 only; vlkit counts the packets. The reference is fed the true count.
            assert suffix == "webm"
            metadata.total_num_frames, metadata.duration = count, count / metadata.fps
        return sample_frames(metadata=metadata) if sample else np.arange(count)

    frames, metadata = load_video(str(path), backend="pyav", sample_indices_fn=sampler)
    expected = _video_reference(
        reference, text="<video>What happens?", videos=[frames], video_metadata=[metadata],
        do_sample_frames=False,
    )  # fmt: skip
    got = ours(text="<video>What happens?", videos=path, do_sample_frames=sample)
    _same(got, expected, video=True)
    assert ours.decode(got["input_ids"][0]).count("Frame from") == len(frames)


def test_video_directory_matches_file_frames(pairs, tmp_path):
    """A frame folder and the decoded file give the same pixels and prompt (fps given)."""
    ours = pairs["smolvlm"][0]
    path = _write_video(tmp_path / "clip.mp4", "mpeg4", 6, 3)
    from vlkit.data.smolvlm.video_files import read_video_file

    decoded = read_video_file(path)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(decoded.frames):
        frame.save(folder / f"{i:04d}.png")
    from_file = ours(text="<video>x", videos=path)
    folder_video = Video.from_directory(folder, fps=3)
    folder_video.duration = decoded.duration
    from_folder = ours(text="<video>x", videos=folder_video)
    _same(from_folder, {k: v for k, v in from_file.items()})


def test_processor_copy_is_independent(pairs):
    """Per-call kwargs never leak into the processor's settings."""
    ours = copy.copy(pairs["smolvlm"][0])
    before = copy.deepcopy(ours.image_config)
    ours(text="<image>x", images=SMALL, size={"longest_edge": 20}, do_image_splitting=False)
    assert ours.image_config == before


def test_flat_image_list_is_split_by_prompt(pairs):
    """A flat image list with a batch of prompts: Idefics3Processor splits it by the prompts'
    `<image>` counts, SmolVLMProcessor refuses it; vlkit splits it for both (documented)."""
    kwargs = dict(text=["<image>a", "b<image><image>"], images=[SMALL, COFFEE, PHOTO], padding=True)
    _run(pairs["idefics3"], **kwargs)
    ours, smolvlm_reference = pairs["smolvlm"]
    with pytest.raises(ValueError):
        smolvlm_reference(**kwargs, return_tensors="pt")
    nested = dict(kwargs, images=[[SMALL], [COFFEE, PHOTO]])
    _same(ours(**kwargs), smolvlm_reference(**nested, return_tensors="pt"))
