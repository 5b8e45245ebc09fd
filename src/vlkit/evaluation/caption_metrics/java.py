"""METEOR, SPICE and the Java PTBTokenizer through the jars that pycocoevalcap ships.

These metrics have no Python implementation: METEOR 1.5 (Denkowski & Lavie 2014) and SPICE 1.0
(Anderson et al. 2016) are Java programs, and pycocoevalcap's tokenizer is Stanford CoreNLP 3.4.1's
``PTBTokenizer``. The functions here run the same jars with the same command lines and the same
text protocol as pycocoevalcap (``meteor/meteor.py``, ``spice/spice.py``,
``tokenizer/ptbtokenizer.py``), so they give the same numbers, but they check their inputs and
outputs: a missing ``java``, a missing jar, a process that dies or a wrong number of output lines
raise :class:`JavaMetricError` with the reason instead of hanging, misaligning or returning 0.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlkit.evaluation.caption_metrics.ptb_tokenizer import PUNCTUATIONS

# CoreNLP 3.6.0, which SPICE 1.0 loads from spice/lib (pycocoevalcap's get_stanford_models.py
# downloads it on first use).
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"

# Characters the Java tokenizer treats as line breaks: pycocoevalcap only replaces "\n", so any of
# these would shift every later caption by a line. They become spaces here.
_JAVA_LINE_BREAKS = str.maketrans({c: " " for c in "\r\n\u000b\u000c\u2028\u2029"})


class JavaMetricError(RuntimeError):
    """A Java-based metric cannot run (no java, missing jar or model) or failed."""


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH."""
    return shutil.which("java") is not None


def _require_java(what: str) -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaMetricError(f"{what} needs Java (java not found on PATH)")
    return java


def pycocoevalcap_dir() -> Path:
    """The installed pycocoevalcap package directory (where its jars are)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise JavaMetricError(
            "pycocoevalcap is not installed; its jars are needed for METEOR, SPICE and the Java "
            "PTB tokenizer (pip install pycocoevalcap)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise JavaMetricError(f"{what}: {path} is missing (reinstall pycocoevalcap)")
    return path


# ---------------------------------------------------------------------------------------------
# PTBTokenizer (tokenizer/ptbtokenizer.py)
# ---------------------------------------------------------------------------------------------


def ptb_tokenize_java(captions: Sequence[str], timeout: float | None = None) -> list[list[str]]:
    """Tokenize with CoreNLP 3.4.1's PTBTokenizer exactly as pycocoevalcap's ``PTBTokenizer``.

    The captions are written one per line to a file, tokenized with
    ``-preserveLines -lowerCase``, and the tokens in pycocoevalcap's ``PUNCTUATIONS`` are removed.

    Args:
        captions: raw captions (tokenized together, in this order, like pycocoevalcap does).
        timeout: seconds to wait for the Java process.

    Returns:
        One token list per caption.
    """
    java = _require_java("The Java PTB tokenizer")
    jar = _require_file(
        pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar", "PTB tokenizer"
    )
    if not captions:
        return []
    text = "\n".join(c.translate(_JAVA_LINE_BREAKS) for c in captions)
    with tempfile.TemporaryDirectory(prefix="vlkit-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_bytes(text.encode("utf-8"))
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer"]
        cmd += ["-preserveLines", "-lowerCase", str(path)]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise JavaMetricError(f"PTBTokenizer failed (exit {proc.returncode}): {_tail(proc.stderr)}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if lines and lines[-1] == "" and len(lines) == len(captions) + 1:
        lines.pop()  # a trailing newline after the last caption
    if len(lines) != len(captions):
        raise JavaMetricError(
            f"PTBTokenizer returned {len(lines)} lines for {len(captions)} captions"
        )
    return [[w for w in line.rstrip().split(" ") if w and w not in PUNCTUATIONS] for line in lines]


def _tail(stderr: bytes, n: int = 15) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return "\n".join(lines[-n:]) if lines else "(no error output)"


# ---------------------------------------------------------------------------------------------
# METEOR 1.5 (meteor/meteor.py)
# ---------------------------------------------------------------------------------------------


class MeteorScorer:
    """A running ``meteor-1.5.jar -stdio`` process (the JVM start takes several seconds).

    Start it early, do other work, then call :meth:`score`; use as a context manager or call
    :meth:`close`.

    Args:
        memory: JVM heap (pycocoevalcap: ``2G``).
    """

    def __init__(self, memory: str = "2G") -> None:
        java = _require_java("METEOR")
        meteor_dir = pycocoevalcap_dir() / "meteor"
        _require_file(meteor_dir / "meteor-1.5.jar", "METEOR")
        _require_file(meteor_dir / "data" / "paraphrase-en.gz", "METEOR paraphrase table")
        # Same command line as pycocoevalcap; stderr goes to a file so that it cannot fill a pipe.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the process)
        self._proc = subprocess.Popen(
            [
                java,
                "-jar",
                f"-Xmx{memory}",
                "meteor-1.5.jar",
                "-",
                "-",
                "-stdio",
                "-l",
                "en",
                "-norm",
            ],
            cwd=meteor_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write((line + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except BrokenPipeError as exc:
            raise self._died() from exc

    def _receive(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise self._died()
        return line.decode("utf-8").strip()

    def _died(self) -> JavaMetricError:
        self._proc.wait()
        self._stderr.seek(0)
        return JavaMetricError(
            f"METEOR (java) exited with status {self._proc.returncode}: {_tail(self._stderr.read())}"
        )

    def score(
        self, references: Sequence[Sequence[str]], candidates: Sequence[str]
    ) -> tuple[float, list[float]]:
        """METEOR of tokenized candidates against tokenized references.

        Args:
            references: per image, the reference captions (space-separated tokens).
            candidates: per image, the candidate caption.

        Returns:
            ``(corpus_score, per_image)``. As in pycocoevalcap, the corpus score is METEOR of the
            pooled statistics, not the mean of the per-image scores.
        """
        if len(references) != len(candidates):
            raise ValueError("references and candidates must have one entry per image")
        stats = []
        for refs, hyp in zip(references, candidates, strict=True):
            # meteor.py `_stat`: "|||" separates fields, so it is removed from the hypothesis.
            hyp = hyp.replace("|||", "").replace("  ", " ")
            self._send(" ||| ".join(("SCORE", " ||| ".join(refs), hyp)))
            stats.append(self._receive())
        self._send("EVAL ||| " + " ||| ".join(stats) if stats else "EVAL")
        per_image = [float(self._receive()) for _ in stats]
        return float(self._receive()), per_image

    def close(self) -> None:
        """Stop the Java process."""
        if self._proc.poll() is None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def meteor_scores(
    references: Sequence[Sequence[str]], candidates: Sequence[str]
) -> tuple[float, list[float]]:
    """METEOR 1.5 as pycocoevalcap's ``Meteor().compute_score`` (see :class:`MeteorScorer`)."""
    with MeteorScorer() as scorer:
        return scorer.score(references, candidates)


