"""Issue 12 item 5: LLaVA conversation JSON, chat-template label masking, and the composed run.

The full run (>= 0.95 easy-VQA accuracy) is a measured number in benchmarks/RESULTS.md; here the
pipeline runs tiny: a BPE tokenizer and Llama trained for a few steps, a random tower.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from vlkit.data.datasets.llava_conversations import (
    LlavaConversations,
    collate_conversations,
    read_llava_conversations,
    write_llava_conversations,
)
from vlkit.losses.next_token import IGNORE_INDEX
from vlkit.recipes.composed_run import CHAT_TEMPLATE, train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "<|im_start|>user\n<image>\nwhat color is the shape?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n",
    "<|im_start|>user\nis there a circle?<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>\n",
    "a blue triangle left of a green circle",
] * 5


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from vlkit.data.tokenizers.hf_json import HFTokenizer

    directory = train_bpe_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=300)
    return HFTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


def _transform(pil) -> torch.Tensor:
    return torch.zeros(3, 4, 4) + torch.tensor(pil.getpixel((0, 0)))[:, None, None] / 255


def test_tokenizer_has_chat_template_and_special_tokens(tokenizer) -> None:
    assert tokenizer.chat_template == CHAT_TEMPLATE
    for token in ("<|im_start|>", "<|im_end|>", "<image>"):
        assert len(tokenizer.encode(token)) == 1, token
    assert tokenizer.decode(tokenizer.encode("what color?")) == "what color?"
    assert tokenizer.eot_token_id == tokenizer.encode("<|im_end|>")[0]


def test_labels_only_on_assistant_tokens_multi_turn_several_images(tokenizer, image) -> None:
    row = {
        "id": "two",
        "image": [str(image), str(image)],
        "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the shape?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "<image>\nis there a circle?"},
            {"from": "gpt", "value": "yes"},
        ],
    }
    data = LlavaConversations([row], tokenizer, _transform, image_tokens=3)
    item = data[0]
    assert item["pixel_values"].shape == (2, 3, 4, 4)
    ids, labels = item["input_ids"], item["labels"]
    image_id = tokenizer.encode("<image>")[0]
    assert int((ids == image_id).sum()) == 6  # two images x three placeholders
    targets = ids[labels != IGNORE_INDEX].tolist()
    im_end = tokenizer.eot_token_id
    # Exactly the two answers, each with its end-of-turn token, are targets.
    assert targets == tokenizer.encode("red") + [im_end] + tokenizer.encode("yes") + [im_end]
    assert (labels[labels != IGNORE_INDEX] == ids[labels != IGNORE_INDEX]).all()
    # The whole row decodes back to the chat-template render.
    messages = [
        {"role": "user", "content": "<image>" * 3 + "\nwhat color is the shape?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "<image>" * 3 + "\nis there a circle?"},
        {"role": "assistant", "content": "yes"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == rendered
    # The generation prompt is the row up to the last answer.
    prompt = data.prompt_ids(0).tolist()
    assert ids[: len(prompt)].tolist() == prompt and data.answer(0) == "yes"


def test_bad_rows_are_skipped_counted_and_named(tmp_path: Path, image) -> None:
    good = {"id": "ok", "image": str(image),
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}  # fmt: skip
    rows = [
        good,
        {"id": "no_turns", "image": str(image)},
        {"id": "order", "image": str(image),
         "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        {"id": "images", "image": [str(image)],
         "conversations": [{"from": "human", "value": "<image><image> q"}, {"from": "gpt", "value": "a"}]},
        "not a row",
    ]  # fmt: skip
    path = write_llava_conversations(rows, tmp_path / "conv.json")
    with pytest.warns(UserWarning) as caught:
        kept, skipped = read_llava_conversations(path)
    assert [r["id"] for r in kept] == ["ok"] and skipped == 4
    messages = " ".join(str(w.message) for w in caught)
    for name in ("no_turns", "order", "images", "row 4"):
        assert name in messages
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json"):
        read_llava_conversations(tmp_path / "bad.json")


def test_collate_right_pads_and_drops_unreadable(tokenizer, image, tmp_path: Path) -> None:
    rows = [
        {"id": "a", "image": str(image),
         "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "red"}]},
        {"id": "b", "image": str(tmp_path / "missing.png"),
         "conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "yes"}]},
    ]  # fmt: skip
    data = LlavaConversations(rows, tokenizer, _transform, image_tokens=2)
    batch = collate_conversations([data[0], data[1], data[0]], tokenizer.pad_token_id)
    assert batch["images"].shape == (2, 1, 3, 4, 4)
    assert len(batch["skipped"]) == 1 and "row 1" in batch["skipped"][0]
    # A row without <image> gets its one image in front of the first turn (as LLaVA does).
    assert int((batch["input_ids"][0] == tokenizer.encode("<image>")[0]).sum()) == 2


def test_quick_example_trains_and_answers(tmp_path: Path, monkeypatch, capsys) -> None:
    """The example's --quick run: LM and VLM losses fall, and the pipeline answers.

    Run in this process (`runpy`): a second interpreter would spend most of the time importing."""
    pytest.importorskip("easy_vqa")
    out = tmp_path / "run"
    example = ROOT / "examples" / "compose_llava_easy_vqa.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--quick", "--out", str(out)])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(example), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    assert '"accuracy"' in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lm"]["last_loss"] < summary["lm"]["first_loss"]
    assert summary["stages"][-1]["last_loss"] < summary["stages"][0]["first_loss"]
    assert summary["test_items"] == 32 and 0.0 <= summary["accuracy"] <= 1.0
    assert all(isinstance(p, str) for _, p, _ in summary["examples"])
    assert (out / "lm" / "config.json").is_file() and (out / "lm" / "tokenizer.json").is_file()
    config = json.loads((out / "lm" / "config.json").read_text())
    assert config["model_type"] == "llama"
    rows = json.loads((out / "easy_vqa_train.json").read_text())
    assert rows[0]["conversations"][0]["value"].startswith("<image>\n")
    # The trained model is saved with its parts record (LLaVA stage 2: projector + LM trained),
    # and `vlkit generate` answers with it.
    saved = json.loads((out / "model" / "composed_vlm_config.json").read_text())["composition"]
    assert saved["trainable_parts"] == ["connector", "language"]
    assert saved["frozen_parts"] == ["vision"] and saved["vision"] == str(out / "random_clip")
    assert saved["language"] == str(out / "lm") and saved == summary["composition"]
    from vlkit.cli import main

    image = rows[0]["image"]
    capsys.readouterr()
    assert main(["generate", "--model", str(out / "model"), "--image", image, "--prompt",
                 "what shape is this?", "--max-new-tokens", "4"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() != ""
    # The LM directory is a transformers Llama: same logits, same chat template and ids.
    transformers = pytest.importorskip("transformers")
    import vlkit

    reference = transformers.AutoModelForCausalLM.from_pretrained(out / "lm")
    reference_tok = transformers.AutoTokenizer.from_pretrained(out / "lm")
    ours_tok = vlkit.get_tokenizer(str(out / "lm"))
    chat = [{"role": "user", "content": "<image>\nwhat color is the shape?"}]
    text = ours_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == reference_tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    ids = ours_tok.encode(text)
    assert ids == reference_tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ours = vlkit.from_pretrained(str(out / "lm"))(torch.tensor([ids])).logits
        theirs = reference(torch.tensor([ids])).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
