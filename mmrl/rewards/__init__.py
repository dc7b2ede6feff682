"""Reward functions, the reward registry, plug-in loading and composition.

A reward is `fn(completions: list[str], **columns) -> list[float | None]` (`None` = not applicable).
`get(spec)` resolves a registry name (`"iou"`), `"pkg.module:function"` or `"path/file.py:function"`;
`compose.score` weights and sums several rewards and keeps each component for logging; `isolation.make_term`
builds a term from config (plug-ins in a worker process, `style: trl|easyr1`, `on_error`).
"""

from mmrl.rewards.registry import REWARDS, RewardSpecError, get, names, pure_names, register, value_range
from mmrl.rewards.builtin import answer_match, box_iou, format_reward, iou  # importing registers them
from mmrl.rewards import consistency, geometric, judge, mathverify, puzzles, shaping, text  # importing registers them
from mmrl.rewards import tools  # importing registers the trajectory rewards
from mmrl.rewards.compose import RewardError, RewardTerm, RewardTimeout, score, summarize
from mmrl.rewards.isolation import IsolatedReward, make_term
from mmrl.rewards.parsing import extract_answer, parse_boxes, parse_number, parse_objects, parse_points, parse_stats

__all__ = [  # the names above, and the reward families (modules) whose import registers their rewards
    "IsolatedReward",
    "REWARDS",
    "RewardError",
    "RewardSpecError",
    "RewardTerm",
    "RewardTimeout",
    "answer_match",
    "box_iou",
    "extract_answer",
    "format_reward",
    "get",
    "iou",
    "make_term",
    "names",
    "parse_boxes",
    "parse_number",
    "parse_objects",
    "parse_points",
    "parse_stats",
    "pure_names",
    "register",
    "score",
    "summarize",
    "value_range",
    "consistency",
    "geometric",
    "judge",
    "mathverify",
    "puzzles",
    "shaping",
    "text",
    "tools",
]
