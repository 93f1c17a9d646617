"""Down- and upsampling. Space and time are resampled separately: spatial layers are 2D and run per frame;
temporal layers are VidTok's "AlphaBlender": `α·(parameter-free branch) + (1-α)·(conv branch)`, with
α = sigmoid(mix_factor), a learnt scalar that starts at sigmoid(2) ≈ 0.88."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidtok.kernels.fast_conv import FastConv2d, FastConv3d

from .causal_conv import TimeBuffer, TimePadMode, causal_window
from .recompute import recomputable
from .resblock import make_conv3d
from .reshape import channels_last


class SpatialDownsample(nn.Module):
    """×½ in H and W on `[N, C, H, W]`: zero-pad right/bottom by one pixel, then a 3×3 stride-2 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class SpatialUpsample(nn.Module):
    """×2 in H and W on `[N, C, H, W]`: nearest neighbour (in fp32, as the original), then a 3×3 conv.

    With `use_checkpoint` training keeps the input, a quarter of the conv's output, and recomputes the conv."""

    def __init__(self, channels: int, use_checkpoint: bool = False):
        super().__init__()
        self.conv = FastConv2d(channels, channels, 3, padding=1)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recomputable(self.training, self._forward, x, whole=self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype))


class _AlphaBlend(nn.Module):
    def __init__(self, mix_factor: float):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([mix_factor]))

    def blend(self, fixed: torch.Tensor, learnt: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        dtype = torch.promote_types(torch.promote_types(fixed.dtype, learnt.dtype), alpha.dtype)
        # learnt + α·(fixed - learnt) = α·fixed + (1-α)·learnt, in one pass over memory; in place (no new
        # activation-sized tensor) when autograd, which needs the conv branch for α's gradient, is off
        if not torch.is_grad_enabled() and learnt.dtype == dtype:
            return channels_last(learnt.lerp_(fixed.to(dtype), alpha))
        return channels_last(_LerpReleasingInputs.apply(learnt.to(dtype), fixed.to(dtype), alpha.to(dtype)))


class _LerpReleasingInputs(torch.autograd.Function):
    """`torch.lerp(start, end, weight)` for a one-element `weight`, with autograd's gradients bit for bit, computed
    in an order that drops each activation-sized tensor as soon as it is used.

    Autograd's lerp keeps `start`, `end`, their difference, its product with the incoming gradient and the two
    input gradients alive at once. Inside a full checkpoint the saved inputs belong to the backward pass alone, so
    releasing them before the input gradients are made lowers the peak of the up-samplers' backward, the highest
    of a checkpointed decoder, by two activations."""

    @staticmethod
    def forward(ctx, start: torch.Tensor, end: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(start, end, weight)
        return torch.lerp(start, end, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        start, end, weight = ctx.saved_tensors
        need_start, need_end, need_weight = ctx.needs_input_grad
        grad_weight = None
        if need_weight:
            diff = end - start
            del start, end
            grad_weight = (grad * diff).sum_to_size(weight.shape)
            del diff
        else:
            del start, end
        grad_start = grad * (1 - weight) if need_start else None
        grad_end = grad * weight if need_end else None
        return grad_start, grad_end, grad_weight


class TemporalDownsample(_AlphaBlend):
    """×½ in time on `[B, C, T, H, W]`: a 3-frame average and a k3 stride-2 conv, blended.

    Causal: one frame is prepended (zeros in v1.0, a copy of frame 0 in v1.1), T -> ceil(T/2).
    Non-causal: one zero frame is appended, T -> ceil(T/2) as well.
    """

    def __init__(
        self, channels: int, *, causal: bool, mix_factor: float = 2.0, time_pad_mode: TimePadMode = "constant"
    ):
        super().__init__(mix_factor)
        self.causal = causal
        self.time_pad_mode = time_pad_mode
        self.stream: TimeBuffer | None = None  # the average's window when streaming; the conv keeps its own
        if causal:
            self.conv = make_conv3d(channels, channels, 3, True, time_pad_mode, stride=(2, 1, 1))
        else:
            self.conv = FastConv3d(channels, channels, 3, stride=(2, 1, 1), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recomputable(self.training, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            window = causal_window(x, 1, 3, 2, self.time_pad_mode, self.stream)
            learnt = self.conv(x)
            if window.shape[2] == 0:
                return learnt
            return self.blend(F.avg_pool3d(window, (3, 1, 1), stride=(2, 1, 1)), learnt)
        x = F.pad(x, (0, 0, 0, 0, 0, 1))
        return self.blend(F.avg_pool3d(x, (3, 1, 1), stride=(2, 1, 1)), self.conv(x))


class TemporalUpsample(_AlphaBlend):
    """×2 in time on `[B, C, T, H, W]`, then blended with a k3 conv of the result.

    `nearest` (v1.0, non-causal) repeats each frame. `trilinear` (v1.1) interpolates linearly in time
    (align_corners=False, edges clamped), except that the first `num_temp_upsample` frames are interpolated apart
    from the rest: they are the frames that the causal encoder built from the first input frame, and this keeps
    them from blending with later ones. With `use_checkpoint` training keeps the input, half the size of what the
    conv makes, and recomputes the conv.
    """

    def __init__(
        self,
        channels: int,
        *,
        causal: bool,
        mix_factor: float = 2.0,
        time_pad_mode: TimePadMode = "constant",
        interpolation_mode: str = "nearest",
        num_temp_upsample: int = 1,
        use_checkpoint: bool = False,
    ):
        super().__init__(mix_factor)
        self.use_checkpoint = use_checkpoint
        if interpolation_mode not in ("nearest", "trilinear"):
            raise ValueError(f"interpolation_mode must be 'nearest' or 'trilinear', got {interpolation_mode!r}")
        self.interpolation_mode = interpolation_mode
        self.num_temp_upsample = num_temp_upsample
        self.stream: LinearUpsampleStream | ChunkedUpsampleCache | None = None
        self.conv = make_conv3d(channels, channels, 3, causal, time_pad_mode)

    def upsample_time(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpolation_mode == "nearest":
            return repeat_frames(x)
        if self.stream is not None:
            return self.stream.push(x, self.num_temp_upsample)
        n = self.num_temp_upsample
        parts = [p for p in (x[:, :, :n], x[:, :, n:]) if p.shape[2]]
        up = [F.interpolate(p.float(), scale_factor=(2.0, 1.0, 1.0), mode="trilinear").to(x.dtype) for p in parts]
        return torch.cat(up, dim=2) if len(up) > 1 else up[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recomputable(self.training, self._forward, x, whole=self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample_time(x)
        return self.blend(x, self.conv(x))


def repeat_frames(x: torch.Tensor) -> torch.Tensor:
    """Each frame of `[B, C, T, H, W]` twice, in a channels-last result (`repeat_interleave` returns channels-first)."""
    B, C, T, H, W = x.shape
    frames = x.movedim(1, -1).unsqueeze(2).expand(B, T, 2, H, W, C)
    return frames.reshape(B, 2 * T, H, W, C).movedim(-1, 1)


class LinearUpsampleStream:
    """Streaming state of a v1.1 linear ×2 time upsampler.

    Output frames 2i and 2i+1 are 0.75·x[i] + 0.25·x[i-1] and 0.75·x[i] + 0.25·x[i+1], with the neighbour replaced
    by x[i] at the ends of a segment (the first `n` frames form one segment, the rest another). Frame 2i+1 needs
    x[i+1], so the last frame's second half waits for the next chunk, or for `finish()` at the end of the video.
    """

    def __init__(self) -> None:
        self.seen = 0  # input frames received so far
        self.last: torch.Tensor | None = None  # x[seen-1], whose second output frame is still owed
        self.final = False  # set at the end of the stream: the owed frame uses x[i] as its right neighbour

    def push(self, x: torch.Tensor, n: int) -> torch.Tensor:
        frames = list(x.unbind(dim=2))
        out: list[torch.Tensor] = []
        prev = self.last
        if prev is not None and frames:
            out.append(0.75 * prev + 0.25 * frames[0])
        for j, frame in enumerate(frames):
            g = self.seen + j
            left = prev if prev is not None and g != n else frame
            out.append(0.75 * frame + 0.25 * left)
            if g == n - 1:  # the first segment ends here: clamp now; the next frame starts a segment
                out.append(frame)
                prev = None
            else:
                if j + 1 < len(frames):
                    out.append(0.75 * frame + 0.25 * frames[j + 1])
                prev = frame
        self.seen += len(frames)
        if self.final and prev is not None:
            out.append(prev)
            prev = None
        self.last = prev
        return torch.stack(out, dim=2) if out else x[:, :, :0]


class ChunkedUpsampleCache:
    """The original's chunk cache for a v1.1 linear upsampler, kept for its chunked mode (`use_tiling`).

    First chunk: the first `n` frames and the rest are interpolated apart, and the last `n` frames are cached.
    Later chunks: the cache is prepended, everything is interpolated, the cache's `2n` outputs are dropped, and the
    `n` frames before the last `n` are cached. With overlapping decoder chunks the cache ends up holding frames that
    the next chunk also contains, so some frames get the wrong left neighbour: that is why the original's chunked
    decode differs from its whole-clip decode (~3e-3), and why `LinearUpsampleStream` is used for exact streaming.
    """

    def __init__(self) -> None:
        self.cache: torch.Tensor | None = None

    @staticmethod
    def _interpolate(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=(2.0, 1.0, 1.0), mode="trilinear").to(x.dtype)

    def push(self, x: torch.Tensor, n: int) -> torch.Tensor:
        if self.cache is None:
            self.cache = x[:, :, -n:]
            parts = [p for p in (x[:, :, :n], x[:, :, n:]) if p.shape[2]]
            return torch.cat([self._interpolate(p) for p in parts], dim=2)
        x = torch.cat([self.cache, x], dim=2)
        self.cache = x[:, :, -2 * n : -n]
        return self._interpolate(x)[:, :, 2 * n :]
