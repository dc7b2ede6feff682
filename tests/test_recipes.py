"""The paper recipes (recipes/*.yaml): each runs a few (≤ 3) training steps on the offline tiny model through its `smoke:`
block, names its paper in its header, and is listed in recipes/README.md.

Recipes are discovered by glob, so a new recipe is tested without touching this file. The files in `BASES` are
shared setups other recipes extend (or the demo), not paper recipes; a new base recipe is added there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from mmrl import config
from mmrl.cli.checks import load_config
from mmrl.rewards.registry import default_name

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
BASES = {
    "demo.yaml": "the default demo (tested by tests/test_learning.py and tests/test_cli.py)",
    "grounding.yaml": "shared grounding setup (SFT on exact boxes → GRPO) that paper recipes extend",
    "rotation_base.yaml": "shared rotation-puzzle setup that paper and algorithm recipes extend",
}
PAPERS = sorted(p for p in RECIPES.glob("*.yaml") if p.name not in BASES)
ARXIV = re.compile(r"arXiv:\d{4}\.\d{4,5}|no arXiv id")  # a (verified) arXiv id, or its absence said plainly
MAX_STEPS = 3  # a warm-up SFT step and two RL stages (pebr_r1)


def header(path: Path) -> str:
    """The comment block at the top of a recipe."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def field(text: str, key: str) -> str | None:
    """A header field: the `# Key:` line and its indented continuation lines, joined; None when absent."""
    m = re.search(rf"^# {key}:(.*(?:\n#(?: {{2,}}|\t).*)*)", text, re.MULTILINE)
    return " ".join(part.lstrip("#").strip() for part in m.group(1).splitlines()) if m else None


def two_steps(stages: list[config.StageConfig]) -> list[config.StageConfig]:
    """At most MAX_STEPS optimizer steps in all: the first stage and the last RL stage keep one step each (so the
    SFT → RL hand-over runs), the stages between them get none. Smoke blocks already stay within the budget."""
    if sum(s.steps for s in stages) <= MAX_STEPS:
        return stages
    rl = [i for i, s in enumerate(stages) if s.kind == "rl"]
    keep = {0, rl[-1]} if rl else {0}
    per = MAX_STEPS // len(keep)
    return [dataclasses.replace(s, steps=min(s.steps, per) if i in keep else 0) for i, s in enumerate(stages)]


def _merged_weights(trainer) -> dict:
    """The policy's weights as the base model's state dict (a LoRA adapter merged into a copy)."""
    policy = trainer.policy
    if policy.model is policy.hf:
        return policy.hf.state_dict()
    import copy

    return copy.deepcopy(policy.model).merge_and_unload().state_dict()


def test_there_are_paper_recipes():
    assert len(PAPERS) >= 20, [p.name for p in PAPERS]
    assert all((RECIPES / name).exists() for name in BASES), "a base recipe listed in BASES is gone"


@pytest.mark.parametrize("recipe", PAPERS, ids=lambda p: p.stem)
def test_recipe_header_and_full_config(recipe):
    """The header names the paper (its arXiv id, or "no arXiv id"), says what is partial, and gives both commands;
    the recipe without smoke validates, and its smoke block runs the offline zoo model for at most a few steps."""
    text = header(recipe)
    paper = field(text, "Paper")
    assert paper and ARXIV.search(paper), f"{recipe.name}: no '# Paper: <title>, arXiv:XXXX.XXXXX' header"
    assert "≈" not in paper and "verify" not in paper, f"{recipe.name}: an unverified citation: {paper}"
    for key in ("Reproduces", "Base", "For real", "Partial"):
        assert field(text, key), f"{recipe.name}: no '# {key}:' header field"
    rel = f"recipes/{recipe.name}"
    assert f"mmrl train {rel}" in text and f"mmrl train {rel} smoke=true" in text, f"{recipe.name}: commands"
    load_config(recipe)  # the full recipe validates (registry names, presets, extra passes, data sources)
    smoke = load_config(recipe, ["smoke=true"])
    assert smoke.model.path.startswith("zoo:"), f"{recipe.name}: smoke must use the offline zoo model"
    assert sum(s.steps for s in smoke.stages) <= MAX_STEPS, f"{recipe.name}: smoke runs more than {MAX_STEPS} steps"
    assert smoke.trainer.prompts_per_step <= 4 and smoke.rollout.group_size <= 4
    assert smoke.rollout.max_new_tokens <= (40 if smoke.rollout.tools else 8)  # a tool recipe: a call, its result


def test_every_recipe_is_in_the_readme():
    readme = (RECIPES / "README.md").read_text()
    missing = [p.name for p in PAPERS if f"recipes/{p.name}" not in readme and f"({p.name})" not in readme]
    assert not missing, f"recipes missing from recipes/README.md: {missing}"
    linked = set(re.findall(r"\]\(([\w./-]+\.yaml)\)", readme))
    gone = [name for name in linked if not (RECIPES / name).exists()]
    assert not gone, f"recipes/README.md links to recipes that do not exist: {gone}"


@pytest.mark.parametrize("recipe", PAPERS, ids=lambda p: p.stem)
def test_recipe_smoke_trains(recipe, tmp_path, zoo_cache):
    """`smoke=true` trains in-process on the tiny model: every logged metric finite, a step with a gradient, the
    weights moved, and every reward that pays into the total logged."""
    from mmrl.train.trainer import Trainer

    run_dir = tmp_path / "run"
    cfg = load_config(recipe, ["smoke=true", f"run.dir={run_dir}", "run.progress=false"])
    cfg.stages = two_steps(cfg.stages)
    trainer = Trainer(cfg, log=lambda *a: None)
    before = {k: v.detach().clone() for k, v in _merged_weights(trainer).items()}
    summary = trainer.run()

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/stage" in r]
    assert len(trained) == sum(s.steps for s in cfg.stages)
    bad = {k: v for r in trained for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, f"{recipe.name}: metrics not finite: {bad}"
    # something trained: a step with a gradient moved the weights (LoRA: merged into the base at the end)
    assert any(r.get("actor/grad_norm", 0.0) > 0 for r in trained), f"{recipe.name}: no step had a gradient"
    after = _merged_weights(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{recipe.name}: the weights never changed"
    rl_names = {s.name for s in cfg.stages if s.kind == "rl"}
    rl = [r for r in trained if r["train/stage"] in rl_names]
    assert rl, f"{recipe.name}: no RL step ran"
    assert all(math.isfinite(r["reward/total/mean"]) for r in rl)
    assert "eval_after" in summary and summary["eval_after"]["eval/n"] > 0
    seen = {k for r in rl for k in r} | {f"reward/{k[5:]}/mean" for k in summary["eval_after"] if k.startswith("eval/")}
    # every reward that pays into the total (weight ≠ 0) was computed on this task; zero-weight monitors (e.g.
    # `reasoning_consistency`, None without a <think> block) may have had nothing to score on an untrained model
    paid = [r.name or default_name(r.fn) for r in cfg.rewards if r.weight != 0]
    missing = [n for n in paid if f"reward/{n}/mean" not in seen]
    assert not missing, f"{recipe.name}: rewards never scored: {missing}"
