"""glibc's malloc settings for CPU training: the backward pass serves its activation-sized temporaries from the heap,
where the next one reuses the memory, instead of fresh mappings (`heap_backed`); with `use_checkpoint`, which puts
memory first, the step instead gives freed blocks back at once (`memory_first`). `VIDTOK_MALLOC_TUNING=0` turns both
off.

Why: glibc maps every block above its mmap threshold (which it raises to at most 32 MiB) afresh and unmaps it on
free, and the kernel zero-fills a fresh mapping one 4 KiB page fault at a time. The backward pass allocates and frees
hundreds of activation-sized tensors (recomputed norms and SiLUs, gradients; a 128-channel activation of 17×64² is
40 MiB): a SiLU writing a fresh 40 MiB tensor took 15-40 ms against 3 ms into memory already mapped, and about a
sixth of a training step's CPU time went to the kernel.

What the heap keeps it does not give back until the end of the block, so the heap takes blocks up to
`HEAP_BLOCK_MIB` only: with no limit, at 17×128² (168 MiB activations) the freed blocks the heap could not reuse
raised the peak by 0.8 GiB, and by 4.5 GiB with `use_checkpoint`, whose recomputed regions are all temporaries. The
forward pass keeps the mappings: the activations it stores live until the backward pass frees them, and in the heap
they left holes that raised the peak by about 1 GiB at 17×64². After the block the heap's free pages go back to the
OS, so they do not sit under the next forward pass's peak.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc's own dynamic thresholds once they have grown to their limit, which is where a training process is
_DEFAULT_MMAP_THRESHOLD, _DEFAULT_TRIM_THRESHOLD = 32 << 20, 64 << 20
_NEVER = 2**31 - 1  # mallopt takes an int
HEAP_BLOCK_MIB = 64

ENV = "VIDTOK_MALLOC_TUNING"


def _libc() -> ctypes.CDLL | None:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def _thresholds(mmap_bytes: int, trim_bytes: int) -> Iterator[bool]:
    """glibc's mmap and trim thresholds set inside the block; on leaving, glibc's usual values come back and the
    heap's free pages are returned to the OS. Yields whether the setting is in force."""
    libc = _libc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def heap_backed() -> AbstractContextManager[bool]:
    """Inside the block glibc serves blocks up to `HEAP_BLOCK_MIB` from its heap and keeps what is freed; on leaving,
    the heap's free pages are returned to the OS. Yields whether the setting is in force (not off glibc, nor with
    `VIDTOK_MALLOC_TUNING=0`)."""
    return _thresholds(HEAP_BLOCK_MIB << 20, _NEVER)


def memory_first() -> AbstractContextManager[bool]:
    """Inside the block glibc maps blocks of 1 MiB and more afresh and gives back at once what is freed, so the
    resident set follows live memory instead of glibc's high-water mark (for `use_checkpoint`)."""
    return _thresholds(1 << 20, 1 << 20)
