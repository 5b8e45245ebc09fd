"""Generative-VLM runs end to end: train_vlm (two-stage), the run directory, `vlkit generate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.data.datasets.scenes_text import SceneQuestions
from vlkit.data.datasets.shapes import ShapesDataset
from vlkit.data.images import load_image
from vlkit.evaluation.generative import generate_answers
from vlkit.hub.weights import read_weights
from vlkit.inference import VLMRun, load_vlm, load_vlm_run, sampling_options
from vlkit.models.frozen_vision import tower_tokens
from vlkit.overrides import apply_overrides
from vlkit.recipes.vlm_data import build_vlm_data
from vlkit.recipes.vlm_model import build_recipe_model, vision_clip
from vlkit.recipes.vlm_run import VLMRecipe, evaluate_vlm, train_vlm
from vlkit.training.vlm_recipe import VLM_FLAT_KEYS, VisionSource
from vlkit.viz.attention import attention_grid, save_attention_overlays

TINY = dict(train_scenes=24, test_scenes=3, batch_size=8, hidden_size=32, intermediate_size=64,
            layers=1, heads=2, num_queries=4, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny LLaVA on scene questions: 4 connector-only steps, then 4 full steps."""
    out = tmp_path_factory.mktemp("llava_run")
    recipe = VLMRecipe(kind="llava", task="scene_questions", steps=4, connector_only_steps=4,
                       **TINY)  # fmt: skip
    return out, train_vlm(recipe, out)


def test_summary_reports_cost_and_accuracy(llava_run) -> None:
    out, summary = llava_run
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["steps"] == 8
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]  # tower frozen
    assert 0 < summary["forward_gflops"] < summary["train_gflops"]
    assert json.loads((out / "summary.json").read_text())["accuracy"] == summary["accuracy"]


def test_two_stage_freezes_the_decoder_in_stage_one(llava_run) -> None:
    out, _ = llava_run
    stage1 = read_weights(next((out / "stage1" / "checkpoints").glob("step_*/model.safetensors")))
    final = read_weights(out / "model.safetensors")
    run = load_vlm_run(out)
    init = run.model.__class__  # the architecture; rebuild the initial weights from the seed
    start = build_recipe_model(run.recipe, vision_clip(run.recipe), run.tokenizer).state_dict()
    assert isinstance(run.model, init)
    decoder = [k for k in start if k.startswith("decoder.")]
    connector = [k for k in start if k.startswith("connector.")]
    assert decoder and connector
    assert all(torch.equal(stage1[k], start[k]) for k in decoder)  # stage 1: LM untouched
    assert not all(torch.equal(stage1[k], start[k]) for k in connector)
    assert not all(torch.equal(final[k], stage1[k]) for k in decoder)  # stage 2 trains it
    vision = [k for k in start if k.startswith("vision.")]
    assert all(torch.equal(final[k], start[k]) for k in vision)  # frozen, BatchNorm included


def test_run_directory_reloads_the_same_model(llava_run) -> None:
    out, summary = llava_run
    run = load_vlm_run(out)
    _, test = build_vlm_data(run.recipe, run.tokenizer, run.transform)
    again = evaluate_vlm(run.model, test, run.recipe.task)
    assert again["accuracy"] == summary["accuracy"]
    assert [list(e) for e in again["examples"]] == [list(e) for e in summary["examples"]]


