"""Query cleaning: strip what a model cannot use (URLs, images, control characters), keep the
question, and drop queries that are empty, too short or too long in tokens.

Newlines and indentation are kept (code and lists need them); runs of spaces inside a line
collapse, trailing spaces go, and blank-line runs shrink to one blank line.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from ptr_ray.errors import PtrRayValueError

_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")
_HTML_IMAGE = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"')\]]+", re.IGNORECASE)
_MD_LINK = re.compile(r"\[([^\]]+)\]\(\s*\)")  # a link whose URL was stripped -> its text
_HSPACE = re.compile(r"[ \t\f\v\u00a0\u2000-\u200b\u3000]+")
_BLANKS = re.compile(r"\n\s*\n(\s*\n)+")


def strip_control(text: str) -> str:
    """Drop control/format characters except newline and tab (zero-width, BOM, NUL, ESC...)."""
    return "".join(
        ch
        for ch in text
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")
    )


def clean_text(text: str, strip_urls: bool = True, strip_images: bool = True) -> str:
    """The cleaned query text (may be empty: the caller decides what that means)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    if strip_images:
        text = _MD_IMAGE.sub(" ", text)
        text = _HTML_IMAGE.sub(" ", text)
    if strip_urls:
        text = _URL.sub(" ", text)
        text = _MD_LINK.sub(r"\1", text)
    text = strip_control(text)
    text = "\n".join(_clean_line(line) for line in text.split("\n"))
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


def _clean_line(line: str) -> str:
    """Collapse space runs inside a line; keep its indentation (code needs it)."""
    body = line.lstrip(" \t")
    indent = line[: len(line) - len(body)]
    body = _HSPACE.sub(" ", body).rstrip()
    return indent + body if body else ""


@dataclass
class CleanResult:
    text: str
    reason: str | None  # None = keep; else "empty_after_clean" | "too_short" | "too_long"
    tokens: int


class Cleaner:
    """Clean one query and check its token length with the weak model's tokenizer."""

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        min_tokens: int = 4,
        max_tokens: int = 512,
        strip_urls: bool = True,
        strip_images: bool = True,
    ) -> None:
        if min_tokens > max_tokens:
            raise PtrRayValueError(
                f"clean.min_tokens ({min_tokens}) > clean.max_tokens ({max_tokens})"
            )
        self.count_tokens = count_tokens
        self.min_tokens, self.max_tokens = min_tokens, max_tokens
        self.strip_urls, self.strip_images = strip_urls, strip_images

    def __call__(self, text: str) -> CleanResult:
        cleaned = clean_text(text, self.strip_urls, self.strip_images)
        if not cleaned:
            return CleanResult(cleaned, "empty_after_clean", 0)
        n = self.count_tokens(cleaned)
        if n < self.min_tokens:
            return CleanResult(cleaned, "too_short", n)
        if n > self.max_tokens:
            return CleanResult(cleaned, "too_long", n)
        return CleanResult(cleaned, None, n)


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """Token count without special tokens (the query's own length)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
