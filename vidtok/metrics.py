"""Reconstruction metrics (PSNR, SSIM, LPIPS) as VidTok's evaluation computes them, and FVD.

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

FVD follows StyleGAN-V (`src/metrics/frechet_video_distance.py`, the protocol behind `fvd2048_16f`): the
Kinetics-400 I3D TorchScript `i3d_torchscript.pt`, called as `detector(x, rescale=True, resize=True,
return_features=True)` on **uint8** videos `[B, 3, T, H, W]` in [0, 255] (with `rescale=True` the detector maps
[0, 255] to [-1, 1] itself, and with `resize=True` it resizes to 224² itself). Videos in [-1, 1] become uint8 the
way StyleGAN-V converts generator output, `(x·127.5 + 128).clamp(0, 255)` truncated; we apply that to the real
clip too, since ours are float after resizing. Features are pooled into a mean and a population covariance
(divide by N) in float64, and FVD is the Fréchet distance `|μ₁-μ₂|² + tr(Σ₁ + Σ₂ - 2·sqrtm(Σ₁Σ₂))` with the real
part taken, as StyleGAN-V does. The original VidTok has no FVD code and never published its FVD protocol, so FVD
numbers from here are comparable with StyleGAN-V-protocol numbers, not necessarily with VidTok's table.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from vidtok.errors import VidTokError

logger = logging.getLogger(__name__)

PSNR_EPS = 1e-8
FRAME_GROUP_SIZE = 16
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# One name per metric, in the order results are printed.
METRIC_NAMES = ("psnr", "ssim", "lpips", "fvd")
FRAME_METRICS = ("psnr", "ssim", "lpips")

I3D_FILENAME = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
I3D_ENV = "VIDTOK_I3D_PATH"
# The SHA-256 of the file at I3D_URL. Neither the VidTok spec nor the StyleGAN-V code that publishes the file records
# one, so none is built in (a made-up number would refuse the true file): the digest comes from `sha256=` or
# $VIDTOK_I3D_SHA256, and without either the file is loaded unverified, with a warning that prints its digest.
I3D_SHA256: str | None = None
I3D_SHA256_ENV = "VIDTOK_I3D_SHA256"
# StyleGAN-V's FVD clips: 16 consecutive frames (`fvd2048_16f`).
FVD_NUM_FRAMES = 16


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


# --- FVD -----------------------------------------------------------------------------------------------------------


def i3d_search_paths() -> list[Path]:
    """Where :func:`find_i3d` looks for `i3d_torchscript.pt` without an explicit path, in order.

    `$VIDTOK_I3D_PATH`, then `<torch hub dir>/checkpoints/i3d_torchscript.pt` (`$TORCH_HOME/hub/...`, by default
    `~/.cache/torch/hub/checkpoints/`), then `~/.cache/vidtok/i3d_torchscript.pt`.
    """
    paths = []
    if os.environ.get(I3D_ENV):
        paths.append(Path(os.environ[I3D_ENV]).expanduser())
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / I3D_FILENAME)
    paths.append(Path("~/.cache/vidtok").expanduser() / I3D_FILENAME)
    return paths


def find_i3d(path: str | Path | None = None) -> Path:
    """The I3D TorchScript file: `path` if given, else the first of :func:`i3d_search_paths` that exists.

    Raises:
        FileNotFoundError: naming the file, every place searched and where to download it.
    """
    candidates = [Path(path).expanduser()] if path is not None else i3d_search_paths()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"FVD needs the StyleGAN-V I3D TorchScript {I3D_FILENAME!r}, not found at {searched}. Download it from "
        f"{I3D_URL} and put it at {i3d_search_paths()[-1]} (or pass --i3d_path / set ${I3D_ENV}); "
        "or leave 'fvd' out of the metrics"
    )


class I3DChecksumError(VidTokError):
    """The I3D TorchScript file is not the one whose SHA-256 was given: it is not loaded."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def verify_i3d(file: str | Path, sha256: str | None = None) -> None:
    """Check `file` against the expected SHA-256: `sha256`, else `$VIDTOK_I3D_SHA256`, else :data:`I3D_SHA256`.
    With none of them set the file cannot be checked: a warning gives its digest, to pin with the variable.

    TorchScript runs code stored in the file, so this happens before `torch.jit.load` ever sees it.

    Raises:
        I3DChecksumError: the file's digest differs (naming the file and both digests).
        VidTokError: the expected digest is not 64 hexadecimal digits.
    """
    given = [("sha256", sha256), (f"${I3D_SHA256_ENV}", os.environ.get(I3D_SHA256_ENV)),
             ("vidtok.metrics.I3D_SHA256", I3D_SHA256)]
    source, expected = next(((name, value) for name, value in given if value), (None, None))
    actual = file_sha256(file)
    if expected is None:
        logger.warning(
            "I3D file %s is not verified: no SHA-256 is known for it; its SHA-256 is %s (set $%s to it to pin it)",
            file, actual, I3D_SHA256_ENV,
        )
        return
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise VidTokError(f"the expected I3D SHA-256 from {source} ({expected!r}) is not 64 hexadecimal digits")
    if actual != expected:
        raise I3DChecksumError(
            f"I3D file {str(file)!r} has SHA-256 {actual}, but {expected} is expected (from {source}): it is damaged, "
            f"incomplete or another file, and is not loaded; download it again from {I3D_URL}"
        )


