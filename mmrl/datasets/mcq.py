"""Multiple-choice prompts: one rendering, and the option shuffle that ACRE's second pass re-asks with.

A multiple-choice sample keeps its parts in the answer: `{"choice": "B", "options": [...], "question": str}`;
its prompt text is `render(question, options)`. `shuffle_options(sample, perm)` re-renders the text with the
options in a new order and records the mapping, so a reward can map the second answer back
(`answer["permutation"][shown position] = original position`).
"""

from __future__ import annotations

import string
from dataclasses import replace
from typing import Any

from mmrl.errors import BadSampleError
from mmrl.datasets.sample import Sample

INSTRUCTION = "Answer with the option's letter inside <answer></answer>."


def render(question: str, options: list[Any]) -> str:
    """`question`, one `X. option` line per option (A, B, …), then the answer instruction."""
    if not 2 <= len(options) <= 26:
        raise ValueError(f"a multiple-choice question needs 2-26 options, got {len(options)}")
    lines = [f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join([question, *lines, INSTRUCTION])


def shuffle_options(sample: Sample, perm: list[int]) -> Sample:
    """The same sample (same images) with its options shown in order `perm` (shown i = original perm[i]); the
    returned answer carries `permutation` and the shown `choice` stays in original terms."""
    gt = sample.answer
    if not (isinstance(gt, dict) and isinstance(gt.get("options"), list) and isinstance(gt.get("question"), str)):
        raise BadSampleError(sample.id, "option shuffling needs answer {'choice', 'options', 'question'}")
    options = gt["options"]
    if sorted(perm) != list(range(len(options))):
        raise ValueError(f"{sample.id}: {perm} is not a permutation of {len(options)} options")
    text = render(gt["question"], [options[j] for j in perm])
    messages = []
    for msg in sample.messages:
        content = msg.get("content")
        if msg.get("role") == "user" and isinstance(content, list):
            content = [dict(part, text=text) if part.get("type") == "text" else part for part in content]
        messages.append(dict(msg, content=content))
    return replace(sample, messages=messages, answer=dict(gt, permutation=list(perm)))
