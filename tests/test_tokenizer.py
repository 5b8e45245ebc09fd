"""Tokenizer parity: vlkit's CLIP tokenizer vs open_clip, SigLIP tokenizer vs transformers.

Nothing is downloaded: the CLIP vocabulary is the one shipped with vlkit (and open_clip), the
SigLIP sentencepiece model is trained here on a small generated corpus.
"""

from __future__ import annotations

import json
import random
import string
import warnings

import ftfy
import numpy as np
import open_clip
import open_clip.tokenizer as oc_tok
import pytest
import regex
import sentencepiece as spm
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

import vlkit
from vlkit.data.tokenizers import (
    CLIPTokenizer,
    HFTokenizer,
    SigLIPTokenizer,
    clean_text,
    cleaning,
    clip_vocab,
    get_tokenizer,
)
from vlkit.models.presets import PRESETS

AWKWARD_TEXTS = [
    "",
    " ",
    "   \t\n  ",
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "MiXeD CaSe TeXt",
    "12345",
    "3.14159 and 2,718 and 1e10",
    "it's a dog's life, isn't it? we're here, they've gone, I'm ok, you'll see, he'd go",
    "IT'S SHOUTING'S",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds",
    "café naïve résumé façade",
    "Crème Brûlée",
    "Ünïcödé ÅÄÖ ß ẞ İstanbul ǅ",
    "日本語のテキスト",
    "中文字符和标点。，！",
    "한국어 텍스트",
    "Ελληνικά και русский текст",
    "עברית ועربية",
    "emoji 😀🐱‍👤👨‍👩‍👧 🇯🇵 ❤️",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;",
    "Tom &amp; Jerry &quot;quoted&quot; &#39;apos&#39; &#x263A; &nbsp;",
    "&amp;amp;amp; triple",
    "<b>html tags</b> & ampersand < less",
    "cafÃ© mojibake Ã©tÃ© â€œquotesâ€\x9d",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "hello <|endoftext|> world",
    "<|startoftext|>already wrapped<|endoftext|>",
    "<start_of_text> open_clip specials <end_of_text>",
    "x!<end_of_text> punctuation before special",
    "<END_OF_TEXT> upper case special",
    "<ſtart_of_text> long s special, it'ſ",
    "special at end<end_of_text>",
    "fullwidth ＬＯＵＤ　ＮＯＩＳＥＳ",
    "ligatures ﬂubberiﬁc ﬀ",
    "curly “quotes” and ‘single’ — dashes – …",
    "zero\u200bwidth\u200djoiners\ufeff and nbsp\xa0here",
    "control\x00chars\x07and\x1bescape\x1b[31mred\x1b[0m",
    "combining e\u0301 vs é and a\u0345 ypogegrammeni",
    "math ∑∫√∞ ≠ ≤ ≥ ± × ÷",
    "punctuation!!! ??? ... --- ___ ((())) [[]] {{}}",
    "under_score and-hyphen and/slash and\\backslash",
    "url https://example.com/path?q=1&r=2#frag",
    "email someone@example.com",
    "$100.00 €50 £30 ¥1000 ₹500",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a " * 100,
    "the quick brown fox jumps over the lazy dog " * 10,
    "x" * 300,
    "word " * 74 + "end",
    "word " * 75,
    "word " * 76,
    "\u2028line\u2029separators\x85nel",
    "Ｕｎｉｃｏｄｅ ｆｕｌｌｗｉｄｔｈ １２３",
    "\U0001f600" * 50,
]


def _open_clip_ids(texts: list[str], context_length: int = 77) -> torch.Tensor:
    return oc_tok.tokenize(texts, context_length=context_length)


@pytest.fixture(scope="module")
def clip_tok() -> CLIPTokenizer:
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def clip_pipeline() -> CLIPTokenizer:
    return CLIPTokenizer(batch_mode="pipeline")


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------


def test_awkward_texts_are_many():
    assert len(AWKWARD_TEXTS) >= 40


def test_clip_vocab_matches_open_clip(clip_tok):
    ref = oc_tok._tokenizer
    assert clip_tok.vocab_size == ref.vocab_size == 49408
    assert (clip_tok.sot_token_id, clip_tok.eot_token_id) == (ref.sot_token_id, ref.eot_token_id)
    assert clip_tok.pad_token_id == 0
    assert clip_tok.context_length == 77
    assert clip_tok._decoder == ref.decoder


