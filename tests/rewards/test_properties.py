"""Properties of every registered pure reward: totality on an adversarial corpus, caps, positive controls.

1. Totality: a deterministic corpus of ≥ 10,000 adversarial strings (unicode: RTL, combining marks, emoji, NUL,
   odd code points, fullwidth digits; nested and unbalanced `<think>`/`<answer>` tags; unbalanced `\\boxed{`;
   JSON fragments; `bbox_2d` objects with NaN/inf/1e308/negative/string coordinates; Qwen2-VL
   `<|box_start|>(x1,y1),(x2,y2)<|box_end|>`; thousands of boxes; a few 1 MB strings; empty strings) reaches
   every reward in `pure_names()` with a ground truth that applies, realistic side columns (`geometry`,
   `completion_ids`, `prompt_index`, a multi-turn rollout's `trajectory`: valid ones and malformed ones) and a few
   malformed ground truths: no exception, one value per completion,
   each `None` or finite and inside `value_range(name, **options)`. The `math` reward (math-verify in a worker
   process) gets a ≥ 500-string subset when it is registered.
2. Caps: for the rewards on the shared parsers (`parse_objects` / `parse_points` / `parse_number`) and `math`,
   a 1 MB answer and an answer with 5,000 boxes (or points) engage the caps and `parse_stats()` counts them
   (`truncated`), and junk is counted (`parse_fail`).
3. Positive controls: for every pure reward ≥ 100 distinct correct (completion, ground truth) cases, wrapped in
   adversarial noise wherever the reward's contract allows it (unicode junk, decoy numbers/boxes/letters/answer
   blocks in and before the reasoning, a reasoning longer than the 64 KiB parse caps, stray tags after the
   answer), score the reward's maximum (the `hi` of its declared range; 0.0 for the penalties `overlong` /
   `repetition` and for `tool_call_penalty` (at most `free` calls); the correct-and-short value for
   `cosine_length`; the majority of a group for `group_agreement`). Their twins with the answer replaced by "none"
   score below it, so the maximum comes from the answer and not from the noise (rewards whose value does not come
   from the answer text, `ANSWER_FREE`, have no twins; the tool-call ones carry negatives instead: the same
   completion with calls that must not score the max). The set of rewards with a control must be exactly
   `pure_names()`, so a newly registered reward without one fails here.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmrl.perception.geometry import Geometry
from mmrl.rewards import get, parse_stats, pure_names, value_range
from mmrl.rewards.parsing import MAX_ANSWER_CHARS, MAX_BOXES

MATH = "math"  # math-verify in a worker process (mmrl/rewards/mathverify.py); covered once it is registered
MIN_CORPUS = 10_000
MIN_MATH_CORPUS = 500
MIN_CONTROLS = 100
BATCH = 256
TOL = 1e-9  # float rounding in sums of per-box terms (e.g. salience weights added in another order)
MB = 1 << 20


# ---- the adversarial corpus -------------------------------------------------------------------------------------
UNICODE = [
    "\u202e", "\u202c", "\u200f", "\u061c", "\u2066", "مرحبا بالعالم", "שלום", "e\u0301\u0302\u0303\u0327",
    "\u0301" * 40, "🙂", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "\x00", "\x00" * 8, "\ufeff", "\uffff", "\ufffe", "\U0010fffd",
    "\U000e0041", "\U0001d7d8\U0001d7d9", "１２３．４５", "٣٫١٤", "۱۲۳", "²³", "Ⅻ", "\u2028", "\u2029", "\r\n", "\t",
    "\x1b[31m", "∞", "−", "×", "Ǆ", "İ", "ß", "ﬁ", "中文", "日本語", "\u200b", "\u00a0", "\u3000", "ÄÖÜ", "\x7f",
    "\ud7ff", "\ue000", "ᅟ", "Ⓐ", "Ｂ", "（Ｃ）",
]
TAGS = [
    "<think>", "</think>", "<answer>", "</answer>", "<answer >", "< answer>", "<ANSWER>", "</answer", "<answer/>",
    "<think/>", "<caption>", "</caption>", "<bbox>", "</bbox>", "<|im_start|>", "<|im_end|>", "<|box_start|>",
    "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<tool_call>", "<b>", "</b>", "<", ">", "</",
]
LATEX = [
    "\\boxed{", "\\boxed{}", "}", "{", "}}}", "{{{", "\\frac{1}{0}", "\\frac{", "\\dfrac{3}{4}", "$", "$$", "\\(",
    "\\)", "\\sqrt{2}", "\\boxed{\\boxed{", "\\frac{\\frac{1}{2}}{0}", "\\text{", "\\left(", "\\right]", "^{",
]
JSONISH = [
    '{"bbox_2d": [', '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]', '{"point_2d": [NaN, 1]}', "[[[[[[", "]]]]",
    '{"a": ', "null", "true", '"\\ud800"', '{"bbox_2d": "x"}', "```json\n", "```", '{"bbox_2d": [1, 2, 3, 4]',
    "{'Position': [1, 2, 3, 4], 'Confidence': 0.9}", '{"bbox": [[1, 2, 3, 4], [5, 6]]}', '{"bbox_2d": null}',
    '[{"bbox_2d": [10, 20, 50, 60], "confidence": 1e999}]', '{"point": [1e308, -1e308]}', '"\\u0000"', ",", ":",
]
NUMBERS = [
    "NaN", "nan", "Infinity", "-Infinity", "inf", "1e308", "-1e308", "1e999", "-1e999", "0", "-0", "1,234.5",
    "3/0", "0/0", "1e-400", "9" * 400, "0x1F", "1_000", "12.", ".5", "+-3", "2 × 10^9999", "45%", "10^99999",
    "1:2:3:4", "99:99:99.99", "3", "4", "90", "-270", "1/2", "0.5", "12.5", "20", "B", "(C)", "[2, 0, 3, 1]",
]
WORDS = [
    "the answer is", "so", "therefore", "Answer:", "answer =", "B.", "A, C", "left", "upper left", "90°",
    "patch 2", "degrees", "Paris", "cat", "kitty", "hello world", "red car", "from 10 to 20 seconds", "option",
    "There are 3 cats.", "click at (20, 40)", "Let me think", "wait,", "hmm", "\n\n", " ", "  ", "\\n",
]
ATOMS = UNICODE + TAGS + LATEX + JSONISH + NUMBERS + WORDS
SEPARATORS = ["", "", " ", ", ", "\n", "\t", "  "]
BAD_COORDS = [
    "NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e999", "-5", '"12"', "null", "true", "[]", "1" + "0" * 400,
    "0.5", "-0.0", "10", "200", "3.4e38", "{}", '"NaN"', "20", "50", "60", "-1e-320",
]
BOX_KEYS = ["bbox_2d", "bbox", "box", "Position", "point_2d", "point", "bbox_3d", "BBOX", ""]
LABELS = ["cat", "", "\u202e🙂", "a" * 300, "<|object_ref_end|>", "dog\x00", "中文", "None"]


def _codepoint(rng: random.Random) -> str:
    while True:
        c = rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0x3000), rng.randrange(0x3000, 0x10000),
                        rng.randrange(0x10000, 0x110000)])
        if not 0xD800 <= c <= 0xDFFF:  # surrogates cannot be encoded; everything else is fair game
            return chr(c)


def _soup(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ATOMS) + rng.choice(SEPARATORS) for _ in range(n))


def _random_codepoints(rng: random.Random) -> str:
    return "".join(_codepoint(rng) for _ in range(rng.randint(0, 120)))


def _bbox_json(rng: random.Random) -> str:
    objs = []
    for _ in range(rng.randint(0, 6)):
        key = rng.choice(BOX_KEYS)
        coords = ", ".join(rng.choice(BAD_COORDS) for _ in range(rng.choice([4, 4, 4, 2, 3, 5, 0])))
        extra = rng.choice(['', ', "label": "cat"', ', "label": 7', ', "confidence": NaN', ', "score": 1e999',
                            f', "label": "{rng.choice(LABELS[:3])}"', ', "Confidence": "high"', ', "score": -3'])
        objs.append(f'{{"{key}": [{coords}]{extra}}}' if rng.random() < 0.9 else f"[{coords}]")
    body = "[" + ", ".join(objs) + "]"
    if rng.random() < 0.3:
        body = body[: rng.randrange(len(body) + 1)]  # truncated JSON
    if rng.random() < 0.2:
        body = body.replace('"', "'")  # Visual-RFT's Python-style quotes
    wrapper = rng.choice(["{}", "<answer>{}</answer>", "```json\n{}\n```", "<answer>```json\n{}\n```</answer>",
                          "I see {} there.", "<think>{}</think><answer>{}</answer>", "<answer>{}"])
    return wrapper.replace("{}", body)


def _qwen_boxes(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 6)):
        a, b, c, d = (rng.choice(BAD_COORDS[:8] + ["1", "2", "3", "4", "999", "1000"]) for _ in range(4))
        ref = f"<|object_ref_start|>{rng.choice(LABELS)}<|object_ref_end|>" if rng.random() < 0.5 else ""
        end = "<|box_end|>" if rng.random() < 0.8 else ""
        parts.append(f"{ref}<|box_start|>({a},{b}),({c},{d}){end}")
    text = rng.choice(SEPARATORS).join(parts)
    return f"<answer>{text}</answer>" if rng.random() < 0.5 else text


def _nested_tags(rng: random.Random) -> str:
    if rng.random() < 0.3:  # deep but balanced
        d = rng.randint(1, 60)
        tag = rng.choice(["think", "answer"])
        return f"<{tag}>" * d + _soup(rng, 3) + f"</{tag}>" * rng.randint(0, d)
    out = []
    for _ in range(rng.randint(1, 14)):
        out.append(rng.choice(TAGS[:10]))
        if rng.random() < 0.6:
            out.append(rng.choice(ATOMS))
    return "".join(out)


def _boxed(rng: random.Random) -> str:
    core = rng.choice(["1/2", "\\frac{1}{2}", "", "B", "x" * rng.randint(0, 50), _soup(rng, 2)])
    return "\\boxed{" * rng.randint(1, 30) + core + "}" * rng.randint(0, 30)


PAYLOADS = [
    "B", "(B)", "A, C", "3", "0.5", "\\frac{1}{2}", "[10, 20, 50, 60]", '{"bbox_2d": [10, 20, 50, 60]}',
    "(20, 40)", "[10, 20]", "2, 0, 3, 1", "upper left", "90°", "Paris", "hello world", "cat", "red car",
    "<|box_start|>(10,20),(50,60)<|box_end|>", "patch 2", "a, b, c, d",
]


def _structured(rng: random.Random) -> str:
    payload = rng.choice(PAYLOADS)
    junk = _soup(rng, rng.randint(0, 4))
    cut = rng.randrange(len(payload) + 1)
    if rng.random() < 0.5:
        payload = payload[:cut] + junk + payload[cut:]
    before, think, after = _soup(rng, rng.randint(0, 2)), _soup(rng, rng.randint(0, 10)), _soup(rng, rng.randint(0, 2))
    return f"{before}<think>{think}</think><answer>{payload}</answer>{after}"


EDGE = [
    "", " ", "\n", "\x00", "<answer></answer>", "<answer> </answer>", "<think></think>",
    "<think></think><answer></answer>", "</answer><answer>", "<answer><answer>x</answer></answer>",
    "<think><answer>3</answer></think>", "\\boxed{}", "\\boxed{", "}", "[", "[]", "{}", "[1, 2, 3, 4]",
    "[1e999, 0, 1, 1]", "[NaN, 1, 2, 3]", "(1,2),(3,4)",
    '{"bbox_2d": [1, 2, 3, 4]}', "<|box_start|>(1,2),(3,4)<|box_end|>", "<|box_start|>", "1" * 5000,
    "-" * 5000, "." * 5000, "<answer>" + "9" * 4000 + "</answer>", "<answer>" + "1:" * 2000 + "</answer>",
]


def _huge_strings() -> list[str]:
    """A handful of MB-sized strings and answers with thousands of boxes (each fed once per reward)."""
    box = "[10, 20, 50, 60] "
    return [
        "<answer>" + box * (MB // len(box)) + "</answer>",  # 1 MB answer of boxes
        "<think>" + "so x <answer>[1, 2, 3, 4]</answer> " * (MB // 36) + "</think><answer>3</answer>",
        "<think>" * (MB // 7),
        "\\boxed{" * (MB // 7),
        "9" * MB,
        "\u202e🙂e\u0301" * (MB // 4),
        '{"bbox_2d": [' * (MB // 13),
        "<answer>" + "x y " * (MB // 4) + "</answer>",
        "<answer>" + "[1,2,3,4] " * 5000 + "</answer>",  # 5,000 boxes inside the char cap
        json.dumps([{"bbox_2d": [i, i, i + 5, i + 5], "label": f"o{i}", "confidence": 0.5} for i in range(3000)]),
        "<|object_ref_start|>x<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>" * 2000,
        "<answer>" + "(1, 2) " * 5000 + "</answer>",  # 5,000 points
    ]


@lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    """≥ 10,000 distinct adversarial strings, deterministic (seeded)."""
    rng = random.Random(20240611)
    makers: list[tuple[Callable[[random.Random], str], int]] = [
        (lambda r: _soup(r, r.randint(0, 30)), 3200),
        (_random_codepoints, 1300),
        (_bbox_json, 1600),
        (_qwen_boxes, 800),
        (_nested_tags, 1200),
        (_boxed, 400),
        (_structured, 2200),
    ]
    strings = list(EDGE)
    for make, n in makers:
        strings += [make(rng) for _ in range(n)]
    strings += _huge_strings()
    return tuple(dict.fromkeys(strings))  # distinct, order kept


def math_corpus() -> list[str]:
    """The math reward's share: ≥ 500 corpus strings of at most 4 KiB, plus two long ones."""
    short = [s for s in corpus() if len(s) <= 4096]
    step = max(1, len(short) // 600)
    return short[::step][:600] + ["<answer>" + "1/2 " * 25_000 + "</answer>", _huge_strings()[0]]


def test_corpus_size_and_shape():
    c = corpus()
    assert len(c) >= MIN_CORPUS and len(set(c)) == len(c)
    assert sum(len(s) >= MB - 64 for s in c) >= 5  # a few 1 MB strings …
    assert sum(len(s) >= MB - 64 for s in c) <= 10  # … and only a few
    assert "" in c and any("\x00" in s for s in c) and any("\u202e" in s for s in c)
    assert any(s.count("[1,2,3,4]") >= 5000 for s in c) and any(s.count("<|box_start|>") >= 2000 for s in c)
    assert all(not 0xD800 <= ord(ch) <= 0xDFFF for s in c if len(s) < 5000 for ch in s)
    assert len(math_corpus()) >= MIN_MATH_CORPUS


# ---- ground truths and side columns per reward --------------------------------------------------------------------
BOXES_GT = {"boxes": [[10, 20, 50, 60], [5, 5, 8, 9]], "labels": ["a", "b"], "salience": [2, 1]}
# a `zoom` task answer (mmrl/datasets/zoom.py): the arrow's angle, its region and the marker's box in the canvas
ZOOM_GT = {"angle": 90, "region": 1, "boxes": [[20, 30, 90, 100]], "grid": 2, "size": [224, 224]}
GROUND_TRUTH: dict[str, Any] = {  # name -> a ground truth that applies (None: the reward reads no answer)
    "acre": {"choice": "B", "options": ["cat", "dog", "bird"]},
    "answer_match": "Paris",
    "cls_label": {"label": "cat", "synonyms": ["kitty"]},
    "cosine_length": "4",
    "count_exact": {"count": 3},
    "count_rel": {"count": 3},
    "det_f1": BOXES_GT,
    "exact": ["Eiffel Tower", "the tower"],
    "format": None,
    "format_template": None,
    "frame_order": {"order": ["a", "b", "c", "d"]},
    "giou": BOXES_GT,
    "group_agreement": None,
    "iou": BOXES_GT,
    "iou_sq": BOXES_GT,
    "iou_thresh": BOXES_GT,
    "jigsaw": {"order": [2, 0, 3, 1]},
    "mc": {"choice": "B", "options": ["cat", "dog", "bird"]},
    "multi_select": {"choices": ["A", "C"]},
    "numeric": 3.5,
    "ocr": "hello world",
    "overlong": None,
    "patch_fit": {"choice": "B"},
    "point_dist": {"points": [[20, 40]], "size": [640, 480]},
    "point_in_box": {"boxes": [[10, 20, 50, 60]]},
    "reasoning_consistency": None,
    "relative_position": {"relation": "top-left"},
    "repetition": None,
    "rft_det": BOXES_GT,
    "rotation_exact": 90,
    "salience_iou": BOXES_GT,
    "temporal_iou": {"span": [10.0, 20.0]},
    "temporal_bonus": None,
    "token_f1": "the red car",
    "tool_call_penalty": None,
    "tool_grounding": ZOOM_GT,
    "tool_use_bonus": ZOOM_GT,
    "union_iou": BOXES_GT,
    "vlmr1_det": BOXES_GT,
    MATH: "\\frac{1}{2}",
}
OPTIONS: dict[str, dict[str, Any]] = {  # small lengths so that every branch of the length rewards is reached
    "overlong": {"max_len": 64, "buffer": 16},
    "cosine_length": {"max_len": 64},
}
MALFORMED = [None, 12345, "just text", ["a", "list"], {"boxes": "x"}, {"choice": 7}, {"order": "abc"},
             {"span": [float("nan"), 1]}, {"count": float("inf")}, {"points": "x"}, float("nan"), True, {},
             {"boxes": [[float("nan"), 0, 1, 1], ["a", 1, 2, 3], [1, 2], None, [1e308, -1e308, 1e308, 1e308]]},
             {"label": 3, "synonyms": "cat"}, {"choices": [1, 2]}, {"angle": "ninety"}, {"relation": None},
             {"angle": 90, "boxes": "x"}, {"angle": None, "boxes": [[1, 2, 3]]}, {"boxes": [[50, 50, 10, 10]]},
             {"angle": float("inf"), "boxes": [["20", "30", "90", "100"]]}, {"angle": [90], "boxes": []},
             {"region": 1, "boxes": [[-1e308, -1e308, 1e308, 1e308]]}]
GEOMETRIES = [
    None, Geometry(640, 480, 640, 480, "pixel"), Geometry(333, 97, 84, 56, "qwen2_5_vl"), None,
    Geometry(1000, 1000, 1000, 1000, "qwen2_vl"), Geometry(640, 480, 640, 480, "norm"),
    Geometry(1, 1, 1, 1, "qwen3_vl"),
]


PERMUTATIONS = [[2, 0, 1], [1, 0], [0, 1, 2, 3], [], [5, "x"], None, [True, 0], [-1, 99, 0]]
TEMPORAL = [  # the contrast column of the shuffle_frames pass, valid and malformed
    {"correct": True, "ordered_acc": 0.5, "shuffled_acc": 0.25}, {"correct": False, "ordered_acc": 1, "shuffled_acc": 0},
    None, {"correct": True}, {"correct": True, "ordered_acc": float("nan"), "shuffled_acc": 0.1}, "text",
    {"correct": True, "ordered_acc": "x", "shuffled_acc": 0.2}, {"correct": 1, "ordered_acc": 1e308, "shuffled_acc": -1e308},
]


NAN, INF = float("nan"), float("inf")


def tool_call(box: Any = None, *, error: str | None = None, origin: Any = 0, tool: str = "region",
              **fields: Any) -> dict:
    """One call as the multi-turn rollout records it (`mmrl.rollout.tool_engine.trajectory_column`)."""
    return {"tool": tool, "arguments": {"region": 1}, "error": error, "reward": None, "box": box, "origin": origin,
            "text": error or "Image 1 shows region 1 of image 0.", **fields}


def trajectory(*calls: Any, finish: str = "eos") -> dict:
    """A multi-turn trajectory's `trajectory` column entry: one turn per call, then the answer turn."""
    return {"turns": len(calls) + 1, "finish_reason": finish,
            "turn_texts": ["<region>1</region>"] * len(calls) + ["<answer>90</answer>"], "calls": list(calls)}


Q1, Q2 = [0, 0, 112, 112], [112, 0, 224, 112]  # regions 1 and 2 of a 224-px canvas: Q1 covers ZOOM_GT's box
TRAJECTORIES = [  # the `trajectory` column: valid trajectories, and malformed ones (entries, calls, boxes)
    trajectory(tool_call(Q1)), trajectory(tool_call(Q2)), trajectory(),
    trajectory(tool_call(None, error="Error: region must be an int in 1 … 4"), tool_call(Q1)),
    trajectory(tool_call(Q2), tool_call(Q1), tool_call(Q1, tool="zoom_in")),  # more calls than free
    trajectory(*[tool_call(None, error="Error: bad")] * 12, finish="max_turns"),
    trajectory(tool_call(Q1, origin=1)), trajectory(tool_call(Q1, origin=None)),
    trajectory(tool_call(None, tool="rotate")),
    trajectory(tool_call(Q1, error="")), trajectory(tool_call(Q1, error="Error: no such region")),
    trajectory(tool_call([NAN, 0, 112, 112])), trajectory(tool_call([0, 0, INF, 112])),
    trajectory(tool_call([-INF, -INF, INF, INF])), trajectory(tool_call(["0", "0", "112", "112"])),
    trajectory(tool_call([0, 0, 112])), trajectory(tool_call([112, 112, 0, 0])), trajectory(tool_call([0, 0, 0, 0])),
    trajectory(tool_call([True, 0, 112, 112])), trajectory(tool_call("0,0,112,112")), trajectory(tool_call({"x": 1})),
    trajectory(tool_call([1e308, 1e308, -1e308, -1e308])), trajectory(tool_call([-1e308, 0, 1e308, 1e-300])),
    trajectory(tool_call([[0, 0, 112, 112]])), trajectory(tool_call((0.5, 0.5, 111.5, 111.5))),
    trajectory(tool_call(Q1, origin="0")), trajectory(tool_call(Q1, origin=[0])), trajectory(tool_call(Q1, origin={})),
    trajectory(tool_call(Q1, origin=-1)), trajectory(tool_call(Q1, origin=NAN)),
    trajectory(dict(tool_call(Q1), arguments=None, reward=NAN, text=None, tool=None)),
    {"calls": [None, "text", 3, [], ["box"], NAN, {"error": 7, "box": Q1}]},  # malformed calls: failed ones
    {"calls": ({"error": None, "box": (0, 0, 112, 112), "origin": 0},)},  # tuples
    {"calls": [{}, {"box": Q1}, {"error": None}]},  # calls without keys
    {"calls": None}, {"calls": "abc"}, {"calls": {"0": tool_call(Q1)}}, {"calls": 5}, {}, {"turns": 2},
    {"turns": "two", "finish_reason": None, "turn_texts": None, "calls": [tool_call(Q1)]},
    None, "text", 7, [], [tool_call(Q1)], NAN, True, b"calls",
    trajectory(*[tool_call([i, i, i + 112, i + 112]) for i in range(300)], finish="max_turns"),  # many calls
]


def columns(batch: list[str], start: int, gt: Any) -> dict[str, list]:
    """Per-completion columns as the trainer passes them: answer, geometry, completion_ids, prompt_index,
    `pair` (a second, option-shuffled pass: another corpus string, sometimes missing or malformed), `temporal` and
    `trajectory` (a multi-turn rollout's calls, valid or malformed)."""
    idx = range(start, start + len(batch))
    pairs = [{"completion": t, "permutation": PERMUTATIONS[i % len(PERMUTATIONS)]} for i, t in zip(idx, batch[::-1])]
    for i in range(0, len(pairs), 17):
        pairs[i] = [None, "text", {"completion": None}, {"permutation": [0]}][i % 4]
    return {
        "answer": [gt] * len(batch),
        "geometry": [GEOMETRIES[i % len(GEOMETRIES)] for i in idx],
        "completion_ids": [None if i % 23 == 0 else [7] * (len(s) % 100) for i, s in zip(idx, batch)],
        "prompt_index": [i // 4 for i in idx],
        "pair": pairs,
        "temporal": [TEMPORAL[i % len(TEMPORAL)] for i in idx],
        "trajectory": [TRAJECTORIES[i % len(TRAJECTORIES)] for i in idx],
    }


def check_values(name: str, values: Any, n: int, lo: float, hi: float, batch: list[str]) -> None:
    assert isinstance(values, list) and len(values) == n, (name, type(values), n)
    bad = [(s[:200], v) for s, v in zip(batch, values)
           if not (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 and lo <= v <= hi))]
    assert not bad, (name, (lo, hi), bad[:5])


def strings_for(name: str) -> list[str]:
    return math_corpus() if name == MATH else list(corpus())


# ---- 1. totality ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", pure_names())
def test_every_corpus_string_reaches_the_reward_and_stays_in_range(name):
    assert name in GROUND_TRUTH, f"no ground truth for reward {name!r}: add one to GROUND_TRUTH (and a control)"
    fn, gt, opts = get(name), GROUND_TRUTH[name], OPTIONS.get(name, {})
    lo, hi = value_range(name, **opts)
    strings = strings_for(name)
    checked = 0
    with parse_stats() as stats:
        for start in range(0, len(strings), BATCH):
            batch = strings[start : start + BATCH]
            values = fn(batch, **columns(batch, start, gt), **opts)
            check_values(name, values, len(batch), lo, hi, batch)
            checked += len(values)
    assert checked == len(strings) >= (MIN_MATH_CORPUS if name == MATH else MIN_CORPUS)
    if stats.calls:  # a reward on the shared parsers: the huge strings hit the caps, the junk fails to parse
        assert stats.truncated >= 1 and stats.failed >= 1, (name, stats)


@pytest.mark.parametrize("name", [n for n in pure_names() if GROUND_TRUTH.get(n) is not None])
def test_malformed_ground_truths(name):
    fn, opts = get(name), OPTIONS.get(name, {})
    lo, hi = value_range(name, **opts)
    strings = strings_for(name)[: len(MALFORMED) * 20]
    gts = [MALFORMED[i % len(MALFORMED)] for i in range(len(strings))]
    values = fn(strings, **dict(columns(strings, 0, None), answer=gts), **opts)
    check_values(name, values, len(strings), lo, hi, strings)
    assert all(v is None for v, g in zip(values, gts) if g is None), name  # documented: no ground truth → None
    assert all(v is None for v in fn(strings[:10], **columns(strings[:10], 0, None), **opts)), name


@pytest.mark.parametrize("name", pure_names())
def test_non_string_completions(name):
    comps = [None, 7, 3.5, b"<answer>3</answer>", ["<answer>B</answer>"], {"text": "x"}]
    opts = OPTIONS.get(name, {})
    values = get(name)(comps, **columns([""] * len(comps), 0, GROUND_TRUTH.get(name)), **opts)
    check_values(name, values, len(comps), *value_range(name, **opts), [repr(c) for c in comps])


_ATOM = st.sampled_from(ATOMS + PAYLOADS) | st.text(max_size=12)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_ATOM, max_size=20).map("".join), min_size=1, max_size=4))
def test_hypothesis_mixtures_stay_in_range(texts):
    for name in pure_names():
        if name == MATH:
            continue  # the worker process is exercised by the corpus test
        opts = OPTIONS.get(name, {})
        lo, hi = value_range(name, **opts)
        check_values(name, get(name)(texts, **columns(texts, 0, GROUND_TRUTH.get(name)), **opts),
                     len(texts), lo, hi, texts)


