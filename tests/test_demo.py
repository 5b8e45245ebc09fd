"""The demo pipeline on a tiny budget, and easy-VQA's derived labels and captions."""

import collections
import json
import math
from dataclasses import replace

import pytest
import torch

pytest.importorskip("easy_vqa")

import vlkit  # noqa: E402
from vlkit.data.collate import collate_image_text  # noqa: E402
from vlkit.data.datasets import (  # noqa: E402
    CLASS_NAMES,
    COLORS,
    SHAPES,
    EasyVQACaptions,
    LabelDerivationError,
    class_index,
    derive_labels,
    load_easy_vqa,
)
from vlkit.data.datasets.easy_vqa import pixel_label  # noqa: E402
from vlkit.overrides import from_dict  # noqa: E402
from vlkit.recipes.demo import SUMMARY_KEYS, DemoConfig, run_demo  # noqa: E402
from vlkit.training.config import DataConfig, LossConfig  # noqa: E402

TINY = dict(
    steps=20,
    warmup_steps=3,
    batch_size=32,
    train_limit=256,
    test_limit=120,
    progress=False,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, **TINY)


def test_summary_has_the_metrics_and_they_are_in_range(tiny_run):
    out, summary = tiny_run
    written = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(written)
    assert written["steps"] == 20 and written["train_images"] == 256
    for key in (
        "zero_shot_top1",
        "zero_shot_mean_per_class_recall",
        "retrieval_i2t_r1",
        "retrieval_t2i_r1",
        "color_accuracy",
        "shape_accuracy",
    ):
        assert 0.0 <= written[key] <= 1.0, key
    assert written["final_temperature"] <= 100.0 + 1e-6
    assert 0 < written["train_seconds"] < 60


def test_loss_decreases_and_outputs_are_written(tiny_run):
    out, summary = tiny_run
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 20
    assert summary["final_loss"] < summary["initial_loss"]
    assert sum(history["loss"][-5:]) < sum(history["loss"][:5])
    # Learning rate: warm-up then decay.
    assert history["lr"][2] == pytest.approx(1e-3) and history["lr"][-1] < history["lr"][2]
    report = (out / "report.md").read_text()
    assert "zero-shot top-1" in report
    assert "Zero-shot examples" in report and len(summary["zero_shot_examples"]) == 6
    assert "zero_shot_examples.png" in summary["plots"]
    for plot in summary["plots"]:
        assert (out / plot).stat().st_size > 1000


def test_saved_model_loads_back(tiny_run):
    out, _ = tiny_run
    model = vlkit.from_pretrained(str(out / "model")).eval()
    tokenizer = vlkit.get_tokenizer(str(out / "model"))
    with torch.no_grad():
        emb = model.encode_text(tokenizer(["a red circle"]), normalize=True)
    assert emb.shape == (1, model.config.embed_dim) and torch.isfinite(emb).all()


def test_deterministic_given_the_seed(tmp_path):
    options = dict(TINY, steps=4, train_limit=128, test_limit=48, plots=False)
    first = run_demo(tmp_path / "a", seed=3, **options)
    second = run_demo(tmp_path / "b", seed=3, **options)
    history = [json.loads((tmp_path / d / "history.json").read_text()) for d in "ab"]
    assert history[0] == history[1]
    for key in ("zero_shot_top1", "retrieval_t2i_r1", "final_loss", "final_temperature"):
        assert first[key] == second[key]


def test_time_budget_stops_training(tmp_path):
    summary = run_demo(
        tmp_path, **dict(TINY, steps=100_000, train_limit=64, test_limit=24, plots=False),
        seconds_budget=2.0,
    )  # fmt: skip
    assert summary["stopped_early"]
    assert summary["steps"] < summary["planned_steps"]
    assert summary["train_seconds"] < 6


def test_run_demo_rejects_unknown_options(tmp_path):
    with pytest.raises(TypeError, match="unknown options"):
        run_demo(tmp_path, stepz=3)


def test_demo_config_reuses_the_training_groups_and_keeps_its_flat_keywords(tiny_run):
    flat = DemoConfig(steps=20, seconds_budget=60, batch_size=32, label_smoothing=0.1,
                      augment=False)  # fmt: skip
    assert flat == DemoConfig(
        optim=replace(DemoConfig().optim, max_steps=20, max_seconds=60.0, batch_size=32),
        loss=LossConfig(label_smoothing=0.1), data=DataConfig(augment=False),
    )  # fmt: skip
    assert flat.optim.lr == 1e-3 and flat.optim.warmup_steps == 30  # the demo's tuned defaults
    assert DemoConfig(optim={"lr": 0.01}).optim.max_steps == 300  # a mapping merges
    with pytest.raises(ValueError, match="optim.max_steps"):
        DemoConfig(steps=0)
    # The summary's config block reads back into the run's DemoConfig.
    _, summary = tiny_run
    config = from_dict(DemoConfig, {**summary["config"], "progress": False})  # not written
    assert config == DemoConfig(**TINY, threads=config.threads)


