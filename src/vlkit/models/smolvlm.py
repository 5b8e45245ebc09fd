"""Generative vision-language model: vision encoder -> connector -> decoder-only LM.

The LLaVA / Idefics3 / SmolVLM recipe (Liu et al. 2023; Laurençon et al. 2024): images are encoded
into tokens, a connector maps them to the LM width, and the resulting features replace the
embeddings of the `<image>` placeholder tokens of the prompt, in order. Inputs follow transformers'
conventions: `pixel_values` is (B, num_images, C, H, W) with all-zero padding images for rows that
have fewer images, and `pixel_attention_mask` (B, num_images, H, W) marks real pixels of padded
images. Any vision encoder that returns (N, T, Dv) tokens and any connector (N, T, Dv) ->
(N, T', D) can be combined with a `DecoderLM`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vlkit.losses.next_token import next_token_loss, next_token_loss_from_hidden
from vlkit.models.decoder import DecoderLM, DecoderOutput, KVCache
from vlkit.models.decoder import generate as _generate
from vlkit.models.frozen_vision import is_frozen, keep_frozen_in_eval


@dataclass
class VLMOutput:
    """Result of `GenerativeVLM.forward`.

    Attributes:
        logits: (B, L, V) next-token logits. Given labels, the loss is computed from the LM
            head at the target positions only, and the full logits are computed on first
            access from `hidden_states` (the same numbers as an eager forward's).
        cache: The decoder's `KVCache` when `use_cache`, else None.
        image_features: (I, D) features spliced into the prompt (I = image tokens), or None.
        loss: The shifted next-token cross-entropy (`vlkit.losses.next_token_loss`) when
            `labels` were given, else None.
        hidden_states: (B, L, D) final hidden states when the logits are computed on access.
    """

    computed_logits: torch.Tensor | None = None
    cache: KVCache | None = None
    image_features: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    head: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def logits(self) -> torch.Tensor:
        if self.computed_logits is None:
            if self.head is None or self.hidden_states is None:
                raise ValueError("VLMOutput has neither logits nor hidden states")
            self.computed_logits = self.head(self.hidden_states)
        return self.computed_logits


class GenerativeVLM(nn.Module):
    """Vision encoder + connector + decoder LM with `<image>` placeholder splicing.

    Args:
        vision: Module `(pixel_values (N, C, H, W), pixel_attention_mask=(N, H, W) | None)` ->
            (N, T, Dv) tokens. `pixel_attention_mask` is only passed when one is given.
        connector: Module (N, T, Dv) -> (N, T', D), D the decoder width.
        decoder: The language model.
        image_token_id: Id of the `<image>` placeholder; each image fills T' consecutive ones.
    """

    def __init__(
        self, vision: nn.Module, connector: nn.Module, decoder: DecoderLM, image_token_id: int
    ) -> None:
        super().__init__()
        self.vision = vision
        self.connector = connector
        self.decoder = decoder
        self.image_token_id = image_token_id
        # Stop token(s) and pad token `generate` uses when none is passed (set from a
        # checkpoint's generation_config.json by the loaders, as transformers does).
        self.eos_token_id: int | list[int] | None = None
        self.pad_token_id: int | None = None

    # Writes a transformers SmolVLM / Idefics3 directory: (model, directory) -> None. Set by
    # `vlkit.hub.hf_smolvlm` (models cannot import the format layer); subclasses have their own.
    checkpoint_writer: ClassVar[Callable[[Any, str | Path], None] | None] = None

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes a directory that transformers' `SmolVLMForConditionalGeneration` /
        `Idefics3ForConditionalGeneration` and `vlkit.from_pretrained` load
        (`vlkit.hub.hf_smolvlm.save_smolvlm`)."""
        writer = type(self).checkpoint_writer
        if writer is None:
            raise RuntimeError("import vlkit.hub to enable save_pretrained")
        writer(self, directory)

    def train(self, mode: bool = True) -> GenerativeVLM:
        """As `nn.Module.train`, but a fully frozen vision encoder stays in eval mode."""
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self.vision)
        return self

    def decoder_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra per-position decoder arguments for prompt `input_ids` (B, L); none here.

        The hook of decoders that need more than embeddings (CogVLM's (B, L) `image_mask`):
        `forward`, `generate` (its prompt call) and `attention_maps` pass them on.
        """
        return {}

    def encode_images(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode the real images of a padded batch into LM-width features.

        Args:
            pixel_values: (B, M, C, H, W) images, or (N, C, H, W) treated as one image per row.
                Images whose pixels are all zero are padding and dropped (as in transformers).
            pixel_attention_mask: (B, M, H, W) (or (N, H, W)) real-pixel mask, or None.

        Returns:
            (I, D) features of all real images, in row-major (batch, image, token) order.
        """
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]
            if pixel_attention_mask is not None:
                pixel_attention_mask = pixel_attention_mask[:, None]
        b, m = pixel_values.shape[:2]
        dtype = next(self.vision.parameters()).dtype
        images = pixel_values.to(dtype).reshape(b * m, *pixel_values.shape[2:])  # (B*M, C, H, W)
        real = (images != 0).flatten(1).any(dim=1)  # (B*M,)
        real[0] |= ~real.any()  # keep one image when all are padding (transformers does too)
        images = images[real]  # (N, C, H, W)
        # A fully frozen encoder runs outside autograd (no graph, no saved activations); an
        # input that asks for its gradient (saliency) still gets one.
        grad = torch.is_grad_enabled() and (images.requires_grad or not is_frozen(self.vision))
        with torch.set_grad_enabled(grad):
            if pixel_attention_mask is None:
                tokens = self.vision(images)  # (N, T, Dv)
            else:
                mask = pixel_attention_mask.reshape(b * m, *pixel_attention_mask.shape[2:])[real]
                tokens = self.vision(images, pixel_attention_mask=mask)
        features = self.connector(tokens)  # (N, T', D)
        return features.reshape(-1, features.shape[-1])  # (N*T', D)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L) ids -> (B, L, D) embeddings with image features at the placeholders.

        Raises:
            ValueError: When the number of `<image>` tokens does not match the image features.
        """
        embeds = self.decoder.get_input_embeddings()(input_ids)  # (B, L, D)
        if pixel_values is None:
            return embeds, None
        features = self.encode_images(pixel_values, pixel_attention_mask).to(embeds.dtype)
        slots = input_ids == self.image_token_id  # (B, L)
        if int(slots.sum()) != features.shape[0]:
            raise ValueError(
                f"image features and image tokens do not match: {int(slots.sum())} <image> "
                f"tokens, {features.shape[0]} feature vectors"
            )
        embeds = embeds.masked_scatter(slots[..., None], features)
        return embeds, features

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        pixel_attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        num_items_in_batch: float | None = None,
    ) -> VLMOutput:
        """Logits (and the loss, given labels) for a prompt with images.

        Args:
            input_ids: (B, L) token ids containing `<image>` placeholders.
            pixel_values: (B, M, C, H, W) images (see `encode_images`), or None for text only.
            attention_mask: (B, L) padding mask, 1 = keep.
            labels: (B, L) targets, -100 = not a target; the loss is the shifted next-token
                cross-entropy (`vlkit.losses.next_token_loss`, as transformers' causal LMs).
            pixel_attention_mask: (B, M, H, W) real-pixel mask, or None.
            position_ids: (B, L) RoPE positions; default `arange(L)` whatever the mask, as
                transformers' forward (`DecoderLM.forward`).
            use_cache: Return the decoder's KV cache.
            num_items_in_batch: With labels: divide the summed cross-entropy by this instead
                of the number of targets (transformers' argument, for exact accumulation).

        Returns:
            `VLMOutput` with (B, L, V) logits and `loss` (None without labels).
        """
        embeds, features = self.embed(input_ids, pixel_values, pixel_attention_mask)
        decoder_inputs = self.decoder_inputs(input_ids)
        # With labels, the LM head runs on the target positions only (see
        # `next_token_loss_from_hidden`); decoders with their own forward (CogVLM's visual
        # expert, Flamingo's) compute all logits as before.
        head_at_targets = labels is not None and type(self.decoder).forward is DecoderLM.forward
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **decoder_inputs,
            **({"return_hidden": True} if head_at_targets else {}),
        )
        if head_at_targets:
            head = self.decoder.logits_from_hidden
            loss = next_token_loss_from_hidden(
                out.hidden_states, labels, head, num_items_in_batch=num_items_in_batch
            )
            return VLMOutput(
                cache=out.cache, image_features=features, loss=loss,
                hidden_states=out.hidden_states, head=head,
            )  # fmt: skip
        loss = None
        if labels is not None:
            loss = next_token_loss(out.logits, labels, num_items_in_batch=num_items_in_batch)
        return VLMOutput(out.logits, cache=out.cache, image_features=features, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Continue prompts with images; the images are encoded once, then the KV cache is used.

        Args:
            input_ids: (B, P) prompt ids (left-padded with `attention_mask` for batches).
            pixel_values: As in `forward`.
            attention_mask: (B, P) prompt padding mask.
            pixel_attention_mask: As in `forward`.
            max_new_tokens, do_sample, eos_token_id, streamer: See `generation.generate`;
                `eos_token_id=None` uses `self.eos_token_id` (the checkpoint's default; an
                empty list means no stop token).
            **kwargs: Further `generation.generate` options (temperature, top_k, top_p,
                num_beams, generator, pad_token_id (default `self.pad_token_id`),
                position_ids, cache_implementation).

        Returns:
            (B, P + N) LongTensor of prompt plus new tokens.
        """
        embeds, _ = self.embed(input_ids, pixel_values, pixel_attention_mask)
        if eos_token_id is None:
            eos_token_id = self.eos_token_id
        if kwargs.get("pad_token_id") is None:
            kwargs["pad_token_id"] = self.pad_token_id
        prompt_inputs = self.decoder_inputs(input_ids)
        decoder = _WithPromptInputs(self.decoder, prompt_inputs) if prompt_inputs else self.decoder
        return _generate(
            decoder,  # type: ignore[arg-type]
            input_ids,
            max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos_token_id,
            attention_mask=attention_mask,
            inputs_embeds=embeds,
            streamer=streamer,
            **kwargs,
        )


class _WithPromptInputs(nn.Module):
    """Adapts a decoder to `generation.generate` when the prompt call needs `decoder_inputs`.

    The prompt (prefill) call, the one with `inputs_embeds`, gets the (B, P, ...) extra inputs;
    decode steps get none (generated tokens are text).
    """

    def __init__(self, decoder: DecoderLM, prompt_inputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.decoder = decoder
        self.prompt_inputs = prompt_inputs

    def forward(self, **kwargs: Any) -> DecoderOutput:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:  # a decode step
            return self.decoder(**kwargs)
        extra = {}
        for name, value in self.prompt_inputs.items():
            if value.shape[0] != embeds.shape[0]:  # beam search repeats each row k times
                value = value.repeat_interleave(embeds.shape[0] // value.shape[0], 0)
            extra[name] = value
        return self.decoder(**kwargs, **extra)
