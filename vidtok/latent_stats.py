"""Exact statistics of a tokenized dataset, accumulated while encoding and merged across processes.

KL models (:class:`LatentMoments`): per channel count, mean and sum of squared deviations (M2) of the posterior
means, in float64, updated per video and merged with the parallel rule of Chan, Golub and LeVeque, so the result does
not depend on how the videos were split over processes (up to float64 rounding). Latent diffusion trainers scale
latents by ``1 / std`` over all channels: ``scale_factor``.

FSQ models (:class:`CodeUsage`): the histogram of token indices (integers, merged by adding), from which the
perplexity ``exp(entropy)``, the fraction of the codebook used and the usage of each FSQ level's values follow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LatentMoments:
    """Running per-channel moments of KL latents ``[N, C, T, H, W]``."""

    channels: int
    count: int = 0
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.channels)
        if self.m2 is None:
            self.m2 = np.zeros(self.channels)

    def update(self, latents: np.ndarray) -> None:
        """Add a video's latents ``[N, C, T', H', W']`` (clips first, channels second)."""
        if latents.ndim != 5 or latents.shape[1] != self.channels:
            raise ValueError(f"expected latents [N, {self.channels}, T, H, W], got {latents.shape}")
        values = np.moveaxis(latents.astype(np.float64), 1, 0).reshape(self.channels, -1)  # [C, M]
        mean = values.mean(axis=1)
        part = LatentMoments(self.channels, values.shape[1], mean, ((values - mean[:, None]) ** 2).sum(axis=1))
        self.merge(part)

    def merge(self, other: LatentMoments) -> None:
        """Fold in the moments of other data (Chan et al.'s pairwise update)."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total

    def to_dict(self) -> dict[str, Any]:
        """Per channel mean/std, the overall mean/std over all channels and ``scale_factor = 1 / std``
        (population standard deviations)."""
        if self.count == 0:
            return {"kind": "kl", "count": 0}
        overall_mean = float(self.mean.mean())
        overall_m2 = float(self.m2.sum() + self.count * ((self.mean - overall_mean) ** 2).sum())
        overall_std = math.sqrt(overall_m2 / (self.count * self.channels))
        return {
            "kind": "kl",
            "count_per_channel": self.count,
            "mean": self.mean.tolist(),
            "std": np.sqrt(self.m2 / self.count).tolist(),
            "overall_mean": overall_mean,
            "overall_std": overall_std,
            "scale_factor": 1.0 / overall_std if overall_std > 0 else None,
        }


@dataclass
class CodeUsage:
    """Histogram of FSQ token indices and the usage statistics it gives."""

    levels: Sequence[int]
    histogram: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.levels = [int(v) for v in self.levels]
        if self.histogram is None:
            self.histogram = np.zeros(int(np.prod(self.levels)), dtype=np.int64)

    def update(self, indices: np.ndarray) -> None:
        """Add a video's token indices (any shape)."""
        flat = indices.astype(np.int64).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= self.histogram.size):
            raise ValueError(f"token indices outside [0, {self.histogram.size})")
        self.histogram += np.bincount(flat, minlength=self.histogram.size)

    def merge(self, other: CodeUsage) -> None:
        self.histogram += other.histogram

    def level_usage(self) -> list[list[int]]:
        """For each FSQ dimension, how often each of its values occurred (digit ``d`` of index ``i`` is
        ``i // prod(levels[:d]) % levels[d]``, the regularizer's mixed-radix order)."""
        codes = np.arange(self.histogram.size)
        usage, basis = [], 1
        for level in self.levels:
            digits = codes // basis % level
            usage.append(np.bincount(digits, weights=self.histogram, minlength=level).astype(np.int64).tolist())
            basis *= level
        return usage

    def to_dict(self) -> dict[str, Any]:
        total = int(self.histogram.sum())
        result: dict[str, Any] = {"kind": "fsq", "count": total, "codebook_size": int(self.histogram.size),
                                  "levels": self.levels}
        if total:
            p = self.histogram[self.histogram > 0] / total
            result["perplexity"] = float(np.exp(-(p * np.log(p)).sum()))
            result["fraction_used"] = float((self.histogram > 0).sum() / self.histogram.size)
        result["level_usage"] = self.level_usage()
        result["histogram"] = self.histogram.tolist()
        return result


def stats_for(model_info: Mapping[str, Any]) -> LatentMoments | CodeUsage:
    """Empty statistics for the model a token file describes (its ``meta["model"]``)."""
    if model_info["kind"] == "fsq":
        return CodeUsage(model_info["levels"])
    return LatentMoments(int(model_info["z_channels"]))
