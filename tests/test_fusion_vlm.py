"""The five fusion VLMs of `vlkit.models.fusion_vlm`: one interface, trained by the real VQA task."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.fusion_vlm import (
    FUSION_KINDS,
    FusionVLMConfig,
    build_fusion_vlm,
    freeze_vision,
    trainable_parameters,
)
from vlkit.training.vlm_task import IGNORE_INDEX, VQALMTask

VOCAB = 64  # text ids 0..63, 0 = padding
IMAGE_ID = VOCAB  # the decoder has VOCAB + 1 rows
SIZE = 16  # images are (3, 16, 16): 4 vision tokens (8x8 conv patches) / 4 early-fusion patches
VISION_TOKENS = 4


class TinyVision(nn.Module):
    """(N, 3, 16, 16) -> (N, 4, 24) tokens; BatchNorm to check that a frozen tower stays frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 8, stride=8)
        self.norm = nn.BatchNorm2d(24)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(images)).flatten(2).transpose(1, 2)  # (N, 4, 24)


def make_config(kind: str) -> FusionVLMConfig:
    decoder = DecoderConfig(
        vocab_size=VOCAB + 1,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=64,
    )
    return FusionVLMConfig(
        kind=kind, decoder=decoder, image_token_id=IMAGE_ID, num_queries=3, image_size=SIZE
    )


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_fusion_vlm(make_config(kind), TinyVision())


