"""transformers' LLaVA (`LlavaForConditionalGeneration`, `LlavaProcessor`) side by side with vlkit.

Cases ported from `tests/models/llava/test_modeling_llava.py` (huggingface/transformers): the
`LlavaVisionText2TextModelTester` config (8x8 images, 2x2 patches, a 2-layer CLIP tower and a
2-layer Llama of vocabulary 99, `image_token_index` 0, `vision_feature_layer` -1, strategy
"default", batch 3, attention masks with holes at the pad id 1, a GeGLU Llama: `hidden_act`
"gelu"),
`test_mismatching_num_image_tokens`, and the layer / strategy / projector-bias / SigLIP / Qwen2
variants of the model family; from `test_processing_llava.py`: the chat template, the
`<image>` expansion (`patch_size`, `num_additional_image_tokens`, strategy) and
`test_special_mm_token_truncation`. Each random model is built with transformers, saved, loaded
by `vlkit.from_pretrained`, and both run on the same inputs: logits within 1e-4, greedy tokens
identical (batched, left padding, several images per prompt). Round trips: transformers ->
vlkit -> `save_pretrained` -> transformers' `LlavaForConditionalGeneration` and `AutoProcessor`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlkit
from vlkit.data.llava_processor import LlavaProcessor
from vlkit.errors import CheckpointError
from vlkit.models.llava import LlavaVLM

from .photos import astronaut, coffee, in_mode, odd_size

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
# LlavaVisionText2TextModelTester's configs.
VISION = {
    "model_type": "clip_vision_model", "image_size": 8, "patch_size": 2, "num_channels": 3,
    "hidden_size": 32, "projection_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 37, "dropout": 0.1, "attention_dropout": 0.1,
}  # fmt: skip
TEXT = {
    "model_type": "llama", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 37, "hidden_act": "gelu",
    "max_position_embeddings": 512, "pad_token_id": 1,
}  # fmt: skip
SIGLIP = {**VISION, "model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh"}
QWEN2 = {**TEXT, "model_type": "qwen2", "num_key_value_heads": 2, "use_sliding_window": False,
         "hidden_act": "silu"}  # fmt: skip
IMAGE, PAD, BATCH, SEQ = 0, 1, 3, 7


def _config(**overrides: Any) -> Any:
    options = dict(
        text_config=TEXT, vision_config=VISION, image_token_index=IMAGE,
        projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )  # fmt: skip
    options.update(overrides)
    return transformers.LlavaConfig(**options)


def _pair(tmp_path: Path, seed: int = 0, **overrides: Any) -> tuple[Any, LlavaVLM]:
    """A random transformers LLaVA and the same checkpoint loaded by vlkit (both eval)."""
    torch.manual_seed(seed)
    reference = transformers.LlavaForConditionalGeneration(_config(**overrides)).eval()
    directory = tmp_path / f"llava{seed}"
    reference.save_pretrained(directory)
    model = vlkit.from_pretrained(directory)
    assert isinstance(model, LlavaVLM)
    return reference, model


def _tokens_per_image(config: Any) -> int:
    vision = config.vision_config
    count = (vision.image_size // vision.patch_size) ** 2
    count += int(vision.model_type == "clip_vision_model")  # the CLS token
    return count - int(config.vision_feature_select_strategy == "default")


def _inputs(reference: Any, seed: int = 1) -> dict[str, torch.Tensor]:
    """The tester's `prepare_config_and_inputs_for_common`: image tokens first, mask holes."""
    generator = torch.Generator().manual_seed(seed)
    config = reference.config
    count = _tokens_per_image(config)
    size = config.vision_config.image_size
    ids = torch.randint(1, config.text_config.vocab_size, (BATCH, SEQ + count), generator=generator)
    ids[ids == IMAGE] = PAD
    mask = ids.ne(PAD).long()
    ids[:, :count] = IMAGE
    mask[:, :count] = 1
    pixels = torch.rand(BATCH, 3, size, size, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def _same_logits(reference: Any, model: LlavaVLM, inputs: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        expected = reference(**inputs).logits
        ours = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]).logits
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


