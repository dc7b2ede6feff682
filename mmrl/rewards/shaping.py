"""Format and shaping rewards: `format_template`, `overlong`, `cosine_length`, `repetition`.

Same contract as the other built-ins: pure, total on any completion text, input capped, one value per
completion, `None` = not applicable (e.g. no `completion_ids` column for a length reward). Option errors (an
unknown template, a negative buffer) are configuration bugs and raise `ValueError` naming the valid values.
All but `cosine_length` (which calls a correctness reward over the whole batch) score one completion each
(`per_sample`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from mmrl.rewards.per_sample import column, per_sample
from mmrl.rewards.registry import get as get_reward
from mmrl.rewards.registry import register
from mmrl.rewards.text_parsing import MAX_CHARS

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX = rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]"
_BOXES_RE = re.compile(rf"\s*(?:\[\s*)?{_BOX}(?:\s*,\s*{_BOX})*(?:\s*\])?\s*")
_TAGS = "think|answer|caption|bbox"
_BODY = rf"((?:(?!</?(?:{_TAGS})>).)*)"  # tempered: a block never contains another template tag
_TEMPLATES = {
    "think_answer": re.compile(rf"\s*<think>{_BODY}</think>\s*<answer>{_BODY}</answer>\s*", re.DOTALL),
    "answer": re.compile(rf"\s*<answer>{_BODY}</answer>\s*", re.DOTALL),
    "caption_bbox_answer": re.compile(
        rf"\s*<caption>{_BODY}</caption>\s*<bbox>{_BODY}</bbox>\s*<answer>{_BODY}</answer>\s*", re.DOTALL
    ),
}
TEMPLATES = ("answer", "boxed", "caption_bbox_answer", "think_answer")


def boxed_contents(text: str) -> list[str]:
    """The contents of every `\\boxed{…}` whose braces balance, in order (a linear scan, no regex recursion).

    >>> boxed_contents(r"so \\boxed{\\frac{1}{2}} and \\boxed{x")
    ['\\\\frac{1}{2}']
    """
    out, start = [], 0
    while len(out) < 100:
        i = text.find("\\boxed{", start)
        if i < 0:
            break
        depth, j = 1, i + len("\\boxed{")
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            break  # unbalanced to the end of the text
        out.append(text[i + len("\\boxed{") : j - 1])
        start = j
    return out


def _fits(text: str, template: str) -> bool:
    if template == "boxed":
        return any(b.strip() for b in boxed_contents(text))
    m = _TEMPLATES[template].fullmatch(text)
    if not m or any(not g.strip() for g in m.groups()[-1:]):  # the answer block must not be empty
        return False
    if template == "caption_bbox_answer":
        return bool(m.group(1).strip()) and bool(_BOXES_RE.fullmatch(m.group(2)))
    return True


def _known_template(*, template: str, **_: Any) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"format_template: unknown template {template!r} (valid: {', '.join(TEMPLATES)})")


@register("format_template")
@per_sample(check=_known_template)
def format_template(text: Any, *, template: str = "think_answer") -> float:
    """1.0 when a completion has the layout of `template`, else 0.0. Range {0, 1}.

    Templates (whitespace between blocks allowed; a block never contains another template tag; the answer
    block must be non-empty):
    - `think_answer`: `<think>T</think> <answer>A</answer>` (R1 / CLS-RL / SSL4RL; empty T allowed, as TON's
      empty thoughts are);
    - `answer`: `<answer>A</answer>` only (no-thinking mode);
    - `boxed`: a `\\boxed{…}` with balanced braces and non-empty content anywhere (PAPO-style);
    - `caption_bbox_answer`: `<caption>C</caption> <bbox>[[x1,y1,x2,y2], …]</bbox> <answer>A</answer>`, C
      non-empty and the bbox block a list of 4-number boxes (SATORI-R1, arXiv:2505.19094).
    Text beyond `MAX_CHARS` fails the template. DeepSeek-R1's format reward (arXiv:2501.12948).

    >>> format_template(["<think>x</think><answer>4</answer>", "<answer>4</answer>"])
    [1.0, 0.0]
    >>> format_template([r"\\boxed{\\frac{1}{2}}", r"\\boxed{}"], template="boxed")
    [1.0, 0.0]
    """
    return 1.0 if isinstance(text, str) and len(text) <= MAX_CHARS and _fits(text, template) else 0.0


def _length(ids: Any) -> int | None:
    if ids is None:
        return None
    try:
        return len(ids)
    except TypeError:
        return None


def _overlong_lengths(*, max_len: int, buffer: int, **_: Any) -> None:
    if not (isinstance(max_len, int) and max_len > 0 and isinstance(buffer, int) and 0 <= buffer <= max_len):
        raise ValueError(f"overlong: need 0 <= buffer <= max_len and max_len > 0, got {max_len=}, {buffer=}")


@register("overlong", range=(-1.0, 0.0))
@per_sample(check=_overlong_lengths)
def overlong(text: Any, completion_ids: Any, *, max_len: int = 20480, buffer: int = 4096) -> float | None:
    """DAPO soft overlong penalty on the completion's token count. Range [−1, 0]; None = no `completion_ids`.

    r = 0 if L ≤ max_len − buffer; ((max_len − buffer) − L) / buffer if max_len − buffer < L ≤ max_len;
    −1 if L > max_len, with L = len(completion_ids) (unpadded). `buffer=0` is a hard step. Defaults are DAPO's
    L_max = 20480, L_cache = 4096; set `max_len` to the rollout's max new tokens. DAPO: "DAPO: An Open-Source
    LLM Reinforcement Learning System at Scale" (arXiv:2503.14476).

    >>> overlong(["a", "b", "c"], completion_ids=[[0] * 6, [0] * 9, [0] * 11], max_len=10, buffer=4)
    [0.0, -0.75, -1.0]
    """
    n = _length(completion_ids)
    if n is None:
        return None
    if n <= max_len - buffer:
        return 0.0
    if n <= max_len:
        return max(-1.0, ((max_len - buffer) - n) / buffer)
    return -1.0


def cosine_interp(length: float, max_len: float, r_start: float, r_end: float) -> float:
    """r_end + ½(r_start − r_end)(1 + cos(π·L/L_max)): r_start at L = 0, r_end at L = L_max."""
    return r_end + 0.5 * (r_start - r_end) * (1.0 + math.cos(math.pi * min(length, max_len) / max_len))


def _cosine_range(correct_start: float = 2.0, correct_end: float = 1.0, wrong_start: float = -10.0,
                  wrong_end: float = 0.0, exceed: float = -10.0, **_: Any) -> tuple[float, float]:
    values = (correct_start, correct_end, wrong_start, wrong_end, exceed)
    return float(min(values)), float(max(values))


@register("cosine_length", range=_cosine_range)
def cosine_length(
    completions: list[str],
    *,
    answer: Sequence[Any] | None = None,
    completion_ids: Sequence[Any] | None = None,
    max_len: int = 4096,
    correctness: str = "answer_match",
    correct_start: float = 2.0,
    correct_end: float = 1.0,
    wrong_start: float = -10.0,
    wrong_end: float = 0.0,
    exceed: float = -10.0,
    **kwargs: Any,
) -> list[float | None]:
    """Cosine length shaping: short correct and long wrong answers pay more. Range [min, max] of the five
    values (default [−10, 2]); None = no `completion_ids` or the correctness reward does not apply.

    r = r_end + ½(r_start − r_end)(1 + cos(π·L/max_len)) for L ≤ max_len, with (r_start, r_end) =
    (correct_start, correct_end) = (+2, +1) when correct and (wrong_start, wrong_end) = (−10, 0) when wrong;
    r = exceed (−10) when L > max_len. L = len(completion_ids); "correct" = the registered reward named by
    `correctness` (given the same columns) returns ≥ 1. "Demystifying Long Chain-of-Thought Reasoning in LLMs"
    (arXiv:2502.03373); the default values are those of the authors' cosine-reward run script
    (eddycmu/demystify-long-cot, section 4.2).

    >>> cosine_length(["<answer>4</answer>", "<answer>5</answer>", "<answer>4</answer>"], answer=["4"] * 3,
    ...               completion_ids=[[0] * 0, [0] * 10, [0] * 11], max_len=10)
    [2.0, 0.0, -10.0]
    """
    if not (isinstance(max_len, int) and max_len > 0):
        raise ValueError(f"cosine_length: max_len must be a positive int, got {max_len!r}")
    judge = get_reward(correctness)
    n = len(completions)
    ids = column(completion_ids, "completion_ids", n)
    if completion_ids is None:
        return [None] * n
    acc = judge(completions, answer=answer, completion_ids=completion_ids, **kwargs)
    out: list[float | None] = []
    for a, i in zip(acc, ids):
        length = _length(i)
        if length is None or a is None or not isinstance(a, (int, float)) or not math.isfinite(a):
            out.append(None)
        elif length > max_len:
            out.append(float(exceed))
        elif a >= 1.0:
            out.append(cosine_interp(length, max_len, correct_start, correct_end))
        else:
            out.append(cosine_interp(length, max_len, wrong_start, wrong_end))
    return out


def _positive_n(*, n: int, **_: Any) -> None:
    if not (isinstance(n, int) and n > 0):
        raise ValueError(f"repetition: n must be a positive int, got {n!r}")


@register("repetition", range=(-1.0, 0.0))
@per_sample(check=_positive_n)
def repetition(text: Any, *, n: int = 3) -> float:
    """N-gram repetition penalty: minus the fraction of repeated word n-grams. Range [−1, 0].

    r = −(1 − |unique n-grams| / |n-grams|) over whitespace words of the (capped) completion; 0 when it has
    fewer than n words. Perception-R1 (Xiao et al., arXiv:2506.07218) uses 2·this with n = 20 (weight the term
    by 2 and set `n=20` to match).

    >>> repetition(["a b c a b c", "one two three", "x"], n=3)
    [-0.25, 0.0, 0.0]
    """
    words = text[:MAX_CHARS].split() if isinstance(text, str) else []
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) - 1.0
