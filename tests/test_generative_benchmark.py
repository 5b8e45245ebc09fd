"""Generative benchmark runs (issue 14 item 3): readers of the official VQAv2 / TextVQA / GQA / COCO
Karpathy files, batched left-padded generation, submission files, scores and resume.

Tiny random SmolVLM2 and LLaVA checkpoints are built with transformers here; the fixture files are
written in each benchmark's published format with a handful of samples. Batched generation is
checked against one-by-one generation (vlkit's pipelines, themselves checked against transformers
in tests/test_generate_cli.py and tests/parity/test_transformers_llava.py) and, for LLaVA, against
transformers' own left-padded batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.data.benchmarks.vqa_sets import DATASETS, LAYOUTS, GenerativeSet
from vlkit.evaluation.benchmark_files import read_caption_results, read_vqa
from vlkit.evaluation.caption_metrics import caption_scores
from vlkit.evaluation.vqa import vqa_corpus_accuracy
from vlkit.inference import batch_generation
from vlkit.inference.batch_generation import generate_batch
from vlkit.inference.vlm_loading import load_vlm
from vlkit.recipes.generative_benchmark import (
    TASKS,
    gqa_exact_match,
    run_generative_task,
    score_predictions,
    textvqa_accuracy,
)

transformers = pytest.importorskip("transformers")
from parity.test_transformers_llava import (  # noqa: E402
    CHAT_TEMPLATE as LLAVA_TEMPLATE,
)
from parity.test_transformers_llava import (  # noqa: E402
    PATCH,
    PROCESSOR_SIZE,
    TEXT,
    VISION,
    _config,
    _tokenizer,
)
from test_smolvlm_processor import _write_processor, write_random_smolvlm  # noqa: E402

# --------------------------------------------------------------------------------------------
# Tiny checkpoints


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SmolVLM2 (tiles of 32 px, 4 tokens per tile, images split up to 3 x 3)."""

    directory = _write_processor(tmp_path_factory.mktemp("smolvlm"))
    write_random_smolvlm(directory, vision_layers=1, max_position_embeddings=1024)
    return directory


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random llava-hf style LLaVA (CLIP tower, "default" strategy) with its processor."""
    tokenizer = _tokenizer()
    directory = tmp_path_factory.mktemp("llava")
    torch.manual_seed(0)
    config = _config(
        vision_config={**VISION, "image_size": PROCESSOR_SIZE, "patch_size": PATCH},
        text_config={**TEXT, "vocab_size": tokenizer.get_vocab_size(), "pad_token_id": 3,
                     "eos_token_id": 2, "bos_token_id": 1},
        image_token_index=tokenizer.token_to_id("<image>"), vision_feature_layer=-2,
    )  # fmt: skip
    transformers.LlavaForConditionalGeneration(config).save_pretrained(directory)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": PROCESSOR_SIZE},
        crop_size={"height": PROCESSOR_SIZE, "width": PROCESSOR_SIZE},
    )  # fmt: skip
    transformers.LlavaProcessor(
        images, fast, patch_size=PATCH, vision_feature_select_strategy="default",
        chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1,
    ).save_pretrained(directory)  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def pipelines(smolvlm_dir: Path, llava_dir: Path) -> dict:
    return {"smolvlm": load_vlm(smolvlm_dir), "llava": load_vlm(llava_dir)}


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# --------------------------------------------------------------------------------------------
# Fixture files in the official formats

QUESTIONS = ["What is in this image?", "what color is it?", "Is it an astronaut?", "How many cups?"]
VQA_ANSWERS = [
    ["cat"] * 10,
    ["red"] * 6 + ["Red"] * 2 + ["dark red"] * 2,
    ["yes"] * 9 + ["no"],
    ["2"] * 3 + ["two"] * 3 + ["3"] * 4,
]
ANSWER_TYPES = ["other", "other", "yes/no", "number"]


def _save(path: Path, seed: int, size: tuple[int, int] = (40, 56)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(seed, size).save(path, format="JPEG")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    # VQAv2: two questions per image; annotations in another order than the questions.
    vqa = root / "vqav2"
    questions, annotations = [], []
    for n, (question, answers, answer_type) in enumerate(
        zip(QUESTIONS, VQA_ANSWERS, ANSWER_TYPES, strict=True)
    ):
        image_id, qid = 100 + n // 2, 1000 + n
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append({
            "question_id": qid, "image_id": image_id, "question_type": question.split()[0].lower(),
            "answer_type": answer_type, "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(answers)],
        })  # fmt: skip
        _save(vqa / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", image_id, (40 + 30 * n, 56))
    (vqa / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
         "questions": questions}))  # fmt: skip
    (vqa / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({"annotations": annotations[::-1]})
    )
    # TextVQA 0.5.1 val.
    text = root / "textvqa"
    data = []
    for n, question in enumerate(QUESTIONS[:3]):
        image_id = f"{n:04x}abcd{n}"
        data.append({"question": question.lower(), "image_id": image_id, "image_classes": ["Cat"],
                     "answers": ["Nokia"] * 5 + ["nokia phone"] * 5, "question_tokens": [],
                     "question_id": 34602 + n, "set_name": "val"})  # fmt: skip
        _save(text / "train_images" / f"{image_id}.jpg", 7 + n)
    (text / "TextVQA_0.5.1_val.json").write_text(json.dumps(
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
         "data": data}))  # fmt: skip
    # GQA testdev-balanced: {question_id: {...}}.
    gqa = root / "gqa"
    gqa_questions = {}
    for n, question in enumerate(QUESTIONS):
        gqa_questions[f"20{n}968379"] = {"imageId": f"n{n}1565", "question": question,
                                         "answer": ["cat", "red", "yes", "no"][n],
                                         "fullAnswer": "...", "types": {"structural": "query"}}  # fmt: skip
        _save(gqa / "images" / f"n{n}1565.jpg", 20 + n)
    (gqa / "testdev_balanced_questions.json").write_text(json.dumps(gqa_questions))
    # COCO Karpathy: a train image between the test images (skipped).
    coco = root / "coco_caption"
    images = []
    for n, split in enumerate(["test", "train", "test", "test"]):
        folder = "val2014" if split == "test" else "train2014"
        name = f"COCO_{folder}_{n:012d}.jpg"
        images.append({"filepath": folder, "filename": name, "imgid": n, "split": split,
                       "cocoid": 391895 + n, "sentids": [2 * n, 2 * n + 1],
                       "sentences": [{"raw": f"A cat sits on mat number {n}.", "tokens": []},
                                     {"raw": "An animal on a rug.", "tokens": []}]})  # fmt: skip
        _save(coco / folder / name, 30 + n)
    (coco / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


# --------------------------------------------------------------------------------------------
# Readers


def test_readers_follow_the_official_files(data_root: Path) -> None:
    vqa = DATASETS["vqav2"](data_root / "vqav2")
    assert [s.id for s in vqa] == [1000, 1001, 1002, 1003]  # the questions file's order
    assert vqa[1].question == "what color is it?" and vqa[1].answers == tuple(VQA_ANSWERS[1])
    assert vqa[2].info["answer_type"] == "yes/no" and vqa[3].info["image_id"] == 101
    assert vqa[3].image.name == "COCO_val2014_000000000101.jpg"
    assert vqa.load_image(0).mode == "RGB" and vqa.total == 4
    assert [s.id for s in DATASETS["vqav2"](data_root / "vqav2", limit=2)] == [1000, 1001]
    text = DATASETS["textvqa"](data_root / "textvqa")
    assert [s.id for s in text] == [34602, 34603, 34604] and len(text[0].answers) == 10
    gqa = DATASETS["gqa"](data_root / "gqa")
    assert [s.id for s in gqa] == ["200968379", "201968379", "202968379", "203968379"]
    assert gqa[3].answers == ("no",) and gqa[3].image.name == "n31565.jpg"
    coco = DATASETS["coco_caption"](data_root / "coco_caption")
    assert [s.id for s in coco] == [391895, 391897, 391898]  # the Karpathy test images only
    assert coco[0].question is None and coco[0].answers[1] == "An animal on a rug."


@pytest.mark.parametrize("task", sorted(DATASETS))
def test_missing_data_is_one_line_naming_the_layout(tmp_path: Path, task: str) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        DATASETS[task](tmp_path / task)
    message = str(caught.value)
    assert "\n" not in message and LAYOUTS[task] in message and "https://" in message


def test_missing_image_is_named(data_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gqa"
    copy.mkdir()
    (copy / "testdev_balanced_questions.json").write_bytes(
        (data_root / "gqa" / "testdev_balanced_questions.json").read_bytes()
    )
    with pytest.raises(FileNotFoundError, match=r"image images/n01565\.jpg not found"):
        DATASETS["gqa"](copy)


# --------------------------------------------------------------------------------------------
# Batched generation


def _requests() -> list[tuple[list[Image.Image], str]]:
    """Prompts of different lengths, images of different sizes (different SmolVLM tile counts)."""
    return [
        ([_image(1, (40, 56))], "What?"),
        ([_image(2, (90, 33))], "What is in this image? Answer the question using a word."),
        ([_image(3, (64, 64))], "Describe the image briefly."),
    ]


@pytest.mark.parametrize("kind", ["smolvlm", "llava"])
def test_batched_generation_equals_one_by_one(pipelines: dict, kind: str) -> None:
    pipeline = pipelines[kind]
    assert batch_generation.batchable(pipeline)
    requests = _requests()
    alone = [
        pipeline.decode(pipeline.generate(pipeline.prepare(images, prompt), max_new_tokens=8))
        for images, prompt in requests
    ]
    batched = generate_batch(pipeline, requests, max_new_tokens=8)
    assert batched == alone
    assert len({len(a) for a in alone}) > 1 or all(alone)  # answers are not all empty


def test_llava_batch_equals_transformers_left_padded_batch(
    pipelines: dict, llava_dir: Path
) -> None:
    """transformers' processor with padding_side="left" + generate, decoded without specials."""
    processor = transformers.AutoProcessor.from_pretrained(llava_dir)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    requests = _requests()
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
        )
        for _, p in requests
    ]
    inputs = processor(text=texts, images=[im[0] for im, _ in requests], padding=True,
                       padding_side="left", return_tensors="pt")  # fmt: skip
    assert len({int(m.sum()) for m in inputs["attention_mask"]}) > 1  # really padded
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = processor.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert generate_batch(pipelines["llava"], requests, max_new_tokens=8) == expected


