"""The memory layout the networks run in, and the two frame↔batch reshapes every VidTok block uses.

Activations are kept channels-last (`[B, C, T, H, W]` stored as B, T, H, W, C). On CPU that makes the per-frame
2D layers' `time_to_batch` a view instead of a copy, lets LayerNorm over channels run without a transposed copy,
and runs oneDNN's k×1×1 temporal convolutions and 2D convolutions faster than on channels-first tensors. The
3×3×3 convolutions off the Winograd path in CPU inference are the exception (see `FastConv3d`). Shapes and values
do not depend on the layout.
"""

from __future__ import annotations

import torch


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` (4D or 5D) stored channels-last; `x` itself when it already is."""
    return x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)


def layout_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format to give a new tensor derived from `x`: channels-last if `x` is, else contiguous."""
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def time_to_batch(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, T, H, W]` -> `[B*T, C, H, W]`, so 2D layers run on each frame (a view for channels-last `x`)."""
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def batch_to_time(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`[B*T, C, H, W]` -> `[B, C, T, H, W]`, the inverse of `time_to_batch`."""
    N, C, H, W = x.shape
    return x.reshape(batch_size, N // batch_size, C, H, W).transpose(1, 2)