VARIANTS = {
    "tester": {},
    "layer_-2": {"vision_feature_layer": -2},
    "layer_1": {"vision_feature_layer": 1},  # (0 fails in transformers 5.25: falsy)
    "layers_list": {"vision_feature_layer": [-2, -1]},
    "full": {"vision_feature_select_strategy": "full"},
    "full_layers_list": {"vision_feature_select_strategy": "full", "vision_feature_layer": [0, -1]},
    "no_projector_bias": {"multimodal_projector_bias": False},
    "projector_silu": {"projector_hidden_act": "silu"},
    "tied": {"text_config": {**TEXT, "tie_word_embeddings": True}},
    "gqa": {"text_config": {**TEXT, "num_key_value_heads": 2}},
    "siglip_full": {"vision_config": SIGLIP, "vision_feature_select_strategy": "full"},
    "siglip_default": {"vision_config": SIGLIP, "vision_feature_layer": -2},
    "siglip_no_head": {"vision_config": {**SIGLIP, "vision_use_head": False}},
    "qwen2": {"text_config": QWEN2},
}


# Variants also saved by vlkit and reloaded by transformers (the config keys vlkit writes).
RESAVED = ("layers_list", "full", "no_projector_bias", "projector_silu", "tied", "siglip_no_head",
           "qwen2")  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match(tmp_path, variant):
    reference, model = _pair(tmp_path, **VARIANTS[variant])
    assert model.num_image_tokens == _tokens_per_image(reference.config)
    inputs = _inputs(reference)
    _same_logits(reference, model, inputs)
    if variant in RESAVED:
        model.save_pretrained(tmp_path / "resaved")
        again = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "resaved")
        for key in (
            "vision_feature_layer",
            "vision_feature_select_strategy",
            "multimodal_projector_bias",
            "projector_hidden_act",
            "tie_word_embeddings",
        ):
            assert getattr(again.config, key) == getattr(reference.config, key), key  # fmt: skip
        assert again.config.text_config.model_type == reference.config.text_config.model_type
        _same_logits(again.eval(), model, inputs)


def test_mismatching_num_image_tokens(tmp_path):
    """test_mismatching_num_image_tokens: both raise on one image too few, and on one image
    for two prompts' image tokens; two images for two prompts work."""
    reference, model = _pair(tmp_path)
    inputs = _inputs(reference)
    _same_logits(reference, model, inputs)
    fewer = {**inputs, "pixel_values": inputs["pixel_values"][-1:]}
    with pytest.raises(ValueError):
        reference(**fewer)
    with pytest.raises(ValueError, match="image tokens"):
        model(fewer["input_ids"], fewer["pixel_values"], fewer["attention_mask"])
    ids = torch.cat([inputs["input_ids"][:1]] * 2)
    one = inputs["pixel_values"][:1]
    with pytest.raises(ValueError):
        reference(input_ids=ids, pixel_values=one)
    with pytest.raises(ValueError, match="image tokens"):
        model(ids, one)
    _same_logits(reference, model, {"input_ids": ids, "pixel_values": torch.cat([one, one]),
                                    "attention_mask": torch.ones_like(ids)})  # fmt: skip


def _left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


@pytest.mark.parametrize("variant", ["tester", "siglip_full", "qwen2"])
def test_generate_greedy_batched_left_padded(tmp_path, variant):
    """Greedy tokens equal: rows of different lengths (left padding) with one, two and zero
    images (text-only row), as transformers' generate."""
    reference, model = _pair(tmp_path, **VARIANTS[variant])
    count = _tokens_per_image(reference.config)
    rows = [
        [5, 6] + [IMAGE] * count + [7, 8, 9],
        [IMAGE] * count + [10] + [IMAGE] * count + [11, 12, 13, 14, 15, 16],
        [17, 18, 19],
    ]
    ids, mask = _left_padded(rows)
    pixels = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _same_logits(
            reference, model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
        )
        expected = reference.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=6,
            do_sample=False, pad_token_id=PAD, eos_token_id=None,
        )  # fmt: skip
        ours = model.generate(
            ids, pixels, mask, max_new_tokens=6, eos_token_id=[], pad_token_id=PAD
        )
    assert torch.equal(ours, expected)


