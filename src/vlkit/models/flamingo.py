"""Flamingo: Perceiver-resampled images read by gated cross-attention inside the LM.

Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning":

* Sec. 2.1 / Fig. 5: a Perceiver Resampler turns the vision encoder's T tokens per image into K
  learned latents. Here the vision tokens are first mapped linearly to the LM width D and the
  resampler runs at width D (Flamingo runs it at the vision width; resampling at D keeps the
  fusion cost in proportion to small LMs).
* Sec. 2.2 / Fig. 4: a `GatedCrossAttentionBlock` (tanh gates initialised at 0) precedes decoder
  layer i whenever `i % cross_attention_every == 0`; at initialisation the model is exactly the
  text-only LM.
* Sec. 2.3: one `<image>` token in the text marks where an image appears
  (`num_image_tokens == 1`); each token cross-attends only to the latents of the most recent
  image at or before it, and tokens before any image get no cross-attention.

The decoder (`flamingo_decoder.FlamingoDecoder`) is `DecoderLM` plus `gated_cross_attention`
blocks, so its text weights keep the Llama parameter names. Unlike Flamingo, the LM is not frozen here (freeze what you compare).

`FlamingoVLM.generate` runs the shared `generation.generate` loop (greedy, sampling, beam search;
dynamic or static KV cache). The images are resampled once; `flamingo_cache.MediaCache` keeps
every block's cross-attention keys/values over them and each row's media time, so a new token
gets exactly the cross-attention mask of a full re-run (`generate(use_cache=False)`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vlkit.fusion.gated_cross_attention import (
    media_attention_mask,
    media_time_index,
)
from vlkit.fusion.perceiver_resampler import PerceiverResampler
from vlkit.losses.next_token import next_token_loss
from vlkit.models.attention_maps import attention_probs, image_slots, image_token_distribution
from vlkit.models.decoder import DecoderConfig, DecoderOutput
from vlkit.models.decoder import generate as _generate
from vlkit.models.decoder.generation import prompt_attention_mask, stop_ids
from vlkit.models.decoder.masks import position_ids_from_mask
from vlkit.models.flamingo_cache import FlamingoKVCache, MediaCache
from vlkit.models.flamingo_decoder import FlamingoDecoder
from vlkit.models.frozen_vision import is_frozen, keep_frozen_in_eval
from vlkit.models.smolvlm import VLMOutput

if TYPE_CHECKING:
    from vlkit.models.fusion_vlm import FusionVLMConfig

__all__ = ["FlamingoDecoder", "FlamingoKVCache", "FlamingoVLM", "MediaCache"]


class _WithMedia(nn.Module):
    """Adapts `FlamingoDecoder` to `generation.generate`: every call reads the batch's media.

    One per `generate` call, so `fast_decode` keeps no static cache or CUDA graph across calls
    (they would hold this call's media).
    """

    def __init__(self, decoder: FlamingoDecoder, media: MediaCache) -> None:
        super().__init__()
        self.decoder = decoder
        self.config = decoder.config  # `fast_decode` sizes the static cache from it
        self.media = media

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    def forward(self, **kwargs: Any) -> DecoderOutput:
        rows, media_rows = kwargs["input_ids"].shape[0], self.media.time.shape[0]
        if rows != media_rows:  # beam search repeats each row k times
            index = torch.arange(media_rows, device=self.media.time.device)
            self.media.reorder(index.repeat_interleave(rows // media_rows))
        return self.decoder(**kwargs, media=self.media)


class FlamingoVLM(nn.Module):
    """Vision tokens -> linear -> Perceiver Resampler -> gated cross-attention in the decoder.

    Args:
        vision: Module (N, 3, H, W) -> (N, T, Dv).
        vision_dim: Dv.
        decoder_config: The LM shape (its vocabulary includes `image_token_id`).
        image_token_id: The `<image>` marker id.
        num_latents: K, Perceiver latents per image.
        perceiver_layers: Perceiver depth.
        cross_attention_every: Gated cross-attention frequency.
        config: The `FusionVLMConfig` it was built from (None when built by hand).
    """

    def __init__(
        self,
        vision: nn.Module,
        vision_dim: int,
        decoder_config: DecoderConfig,
        image_token_id: int,
        num_latents: int = 8,
        perceiver_layers: int = 2,
        cross_attention_every: int = 1,
        config: FusionVLMConfig | None = None,
    ) -> None:
        super().__init__()
        d, heads = decoder_config.hidden_size, decoder_config.num_heads
        self.vision = vision
        self.media_projection = nn.Linear(vision_dim, d)
        self.perceiver = PerceiverResampler(
            d, perceiver_layers, num_latents, heads, d // heads, max_num_frames=1
        )
        self.decoder = FlamingoDecoder(decoder_config, cross_attention_every)
        self.image_token_id = image_token_id
        self.num_image_tokens = 1
        self.config = config

    # Writes a composed model in vlkit's format: (model, directory) -> None. Set by
    # `vlkit.hub.composed_checkpoint` (models cannot import the format layer).
    checkpoint_writer: ClassVar[Callable[[Any, str | Path], None] | None] = None

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes a composed model (`vlkit.compose_vlm`) that `vlkit.from_pretrained` loads."""
        writer = type(self).checkpoint_writer
        if writer is None:
            raise RuntimeError("import vlkit.hub to enable save_pretrained")
        writer(self, directory)

    def train(self, mode: bool = True) -> FlamingoVLM:
        """As `nn.Module.train`, but a fully frozen vision encoder stays in eval mode."""
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self.vision)
        return self

    def encode_media(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images -> (B, M, K, D) resampled latents (image i of a row at index i).

        `pixel_values` (B, M, C, H, W); or (N, C, H, W): one image per `<image>` marker of
        `input_ids` in reading order when they number N (transformers' LLaVA layout, as
        `collate_sft` batches rows of 0, 1 or more images; M is then the most markers of a
        row, zero latents after a row's own, never read), else one image per row.

        Raises:
            ValueError: (N, C, H, W) images neither one per marker nor one per row.
        """
        per_row = None  # images per row, when the images come one per marker
        if pixel_values.dim() == 4:
            per_row = self._markers_per_row(pixel_values.shape[0], input_ids)
            if per_row is None:
                pixel_values = pixel_values[:, None]
        images = pixel_values.flatten(0, 1) if per_row is None else pixel_values
        dtype = next(self.vision.parameters()).dtype
        images = images.to(dtype)
        # A fully frozen encoder runs outside autograd (no graph, no saved activations).
        grad = torch.is_grad_enabled() and (images.requires_grad or not is_frozen(self.vision))
        with torch.set_grad_enabled(grad):
            tokens = self.vision(images)  # (N, T, Dv)
        latents = self.perceiver(self.media_projection(tokens))  # (N, K, D)
        if per_row is None:
            return latents.view(*pixel_values.shape[:2], *latents.shape[1:])
        # Only the real images are encoded; rows are padded with zero latents after them.
        slots = torch.arange(max(int(per_row.max()), 1), device=per_row.device)
        filled = slots[None] < per_row[:, None]  # (B, M)
        padded = latents.new_zeros(*filled.shape, *latents.shape[1:])  # (B, M, K, D)
        return padded.masked_scatter(filled[..., None, None], latents)

    def _markers_per_row(self, images: int, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) markers per row when N `images` go one per marker; None for one per row.
        One per marker wins when both readings fit (N = B = the number of markers): what
        `collate_sft` and the pipelines give; pass (B, M, C, H, W) to mean one per row."""
        if input_ids is None:
            return None
        per_row = (input_ids == self.image_token_id).sum(dim=1)  # (B,)
        if int(per_row.sum()) == images:
            return per_row
        if images == input_ids.shape[0]:
            return None
        raise ValueError(
            f"pixel_values holds {images} images for {input_ids.shape[0]} rows with "
            f"{int(per_row.sum())} <image> markers: give one image per marker, one per row, "
            "or (B, M, C, H, W)"
        )

    def media_cache(
        self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor | None = None
    ) -> MediaCache | None:
        """The images' `MediaCache` (resampled and projected once), or None without images;
        `input_ids` place (N, C, H, W) images as `encode_media` does."""
        if pixel_values is None:
            return None
        media = self.encode_media(pixel_values, input_ids)
        return MediaCache(self.decoder, media, self.image_token_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        num_items_in_batch: float | None = None,
    ) -> VLMOutput:
        """Logits (B, L, V) for ids (B, L) with one `<image>` marker per image.

        Args:
            input_ids: (B, L).
            pixel_values: (B, M, C, H, W); image i of a row belongs to its i-th `<image>`
                marker (rows with fewer markers never read the extra images). Or (N, C, H, W):
                one image per marker in reading order, or one per row (`encode_media`). None =
                text only (as a row whose tokens all precede its first image).
            attention_mask: (B, L) padding mask, or None.
            labels: (B, L) targets, -100 = not a target; the loss is the shifted next-token
                cross-entropy (`vlkit.losses.next_token_loss`, as transformers' causal LMs).
            position_ids: (B, L) RoPE positions; default `arange(L)` (`DecoderLM.forward`).
            use_cache: Also return a `FlamingoKVCache` (with the images' `MediaCache`) that
                `decoder(input_ids=new_ids, attention_mask=..., cache=cache)` continues.
            num_items_in_batch: With labels: divide the summed cross-entropy by this instead
                of the number of targets (transformers' argument, for exact accumulation).

        Returns:
            `VLMOutput` with (B, L, V) logits and `loss` (None without labels).
        """
        out = self.decoder(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            media=self.media_cache(pixel_values, input_ids),
        )
        loss = None
        if labels is not None:
            loss = next_token_loss(out.logits, labels, num_items_in_batch=num_items_in_batch)
        return VLMOutput(out.logits, cache=out.cache, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """KV-cached decoding with `generation.generate` (the images are resampled once).

        Args:
            input_ids: (B, P) prompts, left padded with `attention_mask`.
            pixel_values: As `forward` (None = text only).
            attention_mask: (B, P) padding mask, or None.
            max_new_tokens, do_sample, eos_token_id, streamer: See `generation.generate`.
            use_cache: False runs the reference greedy loop that re-runs the whole sequence per
                new token (greedy, dynamic only; for tests and timing).
            **kwargs: Further `generation.generate` options (temperature, top_k, top_p,
                num_beams, generator, pad_token_id, cache_implementation, cuda_graph,
                max_cache_len).

        Returns:
            (B, P + N) ids.
        """
        media = self.media_cache(pixel_values, input_ids)
        if not use_cache:
            return self._generate_without_cache(
                input_ids, media, attention_mask, max_new_tokens, do_sample, eos_token_id,
                streamer, **kwargs,
            )  # fmt: skip
        decoder = self.decoder if media is None else _WithMedia(self.decoder, media)
        return _generate(
            decoder,  # type: ignore[arg-type]
            input_ids,
            max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos_token_id,
            attention_mask=attention_mask,
            streamer=streamer,
            **kwargs,
        )

    def _generate_without_cache(
        self,
        input_ids: torch.Tensor,
        media: MediaCache | None,
        attention_mask: torch.Tensor | None,
        max_new_tokens: int,
        do_sample: bool,
        eos_token_id: int | Sequence[int] | None,
        streamer: Callable[[torch.Tensor], None] | None,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Greedy reference: the whole sequence is re-run for every new token."""
        if (
            do_sample
            or kwargs.get("num_beams", 1) != 1
            or kwargs.get("cache_implementation", "dynamic") != "dynamic"
        ):
            raise NotImplementedError("use_cache=False decodes greedily, without a KV cache")
        b, device = input_ids.shape[0], input_ids.device
        stop = stop_ids(eos_token_id, device)
        mask = attention_mask  # None: as `generation.generate` infers it
        if mask is None:
            mask = prompt_attention_mask(input_ids, pad_token_id, stop)
        if pad_token_id is None:
            pad_token_id = int(stop[0]) if stop is not None else 0
        # The positions `generation.generate` gives: the prompt's from its mask, then + 1.
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = position_ids_from_mask(mask)  # (B, P)
        sequences = input_ids
        unfinished = torch.ones(b, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            logits = self.decoder(
                sequences, attention_mask=mask, position_ids=positions, media=media
            ).logits
            next_tok = logits[:, -1].argmax(-1)  # (B,)
            next_tok = torch.where(unfinished, next_tok, torch.full_like(next_tok, pad_token_id))
            sequences = torch.cat([sequences, next_tok[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
            if streamer is not None:
                streamer(next_tok)
            if stop is not None:
                unfinished &= ~torch.isin(next_tok, stop)
            if not unfinished.any():
                break
        return sequences

    @torch.no_grad()
    def attention_maps(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per text position, a distribution over the vision encoder's T tokens.

        Definition: X (B, L, K) = the last gated cross-attention block's attention from each text
        position to the K Perceiver latents, averaged over heads; P (B, K, T) = the Perceiver's
        last layer attention from each latent to the T media tokens (its keys are media and
        latents, Fig. 5: the media columns, renormalised), averaged over heads. The map is
        X @ P; positions before the `<image>` marker (no cross-attention) get uniform rows.

        Args:
            input_ids: (B, L) with one `<image>` marker per row.
            pixel_values: (B, 1, C, H, W) or (B, C, H, W).
            attention_mask: (B, L) padding mask, or None.

        Returns:
            (B, L, T) rows summing to 1.
        """
        image_slots(input_ids, self.image_token_id, 1)  # validates one image per row
        captured: dict[str, Any] = {}

        def grab_latents(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured["media"], captured["latents"] = args[0], args[1]

        def grab_resampled(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
            captured["media_k"] = out[:, None]  # (B, 1, K, D)

        def grab_text(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured["text"] = args[0]  # the block's input (B, L, D), before its norm

        perceiver_attn = self.perceiver.layers[-1][0]
        block = self.decoder.gated_cross_attention[max(self.decoder.gated_cross_attention, key=int)]
        handles = [
            perceiver_attn.register_forward_pre_hook(grab_latents),
            self.perceiver.register_forward_hook(grab_resampled),
            block.norm_xattn.register_forward_pre_hook(grab_text),
        ]
        try:
            self.forward(input_ids, pixel_values, attention_mask)
        finally:
            for handle in handles:
                handle.remove()

        # Perceiver: latents -> [media; latents] in the last layer, media columns only.
        media, latents = captured["media"], captured["latents"]  # (B, T, D), (B, K, D)
        t, k = media.shape[1], latents.shape[1]
        media_n = perceiver_attn.norm_media(media)
        latents_n = perceiver_attn.norm_latents(latents)
        heads, hd = perceiver_attn.num_heads, perceiver_attn.head_dim
        q = perceiver_attn.to_q(latents_n).view(-1, k, heads, hd).transpose(1, 2)
        keys = perceiver_attn.to_kv(torch.cat([media_n, latents_n], 1)).chunk(2, dim=-1)[0]
        keys = keys.view(-1, t + k, heads, hd).transpose(1, 2)  # (B, H, T+K, hd)
        latent_to_media = image_token_distribution(attention_probs(q, keys, None)[..., :t])

        # Gated cross-attention: text -> latents of the most recent image, head-averaged.
        text, media_k = captured["text"], captured["media_k"]  # (B, L, D), (B, 1, K, D)
        time = media_time_index(input_ids == self.image_token_id)  # (B, L)
        allowed = media_attention_mask(time, media_k.shape[1], media_k.shape[2])  # (B, L, K)
        _, probs = block.attn(
            block.norm_xattn(text), media_k, None, attn_mask=allowed, return_attention=True
        )  # (B, H, L, K), rows before the image are 0
        return image_token_distribution(probs.mean(1), latent_to_media)
