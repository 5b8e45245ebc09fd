"""vlkit against transformers on tiny random CLIP and SigLIP checkpoints saved to disk."""

import json
import math
import re

import pytest
import torch
import transformers

import vlkit
from vlkit.hub import CheckpointError, from_pretrained

ATOL = 1e-5


def _features(output):
    # transformers 4.x returns a tensor, 5.x an output object with .pooler_output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _token_ids(batch, length, vocab, eos, pad, seed):
    """Random ids with an end-of-text token at a random position, padding after it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab - 3, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        end = int(torch.randint(1, length, (1,), generator=g))
        ids[row, end] = eos
        ids[row, end + 1 :] = pad
        mask[row, end + 1 :] = 0
    return ids, mask


def _randomize(model):
    """Random non-trivial values everywhere (HF init zeroes biases and sets LayerNorm to 1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("logit_scale"):
                param.fill_(2.3)
            elif name.endswith("logit_bias"):
                param.fill_(-1.7)
            else:
                param.add_(torch.randn(param.shape, generator=g) * 0.05)
    return model


CLIP_CASES = {
    "quick_gelu-eos": dict(hidden_act="quick_gelu", eos=49407, vocab=49408, width=32, heads=4,
                           mlp=37, image=32, patch=8, vwidth=48, vheads=3, proj=24),
    "gelu-argmax": dict(hidden_act="gelu", eos=2, vocab=1000, width=40, heads=5, mlp=64, image=30,
                        patch=6, vwidth=36, vheads=3, proj=20),
    "odd-sizes": dict(hidden_act="gelu_pytorch_tanh", eos=97, vocab=99, width=36, heads=3, mlp=37,
                      image=28, patch=7, vwidth=44, vheads=4, proj=13),
}  # fmt: skip


def _hf_clip(case):
    c = CLIP_CASES[case]
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=c["vocab"], hidden_size=c["width"], intermediate_size=c["mlp"],
                         num_hidden_layers=2, num_attention_heads=c["heads"],
                         max_position_embeddings=16, hidden_act=c["hidden_act"],
                         eos_token_id=c["eos"], pad_token_id=1, bos_token_id=0),
        vision_config=dict(hidden_size=c["vwidth"], intermediate_size=2 * c["vwidth"] + 1,
                           num_hidden_layers=2, num_attention_heads=c["vheads"],
                           image_size=c["image"], patch_size=c["patch"],
                           hidden_act=c["hidden_act"], layer_norm_eps=1e-6),
        projection_dim=c["proj"],
    )  # fmt: skip
    return _randomize(transformers.CLIPModel(config).eval())


def _compare(hf_model, ours, ids, mask, pixels, use_mask):
    kwargs = {"attention_mask": mask} if use_mask else {}
    with torch.no_grad():
        hf_image = _features(hf_model.get_image_features(pixel_values=pixels))
        hf_text = _features(hf_model.get_text_features(input_ids=ids, **kwargs))
        hf_logits = hf_model(input_ids=ids, pixel_values=pixels, **kwargs).logits_per_image
        image = ours.encode_image(pixels)
        text = ours.encode_text(ids, mask if use_mask else None)
        logits = ours.logits(image, text)
    torch.testing.assert_close(image, hf_image, atol=ATOL, rtol=0)
    torch.testing.assert_close(text, hf_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, hf_logits, atol=ATOL * 10, rtol=0)


@pytest.mark.parametrize("case", list(CLIP_CASES))
@pytest.mark.parametrize("use_mask", [False, True])
def test_clip_matches_transformers(tmp_path, case, use_mask):
    hf_model = _hf_clip(case)
    hf_model.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    c = CLIP_CASES[case]
    assert isinstance(ours, vlkit.CLIP) and not isinstance(ours, vlkit.SigLIP)
    assert ours.config.text.pooling == ("argmax" if c["eos"] == 2 else "eos")
    eos = c["vocab"] - 1 if c["eos"] == 2 else c["eos"]  # argmax pooling needs the largest id
    ids, mask = _token_ids(3, 16, c["vocab"], eos, pad=1, seed=2)
    pixels = torch.randn(2, 3, c["image"], c["image"])
    _compare(hf_model, ours, ids, mask, pixels, use_mask)


def _hf_siglip(act="gelu_pytorch_tanh", width=48, heads=4):
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=300, hidden_size=40, intermediate_size=50, num_hidden_layers=2,
                         num_attention_heads=5, max_position_embeddings=12, hidden_act=act,
                         projection_size=width),
        vision_config=dict(hidden_size=width, intermediate_size=67, num_hidden_layers=2,
                           num_attention_heads=heads, image_size=30, patch_size=6, hidden_act=act),
    )  # fmt: skip
    return _randomize(transformers.SiglipModel(config).eval())


