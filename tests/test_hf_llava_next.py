"""transformers LLaVA-NeXT directories (`LlavaNextForConditionalGeneration` + `LlavaNextProcessor`)
loaded by vlkit (`vlkit.hub.hf_llava_next`) and answered by `vlkit generate`.

A tiny random LLaVA-NeXT (a 32 px CLIP tower with 8 px patches, a 2-layer Llama, LLaVA-NeXT's
grids scaled to 32 px tiles) is written by transformers' `save_pretrained` with its processor (a
BPE tokenizer trained in the test, a llava-v1.6-style chat template of typed contents). On a
left-padded batch of two prompts whose three images of different sizes get different tile grids:
the inputs vlkit's processor reads from the directory equal transformers' processor's, the logits
equal transformers' within 1e-4 and greedy generation gives the same tokens; `vlkit generate`
prints what transformers generates; `save_pretrained` writes a directory transformers loads to
the same logits; unsupported config values are refused in one line naming the key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.data.anyres_processor import AnyResProcessor
from vlkit.errors import CheckpointError
from vlkit.hub.hf_llava_next import read_llava_next_processor
from vlkit.inference.llava_pipeline import LlavaNextPipeline
from vlkit.inference.vlm_loading import load_vlm
from vlkit.models.llava_next import AnyResLlavaVLM

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
CORPUS = ["user: what color is the shape? assistant: the shape is red and round."] * 10
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
PAD, EOS, IMAGE = 3, 2, 4
VISION = dict(model_type="clip_vision_model", image_size=32, patch_size=8, hidden_size=32,
              intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
TEXT = dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # LLaVA-NeXT's, 32 px tiles
SIZES = [(40, 100), (60, 30), (50, 50)]  # (height, width): wide, tall, square
# llava-v1.6's template shape: typed contents, images first.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'user: ' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% else %}{{ ' assistant: ' + message['content'][0]['text'] + '</s>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ ' assistant:' }}{% endif %}"
)
QUESTION = "what color is the shape?"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread than on two contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=100, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The transformers directory, its model and processor as transformers loads them, and
    RGB photos of SIZES (the wide one also as a file)."""
    root = tmp_path_factory.mktemp("llava_next")
    tokenizer = _tokenizer()
    assert tokenizer.token_to_id("<image>") == IMAGE
    config = transformers.LlavaNextConfig(
        vision_config=VISION, text_config={**TEXT, "vocab_size": tokenizer.get_vocab_size()},
        image_token_index=IMAGE, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlavaNextForConditionalGeneration(config).save_pretrained(root / "model")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    image_processor = transformers.LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=PINPOINTS,
    )  # fmt: skip
    transformers.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=fast, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(root / "model")  # fmt: skip
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    photos[0].save(root / "wide.png")
    directory = root / "model"
    reference = transformers.LlavaNextForConditionalGeneration.from_pretrained(directory).eval()
    return {"dir": directory, "reference": reference, "photos": photos, "wide": root / "wide.png",
            "processor": transformers.AutoProcessor.from_pretrained(directory)}  # fmt: skip


@pytest.fixture(scope="module")
def model(checkpoint: dict[str, Any]) -> AnyResLlavaVLM:
    return vlkit.from_pretrained(checkpoint["dir"])


def _prompt(images: int, question: str = QUESTION) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
    return [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]


def _batches(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two left-padded prompts (wide + tall images; square image), built by vlkit's processor
    read from the directory and by transformers' processor."""
    processor = read_llava_next_processor(checkpoint["dir"])
    assert isinstance(processor, AnyResProcessor)
    conversations = [_prompt(2), _prompt(1, "what?")]
    text = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    reference = checkpoint["processor"]
    assert text == [reference.apply_chat_template(c, add_generation_prompt=True)
                    for c in conversations]  # fmt: skip
    photos = checkpoint["photos"]
    options = dict(padding=True, padding_side="left")
    ours = processor(text=text, images=[photos[:2], photos[2:]], **options)
    theirs = checkpoint["processor"](
        text=text, images=[photos[:2], photos[2:]], return_tensors="pt", **options
    )
    return ours, dict(theirs)


def test_inputs_and_logits_equal_transformers(model, checkpoint) -> None:
    assert isinstance(model, AnyResLlavaVLM)
    assert model.pinpoints == [tuple(p) for p in PINPOINTS]
    assert model.composition["converted_from"] == "LlavaNextForConditionalGeneration"
    ours, theirs = _batches(checkpoint)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["image_sizes"].tolist() == [list(size) for size in SIZES]
    assert model.view_counts(ours["image_sizes"]) == [4, 3, 5]  # different tile grids
    assert (ours["attention_mask"][1] == 0).any()  # the second prompt is left-padded
    with torch.no_grad():
        expected = checkpoint["reference"](**theirs).logits
        got = model(ours["input_ids"], ours["pixel_values"], ours["attention_mask"],
                    image_sizes=ours["image_sizes"]).logits  # fmt: skip
    keep = ours["attention_mask"].bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=ATOL, rtol=0)


