"""glibc malloc settings for the backward pass of CPU training (`vidtok.training.allocator`), checked in child
processes: the settings are process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# 48 MiB tensors freed inside the block and after it, and a 96 MiB one (above the heap's limit) inside: did the
# resident set keep each?
_PROBE = """
import re, torch
from vidtok.training.allocator import heap_backed
def rss_mib():
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmRSS:\\s+(\\d+)", f.read(), re.M).group(1)) / 1024
start = rss_mib()
with heap_backed() as applied:
    big = torch.ones(24 << 20)
    del big
    kept_big = rss_mib() - start > 32
    x = torch.ones(12 << 20)
    del x
    kept_inside = rss_mib() - start > 32
kept_after_block = rss_mib() - start > 32
y = torch.ones(12 << 20)
del y
kept_after_free = rss_mib() - start > 32
print(applied, kept_big, kept_inside, kept_after_block, kept_after_free)
"""


def _probe(**env_update: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "VIDTOK_MALLOC_TUNING"} | env_update
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_the_heap_keeps_freed_blocks_inside_the_block_and_returns_them_after() -> None:
    # inside: a freed 48 MiB block stays resident for the next allocation, a 96 MiB one is unmapped as before;
    # after: the heap's free pages are back with the OS and large blocks are mapped and unmapped again
    assert _probe() == "True False True False False"
    assert _probe(VIDTOK_MALLOC_TUNING="0") == "False False False False False"


# six freed 4 MiB tensors, after glibc has raised its mmap threshold past them: did the resident set keep them?
_SMALL_BLOCKS_PROBE = """
import re, sys, torch
from contextlib import nullcontext
from vidtok.training.allocator import memory_first
def rss_mib():
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmRSS:\\s+(\\d+)", f.read(), re.M).group(1)) / 1024
del_me = torch.ones(4 << 20)  # a mapped 16 MiB block: freeing it raises glibc's mmap threshold to 16 MiB
del del_me
with memory_first() if sys.argv[1] == "on" else nullcontext():
    start = rss_mib()
    blocks = [torch.ones(1 << 20) for _ in range(6)]
    del blocks
    print(rss_mib() - start > 16)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_memory_first_gives_freed_megabyte_blocks_back_at_once() -> None:
    def kept(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", _SMALL_BLOCKS_PROBE, mode], capture_output=True, text=True,
                              check=True)
        return done.stdout.strip()

    assert kept("off") == "True"
    assert kept("on") == "False"
