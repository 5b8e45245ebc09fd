"""`SFTDataset` / `collate_sft` against transformers' own processors, side by side.

Tiny processor directories are built and saved by transformers here (SmolVLM, Idefics3 with a
BOS-adding tokenizer, LLaVA with a ChatML template whose EOS is `<|im_end|>`, and LLaVA-1.5's
template, which ends an assistant turn with no EOS). For every row: the rendered text is the
template's render (transformers' `apply_chat_template`), `input_ids` / pixels equal transformers'
processor output for that text and those images, and the labelled tokens decode to exactly each
assistant answer plus its end-of-turn token. Batches of rows with different image counts equal
transformers' padded batch output (pixel views and `pixel_attention_mask` included).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlkit
from vlkit.data.datasets.sft import SFTDataset, open_row_image, template_messages
from vlkit.data.smolvlm.prompts import number_to_words

transformers = pytest.importorskip("transformers")
processing_smolvlm = pytest.importorskip("transformers.models.smolvlm.processing_smolvlm")
from test_smolvlm_processor import _write_processor  # noqa: E402
from transformers.models.idefics3.image_processing_pil_idefics3 import (  # noqa: E402
    Idefics3ImageProcessorPil,
)
from transformers.models.smolvlm.image_processing_pil_smolvlm import (  # noqa: E402
    SmolVLMImageProcessorPil,
)

CHATML = (  # Qwen2-VL's layout, images as LLaVA's <image>
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_15 = (  # transformers' test_processing_llava.py template: no EOS after an answer
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAVA_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>"]
LLAVA_CORPUS = [
    "<|im_start|>user\nWhat colour is it? Be brief.<|im_end|>\n<|im_start|>assistant\nRed.",
    "USER: What is in this image? ASSISTANT: A red square and a green circle.",
] * 10


@pytest.fixture(scope="module", autouse=True)
def _num2words():
    """transformers' SmolVLMProcessor needs `num2words`; stand ours in when it is missing."""
    if processing_smolvlm.num2words is not None:
        yield
        return
    processing_smolvlm.num2words = number_to_words
    yield
    processing_smolvlm.num2words = None


def _smolvlm_dir(root: Path, idefics3: bool) -> tuple[Path, object]:
    """A SmolVLM / Idefics3 processor saved by transformers (+ config.json for get_processor);
    returns it and transformers' processor with the PIL image backend."""
    from tokenizers import Tokenizer, processors

    source = _write_processor(root / "source", padding_side="right")
    if idefics3:  # Llama 3's post-processor adds a BOS, as Idefics3's tokenizer does
        tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        bos = "<|im_start|>"
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A $B",
            special_tokens=[(bos, tokenizer.token_to_id(bos))],
        )
        tokenizer.save(str(source / "tokenizer.json"))
        config = json.loads((source / "preprocessor_config.json").read_text())
        config.pop("video_sampling")
        config["image_processor_type"] = "Idefics3ImageProcessor"
        (source / "preprocessor_config.json").write_text(json.dumps(config))
    kind, image_kind = (
        (transformers.Idefics3Processor, Idefics3ImageProcessorPil)
        if idefics3
        else (transformers.SmolVLMProcessor, SmolVLMImageProcessorPil)
    )
    directory = root / "saved"
    kind.from_pretrained(source).save_pretrained(directory)
    config = transformers.Idefics3Config() if idefics3 else transformers.SmolVLMConfig()
    config.save_pretrained(directory)
    reference = transformers.AutoProcessor.from_pretrained(directory)
    reference.image_processor = image_kind.from_pretrained(directory)
    return directory, reference


