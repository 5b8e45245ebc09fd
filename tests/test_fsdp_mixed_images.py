"""FSDP SFT steps where ranks differ in image presence and micro-batch counts (2 gloo processes).

A rank whose rows are text only never runs the sharded vision tower on its own, so its
all-gathers and reduce-scatters would not match those of a rank with images (a hang); ranks with
more rows run more micro-batches (the same). `fsdp_micro_batches.synchronized_micro_batches` makes the ranks
issue the same collectives; the gradients must still be those of one process on the global
batch. The process group has a short timeout, and the spawn a deadline, so a hang fails.
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlkit.fusion.projector import LlavaProjector
from vlkit.hub.hf_smolvlm import build_smolvlm
from vlkit.models.cogvlm import CogVLM, CogVLMDecoder
from vlkit.models.decoder import DecoderLM
from vlkit.models.decoder.config import DecoderConfig
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.llava_next import AnyResLlavaVLM
from vlkit.models.vit import VisionTransformer, ViTConfig
from vlkit.training.fsdp import fsdp_available, shard_model
from vlkit.training.fsdp_micro_batches import synchronized_micro_batches
from vlkit.training.sft_task import SFTTask

pytestmark = pytest.mark.skipif(not fsdp_available(), reason="this torch has no FSDP2")

IMAGE_TOKEN, SEQ, DEADLINE_S = 99, 24, 90
PINPOINTS = [[16, 32], [32, 16], [32, 32]]  # anyres grids of 16 px tiles


def _model():
    """A tiny SmolVLM (2 vision layers, 2 decoder layers), the same on every rank."""
    config = {
        "model_type": "smolvlm", "scale_factor": 2, "image_token_id": IMAGE_TOKEN,
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 4},
        "text_config": {"vocab_size": 100, "hidden_size": 48, "intermediate_size": 96,
                        "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "max_position_embeddings": 128},
    }  # fmt: skip
    model = build_smolvlm(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _anyres_model():
    """A tiny LLaVA-NeXT (anyres) with a frozen ViT tower, as LLaVA trains its connector."""
    tower = VisionTransformer(ViTConfig(image_size=16, patch_size=8, width=32, layers=2, heads=4,
                                        mlp_dim=64))  # fmt: skip
    decoder = DecoderLM(DecoderConfig(vocab_size=100, hidden_size=48, intermediate_size=96,
                                      num_layers=2, num_heads=4, num_kv_heads=2,
                                      max_position_embeddings=128))  # fmt: skip
    vision = VisionTokens(tower, "hidden:-2", drop_first=True)
    model = AnyResLlavaVLM(vision, LlavaProjector(32, 48), decoder, IMAGE_TOKEN, PINPOINTS)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    vision.requires_grad_(False)
    return model


def _cogvlm_model():
    """A tiny CogVLM: its visual expert is used at image positions only (no gradient on a
    text-only rank unless FSDP reduce-scatters zeros for it)."""
    tower = VisionTransformer(ViTConfig(image_size=16, patch_size=8, width=32, layers=2, heads=4,
                                        mlp_dim=64))  # fmt: skip
    decoder = CogVLMDecoder(DecoderConfig(vocab_size=100, hidden_size=48, intermediate_size=96,
                                          num_layers=2, num_heads=4, num_kv_heads=2,
                                          max_position_embeddings=128))  # fmt: skip
    vision = VisionTokens(tower, drop_first=True)
    model = CogVLM(vision, LlavaProjector(32, 48), decoder, IMAGE_TOKEN, 4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _concatenated_row(index: int, image: bool, anyres: bool) -> dict:
    """A row with one image or text only: anyres, a 20 x 40 image (3 views of 16 px, 14
    placeholders); else one 16 px image (4 placeholders)."""
    row = _row(index, False)
    del row["pixel_values"]
    if image:
        generator = torch.Generator().manual_seed(100 + index)
        row["input_ids"][1 : 15 if anyres else 5] = IMAGE_TOKEN
        row["pixel_values"] = torch.rand(1, *((3,) if anyres else ()), 3, 16, 16,
                                         generator=generator)  # fmt: skip
        if anyres:
            row["image_sizes"] = torch.tensor([[20, 40]])
    return row


def _concatenated_batch(rows: list[tuple[int, bool]], anyres: bool = True) -> dict:
    """collate_sft's LLaVA(-NeXT) layout: images concatenated across rows, images_per_row."""
    items = [_concatenated_row(index, image, anyres) for index, image in rows]
    batch = {key: torch.stack([item[key] for item in items])
             for key in ("input_ids", "labels", "attention_mask")}  # fmt: skip
    if any(image for _, image in rows):
        for key in ("pixel_values", "image_sizes")[: 2 if anyres else 1]:
            batch[key] = torch.cat([item[key] for item in items if key in item])
        batch["images_per_row"] = torch.tensor([int(image) for _, image in rows])
    return batch


