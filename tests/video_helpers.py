"""Helpers for the inference tests: tiny saved models, small synthetic videos, and reference metric code written
independently of `vidtok.metrics` (plain NumPy/SciPy in float64)."""

from __future__ import annotations

import warnings
from pathlib import Path

import decord
import numpy as np
import scipy.signal
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2

from tests.conftest import REPO, tiny_model_config
from vidtok.data.video_io import write_video
from vidtok.util import instantiate_from_config

EXAMPLE = REPO / "assets" / "example.mp4"


def save_tiny_model(
    directory: Path, causal: bool = True, regularizer: str = "fsq", variant: str = "v1.0", seed: int = 0
) -> tuple[Path, Path, torch.nn.Module]:
    """Build a tiny random model, save `<name>.yaml` and `<name>.ckpt` in `directory`; return both and the model."""
    torch.manual_seed(seed)
    config = tiny_model_config(causal=causal, regularizer=regularizer, variant=variant)
    model = instantiate_from_config(config).eval()
    name = f"tiny_{'causal' if causal else 'noncausal'}_{regularizer}_{variant}"
    directory.mkdir(parents=True, exist_ok=True)
    config_path, ckpt_path = directory / f"{name}.yaml", directory / f"{name}.ckpt"
    OmegaConf.save(OmegaConf.create({"model": config}), config_path)
    torch.save({"state_dict": model.state_dict()}, ckpt_path)
    return config_path, ckpt_path, model


def pattern_frames(num_frames: int, height: int = 48, width: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients plus a little noise: uint8 `[T, H, W, channels]`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for t in range(num_frames):
        planes = [
            128 + 100 * np.sin((xx + 2 * t) / 7 + c) * np.cos((yy - t) / 9 + 0.5 * c) for c in range(max(channels, 3))
        ]
        image = np.stack(planes[:channels], axis=-1) + rng.normal(0, 4, (height, width, channels))
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_test_video(
    path: Path,
    num_frames: int,
    height: int = 48,
    width: int = 64,
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    seed: int = 0,
) -> Path:
    """Write a synthetic video with the project's writer. `pix_fmt` `gray` / `rgba` (with codec `png`) give
    grayscale / alpha."""
    channels = {"gray": 1, "rgba": 4}.get(pix_fmt, 3)
    return write_video(path, pattern_frames(num_frames, height, width, channels, seed), fps, codec, pix_fmt=pix_fmt)


def read_video_reference(path: Path, height: int, width: int, sample_fps: float) -> torch.Tensor:
    """Every `round(fps/sample_fps)`-th frame, resized (shorter side, antialias) and centre-cropped, in [-1, 1]:
    `[3, L, height, width]`, built straight from decord and torchvision."""
    reader = decord.VideoReader(str(path), num_threads=0)
    step = round(reader.get_avg_fps() / sample_fps)
    frames = torch.from_numpy(reader.get_batch(list(range(0, len(reader), step))).asnumpy())
    x = frames.permute(0, 3, 1, 2).float() / 255
    x = v2.CenterCrop((height, width))(v2.Resize(height, antialias=True)(x))
    return (x * 2 - 1).permute(1, 0, 2, 3)


def split_padded(video: torch.Tensor, length: int) -> list[tuple[torch.Tensor, int]]:
    """`[3, L, H, W]` -> consecutive clips `[1, 3, length, H, W]`, the last padded with its last frame."""
    clips = []
    for start in range(0, video.shape[1], length):
        part = video[:, start : start + length]
        valid = part.shape[1]
        if valid < length:
            part = torch.cat([part, part[:, -1:].expand(-1, length - valid, -1, -1)], dim=1)
        clips.append((part.unsqueeze(0), valid))
    return clips


def psnr_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in float64, frames `[N, C, H, W]` in [0, 1]."""
    mse = ((x.astype(np.float64) - y.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return -10 * np.log10(mse + 1e-8)


def ssim_reference(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-frame SSIM in float64 with SciPy's 2-D convolution (Gaussian 11/1.5, K=(0.01, 0.03), valid, no pooling:
    use frames of at most 383 pixels on the shorter side)."""
    assert min(x.shape[-2:]) < 384, "reference SSIM does not pool"
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    kernel = np.outer(g, g)
    kernel /= kernel.sum()
    c1, c2 = 0.01**2, 0.03**2
    out = np.zeros(x.shape[0])
    for n in range(x.shape[0]):
        per_channel = []
        for c in range(x.shape[1]):
            a, b = x[n, c].astype(np.float64), y[n, c].astype(np.float64)

            def blur(img):
                return scipy.signal.convolve2d(img, kernel, mode="valid")

            mu_a, mu_b = blur(a), blur(b)
            var_a = blur(a * a) - mu_a**2
            var_b = blur(b * b) - mu_b**2
            cov = blur(a * b) - mu_a * mu_b
            ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            per_channel.append(ssim_map.mean())
        out[n] = np.mean(per_channel)
    return out


class FakeI3D(torch.nn.Module):
    """Stands in for `i3d_torchscript.pt`: same call signature, checks the StyleGAN-V call, cheap features."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if not (rescale and resize and return_features):
            raise RuntimeError("expected rescale=True, resize=True, return_features=True")
        if x.dtype != torch.uint8:
            raise RuntimeError("expected uint8 input")
        v = x.float() / 127.5 - 1  # what rescale=True does
        m = v.mean(dim=(2, 3, 4))
        s = v.std(dim=(2, 3, 4))
        d = (v[:, :, 1:] - v[:, :, :-1]).abs().mean(dim=(2, 3, 4))
        return torch.cat([m, s, d, m * s], dim=1)


def save_fake_i3d(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, but the I3D is TorchScript
        torch.jit.script(FakeI3D()).save(str(path))
    return path
