"""Checks of a SmolVLM / Idefics3 ONNX export before it is written: onnxruntime against torch.

`verification_prompts` builds the prompts (random token ids and random pixels, so they need no
processor): one row with one image, whose right quarter is padding, and a left-padded batch of
two rows with two images and one image (plus an all-zero padding image). `OnnxGraphs` runs the
three graphs the way a generation loop does (vision encoder, token embedding, splice at the
`<image>` tokens, merged decoder with the cache), so the checks cover the contract a reader of
the directory relies on, including the first step with an empty cache (past length 0).

`max_logit_diffs` compares the prompt logits and two decode steps through the cache (both fed
torch's greedy tokens) with vlkit's torch model;
`quantized_agreement` measures a quantized export against float32 along the float32 greedy
continuation, teacher-forced (the quantized graphs read the float32 tokens, so one early
disagreement does not make every later position differ).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlkit.inference.onnx_runtime import onnx_session
from vlkit.inference.smolvlm_onnx_graphs import past_names
from vlkit.models.decoder import KVCache
from vlkit.models.decoder.masks import position_ids_from_mask
from vlkit.models.smolvlm import GenerativeVLM

__all__ = ["OnnxGraphs", "max_logit_diffs", "quantized_agreement", "verification_prompts"]

Prompt = dict[str, torch.Tensor]


def verification_prompts(model: GenerativeVLM, seed: int = 0, count: int = 2) -> list[Prompt]:
    """`count` prompts (input_ids, attention_mask, position_ids, pixel_values,
    pixel_attention_mask); even ones are one row with one image, odd ones a left-padded batch of
    a two-image row and a one-image row."""
    generator = torch.Generator().manual_seed(seed)
    size = model.vision.config.image_size
    with torch.no_grad():  # tokens per image: what the connector makes of one image
        seq = model.encode_images(torch.ones(1, 1, 3, size, size)).shape[0]
    vocab, image_token = model.decoder.config.vocab_size, model.image_token_id

    def text(n: int) -> list[int]:
        ids = torch.randint(0, vocab, (n,), generator=generator).tolist()
        return [i if i != image_token else (i + 1) % vocab for i in ids]

    prompts = []
    for index in range(count):
        images = [[1], [2, 1]][index % 2]
        rows = [text(3) + ([image_token] * seq + text(2)) * n + text(3) for n in images]
        width = max(len(row) for row in rows)
        ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        pixels = torch.rand(len(rows), max(images), 3, size, size, generator=generator) * 2 - 1
        pixel_mask = torch.ones(len(rows), max(images), size, size, dtype=torch.bool)
        pixel_mask[0, 0, :, 3 * size // 4 :] = False  # a padded image: zero pixels, mask off
        pixels[0, 0, :, :, 3 * size // 4 :] = 0
        for row, n in enumerate(images):  # padding images of rows with fewer images
            pixels[row, n:], pixel_mask[row, n:] = 0, False
        prompts.append({
            "input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask),
            "pixel_values": pixels, "pixel_attention_mask": pixel_mask,
        })  # fmt: skip
    return prompts


class OnnxGraphs:
    """The three exported graphs in onnxruntime sessions, run as a generation loop runs them.

    Args:
        vision, embed, decoder: Serialised models (bytes) or paths.
        model: The torch model they were exported from (for the image token and cache shapes).
        threads: onnxruntime intra-op threads; 1 (the default) for checks on small batches,
            where more threads mostly spin-wait.
    """

    def __init__(
        self, vision: Any, embed: Any, decoder: Any, model: GenerativeVLM, threads: int | None = 1
    ) -> None:
        self.vision = onnx_session(vision, None, threads)
        self.embed = onnx_session(embed, None, threads)
        self.decoder = onnx_session(decoder, None, threads)
        config = model.decoder.config
        self.names = past_names(config.num_layers)
        self.kv_shape = (config.num_kv_heads, 0, config.head_dim)
        self.image_token_id = model.image_token_id

    def prompt_embeds(self, prompt: Prompt) -> np.ndarray:
        """(B, L, D) embeddings with the image features spliced in at the `<image>` tokens."""
        ids = prompt["input_ids"].numpy()
        embeds = self.embed.run(None, {"input_ids": ids})[0]
        if "pixel_values" in prompt:  # the inputs the vision graph takes (LLaVA: no pixel mask)
            feed = {i.name: prompt[i.name].numpy() for i in self.vision.get_inputs()}
            features = self.vision.run(None, feed)[0]
            embeds[ids == self.image_token_id] = features.reshape(-1, embeds.shape[-1])
        return embeds

    def step(
        self,
        embeds: np.ndarray,
        mask: np.ndarray,
        positions: np.ndarray,
        past: list[np.ndarray] | None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One merged-decoder call: (B, L, V) logits and the present cache."""
        if past is None:  # the first step: an empty cache (past length 0)
            past = [np.zeros((embeds.shape[0], *self.kv_shape), np.float32) for _ in self.names]
        feed = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        outputs = self.decoder.run(None, {**feed, **dict(zip(self.names, past, strict=True))})
        return outputs[0], outputs[1:]

    def greedy(
        self,
        prompt: Prompt,
        steps: int,
        forced: np.ndarray | None = None,
        embeds: np.ndarray | None = None,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Greedy decoding through the cache.

        Args:
            prompt: The prompt tensors (`verification_prompts`).
            steps: New tokens to decode.
            forced: (B, steps) tokens to feed instead of the argmax.
            embeds: The prompt's `prompt_embeds`, when already computed.

        Returns:
            The (B, L, V) prompt logits followed by the (B, V) logits of each step, and the
            (B, steps) tokens.
        """
        mask = prompt["attention_mask"].numpy()
        positions = prompt["position_ids"].numpy()
        embeds = self.prompt_embeds(prompt) if embeds is None else embeds
        logits, past = self.step(embeds, mask, positions, None)
        all_logits, tokens = [logits], []
        for index in range(steps):
            if forced is None:
                token = logits[:, -1].argmax(-1)[:, None]  # (B, 1)
            else:
                token = forced[:, index : index + 1]
            tokens.append(token)
            mask = np.concatenate([mask, np.ones_like(token)], axis=1)
            positions = positions[:, -1:] + 1
            embeds = self.embed.run(None, {"input_ids": token})[0]
            logits, past = self.step(embeds, mask, positions, past)
            all_logits.append(logits[:, -1])
        return all_logits, np.concatenate(tokens, axis=1)


@torch.no_grad()
def _torch_greedy(
    model: GenerativeVLM, prompt: Prompt, steps: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """vlkit's torch (B, L, V) prompt logits and (B, V) logits after each greedy step, and the
    (B, steps) greedy tokens."""
    out = model(
        prompt["input_ids"], prompt["pixel_values"], prompt["attention_mask"],
        pixel_attention_mask=prompt.get("pixel_attention_mask"),
        position_ids=prompt["position_ids"], use_cache=True,
    )  # fmt: skip
    cache: KVCache = out.cache
    mask, positions = prompt["attention_mask"], prompt["position_ids"]
    logits, tokens, last = [out.logits], [], out.logits[:, -1]
    for _ in range(steps):
        token = last.argmax(-1, keepdim=True)  # (B, 1)
        tokens.append(token)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        positions = positions[:, -1:] + 1
        step = model.decoder(input_ids=token, attention_mask=mask, position_ids=positions,
                             cache=cache)  # fmt: skip
        last = step.logits[:, -1]
        logits.append(last)
    return [x.float().numpy() for x in logits], torch.cat(tokens, dim=1).numpy()


def max_logit_diffs(
    model: GenerativeVLM, graphs: OnnxGraphs, prompts: list[Prompt], steps: int = 2
) -> dict[str, float]:
    """Max |onnxruntime - torch| of the logits per prompt: all prompt positions (one call with
    an empty cache), then `steps` decode steps that read the cache, both fed torch's greedy
    tokens (so that a near-tie cannot send them down different paths).

    Keys are "prompt{i}_prefill" and "prompt{i}_decode" (NaN when shapes differ, so that any
    threshold check fails).
    """
    diffs = {}
    for index, prompt in enumerate(prompts):
        expected, tokens = _torch_greedy(model, prompt, steps)
        got, _ = graphs.greedy(prompt, steps, forced=tokens)
        # Left-padding positions attend to themselves only; they are never read, so skip them.
        keep = prompt["attention_mask"].numpy().astype(bool)
        diffs[f"prompt{index}_prefill"] = _max_abs(got[0], expected[0], keep)
        diffs[f"prompt{index}_decode"] = max(
            _max_abs(a, b) for a, b in zip(got[1:], expected[1:], strict=True)
        )
    return diffs


def _max_abs(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Max |a - b| over the rows `keep` selects; NaN when the shapes differ."""
    if a.shape != b.shape:
        return float("nan")
    return float(np.abs(a[keep] - b[keep]).max() if keep is not None else np.abs(a - b).max())


def quantized_agreement(
    reference: OnnxGraphs, quantized: OnnxGraphs, prompts: list[Prompt], steps: int = 8
) -> dict[str, float]:
    """Greedy top-1 agreement and mean logit cosine of `quantized` with `reference` (float32).

    The float32 graphs generate `steps` greedy tokens per row; both graphs then read prompt plus
    continuation in one call (teacher forcing), and at each of the `steps` positions that
    predicted a continuation token the quantized argmax is compared with the float32 token.

    Returns:
        "greedy_agreement" (fraction of positions), "mean_cosine" (of the (V,) logit vectors
        at those positions), "min_cosine" and "positions" (how many were compared).
    """
    agree, cosines = [], []
    for prompt in prompts:
        reference_embeds = reference.prompt_embeds(prompt)
        _, tokens = reference.greedy(prompt, steps, embeds=reference_embeds)  # (B, steps)
        mask = np.concatenate([prompt["attention_mask"].numpy(), np.ones_like(tokens)], axis=1)
        positions = prompt["position_ids"].numpy()
        positions = np.concatenate([positions, positions[:, -1:] + 1 + np.arange(steps)], axis=1)
        logits = []
        for graphs, prompt_embeds in ((reference, reference_embeds),
                                      (quantized, quantized.prompt_embeds(prompt))):  # fmt: skip
            new_embeds = graphs.embed.run(None, {"input_ids": tokens})[0]
            embeds = np.concatenate([prompt_embeds, new_embeds], axis=1)
            out, _ = graphs.step(embeds, mask, positions, None)
            logits.append(out[:, -steps - 1 : -1])  # (B, steps, V): predictions of the tokens
        agree.append(logits[1].argmax(-1) == tokens)
        a = logits[0].reshape(-1, logits[0].shape[-1])  # (B * steps, V)
        b = logits[1].reshape(a.shape)
        cosines.append((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
    matches, cosine = np.concatenate([x.ravel() for x in agree]), np.concatenate(cosines)
    return {
        "greedy_agreement": float(matches.mean()),
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "positions": int(matches.size),
    }
