"""VQA accuracy: hand-worked cases and agreement with the official evaluation code.

`_OfficialVQAEval` below is a faithful Python 3 transcription of `VQAEval` from
PythonEvaluationTools/vqaEvaluation/vqaEval.py of the official VQA API
(https://github.com/GT-Vision-Lab/VQA, master; author Aishwarya Agrawal; BSD-2-Clause), kept as
close to the original as possible (names, dict-based answer records, in-place mutation, the
`re.UNICODE`-as-count call). Only `print`, the progress bar and the `VQA` helper objects were
dropped. `_lmms_eval_vqav2` transcribes lmms-eval's `vqav2_process_results`
(lmms_eval/tasks/vqav2/utils.py) with MMF's `EvalAIAnswerProcessor`. They are test references,
never imported by the library.
"""

from __future__ import annotations

import copy
import random
import re
import statistics

import pytest

from vlkit.evaluation.vqa import (
    CONTRACTIONS,
    exact_match_accuracy,
    normalize_vqa_answer,
    process_punctuation,
    vqa_accuracy,
    vqa_corpus_accuracy,
)

# --------------------------------------------------------------------------------------------
# Reference: official vqaEval.py (transcribed)
# --------------------------------------------------------------------------------------------


class _OfficialVQAEval:
    def __init__(self, n=2):
        self.n = n
        self.accuracy = {}
        self.evalQA = {}
        self.evalQuesType = {}
        self.evalAnsType = {}
        # fmt: off
        self.contractions = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
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
                             "youll": "you'll", "youre": "you're", "youve": "you've"}
        self.manualMap    = { 'none': '0',
                              'zero': '0',
                              'one': '1',
                              'two': '2',
                              'three': '3',
                              'four': '4',
                              'five': '5',
                              'six': '6',
                              'seven': '7',
                              'eight': '8',
                              'nine': '9',
                              'ten': '10'
                            }
        self.articles     = ['a',
                             'an',
                             'the'
                            ]
        self.periodStrip  = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip   = re.compile(r"(\d)(\,)(\d)")
        self.punct        = [';', r"/", '[', ']', '"', '{', '}',
                             '(', ')', '=', '+', '\\', '_', '-',
                             '>', '<', '@', '`', ',', '?', '!']
        # fmt: on

    def evaluate(self, gts, res, quesIds):
        accQA = []
        accQuesType = {}
        accAnsType = {}
        for quesId in quesIds:
            for ansDic in gts[quesId]["answers"]:
                ansDic["answer"] = ansDic["answer"].replace("\n", " ")
                ansDic["answer"] = ansDic["answer"].replace("\t", " ")
                ansDic["answer"] = ansDic["answer"].strip()
            resAns = res[quesId]["answer"]
            resAns = resAns.replace("\n", " ")
            resAns = resAns.replace("\t", " ")
            resAns = resAns.strip()
            gtAcc = []
            gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]

            if len(set(gtAnswers)) > 1:
                for ansDic in gts[quesId]["answers"]:
                    ansDic["answer"] = self.processPunctuation(ansDic["answer"])
                    ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
                resAns = self.processPunctuation(resAns)
                resAns = self.processDigitArticle(resAns)

            for gtAnsDatum in gts[quesId]["answers"]:
                otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]
                matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
                acc = min(1, float(len(matchingAns)) / 3)
                gtAcc.append(acc)
            quesType = gts[quesId]["question_type"]
            ansType = gts[quesId]["answer_type"]
            avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
            accQA.append(avgGTAcc)
            if quesType not in accQuesType:
                accQuesType[quesType] = []
            accQuesType[quesType].append(avgGTAcc)
            if ansType not in accAnsType:
                accAnsType[ansType] = []
            accAnsType[ansType].append(avgGTAcc)
            self.evalQA[quesId] = avgGTAcc  # unrounded here; setEvalQA rounds to 2 decimals
        self.setAccuracy(accQA, accQuesType, accAnsType)

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            comma = re.search(self.commaStrip, inText) != None  # noqa: E711
            if (p + " " in inText or " " + p in inText) or comma:
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        outText = self.periodStrip.sub("", outText, re.UNICODE)  # noqa: B034 (the quirk, kept)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = " ".join(outText)
        return outText

    def setAccuracy(self, accQA, accQuesType, accAnsType):
        self.accuracy["overall"] = round(100 * float(sum(accQA)) / len(accQA), self.n)
        self.accuracy["perQuestionType"] = {
            quesType: round(
                100 * float(sum(accQuesType[quesType])) / len(accQuesType[quesType]), self.n
            )
            for quesType in accQuesType
        }
        self.accuracy["perAnswerType"] = {
            ansType: round(100 * float(sum(accAnsType[ansType])) / len(accAnsType[ansType]), self.n)
            for ansType in accAnsType
        }


