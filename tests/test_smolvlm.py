"""Parity of vlkit's SmolVLM / Idefics3 port (`GenerativeVLM`) with transformers on tiny random
checkpoints: logits and greedy generation, one and several images, padding images, padded
(masked) images, scale factors 2 and 4, tied and untied LM heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlkit
from vlkit.hub import CheckpointError
from vlkit.models.smolvlm import GenerativeVLM

transformers = pytest.importorskip("transformers")

IMAGE_TOKEN = 99
IMAGE_SIZE, PATCH = 32, 4
GRID = (IMAGE_SIZE // PATCH) ** 2  # 64 patches per image


def _hf_model(model_type: str = "smolvlm", scale: int = 2, tied: bool = False):
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )  # fmt: skip
    text = dict(
        model_type="llama", vocab_size=100, hidden_size=48, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=tied,
    )  # fmt: skip
    if model_type == "smolvlm":
        config_cls = transformers.SmolVLMConfig
        model_cls = transformers.SmolVLMForConditionalGeneration
    else:
        config_cls = transformers.Idefics3Config
        model_cls = transformers.Idefics3ForConditionalGeneration
    config = config_cls(
        vision_config=vision, text_config=text, scale_factor=scale,
        image_token_id=IMAGE_TOKEN, tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    return model_cls(config).eval()


def _save_and_load(hf, tmp_path: Path) -> GenerativeVLM:
    hf.save_pretrained(tmp_path)
    model = vlkit.from_pretrained(tmp_path)
    assert isinstance(model, GenerativeVLM)
    return model


def _prompt(n_images: int, seq: int, prefix: list[int], suffix: list[int]) -> list[int]:
    ids = list(prefix)
    for _ in range(n_images):
        ids += [5] + [IMAGE_TOKEN] * seq + [6]
    return ids + list(suffix)


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # (B, L)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _check(hf, model: GenerativeVLM, ids, pixels, pix_mask=None, attn=None) -> None:
    """Logits within 1e-4 at real positions, and identical greedy continuations."""
    kwargs = dict(pixel_values=pixels, pixel_attention_mask=pix_mask, attention_mask=attn)
    with torch.no_grad():
        ref = hf(input_ids=ids, **kwargs).logits.float()
        out = model(ids, **kwargs).logits
    keep = torch.ones_like(ids, dtype=torch.bool) if attn is None else attn.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-4, rtol=0)
    eos = hf.generation_config.eos_token_id
    with torch.no_grad():
        ref_tokens = hf.generate(
            input_ids=ids, do_sample=False, max_new_tokens=5, pad_token_id=0, **kwargs
        )
    tokens = model.generate(
        ids, max_new_tokens=5, do_sample=False, eos_token_id=eos, pad_token_id=0, **kwargs
    )
    assert tokens.tolist() == ref_tokens.tolist()


@pytest.mark.parametrize(
    ("model_type", "scale", "tied"),
    [("smolvlm", 2, False), ("smolvlm", 4, True), ("idefics3", 2, True), ("idefics3", 4, False)],
)
def test_one_image_parity(tmp_path: Path, model_type: str, scale: int, tied: bool) -> None:
    hf = _hf_model(model_type, scale, tied)
    model = _save_and_load(hf, tmp_path)
    assert model.decoder.config.tie_word_embeddings == tied
    seq = GRID // scale**2
    ids = torch.tensor([_prompt(1, seq, [1, 7, 8], [9, 10, 11])])
    torch.manual_seed(1)
    _check(hf, model, ids, torch.randn(1, 1, 3, IMAGE_SIZE, IMAGE_SIZE))


@pytest.mark.parametrize("scale", [2, 4])
def test_several_images_with_padding_image(tmp_path: Path, scale: int) -> None:
    """Row 0 has two images, row 1 one image plus an all-zero padding image; left-padded text."""
    hf = _hf_model("smolvlm", scale)
    model = _save_and_load(hf, tmp_path)
    seq = GRID // scale**2
    ids, attn = _left_pad(
        [_prompt(2, seq, [1, 7], [9, 10]), _prompt(1, seq, [1, 12, 13, 14], [15])]
    )
    torch.manual_seed(2)
    pixels = torch.randn(2, 2, 3, IMAGE_SIZE, IMAGE_SIZE)
    pixels[1, 1] = 0.0
    _check(hf, model, ids, pixels, attn=attn)
    # The padding image is dropped: 3 real images worth of features.
    assert model(ids, pixels, attention_mask=attn).image_features.shape[0] == 3 * seq


def test_padded_image_pixel_attention_mask(tmp_path: Path) -> None:
    """A 20x28 image padded to 32x32: bucketized positions and masked attention keys."""
    hf = _hf_model("smolvlm", 2)
    model = _save_and_load(hf, tmp_path)
    seq = GRID // 4
    ids = torch.tensor([_prompt(2, seq, [1, 7], [9, 10])])
    torch.manual_seed(3)
    pixels = torch.randn(1, 2, 3, IMAGE_SIZE, IMAGE_SIZE)
    pix_mask = torch.ones(1, 2, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.long)
    pix_mask[0, 1, 20:, :] = 0
    pix_mask[0, 1, :, 28:] = 0
    pixels[0, 1] *= pix_mask[0, 1]
    _check(hf, model, ids, pixels, pix_mask=pix_mask)
    vision_ref = hf.model.vision_model(
        pixel_values=pixels[0], patch_attention_mask=model.vision.patch_mask(pix_mask[0])
    ).last_hidden_state
    with torch.no_grad():
        vision_out = model.vision(pixels[0], pixel_attention_mask=pix_mask[0])
    torch.testing.assert_close(vision_out, vision_ref, atol=1e-5, rtol=0)


def test_image_token_mismatch_raises(tmp_path: Path) -> None:
    model = _save_and_load(_hf_model("smolvlm", 4), tmp_path)
    ids = torch.tensor([_prompt(1, 3, [1], [2])])  # 3 placeholders, 4 features
    with pytest.raises(ValueError, match="do not match"):
        model(ids, torch.randn(1, 1, 3, IMAGE_SIZE, IMAGE_SIZE))


def test_text_only_and_streamer(tmp_path: Path) -> None:
    hf = _hf_model("smolvlm", 2)
    model = _save_and_load(hf, tmp_path)
    ids = torch.tensor([[1, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(input_ids=ids).logits, atol=1e-4, rtol=0)
    seen: list[int] = []
    out = model.generate(ids, max_new_tokens=3, streamer=lambda t: seen.append(int(t[0])))
    assert out[0, 4:].tolist() == seen


def test_default_stop_token_comes_from_generation_config(tmp_path: Path) -> None:
    hf = _hf_model("smolvlm", 2)
    ids = torch.tensor([_prompt(1, 16, [1, 2], [7, 8])])
    pixels = torch.randn(1, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        free = hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False,
                           eos_token_id=None)[0, ids.shape[1] :].tolist()  # fmt: skip
    # Make the third greedy token the checkpoint's stop token: both libraries must stop there.
    hf.generation_config.eos_token_id = [free[2]]
    hf.generation_config.pad_token_id = free[2]
    model = _save_and_load(hf, tmp_path)
    assert model.eos_token_id == [free[2]]
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6,
                                do_sample=False)  # fmt: skip
    ours = model.generate(ids, pixel_values=pixels, max_new_tokens=6)
    assert ours.tolist() == reference.tolist()
    assert ours[0, ids.shape[1] :].tolist() == free[: free.index(free[2]) + 1]


def test_bad_checkpoint_keys_are_named(tmp_path: Path) -> None:
    _hf_model("smolvlm", 2).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(str(path))
    del state["model.connector.modality_projection.proj.weight"]
    state["model.vision_model.extra.weight"] = torch.zeros(1)
    key = "model.text_model.norm.weight"
    state[key] = torch.zeros(3)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        vlkit.from_pretrained(tmp_path)
    message = str(info.value)
    assert "connector.modality_projection.proj.weight" in message
    assert "vision.extra.weight" in message
    assert "decoder.model.norm.weight" in message


def test_unsupported_config(tmp_path: Path) -> None:
    _hf_model("smolvlm", 2).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["text_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="text_config"):
        vlkit.from_pretrained(tmp_path)


def test_empty_stop_list_generates_to_the_budget(tmp_path: Path) -> None:
    """`eos_token_id=[]` means no stop token (transformers too), in `generate` and in the
    pipeline the CLI and web app use (a processor that knows no stop token)."""
    from types import SimpleNamespace

    from vlkit.inference.smolvlm_pipeline import SmolVLMPipeline
    from vlkit.inference.vlm_pipeline import VLMInputs

    hf = _hf_model("smolvlm", 2)
    model = _save_and_load(hf, tmp_path)
    ids = torch.tensor([_prompt(1, 16, [1, 7], [8])])
    pixels = torch.randn(1, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=5, do_sample=False,
                          eos_token_id=[], pad_token_id=0)  # fmt: skip
    assert ref.shape[1] == ids.shape[1] + 5
    assert model.generate(ids, pixels, max_new_tokens=5, eos_token_id=[]).tolist() == ref.tolist()
    model.eos_token_id = []  # a checkpoint whose generation_config lists no stop token
    assert model.generate(ids, pixels, max_new_tokens=5).tolist() == ref.tolist()
    pipeline = SmolVLMPipeline(model, SimpleNamespace(stop_token_ids=[]))  # type: ignore[arg-type]
    assert pipeline.stop_token_ids == frozenset()
    new = pipeline.generate(VLMInputs(ids, {"pixel_values": pixels}), max_new_tokens=5)
    assert new == ref[0, ids.shape[1] :].tolist()