# ---- 2. caps engaged and counted -------------------------------------------------------------------------------------
BOX_PARSER_REWARDS = ["det_f1", "giou", "iou", "iou_sq", "iou_thresh", "rft_det", "salience_iou", "union_iou", "vlmr1_det"]
POINT_PARSER_REWARDS = ["point_dist", "point_in_box"]
NUMBER_PARSER_REWARDS = ["count_exact", "count_rel"]  # parse_number: a char cap, no object cap
PARSER_REWARDS = BOX_PARSER_REWARDS + POINT_PARSER_REWARDS + NUMBER_PARSER_REWARDS
ONE_MB_ANSWER = "<answer>" + "[10, 20, 50, 60] (20, 40) 3 " * (MB // 28) + "</answer>"
JUNK = ["", "no boxes here", "<answer>none</answer>", "[a, b, c, d]", '{"box": "x"}', "\\boxed{", "🙂\u202e",
        "<answer>(x, y)</answer> NaN inf"]  # nothing a box, point or number parser can use


def parser_rewards() -> list[str]:
    """The rewards whose caps are checked: the shared-parser ones, and `math` (it reports its own cap) if registered."""
    return PARSER_REWARDS + ([MATH] if MATH in pure_names() else [])


def _stats(name: str, texts: list[str]):
    gt = GROUND_TRUTH[name]
    with parse_stats() as stats:
        values = get(name)(texts, **columns(texts, 0, gt))
    check_values(name, values, len(texts), *value_range(name), texts)
    assert all(v is not None for v in values), name  # the ground truth applies: every completion was parsed
    return stats


def test_parser_reward_list_is_complete():
    """The rewards that report to `parse_stats()` are exactly the ones whose caps are checked below."""
    probe = ["<answer>[10, 20, 50, 60] (20, 40) 3</answer>"]
    reporting = set()
    for name in pure_names():
        with parse_stats() as stats:
            get(name)(probe, **columns(probe, 0, GROUND_TRUTH.get(name)), **OPTIONS.get(name, {}))
        if stats.calls:
            reporting.add(name)
    assert reporting == set(parser_rewards())


@pytest.mark.parametrize("name", parser_rewards())
def test_caps_engage_and_are_counted(name):
    assert len(ONE_MB_ANSWER) >= MB - 64 > MAX_ANSWER_CHARS
    stats = _stats(name, [ONE_MB_ANSWER])
    assert (stats.calls, stats.truncated) == (1, 1), (name, stats)
    if name in BOX_PARSER_REWARDS + POINT_PARSER_REWARDS:  # 5,000 objects inside the char cap: the object cap
        item = "[1,2,3,4] " if name in BOX_PARSER_REWARDS else "(1,2) "
        many = "<answer>" + item * 5000 + "</answer>"
        assert len(many) < MAX_ANSWER_CHARS and 5000 > MAX_BOXES
        stats = _stats(name, [many])
        assert (stats.calls, stats.truncated, stats.failed) == (1, 1, 0), (name, stats)
    stats = _stats(name, JUNK)
    assert stats.truncated == 0, (name, stats)
    # the shared parsers find nothing in any of JUNK; math-verify may read "[a, b, c, d]" as a set, say
    assert stats.failed >= (len(JUNK) if name in PARSER_REWARDS else 2), (name, stats)
    assert stats.as_metrics()["parse_fail"] > 0


# ---- 3. positive controls --------------------------------------------------------------------------------------------
THINK_NOISE = [  # safe inside a <think> block: no think/answer/caption/bbox tag, no conclusion phrase
    "Let me look 🤔… maybe 42, or 3/4, or (B)? or 7.5% or 1e9",
    'distractors: [1, 2, 3, 4] (5, 6) {"bbox_2d": [0, 0, 1, 1]} \\boxed{7}',
    "<|box_start|>(1,2),(3,4)<|box_end|> <|object_ref_start|>decoy<|object_ref_end|>",
    "\u202eRTL override\u202c שלום مرحبا",
    "e\u0301\u0302\u0303 combining, ZWJ 👨‍👩‍👧‍👦, flag 🏳️‍🌈",
    "\x00 NUL \ufeff BOM \uffff \U0010fffd",
    "fullwidth １２３．４ and arabic-indic ٣٫١٤",
    '{"unbalanced": [[[ \\boxed{ \\frac{1}{',
    "options A, B, C, D; left or right; 90° or 180°; 0:10 to 1:05; order 3 1 2",
    "<b>bold</b> a < b > c <tool_call>",
    "line1\n\n\tline2\r\n",
    "",
]
PREFIX_NOISE = THINK_NOISE + [  # before the final answer: decoy answer blocks and stray tags are fine
    "<answer>decoy Z 99 [0, 0, 1, 1] (5, 5)</answer> wait, reconsider: ",
    "<think>unclosed ",
    "</think></answer>",
    "<|im_start|>assistant\n",
    '```json\n{"bbox_2d": [0, 0, 1, 1]}\n```',
    "<think>the answer is Z</think>",
]
SUFFIX_NOISE = [  # after the final answer: never "</answer>" (the last block wins) nor a whole think block
    "", "\n", " 🙂", "<|im_end|>", " trailing junk 123 (Z) [9, 9, 9, 9]", "</think>", "<answer>", "\u202e\x00",
    "\\boxed{8}", "   \n\t",
]
WS = ["", " ", "\n", "\n\n  ", "\t"]


# a long chain of thought (≈ 20k tokens, past the 64 KiB parse cap) before the answer: the answer is at the end
LONG_REASONING = "Step: the objects (B) at [1, 2, 3, 4], 42 of them, left of 90°… 🤔\n" * 1200


def thought(rng: random.Random, noise: list[str] = THINK_NOISE) -> str:
    """The reasoning: short noise, or (one time in eight) a long chain of thought past the parse caps."""
    if rng.random() < 1 / 8:
        return f"{rng.choice(noise)} {LONG_REASONING}"
    return f"{rng.choice(noise)} {rng.choice(noise)}"


def wrap(rng: random.Random, core: str, *, outer: bool = True, think: bool = True) -> str:
    """`core` as the final `<answer>` block, after a noisy think block, with noise before and after."""
    pre = rng.choice(PREFIX_NOISE) if outer else ""
    suf = rng.choice(SUFFIX_NOISE) if outer else ""
    thought_ = f"<think>{thought(rng)}</think>" if think else ""
    return f"{pre}{thought_}{rng.choice(WS)}<answer>{rng.choice(WS)}{core}{rng.choice(WS)}</answer>{suf}"


@dataclass
class Control:
    """Completions with their per-completion columns, reward options and the values they must score."""

    completions: list[str] = field(default_factory=list)
    answer: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, list] = field(default_factory=dict)  # other columns (geometry, completion_ids, …)
    expect_max: list[bool] = field(default_factory=list)  # False: must not score the max (group minorities)

    def add(self, completion: str, answer: Any = None, expect_max: bool = True, **extra: Any) -> None:
        self.completions.append(completion)
        self.answer.append(answer)
        self.expect_max.append(expect_max)
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)


