"""SmolVLM's text side: the strings transformers' processor puts in place of `<image>` / `<video>`,
and its chat-template rendering (transformers' `models/smolvlm/processing_smolvlm.py`).

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

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from vlkit.data.chat_template import render_chat_template as chat_template_rendering

__all__ = [
    "FRAME_TIMESTAMP",
    "MEDIA_OUTTRO",
    "VIDEO_CHAT_TEMPLATE",
    "VIDEO_INTRO",
    "image_prompt",
    "number_to_words",
    "render_chat_template",
    "video_prompt",
]

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


def render_chat_template(
    chat_template: str,
    conversations: Sequence[Any],
    add_generation_prompt: bool,
    variables: dict[str, Any],
) -> list[str]:
    """Renders each conversation with a Jinja chat template, as transformers does
    (`vlkit.data.chat_template`, shared with the language-model tokenizers).

    Args:
        chat_template: The Jinja source.
        conversations: One list of `{"role", "content"}` messages per prompt.
        add_generation_prompt: Append the assistant turn opener.
        variables: Extra template variables (special tokens, user keywords).

    Returns:
        One prompt string per conversation.
    """
    return chat_template_rendering(chat_template, conversations, add_generation_prompt, variables)