def _row(index: int, image: bool) -> dict:
    """One row: 16 `<image>` placeholders (one image after pixel shuffle) or text only; row i
    supervises i % 5 + 2 tokens, so the ranks' token counts differ."""
    generator = torch.Generator().manual_seed(index)
    ids = torch.randint(0, 90, (SEQ,), generator=generator)
    labels = torch.full((SEQ,), -100)
    targets = index % 5 + 2
    labels[-targets:] = ids[-targets:]
    row = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones(SEQ, dtype=torch.long)}
    pixels = torch.rand(1, 3, 32, 32, generator=generator)
    if image:
        ids[1:17] = IMAGE_TOKEN
    row["pixel_values"] = pixels if image else torch.zeros_like(pixels)  # zeros: padding
    return row


def _batch(rows: list[tuple[int, bool]]) -> dict:
    """collate_sft's SmolVLM layout: (B, 1, 3, H, W) pixels, zero for text rows; no pixels when
    no row has an image."""
    items = [_row(index, image) for index, image in rows]
    batch = {key: torch.stack([item[key] for item in items])
             for key in ("input_ids", "labels", "attention_mask")}  # fmt: skip
    if any(image for _, image in rows):
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
    return batch


# Each case: the model, the rows of rank 0 and rank 1 (index, has an image), micro-batch size.
CASES = {
    # Rank 0 has images, rank 1 none, one micro-batch each.
    "images_on_one_rank": ("smolvlm", [(0, True), (1, True)], [(2, False), (3, False)], None),
    # Micro-batches differ in image presence within and across ranks, and rank 1 has fewer:
    # k=0 image | text, k=1 text | padding, k=2 image | padding (blank image).
    "micro_batches": ("smolvlm", [(0, True), (1, False), (2, True)], [(3, False)], 1),
    # Only the rank with fewer micro-batches has images.
    "images_on_the_short_rank": ("smolvlm", [(4, False), (5, False)], [(6, True)], 1),
    # Concatenated images with image_sizes (the blank takes its views and size from rank 1).
    "anyres": ("anyres", [(0, False), (1, True)], [(2, True)], 1),
    # The visual expert's parameters: used on rank 0 only.
    "cogvlm": ("cogvlm", [(0, True), (1, True)], [(2, False)], None),
    # Only the connector trains (LLaVA stage 1): text-only micro-batches reach no trainable
    # parameter on either rank, and then a padding micro-batch meets an image.
    "connector_only": ("anyres_connector", [(0, False)], [(1, False), (2, True)], 1),
    # Only the visual expert trains: the text-only rank's loss reaches no trainable parameter.
    "expert_only": ("cogvlm_expert", [(0, True)], [(1, False)], None),
}


def _connector_only() -> torch.nn.Module:
    model = _anyres_model()
    model.decoder.requires_grad_(False)
    return model


def _expert_only() -> torch.nn.Module:
    model = _cogvlm_model()
    for name, param in model.named_parameters():
        param.requires_grad_("vision_expert" in name)
    return model


