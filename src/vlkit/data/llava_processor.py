"""`LlavaProcessor`: prompts and images -> the inputs of a LLaVA model, as transformers' does.

transformers' `models/llava/processing_llava.py` (with `ProcessorMixin.__call__`): each `<image>`
of the prompts, in reading order across the batch, becomes `image_seq_length` `<image>` tokens,
`(H // patch_size) * (W // patch_size) + num_additional_image_tokens`, minus one for
`vision_feature_select_strategy="default"` (LLaVA drops the CLS feature); the expanded prompts
are tokenised by the checkpoint's `tokenizer.json` (the `tokenizers` library, with transformers'
padding and truncation options: `vlkit.data.smolvlm.tokenization`) and the images preprocessed
by the image processor's transform (`ImageTransform`, bit-identical to transformers' default
`CLIPImageProcessor` / `SiglipImageProcessor`). The directory reader is
`vlkit.hub.hf_llava_processor.read_llava_processor` (preprocessor_config.json is a hub format).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Tokenizer

from vlkit.data.chat_template import render_chat_template
from vlkit.data.smolvlm.image_batch import is_image
from vlkit.data.smolvlm.tokenization import TextOptions, encode_prompts
from vlkit.data.transforms import ImageTransform

__all__ = ["LlavaProcessor"]

_TEXT_OPTIONS = set(TextOptions.__dataclass_fields__)


class LlavaProcessor:
    """Turns prompts with `<image>` placeholders into LLaVA inputs (`input_ids`,
    `attention_mask`, `pixel_values`).

    Args:
        tokenizer: The `tokenizers.Tokenizer` of `tokenizer.json`.
        transform: The image processor (eval-mode `ImageTransform` of preprocessor_config.json).
        patch_size: The vision tower's patch side.
        vision_feature_select_strategy: "default" (one token fewer per image) or "full".
        num_additional_image_tokens: Tokens the tower adds to the patches (1 for CLIP's CLS).
        image_token: The placeholder string.
        chat_template: The Jinja chat template, or None.
        special_tokens: `bos_token`, `eos_token`, `unk_token`, `pad_token` (strings), as set.
        padding_side, truncation_side, model_max_length: tokenizer_config.json's settings.

    Attributes:
        tokenizer_config: The tokenizer_config.json it was read from (written back on save).
    """

    tokenizer_config: dict[str, Any] | None = None

    def __init__(
        self,
        tokenizer: Tokenizer,
        transform: ImageTransform,
        patch_size: int,
        vision_feature_select_strategy: str = "default",
        num_additional_image_tokens: int = 0,
        image_token: str = "<image>",
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        model_max_length: int | None = None,
    ) -> None:
        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "vision_feature_select_strategy must be 'default' or 'full', "
                f"got {vision_feature_select_strategy!r}"
            )
        self.tokenizer = tokenizer
        self.transform = transform
        self.patch_size = int(patch_size)
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = int(num_additional_image_tokens)
        self.image_token = image_token
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_max_length = model_max_length
        self.image_token_id = tokenizer.token_to_id(image_token)
        if self.image_token_id is None:
            raise ValueError(f"the tokenizer has no {image_token!r} token")

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<image>` tokens one (height, width) image fills (processing_llava.py
        `replace_image_token`)."""
        count = (height // self.patch_size) * (width // self.patch_size)
        count += self.num_additional_image_tokens
        return count - int(self.vision_feature_select_strategy == "default")

    @property
    def stop_token_ids(self) -> list[int]:
        """The eos token's id, when the tokenizer has one."""
        eos = self.special_tokens.get("eos_token")
        token_id = self.tokenizer.token_to_id(eos) if eos else None
        return [] if token_id is None else [token_id]

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str | list[str]:
        """Renders a conversation (or a batch) to prompt text with the Jinja chat template, as
        transformers' `apply_chat_template(..., tokenize=False)`.

        Raises:
            ValueError: No chat template (neither passed nor in the checkpoint).
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError(
                "this processor has no chat template (chat_template.jinja, chat_template.json or "
                "tokenizer_config.json 'chat_template'): pass chat_template="
            )
        batched = bool(messages) and isinstance(messages[0], list | tuple)
        conversations = messages if batched else [messages]
        variables = {**self.special_tokens, **template_kwargs}
        rendered = render_chat_template(template, conversations, add_generation_prompt, variables)
        return rendered if batched else rendered[0]

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask` (B, L) and, with images, `pixel_values` (N, 3, H, W).

        Args:
            text: One prompt or a batch; each `<image>` takes the next image.
            images: One image, a list, or one list per prompt (flattened in order): PIL images,
                numpy arrays or tensors.
            **kwargs: transformers' text options (`TextOptions`: padding, truncation,
                max_length, padding_side, add_special_tokens, ...); `return_tensors` is
                accepted and ignored (tensors are always returned).

        Raises:
            ValueError: The `<image>` count differs from the number of images, an unknown
                keyword, or a truncation that cut an image's tokens.
        """
        kwargs.pop("return_tensors", None)
        unknown = sorted(set(kwargs) - _TEXT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown processor keyword(s) {unknown}")
        if text is None and images is None:
            raise ValueError(
                f"You need to provide at least one input to call {type(self).__name__}"
            )
        flat = _flat_images(images)
        out, counts = self.image_inputs(flat) if flat else ({}, [])
        if text is None:
            return out
        prompts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("`text` must be a string or list of strings.")
        found = sum(p.count(self.image_token) for p in prompts)
        if flat and found != len(flat):
            raise ValueError(
                f"The total number of {self.image_token} tokens in the prompts should be the same "
                f"as the number of images passed. Found total {found} {self.image_token} tokens "
                f"and {len(flat)} images."
            )
        if not flat and found:
            raise ValueError(
                f"Found {found} {self.image_token} tokens in the text but no images were passed."
            )
        expanded = _expand(prompts, self.image_token, counts)
        encoded = encode_prompts(
            self.tokenizer,
            expanded,
            TextOptions(**kwargs),
            pad_token=self.special_tokens.get("pad_token"),
            default_padding_side=self.padding_side,
            truncation_side=self.truncation_side,
            model_max_length=self.model_max_length,
        )
        placed = int((encoded["input_ids"] == self.image_token_id).sum())
        wanted = sum(e.count(self.image_token) for e in expanded)
        if placed != wanted:
            raise ValueError(
                f"Mismatch in `image` token count between text and `input_ids`. Got ids={placed} "
                f"and text={wanted}. Likely due to `truncation='max_length'`. Please disable "
                "truncation or increase `max_length`."
            )
        return {**encoded, **out}

    def image_inputs(self, images: list[Any]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The model's image inputs for the flattened images ({"pixel_values": (N, 3, H, W)})
        and the `<image>` placeholders each one fills (the hook `AnyResProcessor` overrides)."""
        pixel_values = self.transform.to_batch(images)  # (N, 3, H, W)
        height, width = pixel_values.shape[-2:]
        count = self.num_image_tokens(int(height), int(width))
        return {"pixel_values": pixel_values}, [count] * len(images)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of token ids (`tokenizers`' decoder)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in sequences]


def _flat_images(images: Any) -> list[Any]:
    """transformers' `make_flat_list_of_images`: one image, a list, or a list of lists."""
    if images is None:
        return []
    if is_image(images):
        return [images]
    flat: list[Any] = []
    for item in images:
        flat.extend([item] if is_image(item) else list(item))
    return flat


def _expand(prompts: list[str], token: str, counts: list[int]) -> list[str]:
    """Each `token` of the prompts, in order, repeated as many times as its image needs."""
    remaining = iter(counts)
    return [
        "".join(
            part if i == 0 else token * next(remaining) + part
            for i, part in enumerate(prompt.split(token))
        )
        for prompt in prompts
    ]
