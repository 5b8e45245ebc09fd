"""CLIP's caption cleaning (open_clip/tokenizer.py: basic_clean + whitespace_clean + lower)."""

from __future__ import annotations

import html
import re

import ftfy

__all__ = ["clean_text"]

# ASCII characters that ftfy.fix_text (ftfy 6.x, default config) provably leaves alone:
# printable ASCII plus tab and newline, without "&". Every ftfy fixer either only touches
# non-ASCII characters (mojibake detection returns early on ASCII, c1 controls, ligatures,
# widths, curly quotes, surrogates, NFC), or needs a character excluded here: "&" (HTML
# unescaping), "\r" (fix_line_breaks), "\x1b" (remove_terminal_escapes) and the other C0
# controls / DEL (remove_control_chars). tests/test_tokenizer.py re-checks this claim against
# the installed ftfy. Skipping ftfy is what makes ASCII captions fast: it is ~20 us per text.
_FTFY_UNSAFE_ASCII = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


def _ftfy_is_identity(text: str) -> bool:
    """True when `ftfy.fix_text(text) == text` is guaranteed (see `_FTFY_UNSAFE_ASCII`)."""
    if not text.isascii():
        return False
    if text.isprintable():  # the common case: one C-level scan, then the "&" check
        return "&" not in text
    return _FTFY_UNSAFE_ASCII.search(text) is None


def clean_text(text: str) -> str:
    """Clean a caption exactly as open_clip's default CLIP tokenizer does.

    open_clip/tokenizer.py `_clean_lower`: `ftfy.fix_text`, `html.unescape` twice, strip,
    collapse whitespace runs (`str.split`) to single spaces, lower-case. ftfy is skipped for
    pure-ASCII text on which it cannot change anything (see `_FTFY_UNSAFE_ASCII`).

    Args:
        text: Raw caption.

    Returns:
        The cleaned, lower-cased caption.
    """
    if not _ftfy_is_identity(text):
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()
