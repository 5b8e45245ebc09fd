"""Zero-shot classification: prompt-ensemble weights, metrics, and the evaluator."""

import math

import pytest
import torch
import torch.nn.functional as F

import vlkit
from vlkit.evaluation import (
    build_zero_shot_classifier,
    classification_metrics,
    load_templates,
    zero_shot,
)


def test_template_sets_are_shipped():
    assert len(load_templates("openai-imagenet")) == 80
    assert len(load_templates("cifar")) == 18
    assert all("{}" in t for t in load_templates("cifar"))


def test_custom_template_file(tmp_path):
    (tmp_path / "t.txt").write_text("# mine\na photo of {c}.\n\nart of a {}\n")
    assert load_templates(tmp_path / "t.txt") == ["a photo of {}.", "art of a {}"]
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    with pytest.raises(ValueError, match="placeholder"):
        load_templates(tmp_path / "bad.txt")


def test_classifier_is_the_renormalized_mean_of_normalized_template_embeddings():
    model = vlkit.create_model("tiny").eval()
    tokenizer = vlkit.get_tokenizer("tiny")
    templates = ["a {}.", "a photo of a {}.", "art of the {}"]
    weights = build_zero_shot_classifier(model, tokenizer, ["cat", "dog"], templates)
    with torch.no_grad():
        for row, name in enumerate(["cat", "dog"]):
            embeddings = model.encode_text(
                tokenizer([t.format(name) for t in templates]), normalize=True
            )
            torch.testing.assert_close(weights[row], F.normalize(embeddings.mean(0), dim=0))


def test_metrics_by_hand():
    logits = torch.tensor([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0], [0, 0, 1, 3.0, 0, 0],
                           [1, 0.5, -1, 0.2, 0.3, 3.0]])  # fmt: skip
    labels = torch.tensor([0, 1, 2, 2])
    metrics = classification_metrics(logits, labels)
    assert metrics["top1"] == 0.5
    assert metrics["top5"] == 0.75  # the last row's class 2 is ranked 6th
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 1 + 0) / 3)
    assert math.isnan(classification_metrics(logits[:, :4], labels)["top5"])


def test_zero_shot_evaluator_on_tensor_and_loader_inputs():
    model = vlkit.create_model("tiny").eval()
    tokenizer = vlkit.get_tokenizer("tiny")
    images, labels = torch.randn(10, 3, 32, 32), torch.randint(0, 3, (10,))
    names = ["circle", "square", "triangle"]
    direct = zero_shot(model, tokenizer, images, labels, names, "cifar")
    loader = [(images[:6], labels[:6]), (images[6:], labels[6:])]
    assert zero_shot(model, tokenizer, loader, None, names, "cifar") == direct
    assert set(direct) == {"top1", "top5", "mean_per_class_recall"}


def test_zero_shot_refuses_labels_outside_the_classnames():
    # Label 5 with two class names can never be predicted: it used to lower top-1 silently.
    model = vlkit.create_model("tiny").eval()
    tokenizer = vlkit.get_tokenizer("tiny")
    images = torch.randn(3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^label 5 is out of range: .* must be in 0\.\.1$"):
        zero_shot(model, tokenizer, images, [0, 5, 0], ["cat", "dog"], ["a {}"])
    with pytest.raises(ValueError, match=r"^label -1 is out of range"):
        zero_shot(model, tokenizer, [(images, torch.tensor([0, -1, 1]))], None, ["cat", "dog"],
                  ["a {}"])  # fmt: skip
    assert zero_shot(model, tokenizer, images, [0, 1, 0], ["cat", "dog"], ["a {}"])["top1"] >= 0
