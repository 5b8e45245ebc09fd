"""`SmolVLMProcessor`: prompts, images and videos -> the inputs of a SmolVLM / SmolVLM2 model.

Reproduces transformers' `models/smolvlm/processing_smolvlm.py` exactly (token ids, attention
mask, pixel values and pixel mask; pixels match its PIL backend, see `smolvlm_image_processor`)
from the files of a Hugging Face processor directory, with `tokenizers`, Pillow and `jinja2`.

Each `<image>` in a prompt becomes, for an image split into `rows x cols` tiles,

    <fake_token_around_image><row_1_col_1><image>*seq ... <fake_token_around_image><row_1_col_C><image>*seq\\n
    ...  (one line per row)
    \\n<fake_token_around_image><global-img><image>*seq<fake_token_around_image>

and for an unsplit image only the last line, without its leading newline (`seq` is
`image_seq_len`, the number of vision tokens per tile after pixel shuffle). Each `<video>`
becomes an intro naming the frame count in words and the duration, then one
`\\nFrame from MM:SS:` plus an unsplit-image block per frame, then `\\n\\n`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
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
from vlkit.errors import CheckpointError

__all__ = ["SmolVLMProcessor", "Video", "image_prompt", "number_to_words", "video_prompt"]

# processing_smolvlm.py: DEFAULT_VIDEO_INTRO, FRAME_TIMESTAMP_MESSAGE, DEFAULT_MEDIA_OUTTRO.
VIDEO_INTRO = (
    "You are provided the following series of {frame_count} frames from a {video_duration} "
    "[H:MM:SS] video.\n"
)
FRAME_TIMESTAMP = "\nFrame from {timestamp}:"
MEDIA_OUTTRO = "\n\n"

# processing_smolvlm.py's DEFAULT_CHAT_TEMPLATE: transformers renders any conversation holding a
# video with this template instead of the checkpoint's (whose video handling predates #38105).
VIDEO_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}"
    "{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
]  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# Boolean image settings, defaulting (when absent) to SmolVLMImageProcessor's class attributes.
_IMAGE_FLAGS = ("do_resize", "do_image_splitting", "do_rescale", "do_normalize", "do_pad")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_to_words(n: int) -> str:
    """English cardinal as `num2words(n)` writes it: 64 -> "sixty-four", 101 -> "one hundred and
    one", 1100 -> "one thousand, one hundred" (transformers names the video frame count so)."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            words = f"{number_to_words(head)} {name}"
            if not rest:
                return words
            # num2words joins a sub-hundred remainder with "and", a larger one with a comma.
            joiner = " and " if rest < 100 else ", "
            return words + joiner + number_to_words(rest)
    raise AssertionError("unreachable")


def image_prompt(
    rows: int,
    cols: int,
    image_seq_len: int,
    fake_token: str = "<fake_token_around_image>",
    image_token: str = "<image>",
    global_token: str = "<global-img>",
) -> str:
    """The text that replaces one `<image>`: `rows x cols` tile blocks then the global block.

    `rows == cols == 0` means unsplit: only the global block (`get_image_prompt_string`).
    """
    global_block = f"{fake_token}{global_token}{image_token * image_seq_len}{fake_token}"
    if rows == 0 and cols == 0:
        return global_block
    tile = image_token * image_seq_len
    lines = [
        "".join(f"{fake_token}<row_{r + 1}_col_{c + 1}>{tile}" for c in range(cols)) + "\n"
        for r in range(rows)
    ]
    return "".join(lines) + "\n" + global_block


