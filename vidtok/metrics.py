"""Frame metrics (PSNR, SSIM, LPIPS) as VidTok's evaluation computes them; FVD is :mod:`vidtok.fvd`.

PSNR / SSIM / LPIPS follow the original's `scripts/inference_evaluate.py` protocol exactly:

1. the reconstruction is clamped to [-1, 1]; both videos are mapped to [0, 1] (`(x + 1) / 2`);
2. `[B, C, T, H, W]` becomes frames `[B·T, C, H, W]`, cut into consecutive groups of 16 frames;
3. per group: PSNR is the mean over frames of `-10·log10(mse + 1e-8)` (data range 1, so identical frames score
   80 dB); SSIM is a Gaussian 11×11, σ = 1.5, K = (0.01, 0.03) SSIM with *valid* convolution, averaged over the
   map, then over channels, then over frames, on frames first average-pooled by `max(1, round(min(H, W) / 256))`;
   LPIPS is the VGG LPIPS of `2x - 1` (so back in [-1, 1]) averaged over frames;
4. each group's value counts once per frame in it, so the final number is a frame-weighted mean over all frames.

Because every per-group value is itself a mean over frames, the result is the plain per-frame mean; the groups of
16 only bound memory (and reproduce the original's float rounding). Metrics are always computed in float32, even
when the model ran under autocast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

PSNR_EPS = 1e-8
FRAME_GROUP_SIZE = 16
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# One name per metric, in the order results are printed.
METRIC_NAMES = ("psnr", "ssim", "lpips", "fvd")
FRAME_METRICS = ("psnr", "ssim", "lpips")

class FrameDistance(Protocol):
    """A perceptual distance such as LPIPS: frames `[N, 3, H, W]` in [-1, 1] twice -> per-frame `[N, ...]`."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


# --- frame metrics -------------------------------------------------------------------------------------------------


