"""What keeps a plug-in's worker process in bounds: it dies with the trainer, its memory is capped, and its end is
reported as the exit code or signal it really had. Used by `mmrl.plugins.process`'s worker (the first two run
in the worker, before the plug-in is imported).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_POLL_S = 0.2


def die_with_parent(parent_pid: int, *, pdeathsig: bool) -> None:
    """Exit when the trainer process `parent_pid` ends, however it ends (SIGKILL too), even while the plug-in hangs.

    - Everywhere: a daemon thread polls `os.getppid()` and ends the process once the worker has been re-parented.
      It cannot run while the plug-in holds the GIL in C code (a catastrophic regex inside `re` does).
    - Linux, `pdeathsig`: `prctl(PR_SET_PDEATHSIG, SIGKILL)` has the kernel kill the worker, GIL or not. The kernel
      sends it when the *thread* that started the worker ends, so the caller asks for it only when that thread
      is the trainer's main thread (which lasts as long as the process); a worker restarted from a pool thread
      relies on the poll alone.
    """
    if pdeathsig and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc prctl: the poll still runs
            ulong = ctypes.c_ulong
            ctypes.CDLL(None, use_errno=True).prctl(
                ctypes.c_int(_PR_SET_PDEATHSIG), ulong(signal.SIGKILL), ulong(0), ulong(0), ulong(0))
    if os.getppid() != parent_pid:  # the trainer ended before this worker got here
        os._exit(1)

    def poll() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=poll, name="mmrl-parent-watch", daemon=True).start()


def data_memory() -> int | None:
    """Bytes of this process's data memory as RLIMIT_DATA counts it (`VmData`), or None where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError):
        return None


def cap_memory(memory_mb: int | None) -> bool:
    """Limit this process's data memory to what it holds now plus `memory_mb` MB; whether a cap was set.

    RLIMIT_DATA (Linux ≥ 4.7) counts the heap, private writable mappings and thread stacks, not mapped shared
    libraries: an allocation past it fails at once with MemoryError, while importing torch (≈3.4 GB of address
    space, ≈0.9 GB of data) still works. RLIMIT_AS would count the libraries' address space and fail such
    imports below ≈4 GB. What the worker holds at start (Python and mmrl's imports, ≈0.2 GB, more on machines with
    many cores: OpenBLAS sizes its buffers per core) is not counted against the cap. Only the soft limit is set:
    a guard against accidents, not against a plug-in that raises it. Elsewhere (no /proc): no cap, returns False.
    """
    if memory_mb is None:
        return False
    held = data_memory()
    try:
        import resource
    except ImportError:
        return False
    if held is None:
        return False
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = held + memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return True


def exit_text(code: int | None) -> str:
    """`exit code 3`, `killed by signal 9 (SIGKILL)` (multiprocessing's negative exit codes), `exit status unknown`."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"
