"""Residual blocks of the VidTok encoder and decoder.

The per-level body of every VidTok model is factorised: a 2D block run frame by frame, then a 1D block run along
time at every pixel (`SpatialTemporalBlock`). Full 3D blocks appear only in the middle of the network.
Each block is norm → SiLU → conv → norm → SiLU → dropout → conv, plus a shortcut (a 1×1 conv when the channel
count changes). No timestep embedding: VidTok's `temb_ch` is always 0.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vidtok.kernels.fast_conv import FastConv2d, FastConv3d

from .causal_conv import CausalConv1d, CausalConv3d, TimePadMode, conv1d_over_time
from .normalization import make_norm, norm_silu
from .recompute import recomputable
from .reshape import batch_to_time, time_to_batch


class _Residual(nn.Module):
    """Shared forward of the residual blocks; subclasses create norm1/conv1/norm2/conv2/(nin_shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, use_checkpoint: bool):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dropout = nn.Dropout(dropout)
        self.use_checkpoint = use_checkpoint

    def _conv(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv(x)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        h = self._conv(self.conv1, norm_silu(self.norm1, x))
        h = self._conv(self.conv2, self.dropout(norm_silu(self.norm2, h)))
        if self.in_channels != self.out_channels:
            x = self._conv(self.nin_shortcut, x)
        # in inference in place: h is the conv's fresh output; in training the selective checkpoint keeps h
        return h + x if torch.is_grad_enabled() else h.add_(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recomputable(self.training, self._body, x, whole=self.use_checkpoint)


class ResnetBlock2D(_Residual):
    """Per-frame block on `[N, C, H, W]` (N = B·T)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, dropout: float = 0.0, norm_type: str = "layernorm",
        use_checkpoint: bool = False,
    ):
        super().__init__(in_channels, out_channels, dropout, use_checkpoint)
        self.norm1 = make_norm(in_channels, norm_type)
        self.conv1 = FastConv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = make_norm(out_channels, norm_type)
        self.conv2 = FastConv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)


class ResnetBlock1D(_Residual):
    """Temporal block on `[B, C, T, H, W]`: kernel-3 convs along time only, causal or centred.

    The second conv starts at zero (`zero_init`), so a fresh temporal block is the identity and the
    factorised body starts as a per-frame image network.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, causal: bool, dropout: float = 0.0,
        norm_type: str = "layernorm", zero_init: bool = True, use_checkpoint: bool = False,
        time_pad_mode: TimePadMode = "constant",
    ):
        super().__init__(in_channels, out_channels, dropout, use_checkpoint)
        scope = "frame" if causal else "pixel"
        self.norm1 = make_norm(in_channels, norm_type, scope)
        self.conv1 = _temporal_conv(in_channels, out_channels, 3, causal, time_pad_mode)
        self.norm2 = make_norm(out_channels, norm_type, scope)
        self.conv2 = _temporal_conv(out_channels, out_channels, 3, causal, time_pad_mode)
        if in_channels != out_channels:
            self.nin_shortcut = _temporal_conv(in_channels, out_channels, 1, causal, time_pad_mode)
        if zero_init:
            last = self.conv2.conv if causal else self.conv2
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def _conv(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv(x) if isinstance(conv, CausalConv1d) else conv1d_over_time(conv, x)


def _temporal_conv(cin: int, cout: int, k: int, causal: bool, time_pad_mode: TimePadMode) -> nn.Module:
    if causal:
        return CausalConv1d(cin, cout, k, time_pad_mode=time_pad_mode)
    return nn.Conv1d(cin, cout, k, padding=k // 2)


class ResnetBlock3D(_Residual):
    """Full 3D block on `[B, C, T, H, W]` (the middle of the network). Causal: causal convs and per-frame norms;
    non-causal: centred 3×3×3 convs and clip-wide norms."""

    def __init__(
        self, in_channels: int, out_channels: int, *, causal: bool, dropout: float = 0.0,
        norm_type: str = "layernorm", use_checkpoint: bool = False, time_pad_mode: TimePadMode = "constant",
    ):
        super().__init__(in_channels, out_channels, dropout, use_checkpoint)
        scope = "frame" if causal else "clip"
        self.norm1 = make_norm(in_channels, norm_type, scope)
        self.conv1 = make_conv3d(in_channels, out_channels, 3, causal, time_pad_mode)
        self.norm2 = make_norm(out_channels, norm_type, scope)
        self.conv2 = make_conv3d(out_channels, out_channels, 3, causal, time_pad_mode)
        if in_channels != out_channels:
            self.nin_shortcut = make_conv3d(in_channels, out_channels, 1, causal, time_pad_mode)


def make_conv3d(
    cin: int,
    cout: int,
    k: int,
    causal: bool,
    time_pad_mode: TimePadMode = "constant",
    stride: int | tuple[int, int, int] = 1,
) -> nn.Module:
    """A k×k×k conv with 'same' output size: causal (`CausalConv3d`, key infix `.conv.`) or centred (`nn.Conv3d`)."""
    if causal:
        return CausalConv3d(cin, cout, k, stride=stride, time_pad_mode=time_pad_mode)
    return (FastConv3d if k > 1 else nn.Conv3d)(cin, cout, k, stride=stride, padding=k // 2)


def spatial_temporal(x: torch.Tensor, spatial: ResnetBlock2D, temporal: ResnetBlock1D) -> torch.Tensor:
    """The factorised block: `spatial` on every frame, then `temporal` along time. `[B, C, T, H, W]` in and out.

    In training the pair is one recomputed region: the temporal block's input, the spatial block's output, is then
    recomputed in the backward pass instead of kept."""
    return recomputable(spatial.training, partial(_spatial_then_temporal, spatial, temporal), x,
                        whole=spatial.use_checkpoint)


def _spatial_then_temporal(spatial: ResnetBlock2D, temporal: ResnetBlock1D, x: torch.Tensor) -> torch.Tensor:
    x = batch_to_time(spatial(time_to_batch(x)), x.shape[0])  # [B*T, C, H, W] -> [B, C, T, H, W]
    return temporal(x)


def factorised_level(h: torch.Tensor, level: nn.Module, temporal_level: nn.Module, resampler: str,
                     spatial_resample: bool, temporal_resample: bool) -> torch.Tensor:
    """One level of the encoder or decoder on `[B, C, T, H, W]`: its factorised blocks (`level.block` with
    `temporal_level.block`), then, where the level resamples, the spatial resampler (`level.<resampler>`, frame by
    frame) and the temporal one after it (`temporal_level.<resampler>`)."""
    for spatial, temporal in zip(level.block, temporal_level.block, strict=True):
        h = spatial_temporal(h, spatial, temporal)
    if spatial_resample:
        h = batch_to_time(getattr(level, resampler)(time_to_batch(h)), h.shape[0])
        if temporal_resample:
            h = getattr(temporal_level, resampler)(h)
    return h
