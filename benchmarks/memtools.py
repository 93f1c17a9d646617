"""Peak resident memory on Linux for the benchmarks (no vidtok import, so a benchmark's child process can measure
another checkout's code)."""

from __future__ import annotations

import ctypes
import math
import re


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field_name}:\s+(\d+)", f.read(), re.M).group(1))


def rss_mib() -> float:
    """The resident set now (MiB)."""
    return _status_kib("VmRSS") / 1024


def return_freed_memory() -> bool:
    """Make glibc give freed blocks of 1 MiB and more back to the OS at once. By default its mmap threshold grows
    with every large free, after which freed tensors stay resident and a later peak of another implementation
    would reuse them unseen; a fixed threshold keeps the resident set equal to live memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    return (
        bool(libc.mallopt(m_mmap_max, 65536))  # glibc's default, in case GLIBC_TUNABLES turned mmap off
        and bool(libc.mallopt(m_mmap_threshold, 1 << 20))
        and bool(libc.mallopt(m_trim_threshold, 1 << 20))
    )


def peak_rss_resettable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak resident memory (MiB) while the block runs, via Linux's peak-RSS reset (`clear_refs` 5): `peak` is the
    whole process's, `mib` the rise above the level at entry."""

    def __enter__(self) -> PeakMemory:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start = _status_kib("VmRSS")
        self.mib = self.peak = math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_kib("VmHWM")
        self.mib = (hwm - self.start) / 1024
        self.peak = hwm / 1024
