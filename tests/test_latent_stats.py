"""Latent statistics: merged partial moments equal the moments of all the data, whatever the split; FSQ usage
agrees with the regularizer's own digits."""

from __future__ import annotations

import numpy as np
import torch

from vidtok.latent_stats import CodeUsage, LatentMoments, stats_for
from vidtok.modules.fsq import FSQRegularizer


def test_merged_moments_equal_the_moments_of_all_latents() -> None:
    rng = np.random.default_rng(0)
    loc, scale = np.array([1, -2, 0, 5])[:, None, None, None], np.array([1, 3, 0.5, 2])[:, None, None, None]
    videos = [loc + scale * rng.normal(size=(n, 4, 3, 4, 4)) for n in (1, 2, 3, 1)]  # [N, C, T', H', W']
    one = LatentMoments(4)
    for video in videos:
        one.update(video.astype(np.float32))
    first, second = LatentMoments(4), LatentMoments(4)
    for video in videos[::2]:
        first.update(video.astype(np.float32))
    for video in videos[1::2]:
        second.update(video.astype(np.float32))
    second.merge(first)

    values = np.concatenate([np.moveaxis(v.astype(np.float32).astype(np.float64), 1, 0).reshape(4, -1)
                             for v in videos], axis=1)
    for stats in (one.to_dict(), second.to_dict()):
        assert stats["count_per_channel"] == values.shape[1]
        np.testing.assert_allclose(stats["mean"], values.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(stats["std"], values.std(axis=1), rtol=1e-12)
        np.testing.assert_allclose(stats["overall_std"], values.std(), rtol=1e-12)
        np.testing.assert_allclose(stats["scale_factor"], 1 / values.std(), rtol=1e-12)


def test_code_usage_histogram_perplexity_and_levels() -> None:
    levels = [8, 5, 3]
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 40, size=(2, 3, 4, 4))  # only codes below 40 are used
    usage = CodeUsage(levels)
    usage.update(indices[:1].astype(np.uint8))
    other = CodeUsage(levels)
    other.update(indices[1:].astype(np.uint8))
    usage.merge(other)
    stats = usage.to_dict()

    counts = np.bincount(indices.ravel(), minlength=120)
    assert stats["histogram"] == counts.tolist() and stats["count"] == indices.size
    p = counts[counts > 0] / indices.size
    assert np.isclose(stats["perplexity"], np.exp(-(p * np.log(p)).sum()))
    assert stats["fraction_used"] == (counts > 0).sum() / 120
    # per-level usage from the regularizer's own index -> code mapping: code = (digit - L//2) / (L//2)
    codes = FSQRegularizer(levels=levels).indices_to_codes(torch.from_numpy(indices.reshape(1, -1)))[0].numpy()
    for dim, level in enumerate(levels):
        digits = np.rint(codes[dim] * (level // 2) + level // 2).astype(np.int64)
        assert stats["level_usage"][dim] == np.bincount(digits, minlength=level).tolist()


def test_stats_for_picks_the_kind() -> None:
    assert isinstance(stats_for({"kind": "fsq", "levels": [8, 8, 8]}), CodeUsage)
    assert stats_for({"kind": "kl", "z_channels": 4}).channels == 4
