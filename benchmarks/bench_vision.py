"""Benchmark vision once per prompt (`mmrl.model.vision_once`): one update micro-batch's forward + backward with G
completions per prompt, the vision tower encoding each prompt's media once (shared) or once per row (per-row).

    python benchmarks/bench_vision.py                          # zoo:qwen2_vl, 2 prompts x G 8, 224 px images
    python benchmarks/bench_vision.py --model zoo:qwen2_vl-small --size 448 --device cuda

Both ways run in the same process on the same rows after a warm-up of each; time is the median of `--repeats`
alternating calls. Prints one JSON line: the two medians (s), their ratio (shared / per-row), the pixel rows the
vision tower encoded each way, and the largest log-prob difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:qwen2_vl")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="image width and height in pixels")
    ap.add_argument("--tokens", type=int, default=64, help="completion tokens per row")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    from mmrl.config import ModelConfig
    from mmrl.datasets.synthetic import make
    from mmrl.model.policy import Policy
    from mmrl.runtime import Runtime, autocast_dtype

    cfg = ModelConfig(path=args.model, freeze_vision=False, dtype=args.dtype, packing="never")
    policy = Policy.load(cfg, runtime=Runtime(torch.device(args.device), autocast_dtype=autocast_dtype(cfg.autocast)))
    samples = make("grounding", args.prompts, seed=0, width=args.size, height=args.size)
    prompts = [policy.encode(s) for s in samples]
    rows = [p for p in prompts for _ in range(args.group)]  # [B*G]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(20, 200, (len(rows), args.tokens), generator=gen).to(policy.device)  # [B*G, C]
    mask = torch.ones_like(ids)
    tower = getattr(policy.hf.model, "visual", None) or policy.hf.model.vision_tower
    encoded = {"rows": 0}
    hook = tower.register_forward_pre_hook(lambda m, a: encoded.__setitem__("rows", encoded["rows"] + a[0].shape[0]))

    def step(share: bool):
        policy.model.zero_grad(set_to_none=True)
        sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        batch = policy.collate(rows, share_vision=share)
        logp, ent = policy.completion_logprobs(batch, ids, mask, with_entropy=True)
        (logp.sum() + 0.01 * ent.sum()).backward()
        sync()
        return time.perf_counter() - t0, logp.detach()

    times: dict[bool, list[float]] = {True: [], False: []}
    logps = {}
    for share in (False, True):
        step(share)  # warm-up
    for _ in range(args.repeats):
        for share in (False, True):
            encoded["rows"] = 0
            t, logps[share] = step(share)
            times[share].append(t)
            logps[(share, "rows")] = encoded["rows"]
    hook.remove()
    shared, per_row = statistics.median(times[True]), statistics.median(times[False])
    print(json.dumps({"model": args.model, "device": args.device, "B": args.prompts, "G": args.group,
                      "image_px": args.size, "tokens": args.tokens, "shared_s": round(shared, 4),
                      "per_row_s": round(per_row, 4), "ratio": round(shared / per_row, 3),
                      "pixel_rows_shared": logps[(True, "rows")], "pixel_rows_per_row": logps[(False, "rows")],
                      "max_logp_diff": float((logps[True] - logps[False]).abs().max())}))


if __name__ == "__main__":
    main()
