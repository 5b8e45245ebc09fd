"""`vlkit.compose_vlm(..., kind="llava", anyres=True)`: a LLaVA-NeXT from a CLIP tower and an LM.

A tiny random CLIP tower (32 px, 8 px patches) and Llama LM with a BPE tokenizer and a chat
template are saved with transformers in the test. Images of different sizes in one batch get
different tile grids and token counts; the forward equals transformers'
`LlavaNextForConditionalGeneration` holding the same weights (logits, placeholder count and
`image_sizes` convention); the image features equal `AnyResolutionEncoder` image by image; a
training step trains the projector and `image_newline` only; save -> load gives the same logits;
`generate` and `vlkit generate` answer from the saved directory; bad options fail in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.data.anyres_placeholders import anyres_token_count
from vlkit.data.anyres_processor import AnyResProcessor
from vlkit.errors import CheckpointError
from vlkit.models.anyres import AnyResolutionEncoder
from vlkit.models.llava import LlavaVLM
from vlkit.models.llava_next import AnyResLlavaVLM

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<s>' + m['role'] + ': ' + m['content'] + '</s>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant:' }}{% endif %}"
)
CORPUS = ["user: what color is the shape? assistant: the shape is red and round."] * 10
VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
              num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
TEXT_TOWER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                  num_attention_heads=4, max_position_embeddings=16)  # fmt: skip
LM = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
          pad_token_id=3)  # fmt: skip
# LLaVA-NeXT's grids for a 32 px tower: 1x2, 2x1, 2x2, 3x1, 1x3 tiles.
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
SIZES = [(40, 100), (60, 30), (50, 50)]  # (height, width): wide, tall, square


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
        vocab_size=100, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """clip and llama directories, and RGB photos of SIZES."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    clip = transformers.CLIPConfig(text_config=TEXT_TOWER, vision_config=VISION)
    transformers.CLIPModel(clip).save_pretrained(root / "clip")
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "clip")
    tokenizer = _tokenizer()
    lm = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), **LM)
    transformers.AutoModelForCausalLM.from_config(lm).save_pretrained(root / "llama")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(root / "llama")
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    photos[0].save(root / "wide.png")
    return {"clip": root / "clip", "llama": root / "llama", "photos": photos,
            "wide": root / "wide.png"}  # fmt: skip


@pytest.fixture(scope="module")
def model(parts: dict[str, Any]) -> AnyResLlavaVLM:
    return vlkit.compose_vlm(parts["clip"], parts["llama"], "llava", anyres=True).eval()


def _prompt(model: AnyResLlavaVLM, images: int, question: str = "what color is the shape?") -> str:
    content = f"{model.image_token}\n" * images + question
    return model.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )


def _batch(model: AnyResLlavaVLM, photos: list[Image.Image]) -> dict[str, torch.Tensor]:
    """Two prompts, left-padded: two images (wide, tall) in the first, one (square) in the
    second."""
    text = [_prompt(model, 2), _prompt(model, 1, "what?")]
    return model.processor(text=text, images=[photos[:2], photos[2:]], padding=True,
                           padding_side="left")  # fmt: skip


def test_images_of_different_sizes_fill_their_own_grids_and_counts(model, parts) -> None:
    assert isinstance(model, AnyResLlavaVLM) and isinstance(model.processor, AnyResProcessor)
    assert model.pinpoints == [tuple(p) for p in PINPOINTS]  # LLaVA-NeXT's, scaled to 32 px
    inputs = _batch(model, parts["photos"])
    assert inputs["image_sizes"].tolist() == [list(size) for size in SIZES]
    views = model.view_counts(inputs["image_sizes"])
    assert views == [4, 3, 5]  # 1x3, 2x1, 2x2 tiles plus the global view
    assert inputs["pixel_values"].shape == (3, 5, 3, 32, 32)
    for index, count in enumerate(views):  # zero views after each image's own
        assert inputs["pixel_values"][index, count:].abs().sum() == 0
        assert inputs["pixel_values"][index, :count].flatten(1).abs().sum(1).min() > 0
    counts = [anyres_token_count(size, PINPOINTS, 32, 8) for size in SIZES]
    assert len(set(counts)) == 3
    placed = (inputs["input_ids"] == model.image_token_id).sum(1).tolist()
    assert placed == [counts[0] + counts[1], counts[2]]
    # The features are `AnyResolutionEncoder`'s, image by image.
    encoder = AnyResolutionEncoder(model.vision, model.connector, 48, PINPOINTS, 32)
    encoder.image_newline = model.image_newline
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"],
                    image_sizes=inputs["image_sizes"])  # fmt: skip
        expected = torch.cat([
            encoder(pixels[:count], size)
            for pixels, count, size in zip(inputs["pixel_values"], views, SIZES, strict=True)
        ])  # fmt: skip
    torch.testing.assert_close(out.image_features, expected, atol=1e-6, rtol=0)
    # Left padding changes nothing: the second prompt alone gives its row's logits.
    alone = model.processor(text=_prompt(model, 1, "what?"), images=[parts["photos"][2]])
    with torch.no_grad():
        single = model(alone["input_ids"], alone["pixel_values"], alone["attention_mask"],
                       image_sizes=alone["image_sizes"]).logits[0]  # fmt: skip
    torch.testing.assert_close(out.logits[1, -single.shape[0] :], single, atol=ATOL, rtol=0)


