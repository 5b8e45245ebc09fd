"""MM-Vet (issue 14 item 4): the official grader prompt, score parsing and aggregation
(github.com/yuweihao/MM-Vet `mm-vet_evaluator.py`, commit acde843), the judges (an
OpenAI-compatible endpoint faked on 127.0.0.1, a local causal LM checked against transformers),
the reply cache, and `run_mmvet` end to end on a tiny random SmolVLM2.

The aggregation expectations are hand-computed in the comments next to them; the same fixture run
through the official notebook's aggregation cells gives the same numbers (see
/tmp/plan/NOTES-mmvet.md for that check).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.data.benchmarks.mmvet import LAYOUT, read_mmvet
from vlkit.errors import DatasetMissing
from vlkit.evaluation.judges import (
    JudgeCache,
    JudgeError,
    JudgeReply,
    LocalJudge,
    OpenAIChatJudge,
    judge_from_spec,
)
from vlkit.evaluation.mmvet import (
    GRADER_PROMPT,
    RETRY_SUFFIX,
    RETRY_TEMPERATURES,
    aggregate_mmvet,
    combination_name,
    grader_prompt,
    parse_score,
)
from vlkit.evaluation.mmvet_grading import grade_mmvet, grade_sample, retry_temperature
from vlkit.recipes.mmvet_run import grades_file, run_mmvet

# SHA-256 of the `prompt` string of mm-vet_evaluator.py at yuweihao/MM-Vet@acde843.
OFFICIAL_PROMPT_SHA256 = "d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f"

# --------------------------------------------------------------------------------------------
# Prompt and parsing


def test_grader_prompt_is_the_official_one() -> None:
    assert hashlib.sha256(GRADER_PROMPT.encode()).hexdigest() == OFFICIAL_PROMPT_SHA256
    prompt = grader_prompt("What is x?", "-1<AND>-5", "x = 3")
    # prompt + "\n" + " | ".join([question, answer (<AND>/<OR> padded), prediction, ""])
    assert prompt == GRADER_PROMPT + "\nWhat is x? | -1 <AND> -5 | x = 3 | "
    assert grader_prompt("q", "a<OR>b", "p", retry=True) == (
        GRADER_PROMPT
        + "\nq | a <OR> b | p | "
        + "\nPredict the correctness of the answer (digit): "
    )
    assert RETRY_SUFFIX.startswith("\nPredict")
    # The official retry schedule: the first call and the first retry at 0.0, then +0.5.
    assert [retry_temperature(a) for a in range(6)] == list(RETRY_TEMPERATURES)


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("0.5", 0.5), ("1.0", 1.0), ("0.0", 0.0), ("1", 1.0), ("0.7 because it", 0.7),
        ("0.3\n", 0.3), ("\n0.4", 0.4), (".9", 0.9),
        ("Score: 0.5", None), ("1.5", None), ("-0.1", None), ("", None), ("nan", None),
        ("0.5.", None), (None, None), ("great", None),
    ],
)  # fmt: skip
def test_parse_score(reply: str | None, score: float | None) -> None:
    assert parse_score(reply) == score


# --------------------------------------------------------------------------------------------
# Aggregation against hand-computed values

CAPABILITIES = {
    "v1_0": ["rec"], "v1_1": ["ocr", "math"], "v1_2": ["rec", "know", "gen"], "v1_3": ["ocr"],
    "v1_4": ["ocr", "spat", "math"], "v1_5": ["rec"], "v1_6": ["math", "ocr"],
}  # fmt: skip
SCORES = {  # two judge runs; v1_5's second grade never parsed (None: counted as 0.0)
    "v1_0": [1.0, 0.5], "v1_1": [0.5, 0.5], "v1_2": [0.4, 0.6], "v1_3": [0.0, 0.1],
    "v1_4": [1.0, 1.0], "v1_5": [0.3, None], "v1_6": [0.0, 0.3],
}  # fmt: skip


def test_aggregation_matches_hand_computed_values() -> None:
    scores = aggregate_mmvet(CAPABILITIES, SCORES)
    # Per capability: per run 100 * sum / count, then the mean of the runs.
    # ocr (v1_1, v1_3, v1_4, v1_6): run 1 (0.5+0+1+0)/4 = 37.5, run 2 (0.5+0.1+1+0.3)/4 = 47.5
    # rec (v1_0, v1_2, v1_5): (1+0.4+0.3)/3 = 56.67, (0.5+0.6+0)/3 = 36.67 -> 46.67
    # math (v1_1, v1_4, v1_6): (0.5+1+0)/3 = 50, (0.5+1+0.3)/3 = 60 -> 55
    # know, gen (v1_2): 40, 60 -> 50;  spat (v1_4): 100, 100 -> 100
    assert scores.capabilities == {
        "ocr": 42.5, "rec": 46.7, "math": 55.0, "know": 50.0, "gen": 50.0, "spat": 100.0
    }  # fmt: skip
    # Most samples first (ocr 4; rec and math 3, rec first in the paper's order; then 1 each).
    assert list(scores.capabilities) == ["ocr", "rec", "math", "know", "gen", "spat"]
    counts = {"ocr": 4, "rec": 3, "math": 3, "know": 1, "gen": 1, "spat": 1}
    assert scores.capability_counts == counts
    # Per combination (the exact capability set; v1_1 and v1_6 share one, listed differently):
    # rec (v1_0, v1_5): (1+0.3)/2 = 65, (0.5+0)/2 = 25 -> 45
    # ocr_math (v1_1, v1_6): 25, 40 -> 32.5;  rec_know_gen: 50;  ocr (v1_3): 0, 10 -> 5
    # ocr_spat_math (v1_4): 100
    assert scores.combinations == {
        "rec": 45.0, "ocr_math": 32.5, "rec_know_gen": 50.0, "ocr": 5.0, "ocr_spat_math": 100.0
    }  # fmt: skip
    # Total: run 1 3.2/7 = 45.714, run 2 3.0/7 = 42.857; mean 44.286; std (ddof=0) 1.4286.
    assert scores.total == 44.3 and scores.std == 1.4 and scores.runs == [45.7, 42.9]
    assert scores.samples == 7 and scores.unparsed == 1
    metrics = scores.metrics()
    assert metrics["total"] == 44.3 and metrics["combination/ocr_math"] == 32.5
    assert metrics["rec"] == 46.7 and metrics["combination/rec"] == 45.0
    assert metrics["unparsed"] == 1 and metrics["runs"] == 2


def test_aggregation_single_run_and_rounding() -> None:
    first = {k: v[:1] for k, v in SCORES.items()}
    scores = aggregate_mmvet(CAPABILITIES, first, decimal_places=3)
    # rec run 1: 1.7/3 = 56.667; total 3.2/7 = 45.714; one run has no spread.
    assert scores.capabilities["rec"] == 56.667 and scores.total == 45.714
    assert scores.std == 0.0 and scores.runs == [45.714] and scores.unparsed == 0


def test_aggregation_refuses_incomplete_grades() -> None:
    with pytest.raises(ValueError, match="no judge scores for MM-Vet sample 'v1_6'"):
        aggregate_mmvet(CAPABILITIES, {k: v for k, v in SCORES.items() if k != "v1_6"})
    with pytest.raises(ValueError, match="different numbers of judge runs"):
        aggregate_mmvet(CAPABILITIES, {**SCORES, "v1_0": [1.0]})


def test_combination_names_are_deterministic() -> None:
    assert combination_name(["math", "ocr"]) == combination_name(["ocr", "math"]) == "ocr_math"
    assert combination_name(["spat", "rec", "rec"]) == "rec_spat"


# --------------------------------------------------------------------------------------------
# A fake OpenAI-compatible judge on 127.0.0.1


class FakeJudgeServer:
    """`POST /v1/chat/completions`; `reply(question, retry, temperature)` -> (status, text)."""

    def __init__(self, reply: Callable[[str, bool, float], tuple[int, str]]) -> None:
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("Authorization")})  # fmt: skip
                row = prompt[len(GRADER_PROMPT) + 1 :]
                status, text = reply(row.split(" | ")[0], row.endswith(RETRY_SUFFIX),
                                     body["temperature"])  # fmt: skip
                payload = {"model": body["model"] + "-served",
                           "choices": [{"message": {"role": "assistant", "content": text}}]}  # fmt: skip
                data = json.dumps(payload if status == 200 else {"error": text}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeJudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


QUESTIONS = {  # question -> (capabilities, what the fake judge replies)
    "What is shown?": (["rec"], "0.8"),
    "Read the text.": (["ocr"], "1.0 because it matches"),
    "Solve it.": (["ocr", "math"], "Correctness: 0.5"),  # unparseable; its retry says 0.3
    "Explain the joke.": (["rec", "know", "gen"], "I think so"),  # never parses
}


def _scripted(question: str, retry: bool, temperature: float) -> tuple[int, str]:
    if question == "Solve it." and retry:
        return 200, "0.3"
    return 200, QUESTIONS[question][1]


@pytest.fixture
def mmvet_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mm-vet"
    (root / "images").mkdir(parents=True)
    data = {}
    for n, (question, (capabilities, _)) in enumerate(QUESTIONS.items()):
        pixels = np.random.default_rng(n).integers(0, 256, (40, 30 + 10 * n, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"v1_{n}.png")
        data[f"v1_{n}"] = {"imagename": f"v1_{n}.png", "question": question,
                           "answer": f"answer {n}<AND>more", "capability": capabilities}  # fmt: skip
    (root / "mm-vet.json").write_text(json.dumps(data))
    return tmp_path  # the parent: read_mmvet also finds an unzipped mm-vet/ folder


def test_reader_and_missing_data(mmvet_dir: Path, tmp_path: Path) -> None:
    dataset = read_mmvet(mmvet_dir, limit=3)
    assert [s.id for s in dataset] == ["v1_0", "v1_1", "v1_2"] and dataset.total == 4
    assert dataset[1].capabilities == ("ocr",) and dataset[2].answer == "answer 2<AND>more"
    assert dataset.load_image(2).size == (50, 40)
    with pytest.raises(DatasetMissing, match="mm-vet.json not found") as error:
        read_mmvet(tmp_path / "nowhere")
    assert LAYOUT in str(error.value) and "\n" not in str(error.value)
    (mmvet_dir / "mm-vet" / "images" / "v1_3.png").unlink()
    with pytest.raises(DatasetMissing, match="v1_3.png not found"):
        read_mmvet(mmvet_dir)


def test_openai_judge_http_retries_and_errors() -> None:
    calls = {"n": 0}

    def flaky(question: str, retry: bool, temperature: float) -> tuple[int, str]:
        calls["n"] += 1
        return (429, "slow down") if calls["n"] <= 2 else (200, "0.6")

    waits: list[float] = []
    with FakeJudgeServer(flaky) as server:
        judge = OpenAIChatJudge("judge-m", server.base_url, api_key="k", sleep=waits.append)
        reply = judge.complete(grader_prompt("q", "a", "p"), temperature=0.0, max_tokens=3)
        assert reply == JudgeReply("0.6", "judge-m-served") and waits == [0.0, 0.0]
        body = server.requests[-1]["body"]
        assert body == {"model": "judge-m", "max_tokens": 3, "temperature": 0.0,
                        "messages": [{"role": "user", "content": grader_prompt("q", "a", "p")}]}  # fmt: skip
        assert server.requests[-1]["path"] == "/v1/chat/completions"
        assert server.requests[-1]["auth"] == "Bearer k"
    with FakeJudgeServer(lambda *a: (503, "down")) as server:
        judge = OpenAIChatJudge("m", server.base_url, max_retries=2, sleep=waits.append)
        with pytest.raises(JudgeError, match="3 attempts failed, last: HTTP 503"):
            judge.complete("x")
        assert len(server.requests) == 3 and server.requests[0]["auth"] is None
    with FakeJudgeServer(lambda *a: (401, "bad key")) as server:
        with pytest.raises(JudgeError, match="HTTP 401"):
            OpenAIChatJudge("m", server.base_url, sleep=waits.append).complete("x")
        assert len(server.requests) == 1  # not retried
    judge = OpenAIChatJudge(
        "m", "http://127.0.0.1:9/v1", max_retries=1, timeout=2, sleep=waits.append
    )
    with pytest.raises(JudgeError, match="2 attempts failed"):
        judge.complete("x")  # nothing listens on port 9


def test_judge_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = (
        "VLKIT_JUDGE_BASE_URL",
        "VLKIT_JUDGE_MODEL",
        "VLKIT_JUDGE_API_KEY",
        "OPENAI_API_KEY",
    )
    for name in variables:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="needs an API key: set OPENAI_API_KEY"):
        judge_from_spec("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = judge_from_spec("openai")
    assert judge.identity == "openai-chat:gpt-4-0613@https://api.openai.com/v1"
    monkeypatch.setenv("VLKIT_JUDGE_BASE_URL", "http://localhost:8000/v1/")
    monkeypatch.setenv("VLKIT_JUDGE_MODEL", "qwen")
    assert judge_from_spec("openai").identity == "openai-chat:qwen@http://localhost:8000/v1"
    assert judge_from_spec("openai:other").url == "http://localhost:8000/v1/chat/completions"
    with pytest.raises(ValueError, match="expected 'openai', 'openai:MODEL'"):
        judge_from_spec("gpt4")
    with pytest.raises(ValueError, match="not a causal-LM directory"):
        judge_from_spec("local:/nonexistent")


def test_cache_and_bounded_retries(tmp_path: Path) -> None:
    class Counting:
        identity = "counting"

        def __init__(self, replies: list[str]) -> None:
            self.replies, self.calls = replies, []

        def complete(self, prompt: str, *, temperature: float, max_tokens: int, seed: int):
            self.calls.append((prompt.endswith(RETRY_SUFFIX), temperature))
            return JudgeReply(self.replies[min(len(self.calls), len(self.replies)) - 1], "c")

    judge = Counting(["??", "nope", "0.4"])
    cache = JudgeCache(tmp_path / "cache.jsonl")
    grade = grade_sample(judge, "q", "a", "p", cache=cache)
    assert grade.score == 0.4 and grade.attempts == 3
    assert judge.calls == [(False, 0.0), (True, 0.0), (True, 0.5)]
    # Cached on disk: a new cache object answers without the judge; a torn line is ignored.
    with (tmp_path / "cache.jsonl").open("a") as file:
        file.write('{"key": "abc", "te')
    again = JudgeCache(tmp_path / "cache.jsonl")
    assert len(again) == 3
    assert grade_sample(judge, "q", "a", "p", cache=again) == grade and len(judge.calls) == 3
    assert again.hits == 3
    # The torn line is cut off, so a reply appended after it reads back (it is not glued to it).
    again.put("after-torn", JudgeReply("0.7", "c"))
    assert JudgeCache(tmp_path / "cache.jsonl").get("after-torn") == JudgeReply("0.7", "c")
    # Another run is another key (the official runs re-ask the judge at temperature 0).
    grade_sample(judge, "q", "a", "p", run=1, cache=again)
    assert len(judge.calls) == 4
    # Never parses: 1 + retries calls, then recorded as unparsed (score None), not scored.
    stubborn = Counting(["no"])
    grade = grade_sample(stubborn, "q", "a", "p", retries=2)
    assert grade.score is None and grade.attempts == 3 and grade.content == "no"
    assert [t for _, t in stubborn.calls] == [0.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="no prediction for MM-Vet sample"):
        grade_mmvet(read_mmvet_fixture(tmp_path), {}, stubborn)


def read_mmvet_fixture(tmp_path: Path):
    root = tmp_path / "fixture"
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    (root / "mm-vet.json").write_text(json.dumps({"v1_0": {
        "imagename": "a.png", "question": "q", "answer": "a", "capability": ["rec"]}}))  # fmt: skip
    return read_mmvet(root).samples


# --------------------------------------------------------------------------------------------
# End to end: a tiny SmolVLM2 answers, the fake endpoint judges


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SmolVLM2 (as tests/test_generative_benchmark.py builds it)."""
    pytest.importorskip("transformers")
    from test_smolvlm_processor import _write_processor, write_random_smolvlm

    directory = _write_processor(tmp_path_factory.mktemp("smolvlm"))
    write_random_smolvlm(directory, vision_layers=1, max_position_embeddings=1024)
    return directory


