"""Bad input on every `vlkit` command: exit status 2, no traceback, one message naming the culprit.

A matrix of command x bad-input class (missing / zero-byte / truncated / non-image / huge files,
wrong types, out-of-range numbers, an unavailable device, a file where a directory is expected
and the other way round, malformed config and benchmark files). Most cases run `vlkit.cli.main`
in-process (milliseconds each: the checks run before any model is loaded, or load the tiny
checkpoint of conftest); a few run the real `python -m vlkit` to cover the process exit status,
`--debug` and VLKIT_DEBUG. Also here: the library side of the same checks (resolve_device,
config ranges, config.json field paths, the pickle refusal message, file modes), and `embed` /
`index` skipping unreadable images without losing the others.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.distributed import resolve_device
from vlkit.overrides import ConfigError
from vlkit.training.config import TrainConfig

GPU = torch.cuda.is_available()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb) with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory, checkpoint) -> dict[str, Path]:
    """Every bad (and one good) input the matrix uses, under one temporary folder."""
    root = tmp_path_factory.mktemp("bad_input")
    good = root / "good"
    good.mkdir()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(good / "red.png")
    Image.new("RGB", (40, 30), (20, 20, 200)).save(good / "blue.jpg")
    whole = (good / "blue.jpg").read_bytes()
    paths = {"ck": checkpoint, "good": good, "image": good / "red.png", "root": root}
    bad = {
        "zero_byte": (root / "empty.png", b""),
        "truncated": (root / "cut.jpg", whole[: len(whole) // 2]),
        "non_image": (root / "notes.png", b"<html>not an image</html>"),
        "huge": (root / "bomb.png", _png_claiming(20000, 20000)),
    }
    for name, (path, data) in bad.items():
        path.write_bytes(data)
        paths[name] = path
    paths["a_file"] = root / "a_file.txt"
    paths["a_file"].write_text("just text\n")
    paths["missing"] = root / "missing.png"
    paths["empty_dir"] = root / "empty_dir"
    paths["empty_dir"].mkdir()
    # A folder with one good image and one of each kind of bad one (embed / index skip them).
    mixed = root / "mixed"
    mixed.mkdir()
    shutil.copy(good / "red.png", mixed / "a_red.png")
    for name in ("zero_byte", "truncated", "non_image", "huge"):
        shutil.copy(paths[name], mixed / f"b_{paths[name].name}")
    paths["mixed"] = mixed
    only_bad = root / "only_bad"
    only_bad.mkdir()
    shutil.copy(paths["truncated"], only_bad / "cut.jpg")
    paths["only_bad"] = only_bad
    # ImageFolder tree for `eval zeroshot`.
    folder = root / "classes"
    for name in ("red", "blue"):
        (folder / name).mkdir(parents=True)
        shutil.copy(good / "red.png", folder / name / "x.png")
    paths["classes"] = folder
    # Model directories whose config.json has a wrong type.
    for name, edit in {
        "cfg_hidden_str": lambda c: c["vision_config"].update(hidden_size="64"),
        "cfg_projection_null": lambda c: c.update(projection_dim=None),
        "cfg_vision_list": lambda c: c.update(vision_config=[1, 2]),
        "cfg_heads": lambda c: c["vision_config"].update(num_attention_heads=5),
        "cfg_act": lambda c: c["vision_config"].update(hidden_act="foo"),
    }.items():
        directory = root / name
        shutil.copytree(checkpoint, directory)
        config = json.loads((directory / "config.json").read_text())
        edit(config)
        (directory / "config.json").write_text(json.dumps(config))
        paths[name] = directory
    # A preprocessor_config.json with a bad size.
    paths["pp_size"] = root / "pp_size"
    shutil.copytree(checkpoint, paths["pp_size"])
    preprocessor = json.loads((paths["pp_size"] / "preprocessor_config.json").read_text())
    (paths["pp_size"] / "preprocessor_config.json").write_text(json.dumps({**preprocessor,
                                                                          "size": "x"}))  # fmt: skip
    # The same in vlkit's own format (vlkit_config.json).
    vlkit_format = root / "cfg_vlkit_width_str"
    vlkit.create_model("tiny").save_pretrained(vlkit_format, format="vlkit")
    config = json.loads((vlkit_format / "vlkit_config.json").read_text())
    config["vision"]["width"] = "64"
    (vlkit_format / "vlkit_config.json").write_text(json.dumps(config))
    paths["cfg_vlkit_width_str"] = vlkit_format

    # Benchmark files.
    def write(name: str, data) -> Path:
        (root / name).write_text(json.dumps(data))
        return root / name

    refs = {"images": [{"id": 1, "file_name": "red.png"}, {"id": 2, "file_name": "blue.jpg"}],
            "annotations": [{"image_id": 1, "caption": "a red thing"},
                            {"image_id": 2, "caption": "a blue thing"}]}  # fmt: skip
    paths["refs"] = write("refs.json", refs)
    bad_refs = json.loads(json.dumps(refs))
    bad_refs["annotations"][1]["caption"] = 7
    paths["refs_nonstring"] = write("refs_nonstring.json", bad_refs)
    paths["results_nonstring"] = write("res_nonstring.json", [{"image_id": 1, "caption": ["a"]},
                                                              {"image_id": 2, "caption": "b"}])  # fmt: skip
    paths["results_subset"] = write("res_subset.json", [{"image_id": 1, "caption": "red"}])
    paths["invalid_json"] = root / "invalid.json"
    paths["invalid_json"].write_text('{"images": [')
    paths["vqa_ann"] = write("vqa_ann.json", {"annotations": [
        {"question_id": 1, "question_type": "what", "answer_type": "other",
         "answers": [{"answer": "red"}] * 10}]})  # fmt: skip
    paths["vqa_q"] = write("vqa_q.json", {"questions": [{"question_id": 1}]})
    paths["vqa_res_nonstring"] = write("vqa_res.json", [{"question_id": 1, "answer": 3}])
    paths["train_cfg_wrong_type"] = write("train_cfg.json", {"optim": {"batch_size": "eight"}})
    paths["train_cfg_list"] = write("train_cfg_list.json", [1, 2])
    return paths


def _fails(argv: list[str], culprit: str, capsys) -> str:
    """Runs `vlkit ARGV` in-process: status 2, no traceback, the last line names `culprit`."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vlkit"), err  # "vlkit: error: ..." or argparse's "vlkit CMD: error:"
    assert culprit in last, last
    return last


