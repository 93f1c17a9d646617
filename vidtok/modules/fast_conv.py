"""Convolutions with 3×3 spatial kernels that pick their CPU algorithm; same parameters and keys as `nn.Conv2d` /
`nn.Conv3d`, so checkpoints are unaffected.

Inference in fp32 on CPU runs Winograd F(4×4, 3×3) (`winograd.py`) where the layer has enough output pixels to
repay transforming its weights on every call (the transformed weights are 4× the weight's size, too much to keep for
a 157M-parameter model); everything else, training and `torch.compile` included, runs PyTorch's direct convolution.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from .reshape import channels_last
from .winograd import winograd_applies, winograd_conv

# below this many output pixels per frame tap the weight transform costs more than Winograd saves
MIN_WINOGRAD_PIXELS = 1024


_winograd_enabled: ContextVar[bool] = ContextVar("vidtok_winograd", default=True)


@contextmanager
def direct_convs() -> Iterator[None]:
    """Run every conv with PyTorch's direct kernel inside this block: results rounded as the original's are (to
    compare bit-for-bit with it, or to count a model's FLOPs as a direct convolution computes them)."""
    token = _winograd_enabled.set(False)
    try:
        yield
    finally:
        _winograd_enabled.reset(token)


def _use_winograd(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> bool:
    # under torch.compile the direct conv: the banded Python loop would unroll into a huge graph
    return (
        _winograd_enabled.get()
        and not torch.compiler.is_compiling()
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

    Off the Winograd path it convolves a channels-first copy: for 3×3×3 kernels with the model's 256 and 512
    channels, oneDNN on a 2-core AVX2 CPU ran 10–30 % faster on channels-first tensors than on the channels-last
    ones the rest of the network uses (e.g. 256 channels, 20×128²: 7.8 s against 8.7 s).
    """

    def takes_channels_last(self, x: torch.Tensor) -> bool:
        """Whether `forward(x)` reads `x` as it is (channels-last), so callers need not make a channels-first copy."""
        return _use_winograd(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_channels_last(x):
            return channels_last(super().forward(x.contiguous()))
        frames = x.shape[2] + 2 * self.padding[0] - self.kernel_size[0] + 1
        out = x.new_empty(x.shape[0], frames, *x.shape[3:], self.out_channels)
        for b in range(x.shape[0]):
            winograd_conv(x[b].permute(1, 2, 3, 0), self.weight, self.bias, time_pad=self.padding[0], out=out[b])
        return out.permute(0, 4, 1, 2, 3)