def test_transformers_4_layout_and_errors(tmp_path):
    """Keys as saved by transformers 4 (llava-hf hub repositories) load too; unsupported vision
    or text model types, and weights that do not match config.json, are one-line errors."""
    reference, model = _pair(tmp_path)
    directory = tmp_path / "llava0"
    saved = load_file(str(directory / "model.safetensors"))  # transformers 5.25's file layout
    hub_v4 = {k.replace("vision_tower.", "vision_tower.vision_model."): v for k, v in saved.items()}
    in_memory = {k: v.contiguous() for k, v in reference.state_dict().items()}
    for state in (hub_v4, in_memory):
        save_file(state, str(directory / "model.safetensors"))
        _same_logits(reference, vlkit.from_pretrained(directory), _inputs(reference))

    config = json.loads((directory / "config.json").read_text())
    for key, value in (("vision_config", "dinov2"), ("text_config", "gemma")):
        broken = {**config, key: {**config[key], "model_type": value}}
        (directory / "config.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError) as error:
            vlkit.from_pretrained(directory)
        message = str(error.value)
        assert "config.json" in message and f"{key}.model_type '{value}'" in message
        assert "\n" not in message
    relu = {**config, "text_config": {**config["text_config"], "hidden_act": "relu2"}}
    (directory / "config.json").write_text(json.dumps(relu))
    with pytest.raises(CheckpointError, match="text_config: hidden_act 'relu2'"):
        vlkit.from_pretrained(directory)
    for key, value, expected in (
        ("vision_feature_layer", 3, "vision_feature_layer 3 is out of range"),
        ("vision_feature_layer", [-1, -4], "vision_feature_layer -4 is out of range"),
        ("projector_hidden_act", "swish2", "projector_hidden_act 'swish2' is not supported"),
        ("vision_feature_select_strategy", "cls", "vision_feature_select_strategy 'cls'"),
    ):
        (directory / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=expected):
            vlkit.from_pretrained(directory)
    wider = {**config, "text_config": {**config["text_config"], "hidden_size": 64}}
    (directory / "config.json").write_text(json.dumps(wider))
    with pytest.raises(CheckpointError, match="does not match its config"):
        vlkit.from_pretrained(directory)


# --------------------------------------------------------------------------------------------
# Processor: a tiny byte-level BPE with Llama's BOS template, CLIPImageProcessor, chat template.

CHAT_TEMPLATE = (  # test_processing_llava.py's prepare_processor_dict
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
CORPUS = ["USER: What is in this image? ASSISTANT: An astronaut and a cup of coffee."] * 10
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
PROCESSOR_SIZE, PATCH = 30, 6


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """LLaVA directories as llava-hf publishes them: model + processor (CLIP "default", SigLIP
    "full" with a left-padding tokenizer)."""
    tokenizer = _tokenizer()
    vocab = tokenizer.get_vocab_size()
    out = {}
    for name, vision, strategy, side in (
        ("clip", VISION, "default", "right"),
        ("siglip", SIGLIP, "full", "left"),
    ):
        directory = tmp_path_factory.mktemp(f"llava_{name}")
        torch.manual_seed(0)
        config = _config(
            vision_config={**vision, "image_size": PROCESSOR_SIZE, "patch_size": PATCH},
            text_config={**TEXT, "vocab_size": vocab, "pad_token_id": 3, "eos_token_id": 2,
                         "bos_token_id": 1},
            image_token_index=tokenizer.token_to_id("<image>"),
            vision_feature_select_strategy=strategy, vision_feature_layer=-2,
        )  # fmt: skip
        transformers.LlavaForConditionalGeneration(config).save_pretrained(directory)
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
            unk_token="<unk>", padding_side=side, extra_special_tokens={"image_token": "<image>"},
        )  # fmt: skip
        if name == "clip":
            images = transformers.CLIPImageProcessor(
                size={"shortest_edge": PROCESSOR_SIZE},
                crop_size={"height": PROCESSOR_SIZE, "width": PROCESSOR_SIZE},
            )  # fmt: skip
        else:
            images = transformers.SiglipImageProcessor(
                size={"height": PROCESSOR_SIZE, "width": PROCESSOR_SIZE}
            )
        transformers.LlavaProcessor(
            images, fast, patch_size=PATCH, vision_feature_select_strategy=strategy,
            chat_template=CHAT_TEMPLATE, num_additional_image_tokens=int(name == "clip"),
        ).save_pretrained(directory)  # fmt: skip
        out[name] = directory
    return out


def _same_inputs(ours: dict[str, torch.Tensor], expected: Any) -> None:
    assert set(ours) == set(expected.keys()), (set(ours), set(expected.keys()))
    for key, value in ours.items():
        if key == "pixel_values":
            torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0)
        else:
            assert torch.equal(value, expected[key]), key


