"""The runtime boundary: where tensors live, which processes take part, autocast, and who computes which rows.

One `Runtime` is built per run from `runtime.device` and `model.autocast` (and, under torchrun, the launcher's
environment). Everything the step computes with lives on `runtime.device`: the model, the KL reference, optimizer
state and every batch tensor (collated prompts, completion ids and masks, sampling / old / reference log-probs,
rewards, advantages). What stays on the host (`HOST`) is named as such: processed prompts (`PromptInputs`, the
processor's output, moved once per collate), the rollouts' `prompt_index` (Python bookkeeping), seeded CPU
generators' draws (data order, mini-batch splits; their results are moved), and checkpoint files. Texts for
rewards and metric floats cross once per step.

Devices (`runtime.device`):
- `auto`: `cuda:LOCAL_RANK` when CUDA is available, else the CPU;
- `cpu`; `cuda` (= `cuda:LOCAL_RANK`); `cuda:N`.

Processes: under torchrun (`WORLD_SIZE` > 1, or any torchrun launch) the process joins one process group —
NCCL when the device is CUDA, gloo on the CPU — and `dist` says which rank it is (`mmrl.train.distributed`). Row
sharding (`rows`) gives each rank a contiguous block of a batch's rows, padded with `None` (zero-weight rows) so
every rank runs the same number of passes; collectives (`sum`, `gather_rows`) run on device tensors.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

HOST = torch.device("cpu")  # where host-side tensors are made on purpose (named at every such constructor)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine."""


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, rank: int | None = None) -> torch.device:
    """`runtime.device` → a concrete device (see the module docstring); CUDA names fail clearly without CUDA."""
    if not DEVICE_PATTERN.match(name):
        raise DeviceError(f"runtime.device: {name!r} is not one of auto, cpu, cuda, cuda:N")
    rank = local_rank() if rank is None else rank
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return HOST
    if not torch.cuda.is_available():
        raise DeviceError(f"runtime.device={name}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); use runtime.device=cpu")
    index = rank if name in ("auto", "cuda") else int(name.split(":")[1])
    if name.startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) > 1 and index != rank:
        raise DeviceError(f"runtime.device={name}: with several processes each rank takes cuda:LOCAL_RANK (this one "
                          f"is {rank}); use runtime.device=cuda or auto, and CUDA_VISIBLE_DEVICES to pick GPUs")
    if index >= torch.cuda.device_count():
        raise DeviceError(f"runtime.device={name}: device cuda:{index} does not exist "
                          f"({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


def autocast_dtype(name: str) -> torch.dtype | None:
    """`model.autocast` → the dtype of log-prob forwards under autocast (None: no autocast)."""
    return torch.bfloat16 if name == "bfloat16" else None


def launched_by_torchrun() -> bool:
    """Whether a distributed launcher started this process (torchrun sets these even for one process)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


@dataclass
class Dist:
    rank: int
    size: int
    backend: str = "gloo"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def block(self, n: int) -> tuple[list[int], int]:
        """(this rank's contiguous rows of 0…n−1, how many padding rows it adds so every rank has ⌈n/K⌉)."""
        per = -(-n // self.size)
        lo, hi = min(self.rank * per, n), min((self.rank + 1) * per, n)
        return list(range(lo, hi)), per - (hi - lo)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (pickled; host objects: a device tensor would unpickle onto the
        sender's device)."""
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        torch.distributed.barrier()


def join(device: torch.device) -> Dist:
    """Join the process group torchrun describes: NCCL when this process computes on CUDA, gloo on the CPU."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Dist(dist.get_rank(), dist.get_world_size(), dist.get_backend())


@dataclass
class Runtime:
    """Device, process group, autocast and row sharding of one run (see the module docstring)."""

    device: torch.device = HOST
    dist: Any = None  # `Dist` when several processes (or torchrun) take part
    autocast_dtype: torch.dtype | None = None  # bf16 autocast of the log-prob forwards (`model.autocast`)

    @classmethod
    def create(cls, device: str = "auto", *, autocast: str = "none") -> "Runtime":
        """Resolve the device, join the process group when launched by torchrun, set the current CUDA device."""

        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist = join(dev) if launched_by_torchrun() else None
        return cls(dev, dist, autocast_dtype(autocast))

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory (rank 0, or the only process)."""
        return self.dist is None or self.dist.main

    @property
    def world(self) -> int:
        return 1 if self.dist is None else self.dist.size

    def autocast(self):
        """The autocast context of log-prob forwards (a no-op without `model.autocast`)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to(self, x):
        """A tensor, or a dict of tensors, on this runtime's device (other values unchanged)."""
        if isinstance(x, torch.Tensor):
            return x.to(self.device, non_blocking=True)
        if isinstance(x, dict):
            return {k: self.to(v) for k, v in x.items()}
        return x

    # ------------------------------------------------------------------------------------------ rows
    def rows(self, rows: list[int]) -> list[int | None]:
        """The rows this process computes: all of them in one process; across processes its contiguous block,
        padded with `None` (a zero-weight row) so every rank runs the same number of passes."""
        if self.dist is None:
            return list(rows)
        idx, pad = self.dist.block(len(rows))
        return [rows[i] for i in idx] + [None] * pad

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's block of `rows(range(n))` → the whole [n, …] (a device collective; one process: `local`).
        `local` has ⌈n / K⌉ rows on every rank (its padding rows last)."""
        if self.dist is None:
            return local[:n]
        parts = [torch.empty_like(local) for _ in range(self.dist.size)]
        torch.distributed.all_gather(parts, local.contiguous())
        return torch.cat(parts)[:n]

    # ----------------------------------------------------------------------------------- collectives
    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Element-wise sum over ranks of a dict of floats (same keys on every rank); one process: unchanged."""
        return self._reduce(values, "SUM")

    def max(self, values: dict[str, float]) -> dict[str, float]:
        """Element-wise maximum over ranks of a dict of floats (same keys on every rank)."""
        return self._reduce(values, "MAX")

    def _reduce(self, values: dict[str, float], op: str) -> dict[str, float]:
        if self.dist is None:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return dict(zip(keys, t.tolist()))

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def describe(self) -> str:
        where = str(self.device)
        if self.device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(self.device)})"
        if self.dist is not None:
            where += f" × {self.dist.size} processes ({self.dist.backend})"
        return where
