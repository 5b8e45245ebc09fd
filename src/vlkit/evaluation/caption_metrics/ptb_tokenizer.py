"""Pure-Python PTB tokenization of captions, matching pycocoevalcap's ``PTBTokenizer``.

pycocoevalcap (``tokenizer/ptbtokenizer.py``) runs Stanford CoreNLP 3.4.1's
``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` on the captions, one per line,
and then drops the tokens in its ``PUNCTUATIONS`` list::

    '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;

Because ``-lowerCase`` lowercases the bracket tokens first, the upper-case ``-LRB-`` / ``-RRB-`` /
``-LCB-`` / ``-RCB-`` entries never match: ``(``, ``)``, ``{``, ``}``, ``[``, ``]`` survive as
``-lrb-``, ``-rrb-``, ``-lcb-``, ``-rcb-``, ``-lsb-``, ``-rsb-``. That is reproduced here.

The scanner below is a longest-match lexer in the style of the JFlex grammar behind PTBLexer: at
each position every rule is tried, the longest match wins (trailing context counts towards the
length, as in JFlex), and ties go to the earlier rule. The rules were written from the behaviour of
the 3.4.1 jar (checked against it on a few thousand generated captions, see
``tests/test_caption_metrics.py``); they cover what captions contain:

- clitics and contractions: ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``cannot`` ->
  ``can not``, ``gonna`` -> ``gon na``, ``'s 'm 'd 're 've 'll`` split off, ``'tis`` -> ``'t is``,
  ``o'clock``, ``ma'am``, ``rock 'n' roll``, ``'90s`` kept;
- periods: a sentence-final period is split off (and then removed), but abbreviations
  (``mr.``, ``st.``, ``etc.``, ``inc.``, ``jan.``, ...), acronyms (``u.s.``, ``a.m.``, ``e.g.``)
  and single letters (``j.``) keep theirs; ``no.``, ``fig.``, ``art.``, ``ca.`` keep it only
  before a number; ``dog.cat`` (a period between letters) stays one token;
- hyphenated words (``black-and-white``, ``3-year-old``, ``x-ray``) are one token; ``--``, ``---``,
  ``—`` and ``–`` become ``--``; numbers keep ``.``, ``,`` and ``:`` (``3,000``, ``5.50``,
  ``10:30``), fractions and dates keep ``/`` (``1/2``, ``12/25/2014``), ``½`` -> ``1/2``;
- ``$5`` -> ``$ 5``, ``50%`` -> ``50 %``, ``£`` -> ``#``, ``€`` -> ``$``, ``#1`` -> ``# 1``;
- quotes (``"``, ``'``, curly quotes, ``&quot;``) become ``` `` ``` / ``''`` / ``` ` ``` / ``'``
  and are removed; ``&amp;`` -> ``&``; ``:)`` -> ``:-rrb-``; URLs, e-mail addresses, ``#tags`` and
  ``@names`` stay whole;
- characters the lexer cannot tokenize (emoji and other characters outside the Basic
  Multilingual Plane, letter-like numerals such as ``Ⅻ``, control characters) are deleted.

Captions are tokenized as pycocoevalcap does, as the lines of one file: a caption's last token
can depend on the first word of the *next* caption (``no.`` keeps its period before a number,
``b.`` loses it before "The"/"A"/...; some abbreviations get an extra ``.`` token before a capital).
:func:`ptb_tokens_batch`, :func:`ptb_tokenize` on a list and ``caption_scores`` reproduce this
(pass the captions in pycocoevalcap's order: references image by image, candidates separately);
:func:`ptb_tokens` treats its caption as the last line of the file.

Known differences from the Java tokenizer:

- Characters Java treats as line breaks inside a caption (``\\r``, ``\\x0b``, ``\\x0c``,
  ``\\u2028``, ``\\u2029``) are spaces here; pycocoevalcap only replaces ``\\n``, so with Java
  they split the caption and shift every later caption by a line.
- The grammar is a reconstruction, so rare constructs can tokenize differently: on generated
  captions with the phenomena above (several thousand, checked against the 3.4.1 jar) there were
  no differences; on random strings of letters, digits and punctuation fewer than 1 in 10,000
  differ (e.g. ``00.x``). Scripts other than Latin, SGML markup, URLs and e-mail
  addresses are covered only roughly. Letters are Unicode letters of the Basic Multilingual Plane
  as Python defines them, which can differ from the lexer's tables for recently added characters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import overload

import regex

# pycocoevalcap tokenizer/ptbtokenizer.py: tokens removed after tokenization.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Character classes and macros (names follow the JFlex grammar of PTBLexer).
# ---------------------------------------------------------------------------------------------
_SPACE_CHARS = " \t\u00a0\u2000-\u200a\u3000"
SPACE = f"[{_SPACE_CHARS}]"
NEWLINE = r"(?:\r\n|[\r\n\u2028\u2029\u000b\u000c\u0085])"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
SPACENLS = f"{SPACENL}+"
_XML_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
SGML = (
    f"<(?:[!?][A-Za-z\\-][^>\\r\\n]*|\\/{_XML_NAME}"
    f"|{_XML_NAME}(?:[ ]+(?:{_XML_NAME}(?:[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|{_XML_NAME}))?))*[ ]*\\/?)[ ]*>"
)
_LETTER_CLASS = r"\p{L}\u00ad\u0300-\u036f"
# Unicode letters (Java Character.isLetter), soft hyphen, combining accents, HTML accent entities.
SPLET = r"&[aeiouAEIOU](?i:acute|grave|uml);"
LETTER = f"(?:[{_LETTER_CLASS}]|{SPLET})"
ALNUM = f"(?:[{_LETTER_CLASS}\\p{{Nd}}]|{SPLET})"
UPPER = r"\p{Lu}"
DIGIT = r"\p{Nd}"
DATE = f"{DIGIT}{{1,2}}[\\-\\/]{DIGIT}{{1,2}}[\\-\\/]{DIGIT}{{2,4}}"
NUM = f"(?:{DIGIT}+|{DIGIT}*(?:[.:,\\u00ad\\u066b\\u066c]{DIGIT}+)+)"
NUMBER = f"[\\-+]?{NUM}"
SUBSUPNUM = (
    r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"
)
FRAC = f"(?:{DIGIT}{{1,4}}[- \\u00a0])?{DIGIT}{{1,4}}(?:\\\\?\\/|\\u2044){DIGIT}{{1,4}}"
FRAC2 = r"[\u00bc\u00bd\u00be\u2153-\u215e]"
DOLSIGN = r"(?:[A-Z]*\$|#)"
DOLSIGN2 = r"[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"
WORD = f"{LETTER}{ALNUM}*(?:[.!?]{LETTER}{ALNUM}*)*"
APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
APOSETCETERA = f"(?:{APOS}|[`\\u0091\\u2018\\u201b])"
# Word-internal joiners of THING: hyphens and (in this version of the lexer) the underscore.
HYPHEN = r"[-_\u058a\u2010\u2011]"
_DOL = f"(?:[dDoOlL]{APOSETCETERA}{ALNUM})"
THING = f"{_DOL}?{ALNUM}+(?:{HYPHEN}{_DOL}?{ALNUM}+)*"
THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
ACRO = r"(?:[A-Za-z](?:\.[A-Za-z])*|(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-)(?i:u\.k|u\.s\.s\.r))"
ACRO2 = r"(?:[A-Za-z](?:\.[A-Za-z])+|(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-)(?i:u\.k|u\.s\.s\.r))"
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\\u00ad]*(?:-(?:[A-Za-z0-9\\u00ad]+|{ACRO2}\\.))+"
_AUX = "(?:[msdMSD]|(?i:re|ve|ll))"
REDAUX = f"{APOS}{_AUX}"
SWORD = r"[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
SREDAUX = f"(?i:n){APOSETCETERA}(?i:t)"
APOWORD = (
    f"(?:{APOS}(?i:n){APOS}?|[lLdDjJ]{APOS}|(?i:dunkin){APOS}|(?i:somethin){APOS}|(?i:ol){APOS}"
    f"|{APOS}(?i:em)|[A-HJ-XZn]{APOSETCETERA}\\p{{L}}{{2}}\\p{{L}}*|{APOS}[2-9]0(?i:s)"
    f"|{APOS}(?i:till?)|\\p{{L}}\\p{{L}}*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z]\\p{{L}}*"
    f"|{APOS}(?i:cause)|(?i:cont'd\\.?)|(?i:'twas)|(?i:nor'easter)|(?i:c'mon)|(?i:e'er)"
    f"|(?i:s'mores)|(?i:ev'ry)|(?i:li'l)|(?i:nat'l)|O{APOSETCETERA}o)"
)
APOWORD2 = f"(?i:y){APOS}"
FULLURL = r"(?i:https?):\/\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
LIKELYURL = (
    r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
    # ",-_" is a character range (as in PTBLexer): no digits, capitals, "-" or "_" in the labels.
    r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu)))"
    r"(?:\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
)
EMAIL = (
    r"(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*"
    r"[^ \t\n\f\r\"<>|(){}.\u00a0]+(?:(?i:&gt;)|>)?"
)
TWITTER = f"(?:@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+)"


def _ci(alternatives: str) -> str:
    """JFlex %caseless: literal text matches in any case (character classes do not)."""
    return f"(?i:{alternatives})"


# Abbreviations. ABBREV1 ones are normally followed by lower case (a capital after them also ends
# the sentence), ABBREV2 ones by capitals, ABBREV3 ones only count before a number. A capital
# written on its own below (M(?i:ass)) is a case-sensitive character class in PTBLexer.
ABMONTH = _ci("jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec")
ABDAYS = _ci("mon|tue|tues|wed|thu|thurs|fri")
ABSTATE = (
    _ci("ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla")
    + "|"
    + _ci("penn|tenn|va|vt|wisc?|wyo")
    + "|A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
)
ABCOMP = _ci("inc|cos?|corp|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys") + "|(?i:pp?t)[ye](?i:s)?"
ABNUM = _ci("tel|est|ext|sq")
ABPTIT = _ci("jr|sr|bros|(?:ed|ph)\\.d|blvd|rd|esq")
ABBREV1 = f"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|{_ci('etc|al|seq|bldg')})\\."
ABTITLE = (
    _ci(
        "mr|mrs|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl"
        "|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|dept|adj|adv"
        "|asst|assoc|ens|insp|mlle|mme|msgr|sfc|ft"
    )
    + "|M(?i:iss)|(?i:m)[ft](?i:g)"
)
ABCOMP2 = _ci("invt|elec|natl|dept|vs|alex|cie|a\\.k\\.a|treas|wm|jos|cf|ph") + "|(?i:m)[ft](?i:g)"
ABBREV2 = f"(?:{ABTITLE}|{ACRO}|{ABCOMP2})\\."
ACRONYM = f"{ACRO}\\."
ABBREV3 = _ci("ca|figs?|prop|nos?|art|bldg|pp|op") + "\\."
# Words after which an acronym's period is also a sentence end (a capital, then any case).
_SENT_START_WORDS = (
    "A", "About", "According", "Additionally", "After", "An", "As", "At", "But", "Did", "During",
    "Earlier", "He", "Her", "Here", "However", "If", "In", "It", "Last", "Many", "More", "Mr\\.",
    "Ms\\.", "Now", "Once", "One", "Other", "Our", "She", "Since", "So", "Some", "Such", "That",
    "The", "Their", "Then", "There", "These", "They", "This", "We", "When", "While", "What", "Yet",
    "You",
)  # fmt: skip
_SENT_START = "|".join(f"{w[0]}(?i:{w[1:]})" if len(w) > 1 else w for w in _SENT_START_WORDS)
PHONE = (
    r"(?:(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])"
    r"[0-9]{3,4}[\- \u00a0]?[0-9]{3,5}"
    r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5})"
)
FAKEDUCKFEET = "<<|>>"
LESSTHAN = "<|(?i:&lt;)"
GREATERTHAN = ">|(?i:&gt;)"
HYPHENS = r"-+"
LDOTS = r"\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]"
FNMARKS = "@+|#+|_+"
ASTS = r"\*+|(?:\\\*){1,3}"
INSENTP = "[,;:\u3001]"
QUOTES = (
    f"(?:{APOS}|''|[`\\u2018\\u2019\\u201a\\u201b\\u201c\\u201d\\u0091\\u0092\\u0093\\u0094"
    f"\\u201e\\u201f\\u2039\\u203a\\u00ab\\u00bb]{{1,2}})"
)
DBLQUOT = '"|(?i:&quot;)'
TBSPEC = (
    r"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s)|(?i:pro)-|(?i:anti)-|(?i:s)(?:&|&amp;)(?i:p-500)"
    f"|(?i:s)(?:&|&amp;)(?i:ls)|(?i:cap){APOS}(?i:n)|(?i:c){APOS}(?i:est)"
)
TBSPEC2 = f"{APOS}[0-9][0-9]"
SMILEY = r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]"
ASIANSMILEY = r"[\^x=~<>]\.\[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
MISCSYMBOL = (
    "[+%&~\\^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7"
    "\u0387\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e"
    "\u066a\u066d\u0703-\u070d\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023"
    "\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff"
    "\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]"
)
PROG_LANGS = "(?i:c)[+][+]|(?i:c|f)#"

# ---------------------------------------------------------------------------------------------
# Token normalisations (PTB3 escaping as the 3.4.1 command line applies it).
# ---------------------------------------------------------------------------------------------
_SINGLE_QUOTE = regex.compile(r"(?i:&apos;)|'")
_DOUBLE_QUOTE = regex.compile(r'"|(?i:&quot;)')
_LEFT_SINGLE = regex.compile("[\u0082\u008b\u0091\u2018\u201a\u201b\u2039]")
_RIGHT_SINGLE = regex.compile("[\u0092\u009b\u00b4\u2019\u203a]")
_LEFT_DOUBLE = regex.compile("[\u0084\u0093\u201c\u00ab]|[\u0091\u2018]'")
_RIGHT_DOUBLE = regex.compile("[\u0094\u201d\u00bb]|[\u0092\u2019]'")


def _latex_quotes(tok: str, left: bool) -> str:
    """ASCII quotes by position (left -> ` and ``, right -> ' and ''), Unicode ones by shape."""
    tok = _SINGLE_QUOTE.sub("`" if left else "'", tok)
    tok = _DOUBLE_QUOTE.sub("``" if left else "''", tok)
    tok = _LEFT_SINGLE.sub("`", tok)
    tok = _RIGHT_SINGLE.sub("'", tok)
    tok = _LEFT_DOUBLE.sub("``", tok)
    return _RIGHT_DOUBLE.sub("''", tok)


def _ascii_apostrophes(tok: str) -> str:
    """Clitics ('s, n't) written with a curly or entity apostrophe come out with "'"."""
    return regex.sub("[\u0092\u2019`\u0091\u2018\u201b]|(?i:&apos;)", "'", tok)


def _parentheses(tok: str) -> str:
    """normalizeParentheses inside a longer token (smileys, phone numbers)."""
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


_FRACTIONS = {
    "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3",
    "\u2155": "1/5", "\u2156": "2/5", "\u2157": "3/5", "\u2158": "4/5", "\u2159": "1/6",
    "\u215a": "5/6", "\u215b": "1/8", "\u215c": "3/8", "\u215d": "5/8", "\u215e": "7/8",
}  # fmt: skip


def _currency(tok: str) -> str:
    return (
        tok.replace("\u00a2", "cents")
        .replace("\u00a3", "#")
        .replace("\u0080", "$")
        .replace("\u20ac", "$")
    )


def _nbsp(tok: str) -> str:
    return regex.sub(f"{SPACE}", "\u00a0", tok)


# ---------------------------------------------------------------------------------------------
# Rules: (main pattern, trailing context or None, action). An action gets the matched main text
# and returns (token or None, number of characters consumed); None drops the match.
# ---------------------------------------------------------------------------------------------
Action = Callable[[str], "tuple[str | None, int]"]


def _keep(text: str) -> tuple[str | None, int]:
    return text, len(text)


def _drop(text: str) -> tuple[str | None, int]:
    return None, len(text)


def _push(n: int) -> Action:
    """JFlex yypushback(n): the token is all but the last n characters, which are re-scanned."""
    return lambda text: (text[:-n], len(text) - n)


def _const(value: str) -> Action:
    return lambda text: (value, len(text))


def _period_next(text: str) -> tuple[str | None, int]:
    """Abbreviation at a sentence end: keep it whole, then re-scan its period as a '.' token."""
    return text, len(text) - 1


def _acronym_at_sentence_end(text: str) -> tuple[str | None, int]:
    """Acronym before a typical sentence start: "U.S. The" -> "U.S." "."; "b. The" -> "b" "."."""
    if len(text) == 2:
        return text[:1], 1
    return text, len(text) - 1


def _map(fn: Callable[[str], str]) -> Action:
    return lambda text: (fn(text), len(text))


def _hyphens(text: str) -> tuple[str | None, int]:
    return ("--" if 3 <= len(text) <= 4 else text), len(text)


_RULE_SPECS: list[tuple[str, str | None, Action]] = [
    (PROG_LANGS, None, _keep),
    ("(?i:cannot)", None, _push(3)),
    ("(?i:'twas)", None, _push(3)),
    ("(?i:'tis)", None, _push(2)),
    ("(?i:gonna|gotta|lemme|gimme|wanna)", r"[^\p{L}]", _push(2)),
    (SGML, None, _map(_nbsp)),
    (r"(?i:&(?:md|mdash|ndash);)|[\u0096\u0097\u2013\u2014\u2015]", None, _const("--")),
    ("(?i:&amp;)", None, _const("&")),
    ("(?i:&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);)", None, _keep),
    (WORD, REDAUX, _keep),
    (SWORD, SREDAUX, _keep),
    (WORD, None, _keep),
    (APOWORD, None, _keep),
    (APOWORD2, r"\p{L}", _keep),
    (FULLURL, None, _keep),
    (LIKELYURL, None, _keep),
    (EMAIL, None, _keep),
    (TWITTER, None, _keep),
    # "'s" needs a non-letter after it ("'sup" is a quote + "sup"); "’s" does not.
    (REDAUX, r"[^A-Za-z]", _map(_ascii_apostrophes)),
    (f"(?:[\u0092\u2019]|(?i:&apos;)){_AUX}", None, _map(_ascii_apostrophes)),
    (SREDAUX, None, _map(_ascii_apostrophes)),
    (DATE, None, _keep),
    (NUMBER, None, _keep),
    (SUBSUPNUM, None, _keep),
    (FRAC, None, _map(_nbsp)),
    (FRAC2, None, _map(_FRACTIONS.__getitem__)),
    (TBSPEC, None, _keep),
    (THING3, None, _keep),
    (DOLSIGN, None, _keep),
    (DOLSIGN2, None, _map(_currency)),
    (ACRONYM, f"{SPACENLS}(?:{_SENT_START})(?:{SPACENL}|[?!])", _acronym_at_sentence_end),
    (ABBREV3, f"{SPACENL}?{DIGIT}", _keep),
    ("(?i:pt[ey]|co)\\.", f"{SPACE}(?i:ltd|lim)", _keep),
    (ABBREV1, f"{SPACENL}(?:{SPACENL}|{UPPER}|{SGML})", _period_next),
    (ABBREV1, r"(?s:..)", _keep),
    (ABBREV1, None, _period_next),
    (ABBREV2, None, _keep),
    (ACRO, SPACENL, _keep),
    (TBSPEC2, SPACENL, _keep),
    (f"{WORD}\\.", INSENTP, _keep),
    (PHONE, None, _map(lambda t: _nbsp(_parentheses(t)))),
    (DBLQUOT, "[A-Za-z0-9$]", _const("``")),
    (DBLQUOT, None, _const("''")),
    ("\u007f", None, _drop),
    (LESSTHAN, None, _const("<")),
    (GREATERTHAN, None, _const(">")),
    (r"\{", None, _const("-LCB-")),
    (r"\}", None, _const("-RCB-")),
    (r"\[", None, _const("-LSB-")),
    (r"\]", None, _const("-RSB-")),
    (r"\(", None, _const("-LRB-")),
    (r"\)", None, _const("-RRB-")),
    (HYPHENS, None, _hyphens),
    (LDOTS, None, _const("...")),
    (FNMARKS, None, _keep),
    (ASTS, None, _keep),
    (INSENTP, None, _keep),
    ("[?!]+", None, _keep),
    ("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", None, _keep),
    ("=", None, _keep),
    (r"\/", None, _keep),
    (f"{HTHING}\\.", INSENTP, _keep),
    (HTHING, None, _keep),
    (f"{THING}\\.", INSENTP, _keep),
    (THING, None, _keep),
    (f"{THINGA}\\.", INSENTP, _keep),
    (THINGA, None, _keep),
    (SMILEY, r"[^A-Za-z0-9]", _map(_parentheses)),
    (ASIANSMILEY, None, _map(_parentheses)),
    # An ASCII quote before a letter and one more non-space character opens a quotation.
    ("'", f"[A-Za-z][^{_SPACE_CHARS}\\r\\n\\u2028\\u2029\\u000b\\u000c\\u0085]", _const("`")),
    (QUOTES, None, _map(lambda t: _latex_quotes(t, False))),
    (FAKEDUCKFEET, None, _keep),
    (MISCSYMBOL, None, _keep),
    ("\u0095", None, _const("\u00b7")),
    ("\u0099", None, _const("\u2122")),
    ("(?i:&nbsp;)", None, _drop),
    (f"{SPACE}+", None, _drop),
    (f"{NEWLINE}", None, _drop),
]


def _compile(main: str, trail: str | None) -> regex.Pattern:
    # POSIX (leftmost-longest) matching gives JFlex's longest-match semantics inside one rule;
    # the trailing context is a second group so that it counts towards the match length.
    body = f"({main})" if trail is None else f"({main})(?:{trail})"
    return regex.compile(f"(?p){body}")


_RULES = [(_compile(m, t), a) for m, t, a in _RULE_SPECS]


@functools.lru_cache(maxsize=4096)
def _rules_starting_with(char: str) -> tuple[tuple[regex.Pattern, Action], ...]:
    """The rules that can match text starting with ``char`` (a partial match of one character)."""
    return tuple((p, a) for p, a in _RULES if p.match(char, partial=True) is not None)


def _scan(text: str, stop: int) -> list[str]:
    """Tokens of ``text`` that start before ``stop`` (the rest is lookahead context)."""
    out: list[str] = []
    pos = 0
    while pos < stop:
        best_len, best = 0, None
        for pattern, action in _rules_starting_with(text[pos]):
            m = pattern.match(text, pos)
            if m is not None and m.end() - pos > best_len:
                best_len, best = m.end() - pos, (m.group(1), action)
        if best is None:  # untokenizable character: PTBLexer deletes it (with a warning)
            pos += 1
            continue
        tok, consumed = best[1](best[0])
        if tok:
            out.append(tok)
        pos += max(consumed, 1)
    return out


# ---------------------------------------------------------------------------------------------
# Line-level driver with a fast path and a memo over whitespace-separated chunks.
# ---------------------------------------------------------------------------------------------
# Line breaks for Java (U+0085 is not one: PTBLexer reads it as an ellipsis).
_NEWLINE_LIKE = str.maketrans({c: " " for c in "\r\n\u2028\u2029\u000b\u000c"})
_ASCII_LINE_BREAK = re.compile("[\r\n\x0b\x0c]")
_NON_BMP = regex.compile("[\U00010000-\U0010ffff]")
_SPLIT = regex.compile(f"({SPACE}+)")
_BLANK = regex.compile(f"{SPACE}*")
# Constructs whose token may contain a space: fractions ("1 1/2"), phone numbers, spaced
# ellipses (". . ."), SGML tags, "&nbsp;". Lines with them are scanned whole.
_CROSS_CHUNK = regex.compile(
    f"{DIGIT}{SPACE}+{DIGIT}|\\){SPACE}+[0-9]|\\.{SPACE}\\.|<[A-Za-z!?/]|(?i:&nbsp;)"
)
# The same test for ASCII lines with single spaces, with the faster standard-library engine.
_CROSS_CHUNK_ASCII = re.compile(r"\d \d|\) \d|\. \.|<[A-Za-z!?/]|(?i:&nbsp;)")
# What the rules can see of the next line: blank space, its first word and one more character.
_NEXT_PREFIX = regex.compile(f"(?:{SPACENL})*[^{_SPACE_CHARS}\\n]*(?s:.)?")
# Stands for a character outside the BMP: Java sees two surrogates that no rule matches.
_UNTOKENIZABLE = "\uffff"

# Memo of chunk tokenizations, one dict for the lowercased PTB tokens and one for the same without
# PUNCTUATIONS. A chunk that does not end with "." tokenizes the same way before any space or line
# break, so it is keyed by itself; one ending with "." can be an abbreviation whose rules look at
# the next word, so its key includes that context (unless it is a plain word that no abbreviation
# rule matches).
_MEMO: tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]] = ({}, {})
_MEMO_CONTEXT: tuple[dict[tuple[str, str], tuple[str, ...]], ...] = ({}, {})
_MEMO_LIMIT = 1 << 19
_ABBREVIATION = regex.compile(f"(?:{ACRONYM}|{ABBREV1}|{ABBREV2}|{ABBREV3}|(?i:pt[ey]|co)\\.)")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_INSENTP_END = frozenset(",;:!?")


