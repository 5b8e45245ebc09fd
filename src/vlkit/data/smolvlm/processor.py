"""`SmolVLMProcessor`: prompts, images and videos -> the inputs of a SmolVLM / SmolVLM2 model.

Reproduces transformers' `models/smolvlm/processing_smolvlm.py` exactly (token ids, attention
mask, pixel values and pixel mask; pixels match its PIL backend, see `image_processor.py`)
from the files of a Hugging Face processor directory, with `tokenizers`, Pillow and `jinja2`.
The strings that replace `<image>` / `<video>` and the chat-template rendering are in
`prompts.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from vlkit.data.smolvlm.image_processor import (
    SmolVLMImageConfig,
    SmolVLMVideoConfig,
    Video,
    pad_images,
    preprocess_image,
    preprocess_video,
    sample_frame_indices,
)
from vlkit.data.smolvlm.processor_files import read_processor_directory
from vlkit.data.smolvlm.prompts import (
    VIDEO_CHAT_TEMPLATE,
    image_prompt,
    render_chat_template,
    video_prompt,
)
from vlkit.errors import CheckpointError

__all__ = ["SmolVLMProcessor"]


class SmolVLMProcessor:
    """Turns prompts with `<image>` / `<video>` placeholders into SmolVLM model inputs.

    Attributes:
        tokenizer: The `tokenizers.Tokenizer` of `tokenizer.json`.
        image_config: Image settings.
        video_config: Video settings, or None when the checkpoint has no `video_sampling`.
        image_seq_len: `<image>` tokens per tile.
        chat_template: The Jinja chat template, or None when the directory has none.
        special_tokens: `bos_token`, `eos_token`, `unk_token`, `pad_token` as set (strings).
        padding_side: "left" or "right", from `tokenizer_config.json` (default "right").
    """

    fake_token = "<fake_token_around_image>"
    image_token = "<image>"
    global_token = "<global-img>"
    video_token = "<video>"

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_config: SmolVLMImageConfig,
        image_seq_len: int,
        video_config: SmolVLMVideoConfig | None = None,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        padding_side: str = "right",
    ) -> None:
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.video_config = video_config
        self.image_seq_len = image_seq_len
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.padding_side = padding_side
        self.image_token_id = tokenizer.token_to_id(self.image_token)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an assistant turn: `<end_of_utterance>` and the eos token, when present."""
        names = ["<end_of_utterance>", self.special_tokens.get("eos_token")]
        ids = [self.tokenizer.token_to_id(name) for name in names if name]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SmolVLMProcessor:
        """Reads a Hugging Face SmolVLM processor directory (see `read_processor_directory`).

        Raises:
            CheckpointError: A file or key is missing, naming which.
        """
        files = read_processor_directory(directory)
        return cls(
            tokenizer=files.tokenizer,
            image_config=files.image_config,
            image_seq_len=files.image_seq_len,
            video_config=files.video_config,
            chat_template=files.chat_template,
            special_tokens=files.special_tokens,
            padding_side=files.padding_side,
        )

    # ----------------------------------------------------------------------------------------
    # Chat template

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str | list[str]:
        """Renders a conversation (or a batch of them) to a prompt string with Jinja.

        Args:
            messages: `[{"role": "user", "content": [{"type": "image"}, {"type": "text",
                "text": "..."}]}, ...]`; content may also be a plain string.
            add_generation_prompt: Append the assistant turn opener ("Assistant:").
            chat_template: Overrides the checkpoint's template.
            **template_kwargs: Extra variables for the template.

        Returns:
            The prompt, or one prompt per conversation for a batch.
        """
        batched = bool(messages) and isinstance(messages[0], list | tuple)
        conversations = messages if batched else [messages]
        has_video = any(
            isinstance(item, dict) and item.get("type") == "video"
            for conversation in conversations
            for message in conversation
            if not isinstance(message.get("content"), str)
            for item in message.get("content") or []
        )
        if chat_template is None:
            # As transformers' SmolVLMProcessor.apply_chat_template: videos use the fixed template.
            chat_template = VIDEO_CHAT_TEMPLATE if has_video else self.chat_template
        if chat_template is None:
            raise CheckpointError(
                "no chat template: the directory has no chat_template.jinja, chat_template.json, "
                "nor a 'chat_template' key in processor_config.json / tokenizer_config.json"
            )
        variables = {**self.special_tokens, **template_kwargs}
        rendered = render_chat_template(
            chat_template, conversations, add_generation_prompt, variables
        )
        return rendered if batched else rendered[0]

    # ----------------------------------------------------------------------------------------
    # Processing

    def __call__(
        self,
        text: str | list[str],
        images: Image.Image | list[Image.Image] | list[list[Image.Image]] | None = None,
        videos: Video | list[Video] | None = None,
        return_tensors: str = "pt",
        padding: bool = True,
        do_sample_frames: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Expands the placeholders, tokenises, and preprocesses the pixels.

        Args:
            text: One prompt or a batch; each `<image>` / `<video>` takes the next image / video.
            images: Per prompt, its images in order (a flat list is split by the prompts' counts).
            videos: The videos, in prompt order (one call takes images or videos, not both, as
                transformers overwrites one `pixel_values` with the other).
            return_tensors: Only "pt".
            padding: Pad the batch to its longest prompt on `padding_side` with `pad_token`.
            do_sample_frames: Sample frames at `video_config.fps` (at most `max_frames`);
                defaults to the checkpoint's setting (transformers: off).

        Returns:
            `input_ids` and `attention_mask` `(B, L)` int64; with images, `pixel_values`
            `(B, N, 3, H, W)` float32 and `pixel_attention_mask` `(B, N, H, W)` int64, N the most
            views (tiles + global) of any prompt; with videos, `(V, T, 3, tile, tile)` and
            `(V, T, tile, tile)`, T the most frames of any video.
        """
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        prompts = [text] if isinstance(text, str) else list(text)
        if images is not None and videos is not None:
            raise ValueError("pass images or videos in one call, not both")
        if images is None and any(self.image_token in p for p in prompts):
            raise ValueError(
                f"the prompts hold {self.image_token} tokens but no images were passed"
            )
        if videos is None and any(self.video_token in p for p in prompts):
            raise ValueError(
                f"the prompts hold {self.video_token} tokens but no videos were passed"
            )
        outputs: dict[str, torch.Tensor] = {}
        if images is not None:
            prompts, outputs = self._expand_images(prompts, images)
        elif videos is not None:
            prompts, outputs = self._expand_videos(prompts, videos, do_sample_frames)
        return {**self._tokenize(prompts, padding), **outputs}

    def _expand_images(
        self, prompts: list[str], images: Image.Image | list[Any]
    ) -> tuple[list[str], dict[str, torch.Tensor]]:
        counts = [p.count(self.image_token) for p in prompts]
        nested = self._nest_images(images, counts)
        batch: list[list[np.ndarray]] = []
        expanded = []
        for prompt, sample in zip(prompts, nested, strict=True):
            views: list[np.ndarray] = []
            pieces = prompt.split(self.image_token)
            for i, image in enumerate(sample):
                sample_views, rows, cols = preprocess_image(image, self.image_config)
                views += sample_views
                pieces[i] += self._image_prompt(rows, cols)
            batch.append(views)
            expanded.append("".join(pieces))
        if self.image_config.do_pad:
            pixel_values, pixel_mask = pad_images(batch)
            return expanded, {"pixel_values": pixel_values, "pixel_attention_mask": pixel_mask}
        stacked = torch.from_numpy(np.stack([np.stack(views) for views in batch]))
        return expanded, {"pixel_values": stacked}

    def _nest_images(self, images: Image.Image | list[Any], counts: list[int]) -> list[list[Any]]:
        if not isinstance(images, list | tuple):
            images = [images]
        if images and all(isinstance(sample, list | tuple) for sample in images):
            nested = [list(sample) for sample in images]
        else:
            offsets = np.cumsum([0, *counts]).tolist()
            if offsets[-1] != len(images):
                raise ValueError(
                    f"the prompts hold {offsets[-1]} <image> tokens but {len(images)} images"
                )
            nested = [list(images[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        found = [len(sample) for sample in nested]
        if found != counts:
            raise ValueError(f"<image> tokens per prompt {counts} != images per prompt {found}")
        return nested

    def _image_prompt(self, rows: int, cols: int) -> str:
        return image_prompt(
            rows, cols, self.image_seq_len, self.fake_token, self.image_token, self.global_token
        )

    def _expand_videos(
        self, prompts: list[str], videos: Video | list[Video], do_sample_frames: bool | None
    ) -> tuple[list[str], dict[str, torch.Tensor]]:
        if self.video_config is None:
            raise CheckpointError("preprocessor_config.json: missing key 'video_sampling'")
        videos = [videos] if isinstance(videos, Video) else list(videos)
        found = sum(p.count(self.video_token) for p in prompts)
        if found != len(videos):
            raise ValueError(f"the prompts hold {found} <video> tokens but {len(videos)} videos")
        sample = (
            self.video_config.do_sample_frames if do_sample_frames is None else do_sample_frames
        )
        clips, timestamps, durations = [], [], []
        for video in videos:
            indices = video.indices
            frames = video.frames
            # transformers defaults a missing fps to 24 (with a warning) when writing timestamps.
            fps = video.fps if video.fps is not None else 24.0
            duration = video.duration
            if sample:
                if video.fps is None:
                    raise ValueError("sampling frames needs the video's fps (Video.fps)")
                duration = duration if duration is not None else len(frames) / fps
                picked = sample_frame_indices(
                    len(frames), fps, duration, self.video_config.max_frames, self.video_config.fps
                )
                frames, indices = [frames[i] for i in picked], picked
            stamps = [index / fps for index in indices]
            clips.append(
                preprocess_video(frames, self.video_config.longest_edge, self.image_config)
            )
            timestamps.append(stamps)
            durations.append(int(duration) if duration is not None else int(stamps[-1]))
        # transformers names `pixel_values.shape[1]` as the frame count: the batch's most frames.
        num_frames = max(len(clip) for clip in clips)
        tokens = dict(
            fake_token=self.fake_token, image_token=self.image_token, global_token=self.global_token
        )
        replacements = iter(
            video_prompt(num_frames, stamps, seconds, self.image_seq_len, **tokens)
            for stamps, seconds in zip(timestamps, durations, strict=True)
        )
        expanded = []
        for prompt in prompts:
            pieces = prompt.split(self.video_token)
            expanded.append(
                "".join(piece + next(replacements) for piece in pieces[:-1]) + pieces[-1]
            )
        pixel_values, pixel_mask = pad_images(clips)
        # video_processing_smolvlm.pad marks padding *frames* as valid pixels (it only slices
        # height and width); kept for parity. The model drops all-zero frames anyway.
        pixel_mask[:] = 1
        return expanded, {"pixel_values": pixel_values, "pixel_attention_mask": pixel_mask}

    def _tokenize(self, prompts: list[str], padding: bool) -> dict[str, torch.Tensor]:
        rows = [encoding.ids for encoding in self.tokenizer.encode_batch(prompts)]
        width = max(len(row) for row in rows)
        if not padding and any(len(row) != width for row in rows):
            raise ValueError("prompts tokenise to different lengths: pass padding=True")
        pad_id = self._pad_id()
        ids, mask = [], []
        for row in rows:
            fill = width - len(row)
            if self.padding_side == "left":
                ids.append([pad_id] * fill + row)
                mask.append([0] * fill + [1] * len(row))
            else:
                ids.append(row + [pad_id] * fill)
                mask.append([1] * len(row) + [0] * fill)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def _pad_id(self) -> int:
        token = self.special_tokens.get("pad_token")
        pad_id = None if token is None else self.tokenizer.token_to_id(token)
        if pad_id is None:
            raise ValueError("padding needs a pad_token (tokenizer_config.json)")
        return pad_id

    # ----------------------------------------------------------------------------------------
    # Decoding

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Token ids `(L,)` -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, ids: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        """Token ids `(B, L)` -> one text per row."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        rows = [list(row) for row in ids]
        return self.tokenizer.decode_batch(rows, skip_special_tokens=skip_special_tokens)
