"""VQA accuracy, exactly as the official VQAv2 evaluation computes it.

Reference: `PythonEvaluationTools/vqaEvaluation/vqaEval.py` of the official VQA API
(https://github.com/GT-Vision-Lab/VQA, now GT-Vision-Lang-Comp/VQA, master branch; author
Aishwarya Agrawal, BSD-2-Clause licence). The answer-normalisation tables below (`CONTRACTIONS`,
`NUMBER_WORDS`, `ARTICLES`, `PUNCTUATION` and the two regular expressions) are copied from that file
unchanged, quirks included, so that scores match the official ones to the last digit.

What the official code does, per question (and what `vqa_accuracy` reproduces):

1. The prediction and each of the (10) human answers get `'\\n'` and `'\\t'` replaced by spaces and
   are stripped.
2. Only if the human answers are not all identical (`len(set(gtAnswers)) > 1`) are the human
   answers AND the prediction normalised (`processPunctuation`, then `processDigitArticle`). When
   all humans agree, the prediction must match their answer verbatim (case and punctuation
   included): with answers `["yes."] * 10`, "yes" scores 0.
3. For each human answer i, acc_i = min(1, #{other 9 answers equal to the prediction} / 3); the
   question's accuracy is the mean over i. So a prediction given by m of the 10 humans scores
   min(1, m/3) if m = 0 or m >= 4 and, for m in 1..3, (m * (m-1)/3 + (10-m) * m/3) / 10
   (= 0.3, 0.6, 0.9 for m = 1, 2, 3).

Quirks of the normalisation, kept on purpose:

* `processPunctuation` removes a punctuation mark outright (instead of replacing it by a space)
  when the mark is followed or preceded by a space anywhere in the text, or when the text contains
  a digit-comma-digit group anywhere ("1,000" -> "1000", but then also "a-b 1,0" -> "ab 10").
  The checks look at the ORIGINAL text, while the replacements apply to the running output.
* The apostrophe and the colon are not in the punctuation list (an apostrophe survives:
  "don't" stays "don't", and "dont" is mapped to "don't" by the contraction table).
* The period pattern `(?!<=\\d)(\\.)(?!\\d)` was meant as a look-behind but is a look-ahead that
  always succeeds, so it removes every period NOT followed by a digit ("3.5" keeps its period,
  "end." and "u.s.a" lose theirs, "5." becomes "5"). The official code passes `re.UNICODE` as the
  third positional argument of `Pattern.sub`, which is `count`, so at most `re.UNICODE` (= 32)
  periods are removed; we pass `count=32` explicitly for the same behaviour.
* `processDigitArticle` lower-cases, maps the number words "none", "zero", ..., "ten" to digits
  (so "none" -> "0"), drops the articles "a", "an", "the" and expands apostrophe-less
  contractions; capitalised keys of the contraction table ("Im", "Ive", "Id've", ...) can never
  match because the text is lower-cased first.

Deviation (opt-in): `always_normalize=True` reproduces lmms-eval's VQAv2 task
(`lmms_eval/tasks/vqav2/utils.py`, `vqav2_process_results`), which always passes the prediction
through MMF's `EvalAIAnswerProcessor` (lower-case, delete "," and "?", "'s" -> " 's", then the
same punctuation/digit/article normalisation) and, when the human answers differ, normalises it a
second time like the official code; its per-question mean is `statistics.mean`. Scores can differ
from the official ones (e.g. "Yes" against ten identical "yes" scores 1.0 there and 0.0
officially).

Bit-exactness: results equal the official code run on the same Python version, to the last bit
(the per-annotator scores keep the official int/float types, which Python >= 3.12's compensated
`sum` treats differently). The original is Python 2 code, where `\\d` on `unicode` answers matches
ASCII digits only; like every Python 3 port (lmms-eval, LAVIS) this module lets `\\d` match any
Unicode digit, which only matters for answers containing non-ASCII digits.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# fmt: off
# Copied verbatim from vqaEval.py (`self.contractions`), including its odd entries
# ("somebody'd" -> "somebodyd") and the capitalised keys that can never match.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've",
    "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
# fmt: on

# `self.manualMap` of vqaEval.py: number words up to ten, and "none" -> "0".
NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES: tuple[str, ...] = ("a", "an", "the")
# `self.punct`, in the official order (the order matters: each mark is handled in turn).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# `self.periodStrip`: the "(?!<=\d)" was presumably meant as the look-behind "(?<!\d)"; as written
# it is a look-ahead that always succeeds at a period, so the pattern is effectively "\.(?!\d)".
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# vqaEval.py calls `periodStrip.sub("", outText, re.UNICODE)`: the third positional argument of
# `Pattern.sub` is `count`, so at most int(re.UNICODE) = 32 periods are removed.
_PERIOD_COUNT = int(re.UNICODE)


def _clean_whitespace(text: str) -> str:
    """'\\n' and '\\t' to spaces, then strip: applied to the prediction and every human answer."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """`VQAEval.processPunctuation`, reproduced exactly (see the module docstring for its quirks)."""
    out = text
    # The official condition tests the ORIGINAL text for every mark, not the running output.
    has_digit_comma_digit = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma_digit:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """`VQAEval.processDigitArticle`: lower-case, number words -> digits, drop articles, contractions.

    The official code uses `manualMap.setdefault(word, word)`, which inserts every unseen word into
    the table; that changes nothing observable, so a plain lookup is used here.
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """The official answer normalisation: whitespace clean-up, punctuation, digits/articles.

    This is what vqaEval.py applies to the prediction and to the human answers of a question whose
    human answers are not all identical (`vqa_accuracy` decides when to apply it).

    Examples:
        >>> normalize_vqa_answer("Two dogs.")
        '2 dogs'
        >>> normalize_vqa_answer("1,000")
        '1000'
        >>> normalize_vqa_answer("the dont")
        "don't"
    """
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