@pytest.mark.parametrize("mode", ["words", "pipeline"])
def test_clip_parity_awkward(mode, clip_tok, clip_pipeline):
    tok = clip_tok if mode == "words" else clip_pipeline
    ours, ref = tok(AWKWARD_TEXTS), _open_clip_ids(AWKWARD_TEXTS)
    assert ours.dtype == torch.long and ours.shape == (len(AWKWARD_TEXTS), 77)
    for text, a, b in zip(AWKWARD_TEXTS, ours, ref, strict=True):
        assert a.tolist() == b.tolist(), repr(text)


def test_clip_parity_get_tokenizer_reference(clip_tok):
    ref = open_clip.get_tokenizer("ViT-B-32")
    assert torch.equal(clip_tok(AWKWARD_TEXTS), ref(AWKWARD_TEXTS))


def test_clip_encode_matches_open_clip(clip_tok):
    for text in AWKWARD_TEXTS:
        assert clip_tok.encode(text) == oc_tok._tokenizer.encode(text), repr(text)


@pytest.mark.parametrize("context_length", [1, 2, 3, 5, 16, 32])
def test_clip_context_lengths(clip_tok, clip_pipeline, context_length):
    ref = _open_clip_ids(AWKWARD_TEXTS, context_length)
    assert torch.equal(clip_tok(AWKWARD_TEXTS, context_length=context_length), ref)
    assert torch.equal(clip_pipeline(AWKWARD_TEXTS, context_length=context_length), ref)


def test_clip_single_string_and_empty_batch(clip_tok):
    assert torch.equal(clip_tok("a dog"), _open_clip_ids(["a dog"]))
    assert clip_tok([]).shape == (0, 77)
    assert CLIPTokenizer(context_length=32)("a dog").shape == (1, 32)


def test_clip_truncation_keeps_eot(clip_tok):
    ids = clip_tok("word " * 200)[0]
    assert ids[0] == clip_tok.sot_token_id and ids[-1] == clip_tok.eot_token_id
    assert (ids != 0).all()


def _random_text(rng: random.Random) -> str:
    pools = [
        string.ascii_letters + string.digits + " ",
        string.punctuation + " '",
        " \t\n\r\x0b\x0c\x00\x1b\x7f\x85\xa0\u2028\u3000",
        "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÉÎÕÜ",
        "ÃƒÂ©â€œâ€™Ã¢â‚¬â„¢\x80\x9d",  # mojibake fragments
        "日本語中文한국어ᄀ각ἀΩωЖжשا",
        "😀🐱👍🏽❤️\u200d\ufe0f🇯🇵",
        "\u0301\u0345\u0558\u017f\u212a\u0130\ufb01\ufb05\uff21\uff41\uff11",
    ]
    snippets = ["&amp;", "&lt;", "&#39;", "&nbsp;", "<end_of_text>", "<start_of_text>",
                "<|endoftext|>", "'s", "'LL", "'ſ", "\x1b[1m"]  # fmt: skip
    parts = []
    for _ in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.1:
            parts.append(rng.choice(snippets))
        elif r < 0.2:  # any scalar value, assigned or not
            cp = rng.randrange(0x110000 - 0x800)
            parts.append(chr(cp + 0x800 if cp >= 0xD800 else cp))
        else:
            pool = rng.choice(pools)
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
    return "".join(parts)


def test_clip_fuzz_random_unicode(clip_tok, clip_pipeline):
    rng = random.Random(1234)
    texts = [_random_text(rng) for _ in range(400)]
    ref = _open_clip_ids(texts)
    for tok in (clip_tok, clip_pipeline):
        ours = tok(texts)
        bad = [t for t, a, b in zip(texts, ours, ref, strict=True) if not torch.equal(a, b)]
        assert not bad, bad[:3]


