"""Device-strict execution for tests: what would misplace a tensor on a GPU, caught on a CPU-only machine.

On a GPU a tensor made without `device=` lands on the CPU, and the step then fails (or silently computes on the
CPU) far from the line that made it. These machines have no GPU, so the checks are made structural:

- `StrictDevices` is a `TorchFunctionMode`: every tensor factory (`torch.tensor`, `zeros`, `arange`, `randperm`,
  …) called from mmrl's own code without a `device=` is recorded with its file and line (third-party code is left
  alone: the processor's host tensors are moved by mmrl on purpose);
- `check_inputs(model, device)` adds a forward pre-hook that records every tensor input of the model that is not
  on the runtime's device (on a GPU machine this catches any host tensor reaching the model).

`python tests/strict_devices.py OUT.json -m mmrl train …` runs a command under both (e.g. one rank of torchrun)
and writes what it recorded to OUT.json.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

MMRL = str(Path(__file__).resolve().parent.parent / "mmrl")
TORCH = Path(torch.__file__).resolve().parent
DISPATCH = (str(TORCH / "overrides.py"), str(TORCH / "utils" / "_device.py"))  # function-mode machinery
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.linspace,
    torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
}


def _caller() -> tuple[str, int] | None:
    """(file, line) of the code that called the factory (past torch's function-mode dispatch), when it is in mmrl;
    None for third-party callers (torch's own library code included)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(DISPATCH):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.startswith(MMRL):
        return None
    return frame.f_code.co_filename[len(MMRL) - 4 :], frame.f_lineno


class StrictDevices(TorchFunctionMode):
    """Records (file, line, function) of every tensor factory mmrl calls without naming a device."""

    def __init__(self):
        super().__init__()
        self.violations: set[tuple[str, int, str]] = set()
        self.misplaced: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            where = _caller()
            if where is not None:
                self.violations.add((*where, func.__name__))
        return func(*args, **kwargs)

    def check_inputs(self, model: torch.nn.Module, device: torch.device):
        """A forward pre-hook on `model` recording any tensor input not on `device`; returns its handle."""
        want = torch.device(device)

        def hook(module, args, kwargs):
            for name, value in [*enumerate(args), *kwargs.items()]:
                if isinstance(value, torch.Tensor) and value.device != want:
                    self.misplaced.add(f"{type(module).__name__}.forward({name}) on {value.device}, not {want}")

        return model.register_forward_pre_hook(hook, with_kwargs=True)

    def report(self) -> list[str]:
        lines = [f"{f}:{line}: torch.{fn}(...) without device=" for f, line, fn in sorted(self.violations)]
        return lines + sorted(self.misplaced)


def _hook_every_model(strict: StrictDevices) -> None:
    """Check the inputs of every model a Trainer loads (used in subprocesses: `Policy.load` is wrapped)."""
    from mmrl.model.policy import Policy

    load = Policy.load.__func__

    def checked(cls, *args, **kwargs):
        policy = load(cls, *args, **kwargs)
        strict.check_inputs(policy.hf, policy.device)
        return policy

    Policy.load = classmethod(checked)


if __name__ == "__main__":  # python tests/strict_devices.py OUT.json -m mmrl train …
    out, rest = sys.argv[1], sys.argv[2:]
    assert rest[0] == "-m", "usage: strict_devices.py OUT.json -m MODULE ARGS…"
    strict = StrictDevices()
    _hook_every_model(strict)
    sys.argv = [rest[1], *rest[2:]]
    code = 0
    with strict:
        try:
            runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code or 0
    Path(f"{out}.{os.environ.get('RANK', '0')}").write_text(json.dumps(strict.report()))
    sys.exit(code)
