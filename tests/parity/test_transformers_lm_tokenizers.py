"""Causal-LM tokenizers and chat templates side by side with transformers' `AutoTokenizer`.

Small byte-level BPE `tokenizer.json` files are trained here with `tokenizers` in the styles of
SmolLM2 (GPT-2 byte level, digits split), Llama 3 (tiktoken-style split regex, `<|begin_of_text|>`
post-processor) and Qwen2 (NFC, split regex, special and non-special added tokens), next to the
public chat templates of SmolLM2-Instruct, Llama-3-Instruct, Qwen2.5-Instruct and Qwen3
(`lm_chat_templates`), and a sentencepiece-style TinyLlama / Llama 2 BPE (byte fallback) that
transformers 5 rebuilds with a Metaspace pre-tokenizer. Each directory is loaded by transformers
and by vlkit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre
from tokenizers.trainers import BpeTrainer
from transformers import AutoTokenizer

import vlkit
from vlkit.data.tokenizers import HFTokenizer, get_tokenizer

from . import lm_chat_templates as templates

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024, isn't it?",
    "Hello world! Café naïve résumé — 東京 🙂 tabs\tand\nnew lines\n\n",
    "def square(x):\n    return x ** 2  # 12345 67890",
    "What is the capital of France? Paris is the capital of France.",
    "You are a helpful assistant. Think step by step, then answer.",
] * 8
TEXTS = [
    "Hello world",
    " leading space and trailing ",
    "It's 12345 o'clock; numbers 3.14159 and 1000000!",
    "Café 東京 🙂 naïve\n\n  indented\tTab",
    "chat <|im_start|>user\nhi<|im_end|> inline specials",
    "<|begin_of_text|>llama special <|eot_id|> <think>reason</think> <|extra|>",
    "",
]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?  "},
]
NO_SYSTEM = [{"role": "user", "content": "Hi there! Café?"}]


def _train(tok: Tokenizer, specials: list[str]) -> Tokenizer:
    trainer = BpeTrainer(
        vocab_size=420, special_tokens=specials, initial_alphabet=pre.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _write(directory: Path, tok: Tokenizer, config: dict, model_type: str) -> Path:
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    return directory


def smollm2_dir(root: Path) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre.Sequence(
        [pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _train(tok, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        # Not in tokenizer.json: transformers adds it as a special token on loading.
        "additional_special_tokens": ["<|extra|>"],
        "model_max_length": 8192,
        "chat_template": templates.SMOLLM2,
    }
    directory = _write(root / "smollm2", tok, config, "llama")
    tok.model.save(str(directory))  # vocab.json + merges.txt, as SmolLM2 ships them
    return directory


def llama3_dir(root: Path) -> Path:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"]  # fmt: skip
    _train(tok, specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": templates.LLAMA3,
    }
    return _write(root / "llama3", tok, config, "llama")


def qwen_dir(root: Path, name: str, template: str, model_type: str) -> Path:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _train(tok, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    # Qwen's non-special added tokens: matched whole, kept by skip_special_tokens.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in
                    ("<tool_call>", "</tool_call>", "<think>", "</think>")])  # fmt: skip
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": template,
    }
    return _write(root / name, tok, config, model_type)


def tinyllama_dir(root: Path, name: str = "tinyllama", **options) -> Path:
    """Sentencepiece-style BPE (byte fallback, "▁" for spaces) with `tokenizer_class`
    LlamaTokenizer, which transformers 5 rebuilds with a Metaspace pre-tokenizer."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )  # fmt: skip
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = BpeTrainer(vocab_size=480, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens])
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "chat_template": templates.TINYLLAMA,
        **options,
    }
    return _write(root / name, tok, config, "llama")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_tokenizers")
    return {
        "smollm2": smollm2_dir(root),
        "llama3": llama3_dir(root),
        "qwen2.5": qwen_dir(root, "qwen25", templates.QWEN25, "qwen2"),
        "qwen3": qwen_dir(root, "qwen3", templates.QWEN3, "qwen3"),
        "tinyllama": tinyllama_dir(root),
        "tinyllama-legacy": tinyllama_dir(root, "legacy", legacy=True),
        "tinyllama-no-prefix": tinyllama_dir(root, "no-prefix", add_prefix_space=False),
    }


