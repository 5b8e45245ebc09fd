"""Hugging Face BLIP-2 checkpoints (transformers' `Blip2ForConditionalGeneration` and
`Blip2ForImageTextRetrieval`) onto vlkit's modules.

Layout (transformers 5.25, `models/blip_2/modeling_blip_2.py`):

* `vision_model.*`: an EVA-style ViT (`Blip2VisionModel`): CLS token, biased patch conv, no
  pre-LayerNorm, fused `qkv` with q and v biases (k's third of the bias is zero), GELU MLP,
  `post_layernorm` over all tokens. That is vlkit's `VisionTransformer` with `class_token=True,
  patch_bias=True, pre_norm=False`; its output goes to the Q-Former as is (LAVIS's `ln_vision`
  is this `post_layernorm`, so vlkit's `QFormer` is built with `image_norm=False`).
* `query_tokens`, `qformer.*`: the Q-Former (`Blip2QFormerModel`): LayerNorm on the embeddings,
  BERT blocks whose queries cross-attend to the image every `cross_attention_frequency` blocks,
  query FFN (`intermediate_query` / `output_query`) and, with `use_qformer_text_input` (the
  retrieval model), the text FFN (`intermediate` / `output`) -> `vlkit.fusion.qformer.QFormer`.
* `language_projection`, `language_model.*` (generation): the linear map to the LM width and a
  decoder-only LM: OPT (`vlkit.hub.hf_opt`) or Llama (`vlkit.hub.hf_llama`); T5 (encoder-decoder)
  is refused. The model is a `QFormerVLM`: the projected query outputs fill the
  `num_query_tokens` `image_token_index` placeholders that `Blip2Processor` puts before the text.
* `embeddings.*`, `vision_projection`, `text_projection`, `itm_head` (retrieval): the Q-Former's
  text embeddings and the ITC / ITM heads -> `vlkit.fusion.qformer_pretraining.QFormerPretrainer`
  (`vision_proj`, `text_proj`, `itm_head`), so the stage-1 losses run on the loaded weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.errors import CheckpointError
from vlkit.fusion.qformer import QFormer
from vlkit.fusion.qformer_pretraining import QFormerPretrainer
from vlkit.hub.hf_causal_lm import CAUSAL_LM_MODEL_TYPES, causal_lm_config, causal_lm_model_type
from vlkit.hub.hf_config_files import config_model_type, generation_default, read_json_object
from vlkit.hub.hf_opt import config_from_hf_opt, opt_state_dict
from vlkit.hub.weights import HF_WEIGHT_FILES, find_weights, load_into, read_weights
from vlkit.models.composition import converted_record
from vlkit.models.decoder import DecoderLM
from vlkit.models.decoder.opt import OPTLM
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.qformer_vlm import QFormerConnector, QFormerVLM
from vlkit.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "BLIP2_LANGUAGE_MODEL_TYPES",
    "Blip2Retrieval",
    "blip2_state_dict",
    "build_blip2",
    "is_blip2_directory",
    "load_blip2",
]

BLIP2_MODEL_TYPES = ("blip-2", "blip_2")
BLIP2_LANGUAGE_MODEL_TYPES = ("opt", *CAUSAL_LM_MODEL_TYPES)

# transformers key (below `vision_model.`) -> vlkit `VisionTransformer` key.
_VISION_RULES = [
    (r"^embeddings\.class_embedding$", "class_token"),
    (r"^embeddings\.position_embedding$", "position_embedding"),
    (r"^embeddings\.patch_embedding\.", "patch_embed."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"transformer.blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"transformer.blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"transformer.blocks.\1.attention.qkv."),
    (
        r"^encoder\.layers\.(\d+)\.self_attn\.projection\.",
        r"transformer.blocks.\1.attention.out_proj.",
    ),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"transformer.blocks.\1.mlp."),
    (r"^post_layernorm\.", "norm_post."),
]
# transformers key (below `qformer.`) -> vlkit `QFormer` key.
_QFORMER_RULES = [
    (r"^layernorm\.", "embed_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.self_attn.q."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.self_attn.k."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.self_attn.v."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_norm."),
    (r"^encoder\.layer\.(\d+)\.crossattention\.attention\.query\.", r"layers.\1.cross_attn.q."),
    (r"^encoder\.layer\.(\d+)\.crossattention\.attention\.key\.", r"layers.\1.cross_attn.k."),
    (r"^encoder\.layer\.(\d+)\.crossattention\.attention\.value\.", r"layers.\1.cross_attn.v."),
    (r"^encoder\.layer\.(\d+)\.crossattention\.output\.dense\.", r"layers.\1.cross_attn.out."),
    (r"^encoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.", r"layers.\1.cross_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate_query\.dense\.", r"layers.\1.ffn_query.fc1."),
    (r"^encoder\.layer\.(\d+)\.output_query\.dense\.", r"layers.\1.ffn_query.fc2."),
    (r"^encoder\.layer\.(\d+)\.output_query\.LayerNorm\.", r"layers.\1.ffn_query.norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_text.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_text.fc2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_text.norm."),
]
# Top-level retrieval keys -> `QFormerPretrainer` keys.
_RETRIEVAL_KEYS = {
    "embeddings.word_embeddings.": "qformer.word_embed.",
    "embeddings.position_embeddings.": "qformer.pos_embed.",
    "vision_projection.": "vision_proj.",
    "text_projection.": "text_proj.",
    "itm_head.": "itm_head.",
}


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        new, hits = re.subn(pattern, replacement, key)
        if hits:
            return new
    return key


def read_blip2_config(directory: str | Path) -> dict[str, Any]:
    """The `config.json` dict of a BLIP-2 directory.

    Raises:
        CheckpointError: Unreadable, or its `model_type` is not blip-2 (one line, naming the file).
    """
    path = Path(directory) / "config.json"
    config = read_json_object(path)
    if config.get("model_type") not in BLIP2_MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {config.get('model_type')!r} is not blip-2")
    return config


def is_blip2_directory(directory: str | Path) -> bool:
    """Whether `directory` has a `config.json` with `model_type` "blip-2" (nothing loaded)."""
    return config_model_type(directory) in BLIP2_MODEL_TYPES


def _vision_tower(vision: Mapping[str, Any]) -> VisionTransformer:
    return VisionTransformer(
        ViTConfig(
            image_size=vision.get("image_size", 224),
            patch_size=vision.get("patch_size", 14),
            width=vision.get("hidden_size", 1408),
            layers=vision.get("num_hidden_layers", 39),
            heads=vision.get("num_attention_heads", 16),
            mlp_dim=vision.get("intermediate_size", 6144),
            activation=vision.get("hidden_act", "gelu"),
            layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
            class_token=True,
            patch_bias=True,
            pre_norm=False,
            pool="cls",
            num_channels=vision.get("num_channels", 3),
        )
    )


def _qformer(hf: Mapping[str, Any], vision_width: int, text_input: bool) -> QFormer:
    q = hf.get("qformer_config") or {}
    return QFormer(
        encoder_dim=vision_width,
        dim=q.get("hidden_size", 768),
        num_queries=hf.get("num_query_tokens", 32),
        num_layers=q.get("num_hidden_layers", 12),
        num_heads=q.get("num_attention_heads", 12),
        cross_attention_frequency=q.get("cross_attention_frequency", 2),
        vocab_size=q.get("vocab_size", 30522) if text_input else 0,
        max_text_len=q.get("max_position_embeddings", 512),
        mlp_dim=q.get("intermediate_size", 3072),
        layer_norm_eps=q.get("layer_norm_eps", 1e-12),
        image_norm=False,
        text_ffn=text_input,
    )


def _language_model(text: Mapping[str, Any], source: str) -> DecoderLM | OPTLM:
    model_type = text.get("model_type", "opt")
    if model_type == "opt":
        return OPTLM(config_from_hf_opt(text))
    if text.get("model_type") in CAUSAL_LM_MODEL_TYPES and causal_lm_model_type(text):
        return DecoderLM(causal_lm_config(text, f"{source} text_config"))
    raise CheckpointError(
        f"{source}: text_config.model_type {model_type!r} is not supported: vlkit loads BLIP-2 "
        f"with a decoder-only language model ({', '.join(BLIP2_LANGUAGE_MODEL_TYPES)})"
    )


def build_blip2(hf: Mapping[str, Any], source: str = "config.json") -> QFormerVLM:
    """An uninitialised `QFormerVLM` shaped like a BLIP-2 `config.json` dict.

    Raises:
        CheckpointError: An unsupported language model (`text_config.model_type` other than
            opt, llama, qwen2, qwen3), a missing `image_token_index`, or
            widths that do not fit (named with the key).
    """
    text = dict(hf.get("text_config") or {"model_type": "opt"})
    if hf.get("use_decoder_only_language_model") is False or text.get("is_encoder_decoder"):
        model_type = text.get("model_type")
        raise CheckpointError(
            f"{source}: text_config.model_type {model_type!r} is an encoder-decoder LM; vlkit "
            "loads BLIP-2 with a decoder-only language model (opt or llama)"
        )
    if hf.get("image_token_index", hf.get("image_token_id")) is None:
        raise CheckpointError(
            f"{source}: image_token_index is missing (a checkpoint saved before transformers "
            "4.47 prepends the queries instead); set it to the processor's <image> token id"
        )
    try:
        tied = hf.get("tie_word_embeddings")
        if tied is not None and "tie_word_embeddings" not in text:
            text["tie_word_embeddings"] = tied
        decoder = _language_model(text, source)
        vision_cfg = dict(hf.get("vision_config") or {})
        vision = _vision_tower(vision_cfg)
        qformer = _qformer(hf, vision.width, text_input=False)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, NotImplementedError) as error:
        raise CheckpointError(f"{source}: unsupported BLIP-2 config ({error})") from error
    embed_width = decoder.get_input_embeddings().embedding_dim
    if embed_width != decoder.config.hidden_size:
        raise CheckpointError(
            f"{source}: text_config.word_embed_proj_dim {embed_width} differs from "
            f"text_config.hidden_size {decoder.config.hidden_size}; BLIP-2's language_projection "
            "writes hidden_size-wide query embeddings into the token embeddings"
        )
    connector = QFormerConnector(
        vision.width, decoder.config.hidden_size, qformer.num_queries, 0, 0, qformer=qformer
    )
    model = QFormerVLM(
        VisionTokens(vision),
        connector,
        decoder,  # type: ignore[arg-type]
        int(hf.get("image_token_index", hf.get("image_token_id"))),
        qformer.num_queries,
    )
    model.bos_token_id = text.get("bos_token_id")
    return model


def _tower_and_qformer_keys(key: str, qformer_prefix: str) -> str | None:
    """vlkit key (relative to the model holding `vision.` and the Q-Former) of a vision or
    Q-Former key, or None for other keys."""
    if key.startswith("vision_model."):
        return "vision.tower." + _rename(key[len("vision_model.") :], _VISION_RULES)
    if key == "query_tokens":
        return qformer_prefix + "query_tokens"
    if key.startswith("qformer."):
        return qformer_prefix + _rename(key[len("qformer.") :], _QFORMER_RULES)
    return None


def _vision_value(key: str, value: torch.Tensor) -> torch.Tensor:
    # HF stores (1, 1, D) / (1, N, D); vlkit's class token is (D,) and positions (N, D).
    if key.endswith(("vision.tower.class_token", "vision.tower.position_embedding")):
        return value.reshape(-1, value.shape[-1]).squeeze(0)
    return value


def _fill_missing_qkv_bias(out: dict[str, torch.Tensor], model: nn.Module) -> None:
    """`qkv_bias=False` towers have no qkv bias; vlkit's fused projection always has one: zero."""
    for name, param in model.state_dict().items():
        if name.endswith("attention.qkv.bias") and name not in out:
            out[name] = torch.zeros_like(param)