def test_forward_equals_transformers_llava_next(model, parts, tmp_path) -> None:
    # The same weights in transformers: written as a LLaVA (same names) plus image_newline.
    plain = LlavaVLM(model.vision, model.connector, model.decoder, model.image_token_id,
                     model.num_image_tokens)  # fmt: skip
    plain.save_pretrained(tmp_path / "llava")
    llava = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava")
    config = transformers.LlavaNextConfig(
        vision_config=llava.config.vision_config, text_config=llava.config.text_config,
        image_token_index=model.image_token_id, image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )  # fmt: skip
    reference = transformers.LlavaNextForConditionalGeneration(config).eval()
    missing, unexpected = reference.load_state_dict(llava.state_dict(), strict=False)
    assert missing == ["model.image_newline"] and unexpected == []
    with torch.no_grad():
        reference.model.image_newline.copy_(model.image_newline)
    inputs = _batch(model, parts["photos"])
    with torch.no_grad():
        expected = reference(**inputs).logits
        ours = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"],
                     image_sizes=inputs["image_sizes"]).logits  # fmt: skip
    keep = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours[keep], expected[keep], atol=ATOL, rtol=0)


def test_a_training_step_trains_the_projector_and_newline_only(parts) -> None:
    model = vlkit.compose_vlm(parts["clip"], parts["llama"], "llava", pinpoints=[[64, 64]])
    assert model.composition["trainable_parts"] == ["connector"]
    assert model.image_newline.requires_grad
    inputs = model.processor(text=_prompt(model, 1), images=[parts["photos"][0]])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.image_token_id, -100)
    out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], labels,
                image_sizes=inputs["image_sizes"])  # fmt: skip
    out.loss.backward()
    assert model.image_newline.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.connector.parameters())
    assert all(p.grad is None for p in (*model.vision.parameters(), *model.decoder.parameters()))


def test_save_load_same_logits_processor_and_record(model, parts, tmp_path) -> None:
    model.save_pretrained(tmp_path / "next")
    assert not (tmp_path / "next" / "config.json").exists()  # vlkit's composed format
    loaded = vlkit.from_pretrained(tmp_path / "next")
    assert type(loaded) is AnyResLlavaVLM and loaded.pinpoints == model.pinpoints
    assert loaded.composition == model.composition
    inputs = _batch(model, parts["photos"])
    reread = vlkit.get_processor(tmp_path / "next")
    assert isinstance(reread, AnyResProcessor)
    again = reread(text=[_prompt(model, 2), _prompt(model, 1, "what?")],
                   images=[parts["photos"][:2], parts["photos"][2:]], padding=True,
                   padding_side="left")  # fmt: skip
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(again[key], inputs[key]), key
    args = (inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(*args, image_sizes=inputs["image_sizes"]).logits,
            model(*args, image_sizes=inputs["image_sizes"]).logits, atol=0, rtol=0,
        )  # fmt: skip


def test_generate_and_vlkit_generate_answer_from_the_saved_directory(model, parts, tmp_path,
                                                                     capsys) -> None:  # fmt: skip
    model.save_pretrained(tmp_path / "next")
    code = main(["generate", "--model", str(tmp_path / "next"), "--image", str(parts["wide"]),
                 "--prompt", "what color is the shape?", "--max-new-tokens", "5"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    image = Image.open(parts["wide"]).convert("RGB")
    inputs = model.processor(text=_prompt(model, 1), images=[image])
    ids = model.generate(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"],
                         image_sizes=inputs["image_sizes"], max_new_tokens=5,
                         eos_token_id=model.eos_token_id)  # fmt: skip
    expected = model.processor.decode(ids[0, inputs["input_ids"].shape[1] :], True)
    assert expected.strip() and capsys.readouterr().out.strip() == expected.strip()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "qformer", "anyres": True}, "anyres: only the llava kind"),
        ({"kind": "cogvlm", "pinpoints": [[64, 64]]}, "pinpoints: only the llava kind"),
        ({"pinpoints": [[48, 64]]}, "pinpoints: [48, 64] is not a (height, width) pair"),
        ({"pinpoints": [64, 64]}, "pinpoints: 64 is not a (height, width) pair"),
        ({"pinpoints": []}, "pinpoints: empty"),
        ({"anyres": True, "vision_feature_select_strategy": "full"},
         "vision_feature_select_strategy='full': anyres stitches square patch grids"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_in_one_line(options, message, parts) -> None:
    options = {"kind": "llava", **options}
    with pytest.raises((ValueError, CheckpointError)) as error:
        vlkit.compose_vlm(parts["clip"], parts["llama"], **options)
    text = str(error.value)
    assert message in text and "\n" not in text


def test_missing_image_sizes_is_refused_in_one_line(model, parts) -> None:
    inputs = model.processor(text=_prompt(model, 1), images=[parts["photos"][1]])
    with pytest.raises(ValueError, match=r"^image_sizes: required by an anyres model[^\n]*$"):
        model(inputs["input_ids"], inputs["pixel_values"])
    with pytest.raises(ValueError, match="2 sizes for 1 images"):
        model(inputs["input_ids"], inputs["pixel_values"], image_sizes=[[60, 30], [60, 30]])
