"""Fréchet Video Distance: the I3D detector (finding, verifying and loading it), its features and their
statistics, and the distance.

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
import os
import re
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from vidtok.errors import VidTokError

logger = logging.getLogger(__name__)

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
             ("vidtok.fvd.I3D_SHA256", I3D_SHA256)]
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
