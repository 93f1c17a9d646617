"""The two frame↔batch reshapes every VidTok block uses, named once."""

from __future__ import annotations

import torch


def time_to_batch(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, T, H, W]` -> `[B*T, C, H, W]`, so 2D layers run on each frame."""
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def batch_to_time(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`[B*T, C, H, W]` -> `[B, C, T, H, W]`, the inverse of `time_to_batch`."""
    N, C, H, W = x.shape
    return x.reshape(batch_size, N // batch_size, C, H, W).transpose(1, 2)
