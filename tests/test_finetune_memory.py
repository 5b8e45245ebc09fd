"""Memory options for fine-tuning (issue 13 item 5; `vlkit.training.memory`).

Per-part gradient checkpointing leaves the gradients bit-identical and keeps less alive for the
backward pass; a frozen vision tower keeps nothing for it and stays in eval mode; bf16 autocast
trains a generative model in the Trainer on CPU; the CUDA-only options (8-bit AdamW, 4-bit base
weights) are refused on CPU with one line naming the key.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from vlkit.fusion.pixel_shuffle import PixelShuffleConnector
from vlkit.layers.checkpointing import is_checkpointed
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.fusion_vlm import FusionVLMConfig, build_fusion_vlm
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.models.smolvlm_vision import SmolVLMVisionConfig, SmolVLMVisionTransformer
from vlkit.models.vit import VisionTransformer, ViTConfig
from vlkit.overrides import ConfigError
from vlkit.training.config import OptimConfig, TrainConfig
from vlkit.training.config_files import load_train_config
from vlkit.training.memory import (
    activation_bytes,
    quantize_base_4bit,
    set_gradient_checkpointing,
)
from vlkit.training.optim import create_optimizer
from vlkit.training.trainer import Trainer

VOCAB, IMAGE_ID, LENGTH = 64, 64, 12


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def decoder_config() -> DecoderConfig:
    return DecoderConfig(vocab_size=VOCAB + 1, hidden_size=32, intermediate_size=64,
                         num_layers=3, num_heads=4, num_kv_heads=2,
                         max_position_embeddings=64)  # fmt: skip


def smolvlm() -> GenerativeVLM:
    """SmolVLM-shaped: SigLIP tower (32 px, 8 px patches: 16 tokens) -> pixel shuffle (4)."""
    vision = SmolVLMVisionTransformer(SmolVLMVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=32, patch_size=8))  # fmt: skip
    connector = PixelShuffleConnector(32, 32, 2)
    model = GenerativeVLM(vision, connector, DecoderLM(decoder_config()), IMAGE_ID)
    model.num_image_tokens = 4
    return model


def vit_tokens() -> VisionTokens:
    """LLaVA's vision: a ViT's penultimate hidden states, CLS dropped (16 px: 4 tokens)."""
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=8, width=32, layers=3, heads=4,
                                      mlp_dim=64))  # fmt: skip
    return VisionTokens(vit, "hidden:-2", drop_first=True)


def fusion(kind: str) -> nn.Module:
    config = FusionVLMConfig(kind=kind, decoder=decoder_config(), image_token_id=IMAGE_ID,
                             num_queries=3, image_size=16)  # fmt: skip
    return build_fusion_vlm(config, vit_tokens())


MODELS = {"smolvlm": smolvlm, "llava": lambda: fusion("llava"),
          "cogvlm": lambda: fusion("cogvlm"), "flamingo": lambda: fusion("flamingo")}  # fmt: skip


def batch(model: nn.Module, rows: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = 32 if isinstance(model.vision, SmolVLMVisionTransformer) else 16
    text = torch.randint(0, VOCAB, (rows, LENGTH), generator=generator)
    image = torch.full((rows, model.num_image_tokens), IMAGE_ID)
    input_ids = torch.cat([image, text], dim=1)
    labels = input_ids.masked_fill(input_ids == IMAGE_ID, -100)
    pixels = torch.randn(rows, 1, 3, size, size, generator=generator)
    return {"input_ids": input_ids, "pixel_values": pixels, "labels": labels,
            "attention_mask": torch.ones_like(input_ids)}  # fmt: skip


def loss_and_grads(model: nn.Module, inputs: dict) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def kept_bytes(model: nn.Module, inputs: dict) -> int:
    model.train()
    loss, size = activation_bytes(lambda: model(**inputs).loss, model)
    loss.backward()  # the graph is complete and usable
    return size


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpointing_per_part_gives_identical_gradients_and_keeps_less(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]()
    inputs = batch(model)
    loss, grads = loss_and_grads(model, inputs)
    baseline = kept_bytes(model, inputs)
    # Flamingo's vision is the same VisionTokens ViT; every kind checkpoints both parts.
    for parts in ("language", "vision", "language,vision"):
        assert set_gradient_checkpointing(model, parts) == tuple(parts.split(","))
        loss_ckpt, grads_ckpt = loss_and_grads(model, inputs)
        assert torch.equal(loss, loss_ckpt)
        assert grads.keys() == grads_ckpt.keys()
        for key in grads:
            assert torch.equal(grads[key], grads_ckpt[key]), (parts, key)
        assert kept_bytes(model, inputs) < baseline, parts
    assert set_gradient_checkpointing(model, False) == ()
    assert kept_bytes(model, inputs) == baseline


def test_checkpointing_switches_per_part_and_survives_deepcopy_and_generation() -> None:
    torch.manual_seed(0)
    model = smolvlm()
    set_gradient_checkpointing(model, "vision")
    assert all(is_checkpointed(layer) for layer in model.vision.encoder.layers)
    assert not any(is_checkpointed(layer) for layer in model.decoder.model.layers)
    assert set_gradient_checkpointing(model, True) == ("language", "vision")
    assert all(is_checkpointed(layer) for layer in model.decoder.model.layers)
    twin = copy.deepcopy(model)
    assert twin.decoder.model.layers[0].forward.__self__ is twin.decoder.model.layers[0]
    inputs = batch(model)
    _, grads = loss_and_grads(model, inputs)
    _, twin_grads = loss_and_grads(twin, inputs)
    assert all(torch.equal(grads[k], twin_grads[k]) for k in grads)
    # In eval mode and under no_grad nothing is checkpointed: generation with a KV cache works.
    model.eval()
    prompt = inputs["input_ids"][:, :6]
    out = model.generate(prompt, inputs["pixel_values"], max_new_tokens=3)
    set_gradient_checkpointing(model, False)
    assert torch.equal(out, model.generate(prompt, inputs["pixel_values"], max_new_tokens=3))


def test_a_text_only_decoder_takes_the_setting() -> None:
    decoder = DecoderLM(decoder_config())
    assert set_gradient_checkpointing(decoder, True) == ("language",)
    assert is_checkpointed(decoder.model.layers[0])


@pytest.mark.parametrize("name", ["smolvlm", "llava", "flamingo"])
def test_a_frozen_vision_tower_keeps_nothing_for_backward_and_stays_in_eval(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]()
    inputs = batch(model)
    trainable = kept_bytes(model, inputs)
    model.vision.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    model.train()
    assert not model.vision.training and model.decoder.training
    assert kept_bytes(model, inputs) < trainable
    # Count the bytes autograd saves while the vision tower runs: none when it is frozen.
    saved = {"inside": False, "bytes": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if saved["inside"]:
            saved["bytes"] += tensor.numel() * tensor.element_size()
        return tensor

    model.vision.register_forward_pre_hook(lambda *_: saved.update(inside=True))
    model.vision.register_forward_hook(lambda *_: saved.update(inside=False))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs).loss.backward()
    assert saved["bytes"] == 0
    assert all(p.grad is None for p in model.vision.parameters())
    model.vision.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(**inputs).loss.backward()
    assert saved["bytes"] > 0


def test_bf16_autocast_trains_a_generative_model_in_the_trainer_on_cpu(tmp_path) -> None:
    torch.manual_seed(0)
    model = smolvlm()
    inputs = batch(model, rows=2)

    class LMTask:
        def training_step(self, model, batch, backward):  # noqa: ANN001, ANN202
            keys = ("input_ids", "pixel_values", "attention_mask", "labels")
            loss = model(**{k: batch[k] for k in keys}).loss
            backward(loss)
            return {"loss": loss}

    rows = [{k: v[i] for k, v in inputs.items()} for i in range(2)]

    def collate(items: list[dict]) -> dict:
        out = {k: torch.stack([item[k] for item in items]) for k in items[0]}
        return {**out, "images": out["pixel_values"]}

    losses = {}
    for precision, parts in (("fp32", False), ("bf16", False), ("bf16", "language,vision")):
        config = TrainConfig(device="cpu", precision=precision, gradient_checkpointing=parts,
                             out_dir=str(tmp_path), progress=False,
                             optim=OptimConfig(batch_size=2, max_steps=2, warmup_steps=0,
                                               lr=1e-3))  # fmt: skip
        trainer = Trainer(config, copy.deepcopy(model), LMTask(), rows, collate)
        assert is_checkpointed(trainer.model.vision.encoder.layers[0]) == bool(parts)
        first = trainer.train_step(collate(rows))
        second = trainer.train_step(collate(rows))
        assert first is not None and second is not None
        assert second["loss"] < first["loss"]  # it trains
        losses[precision, bool(parts)] = first["loss"]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["bf16", False] == pytest.approx(losses["fp32", False], rel=2e-2)
    assert losses["bf16", True] == pytest.approx(losses["bf16", False], rel=1e-3)


def one_line(error: pytest.ExceptionInfo, key: str) -> str:
    message = str(error.value)
    assert "\n" not in message and key in message, message
    return message


def test_refusals_are_one_line_and_name_the_key(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(gradient_checkpointing="language,text")
    assert "language, vision" in one_line(error, "gradient_checkpointing")
    with pytest.raises(ConfigError) as error:
        set_gradient_checkpointing(DecoderLM(decoder_config()), "vision")
    assert "no vision part" in one_line(error, "gradient_checkpointing")
    conv = nn.Sequential(nn.Conv2d(3, 32, 16, 16), nn.Flatten(2))  # no per-layer checkpointing
    model = GenerativeVLM(conv, nn.Identity(), DecoderLM(decoder_config()), IMAGE_ID)
    with pytest.raises(ConfigError) as error:
        set_gradient_checkpointing(model, "vision")
    assert "Sequential" in one_line(error, "gradient_checkpointing")
    assert set_gradient_checkpointing(model, True) == ("language",)  # what it can

    decoder = DecoderLM(decoder_config())
    with pytest.raises(ConfigError) as error:
        create_optimizer(decoder, 1e-3, kind="adamw8bit")
    assert "CUDA" in one_line(error, "optim.optimizer=adamw8bit")
    with pytest.raises(ConfigError) as error:
        quantize_base_4bit(decoder.requires_grad_(False), torch.device("cpu"))
    assert "CUDA" in one_line(error, "quantize_base=4bit")
    # On a CUDA device without bitsandbytes (forced missing here): refused too.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError) as error:
        quantize_base_4bit(decoder, torch.device("cuda"))
    assert "not installed" in one_line(error, "quantize_base=4bit")
    with pytest.raises(ConfigError) as error:
        load_train_config(None, ["optim.optimizer=sgd"])
    assert "adamw8bit" in one_line(error, "optim.optimizer")
    assert load_train_config(None, ["gradient_checkpointing=vision"]).gradient_checkpointing == (
        "vision"
    )
    assert load_train_config(None, ["gradient_checkpointing=true"]).gradient_checkpointing is True
    # Through the Trainer (device cpu): refused before anything trains.
    for change in ({"quantize_base": "4bit"}, {"optim": OptimConfig(optimizer="adamw8bit")}):
        config = TrainConfig(device="cpu", out_dir=str(tmp_path), **change)
        with pytest.raises(ConfigError) as error:
            Trainer(config, DecoderLM(decoder_config()).requires_grad_(False), None, [0], None)
        one_line(error, "adamw8bit" if "optim" in change else "quantize_base")