STYLES = ["smollm2", "llama3", "qwen2.5", "qwen3", "tinyllama"]


def _pair(dirs: dict[str, Path], style: str) -> tuple[object, HFTokenizer]:
    reference = AutoTokenizer.from_pretrained(str(dirs[style]))
    ours = vlkit.get_tokenizer(str(dirs[style]))
    assert isinstance(ours, HFTokenizer)
    return reference, ours


@pytest.mark.parametrize("style", [*STYLES, "tinyllama-legacy", "tinyllama-no-prefix"])
def test_ids_and_decoding_match(dirs: dict[str, Path], style: str) -> None:
    reference, ours = _pair(dirs, style)
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=True) == ids, text
        assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"], text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(
                ids, skip_special_tokens=skip
            ), (text, skip)
    assert ours.eos_token_id == reference.eos_token_id
    assert ours.bos_token_id == reference.bos_token_id
    if reference.pad_token_id is not None:
        assert ours.pad_token_id == reference.pad_token_id


def test_llama3_adds_bos_and_smollm2_does_not(dirs: dict[str, Path]) -> None:
    llama, smol = vlkit.get_tokenizer(dirs["llama3"]), vlkit.get_tokenizer(dirs["smollm2"])
    assert llama.encode("hi", add_special_tokens=True)[0] == llama.bos_token_id
    assert smol.encode("hi", add_special_tokens=True) == smol.encode("hi")


@pytest.mark.parametrize("style", ["smollm2", "qwen2.5", "tinyllama"])
def test_left_padded_batch_matches(dirs: dict[str, Path], style: str) -> None:
    reference, ours = _pair(dirs, style)
    texts = ["short", "a somewhat longer text 123", "mid length"]
    expected = reference(texts, padding=True, padding_side="left", return_tensors="pt")
    got = ours.batch_encode(texts, padding_side="left")
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    assert got["attention_mask"].tolist() == expected["attention_mask"].tolist()


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("messages", [MESSAGES, NO_SYSTEM], ids=["system", "no-system"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches(
    dirs: dict[str, Path], style: str, messages: list[dict], add_generation_prompt: bool
) -> None:
    reference, ours = _pair(dirs, style)
    options = {"add_generation_prompt": add_generation_prompt}
    text = reference.apply_chat_template(messages, tokenize=False, **options)
    assert ours.apply_chat_template(messages, tokenize=False, **options) == text
    ids = reference.apply_chat_template(messages, tokenize=True, return_dict=False, **options)
    assert ours.apply_chat_template(messages, tokenize=True, **options) == list(ids)


def test_qwen3_thinking_switch_and_reasoning(dirs: dict[str, Path]) -> None:
    reference, ours = _pair(dirs, "qwen3")
    history = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "add again"},
    ]
    for messages in (NO_SYSTEM, history):
        for thinking in (None, False, True):
            options = {} if thinking is None else {"enable_thinking": thinking}
            expected = reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **options
            )
            got = ours.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **options
            )
            assert got == expected
    assert ours.apply_chat_template(
        NO_SYSTEM, tokenize=False, add_generation_prompt=True, enable_thinking=False
    ).endswith("<think>\n\n</think>\n\n")


def test_qwen25_tools_and_tool_calls(dirs: dict[str, Path]) -> None:
    reference, ours = _pair(dirs, "qwen2.5")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city (°C) <b>now</b>",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Zürich?"},
        {
            "role": "assistant",
            "content": None,  # dropped, as transformers drops None-valued keys
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
        },
        {"role": "tool", "content": "21"},
        {"role": "tool", "content": "sunny"},
    ]
    expected = reference.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert ours.apply_chat_template(messages, tools=tools, tokenize=False,
                                    add_generation_prompt=True) == expected  # fmt: skip
    assert "Zürich" in expected and "<b>now</b>" in expected  # tojson: no escaping


