"""The `math` reward: symbolic answer checking with math-verify, in a worker process with a hard timeout.

math-verify parses LaTeX / plain expressions into SymPy and compares them (fractions, radicals, sets,
intervals, units …). SymPy can hang on adversarial input and math-verify's own timeouts use `signal.alarm`,
which only works on a process's main thread — not inside a trainer's threads. So every comparison runs on the
main thread of one persistent worker process (`IsolatedReward`), one completion per call: a comparison that
outlives `timeout_s` gets the worker killed, scores 0.0, is counted (`reward/math/timed_out`), and the next
comparison starts a fresh worker. Nothing here calls `eval`, `exec` or `sympify` on model text: parsing is
math-verify's LaTeX grammar only (its plain-expression mode, which uses SymPy's eval-based `parse_expr`, is
not enabled; plain answers are parsed as `$…$`-wrapped LaTeX).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from mmrl.rewards.compose import RewardError, RewardTimeout
from mmrl.rewards.parsed import note_parse, note_timeout
from mmrl.rewards.parsing import MAX_CHARS, extract_answer
from mmrl.rewards.per_sample import per_sample
from mmrl.rewards.process import IsolatedReward
from mmrl.rewards.registry import register

_WORKER = None
_WORKER_LOCK = threading.Lock()
_INNER_TIMEOUT_S = 3  # math-verify's own (signal-based) limits inside the worker; the hard limit is timeout_s


def _require_math_verify():
    try:
        import math_verify
    except ImportError as exc:  # pragma: no cover - math-verify is a core dependency
        raise ImportError(
            "the `math` reward needs math-verify: pip install 'math-verify>=0.7' (a core dependency of mmrl)"
        ) from exc
    return math_verify


def _candidates(text: str, latex_first: bool) -> list[str]:
    """What to parse: the text as is and, when it carries no LaTeX delimiters or `\\boxed`, `$…$`-wrapped —
    wrapped first for gold answers (LaTeX by convention) and for text with LaTeX syntax in it (`\\`, `{`, `^`)."""
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return [text]
    latex_first = latex_first or any(c in text for c in "\\{^")
    return [f"${text}$", text] if latex_first else [text, f"${text}$"]


def _parse(text: str, latex_first: bool = False) -> list:
    """LaTeX extraction only: math-verify's plain-expression mode runs SymPy's `parse_expr`, which evaluates
    Python; plain answers ("0.5", "1/2") are parsed through their `$…$`-wrapped LaTeX form instead."""
    mv = _require_math_verify()
    latex_only = [mv.LatexExtractionConfig()]
    for candidate in _candidates(text, latex_first):
        parsed = mv.parse(candidate, extraction_config=latex_only, parsing_timeout=_INNER_TIMEOUT_S)
        if parsed:
            return parsed
    return []


def check_pairs(completions: list[str], *, answer: Sequence[Any] | None = None, **_: Any) -> list[tuple]:
    """Runs in the worker: `(value, parsed)` per completion — value 1.0 when the prediction is equivalent to the
    gold answer, 0.0 otherwise, None when the gold does not parse; `parsed` whether the prediction parsed.
    `completions` are already reduced to the text to check (see `math_reward`)."""
    mv = _require_math_verify()
    out: list[tuple] = []
    for pred, gold in zip(completions, answer or [None] * len(completions)):
        gold_parsed = _parse(str(gold), latex_first=True) if gold is not None else []
        if not gold_parsed:
            out.append((None, True))
            continue
        pred_parsed = _parse(pred)
        ok = bool(pred_parsed) and mv.verify(gold_parsed, pred_parsed, timeout_seconds=_INNER_TIMEOUT_S)
        out.append((1.0 if ok else 0.0, bool(pred_parsed)))
    return out


def _worker(timeout_s: float):
    """The shared worker (one per process), restarted with a new timeout when `timeout_s` changes."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None or _WORKER.timeout_s != timeout_s:
            if _WORKER is not None:
                _WORKER.close()
            _WORKER = IsolatedReward(f"{__name__}:check_pairs", timeout_s=timeout_s, name="math-verify")
        return _WORKER


def close_worker() -> None:
    """Stop the shared math-verify worker (it also stops at interpreter exit)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is not None:
            _WORKER.close()
            _WORKER = None


def prediction_text(text: Any, max_chars: int = MAX_CHARS) -> str | None:
    """The part of a completion to check: the last `<answer>` block, else the whole text; capped; None if empty.

    A `\\boxed{}` inside the answer block (or anywhere when there is no block) is found by math-verify itself,
    which prefers the last boxed expression.
    """
    if not isinstance(text, str):
        return None
    text = text[:max_chars]
    block = extract_answer(text)
    text = (text if block is None else block).strip()
    return text or None


@register("math")
@per_sample
def math_reward(text: Any, answer: Any, *, timeout_s: float = 5.0, max_answer_chars: int = 4096) -> float | None:
    """Mathematical equivalence of the answer with the ground truth via math-verify. Range {0, 1}; None = n/a.

    r = 1[verify(parse(gold), parse(pred))], pred = the last `<answer>` block (else the completion; math-verify
    prefers the last `\\boxed{}`), parsed as LaTeX or a plain expression (retried `$…$`-wrapped); gold likewise
    (a string or number). The prediction is capped at its last `max_answer_chars` characters (answers come at
    the end; the cap engaging is counted as `truncated`). Each completion is checked in the shared worker
    process under a hard `timeout_s`: past it the worker is killed, the value is 0.0 and it is counted as
    `timed_out`. None when the gold answer is missing or does not parse. The rule-based accuracy reward of
    DeepSeek-R1 (arXiv:2501.12948) as used by R1-V / MM-Eureka / EasyR1, with HuggingFace's math-verify.

    >>> math_reward([r"<think>…</think><answer>\\frac{1}{2}</answer>", "so \\boxed{3}"], answer=["0.5", "4"])
    [1.0, 0.0]
    """
    gold = answer
    if gold is None or isinstance(gold, (dict, list, tuple)) or (isinstance(gold, str) and not gold.strip()):
        return None
    truncated = isinstance(text, str) and len(text) > max_answer_chars
    pred = prediction_text(text[-max_answer_chars:] if truncated else text)
    if pred is None:
        note_parse(truncated=truncated, failed=True)
        return 0.0
    worker = _worker(float(timeout_s))  # started on the first completion that needs it; a failed start raises
    try:
        value, parsed = worker([pred], answer=[str(gold)])[0]
    except RewardTimeout:
        note_timeout()
        value, parsed = 0.0, False
    except RewardError:  # a crash inside math-verify on this input: wrong, not fatal
        value, parsed = 0.0, False
    note_parse(truncated=truncated, failed=not parsed)
    return value
