"""`vlkit eval ...`: metrics equal the library functions, reports and plots are written, and bad
input files exit with status 2 and one line naming the file and the key."""

import json
import shutil

import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.data.images import load_image
from vlkit.evaluation import (
    caption_scores,
    retrieval_metrics,
    vqa_corpus_accuracy,
    zero_shot,
)

COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 200, 40),
    "dark_blue": (10, 10, 120),
    "yellow": (240, 230, 30),
    "white": (250, 250, 250),
    "grey": (120, 120, 120),
}


def _solid(path, rgb, shade):
    # Two shades per class, so that a class has several distinct images.
    colour = tuple(max(0, c - shade) for c in rgb)
    Image.new("RGB", (40, 32), colour).save(path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for shade in (0, 40):
            _solid(root / name / f"{shade}.png", rgb, shade)
    return root


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _model(checkpoint):
    model = vlkit.from_pretrained(str(checkpoint))
    tokenizer = vlkit.get_tokenizer(
        str(checkpoint), context_length=model.config.text.context_length
    )
    return model, tokenizer, vlkit.get_transform(model)


def test_zeroshot_matches_zero_shot_and_writes_report(checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "zs"
    argv = ["eval", "zeroshot", "--model", str(checkpoint), "--images", str(image_folder),
            "--templates", "cifar", "--out", str(out), "--batch-size", "5"]  # fmt: skip
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    printed = json.loads(stdout)
    assert json.loads((out / "metrics.json").read_text()) == printed

    model, tokenizer, transform = _model(checkpoint)
    classes = sorted(COLOURS)
    paths = [image_folder / c / f"{s}.png" for c in classes for s in (0, 40)]
    pixels = torch.stack([transform(load_image(p)) for p in paths])
    labels = torch.tensor([i for i in range(len(classes)) for _ in (0, 40)])
    names = [c.replace("_", " ") for c in classes]
    expected = zero_shot(model, tokenizer, pixels, labels, names, "cifar")
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert printed[key] == pytest.approx(expected[key], abs=1e-9), key
    assert set(printed["per_class_recall"]) == set(names)  # "dark blue": "_" -> " "
    recalls = list(printed["per_class_recall"].values())
    assert sum(recalls) / len(recalls) == pytest.approx(printed["mean_per_class_recall"])
    assert printed["num_images"] == 12 and printed["num_classes"] == 6

    report = (out / "report.md").read_text()
    assert "| top1 |" in report and "![per_class_recall](per_class_recall.png)" in report
    assert (out / "per_class_recall.png").stat().st_size > 1000


def test_zeroshot_with_fewer_than_five_classes_reports_top5_as_null(
    checkpoint, image_folder, tmp_path, capsys
):
    root = tmp_path / "two"
    for name in ("red", "green"):
        (root / name).mkdir(parents=True)
        _solid(root / name / "a.png", COLOURS[name], 0)
    out = tmp_path / "zs2"
    argv = ["eval", "zeroshot", "--model", str(checkpoint), "--images", str(root),
            "--out", str(out), "--templates", "none"]  # fmt: skip
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    assert json.loads(stdout)["top5"] is None  # NaN in the library, null in strict JSON
    assert "| top5 | n/a |" in (out / "report.md").read_text()


@pytest.fixture(scope="module")
def coco_captions(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    names = ["red", "green", "dark_blue", "yellow", "white"]
    images, annotations = [], []
    for i, name in enumerate(names):
        _solid(root / "images" / f"{i:03d}.png", COLOURS[name], 0)
        images.append({"id": 100 + i, "file_name": f"{i:03d}.png"})
        for j, text in enumerate([f"a {name} square", f"something {name.replace('_', ' ')}"]):
            annotations.append({"id": 10 * i + j, "image_id": 100 + i, "caption": text})
    captions = root / "captions.json"
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))
    return captions, root / "images", images, annotations


def test_retrieval_matches_retrieval_metrics(checkpoint, coco_captions, tmp_path, capsys):
    captions, image_root, images, annotations = coco_captions
    out = tmp_path / "rt"
    argv = ["eval", "retrieval", "--model", str(checkpoint), "--captions", str(captions),
            "--images", str(image_root), "--out", str(out)]  # fmt: skip
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    printed = json.loads(stdout)

    model, tokenizer, transform = _model(checkpoint)
    with torch.no_grad():
        pixels = torch.stack([transform(load_image(image_root / im["file_name"])) for im in images])
        image_emb = model.encode_image(pixels, normalize=True)
        text_emb = model.encode_text(tokenizer([a["caption"] for a in annotations]), normalize=True)
    ids = [a["image_id"] - 100 for a in annotations]
    expected = retrieval_metrics(image_emb, text_emb, ids)
    for key, value in expected.items():
        assert printed[key] == pytest.approx(value, abs=1e-9), key
    curve = printed["recall_curve"]
    assert curve["k"] == list(range(1, 11))
    assert curve["i2t"][0] == pytest.approx(expected["i2t_r1"])
    assert curve["t2i"][4] == pytest.approx(expected["t2i_r5"])
    assert curve["i2t"][-1] == 1.0  # 10 captions: every image's caption is within the top 10
    assert (out / "recall_at_k.png").is_file()
    assert "recall_at_k.png" in (out / "report.md").read_text()


def _vqa_files(tmp_path, drop_key=None):
    annotations, questions, results = [], [], []
    rows = [
        (1, "what color is", "other", ["red"] * 10, "Red"),
        (2, "is the", "yes/no", ["yes"] * 7 + ["no"] * 3, "no"),
        (3, "how many", "number", ["2"] * 2 + ["two"] * 2 + ["3"] * 6, "two"),
        (4, "is the", "yes/no", ["no"] * 10, "no"),
        (5, "what color is", "other", ["dark blue"] * 5 + ["blue"] * 5, "blue."),
    ]
    for qid, qtype, atype, answers, prediction in rows:
        ann = {"question_id": qid, "image_id": qid, "question_type": qtype, "answer_type": atype,
               "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]}  # fmt: skip
        annotations.append(ann)
        questions.append({"question_id": qid, "image_id": qid, "question": f"q{qid}?"})
        results.append({"question_id": qid, "answer": prediction})
    if drop_key is not None:
        del annotations[2][drop_key]
    paths = {name: tmp_path / f"{name}.json" for name in ("ann", "q", "res")}
    paths["ann"].write_text(json.dumps({"annotations": annotations}))
    paths["q"].write_text(json.dumps({"questions": questions}))
    paths["res"].write_text(json.dumps(results))
    return paths, annotations, results


def _vqa_argv(paths, out):
    return ["eval", "vqa", "--annotations", str(paths["ann"]), "--questions", str(paths["q"]),
            "--results", str(paths["res"]), "--out", str(out)]  # fmt: skip


def test_vqa_matches_vqa_corpus_accuracy(tmp_path, capsys):
    paths, annotations, results = _vqa_files(tmp_path)
    code, stdout, _ = _run(_vqa_argv(paths, tmp_path / "vqa"), capsys)
    assert code == 0
    printed = json.loads(stdout)
    expected = vqa_corpus_accuracy(results, {"annotations": annotations})
    assert printed["overall"] == expected["overall"]
    assert printed["per_answer_type"] == expected["per_answer_type"]
    assert printed["per_question_type"] == expected["per_question_type"]
    assert printed["num_questions"] == 5
    report = (tmp_path / "vqa" / "report.md").read_text()
    assert "## Per answer type" in report and "| yes/no |" in report
    assert (tmp_path / "vqa" / "per_answer_type.png").is_file()


def test_vqa_results_must_answer_every_question(tmp_path, capsys):
    paths, _, results = _vqa_files(tmp_path)
    paths["res"].write_text(json.dumps(results[:-1]))
    code, _, err = _run(_vqa_argv(paths, tmp_path / "vqa"), capsys)
    assert code == 2
    assert err.count("\n") == 1 and "res.json" in err and "question_id" in err and " 5 " in err


def _caption_files(tmp_path):
    refs = {
        1: ["a red square on a white background", "a red block"],
        2: ["two green circles", "green circles on grey", "a pair of green dots"],
        3: ["a blue triangle", "the triangle is blue"],
    }
    candidates = {1: "a red square", 2: "green circles", 3: "a yellow star."}
    references = {
        "images": [{"id": i, "file_name": f"{i}.png"} for i in refs],
        "annotations": [
            {"id": 10 * i + k, "image_id": i, "caption": c}
            for i, caps in refs.items()
            for k, c in enumerate(caps)
        ],
    }
    ref_path, res_path = tmp_path / "captions.json", tmp_path / "res.json"
    ref_path.write_text(json.dumps(references))
    res_path.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in candidates.items()]))
    return ref_path, res_path, refs, candidates