# ---------------------------------------------------------------------------------------------
# SPICE 1.0 (spice/spice.py)
# ---------------------------------------------------------------------------------------------


def spice_missing_files() -> list[Path]:
    """The files SPICE needs that are not installed (empty when SPICE can run)."""
    spice_dir = pycocoevalcap_dir() / "spice"
    needed = [spice_dir / "spice-1.0.jar"] + [spice_dir / "lib" / j for j in SPICE_CORENLP_JARS]
    return [p for p in needed if not p.is_file()]


def check_spice() -> str:
    """Raise :class:`JavaMetricError` saying what is missing unless SPICE can run; return java."""
    java = _require_java("SPICE")
    missing = spice_missing_files()
    if missing:
        lib = pycocoevalcap_dir() / "spice" / "lib"
        raise JavaMetricError(
            "SPICE needs Stanford CoreNLP 3.6.0, which is not installed: missing "
            + ", ".join(str(p) for p in missing)
            + f". Download {SPICE_CORENLP_URL} (about 400 MB), and copy "
            + " and ".join(SPICE_CORENLP_JARS)
            + f" from it into {lib}; or, with network access, run "
            "`python -c 'from pycocoevalcap.spice.get_stanford_models import "
            "get_stanford_models; get_stanford_models()'`."
        )
    return java


def spice_scores(
    references: Sequence[Sequence[str]],
    candidates: Sequence[str],
    memory: str = "8G",
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> tuple[float, list[float]]:
    """SPICE 1.0 F-score ("All" / "f") as pycocoevalcap's ``Spice().compute_score``.

    pycocoevalcap downloads Stanford CoreNLP 3.6.0 (~400 MB) the first time SPICE runs; here a
    missing download is an error that says what to fetch, since this may run without network.

    Args:
        references: per image, the tokenized reference captions.
        candidates: per image, the tokenized candidate.
        memory: JVM heap (pycocoevalcap: ``8G``).
        cache_dir: SPICE's parse cache directory (pycocoevalcap uses ``spice/cache``); None runs
            without a cache.
        timeout: seconds to wait for the Java process.

    Returns:
        ``(corpus_score, per_image)``; the corpus score is the mean of the per-image F-scores,
        NaN where SPICE reports none for an image (as pycocoevalcap).
    """
    java = check_spice()
    if len(references) != len(candidates):
        raise ValueError("references and candidates must have one entry per image")
    spice_dir = pycocoevalcap_dir() / "spice"
    data = [
        {"image_id": i, "test": hyp, "refs": list(refs)}
        for i, (refs, hyp) in enumerate(zip(references, candidates, strict=True))
    ]
    with tempfile.TemporaryDirectory(prefix="vlkit-spice-") as tmp:
        in_path, out_path = Path(tmp) / "input.json", Path(tmp) / "output.json"
        in_path.write_text(json.dumps(data))
        cmd = [java, "-jar", f"-Xmx{memory}", "spice-1.0.jar", str(in_path)]
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            cmd += ["-cache", str(cache_dir)]
        cmd += ["-out", str(out_path), "-subset", "-silent"]
        proc = subprocess.run(cmd, cwd=spice_dir, capture_output=True, timeout=timeout)
        if proc.returncode != 0 or not out_path.is_file():
            raise JavaMetricError(
                f"SPICE (java) failed with exit status {proc.returncode}: {_tail(proc.stderr)}\n"
                "(SPICE 1.0 was built for Java 8; a newer Java can fail in its parse cache, so "
                "try cache_dir=None or a Java 8 runtime)"
            )
        results = json.loads(out_path.read_text())
    by_id = {item["image_id"]: item for item in results}
    if set(by_id) != set(range(len(data))):
        raise JavaMetricError(f"SPICE returned {len(by_id)} results for {len(data)} images")
    per_image = [_float_or_nan(by_id[i]["scores"]["All"]["f"]) for i in range(len(data))]
    return float(np.mean(per_image)), per_image


def _float_or_nan(value: object) -> float:
    """spice.py `float_convert`: SPICE reports null for an undefined F-score."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
