"""How much memory one clip needs in the model, and a check, before anything is allocated, that the device has it
(with a tile size that fits when it does not)."""

from __future__ import annotations

import os

import torch

from vidtok.errors import ConfigError
from vidtok.tiling import SpatialTiles

# Peak activation memory of one clip through encoder and decoder (no gradients), in float32 values per pixel of the
# clip (frames × height × width) per channel of the model's full-resolution level. Measured on the CPU with
# benchmarks/memory_estimate.py, full-size 488 KL model (width 128), peak resident set growth between clip sizes:
# 17×32² -> 17×64²: 13.5, 17×64² -> 17×96²: 10.5; rounded up from the larger.
ACTIVATION_VALUES_PER_PIXEL_CHANNEL = 14


def activation_width(model) -> int:
    """Channels of the decoder's full-resolution level (its last convolution's input), which sets the peak."""
    return int(model.get_last_layer().shape[1])


def estimate_peak_bytes(model, frames: int, height: int, width: int) -> int:
    """Activation memory one clip of `frames` frames of `height × width` needs in float32, by the per-pixel
    estimate above (the weights come on top)."""
    return ACTIVATION_VALUES_PER_PIXEL_CHANNEL * activation_width(model) * frames * height * width * 4


def device_memory_bytes(device: torch.device | str) -> int | None:
    """Total memory of `device`: the GPU's, or the machine's physical memory for the CPU (None if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def check_memory(
    model, frames: int, height: int, width: int, tiles: SpatialTiles | None, device: torch.device | str
) -> None:
    """Stop before allocating when one clip (or, with `tiles`, one tile of it) would need more memory than
    `device` has, with an error that names `--tile_size` and a tile size that fits.

    Raises:
        ConfigError: the clip does not fit.
    """
    total = device_memory_bytes(device)
    if total is None:
        return
    clip_bytes = 2 * 3 * frames * height * width * 4  # the clip and its reconstruction, which tiling keeps whole
    tile = tiles.size if tiles is not None else None
    if tile is None:
        need = estimate_peak_bytes(model, frames, height, width)
    else:
        need = estimate_peak_bytes(model, frames, min(tile, height), min(tile, width)) + clip_bytes
    if need <= total:
        return
    f = model.spatial_downsample_factor
    room = total - clip_bytes
    fits = int((max(room, 0) / estimate_peak_bytes(model, frames, 1, 1)) ** 0.5) // (2 * f) * f
    what = f"{tile}×{tile} tiles" if tile else f"{height}×{width} frames"
    if fits >= f:
        tiled = estimate_peak_bytes(model, frames, fits, fits) + clip_bytes
        suggestion = f"pass --tile_size {fits} or smaller (about {tiled / 2**30:.1f} GiB)"
    else:
        suggestion = "use fewer frames per clip (--chunk_size) and --tile_size"
    raise ConfigError(
        f"{frames}-frame clips of {what} need about {need / 2**30:.0f} GiB of activations with this model, more "
        f"than the {total / 2**30:.0f} GiB the {torch.device(device).type} has: {suggestion}"
    )