def _as_frames(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, T, H, W]` -> `[B·T, C, H, W]` (b-major, as the original's `(b t)`); 4-D input is returned as is."""
    if x.ndim == 5:
        B, C, T, H, W = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    if x.ndim != 4:
        raise ValueError(f"expected frames [N, C, H, W] or a video [B, C, T, H, W], got shape {tuple(x.shape)}")
    return x


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_frames(x), _as_frames(y)
    if x.shape != y.shape:
        raise ValueError(f"the two videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y


def psnr_per_frame(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR of each frame, `-10·log10(mse + 1e-8)`, for frames in [0, 1] (data range 1): shape `[N]`."""
    x, y = _check_pair(x, y)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return -10 * torch.log10(mse + PSNR_EPS)


def compute_psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean per-frame PSNR of two batches of frames (or videos) in [0, 1]: a scalar tensor."""
    return psnr_per_frame(x, y).mean(dim=0)


def gaussian_kernel(
    size: int = SSIM_KERNEL_SIZE,
    sigma: float = SSIM_SIGMA,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Normalised 2-D Gaussian `[size, size]` centred at `(size-1)/2` (the kernel of the original's SSIM)."""
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    squared = offsets**2
    kernel = torch.exp(-(squared[None, :] + squared[:, None]) / (2 * sigma**2))
    return kernel / kernel.sum()


def ssim_pool_factor(height: int, width: int) -> int:
    """Average-pooling factor applied before SSIM: `max(1, round(min(H, W) / 256))` (Python's half-to-even round)."""
    return max(1, round(min(height, width) / 256))


def ssim_per_frame(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of each frame for frames in [0, 1]: shape `[N]` (map mean, then channel mean).

    Gaussian window 11×11, σ = 1.5, `C1 = 0.01²`, `C2 = 0.03²`, valid convolution (no padding), after average
    pooling by :func:`ssim_pool_factor`.
    """
    x, y = _check_pair(x, y)
    factor = ssim_pool_factor(*x.shape[-2:])
    if factor > 1:
        x = F.avg_pool2d(x, kernel_size=factor)
        y = F.avg_pool2d(y, kernel_size=factor)
    N, C, H, W = x.shape
    if H < SSIM_KERNEL_SIZE or W < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"SSIM needs frames of at least {SSIM_KERNEL_SIZE}×{SSIM_KERNEL_SIZE} pixels after pooling by {factor}, "
            f"got {H}×{W}"
        )
    weight = gaussian_kernel(dtype=x.dtype, device=x.device).expand(C, 1, SSIM_KERNEL_SIZE, SSIM_KERNEL_SIZE)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, weight, groups=C)  # valid: [N, C, H-10, W-10]

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_x, mu_y = blur(x), blur(y)
    mu_xx, mu_yy, mu_xy = mu_x**2, mu_y**2, mu_x * mu_y
    var_x = blur(x * x) - mu_xx
    var_y = blur(y * y) - mu_yy
    cov_xy = blur(x * y) - mu_xy
    contrast_structure = (2.0 * cov_xy + c2) / (var_x + var_y + c2)
    ssim_map = (2.0 * mu_xy + c1) / (mu_xx + mu_yy + c1) * contrast_structure
    return ssim_map.mean(dim=(-1, -2)).mean(dim=1)


def compute_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean per-frame SSIM of two batches of frames (or videos) in [0, 1]: a scalar tensor."""
    return ssim_per_frame(x, y).mean(dim=0)


def load_lpips(device: torch.device | str = "cpu", pretrained: bool = True) -> torch.nn.Module:
    """The VGG LPIPS network of `vidtok.training.lpips` in eval mode on `device`.

    Raises:
        FileNotFoundError: when `pretrained` and its weights are not on disk (the message names the file and where
            to put it); leave `lpips` out of the metrics to evaluate without it.
    """
    from vidtok.training.lpips import LPIPS

    try:
        model = LPIPS(pretrained=pretrained)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err} (needed for the LPIPS metric; leave 'lpips' out of the metrics to skip it)"
        ) from err
    return model.eval().requires_grad_(False).to(device)


def parse_metrics(spec: str | Iterable[str]) -> tuple[str, ...]:
    """`"psnr,ssim,lpips"` (or a list) -> the metric names in canonical order; unknown or empty raise ValueError."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    if not names:
        raise ValueError(f"no metrics chosen; choose from {list(METRIC_NAMES)}")
    return tuple(n for n in METRIC_NAMES if n in names)


def score_frame_groups(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    metrics: Sequence[str] = ("psnr", "ssim", "lpips"),
    lpips_model: FrameDistance | None = None,
    group_size: int = FRAME_GROUP_SIZE,
    num_valid_frames: int | None = None,
) -> list[tuple[dict[str, float], int]]:
    """PSNR / SSIM / LPIPS of a reconstruction, one entry per group of `group_size` frames.

    Args:
        x: the input video `[B, 3, T, H, W]` (or frames `[N, 3, H, W]`) in [-1, 1].
        x_hat: the model's output, same shape, unclamped (clamped to [-1, 1] here).
        metrics: any of `psnr`, `ssim`, `lpips` (others are ignored).
        lpips_model: required when `lpips` is asked for (see :func:`load_lpips`).
        group_size: frames per group (16 in the original).
        num_valid_frames: score only the first this many time steps (`None`: all, padding included, which is what
            the original does). Only for `[B, C, T, H, W]` input.

    Returns:
        `[(values, num_frames), ...]`: each group's metric means and the frames it holds. Feed them to
        :meth:`MetricAccumulator.update` for the frame-weighted mean.
    """
    wanted = [m for m in metrics if m in FRAME_METRICS]
    if "lpips" in wanted and lpips_model is None:
        raise ValueError("the lpips metric needs an lpips_model (see vidtok.metrics.load_lpips)")
    if num_valid_frames is not None:
        if x.ndim != 5:
            raise ValueError("num_valid_frames needs videos [B, C, T, H, W]")
        x, x_hat = x[:, :, :num_valid_frames], x_hat[:, :, :num_valid_frames]
    x, x_hat = _check_pair(x.float(), x_hat.float())
    x = (x + 1) / 2
    x_hat = (x_hat.clamp(-1, 1) + 1) / 2
    groups = []
    for inp, out in zip(torch.split(x, group_size), torch.split(x_hat, group_size), strict=True):
        values: dict[str, float] = {}
        if "psnr" in wanted:
            values["psnr"] = compute_psnr(inp, out).item()
        if "ssim" in wanted:
            values["ssim"] = compute_ssim(inp, out).item()
        if "lpips" in wanted:
            values["lpips"] = lpips_model(inp * 2 - 1, out * 2 - 1).float().mean().item()
        groups.append((values, inp.shape[0]))
    return groups


class MetricAccumulator:
    """Frame-weighted running means of named metrics.

    `update({"psnr": 31.2, "ssim": 0.9}, num_frames=16)` counts each value `num_frames` times, exactly like the
    original's list `[value] * num_frames`; `compute()` gives the means. Accumulators merge with `+=`.
    """

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}
        self._frames: dict[str, int] = {}

    def update(self, values: Mapping[str, float], num_frames: int) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        for name, value in values.items():
            self._sums.setdefault(name, []).append(float(value) * num_frames)
            self._frames[name] = self._frames.get(name, 0) + num_frames

    def update_groups(self, groups: Iterable[tuple[Mapping[str, float], int]]) -> None:
        """Add the output of :func:`score_frame_groups`."""
        for values, num_frames in groups:
            self.update(values, num_frames)

    def __iadd__(self, other: MetricAccumulator) -> MetricAccumulator:
        for name, sums in other._sums.items():
            self._sums.setdefault(name, []).extend(sums)
            self._frames[name] = self._frames.get(name, 0) + other._frames[name]
        return self

    def num_frames(self, name: str) -> int:
        """Frames counted for `name` (0 if never updated)."""
        return self._frames.get(name, 0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._sums)

    def compute(self) -> dict[str, float]:
        """Frame-weighted mean of every metric seen so far (exactly summed with `math.fsum`)."""
        return {name: math.fsum(sums) / self._frames[name] for name, sums in self._sums.items()}