CONTROLS: dict[str, Callable[[random.Random], list[Control]]] = {}


def control(*names: str):
    def deco(fn):
        for n in names:
            CONTROLS[n] = fn
        return fn

    return deco


# -- text answers --
WORDS_GT = ["Paris", "The Nile", "New York", "Mount Everest", "blue", "École", "Tōkyō", "the Beatles", "H2O",
            "red-blue", "東京", "São Paulo", "Zürich", "x", "42", "ÆSIR", "naïve café", "Ωmega", "straße", "Δ"]


def _case_variants(w: str) -> list[str]:
    return [w, w.upper(), w.lower(), w.casefold(), "  ".join(w.split()), f" {w}\n"]


@control("answer_match")
def _answer_match(rng):
    c = Control()
    for w in WORDS_GT:
        for v in _case_variants(w):
            c.add(wrap(rng, v), rng.choice([w, w.casefold(), {"choice": w}]))
    return [c]


def _think_answer_layouts(rng: random.Random, n: int) -> list[str]:
    """`<think>T</think> <answer>A</answer>` with noise inside both blocks and whitespace around them."""
    out = []
    for i in range(n):
        ws = [rng.choice(WS) for _ in range(3)]
        core = f"{rng.choice(THINK_NOISE)} {i}"
        out.append(f"{ws[0]}<think>{rng.choice(THINK_NOISE)} {rng.choice(THINK_NOISE)}</think>{ws[1]}"
                   f"<answer>{core}</answer>{ws[2]}")
    return out


