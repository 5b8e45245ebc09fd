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
from tokenizers import Tokenizer

from vlkit.data.smolvlm.image_batch import SmolVLMImageProcessor, is_image, nest_images
from vlkit.data.smolvlm.image_processor import (
    SmolVLMImageConfig,
    SmolVLMVideoConfig,
    Video,
    pad_images,
    preprocess_video,
)
from vlkit.data.smolvlm.processor_files import read_processor_directory
from vlkit.data.smolvlm.prompts import (
    VIDEO_CHAT_TEMPLATE,
    image_prompt,
    render_chat_template,
    video_prompt,
)
from vlkit.data.smolvlm.tokenization import TextOptions, encode_prompts
from vlkit.data.smolvlm.video_files import VideoInput, sampled_video
from vlkit.errors import CheckpointError

__all__ = ["SmolVLMProcessor", "VideoInput"]
# Image settings that belong to the image processor only: the video processor keeps its tiles.
_TILE_KWARGS = ("max_image_size", "do_image_splitting", "do_pad")


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
        truncation_side: "left" or "right", from `tokenizer_config.json` (default "right").
        model_max_length: The tokenizer's length limit, None when it has none.
        image_processor: The callable `SmolVLMImageProcessor` over `image_config`.
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
        truncation_side: str = "right",
        model_max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.video_config = video_config
        self.image_seq_len = image_seq_len
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_max_length = model_max_length
        self.image_token_id = tokenizer.token_to_id(self.image_token)

    @property
    def image_processor(self) -> SmolVLMImageProcessor:
        """transformers' `processor.image_processor` call on this processor's image settings."""
        return SmolVLMImageProcessor(self.image_config)

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
            truncation_side=files.truncation_side,
            model_max_length=files.model_max_length,
        )

    # ----------------------------------------------------------------------------------------
    # Chat template

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str | list[str]:
        """Renders a conversation (or a batch of them) to a prompt string with Jinja.

        Args:
            messages: `[{"role": "user", "content": [{"type": "image"}, {"type": "text",
                "text": "..."}]}, ...]`; content may also be a plain string.
            add_generation_prompt: Append the assistant turn opener ("Assistant:"); off by
                default, as in transformers.
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
        images: Any = None,
        text: str | list[str] | None = None,
        videos: VideoInput | list[VideoInput] | None = None,
        *,
        return_tensors: str = "pt",
        add_special_tokens: bool = True,
        padding: bool | str | None = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        do_sample_frames: bool | None = None,
        fps: float | None = None,
        num_frames: int | None = None,
        image_seq_len: int | None = None,
        **image_kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Expands the placeholders, tokenises, and preprocesses the pixels, as transformers'
        `SmolVLMProcessor.__call__` (same argument names and order: `images, text, videos`).

        Args:
            images: Per prompt, its images in order (PIL images, or uint8 numpy arrays / torch
                tensors); a flat list is split by the prompts' `<image>` counts. Without `text`,
                only the pixels are returned.
            text: One prompt or a batch; each `<image>` / `<video>` takes the next image / video.
                (A string passed first, where transformers expects `images`, is taken as text.)
            videos: `Video`s, frame directories or video files, in prompt order (one call
                takes images or videos, not both).
            return_tensors: Only "pt".
            add_special_tokens: Run the tokenizer's post-processor (BOS templates).
            padding: True / "longest", "max_length" or False. vlkit's default is True (pad to
                the longest prompt); transformers' is False, and with return_tensors="pt" it
                then fails on prompts of different lengths, as vlkit does with padding=False or
                with a prompt longer than `max_length` without `truncation` (see
                `tokenization.TextOptions`).
            truncation: Cut rows to `max_length` (an error if that drops `<image>` tokens).
            max_length: Length for truncation and "max_length" padding.
            pad_to_multiple_of: Round the padded length up to a multiple of this.
            padding_side: "left" / "right"; defaults to the tokenizer's.
            return_attention_mask: False drops `attention_mask`.
            do_sample_frames: Sample frames at `fps` (at most `num_frames`); defaults to the
                checkpoint's setting (transformers: off).
            fps: Target sampling rate; defaults to `video_config.fps`.
            num_frames: Most frames sampled; defaults to `video_config.max_frames`.
            image_seq_len: `<image>` tokens per tile for this call (Idefics3's processor
                takes it); defaults to `self.image_seq_len`.
            **image_kwargs: Per-call image settings under transformers' names (`size`,
                `max_image_size`, `do_image_splitting`, `do_rescale`, `rescale_factor`,
                `image_mean`, ...); they apply to video frames too, except the tile settings.
                `images_kwargs` / `videos_kwargs` / `text_kwargs` dicts are accepted as well.

        Returns:
            `input_ids` and `attention_mask` `(B, L)` int64 (with text); with images,
            `pixel_values` `(B, N, 3, H, W)` float32 and `pixel_attention_mask` `(B, N, H, W)`
            int64, N the most views (tiles + global) of any prompt; with videos,
            `(V, T, 3, tile, tile)` and `(V, T, tile, tile)`, T the most frames of any video.
        """
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        if _is_text(images) and not _is_text(text):
            images, text = text, images  # vlkit's older order: processor(text, images)
        text_options = dict(
            add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
            max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side, return_attention_mask=return_attention_mask,
        )  # fmt: skip
        text_options.update(image_kwargs.pop("text_kwargs", None) or {})
        text_options.pop("return_tensors", None)
        video_kwargs = dict(do_sample_frames=do_sample_frames, fps=fps, num_frames=num_frames)
        video_kwargs.update(image_kwargs.pop("videos_kwargs", None) or {})
        image_kwargs.update(image_kwargs.pop("images_kwargs", None) or {})
        image_kwargs.pop("return_row_col_info", None)  # rows / cols never leave the processor
        if images is None and text is None and videos is None:
            raise ValueError("pass text, images or videos")
        if images is not None and videos is not None:
            raise ValueError("pass images or videos in one call, not both")
        prompts = None if text is None else ([text] if isinstance(text, str) else list(text))
        if prompts is not None and not all(isinstance(p, str) for p in prompts):
            raise ValueError("text must be a string or a list of strings")
        for token, given, name in ((self.image_token, images, "images"), (self.video_token, videos, "videos")):  # fmt: skip
            if given is None and prompts and any(token in p for p in prompts):
                raise ValueError(
                    f"the prompts hold {token} tokens in the text but no images/videos were "
                    f"passed ({name}=None)"
                )
        seq = image_seq_len or self.image_seq_len
        outputs: dict[str, torch.Tensor] = {}
        replacements: list[list[str]] = []
        if images is not None:
            outputs, replacements = self._process_images(images, prompts, image_kwargs, seq)
        elif videos is not None:
            outputs, replacements = self._process_videos(
                videos, prompts, video_kwargs, image_kwargs, seq
            )
        if prompts is None:
            return outputs
        token = self.image_token if images is not None else self.video_token
        expanded = [
            _replace_each(prompt, token, sample)
            for prompt, sample in zip(prompts, replacements or [[]] * len(prompts), strict=True)
        ]
        encoded = encode_prompts(
            self.tokenizer, expanded, TextOptions(**text_options),
            pad_token=self.special_tokens.get("pad_token"),
            default_padding_side=self.padding_side, truncation_side=self.truncation_side,
            model_max_length=self.model_max_length,
        )  # fmt: skip
        self._check_image_tokens(expanded, encoded["input_ids"])
        return {**encoded, **outputs}

    def _process_images(
        self, images: Any, prompts: list[str] | None, image_kwargs: dict[str, Any], seq: int
    ) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
        if prompts is None:
            nested = nest_images(images)
        else:
            nested = self._nest_images(images, [p.count(self.image_token) for p in prompts])
        out = self.image_processor(nested, return_row_col_info=True, **image_kwargs)
        rows, cols = out.pop("rows"), out.pop("cols")
        replacements = [
            [self._image_prompt(r, c, seq) for r, c in zip(sample_rows, sample_cols, strict=True)]
            for sample_rows, sample_cols in zip(rows, cols, strict=True)
        ]
        return out, replacements

    def _nest_images(self, images: Any, counts: list[int]) -> list[list[Any]]:
        if is_image(images):
            images = [images]
        images = list(images)
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

    def _image_prompt(self, rows: int, cols: int, seq: int) -> str:
        return image_prompt(rows, cols, seq, self.fake_token, self.image_token, self.global_token)

    def _process_videos(
        self,
        videos: VideoInput | list[VideoInput],
        prompts: list[str] | None,
        video_kwargs: dict[str, Any],
        image_kwargs: dict[str, Any],
        seq: int,
    ) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
        if self.video_config is None:
            raise CheckpointError(
                "this processor takes no videos: no 'video_sampling' in its video or image "
                "settings (processor_config.json / video_preprocessor_config.json / "
                "preprocessor_config.json)"
            )
        config = self.video_config
        videos = [videos] if isinstance(videos, Video | str | Path) else list(videos)
        if prompts is not None:
            found = [p.count(self.video_token) for p in prompts]
            if sum(found) != len(videos):
                raise ValueError(
                    f"the prompts hold {sum(found)} <video> tokens but {len(videos)} videos"
                )
        sample = video_kwargs.get("do_sample_frames")
        sample = config.do_sample_frames if sample is None else sample
        max_frames = video_kwargs.get("num_frames") or config.max_frames
        target_fps = video_kwargs.get("fps") or config.fps
        # The video processor's own tiles: transformers' resize reads `self.max_image_size`.
        frame_kwargs = {k: v for k, v in image_kwargs.items() if k not in _TILE_KWARGS}
        frame_config = (config.frame_config or self.image_config).with_overrides(**frame_kwargs)
        longest_edge = frame_config.longest_edge if "size" in frame_kwargs else config.longest_edge
        clips, prompts_text = [], []
        for video in videos:
            video, stamps, duration = sampled_video(video, sample, max_frames, target_fps)
            clips.append(preprocess_video(video.frames, longest_edge, frame_config))
            # Each video names its own frame count (transformers' replace_video_token).
            prompts_text.append(
                video_prompt(
                    len(stamps),
                    stamps,
                    duration,
                    self.image_seq_len,
                    fake_token=self.fake_token,
                    image_token=self.image_token,
                    global_token=self.global_token,
                )  # fmt: skip
            )
        pixel_values, pixel_mask = pad_images(clips)
        # video_processing_smolvlm.pad marks padding *frames* as valid pixels (it only slices
        # height and width); kept for parity. The model drops all-zero frames anyway.
        pixel_mask[:] = 1
        outputs = {"pixel_values": pixel_values, "pixel_attention_mask": pixel_mask}
        if prompts is None:
            return outputs, []
        queue = iter(prompts_text)
        per_prompt = [[next(queue) for _ in range(p.count(self.video_token))] for p in prompts]
        return outputs, per_prompt

    def _check_image_tokens(self, expanded: list[str], input_ids: torch.Tensor) -> None:
        # processing_utils._check_special_mm_tokens: truncation must not cut image tokens.
        if self.image_token_id is None:
            return
        in_ids = (input_ids == self.image_token_id).sum(dim=1).tolist()
        in_text = [prompt.count(self.image_token) for prompt in expanded]
        if in_ids != in_text:
            raise ValueError(
                f"{self.image_token} tokens per row: {in_ids} in input_ids but {in_text} in the "
                "text, likely cut by truncation: disable it or raise max_length"
            )

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


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list | tuple) and bool(value) and all(isinstance(v, str) for v in value)
    )


def _replace_each(prompt: str, token: str, replacements: list[str]) -> str:
    pieces = prompt.split(token)
    if len(pieces) - 1 != len(replacements):
        raise ValueError(f"{len(pieces) - 1} {token} tokens but {len(replacements)} inputs")
    return (
        "".join(piece + text for piece, text in zip(pieces, replacements, strict=False))
        + (pieces[-1])
    )
