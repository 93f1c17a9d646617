"""Spatial tiling: tile spans, blending, and tiled results against untiled ones."""

from __future__ import annotations

import pytest
import torch

from tests.test_autoencoder import build, clip
from vidtok.tiling import Tiling, decode_tiled, encode_tiled, placements, run_tiled, weight_sum


def test_spans_cover_the_frame_on_the_grid():
    assert Tiling(256, 64).spans(200) == [(0, 200)]
    spans = Tiling(256, 64).spans(1080, multiple=8)
    assert spans[0] == (0, 256) and spans[-1] == (824, 1080)
    assert all(s % 8 == 0 and e - s == 256 for s, e in spans)
    assert all(a[1] - b[0] >= 64 for a, b in zip(spans, spans[1:], strict=False))
    with pytest.raises(ValueError):
        Tiling(64, 64)


def test_blending_an_identity_reproduces_the_input():
    x = torch.randn(1, 2, 3, 37, 50)
    y = run_tiled(lambda tile, _: tile, x, Tiling(16, 6), scale=1.0)
    torch.testing.assert_close(y, x)


def test_reduced_precision_tiles_are_blended_in_fp32():
    x = torch.randn(1, 2, 3, 37, 50).to(torch.bfloat16)
    y = run_tiled(lambda tile, _: tile, x, Tiling(16, 6), scale=1.0)
    # bf16 accumulation of the weighted overlaps would round them; in fp32 the bf16 values come back exactly
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float(), rtol=1e-6, atol=1e-6)


def test_placements_weights_sum_to_the_blend_divisor():
    tiles = placements(37, 50, Tiling(16, 6), scale=2.0)
    assert [t.index for t in tiles[:2]] == [(0, 0), (0, 1)]
    total = weight_sum(tiles, 74, 100)
    assert total.min() > 0  # every output position is covered
    # away from the overlaps a single tile covers a position, with weight 1
    assert total[0, 0] == 1 and total[-1, -1] == 1
    for t in tiles:
        assert t.weight.shape == (t.out_rows.stop - t.out_rows.start, t.out_cols.stop - t.out_cols.start)


def test_blending_a_scaled_map_lands_on_the_output_grid():
    x = torch.randn(1, 1, 1, 12, 12)
    up = run_tiled(lambda t, _: t.repeat_interleave(2, -1).repeat_interleave(2, -2), x, Tiling(8, 4), scale=2.0)
    torch.testing.assert_close(up, x.repeat_interleave(2, -1).repeat_interleave(2, -2))


@pytest.mark.parametrize("causal", [True, False])
def test_tile_as_large_as_the_frame_is_exact(causal):
    model = build(causal, "fsq")
    x = clip(9 if causal else 8, size=32)
    with torch.no_grad():
        _, log = model.encode(x)
        recon = model.decode(model.regularization.indices_to_codes(log["indices"]))
    z, tiled_log = encode_tiled(model, x, Tiling(32, 8))
    assert torch.equal(tiled_log["indices"], log["indices"])
    torch.testing.assert_close(decode_tiled(model, z, Tiling(8, 2)), recon)


@pytest.mark.parametrize("causal", [True, False])
def test_tiled_decode_stays_close_to_untiled_and_improves_with_larger_tiles(causal):
    model = build(causal, "kl")
    x = clip(9 if causal else 8, size=64)
    with torch.no_grad():
        z, _ = model.encode(x, sample=False)
        full = model.decode(z)

    def psnr(tiling):
        err = decode_tiled(model, z, tiling) - full
        return (10 * torch.log10((full.max() - full.min()) ** 2 / (err**2).mean())).item()

    small, large = psnr(Tiling(8, 4)), psnr(Tiling(12, 8))
    # random weights and a 16×16 latent: every output sees most of the frame, so the bound is loose
    assert small > 20 and large > small + 3
