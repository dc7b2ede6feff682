"""Small, total parsers of short text answers, shared by the text, puzzle and consistency rewards.

`answer_text` (the last `<answer>` block, else the whole completion), `normalize_text` (SQuAD-style),
`parse_letter` (an option letter), `parse_numbers` / `parse_number` (hand parsers: no eval), `numbers_close`, and
`truth_field` (a field of a dict ground truth, or the bare ground truth). None of them raises on any input.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from mmrl.rewards.parsing import extract_answer

MAX_CHARS = 64 * 1024  # completion text beyond this is ignored


def answer_text(text: Any) -> str:
    """The last `<answer>` block, else the whole completion, capped at `MAX_CHARS` and stripped; "" for non-str.

    The block is found in the whole completion (`rfind`, linear), so a long reasoning does not hide the answer.
    """
    if not isinstance(text, str):
        return ""
    block = extract_answer(text)
    return (text if block is None else block)[:MAX_CHARS].strip()


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_text(s: Any) -> str:
    """SQuAD-style normalisation: casefold, `_`/`-` → space, drop punctuation and articles, collapse whitespace.

    >>> normalize_text("  The Golden_Retriever!! ")
    'golden retriever'
    """
    if not isinstance(s, str):
        s = "" if s is None else str(s)
    s = unicodedata.normalize("NFKC", s[:MAX_CHARS]).casefold().replace("_", " ").replace("-", " ")
    s = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in s)
    return " ".join(_ARTICLES.sub(" ", s).split())


_LETTER_RE = re.compile(  # no two adjacent unbounded quantifiers over the same characters (no backtracking blow-up)
    r"[\s*$]*(?:\\boxed\{[\s*]*)?(?:(?:the\s+)?(?:final\s+)?(?:correct\s+)?answer\b(?:\s*is\b)?[\s:：*]*)?"
    r"(?:(?:option|choice)\b\s*)?(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])(?=\s{0,8}(?:[.):：,}*$]|$)))",
    re.IGNORECASE,
)


def parse_letter(pred: str) -> str | None:
    """The option letter a short answer starts with ("B", "(B)", "B.", "B) cat", "Answer: B", "\\boxed{B}").

    A bare letter must be followed by punctuation or the end ("a cat" and "I think B" are not options).

    >>> [parse_letter(s) for s in ["B", "(c)", "D. a dog", "Answer: A", "because", "a cat"]]
    ['B', 'C', 'D', 'A', None, None]
    """
    if not isinstance(pred, str):
        return None
    m = _LETTER_RE.match(pred[:1024])
    if not m:
        return None
    return next(g for g in m.groups() if g).upper()


_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+"
_NUMBER_RE = re.compile(
    rf"([-−]?)\s{{0,3}}\\d?frac\{{\s*(-?)\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}"  # \frac{3}{4}, -\frac{3}{4}
    rf"|([-+−]?)\s{{0,3}}({_NUM})(?:\s{{0,3}}[eE]\s{{0,3}}([-+]?\d{{1,4}})"
    rf"|\s{{0,3}}[×x*]\s{{0,3}}10\s{{0,3}}\^\s{{0,3}}\{{?\s{{0,3}}([-+]?\d{{1,4}})\s{{0,3}}\}}?)?"
    rf"(?:\s{{0,3}}/\s{{0,3}}({_NUM}))?(\s{{0,3}}%)?"
)


def parse_numbers(pred: str, limit: int = 64) -> list[tuple[float, bool]]:
    """Every number in `pred` as `(value, is_percent)`, in order, at most `limit`; no eval, non-finite dropped.

    Handles "1,234.5", "-3/4", "\\frac{3}{4}", "-\\frac{3}{4}", "45%", "1.5e-3", "2 × 10^3".

    >>> parse_numbers("x = 1,234.5 or 3/4 or 45% or 2e3")
    [(1234.5, False), (0.75, False), (45.0, True), (2000.0, False)]
    """
    out: list[tuple[float, bool]] = []
    if not isinstance(pred, str):
        return out
    for m in _NUMBER_RE.finditer(pred[:MAX_CHARS]):
        try:
            if m.group(3) is not None:  # \frac, signed before or inside its numerator
                num, den = float(m.group(3).replace(",", "")), float(m.group(4).replace(",", ""))
                value = (-1 if bool(m.group(1)) != bool(m.group(2)) else 1) * num / den
                pct = False
            else:
                value = float(m.group(6).replace(",", ""))
                exp = m.group(7) or m.group(8)
                if exp is not None:
                    value *= 10.0 ** int(exp)
                if m.group(9) is not None:
                    value /= float(m.group(9).replace(",", ""))
                if m.group(5) in ("-", "−"):
                    value = -value
                pct = m.group(10) is not None
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
        if math.isfinite(value):
            out.append((value, pct))
            if len(out) >= limit:
                break
    return out


def parse_number(pred: Any) -> tuple[float, bool] | None:
    """The last number in `pred` (see `parse_numbers`), or None."""
    found = parse_numbers(pred, limit=MAX_CHARS) if isinstance(pred, str) else []
    return found[-1] if found else None


def truth_field(gt: Any, *keys: str) -> Any:
    """The first of `keys` in a dict ground truth (None when it has none of them), else the ground truth itself.

    >>> truth_field({"choice": "B"}, "choice"), truth_field("B", "choice"), truth_field({"x": 1}, "choice")
    ('B', 'B', None)
    """
    if isinstance(gt, dict):
        for k in keys:
            if k in gt:
                return gt[k]
        return None
    return gt


def numbers_close(a: float, b: float, rel_tol: float, abs_tol: float) -> bool:
    """|a − b| ≤ max(abs_tol, rel_tol·|b|) (b is the reference)."""
    return abs(a - b) <= max(abs_tol, rel_tol * abs(b))