@control("format")
def _format(rng):
    # The contract is a full match of `(<think>T</think>)? <answer>A</answer>` up to whitespace: noise may only go
    # inside the blocks (and must not contain a think/answer tag), not before or after them.
    c, bare = Control(), Control()
    for text in _think_answer_layouts(rng, 120):
        c.add(text)
    think_required = Control(options={"require_think": True})
    for text in _think_answer_layouts(rng, 40):
        think_required.add(text.replace("<think>", "<think>x ", 1))  # a non-empty thought
    for i in range(40):
        bare.add(f"{rng.choice(WS)}<answer>{rng.choice(THINK_NOISE)} {i}</answer>{rng.choice(WS)}")
    return [c, think_required, bare]


@control("format_template")
def _format_template(rng):
    # Full-match layouts as `format`: noise goes inside the blocks only (no template tag in it). For `boxed`, noise
    # goes anywhere but with balanced braces (an unclosed `\boxed{` swallows the rest of the text by contract).
    think_answer = Control()
    for text in _think_answer_layouts(rng, 120):
        think_answer.add(text)
    answer_only = Control(options={"template": "answer"})
    boxed = Control(options={"template": "boxed"})
    caption = Control(options={"template": "caption_bbox_answer"})
    balanced = [t for t in PREFIX_NOISE if t.count("{") == t.count("}")]
    for i in range(40):
        answer_only.add(f"{rng.choice(WS)}<answer>{rng.choice(THINK_NOISE)} {i}</answer>{rng.choice(WS)}")
        value = rng.choice(["42", "\\frac{1}{2}", "x^{2}", "B", f"{i}"])
        boxed.add(f"{rng.choice(balanced)} {rng.choice(balanced)} so \\boxed{{{value}}} {rng.choice(balanced)}")
        boxes = ", ".join(str(b) for b in _random_boxes(rng, rng.randint(1, 4)))
        bbox = rng.choice([f"[{boxes}]", boxes])
        caption.add(f"{rng.choice(WS)}<caption>{rng.choice(THINK_NOISE)} x{i}</caption>{rng.choice(WS)}<bbox>{bbox}"
                    f"</bbox>{rng.choice(WS)}<answer>{rng.choice(THINK_NOISE)} {i}</answer>{rng.choice(WS)}")
    return [think_answer, answer_only, boxed, caption]


