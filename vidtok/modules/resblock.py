"""Residual blocks of the VidTok encoder and decoder.

The per-level body of every VidTok model is factorised: a 2D block run frame by frame, then a 1D block run along
time at every pixel (`SpatialTemporalBlock`). Full 3D blocks appear only in the middle of the network.
Each block is norm → SiLU → conv → norm → SiLU → dropout → conv, plus a shortcut (a 1×1 conv when the channel
count changes). No timestep embedding: VidTok's `temb_ch` is always 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from vidtok.kernels.fast_conv import FastConv2d, FastConv3d

from .causal_conv import CausalConv1d, CausalConv3d, TimePadMode, conv1d_over_time
from .normalization import make_norm, norm_silu
from .reshape import batch_to_time, time_to_batch

# Training keeps only what is costly to recompute. Autograd would keep, for every norm → SiLU → conv of a block, the
# norm's input, the SiLU's input and the conv's (padded) input: three activations, two of them the product of
# elementwise work that takes a few percent of the conv's time to redo. A block therefore runs as a selective
# checkpoint that stores the outputs of its convolutions and recomputes the rest (norms, SiLU, padding copies) in the
# backward pass, bit for bit as it was computed the first time, so the gradients are unchanged.
_STORED_OPS = frozenset({torch.ops.aten.convolution.default})
_recompute_elementwise: ContextVar[bool] = ContextVar("vidtok_recompute_elementwise", default=True)


def _store_conv_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _STORED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


@contextmanager
def keep_all_activations() -> Iterator[None]:
    """Train the blocks opened in this thread inside the block as plain autograd would, keeping every activation the
    backward pass reads (to measure what the selective recompute saves, or to rule it out)."""
    token = _recompute_elementwise.set(False)
    try:
        yield
    finally:
        _recompute_elementwise.reset(token)


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

    def _body(self, x: torch.Tensor, stored_h: bool = False) -> torch.Tensor:
        h = self._conv(self.conv1, norm_silu(self.norm1, x))
        h = self._conv(self.conv2, self.dropout(norm_silu(self.norm2, h)))
        if self.in_channels != self.out_channels:
            x = self._conv(self.nin_shortcut, x)
        # in place when h is the conv's fresh output, which its backward does not need; not when the selective
        # checkpoint stores h to hand back in the recomputation
        return h + x if stored_h else h.add_(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self._body(x)
        if self.use_checkpoint:
            return checkpoint(self._body, x, use_reentrant=False)
        if _recompute_elementwise.get():
            return checkpoint(self._body, x, True, use_reentrant=False,
                              context_fn=partial(create_selective_checkpoint_contexts, _store_conv_outputs))
        return self._body(x)


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
    """The factorised block: `spatial` on every frame, then `temporal` along time. `[B, C, T, H, W]` in and out."""
    B = x.shape[0]
    x = batch_to_time(spatial(time_to_batch(x)), B)  # [B*T, C, H, W] -> [B, C, T, H, W]
    return temporal(x)
