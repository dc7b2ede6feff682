"""Two-pass consistency rewards: `acre` (option-shuffle consistency, with correctness).

The second pass — the same reasoning re-asked with the options shuffled — is produced by the rollout's extra
passes (the algorithms' ACRE objective); this module is the pure scoring of a pair. Same contract as the other
built-ins: pure, total on any text, input capped, one value per completion, `None` = not applicable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmrl.rewards.registry import register
from mmrl.rewards.text import _gt_text, _mc_pred, answer_text, column, parse_letter


def _acre_range(both: float = 1.0, correct_only: float = 0.5, consistent_only: float = 0.0, neither: float = 0.0,
                **_: Any) -> tuple[float, float]:
    values = (both, correct_only, consistent_only, neither)
    return float(min(values)), float(max(values))


@register("acre", range=_acre_range)
def acre(
    completions: list[str],
    *,
    answer: Sequence[Any] | None = None,
    pair: Sequence[Any] | None = None,
    both: float = 1.0,
    correct_only: float = 0.5,
    consistent_only: float = 0.0,
    neither: float = 0.0,
    **kwargs: Any,
) -> list[float | None]:
    """ACRE's four-way consistency-verification reward over an original and an option-shuffled pass.
    Range [min, max] of the four values (default [0, 1]); None = no pair or no gold letter.

    With ℓ = the gold letter (`answer["choice"]`), ℓ₁ = the letter of this completion (through
    `answer["permutation"]` if the first pass was shuffled too) and ℓ₂ = the letter of the second pass
    (`pair = {"completion": text, "permutation": π}`, π mapping shown positions to original ones), both mapped
    back to original option order: r = `both` if ℓ₁ = ℓ₂ = ℓ, `correct_only` if ℓ₁ = ℓ ≠ ℓ₂, `consistent_only`
    if ℓ₁ = ℓ₂ ≠ ℓ, else `neither`; an unparsable letter is neither correct nor consistent. Option text
    answers match through `answer["options"]` (text is invariant to shuffling). ACRE, "Answer-Consistent
    Chain-of-thought Reinforcement Learning for Multi-modal LLMs" (arXiv id not recorded in the reference);
    the four values are the reference's proposal, the paper's exact ones were not retrieved. Setting
    `both = consistent_only = 1` and the others 0 gives the plain option-shuffle consistency rate (OSCR).

    >>> gt = {"choice": "B", "options": ["cat", "dog", "cow"]}
    >>> acre(["<answer>B</answer>", "<answer>B</answer>", "<answer>C</answer>", "<answer>B</answer>"],
    ...      answer=[gt] * 4, pair=[{"completion": "<answer>C</answer>", "permutation": [2, 0, 1]},
    ...                         {"completion": "<answer>A</answer>", "permutation": [2, 0, 1]},
    ...                         {"completion": "<answer>cow</answer>", "permutation": [1, 2, 0]}, None])
    [1.0, 0.5, 0.0, None]
    """
    n = len(completions)
    out: list[float | None] = []
    for text, gt, second in zip(completions, column(answer, "answer", n), column(pair, "pair", n)):
        gold = _gt_text(gt, "choice")
        gold = parse_letter(gold) if isinstance(gold, str) else None
        if gold is None or not isinstance(second, dict) or not isinstance(second.get("completion"), str):
            out.append(None)
            continue
        options = gt.get("options") if isinstance(gt, dict) else None
        first = _mc_pred(answer_text(text), options, gt.get("permutation") if isinstance(gt, dict) else None)
        again = _mc_pred(answer_text(second["completion"]), options, second.get("permutation"))
        correct = first == gold
        consistent = first is not None and first == again
        value = both if correct and consistent else correct_only if correct else consistent_only if consistent else neither
        out.append(float(value))
    return out