@pytest.fixture
def judge_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJudgeServer]:
    with FakeJudgeServer(_scripted) as server:
        monkeypatch.setenv("VLKIT_JUDGE_BASE_URL", server.base_url)
        monkeypatch.setenv("VLKIT_JUDGE_MODEL", "fake-gpt")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
        monkeypatch.delenv("VLKIT_JUDGE_API_KEY", raising=False)
        yield server


def test_run_mmvet_end_to_end(
    smolvlm_dir: Path, mmvet_dir: Path, tmp_path: Path, judge_env: FakeJudgeServer
) -> None:
    out = tmp_path / "out"
    options = dict(max_new_tokens=4, batch_size=3, retries=2, progress=False)
    with pytest.warns(UserWarning, match="2 judge replies never parsed .* v1_3"):
        record = run_mmvet(smolvlm_dir, mmvet_dir, out, "openai", runs=2, **options)
    # Judge calls per run: v1_0 1, v1_1 1, v1_2 2 (one retry), v1_3 3 (1 + 2 retries) = 7.
    assert len(judge_env.requests) == 14
    retries = [r["body"] for r in judge_env.requests if r["body"]["messages"][0]["content"]
               .endswith(RETRY_SUFFIX)]  # fmt: skip
    assert [b["temperature"] for b in retries] == [0.0, 0.0, 0.5] * 2
    assert {r["auth"] for r in judge_env.requests} == {"Bearer sk-fake"}

    predictions = json.loads((out / "predictions.json").read_text())
    assert list(predictions) == ["v1_0", "v1_1", "v1_2", "v1_3"]  # the official results file
    assert all(isinstance(p, str) for p in predictions.values())
    sent = judge_env.requests[0]["body"]["messages"][0]["content"]
    assert sent == grader_prompt("What is shown?", "answer 0<AND>more", predictions["v1_0"])

    judge = OpenAIChatJudge("fake-gpt", judge_env.base_url)
    grades = json.loads(grades_file(out, judge).read_text())
    assert grades["v1_0"]["score"] == [0.8, 0.8] and grades["v1_2"]["score"] == [0.3, 0.3]
    assert grades["v1_3"]["score"] == [None, None] and grades["v1_3"]["attempts"] == [3, 3]
    assert grades["v1_3"]["content"] == ["I think so"] * 2
    assert grades["v1_0"]["model"] == ["fake-gpt-served"] * 2

    # rec (v1_0, v1_3): (0.8 + 0)/2 = 40; ocr (v1_1, v1_2): (1 + 0.3)/2 = 65; math 30; know,
    # gen 0; total (0.8 + 1 + 0.3 + 0)/4 = 52.5; both runs equal -> std 0.
    metrics = record["metrics"]
    assert {k: metrics[k] for k in ("rec", "ocr", "math", "know", "gen", "total", "std")} == {
        "rec": 40.0, "ocr": 65.0, "math": 30.0, "know": 0.0, "gen": 0.0, "total": 52.5, "std": 0.0
    }  # fmt: skip
    assert metrics["combination/ocr_math"] == 30.0 and metrics["combination/rec_know_gen"] == 0.0
    assert metrics["unparsed"] == 2 and metrics["runs"] == 2
    assert record["dataset"] == "mmvet" and record["task"] == "mmvet" and record["samples"] == 4
    assert record["language"] == "en" and record["seconds"] > 0
    assert record["judge"] == judge.identity
    scores = json.loads((out / "scores.json").read_text())
    assert scores["unparsed_samples"] == ["v1_3"] and scores["runs"] == [52.5, 52.5]

    # A rerun asks neither the model nor the judge again (answers and replies are cached).
    with pytest.warns(UserWarning):
        again = run_mmvet(smolvlm_dir, mmvet_dir, out, "openai", runs=2, **options)
    assert len(judge_env.requests) == 14 and again["metrics"] == metrics
    # A third run: the judge is asked only for run 3 (7 calls); a new grade file is not needed.
    (grades_file(out, judge)).unlink()  # even without the grade file, the reply cache answers
    with pytest.warns(UserWarning):
        third = run_mmvet(smolvlm_dir, mmvet_dir, out, "openai", runs=3, **options)
    assert len(judge_env.requests) == 21 and third["metrics"]["runs"] == 3
    assert third["metrics"]["total"] == 52.5


# --------------------------------------------------------------------------------------------
# A local judge: a vlkit causal LM, checked against transformers' greedy generate

JUDGE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant:{% endif %}"
)


def test_local_judge_matches_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from test_smolvlm_processor import _write_processor

    directory = _write_processor(tmp_path / "lm")
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "chat_template": JUDGE_TEMPLATE}))
    (directory / "chat_template.json").unlink()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)

    judge = judge_from_spec(f"local:{directory}")
    assert isinstance(judge, LocalJudge) and judge.identity == f"local:{directory}"
    prompt = grader_prompt("What is x?", "-1<AND>-5", "x = -1")
    reply = judge.complete(prompt, temperature=0.0, max_tokens=3)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )["input_ids"]  # fmt: skip
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert reply.text == tokenizer.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)
    # Sampling at a raised temperature (retries) is seeded: the same seed, the same reply.
    hot = [judge.complete(prompt, temperature=1.5, max_tokens=3, seed=7) for _ in range(2)]
    assert hot[0] == hot[1]