def _llava_dir(root: Path, template: str, eos: str) -> tuple[Path, object]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=LLAVA_SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(LLAVA_CORPUS, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token=eos, pad_token="<pad>",
        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}
    )
    transformers.LlavaProcessor(
        images, fast, patch_size=6, vision_feature_select_strategy="default",
        chat_template=template, num_additional_image_tokens=1,
    ).save_pretrained(root)  # fmt: skip
    transformers.LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 24, "patch_size": 6},
        text_config={"model_type": "llama", "vocab_size": tokenizer.get_vocab_size()},
        image_token_index=tokenizer.token_to_id("<image>"),
    ).save_pretrained(root)
    return root, transformers.AutoProcessor.from_pretrained(root)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, tuple]:
    """{name: (directory, transformers processor, end-of-turn text, EOS appended by vlkit)}."""
    root = tmp_path_factory.mktemp("sft")
    return {
        "smolvlm": (*_smolvlm_dir(root / "smolvlm", False), "<end_of_utterance>", False),
        "idefics3": (*_smolvlm_dir(root / "idefics3", True), "<end_of_utterance>", False),
        "llava_chatml": (*_llava_dir(root / "chatml", CHATML, "<|im_end|>"), "<|im_end|>", False),
        "llava_15": (*_llava_dir(root / "llava15", LLAVA_15, "</s>"), "</s>", True),
    }


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("sft_images")
    paths = []
    for n, (colour, size) in enumerate(
        (((200, 30, 30), (40, 30)), ((30, 200, 30), (70, 100)), ((30, 30, 200), (20, 20)))
    ):
        paths.append(str(folder / f"{n}.png"))
        Image.new("RGB", size, colour).save(paths[-1])
    return [
        {"id": "multi", "source": "rows row 0", "images": [paths[0]], "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image>What colour is it?"},
            {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "And the shape?"},
            {"role": "assistant", "content": "A red square."},
        ]},
        {"id": "two", "source": "rows row 1", "images": [paths[1], paths[2]], "messages": [
            {"role": "user", "content": "<image>What is this and <image> this?"},
            {"role": "assistant", "content": "A green circle and a blue square."},
        ]},
        {"id": "text", "source": "rows row 2", "images": [], "messages": [
            {"role": "user", "content": "What colour is it?"},
            {"role": "assistant", "content": "Green."},
        ]},
    ]  # fmt: skip


