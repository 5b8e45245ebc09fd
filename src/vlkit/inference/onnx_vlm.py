"""`OnnxVLM`: a SmolVLM / Idefics3 / LLaVA ONNX export, run with onnxruntime alone (no torch).

Reads the directory `vlkit export --format onnx` writes, the layout of the onnx-community
exports (e.g. onnx-community/SmolVLM-256M-Instruct; see `smolvlm_onnx_graphs.py` for the
graphs' inputs and outputs):

    DIR/config.json, generation_config.json, tokenizer.json, preprocessor_config.json, ...
    DIR/onnx/vision_encoder.onnx        pixels -> (I, T, D) image features after the connector
    DIR/onnx/embed_tokens.onnx          (B, L) ids -> (B, L, D) embeddings
    DIR/onnx/decoder_model_merged.onnx  embeddings + past keys/values -> logits + present
    DIR/onnx/*_int8.onnx, *_q4.onnx     quantized variants (onnx-community's suffixes)

Generation is `GenerativeVLM.generate` step for step (`vlkit.models.decoder.generation`,
itself transformers' `GenerationMixin`): the image features replace the embeddings of the
`<image>` tokens in order (`GenerativeVLM.embed`); the prompt's positions are
`cumsum(attention_mask) - 1` (0 at left padding) and each new token takes its row's last
position + 1; the mask grows by a 1 per step; a row that emitted a stop token is finished and
gets the pad token; generation ends when every row is finished or after `max_new_tokens`.
So greedy tokens equal the torch model's and transformers' (tests/test_onnx_vlm_generation.py).

onnxruntime is imported only when a session opens: it is the `export` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlkit.data.llava_processor import LlavaProcessor
from vlkit.data.smolvlm.processor import SmolVLMProcessor
from vlkit.hub.hf_config_files import generation_default, read_json_object
from vlkit.hub.hf_llava_config import is_llava_directory
from vlkit.hub.hf_llava_processor import read_llava_processor
from vlkit.inference.onnx_runtime import onnx_session
from vlkit.inference.onnx_vlm_sampling import Sampling, next_tokens

__all__ = ["ONNX_PARTS", "ONNX_VARIANTS", "OnnxVLM", "is_onnx_vlm_directory", "onnx_vlm_files"]

ONNX_PARTS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
# Variant -> file-name suffix, as in the onnx-community repositories (`decoder_model_merged_q4.onnx`).
ONNX_VARIANTS = {"fp32": "", "int8": "_int8", "q4": "_q4"}


def is_onnx_vlm_directory(directory: str | Path) -> bool:
    """Whether `directory` is a VLM ONNX export: it has `onnx/decoder_model_merged.onnx`."""
    return (Path(directory) / "onnx" / "decoder_model_merged.onnx").is_file()


def onnx_vlm_files(directory: str | Path, variant: str = "fp32") -> dict[str, Path]:
    """The three graph files of `variant`: each part's `{part}{suffix}.onnx`, or its fp32 file
    when the export has no quantized file of that part (an exporter may leave the small
    `embed_tokens` unquantized).

    Raises:
        ValueError: An unknown variant.
        FileNotFoundError: The export lacks the variant's decoder, or a part altogether (named).
    """
    if variant not in ONNX_VARIANTS:
        raise ValueError(f"onnx variant {variant!r}: one of {', '.join(ONNX_VARIANTS)}")
    folder = Path(directory) / "onnx"
    suffix = ONNX_VARIANTS[variant]
    decoder = folder / f"decoder_model_merged{suffix}.onnx"
    if not decoder.is_file():
        written = sorted(v for v, s in ONNX_VARIANTS.items() if (folder / f"decoder_model_merged{s}.onnx").is_file())  # fmt: skip
        raise FileNotFoundError(
            f"{decoder}: no such file (this export has the variants: {', '.join(written) or 'none'}; "
            "write others with vlkit export --quantize)"
        )
    files = {}
    for part in ONNX_PARTS:
        path = folder / f"{part}{suffix}.onnx"
        files[part] = path if path.is_file() else folder / f"{part}.onnx"
        if not files[part].is_file():
            raise FileNotFoundError(f"{files[part]}: no such file (an incomplete ONNX export)")
    return files


class OnnxVLM:
    """The three onnxruntime sessions of an export, its processor and its generation defaults.

    Arrays in and out are numpy: `input_ids` / `attention_mask` int64 (B, L), `pixel_values`
    float32 (B, M, 3, H, W), `pixel_attention_mask` (B, M, H, W) as the processor returns them
    (torch tensors are accepted and converted).

    Args:
        sessions: onnxruntime sessions by part name (`ONNX_PARTS`).
        processor: The directory's `SmolVLMProcessor` (a LLaVA export: its `LlavaProcessor`).
        config: The directory's `config.json`.
        eos_token_id: Default stop token(s) (generation_config.json, as transformers reads it).
        pad_token_id: Default filler of finished rows (None: the first stop token).
        variant: Which files run ("fp32", "int8", "q4").
    """

    def __init__(
        self,
        sessions: dict[str, Any],
        processor: SmolVLMProcessor | LlavaProcessor,
        config: dict[str, Any],
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        variant: str = "fp32",
    ) -> None:
        self.sessions = sessions
        self.processor = processor
        self.config = config
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.variant = variant
        image_token = config.get("image_token_id", config.get("image_token_index"))  # LLaVA's key
        self.image_token_id = int(processor.image_token_id if image_token is None else image_token)
        decoder = sessions["decoder_model_merged"]
        inputs = {i.name: i for i in decoder.get_inputs()}
        self.past_names = [name for name in inputs if name.startswith("past_key_values.")]
        self.present_names = [o.name for o in decoder.get_outputs() if o.name.startswith("present")]
        text = config.get("text_config") or {}
        heads = int(text.get("num_attention_heads", 1))
        past = inputs[self.past_names[0]].shape if self.past_names else []
        self.num_kv_heads = _int_or(past, 1, text.get("num_key_value_heads", heads))
        self.head_dim = _int_or(past, 3, text.get("head_dim") or text["hidden_size"] // heads)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        variant: str = "fp32",
        num_threads: int | None = None,
        providers: list[str] | None = None,
    ) -> OnnxVLM:
        """Opens an export directory (`is_onnx_vlm_directory`).

        Args:
            variant: "fp32", "int8" or "q4": which files run (`onnx_vlm_files`).
            num_threads: onnxruntime intra-op threads; None: onnxruntime's default.
            providers: onnxruntime execution providers; None: CPU.

        Raises:
            FileNotFoundError: A graph file is missing (named).
            ValueError: An unknown variant; vlkit.errors.CheckpointError for a broken
                config or processor file.
            ImportError: onnxruntime is not installed (the `export` extra).
        """
        directory = Path(directory)
        files = onnx_vlm_files(directory, variant)
        config = read_json_object(directory / "config.json")
        if is_llava_directory(directory):  # `llava_onnx_export`: LLaVA's processor and template
            processor: SmolVLMProcessor | LlavaProcessor = read_llava_processor(directory)
        else:
            processor = SmolVLMProcessor.from_pretrained(directory)
        try:
            import onnxruntime  # noqa: F401  (the optional extra, checked before any work)
        except ImportError:
            raise ImportError(
                f"{directory}: running an ONNX export needs onnxruntime "
                "(pip install 'vlkit[export]')"
            ) from None
        sessions = {
            part: onnx_session(path, providers, num_threads) for part, path in files.items()
        }
        eos = generation_default(directory, config, "eos_token_id")
        pad = generation_default(directory, config, "pad_token_id")
        return cls(sessions, processor, config, eos, pad, variant)

    # ----------------------------------------------------------------------------------------
    # The three graphs

    def image_features(self, pixel_values: Any, pixel_attention_mask: Any = None) -> np.ndarray:
        """(B, M, 3, H, W) padded images -> (I, T, D) features of the I real (not all-zero)
        images, in (batch, image) order. A LLaVA vision graph takes no pixel mask: (N, 3, H, W)
        images -> (N, T, D)."""
        pixels = _numpy(pixel_values).astype(np.float32)
        session = self.sessions["vision_encoder"]
        declared = {i.name: i.shape for i in session.get_inputs()}
        _check_image_size(pixels.shape, declared.get("pixel_values", []))
        if "pixel_attention_mask" not in declared:
            (features,) = session.run(
                None, {"pixel_values": pixels.reshape(-1, *pixels.shape[-3:])}
            )
            return features
        if pixels.ndim == 4:  # (N, 3, H, W): one image per row
            pixels = pixels[:, None]
        if pixel_attention_mask is None:
            mask = np.ones((*pixels.shape[:2], *pixels.shape[3:]), dtype=bool)
        else:
            mask = (
                _numpy(pixel_attention_mask)
                .astype(bool)
                .reshape(*pixels.shape[:2], *pixels.shape[3:])
            )
        (features,) = session.run(None, {"pixel_values": pixels, "pixel_attention_mask": mask})
        return features

    def embed(
        self, input_ids: Any, pixel_values: Any = None, pixel_attention_mask: Any = None
    ) -> np.ndarray:
        """(B, L) ids -> (B, L, D) embeddings with the image features at the `<image>` tokens
        (`GenerativeVLM.embed`: row-major order, one feature vector per placeholder).

        Raises:
            ValueError: The number of `<image>` tokens differs from the image features.
        """
        ids = _numpy(input_ids).astype(np.int64)
        (embeds,) = self.sessions["embed_tokens"].run(None, {"input_ids": ids})
        if pixel_values is None:
            return embeds
        features = self.image_features(pixel_values, pixel_attention_mask)
        features = features.reshape(-1, features.shape[-1])  # (I*T, D)
        slots = ids == self.image_token_id  # (B, L)
        if int(slots.sum()) != len(features):
            raise ValueError(
                f"image features and image tokens do not match: {int(slots.sum())} <image> "
                f"tokens, {len(features)} feature vectors"
            )
        embeds[slots] = features.astype(embeds.dtype)  # boolean indexing is row-major
        return embeds

    def decode_step(
        self,
        inputs_embeds: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One merged-decoder call: (B, L, V) logits and the present keys/values."""
        feed = {
            "inputs_embeds": inputs_embeds.astype(np.float32, copy=False),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            **dict(zip(self.past_names, past, strict=True)),
        }
        logits, *present = self.sessions["decoder_model_merged"].run(
            ["logits", *self.present_names], feed
        )
        return logits, present

    # ----------------------------------------------------------------------------------------
    # Generation

    def steps(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        pixel_values: Any = None,
        pixel_attention_mask: Any = None,
        *,
        max_new_tokens: int = 20,
        sampling: Sampling | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ) -> Iterator[np.ndarray]:
        """The (B,) int64 new tokens of each step, as they are decided (see the module
        docstring for the rules); `generate` collects them, `stream` decodes them.

        Args:
            input_ids: (B, P) prompt ids, left-padded for a batch.
            attention_mask: (B, P) 1 = real token; None: all ones.
            pixel_values, pixel_attention_mask: The prompt's images (see `image_features`).
            max_new_tokens: Most steps.
            sampling: Greedy (None or `Sampling()`) or sampling options.
            eos_token_id: Stop token(s); None: the export's default; [] none.
            pad_token_id: Filler of finished rows; None: the export's, else the first stop token.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        sampling = sampling or Sampling()
        generator = sampling.generator() if sampling.do_sample else None
        ids = _numpy(input_ids).astype(np.int64)
        b = ids.shape[0]
        mask = np.ones_like(ids) if attention_mask is None else _numpy(attention_mask)
        mask = mask.astype(np.int64)
        stop = _stop_ids(self.eos_token_id if eos_token_id is None else eos_token_id)
        pad = pad_token_id if pad_token_id is not None else self.pad_token_id
        pad = pad if pad is not None else (int(stop[0]) if len(stop) else 0)
        # transformers' prompt positions: cumsum(mask) - 1, 0 at the left padding.
        positions = np.where(mask == 0, 0, np.cumsum(mask, axis=1) - 1)
        past = [np.zeros((b, self.num_kv_heads, 0, self.head_dim), np.float32)] * len(
            self.past_names
        )
        embeds = self.embed(ids, pixel_values, pixel_attention_mask)
        logits, past = self.decode_step(embeds, mask, positions, past)
        position = positions[:, -1:]  # (B, 1); each new token adds 1
        unfinished = np.ones(b, dtype=bool)
        for step in range(max_new_tokens):
            tokens = next_tokens(logits[:, -1].astype(np.float32), sampling, generator)  # (B,)
            tokens = np.where(unfinished, tokens, pad)
            yield tokens
            unfinished &= ~np.isin(tokens, stop)
            if not unfinished.any() or step == max_new_tokens - 1:
                return
            position = position + 1
            mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
            (embeds,) = self.sessions["embed_tokens"].run(None, {"input_ids": tokens[:, None]})
            logits, past = self.decode_step(embeds, mask, position, past)

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        pixel_values: Any = None,
        pixel_attention_mask: Any = None,
        *,
        max_new_tokens: int = 20,
        sampling: Sampling | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        streamer: Callable[[np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """(B, P + N) int64 prompt plus new tokens, as `GenerativeVLM.generate` returns them.

        Args: as `steps`; `streamer` is called with each step's (B,) tokens (a `TextStreamer`
            takes them too).
        """
        ids = _numpy(input_ids).astype(np.int64)
        new = []
        for tokens in self.steps(
            ids, attention_mask, pixel_values, pixel_attention_mask,
            max_new_tokens=max_new_tokens, sampling=sampling,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        ):  # fmt: skip
            new.append(tokens)
            if streamer is not None:
                streamer(tokens)
        return np.concatenate([ids, np.stack(new, axis=1)], axis=1)

    def stream(self, input_ids: Any, *args: Any, **kwargs: Any) -> Iterator[str]:
        """The answer of one prompt (batch 1) as text pieces while it is generated: the text
        of all tokens so far minus what was already given, held back while it ends in an
        incomplete character (as `TextStreamer`); special tokens are dropped. Arguments as
        `steps`."""
        new: list[int] = []
        given = ""
        for tokens in self.steps(input_ids, *args, **kwargs):
            if len(tokens) != 1:
                raise ValueError(f"stream takes one prompt, not a batch of {len(tokens)}")
            new.append(int(tokens[0]))
            text = self.decode(new)
            if text.startswith(given) and len(text) > len(given) and not text.endswith("\ufffd"):
                yield text[len(given) :]
                given = text
        text = self.decode(new)
        if text.startswith(given) and len(text) > len(given):
            yield text[len(given) :]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids, special tokens dropped."""
        return self.processor.decode([int(i) for i in ids], skip_special_tokens=True)