def video_prompt(
    num_frames: int, timestamps: Sequence[float], duration: int, image_seq_len: int, **tokens: str
) -> str:
    """The text that replaces one `<video>` (`SmolVLMProcessor.replace_video_token`).

    Args:
        num_frames: Frame count named in the intro, in words.
        timestamps: Seconds of each frame; one `Frame from MM:SS:` block each.
        duration: Whole seconds, written `H:MM:SS`.
        image_seq_len: `<image>` tokens per frame.
        **tokens: `fake_token`, `image_token`, `global_token` overrides for `image_prompt`.
    """
    duration_text = str(timedelta(seconds=int(duration)))
    text = VIDEO_INTRO.format(frame_count=number_to_words(num_frames), video_duration=duration_text)
    frame_block = image_prompt(0, 0, image_seq_len, **tokens)
    for second in timestamps:
        minutes, seconds = int(second // 60), int(second % 60)
        text += FRAME_TIMESTAMP.format(timestamp=f"{minutes:02d}:{seconds:02d}") + frame_block
    return text + MEDIA_OUTTRO


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error


def _token_text(value: Any) -> str | None:
    # Special tokens are stored either as plain strings or as AddedToken dicts {"content": ...}.
    return value.get("content") if isinstance(value, dict) else value


def _require(config: dict[str, Any], path: Path, *keys: str) -> Any:
    value: Any = config
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise CheckpointError(f"{path}: missing key {'.'.join(keys[: depth + 1])!r}")
        value = value[key]
    return value


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
        """Reads a Hugging Face SmolVLM processor directory.

        Needs `tokenizer.json`; `preprocessor_config.json` with `size.longest_edge`,
        `max_image_size.longest_edge`, `image_mean`, `image_std` (other image keys default as in
        transformers); `image_seq_len` in `processor_config.json` (or `preprocessor_config.json`).
        Special tokens come from `tokenizer_config.json` / `special_tokens_map.json`; the chat
        template from `chat_template.jinja`, `chat_template.json` or `tokenizer_config.json`.

        Raises:
            CheckpointError: A file or key is missing, naming which.
        """
        root = Path(directory)
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a directory")
        tokenizer_path = root / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise CheckpointError(
                f"{root}: missing tokenizer.json (SmolVLM needs a fast tokenizer)"
            )
        tokenizer = Tokenizer.from_file(str(tokenizer_path))

        tokenizer_config: dict[str, Any] = {}
        special_tokens: dict[str, str] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (root / name).is_file():
                config = _read_json(root / name)
                tokenizer_config.update(config if name == "tokenizer_config.json" else {})
                for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                    if _token_text(config.get(key)) is not None:
                        special_tokens[key] = _token_text(config[key])

        image_path = root / "preprocessor_config.json"
        if not image_path.is_file():
            raise CheckpointError(f"{root}: missing preprocessor_config.json (image settings)")
        image = _read_json(image_path)
        defaults = SmolVLMImageConfig(0, 0, (0.0,) * 3, (0.0,) * 3)
        image_config = SmolVLMImageConfig(
            longest_edge=int(_require(image, image_path, "size", "longest_edge")),
            tile_size=int(_require(image, image_path, "max_image_size", "longest_edge")),
            image_mean=tuple(_require(image, image_path, "image_mean")),
            image_std=tuple(_require(image, image_path, "image_std")),
            rescale_factor=float(image.get("rescale_factor", defaults.rescale_factor)),
            resample=int(image.get("resample", defaults.resample)),
            **{key: bool(image.get(key, getattr(defaults, key))) for key in _IMAGE_FLAGS},
        )
        video_config = cls._video_config(root, image)

        processor_path = root / "processor_config.json"
        processor = _read_json(processor_path) if processor_path.is_file() else {}
        image_seq_len = processor.get("image_seq_len", image.get("image_seq_len"))
        if image_seq_len is None:
            raise CheckpointError(f"{processor_path}: missing key 'image_seq_len'")

        return cls(
            tokenizer=tokenizer,
            image_config=image_config,
            image_seq_len=int(image_seq_len),
            video_config=video_config,
            chat_template=cls._chat_template(root, processor, tokenizer_config),
            special_tokens=special_tokens,
            padding_side=tokenizer_config.get("padding_side", "right"),
        )

    @staticmethod
    def _video_config(root: Path, image: dict[str, Any]) -> SmolVLMVideoConfig | None:
        # SmolVLM2 keeps `video_sampling` in preprocessor_config.json; newer saves may add a
        # video_preprocessor_config.json, which wins (as transformers' AutoVideoProcessor).
        video_path = root / "video_preprocessor_config.json"
        video = _read_json(video_path) if video_path.is_file() else image
        sampling = video.get("video_sampling")
        if sampling is None:
            return None
        path = video_path if video is not image else root / "preprocessor_config.json"
        # SmolVLMVideoProcessor.__init__ overwrites `video_sampling.video_size` with `size` when
        # the config has both, so frames are first resized like images are; mirrored here.
        size = video.get("size", sampling.get("video_size"))
        return SmolVLMVideoConfig(
            longest_edge=int(_require({"size": size}, path, "size", "longest_edge")),
            max_frames=int(_require(sampling, path, "max_frames")),
            fps=float(_require(sampling, path, "fps")),
            do_sample_frames=bool(video.get("do_sample_frames", False)),
        )

    @staticmethod
    def _chat_template(
        root: Path, processor: dict[str, Any], tokenizer_config: dict[str, Any]
    ) -> str | None:
        # transformers' precedence: chat_template.jinja, chat_template.json, then the configs.
        if (root / "chat_template.jinja").is_file():
            return (root / "chat_template.jinja").read_text()
        if (root / "chat_template.json").is_file():
            path = root / "chat_template.json"
            return _require(_read_json(path), path, "chat_template")
        return processor.get("chat_template") or tokenizer_config.get("chat_template")

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
        # transformers' `_compile_jinja_template` environment (chat_template_utils.py).
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_template_error
        template = environment.from_string(chat_template)
        variables = {**self.special_tokens, **template_kwargs}
        rendered = [
            template.render(
                messages=conversation, add_generation_prompt=add_generation_prompt, **variables
            )
            for conversation in conversations
        ]
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


def _tojson(value: Any, indent: int | None = None) -> str:
    # transformers' `tojson` filter: no HTML escaping, unlike Jinja's built-in one.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _raise_template_error(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)