def blip2_state_dict(
    state: Mapping[str, torch.Tensor], model: QFormerVLM
) -> dict[str, torch.Tensor]:
    """transformers `Blip2ForConditionalGeneration` keys -> `QFormerVLM` keys (unknown keys keep
    their name, so `load_into` reports them)."""
    out: dict[str, torch.Tensor] = {}
    lm: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = _tower_and_qformer_keys(key, "connector.qformer.")
        if new is not None:
            out[new] = _vision_value(new, value)
        elif key.startswith("language_projection."):
            out["connector.proj." + key[len("language_projection.") :]] = value
        elif key.startswith("language_model."):
            lm[key[len("language_model.") :]] = value
        else:
            out[key] = value
    decoder = model.decoder
    if isinstance(decoder, OPTLM):
        lm_state = opt_state_dict(lm, decoder.config)
    else:  # DecoderLM keeps the Llama / Qwen parameter names
        lm_state = {k: v for k, v in lm.items() if not k.endswith("rotary_emb.inv_freq")}
        if decoder.config.tie_word_embeddings and "model.embed_tokens.weight" in lm_state:
            lm_state["lm_head.weight"] = lm_state["model.embed_tokens.weight"]
    out.update({"decoder." + k: v for k, v in lm_state.items()})
    _fill_missing_qkv_bias(out, model)
    return out