@pytest.mark.parametrize("tokenizer", ["ptb", "none"])
def test_captions_match_caption_scores(tmp_path, capsys, tokenizer):
    ref_path, res_path, refs, candidates = _caption_files(tmp_path)
    out = tmp_path / "cap"
    argv = ["eval", "captions", "--references", str(ref_path), "--results", str(res_path),
            "--out", str(out), "--tokenizer", tokenizer]  # fmt: skip
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    printed = json.loads(stdout)
    expected = caption_scores(refs, candidates, tokenizer=None if tokenizer == "none" else "ptb")
    for key, value in expected.items():
        assert printed[key] == pytest.approx(value, abs=1e-12), key
    assert printed["num_images"] == 3
    assert (out / "cider_d_histogram.png").is_file()
    assert "| cider_d |" in (out / "report.md").read_text()


def test_captions_metric_subset_without_cider_has_no_plot(tmp_path, capsys):
    ref_path, res_path, _, _ = _caption_files(tmp_path)
    out = tmp_path / "cap"
    argv = ["eval", "captions", "--references", str(ref_path), "--results", str(res_path),
            "--out", str(out), "--metrics", "rouge_l"]  # fmt: skip
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    assert set(json.loads(stdout)) == {"rouge_l", "num_images"}
    assert not list(out.glob("*.png")) and (out / "report.md").is_file()


