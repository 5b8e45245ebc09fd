"""Contrastive training options (issue 16 item 1): the memory bank resumes exactly, a fixed
temperature stays fixed, hard-negative InfoNCE against a hand-written computation, the InfoNCE
mutual-information bound in metrics.jsonl, `vlkit zeroshot --temperature`, and the config checks."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from vlkit.cli import main
from vlkit.data.collate import collate_image_text
from vlkit.losses.contrastive import clip_loss
from vlkit.losses.hard_negative import hard_negative_cross_entropy, hard_negative_infonce
from vlkit.losses.memory_bank import MemoryBankInfoNCE
from vlkit.recipes.clip_run import build_dataset, build_model, train
from vlkit.training.config_files import load_train_config
from vlkit.training.tasks import (
    MemoryBankTask,
    build_contrastive_task,
    mutual_information_lower_bound,
)
from vlkit.training.trainer import Trainer

RUN = ["model=tiny", "data=shapes", "num_samples=48", "batch_size=8", "warmup_steps=1",
       "progress=false", "log_every=1", "data.augment=false"]  # fmt: skip


def _run(out, *extra, resume=None):
    summary = train(load_train_config(None, [*RUN, f"out_dir={out}", *extra]), resume=resume)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


# ------------------------------------------------------------------------- hard negatives
def _hcl_by_hand(logits, beta):
    """Robinson et al. 2021 row by row, as the reference code writes it (image/main.py):
    imp = exp(beta * s), Ng = sum(imp * exp(s)) / mean(imp), loss = -log(pos / (pos + Ng))."""
    losses = []
    for i, row in enumerate(logits):
        pos = math.exp(row[i])
        neg = [math.exp(s) for j, s in enumerate(row.tolist()) if j != i]
        imp = [math.exp(beta * math.log(n)) for n in neg]
        ng = sum(w * n for w, n in zip(imp, neg, strict=True)) / (sum(imp) / len(imp))
        losses.append(-math.log(pos / (pos + ng)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_hard_negative_infonce_matches_the_papers_formula(beta):
    image, text = _unit(6, 16), _unit(6, 16)
    logits = 10.0 * image @ text.T
    expected = (_hcl_by_hand(logits, beta) + _hcl_by_hand(logits.T, beta)) / 2
    got = hard_negative_infonce(image, text, 10.0, beta)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # Harder negatives get more weight: the loss grows with beta.
    assert got > hard_negative_infonce(image, text, 10.0, 0.0)


def test_hard_negative_beta_zero_is_infonce_and_large_scales_stay_finite():
    image, text = _unit(8, 16).float(), _unit(8, 16).float()
    torch.testing.assert_close(
        hard_negative_infonce(image, text, 14.0, 0.0), clip_loss(image, text, 14.0)
    )
    image.requires_grad_(True)
    loss = hard_negative_infonce(image, text, 1 / 0.01, 2.0)  # tau = 0.01: exp(100) in float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(image.grad).all()


def test_memory_bank_weights_the_queued_negatives_by_hardness():
    bank = MemoryBankInfoNCE(16, size=10, hard_negative_beta=1.5).double()
    old_image, old_text = _unit(4, 16), _unit(4, 16)
    bank(old_image, old_text, 8.0)
    image, text = _unit(3, 16), _unit(3, 16)
    loss = bank(image, text, 8.0)
    labels = torch.arange(3)
    i2t = 8.0 * image @ torch.cat([text, old_text]).T
    t2i = 8.0 * text @ torch.cat([image, old_image]).T
    expected = (hard_negative_cross_entropy(i2t, labels, 1.5)
                + hard_negative_cross_entropy(t2i, labels, 1.5)) / 2  # fmt: skip
    torch.testing.assert_close(loss, expected)


# ------------------------------------------------------------------------- MI bound
def test_mutual_information_bound_formula():
    assert mutual_information_lower_bound(2.0, 8) == pytest.approx(math.log(8) - 2.0)
    assert mutual_information_lower_bound(torch.tensor(0.0), 64) == pytest.approx(math.log(64))
    with pytest.raises(ValueError):
        mutual_information_lower_bound(1.0, 0)


def test_mi_bound_is_logged_every_step_for_infonce_only(tmp_path):
    _, rows = _run(tmp_path / "clip", "max_steps=3")
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:  # N = the batch of 8
        assert row["mi_lower_bound"] == pytest.approx(math.log(8) - row["loss"], abs=1e-6)
    # Not InfoNCE (hard-negative weights, label smoothing, SigLIP): the bound does not hold.
    for extra in ("loss.hard_negative_beta=1", "loss.label_smoothing=0.1", "loss.kind=siglip"):
        config = load_train_config(None, [*RUN, extra])
        model = build_model(config)
        losses = build_contrastive_task(config, model).training_step(
            model, collate_image_text([build_dataset(config, model)[i] for i in range(4)]),
            lambda loss: None,
        )  # fmt: skip
        assert "mi_lower_bound" not in losses, extra


# ------------------------------------------------------------------------- fixed temperature
def test_fixed_temperature_stays_fixed_and_is_not_optimized(tmp_path):
    # tau = 0.005 is a logit scale of 200: the trainer's clamp to ln 100 would move a learned one.
    config = load_train_config(None, [*RUN, f"out_dir={tmp_path}", "max_steps=3",
                                      "loss.learn_temperature=false", "loss.temperature=0.005"])  # fmt: skip
    model = build_model(config)
    task = build_contrastive_task(config, model)
    start = model.logit_scale.detach().clone()
    assert start.item() == pytest.approx(math.log(200.0))
    trainer = Trainer(config, model, task, build_dataset(config, model), collate_image_text)
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert all(p is not model.logit_scale for p in optimized)
    weights = model.text_projection.weight.detach().clone()
    trainer.fit()
    assert torch.equal(model.logit_scale.detach(), start)
    assert not torch.equal(model.text_projection.weight, weights)  # the rest did train
    # The same run with a learned temperature moves it.
    learned = load_train_config(None, [*RUN, f"out_dir={tmp_path / 'l'}", "max_steps=3",
                                       "loss.temperature=0.5", "lr=0.05"])  # fmt: skip
    model = build_model(learned)
    Trainer(learned, model, build_contrastive_task(learned, model),
            build_dataset(learned, model), collate_image_text).fit()  # fmt: skip
    assert model.logit_scale.item() != pytest.approx(math.log(2.0), abs=1e-4)


# ------------------------------------------------------------------------- memory bank resume
def test_memory_bank_run_resumes_bit_for_bit(tmp_path):
    """Queue (wrapped: 6 batches of 8 through 20 slots), pointer and momentum weights are in the
    checkpoint: resuming at step 3 ends where the uninterrupted run ends, to the bit."""
    bank = ["max_steps=6", "checkpoint_every=3", "keep_last=3", "loss.kind=memory_bank",
            "loss.memory_bank_size=20", "loss.momentum=0.9", "data.augment=true"]  # fmt: skip
    _, rows = _run(tmp_path / "a", *bank)
    for step, row in enumerate(rows, 1):  # N = the batch + the keys queued before it
        candidates = 8 + min(8 * (step - 1), 20)
        assert row["mi_lower_bound"] == pytest.approx(math.log(candidates) - row["loss"], abs=1e-6)
    middle = tmp_path / "a" / "checkpoints" / "step_00000003"
    state = load_file(middle / "task_state.safetensors")
    assert int(state["queue.pointer"]) == 24 % 20 and int(state["queue.filled"]) == 20
    _, resumed_rows = _run(tmp_path / "b", *bank, resume=str(middle))
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in rows[3:]]
    for name in ("model.safetensors", "task_state.safetensors"):
        expected = load_file(tmp_path / "a" / "checkpoints" / "step_00000006" / name)
        got = load_file(tmp_path / "b" / "checkpoints" / "step_00000006" / name)
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), (name, key)
    # The key encoder moved away from its start and is not the model itself.
    assert not torch.equal(got["key_encoder.text_projection.weight"],
                           load_file(tmp_path / "b" / "checkpoints" / "step_00000006" /
                                     "model.safetensors")["text_projection.weight"])  # fmt: skip


def test_memory_bank_task_without_momentum_keeps_only_the_queue():
    config = load_train_config(None, [*RUN, "loss.kind=memory_bank", "loss.momentum=none"])
    model = build_model(config)
    task = build_contrastive_task(config, model)
    assert isinstance(task, MemoryBankTask) and task.key_encoder is None
    assert all(key.startswith("queue.") for key in task.state_dict())


# ------------------------------------------------------------------------- zeroshot --temperature
def _zeroshot(checkpoint, images, *extra):
    return ["zeroshot", *map(str, images), "--model", str(checkpoint), "--labels",
            "a red circle,a blue square,a green triangle", "--json", *extra]  # fmt: skip


def test_zeroshot_temperature_changes_probabilities_not_the_ranking(checkpoint, tmp_path, capsys):
    images = []
    for i, color in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 40), color).save(tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    results = {}
    for temperature in (None, "0.01", "0.5"):
        extra = [] if temperature is None else ["--temperature", temperature]
        assert main(_zeroshot(checkpoint, images, *extra)) == 0
        results[temperature] = json.loads(capsys.readouterr().out)
    for index in range(len(images)):
        rankings = {t: r[index]["ranking"] for t, r in results.items()}
        orders = {t: [item["label"] for item in ranking] for t, ranking in rankings.items()}
        assert orders["0.01"] == orders["0.5"] == orders[None]
        sharp, flat = rankings["0.01"][0]["probability"], rankings["0.5"][0]["probability"]
        assert sharp > flat and flat == pytest.approx(1 / 3, abs=0.05)
        assert rankings["0.5"][0]["probability"] != rankings[None][0]["probability"]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_zeroshot_refuses_a_nonsense_temperature(checkpoint, tmp_path, value, capsys):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    assert main(_zeroshot(checkpoint, [tmp_path / "a.png"], f"--temperature={value}")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--temperature" in err.strip().splitlines()[-1]


# ------------------------------------------------------------------------- config checks
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss.temperature=0"], "loss.temperature"),
        (["loss.temperature=-0.07"], "loss.temperature"),
        (["loss.learn_temperature=maybe"], "loss.learn_temperature"),
        (["loss.hard_negative_beta=-1"], "loss.hard_negative_beta"),
        (["loss.kind=siglip", "loss.hard_negative_beta=1"], "loss.hard_negative_beta"),
        (["loss.label_smoothing=0.1", "loss.hard_negative_beta=1"], "loss.hard_negative_beta"),
        (["loss.kind=memory_bank", "loss.memory_bank_size=0"], "loss.memory_bank_size"),
        (["loss.kind=memory_bank", "loss.momentum=1"], "loss.momentum"),
        (["loss.kind=memory_bank", "micro_batch_size=4"], "optim.micro_batch_size"),
        (["loss.kind=moco"], "loss.kind"),
    ],
)
def test_train_refuses_nonsense_loss_settings_in_one_line(overrides, key, tmp_path, capsys):
    assert main(["train", *RUN, f"out_dir={tmp_path / 'run'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert key in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "option", [{"temperature": 0.5}, {"learn_temperature": False}, {"hard_negative_beta": 1.0}]
)
def test_demo_refuses_loss_options_it_does_not_train(option: dict) -> None:
    from vlkit.overrides import ConfigError
    from vlkit.recipes.demo import DemoConfig
    from vlkit.training.config import LossConfig

    with pytest.raises(ConfigError, match=f"loss.{next(iter(option))}"):
        DemoConfig(loss=LossConfig(**option))
