"""Consistency rewards: `reasoning_consistency` (reasoning ↔ answer), `group_agreement` (label-free majority),
`acre` (option-shuffle consistency over two passes, with correctness).

For `acre`, the second pass — the same reasoning re-asked with the options shuffled — is produced by the rollout's extra
passes (the algorithms' ACRE objective); this module is the pure scoring of a pair. Same contract as the other
built-ins: pure, total on any text, input capped, one value per completion, `None` = not applicable. `acre` and
`reasoning_consistency` score one completion each (`per_sample`); `group_agreement` votes across a group.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mmrl.rewards.parsing import extract_answer
from mmrl.rewards.per_sample import column, per_sample
from mmrl.rewards.registry import register
from mmrl.rewards.text import mc_letter
from mmrl.rewards.text_parsing import (
    MAX_CHARS,
    answer_text,
    normalize_text,
    numbers_close,
    parse_letter,
    parse_number,
    truth_field,
)


def _acre_range(both: float = 1.0, correct_only: float = 0.5, consistent_only: float = 0.0, neither: float = 0.0,
                **_: Any) -> tuple[float, float]:
    values = (both, correct_only, consistent_only, neither)
    return float(min(values)), float(max(values))


@register("acre", range=_acre_range)
@per_sample
def acre(
    text: Any,
    answer: Any,
    pair: Any,
    *,
    both: float = 1.0,
    correct_only: float = 0.5,
    consistent_only: float = 0.0,
    neither: float = 0.0,
) -> float | None:
    """ACRE's four-way consistency-verification reward over an original and an option-shuffled pass.
    Range [min, max] of the four values (default [0, 1]); None = no pair or no gold letter.

    With ℓ = the gold letter (`answer["choice"]`), ℓ₁ = the letter of this completion (through
    `answer["permutation"]` if the first pass was shuffled too) and ℓ₂ = the letter of the second pass
    (`pair = {"completion": text, "permutation": π}`, π mapping shown positions to original ones), both mapped
    back to original option order: r = `both` if ℓ₁ = ℓ₂ = ℓ, `correct_only` if ℓ₁ = ℓ ≠ ℓ₂, `consistent_only`
    if ℓ₁ = ℓ₂ ≠ ℓ, else `neither`; an unparsable letter is neither correct nor consistent. Option text
    answers match through `answer["options"]` (text is invariant to shuffling). ACRE, "Answer-Consistent
    Chain-of-thought Reinforcement Learning for Multi-modal Large Language Models" (arXiv:2510.10104);
    the four values are the reference's proposal, the paper's exact ones were not retrieved. Setting
    `both = consistent_only = 1` and the others 0 gives the plain option-shuffle consistency rate (OSCR).

    >>> gt = {"choice": "B", "options": ["cat", "dog", "cow"]}
    >>> acre(["<answer>B</answer>", "<answer>B</answer>", "<answer>C</answer>", "<answer>B</answer>"],
    ...      answer=[gt] * 4, pair=[{"completion": "<answer>C</answer>", "permutation": [2, 0, 1]},
    ...                         {"completion": "<answer>A</answer>", "permutation": [2, 0, 1]},
    ...                         {"completion": "<answer>cow</answer>", "permutation": [1, 2, 0]}, None])
    [1.0, 0.5, 0.0, None]
    """
    gold = truth_field(answer, "choice")
    gold = parse_letter(gold) if isinstance(gold, str) else None
    if gold is None or not isinstance(pair, dict) or not isinstance(pair.get("completion"), str):
        return None
    options = answer.get("options") if isinstance(answer, dict) else None
    first = mc_letter(answer_text(text), options, answer.get("permutation") if isinstance(answer, dict) else None)
    again = mc_letter(answer_text(pair["completion"]), options, pair.get("permutation"))
    correct = first == gold
    consistent = first is not None and first == again
    value = both if correct and consistent else correct_only if correct else consistent_only if consistent else neither
    return float(value)


# ---- consistency ------------------------------------------------------------------------------------------------
_CONCLUSION_RES = [  # the conclusion is captured in a lookahead so that a later conclusion is still found
    re.compile(r"\banswer\s+(?:is|should\s+be|would\s+be|must\s+be)\b[\s:]{0,8}(?=([^\n]{1,200}))", re.IGNORECASE),
    re.compile(r"\banswer\s{0,8}[:=]\s{0,8}(?=([^\n]{1,200}))", re.IGNORECASE),
    re.compile(r"\b(?:so|thus|therefore|hence)\b[\s,]{0,8}(?=([^\n]{1,200}))", re.IGNORECASE),
]
_SENTENCE_END = re.compile(r"\.(?:\s|$)|[;!?]")


def last_think(text: str) -> str | None:
    """The body of the last `<think>…</think>` block with no think tag inside, or None; linear (`rfind`) at any length.

    >>> last_think("<think>a</think> <think>b</think></think><answer>x</answer>")
    'b'
    """
    end = text.rfind("</think>")
    start = text.rfind("<think>", 0, end) if end >= 0 else -1
    if start < 0:
        return None
    body = text[start + len("<think>") : end]
    close = body.find("</think>")  # "<think>b</think></think>": the block ends at the first close tag
    return body if close < 0 else body[:close]


def conclusion(think: str) -> str | None:
    """The last conclusion stated in a reasoning text ("the answer is X", "answer: X", "so X"), or None.

    >>> conclusion("2+2 is 4. So the answer is 4. Double-check: yes.")
    '4'
    """
    best: tuple[int, str] | None = None
    for rx in _CONCLUSION_RES:
        for m in rx.finditer(think):
            if best is None or m.start(1) > best[0]:
                best = (m.start(1), m.group(1))
    if best is None:
        return None
    text = _SENTENCE_END.split(best[1], maxsplit=1)[0]
    text = re.sub(r"^(?:the\s+(?:final\s+)?answer\s+is\s*:?\s*)", "", text.strip(), flags=re.IGNORECASE)
    text = text.strip().strip("$*\"'`").strip()
    return text or None


def answer_key(a: str) -> str | None:
    """A canonical key for comparing short answers: option letter, else number, else normalised text."""
    letter = parse_letter(a)
    if letter is not None:
        return "letter:" + letter
    num = parse_number(a[:4096])
    if num is not None and len(normalize_text(re.sub(r"[\d.,/%]+", " ", a[:4096])).split()) <= 3:
        return f"number:{num[0]:.9g}"
    text = normalize_text(a)
    return "text:" + text if text else None


def answers_agree(c: str, a: str) -> bool:
    """Whether a stated conclusion and a final answer name the same thing (letter, number or text)."""
    kc, ka = answer_key(c), answer_key(a)
    if kc is None or ka is None:
        return False
    if kc == ka:
        return True
    if kc.startswith("number:") and ka.startswith("number:"):
        return numbers_close(float(kc[7:]), float(ka[7:]), 1e-6, 1e-9)
    if kc.startswith("text:") and ka.startswith("text:"):  # "the red car" ⊇ "red car"
        return f" {ka[5:]} " in f" {kc[5:]} " or f" {kc[5:]} " in f" {ka[5:]} "
    return False


@register("reasoning_consistency")
@per_sample
def reasoning_consistency(text: Any) -> float | None:
    """Reasoning–answer consistency: does the conclusion in `<think>` agree with `<answer>`? Range {0, 1}.

    r = 1[key(c) = key(â)], c = the last conclusion in the last `<think>` block ("the answer is X",
    "answer: X", "so/thus/therefore X", cut at the sentence end), â = the `<answer>` block; key = option letter,
    else number, else normalised text (containment of whole words counts). None when there is no think block,
    no conclusion or no answer block. Needs no ground truth. ACRE "Answer-Consistent Chain-of-thought
    Reinforcement Learning for Multi-modal Large Language Models" (arXiv:2510.10104) and PC-GRPO's
    reasoning–answer consistency (RAC, judged by an LLM there; this is the rule-based proxy) ("Puzzle Curriculum
    GRPO for Vision-Centric Reasoning" (arXiv:2512.14944)).

    >>> reasoning_consistency(["<think>so the answer is B.</think><answer>B</answer>",
    ...                        "<think>thus 12</think><answer>13</answer>", "<think>hmm</think><answer>B</answer>"])
    [1.0, 0.0, None]
    """
    text = text if isinstance(text, str) else ""
    think = last_think(text)
    c = conclusion(think[-MAX_CHARS:]) if think is not None else None  # the conclusion ends the reasoning
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    a = text[start + len("<answer>") : end].strip()[:MAX_CHARS] if start >= 0 else ""
    if c is None or not a:
        return None
    return 1.0 if answers_agree(c, a) else 0.0


@register("group_agreement")
def group_agreement(
    completions: list[str],
    *,
    group_size: int | None = None,
    prompt_index: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Label-free majority vote: 1 when this completion's answer is its group's most common one. Range {0, 1}.

    r_i = 1[key(â_i) ∈ mode{key(â_j) : j in i's group, key(â_j) defined}], key as in `reasoning_consistency`
    (letter / number / normalised text); every tied mode counts as the majority; a completion without an
    answer scores 0. Groups come from the `prompt_index` column when present (completions sharing a value
    form a group), else from `group_size` (consecutive blocks of that size, the rollout layout); with neither
    it raises ValueError. TTRL-style majority pseudo-label ("TTRL: Test-Time Reinforcement Learning"
    (arXiv:2504.16084)).

    >>> group_agreement(["<answer>4</answer>", "<answer>4.0</answer>", "<answer>5</answer>", "x"], group_size=4)
    [1.0, 1.0, 0.0, 0.0]
    """
    n = len(completions)
    if prompt_index is not None:
        groups = [str(g) for g in column(prompt_index, "prompt_index", n)]
    elif isinstance(group_size, int) and not isinstance(group_size, bool) and group_size > 0:
        groups = [str(i // group_size) for i in range(n)]
    else:
        raise ValueError("group_agreement needs a `prompt_index` column or a positive integer `group_size` option")
    keys = []
    for text in completions:
        a = extract_answer(text) if isinstance(text, str) else None
        keys.append(answer_key(a[:MAX_CHARS]) if a else None)
    votes: dict[str, Counter] = {}
    for g, k in zip(groups, keys):
        if k is not None:
            votes.setdefault(g, Counter())[k] += 1
    out: list[float | None] = []
    for g, k in zip(groups, keys):
        c = votes.get(g)
        out.append(1.0 if k is not None and c and c[k] == max(c.values()) else 0.0)
    return out