def test_clip_split_pattern_matches_open_clip_regex_on_all_code_points():
    # The Rust Split ("pipeline" mode) must cut exactly where open_clip's `regex` pattern does,
    # for every code point. Code points are grouped by open_clip's class so that a few long
    # strings cover all of them: a code point in the wrong class would break a run of letters
    # or of other characters, or merge a digit with its "a"/"!" neighbours.
    pattern = Regex(clip_vocab.clip_split_pattern())
    split = pre_tokenizers.Split(pattern, behavior="removed", invert=True).pre_tokenize_str
    chars = clip_vocab._all_codepoints()
    letters = "".join(regex.findall(r"[\p{L}]", chars, flags=regex.IGNORECASE))
    digits = regex.findall(r"[\p{N}]", chars, flags=regex.IGNORECASE)
    others = "".join(regex.findall(r"[^\s\p{L}\p{N}]", chars, flags=regex.IGNORECASE))
    grouped = set(letters) | set(digits) | set(others)
    unmatched = [c for c in chars if c not in grouped]  # whitespace, U+0345
    assert len(letters) + len(digits) + len(others) + len(unmatched) == len(chars)
    texts = [
        letters,
        others,
        "a" + "a".join(digits) + "a",
        "!" + "!".join(digits) + "!",
        "a" + "a".join(unmatched) + "a",
        "!" + "!".join(unmatched) + "!",
        " ".join("'" + c for c in chars[:0x250]),  # contractions incl. "'S" and "'ſ"
        " ".join(f"'{c}{d}" for c in "rRvVlL" for d in "eElLſ"),
    ]
    for text in texts:
        ours = [piece for piece, _ in split(text)]
        ref = clip_vocab.OPEN_CLIP_PATTERN.findall(text)
        assert ours == ref


def test_clean_text_matches_open_clip_on_ascii():
    # Every ASCII character, alone and in contexts that trigger ftfy's HTML / line-break /
    # terminal-escape fixers, must clean exactly as open_clip's _clean_lower.
    contexts = ["{}", "a{}b", " {} ", "&amp;{}", "{}&lt;", "\x1b[{}m", "\r{}\n", "<{}&gt;"]
    for code in range(128):
        for ctx in contexts:
            text = ctx.format(chr(code))
            assert clean_text(text) == oc_tok._clean_lower(text), repr(text)


def test_ftfy_skip_is_sound():
    # clean_text skips ftfy when _ftfy_is_identity says it cannot change the text; check that
    # claim against the installed ftfy on all safe single characters, pairs and random strings.
    safe = "".join(chr(c) for c in range(128) if cleaning._ftfy_is_identity(chr(c)))
    assert "&" not in safe and "\r" not in safe and "\x1b" not in safe and "\x00" not in safe
    assert "\t" in safe and "\n" in safe and "<" in safe
    candidates = list(safe) + [a + b for a in safe for b in safe]
    rng = random.Random(7)
    candidates += ["".join(rng.choices(safe, k=rng.randint(1, 60))) for _ in range(2000)]
    for text in candidates:
        assert cleaning._ftfy_is_identity(text)
        assert ftfy.fix_text(text) == text, repr(text)
    assert not cleaning._ftfy_is_identity("caf\xe9")
    assert not cleaning._ftfy_is_identity("a &amp; b")


def test_clip_decode_round_trip(clip_tok):
    for text in ["a photo of a cat", "two dogs playing in the snow", "hello world 1 2 3"]:
        assert clip_tok.decode(clip_tok(text)[0]) == text
        assert clip_tok.decode(clip_tok.encode(text)) == text
    assert clip_tok.decode(clip_tok("A Photo OF a CAT")[0]) == "a photo of a cat"
    assert clip_tok.decode(clip_tok("café 日本")[0]) == "café 日本"
    assert clip_tok.decode([]) == ""


def test_clip_pickles(clip_tok, clip_pipeline):
    import pickle  # DataLoader workers pickle the tokenizer

    for tok in (clip_tok, clip_pipeline):
        clone = pickle.loads(pickle.dumps(tok))
        assert torch.equal(clone(AWKWARD_TEXTS), tok(AWKWARD_TEXTS))


