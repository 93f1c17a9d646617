"""Convolutions with 3×3 spatial kernels that pick their CPU algorithm; same parameters and keys as `nn.Conv2d` /
`nn.Conv3d`, so checkpoints are unaffected.

In fp32 on CPU, inference and training alike, they run Winograd F(4×4, 3×3) (`winograd.py`) where the layer has
enough output pixels to repay transforming its weights on every call (the transformed weights are 4× the weight's
size, too much to keep for a 157M-parameter model): the op `vidtok::winograd_conv3d`, whose backward pass computes
the input's gradient as a Winograd convolution too and the weight's in the Winograd domain. Everything else,
`torch.compile` and `torch.jit.trace` included, runs PyTorch's direct convolution.

Two switches turn the Winograd path off, and the GEMMs of the time convolutions (`time_conv.py`) with it:
:func:`set_fast_convs` for the whole process, every thread included (`VIDTOK_FAST_CONV=0` in the environment
starts the process with it off), and the :func:`direct_convs` block for the current thread (a context variable:
threads started inside the block do not see it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from vidtok.modules.reshape import channels_last

from .winograd import winograd_applies, winograd_conv, winograd_weight_grad

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


def fast_kernels_apply(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether vidtok's CPU kernels (Winograd here, the per-tap GEMMs of `time_conv.py`) may stand in for PyTorch's
    convolution of `weight` over `x`: the switches are on, the call is eager, and it runs on the CPU in fp32
    without autocast."""
    # under torch.compile or torch.jit.trace PyTorch's conv: a Python loop over bands or taps would unroll into a
    # huge graph, and a trace would freeze the plan made for one input size
    return (
        fast_convs_enabled()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _use_winograd(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> bool:
    return (
        fast_kernels_apply(x, conv.weight)
        and winograd_applies(conv)
        and x.numel() // x.shape[1] >= MIN_WINOGRAD_PIXELS  # output pixels per frame tap
    )


@torch.library.custom_op("vidtok::winograd_conv3d", mutates_args=())
def winograd_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, time_pad: int) -> torch.Tensor:
    """`F.conv3d(x, weight, bias, padding=(time_pad, 1, 1))` for `x` `[B, C_in, T, H, W]` (any strides) and a
    `[C_out, C_in, k, 3, 3]` weight, by Winograd; returns `[B, C_out, T', H, W]` channels-last.

    An op of its own so that autograd has one node for it (its backward pass below) and the selective
    recomputation of `vidtok.modules.recompute` can keep its output as it keeps `aten.convolution`'s."""
    return _convolve_clips(x, weight, bias, time_pad)


def _convolve_clips(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, time_pad: int,
                    transposed: bool = False) -> torch.Tensor:
    channels = weight.shape[1 if transposed else 0]
    out = x.new_empty(x.shape[0], x.shape[2] + 2 * time_pad - weight.shape[2] + 1, *x.shape[3:], channels)
    for b in range(x.shape[0]):
        winograd_conv(x[b].permute(1, 2, 3, 0), weight, bias, time_pad=time_pad, out=out[b], transposed=transposed)
    return out.permute(0, 4, 1, 2, 3)


@winograd_conv3d.register_fake
def _winograd_conv3d_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           time_pad: int) -> torch.Tensor:
    out = x.new_empty(x.shape[0], x.shape[2] + 2 * time_pad - weight.shape[2] + 1, *x.shape[3:], weight.shape[0])
    return out.permute(0, 4, 1, 2, 3)


def _keep_for_backward(ctx, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, _, time_pad = inputs
    ctx.save_for_backward(x, weight)
    ctx.time_pad = time_pad


def _winograd_conv3d_backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    pad, needs = ctx.time_pad, ctx.needs_input_grad
    if torch.is_grad_enabled():
        # create_graph (a gradient of a gradient): PyTorch's own backward, which is differentiable in turn
        bias_sizes = [weight.shape[0]] if needs[2] else None
        grads = torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, [1, 1, 1], [pad, 1, 1], [1, 1, 1],
                                                    False, [0, 0, 0], 1, list(needs[:3]))
        return (*grads, None)
    taps = weight.shape[2]
    x_grad = weight_grad = bias_grad = None
    if needs[0]:
        # the transposed convolution, with the padding that gives back T frames
        x_grad = _convolve_clips(grad, weight, None, taps - 1 - pad, transposed=True)
    if needs[1]:
        frames = [(x[b].permute(1, 2, 3, 0), grad[b].permute(1, 2, 3, 0)) for b in range(x.shape[0])]
        weight_grad = winograd_weight_grad(*zip(*frames, strict=True), taps, pad)
    if needs[2]:
        bias_grad = grad.sum((0, 2, 3, 4))
    return x_grad, weight_grad, bias_grad, None


winograd_conv3d.register_autograd(_winograd_conv3d_backward, setup_context=_keep_for_backward)


class FastConv2d(nn.Conv2d):
    """`nn.Conv2d` on `[N, C, H, W]` (N = B·T frames); returns channels-last on the Winograd path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _use_winograd(self, x):
            return super().forward(x)
        # the N frames as the time axis of one clip, convolved with one tap
        out = winograd_conv3d(x.transpose(0, 1).unsqueeze(0), self.weight.unsqueeze(2), self.bias, 0)
        # squeeze, not out[0]: the backward pass of a view indexed out would build a zero tensor of the whole output
        return out.squeeze(0).transpose(0, 1)


class FastConv3d(nn.Conv3d):
    """`nn.Conv3d` with a k×3×3 kernel on `[B, C, T, H, W]`; returns channels-last.

    Off the Winograd path, in CPU inference, it convolves a channels-first copy: for 3×3×3 kernels with the model's
    256 and 512 channels, oneDNN on a 2-core AVX2 CPU ran 10–30 % faster on channels-first tensors than on the
    channels-last ones the rest of the network uses (e.g. 256 channels, 20×128²: 7.8 s against 8.7 s). In training
    the copies, and their counterparts in the backward pass, cost more than that (a 256-channel causal conv on
    17×32², forward and backward: 2.12 s with the copies, 1.89 s without), except where the clip is smaller than the
    weight: PyTorch's CPU kernel returns the weight's gradient in the input's layout, and autograd copies a
    channels-last one back into the weight's layout, a copy larger than the input's (512 channels on 7×8², forward
    and backward: 0.07 s from a channels-first copy, 0.12 s from channels-last). On other devices the trade was never
    measured, so there the conv reads the channels-last input as it is.
    """

    def takes_channels_last(self, x: torch.Tensor) -> bool:
        """Whether `forward(x)` reads `x` as it is (channels-last), so callers need not make a channels-first copy."""
        if x.device.type != "cpu" or _use_winograd(self, x):
            return True
        return torch.is_grad_enabled() and x.numel() >= self.weight.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_channels_last(x):
            return channels_last(super().forward(x.contiguous()))
        if not _use_winograd(self, x):
            return channels_last(super().forward(x))
        return winograd_conv3d(x, self.weight, self.bias, self.padding[0])
