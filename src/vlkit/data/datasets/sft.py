"""`SFTDataset`: conversation rows -> model inputs with labels on the assistant's words only.

Each row (`conversation_formats`' canonical shape) is rendered with the *processor's* chat
template, its images are preprocessed and every image placeholder expanded exactly as the
processor's `__call__` does (`SmolVLMProcessor`: tile blocks; `LlavaProcessor` and the composed
`FixedCountProcessor`: N `<image>` tokens; `AnyResProcessor` (LLaVA-NeXT): each image's own
count, with its tiles and `image_sizes`), and the expanded text is tokenised once, so
`input_ids` equal `processor(text=render, images=row_images)["input_ids"]`.

Labels: the tokens of each assistant turn plus its end-of-turn token (`<end_of_utterance>` for
SmolVLM, the template's EOS such as `<|im_end|>` / `<|eot_id|>` for ChatML / Llama templates);
-100 (`IGNORE_INDEX`) on image tokens, user turns, system prompts, the text the template puts
between turns, and padding. As in TRL's `assistant_only_loss` and LLaVA's `preprocess_v1`.
The assistant spans are found on the rendered text: the render of turns [0, i) with the
generation prompt is a prefix of the render of turns [0, i] (checked), and the difference is
turn i's answer up to and including the first end-of-turn token (the newline a template puts
after it is not a target). A template that ends an assistant turn with no end-of-turn token
(LLaVA-1.5's "ASSISTANT: ... ") gets the EOS appended to the answer, as LLaVA's `sep2 = "</s>"`.
Tokens map to spans by the tokenizer's character offsets.

Rows longer than `max_length` are skipped (never truncated: a cut conversation would teach
the model to stop mid-answer), as are rows whose images cannot be read: the item is
`{"skipped": reason naming the row, "index"}`, or a `ValueError` with `strict=True`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from vlkit.data.datasets.conversation_formats import (
    IMAGE_PLACEHOLDER,
    ConversationData,
    read_conversations,
)
from vlkit.data.datasets.image_text import parse_key
from vlkit.data.images import ImageLoadError, load_image, load_image_bytes
from vlkit.data.llava_processor import LlavaProcessor
from vlkit.data.smolvlm.processor import SmolVLMProcessor
from vlkit.data.smolvlm.prompts import image_prompt
from vlkit.losses.next_token import IGNORE_INDEX

__all__ = ["SFTDataset", "collate_sft", "open_row_image", "template_messages"]


def open_row_image(image: str | bytes | Image.Image) -> Image.Image:
    """A canonical row's image decoded (files and bytes to RGB, PIL images as given).

    Raises:
        ImageLoadError: Missing, unreadable, truncated or corrupt (one line naming it).
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, bytes):
        return load_image_bytes(image, name="(image bytes in the row)")
    return load_image(image)


