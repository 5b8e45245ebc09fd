"""Parity of vlkit's OPT decoder and BLIP-2 loader with transformers 5.25, on tiny random models.

Cases ported from transformers' `tests/models/opt/test_modeling_opt.py` (`OPTModelTester`'s
config and inputs: ids clamped to >= 3, last token eos, mask = ids != pad; the cache-vs-no-cache
check of `create_and_check_decoder_model_past_large_inputs` with a random mask over the new
tokens; `test_inputs_embeds`; opt-350m's `do_layer_norm_before=False` and
`word_embed_proj_dim != hidden_size`; left-padded batched generation of
`test_batch_generation`) and `tests/models/blip_2/test_modeling_blip_2.py` (the vision / Q-Former
/ OPT testers' shapes: image 30, patch 2, widths 32 and 16, 2 layers, `num_query_tokens` 10, an
`image_token_index` placeholder run before the text; generation with and without a prompt,
batched; the retrieval model's ITM and ITC scores).
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vlkit import from_pretrained  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hub.hf_blip2 import Blip2Retrieval, load_blip2  # noqa: E402
from vlkit.hub.hf_opt import config_from_hf_opt, from_hf_opt_state_dict  # noqa: E402
from vlkit.models.decoder import generate  # noqa: E402
from vlkit.models.qformer_vlm import QFormerVLM  # noqa: E402

ATOL = 1e-4
NUM_QUERIES = 10
IMAGE_TOKEN = 98  # last id of the 99-token test vocabulary


def _perturb(model: torch.nn.Module, std: float = 0.1) -> None:
    """Random weights far from transformers' init (zero query tokens, unit norms), so that
    every parameter matters and greedy tokens differ from step to step."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)


def _opt_config(**overrides) -> transformers.OPTConfig:
    # OPTModelTester.get_config (hidden 16, ffn 4, 2 layers, 4 heads), dropout off for eval.
    kwargs = dict(
        vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, ffn_dim=4,
        max_position_embeddings=50, eos_token_id=2, bos_token_id=0, pad_token_id=1,
        word_embed_proj_dim=16, dropout=0.0,
    )  # fmt: skip
    kwargs.update(overrides)
    return transformers.OPTConfig(**kwargs)


def _opt_pair(**overrides):
    torch.manual_seed(0)
    config = _opt_config(**overrides)
    hf = transformers.OPTForCausalLM(config).eval()
    _perturb(hf)
    ours = from_hf_opt_state_dict(hf.state_dict(), config_from_hf_opt(config.to_dict())).eval()
    return hf, ours


def _opt_inputs(batch: int = 13, length: int = 7):
    # OPTModelTester.prepare_config_and_inputs: ids >= 3, eos last, mask = ids != pad.
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 99, (batch, length), generator=gen)
    ids[:, -1] = 2
    ids[1, :3] = 1  # left padding
    ids[2, 2] = 1  # a hole: OPT positions come from the mask's cumsum
    return ids, ids.ne(1).long()


OPT_VARIANTS = {
    "tester": {},
    "project_in_out": {"word_embed_proj_dim": 8},  # opt-350m's narrower embeddings
    "post_norm": {"do_layer_norm_before": False},  # opt-350m's post-LayerNorm blocks
    "untied_no_bias": {"tie_word_embeddings": False, "enable_bias": False},
}


@pytest.mark.parametrize("variant", sorted(OPT_VARIANTS))
def test_opt_logits_match(variant: str) -> None:
    hf, ours = _opt_pair(**OPT_VARIANTS[variant])
    ids, mask = _opt_inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
        embeds = ours(inputs_embeds=ours.get_input_embeddings()(ids), attention_mask=mask).logits
        no_mask_ref = hf(input_ids=ids).logits
        no_mask = ours(ids).logits
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=ATOL, rtol=0)
    torch.testing.assert_close(embeds, out, atol=ATOL, rtol=0)  # test_inputs_embeds
    torch.testing.assert_close(no_mask, no_mask_ref, atol=ATOL, rtol=0)
    # The hole moves the later positions: the logits after it differ from the unmasked run.
    assert (out[2, 3:] - no_mask[2, 3:]).abs().max() > 1e-3


