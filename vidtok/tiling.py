"""Spatial tiling: run a network on overlapping tiles of each frame and blend the results, so peak memory depends
on the tile size, not on the frame size.

Tiles overlap by `overlap` pixels (latent positions, when decoding); in an overlap the two results are mixed
with linear ramps, so no seam shows. A tile sees zero padding at its own borders where the full frame would have
neighbours, so tiled and untiled results differ slightly near tile borders, most of all inside the overlaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap, in the units of the tensor being split (pixels for encoding, latents for decoding)."""

    size: int
    overlap: int

    def __post_init__(self) -> None:
        if self.size <= 0 or not 0 <= self.overlap < self.size:
            raise ValueError(f"tiles need size > overlap >= 0, got size={self.size}, overlap={self.overlap}")

    def spans(self, length: int, multiple: int = 1) -> list[tuple[int, int]]:
        """Start/end of the tiles covering `length`; starts are multiples of `multiple`, the last tile ends flush
        with `length` (both `length` and `size` must then be multiples of `multiple`)."""
        if length <= self.size:
            return [(0, length)]
        if self.size % multiple or length % multiple:
            raise ValueError(f"tile size {self.size} and frame size {length} must be multiples of {multiple}")
        step = max(multiple, (self.size - self.overlap) // multiple * multiple)
        starts = list(range(0, length - self.size, step)) + [length - self.size]
        return [(s, s + self.size) for s in starts]


def _ramp(length: int, before: int, after: int) -> torch.Tensor:
    """Weights along one axis of a tile: rising over `before` positions, falling over `after`, else 1."""
    w = torch.ones(length)
    if before:
        w[:before] = (torch.arange(before, dtype=w.dtype) + 0.5) / before
    if after:
        falling = (torch.arange(after, 0, -1, dtype=w.dtype) - 0.5) / after
        w[length - after :] = torch.minimum(w[length - after :], falling)
    return w


@dataclass(frozen=True)
class Placement:
    """Where one tile of the input goes: its slices of the input and of the output (both along H and W), and its
    blending weights `[h_out, w_out]` (linear ramps where it overlaps a neighbour, 1 elsewhere)."""

    index: tuple[int, int]
    rows: slice
    cols: slice
    out_rows: slice
    out_cols: slice
    weight: torch.Tensor


def placements(height: int, width: int, tiling: Tiling, scale: float, multiple: int = 1) -> list[Placement]:
    """The tiles of a `height × width` input, row by row, for an output `scale` times its size; fp32 weights."""
    rows, cols = tiling.spans(height, multiple), tiling.spans(width, multiple)
    out = []
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            o_r0, o_r1, o_c0, o_c1 = (round(v * scale) for v in (r0, r1, c0, c1))
            # ramps only where this tile overlaps a neighbour
            top = round((rows[i - 1][1] - r0) * scale) if i > 0 else 0
            bottom = round((r1 - rows[i + 1][0]) * scale) if i + 1 < len(rows) else 0
            left = round((cols[j - 1][1] - c0) * scale) if j > 0 else 0
            right = round((c1 - cols[j + 1][0]) * scale) if j + 1 < len(cols) else 0
            w = _ramp(o_r1 - o_r0, top, bottom)[:, None] * _ramp(o_c1 - o_c0, left, right)[None, :]
            out.append(Placement((i, j), slice(r0, r1), slice(c0, c1), slice(o_r0, o_r1), slice(o_c0, o_c1), w))
    return out


def weight_sum(tiles: list[Placement], height: int, width: int) -> torch.Tensor:
    """The blending weights of all `tiles` summed over an output of `height × width`: what the blended sum is
    divided by, accumulated in the tiles' order as :func:`run_tiled` does."""
    total = torch.zeros(height, width, dtype=tiles[0].weight.dtype)
    for tile in tiles:
        total[tile.out_rows, tile.out_cols] += tile.weight
    return total


def run_tiled(
    fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
    x: torch.Tensor,
    tiling: Tiling,
    scale: float,
    multiple: int = 1,
) -> torch.Tensor:
    """Apply `fn` to overlapping spatial tiles of `x` `[B, C, T, H, W]` and blend the outputs.

    `fn(tile, (row, col))` maps a tile of size (h, w) to an output of size (h·scale, w·scale) and any number of
    frames (all tiles give the same count); tiles come in the same order on every call. `multiple` keeps tile
    starts on a grid (the encoder's spatial factor), so output tiles land on whole positions. Outputs are blended
    in at least fp32: tiles from a stage running in bf16 or fp16 are not summed in it.
    """
    H, W = x.shape[-2:]
    tiles = placements(H, W, tiling, scale, multiple)
    out = None
    for tile in tiles:
        y = fn(x[..., tile.rows, tile.cols], tile.index)
        if out is None:
            dtype = torch.promote_types(y.dtype, torch.float32)
            out = y.new_zeros((*y.shape[:3], round(H * scale), round(W * scale)), dtype=dtype)
        out[..., tile.out_rows, tile.out_cols] += y * tile.weight.to(y.device)
    return out / weight_sum(tiles, out.shape[-2], out.shape[-1]).to(out.device)


def encode_tiled(model, x: torch.Tensor, tiling: Tiling, sample: bool = False) -> tuple[torch.Tensor, dict]:
    """Whole-clip encode of `[B, 3, T, H, W]` on overlapping pixel tiles (any model); the encoder outputs are
    blended before the regularizer, so FSQ tokens stay valid codes."""
    model._check_video(x)
    f = model.spatial_downsample_factor
    with torch.no_grad():
        h = run_tiled(lambda tile, _: model.encoder(tile), x, tiling, 1 / f, f)
        return model.regularization(h, **({} if model.is_fsq else {"sample": sample}))


def decode_tiled(model, z: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """Whole-clip decode of a latent `[B, z, T', h, w]` on overlapping latent tiles (any model)."""
    with torch.no_grad():
        return run_tiled(lambda tile, _: model.decoder(tile), z, tiling, model.spatial_downsample_factor)


# --- the command line's tiles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpatialTiles:
    """Tiles for encoding (`pixels`) and the matching tiles for decoding (`latents`: pixel sizes / spatial factor)."""

    pixels: Tiling
    latents: Tiling

    @property
    def size(self) -> int:
        return self.pixels.size

    @property
    def overlap(self) -> int:
        return self.pixels.overlap


def resolve_tiles(model, tile_size: int | None, tile_overlap: int | None = None) -> SpatialTiles | None:
    """`--tile_size` / `--tile_overlap` (pixels) as tiles for `model`; `None` without a tile size (no tiling).

    Both must be multiples of the model's spatial factor f (tiles start on the latent grid), the overlap smaller
    than the tile. The overlap defaults to a quarter of the tile, rounded down to a multiple of f.

    Raises:
        ValueError: naming the flag to fix.
    """
    if tile_size is None:
        if tile_overlap is not None:
            raise ValueError("--tile_overlap needs --tile_size (tiling is off without it)")
        return None
    f = model.spatial_downsample_factor
    if tile_size < f or tile_size % f:
        raise ValueError(
            f"--tile_size must be a positive multiple of the model's spatial factor {f}, got {tile_size} "
            f"(e.g. {max(f, tile_size // f * f)})"
        )
    if tile_overlap is None:
        tile_overlap = tile_size // 4 // f * f
    if tile_overlap < 0 or tile_overlap % f or tile_overlap >= tile_size:
        raise ValueError(
            f"--tile_overlap must be a multiple of the model's spatial factor {f} smaller than --tile_size "
            f"{tile_size}, got {tile_overlap}"
        )
    return SpatialTiles(Tiling(tile_size, tile_overlap), Tiling(tile_size // f, tile_overlap // f))
