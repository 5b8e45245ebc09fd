"""The one evaluator interface: every evaluator is an `Evaluator`, `evaluate` equals its
`score(predict(...))` and the metric functions, the model's mode is restored, and the trainer's
`EvaluatorCallback` runs evaluators through the protocol."""

import pytest
import torch
from torch import nn

import vlkit
from vlkit.data.collate import collate_image_text
from vlkit.distributed import resolve_device
from vlkit.evaluation import (
    CaptionMetrics,
    Evaluator,
    ImageTextRetrieval,
    LinearProbe,
    ProbeData,
    RetrievalData,
    VQAAccuracy,
    ZeroShotClassification,
    caption_scores,
    encode_texts,
    linear_probe,
    retrieval_metrics,
    zero_shot,
)
from vlkit.evaluation.embeddings import encode_images
from vlkit.losses import ClipLoss
from vlkit.training import EvaluatorCallback, TrainConfig, Trainer
from vlkit.training.tasks import ContrastiveTask

NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return vlkit.create_model("tiny").eval(), vlkit.get_tokenizer("tiny")


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, 32, 32, generator=generator), torch.arange(12) % 3


def test_every_evaluator_follows_the_protocol(tiny):
    _, tokenizer = tiny
    evaluators = [ZeroShotClassification(tokenizer, NAMES), ImageTextRetrieval(tokenizer),
                  LinearProbe(), VQAAccuracy(), CaptionMetrics()]  # fmt: skip
    for evaluator in evaluators:
        assert isinstance(evaluator, Evaluator), type(evaluator).__name__


def test_zero_shot_evaluator_equals_the_function_and_restores_train_mode(tiny, images):
    model, tokenizer = tiny
    pixels, labels = images
    evaluator = ZeroShotClassification(tokenizer, NAMES, "cifar", batch_size=5)
    model.train()
    try:
        metrics = evaluator.evaluate(model, (pixels, labels))
        assert model.training
    finally:
        model.eval()
    assert metrics == zero_shot(model, tokenizer, pixels, labels, NAMES, "cifar")
    loader = [(pixels[:7], labels[:7]), (pixels[7:], labels[7:])]
    assert evaluator.evaluate(model, loader) == metrics
    per_class = ZeroShotClassification(tokenizer, NAMES, "cifar", per_class_recall=True)
    detailed = per_class.evaluate(model, (pixels, labels))
    recalls = [detailed[f"per_class_recall/{name}"] for name in NAMES]
    assert sum(recalls) / 3 == pytest.approx(detailed["mean_per_class_recall"])
    with pytest.raises(ValueError, match="labels"):
        evaluator.evaluate(model, (pixels, labels[:5]))


def test_retrieval_evaluator_equals_retrieval_metrics(tiny, images):
    model, tokenizer = tiny
    pixels, _ = images
    texts = [f"a photo of {i}" for i in range(12)] + ["another", "one more"]
    ids = list(range(12)) + [0, 5]
    data = RetrievalData(pixels, texts, ids)
    metrics = ImageTextRetrieval(tokenizer, ks=(1, 5), batch_size=5).evaluate(model, data)
    image_emb = encode_images(model, [pixels])
    expected = retrieval_metrics(image_emb, encode_texts(model, tokenizer, texts), ids, ks=(1, 5))
    assert metrics == expected


def test_linear_probe_evaluator_probes_normalised_image_embeddings(tiny, images):
    model, _ = tiny
    pixels, labels = images
    options = dict(weight_decays=[1e-3], val_fraction=0.0, max_iter=20)
    metrics = LinearProbe(**options).evaluate(model, ProbeData((pixels, labels), (pixels, labels)))
    features = encode_images(model, [pixels])
    expected = linear_probe(features, labels, features, labels, **options)
    assert metrics["top1"] == expected["top1"] and metrics["weight_decay"] == 1e-3
    assert all(isinstance(value, float) for value in metrics.values())


class _Tokenizer:
    eot_token_id = 0
    words = {1: "red", 2: "blue", 3: "a", 4: "square"}

    def decode(self, ids):
        return " ".join(self.words[int(i)] for i in ids if int(i) in self.words)


