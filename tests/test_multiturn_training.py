"""Multi-turn trajectories through the trainer (issue 19 item 3, `rollout.tools`): the log-prob passes score a
trajectory's policy tokens exactly as they were sampled (observation tokens and tool images in the same forward,
padded and packed), and a training step with tools that raise, hang, return garbage or oversized images runs,
shows the policy the errors and counts them.

The random zoo model writes random text, so the tests use a call format it writes by chance: any vowel is a call
(`<letter>` → a tool), and a turn ends at its first vowel — trajectories of several turns with real sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.rollout.tool_engine import ToolEngine
from mmrl.rollout.types import SamplingParams, concat_rollouts, select_groups
from mmrl.tools.run import Tool
from mmrl.tools.toolbox import Toolbox
from mmrl.train.rows import logprob_pass
from tests.multiturn_helpers import STOPS, VOWELS, look

@pytest.fixture(scope="module")
def policy(zoo_cache):
    return Policy.load(ModelConfig(path="zoo:qwen2_vl"))


def _engine(policy, max_turns=3):
    return ToolEngine(policy, Toolbox([Tool("look", look)], VOWELS), max_turns=max_turns, stops=STOPS)


def test_log_prob_passes_score_trajectories_as_they_were_sampled(policy):
    prompts = [policy.encode(s) for s in make("grounding", 3, seed=4, width=70, height=42)]
    ro = _engine(policy).generate(prompts, 2, SamplingParams(max_new_tokens=120, seed=1), batch_prompts=2)
    turns = [t["turns"] for t in ro.columns["trajectory"]]
    images = [int(m["image_grid_thw"].shape[0]) if m else 0 for m in ro.observed.media]
    assert max(turns) >= 2 and len(set(images)) >= 2, (turns, images)  # several turns; rows with 0, 1, 2+ images
    mask = ro.completion_mask.bool()
    assert (ro.observed.present.bool() | ~mask).all() and (ro.observed.present.sum(1) > mask.sum(1)).any()
    assert ro.texts == [t["turn_texts"][-1] for t in ro.columns["trajectory"]]
    for packing in ("never", "always"):
        policy.cfg.packing = packing
        try:
            logp = logprob_pass(policy, prompts, ro, micro=4, temperature=1.0)  # [N, C]
        finally:
            policy.cfg.packing = "auto"
        assert torch.allclose(logp[mask], ro.sampling_logprobs[mask], atol=1e-4), packing
        assert (logp[~mask] == 0).all()
    # the record survives the trainer's selections and concatenation (filters, refills) with its observations
    sub = select_groups(ro, [2, 0])
    both = concat_rollouts([sub, select_groups(ro, [1])], [0, 3])
    assert [int(m["image_grid_thw"].shape[0]) if m else 0 for m in both.observed.media] == \
        [images[i] for i in (4, 5, 0, 1, 2, 3)]
    logp = logprob_pass(policy, prompts + prompts, both, micro=3, temperature=1.0)
    assert torch.allclose(logp[both.completion_mask.bool()], both.sampling_logprobs[both.completion_mask.bool()],
                          atol=1e-4)


FAULTY = '''
import os, time

def look(arguments, state, marker):
    """`a` raises, `e` hangs once (then answers), `i` returns garbage, `o` an image past the pixel limit."""
    letter = arguments["letter"]
    if letter == "a":
        raise RuntimeError("the tool broke")
    if letter == "e" and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(60)
    if letter == "i":
        return {"not": "a result"}
    if letter == "o":
        return Image.new("RGB", (4000, 4000))
    return "fine"
'''


@pytest.mark.integration
def test_a_training_step_contains_failing_tools(tmp_path, tiny):
    plugin = tmp_path / "faulty.py"
    plugin.write_text(FAULTY)
    marker = tmp_path / "hung"
    tools = f"[{{fn: '{plugin}:look', name: look, timeout_s: 2.0, kwargs: {{marker: '{marker}'}}}}]"
    cfg = tiny(tmp_path / "run", f"rollout.tools={tools}", "rollout.tool_format={pattern: '(?P<letter>[aeiou])', "
               "tool: look}", f"rollout.tool_stops=[{', '.join(STOPS)}]", "rollout.max_turns=3",
               "rollout.max_new_tokens=40", "rollout.turn_cap=penalize",
               "stages=[{name: rl, kind: rl, steps: 2}]", "trainer.eval_every=0")
    from mmrl.train.trainer import Trainer

    trainer = Trainer(cfg, log=lambda *a: None)
    try:
        trainer.run()
    finally:
        trainer.engine.close()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r.get("train/stage") == "rl"]
    assert len(rl) == 2 and all(torch.isfinite(torch.tensor(r["actor/loss"])) for r in rl)
    total = lambda key: sum(r.get(key, 0.0) for r in rl)  # noqa: E731
    assert total("tool/look/calls") > 0 and total("tool/look/errors") > 0 and total("tool/look/timeouts") == 1
    assert all(r["rollout/turns_mean"] >= 1 for r in rl) and total("rollout/call_error_frac") > 0
    logged = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    seen = [c["text"] for r in logged for c in r["trajectory"]["calls"]]
    assert any("the tool broke" in t for t in seen)  # the policy saw the error as its observation
    capped = [r for r in logged if r["finish_reason"] == "max_turns"]
    assert all(r["reward"] <= sum(v or 0 for v in r["components"].values()) - 1.0 + 1e-6 for r in capped)


def test_tool_settings_are_checked_before_anything_loads():
    from mmrl.cli.checks import load_config
    from mmrl.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(None, ["rollout.tools=[{fn: zoom_inn}]", "rollout.tool_format=boxes", "algorithm.replay_capacity=4",
                           "rollout.max_turns=0", "model.image_min_pixels=5000", "model.image_max_pixels=3136"])
    text = str(e.value)
    for line in ("rollout.tools[0].fn", "zoom_in", "rollout.tool_format: unknown tool call format 'boxes'",
                 "rollout.max_turns", "rollout.tools: multi-turn rollouts run without extra passes, rehearsal or replay",
                 "model.image_min_pixels: must be <= model.image_max_pixels"):
        assert line in text, line


def test_tool_rewards_need_tools():
    from mmrl.cli.checks import load_config
    from mmrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"rewards\[0\]\.fn: reward 'tool_grounding' scores tool calls and needs"):
        load_config(None, ["rewards=[{fn: tool_grounding}]"])
    load_config(None, ["rewards=[{fn: tool_grounding}]", "rollout.tools=[{fn: region}]", "rollout.tool_format=region"])


def test_a_tool_image_cap_needs_tools_on_the_hf_engine():
    from mmrl.cli.checks import load_config
    from mmrl.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.tool_image_max_pixels: sizes the images tools return"):
        load_config(None, ["rollout.tool_image_max_pixels=12544"])
    tools = ["rollout.tools=[{fn: region}]", "rollout.tool_format=region", "rollout.tool_image_max_pixels=12544"]
    with pytest.raises(ConfigError, match="run on the hf engine only"):
        load_config(None, tools + ["rollout.engine=vllm"])
    with pytest.raises(ConfigError, match=r"must be >= model.image_min_pixels \(20000\)"):
        load_config(None, tools + ["model.image_min_pixels=20000"])
    assert load_config(None, tools).rollout.tool_image_max_pixels == 12544


def test_the_image_pixel_cap_reaches_prompts_and_tool_images(zoo_cache):
    from mmrl.tools.types import ImageLimits

    small = Policy.load(ModelConfig(path="zoo:qwen2_vl", image_max_pixels=56 * 56))
    prompt = small.encode(make("grounding", 1, seed=0, width=224, height=224)[0])
    assert prompt.tensors["image_grid_thw"].tolist() == [[1, 4, 4]]  # 224² shown at 56²: 2 × 2 merged tokens
    assert (prompt.geometry[0].proc_w, prompt.geometry[0].proc_h) == (56, 56)
    assert ImageLimits.from_processor(small.processor, small.convention).max_pixels == 56 * 56


@pytest.mark.vllm
@pytest.mark.integration
def test_training_steps_with_tools_on_vllm_score_what_vllm_sampled(tmp_path, tiny):
    """`rollout.engine=vllm` with tools: vLLM samples every turn (the observations' images as multimodal data), the
    trainer scores the whole conversation in one forward, and the two agree on every policy token, every step."""
    plugin = Path(__file__).parent / "multiturn_helpers.py"
    cfg = tiny(tmp_path / "run", f"rollout.tools=[{{fn: '{plugin}:look', name: look, isolate: never}}]",
               "rollout.tool_format={pattern: '(?P<letter>[aeiou])', tool: look}",
               f"rollout.tool_stops=[{', '.join(STOPS)}]", "rollout.max_turns=3", "rollout.max_new_tokens=40",
               "rollout.engine=vllm", "rollout.vllm_gpu_memory_utilization=0.02",
               "stages=[{name: rl, kind: rl, steps: 2}]", "trainer.eval_every=0")
    from mmrl.train.trainer import Trainer

    Trainer(cfg, log=lambda *a: None).run()
    rl = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r.get("train/stage") == "rl"]
    assert len(rl) == 2 and all(r["rollout/turns_mean"] > 1 and r["tool/look/calls"] > 0 for r in rl)
    assert max(r["rollout/logprob_gap_max"] for r in rl) <= 1e-4  # the trainer scored what vLLM sampled


def test_tool_images_take_their_own_pixel_cap(zoo_cache):
    """`rollout.tool_image_max_pixels`: the overview under the prompts' cap (56²), the crop under the tools' (112²) —
    shown closer than the overview it came from — with its box still in the original's pixels, and the trainer
    scoring the trajectory as the loop ran it."""
    from mmrl.config import ToolConfig

    small = Policy.load(ModelConfig(path="zoo:qwen2_vl", image_max_pixels=56 * 56))
    prompts = [small.encode(s) for s in make("zoom", 2, seed=3)]
    grids = {}
    for cap in (None, 112 * 112):
        toolbox = Toolbox.from_configs([ToolConfig(fn="region", kwargs={"caption": False})], "region")
        engine = ToolEngine(small, toolbox, max_turns=2, tool_image_max_pixels=cap)
        ro = engine.scripted(prompts, [["<region>2</region>", "<answer>90</answer>"]] * 2)
        engine.close()
        grids[cap] = [m["image_grid_thw"].tolist() for m in ro.observed.media]
        assert [c["calls"][0]["box"] for c in ro.columns["trajectory"]] == [[112.0, 0.0, 224.0, 112.0]] * 2
        mask = ro.completion_mask.bool()
        logp = logprob_pass(small, prompts, ro, micro=2, temperature=1.0)
        assert torch.allclose(logp[mask], ro.sampling_logprobs[mask], atol=1e-4), cap
    assert [p.tensors["image_grid_thw"].tolist() for p in prompts] == [[[1, 4, 4]]] * 2  # the overview: 56²
    assert grids[None] == [[[1, 4, 4]]] * 2  # a 112-px region at the prompts' cap: 56² as well
    assert grids[112 * 112] == [[[1, 8, 8]]] * 2  # at the tools' cap: its own 112² pixels
    with pytest.raises(ValueError, match="hf loop only"):
        ToolEngine(small, Toolbox.from_configs([ToolConfig(fn="region")], "region"), vllm=object(),
                   tool_image_max_pixels=112 * 112)


def test_a_call_in_the_last_turn_is_listed_not_run(zoo_cache):
    """A call written in the last allowed turn reaches the reward column (a per-call penalty counts it) as never
    run, and the metrics do not count it as a failed call."""
    from mmrl.config import ToolConfig
    from mmrl.rollout.tool_engine import NOT_RUN, trajectory_metrics

    small = Policy.load(ModelConfig(path="zoo:qwen2_vl", image_max_pixels=56 * 56))
    prompts = [small.encode(s) for s in make("zoom", 1, seed=3)]
    toolbox = Toolbox.from_configs([ToolConfig(fn="region", kwargs={"caption": False})], "region")
    engine = ToolEngine(small, toolbox, max_turns=1)
    ro = engine.scripted(prompts[:1], [["<region>3</region>"]])
    engine.close()
    (traj,) = ro.columns["trajectory"]
    assert traj["finish_reason"] == "max_turns" and ro.observed.media == [{}]
    assert traj["calls"] == [{"tool": "region", "arguments": {"region": 3}, "error": NOT_RUN, "reward": None,
                              "box": None, "origin": None, "text": "", "views": []}]
    metrics = trajectory_metrics([traj], ["max_turns"])
    assert metrics["rollout/calls_mean"] == 1.0 and metrics["rollout/call_error_frac"] == 0.0


def test_turn_rewards_credit_the_call_turns_only(zoo_cache):
    """`algorithm.turn_rewards` (MT-GRPO's turn-level credit): the grounding reward's advantage, normalised in its
    group apart from the outcome's, lands on the call turn's tokens; the answer's tokens get the outcome advantage
    only; a trajectory that made no call gets both on its one turn."""
    import dataclasses

    from mmrl.cli.checks import load_config
    from mmrl.config import ToolConfig
    from mmrl.train.build import build_terms
    from mmrl.train.rl_step import RLStep, TrainBatch, call_turns
    from mmrl.train.scoring import Scorer
    from tests.conftest import REPO

    small = Policy.load(ModelConfig(path="zoo:qwen2_vl", image_max_pixels=56 * 56))
    (sample,) = make("zoom", 1, seed=3)
    q, angle = sample.answer["region"], sample.answer["angle"]
    prompts = [small.encode(sample)] * 4  # one group of 4
    engine = ToolEngine(small, Toolbox.from_configs([ToolConfig(fn="region", kwargs={"caption": False})], "region"),
                        max_turns=2)
    ro = engine.scripted(prompts, [[f"<region>{q}</region>", f"<answer>{angle}</answer>"],  # right region, right
                                   [f"<region>{q % 4 + 1}</region>", f"<answer>{angle}</answer>"],  # wrong region
                                   [f"<region>{q}</region>", f"<answer>{(angle + 90) % 360}</answer>"],  # wrong angle
                                   [f"<answer>{angle}</answer>"]])  # no call
    engine.close()
    ro = dataclasses.replace(ro, group_size=4)
    overrides = ["algorithm.turn_rewards=[right_region]"]
    cfg = load_config(REPO / "recipes" / "thinking_with_images.yaml", overrides)
    scorer = Scorer(build_terms(cfg.rewards, "rewards"), 10)
    scored = scorer.score(ro, prompts, 0)
    assert scored.rewards["right_region"] == [1.0, 0.0, 1.0, 0.0] and scored.rewards["accuracy"] == [1, 1, 0, 1]
    step = RLStep(cfg, policy=None, engine=None, scorer=scorer, batches=None, optim=None, progress=None)
    adv = step.advantages(TrainBatch(prompts, scored), scored).rollouts.advantages  # [4, C]
    # outcome r = accuracy + 0.1 format = [1.1, 1.1, 0.1, 1.1]: Â = [0.5, 0.5, -1.5, 0.5]; turn r = [1, 0, 1, 0]:
    # Â = ±√3/2 (group mean and Bessel-corrected std)
    a_out, a_turn = torch.tensor([0.5, 0.5, -1.5, 0.5]), torch.tensor([1.0, -1.0, 1.0, -1.0]) * 3 ** 0.5 / 2
    calls = call_turns(scored)
    policy_tokens = scored.completion_mask.bool()
    for i in range(4):
        first = policy_tokens[i] & calls[i]
        rest = policy_tokens[i] & ~calls[i]
        assert first.sum() > 0 and (rest.sum() > 0) == (i < 3), i  # the no-call row is all one turn
        assert torch.allclose(adv[i][first], a_out[i] + a_turn[i], atol=1e-5), i
        assert torch.allclose(adv[i][rest], a_out[i].expand(int(rest.sum())), atol=1e-5), i
        if i < 3:  # the call turn is the tokens before the crop; the answer's follow it
            last_obs = int((scored.observed.present[i].bool() & ~policy_tokens[i]).nonzero().max())
            assert int(first.nonzero().max()) < last_obs < int(rest.nonzero().min()), i
    # without turn rewards: one advantage per completion, of the whole total [2.1, 1.1, 1.1, 1.1]
    plain = RLStep(load_config(REPO / "recipes" / "thinking_with_images.yaml"), policy=None, engine=None,
                   scorer=scorer, batches=None, optim=None, progress=None)
    assert torch.allclose(plain.advantages(TrainBatch(prompts, scored), scored).rollouts.advantages,
                          torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)


def test_turn_rewards_are_checked():
    from mmrl.cli.checks import load_config
    from mmrl.config import ConfigError
    from tests.conftest import REPO

    with pytest.raises(ConfigError, match="algorithm.turn_rewards: credits the turns that call a tool and needs"):
        load_config(None, ["algorithm.turn_rewards=[format]"])
    recipe = REPO / "recipes" / "thinking_with_images.yaml"
    with pytest.raises(ConfigError, match=r"algorithm.turn_rewards: \['grounding'\] are not adding rewards of rewards"):
        load_config(recipe, ["algorithm.turn_rewards=[grounding]"])
    with pytest.raises(ConfigError, match="every reward of rewards is a turn reward"):
        load_config(recipe, ["algorithm.turn_rewards=[accuracy, format, right_region]"])