def test_batched_conversations(dirs: dict[str, Path]) -> None:
    reference, ours = _pair(dirs, "smollm2")
    batch = [MESSAGES, NO_SYSTEM]
    assert ours.apply_chat_template(batch, tokenize=False) == reference.apply_chat_template(
        batch, tokenize=False
    )


def test_template_file_wins_over_tokenizer_config(dirs: dict[str, Path], tmp_path: Path) -> None:
    directory = tmp_path / "jinja"
    directory.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (directory / name).write_text((dirs["smollm2"] / name).read_text())
    (directory / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}{{ eos_token }}\n{% endfor %}"
    )
    reference = AutoTokenizer.from_pretrained(str(directory))
    ours = get_tokenizer(directory)
    expected = reference.apply_chat_template(MESSAGES, tokenize=False)
    assert ours.apply_chat_template(MESSAGES, tokenize=False) == expected
    assert expected.startswith("[SYSTEM] You are terse.<|im_end|>")


def test_missing_chat_template_is_one_line(dirs: dict[str, Path], tmp_path: Path) -> None:
    directory = tmp_path / "plain"
    directory.mkdir()
    (directory / "tokenizer.json").write_text((dirs["smollm2"] / "tokenizer.json").read_text())
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ours = get_tokenizer(directory)
    with pytest.raises(ValueError, match="no chat template") as info:
        ours.apply_chat_template(NO_SYSTEM)
    assert "\n" not in str(info.value) and str(directory) in str(info.value)


def test_sandbox_refuses_unsafe_templates(dirs: dict[str, Path]) -> None:
    ours = get_tokenizer(dirs["smollm2"])
    import jinja2

    with pytest.raises(jinja2.exceptions.SecurityError):
        ours.apply_chat_template(NO_SYSTEM, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.TemplateError, match="no tools"):
        ours.apply_chat_template(
            NO_SYSTEM, chat_template="{{ raise_exception('no tools') }}", tokenize=False
        )


def test_named_templates_pick_tool_use_and_default(dirs: dict[str, Path], tmp_path: Path) -> None:
    """A list of named templates in tokenizer_config.json, and one more in
    additional_chat_templates/: "tool_use" when tools are passed, else "default", or by name."""
    directory = tmp_path / "named"
    directory.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (directory / name).write_text((dirs["qwen2.5"] / name).read_text())
    config = json.loads((dirs["qwen2.5"] / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "default", "template": templates.SMOLLM2},
        {"name": "tool_use", "template": templates.QWEN25},
    ]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    reference = AutoTokenizer.from_pretrained(str(directory))
    ours = get_tokenizer(directory)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for options in ({}, {"tools": tools}, {"chat_template": "tool_use"}):
        expected = reference.apply_chat_template(NO_SYSTEM, tokenize=False, **options)
        assert ours.apply_chat_template(NO_SYSTEM, tokenize=False, **options) == expected
    # A separate template file replaces the tokenizer_config.json templates (transformers).
    (directory / "additional_chat_templates").mkdir()
    (directory / "chat_template.jinja").write_text(templates.TINYLLAMA)
    (directory / "additional_chat_templates" / "brief.jinja").write_text(
        "{% for m in messages %}{{ m.content }};{% endfor %}"
    )
    reference = AutoTokenizer.from_pretrained(str(directory))
    ours = get_tokenizer(directory)
    for options in ({}, {"chat_template": "brief"}):
        expected = reference.apply_chat_template(NO_SYSTEM, tokenize=False, **options)
        assert ours.apply_chat_template(NO_SYSTEM, tokenize=False, **options) == expected
