"""Convolutions that are causal in time: output frame t sees input frames <= t only.

The time axis is padded at the front with `dilation*(k-1) + 1 - stride` frames; the spatial axes are padded
symmetrically. What fills the front padding is the only difference between VidTok versions: zeros in v1.0
(`time_pad_mode="constant"`), copies of the first frame in v1.1 (`"replicate"`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vidtok.kernels.fast_conv import FastConv3d
from vidtok.kernels.time_conv import time_conv, time_conv_applies

from .reshape import channels_last, layout_of

TimePadMode = Literal["constant", "replicate"]


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return v if isinstance(v, tuple) else (v, v, v)


def pad_time_front(
    x: torch.Tensor, frames: int, mode: TimePadMode, memory_format: torch.memory_format | None = None
) -> torch.Tensor:
    """Prepend `frames` frames to the time axis (dim 2) of `x`: zeros, or copies of frame 0.

    The result is stored in `memory_format` (default: `x`'s own layout), so one copy both pads and changes layout.
    """
    if mode not in ("constant", "replicate"):
        raise ValueError(f"time padding mode must be 'constant' or 'replicate', got {mode!r}")
    if frames == 0:
        return x if memory_format is None else x.contiguous(memory_format=memory_format)
    shape = (*x.shape[:2], x.shape[2] + frames, *x.shape[3:])
    fmt = layout_of(x) if memory_format is None else memory_format
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, frames:] = x
    out[:, :, :frames] = 0 if mode == "constant" else x[:, :, :1]
    return out


class TimeBuffer:
    """Streaming state of one causal sliding-window op: the input frames that later windows still need.

    `rewind` > 0 keeps the state as it was before the last `rewind` input frames of each chunk: the original's
    overlapping chunked decode (`cache_offset`) recomputes those frames in the next chunk.
    """

    __slots__ = ("frames", "rewind")

    def __init__(self, rewind: int = 0) -> None:
        self.frames: torch.Tensor | None = None
        self.rewind = rewind


def causal_window(
    x: torch.Tensor,
    pad: int,
    extent: int,
    stride: int,
    mode: TimePadMode,
    buffer: TimeBuffer | None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """The input a causal op of time `extent` and `stride` should convolve without padding.

    Whole clip (`buffer` None): `x` with `pad` frames in front. Streaming: the previous chunks' unconsumed frames
    (or the front padding, at the start of the stream) followed by `x`, cut to whole windows; the frames the next
    windows need are kept in `buffer`. The result may have no frames; it is stored in `memory_format` if given.
    """
    if buffer is None:
        return pad_time_front(x, pad, mode, memory_format)
    if buffer.frames is None:
        if x.shape[2] == 0:
            return x
        x = pad_time_front(x, pad, mode)
    else:
        x = torch.cat([buffer.frames, x], dim=2)
    windows = _windows(x.shape[2], extent, stride)
    kept = x[:, :, : x.shape[2] - buffer.rewind]
    # a copy, so the buffer does not keep the whole chunk alive through a view
    buffer.frames = kept[:, :, _windows(kept.shape[2], extent, stride) * stride :].clone()
    x = x[:, :, : (windows - 1) * stride + extent] if windows else x[:, :, :0]
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


def _windows(length: int, extent: int, stride: int) -> int:
    return (length - extent) // stride + 1 if length >= extent else 0


def _no_frames(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x.new_zeros((x.shape[0], channels, 0, *x.shape[3:]))


class CausalConv3d(nn.Module):
    """3D convolution, causal in time. Input `[B, C, T, H, W]`; output has `ceil(T / stride_t)` frames."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        dilation: int | tuple[int, int, int] = 1,
        time_pad_mode: TimePadMode = "constant",
    ):
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        st, sh, sw = _triple(stride)
        dt, dh, dw = _triple(dilation)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial kernel sizes must be odd for symmetric padding, got {(kh, kw)}")
        if sh != 1 or sw != 1:
            raise ValueError(f"CausalConv3d pads space symmetrically and needs spatial stride 1, got {(sh, sw)}")
        self.time_pad = dt * (kt - 1) + (1 - st)
        self.time_extent = dt * (kt - 1) + 1
        self.time_pad_mode = time_pad_mode
        self.stream: TimeBuffer | None = None
        # symmetric spatial padding is the conv's own zero padding: no extra copy of the input
        conv_class = FastConv3d if (kh, kw) != (1, 1) else nn.Conv3d
        self.conv = conv_class(
            in_channels,
            out_channels,
            (kt, kh, kw),
            stride=(st, sh, sw),
            dilation=(dt, dh, dw),
            padding=(0, dh * (kh - 1) // 2, dw * (kw - 1) // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a conv that wants channels-first gets it from the padding copy, so it converts nothing itself
        fmt = None
        if isinstance(self.conv, FastConv3d) and not self.conv.takes_channels_last(x):
            fmt = torch.contiguous_format
        x = causal_window(x, self.time_pad, self.time_extent, self.conv.stride[0], self.time_pad_mode, self.stream, fmt)
        return self.conv(x) if x.shape[2] else _no_frames(x, self.conv.out_channels)


class CausalConv1d(nn.Module):
    """1D convolution over time, causal. Input `[N, C, T]`, or `[B, C, T, H, W]` where it runs on every pixel's
    time series without reshaping (the Conv1d weight is used as a `k×1×1` Conv3d kernel)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        time_pad_mode: TimePadMode = "constant",
    ):
        super().__init__()
        self.time_pad = dilation * (kernel_size - 1) + (1 - stride)
        self.time_extent = dilation * (kernel_size - 1) + 1
        self.time_pad_mode = time_pad_mode
        self.stream: TimeBuffer | None = None
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stream is None and x.ndim == 5 and self.conv.stride[0] == 1:
            return self._whole_clip(x)
        x = causal_window(x, self.time_pad, self.time_extent, self.conv.stride[0], self.time_pad_mode, self.stream)
        return conv1d_over_time(self.conv, x) if x.shape[2] else _no_frames(x, self.conv.out_channels)

    def _whole_clip(self, x: torch.Tensor) -> torch.Tensor:
        """The causal conv of a whole clip without a padded copy of it: `conv1d_over_time` reads the clip as if
        the padding were in front of it."""
        return channels_last(conv1d_over_time(self.conv, x, (self.time_pad, 0), self.time_pad_mode))


def conv1d_over_time(conv: nn.Conv1d, x: torch.Tensor, padding: tuple[int, int] | None = None,
                     front_mode: TimePadMode = "constant") -> torch.Tensor:
    """Apply `conv` along dim 2 of `[N, C, T]` or `[B, C, T, H, W]`, with its own padding or with `padding` =
    (front, back) frames: zeros at the back, zeros or copies of frame 0 (`front_mode`) in front."""
    front, back = (conv.padding[0],) * 2 if padding is None else padding
    if time_conv_applies(conv, x):
        return time_conv(x, conv.weight, conv.bias, front, back, front_mode == "replicate")
    if front != back and conv.stride[0] != 1:
        raise ValueError(f"uneven time padding {padding} needs a stride-1 conv, got stride {conv.stride[0]}")
    # PyTorch pads both ends alike: pad by the larger amount and drop the frames the other end added
    both = max(front, back)
    if x.ndim == 3:
        out = F.conv1d(x, conv.weight, conv.bias, conv.stride, both, conv.dilation)
    else:
        out = F.conv3d(x, conv.weight[..., None, None], conv.bias, stride=(conv.stride[0], 1, 1),
                       padding=(both, 0, 0), dilation=(conv.dilation[0], 1, 1))
    out = out[:, :, both - front : out.shape[2] - (both - back)]
    if front_mode == "replicate":
        # the taps that fell on the front padding get frame 0's contribution instead of zeros'
        k, d = conv.kernel_size[0], conv.dilation[0]
        for t in range(min(front, out.shape[2])):
            taps = [j for j in range(k) if t - front + j * d < 0]
            weight = conv.weight[:, :, taps].sum(dim=2)  # [C_out, C_in]
            out[:, :, t] += torch.einsum("oc,bc...->bo...", weight, x[:, :, 0])
    return out