def _lmms_eval_vqav2(prediction, answer_dicts):
    """lmms-eval `vqav2_process_results` accuracy with MMF's EvalAIAnswerProcessor (transcribed)."""
    ev = _OfficialVQAEval()  # same tables and process_* functions as EvalAIAnswerProcessor

    def word_tokenize(word):
        word = word.lower()
        word = word.replace(",", "").replace("?", "").replace("'s", " 's")
        return word.strip()

    def processor(item):
        item = word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = ev.processPunctuation(item)
        item = ev.processDigitArticle(item)
        return item

    resAns = processor(prediction)
    for ansDic in answer_dicts:
        ansDic["answer"] = ansDic["answer"].replace("\n", " ")
        ansDic["answer"] = ansDic["answer"].replace("\t", " ")
        ansDic["answer"] = ansDic["answer"].strip()
    gtAcc = []
    gtAnswers = [ans["answer"] for ans in answer_dicts]
    if len(set(gtAnswers)) > 1:
        for ansDic in answer_dicts:
            ansDic["answer"] = ev.processPunctuation(ansDic["answer"])
            ansDic["answer"] = ev.processDigitArticle(ansDic["answer"])
        resAns = ev.processPunctuation(resAns)
        resAns = ev.processDigitArticle(resAns)
    for gtAnsDatum in answer_dicts:
        otherGTAns = [item for item in answer_dicts if item != gtAnsDatum]
        matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
        gtAcc.append(min(1, float(len(matchingAns)) / 3))
    return statistics.mean(gtAcc)


# Awkward answers: case, whitespace, punctuation next to / away from spaces, digit-comma-digit,
# periods before digits / at the end / more than 32 of them, number words, articles, contractions.
_AWKWARD = [
    "yes", "Yes", "YES", "yes.", "yes!", "(yes)", " yes ", "yes\n", "\tyes", "no", "No.", "no,",
    "2", "two", "Two", "2.", "two.", "3", "three", "none", "None", "0", "zero", "ten", "10", "eleven",
    "dog", "the dog", "a dog", "Dog", "dogs", "an apple", "apple", "the", "a",
    "dont", "don't", "Dont", "isnt", "isn't", "Im", "i'm", "im", "its", "it's", "man's", "mans",
    "1,000", "1000", "1, 000", "1 000", "1,0", "10,5 a-b", "a,b", "a, b", "a b",
    "3.5", "3.50", "3.5.", "35", "end.", "end", "u.s.a.", "usa", "5.", "." * 40, "a.b.c",
    "t-shirt", "t shirt", "tshirt", "t - shirt", "black-and-white", "black and white", "black & white",
    "x/y", "x / y", "x y", "left_hand", "left hand", '"quoted"', "quoted", "[red]", "red", "red?", "red!",
    "10:30", "1030", "@home", "home", "a+b", "=", "", " ", "what's", "whats", "y'all", "yall",
    "2 dogs", "two dogs", "Two Dogs.", "the two dogs", "one", "1", "on", "1st", "first",
]  # fmt: skip


def _random_question(rng: random.Random) -> list[str]:
    kind = rng.random()
    if kind < 0.25:  # all ten humans agree (no normalisation)
        return [rng.choice(_AWKWARD)] * 10
    if kind < 0.5:  # two variants of similar answers
        a, b = rng.sample(_AWKWARD, 2)
        m = rng.randint(1, 9)
        return rng.sample([a] * m + [b] * (10 - m), 10)
    pool = rng.sample(_AWKWARD, rng.randint(2, 5))
    return [rng.choice(pool) for _ in range(10)]


def _official_per_question(prediction: str, answers: list[str]) -> float:
    ev = _OfficialVQAEval()
    gts = {
        1: {
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                for i, a in enumerate(answers)
            ],
            "question_type": "what",
            "answer_type": "other",
        }
    }
    ev.evaluate(gts, {1: {"answer": prediction}}, [1])
    return ev.evalQA[1]


