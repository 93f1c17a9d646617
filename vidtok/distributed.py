"""What vidtok's multi-process jobs (training, encode-dataset) do across ranks beyond Lightning: gather a Python
value and leave the process group in order."""

from __future__ import annotations

from typing import Any

import torch


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather(value: Any) -> list[Any]:
    """`value` from every rank, in rank order (just `[value]` in one process)."""
    if not _initialized():
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def leave_process_group() -> None:
    """Wait for every rank, then destroy the process group. Lightning destroys only NCCL groups at exit; a gloo group
    left to interpreter shutdown can be torn down while another rank still talks to it, and the process then aborts
    ("terminate called without an active exception", exit -6) after its work is done."""
    if _initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