def test_opt_cache_with_masked_new_tokens_matches_no_cache() -> None:
    # create_and_check_decoder_model_past_large_inputs: 3 new tokens with a random mask.
    hf, ours = _opt_pair()
    ids, mask = _opt_inputs()
    gen = torch.Generator().manual_seed(3)
    new = torch.randint(3, 99, (ids.shape[0], 3), generator=gen)
    new_mask = torch.randint(0, 2, (ids.shape[0], 3), generator=gen)
    full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, new_mask], 1)
    with torch.no_grad():
        ref = hf(input_ids=full_ids, attention_mask=full_mask).logits[:, -3:]
        cached = ours(ids, attention_mask=mask, use_cache=True).cache
        out = ours(new, attention_mask=full_mask, cache=cached).logits
    keep = new_mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["tester", "post_norm"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_opt_greedy_generation_matches(variant: str, cache: str) -> None:
    hf, ours = _opt_pair(**OPT_VARIANTS[variant])
    ids, mask = _opt_inputs(batch=4)
    ids, mask = ids[:, :-1], mask[:, :-1]  # prompts without the eos
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    out = generate(ours, ids, 8, attention_mask=mask, eos_token_id=2, pad_token_id=1,
                   cache_implementation=cache)  # fmt: skip
    assert torch.equal(out, ref)
    assert len(set(ref[0, ids.shape[1] :].tolist())) > 1  # the test model says something


# --- BLIP-2 -------------------------------------------------------------------------------


def _blip2_config(text: transformers.PretrainedConfig, **overrides) -> transformers.Blip2Config:
    # Blip2VisionModelTester / Blip2QFormerModelTester shapes (image 30, patch 2, width 32).
    vision = dict(image_size=30, patch_size=2, num_channels=3, hidden_size=32,
                  num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  qkv_bias=overrides.pop("qkv_bias", True))  # fmt: skip
    qformer = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37, max_position_embeddings=512, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0,
                   cross_attention_frequency=overrides.pop("cross_attention_frequency", 2),
                   use_qformer_text_input=overrides.pop("use_qformer_text_input", False))  # fmt: skip
    overrides.setdefault("image_token_index", IMAGE_TOKEN)
    return transformers.Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text.to_dict(),
        num_query_tokens=NUM_QUERIES, **overrides,
    )  # fmt: skip


def _llama_text() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=99, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip


TEXT_MODELS = {"opt": lambda: _opt_config(max_position_embeddings=64), "llama": _llama_text}


@pytest.fixture(scope="module", params=sorted(TEXT_MODELS))
def blip2_pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.Blip2ForConditionalGeneration(_blip2_config(TEXT_MODELS[request.param]()))
    _perturb(hf.eval())
    directory = tmp_path_factory.mktemp(f"blip2-{request.param}")
    hf.save_pretrained(directory)
    return hf, from_pretrained(directory), directory


def _blip2_inputs():
    gen = torch.Generator().manual_seed(4)
    pixels = torch.randn(3, 3, 30, 30, generator=gen)
    text = torch.randint(3, 97, (3, 6), generator=gen)
    text[:, 0] = 0  # bos, as the OPT tokenizer adds it
    # Blip2Processor: the query placeholders go before the (left-padded) text, so the
    # padding sits between them: a hole in the mask.
    ids = torch.cat([torch.full((3, NUM_QUERIES), IMAGE_TOKEN), text], 1)
    mask = torch.ones_like(ids)
    ids[1, NUM_QUERIES : NUM_QUERIES + 2] = 1
    mask[1, NUM_QUERIES : NUM_QUERIES + 2] = 0
    return pixels, ids, mask


def test_blip2_loads_as_qformer_vlm(blip2_pair) -> None:
    hf, ours, directory = blip2_pair
    assert isinstance(ours, QFormerVLM) and not ours.training
    assert ours.num_image_tokens == NUM_QUERIES and ours.image_token_id == IMAGE_TOKEN
    assert ours.eos_token_id == 2 and ours.bos_token_id == 0
    layers = ours.connector.qformer.layers
    assert [layer.has_cross_attention for layer in layers] == [True, False]
    record = ours.composition  # the parts record of a converted checkpoint
    assert record["kind"] == "qformer" and record["language"] == str(directory)
    assert record["converted_from"] == "Blip2ForConditionalGeneration"
    counts = {part: sum(p.numel() for p in getattr(ours, part).parameters())
              for part in ("vision", "connector", "decoder")}  # fmt: skip
    assert record["total_parameters"] == sum(counts.values()) == record["trainable_parameters"]


