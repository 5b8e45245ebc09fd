"""`vlkit finetune` on LLaVA: a loaded one (a tiny transformers `LlavaForConditionalGeneration`
with its `LlavaProcessor`, saved in the test) and a composed one (`vlkit.compose_vlm` of a tiny
CLIP and a tiny Llama with a chat template, saved). LoRA and full fine-tuning on LLaVA
conversation JSON; `OUT/final` holds the trained weights and `vlkit generate` answers with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli.main import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
CORPUS = [f"<|im_start|>user\nWhat color is it?<|im_end|>\n<|im_start|>assistant\n{c}<|im_end|>"
          for c in COLORS] * 10  # fmt: skip
VISION = dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
              num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
SETTINGS = ["batch_size=3", "max_steps=2", "lr=1e-2", "warmup_steps=1", "log_every=1",
            "device=cpu", "progress=false", "checkpoint_every=2"]  # fmt: skip


def chatml_tokenizer():
    """A byte-level BPE trained on CORPUS with the ChatML and `<image>` special tokens (also
    used by tests/test_finetune_anyres.py and tests/test_finetune_composed.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=120, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    return tokenizer


def _fast_tokenizer(**special: str):
    tokenizer = chatml_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", unk_token="<unk>",
        **special,
    )  # fmt: skip
    return tokenizer, fast


def _loaded_llava(directory: Path) -> Path:
    """A tiny transformers LLaVA (CLIP tower, Llama LM) with its processor (ChatML template)."""
    tokenizer, fast = _fast_tokenizer(eos_token="<|im_end|>",
                                      extra_special_tokens={"image_token": "<image>"})  # fmt: skip
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    transformers.LlavaProcessor(
        images, fast, patch_size=8, vision_feature_select_strategy="default",
        chat_template=CHATML, num_additional_image_tokens=1,
    ).save_pretrained(directory)  # fmt: skip
    config = transformers.LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **VISION},
        text_config={"model_type": "llama", "vocab_size": tokenizer.get_vocab_size(), **LM},
        image_token_index=tokenizer.token_to_id("<image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(directory)
    return directory


def _composed_llava(root: Path) -> Path:
    """`vlkit.compose_vlm` of a tiny CLIP and a tiny Llama (with a chat template), saved."""
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16)  # fmt: skip
    clip = transformers.CLIPConfig(text_config=text, vision_config=VISION)
    transformers.CLIPModel(clip).save_pretrained(root / "clip")
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    ).save_pretrained(root / "clip")
    tokenizer, fast = _fast_tokenizer(eos_token="<|im_end|>")
    fast.chat_template = CHATML
    llama = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), **LM)
    transformers.AutoModelForCausalLM.from_config(llama).save_pretrained(root / "llama")
    fast.save_pretrained(root / "llama")
    vlkit.compose_vlm(root / "clip", root / "llama", "llava").save_pretrained(root / "composed")
    return root / "composed"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune_llava")
    rows = []
    for n, (color, rgb) in enumerate(list(COLORS.items()) * 2):
        path = root / f"{n}.png"
        noise = np.random.default_rng(n).integers(0, 30, (20, 20, 3))
        Image.fromarray((np.array(rgb) + noise).clip(0, 255).astype(np.uint8)).save(path)
        rows.append({"id": str(n), "image": path.name, "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"},
            {"from": "gpt", "value": color}]})  # fmt: skip
    (root / "train.json").write_text(json.dumps(rows))
    return {"loaded": _loaded_llava(root / "loaded"), "composed": _composed_llava(root),
            "train": root / "train.json", "image": root / "0.png"}  # fmt: skip


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("kind", ["loaded", "composed"])
def test_finetune_llava_then_generate(setup, tmp_path, capsys, kind, lora) -> None:
    out = tmp_path / "run"
    extra = ["--lora", "r=4,alpha=8,targets=q_proj,v_proj"] if lora else []
    argv = ["finetune", "--model", str(setup[kind]), "--data", str(setup["train"]),
            "--out", str(out), *SETTINGS, *extra]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_kind"] == ("adapter" if lora else "full")
    assert summary["sft_items"] == 6 and summary["skipped_rows"] == 0
    final = out / "final"
    if lora:
        assert (final / "adapter_model.safetensors").is_file()
        assert not (final / "config.json").exists()
    else:  # a LLaVA directory (transformers' layout) holding the trained weights
        from safetensors.torch import load_file

        trained = load_file(out / "checkpoints" / "step_00000002" / "model.safetensors")
        model = vlkit.from_pretrained(final)
        for name, value in model.state_dict().items():
            assert torch.equal(value, trained[name]), name
        base = vlkit.from_pretrained(setup[kind]).state_dict()
        changed = [n for n, v in model.state_dict().items() if not torch.equal(v, base[n])]
        assert changed and not any(n.startswith("vision.") for n in changed)  # tower frozen
    capsys.readouterr()
    code = main(["generate", "--model", str(final), "--image", str(setup["image"]),
                 "--prompt", "What color is it?", "--max-new-tokens", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() is not None