def _numeric_cases(rng):
    out = []
    for k in range(1, 13):
        v = rng.choice([1, -1]) * rng.randint(1, 10**6) / rng.choice([1, 4, 8, 100])
        out += [(f"{v}", v), (f"{v:,}", v), (f"x = {v}", v), (f"{v:e}", v), (f"{v} apples", str(v))]
        p, q = rng.randint(1, 50), rng.choice([3, 7, 9, 11])
        out += [(f"{p}/{q}", p / q), (f"\\frac{{{p}}}{{{q}}}", p / q), (f"{p}%", p / 100), (f"{p}%", f"{p}%")]
        out += [(f"-\\frac{{{p}}}{{{q}}}", -p / q), (f"\\dfrac{{-{p}}}{{{q}}}", -p / q)]  # regression: sign kept
        out += [(f"{k} × 10^3", k * 1000), (f"-{k}.5e2", -(k + 0.5) * 100)]
    return out


@control("numeric")
def _numeric(rng):
    c = Control()
    for core, gt in _numeric_cases(rng):
        c.add(wrap(rng, core), rng.choice([gt, {"value": gt}]) if not isinstance(gt, str) else gt)
    return [c]


@control("mc")
def _mc(rng):
    c = Control()
    opts = ["cat", "dog", "bird", "fish", "cow", "a red car", "école", "東京"]
    forms = ["{}", "({})", "{}.", "Answer: {}", "**{}**", "{}) {}", "the answer is {}", "\\boxed{{{}}}", "[{}]",
             "Option {}", "{}: {}"]
    for i, letter in enumerate("ABCDEFGH"):
        for f in forms:
            c.add(wrap(rng, f.format(letter, opts[i])), {"choice": letter, "options": opts})
        c.add(wrap(rng, opts[i]), {"choice": letter, "options": opts})  # the option's text
        perm = list(range(len(opts)))
        rng.shuffle(perm)
        shown = perm.index(i)  # the original option i is shown as letter `shown`
        c.add(wrap(rng, f"({'ABCDEFGH'[shown]})"), {"choice": letter, "options": opts, "permutation": perm})
        c.add(wrap(rng, letter.lower() + "."), letter)
    return [c]


@control("acre")
def _acre(rng):
    # Both passes name the gold option, each in its own shown order (letters mapped through the permutations, or
    # the option's text); each pass is wrapped in noise.
    c = Control()
    opts = ["cat", "dog", "bird", "fish", "cow", "a red car"]
    forms = ["{}", "({})", "{}.", "Answer: {}", "\\boxed{{{}}}", "the answer is {}", "**{}**"]
    for _ in range(120):
        options = opts[: rng.randint(2, len(opts))]
        gold = rng.randrange(len(options))
        gt: dict[str, Any] = {"choice": "ABCDEF"[gold], "options": options}
        passes = []
        for shuffled in (rng.random() < 0.3, True):  # the first pass may be shuffled too
            perm = rng.sample(range(len(options)), len(options)) if shuffled else None
            shown = perm.index(gold) if perm else gold
            core = options[gold] if rng.random() < 0.2 else rng.choice(forms).format("ABCDEF"[shown])
            passes.append((wrap(rng, core), perm))
        (first, perm1), (second, perm2) = passes
        if perm1:
            gt["permutation"] = perm1
        c.add(first, gt, pair={"completion": second, "permutation": perm2})
    return [c]


@control("temporal_bonus")
def _temporal_bonus(rng):
    # The value comes from the frame-contrast column: a correct completion whose prompt did at least μ = 0.8 times
    # as well on ordered as on shuffled frames gets α; the completion text (noise here) is not read.
    c = Control()
    for i in range(120):
        shuffled = rng.random()
        ordered = min(1.0, 0.8 * shuffled + rng.random() * (1 - 0.8 * shuffled))
        text = wrap(rng, f"{rng.choice(['left', 'right'])} {i}") + (LONG_REASONING if i % 20 == 0 else "")
        c.add(text, temporal={"correct": True, "ordered_acc": ordered, "shuffled_acc": shuffled})
    return [c]


@control("multi_select")
def _multi_select(rng):
    c = Control()
    for _ in range(120):
        k = rng.randint(1, 5)
        gold = sorted(rng.sample("ABCDEFG", k))
        shown = rng.sample(gold, k)
        form = rng.choice([", ".join(shown), " and ".join(f"({x})" for x in shown), " ".join(shown), "".join(gold),
                           "; ".join(shown), " / ".join(shown)])
        c.add(wrap(rng, form), rng.choice([{"choices": gold}, ", ".join(gold), {"choices": ",".join(gold)}]))
    return [c]


@control("exact")
def _exact(rng):
    c = Control()
    for w in WORDS_GT:
        for v in [w, w.upper(), f"The {w}.", f"{w}!!", f"“{w}”", f"a {w}"]:
            c.add(wrap(rng, v), rng.choice([w, [w, "other"], {"text": w}, ["nothing", w.lower()]]))
    return [c]


@control("cls_label")
def _cls_label(rng):
    c = Control()
    labels = ["cat", "dog", "golden_retriever", "tabby_cat", "airliner", "pizza", "daisy", "sun_flower", "forest",
              "river", "Ferris wheel", "école"]
    for lbl in labels:
        for v in [lbl, lbl.replace("_", " ").title(), lbl.upper(), f"{lbl}.", f"syn {lbl}", f"The {lbl}",
                  lbl.replace("_", "-"), f"**{lbl}**", f"syn-{lbl}!"]:
            synonyms = [rng.choice([f"syn {lbl}", f"syn_{lbl}", f"SYN-{lbl}"])]
            gt = {"label": lbl, "synonyms": synonyms} if "syn" in v else rng.choice([lbl, {"label": lbl}])
            c.add(wrap(rng, v), gt)
    return [c]


OCR_TEXTS = ["hello world", "Invoice #123", "Straße 5", "日本語のテキスト", "a b c", "TOTAL: $4.50", "x",
             "line one line two", "ÉTÉ", "(x + y)^2", "שלום עולם", "🙂 ok", "A-1/B-2", "3.14159", "e\u0301t\u0301"]


@control("ocr")
def _ocr(rng):
    c = Control()
    for t in OCR_TEXTS:
        for k in range(8):
            hyp = rng.choice(["  ", "\n", "\t", " "]).join(t.split())  # whitespace is collapsed on both sides
            c.add(wrap(rng, hyp + rng.choice(WS)), rng.choice([t, {"text": t}]))
    return [c]


@control("token_f1")
def _token_f1(rng):
    c = Control()
    refs = ["red car", "a small dog", "two apples", "under the table", "blue sky", "New York City", "the Nile river",
            "São Paulo", "big red ball", "three", "straße und weg", "first-class ticket"]
    for r in refs:
        words = r.split()
        for k in range(10):
            w = words[:]
            rng.shuffle(w)  # token F1 is order-free
            v = " ".join(w)
            v = rng.choice([v, v.upper(), f"The {v}.", f"{v}!", f"an {v}"])
            c.add(wrap(rng, v), rng.choice([r, [r, "other"], {"text": r}, ["zzz", r]]))
    return [c]


# -- boxes and points --
def _random_boxes(rng: random.Random, n: int) -> list[list[int]]:
    """n distinct boxes inside [0, 976]² with coordinates divisible by 16 (exact under EXACT_GEOMETRIES)."""
    out: list[list[int]] = []
    while len(out) < n:
        x, y = rng.randrange(0, 784, 16), rng.randrange(0, 784, 16)
        b = [x, y, x + rng.randrange(16, 193, 16), y + rng.randrange(16, 193, 16)]
        if b not in out:
            out.append(b)
    return out


EXACT_GEOMETRIES = [  # conversions that are exact (in floats, and after rounding) for multiples of 16 below 999
    None, Geometry(1000, 1000, 1000, 1000, "qwen2_vl"), Geometry(1000, 1000, 1000, 1000, "qwen3_vl"),
    Geometry(2048, 1024, 1024, 512, "qwen2_5_vl"), Geometry(1024, 1024, 1024, 1024, "norm"),
    Geometry(1024, 768, 1024, 768, "pixel"),
]