def clear_cache() -> None:
    """Forget memoised chunk tokenizations (they are bounded in size anyway)."""
    for memo in (*_MEMO, *_MEMO_CONTEXT):
        memo.clear()
    _rules_starting_with.cache_clear()


def _fast_ascii_chunk(chunk: str) -> tuple[str, ...] | None:
    """PTB tokens of the commonest ASCII chunks without running the lexer (None: run it).

    Checked against the 3.4.1 jar: for these shapes no rule matches longer than WORD (or NUMBER)
    except the assimilations ("gonna" -> "gon" "na").
    """
    word, last = chunk[:-1], chunk[-1]
    if chunk.isalpha():  # "dog"
        return None if chunk.lower() in _ASSIMILATIONS else (chunk,)
    if chunk.isdigit():  # "3"
        return (chunk,)
    if word.isalpha() and word.lower() not in _ASSIMILATIONS:
        if last in _INSENTP_END:  # "dog," "dog!"
            return (word, last)
        if last == "." and _ABBREVIATION.fullmatch(chunk) is None:  # "dog."
            return (word, ".")
    if len(chunk) > 2 and chunk[-2] == "'" and last in "sSdDmM" and chunk[:-2].isalpha():
        return (chunk[:-2], chunk[-2:])  # "dog's", "I'm", "she'd"
    return None


