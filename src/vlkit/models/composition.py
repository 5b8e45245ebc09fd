"""The named parts of a composed VLM, which of them train, and the record a checkpoint keeps.

`vlkit.compose_vlm` (`vlkit.hub.compose`) builds a fusion VLM from a pretrained vision tower and
a pretrained LM. Each kind trains what its paper trains and freezes the rest by default:

=============  =====================================  ==========================================
kind           parts                                  trained by default
=============  =====================================  ==========================================
llava          vision, connector, language            connector (LLaVA stage 1, Liu et al. 2023,
                                                      Sec. 5: "we keep both the visual encoder
                                                      and LLM weights frozen")
qformer        vision, connector, language            connector: Q-Former + its projection
                                                      (BLIP-2, Li et al. 2023, Sec. 3)
flamingo       vision, connector, cross_attention,    connector (projection + Perceiver
               language                               Resampler) and cross_attention (the gated
                                                      blocks) (Alayrac et al. 2022, Sec. 2)
cogvlm         vision, connector, expert, language    connector (the MLP adapter) and expert
                                                      (Wang et al. 2023, Sec. 2.2: the LM and
                                                      ViT frozen)
pixel_shuffle  vision, connector, language            connector (the modality projection)
qwen           vision, connector, language            connector (the position-aware adapter);
                                                      Qwen-VL's stage 1 (Bai et al. 2023, Sec.
                                                      3.1) also trains the ViT: pass
                                                      trainable=("vision", "connector")
=============  =====================================  ==========================================

An anyres llava (LLaVA-NeXT, `vlkit.models.llava_next`) has one more parameter, `image_newline`,
which belongs to the connector (it trains with the projector).

`set_trainable(model, kind, parts)` sets `requires_grad` part by part (a frozen vision tower also
stays in eval mode: `frozen_vision.keep_frozen_in_eval`); `composition_record` is the dict a
composed checkpoint stores (its parts' sources, the frozen and trained parts, the trainable
parameter count), refreshed from the model's current `requires_grad` flags on every save.
`resize_token_embeddings` adds the image token's rows to a decoder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from vlkit.models.decoder import DecoderLM

__all__ = [
    "COMPOSE_KINDS",
    "COMPOSE_PARTS",
    "DEFAULT_TRAINABLE",
    "composition_record",
    "converted_record",
    "part_parameters",
    "refresh_composition",
    "resize_token_embeddings",
    "set_trainable",
]

COMPOSE_KINDS = ("llava", "qformer", "flamingo", "cogvlm", "pixel_shuffle", "qwen")
COMPOSE_PARTS: dict[str, tuple[str, ...]] = {
    "llava": ("vision", "connector", "language"),
    "qformer": ("vision", "connector", "language"),
    "flamingo": ("vision", "connector", "cross_attention", "language"),
    "cogvlm": ("vision", "connector", "expert", "language"),
    "pixel_shuffle": ("vision", "connector", "language"),
    "qwen": ("vision", "connector", "language"),
}
DEFAULT_TRAINABLE: dict[str, tuple[str, ...]] = {
    "llava": ("connector",),
    "qformer": ("connector",),
    "flamingo": ("connector", "cross_attention"),
    "cogvlm": ("connector", "expert"),
    "pixel_shuffle": ("connector",),
    "qwen": ("connector",),
}
_EXPERT = ("vision_expert_attn.", "vision_expert_mlp.")


def _part_of(kind: str, name: str) -> str:
    """The part a parameter (its `named_parameters` name) belongs to."""
    if name.startswith("vision."):
        return "vision"
    # image_newline: LLaVA-NeXT's row terminator (an anyres llava), trained with the projector.
    if name.startswith(("connector.", "media_projection.", "perceiver.", "image_newline")):
        return "connector"
    if kind == "flamingo" and name.startswith("decoder.gated_cross_attention."):
        return "cross_attention"
    if kind == "cogvlm" and any(f".{prefix}" in name for prefix in _EXPERT):
        return "expert"
    return "language"


def part_parameters(model: nn.Module, kind: str, part: str) -> Iterator[nn.Parameter]:
    """The parameters of one part of a composed `kind` model (tied weights once)."""
    for name, param in model.named_parameters():
        if _part_of(kind, name) == part:
            yield param


def check_parts(kind: str, parts: Sequence[str], argument: str = "trainable") -> list[str]:
    """`parts` as a list, each one a part of `kind`.

    Raises:
        ValueError: An unknown part, naming `argument` and the parts of the kind.
    """
    known = COMPOSE_PARTS[kind]
    if isinstance(parts, str):
        parts = [parts]
    unknown = [p for p in parts if p not in known]
    if unknown:
        raise ValueError(
            f"{argument}: unknown part(s) {unknown} for kind {kind!r} (parts: {', '.join(known)})"
        )
    return list(parts)


def set_trainable(model: nn.Module, kind: str, parts: Sequence[str]) -> nn.Module:
    """Train exactly `parts` of a composed model (the others get `requires_grad=False`).

    A frozen vision tower is put in eval mode (and kept there by the models' `train()`), so
    dropout and normalisation statistics of the pretrained encoder do not change. Returns model.

    Raises:
        ValueError: An unknown part name.
    """
    chosen = set(check_parts(kind, parts))
    for name, param in model.named_parameters():
        param.requires_grad_(_part_of(kind, name) in chosen)
    if "vision" not in chosen:
        model.vision.eval()
    return model


def composition_record(model: nn.Module, kind: str, sources: dict[str, str]) -> dict[str, Any]:
    """The parts record a composed checkpoint stores (issue 12's "model card data").

    Args:
        model: The composed model (its current `requires_grad` flags are read).
        kind: Its kind.
        sources: {"vision": ..., "language": ...}: the directories or hub ids the parts were
            loaded from, or "vlkit model" for a model passed in.

    Returns:
        {"kind", "vision", "language", "trainable_parts", "frozen_parts",
        "trainable_parameters", "total_parameters"}; a part counts as trainable when any of
        its parameters is.
    """
    trainable, frozen = [], []
    for part in COMPOSE_PARTS[kind]:
        flags = [p.requires_grad for p in part_parameters(model, kind, part)]
        (trainable if any(flags) else frozen).append(part)
    params = list(model.parameters())
    return {
        "kind": kind,
        "vision": sources.get("vision", "vlkit model"),
        "language": sources.get("language", "vlkit model"),
        "trainable_parts": trainable,
        "frozen_parts": frozen,
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "total_parameters": sum(p.numel() for p in params),
    }


def converted_record(model: nn.Module, kind: str, directory: str, architecture: str) -> dict:
    """The parts record of a checkpoint converted from another library (a transformers LLaVA or
    BLIP-2 directory): every part comes from `directory`, the flags are the model's current
    ones (all trainable as loaded), and `converted_from` names the source architecture."""
    record = composition_record(model, kind, {"vision": directory, "language": directory})
    record["converted_from"] = architecture
    return record


def refresh_composition(model: nn.Module, kind: str) -> dict[str, Any]:
    """`model.composition` recomputed from its current `requires_grad` flags (the sources kept;
    "vlkit model" when unknown), stored on the model and returned: what a save writes."""
    previous = getattr(model, "composition", None) or {}
    sources = {part: previous.get(part, "vlkit model") for part in ("vision", "language")}
    model.composition = composition_record(model, kind, sources)
    if "converted_from" in previous:
        model.composition["converted_from"] = previous["converted_from"]
    return model.composition


@torch.no_grad()
def resize_token_embeddings(
    decoder: DecoderLM, vocab_size: int, new_token_ids: Sequence[int] = ()
) -> DecoderLM:
    """Grow `decoder`'s vocabulary to `vocab_size` rows (no-op when it has as many).

    New rows of the input embedding (and of an untied `lm_head`) are the mean of the existing
    rows: deterministic, and a token whose embedding is the mean gets an average logit instead
    of a random one (the choice of transformers' `resize_token_embeddings(mean_resizing=True)`,
    Hewitt 2021, "Initializing new word embeddings for pretrained language models"). Tied
    weights stay tied. `decoder.config.vocab_size` is updated.

    `new_token_ids` that fall inside the existing matrix (a checkpoint with spare rows beyond
    its tokenizer, as Qwen's) are set to the mean of the other rows the same way, so a new
    token's row never depends on what the checkpoint left in a spare row.
    """
    embed = decoder.model.embed_tokens
    old = embed.weight.shape[0]
    tied = decoder.lm_head.weight is embed.weight
    inside = [int(i) for i in new_token_ids if i < old]
    if inside:
        keep = torch.ones(old, dtype=torch.bool)
        keep[inside] = False
        for weight in [embed.weight] if tied else [embed.weight, decoder.lm_head.weight]:
            weight[inside] = weight[keep].mean(dim=0)
    if vocab_size <= old:
        return decoder

    def grow(weight: torch.Tensor) -> nn.Parameter:
        extra = weight.mean(dim=0, keepdim=True).expand(vocab_size - old, -1)
        return nn.Parameter(torch.cat([weight, extra], dim=0), requires_grad=weight.requires_grad)

    embed.weight = grow(embed.weight)
    embed.num_embeddings = vocab_size
    decoder.lm_head.weight = embed.weight if tied else grow(decoder.lm_head.weight)
    decoder.lm_head.out_features = vocab_size
    decoder.config.vocab_size = vocab_size
    return decoder