MODELS = {
    "smolvlm": (_model, _batch),
    "anyres": (_anyres_model, _concatenated_batch),
    "cogvlm": (_cogvlm_model, partial(_concatenated_batch, anyres=False)),
    "anyres_connector": (_connector_only, _concatenated_batch),
    "cogvlm_expert": (_expert_only, partial(_concatenated_batch, anyres=False)),
}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Full (gathered) gradients by name; None where a parameter has none."""
    out = {}
    for name, param in model.named_parameters():
        grad = param.grad
        if grad is not None and hasattr(grad, "full_tensor"):
            grad = grad.full_tensor()  # a collective: every rank calls it in the same order
        out[name] = None if grad is None else grad.detach().clone()
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))  # fmt: skip
    try:
        results = {}
        for name, (kind, rows0, rows1, micro) in CASES.items():
            build, batch = MODELS[kind]
            model = shard_model(build(), "cpu")
            model.train()
            out = SFTTask(micro_batch_size=micro).training_step(
                model, batch(rows0 if rank == 0 else rows1), torch.Tensor.backward
            )
            results[name] = {"loss": out["loss"].detach(), "grads": _grads(model)}
            # A second step on the same model: the FSDP state is clean after the first.
            model.zero_grad(set_to_none=True)
            SFTTask(micro_batch_size=micro).training_step(
                model, batch(rows1 if rank == 0 else rows0), torch.Tensor.backward
            )
            results[name]["swapped"] = _grads(model)
        if rank == 0:
            torch.save(results, f"{out_dir}/results.pt")
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path) -> dict:
    context = mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       join=False)  # fmt: skip
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2-rank FSDP steps did not finish in {DEADLINE_S} s (a hang)")
    return torch.load(tmp_path / "results.pt")


def _reference(kind: str, rows: list[tuple[int, bool]]) -> dict:
    """One process, unsharded, the global batch at once."""
    build, batch = MODELS[kind]
    model = build()
    model.train()
    out = SFTTask().training_step(model, batch(rows), torch.Tensor.backward)
    return {"loss": out["loss"].detach(), "grads": _grads(model)}


def _assert_same_grads(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        assert (actual[name] is None) == (grad is None), name
        if grad is not None:
            torch.testing.assert_close(actual[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_mixed_image_presence_matches_one_process(tmp_path):
    torch.set_num_threads(1)
    results = _spawn(tmp_path)
    for name, (kind, rows0, rows1, _) in CASES.items():
        expected = _reference(kind, rows0 + rows1)
        torch.testing.assert_close(results[name]["loss"], expected["loss"], msg=name)
        _assert_same_grads(results[name]["grads"], expected["grads"])
        # The trained image path got real (non-zero) gradients: the vision tower (SmolVLM),
        # the projector (the anyres model's tower is frozen: no gradient on any rank), the
        # visual expert (CogVLM).
        prefix = {"smolvlm": "vision.", "anyres": "connector.",
                  "anyres_connector": "connector."}.get(kind, "decoder.model.layers.0.vision_expert")  # fmt: skip
        image_path = [g for n, g in expected["grads"].items() if n.startswith(prefix)]
        assert image_path and all(g is not None for g in image_path)
        assert any(bool(g.abs().sum() > 0) for g in image_path)
        if kind.startswith("anyres"):
            assert all(g is None for n, g in expected["grads"].items() if n.startswith("vision."))
        swapped = _reference(kind, rows1 + rows0)["grads"]
        _assert_same_grads(results[name]["swapped"], swapped)


class _NoBlank(torch.nn.Module):
    """A VLM that cannot encode a blank image (no `encode_images`)."""

    def forward(self, input_ids, pixel_values=None):  # pragma: no cover - never called
        raise AssertionError("no forward may run before the check")


def _refusal_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))  # fmt: skip
    try:
        ids = torch.zeros(1, 4, dtype=torch.long)
        part = {"input_ids": ids}
        if rank == 0:
            part["pixel_values"] = torch.rand(1, 1, 3, 8, 8)
        try:
            synchronized_micro_batches(_NoBlank(), [part])
        except RuntimeError as error:
            with open(f"{out_dir}/error{rank}.txt", "w") as file:
                file.write(str(error))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_mixed_images_without_blank_support_is_one_error_on_every_rank(tmp_path):
    mp.spawn(_refusal_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "micro-batch 0 has images on some ranks and none on others" in message
        assert "strategy=ddp" in message and "_NoBlank" in message


def test_text_micro_batch_of_a_mixed_batch_is_text_only():
    """One process: a micro-batch of a SmolVLM batch's text rows holds only padding images; it
    runs text only (the model would refuse 16 image features for 0 `<image>` placeholders),
    and the gradients are those of the whole batch at once."""
    torch.set_num_threads(1)
    rows = [(0, True), (1, False), (2, False)]
    expected = _reference("smolvlm", rows)
    model = _model()
    model.train()
    out = SFTTask(micro_batch_size=1).training_step(model, _batch(rows), torch.Tensor.backward)
    torch.testing.assert_close(out["loss"].detach(), expected["loss"])
    _assert_same_grads(_grads(model), expected["grads"])