def _tokenize_chunk(chunk: str, context: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(lowercased PTB tokens, the same without PUNCTUATIONS) of ``chunk`` before ``context``."""
    if chunk.isascii():
        fast = _fast_ascii_chunk(chunk)
        if fast is not None:
            low = tuple(t.lower() for t in fast)
            return low, tuple(t for t in low if t not in PUNCTUATIONS)
    raw = _scan(chunk + context, len(chunk))
    low = tuple(t.replace(_UNTOKENIZABLE, "").lower() for t in raw if t != _UNTOKENIZABLE)
    return low, tuple(t for t in low if t not in PUNCTUATIONS)


def _chunk(chunk: str, which: int) -> tuple[str, ...]:
    """Tokens of a chunk that is followed by a space or a line break (context-free)."""
    result = _MEMO[which].get(chunk)
    if result is None:
        if len(_MEMO[0]) > _MEMO_LIMIT:
            clear_cache()
        both = _tokenize_chunk(chunk, "\n")
        _MEMO[0][chunk], _MEMO[1][chunk] = both
        result = both[which]
    return result


def _plain_dotted(chunk: str, which: int) -> tuple[str, ...] | None:
    """Tokens of a chunk ending with "." if they do not depend on what follows it, else None."""
    result = _MEMO[which].get(chunk)
    if (
        result is None
        and chunk.isascii()
        and (chunk == "." or (chunk[:-1].isalpha() and _ABBREVIATION.fullmatch(chunk) is None))
    ):
        result = _chunk(chunk, which)  # "dog." is "dog" "." before anything
    return result


def _chunk_in_context(chunk: str, context: str, which: int) -> tuple[str, ...]:
    """Tokens of a chunk ending with "." followed by ``context``."""
    result = _plain_dotted(chunk, which)
    if result is not None:
        return result
    key = (chunk, context)
    result = _MEMO_CONTEXT[which].get(key)
    if result is None:
        if len(_MEMO_CONTEXT[0]) > _MEMO_LIMIT:
            clear_cache()
        both = _tokenize_chunk(chunk, context)
        _MEMO_CONTEXT[0][key], _MEMO_CONTEXT[1][key] = both
        result = both[which]
    return result


def _following(lines: list[str], i: int) -> str:
    """The text after line ``i`` as far as the lexer's lookahead reaches ("\\n" + a prefix)."""
    text = "\n"
    for nxt in lines[i + 1 : i + 4]:
        text += nxt
        if not _BLANK.fullmatch(nxt):
            break
        text += "\n"
    m = _NEXT_PREFIX.match(text, 1)
    return "\n" + (text[1 : m.end()] if m else "")


def _line_tokens(lines: list[str], i: int, which: int) -> list[str]:
    """Tokens of line ``i`` (which=0: lowercased PTB tokens, 1: without PUNCTUATIONS)."""
    line = lines[i]
    if line.isascii() and "\t" not in line and "  " not in line:
        if not _CROSS_CHUNK_ASCII.search(line):
            # Fast path: ASCII with single spaces.
            chunks = line.split()
            memo = _MEMO[which]
            dot = line.find(".")
            if dot < 0:
                return [t for c in chunks for t in (memo.get(c) or _chunk(c, which))]
            last = len(chunks) - 1
            if dot >= len(line) - len(chunks[-1]) - 1 and chunks[-1][-1] == ".":
                # The usual caption: the only periods are in the last word, which ends with one.
                out = [t for c in chunks[:-1] for t in (memo.get(c) or _chunk(c, which))]
                final = _plain_dotted(chunks[-1], which)
                if final is None:
                    context = (" " if line[-1] == " " else "") + _following(lines, i)
                    final = _chunk_in_context(chunks[-1], context, which)
                out += final
                return out
            out = []
            for j, chunk in enumerate(chunks):
                if chunk[-1] != ".":
                    out += memo.get(chunk) or _chunk(chunk, which)
                    continue
                if j < last:
                    # Abbreviation rules look at the next word and the character after it.
                    after = " " if j + 1 < last or line[-1] == " " else "\n"
                    context = " " + chunks[j + 1] + after
                else:
                    context = (" " if line[-1] == " " else "") + _following(lines, i)
                out += _chunk_in_context(chunk, context, which)
            return out
    elif _CROSS_CHUNK.search(line) is None:
        parts = _SPLIT.split(line)  # chunk, separator, chunk, ..., chunk
        chunks, seps = parts[0::2], [*parts[1::2], ""]
        out = []
        for j, chunk in enumerate(chunks):
            if not chunk:
                continue
            sep = seps[j]
            nxt = chunks[j + 1] if j + 1 < len(chunks) else ""
            if chunk[-1] != "." and (not nxt or sep[0] in " \t"):
                out += _chunk(chunk, which)
            elif not nxt:
                out += _chunk_in_context(chunk, sep + _following(lines, i), which)
            elif chunk[-1] == ".":
                # The spacing, the next word and one character more.
                if j + 2 < len(chunks) and chunks[j + 2]:
                    after = seps[j + 1][:1]
                else:
                    after = seps[j + 1] + _following(lines, i)[:1]
                out += _chunk_in_context(chunk, sep + nxt + after, which)
            else:
                out += _scan_in_context(chunk, sep[:1] + nxt[:1], which)
        return out
    # Whole-line scan for the rare lines where a token may contain a space.
    raw = _scan(line + _following(lines, i), len(line))
    low = [t.replace(_UNTOKENIZABLE, "").lower() for t in raw if t != _UNTOKENIZABLE]
    return low if which == 0 else [t for t in low if t not in PUNCTUATIONS]


def _scan_in_context(chunk: str, context: str, which: int) -> tuple[str, ...]:
    """Tokens of a chunk followed by an unusual space character (not memoised)."""
    return _tokenize_chunk(chunk, context)[which]


def _tokenize_lines(captions: Sequence[str], remove_punctuation: bool) -> list[list[str]]:
    """Tokens of captions tokenized as one file, one caption per line (as pycocoevalcap)."""
    lines = []
    for c in captions:
        if not c.isascii():
            c = _NON_BMP.sub(_UNTOKENIZABLE, c.translate(_NEWLINE_LIKE))
        elif _ASCII_LINE_BREAK.search(c):
            c = c.translate(_NEWLINE_LIKE)
        lines.append(c)
    which = 1 if remove_punctuation else 0
    return [_line_tokens(lines, i, which) for i in range(len(lines))]


def ptb_tokens(caption: str, remove_punctuation: bool = True) -> list[str]:
    """Tokens of one caption as pycocoevalcap's PTBTokenizer produces them.

    The caption is tokenized as the last (or only) line of the tokenizer's input.

    Args:
        caption: the raw caption.
        remove_punctuation: drop pycocoevalcap's ``PUNCTUATIONS`` (as it does); False gives the
            lowercased PTB tokens themselves.

    Returns:
        The lowercased tokens.
    """
    return _tokenize_lines([caption], remove_punctuation)[0]


def ptb_tokens_batch(captions: Sequence[str], remove_punctuation: bool = True) -> list[list[str]]:
    """Tokens of many captions, tokenized as pycocoevalcap does: as one file, one per line.

    A caption's last token can depend on the start of the next caption (see the module
    docstring), so passing the captions in pycocoevalcap's order (image by image, references in
    order) reproduces it exactly.

    Args:
        captions: the raw captions.
        remove_punctuation: drop pycocoevalcap's ``PUNCTUATIONS``.

    Returns:
        One token list per caption.
    """
    return _tokenize_lines(captions, remove_punctuation)


@overload
def ptb_tokenize(captions: str) -> str: ...
@overload
def ptb_tokenize(captions: Iterable[str]) -> list[str]: ...


def ptb_tokenize(captions: str | Iterable[str]) -> str | list[str]:
    """PTB-tokenize caption(s) like pycocoevalcap: lowercased, punctuation removed, space-joined.

    Args:
        captions: one caption, or an iterable of captions (tokenized together, one per line,
            as pycocoevalcap does).

    Returns:
        The tokenized caption (a string), or a list of them.
    """
    if isinstance(captions, str):
        return " ".join(ptb_tokens(captions))
    return [" ".join(t) for t in ptb_tokens_batch(list(captions))]
