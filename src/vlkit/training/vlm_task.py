"""Generative VLM training: next-token captioning / VQA tasks for the one `Trainer`.

A batch holds images (B, 3, S, S) and text `input_ids` (B, L) with optional `labels` (B, L)
(-100 = not a target). The task prepends T image placeholder tokens to every row (T = tokens the
connector emits per image), so the model sees `[<image> x T] + text`; the placeholders get label
-100 too. The loss is the shifted next-token cross-entropy: logits at position t predict the
label at t + 1, over the positions whose label is not -100 (LLaVA, Liu et al. 2023, Sec. 4.1).

`build_small_vlm` assembles a `GenerativeVLM` from a vlkit CLIP image tower (its token output),
a LLaVA projector and a small `DecoderLM` over the CLIP vocabulary plus one reserved `<image>` id.
`answer_accuracy` greedy-decodes answers to dataset prompts and scores them by exact match.

The VLM trains in the one `Trainer`; its checkpoints hold the state dict (no CLIP config), and
resuming restores them into the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.fusion.projector import LlavaProjector
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.smolvlm import GenerativeVLM

__all__ = [
    "IGNORE_INDEX",
    "CaptionLMTask",
    "SmallVLM",
    "VQALMTask",
    "VisionTokens",
    "answer_accuracy",
    "build_small_vlm",
    "build_vlm_inputs",
    "generate_answers",
    "next_token_loss",
    "num_image_tokens",
    "tower_tokens",
]

IGNORE_INDEX = -100
TOKEN_SOURCES = ("final", "layer1", "layer2", "layer3", "layer4")


def tower_tokens(tower: nn.Module, images: torch.Tensor, source: str = "final") -> torch.Tensor:
    """(N, 3, S, S) images -> (N, T, Dv) tokens of an image tower.

    Args:
        tower: A vlkit image tower (`-> VisionOutput`).
        images: (N, 3, S, S).
        source: "final": the tower's output tokens (a ViT's class + patch tokens; a
            ModifiedResNet's last feature map, (S/32)^2 tokens, before the attention pool).
            "layerK" (ModifiedResNet only): the feature map after stage K, flattened row-major:
            (S/2^(K+1))^2 tokens of width 4 * width * 2^(K-1) ("layer4" equals "final").

    Raises:
        ValueError: An unknown source, or a stage source for a tower that is not a ResNet.
    """
    if source == "final":
        return tower(images).tokens
    from vlkit.models.resnet import ModifiedResNet

    if source not in TOKEN_SOURCES:
        raise ValueError(f"token source must be one of {TOKEN_SOURCES}, got {source!r}")
    if not isinstance(tower, ModifiedResNet):
        raise ValueError(f"token source {source!r} needs a ModifiedResNet, got {type(tower)}")
    x = images.to(tower.conv1.weight.dtype)
    x = F.relu(tower.bn1(tower.conv1(x)))
    x = F.relu(tower.bn2(tower.conv2(x)))
    x = tower.avgpool(F.relu(tower.bn3(tower.conv3(x))))
    for stage in (tower.layer1, tower.layer2, tower.layer3, tower.layer4)[: int(source[-1])]:
        x = stage(x)
    return x.flatten(2).transpose(1, 2)  # (N, H*W, C)


class VisionTokens(nn.Module):
    """Adapts a vlkit image tower (`-> VisionOutput`) to the (N, T, Dv) tokens a VLM splices.

    Args:
        tower: e.g. `vlkit.create_model("small-rn-64").vision`.
        source: Which tokens (`tower_tokens`): "final" or a ResNet stage ("layer3").
    """

    def __init__(self, tower: nn.Module, source: str = "final") -> None:
        super().__init__()
        self.tower = tower
        self.source = source

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) images -> (N, T, Dv) token features."""
        return tower_tokens(self.tower, images, self.source)


class SmallVLM(GenerativeVLM):
    """A `GenerativeVLM` that knows how many placeholder tokens one image fills.

    Args:
        vision, connector, decoder, image_token_id: As `GenerativeVLM`.
        num_image_tokens: Placeholders one image fills (T' of the connector's output).
    """

    def __init__(
        self,
        vision: nn.Module,
        connector: nn.Module,
        decoder: DecoderLM,
        image_token_id: int,
        num_image_tokens: int,
    ) -> None:
        super().__init__(vision, connector, decoder, image_token_id)
        self.num_image_tokens = int(num_image_tokens)