PROMPTS = ["USER: <image>\nWhat is in this image? ASSISTANT:", "<image> an astronaut <image>"]


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_processor_matches_transformers(checkpoints, name):
    directory = checkpoints[name]
    reference = transformers.AutoProcessor.from_pretrained(directory)
    ours = vlkit.get_processor(directory)
    assert isinstance(ours, LlavaProcessor)
    images = [astronaut(), in_mode(coffee(), "RGBA"), odd_size(17, 33, "L")]
    # One prompt, one image; a batch with one and two images (padding); text only.
    _same_inputs(ours(text=PROMPTS[0], images=images[0]),
                 reference(text=PROMPTS[0], images=images[0], return_tensors="pt"))  # fmt: skip
    _same_inputs(
        ours(text=PROMPTS, images=[[images[0]], images[1:]], padding=True),
        reference(
            text=PROMPTS, images=[[images[0]], images[1:]], padding=True, return_tensors="pt"
        ),
    )
    _same_inputs(ours(text="no image here"), reference(text="no image here", return_tensors="pt"))
    count = int((ours(text="<image>", images=images[0])["input_ids"] == ours.image_token_id).sum())
    grid = (PROCESSOR_SIZE // PATCH) ** 2
    assert count == (grid if name == "clip" else grid)  # default drops the CLS it adds
    # Chat template (test_chat_template_is_saved / apply_chat_template).
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cup."}]},
        {"role": "user", "content": [{"type": "text", "text": "And?"}]},
    ]
    for generation in (True, False):
        assert ours.apply_chat_template(messages, add_generation_prompt=generation) == (
            reference.apply_chat_template(messages, add_generation_prompt=generation)
        )
    # Errors: image count vs `<image>` count, and truncation through image tokens.
    for text, given in ((PROMPTS, images[:1]), ("no image", images[:1]), (PROMPTS[0], None)):
        with pytest.raises(ValueError):
            reference(text=text, images=given)
        with pytest.raises(ValueError):
            ours(text=text, images=given)
    with pytest.raises(ValueError):
        reference(
            text=PROMPTS,
            images=[images[:1], images[1:]],
            truncation=True,
            max_length=5,
            padding=True,
        )
    with pytest.raises(ValueError, match="truncation"):
        ours(text=PROMPTS, images=[images[:1], images[1:]], truncation=True, max_length=5)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_round_trip_through_vlkit(checkpoints, tmp_path, name):
    """transformers -> vlkit -> save_pretrained -> transformers: the same logits, and
    AutoProcessor on the saved directory gives the same inputs; greedy generation on processor
    inputs (batched, two images in one prompt) equals transformers'."""
    directory = checkpoints[name]
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(directory).eval()
    model = vlkit.from_pretrained(directory)
    processor = transformers.AutoProcessor.from_pretrained(directory)
    images = [[astronaut()], [coffee(), odd_size(5000, 40)]]
    inputs = processor(text=PROMPTS, images=images, padding=True, return_tensors="pt")
    arguments = (inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    with torch.no_grad():
        expected = reference(**inputs).logits
        torch.testing.assert_close(model(*arguments).logits, expected, atol=ATOL, rtol=0)
        tokens = reference.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert torch.equal(model.generate(*arguments, max_new_tokens=5), tokens)

    # Converted: the parts record names the directory and counts the (all trainable) weights.
    record = model.composition
    assert record["converted_from"] == "LlavaForConditionalGeneration"
    assert record["vision"] == record["language"] == str(directory)
    # As loaded, the vision tower is frozen (LlavaVLM's VisionTokens), the rest trains.
    assert record["frozen_parts"] == ["vision"]
    assert record["trainable_parts"] == ["connector", "language"]
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.vision.parameters())
    assert record["total_parameters"] == total
    assert record["trainable_parameters"] == total - vision
    saved = tmp_path / "saved"
    model.decoder.requires_grad_(False)  # the record follows the flags at save time
    model.save_pretrained(saved)
    assert vlkit.from_pretrained(saved).composition == {
        **record, "trainable_parts": ["connector"], "frozen_parts": ["vision", "language"],
        "trainable_parameters": total - vision - sum(p.numel() for p in model.decoder.parameters()),
    }  # fmt: skip
    model.decoder.requires_grad_(True)
    again = transformers.LlavaForConditionalGeneration.from_pretrained(saved).eval()
    assert (
        again.config.vision_feature_select_strategy
        == reference.config.vision_feature_select_strategy
    )
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, expected, atol=ATOL, rtol=0)
    resaved = transformers.AutoProcessor.from_pretrained(saved)
    assert type(resaved).__name__ == "LlavaProcessor"
    _same_inputs(
        vlkit.get_processor(saved)(text=PROMPTS, images=images, padding=True),
        resaved(text=PROMPTS, images=images, padding=True, return_tensors="pt"),
    )
    _same_inputs(
        {
            k: v
            for k, v in resaved(
                text=PROMPTS, images=images, padding=True, return_tensors="pt"
            ).items()
        },
        inputs,
    )