class Blip2Retrieval(nn.Module):
    """A transformers `Blip2ForImageTextRetrieval` as vlkit modules: the vision tower and a
    `QFormerPretrainer` (Q-Former with text embeddings, ITC projections, ITM head).

    `itc_scores` and `itm_scores` are transformers' `forward(..., use_image_text_matching_head=
    False / True).logits_per_image`; `pretrainer(image_tokens, input_ids, mask)` gives the
    stage-1 losses (ITC / ITM / ITG; its ITG `lm_head` and `temp` are not in the checkpoint
    and start fresh).
    """

    def __init__(self, vision: VisionTokens, pretrainer: QFormerPretrainer) -> None:
        super().__init__()
        self.vision = vision
        self.pretrainer = pretrainer

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, Dv) vision tokens (after `post_layernorm`)."""
        return self.vision(pixel_values)

    @torch.no_grad()
    def itc_scores(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B_i, B_t) cosine similarity, max over queries (BLIP-2 Sec. 3.2, ITC)."""
        p = self.pretrainer
        n_img, n_txt = pixel_values.shape[0], input_ids.shape[0]
        tokens = self.image_tokens(pixel_values)  # (B_i, T, Dv)
        queries, _ = p.qformer(tokens)  # (B_i, Q, D)
        # The text pass needs image rows only for the (unused) query side: repeat image 0.
        pad = None if attention_mask is None else attention_mask.bool()
        _, text = p.qformer(tokens[:1].expand(n_txt, -1, -1), input_ids, pad, mode="itc")
        image_emb = nn.functional.normalize(p.vision_proj(queries), dim=-1)  # (B_i, Q, E)
        text_emb = nn.functional.normalize(p.text_proj(text[:, 0]), dim=-1)  # (B_t, E)
        scores = torch.einsum("iqe,te->itq", image_emb, text_emb).amax(-1)
        return scores.reshape(n_img, n_txt)

    @torch.no_grad()
    def itm_scores(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 2) ITM logits (no match, match) of image i with text i, averaged over queries."""
        p = self.pretrainer
        pad = None if attention_mask is None else attention_mask.bool()
        queries, _ = p.qformer(self.image_tokens(pixel_values), input_ids, pad, mode="itm")
        return p.itm_head(queries).mean(dim=1)


def build_blip2_retrieval(hf: Mapping[str, Any], source: str = "config.json") -> Blip2Retrieval:
    """An uninitialised `Blip2Retrieval` shaped like a BLIP-2 `config.json` dict."""
    try:
        vision = _vision_tower(dict(hf.get("vision_config") or {}))
        qformer = _qformer(hf, vision.width, text_input=True)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: unsupported BLIP-2 config ({error})") from error
    pretrainer = QFormerPretrainer(qformer, embed_dim=hf.get("image_text_hidden_size", 256))
    return Blip2Retrieval(VisionTokens(vision), pretrainer)


def blip2_retrieval_state_dict(
    state: Mapping[str, torch.Tensor], model: Blip2Retrieval
) -> dict[str, torch.Tensor]:
    """transformers `Blip2ForImageTextRetrieval` keys -> `Blip2Retrieval` keys; the ITG LM head
    and temperature, absent from the checkpoint, keep their fresh values."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        new = _tower_and_qformer_keys(key, "pretrainer.qformer.")
        if new is not None:
            out[new] = _vision_value(new, value)
            continue
        for old, repl in _RETRIEVAL_KEYS.items():
            if key.startswith(old):
                out["pretrainer." + repl + key[len(old) :]] = value
                break
        else:
            out[key] = value
    own = model.state_dict()
    for name in ("pretrainer.lm_head.weight", "pretrainer.lm_head.bias", "pretrainer.temp"):
        out.setdefault(name, own[name])
    _fill_missing_qkv_bias(out, model)
    return out