def build_small_vlm(
    vision_preset: str = "small-rn-64",
    connector: str = "mlp2x_gelu",
    decoder: DecoderConfig | None = None,
    vocab_size: int | None = None,
) -> SmallVLM:
    """A small randomly initialised VLM: CLIP image tower tokens -> LLaVA projector -> DecoderLM.

    Args:
        vision_preset: A vlkit preset whose image tower provides the tokens ("small-rn-64":
            4 tokens of width 512; ViT presets such as "tiny" / "small-64": patch + class tokens).
        connector: LLaVA projector type ("linear", "mlp2x_gelu", ...).
        decoder: Decoder shape; its `vocab_size` is replaced by `vocab_size + 1`. Default: 2
            layers, width 128, 4 heads, tied embeddings.
        vocab_size: Text vocabulary size; default the CLIP tokenizer's (49,408). The id
            `vocab_size` is reserved as `<image>`, so the decoder has `vocab_size + 1` rows.

    Returns:
        The model, with `image_token_id == vocab_size` and `num_image_tokens` set.
    """
    from dataclasses import replace

    import vlkit

    clip = vlkit.create_model(vision_preset)
    size = clip.config.preprocess.image_size
    vision = VisionTokens(clip.vision)
    if vocab_size is None:
        vocab_size = vlkit.get_tokenizer("clip").vocab_size
    if decoder is None:
        decoder = DecoderConfig(
            hidden_size=128,
            intermediate_size=512,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    decoder = replace(decoder, vocab_size=vocab_size + 1)
    with torch.no_grad():  # eval: a dry run must not touch BatchNorm running statistics
        was_training = vision.training
        vision.eval()
        tokens = vision(torch.randn(1, 3, size, size))  # (1, T, Dv)
        vision.train(was_training)
        projector = LlavaProjector(tokens.shape[-1], decoder.hidden_size, connector)
        count = projector(tokens).shape[1]  # T'
    return SmallVLM(vision, projector, DecoderLM(decoder), vocab_size, count)


def num_image_tokens(model: nn.Module, images: torch.Tensor | None = None) -> int:
    """Placeholders one image fills: `model.num_image_tokens`, else measured on `images[:1]`.

    Raises:
        ValueError: The model has no `num_image_tokens` and no images were given.
    """
    count = getattr(model, "num_image_tokens", None)
    if count is not None:
        return int(count)
    if images is None:
        raise ValueError("the model has no num_image_tokens attribute: pass images to measure")
    with torch.no_grad():
        return int(model.encode_images(images[:1]).shape[0])


def build_vlm_inputs(
    input_ids: torch.Tensor,
    labels: torch.Tensor | None,
    image_tokens: int,
    image_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Prepends `image_tokens` `<image>` placeholders to every row (one image per row).

    Args:
        input_ids: (B, L) text ids.
        labels: (B, L) targets (-100 = ignored), or None.
        image_tokens: T, placeholders per image.
        image_token_id: The `<image>` id.
        attention_mask: (B, L) text padding mask, or None.

    Returns:
        (B, T + L) ids, (B, T + L) labels with -100 on the T image positions (or None), and
        (B, T + L) attention mask with ones on the image positions (or None).
    """
    b = input_ids.shape[0]
    image = input_ids.new_full((b, image_tokens), image_token_id)  # (B, T)
    ids = torch.cat([image, input_ids], dim=1)  # (B, T + L)
    if labels is not None:
        labels = torch.cat([torch.full_like(image, IGNORE_INDEX), labels], dim=1)  # (B, T + L)
    if attention_mask is not None:
        attention_mask = torch.cat([torch.ones_like(image), attention_mask.long()], dim=1)
    return ids, labels, attention_mask


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits at t against labels at t + 1, ignoring -100.

    Args:
        logits: (B, L, V).
        labels: (B, L) targets, -100 where not a target.

    Returns:
        Scalar loss (mean over target tokens).
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(L-1), V)
    targets = labels[:, 1:].reshape(-1)  # (B*(L-1),)
    return F.cross_entropy(shifted.float(), targets, ignore_index=IGNORE_INDEX)


class CaptionLMTask:
    """Image-conditioned next-token prediction of the whole text (captioning).

    The batch needs `images` (B, 3, S, S) and `input_ids` (B, L); `labels` (B, L) are used when
    present, otherwise every text token that is not `pad_token_id` is a target.

    Args:
        pad_token_id: Padding id of `input_ids` (0 for the CLIP tokenizer).
    """

    requires_labels = False

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = pad_token_id

    def labels(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, L) text labels of a batch."""
        if "labels" in batch:
            return batch["labels"]
        if self.requires_labels:
            raise KeyError(f"{type(self).__name__} needs batch['labels']")
        ids = batch["input_ids"]
        return ids.masked_fill(ids == self.pad_token_id, IGNORE_INDEX)

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """Forward, loss, `backward(loss)`; returns {"loss"} (detached)."""
        images = batch["images"]  # (B, 3, S, S)
        ids, labels, _ = build_vlm_inputs(
            batch["input_ids"], self.labels(batch), num_image_tokens(model, images),
            model.image_token_id,
        )  # fmt: skip
        # Right padding sits after every real token, so plain causal attention never lets a
        # target see padding: no attention mask is needed (and SDPA keeps its fast path).
        logits = model(ids, pixel_values=images[:, None]).logits  # (B, T + L, V)
        loss = next_token_loss(logits, labels)
        backward(loss)
        return {"loss": loss.detach()}


class VQALMTask(CaptionLMTask):
    """Image + question -> answer: only the answer tokens (labels != -100) are targets.

    The batch needs `images`, `input_ids` and `labels` (as `EasyVQAQuestions` yields).
    """

    requires_labels = True


@torch.no_grad()
def generate_answers(
    model: GenerativeVLM,
    images: torch.Tensor,
    prompts: Sequence[torch.Tensor],
    tokenizer: Any,
    max_new_tokens: int = 4,
    image_tokens: int | None = None,
) -> list[str]:
    """Greedy answers to left-padded `[<image> x T] + prompt` inputs.

    Args:
        model: The VLM.
        images: (B, 3, S, S).
        prompts: B unpadded (P_i,) prompt id tensors.
        tokenizer: Decodes ids (`decode`, `eot_token_id`).
        max_new_tokens: Generation budget per answer.
        image_tokens: Placeholders per image; default `num_image_tokens(model, images)`.

    Returns:
        B decoded answers (cut at end-of-text).
    """
    t = image_tokens if image_tokens is not None else num_image_tokens(model, images)
    longest = max(len(p) for p in prompts)
    b = len(prompts)
    ids = torch.zeros((b, longest), dtype=torch.long)  # (B, P) left padded
    mask = torch.zeros((b, longest), dtype=torch.long)  # (B, P)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = prompt
        mask[row, longest - len(prompt) :] = 1
    # Placeholders before the padding would leave a gap; put them right after it instead.
    full = torch.zeros((b, t + longest), dtype=torch.long)  # (B, T + P)
    full_mask = torch.zeros_like(full)
    for row, prompt in enumerate(prompts):
        start = longest - len(prompt)
        full[row, start : start + t] = model.image_token_id
        full[row, start + t :] = prompt
        full_mask[row, start:] = 1
    device = next(model.parameters()).device
    out = model.generate(
        full.to(device),
        pixel_values=images[:, None].to(device),
        attention_mask=full_mask.to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eot_token_id,
    )  # (B, T + P + N)
    return [tokenizer.decode(row[t + longest :].cpu()) for row in out]


def answer_accuracy(
    model: GenerativeVLM,
    dataset: Any,
    indices: Sequence[int] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 4,
) -> tuple[float, list[str]]:
    """Exact-match accuracy of greedy answers on dataset items (e.g. `EasyVQAQuestions`).

    Args:
        model: The VLM (put in eval mode for the duration, then restored).
        dataset: Has `load_image(i)`, `prompt_ids(i)`, `answer(i)` and `tokenizer`.
        indices: Items to score; default all.
        batch_size: Items generated together.
        max_new_tokens: Generation budget per answer.

    Returns:
        (accuracy in [0, 1] from `vlkit.evaluation.exact_match_accuracy`, the predictions).
    """
    from vlkit.evaluation import exact_match_accuracy

    indices = list(range(len(dataset))) if indices is None else list(indices)
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            images = torch.stack([dataset.load_image(i) for i in chunk])  # (b, 3, S, S)
            prompts = [dataset.prompt_ids(i) for i in chunk]
            predictions += generate_answers(
                model, images, prompts, dataset.tokenizer, max_new_tokens
            )
    finally:
        model.train(was_training)
    answers = [dataset.answer(i) for i in indices]
    return exact_match_accuracy(predictions, answers), predictions
