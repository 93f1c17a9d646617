"""Convolutions with 3×3 spatial kernels that pick their CPU algorithm; same parameters and keys as `nn.Conv2d` /
`nn.Conv3d`, so checkpoints are unaffected.

Inference in fp32 on CPU runs Winograd F(4×4, 3×3) (`winograd.py`) where the layer has enough output pixels to
repay transforming its weights on every call (the transformed weights are 4× the weight's size, too much to keep for
a 157M-parameter model); everything else, training, `torch.compile` and `torch.jit.trace` included, runs PyTorch's
direct convolution.

Two switches turn the Winograd path off: :func:`set_fast_convs` for the whole process, every thread included
(`VIDTOK_FAST_CONV=0` in the environment starts the process with it off), and the :func:`direct_convs` block for
the current thread (a context variable: threads started inside the block do not see it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from vidtok.modules.reshape import channels_last

from .winograd import winograd_applies, winograd_conv

# below this many output pixels per frame tap the weight transform costs more than Winograd saves
MIN_WINOGRAD_PIXELS = 1024


_winograd_enabled: ContextVar[bool] = ContextVar("vidtok_winograd", default=True)
# a plain global, not a context variable, so that threads started later (data loaders, servers) see it too
_process_enabled = os.environ.get("VIDTOK_FAST_CONV", "1").strip().lower() not in ("0", "false", "off", "no")


def set_fast_convs(enabled: bool) -> None:
    """Allow (the default) or forbid the Winograd path in every thread of the process, those already running and
    those started later; `VIDTOK_FAST_CONV=0` sets it off when vidtok is imported."""
    global _process_enabled
    _process_enabled = bool(enabled)


def fast_convs_enabled() -> bool:
    """Whether convs called from this thread may take the Winograd path: the process-wide switch is on and no
    :func:`direct_convs` block is open here."""
    return _process_enabled and _winograd_enabled.get()


@contextmanager
def direct_convs() -> Iterator[None]:
    """Run every conv of the current thread with PyTorch's direct kernel inside this block: results rounded as the
    original's are (to compare bit-for-bit with it, or to count a model's FLOPs as a direct convolution computes
    them). Threads started inside the block do not inherit it; :func:`set_fast_convs` reaches every thread."""
    token = _winograd_enabled.set(False)
    try:
        yield
    finally:
        _winograd_enabled.reset(token)


def _use_winograd(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> bool:
    # under torch.compile or torch.jit.trace the direct conv: the banded Python loop would unroll into a huge graph,
    # and a trace would freeze the band plan of one input size
    return (
        fast_convs_enabled()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and winograd_applies(conv, x)
        and x.numel() // x.shape[1] >= MIN_WINOGRAD_PIXELS  # output pixels per frame tap
    )


class FastConv2d(nn.Conv2d):
    """`nn.Conv2d` on `[N, C, H, W]` (N = B·T frames); returns channels-last on the Winograd path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _use_winograd(self, x):
            return super().forward(x)
        out = winograd_conv(x.permute(0, 2, 3, 1), self.weight, self.bias)
        return out.permute(0, 3, 1, 2)


class FastConv3d(nn.Conv3d):
    """`nn.Conv3d` with a k×3×3 kernel on `[B, C, T, H, W]`; returns channels-last.

    Off the Winograd path, in CPU inference, it convolves a channels-first copy: for 3×3×3 kernels with the model's
    256 and 512 channels, oneDNN on a 2-core AVX2 CPU ran 10–30 % faster on channels-first tensors than on the
    channels-last ones the rest of the network uses (e.g. 256 channels, 20×128²: 7.8 s against 8.7 s). In training
    the copies, and their counterparts in the backward pass, cost more than that (a 256-channel causal conv on
    17×32², forward and backward: 2.12 s with the copies, 1.89 s without), and on other devices the trade was never
    measured, so there the conv reads the channels-last input as it is.
    """

    def takes_channels_last(self, x: torch.Tensor) -> bool:
        """Whether `forward(x)` reads `x` as it is (channels-last), so callers need not make a channels-first copy."""
        return x.device.type != "cpu" or torch.is_grad_enabled() or _use_winograd(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_channels_last(x):
            return channels_last(super().forward(x.contiguous()))
        if not _use_winograd(self, x):
            return channels_last(super().forward(x))
        frames = x.shape[2] + 2 * self.padding[0] - self.kernel_size[0] + 1
        out = x.new_empty(x.shape[0], frames, *x.shape[3:], self.out_channels)
        for b in range(x.shape[0]):
            winograd_conv(x[b].permute(1, 2, 3, 0), self.weight, self.bias, time_pad=self.padding[0], out=out[b])
        return out.permute(0, 4, 1, 2, 3)