def _evalai_answer_processor(text: str) -> str:
    """MMF's `EvalAIAnswerProcessor.__call__`, as used by lmms-eval for VQAv2 predictions.

    `word_tokenize` (lower-case, delete "," and "?", "'s" -> " 's") runs before the whitespace
    clean-up and the official normalisation (mmf/datasets/processors/processors.py).
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(text)


def vqa_accuracy(prediction: str, answers: Sequence[str], always_normalize: bool = False) -> float:
    """VQA accuracy of one prediction against the human answers of one question, in [0, 1].

    Exactly the per-question score of the official VQAv2 evaluation (vqaEval.py): the
    leave-one-annotator-out average of min(1, #matches among the other answers / 3), with the
    answers and the prediction normalised only when the human answers are not all identical.

    Args:
        prediction: The model's answer.
        answers: The human answers (10 in VQAv2; any number >= 1 is accepted). Each entry is one
            annotator: duplicates count separately (the official code leaves out one answer
            record at a time, and VQAv2's answer records are distinct by their `answer_id`).
        always_normalize: If True, follow lmms-eval instead of the official code: the prediction
            is always normalised (with MMF's EvalAIAnswerProcessor), even when all human answers
            agree. A deviation from the official metric, off by default.

    Returns:
        The accuracy (a multiple of 1/30 for 10 answers, up to floating-point rounding; rounded
        bit for bit as the official code rounds it on the same Python version).

    Examples:
        >>> vqa_accuracy("two", ["2"] * 3 + ["3"] * 7)
        0.9
        >>> vqa_accuracy("yes", ["yes."] * 10)  # all humans agree: compared verbatim
        0.0
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings (the human answers), not a string")
    gts = [_clean_whitespace(answer) for answer in answers]
    if not gts:
        raise ValueError("need at least one human answer")
    res = (
        _evalai_answer_processor(prediction) if always_normalize else _clean_whitespace(prediction)
    )
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(answer)) for answer in gts]
        res = process_digit_article(process_punctuation(res))
    matches = sum(answer == res for answer in gts)
    # Annotator i's score counts the matches among the OTHER answers: matches - [gts[i] == res].
    # Types as in vqaEval.py, `min(1, float(n) / 3)`: the int 1 for full credit, floats otherwise.
    # It matters for the last bit: since Python 3.12, `sum` compensates float additions but adds
    # ints plainly, so an all-float list can round differently (0.9 vs 0.8999999999999998).
    per_annotator = [min(1, float(matches - (answer == res)) / 3) for answer in gts]
    if always_normalize:
        return statistics.mean(per_annotator)  # lmms-eval's reduction (exactly rounded mean)
    return float(sum(per_annotator)) / len(per_annotator)


def _annotation_list(annotations: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list:
    if isinstance(annotations, Mapping):
        if "annotations" not in annotations:
            raise ValueError(
                "annotations: expected the VQAv2 annotation file (a dict with key 'annotations') or its list"
            )
        return list(annotations["annotations"])
    return list(annotations)


def _prediction_dict(predictions: Mapping[Any, str] | Iterable[Mapping[str, Any]]) -> dict:
    if isinstance(predictions, Mapping):
        return dict(predictions)
    # The VQAv2 results-file format: [{"question_id": ..., "answer": ...}, ...].
    out = {}
    for item in predictions:
        qid = item["question_id"]
        if qid in out:
            raise ValueError(f"predictions: question_id {qid!r} appears twice")
        out[qid] = item["answer"]
    return out


def vqa_corpus_accuracy(
    predictions: Mapping[Any, str] | Iterable[Mapping[str, Any]],
    annotations: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    question_ids: Iterable[Any] | None = None,
    always_normalize: bool = False,
) -> dict[str, Any]:
    """Overall, per-question-type and per-answer-type VQA accuracy over a set of questions.

    Same aggregation as `VQAEval.evaluate` + `setAccuracy`: every breakdown is the plain mean of
    the per-question accuracies of its questions. Differences in REPORTING only: the official code
    reports `round(100 * accuracy, 2)` (percent, two decimals); this function returns unrounded
    fractions in [0, 1] (multiply by 100 and round to 2 decimals to get the official numbers).

    The VQAv2 question file is not needed: `question_type` and `answer_type` are fields of the
    annotation file.

    Args:
        predictions: {question_id: answer}, or the official results-file list
            `[{"question_id": ..., "answer": ...}, ...]`.
        annotations: The VQAv2 annotation file as loaded from JSON (a dict with an "annotations"
            list) or that list; each entry has "question_id", "question_type", "answer_type" and
            "answers" (a list of {"answer": ...} records, or of strings).
        question_ids: The questions to score (default: every annotated question, like the official
            `evaluate()`). Every scored question needs a prediction; as in the official `loadRes`,
            a prediction for a question that is not annotated is an error.
        always_normalize: See `vqa_accuracy` (lmms-eval's behaviour; off by default).

    Returns:
        {"overall": float, "per_question_type": {type: float}, "per_answer_type": {type: float},
        "per_question": {question_id: float}, "num_questions": int}.
    """
    by_id = {}
    for ann in _annotation_list(annotations):
        by_id[ann["question_id"]] = ann
    preds = _prediction_dict(predictions)
    unknown = [qid for qid in preds if qid not in by_id]
    if unknown:
        raise ValueError(
            f"{len(unknown)} predictions are for questions without annotations, e.g. {unknown[:3]}"
        )
    qids = list(by_id) if question_ids is None else list(question_ids)
    missing = [qid for qid in qids if qid not in preds]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction, e.g. {missing[:3]}")
    if not qids:
        raise ValueError("no questions to score")

    per_question: dict[Any, float] = {}
    by_qtype: dict[str, list[float]] = {}
    by_atype: dict[str, list[float]] = {}
    for qid in qids:
        ann = by_id[qid]
        answers = [a["answer"] if isinstance(a, Mapping) else a for a in ann["answers"]]
        acc = vqa_accuracy(preds[qid], answers, always_normalize=always_normalize)
        per_question[qid] = acc
        by_qtype.setdefault(ann.get("question_type", "unknown"), []).append(acc)
        by_atype.setdefault(ann.get("answer_type", "unknown"), []).append(acc)
    return {
        # Plain left-to-right `sum`, as setAccuracy does, for bit-identical means.
        "overall": sum(per_question.values()) / len(per_question),
        "per_question_type": {k: sum(v) / len(v) for k, v in by_qtype.items()},
        "per_answer_type": {k: sum(v) / len(v) for k, v in by_atype.items()},
        "per_question": per_question,
        "num_questions": len(per_question),
    }


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to the single reference answer, after strip + lower-case.

    For datasets with one answer per question (e.g. easy-VQA, whose answers are single lower-case
    words such as "circle" or "yes"). Only surrounding whitespace and case are forgiven: no
    punctuation, article or number-word normalisation (use `vqa_accuracy` for VQAv2-style data).

    Args:
        predictions: One answer per question.
        answers: The reference answer of each question, same length.

    Returns:
        Accuracy in [0, 1].
    """
    if isinstance(predictions, str) or isinstance(answers, str):
        raise TypeError("predictions and answers must be sequences of strings")
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no answers to score")
    hits = sum(
        p.strip().lower() == a.strip().lower() for p, a in zip(predictions, answers, strict=True)
    )
    return hits / len(answers)


__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "exact_match_accuracy",
    "normalize_vqa_answer",
    "process_digit_article",
    "process_punctuation",
    "vqa_accuracy",
    "vqa_corpus_accuracy",
]