@pytest.mark.parametrize("act", ["gelu_pytorch_tanh", "gelu", "quick_gelu"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_siglip_matches_transformers(tmp_path, act, use_mask):
    hf_model = _hf_siglip(act)
    hf_model.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    assert isinstance(ours, vlkit.SigLIP)
    ids, mask = _token_ids(3, 12, 300, eos=1, pad=1, seed=3)
    pixels = torch.randn(2, 3, 30, 30)
    _compare(hf_model, ours, ids, mask, pixels, use_mask)


def test_loaded_temperature_is_never_clamped(tmp_path):
    hf_model = _hf_siglip()
    with torch.no_grad():
        hf_model.logit_scale.fill_(
            4.7
        )  # exp(4.7) = 110 > 100, as in google/siglip-base-patch16-224
    hf_model.save_pretrained(tmp_path)
    assert from_pretrained(tmp_path).temperature().item() == pytest.approx(math.exp(4.7), rel=1e-6)
    clip = vlkit.create_model("tiny")
    with torch.no_grad():
        clip.logit_scale.fill_(4.7)
    # CLIP's clamp at 100 belongs to training (after each optimizer step), not to the forward.
    assert clip.temperature().item() == pytest.approx(math.exp(4.7), rel=1e-6)


@pytest.mark.parametrize("preset", ["tiny", "siglip-tiny"])
def test_save_pretrained_loads_back_in_transformers(tmp_path, preset):
    if preset == "siglip-tiny":
        model = from_pretrained(_saved(_hf_siglip(), tmp_path / "src"))
    else:
        model = _randomize(vlkit.create_model("tiny")).eval()
    model.save_pretrained(tmp_path / "out")
    hf_cls = transformers.SiglipModel if isinstance(model, vlkit.SigLIP) else transformers.CLIPModel
    hf_model = hf_cls.from_pretrained(tmp_path / "out").eval()
    size = model.config.vision.image_size
    ids, mask = _token_ids(2, model.config.text.context_length, model.config.text.vocab_size,
                           eos=model.config.text.vocab_size - 1, pad=0, seed=4)  # fmt: skip
    _compare(hf_model, model, ids, mask, torch.randn(2, 3, size, size), use_mask=False)
    reloaded = from_pretrained(tmp_path / "out")
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    assert reloaded.config.to_dict() == model.config.to_dict()


def _saved(hf_model, directory):
    hf_model.save_pretrained(directory)
    return directory


def test_pytorch_model_bin_is_loaded_without_pickle_code(tmp_path):
    hf_model = _hf_clip("gelu-argmax")
    hf_model.save_pretrained(tmp_path)
    state = hf_model.state_dict()
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = from_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        expected = _features(hf_model.get_image_features(pixel_values=pixels))
        torch.testing.assert_close(ours.encode_image(pixels), expected, atol=ATOL, rtol=0)


def _edit_checkpoint(directory, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("text_projection.weight"), "missing keys ['text_projection.weight']"),
        (
            lambda s: s.__setitem__("extra.weight", torch.zeros(2)),
            "unexpected keys ['extra.weight']",
        ),
        (
            lambda s: s.__setitem__("visual_projection.weight", torch.zeros(3, 3)),
            "visual_projection.weight: checkpoint (3, 3)",
        ),
    ],
)
def test_bad_checkpoints_name_the_keys(tmp_path, edit, message):
    _hf_clip("quick_gelu-eos").save_pretrained(tmp_path)
    _edit_checkpoint(tmp_path, edit)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        from_pretrained(tmp_path)


def test_unsupported_and_missing_checkpoints_have_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unsupported model_type 'bert'"):
        from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        from_pretrained("someone/not-a-real-model-xyz")


def test_unknown_model_type_lists_every_supported_family(tmp_path):
    # One line naming the file and the value, then every family `from_pretrained` dispatches on
    # (hub/loading.py's table), not only CLIP's.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError) as raised:
        from_pretrained(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'config.json'}: unsupported model_type 'bert'")
    families = ["CLIP/SigLIP (clip, siglip)", "SmolVLM/Idefics3 (smolvlm, idefics3)",
                "LLaVA (llava)", "BLIP-2 (blip-2", "OPT (opt)",
                "Llama/Qwen2/Qwen3/Mistral causal LM (llama, qwen2, qwen3, mistral)"]  # fmt: skip
    for family in families:
        assert family in message