def load_i3d(
    path: str | Path | None = None, device: torch.device | str = "cpu", sha256: str | None = None
) -> torch.jit.ScriptModule:
    """Load the I3D TorchScript found by :func:`find_i3d` onto `device`, in eval mode, once its SHA-256 has been
    checked (:func:`verify_i3d`; `sha256` overrides the expected digest)."""
    file = find_i3d(path)
    verify_i3d(file, sha256)
    logger.info("loading I3D from %s", file)
    with warnings.catch_warnings():
        # the detector is a TorchScript archive, so jit.load is the only way in; its deprecation notice is noise
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=FutureWarning)
        return torch.jit.load(str(file), map_location=device).eval()


def video_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 as StyleGAN-V converts generated videos: `(x·127.5 + 128).clamp(0, 255)`, truncated."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def i3d_features(detector: torch.nn.Module, videos: torch.Tensor) -> np.ndarray:
    """I3D features of uint8 videos `[B, 3, T, H, W]`, called as StyleGAN-V does: float64 `[B, D]` (D = 400)."""
    if videos.dtype != torch.uint8 or videos.ndim != 5:
        raise ValueError(f"expected uint8 videos [B, 3, T, H, W], got {videos.dtype} {tuple(videos.shape)}")
    features = detector(videos, rescale=True, resize=True, return_features=True)
    return features.detach().reshape(videos.shape[0], -1).double().cpu().numpy()


class FeatureStatistics:
    """Running mean and population covariance of feature vectors, accumulated in float64 (StyleGAN-V's
    `FeatureStats` with `capture_mean_cov=True`)."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise ValueError(f"expected features [N, D], got shape {features.shape}")
        if self._sum is None:
            self._sum = np.zeros(features.shape[1])
            self._outer = np.zeros((features.shape[1], features.shape[1]))
        elif features.shape[1] != self._sum.shape[0]:
            raise ValueError(f"feature width changed from {self._sum.shape[0]} to {features.shape[1]}")
        self.count += features.shape[0]
        self._sum += features.sum(axis=0)
        self._outer += features.T @ features

    def __iadd__(self, other: FeatureStatistics) -> FeatureStatistics:
        if other.count:
            if self._sum is None:
                self._sum, self._outer = np.zeros_like(other._sum), np.zeros_like(other._outer)
            elif self._sum.shape != other._sum.shape:
                raise ValueError(f"feature width {other._sum.shape[0]} != {self._sum.shape[0]}")
            self._sum += other._sum
            self._outer += other._outer
            self.count += other.count
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """`(mean [D], covariance [D, D])`, the covariance divided by N (not N-1)."""
        if self.count == 0 or self._sum is None:
            raise ValueError("no features were added")
        mean = self._sum / self.count
        return mean, self._outer / self.count - np.outer(mean, mean)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): `|mu1-mu2|² + tr(s1 + s2 - 2·sqrtm(s1·s2))`.

    The matrix square root is scipy's; its real part is used (tiny imaginary parts come from rounding, and from
    singular covariances when there are fewer samples than feature dimensions), as StyleGAN-V does.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    mean_term = np.square(mu1 - mu2).sum()
    return float(np.real(mean_term + np.trace(sigma1 + sigma2 - 2 * root)))


class FVDAccumulator:
    """FVD between input and reconstructed clips, StyleGAN-V protocol (see the module docstring).

    Each :meth:`update` contributes one clip per batch element: its first `num_frames` frames (16 by default,
    `fvd2048_16f`). Clips with fewer than `num_frames` real frames are left out, as StyleGAN-V discards short
    videos. FVD needs at least two clips; with fewer clips than feature dimensions (400) the covariances are
    singular and the value is a noisy estimate, so report the clip count with it.
    """

    def __init__(self, detector: torch.nn.Module, num_frames: int = FVD_NUM_FRAMES) -> None:
        self.detector = detector
        self.num_frames = num_frames
        self.real = FeatureStatistics()
        self.fake = FeatureStatistics()
        self.skipped_clips = 0

    @property
    def num_clips(self) -> int:
        return self.real.count

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, num_valid_frames: int | None = None) -> None:
        """Add input `x` and reconstruction `x_hat`, videos `[B, 3, T, H, W]` in [-1, 1] (`x_hat` is clamped)."""
        if x.shape != x_hat.shape or x.ndim != 5:
            raise ValueError(
                f"expected two videos [B, 3, T, H, W] of one shape, got {tuple(x.shape)}, {tuple(x_hat.shape)}"
            )
        valid = x.shape[2] if num_valid_frames is None else min(num_valid_frames, x.shape[2])
        if valid < self.num_frames:
            self.skipped_clips += x.shape[0]
            return
        device = next(iter(self.detector.parameters()), torch.empty(0)).device
        clip = slice(0, self.num_frames)
        self.real.update(i3d_features(self.detector, video_to_uint8(x[:, :, clip]).to(device)))
        self.fake.update(i3d_features(self.detector, video_to_uint8(x_hat[:, :, clip].clamp(-1, 1)).to(device)))

    def __iadd__(self, other: FVDAccumulator) -> FVDAccumulator:
        self.real += other.real
        self.fake += other.fake
        self.skipped_clips += other.skipped_clips
        return self

    def compute(self) -> float:
        if self.num_clips < 2:
            raise ValueError(
                f"FVD needs at least 2 clips of {self.num_frames} frames, got {self.num_clips} "
                f"({self.skipped_clips} shorter clips left out)"
            )
        return frechet_distance(*self.real.mean_cov(), *self.fake.mean_cov())
