"""vidtok.distributed on 2 gloo processes: `gather` returns every rank's value in rank order, and
`leave_process_group` leaves no process group behind (left to interpreter exit, gloo can abort a finished process)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vidtok.distributed import gather, leave_process_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    values = gather({"rank": rank, "square": rank * rank})
    leave_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"values": values, "initialized": dist.is_initialized()}))


def test_gather_and_leave_on_two_gloo_processes(tmp_path: Path) -> None:
    mp.spawn(rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["values"] == [{"rank": 0, "square": 0}, {"rank": 1, "square": 1}]
        assert result["initialized"] is False


def test_one_process_needs_no_process_group() -> None:
    assert not dist.is_initialized()
    assert gather(torch.tensor(3).item()) == [3]
    leave_process_group()  # a no-op without a group
    assert not dist.is_initialized()