def _to_model(geo: Geometry | None, rows: list[list[int]], points: bool = False) -> list[list[Any]]:
    if geo is None:
        return [list(r) for r in rows]
    out = geo.points_from_original(rows) if points else geo.from_original(rows)
    back = geo.points_to_original(out) if points else geo.to_original(out)
    assert back == [[float(v) for v in r] for r in rows], (geo, rows, out)  # the control itself is exact
    return out


def _fmt_num(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _box_text(rng: random.Random, boxes: list[list[Any]], labels: list[str] | None, conf: bool) -> str:
    """The boxes in one of the forms grounding models emit (JSON objects when labels or confidences go along)."""
    form = rng.randrange(2 if labels is not None or conf else 6)
    if form < 2:  # JSON objects: bare, fenced, inside prose, or with Visual-RFT's single quotes
        objs = []
        for k, b in enumerate(boxes):
            o: dict[str, Any] = {rng.choice(["bbox_2d", "bbox", "box", "Position"]): b}
            if labels is not None:
                o["label"] = labels[k]
            if conf:
                o[rng.choice(["confidence", "score", "Confidence"])] = 1.0
            objs.append(o)
        s = json.dumps(objs, ensure_ascii=rng.random() < 0.5)
        if form == 1:
            s = rng.choice(["```json\n{}\n```", "Here they are: {} .", "{}"]).format(s)
            s = s.replace('"', "'") if rng.random() < 0.3 else s
        return s
    if form == 2:
        return rng.choice([", ", " ", "\n"]).join("[" + ", ".join(map(_fmt_num, b)) + "]" for b in boxes)
    if form == 3:
        return " ".join(f"({_fmt_num(b[0])},{_fmt_num(b[1])}),({_fmt_num(b[2])},{_fmt_num(b[3])})" for b in boxes)
    if form == 4:
        return "".join(f"<|object_ref_start|>obj {k}<|object_ref_end|><|box_start|>({_fmt_num(b[0])},"
                       f"{_fmt_num(b[1])}),({_fmt_num(b[2])},{_fmt_num(b[3])})<|box_end|>" for k, b in enumerate(boxes))
    return json.dumps([list(b) for b in boxes])


@control("iou", "iou_sq", "iou_thresh", "giou")
def _first_box(rng):
    c = Control()
    for i in range(120):
        gts = _random_boxes(rng, rng.randint(1, 4))
        geo = EXACT_GEOMETRIES[i % len(EXACT_GEOMETRIES)]
        j = rng.randrange(len(gts))  # the first predicted box matches some GT box exactly
        pred = _to_model(geo, [gts[j]])
        if rng.random() < 0.5:  # later boxes do not count for first-box rewards
            pred += _to_model(geo, _random_boxes(rng, rng.randint(1, 3)))
        c.add(wrap(rng, _box_text(rng, pred, None, False)), {"boxes": gts}, geometry=geo)
    return [c]


@control("det_f1", "vlmr1_det", "rft_det", "union_iou", "salience_iou")
def _all_boxes(rng):
    c = Control()
    for i in range(120):
        n = rng.randint(1, 6)
        gts = _random_boxes(rng, n)
        geo = EXACT_GEOMETRIES[i % len(EXACT_GEOMETRIES)]
        labels = [rng.choice(["cat", "dog", "Traffic Light", "中文", "e\u0301"]) for _ in gts] if i % 2 else None
        order = rng.sample(range(n), n)  # any order
        pred = _to_model(geo, [gts[k] for k in order])
        gt: dict[str, Any] = {"boxes": gts}
        if labels is not None:
            gt["labels"] = labels
        if i % 3 == 0:
            gt["salience"] = [rng.randint(1, 5) for _ in gts]
        # labels compare casefolded with whitespace collapsed
        shown = [rng.choice([str.upper, str.lower, str])(labels[k]) for k in order] if labels is not None else None
        c.add(wrap(rng, _box_text(rng, pred, shown, conf=i % 4 == 0)), gt, geometry=geo)
    return [c]


@control("point_in_box")
def _point_in_box(rng):
    c = Control()
    for i in range(120):
        geo = EXACT_GEOMETRIES[i % len(EXACT_GEOMETRIES)]
        x, y = rng.randrange(96, 880, 16), rng.randrange(96, 880, 16)
        boxes = [[x - rng.randint(0, 90), y - rng.randint(0, 90), x + rng.randint(1, 90), y + rng.randint(1, 90)]
                 for _ in range(rng.randint(1, 3))]  # every box contains (x, y)
        p = _to_model(geo, [[x, y]], points=True)[0]
        core = rng.choice(["({}, {})", "[{}, {}]", '{{"point_2d": [{}, {}], "label": "cup"}}', "click at ({}, {})",
                           '[{{"point": [{}, {}]}}]']).format(*map(_fmt_num, p))
        c.add(wrap(rng, core), {"boxes": boxes}, geometry=geo)
    return [c]


@control("point_dist")
def _point_dist(rng):
    c = Control()
    for i in range(120):
        geo = EXACT_GEOMETRIES[i % len(EXACT_GEOMETRIES)]
        pts = [[rng.randrange(0, 992, 16), rng.randrange(0, 992, 16)] for _ in range(rng.randint(1, 3))]
        p = _to_model(geo, [rng.choice(pts)], points=True)[0]
        core = rng.choice(["({}, {})", "[{}, {}]", '{{"point_2d": [{}, {}]}}', "the point is ({}, {})"]).format(
            *map(_fmt_num, p))
        gt = rng.choice([{"points": pts, "size": [1024, 1024]}, {"point": pts[0], "size": [1024, 768]}])
        if "point" in gt and p != _to_model(geo, [pts[0]], points=True)[0]:
            gt = {"points": pts, "size": [1024, 1024]}
        c.add(wrap(rng, core), gt, geometry=geo)
    return [c]


@control("count_exact", "count_rel")
def _count(rng):
    c = Control()
    forms = ["{}", "There are {} cats.", "{} objects", "count: {}", "I count {}", "{}.0", "**{}**", "total = {}"]
    for n in range(15):
        for f in forms:
            c.add(wrap(rng, f.format(n)), {"count": rng.choice([n, float(n)])})
    return [c]


# -- puzzles, video, consistency --
@control("rotation_exact")
def _rotation(rng):
    c = Control()
    for a in (0, 90, 180, 270):
        for shift in (0, 360, -360, 720, -1080):
            for unit in ("", "°", " degrees", " deg", "º", " degree"):
                gt = rng.choice([a, str(a), f"{a}°", {"angle": a}, {"angle": a + 360}, float(a)])
                c.add(wrap(rng, f"{a + shift}{unit}"), gt)
    return [c]


@control("jigsaw", "frame_order")
def _orders(rng):
    c = Control()
    for _ in range(70):
        n = rng.randint(2, 12)
        p = rng.sample(range(n), n)
        sep = rng.choice([", ", " ", ",", " → ", "; ", " | "])
        core = rng.choice(["{}", "[{}]", "({})", "order: {}"]).format(sep.join(map(str, p)))
        c.add(wrap(rng, core), {"order": rng.choice([p, [str(x) for x in p]])})
    words = ["a", "b", "c", "d", "e", "sunrise", "noon", "dusk", "Frame1", "Frame2"]
    for _ in range(50):
        p = rng.sample(words, rng.randint(2, 6))
        core = rng.choice([", ", " ", " → ", "; "]).join(rng.choice([w, w.upper()]) for w in p)
        c.add(wrap(rng, core), {"order": p})
    return [c]


REL_FORMS = {
    "top-left": ["top-left", "upper left", "Top Left", "top_left", "in the upper-left corner"],
    "bottom-right": ["bottom_right", "lower right", "Bottom-Right.", "the lower right part"],
    "top-right": ["upper-right", "top right", "TOP RIGHT"],
    "bottom-left": ["lower left", "bottom-left corner", "Bottom left"],
    "left": ["left", "to the left", "Left."], "right": ["right", "to the right of it", "RIGHT"],
    "above": ["above", "on top", "over it", "up"], "below": ["below", "beneath", "under", "underneath it"],
    "behind": ["behind", "in the back"], "front": ["in front", "front"],
    "center": ["center", "in the middle", "centre"],
}


@control("relative_position")
def _relative_position(rng):
    c = Control()
    for rel, forms in REL_FORMS.items():
        for f in forms:
            for gt in (rel, {"relation": rel}, {"relation": rng.choice(forms)}):
                c.add(wrap(rng, f), gt)
    return [c]


@control("patch_fit")
def _patch_fit(rng):
    c = Control()
    for i, letter in enumerate("ABCDEFGHIJ"):
        for f in ("{}", "({})", "{}.", "Answer: {}", "\\boxed{{{}}}", "[{}]", "Option {}"):
            gt = rng.choice([{"choice": letter}, letter, {"choice": letter, "index": i + 1}])
            c.add(wrap(rng, f.format(letter)), gt)
        for f in ("{}", "patch {}", "#{}", "candidate {}"):
            c.add(wrap(rng, f.format(i + 1)), rng.choice([{"index": i + 1}, {"choice": letter}, i + 1]))
    return [c]


@control("temporal_iou")
def _temporal_iou(rng):
    c = Control()
    for _ in range(120):
        a = rng.randrange(0, 3000) / 4
        b = a + rng.randrange(1, 2000) / 4
        form = rng.choice(["[{}, {}]", "{}-{} s", "from {} to {} seconds", "{} - {}", "({}, {})", "{}s to {}s"])
        c.add(wrap(rng, form.format(a, b)), {"span": rng.choice([[a, b], (str(a), str(b))])})
    for s, e in ((10, 65), (0, 59), (61, 3600), (125, 3723)):  # clock forms
        for k in range(3):
            clock = [f"{t // 60}:{t % 60:02d}" if t < 3600 else f"{t // 3600}:{t % 3600 // 60:02d}:{t % 60:02d}"
                     for t in (s, e)]
            c.add(wrap(rng, f"{clock[0]} to {clock[1]}"), {"span": [s, e]})
    return [c]


CONSISTENT_PAIRS = [("B", "B"), ("(C)", "C"), ("42", "42"), ("3.5", "3.50"), ("1/2", "0.5"), ("the red car", "red car"),
                    ("left", "Left"), ("Paris", "paris"), ("D", "D. fish"), ("7 apples", "7"), ("-3", "-3.0"),
                    ("1,234", "1234"), ("A", "(A)"), ("東京", "東京"), ("two apples", "Two Apples!"),
                    ("-\\frac{1}{2}", "-0.5")]


@control("reasoning_consistency")
def _reasoning_consistency(rng):
    # The conclusion must be the last one in the last think block: reasoning noise goes before it, and what
    # follows it carries no conclusion phrase.
    c = Control()
    lead = ["So the answer is {}.", "Therefore, {}.", "Thus {}.", "Answer: {}.", "The final answer is {}.",
            "Hence {}!", "so the answer should be {}."]
    for k in range(120):
        concl, ans = CONSISTENT_PAIRS[k % len(CONSISTENT_PAIRS)]
        think = f"{thought(rng)}\n{rng.choice(lead).format(concl)}\nDone ✓ 🙂"
        pre = rng.choice(PREFIX_NOISE)
        c.add(f"{pre}<think>{think}</think>{rng.choice(WS)}<answer>{rng.choice(WS)}{ans}</answer>"
              f"{rng.choice(SUFFIX_NOISE)}")
    return [c]


@control("group_agreement")
def _group_agreement(rng):
    # Groups of five: three equivalent answers (the majority, which must score the max) and two others.
    c = Control()
    same = [["4", "4.0", " 4 ", "4.00"], ["B", "(B)", "B.", "Answer: B"], ["red car", "Red Car", "red-car!"],
            ["1/2", "0.5", "0.50"], ["东京", "东京 "], ["-7", "-7.0"], ["-\\frac{3}{4}", "-0.75", "-3/4"]]
    others = ["5", "C", "blue car", "0.25", "大阪", "7", "(D)", "42"]
    for g in range(42):
        forms = same[g % len(same)]
        minority = rng.sample([o for o in others if o not in "".join(forms)], 2)  # other answers than the majority
        group = [(rng.choice(forms), True) for _ in range(3)] + [(o, False) for o in minority]
        for a, majority in rng.sample(group, len(group)):
            c.add(wrap(rng, a), expect_max=majority, prompt_index=f"p{g}")
    return [c]


@control("overlong")
def _overlong(rng):
    c = Control(options={"max_len": 64, "buffer": 16})
    for k in range(120):
        n = k % 49  # within max_len − buffer = 48 tokens
        c.add(wrap(rng, rng.choice(PAYLOADS)) + _soup(rng, 3), completion_ids=[rng.randrange(10**5) for _ in range(n)])
    return [c]


@control("cosine_length")
def _cosine_length(rng):
    # Correct and as short as possible (L = 0): the value is `correct_start`, the top of the declared range.
    c = Control(options={"max_len": 64})
    for w in WORDS_GT:
        for v in _case_variants(w):
            c.add(wrap(rng, v), w, completion_ids=[])
    numeric = Control(options={"max_len": 64, "correctness": "numeric", "correct_start": 3.0})
    for core, gt in _numeric_cases(rng)[:40]:
        numeric.add(wrap(rng, core), gt, completion_ids=[])
    return [c, numeric]


@control("repetition")
def _repetition(rng):
    # No repeated word trigram: every noise word is made unique by an index.
    c = Control()
    pool = [w for w in (" ".join(THINK_NOISE + PAYLOADS)).split() if w]
    for k in range(120):
        words = [f"{rng.choice(pool)}{k}_{j}" for j in range(rng.randint(0, 60))]
        half = len(words) // 2
        c.add(" ".join(words[:half]) + f" <think>{k}</think><answer>4</answer> " + " ".join(words[half:]))
    return [c]


@control(MATH)
def _math(rng):
    # math-verify compares values: the ground truth is a string, the answer LaTeX or plain. The answer block is
    # what is checked, so noise goes anywhere around it; a completion without one is checked whole (math-verify
    # takes the last \boxed), so there the reasoning carries no \boxed and nothing follows the answer.
    c = Control()
    unboxed = [t for t in THINK_NOISE if "\\boxed" not in t]
    values = sorted({Fraction(p, q) for p in range(-15, 16) for q in (1, 2, 3, 4, 5, 8) if p}, key=float)
    for k, v in enumerate(values[:120]):
        p, q = v.numerator, v.denominator
        latex = str(p) if q == 1 else f"\\frac{{{p}}}{{{q}}}" if p > 0 else f"-\\frac{{{-p}}}{{{q}}}"
        gt = rng.choice([str(p) if q == 1 else f"{p}/{q}", f"${latex}$", str(float(v)) if 8 % q == 0 else f"{p}/{q}"])
        if k % 4 == 3:
            c.add(f"<think>{thought(rng, unboxed)}</think>\nThe answer is $\\boxed{{{latex}}}$.", gt)
        else:
            c.add(wrap(rng, [latex, f"${latex}$", f"\\boxed{{{latex}}}"][k % 4]), gt)
    return [c]


# -- tool calls (a multi-turn rollout's `trajectory` column; the completion is its last, answer turn) --
ZOOM_CANVASES = [(224, 2), (224, 3), (336, 2), (336, 4), (300, 3), (448, 4), (500, 3), (1000, 2)]  # (size, grid)
ANGLES = (0, 90, 180, 270)


def _zoom_case(rng: random.Random) -> tuple[dict[str, Any], list[list[float]]]:
    """A `zoom` answer (as mmrl/datasets/zoom.py draws it: the marker 0.60–0.72 of its region's side, integer pixels
    inside the region) and the box in the original's pixels that the `region` tool shows for each region 1 … grid²
    (rounded to 2 decimals, as the tool records it)."""
    size, grid = rng.choice(ZOOM_CANVASES)
    cells = [[round(v, 2) for v in (col * size / grid, row * size / grid, (col + 1) * size / grid,
                                    (row + 1) * size / grid)] for row in range(grid) for col in range(grid)]
    q = rng.randint(1, grid * grid)
    x0, y0, x1, y1 = cells[q - 1]
    side = rng.randint(math.ceil(0.60 * (x1 - x0)), math.floor(0.72 * (x1 - x0)))
    x, y = rng.randint(math.ceil(x0), math.floor(x1) - side), rng.randint(math.ceil(y0), math.floor(y1) - side)
    answer = {"angle": rng.choice(ANGLES), "region": q, "boxes": [[x, y, x + side, y + side]], "grid": grid,
              "size": [size, size]}
    return answer, cells


def _answer_turn(rng: random.Random, core: str, i: int) -> str:
    """Case i's completion, the trajectory's answer turn: noise, a reasoning (past the parse caps every tenth case)
    that names the case, and `core` as the final answer."""
    reasoning = f"{rng.choice(THINK_NOISE)} {LONG_REASONING}" if i % 10 == 0 else thought(rng)
    return (f"{rng.choice(PREFIX_NOISE)}<think>{reasoning} Region {i} looked closer.</think>{rng.choice(WS)}"
            f"<answer>{rng.choice(WS)}{core}{rng.choice(WS)}</answer>{rng.choice(SUFFIX_NOISE)}")


def _failed(rng: random.Random, cells: list[list[float]]) -> list[Any]:
    """0–3 failed calls: with an error (with or without a box; "" is an error too), or malformed entries."""
    pool = [tool_call(None, error="Error: region must be an int in 1 … 4"), tool_call(rng.choice(cells), error="x"),
            tool_call(rng.choice(cells), error=""), None, "<region>1</region>", 3, [], ["box", [0, 0, 1, 1]]]
    return rng.sample(pool, rng.randint(0, 3))


def _not_a_look(rng: random.Random, cells: list[list[float]]) -> list[Any]:
    """0–4 calls that show no region: failed ones, successful ones without a box (a rotation) or a broken one."""
    pool = [tool_call(None, tool="rotate", arguments={"angle": 90}), tool_call([NAN, 0, 10, 10]),
            tool_call(["0", "0", "10", "10"]), tool_call([50, 50, 10, 10]), tool_call([0, 0, INF, INF]),
            tool_call([0, 0, 10])]
    calls = _failed(rng, cells) + rng.sample(pool, rng.randint(0, 1))
    rng.shuffle(calls)
    return calls


def _elsewhere(rng: random.Random, answer: dict[str, Any], cells: list[list[float]]) -> dict:
    """A successful call that shows another region than the target's."""
    return tool_call(rng.choice([c for k, c in enumerate(cells) if k != answer["region"] - 1]))


def _looks_at_target(rng: random.Random, answer: dict[str, Any], cells: list[list[float]]) -> dict:
    """A successful call whose box covers the target box: its region (`region`), or a box around it (`zoom_in`)."""
    q = answer["region"]
    if rng.random() < 0.7:
        return tool_call(cells[q - 1], origin=rng.choice([0, 0, None]), arguments={"region": rng.choice([q, str(q)])})
    x1, y1, x2, y2 = answer["boxes"][0]
    box = [round(x1 - rng.uniform(0, 20), 2), round(y1 - rng.uniform(0, 20), 2), round(x2 + rng.uniform(0, 20), 2),
           round(y2 + rng.uniform(0, 20), 2)]
    return tool_call(box, tool="zoom_in", arguments={"bbox_2d": box})


@control("tool_grounding")
def _tool_grounding(rng):
    # The value comes from the calls, not the completion (noise, ANSWER_FREE): the first successful call with a box
    # shows the target's region (or a box around it); calls that show nothing come before it and any call after it.
    # Negatives stand in for the twins: the same completion whose first look is elsewhere, or on another original
    # image, or that never looks, must score below the max.
    first, any_, loose = Control(), Control(options={"which": "any"}), Control(options={"min_cover": 0.5})
    for i in range(120):
        gt, cells = _zoom_case(rng)
        text = _answer_turn(rng, str(gt["angle"]), i)
        hit, skipped = _looks_at_target(rng, gt, cells), _not_a_look(rng, cells)
        later = [_elsewhere(rng, gt, cells) for _ in range(rng.randint(0, 2))]
        first.add(text, gt, trajectory=trajectory(*skipped, hit, *later))
        miss = rng.choice([[_elsewhere(rng, gt, cells), hit], [dict(hit, origin=1)], skipped])
        first.add(text, gt, expect_max=False, trajectory=trajectory(*miss))
        if i % 3 == 0:  # which="any": a look at the target after looks elsewhere counts
            elsewhere = [_elsewhere(rng, gt, cells) for _ in range(rng.randint(1, 3))]
            any_.add(text, gt, trajectory=trajectory(*elsewhere, *skipped, hit))
            any_.add(text, gt, expect_max=False, trajectory=trajectory(*elsewhere, *skipped))
        if i % 4 == 0:  # min_cover=0.5: a look at 55–100 % of the target counts, one at ≤ 45 % does not
            x1, y1, x2, y2 = gt["boxes"][0]
            cut = x1 + math.floor(rng.uniform(0.0, 0.45) * (x2 - x1))
            loose.add(text, gt, trajectory=trajectory(tool_call([cut, y1 - 3, x2 + 3, y2 + 3])))
            cut = x1 + math.ceil(rng.uniform(0.55, 1.0) * (x2 - x1))
            loose.add(text, gt, expect_max=False, trajectory=trajectory(tool_call([cut, y1 - 3, x2 + 3, y2 + 3])))
    return [first, any_, loose]


@control("tool_use_bonus")
def _tool_use_bonus(rng):
    # A right angle (forms as the rotation control's) reached with at least one successful call (any region, a
    # rotation, a box around the target), among failed and malformed ones; the twins ("none") are wrong answers.
    # A right answer without a successful call must not score the bonus. Options: another bonus and threshold,
    # and the accuracy reward's own (rotation_exact's `tol`) passed through.
    c = Control()
    tolerant = Control(options={"bonus": 2.5, "threshold": 0.0, "tol": 0.5})
    for i in range(150):
        gt, cells = _zoom_case(rng)
        a = gt["angle"]
        ctl = tolerant if i % 5 == 0 else c
        shown = a + rng.choice([0, 360, -360, 720]) + (rng.choice([0.25, -0.25, 0.5]) if ctl is tolerant else 0)
        text = _answer_turn(rng, f"{shown}{rng.choice(['', '°', ' degrees', ' deg', 'º'])}", i)
        ok = rng.choice([_looks_at_target(rng, gt, cells), _elsewhere(rng, gt, cells), tool_call(None, tool="rotate")])
        failed = _failed(rng, cells)
        calls = failed + [ok]
        rng.shuffle(calls)
        truth = rng.choice([gt, dict(gt, angle=a + 360), dict(gt, angle=str(a))])
        ctl.add(text, truth, trajectory=trajectory(*calls))
        if i % 3 == 0:  # the same calls but the successful one
            ctl.add(text, truth, expect_max=False, trajectory=trajectory(*failed))
    return [c, tolerant]


@control("tool_call_penalty")
def _tool_call_penalty(rng):
    # At most `free` calls (failed and malformed ones count as calls) cost nothing: 0.0, the top of the range.
    # The completion (noise) is not read (ANSWER_FREE); one call or more past `free` must cost something.
    plain, roomy, strict = Control(), Control(options={"free": 3, "per_call": 0.2}), Control(options={"free": 0})
    gratis = Control(options={"per_call": 0.0})  # range [0, 0]: any number of calls is free
    for i in range(160):
        gt, cells = _zoom_case(rng)
        ctl = [plain, roomy, strict, gratis][i % 4]
        free = ctl.options.get("free", 1)
        pool = [_looks_at_target(rng, gt, cells), _elsewhere(rng, gt, cells)] + _not_a_look(rng, cells)
        calls = [rng.choice(pool) for _ in range(rng.randint(0, free) if ctl is not gratis else rng.randint(0, 20))]
        text = _answer_turn(rng, str(gt["angle"]), i)
        ctl.add(text, trajectory=trajectory(*calls))
        if ctl is not gratis and i // 4 % 2:
            more = calls + [rng.choice(pool) for _ in range(free + rng.randint(1, 4) - len(calls))]
            ctl.add(text, expect_max=False, trajectory=trajectory(*more, finish="max_turns"))
    return [plain, roomy, strict, gratis]


def run_control(name: str, ctl: Control, completions: list[str] | None = None) -> tuple[list[float | None], float]:
    completions = ctl.completions if completions is None else completions
    values = get(name)(completions, answer=ctl.answer, **ctl.extra, **ctl.options)
    lo, hi = value_range(name, **ctl.options)
    check_values(name, values, len(completions), lo, hi, completions)
    return values, hi


def blank_answer(text: str) -> str:
    """The completion with its final answer replaced by "none" (unchanged when it has no `<answer>` block)."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return text if start < 0 else f"{text[:start]}<answer>none</answer>{text[end + len('</answer>'):]}"


ANSWER_FREE = {"format", "format_template", "overlong", "repetition", "group_agreement",  # no twin check
               "temporal_bonus",  # reads the contrast pass's column, not the completion
               # read the `trajectory` column's calls (and the ground truth's box), not the completion: their
               # controls carry negatives instead (the same completion with calls that must not score the max)
               "tool_grounding", "tool_call_penalty"}
# layout/word rewards whose controls carry no long reasoning (`format_template` documents that text past
# `MAX_CHARS` fails its template)
NO_LONG_REASONING = {"format", "format_template", "repetition"}


def test_every_pure_reward_has_a_control_and_a_ground_truth():
    registered = set(pure_names())
    expected = set(CONTROLS) - ({MATH} if MATH not in registered else set())
    assert registered == expected, {"without a control": registered - expected, "not registered": expected - registered}
    assert registered <= set(GROUND_TRUTH)


@pytest.mark.parametrize("name", sorted(set(pure_names()) | (set(CONTROLS) - {MATH})))
def test_positive_controls_score_the_maximum(name):
    assert name in CONTROLS, f"reward {name!r} has no positive control: add one to CONTROLS"
    rng = random.Random(zlib.crc32(name.encode()))
    controls = CONTROLS[name](rng)
    distinct = {(t, repr(a)) for ctl in controls for t, a, m in zip(ctl.completions, ctl.answer, ctl.expect_max) if m}
    assert len(distinct) >= MIN_CONTROLS, (name, len(distinct))
    if name not in NO_LONG_REASONING:  # regression: answers after a reasoning past the 64 KiB caps once scored 0
        assert sum(LONG_REASONING in t for t, _ in distinct) >= 5, name
    for ctl in controls:
        values, hi = run_control(name, ctl)
        missed = [(t[-300:], a, v) for t, a, v, m in zip(ctl.completions, ctl.answer, values, ctl.expect_max)
                  if m and not (v is not None and v >= hi - TOL)]
        assert not missed, (name, ctl.options, hi, len(missed), missed[:5])
        wrongly_max = [(t[-300:], v) for t, v, m in zip(ctl.completions, values, ctl.expect_max) if not m and v == hi]
        assert not wrongly_max, (name, wrongly_max[:5])
        if name in ANSWER_FREE:
            continue
        # twins: the same noisy completions with the answer replaced score below the max — the score comes from
        # the answer, not from the decoys in the noise
        twins = [blank_answer(t) for t in ctl.completions]
        twin_values, _ = run_control(name, ctl, twins)
        lucky = [(t[-300:], v) for t, c, v in zip(twins, ctl.completions, twin_values)
                 if t != c and v is not None and v >= hi - TOL]
        assert not lucky, (name, lucky[:5])
        assert sum(t != c for t, c in zip(twins, ctl.completions)) >= len(twins) // 2