def test_composed_model_saves_for_transformers(checkpoints, tmp_path):
    """A llava-kind model composed in vlkit (a HF CLIP tower's penultimate layer, CLS dropped,
    a random Llama-shaped decoder) saves as a directory transformers loads with equal logits;
    one reading the tower's final (post-norm) tokens is refused with the reason."""
    from vlkit.fusion.projector import LlavaProjector
    from vlkit.models.decoder import DecoderConfig, DecoderLM
    from vlkit.models.frozen_vision import VisionTokens

    torch.manual_seed(3)
    tower = vlkit.from_pretrained(checkpoints["clip"]).vision.tower
    processor = vlkit.get_processor(checkpoints["clip"])
    decoder = DecoderLM(DecoderConfig(
        vocab_size=processor.tokenizer.get_vocab_size(), hidden_size=48, intermediate_size=64,
        num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=256,
    ))  # fmt: skip
    vision = VisionTokens(tower, "hidden:-2", freeze=True, drop_first=True)
    count = (PROCESSOR_SIZE // PATCH) ** 2
    model = LlavaVLM(
        vision, LlavaProjector(32, 48), decoder, processor.image_token_id, count
    ).eval()
    model.save_pretrained(tmp_path / "composed", processor=processor)
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "composed")
    inputs = processor(text=PROMPTS, images=[[astronaut()], [coffee(), coffee()]])
    with torch.no_grad():
        ours = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]).logits
        expected = reference.eval()(**inputs).logits
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)

    final = LlavaVLM(VisionTokens(tower), LlavaProjector(32, 48), decoder, 4, count + 1)
    with pytest.raises(CheckpointError, match="'final'.*hidden:-2"):
        final.save_pretrained(tmp_path / "refused")


def test_cli_generate_equals_transformers(checkpoints, tmp_path, capsys):
    """`vlkit generate --model LLAVA_DIR --image X --prompt ...` streams transformers' greedy
    answer (chat template, processor, generate, decode without special tokens)."""
    from vlkit.cli import main
    from vlkit.inference.vlm_loading import load_vlm

    directory = checkpoints["clip"]
    photo = tmp_path / "coffee.png"
    coffee().save(photo)
    processor = transformers.AutoProcessor.from_pretrained(directory)
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(directory).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, images=coffee().convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    pipeline = load_vlm(directory)
    assert pipeline.kind == "llava"
    prepared = pipeline.prepare([coffee().convert("RGB")], "What?")
    assert torch.equal(prepared.input_ids, inputs["input_ids"])
    assert (
        len(expected) > 4
        and pipeline.decode(pipeline.generate(prepared, max_new_tokens=8)) == expected
    )
    code = main(["generate", "--model", str(directory), "--image", str(photo), "--prompt", "What?",
                 "--max-new-tokens", "8"])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")


