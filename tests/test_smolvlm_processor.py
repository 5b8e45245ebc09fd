"""Parity of vlkit's `SmolVLMProcessor` with transformers' on a tiny processor directory built here.

Pixels are compared with transformers' PIL backend (`SmolVLMImageProcessorPil`), which ours
reproduces exactly; its default torchvision backend and its torchvision-only video processor use
torchvision's Lanczos kernel, measured here at <= 7/255 (images; 1-2/255 except for an extreme
squash) and 1/255 (video frames) before the 0.5/0.5 normalisation. Token ids, attention masks
and pixel masks are equal in every case.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.data.smolvlm import SmolVLMProcessor, Video
from vlkit.data.smolvlm.prompts import number_to_words
from vlkit.hub import CheckpointError

transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")
processing_smolvlm = pytest.importorskip("transformers.models.smolvlm.processing_smolvlm")
from transformers.models.smolvlm.image_processing_pil_smolvlm import (  # noqa: E402
    SmolVLMImageProcessorPil,
)

SEQ = 4  # image_seq_len
# torchvision's Lanczos vs Pillow's, in uint8 levels before the /0.5 normalisation: measured 1-2
# levels on these photos, 7 on the 512 x 31 crop squashed to a 32 x 32 tile (unsplit).
TORCHVISION_IMAGE_ATOL = 7 / 255 / 0.5 + 1e-6
TORCHVISION_VIDEO_ATOL = 1 / 255 / 0.5 + 1e-6

# Modelled on HuggingFaceTB/SmolVLM2's chat template.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}"
    "{{ '<video>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<fake_token_around_image>", "<image>", "<global-img>"]
SPECIAL += ["<end_of_utterance>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
CORPUS = [
    "User: What is in this image? Assistant: An astronaut, a cat and a cup of coffee.",
    "You are provided the following series of frames from a video. Frame from 00:01: describe",
]


def write_random_smolvlm(
    directory: Path,
    *,
    vision_layers: int = 2,
    text_layers: int = 2,
    hidden_size: int = 48,
    intermediate_size: int = 96,
    max_position_embeddings: int = 512,
) -> Path:
    """Random transformers SmolVLM2 weights (seed 0) next to `_write_processor`'s files: 32-px
    tiles of 4-px patches, scale factor 4 (SEQ tokens per tile), a GQA Llama decoder."""
    import transformers

    processor = SmolVLMProcessor.from_pretrained(directory)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                  num_attention_heads=4, image_size=32, patch_size=4)  # fmt: skip
    text = dict(model_type="llama", vocab_size=processor.tokenizer.get_vocab_size(),
                hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=max_position_embeddings)  # fmt: skip
    config = transformers.SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=4,
                                        image_token_id=processor.image_token_id)  # fmt: skip
    torch.manual_seed(0)
    transformers.SmolVLMForConditionalGeneration(config).eval().save_pretrained(directory)
    return directory


def _write_processor(directory: Path, split: bool = True, padding_side: str = "right") -> Path:
    """A SmolVLM2-style processor directory: byte-level BPE, tiles of 32, longest edge 96."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(CORPUS * 10, trainer)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", padding_side=padding_side,
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<global-img>"],
    ).save_pretrained(directory)  # fmt: skip
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    (directory / "processor_config.json").write_text(json.dumps({"image_seq_len": SEQ}))
    config = {
        "image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
        "do_convert_rgb": True, "do_image_splitting": split, "do_normalize": True,
        "do_pad": True, "do_rescale": True, "do_resize": True, "resample": 1,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255,
        "size": {"longest_edge": 96}, "max_image_size": {"longest_edge": 32},
        "video_sampling": {"fps": 1, "max_frames": 8, "video_size": {"longest_edge": 64}},
    }  # fmt: skip
    (directory / "preprocessor_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module", autouse=True)
def _num2words():
    """transformers' SmolVLMProcessor needs `num2words`; stand ours in when it is missing."""
    if processing_smolvlm.num2words is not None:
        yield
        return
    processing_smolvlm.num2words = number_to_words
    yield
    processing_smolvlm.num2words = None


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smolvlm_processor")
    return {
        "split": _write_processor(root / "split"),
        "nosplit": _write_processor(root / "nosplit", split=False),
        "left": _write_processor(root / "left", padding_side="left"),
    }


_CACHE: dict[Path, tuple] = {}


