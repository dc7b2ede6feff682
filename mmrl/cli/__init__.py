"""`mmrl` command line: train, eval, zoo, export, data, plot, list (see README.md).

Exit status: 0 success, 2 invalid configuration or usage (before any model loads), 1 other errors (bad data,
missing model directory), each with a one-line message naming the key, sample or file at fault.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmrl.cli.recipes import DEFAULT_RECIPE, bundled_recipes, resolve_recipe


def _quiet_hub() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads: zoo models or local directories only
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(code: int, message: str) -> int:
    print(f"mmrl: error: {message}", file=sys.stderr)
    return code


def cmd_train(args) -> int:
    from mmrl import config
    from mmrl.cli.checks import load_config

    recipe = args.recipe
    overrides = list(args.overrides)
    if recipe and "=" in recipe and not Path(recipe).exists():  # `mmrl train key=value` without a recipe
        overrides.insert(0, recipe)
        recipe = None
    recipe = recipe or (str(DEFAULT_RECIPE) if DEFAULT_RECIPE.exists() else None)
    try:
        recipe = resolve_recipe(recipe) if recipe else None
        cfg = load_config(recipe, overrides)
    except (config.ConfigError, ValueError) as e:
        return _fail(2, str(e))
    _quiet_hub()
    from mmrl.errors import BadSampleError, CheckpointError
    from mmrl.model.loading import ModelLoadError
    from mmrl.train.rundir import check_run_dir
    from mmrl.train.trainer import Trainer

    try:
        check_run_dir(cfg)  # in seconds, before the model loads
        summary = Trainer(cfg).run()
        _leave_process_group()
    except config.ConfigError as e:  # e.g. a run directory that holds a run
        return _fail(2, str(e))
    except (BadSampleError, CheckpointError, ModelLoadError, FileNotFoundError) as e:  # e.g. a full disk
        return _fail(1, str(e))
    except KeyboardInterrupt as e:  # Ctrl-C: after a safe-point checkpoint (Interrupted), or a second Ctrl-C
        saved = getattr(e, "saved", None)
        again = " ".join(["mmrl train", recipe or "", *[o for o in overrides if not o.startswith("resume=")],
                          "resume=auto"])
        what = f"checkpoint saved: {saved}" if saved else "the last checkpoint (if any) is intact"
        print(f"\nmmrl: interrupted; {what}. Continue with:\n  {' '.join(again.split())}", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":  # several processes: rank 0 reports
        return 0
    before, after = summary.get("eval_before", {}), summary.get("eval_after", {})
    print("held-out (greedy):")
    for key in sorted(set(before) | set(after)):
        if key == "eval/n":
            continue
        b, a = before.get(key), after.get(key)
        shown = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731  (a run without RL has no "before")
        print(f"  {key:28s} before {shown(b):>6}   after {shown(a):>6}")
    print(f"run directory: {cfg.run_dir}")
    return 0


def _leave_process_group() -> None:
    """After a run of several processes: wait for every rank, then tear the process group down, so no rank exits
    while another still uses it (gloo's threads would abort the process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cmd_eval(args) -> int:
    from mmrl import config
    from mmrl.errors import CheckpointError
    from mmrl.cli.evaluation import EvalError, run_eval
    from mmrl.model.loading import ModelLoadError

    _quiet_hub()
    try:
        report = run_eval(args.source, data=args.data, task=args.task, n=args.n, overrides=args.overrides,
                          out=args.out, k=args.k, temperature=args.temperature, correct=args.correct)
    except config.ConfigError as e:
        return _fail(2, str(e))
    except (EvalError, CheckpointError, FileNotFoundError, ModelLoadError) as e:
        return _fail(1, str(e))
    print("greedy:")
    for k, v in report["metrics"].items():
        print(f"  {k:28s} {v:.4f}" if isinstance(v, float) else f"  {k:28s} {v}")
    if "sampled" in report:
        print(f"sampled (k={args.k}, T={args.temperature:g}):")
        for k, v in report["sampled"].items():
            print(f"  {k:28s} {v:.4f}" if isinstance(v, float) else f"  {k:28s} {v}")
    print(f"report: {report['path']}")
    return 0


def _first_line(obj) -> str:
    """The first sentence of `obj`'s docstring, on one line."""
    import re

    paragraph = " ".join((getattr(obj, "__doc__", None) or "").strip().split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s", paragraph, maxsplit=1)[0]


def _recipes() -> list[tuple[str, str]]:
    import yaml

    out = []
    for name, path in bundled_recipes().items():
        data = yaml.safe_load(path.read_text()) or {}
        out.append((name, str(data.get("description", "")) if isinstance(data, dict) else ""))
    return out


def _rewards() -> list[tuple[str, str]]:
    from mmrl.rewards.registry import REWARDS

    return [(n, _first_line(REWARDS.get(n))) for n in REWARDS.names()]


def _presets() -> list[tuple[str, str]]:
    from mmrl.algorithms import PRESETS

    keys = ("baseline", "scale", "policy_loss", "aggregation", "kl_coef", "group_filter")
    return [(n, ", ".join(f"{k}={v}" for k, v in PRESETS.get(n).items() if k in keys)) for n in PRESETS.names()]


def _tasks() -> list[tuple[str, str]]:
    from mmrl.datasets.synthetic import TASKS

    return [(n, _first_line(TASKS.get(n).draw)) for n in TASKS.names()]


def _zoo() -> list[tuple[str, str]]:
    from mmrl.model import zoo

    return [(fam, "sizes: tiny, small") for fam in zoo.families()]


LISTS = {"recipes": _recipes, "rewards": _rewards, "presets": _presets, "tasks": _tasks, "zoo": _zoo}


def listing(kind: str) -> list[tuple[str, str]]:
    """(name, one line) for each bundled recipe, registered reward, algorithm preset, synthetic task or zoo family."""
    return LISTS[kind]()


def cmd_list(args) -> int:
    rows = listing(args.kind)
    width = max((len(n) for n, _ in rows), default=0)
    for name, line in rows:
        print(f"{name:{width}s}  {line}".rstrip())
    return 0


def cmd_zoo(args) -> int:
    from mmrl.model import zoo

    _quiet_hub()
    if args.zoo_cmd == "list":
        for fam in zoo.families():
            print(fam, "(sizes: tiny, small)")
        return 0
    try:
        out = zoo.build(args.name, args.dir)
    except ValueError as e:
        return _fail(2, str(e))
    print(out)
    return 0


def cmd_export(args) -> int:
    from mmrl.errors import CheckpointError
    from mmrl.cli.evaluation import EvalError
    from mmrl.cli.export import export
    from mmrl.model.loading import ModelLoadError

    _quiet_hub()
    try:
        out = export(args.source, args.out, merge_lora=args.merge_lora)
    except (EvalError, CheckpointError, FileNotFoundError, ValueError, ModelLoadError) as e:
        return _fail(1, str(e))
    print(out)
    return 0


def _options(pairs: list[str]) -> dict:
    """`--option KEY=VALUE` pairs → {key: yaml.safe_load(VALUE)} ("3" → 3, "[1, 2]" → [1, 2], "all" → "all")."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {pair!r} is not KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--option {pair!r}: the value is not valid YAML ({exc})") from None
    return out


FOLDER_OPTIONS = ("grid",)  # from_folder keywords that --option may set (the rest have their own flags)


def cmd_data(args) -> int:
    from mmrl.datasets.jsonl import write_jsonl
    from mmrl.datasets.synthetic import TASKS, make
    from mmrl.registry import UnknownNameError, closest

    try:
        options = _options(args.option or [])
    except ValueError as e:
        return _fail(2, str(e))
    if args.images:  # puzzles from a folder of real images
        from mmrl.datasets.folder import PUZZLES, from_folder
        from mmrl.errors import BadSampleError

        if args.task not in PUZZLES:
            return _fail(2, f"--images makes {', '.join(sorted(PUZZLES))} puzzles, not {args.task!r}")
        for key in options:
            if key not in FOLDER_OPTIONS:
                hint = closest(key, FOLDER_OPTIONS)
                extra = f"; did you mean {hint!r}?" if hint else ""
                return _fail(2, f"folder puzzles have no option {key!r}{extra} (valid: {', '.join(FOLDER_OPTIONS)})")
        try:
            samples, skipped = from_folder(args.task, args.images, seed=args.seed, per_image=args.per_image,
                                           size=args.size, on_bad_sample=args.on_bad_sample, **options)
        except (FileNotFoundError, BadSampleError) as e:
            return _fail(1, str(e))
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
        if not samples:
            return _fail(1, f"no usable image in {args.images} ({len(skipped)} skipped)")
        print(write_jsonl(samples, args.out))
        print(f"{len(samples)} samples, {len(skipped)} files skipped", file=sys.stderr)
        return 0
    try:
        TASKS.get(args.task)
        samples = make(args.task, args.n, seed=args.seed, split=args.split, **options)
    except (UnknownNameError, TypeError, ValueError) as e:  # unknown task or option, bad option value
        return _fail(2, str(e))
    print(write_jsonl(samples, args.out))
    return 0


def cmd_plot(args) -> int:
    from mmrl.train.plots import COMPARE_METRICS, plot_compare, plot_run

    for d in args.run_dir:
        if not (Path(d) / "metrics.jsonl").exists():
            return _fail(1, f"{d} has no metrics.jsonl")
    if len(args.run_dir) == 1 and args.out is None:
        for p in plot_run(args.run_dir[0]):
            print(p)
        return 0
    if args.out is None:
        return _fail(2, "comparing several runs needs --out FILE.png")
    try:
        print(plot_compare(args.run_dir, args.out, tuple(args.metric or COMPARE_METRICS)))
    except ValueError as exc:
        return _fail(1, str(exc))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmrl", description="RL post-training of vision-language models")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train from a recipe (default: recipes/demo.yaml)")
    t.add_argument("recipe", nargs="?", help="recipe YAML, or a bundled recipe's name (`mmrl list recipes`)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-4 smoke=true")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run directory, checkpoint or model directory")
    e.add_argument("source")
    e.add_argument("--data", help="JSONL file to evaluate on")
    e.add_argument("--task", help="synthetic task to evaluate on")
    e.add_argument("--n", type=int, default=None, help="number of synthetic samples")
    e.add_argument("--out", default=None, help="report folder (default: SOURCE_RUN/eval/NAME)")
    e.add_argument("--k", type=int, default=0, help="also sample each prompt K times: avg@K, pass@K, pass@1")
    e.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for --k")
    e.add_argument("--correct", default=None,
                   help="reward NAME that decides correctness for pass@k (default: the total reward)")
    e.add_argument("overrides", nargs="*")
    e.set_defaults(fn=cmd_eval)

    z = sub.add_parser("zoo", help="offline tiny model zoo")
    zs = z.add_subparsers(dest="zoo_cmd", required=True)
    zb = zs.add_parser("build", help="build NAME (e.g. qwen2_vl, qwen2_5_vl-small) into DIR")
    zb.add_argument("name")
    zb.add_argument("dir")
    zs.add_parser("list", help="list the families")
    z.set_defaults(fn=cmd_zoo)

    x = sub.add_parser("export", help="export a run/checkpoint to a from_pretrained directory")
    x.add_argument("source")
    x.add_argument("out")
    x.add_argument("--merge-lora", action="store_true", help="merge LoRA adapters into the base weights")
    x.set_defaults(fn=cmd_export)

    d = sub.add_parser("data", help="datasets")
    ds = d.add_subparsers(dest="data_cmd", required=True)
    dm = ds.add_parser("make", help="write a synthetic dataset as JSONL + images")
    dm.add_argument("task")
    dm.add_argument("--n", type=int, default=100)
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--split", default="train")
    dm.add_argument("--out", required=True)
    dm.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a task option (repeatable; VALUE is YAML), e.g. --option targets=all "
                         "--option 'distractors=[2, 4]'; unknown keys fail with the valid ones")
    dm.add_argument("--images", help="a folder of images: make rotation / jigsaw / position puzzles from them")
    dm.add_argument("--per-image", type=int, default=1, help="puzzles per image (--images)")
    dm.add_argument("--size", type=int, default=112, help="longer side of each picture in pixels (--images)")
    dm.add_argument("--on-bad-sample", choices=("skip", "raise"), default="skip",
                    help="an unreadable or too small image: report and skip it, or stop (--images)")
    d.set_defaults(fn=cmd_data)

    li = sub.add_parser("list", help="list bundled recipes, rewards, algorithm presets, synthetic tasks or zoo models")
    li.add_argument("kind", choices=list(LISTS))
    li.set_defaults(fn=cmd_list)

    p = sub.add_parser("plot", help="draw a run's curves into RUN_DIR/plots, or compare runs into --out")
    p.add_argument("run_dir", nargs="+")
    p.add_argument("--out", help="comparison figure (PNG) of all given runs")
    p.add_argument("--metric", action="append", help="a metric to compare (repeatable; default: eval/accuracy, "
                   "reward/total/mean, actor/entropy)")
    p.set_defaults(fn=cmd_plot)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # `mmrl list rewards | head`: the reader left
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
