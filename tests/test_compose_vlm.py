"""`vlkit.compose_vlm`: generative VLMs of every kind from pretrained towers and causal LMs.

Tiny random CLIP / SigLIP towers and Llama / Qwen2 LMs (with a BPE tokenizer and a chat
template) are saved with transformers in the test. For every kind: the composed model's
text-only logits equal the LM's own (transformers') logits where the kind leaves text untouched,
the frozen / trainable parts are the paper's, a training step changes only the trainable
parameters, save -> load gives the same logits and the same parts record, and `vlkit generate`
answers from the saved directory. A composed llava is also checked against transformers'
`LlavaForConditionalGeneration` loading the saved directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.errors import CheckpointError
from vlkit.hub.compose import set_trainable
from vlkit.models.composition import COMPOSE_KINDS, COMPOSE_PARTS, DEFAULT_TRAINABLE

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<s>' + m['role'] + ': ' + m['content'] + '</s>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant:' }}{% endif %}"
)
CORPUS = ["user: what color is the shape? assistant: the shape is red and round."] * 10
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
              num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
TEXT_TOWER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                  num_attention_heads=4, max_position_embeddings=16)  # fmt: skip
LM = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
          pad_token_id=3)  # fmt: skip
KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "llava": {},
    "qformer": {"num_queries": 4},
    "flamingo": {"num_queries": 4},
    "cogvlm": {},
    "pixel_shuffle": {"scale_factor": 2},
    "qwen": {"num_queries": 4, "image_size": 48},  # a 6x6 grid from the 4x4 position table
}
# (vision, language) pairs per kind: both towers and both LM families are covered.
PAIRS = {"llava": ("clip", "llama"), "qformer": ("siglip", "qwen2"), "flamingo": ("clip", "qwen2"),
         "cogvlm": ("siglip", "llama"), "pixel_shuffle": ("siglip", "llama"),
         "qwen": ("clip", "llama")}  # fmt: skip


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
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Directories: clip, siglip (towers with their image processors), llama, qwen2 (LMs with
    tokenizer and chat template), bare (a Llama without a chat template)."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    out = {}
    clip = transformers.CLIPConfig(text_config=TEXT_TOWER, vision_config=VISION)
    transformers.CLIPModel(clip).save_pretrained(root / "clip")
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "clip")
    siglip = transformers.SiglipConfig(text_config=TEXT_TOWER, vision_config=VISION)
    transformers.SiglipModel(siglip).save_pretrained(root / "siglip")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(
        root / "siglip"
    )
    tokenizer = _tokenizer()
    vocab = tokenizer.get_vocab_size()
    for name, config in (
        ("llama", transformers.LlamaConfig(vocab_size=vocab, **LM)),
        ("qwen2", transformers.Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **LM)),
        ("bare", transformers.LlamaConfig(vocab_size=vocab, **LM)),
    ):
        model = transformers.AutoModelForCausalLM.from_config(config)
        model.save_pretrained(root / name)
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
            unk_token="<unk>",
        )  # fmt: skip
        if name != "bare":
            fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(root / name)
    for name in ("clip", "siglip", "llama", "qwen2", "bare"):
        out[name] = root / name
    out["photo"] = root / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(out["photo"])
    return out


@pytest.fixture(scope="module")
def composed(parts: dict[str, Path]) -> dict[str, Any]:
    return {
        kind: vlkit.compose_vlm(
            parts[PAIRS[kind][0]], parts[PAIRS[kind][1]], kind, **KIND_OPTIONS[kind]
        )
        for kind in COMPOSE_KINDS
    }


def _inputs(model: Any, photo: Path, prompt: str = "what color is the shape?") -> dict:
    text = model.processor.apply_chat_template(
        [{"role": "user", "content": f"{model.image_token}\n{prompt}"}],
        add_generation_prompt=True,
    )
    return model.processor(text=text, images=[Image.open(photo).convert("RGB")])


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_text_only_logits_equal_the_lms(kind: str, parts, composed) -> None:
    model = composed[kind].eval()
    reference = transformers.AutoModelForCausalLM.from_pretrained(parts[PAIRS[kind][1]]).eval()
    ids = torch.tensor([[1, 20, 31, 42, 53, 9, 2], [1, 7, 8, 9, 10, 11, 12]])
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        ours = model(ids, None, attention_mask=mask).logits
        theirs = reference(input_ids=ids, attention_mask=mask).logits
    vocab = theirs.shape[-1]
    assert ours.shape[-1] == vocab + 1  # the added image token
    real = mask.bool()  # padded positions attend to nothing: undefined in both
    torch.testing.assert_close(ours[..., :vocab][real], theirs[real], atol=ATOL, rtol=0)
    if kind == "flamingo":  # the gates start at 0: an image leaves the text logits unchanged
        inputs = _inputs(model, parts["photo"])
        with torch.no_grad():
            imaged = model(inputs["input_ids"], inputs["pixel_values"]).logits
            text = model(inputs["input_ids"], None).logits
        torch.testing.assert_close(imaged, text, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_frozen_parts_are_the_papers(kind: str, composed) -> None:
    model = composed[kind]
    record = model.composition
    assert record["trainable_parts"] == list(DEFAULT_TRAINABLE[kind])
    assert set(record["frozen_parts"]) == set(COMPOSE_PARTS[kind]) - set(DEFAULT_TRAINABLE[kind])
    assert all(not p.requires_grad for p in model.vision.parameters())
    assert all(not p.requires_grad for n, p in model.decoder.named_parameters()
               if "gated_cross" not in n and "vision_expert" not in n)  # fmt: skip
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable == record["trainable_parameters"] < record["total_parameters"]
    model.train()
    assert not model.vision.training  # a frozen tower stays in eval mode
    model.eval()


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_a_training_step_changes_only_the_trainable_parameters(kind, parts) -> None:
    model = vlkit.compose_vlm(parts[PAIRS[kind][0]], parts[PAIRS[kind][1]], kind,
                              **KIND_OPTIONS[kind])  # fmt: skip
    inputs = _inputs(model, parts["photo"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"],
                labels=inputs["input_ids"])  # fmt: skip
    assert out.loss is not None and out.loss.ndim == 0
    out.loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_save_load_same_logits_and_record(kind: str, parts, composed, tmp_path) -> None:
    model = composed[kind].eval()
    inputs = _inputs(model, parts["photo"])
    model.save_pretrained(tmp_path / kind)
    loaded = vlkit.from_pretrained(tmp_path / kind)
    assert type(loaded) is type(model)
    args = (inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args).logits, model(*args).logits, atol=ATOL, rtol=0)
    record = loaded.composition
    assert record == model.composition
    assert record["vision"] == str(parts[PAIRS[kind][0]])
    assert record["language"] == str(parts[PAIRS[kind][1]])
    trainable = sum(p.numel() for p in loaded.parameters() if p.requires_grad)
    assert trainable == record["trainable_parameters"]  # the frozen parts as saved
    reread = vlkit.get_processor(tmp_path / kind)(
        text="<image>\nwhat color?", images=[Image.open(parts["photo"]).convert("RGB")]
    )
    ours = model.processor(
        text="<image>\nwhat color?", images=[Image.open(parts["photo"]).convert("RGB")]
    )
    assert torch.equal(reread["input_ids"], ours["input_ids"])
    assert int((ours["input_ids"] == model.image_token_id).sum()) == model.num_image_tokens
    assert loaded.eos_token_id == model.eos_token_id == 2


@pytest.mark.parametrize("kind", COMPOSE_KINDS)
def test_vlkit_generate_answers_from_the_saved_directory(kind, parts, composed, tmp_path, capsys):
    model = composed[kind].eval()
    model.save_pretrained(tmp_path / kind)
    code = main(["generate", "--model", str(tmp_path / kind), "--image", str(parts["photo"]),
                 "--prompt", "what color is the shape?", "--max-new-tokens", "5"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # The same greedy tokens as the model's own generate on the processor's inputs.
    inputs = _inputs(model, parts["photo"])
    ids = model.generate(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"],
                         max_new_tokens=5, eos_token_id=model.eos_token_id)  # fmt: skip
    new = ids[0, inputs["input_ids"].shape[1] :]
    expected = model.processor.decode(new, skip_special_tokens=True)
    assert expected.strip() and capsys.readouterr().out.rstrip("\n") == expected.strip()


def test_composed_llava_loads_in_transformers(parts, composed, tmp_path) -> None:
    model = composed["llava"].eval()
    model.save_pretrained(tmp_path / "llava")
    config = json.loads((tmp_path / "llava" / "config.json").read_text())
    assert config["vlkit_composition"]["trainable_parts"] == ["connector"]
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava")
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "llava")
    inputs = _inputs(model, parts["photo"])
    text = model.processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat color is the shape?"}],
        add_generation_prompt=True,
    )
    theirs = processor(text=text, images=[Image.open(parts["photo"]).convert("RGB")],
                       return_tensors="pt")  # fmt: skip
    assert torch.equal(theirs["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(theirs["pixel_values"], inputs["pixel_values"], atol=1e-6, rtol=0)
    with torch.no_grad():
        expected = reference.eval()(**theirs).logits
        ours = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]).logits
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


def test_options_feature_choice_trainable_and_stage_two(parts) -> None:
    full = vlkit.compose_vlm(parts["clip"], parts["llama"], "llava",
                             vision_feature_select_strategy="full", vision_feature_layer=[-2, -1])  # fmt: skip
    assert full.num_image_tokens == (32 // 8) ** 2 + 1  # CLS kept
    assert full.connector.proj[0].in_features == 2 * 32  # two layers concatenated
    default = vlkit.compose_vlm(parts["clip"], parts["llama"], "llava")
    assert default.num_image_tokens == (32 // 8) ** 2
    both = vlkit.compose_vlm(parts["clip"], parts["llama"], "llava",
                             trainable=["connector", "language"])  # fmt: skip
    assert both.composition["trainable_parts"] == ["connector", "language"]
    set_trainable(default, "llava", ["connector", "language"])  # LLaVA stage 2
    assert all(p.requires_grad for p in default.decoder.parameters())
    assert not any(p.requires_grad for p in default.vision.parameters())
    # A vlkit CLIP and DecoderLM passed in (with the LM's tokenizer) give the same model.
    clip, lm = vlkit.from_pretrained(parts["clip"]), vlkit.from_pretrained(parts["llama"])
    tokenizer = vlkit.compose_vlm(clip, lm, "llava", tokenizer=parts["llama"])
    assert tokenizer.composition["vision"] == "vlkit model"
    ids = torch.tensor([[1, 20, 31, 42]])
    with torch.no_grad():
        torch.testing.assert_close(tokenizer(ids).logits, default.eval()(ids).logits)
    assert lm.config.vocab_size == tokenizer.decoder.config.vocab_size - 1  # not resized in place
    assert all(p.requires_grad for p in clip.vision.parameters())  # the CLIP passed in: untouched
    new_row = tokenizer.decoder.get_input_embeddings().weight[-1]
    torch.testing.assert_close(new_row, lm.get_input_embeddings().weight.mean(0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: vlkit.compose_vlm(p["clip"], p["llama"], "blip3"), "kind must be one of"),
        (lambda p: vlkit.compose_vlm(p["llama"], p["llama"]), "model_type 'llama' is not a supported vision"),
        (lambda p: vlkit.compose_vlm(p["clip"], p["clip"]), "model_type 'clip' is not a supported causal LM"),
        (lambda p: vlkit.compose_vlm(p["clip"], p["bare"]), "has no chat template"),
        (lambda p: vlkit.compose_vlm(p["clip"], p["llama"], projector="identity"), "projector='identity'"),
        (lambda p: vlkit.compose_vlm(p["clip"], p["llama"], trainable=["lm"]), "trainable: unknown part"),
        (lambda p: vlkit.compose_vlm(p["clip"], p["llama"], "pixel_shuffle", scale_factor=3), "scale_factor=3"),
        (lambda p: vlkit.compose_vlm(p["clip"], p["llama"], vision_feature_layer=7), "vision_feature_layer 7"),
        (lambda p: vlkit.compose_vlm(p["clip"], vlkit.from_pretrained(p["llama"])), "tokenizer: required"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_name_the_argument(call, message, parts) -> None:
    with pytest.raises((ValueError, CheckpointError)) as error:
        call(parts)
    text = str(error.value)
    assert message in text and "\n" not in text


def test_web_app_answers_with_a_composed_model(parts, composed, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from vlkit.serve.app import create_app

    model = composed["qformer"].eval()
    model.save_pretrained(tmp_path / "qformer")
    client = TestClient(create_app(vlm_path=str(tmp_path / "qformer")), base_url="http://127.0.0.1")
    photo = parts["photo"]
    reply = client.post(
        "/api/generate",
        files=[("image", (photo.name, photo.read_bytes(), "application/octet-stream"))],
        data={"prompt": "what color is the shape?", "max_new_tokens": "5"},
    )
    assert reply.status_code == 200, reply.text
    inputs = _inputs(model, photo)
    ids = model.generate(**inputs, max_new_tokens=5, eos_token_id=model.eos_token_id)
    expected = model.processor.decode(ids[0, inputs["input_ids"].shape[1] :], True)
    assert reply.json()["text"].strip() == expected.strip()


@pytest.mark.parametrize("kind", ["llava", "cogvlm"])
def test_stage_two_trainable_parts_round_trip(kind, parts, tmp_path) -> None:
    model = vlkit.compose_vlm(parts["clip"], parts["llama"], kind)
    set_trainable(model, kind, ["connector", "language"])
    model.save_pretrained(tmp_path / kind)
    loaded = vlkit.from_pretrained(tmp_path / kind)
    assert loaded.composition["trainable_parts"] == ["connector", "language"]
    assert loaded.composition["trainable_parameters"] == sum(
        p.numel() for p in loaded.parameters() if p.requires_grad
    )
    assert all(p.requires_grad for p in loaded.decoder.model.layers[0].mlp.parameters())
    assert not any(p.requires_grad for p in loaded.vision.parameters())


@pytest.mark.parametrize("kind", ["llava", "flamingo"])
def test_a_vlkit_resnet_tower_composes_saves_and_answers(kind, parts, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    clip = vlkit.create_model("small-rn-64")  # the `make demo` tower's architecture
    model = vlkit.compose_vlm(clip, parts["llama"], kind, num_queries=4).eval()
    assert model.composition["vision"] == "vlkit model"
    assert model.num_image_tokens == ((64 // 32) ** 2 if kind == "llava" else 1)
    model.save_pretrained(tmp_path / kind)  # llava: vlkit's format (transformers' reads ViTs)
    assert (tmp_path / kind / "composed_vlm_config.json").is_file()
    loaded = vlkit.from_pretrained(tmp_path / kind)
    inputs = _inputs(model, parts["photo"])
    args = (inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args).logits, model(*args).logits, atol=ATOL, rtol=0)
    code = main(["generate", "--model", str(tmp_path / kind), "--image", str(parts["photo"]),
                 "--prompt", "what color is the shape?", "--max-new-tokens", "3"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip()


@pytest.mark.parametrize("tied", [False, True])
def test_new_token_rows_are_the_mean_inside_and_beyond_the_matrix(tied: bool) -> None:
    from vlkit.models.composition import resize_token_embeddings
    from vlkit.models.decoder import DecoderConfig, DecoderLM

    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=1,
                           num_heads=2, num_kv_heads=2, tie_word_embeddings=tied)  # fmt: skip
    lm = DecoderLM(config)
    old_embed = lm.get_input_embeddings().weight.detach().clone()
    old_head = lm.lm_head.weight.detach().clone()
    resize_token_embeddings(lm, 12, new_token_ids=[9, 11])  # 9: a spare row; 11: a new one
    embed = lm.get_input_embeddings().weight
    assert embed.shape == (12, 8) and lm.config.vocab_size == 12 and lm.lm_head.out_features == 12
    assert (lm.lm_head.weight is embed) == tied
    torch.testing.assert_close(embed[:9], old_embed[:9])
    torch.testing.assert_close(embed[9], old_embed[:9].mean(0))
    if not tied:
        torch.testing.assert_close(lm.lm_head.weight[9], old_head[:9].mean(0))
    assert lm(torch.tensor([[1, 11]])).logits.shape == (1, 2, 12)


def test_two_images_in_one_prompt_through_the_pipeline(parts, composed, tmp_path) -> None:
    from vlkit.inference.vlm_loading import load_vlm

    model = composed["flamingo"].eval()
    model.save_pretrained(tmp_path / "flamingo")
    pipeline = load_vlm(tmp_path / "flamingo")
    photo = Image.open(parts["photo"]).convert("RGB")
    inputs = pipeline.prepare([photo, photo.rotate(90)], "which is upright?")
    assert inputs.model_inputs["pixel_values"].shape[:2] == (1, 2)
    assert int((inputs.input_ids == model.image_token_id).sum()) == 2
    assert 1 <= len(pipeline.generate(inputs, max_new_tokens=3)) <= 3