# --------------------------------------------------------------------------------------------
# Scoring


def test_scores_by_hand() -> None:
    # TextVQA: EvalAI-normalised on both sides, so "Nokia" matches the five "Nokia" answers.
    answers = ["Nokia"] * 5 + ["nokia phone"] * 5
    assert textvqa_accuracy("NOKIA", answers) == 1.0
    assert textvqa_accuracy("the Nokia phone.", answers) == 1.0
    assert textvqa_accuracy("phone", answers) == 0.0
    assert textvqa_accuracy("x", ["x"] + ["y"] * 9) == pytest.approx(0.3)
    assert gqa_exact_match("Yes.", "yes") == 1.0 and gqa_exact_match("a cat", "cat") == 0.0
    samples = DATASETS_CACHE["vqav2"]
    # Official VQA: "Red" vs 6 "red" + 2 "Red" + 2 "dark red" (not all equal: normalised) -> 1;
    # "Cat" vs ten "cat" (all equal: compared verbatim) -> 0, but 1 for lmms-eval's normalisation.
    metrics = score_predictions("vqav2", samples, ["Cat", "Red", "yes", "two"])
    per_type = {"other": (0.0 + 1.0) / 2, "yes/no": 1.0, "number": 1.0}
    assert metrics["vqa_accuracy"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert metrics["vqa_accuracy_other"] == per_type["other"]
    assert metrics["vqa_accuracy_yes_no"] == 1.0 and metrics["vqa_accuracy_number"] == 1.0
    assert metrics["vqa_accuracy_lmms_eval"] == 1.0


DATASETS_CACHE: dict[str, GenerativeSet] = {}


@pytest.fixture(autouse=True)
def _datasets(data_root: Path) -> None:
    if not DATASETS_CACHE:
        for task, reader in DATASETS.items():
            DATASETS_CACHE[task] = reader(data_root / task)


# --------------------------------------------------------------------------------------------
# End to end: prompts, submission files, scores


def test_vqav2_run_writes_the_official_results_file(
    pipelines: dict,
    smolvlm_dir: Path,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = DATASETS_CACHE["vqav2"]
    seen: list[str] = []
    original = batch_generation.generate_batch

    def spy(pipeline, requests, max_new_tokens=16, **options):
        seen.extend(prompt for _, prompt in requests)
        assert max_new_tokens == 16
        return original(pipeline, requests, max_new_tokens, **options)

    monkeypatch.setattr(batch_generation, "generate_batch", spy)
    record = run_generative_task(smolvlm_dir, "vqav2", dataset, tmp_path, batch_size=3,
                                 pipeline=pipelines["smolvlm"], progress=False)  # fmt: skip
    assert seen[1] == "what color is it?\nAnswer the question using a single word or phrase."
    assert {k: record[k] for k in ("dataset", "model", "task", "language", "samples", "resumed")} == {
        "dataset": "vqav2", "model": "smolvlm", "task": "vqa", "language": "en", "samples": 4,
        "resumed": 0,
    }  # fmt: skip
    assert record["pretrained"] == str(smolvlm_dir) and record["seconds"] > 0
    # The results file is the official one: the official reader takes it, and scores agree.
    submission = Path(record["submission"])
    assert submission.name == "v2_OpenEnded_mscoco_val2014_vlkit_results.json"
    predictions, annotations, qids = read_vqa(
        data_root / "vqav2" / "v2_mscoco_val2014_annotations.json",
        data_root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json",
        submission,
    )
    assert qids == [1000, 1001, 1002, 1003]
    expected = vqa_corpus_accuracy(predictions, annotations, qids)
    assert record["metrics"]["vqa_accuracy"] == expected["overall"]
    assert set(record["metrics"]) == {"vqa_accuracy", "vqa_accuracy_other", "vqa_accuracy_yes_no",
                                      "vqa_accuracy_number", "vqa_accuracy_lmms_eval"}  # fmt: skip


@pytest.mark.parametrize("task", ["textvqa", "gqa", "coco_caption"])
def test_llava_runs_each_task(pipelines: dict, llava_dir: Path, data_root: Path, tmp_path: Path,
                              task: str) -> None:  # fmt: skip
    dataset = DATASETS_CACHE[task]
    budget = 8 if task == "coco_caption" else None  # 64 by default: kept short on CPU
    record = run_generative_task(llava_dir, task, dataset, tmp_path, limit=3, batch_size=2,
                                 max_new_tokens=budget, pipeline=pipelines["llava"],
                                 progress=False)  # fmt: skip
    assert record["samples"] == 3 and record["model"] == "llava"
    rows = json.loads(Path(record["submission"]).read_text())
    samples = dataset.samples[:3]
    regenerated = generate_batch(  # one batch of 3: the answers do not depend on batching
        pipelines["llava"],
        [([dataset.load_image(i)], TASKS[task].prompt(s)) for i, s in enumerate(samples)],
        budget or TASKS[task].max_new_tokens,
    )
    answers = [a.strip() for a in regenerated]
    if task == "textvqa":
        assert rows == [
            {"question_id": s.id, "answer": a} for s, a in zip(samples, answers, strict=True)
        ]
        assert TASKS[task].prompt(samples[0]).startswith("What is in this image?\n")
        assert record["metrics"] == {"vqa_accuracy": sum(
            textvqa_accuracy(a, s.answers) for s, a in zip(samples, answers, strict=True)) / 3}  # fmt: skip
    elif task == "gqa":
        assert rows == [
            {"questionId": s.id, "prediction": a} for s, a in zip(samples, answers, strict=True)
        ]
        assert set(record["metrics"]) == {"exact_match"}
    else:
        assert rows == [
            {"image_id": s.id, "caption": a} for s, a in zip(samples, answers, strict=True)
        ]
        references, candidates = read_caption_results(
            _coco_references(dataset, tmp_path), record["submission"]
        )
        assert record["metrics"] == caption_scores(references, candidates)
        assert set(record["metrics"]) == {f"bleu_{n}" for n in range(1, 5)} | {"rouge_l", "cider_d"}


def _coco_references(dataset: GenerativeSet, tmp_path: Path) -> Path:
    """The Karpathy test references as a COCO captions file (what COCOEvalCap reads)."""
    path = tmp_path / "captions_karpathy_test.json"
    path.write_text(json.dumps({
        "images": [{"id": s.id, "file_name": s.image.name} for s in dataset],
        "annotations": [{"image_id": s.id, "caption": c} for s in dataset for c in s.answers],
    }))  # fmt: skip
    return path


# --------------------------------------------------------------------------------------------
# Resume


def test_interrupted_run_resumes_where_it_stopped(
    pipelines: dict, smolvlm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = DATASETS_CACHE["gqa"]
    options = dict(batch_size=1, max_new_tokens=4, pipeline=pipelines["smolvlm"], progress=False)
    full = run_generative_task(smolvlm_dir, "gqa", dataset, tmp_path / "full", **options)
    original = batch_generation.generate_batch
    calls: list[int] = []

    def dies_on_third_batch(pipeline, requests, max_new_tokens, **kwargs):
        calls.append(len(requests))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(pipeline, requests, max_new_tokens, **kwargs)

    monkeypatch.setattr(batch_generation, "generate_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_generative_task(smolvlm_dir, "gqa", dataset, tmp_path / "cut", **options)
    cache = tmp_path / "cut" / "gqa" / "cache.jsonl"
    assert len(cache.read_text().splitlines()) == 1 + 2  # header + the two finished samples
    with cache.open("a") as out:  # the process died while writing a third line
        out.write('{"id": "202968379", "predi')
    calls.clear()  # the resumed run would die at its third batch: it needs only two
    resumed = run_generative_task(smolvlm_dir, "gqa", dataset, tmp_path / "cut", **options)
    assert calls == [1, 1] and resumed["resumed"] == 2  # only the two missing samples
    assert resumed["metrics"] == full["metrics"]
    full_rows = Path(full["submission"]).read_text()
    assert Path(resumed["submission"]).read_text() == full_rows
    assert len(cache.read_text().splitlines()) == 1 + 4


def test_cache_of_another_model_is_refused(
    pipelines: dict, smolvlm_dir: Path, llava_dir: Path, tmp_path: Path
) -> None:
    dataset = DATASETS_CACHE["gqa"]
    run_generative_task(smolvlm_dir, "gqa", dataset, tmp_path, limit=1,
                        pipeline=pipelines["smolvlm"], progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"cache\.jsonl: cached predictions were made with model="):
        run_generative_task(llava_dir, "gqa", dataset, tmp_path, limit=1,
                            pipeline=pipelines["llava"], progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="unknown generative task 'vqa3'"):
        run_generative_task(smolvlm_dir, "vqa3", dataset, tmp_path)
