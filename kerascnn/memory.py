"""This process's memory: what it holds, what the machine still has, and handing freed pages back.

Used between the steps that each build and drop a large object (tuner trials, export artifacts), so the
next step starts from what the process really needs and a step that would not fit is known beforehand,
and by `kerascnn bench train` to measure what an epoch keeps.
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
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def memory_mib() -> tuple[float | None, float]:
    """(resident memory now, peak resident memory) of this process in MiB.

    The peak is the kernel's high-water mark of this program's own memory (VmHWM). `getrusage`'s
    ru_maxrss is only the fallback: a process started by another inherits that one's peak across exec,
    so a small child of a large parent would report the parent's."""
    now = _kib_field("/proc/self/status", "VmRSS:")
    peak = _kib_field("/proc/self/status", "VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    return (now / 1024 if now is not None else None), peak / 1024


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (malloc.h), every field a size_t."""
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def live_heap_mib() -> float | None:
    """MiB that malloc has handed out and not taken back, over all its arenas (glibc's mallinfo2: bytes in use
    in the arenas plus mmapped blocks; TensorFlow's CPU tensors come from it), or None without glibc 2.33+.

    Unlike the resident size it leaves out the freed pages malloc keeps for reuse, which differ by tens of MiB
    from run to run. Read with ctypes: no library exposes it."""
    mallinfo2 = _glibc_function("mallinfo2")
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def _glibc_function(name: str):
    """glibc's function `name` through ctypes, or None where the C library is not glibc or lacks it."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def available_bytes() -> int | None:
    """The memory the kernel says can still be given to programs without swapping (MemAvailable), or None
    where /proc/meminfo does not say."""
    available = _kib_field("/proc/meminfo", "MemAvailable:")
    return available * 1024 if available is not None else None


def _kib_field(path: str, key: str) -> int | None:
    """The kB figure on the line of /proc file `path` that starts with `key`, or None without one."""
    try:
        return next(int(line.split()[1]) for line in Path(path).read_text().splitlines() if line.startswith(key))
    except (OSError, StopIteration, ValueError):
        return None