def test_generate_cli_streams_the_runs_answer(llava_run, tmp_path, capsys) -> None:
    out, _ = llava_run
    run = load_vlm_run(out)
    test = SceneQuestions(3, "test", run.transform, run.tokenizer)
    image_path = tmp_path / "scene.png"
    test.load_pil(test.samples[0][2]).save(image_path)
    expected = generate_answers(run.model, test.load_image(0)[None], [test.prompt_ids(0)],
                                run.tokenizer, max_new_tokens=5)[0]  # fmt: skip
    code = main(["generate", "--model", str(out), "--image", str(image_path),
                 "--prompt", test.question(0), "--max-new-tokens", "5"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.rstrip("\n") == expected
    assert run.answer(load_image(image_path), test.question(0), max_new_tokens=5) == expected
    ids, unknown = run.prompt_ids(test.question(0) + " zebra")
    assert unknown == ["zebra"] and ids[0, -1].item() == run.tokenizer.unk_token_id
    code = main(["generate", "--model", str(out), "--image", str(image_path), "--image",
                 str(image_path), "--prompt", "x"])  # fmt: skip
    assert code == 2 and "exactly one --image" in capsys.readouterr().err


def test_load_vlm_gives_the_run_as_a_pipeline(llava_run, tmp_path) -> None:
    out, _ = llava_run
    run = load_vlm_run(out)
    pipeline = load_vlm(out)
    assert isinstance(pipeline, VLMRun) and pipeline.kind == "fusion (llava)"
    assert pipeline.details() == {"task": "scene_questions"} and pipeline.needs_prompt
    image = ShapesDataset(1).scene(0)[0]
    inputs = pipeline.prepare([image], "what color is the circle?")
    new = pipeline.generate(inputs, max_new_tokens=5)
    assert pipeline.decode(new) == run.answer(image, "what color is the circle?", max_new_tokens=5)
    sampled = [pipeline.generate(inputs, 5, **sampling_options(True, 0.8, 0.9, seed=3))
               for _ in range(2)]  # fmt: skip
    assert sampled[0] == sampled[1]  # the seed fixes the sample
    with pytest.raises(ValueError, match="exactly one image"):
        pipeline.prepare([image, image], "what color is the circle?")
    int8 = load_vlm(out, int8=True)
    assert int8.decode(int8.generate(int8.prepare([image], "x"), 3)) is not None
    with pytest.raises(ValueError, match="neither a `vlkit train-vlm` run"):
        load_vlm(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such VLM directory"):
        load_vlm(tmp_path / "missing")


def test_train_vlm_cli_and_attention_overlay(tmp_path, capsys) -> None:
    out = tmp_path / "qformer"
    code = main(["train-vlm", "kind=qformer", "task=scene_captions", "steps=3", "max_test=2",
                 "train_scenes=16", "test_scenes=2", "batch_size=8", "hidden_size=32",
                 "intermediate_size=64", "layers=1", "heads=2", "num_queries=4", "device=cpu",
                 f"out_dir={out}"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "qformer" and "cider_d" in summary
    image = tmp_path / "scene.png"
    ShapesDataset(1).scene(0)[0].save(image)
    png = tmp_path / "maps" / "attention.png"
    code = main(["generate", "--model", str(out), "--image", str(image), "--max-new-tokens",
                 "3", "--attention-map", str(png)])  # fmt: skip
    captured = capsys.readouterr()
    # A barely trained model may stop at once; then there is nothing to draw and it says so.
    if code == 0:
        assert png.is_file() and png.stat().st_size > 1000
    else:
        assert "no tokens to draw" in captured.err
    code = main(["train-vlm", "kind=llava", "colour=red"])
    error = capsys.readouterr().err  # one line naming the key and the allowed ones
    assert code == 2 and "unknown key 'colour' (allowed: " in error and "kind" in error
    assert error.count("\n") == 1


def test_attention_grid_and_overlay(tmp_path) -> None:
    weights = torch.arange(5.0)  # a class token then a 2x2 grid
    assert attention_grid(weights).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert attention_grid(torch.arange(4.0)).shape == (2, 2)
    with pytest.raises(ValueError, match="7 image tokens"):
        attention_grid(torch.ones(7))
    image = Image.new("RGB", (64, 64), (200, 10, 10))
    path = save_attention_overlays(image, torch.rand(2, 4), ["a", "b"], tmp_path / "o.png")
    assert Image.open(path).size[0] > 64
    with pytest.raises(ValueError, match="labels"):
        save_attention_overlays(image, torch.rand(2, 4), ["a"], tmp_path / "p.png")


def test_trainable_vision_tower_trains_and_reloads(tmp_path, capsys) -> None:
    out = tmp_path / "trainable"
    code = main(["train-vlm", "kind=llava", "task=scene_questions", "steps=3",
                 "vision_trainable=true", "train_scenes=8", "test_scenes=1", "batch_size=4",
                 "hidden_size=32", "intermediate_size=64", "layers=1", "heads=2", "device=cpu",
                 f"out_dir={out}"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_parameters"] == summary["total_parameters"]
    run = load_vlm_run(out)
    assert run.recipe.vision.trainable and any(
        p.requires_grad for p in run.model.vision.parameters()
    )
    assert main(["train-vlm", "vision_trainable=maybe"]) == 2
    assert "vision.trainable: expected true or false, got 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["llava", "early"])
def test_a_tower_of_another_image_size_trains_and_reloads(kind, tmp_path) -> None:
    # The "tiny" preset's tower takes 32-px images; the fusion config must follow the tower
    # (it once kept its 64-px default and the builder's dry run failed).
    recipe = VLMRecipe(kind=kind, task="scene_questions", steps=1, vision_preset="tiny", **TINY)
    summary = train_vlm(recipe, tmp_path)
    run = load_vlm_run(tmp_path)
    assert run.model.config.image_size == 32
    _, test = build_vlm_data(run.recipe, run.tokenizer, run.transform)
    assert evaluate_vlm(run.model, test, run.recipe.task)["accuracy"] == summary["accuracy"]


def test_resnet_stage_tokens_feed_the_connector_and_reload(tmp_path) -> None:
    # vision_tokens="layer3": the small-rn-64 tower's 4x4 stage-3 map (16 tokens of width 256)
    # instead of its final 2x2 map (4 tokens of width 512).
    recipe = VLMRecipe(kind="llava", task="scene_questions", steps=1, vision_tokens="layer3",
                       **TINY)  # fmt: skip
    summary = train_vlm(recipe, tmp_path)
    run = load_vlm_run(tmp_path)
    assert run.recipe.vision.tokens == "layer3" and run.model.num_image_tokens == 16
    assert run.model.config.vision_dim == 256
    tower = run.model.vision.tower
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(tower_tokens(tower, images, "layer4"), tower(images).tokens)
    _, test = build_vlm_data(run.recipe, run.tokenizer, run.transform)
    assert evaluate_vlm(run.model, test, run.recipe.task)["accuracy"] == summary["accuracy"]
    with pytest.raises(ValueError, match="vision.tokens"):
        VLMRecipe(vision_tokens="layer5")
    with pytest.raises(ValueError, match="ModifiedResNet"):
        tower_tokens(vlkit_tiny_tower(), torch.rand(1, 3, 32, 32), "layer3")


def vlkit_tiny_tower() -> torch.nn.Module:
    return vlkit.create_model("tiny").vision


def test_recipe_round_trips_and_reads_the_flat_keys_of_older_runs() -> None:
    recipe = VLMRecipe(kind="qformer", steps=3, batch_size=8, lr=1e-3, layers=1, heads=2,
                       vision="ckpt", vision_tokens="layer3")  # fmt: skip
    assert recipe.optim.batch_size == 8 and recipe.optim.lr == 1e-3
    assert recipe.optim.min_lr_ratio == 0.05  # the recipe's own default, not OptimConfig's
    assert recipe.decoder.num_layers == 1 and recipe.decoder.num_heads == 2
    assert recipe.vision == VisionSource(path="ckpt", tokens="layer3")
    assert VLMRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    # The flat recipe block of a vlm_config.json written by an earlier version.
    old = {"kind": "qformer", "task": "easy_vqa", "vision": "ckpt", "vision_preset": "small-rn-64",
           "vision_trainable": False, "vision_tokens": "layer3", "steps": 3,
           "connector_only_steps": 0, "batch_size": 8, "lr": 0.001, "warmup_steps": 50,
           "weight_decay": 0.01, "hidden_size": 128, "intermediate_size": 512, "layers": 1,
           "heads": 2, "num_queries": 8, "max_length": 24, "train_scenes": 20000,
           "test_scenes": 500, "max_test": None, "seed": 0, "device": "auto"}  # fmt: skip
    assert VLMRecipe.from_dict(old) == recipe
    dotted = ["kind=qformer", "steps=3", "optim.batch_size=8", "lr=1e-3", "decoder.num_layers=1",
              "heads=2", "vision=ckpt", "vision.tokens=layer3"]  # fmt: skip
    assert apply_overrides(VLMRecipe(), dotted, VLM_FLAT_KEYS) == recipe
    with pytest.raises(ValueError, match=r"^unknown key 'decoder.layers' \(allowed: hidden_size"):
        VLMRecipe.from_dict({"decoder": {"layers": 2}})
    with pytest.raises(ValueError, match="a VLM run's length is `steps`"):
        VLMRecipe(max_steps=10)
