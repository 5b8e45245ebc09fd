"""Chameleon: one decoder over one vocabulary of text tokens and image codes.

Chameleon Team 2024, "Chameleon: Mixed-Modal Early-Fusion Foundation Models", Sec. 2: images are
quantized into discrete tokens by a VQ image tokenizer (Sec. 2.1; `VQTokenizer`), the image
codes are added to the text vocabulary, and a single causal transformer (a Llama-2-style
decoder; here vlkit's `DecoderLM`) models interleaved sequences of both, so the same next-token loss and
the same sampling loop read and write text and images. Unlike `EarlyFusionVLM` (continuous
patch embeddings spliced into the sequence), nothing here but the token ids carries the image.

The joint vocabulary, as `ChameleonConfig` lays it out:

    [0, T)                 text tokens (a word tokenizer's ids; <pad>, <bos>, <eos> among them)
    T                      <boi>  begin of image
    T + 1                  <eoi>  end of image
    [T + 2, T + 2 + K)     image codes 0..K-1 (raster order in the image span)

The two directions it is trained on (labels only on the part to be produced):

    caption:     <bos> <boi> c_1 .. c_n <eoi> w_1 .. w_m <eos>      (image codes -> text)
    generation:  <bos> w_1 .. w_m <boi> c_1 .. c_n <eoi>            (text -> image codes)

While generating the image span only image codes may be sampled (the logits of every other token
are masked), and exactly n codes are drawn, so the span always decodes to an image; Chameleon's
inference likewise masks the tokens of the other modality when the output must be an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.models.decoder.config import DecoderConfig, DecoderOutput
from vlkit.models.decoder.generation import generate
from vlkit.models.decoder.llama import DecoderLM
from vlkit.overrides import check_range, from_dict, to_dict

__all__ = ["ChameleonConfig", "ChameleonLM", "ChameleonOutput", "VocabularyRange"]

IGNORE_INDEX = -100


@dataclass
class ChameleonConfig:
    """The joint vocabulary and the decoder's shape (JSON round-trippable).

    Attributes:
        text_vocab_size: Text tokens T (ids 0..T-1).
        num_image_codes: The image tokenizer's codebook size K.
        tokens_per_image: Codes n of one image (the tokenizer's grid, raster order).
        bos_token_id, eos_token_id, pad_token_id: The text tokenizer's special ids.
        hidden_size, intermediate_size, num_layers, num_heads: The Llama-style decoder.
        max_position_embeddings: Longest sequence (RoPE table).
    """

    text_vocab_size: int = 32
    num_image_codes: int = 256
    tokens_per_image: int = 64
    bos_token_id: int = 2
    eos_token_id: int = 3
    pad_token_id: int = 0
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    max_position_embeddings: int = 256

    def __post_init__(self) -> None:
        check_range("text_vocab_size", self.text_vocab_size, 1)
        check_range("num_image_codes", self.num_image_codes, 1)
        check_range("tokens_per_image", self.tokens_per_image, 1)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            check_range(key, getattr(self, key), 0, self.text_vocab_size, high_open=True)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads")

    @property
    def boi_token_id(self) -> int:
        """<boi>, the first id after the text vocabulary."""
        return self.text_vocab_size

    @property
    def eoi_token_id(self) -> int:
        return self.text_vocab_size + 1

    @property
    def image_code_offset(self) -> int:
        """Token id of image code 0."""
        return self.text_vocab_size + 2

    @property
    def vocab_size(self) -> int:
        """Text tokens + <boi>, <eoi> + image codes."""
        return self.image_code_offset + self.num_image_codes

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_heads,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChameleonConfig:
        return from_dict(cls, data)


@dataclass
class ChameleonOutput:
    """logits: (B, L, V) over the joint vocabulary; loss: next-token cross-entropy over the
    labelled positions (None without labels)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class VocabularyRange(nn.Module):
    """A decoder whose logits outside ids [low, high) are -inf, for `generation.generate`:
    greedy decoding and sampling can then only emit tokens of that range."""

    def __init__(self, lm: DecoderLM, low: int, high: int) -> None:
        super().__init__()
        self.lm, self.low, self.high = lm, low, high

    def forward(self, **kwargs: Any) -> DecoderOutput:
        out = self.lm(**kwargs)
        logits = torch.full_like(out.logits, float("-inf"))
        logits[..., self.low : self.high] = out.logits[..., self.low : self.high]
        return DecoderOutput(logits=logits, cache=out.cache)


def pad_sequences(
    sequences: list[torch.Tensor], value: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D tensors -> (B, L) padded with `value` (right, or left for generation) and the (B, L)
    attention mask (1 = real token)."""
    length = max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for i, s in enumerate(sequences):
        span = slice(length - len(s), length) if left else slice(0, len(s))
        out[i, span], mask[i, span] = s, 1
    return out, mask


class ChameleonLM(nn.Module):
    """A `DecoderLM` over `ChameleonConfig`'s joint vocabulary, with the two sequence layouts
    and the two generation directions.

    Args:
        config: Vocabulary layout and decoder shape.
    """

    def __init__(self, config: ChameleonConfig) -> None:
        super().__init__()
        self.config = config
        self.lm = DecoderLM(config.decoder_config())

    # --- sequences -------------------------------------------------------------------------

    def image_span(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., n) image codes -> (..., n + 2) token ids <boi> codes+offset <eoi>."""
        c = self.config
        if codes.shape[-1] != c.tokens_per_image:
            raise ValueError(
                f"expected {c.tokens_per_image} codes per image, got {codes.shape[-1]}"
            )
        if codes.numel() and not (int(codes.min()) >= 0 and int(codes.max()) < c.num_image_codes):
            raise ValueError(f"image codes must lie in [0, {c.num_image_codes})")
        boi = codes.new_full((*codes.shape[:-1], 1), c.boi_token_id)
        eoi = codes.new_full((*codes.shape[:-1], 1), c.eoi_token_id)
        return torch.cat([boi, codes + c.image_code_offset, eoi], dim=-1)

    def caption_sequence(
        self, codes: torch.Tensor, text_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) codes and (m,) text ids -> ids and labels of <bos> image <caption> <eos>,
        labelled on the caption and <eos> (image codes -> text)."""
        c = self.config
        prompt = torch.cat([codes.new_tensor([c.bos_token_id]), self.image_span(codes)])
        target = torch.cat([text_ids, text_ids.new_tensor([c.eos_token_id])])
        ids = torch.cat([prompt, target])
        labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), target])
        return ids, labels

    def generation_sequence(
        self, text_ids: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(m,) text ids and (n,) codes -> ids and labels of <bos> text <boi> codes <eoi>,
        labelled on the codes and <eoi> (text -> image codes)."""
        c = self.config
        prompt = torch.cat([text_ids.new_tensor([c.bos_token_id]), text_ids])
        span = self.image_span(codes)
        ids = torch.cat([prompt, span])
        labels = torch.cat([torch.full((len(prompt) + 1,), IGNORE_INDEX), span[1:]])
        return ids, labels

    @staticmethod
    def collate(
        pairs: list[tuple[torch.Tensor, torch.Tensor]], pad_token_id: int
    ) -> dict[str, torch.Tensor]:
        """(ids, labels) pairs -> right-padded `input_ids`, `attention_mask`, `labels`."""
        ids, mask = pad_sequences([p[0] for p in pairs], pad_token_id)
        labels, _ = pad_sequences([p[1] for p in pairs], IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # --- forward ---------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ChameleonOutput:
        """Logits over the joint vocabulary (B, L, V); with labels (B, L) (-100 = no target),
        the mean next-token cross-entropy of the labelled positions."""
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
        return ChameleonOutput(logits, loss)

    # --- generation ------------------------------------------------------------------------

    @torch.no_grad()
    def generate_text(self, codes: torch.Tensor, max_new_tokens: int = 16) -> torch.Tensor:
        """Greedy captions of images given as codes (B, n): (B, N) new text ids, stopping at
        <eos> (rows that stopped are filled with <pad>). Only text tokens can be emitted."""
        c = self.config
        bos = codes.new_full((codes.shape[0], 1), c.bos_token_id)
        prompt = torch.cat([bos, self.image_span(codes)], dim=1)
        sequences = generate(
            VocabularyRange(self.lm, 0, c.text_vocab_size),
            prompt,
            max_new_tokens,
            eos_token_id=c.eos_token_id,
            pad_token_id=c.pad_token_id,
            attention_mask=torch.ones_like(prompt),
        )
        return sequences[:, prompt.shape[1] :]

    @torch.no_grad()
    def generate_image_codes(
        self,
        text_ids: list[torch.Tensor],
        do_sample: bool = True,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Image codes (B, n) for text prompts (each (m,) text ids without <bos>).

        The prompts are left-padded to <bos> text <boi>, then exactly n tokens are drawn from
        the image-code range of the vocabulary (sampled, or greedy with `do_sample=False`).
        Decode them to pixels with `VQTokenizer.decode_codes`.
        """
        c = self.config
        prompts = [
            torch.cat([t.new_tensor([c.bos_token_id]), t, t.new_tensor([c.boi_token_id])])
            for t in text_ids
        ]
        ids, mask = pad_sequences(prompts, c.pad_token_id, left=True)
        device = self.lm.lm_head.weight.device
        sequences = generate(
            VocabularyRange(self.lm, c.image_code_offset, c.vocab_size),
            ids.to(device),
            c.tokens_per_image,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            eos_token_id=None,
            pad_token_id=c.pad_token_id,
            attention_mask=mask.to(device),
        )
        return sequences[:, ids.shape[1] :] - c.image_code_offset