def with_images(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """Prepend one image's placeholders to every (B, L) row, as `VQALMTask` does."""
    image = torch.full((text.shape[0], model.num_image_tokens), IMAGE_ID)
    return torch.cat([image, text], dim=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread avoids contention overhead on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_interface_and_shapes(kind: str, images: torch.Tensor) -> None:
    model = make_model(kind)
    expected = {"llava": 4, "qformer": 3, "flamingo": 1, "cogvlm": 4, "early": 4}[kind]
    assert model.num_image_tokens == expected
    assert model.image_token_id == IMAGE_ID and model.config.kind == kind
    ids = with_images(model, torch.randint(1, VOCAB, (4, 5)))
    logits = model(ids, pixel_values=images[:, None]).logits
    assert logits.shape == (4, ids.shape[1], VOCAB + 1) and logits.dtype == torch.float32
    # (B, 3, H, W) means one image per row, too.
    assert torch.allclose(model(ids, pixel_values=images).logits, logits, atol=1e-6)
    assert trainable_parameters(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_vqa_task_loss_falls(kind: str, images: torch.Tensor) -> None:
    model = make_model(kind)
    gen = torch.Generator().manual_seed(2)
    input_ids = torch.randint(1, VOCAB, (4, 6), generator=gen)
    labels = input_ids.clone()
    labels[:, :3] = IGNORE_INDEX  # question tokens are not targets
    batch = {"images": images, "input_ids": input_ids, "labels": labels}
    task = VQALMTask()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        losses.append(float(task.training_step(model, batch, lambda loss: loss.backward())["loss"]))
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_generate_equals_stepwise_argmax(kind: str, images: torch.Tensor) -> None:
    model = make_model(kind).eval()
    t, steps = model.num_image_tokens, 4
    prompts = [torch.tensor([5, 9, 13]), torch.tensor([7, 3, 22, 41, 8])]
    longest = max(len(p) for p in prompts)
    # Left padding, then the placeholders, then the prompt (as `generate_answers` lays it out).
    full = torch.zeros(2, t + longest, dtype=torch.long)
    mask = torch.zeros_like(full)
    for row, prompt in enumerate(prompts):
        start = longest - len(prompt)
        full[row, start : start + t] = IMAGE_ID
        full[row, start + t :] = prompt
        mask[row, start:] = 1
    pixels = images[:2, None]
    streamed: list[torch.Tensor] = []
    out = model.generate(
        full, pixel_values=pixels, attention_mask=mask, max_new_tokens=steps,
        streamer=streamed.append,
    )  # fmt: skip
    assert out.shape == (2, t + longest + steps)
    assert torch.equal(out[:, : t + longest], full)
    assert torch.equal(torch.stack(streamed, 1), out[:, t + longest :])
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            ids = with_images(model, prompt[None])  # unpadded, no cache
            for _ in range(steps):
                logits = model(ids, pixel_values=pixels[row : row + 1]).logits
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            assert torch.equal(out[row, t + longest :], ids[0, -steps:]), (kind, row)


def test_flamingo_gates_at_zero_is_the_text_lm(images: torch.Tensor) -> None:
    model = make_model("flamingo").eval()
    text_lm = DecoderLM(model.config.decoder).eval()
    state = {
        key[len("decoder.") :]: value
        for key, value in model.state_dict().items()
        if key.startswith("decoder.") and ".gated_cross_attention." not in key
    }
    text_lm.load_state_dict(state)  # strict: the text weights keep DecoderLM's names
    ids = torch.tensor([[5, 9, IMAGE_ID, 13, 2, 40], [IMAGE_ID, 7, 3, 22, 41, 8]])
    with torch.no_grad():
        fused = model(ids, pixel_values=images[:2, None]).logits
        assert torch.equal(fused, text_lm(ids).logits)
        # Opening the attention gates changes the tokens at and after <image> only (Sec. 2.3).
        for block in model.decoder.gated_cross_attention.values():
            block.alpha_xattn.fill_(0.5)
        opened = model(ids, pixel_values=images[:2, None]).logits
    assert torch.equal(opened[0, :2], fused[0, :2])
    assert not torch.allclose(opened[0, 2:], fused[0, 2:])
    assert not torch.allclose(opened[1], fused[1])


def test_cogvlm_visual_expert_routing(images: torch.Tensor) -> None:
    cog = make_model("cogvlm").eval()
    llava = make_model("llava", seed=1).eval()
    missing, unexpected = llava.load_state_dict(cog.state_dict(), strict=False)
    assert not missing and unexpected
    assert all(".vision_expert_" in key for key in unexpected)
    ids = with_images(cog, torch.randint(1, VOCAB, (2, 5)))
    image = ids == IMAGE_ID
    pixels = images[:2, None]
    with torch.no_grad():
        # Experts initialised as copies of the text weights: exactly the plain decoder.
        base = cog(ids, pixel_values=pixels).logits
        assert torch.allclose(base, llava(ids, pixel_values=pixels).logits, atol=1e-5)
        # The last layer's expert FFN acts at image positions only ...
        last = cog.decoder.model.layers[-1]
        last.vision_expert_mlp.down_proj.weight.add_(0.5)
        expert = cog(ids, pixel_values=pixels).logits
        assert torch.equal(expert[~image], base[~image])
        assert not torch.allclose(expert[image], base[image])
        # ... its text FFN at text positions only.
        last.mlp.down_proj.weight.add_(0.5)
        both = cog(ids, pixel_values=pixels).logits
        assert torch.equal(both[image], expert[image])
        assert not torch.allclose(both[~image], expert[~image])
        # An expert value projection of an early layer reaches the text through attention.
        cog.decoder.model.layers[0].vision_expert_attn.v_proj.weight.add_(0.5)
        assert not torch.allclose(cog(ids, pixel_values=pixels).logits[~image], both[~image])


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_attention_maps_are_distributions(kind: str, images: torch.Tensor) -> None:
    model = make_model(kind).eval()
    t = model.num_image_tokens
    ids = torch.cat(
        [torch.zeros(2, 2, dtype=torch.long), torch.full((2, t), IMAGE_ID), torch.ones(2, 4)],
        dim=1,
    ).long()
    ids[1, :2] = torch.tensor([3, 4])  # row 1 unpadded, text before the image
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    maps = model.attention_maps(ids, images[:2, None], attention_mask=mask)
    assert maps.shape == (2, ids.shape[1], VISION_TOKENS)
    assert (maps >= 0).all()
    assert torch.allclose(maps.sum(-1), torch.ones(2, ids.shape[1]), atol=1e-5)


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_config_round_trip_rebuilds_the_model(kind: str, images: torch.Tensor) -> None:
    vision = TinyVision()
    torch.manual_seed(0)
    model = build_fusion_vlm(make_config(kind), vision).eval()
    data = json.loads(json.dumps(model.config.to_dict()))
    config = FusionVLMConfig.from_dict(data)
    assert config == model.config
    torch.manual_seed(123)
    rebuilt = build_fusion_vlm(config, copy.deepcopy(vision)).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict
    ids = with_images(model, torch.randint(1, VOCAB, (2, 4)))
    with torch.no_grad():
        expected = model(ids, pixel_values=images[:2, None]).logits
        assert torch.equal(rebuilt(ids, pixel_values=images[:2, None]).logits, expected)
    with pytest.raises(ValueError, match="unknown keys"):
        FusionVLMConfig.from_dict({**data, "bogus": 1})


@pytest.mark.parametrize("kind", ["llava", "flamingo"])
def test_frozen_vision_keeps_batchnorm_statistics(kind: str, images: torch.Tensor) -> None:
    model = freeze_vision(make_model(kind))
    stats = model.vision.norm.running_mean.clone()
    model.train()
    assert not model.vision.training and model.decoder.training
    frozen = sum(p.numel() for p in model.vision.parameters())
    assert trainable_parameters(model) == sum(p.numel() for p in model.parameters()) - frozen
    ids = torch.randint(1, VOCAB, (4, 5))
    batch = {"images": images, "input_ids": ids, "labels": ids}
    VQALMTask().training_step(model, batch, lambda loss: loss.backward())
    assert torch.equal(model.vision.norm.running_mean, stats)
    assert all(p.grad is None for p in model.vision.parameters())