def test_blip2_logits_match(blip2_pair) -> None:
    hf, ours, _ = blip2_pair
    pixels, ids, mask = _blip2_inputs()
    with torch.no_grad():
        ref = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        out = ours(ids, pixels, attention_mask=mask).logits
        other = ours(ids, pixels.flip(0), attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=ATOL, rtol=0)
    assert (other - out)[keep].abs().max() > 1e-3  # the image matters


def test_blip2_generation_matches(blip2_pair) -> None:
    hf, ours, _ = blip2_pair
    pixels, ids, mask = _blip2_inputs()
    # Without a prompt: Q placeholders + BOS, batched.
    ref = hf.generate(pixel_values=pixels, max_new_tokens=6, do_sample=False)
    out = ours.generate(None, pixels, max_new_tokens=6)
    assert torch.equal(out, ref)
    # With a prompt, batched with a left-padded row.
    ref = hf.generate(pixel_values=pixels, input_ids=ids, attention_mask=mask, max_new_tokens=6,
                      do_sample=False)  # fmt: skip
    out = ours.generate(ids, pixels, attention_mask=mask, max_new_tokens=6)
    assert torch.equal(out, ref)
    # A row alone generates what it generates in the batch.
    alone = ours.generate(ids[:1], pixels[:1], max_new_tokens=6)
    assert torch.equal(alone[0], out[0])