def test_siglip_tower_with_full_features_equals_transformers(checkpoint, tmp_path) -> None:
    """A SigLIP tower has no class token: strategy "full", no additional placeholder."""
    siglip = {**VISION, "model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh"}
    reference = checkpoint["reference"].config
    config = transformers.LlavaNextConfig(
        vision_config=siglip, text_config=reference.text_config.to_dict(),
        image_token_index=IMAGE, image_grid_pinpoints=PINPOINTS, vision_feature_layer=[-2, -1],
        vision_feature_select_strategy="full",
    )  # fmt: skip
    torch.manual_seed(1)
    directory = tmp_path / "siglip"
    transformers.LlavaNextForConditionalGeneration(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(checkpoint["dir"] / name, directory / name)
    processor = json.loads((checkpoint["dir"] / "processor_config.json").read_text())
    processor.update(num_additional_image_tokens=0, vision_feature_select_strategy="full")
    (directory / "processor_config.json").write_text(json.dumps(processor))
    pipeline = load_vlm(directory)
    inputs = pipeline.prepare(checkpoint["photos"][:2], QUESTION)
    text = checkpoint["processor"].apply_chat_template(_prompt(2), add_generation_prompt=True)
    theirs = transformers.AutoProcessor.from_pretrained(directory)(
        text=text, images=checkpoint["photos"][:2], return_tensors="pt"
    )
    assert torch.equal(inputs.input_ids, theirs["input_ids"])
    with torch.no_grad():
        expected = transformers.LlavaNextForConditionalGeneration.from_pretrained(directory)(
            **theirs
        ).logits
        got = pipeline.model(inputs.input_ids, **inputs.model_inputs).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_greedy_generation_equals_transformers(model, checkpoint) -> None:
    ours, theirs = _batches(checkpoint)
    with torch.no_grad():
        expected = checkpoint["reference"].generate(**theirs, max_new_tokens=8, do_sample=False)
        got = model.generate(
            ours["input_ids"], ours["pixel_values"], ours["attention_mask"],
            image_sizes=ours["image_sizes"], max_new_tokens=8, eos_token_id=model.eos_token_id,
            pad_token_id=model.pad_token_id,
        )  # fmt: skip
    assert model.eos_token_id == EOS and model.pad_token_id == PAD
    assert torch.equal(got, expected)
    new = got[:, ours["input_ids"].shape[1] :]
    assert ((new != PAD) & (new != EOS)).sum() >= 4  # real answers, not only stop tokens
    # The pipeline builds one prompt's inputs as transformers' processor does.
    pipeline = load_vlm(checkpoint["dir"])
    assert type(pipeline) is LlavaNextPipeline and pipeline.kind == "llava_next"
    inputs = pipeline.prepare(checkpoint["photos"][:2], QUESTION)
    text = checkpoint["processor"].apply_chat_template(_prompt(2), add_generation_prompt=True)
    reference = checkpoint["processor"](
        text=text, images=checkpoint["photos"][:2], return_tensors="pt"
    )
    assert torch.equal(inputs.input_ids, reference["input_ids"])
    for key in ("pixel_values", "image_sizes", "attention_mask"):
        assert torch.equal(inputs.model_inputs[key], reference[key]), key


def test_vlkit_generate_prints_what_transformers_generates(checkpoint, capsys) -> None:
    code = main(["generate", "--model", str(checkpoint["dir"]), "--image", str(checkpoint["wide"]),
                 "--prompt", QUESTION, "--max-new-tokens", "6"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    processor = checkpoint["processor"]
    image = Image.open(checkpoint["wide"]).convert("RGB")
    text = processor.apply_chat_template(_prompt(1), add_generation_prompt=True)
    inputs = processor(text=text, images=[image], return_tensors="pt")
    with torch.no_grad():
        ids = checkpoint["reference"].generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip() and capsys.readouterr().out.strip() == expected.strip()


def test_save_pretrained_loads_back_in_transformers(model, checkpoint, tmp_path) -> None:
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["image_grid_pinpoints"] == PINPOINTS
    again = transformers.LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "saved")
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(processor).__name__ == "LlavaNextProcessor"
    _, theirs = _batches(checkpoint)
    with torch.no_grad():
        expected = checkpoint["reference"](**theirs).logits
        torch.testing.assert_close(again.eval()(**theirs).logits, expected, atol=0, rtol=0)
    reloaded = vlkit.from_pretrained(tmp_path / "saved")
    assert reloaded.composition == model.composition


def _edited(checkpoint: dict[str, Any], tmp_path: Path, file: str, edit: Any) -> Path:
    """A copy of the directory with `edit(json)` applied to one of its JSON files."""
    directory = tmp_path / "edited"
    shutil.copytree(checkpoint["dir"], directory)
    data = json.loads((directory / file).read_text())
    edit(data)
    (directory / file).write_text(json.dumps(data))
    return directory


def _set(key: str, value: Any, section: str | None = None) -> Any:
    def edit(data: dict[str, Any]) -> None:
        target = data if section is None else data[section]
        if value is None:
            target.pop(key)
        else:
            target[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("vision_feature_select_strategy", "full"),
         "vision_feature_select_strategy 'full' is not supported for this vision tower"),
        (_set("vision_feature_select_strategy", "cls"),
         "vision_feature_select_strategy 'cls' is not 'default' or 'full'"),
        (_set("vision_feature_layer", 5), "vision_feature_layer 5 is out of range"),
        (_set("image_grid_pinpoints", [[48, 64]]),
         "image_grid_pinpoints: [48, 64] is not a (height, width) pair of positive multiples"),
        (_set("image_grid_pinpoints", []), "image_grid_pinpoints: empty"),
        (_set("image_grid_pinpoints", None),
         "image_grid_pinpoints: [336, 672] is not a (height, width) pair"),
        (_set("model_type", "siglip2_vision_model", "vision_config"),
         "vision_config.model_type 'siglip2_vision_model' is not supported"),
        (_set("model_type", "gemma", "text_config"),
         "text_config.model_type 'gemma' is not supported"),
        (_set("projector_hidden_act", "swish"), "projector_hidden_act 'swish' is not supported"),
    ],
)  # fmt: skip
def test_bad_config_values_are_refused_in_one_line(checkpoint, tmp_path, edit, message) -> None:
    directory = _edited(checkpoint, tmp_path, "config.json", edit)
    with pytest.raises(CheckpointError) as error:
        vlkit.from_pretrained(directory)
    text = str(error.value)
    assert message in text and str(directory / "config.json") in text and "\n" not in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("num_additional_image_tokens", 0),
         "num_additional_image_tokens 0 with vision_feature_select_strategy 'default'"),
        (lambda data: data["image_processor"].update(image_grid_pinpoints=[[64, 64]]),
         "the processor's image_grid_pinpoints [(64, 64)] differs from the model's"),
        (lambda data: data["image_processor"].update(size={"shortest_edge": 40}),
         "anyres tiles need one square side for both"),
        (lambda data: data["image_processor"].update(image_processor_type="CLIPImageProcessor"),
         "image_processor_type 'CLIPImageProcessor' is not a LlavaNextImageProcessor"),
    ],
)  # fmt: skip
def test_bad_processor_values_fail_vlkit_generate_in_one_line(checkpoint, tmp_path, capsys, edit,
                                                              message) -> None:  # fmt: skip
    directory = _edited(checkpoint, tmp_path, "processor_config.json", edit)
    code = main(["generate", "--model", str(directory), "--image", str(checkpoint["wide"]),
                 "--prompt", QUESTION, "--max-new-tokens", "2"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err


def test_mismatched_weights_name_the_keys(checkpoint, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "weights"
    shutil.copytree(checkpoint["dir"], directory)
    state = load_file(directory / "model.safetensors")
    del state["image_newline"]
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys \['image_newline'\]"):
        vlkit.from_pretrained(directory)


def test_get_processor_reads_the_llava_next_processor(checkpoint: dict[str, Any]) -> None:
    from vlkit.data.anyres_processor import AnyResProcessor
    from vlkit.hub.processors import get_processor

    processor = get_processor(checkpoint["dir"])
    assert isinstance(processor, AnyResProcessor)
    assert processor.pinpoints == read_llava_next_processor(checkpoint["dir"]).pinpoints