def _runs(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of labelled token ids."""
    runs: list[list[int]] = []
    previous = False
    for value in labels.tolist():
        if value != -100:
            if not previous:
                runs.append([])
            runs[-1].append(value)
        previous = value != -100
    return runs


@pytest.mark.parametrize("name", ["smolvlm", "idefics3", "llava_chatml", "llava_15"])
def test_items_and_batch_equal_transformers(kinds, rows, name):
    directory, reference, end_of_turn, appended = kinds[name]
    processor = vlkit.get_processor(directory)
    dataset = SFTDataset(rows, processor, max_length=4096)
    texts, images = [], []
    for index, row in enumerate(rows):
        item = dataset[index]
        text = "".join(piece for piece, _ in dataset.segments(index))
        render = reference.apply_chat_template(template_messages(row["messages"]), tokenize=False)
        assert (text.replace(end_of_turn, "") if appended else text) == render
        row_images = [open_row_image(image) for image in row["images"]]
        expected = reference(text=text, images=row_images or None, return_tensors="pt")
        assert torch.equal(item["input_ids"], expected["input_ids"][0])
        if row_images:
            pixels = expected["pixel_values"][0] if name in ("smolvlm", "idefics3") else (
                expected["pixel_values"]
            )  # fmt: skip
            torch.testing.assert_close(item["pixel_values"], pixels, atol=1e-6, rtol=0)
        # Labels: exactly each answer and its end-of-turn token, nothing else.
        labelled = item["labels"] != -100
        assert torch.equal(item["labels"][labelled], item["input_ids"][labelled])
        answers = [m["content"] + end_of_turn for m in row["messages"] if m["role"] == "assistant"]
        decoded = [reference.tokenizer.decode(run).strip() for run in _runs(item["labels"])]
        assert decoded == answers
        image_id = reference.tokenizer.convert_tokens_to_ids("<image>")
        assert not labelled[item["input_ids"] == image_id].any()
        texts.append(text)
        images.append(row_images)
    # A batch of rows with 1 and 2 images: padding as transformers' processor pads.
    batch = dataset.collate([dataset[0], dataset[1]])
    expected = reference(
        text=texts[:2], images=images[:2], padding=True, padding_side="right", return_tensors="pt"
    )
    for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
        if key in expected:
            assert torch.equal(batch[key], expected[key]), key
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(batch["labels"][batch["attention_mask"] == 0], torch.full_like(
        batch["labels"][batch["attention_mask"] == 0], -100))  # fmt: skip
    assert batch["images"].shape[0] == 2 and batch["index"] == [0, 1]
    # A text-only row next to an image row.
    mixed = dataset.collate([dataset[2], dataset[0]])
    assert mixed["input_ids"].shape[0] == 2
    if "pixel_attention_mask" in mixed:
        assert mixed["pixel_attention_mask"][0].sum() == 0
        assert torch.equal(mixed["pixel_values"][1, : len(dataset[0]["pixel_values"])][:, :, :1],
                           dataset[0]["pixel_values"][:, :, :1])  # fmt: skip


def test_bad_rows_skipped_or_strict(kinds, rows, tmp_path):
    processor = vlkit.get_processor(kinds["smolvlm"][0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = {**rows[1], "id": "bad", "source": "data.json row 7 (id 'bad')",
           "images": [rows[1]["images"][0], str(broken)]}  # fmt: skip
    dataset = SFTDataset([rows[2], bad], processor, max_length=4096)
    with pytest.warns(UserWarning, match=r"data.json row 7 \(id 'bad'\): unreadable image"):
        item = dataset[1]
    assert item["index"] == 1 and "broken.png" in item["skipped"]
    batch = dataset.collate([dataset[0], item])
    assert batch["index"] == [0] and len(batch["skipped"]) == 1
    with pytest.raises(ValueError, match=r"^data.json row 7 \(id 'bad'\): unreadable image"):
        SFTDataset([bad], processor, strict=True)[0]
    # Too long: skipped, never truncated.
    length = len(dataset[0]["input_ids"])
    short = SFTDataset([rows[2]], processor, max_length=length - 1)
    with pytest.warns(UserWarning, match=rf"rows row 2: {length} tokens > max_length {length - 1}"):
        assert "skipped" in short[0]
    assert "skipped" not in SFTDataset([rows[2]], processor, max_length=length)[0]
    with pytest.raises(ValueError, match="max_length"):
        SFTDataset([rows[2]], processor, max_length=length - 1, strict=True)[0]
    only_skipped = dataset.collate([item])
    assert only_skipped["images"].shape[0] == 0 and only_skipped["skipped"]


def test_reads_a_data_file(kinds, rows, tmp_path):
    """A LLaVA JSON file through SFTDataset(path, ...): bad rows counted at read time."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps([
        {"id": "ok", "image": rows[0]["images"][0], "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"},
            {"from": "gpt", "value": "Red."}]},
        {"id": "gone", "image": "gone.png", "conversations": [
            {"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}]},
    ]))  # fmt: skip
    processor = vlkit.get_processor(kinds["llava_chatml"][0])
    with pytest.warns(UserWarning, match="skipped 1"):
        dataset = SFTDataset(path, processor, max_length=512)
    assert len(dataset) == 1 and "row 1 (id 'gone'): missing image file" in dataset.skipped[0]
    decoded = [processor.decode(run) for run in _runs(dataset[0]["labels"])]
    assert decoded == ["Red.<|im_end|>"]
    with pytest.raises(ValueError, match="id 'gone'"):
        SFTDataset(path, processor, strict=True)


def test_batch_loss_equals_transformers(kinds, rows, tmp_path):
    """The collated batch drives a tiny SmolVLM the same way in vlkit and transformers: one loss
    over the labelled tokens (1e-5), from rows with 2, 1 and 0 images."""
    directory, reference, _, _ = kinds["smolvlm"]
    tokenizer = reference.tokenizer
    config = transformers.SmolVLMConfig(
        use_cache=False, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False, scale_factor=2, vocab_size=len(tokenizer),
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 32},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 48,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "max_position_embeddings": 512, "tie_word_embeddings": False,
                     "pad_token_id": tokenizer.pad_token_id},
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.SmolVLMForConditionalGeneration(config).eval()
    hf.save_pretrained(tmp_path / "model")
    model = vlkit.from_pretrained(tmp_path / "model").eval()
    dataset = SFTDataset(rows, vlkit.get_processor(directory))
    batch = dataset.collate([dataset[1], dataset[0], dataset[2]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    with torch.no_grad():
        expected = hf(**inputs, pixel_attention_mask=batch["pixel_attention_mask"]).loss
        ours = model(**inputs, pixel_attention_mask=batch["pixel_attention_mask"]).loss
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
