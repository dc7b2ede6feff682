"""Per-token cost of the hf engine's sampler at Qwen-VL's vocabulary: before and after device-side randomness.

    python benchmarks/bench_sampler.py [--n 256] [--vocab 151936] [--device cpu|cuda] [--tokens 64] [--json OUT]

Both sides sample the same [N, V] fp32 logits at temperature 1 (no top-k / top-p) and record the pick's log-prob,
timed the same way (median of `--reps` calls after a warm-up, `cuda.synchronize` around each on a GPU):

- **before** — the sampler as it was: one `torch.Generator` per row, `torch.rand(V)` drawn per row per token on
  the host, stacked, copied to the logits' device, Gumbel-max (argmax of logits + Gumbel noise);
- **after** — `mmrl.rollout.hf.Sampler`: one Philox uniform per row per token (all positions computed on the
  device once per `generate`, reported separately and amortised over `--tokens` tokens into the per-token
  figure), inverse-CDF draw with a float64 cumulative sum.

Asymmetry named: "before" draws V numbers per row, "after" one; both include the log-softmax and the gather.
Prints a table and, with `--json`, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mmrl.rollout.hf import Sampler
from mmrl.rollout.types import SamplingParams, row_seed


class GumbelHostSampler:
    """The previous sampler's draw (the baseline): per-row host generators, Gumbel-max on the logits' device."""

    def __init__(self, row_seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(s) for s in row_seeds]
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float().clone()  # [N, V]
        logp = torch.log_softmax(scores, dim=-1)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators]).to(scores.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))  # [N, V]
        noisy = scores + gumbel
        pick = noisy.argmax(dim=-1)
        self.logprobs.append(logp.gather(1, pick[:, None]).squeeze(1))
        return noisy


def _time(fn, reps: int, device: torch.device) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    once()  # warm-up
    return statistics.median(once() for _ in range(reps))


def measure(n: int, vocab: int, device: torch.device, tokens: int, reps: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    scores = (torch.randn(n, vocab, generator=gen, device="cpu") * 3).to(device)  # [N, V]
    prompt = torch.zeros(n, 8, dtype=torch.long, device=device)
    seeds = [row_seed(0, 0, f"p{i // 8}", i % 8) for i in range(n)]
    params = SamplingParams(max_new_tokens=tokens)
    setup = _time(lambda: Sampler(params, seeds, [], 8, device), reps, device)  # uniforms for every position
    after = Sampler(params, seeds, [], 8, device)
    before = GumbelHostSampler(seeds)
    t_after = _time(lambda: after(prompt, scores), reps, device)
    t_before = _time(lambda: before(prompt, scores), reps, device)
    per_token_after = t_after + setup / tokens
    return {"n": n, "vocab": vocab, "device": str(device), "tokens": tokens,
            "before_ms": 1e3 * t_before, "after_ms": 1e3 * per_token_after, "after_setup_ms": 1e3 * setup,
            "speedup": t_before / per_token_after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=64, help="completion length the setup cost is spread over")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    row = measure(args.n, args.vocab, torch.device(args.device), args.tokens, args.reps)
    print("| rows N | vocab V | device | before (host Gumbel) ms/token | after (device Philox) ms/token "
          "| after: setup per generate ms | before / after |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {row['n']} | {row['vocab']} | {row['device']} | {row['before_ms']:.1f} | {row['after_ms']:.1f} "
          f"| {row['after_setup_ms']:.2f} | {row['speedup']:.2f}× |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