def test_blip2_retrieval_heads_match(tmp_path) -> None:
    torch.manual_seed(0)
    config = _blip2_config(_opt_config(), use_qformer_text_input=True, qkv_bias=False,
                           image_text_hidden_size=16, image_token_index=None)  # fmt: skip
    hf = transformers.Blip2ForImageTextRetrieval(config).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path)
    ours = load_blip2(tmp_path)
    assert isinstance(ours, Blip2Retrieval)
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randn(2, 3, 30, 30, generator=gen)
    ids = torch.randint(3, 97, (2, 6), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        itm = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                 use_image_text_matching_head=True).logits_per_image  # fmt: skip
        itc = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                 use_image_text_matching_head=False).logits_per_image  # fmt: skip
        torch.testing.assert_close(ours.itm_scores(pixels, ids, mask), itm, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.itc_scores(pixels, ids, mask), itc, atol=ATOL, rtol=0)
    # The stage-1 losses run on the loaded Q-Former and reach its weights.
    losses = ours.pretrainer(ours.image_tokens(pixels), ids, mask.bool())
    assert set(losses) == {"itc", "itm", "itg", "loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert ours.pretrainer.qformer.layers[0].cross_attn.q.weight.grad.abs().sum() > 0


def _edit_config(directory, path, **changes):
    config = json.loads((directory / "config.json").read_text())
    target = config
    for key in path:
        target = target[key]
    target.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_blip2_refuses_unsupported_language_models(blip2_pair, tmp_path) -> None:
    _, _, directory = blip2_pair
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    _edit_config(tmp_path, ["text_config"], model_type="gpt_neox")
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: text_config.model_type 'gpt_neox'")
    assert "\n" not in message and message.count("config.json") == 1
    # A FlanT5 checkpoint: transformers marks it encoder-decoder.
    _edit_config(tmp_path, [], use_decoder_only_language_model=False)
    _edit_config(tmp_path, ["text_config"], model_type="t5", is_encoder_decoder=True)
    with pytest.raises(CheckpointError, match=r"text_config.model_type 't5' is an encoder-decoder"):
        from_pretrained(tmp_path)


# --- the generative path: processor files, `vlkit generate` ---------------------------------

WORDS = [f"w{i}" for i in range(94)]  # ids 4..97; Blip2Processor adds <image> as id 98


def _save_processor(directory) -> transformers.Blip2Processor:
    """A word-level tokenizer.json that puts BOS first (as OPT's puts `</s>`), a
    30-pixel BlipImageProcessor and the Blip2Processor with its `num_query_tokens`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", add_bos_token=True,
    )  # fmt: skip
    image_processor = transformers.BlipImageProcessor(size={"height": 30, "width": 30})
    processor = transformers.Blip2Processor(
        image_processor, tokenizer, num_query_tokens=NUM_QUERIES
    )
    processor.save_pretrained(directory)
    return processor


@pytest.fixture(scope="module")
def blip2_opt_directory(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.Blip2ForConditionalGeneration(_blip2_config(_opt_config()))
    _perturb(hf.eval())
    with torch.no_grad():  # eos (2) gets logit 0, so a random caption does not stop at once
        hf.language_model.get_input_embeddings().weight[2] = 0
    directory = tmp_path_factory.mktemp("blip2-pipeline")
    hf.save_pretrained(directory)
    processor = _save_processor(directory)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == IMAGE_TOKEN
    return hf, processor, directory


@pytest.mark.parametrize("prompt", ["", "w3 w17 w5"])
def test_blip2_pipeline_matches_processor_and_generate(blip2_opt_directory, prompt) -> None:
    from PIL import Image

    from vlkit.inference.vlm_loading import load_vlm

    hf, processor, directory = blip2_opt_directory
    image = Image.fromarray(torch.randint(0, 256, (41, 37, 3), dtype=torch.uint8).numpy())
    pipeline = load_vlm(directory)
    assert pipeline.kind == "blip2" and not pipeline.needs_prompt
    inputs = pipeline.prepare([image], prompt)
    if prompt:
        ref = processor(images=image, text=prompt, return_tensors="pt")
        assert torch.equal(inputs.input_ids, ref["input_ids"])
        ref_out = hf.generate(**ref, max_new_tokens=5, do_sample=False)
    else:
        ref = processor(images=image, return_tensors="pt")
        ref_out = hf.generate(pixel_values=ref["pixel_values"], max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(inputs.model_inputs["pixel_values"], ref["pixel_values"],
                               atol=1e-5, rtol=0)  # fmt: skip
    new = pipeline.generate(inputs, max_new_tokens=5)
    expected = ref_out[0, inputs.input_ids.shape[1] :].tolist()
    assert new == expected
    assert pipeline.decode(new) == processor.decode(expected, skip_special_tokens=True).strip()


def test_vlkit_generate_cli_captions(blip2_opt_directory, tmp_path, capsys) -> None:
    from PIL import Image

    from vlkit.cli.main import main

    hf, processor, directory = blip2_opt_directory
    photo = tmp_path / "photo.png"
    Image.fromarray(torch.randint(0, 256, (30, 30, 3), dtype=torch.uint8).numpy()).save(photo)
    code = main(["generate", "--model", str(directory), "--image", str(photo),
                 "--max-new-tokens", "5"])  # fmt: skip
    assert code == 0
    streamed = capsys.readouterr().out.strip()
    pixels = processor(images=Image.open(photo).convert("RGB"), return_tensors="pt")
    out = hf.generate(**pixels, max_new_tokens=5, do_sample=False)
    expected = processor.decode(out[0, NUM_QUERIES + 1 :], skip_special_tokens=True).strip()
    assert streamed == expected and expected


def test_stage1_losses_on_a_loaded_generation_qformer(blip2_pair) -> None:
    """Blip2ForConditionalGeneration keeps no text side: `add_text_input` adds one, and the
    stage-1 heads then train the Q-Former the VLM uses (shared weights)."""
    from vlkit.fusion.qformer_pretraining import QFormerPretrainer

    _, ours, directory = blip2_pair
    model = load_blip2(directory)  # a private copy: the fixture's model stays unchanged
    qformer = model.connector.qformer
    qformer.add_text_input(vocab_size=99)
    pretrainer = QFormerPretrainer(qformer, embed_dim=16)
    pixels, _, _ = _blip2_inputs()
    ids = torch.randint(3, 97, (3, 5))
    with torch.no_grad():  # queries only: unchanged by adding the text side
        torch.testing.assert_close(qformer(model.vision(pixels))[0],
                                   ours.connector.qformer(ours.vision(pixels))[0])  # fmt: skip
    losses = pretrainer(model.vision(pixels), ids)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert qformer.query_tokens.grad is not None and qformer.query_tokens.grad.abs().sum() > 0


def test_opt_directory_loads_with_from_pretrained(tmp_path) -> None:
    hf, _ = _opt_pair(word_embed_proj_dim=8)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    ids, mask = _opt_inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=ATOL, rtol=0)
    assert ours.config.eos_token_id == 2 and ours.config.bos_token_id == 0