def test_cli_errors_are_one_line(checkpoints, tmp_path, capsys):
    """A LLaVA directory whose vision tower vlkit does not support: one line naming config.json,
    the key and the value, exit status 2."""
    import shutil

    from vlkit.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["clip"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["vision_config"]["model_type"] = "dinov2"
    (broken / "config.json").write_text(json.dumps(config))
    photo = tmp_path / "photo.png"
    astronaut().save(photo)
    code = main(["generate", "--model", str(broken), "--image", str(photo), "--prompt", "Hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "config.json" in err and "vision_config.model_type 'dinov2'" in err


def test_recipe_model_saves_for_transformers(tmp_path):
    """A `vlkit train-vlm` llava model (recipes/vlm_model.py: a vlkit ViT CLIP's "hidden:-2"
    tokens, the MLP projector, a Llama-shaped decoder, the run's word tokenizer) saves as a
    directory transformers' `LlavaForConditionalGeneration` and `AutoProcessor` load: the same
    token ids and logits."""
    from vlkit.data.tokenizers.word import WordTokenizer
    from vlkit.hub.hf_llava import llava_processor_for_model
    from vlkit.recipes.vlm_model import build_recipe_model, vision_clip
    from vlkit.training.vlm_recipe import DecoderShape, VisionSource, VLMRecipe

    recipe = VLMRecipe(
        vision=VisionSource(preset="tiny", tokens="hidden:-2"),
        decoder=DecoderShape(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4),
    )  # fmt: skip
    tokenizer = WordTokenizer.train(["what color is the shape ?", "a red circle", "blue square"])
    clip = vision_clip(recipe)
    model = build_recipe_model(recipe, clip, tokenizer).eval()
    special = {
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
    }
    processor = llava_processor_for_model(
        model, tokenizer.backend, vlkit.get_transform(clip), special
    )
    model.save_pretrained(tmp_path / "run", processor=processor)
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "run").eval()
    auto = transformers.AutoProcessor.from_pretrained(tmp_path / "run")
    texts = ["<image> what color is the shape ?", "<image> a red circle <image>"]
    images = [astronaut(), coffee(), astronaut()]
    ours = processor(text=texts, images=images)
    expected = auto(text=texts, images=images, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["attention_mask"], expected["attention_mask"])
    arguments = (ours["input_ids"], ours["pixel_values"], ours["attention_mask"])
    with torch.no_grad():
        logits = model(*arguments).logits
        reference_logits = reference(**{**expected, "pixel_values": ours["pixel_values"]}).logits
    torch.testing.assert_close(logits, reference_logits, atol=ATOL, rtol=0)


def test_get_processor_dispatch(checkpoints, tmp_path):
    """`vlkit.get_processor`: a SmolVLM directory gives the SmolVLM processor; a checkpoint that
    is not a generative VLM is a one-line error naming what it reads."""
    from test_smolvlm_processor import _write_processor

    from vlkit.data.smolvlm import SmolVLMProcessor

    smolvlm = _write_processor(tmp_path / "smolvlm")
    (smolvlm / "config.json").write_text(json.dumps({"model_type": "smolvlm"}))
    assert isinstance(vlkit.get_processor(smolvlm), SmolVLMProcessor)
    vlkit.create_model("tiny").save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match="no processor for this checkpoint.*llava"):
        vlkit.get_processor(tmp_path / "clip")


def test_processor_files_of_transformers_4(checkpoints, tmp_path):
    """The layout transformers 4 wrote (and llava-hf's hub repositories have): the image
    processor in preprocessor_config.json, the chat template in chat_template.json."""
    import shutil

    directory = tmp_path / "v4"
    shutil.copytree(checkpoints["clip"], directory)
    processor_config = json.loads((directory / "processor_config.json").read_text())
    image = processor_config.pop("image_processor")
    (directory / "processor_config.json").write_text(json.dumps(processor_config))
    (directory / "preprocessor_config.json").write_text(json.dumps(image))
    template = (directory / "chat_template.jinja").read_text()
    (directory / "chat_template.jinja").unlink()
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    reference = transformers.AutoProcessor.from_pretrained(directory)
    ours = vlkit.get_processor(directory)
    assert ours.chat_template == template
    images = [[coffee()], [astronaut(), in_mode(astronaut(), "P")]]
    _same_inputs(
        ours(text=PROMPTS, images=images),
        reference(text=PROMPTS, images=images, padding=True, return_tensors="pt"),
    )