def _pair(directory: Path):
    """(ours, transformers with the PIL backend, transformers default torchvision backend)."""
    if directory not in _CACHE:
        torchvision_processor = transformers.SmolVLMProcessor.from_pretrained(directory)
        pil_processor = copy.copy(torchvision_processor)
        pil_processor.image_processor = SmolVLMImageProcessorPil.from_pretrained(directory)
        ours = SmolVLMProcessor.from_pretrained(directory)
        _CACHE[directory] = (ours, pil_processor, torchvision_processor)
    return _CACHE[directory]


def _photos() -> dict[str, Image.Image]:
    astronaut = skimage_data.astronaut()
    return {
        "astronaut": Image.fromarray(astronaut),  # 512 x 512
        "chelsea": Image.fromarray(skimage_data.chelsea()),  # 300 x 451
        "coffee": Image.fromarray(skimage_data.coffee()),  # 400 x 600
        "camera": Image.fromarray(skimage_data.camera()),  # grayscale 512 x 512
        "wide": Image.fromarray(astronaut[200:240]),  # 40 x 512
        "tall": Image.fromarray(astronaut[:, 100:131]),  # 512 x 31
        "small": Image.fromarray(astronaut[:20:, :28]),  # 20 x 28: up-scaled
    }


PHOTOS = _photos()


def _assert_equal(ours: dict, reference) -> None:
    assert set(ours) == set(reference.keys())
    for key in ours:
        assert ours[key].shape == reference[key].shape, key
        assert ours[key].dtype == reference[key].dtype, key
        assert torch.equal(ours[key], reference[key]), key


@pytest.mark.parametrize("mode", ["split", "nosplit"])
@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_single_image_matches_transformers(dirs, mode, name):
    ours, pil_reference, torchvision_reference = _pair(dirs[mode])
    prompt = ["<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:"]
    out = ours(text=prompt, images=[[PHOTOS[name]]])
    _assert_equal(out, pil_reference(text=prompt, images=[[PHOTOS[name]]], return_tensors="pt"))
    assert out["pixel_values"].dtype == torch.float32
    # Against the torchvision backend: the same ids and masks, pixels within one Lanczos gap.
    default = torchvision_reference(text=prompt, images=[[PHOTOS[name]]], return_tensors="pt")
    assert torch.equal(out["input_ids"], default["input_ids"])
    assert torch.equal(out["pixel_attention_mask"], default["pixel_attention_mask"])
    difference = (out["pixel_values"] - default["pixel_values"]).abs().max().item()
    assert difference <= TORCHVISION_IMAGE_ATOL


def test_split_layout(dirs):
    """The astronaut (96 x 96 after resize) is 3 x 3 tiles then the global view."""
    ours = _pair(dirs["split"])[0]
    out = ours(text="<image>", images=PHOTOS["astronaut"])
    assert out["pixel_values"].shape == (1, 10, 3, 32, 32)
    tokens = [ours.tokenizer.id_to_token(i) for i in out["input_ids"][0].tolist()]
    text = "".join(tokens).replace("Ċ", "\n")
    row = "".join(f"<fake_token_around_image><row_1_col_{c}>" + "<image>" * SEQ for c in (1, 2, 3))
    assert text.startswith(row + "\n")
    global_view = "<fake_token_around_image><global-img>" + "<image>" * SEQ
    assert text.endswith("\n\n" + global_view + "<fake_token_around_image>")


@pytest.mark.parametrize("mode", ["split", "nosplit", "left"])
def test_batches_with_different_image_counts(dirs, mode):
    ours, reference, _ = _pair(dirs[mode])
    prompts = [
        "<|im_start|>User: Compare <image> and <image> and <image><end_of_utterance>\nAssistant:",
        "<|im_start|>User:<image>Describe.<end_of_utterance>\nAssistant:",
    ]
    images = [[PHOTOS["chelsea"], PHOTOS["wide"], PHOTOS["camera"]], [PHOTOS["tall"]]]
    out = ours(text=prompts, images=images)
    _assert_equal(out, reference(text=prompts, images=images, return_tensors="pt", padding=True))
    assert (out["attention_mask"] == 0).any()  # the batch was padded
    # A flat image list is split by the prompts' <image> counts.
    flat = ours(text=prompts, images=[image for sample in images for image in sample])
    _assert_equal(flat, out)


