"""Channel normalisation for video feature maps.

Every official config uses `layernorm`: a LayerNorm over channels at each (t, h, w) position, so its result does
not depend on how the tensor is laid out. `groupnorm` statistics do depend on it, and the original takes them over
one frame in causal models (a causal model must not see future frames) but over the clip or over time in some
non-causal blocks; `scope` reproduces each of those.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

NormScope = Literal["frame", "clip", "pixel"]


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of a channels-first tensor `[B, C, ...]`."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        # the `.norm` child keeps the original's state-dict keys (`norm1.norm.weight`)
        self.norm = nn.LayerNorm(num_channels, eps=eps, elementwise_affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ScopedGroupNorm(nn.GroupNorm):
    """GroupNorm(32) whose statistics on a 5D `[B, C, T, H, W]` tensor cover one frame, the clip, or one pixel's
    time series, matching where the original applied it."""

    def __init__(self, num_channels: int, scope: NormScope, eps: float = 1e-6):
        super().__init__(num_groups=32, num_channels=num_channels, eps=eps, affine=True)
        self.scope = scope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or self.scope == "clip":
            return super().forward(x)
        B, C, T, H, W = x.shape
        if self.scope == "frame":
            y = super().forward(x.transpose(1, 2).reshape(B * T, C, H, W))  # [B*T, C, H, W]
            return y.reshape(B, T, C, H, W).transpose(1, 2)
        y = super().forward(x.permute(0, 3, 4, 1, 2).reshape(B * H * W, C, T))  # [B*H*W, C, T]
        return y.reshape(B, H, W, C, T).permute(0, 3, 4, 1, 2)


def norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`silu(norm(x))`, with the SiLU in place on the norm's fresh output. With autograd on, that needs
    :class:`_NormSiLU`: plain autograd would keep the SiLU's input, a second activation-sized tensor. On CPU a fresh
    tensor of tens of MB costs several times the SiLU itself (a page fault per 4 KiB: 40 MB at 17×64² with 128
    channels took 15-40 ms against 3 ms of arithmetic), and the selective recomputation allocates it twice."""
    if torch.is_grad_enabled():
        return _NormSiLU.apply(norm, x, *norm.parameters())
    return F.silu(norm(x), inplace=True)


class _NormSiLU(torch.autograd.Function):
    """`silu(norm(x))` that saves `x` alone (inside a full checkpoint, whose recomputation holds all that the region
    saves at once, that is its whole cost). The backward pass runs the norm again and differentiates the SiLU and
    the norm with the kernels autograd uses, on the same values, so the gradients are bit-equal to plain
    autograd's; the SiLU's gradient is written over the recomputed norm output, which the norm's backward pass does
    not read."""

    @staticmethod
    def forward(ctx, norm: nn.Module, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.norm = norm
        ctx.save_for_backward(x)
        return F.silu(norm(x), inplace=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            y = ctx.norm(x)
        normed = y.detach()
        torch.ops.aten.silu_backward.grad_input(grad, normed, grad_input=normed)
        needs = ctx.needs_input_grad[1:]
        inputs = [x, *ctx.norm.parameters()]
        grads = iter(torch.autograd.grad(y, [t for t, n in zip(inputs, needs, strict=True) if n], normed))
        return (None, *(next(grads) if n else None for n in needs))


def make_norm(num_channels: int, norm_type: str, scope: NormScope = "frame") -> nn.Module:
    """The normalisation layer named by a config's `norm_type` (`layernorm` or `groupnorm`)."""
    if norm_type == "layernorm":
        return LayerNorm(num_channels, eps=1e-6)
    if norm_type == "groupnorm":
        return ScopedGroupNorm(num_channels, scope=scope, eps=1e-6)
    raise ValueError(f"norm_type must be 'layernorm' or 'groupnorm', got {norm_type!r}")