# (id, argv with {placeholders} from `files`, text the message must contain)
CASES = [
    # zeroshot: image files of every bad kind, the model, numbers, device.
    ("zeroshot-missing", "zeroshot {missing} --model {ck} --labels a,b", "missing.png"),
    ("zeroshot-zero-byte", "zeroshot {zero_byte} --model {ck} --labels a,b", "empty.png"),
    ("zeroshot-truncated", "zeroshot {truncated} --model {ck} --labels a,b", "cut.jpg"),
    ("zeroshot-non-image", "zeroshot {non_image} --model {ck} --labels a,b", "notes.png"),
    ("zeroshot-huge", "zeroshot {huge} --model {ck} --labels a,b", "bomb.png"),
    ("zeroshot-dir-as-image", "zeroshot {good} --model {ck} --labels a,b", "good"),
    ("zeroshot-model-missing", "zeroshot {image} --model {root}/nope --labels a", "nope"),
    ("zeroshot-model-is-file", "zeroshot {image} --model {a_file} --labels a", "a_file.txt"),
    ("zeroshot-top-0", "zeroshot {image} --model {ck} --labels a,b --top 0", "--top"),
    ("zeroshot-top-neg", "zeroshot {image} --model {ck} --labels a,b --top -1", "--top"),
    ("zeroshot-top-text", "zeroshot {image} --model {ck} --labels a,b --top two", "--top"),
    ("zeroshot-labels-empty", "zeroshot {image} --model {ck} --labels ,", "--labels"),
    ("zeroshot-device-unknown", "zeroshot {image} --model {ck} --labels a --device gpu", "gpu"),
    (
        "zeroshot-templates-missing",
        "zeroshot {image} --model {ck} --labels a --templates {missing}",
        "missing.png",
    ),  # fmt: skip
    # config.json with wrong types: the file and the key's path.
    (
        "config-hidden-size-str",
        "zeroshot {image} --model {cfg_hidden_str} --labels a",
        'vision_config.hidden_size must be an int, got "64"',
    ),  # fmt: skip
    (
        "config-projection-null",
        "zeroshot {image} --model {cfg_projection_null} --labels a",
        "config.json: projection_dim must be an int, got null",
    ),  # fmt: skip
    (
        "config-vision-list",
        "embed --model {cfg_vision_list} --images {good} --out {root}/x.npy",
        "config.json: vision_config must be a JSON object",
    ),  # fmt: skip
    (
        "config-vlkit-width-str",
        "index --model {cfg_vlkit_width_str} --images {good} --out {root}/ix",
        "vlkit_config.json: vision.width: expected an int, got '64'",
    ),  # fmt: skip
    (
        "config-heads",
        "zeroshot {image} --model {cfg_heads} --labels a",
        "config.json: vision_config.num_attention_heads must divide vision_config.hidden_size=",
    ),  # fmt: skip
    (
        "config-hidden-act",
        "zeroshot {image} --model {cfg_act} --labels a",
        "config.json: vision_config.hidden_act must be one of quick_gelu, gelu",
    ),  # fmt: skip
    (
        "preprocessor-size",
        "zeroshot {image} --model {pp_size} --labels a",
        "pp_size/preprocessor_config.json: unsupported 'size' value 'x'",
    ),  # fmt: skip
    # embed
    (
        "embed-images-missing",
        "embed --model {ck} --images {root}/nope --out {root}/e.npy",
        "nope: no such directory",
    ),  # fmt: skip
    ("embed-images-is-file", "embed --model {ck} --images {a_file} --out {root}/e.npy", "a_file"),
    ("embed-no-images", "embed --model {ck} --images {empty_dir} --out {root}/e.npy", "empty_dir"),
    (
        "embed-none-readable",
        "embed --model {ck} --images {only_bad} --out {root}/e.npy",
        "only_bad",
    ),  # fmt: skip
    ("embed-strict", "embed --model {ck} --images {mixed} --out {root}/e.npy --strict", "b_"),
    ("embed-texts-missing", "embed --model {ck} --texts {missing} --out {root}/e.npy", "missing"),
    (
        "embed-texts-is-dir",
        "embed --model {ck} --texts {good} --out {root}/e.npy",
        "good: is a directory",
    ),  # fmt: skip
    ("embed-texts-empty", "embed --model {ck} --texts {zero_byte} --out {root}/e.npy", "empty"),
    ("embed-out-is-dir", "embed --model {ck} --images {good} --out {good}", "--out"),
    (
        "embed-out-under-file",
        "embed --model {ck} --images {good} --out {a_file}/e.npy",
        "a_file.txt is a file",
    ),  # fmt: skip
    (
        "embed-batch-0",
        "embed --model {ck} --images {good} --out {root}/e.npy --batch-size 0",
        "--batch-size",
    ),  # fmt: skip
    # index / search
    (
        "index-images-missing",
        "index --model {ck} --images {root}/nope --out {root}/ix",
        "--images",
    ),  # fmt: skip
    ("index-images-is-file", "index --model {ck} --images {image} --out {root}/ix", "red.png"),
    ("index-out-is-file", "index --model {ck} --images {good} --out {a_file}", "a_file.txt"),
    (
        "index-batch-neg",
        "index --model {ck} --images {good} --out {root}/ix --batch-size -2",
        "--batch-size",
    ),  # fmt: skip
    ("index-strict", "index --model {ck} --images {mixed} --out {root}/ix2 --strict", "b_"),
    ("index-none-readable", "index --model {ck} --images {only_bad} --out {root}/ix3", "only_bad"),
    (
        "index-device-index",
        "index --model {ck} --images {good} --out {root}/ix --device cuda:99",
        "cuda:99",
    ),  # fmt: skip
    ("search-index-missing", "search --index {root}/nope --text a", "nope"),
    ("search-index-is-file", "search --index {a_file} --text a", "a_file.txt"),
    ("search-index-not-index", "search --index {good} --text a", "index.faiss"),
    ("search-k-0", "search --index {good} --text a --k 0", "--k"),
    ("search-image-non-image", "search --index {good} --image {non_image}", "notes.png"),
    # eval
    (
        "eval-zs-images-missing",
        "eval zeroshot --model {ck} --images {root}/nope --out {root}/o",
        "nope",
    ),  # fmt: skip
    (
        "eval-zs-images-is-file",
        "eval zeroshot --model {ck} --images {image} --out {root}/o",
        "red.png",
    ),  # fmt: skip
    (
        "eval-zs-no-classes",
        "eval zeroshot --model {ck} --images {good} --out {root}/o",
        "class subfolders",
    ),  # fmt: skip
    (
        "eval-zs-out-is-file",
        "eval zeroshot --model {ck} --images {classes} --out {a_file}",
        "a_file.txt",
    ),  # fmt: skip
    (
        "eval-zs-batch-0",
        "eval zeroshot --model {ck} --images {classes} --out {root}/o --batch-size 0",
        "--batch-size",
    ),  # fmt: skip
    (
        "eval-zs-device",
        "eval zeroshot --model {ck} --images {classes} --out {root}/o --device tpu",
        "tpu",
    ),  # fmt: skip
    (
        "eval-rt-invalid-json",
        "eval retrieval --model {ck} --captions {invalid_json} --images {good} --out {root}/o",
        "invalid.json",
    ),  # fmt: skip
    (
        "eval-rt-caption-not-string",
        "eval retrieval --model {ck} --captions {refs_nonstring} --images {good} --out {root}/o",
        "'caption' of annotations[1] must be a string",
    ),  # fmt: skip
    (
        "eval-rt-max-k-0",
        "eval retrieval --model {ck} --captions {refs} --images {good} --out {root}/o --max-k 0",
        "--max-k",
    ),  # fmt: skip
    (
        "eval-vqa-answer-not-string",
        "eval vqa --annotations {vqa_ann} --questions {vqa_q} "
        "--results {vqa_res_nonstring} --out {root}/o",
        "'answer' of results[0] must be a string",
    ),  # fmt: skip
    (
        "eval-vqa-results-zero-byte",
        "eval vqa --annotations {vqa_ann} --questions {vqa_q} --results {zero_byte} --out {root}/o",
        "empty.png",
    ),  # fmt: skip
    (
        "eval-vqa-results-is-dir",
        "eval vqa --annotations {vqa_ann} --questions {vqa_q} --results {good} --out {root}/o",
        "good: is a directory",
    ),  # fmt: skip
    (
        "eval-captions-not-string",
        "eval captions --references {refs} --results {results_nonstring} --out {root}/o",
        "'caption' of results[0] must be a string",
    ),  # fmt: skip
    (
        "eval-captions-subset",
        "eval captions --references {refs} --results {results_subset} --out {root}/o",
        "--allow-missing",
    ),  # fmt: skip
    (
        "eval-captions-metrics-empty",
        "eval captions --references {refs} --results {refs} --out {root}/o --metrics ,",
        "--metrics",
    ),  # fmt: skip
    # generate: every numeric flag, the prompt, the device, files.
    (
        "generate-max-new-0",
        "generate --model {ck} --prompt hi --max-new-tokens 0",
        "--max-new-tokens",
    ),  # fmt: skip
    (
        "generate-max-new-neg",
        "generate --model {ck} --prompt hi --max-new-tokens -3",
        "--max-new-tokens",
    ),  # fmt: skip
    ("generate-top-p-2", "generate --model {ck} --prompt hi --do-sample --top-p 2", "--top-p"),
    ("generate-top-p-0", "generate --model {ck} --prompt hi --do-sample --top-p 0", "--top-p"),
    (
        "generate-temperature-0",
        "generate --model {ck} --prompt hi --do-sample --temperature 0",
        "--temperature",
    ),  # fmt: skip
    (
        "generate-temperature-nan",
        "generate --model {ck} --prompt hi --temperature nan",
        "--temperature",
    ),  # fmt: skip
    ("generate-fps-0", "generate --model {ck} --prompt hi --fps 0", "--fps"),
    ("generate-device", "generate --model {ck} --prompt hi --device npu", "npu"),
    ("generate-model-missing", "generate --model {root}/nope --prompt hi", "nope"),
    (
        "generate-image-missing",
        "generate --model {empty_dir} --image {missing} --prompt hi",
        "missing.png",
    ),  # fmt: skip
    (
        "generate-attention-map-dir",
        "generate --model {empty_dir} --image {image} --prompt hi --attention-map {good}",
        "--attention-map",
    ),  # fmt: skip
    ("generate-not-a-vlm", "generate --model {ck} --image {image} --prompt hi", "ck"),
    # train: types, ranges, the out_dir, the device, the config file.
    ("train-batch-text", "train batch_size=abc", "optim.batch_size: expected an int, got 'abc'"),
    ("train-lr-text", "train lr=abc", "optim.lr"),
    ("train-betas-one", "train betas=0.9", "optim.betas"),
    ("train-betas-range", "train betas=0.9,1.5", "optim.betas[1]"),
    ("train-max-steps-0", "train max_steps=0", "optim.max_steps: must be >= 1, got 0"),
    ("train-max-steps-neg", "train max_steps=-1", "optim.max_steps"),
    ("train-micro-0", "train micro_batch_size=0", "optim.micro_batch_size"),
    ("train-micro-big", "train batch_size=8 micro_batch_size=16", "optim.micro_batch_size"),
    ("train-lr-0", "train lr=0", "optim.lr: must be > 0"),
    ("train-log-every-0", "train log_every=0", "log_every"),
    ("train-keep-last-neg", "train keep_last=-1", "checkpoint.keep_last"),
    ("train-out-dir-file", "train out_dir={a_file} max_steps=1", "out_dir"),
    ("train-out-dir-empty", "train out_dir= max_steps=1", "out_dir: empty"),
    ("train-lr-inf", "train optim.lr=inf", "optim.lr: must be finite, got 'inf'"),
    ("train-weight-decay-inf", "train optim.weight_decay=inf", "optim.weight_decay: must be fin"),
    ("train-lr-nan", "train lr=nan", "optim.lr: must be finite, got 'nan'"),
    ("train-grad-clip-inf", "train grad_clip=inf", "optim.grad_clip: must be finite"),
    ("train-device-unknown", "train device=tpu max_steps=1", "device 'tpu'"),
    ("train-config-missing", "train --config {root}/nope.json", "nope.json"),
    (
        "train-config-wrong-type",
        "train --config {train_cfg_wrong_type}",
        "train_cfg.json: optim.batch_size",
    ),  # fmt: skip
    ("train-config-not-object", "train --config {train_cfg_list}", "train_cfg_list.json"),
    ("train-config-invalid-json", "train --config {invalid_json}", "invalid.json"),
    ("train-vlm-steps-0", "train-vlm steps=0", "steps: must be >= 1"),
    ("train-vlm-heads", "train-vlm hidden_size=30 heads=4", "decoder.hidden_size"),
    ("train-vlm-lr-text", "train-vlm lr=abc", "optim.lr"),
    ("train-vlm-out-dir-file", "train-vlm out_dir={a_file}", "out_dir"),
    ("train-vlm-out-dir-empty", "train-vlm out_dir=", "out_dir: empty"),
    ("train-vlm-lr-inf", "train-vlm lr=inf", "optim.lr: must be finite"),
    ("train-vlm-device", "train-vlm device=gpu", "device 'gpu'"),
    # the rest
    (
        "shard-samples-0",
        "data shard --root {good} --annotations {refs} --out {root}/s --samples-per-shard 0",
        "--samples-per-shard",
    ),  # fmt: skip
    (
        "shard-out-is-file",
        "data shard --root {good} --annotations {refs} --out {a_file}",
        "a_file.txt",
    ),  # fmt: skip
    ("export-opset", "export --model {ck} --out {root}/onnx --opset 5", "--opset"),
    ("export-out-is-file", "export --model {ck} --out {a_file}", "a_file.txt"),
    (
        "explain-image-missing",
        "explain --model {ck} --image {missing} --text a --out {root}/e.png",
        "missing.png",
    ),  # fmt: skip
    ("explain-out-is-dir", "explain --model {ck} --image {image} --text a --out {good}", "--out"),
    (
        "similarity-truncated",
        "similarity --model {ck} --images {truncated} --texts a --out {root}/s.png",
        "cut.jpg",
    ),  # fmt: skip
    ("demo-seconds-0", "demo --seconds 0", "--seconds"),
    ("demo-out-is-file", "demo --out {a_file} --seconds 1", "a_file.txt"),
]
if not GPU:
    CASES += [
        ("zeroshot-cuda", "zeroshot {image} --model {ck} --labels a --device cuda", "cuda"),
        (
            "embed-cuda",
            "embed --model {ck} --images {good} --out {root}/e.npy --device cuda",
            "--device 'cuda'",
        ),  # fmt: skip
        ("index-cuda", "index --model {ck} --images {good} --out {root}/ix --device cuda", "cuda"),
        (
            "eval-cuda",
            "eval zeroshot --model {ck} --images {classes} --out {root}/o --device cuda",
            "--device 'cuda'",
        ),  # fmt: skip
        ("generate-cuda", "generate --model {ck} --prompt hi --device cuda", "--device 'cuda'"),
        ("train-cuda", "train device=cuda max_steps=1", "device 'cuda'"),
        ("train-vlm-cuda", "train-vlm device=cuda steps=1", "device 'cuda'"),
    ]