def test_chat_template_matches_transformers(dirs):
    ours, reference, _ = _pair(dirs["split"])
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
        ],
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    ]
    for conversation in conversations:
        for generation in (True, False):
            expected = reference.apply_chat_template(conversation, add_generation_prompt=generation)
            got = ours.apply_chat_template(conversation, add_generation_prompt=generation)
            assert got == expected
    # transformers' default: no generation prompt.
    assert ours.apply_chat_template(conversations[:2]) == [
        reference.apply_chat_template(c) for c in conversations[:2]
    ]
    # The rendered prompt feeds straight into the processor.
    prompt = ours.apply_chat_template(conversations[0], add_generation_prompt=True)
    _assert_equal(
        ours(text=prompt, images=[PHOTOS["coffee"]]),
        reference(text=prompt, images=[PHOTOS["coffee"]], return_tensors="pt"),
    )


def _frames(count: int) -> np.ndarray:
    """A panning crop of the astronaut, (T, 120, 200, 3) uint8."""
    photo = skimage_data.astronaut()
    offsets = [i % 50 for i in range(count)]
    return np.stack([photo[4 * k : 4 * k + 120, 6 * k : 6 * k + 200] for k in offsets])


@pytest.mark.parametrize(
    ("count", "fps", "sample"),
    [(30, 2.0, True), (30, 10.0, True), (90, 1.0, True), (12, 24.0, False)],
)
def test_video_matches_transformers(dirs, count, fps, sample):
    ours, _, reference = _pair(dirs["split"])
    frames = _frames(count)
    prompt = ["<|im_start|>User: <video>What happens?<end_of_utterance>\nAssistant:"]
    metadata = {"total_num_frames": count, "fps": fps, "duration": count / fps}
    if not sample:
        metadata["frames_indices"] = list(range(count))
    expected = reference(
        text=prompt, videos=[frames], video_metadata=[metadata], do_sample_frames=sample,
        return_tensors="pt",
    )  # fmt: skip
    video = Video([Image.fromarray(f) for f in frames], fps=fps)
    out = ours(text=prompt, videos=[video], do_sample_frames=sample)
    for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
        assert torch.equal(out[key], expected[key]), key
    # transformers' video processor is torchvision-only: one Lanczos rounding step apart ...
    difference = (out["pixel_values"] - expected["pixel_values"]).abs().max().item()
    assert difference <= TORCHVISION_VIDEO_ATOL
    # ... and exactly the PIL image processor's unsplit path on the sampled frames.
    text = ours.decode(out["input_ids"][0])
    assert text.count("Frame from") == out["pixel_values"].shape[1]
    indices = range(count) if not sample else None
    if sample:
        from vlkit.data.smolvlm.image_processor import sample_frame_indices

        indices = sample_frame_indices(count, fps, count / fps, 8, 1.0)
    pil = SmolVLMImageProcessorPil.from_pretrained(dirs["split"], do_image_splitting=False)
    sampled = [Image.fromarray(frames[i]) for i in indices]
    expected_pixels = pil(images=[sampled], return_tensors="pt")
    assert torch.equal(out["pixel_values"], expected_pixels["pixel_values"])


def test_video_from_directory(dirs, tmp_path):
    ours = _pair(dirs["split"])[0]
    frames = [Image.fromarray(f) for f in _frames(6)]
    for i, frame in enumerate(frames):
        frame.save(tmp_path / f"frame_{i:03d}.png")
    prompt = "<video>Describe."
    from_directory = ours(text=prompt, videos=Video.from_directory(tmp_path, fps=2.0))
    _assert_equal(from_directory, ours(text=prompt, videos=Video(frames, fps=2.0)))
    assert "Frame from 00:02:" in ours.decode(from_directory["input_ids"][0])


def test_decode_matches_transformers(dirs):
    ours, reference, _ = _pair(dirs["split"])
    images = [[PHOTOS["wide"]], [PHOTOS["small"]]]
    ids = ours(text=["<image>An astronaut.", "<image>A cat."], images=images)["input_ids"]
    for skip in (True, False):
        expected = reference.batch_decode(ids, skip_special_tokens=skip)
        assert ours.batch_decode(ids, skip_special_tokens=skip) == expected
        assert ours.decode(ids[0], skip_special_tokens=skip) == expected[0]
    assert ours.decode(ids[0], skip_special_tokens=True).strip().endswith("An astronaut.")


def test_number_to_words():
    cases = {0: "zero", 8: "eight", 30: "thirty", 64: "sixty-four", 100: "one hundred",
             101: "one hundred and one", 1100: "one thousand, one hundred",
             2024: "two thousand and twenty-four", 1_000_001: "one million and one"}  # fmt: skip
    for n, words in cases.items():
        assert number_to_words(n) == words
    num2words = pytest.importorskip("num2words").num2words
    assert all(number_to_words(n) == num2words(n) for n in range(3000))


