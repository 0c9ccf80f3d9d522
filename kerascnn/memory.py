"""This process's memory: what it holds, what the machine still has, and handing freed pages back.

Used between the steps that each build and drop a large object (tuner trials, export artifacts), so the
next step starts from what the process really needs and a step that would not fit is known beforehand.
"""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path


def return_freed_memory() -> None:
    """Collect garbage, then hand freed heap pages back to the system (glibc's malloc_trim), so memory freed
    by one step does not stay in the process's resident size as fragmentation; the trim is a no-op without
    glibc."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_mib() -> tuple[float | None, float]:
    """(resident memory now, peak resident memory) of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        status = Path("/proc/self/status").read_text()
        now = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        now = None
    return now, peak


def available_bytes() -> int | None:
    """The memory the kernel says can still be given to programs without swapping (MemAvailable), or None
    where /proc/meminfo does not say."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:")) * 1024
    except (OSError, StopIteration, ValueError):
        return None