@pytest.mark.parametrize("argv, culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit(argv, culprit, files, capsys, monkeypatch):
    monkeypatch.chdir(files["root"])  # nothing may be written into the repository
    words = [word.format(**files) for word in argv.split(" ")]
    _fails(words, culprit, capsys)


def test_case_ids_are_unique():
    assert len({c[0] for c in CASES}) == len(CASES)


def test_embed_and_index_skip_unreadable_images_and_keep_the_rest(files, tmp_path, capsys):
    out = tmp_path / "vectors"  # no .npy: numpy adds it, and the message says so
    assert main(["embed", "--model", str(files["ck"]), "--images", str(files["mixed"]),
                 "--out", str(out)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert f"to {out}.npy" in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    for name in ("b_empty.png", "b_cut.jpg", "b_notes.png", "b_bomb.png"):
        assert any(name in line for line in warnings), (name, warnings)
    assert "skipped 4 unreadable image(s)" in captured.err
    rows = np.load(f"{out}.npy")
    names = json.loads(Path(f"{out}.json").read_text())["inputs"]
    assert rows.shape[0] == 1 and [Path(n).name for n in names] == ["a_red.png"]
    # The good image's row equals embedding it alone.
    assert main(["embed", "--model", str(files["ck"]), "--images", str(files["good"]),
                 "--out", str(tmp_path / "good.npy")]) == 0  # fmt: skip
    capsys.readouterr()
    good = dict(zip(json.loads((tmp_path / "good.json").read_text())["inputs"],
                    np.load(tmp_path / "good.npy"), strict=True))  # fmt: skip
    np.testing.assert_allclose(rows[0], good[str(files["good"] / "red.png")], atol=1e-5)

    assert main(["index", "--model", str(files["ck"]), "--images", str(files["mixed"]),
                 "--out", str(tmp_path / "ix")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["images"] == 1 and summary["skipped"] == 4
    assert "b_bomb.png" in captured.err and "Traceback" not in captured.err


def test_debug_flag_and_env_show_the_traceback(files, capsys, monkeypatch):
    argv = ["zeroshot", str(files["truncated"]), "--model", str(files["ck"]), "--labels", "a"]
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("vlkit: error:")
    monkeypatch.setenv("VLKIT_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def _vlkit(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlkit", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)  # fmt: skip


def test_real_processes_exit_2_with_one_line(files):
    """The real entry point (`python -m vlkit`): exit status 2 and exactly one stderr line."""
    bad_config = ["zeroshot", str(files["image"]), "--model", str(files["cfg_hidden_str"]),
                  "--labels", "a"]  # fmt: skip
    done = _vlkit(*bad_config, cwd=files["root"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"vlkit: error: {files['cfg_hidden_str'] / 'config.json'}: "
        'vision_config.hidden_size must be an int, got "64"'
    ]
    # One process only (each costs seconds of imports); --debug is checked in-process above.


# The library side of the same checks.


def test_resolve_device_names_the_setting():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if GPU else "cpu")
    assert resolve_device("auto").type == ("cuda" if GPU else "cpu")
    with pytest.raises(ValueError, match=r"^--device 'gpu': unknown device"):
        resolve_device("gpu", "--device")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="cuda:x"):
        resolve_device("cuda:x")
    with pytest.raises(ValueError, match=r"cuda:99"):
        resolve_device("cuda:99")
    if not GPU:
        with pytest.raises(ValueError, match=r"^device 'cuda': .*use device cpu"):
            resolve_device("cuda")


def test_train_config_ranges_are_checked_in_the_library():
    with pytest.raises(ConfigError, match=r"optim.max_steps: must be >= 1, got 0"):
        TrainConfig(max_steps=0)
    with pytest.raises(ConfigError, match=r"optim.micro_batch_size: must be at most"):
        TrainConfig(batch_size=8, micro_batch_size=9)
    with pytest.raises(ConfigError, match=r"loss.label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    assert TrainConfig(batch_size=8, micro_batch_size=8, keep_last=0).checkpoint.keep_last == 0


def test_pickle_refusal_gives_no_unsafe_advice(tmp_path):
    from vlkit.errors import CheckpointError
    from vlkit.hub.weights import read_weights

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"w": Payload()}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError) as caught:
        read_weights(tmp_path / "evil.bin")
    message = str(caught.value)
    assert "evil.bin" in message and "safetensors" in message and "\n" not in message
    assert "weights_only" not in message and "posix.getcwd" in message


def test_saved_files_respect_the_umask(tmp_path, checkpoint):
    previous = os.umask(0o022)
    try:
        vlkit.create_model("tiny").save_pretrained(tmp_path / "model")
    finally:
        os.umask(previous)
    for path in (tmp_path / "model").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_zero_shot_accepts_pil_images_and_paths(files):
    from vlkit.evaluation import zero_shot

    model = vlkit.from_pretrained(files["ck"])
    tokenizer, transform = vlkit.get_tokenizer(files["ck"]), vlkit.get_transform(model)
    images = [Image.open(files["image"]).convert("RGB"), Image.new("RGB", (50, 20), (0, 0, 250))]
    tensor = torch.stack([transform(image) for image in images])
    expected = zero_shot(model, tokenizer, tensor, [0, 1], ["red", "blue"], "cifar")
    got = zero_shot(model, tokenizer, images, [0, 1], ["red", "blue"], "cifar")
    for key in ("top1", "mean_per_class_recall"):  # top5 is NaN with two classes
        assert got[key] == expected[key]
    from_paths = zero_shot(model, tokenizer, [files["image"]], [0], ["red", "blue"], "cifar")
    alone = zero_shot(model, tokenizer, tensor[:1], [0], ["red", "blue"], "cifar")
    assert from_paths["top1"] == alone["top1"]


def _edited_copy(source: Path, target: Path, file: str, edit) -> Path:
    shutil.copytree(source, target)
    values = json.loads((target / file).read_text())
    edit(values)
    (target / file).write_text(json.dumps(values))
    return target


OPEN_CLIP_CFG = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                       "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2,
                     "layers": 1},
    },
    "preprocess_cfg": {},
}  # fmt: skip