def test_missing_files_and_keys(tmp_path, dirs):
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        SmolVLMProcessor.from_pretrained(tmp_path)
    broken = _write_processor(tmp_path / "broken")
    config = json.loads((broken / "preprocessor_config.json").read_text())
    del config["max_image_size"]
    (broken / "preprocessor_config.json").write_text(json.dumps(config))
    message = r"preprocessor_config.json: missing key 'max_image_size'"
    with pytest.raises(CheckpointError, match=message):
        SmolVLMProcessor.from_pretrained(broken)
    (broken / "processor_config.json").unlink()
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        SmolVLMProcessor.from_pretrained(broken)
    ours = _pair(dirs["split"])[0]
    with pytest.raises(ValueError, match="images per prompt"):
        ours(text=["<image><image>"], images=[[PHOTOS["wide"]]])
    with pytest.raises(ValueError, match="no images"):
        ours(text="<image>")


def test_generate_on_a_directory_saved_by_transformers_5(dirs, tmp_path, capsys):
    """`vlkit generate` on a SmolVLM directory as transformers 5 saves it (image settings nested
    in processor_config.json, chat_template.jinja, no preprocessor_config.json): the same answer
    as on the original layout, for an image and for a video file."""
    from vlkit.cli import main

    av = pytest.importorskip("av")
    original = _write_processor(tmp_path / "original")
    processor = SmolVLMProcessor.from_pretrained(original)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, image_size=32, patch_size=4)  # fmt: skip
    text = dict(model_type="llama", vocab_size=processor.tokenizer.get_vocab_size(),
                hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)  # fmt: skip
    config = transformers.SmolVLMConfig(
        vision_config=vision, text_config=text, scale_factor=4,
        image_token_id=processor.image_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.SmolVLMForConditionalGeneration(config).eval()
    model.save_pretrained(original)
    resaved = tmp_path / "resaved"
    transformers.SmolVLMProcessor.from_pretrained(original).save_pretrained(resaved)
    model.save_pretrained(resaved)
    assert not (resaved / "preprocessor_config.json").exists()
    assert (resaved / "chat_template.jinja").is_file()

    photo = tmp_path / "photo.png"
    PHOTOS["chelsea"].save(photo)
    video = tmp_path / "clip.mp4"
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in _frames(8)[:, :64, :96]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    answers = {}
    for name, directory in (("original", original), ("resaved", resaved)):
        for flag, path in (("--image", photo), ("--video", video)):
            code = main(["generate", "--model", str(directory), flag, str(path),
                         "--prompt", "What is it?", "--max-new-tokens", "5"])  # fmt: skip
            assert code == 0
            answers[name, flag] = capsys.readouterr().out
    assert answers["original", "--image"] == answers["resaved", "--image"]
    assert answers["original", "--video"] == answers["resaved", "--video"]
    assert answers["original", "--image"].strip()


def test_call_orders_and_keyword_errors(dirs):
    """transformers' argument order (images, text, videos), vlkit's older (text, images) order,
    images without text, and unknown image keywords named."""
    ours, reference, _ = _pair(dirs["split"])
    image = PHOTOS["coffee"]
    keyword = ours(text="<image>Hi", images=image)
    _assert_equal(ours(image, "<image>Hi"), keyword)
    _assert_equal(ours("<image>Hi", image), keyword)
    pixels_only = ours(images=image)
    assert set(pixels_only) == {"pixel_values", "pixel_attention_mask"}
    _assert_equal(pixels_only, reference(images=image, return_tensors="pt"))
    with pytest.raises(TypeError, match="do_image_splittin"):
        ours(text="<image>", images=image, do_image_splittin=False)
    with pytest.raises(ValueError, match="padding="):
        ours(text="x", padding="everything")
    with pytest.raises(ValueError, match="uint8"):
        ours(images=np.zeros((8, 8, 3), dtype=np.float32))


def test_webm_frame_count_is_counted(tmp_path):
    """WebM stores no frame count in its header: the frames are counted, not taken as 0."""
    av = pytest.importorskip("av")
    from vlkit.data.smolvlm.video_files import probe_video, read_video_file

    path = tmp_path / "clip.webm"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libvpx", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in _frames(7)[:, :48, :64]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe_video(path)
    assert (info.total_frames, info.fps, info.duration) == (7, 5.0, 1.4)
    video = read_video_file(path, lambda info: [0, 3, 6])
    assert video.frame_indices == [0, 3, 6] and len(video.frames) == 3
    with pytest.raises(ValueError, match="not a readable video"):
        probe_video(tmp_path / "missing.mp4")