def _write_hf_clip_files(directory) -> None:
    """vocab.json + merges.txt as Hugging Face CLIP checkpoints ship them.

    Same ids as open_clip's table; the two special tokens are named "<|startoftext|>" and
    "<|endoftext|>"; merges.txt starts with a "#version" line.
    """
    vocab, merges = clip_vocab.vocab_from_bpe_gz(None)
    names = {49406: "<|startoftext|>", 49407: "<|endoftext|>"}
    hf_vocab = {names.get(i, t): i for t, i in vocab.items()}
    (directory / "vocab.json").write_text(json.dumps(hf_vocab), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")


def test_clip_hf_vocab_files_same_ids(tmp_path, clip_tok):
    _write_hf_clip_files(tmp_path)
    tok = CLIPTokenizer(vocab_file=tmp_path / "vocab.json", merges_file=tmp_path / "merges.txt")
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (49406, 49407, 49408)
    assert torch.equal(tok(AWKWARD_TEXTS), clip_tok(AWKWARD_TEXTS))
    pipeline = CLIPTokenizer.from_pretrained(tmp_path, batch_mode="pipeline")
    assert torch.equal(pipeline(AWKWARD_TEXTS), clip_tok(AWKWARD_TEXTS))
    assert tok.decode(tok("a photo of a cat")[0]) == "a photo of a cat"


def test_clip_hf_vocab_files_are_what_transformers_reads(tmp_path, clip_tok):
    # The files written above are a valid HF CLIP tokenizer: transformers builds one from them
    # and agrees with us on plain text (its NFC normalizer differs from ftfy on odd input).
    transformers = pytest.importorskip("transformers")
    _write_hf_clip_files(tmp_path)
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    texts = ["a photo of a cat", "Two DOGS, playing!", "it's 2024 & café"]
    got = hf(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    ours = clip_tok(texts)
    hf_ids = torch.tensor(got)
    # HF pads with "<|endoftext|>"; open_clip/vlkit with 0.
    for h, o in zip(hf_ids, ours, strict=True):
        n = int((o != 0).sum())
        assert h[:n].tolist() == o[:n].tolist()


def test_get_tokenizer_clip_directory_context_length(tmp_path):
    _write_hf_clip_files(tmp_path)
    assert get_tokenizer(tmp_path).context_length == 77
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert get_tokenizer(tmp_path).context_length == 77  # HF's "no limit" is ignored
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 40}))
    assert get_tokenizer(tmp_path).context_length == 40
    (tmp_path / "config.json").write_text(
        json.dumps({"text_config": {"max_position_embeddings": 32}})
    )
    tok = get_tokenizer(str(tmp_path))
    assert isinstance(tok, CLIPTokenizer) and tok.context_length == 32
    assert get_tokenizer(tmp_path, context_length=20)("a cat").shape == (1, 20)


def test_get_tokenizer_names():
    tok = get_tokenizer("clip")
    assert isinstance(tok, CLIPTokenizer) and tok.context_length == 77
    assert get_tokenizer("clip-vit-b-32").context_length == 77
    assert get_tokenizer("clip", context_length=16)("a cat").shape == (1, 16)
    # Preset names are a model concept: vlkit.get_tokenizer resolves them, the data layer's
    # factory does not know them.
    tiny = vlkit.get_tokenizer("tiny")
    assert isinstance(tiny, CLIPTokenizer)
    assert tiny.context_length == PRESETS["tiny"].text.context_length
    with pytest.raises(ValueError, match="'tiny'.*vlkit.get_tokenizer"):
        get_tokenizer("tiny")


def test_get_tokenizer_errors(tmp_path):
    for name in ("siglip", "siglip-b-16-224", "SigLIP-so400m"):
        with pytest.raises(ValueError, match="SigLIP.*not shipped.*spiece.model"):
            get_tokenizer(name)
    with pytest.raises(ValueError, match="'no-such-model'.*vocab.json.*spiece.model"):
        get_tokenizer("no-such-model")
    with pytest.raises(ValueError, match=f"{tmp_path}.*no tokenizer files.*vocab.json"):
        get_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ValueError, match="missing merges.txt"):
        get_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="batch_mode"):
        CLIPTokenizer(batch_mode="fast")
    with pytest.raises(ValueError, match="context_length"):
        get_tokenizer("clip")("a", context_length=-1)
    with pytest.raises(TypeError):
        get_tokenizer("clip")(["a", 3])


def test_clip_bad_files(tmp_path):
    bad = tmp_path / "bpe.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bpe.txt.gz"):
        CLIPTokenizer(bad)
    (tmp_path / "vocab.json").write_text("[1, 2]")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="vocab.json"):
        CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="id 123456 is not in the vocabulary"):
        CLIPTokenizer().decode([320, 123456])


# ---------------------------------------------------------------------------------------------
# SigLIP
# ---------------------------------------------------------------------------------------------