@pytest.mark.parametrize(
    "file, edit, message",
    [
        ("config.json", lambda c: c["vision_config"].update(num_attention_heads=5),
         "config.json: vision_config.num_attention_heads must divide "
         "vision_config.hidden_size=64, got 5"),
        ("config.json", lambda c: c["text_config"].update(hidden_act="foo"),
         "config.json: text_config.hidden_act must be one of quick_gelu, gelu, "
         "gelu_pytorch_tanh, got 'foo'"),
        ("config.json", lambda c: c["vision_config"].update(patch_size=1000),
         "config.json: vision_config.patch_size must be <= vision_config.image_size=32, got 1000"),
        ("preprocessor_config.json", lambda c: c.update(size="x"),
         "preprocessor_config.json: unsupported 'size' value 'x'"),
        ("preprocessor_config.json", lambda c: c.update(image_mean=["a", "b", "c"]),
         "preprocessor_config.json: image_mean must be a number or 3 numbers, got ['a', 'b', 'c']"),
        ("preprocessor_config.json", lambda c: c.update(size={"shortest_edge": "x"}),
         "preprocessor_config.json: size.shortest_edge must be an int, got 'x'"),
        ("open_clip_config.json", lambda c: c["preprocess_cfg"].update(mean="x"),
         "open_clip_config.json: open_clip preprocess_cfg.mean must be a number or 3 numbers, "
         "got 'x'"),
        ("open_clip_config.json", lambda c: c["model_cfg"]["vision_cfg"].update(width="abc"),
         'open_clip_config.json: open_clip model_cfg: vision_cfg.width must be an int, got "abc"'),
        ("open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].update(heads=5),
         "open_clip_config.json: open_clip text_cfg.heads must divide text_cfg.width=32, got 5"),
        ("open_clip_config.json", lambda c: c["model_cfg"].pop("embed_dim"),
         "open_clip_config.json: open_clip model_cfg needs 'embed_dim'"),
    ],
    ids=["hf-heads", "hf-act", "hf-patch", "pp-size", "pp-mean", "pp-size-dict", "oc-mean",
         "oc-width", "oc-heads", "oc-embed-dim"],
)  # fmt: skip
def test_model_config_errors_name_the_file_once_and_the_key(
    file, edit, message, checkpoint, tmp_path
):
    # Before: "width 64 is not divisible by the number of heads 5", "unknown activation 'foo'",
    # "could not convert string to float: 'x'" (no file, no key) and the preprocessor file
    # named twice. The checks run before any weights are read, so an open_clip directory needs
    # only its config (and a weights file to find).
    from vlkit.errors import CheckpointError

    if file == "open_clip_config.json":
        source = tmp_path / "open_clip"
        source.mkdir()
        (source / file).write_text(json.dumps(OPEN_CLIP_CFG))
        (source / "open_clip_model.safetensors").write_bytes(b"")
    else:
        source = checkpoint
    target = _edited_copy(source, tmp_path / "edited", file, edit)
    with pytest.raises(ValueError) as raised:
        vlkit.from_pretrained(target)
    assert isinstance(raised.value, (CheckpointError, ConfigError))
    assert str(raised.value) == f"{target / file}: {message.split(': ', 1)[1]}"
