"""`mmrl export SOURCE OUT [--merge-lora]`: write a directory that `from_pretrained` loads.

- full mode: the trained weights + processor (`AutoModelForImageTextToText.from_pretrained(OUT)`).
- lora mode with `--merge-lora`: adapters merged into the base → a plain model directory.
- lora mode without it: the peft adapter (`adapter_config.json` + `adapter_model.safetensors`) + processor;
  load with `PeftModel.from_pretrained(base, OUT)`. Runs whose earlier stages merged an adapter into the base
  (SFT → RL) need `--merge-lora`, since a single adapter cannot express two stacked ones.
"""

from __future__ import annotations

from pathlib import Path

from mmrl.cli.evaluation import EvalError, load_policy


def export(source: str, out: str, *, merge_lora: bool = False) -> Path:
    policy, cfg, ck = load_policy(source)
    out_dir = Path(out)
    lora = cfg.model.mode == "lora"
    if lora and not merge_lora and policy.merged_adapters:  # refused before anything is written
        raise EvalError(f"{source}: earlier stages merged adapters into the base; export with --merge-lora")
    out_dir.mkdir(parents=True, exist_ok=True)
    if lora:
        model = policy.model.merge_and_unload() if merge_lora else policy.model
        model.save_pretrained(out_dir)
    else:
        policy.hf.save_pretrained(out_dir)
    policy.processor.save_pretrained(out_dir)
    return out_dir