def test_contraction_table_matches_reference():
    assert _OfficialVQAEval().contractions == CONTRACTIONS
    assert len(CONTRACTIONS) == len(_OfficialVQAEval().contractions)


def test_normalization_matches_reference_on_every_awkward_string():
    ev = _OfficialVQAEval()
    for text in _AWKWARD:
        cleaned = text.replace("\n", " ").replace("\t", " ").strip()
        expected = ev.processDigitArticle(ev.processPunctuation(cleaned))
        assert normalize_vqa_answer(text) == expected, text


def test_random_awkward_questions_match_official_bit_for_bit():
    rng = random.Random(0)
    gts, res, preds, annotations = {}, {}, {}, []
    for qid in range(400):
        answers = _random_question(rng)
        # Predictions: sometimes one of the humans' answers, sometimes any awkward string.
        prediction = rng.choice(answers) if rng.random() < 0.5 else rng.choice(_AWKWARD)
        qtype, atype = (
            rng.choice(["what", "how many", "is the"]),
            rng.choice(["yes/no", "number", "other"]),
        )
        records = [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
            for i, a in enumerate(answers)
        ]
        gts[qid] = {"answers": records, "question_type": qtype, "answer_type": atype}
        res[qid] = {"answer": prediction}
        preds[qid] = prediction
        annotations.append(copy.deepcopy({"question_id": qid, **gts[qid]}))
        # Per question: exactly equal (same float), not just close.
        assert vqa_accuracy(prediction, answers) == _official_per_question(prediction, answers), (
            prediction,
            answers,
        )
        ref_lmms = _lmms_eval_vqav2(prediction, copy.deepcopy(records))
        assert vqa_accuracy(prediction, answers, always_normalize=True) == ref_lmms, (
            prediction,
            answers,
        )

    ev = _OfficialVQAEval()
    ev.evaluate(gts, res, list(range(400)))
    ours = vqa_corpus_accuracy(preds, {"annotations": annotations})
    assert ours["num_questions"] == 400
    assert round(100 * ours["overall"], 2) == ev.accuracy["overall"]
    assert {k: round(100 * v, 2) for k, v in ours["per_question_type"].items()} == ev.accuracy[
        "perQuestionType"
    ]
    assert {k: round(100 * v, 2) for k, v in ours["per_answer_type"].items()} == ev.accuracy[
        "perAnswerType"
    ]
    assert ours["per_question"] == ev.evalQA
    # The random set exercises every branch: normalised and not, full, partial and zero credit.
    values = set(ours["per_question"].values())
    assert {0.0, 1.0} <= values and values & {0.3, 0.6, 0.9}


