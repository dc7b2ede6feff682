"""Accuracy rewards on short text answers: `mc`, `multi_select`, `numeric`, `exact`, `cls_label`, `ocr`, `token_f1`.

Each reward reads the last `<answer>…</answer>` block (the whole completion when there is none), is pure, never
raises on any completion text, caps its input at `MAX_CHARS`, and returns one value per completion (`None` = the
ground truth does not fit this reward). Each is written as the score of one completion and made a reward by
`per_sample` (options keyword-only with defaults; `**kwargs` takes unused columns). The small parsers they share
with `puzzles.py` and `consistency.py` live in `text_parsing.py`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mmrl.rewards.per_sample import per_sample
from mmrl.rewards.registry import register
from mmrl.rewards.text_parsing import (
    MAX_CHARS,
    answer_text,
    normalize_text,
    numbers_close,
    parse_letter,
    parse_number,
    truth_field,
)

MAX_EDIT_UNITS = 2048  # Levenshtein inputs are truncated to this many chars/words (after prefix/suffix trimming)


# ---- multiple choice --------------------------------------------------------------------------------------------
def _letters(n: int) -> str:
    return string.ascii_uppercase[: max(0, min(n, 26))]


def mc_letter(pred: str, options: Any, permutation: Any) -> str | None:
    """The original-order letter a prediction names (through the shown-order permutation), or None."""
    n_opt = len(options) if isinstance(options, (list, tuple, dict)) else 26
    letter = parse_letter(pred)
    if letter is not None:
        idx = ord(letter) - ord("A")
        if idx >= n_opt:
            return None
        if isinstance(permutation, (list, tuple)) and permutation:
            if idx >= len(permutation) or not isinstance(permutation[idx], int) or isinstance(permutation[idx], bool):
                return None
            idx = permutation[idx]
            if not 0 <= idx < 26:
                return None
        return chr(ord("A") + idx)
    if isinstance(options, dict):
        options = [options.get(k) for k in _letters(len(options))]
    if isinstance(options, (list, tuple)):  # option text is invariant to shuffling: match the original order
        p = normalize_text(pred)
        hits = [i for i, o in enumerate(options[:26]) if p and normalize_text(o) == p]
        if len(hits) == 1:
            return chr(ord("A") + hits[0])
    return None


@register("mc")
@per_sample
def mc(text: Any, answer: Any) -> float | None:
    """Multiple-choice letter accuracy, with option-shuffle mapping. Range {0, 1}; None = not applicable.

    r = 1[π(ℓ̂) = ℓ], ℓ̂ the letter parsed from the answer ("B", "(B)", "B.", "B) text", "Answer: B",
    `\\boxed{B}`, or the text of exactly one option when `answer["options"]` is given), ℓ = `answer["choice"]`
    (or a bare letter string). `answer["permutation"]`, when present, maps shown positions to original ones:
    the option shown as letter i is original option `permutation[i]` (ACRE's shuffled second pass). Letters
    beyond the number of options score 0. Compares whole letters, not first characters (SEED-Bench-R1's bug).
    Papers: ACRE "Answer-Consistent Chain-of-thought Reinforcement Learning for Multi-modal Large Language Models"
    (arXiv:2510.10104); SEED-Bench-R1 letter matching ("Exploring the Effect of Reinforcement Learning on Video
    Understanding: Insights from SEED-Bench-R1" (arXiv:2503.24376)).

    >>> mc(["<answer>(B)</answer>", "<answer>A</answer>", "<answer>a dog</answer>"],
    ...    answer=[{"choice": "B"}, {"choice": "B", "permutation": [1, 0]}, {"choice": "C", "options": ["x", "y", "A dog"]}])
    [1.0, 1.0, 1.0]
    """
    choice = truth_field(answer, "choice")
    choice = parse_letter(choice) if isinstance(choice, str) else None
    if choice is None:
        return None
    opts = answer.get("options") if isinstance(answer, dict) else None
    perm = answer.get("permutation") if isinstance(answer, dict) else None
    return 1.0 if mc_letter(answer_text(text), opts, perm) == choice else 0.0


_SPLIT_RE = re.compile(r"\s*(?:,|;|/|&|\band\b|\s)\s*", re.IGNORECASE)


def _letter_set(s: Any) -> frozenset[str] | None:
    """{"A", "C"} from "A, C", "(A) and (C)", "AC", ["A", "C"]; None when any part is not a letter."""
    if isinstance(s, (list, tuple, set, frozenset)):
        parts = [p for p in s if isinstance(p, str)]
        if len(parts) != len(s):
            return None
    elif isinstance(s, str):
        s = s.strip()[:4096]
        if re.fullmatch(r"[A-Z]{2,26}", s):  # "ACD": strictly ascending letters only ("CAT" is a word)
            return frozenset(s) if list(s) == sorted(set(s)) else None
        parts = [p for p in _SPLIT_RE.split(s) if p]
    else:
        return None
    letters = [parse_letter(p) if len(p.strip()) <= 4 else None for p in parts]
    if not letters or any(x is None for x in letters):
        return None
    return frozenset(letters)  # type: ignore[arg-type]


@register("multi_select")
@per_sample
def multi_select(text: Any, answer: Any, *, partial: bool = False) -> float | None:
    """Multi-select accuracy over a set of option letters. Range [0, 1]; None = not applicable.

    r = 1[Ŝ = S] (default), or Jaccard |Ŝ ∩ S| / |Ŝ ∪ S| with `partial=True`; S = `answer["choices"]` (a list
    or "A, C") or a bare string answer; Ŝ parsed from "A, C", "(A) and (C)", "A C", "AC"; any non-letter part
    makes the answer unparsable → 0. SophiaVL-R1's set-equality multi-choice score (arXiv:2505.17018).

    >>> multi_select(["<answer>A, C</answer>", "<answer>A</answer>"], answer=[{"choices": ["A", "C"]}] * 2)
    [1.0, 0.0]
    >>> multi_select(["<answer>A, B</answer>"], answer=["A, C"], partial=True)
    [0.3333333333333333]
    """
    gold = _letter_set(truth_field(answer, "choices"))
    if not gold:
        return None
    pred = _letter_set(answer_text(text))
    if not pred:
        return 0.0
    if partial:
        return len(pred & gold) / len(pred | gold)
    return 1.0 if pred == gold else 0.0


# ---- numbers and strings ----------------------------------------------------------------------------------------
def _gt_number(gt: Any) -> tuple[float, bool] | None:
    gt = truth_field(gt, "value", "number")
    if isinstance(gt, bool):
        return None
    if isinstance(gt, (int, float)):
        try:
            v = float(gt)
        except OverflowError:
            return None
        return (v, False) if math.isfinite(v) else None
    return parse_number(gt) if isinstance(gt, str) else None


@register("numeric")
@per_sample
def numeric(text: Any, answer: Any, *, rel_tol: float = 1e-4, abs_tol: float = 1e-9) -> float | None:
    """Numeric answer within a tolerance. Range {0, 1}; None = not applicable.

    r = 1[|ŷ − y| ≤ max(abs_tol, rel_tol·|y|)], ŷ the last number in the answer (hand parser: "1,234.5", "3/4",
    "\\frac{3}{4}", "45%", "1.5e-3", "2 × 10^3"; no eval), y = the answer (number, numeric string, or
    `{"value": y}`). A percentage matches either its value or its value / 100 ("45%" ≍ 45 and 0.45).
    Video-R1's numeric reward (arXiv:2503.21776) uses a fixed 2-decimal rounding instead.

    >>> numeric(["<answer>1,234.5</answer>", "<answer>45%</answer>", "<answer>3/4</answer>", "<answer>x</answer>"],
    ...         answer=[1234.5, 0.45, "0.75", 1])
    [1.0, 1.0, 1.0, 0.0]
    """
    y = _gt_number(answer)
    if y is None:
        return None
    got = parse_number(answer_text(text))
    if got is None:
        return 0.0
    cands = [got[0], got[0] / 100] if got[1] else [got[0]]
    targets = [y[0], y[0] / 100] if y[1] else [y[0]]
    return 1.0 if any(numbers_close(c, t, rel_tol, abs_tol) for c in cands for t in targets) else 0.0


def _gt_strings(gt: Any, *keys: str) -> list[str] | None:
    gt = truth_field(gt, *keys)
    if isinstance(gt, bool) or gt is None:
        return None
    if isinstance(gt, (int, float, str)):
        gt = [gt]
    if not isinstance(gt, (list, tuple)):
        return None
    refs = [str(g) for g in gt if isinstance(g, (str, int, float)) and not isinstance(g, bool)]
    refs = [r for r in refs if normalize_text(r)]
    return refs or None


@register("exact")
@per_sample
def exact(text: Any, answer: Any) -> float | None:
    """Normalised exact match against one or several references. Range {0, 1}; None = not applicable.

    r = max_j 1[norm(â) = norm(y_j)], norm = casefold, drop punctuation/symbols and articles, collapse
    whitespace (SQuAD, arXiv:1606.05250); y = the answer string/number, a list of acceptable strings, or
    `{"text": …}`. An empty answer scores 0.

    >>> exact(["<answer>The Eiffel-Tower.</answer>", "<answer>tower</answer>"], answer=["eiffel tower", ["Eiffel Tower"]])
    [1.0, 0.0]
    """
    refs = _gt_strings(answer, "text")
    if refs is None:
        return None
    p = normalize_text(answer_text(text))
    return 1.0 if p and any(p == normalize_text(r) for r in refs) else 0.0


@register("cls_label")
@per_sample
def cls_label(text: Any, answer: Any) -> float | None:
    """Classification label match with synonyms (CLS-RL). Range {0, 1}; None = not applicable.

    r = 1[norm(â) ∈ {norm(label)} ∪ {norm(s) : s ∈ synonyms}], answer = a label string or
    `{"label": …, "synonyms": […]}`; norm as in `exact` ("Golden_Retriever." ≍ "golden retriever").
    CLS-RL: "Image Classification with Rule-Based Reinforcement Learning" (arXiv:2503.16188); its
    code compares the lower-cased `<answer>` with the class name; No-Thinking-CLS-RL the whole completion
    (here: the whole completion when there is no `<answer>` block).

    >>> cls_label(["<answer>Kitty</answer>", "dog"], answer=[{"label": "cat", "synonyms": ["kitty"]}, "Dog"])
    [1.0, 1.0]
    """
    label = truth_field(answer, "label")
    syn = answer.get("synonyms") if isinstance(answer, dict) else None
    names = [label] + (list(syn) if isinstance(syn, (list, tuple)) else [])
    names = {normalize_text(s) for s in names if isinstance(s, str)} - {""}
    if not isinstance(label, str) or not names:
        return None
    return 1.0 if normalize_text(answer_text(text)) in names else 0.0


# ---- OCR and token overlap --------------------------------------------------------------------------------------
def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insert/delete/substitute, cost 1), iterative two-row DP after trimming common ends.

    >>> levenshtein("kitten", "sitting")
    3
    """
    lo = 0
    while lo < len(a) and lo < len(b) and a[lo] == b[lo]:
        lo += 1
    a, b = a[lo:], b[lo:]
    hi = 0
    while hi < len(a) and hi < len(b) and a[len(a) - 1 - hi] == b[len(b) - 1 - hi]:
        hi += 1
    a, b = a[: len(a) - hi], b[: len(b) - hi]
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


def _ocr_unit(*, unit: str, **_: Any) -> None:
    if unit not in ("char", "word"):
        raise ValueError(f"ocr: unit must be 'char' or 'word', got {unit!r}")


@register("ocr")
@per_sample(check=_ocr_unit)
def ocr(
    text: Any, answer: Any, *, unit: str = "char", casefold: bool = False, max_units: int = MAX_EDIT_UNITS
) -> float | None:
    """OCR accuracy 1 − CER (`unit="char"`) or 1 − WER (`unit="word"`), clipped. Range [0, 1]; None = n/a.

    r = clip(1 − lev(ŷ, y) / |y|, 0, 1) over characters or whitespace words, after collapsing whitespace
    (and casefolding with `casefold=True`); y = the answer string or `{"text": …}`. Both sides are cut to
    `max_units` units; when |ŷ| ≥ 2|y| the distance is ≥ |y| and r = 0 without running the DP. Empty y:
    1 if ŷ is empty, else 0. Video-R1's OCR reward is 1 − WER clipped (arXiv:2503.21776).

    >>> ocr(["<answer>he1lo world</answer>", "<answer>hello</answer>"], answer=["hello world"] * 2)
    [0.9090909090909091, 0.4545454545454546]
    >>> ocr(["<answer>hello word</answer>"], answer=["hello world"], unit="word")
    [0.5]
    """
    ref = truth_field(answer, "text")
    if not isinstance(ref, str):
        return None
    hyp = answer_text(text)
    ref, hyp = " ".join(ref[:MAX_CHARS].split()), " ".join(hyp.split())
    if casefold:
        ref, hyp = ref.casefold(), hyp.casefold()
    r_units = ref.split() if unit == "word" else ref
    h_units = hyp.split() if unit == "word" else hyp
    if not r_units:
        return 1.0 if not h_units else 0.0
    if len(h_units) >= 2 * len(r_units):
        return 0.0
    r_units, h_units = r_units[:max_units], h_units[:max_units]
    err = levenshtein(h_units, r_units) / len(r_units)
    return min(1.0, max(0.0, 1.0 - err))


def token_f1_score(pred: str, ref: str) -> float:
    """SQuAD token F1 between two strings after `normalize_text`; 1 when both are empty."""
    p, r = normalize_text(pred).split(), normalize_text(ref).split()
    if not p or not r:
        return 1.0 if p == r else 0.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


@register("token_f1")
@per_sample
def token_f1(text: Any, answer: Any) -> float | None:
    """SQuAD-style token-overlap F1, max over references. Range [0, 1]; None = not applicable.

    r = max_j 2·P·R/(P + R), P = |T̂ ∩ T_j| / |T̂|, R = |T̂ ∩ T_j| / |T_j| (multiset intersection of
    `normalize_text` tokens); y = a string, list of strings or `{"text": …}`. SQuAD (arXiv:1606.05250).

    >>> token_f1(["<answer>the red car</answer>", "<answer>blue</answer>"], answer=["red sports car", "red car"])
    [0.8, 0.0]
    """
    refs = _gt_strings(answer, "text")
    if refs is None:
        return None
    pred = answer_text(text)
    return max(token_f1_score(pred, r) for r in refs)