def load_blip2(directory: str | Path) -> QFormerVLM | Blip2Retrieval:
    """Load a transformers BLIP-2 directory: `Blip2ForConditionalGeneration` -> `QFormerVLM`
    (eval mode, with the checkpoint's eos / pad / bos tokens), `Blip2ForImageTextRetrieval`
    (config.json `architectures`) -> `Blip2Retrieval`.

    Raises:
        CheckpointError: An unreadable or unsupported config, or weights that do not match
            (missing, unknown or mis-shaped keys, all named).
    """
    directory = Path(directory)
    source = str(directory / "config.json")
    hf = read_blip2_config(directory)
    weights = find_weights(directory, HF_WEIGHT_FILES)
    state = read_weights(weights)
    if "Blip2ForImageTextRetrieval" in (hf.get("architectures") or []):
        retrieval = build_blip2_retrieval(hf, source)
        load_into(retrieval, blip2_retrieval_state_dict(state, retrieval), str(weights))
        return retrieval.eval()
    model = build_blip2(hf, source)
    load_into(model, blip2_state_dict(state, model), str(weights))
    text = hf.get("text_config") or {}
    model.eos_token_id = generation_default(directory, hf, "eos_token_id")
    model.pad_token_id = generation_default(directory, hf, "pad_token_id")
    model.bos_token_id = text.get("bos_token_id", model.bos_token_id)
    model.composition = converted_record(
        model, "qformer", str(directory), "Blip2ForConditionalGeneration"
    )  # the parts record (issue 12 item 6)
    return model.eval()