# --------------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "expected"),
    # m of the 10 humans gave the prediction: annotator i scores min(1, matches among the others/3).
    # m=1: the matching annotator sees 0, the 9 others see 1 -> (0 + 9/3)/10 = 0.3
    # m=2: 2 * (1/3) + 8 * (2/3) = 6 -> 0.6;  m=3: 3 * (2/3) + 7 * 1 = 9 -> 0.9;  m>=4: 1.0
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0), (10, 1.0)],
)
def test_leave_one_out_credit(m, expected):
    answers = ["cat"] * m + ["dog"] * (10 - m)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_with_three_answers():
    # Two of three match: matching annotators see 1 other match (1/3), the third sees 2 (2/3).
    assert vqa_accuracy("x", ["x", "x", "y"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)


def test_identical_answers_are_not_normalized():
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes."] * 10) == 1.0
    assert vqa_accuracy(" yes.\n", ["yes."] * 10) == 1.0  # whitespace is always cleaned
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # not even lower-cased
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    # One dissenting human switches normalisation on for everybody.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == 1.0


def test_always_normalize_is_lmms_eval():
    assert vqa_accuracy("Yes", ["yes"] * 10, always_normalize=True) == 1.0
    assert vqa_accuracy("Two", ["2"] * 10, always_normalize=True) == 1.0
    # Human answers that all agree are still compared verbatim: "yes." never equals "yes".
    assert vqa_accuracy("yes", ["yes."] * 10, always_normalize=True) == 0.0
    # EvalAI's tokenizer splits "'s", so "man's" no longer matches "man's" when normalising twice.
    assert vqa_accuracy("man's", ["man's"] * 4 + ["man"] * 6) == 1.0
    assert vqa_accuracy("man's", ["man's"] * 4 + ["man"] * 6, always_normalize=True) == 0.0


def test_number_words_articles_and_punctuation():
    differing = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", differing) == pytest.approx(0.9)
    assert vqa_accuracy("Two.", differing) == pytest.approx(0.9)
    assert vqa_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("the dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("A Dog", ["the dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("yes.", ["yes"] * 5 + ["no"] * 5) == 1.0
    assert vqa_accuracy("yes!", ["yes"] * 5 + ["no"] * 5) == 1.0
    assert normalize_vqa_answer("None") == "0"
    assert normalize_vqa_answer("eleven") == "eleven"  # only zero..ten are mapped


def test_contractions():
    assert vqa_accuracy("dont", ["don't"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("don't", ["dont"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert normalize_vqa_answer("Dont") == "don't"  # lower-cased before the lookup
    assert normalize_vqa_answer("Im") == "im"  # the capitalised table keys can never match


def test_commas_in_numbers():
    assert process_punctuation("1,000") == "1000"
    assert vqa_accuracy("1,000", ["1000"] * 4 + ["100"] * 6) == 1.0
    assert process_punctuation("1, 000") == "1 000"  # ", " exists: the comma is deleted
    assert process_punctuation("a,b") == "a b"  # no digit-comma-digit: replaced by a space
    # A digit-comma-digit anywhere deletes every mark, even those between words.
    assert process_punctuation("10,5 a-b") == "105 ab"
    assert process_punctuation("t-shirt") == "t shirt"
    assert process_punctuation("t - shirt") == "t  shirt"  # " -" exists: deleted, spaces stay
    assert normalize_vqa_answer("t - shirt") == "t shirt"


def test_period_rule_as_the_code_behaves():
    assert process_punctuation("3.5") == "3.5"  # a period before a digit stays
    assert process_punctuation("3.5.") == "3.5"
    assert process_punctuation("end.") == "end"
    assert process_punctuation("u.s.a.") == "usa"
    assert process_punctuation("5.") == "5"
    # re.UNICODE (32) passed as `count`: only the first 32 periods go.
    assert process_punctuation("." * 40) == "." * 8
    assert vqa_accuracy("3.5", ["3.5"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("3.5.", ["3.5"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("35", ["3.5"] * 2 + ["3"] * 8) == 0.0


def test_corpus_breakdowns_and_formats():
    annotations = {
        "annotations": [
            {
                "question_id": 1,
                "question_type": "what color",
                "answer_type": "other",
                "answers": [{"answer": "red"}] * 10,
            },
            {
                "question_id": 2,
                "question_type": "how many",
                "answer_type": "number",
                "answers": ["2"] * 2 + ["3"] * 8,
            },
            {
                "question_id": 3,
                "question_type": "how many",
                "answer_type": "number",
                "answers": ["4"] * 10,
            },
        ]
    }
    preds = [
        {"question_id": 1, "answer": "red"},
        {"question_id": 2, "answer": "two"},
        {"question_id": 3, "answer": "5"},
    ]
    out = vqa_corpus_accuracy(preds, annotations)
    assert out["per_question"] == {1: 1.0, 2: pytest.approx(0.6), 3: 0.0}
    assert out["overall"] == pytest.approx(1.6 / 3)
    assert out["per_question_type"] == {"what color": 1.0, "how many": pytest.approx(0.3)}
    assert out["per_answer_type"] == {"other": 1.0, "number": pytest.approx(0.3)}
    subset = vqa_corpus_accuracy({1: "red"}, annotations["annotations"], question_ids=[1])
    assert subset["overall"] == 1.0 and subset["num_questions"] == 1
    with pytest.raises(ValueError, match="no prediction"):
        vqa_corpus_accuracy({1: "red"}, annotations)
    with pytest.raises(ValueError, match="without annotations"):
        vqa_corpus_accuracy({1: "red", 2: "2", 3: "4", 99: "x"}, annotations)


def test_exact_match_accuracy():
    assert exact_match_accuracy(
        ["Circle ", "yes", "red."], ["circle", "no", "red"]
    ) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        exact_match_accuracy(["a"], ["a", "b"])
    with pytest.raises(TypeError):
        vqa_accuracy("a", "a")