def _missing_key_cases(tmp_path):
    """(argv, file name, key) triples: each input file with one record lacking a key."""
    cases = []
    (tmp_path / "v").mkdir()
    vqa_paths, _, _ = _vqa_files(tmp_path / "v", drop_key="answer_type")
    cases.append((_vqa_argv(vqa_paths, tmp_path / "o1"), "ann.json", "answer_type"))
    (tmp_path / "c").mkdir()
    ref_path, res_path, _, _ = _caption_files(tmp_path / "c")
    res_path.write_text(json.dumps([{"image_id": 1, "text": "a red square"}]))
    argv = ["eval", "captions", "--references", str(ref_path), "--results", str(res_path),
            "--out", str(tmp_path / "o2")]  # fmt: skip
    cases.append((argv, "res.json", "caption"))
    return cases


def test_missing_key_exits_2_with_one_line_naming_file_and_key(tmp_path, capsys):
    for argv, file_name, key in _missing_key_cases(tmp_path):
        code, _, err = _run(argv, capsys)
        assert code == 2, argv
        assert err.startswith("vlkit: error: ") and err.count("\n") == 1, err
        assert file_name in err and repr(key) in err, err


def test_retrieval_missing_file_name_key(checkpoint, coco_captions, tmp_path, capsys):
    captions, image_root, images, annotations = coco_captions
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": annotations}))
    argv = ["eval", "retrieval", "--model", str(checkpoint), "--captions", str(bad),
            "--images", str(image_root), "--out", str(tmp_path / "o")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "bad.json" in err and "'file_name'" in err and "images[0]" in err


def test_missing_files_and_bad_folders_exit_2(checkpoint, tmp_path, capsys):
    missing = tmp_path / "nope.json"
    argv = ["eval", "vqa", "--annotations", str(missing), "--questions", str(missing),
            "--results", str(missing), "--out", str(tmp_path / "o")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2 and "--annotations" in err and "nope.json" in err
    (tmp_path / "empty_class").mkdir()
    argv = ["eval", "zeroshot", "--model", str(checkpoint), "--images", str(tmp_path),
            "--out", str(tmp_path / "o")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2 and "has no images" in err


def _truncated_png(path):
    Image.new("RGB", (40, 32), (1, 2, 3)).save(path.with_suffix(".tmp.png"))
    whole = path.with_suffix(".tmp.png").read_bytes()
    path.with_suffix(".tmp.png").unlink()
    path.write_bytes(whole[: len(whole) // 2])


def test_zeroshot_skips_unreadable_images_and_records_them(
    checkpoint, image_folder, tmp_path, capsys
):
    # Issue 18 Build 4: like index / embed, skip with a warning naming the file and a count;
    # metrics.json says how many images were scored and which were left out.
    root = tmp_path / "imgs"
    shutil.copytree(image_folder, root)
    bad = root / "red" / "cut.png"
    _truncated_png(bad)
    clean_argv = ["eval", "zeroshot", "--model", str(checkpoint), "--images", str(image_folder),
                  "--templates", "cifar", "--out", str(tmp_path / "clean")]  # fmt: skip
    assert _run(clean_argv, capsys)[0] == 0
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())

    argv = ["eval", "zeroshot", "--model", str(checkpoint), "--images", str(root),
            "--templates", "cifar", "--out", str(tmp_path / "zs"), "--batch-size", "5"]  # fmt: skip
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    printed = json.loads(stdout)
    assert printed["skipped_images"] == [str(bad)] and printed["num_images"] == 12
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text()) == printed
    for key in ("top1", "top5", "mean_per_class_recall", "per_class_recall"):
        assert printed[key] == pytest.approx(clean[key]), key
    assert clean["skipped_images"] == [] and clean["num_images"] == 12
    assert "cut.png" in err and "skipped 1 unreadable image(s) of 13" in err
    assert "| skipped_images | 1 |" in (tmp_path / "zs" / "report.md").read_text()

    code, _, err = _run([*argv, "--strict"], capsys)
    last = err.splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith("vlkit: error: ") and "cut.png" in last
    assert "Traceback" not in err and not (tmp_path / "zs" / "strict").exists()

    (root / "only_bad").mkdir()
    shutil.move(bad, root / "only_bad" / "cut.png")
    for name in COLOURS:
        shutil.rmtree(root / name)
    code, _, err = _run(argv, capsys)
    assert code == 2 and "none of the 1 images could be read" in err


def test_retrieval_skips_unreadable_images_with_their_captions(
    checkpoint, coco_captions, tmp_path, capsys
):
    captions, image_root, images, annotations = coco_captions
    root = tmp_path / "images"
    shutil.copytree(image_root, root)
    _truncated_png(root / "cut.png")
    extra_ann = [{"id": 900 + j, "image_id": 999, "caption": f"cut {j}"} for j in range(2)]
    data = {"images": [images[0], {"id": 999, "file_name": "cut.png"}, *images[1:]],
            "annotations": [*extra_ann, *annotations]}  # fmt: skip
    with_bad = tmp_path / "captions.json"
    with_bad.write_text(json.dumps(data))

    def run(captions_file, out, *extra):
        argv = ["eval", "retrieval", "--model", str(checkpoint), "--captions", str(captions_file),
                "--images", str(root), "--out", str(tmp_path / out), *extra]  # fmt: skip
        return _run(argv, capsys)

    code, stdout, _ = run(captions, "clean")
    assert code == 0
    clean = json.loads(stdout)
    code, stdout, err = run(with_bad, "rt", "--batch-size", "2")
    assert code == 0, err
    printed = json.loads(stdout)
    assert printed["skipped_images"] == [str(root / "cut.png")]
    assert (printed["num_images"], printed["num_texts"]) == (5, 10)
    assert printed.keys() == clean.keys()
    for key, value in clean.items():
        if key == "recall_curve":
            for direction in ("i2t", "t2i"):
                assert printed[key][direction] == pytest.approx(value[direction]), direction
        elif key != "skipped_images":
            assert printed[key] == pytest.approx(value), key
    assert "cut.png" in err and "skipped 1 unreadable image(s) of 6" in err

    code, _, err = run(with_bad, "rt2", "--strict")
    last = err.splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith("vlkit: error: ") and "cut.png" in last
    assert not (tmp_path / "rt2" / "metrics.json").exists()