SIGLIP_TEXTS = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A Cat.",
    "Hello, World!!! (with) [punctuation] {everywhere}; ok?",
    "it's a dog's life -- isn't it?",
    "numbers 12345 and 3.14 and 1,000",
    "café naïve Crème brûlée",
    "東京 日本語 😀",
    "tabs\tand\nnewlines  and   spaces",
    "under_score and-hyphen/slash\\back",
    "▁ sentencepiece ▁underline▁ inside",
    "ends with eos </s>",
    "</s> starts with eos",
    "</s>",
    "two </s></s> eos and <unk> unk",
    "<unk>",
    " </s> ",
    "  leading and trailing spaces  ",
    "UPPER CASE TEXT",
    "ÀÉÎÕÜ ß İ",
    "&amp; html &lt;entities&gt;",
    "the quick brown fox jumps over the lazy dog " * 12,
    "word " * 63,
    "word " * 62 + "</s>",
    "word " * 63 + "</s>",
    "x" * 500,
]


def _siglip_corpus(n: int = 2000) -> list[str]:
    rng = random.Random(0)
    words = ["a", "the", "photo", "of", "cat", "dog", "on", "table", "red", "blue", "small",
             "large", "two", "three", "café", "naïve", "über", "東京", "image", "picture", "with",
             "and", "in", "near", "word", "quick", "brown", "fox", "jumps", "over", "lazy",
             "hello", "world", "numbers", "spaces", "upper", "case", "text"]  # fmt: skip
    lines = []
    for _ in range(n):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        if rng.random() < 0.3:
            s += rng.choice([".", "!", "?", ",", " (x)", " -- y"])
        if rng.random() < 0.2:
            s = s.capitalize()
        if rng.random() < 0.2:
            s += f" {rng.randint(0, 9999)}"
        lines.append(s)
    return lines


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    """A SigLIP-style spiece.model: unigram, ids pad=0 "<pad>", eos=1 "</s>", unk=2 "<unk>", no
    bos, like google/siglip-*'s T5-style vocabulary (which SiglipTokenizer's defaults assume:
    eos and pad are both "</s>")."""
    directory = tmp_path_factory.mktemp("siglip")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_siglip_corpus()),
        model_prefix=str(directory / "spiece"),
        vocab_size=300,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        minloglevel=2,
    )
    (directory / "spiece.vocab").unlink()
    return directory