def template_messages(messages: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """Canonical messages as chat-template messages: content as `[{"type": "image"},
    {"type": "text", "text"}]` parts (what SmolVLM / LLaVA / Qwen2-VL templates iterate),
    text stripped around each image, as transformers' chat examples write it."""
    out = []
    for message in messages:
        parts: list[dict[str, str]] = []
        for n, piece in enumerate(message["content"].split(IMAGE_PLACEHOLDER)):
            if n:
                parts.append({"type": "image"})
            piece = piece.strip() if message["role"] == "user" else piece
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": message["role"], "content": parts})
    return out


class SFTDataset(Dataset):
    """Conversation rows as supervised fine-tuning items for a generative VLM.

    Items: `{"input_ids" (L,), "labels" (L,), "attention_mask" (L,), "index"}` plus, for a row
    with images, `"pixel_values"` (`SmolVLMProcessor`: `(N, 3, H, W)` views with
    `"pixel_attention_mask"` `(N, H, W)`; `LlavaProcessor`: `(images, 3, H, W)`;
    `AnyResProcessor`: `(images, V, 3, S, S)` tiles, zero views after each image's own, with
    `"image_sizes"` `(images, 2)`), or `{"skipped": reason, "index"}`. Batch them with
    `dataset.collate` (`collate_sft`).

    Args:
        rows: Canonical rows, a `ConversationData`, or a data path (`read_conversations`).
        processor: A `SmolVLMProcessor` or `LlavaProcessor` (incl. `FixedCountProcessor` and
            `AnyResProcessor`), as `vlkit.get_processor(model_dir)` returns.
        max_length: Longest row in tokens (images included); longer rows are skipped. None:
            no limit.
        strict: Raise on a bad row instead of skipping it.
        image_folder: Base of relative image paths when `rows` is a path.

    Attributes:
        skipped: Reasons of the rows skipped while reading `rows` (a path / ConversationData).
    """

    def __init__(
        self,
        rows: Sequence[dict] | ConversationData | str | Path,
        processor: Any,
        max_length: int | None = 2048,
        strict: bool = False,
        image_folder: str | Path | None = None,
    ) -> None:
        if isinstance(rows, (str, Path)):
            rows = read_conversations(rows, image_folder=image_folder, strict=strict)
        self.skipped: list[str] = list(rows.skipped) if isinstance(rows, ConversationData) else []
        self.rows = list(rows.rows if isinstance(rows, ConversationData) else rows)
        if not isinstance(processor, (SmolVLMProcessor, LlavaProcessor)):
            raise TypeError(
                f"SFTDataset takes a SmolVLMProcessor or LlavaProcessor (vlkit.get_processor), "
                f"got {type(processor).__name__}"
            )
        self.processor = processor
        self.max_length = max_length
        self.strict = strict
        # A private copy without the tokenizer.json's padding / truncation: rows are never cut.
        self.tokenizer = Tokenizer.from_str(processor.tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        special = processor.special_tokens
        self.end_of_turn = [processor.tokenizer.id_to_token(i) for i in processor.stop_token_ids]
        self.eos_token = special.get("eos_token")
        pad = special.get("pad_token") or self.eos_token
        self.pad_token_id = (processor.tokenizer.token_to_id(pad) if pad else None) or 0

    def __len__(self) -> int:
        return len(self.rows)

    # ---------------------------------------------------------------------------------------
    # Text

    def segments(self, index: int) -> list[tuple[str, bool]]:
        """Row `index` rendered as `(text, is_target)` pieces, in order (images unexpanded).

        Raises:
            ValueError: The template's renders of the conversation's prefixes do not nest.
        """
        messages = template_messages(self.rows[index]["messages"])
        render = self.processor.apply_chat_template
        segments: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = render(messages[:i], add_generation_prompt=True)
            full = render(messages[: i + 1], add_generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ValueError(
                    f"{self._where(index)}: the chat template's render of the turns before "
                    f"assistant turn {i} is not a prefix of the render through it; assistant "
                    "spans cannot be found"
                )
            answer = full[len(prompt) :]
            target, rest = self._split_answer(answer)
            segments += [(prompt[len(done) :], False), (target, True), (rest, False)]
            done = full
        full = render(messages, add_generation_prompt=False)
        if not full.startswith(done):
            raise ValueError(f"{self._where(index)}: the full render does not extend its prefixes")
        segments.append((full[len(done) :], False))
        return [s for s in segments if s[0]]

    def _split_answer(self, answer: str) -> tuple[str, str]:
        """(the target: answer through its end-of-turn token, what the template adds after)."""
        ends = [(answer.find(t), t) for t in self.end_of_turn if t and t in answer]
        if ends:
            start, token = min(ends)
            return answer[: start + len(token)], answer[start + len(token) :]
        kept = answer.rstrip()
        # No end-of-turn token in the template: append the EOS (LLaVA's sep2) to the answer.
        return kept + (self.eos_token or ""), answer[len(kept) :]

    def _where(self, index: int) -> str:
        row = self.rows[index]
        return str(row.get("source") or f"row {index} (id {row.get('id')!r})")

    # ---------------------------------------------------------------------------------------
    # Images

    def _image_inputs(self, images: list[Image.Image]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Pixel inputs of one row's images and the text that replaces each placeholder."""
        processor = self.processor
        if isinstance(processor, SmolVLMProcessor):
            out = processor.image_processor([images], return_row_col_info=True)
            rows, cols = out.pop("rows")[0], out.pop("cols")[0]
            texts = [
                image_prompt(
                    r,
                    c,
                    processor.image_seq_len,
                    processor.fake_token,
                    processor.image_token,
                    processor.global_token,
                )  # fmt: skip
                for r, c in zip(rows, cols, strict=True)
            ]
            return {
                "pixel_values": out["pixel_values"][0],  # (N, 3, H, W)
                "pixel_attention_mask": out["pixel_attention_mask"][0],  # (N, H, W)
            }, texts
        # LLaVA: (images, 3, H, W) and one count; anyres: tiles, image_sizes and a count each.
        pixels, counts = processor.image_inputs(images)
        return pixels, [processor.image_token * count for count in counts]

    # ---------------------------------------------------------------------------------------
    # Items

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, _ = parse_key(key, len(self.rows))  # the Trainer's sampler passes (index, seed)
        row = self.rows[index]
        try:
            images = [open_row_image(image) for image in row.get("images") or []]
        except (ImageLoadError, OSError) as error:
            return self._skip(index, f"unreadable image ({error})")
        pixels, replacements = self._image_inputs(images) if images else ({}, [])
        text, spans = self._expanded(self.segments(index), replacements, index)
        encoding = self.tokenizer.encode(text)
        ids = encoding.ids
        if self.max_length is not None and len(ids) > self.max_length:
            return self._skip(index, f"{len(ids)} tokens > max_length {self.max_length}")
        labels = [IGNORE_INDEX] * len(ids)
        for n, ((start, end), added) in enumerate(
            zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
        ):
            if not added and end > start and any(a <= start < b for a, b in spans):
                labels[n] = ids[n]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            **pixels,
            "index": index,
        }

    def _expanded(
        self, segments: list[tuple[str, bool]], replacements: list[str], index: int
    ) -> tuple[str, list[tuple[int, int]]]:
        """The text with each image token replaced, and the target spans in it."""
        token = self.processor.image_token
        queue = iter(replacements)
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        length = 0
        for text, is_target in segments:
            if is_target:
                spans.append((length, length + len(text)))
            else:
                parts = text.split(token)
                try:
                    text = parts[0] + "".join(next(queue) + part for part in parts[1:])
                except StopIteration:
                    raise ValueError(
                        f"{self._where(index)}: the rendered prompt holds more {token} tokens "
                        f"than the row's {len(replacements)} images"
                    ) from None
            pieces.append(text)
            length += len(text)
        if next(queue, None) is not None:
            raise ValueError(
                f"{self._where(index)}: the chat template rendered fewer {token} tokens than "
                f"the row's {len(replacements)} images"
            )
        return "".join(pieces), spans

    def _skip(self, index: int, reason: str) -> dict[str, Any]:
        message = f"{self._where(index)}: {reason}"
        if self.strict:
            raise ValueError(message)
        warnings.warn(f"skipped {message}", stacklevel=3)
        return {"skipped": message, "index": index}

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """`collate_sft` with this processor's pad token."""
        return collate_sft(samples, pad_token_id=self.pad_token_id)


def collate_sft(
    samples: Sequence[dict[str, Any]], pad_token_id: int = 0, padding_side: str = "right"
) -> dict[str, Any]:
    """Pads `SFTDataset` items into a batch (skipped items dropped and listed).

    Text is padded to the longest row (`pad_token_id`, attention 0, labels -100). SmolVLM pixel
    views are zero-padded to the batch's most views, height and width, with
    `pixel_attention_mask` 0 there, as transformers' Idefics3 / SmolVLM image processor pads a
    batch; LLaVA images are concatenated `(total images, 3, H, W)`, as its processor returns;
    LLaVA-NeXT (anyres) tiles are concatenated image after image into `(total images, most
    views, 3, S, S)`, zero views after each image's own, with `"image_sizes"` `(total images,
    2)`, as transformers' `LlavaNextProcessor` batches them.

    Returns:
        `{"input_ids", "attention_mask", "labels"}` `(B, L)`, `"pixel_values"` (and
        `"pixel_attention_mask"` or `"image_sizes"`) when any row has images, then for
        images concatenated across rows `"images_per_row"` `(B,)` (which images a micro-batch
        of rows takes: `SFTTask`), `"images"` (= `input_ids`: the Trainer counts rows with
        it), `"index"` list and `"skipped"` reasons.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: 'left' or 'right'")
    items = [s for s in samples if "skipped" not in s]
    skipped = [str(s["skipped"]) for s in samples if "skipped" in s]
    if not items:  # the Trainer skips a batch with fewer than two rows
        return {"images": torch.zeros(0), "skipped": skipped, "index": []}
    width = max(len(s["input_ids"]) for s in items)
    b = len(items)
    ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for row, s in enumerate(items):
        n = len(s["input_ids"])
        where = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, where], labels[row, where], mask[row, where] = s["input_ids"], s["labels"], 1
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with_pixels = [s for s in items if "pixel_values" in s]
    if any("pixel_attention_mask" in s for s in with_pixels):
        batch.update(_pad_views(items))
    elif with_pixels:
        batch.update(_concatenated_images(items))
    batch.update(images=ids, index=[s["index"] for s in items], skipped=skipped)
    return batch


def _pad_views(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """(B, N, 3, H, W) pixel views and (B, N, H, W) masks, zero-padded (Idefics3's `pad`)."""
    views = [s["pixel_values"] for s in items if "pixel_values" in s]
    count = max(v.shape[0] for v in views)
    channels, height, width = (max(v.shape[d] for v in views) for d in (1, 2, 3))
    pixel_values = torch.zeros(len(items), count, channels, height, width, dtype=views[0].dtype)
    mask = torch.zeros(len(items), count, height, width, dtype=torch.long)
    for row, s in enumerate(items):
        if "pixel_values" not in s:
            continue
        n, _, h, w = s["pixel_values"].shape
        pixel_values[row, :n, :, :h, :w] = s["pixel_values"]
        mask[row, :n, :h, :w] = s["pixel_attention_mask"]
    return {"pixel_values": pixel_values, "pixel_attention_mask": mask}


def _concatenated_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """LLaVA's (images, 3, H, W), or LLaVA-NeXT's (images, V, 3, S, S) tiles zero-padded to the
    batch's most views (`image_sizes` tell the model each image's own count), image after
    image in row order; and (B,) images per row."""
    images = [s["pixel_values"] for s in items if "pixel_values" in s]
    per_row = [len(s["pixel_values"]) if "pixel_values" in s else 0 for s in items]
    out = {"images_per_row": torch.tensor(per_row, dtype=torch.long)}
    if not any("image_sizes" in s for s in items):
        return {"pixel_values": torch.cat(images), **out}
    views = max(v.shape[1] for v in images)
    pixel_values = images[0].new_zeros(sum(per_row), views, *images[0].shape[2:])
    start = 0
    for tiles in images:
        pixel_values[start : start + len(tiles), : tiles.shape[1]] = tiles
        start += len(tiles)
    sizes = torch.cat([s["image_sizes"] for s in items if "pixel_values" in s])
    return {"pixel_values": pixel_values, "image_sizes": sizes, **out}