class _ScriptedVLM(nn.Module):
    """Answers `script[first prompt id]` whatever the image: a generate() stand-in."""

    image_token_id = 99
    num_image_tokens = 2

    def __init__(self, script):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.script = script

    def generate(self, ids, pixel_values, attention_mask, max_new_tokens, eos_token_id):
        assert pixel_values.shape[:2] == (ids.shape[0], 1) and attention_mask.shape == ids.shape
        rows = []
        for row in ids:
            answer = self.script[int(row[-1])][:max_new_tokens]
            rows.append(
                torch.cat([row, torch.tensor(answer + [eos_token_id] * 8)[:max_new_tokens]])
            )
        return torch.stack(rows)


class _Questions:
    tokenizer = _Tokenizer()
    max_length = 3

    def __init__(self, answers, types=None):
        self.answers, self.types = answers, types

    def __len__(self):
        return len(self.answers)

    def load_image(self, i):
        return torch.zeros(3, 4, 4)

    def prompt_ids(self, i):
        return torch.tensor([7] * (i % 3) + [i])  # prompts of different lengths (left padding)

    def answer(self, i):
        return self.answers[i]

    def references(self, i):
        return [self.answers[i], "a " + self.answers[i]]


def test_vqa_accuracy_scores_greedy_answers_per_question_type():
    model = _ScriptedVLM({0: [1], 1: [2], 2: [1], 3: [2]}).train()
    data = _Questions(["red", "red", "red", "blue"], types=["color", "color", "x", "x"])
    evaluator = VQAAccuracy(batch_size=3)
    assert evaluator.predict(model, data) == ["red", "blue", "red", "blue"]
    assert model.training  # restored after generation
    assert evaluator.evaluate(model, data) == {"accuracy": 0.75, "accuracy_color": 0.5,
                                               "accuracy_x": 1.0}  # fmt: skip
    assert VQAAccuracy(max_items=2).evaluate(model, data)["accuracy"] == 0.5


def test_caption_metrics_score_greedy_captions_against_the_references():
    model = _ScriptedVLM({0: [3, 1, 4], 1: [3, 2, 4, 4, 4]})
    data = _Questions(["red square", "blue square"])
    evaluator = CaptionMetrics(batch_size=1)
    captions = evaluator.predict(model, data)
    assert captions == ["a red square", "a blue square"]  # cut at max_length (3) tokens
    expected = caption_scores({i: data.references(i) for i in range(2)}, dict(enumerate(captions)))
    assert evaluator.evaluate(model, data) == expected


def test_trainer_runs_evaluators_periodically_through_the_protocol(tmp_path, tiny, images):
    from vlkit.data.datasets.shapes import ShapesDataset

    _, tokenizer = tiny
    torch.manual_seed(0)
    model = vlkit.create_model("tiny")
    dataset = ShapesDataset(32, 32, 0, vlkit.get_transform("tiny"), tokenizer)
    config = TrainConfig(model="tiny", data="shapes", batch_size=8, max_steps=5, warmup_steps=1,
                         out_dir=str(tmp_path), progress=False)  # fmt: skip
    logged = []

    class Record:
        def on_step_end(self, trainer, metrics):
            logged.append(dict(metrics))

    evaluation = EvaluatorCallback({"zs": (ZeroShotClassification(tokenizer, NAMES), images)}, 2)
    trainer = Trainer(config, model, ContrastiveTask(ClipLoss()), dataset, collate_image_text,
                      [evaluation, Record()])  # fmt: skip
    summary = trainer.fit()
    assert [row["step"] for row in evaluation.history] == [2, 4, 5]
    assert "eval/zs/top1" in logged[1] and "eval/zs/top1" not in logged[0]
    assert summary["eval/zs/top1"] == evaluation.history[-1]["eval/zs/top1"]
    model.eval()
    assert summary["eval/zs/top1"] == zero_shot(model, tokenizer, *images, NAMES)["top1"]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == resolve_device(None).type == expected