@pytest.fixture(scope="module")
def make_hf_siglip(spiece_dir):
    """transformers.SiglipTokenizer on the test spiece.model, with optional init kwargs."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.siglip import tokenization_siglip

    with pytest.MonkeyPatch.context() as mp:
        # SiglipTokenizer.__init__ insists on protobuf, which only the legacy=False path of
        # SentencePieceBackend uses (to rewrite the model proto); SiglipTokenizer keeps
        # legacy=True, so tokenization is the same without it.
        mp.setattr(tokenization_siglip, "requires_backends", lambda *args, **kwargs: None)
        yield lambda **kw: transformers.SiglipTokenizer(
            vocab_file=str(spiece_dir / "spiece.model"), **kw
        )


@pytest.fixture(scope="module")
def hf_siglip(make_hf_siglip):
    return make_hf_siglip()


def _hf_siglip_ids(hf, texts: list[str], max_length: int = 64) -> torch.Tensor:
    """What SiglipProcessor asks of SiglipTokenizer."""
    with warnings.catch_warnings():  # "This sequence already has </s>" for texts ending in it
        warnings.simplefilter("ignore")
        out = hf(texts, padding="max_length", max_length=max_length, truncation=True)
    return torch.tensor(out["input_ids"])


def test_siglip_ids_match_transformers(spiece_dir, hf_siglip):
    tok = SigLIPTokenizer(spiece_dir / "spiece.model")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (
        hf_siglip.pad_token_id,
        hf_siglip.eos_token_id,
        hf_siglip.unk_token_id,
    )
    assert tok.vocab_size == hf_siglip.vocab_size and tok.context_length == 64
    ours, ref = tok(SIGLIP_TEXTS), _hf_siglip_ids(hf_siglip, SIGLIP_TEXTS)
    assert ours.dtype == torch.long and ours.shape == (len(SIGLIP_TEXTS), 64)
    for text, a, b in zip(SIGLIP_TEXTS, ours, ref, strict=True):
        assert a.tolist() == b.tolist(), repr(text)


@pytest.mark.parametrize("max_length", [1, 2, 5, 16])
def test_siglip_truncation_matches_transformers(spiece_dir, hf_siglip, max_length):
    tok = SigLIPTokenizer(spiece_dir / "spiece.model")
    ref = _hf_siglip_ids(hf_siglip, SIGLIP_TEXTS, max_length)
    assert torch.equal(tok(SIGLIP_TEXTS, context_length=max_length), ref)


@pytest.mark.parametrize("max_length", [5, 64])
def test_siglip_pad_other_than_eos(spiece_dir, make_hf_siglip, max_length):
    # With pad == eos (SigLIP's default) an eos that is not appended is invisible; with a
    # separate pad token, "no second eos after a trailing </s>" shows in the ids.
    hf = make_hf_siglip(pad_token="<pad>", do_lower_case=False)
    tok = SigLIPTokenizer(spiece_dir / "spiece.model", pad_token="<pad>", do_lower_case=False)
    assert tok.pad_token_id == hf.pad_token_id == 0
    texts = SIGLIP_TEXTS + ["a <pad> b", "<pad>", "word " * 3 + "</s>"]
    ref = _hf_siglip_ids(hf, texts, max_length)
    assert torch.equal(tok(texts, context_length=max_length), ref)


def test_siglip_fuzz_matches_transformers(spiece_dir, hf_siglip):
    tok = SigLIPTokenizer(spiece_dir / "spiece.model")
    rng = random.Random(99)
    texts = [_random_text(rng) for _ in range(150)]
    texts += [t.replace("_of_text>", "/s>") for t in texts[:50]]  # more "</s>" inside text
    ours, ref = tok(texts), _hf_siglip_ids(hf_siglip, texts)
    bad = [t for t, a, b in zip(texts, ours, ref, strict=True) if not torch.equal(a, b)]
    assert not bad, bad[:3]


def test_siglip_from_saved_directory(spiece_dir, hf_siglip, tmp_path):
    # What save_pretrained writes (spiece.model + tokenizer_config.json), read back by us.
    hf_siglip.save_pretrained(tmp_path)
    tok = get_tokenizer(tmp_path)
    assert isinstance(tok, SigLIPTokenizer) and tok.context_length == 64
    assert torch.equal(tok(SIGLIP_TEXTS), _hf_siglip_ids(hf_siglip, SIGLIP_TEXTS))
    (tmp_path / "config.json").write_text(
        json.dumps({"text_config": {"max_position_embeddings": 16}})
    )
    assert get_tokenizer(tmp_path)("a cat").shape == (1, 16)
    assert get_tokenizer(tmp_path, context_length=8)("a cat").shape == (1, 8)


def test_siglip_encode_decode(spiece_dir):
    tok = SigLIPTokenizer(spiece_dir / "spiece.model")
    ids = tok("A photo of a cat!")[0]
    assert ids[len(tok.encode("A photo of a cat!"))] == tok.eos_token_id
    assert tok.decode(ids) == "a photo of a cat"
    assert tok.decode(tok.encode("two dogs")) == "two dogs"


def test_siglip_pickles(spiece_dir):
    import pickle

    tok = SigLIPTokenizer(spiece_dir / "spiece.model")
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(SIGLIP_TEXTS), tok(SIGLIP_TEXTS))


def test_siglip_errors(tmp_path):
    with pytest.raises(ValueError, match="no spiece.model"):
        SigLIPTokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="spiece.model"):
        get_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------------------
# Any tokenizer.json
# ---------------------------------------------------------------------------------------------


def test_tokenizer_json_directory(tmp_path):
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "photo": 4, "of": 5, "cat": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"pad_token": "<pad>", "eos_token": "</s>", "model_max_length": 8})
    )
    ours = get_tokenizer(tmp_path)
    assert isinstance(ours, HFTokenizer)
    assert (ours.context_length, ours.pad_token_id, ours.eot_token_id) == (8, 0, 1)
    ids = ours(["a photo of a cat", "cat dog", "a " * 20])
    assert ids.tolist()[:2] == [[3, 4, 5, 3, 6, 1, 0, 0], [6, 2, 1, 0, 0, 0, 0, 0]]
    assert ids[2].tolist() == [3] * 7 + [1]  # truncation keeps the post-processor's eos
    assert ours.encode("a cat") == [3, 6]
    assert ours.encode("a " * 20) == [3] * 20  # encode never truncates
    assert ours.decode(ids[0]) == "a photo of a cat"
    assert np.array_equal(ours("a cat", context_length=4).numpy(), [[3, 6, 1, 0]])