def _numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU) torch tensor, without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _check_image_size(pixels: Sequence[int], expected: Sequence[Any]) -> None:
    """The vision graph fixes the image side it was exported at; a processor whose config gives
    another size (an edited preprocessor_config.json) would otherwise fail inside onnxruntime.

    Raises:
        ValueError: The pixels' (H, W) differ from the graph's, naming both.
    """
    want = tuple(expected[-2:])
    if len(want) == 2 and all(isinstance(v, int) for v in want) and tuple(pixels[-2:]) != want:
        raise ValueError(
            f"pixel_values: images of {pixels[-2]}x{pixels[-1]} pixels, but the export's "
            f"vision_encoder takes {want[0]}x{want[1]}; the directory's preprocessor_config.json "
            "does not match its onnx files"
        )


def _stop_ids(eos_token_id: int | Sequence[int] | None) -> np.ndarray:
    """(S,) stop tokens; empty for None or [] (generation then runs to max_new_tokens)."""
    if eos_token_id is None:
        return np.zeros(0, dtype=np.int64)
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return np.asarray(ids, dtype=np.int64)


def _int_or(shape: Sequence[Any], axis: int, default: Any) -> int:
    """`shape[axis]` when the graph fixes it, else `default` (from config.json)."""
    value = shape[axis] if len(shape) > axis else None
    return value if isinstance(value, int) else int(default)