# --- labels derived from the questions ---------------------------------------------------


@pytest.mark.parametrize("split, size", [("train", 4000), ("test", 1000)])
def test_every_image_gets_one_of_the_24_classes(split, size):
    examples = load_easy_vqa(split)
    assert len(examples) == size
    assert len({e.image_id for e in examples}) == size
    counts = collections.Counter(e.label for e in examples)
    assert set(counts) == set(range(24))  # every class present, so every count is non-zero
    for e in examples:
        assert e.color in COLORS and e.shape in SHAPES
        assert CLASS_NAMES[e.label] == f"{e.color} {e.shape}"


@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_agree_with_the_questions_wherever_the_questions_decide(split):
    import easy_vqa

    questions, answers, ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    # Without paths, images the questions leave open raise; so label those that do not.
    decided = {}
    by_image = collections.defaultdict(list)
    for q, a, i in zip(questions, answers, ids, strict=True):
        by_image[i].append((q, a))
    for image_id, pairs in by_image.items():
        try:
            qs, ans = zip(*pairs, strict=True)
            decided.update(derive_labels(qs, ans, [image_id] * len(qs)))
        except LabelDerivationError:
            pass
    assert len(decided) > 0.85 * len(paths)
    for image_id, label in decided.items():
        assert pixel_label(paths[image_id]) == label, image_id


def test_derivation_errors_name_the_image():
    with pytest.raises(LabelDerivationError, match="image 7: unrecognised"):
        derive_labels(["how many shapes?"], ["1"], [7])
    with pytest.raises(LabelDerivationError, match="image 3: contradictory answers"):
        derive_labels(
            ["what color is the shape?", "is there a red shape?"], ["blue", "yes"], [3, 3]
        )
    with pytest.raises(LabelDerivationError, match="image 5: .*colour undetermined"):
        derive_labels(["is there a red shape?", "what shape is present?"], ["no", "circle"], [5, 5])
    # Negations and direct answers combine.
    labels = derive_labels(
        ["is there not a teal shape?", "what is the teal shape?"], ["no", "triangle"], [1, 1]
    )
    assert labels == {1: ("teal", "triangle")}
    assert class_index("teal", "triangle") == CLASS_NAMES.index("teal triangle")


# --- the torch Dataset ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset():
    model_preset = "small-rn-64"
    return EasyVQACaptions(
        "test",
        transform=vlkit.get_transform(model_preset),
        tokenizer=vlkit.get_tokenizer(model_preset),
        examples=load_easy_vqa("test")[:40],
    )


def test_dataset_items_follow_the_image_text_contract(small_dataset):
    item = small_dataset[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["text"].shape == (32,) and item["text"].dtype == torch.long
    assert item["index"] == 0 and item["label"] == small_dataset.examples[0].label
    batch = collate_image_text([small_dataset[i] for i in range(8)])
    assert batch["images"].shape == (8, 3, 64, 64) and batch["texts"].shape == (8, 32)


def test_captions_vary_with_the_seed_and_are_reproducible(small_dataset):
    keyed = [small_dataset.caption((i % 5, 1000 + i)) for i in range(60)]
    assert len(set(keyed)) > 5
    assert keyed == [small_dataset.caption((i % 5, 1000 + i)) for i in range(60)]
    item_a, item_b = small_dataset[(3, 42)], small_dataset[(3, 42)]
    assert torch.equal(item_a["text"], item_b["text"])
    assert torch.equal(item_a["image"], item_b["image"])
    example = small_dataset.examples[3]
    assert example.class_name in small_dataset.caption((3, 42))
    # Per-index phrasings change with the epoch.
    first = [small_dataset.caption(i) for i in range(40)]
    small_dataset.set_epoch(1)
    assert [small_dataset.caption(i) for i in range(40)] != first
    small_dataset.set_epoch(0)


def test_evaluation_dataset_uses_the_canonical_caption(small_dataset):
    canonical = EasyVQACaptions(
        "test",
        transform=small_dataset.transform,
        tokenizer=vlkit.get_tokenizer("small-rn-64"),
        seed=None,
        examples=small_dataset.examples,
    )
    assert canonical.caption(0) == f"a {canonical.examples[0].class_name}"
    assert math.isclose(len(canonical), 40)
