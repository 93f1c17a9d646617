"""Tile-major streaming: one spatial tile at a time through the whole video, for frames too large for one stream
state, in memory bounded by the tile and the chunk rather than by the frame size or the video's length.

Streaming every tile of a frame at once keeps every tile's stream state at once: the state grows with the frame's
area (tens of GiB at 1080p for the full-size models). Tile-major runs one tile through the whole video, then the
next: only one tile's state is alive, the video is read again for every tile, and the tiles' outputs are blended
into a file, a few frames of which are in memory at a time. The result is the whole-clip tiled pass of
:mod:`vidtok.tiling` up to float rounding.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidtok.precision import Precision
from vidtok.streaming import (
    FrameWindow,
    StreamingDecoder,
    StreamingEncoder,
    decoded_before_first_frame,
    pad_chunks,
    padded_stream_length,
    require_causal,
)
from vidtok.tiling import SpatialTiles, Tiling, placements, weight_sum

ChunkSource = Callable[[], Iterable[torch.Tensor]]
"""Each call reads the whole input again, in order: chunks `[B, C, t, H, W]` (CPU), all the same B, C, H, W."""

TileRunner = Callable[[Iterable[torch.Tensor]], Iterator[tuple[torch.Tensor, int]]]
"""Runs one tile's chunks through a fresh stream; yields each output piece `[B, C, t, h, w]` and the bytes the
stream state holds after it."""


class BlendedFrames:
    """Tile outputs blended into a float32 file of frames `[T, B·C, H, W]`, as :func:`vidtok.tiling.run_tiled`
    blends them in memory: weighted sums added tile by tile, divided by the summed weights when read.

    Only the frames being added or read are mapped, so memory holds a chunk of frames, not the video (a memory map
    of the whole file would count every page touched as resident). The file grows as frames are added.
    """

    def __init__(self, path: str | Path, batch: int, channels: int, weight: torch.Tensor):
        self.path = Path(path)
        self.batch, self.channels = batch, channels
        self.weight = weight  # [H, W], the sum of all tiles' weights
        self.num_frames = 0
        self._frame = (batch * channels, *weight.shape)
        self.path.write_bytes(b"")

    def _map(self, t0: int, t1: int, mode: str) -> np.memmap:
        frame_bytes = int(np.prod(self._frame)) * 4
        return np.memmap(self.path, np.float32, mode, offset=t0 * frame_bytes, shape=(t1 - t0, *self._frame))

    def add(self, t0: int, values: torch.Tensor, rows: slice, cols: slice) -> None:
        """Add `values` `[B, C, t, h, w]` to frames `t0 .. t0+t` over `rows × cols`."""
        t1 = t0 + values.shape[2]
        if t1 > self.num_frames:
            os.truncate(self.path, t1 * int(np.prod(self._frame)) * 4)  # new frames read as zeros
            self.num_frames = t1
        view = self._map(t0, t1, "r+")
        view[:, :, rows, cols] += values.permute(2, 0, 1, 3, 4).reshape(t1 - t0, -1, *values.shape[3:]).numpy()
        view.flush()
        del view

    def read(self, t0: int, t1: int) -> torch.Tensor:
        """Blended frames `t0 .. t1`: `[B, C, t, H, W]`."""
        frames = torch.from_numpy(np.array(self._map(t0, min(t1, self.num_frames), "r")))
        return frames.view(-1, self.batch, self.channels, *self._frame[1:]).permute(1, 2, 0, 3, 4) / self.weight


def blend_tile_major(
    run_tile: TileRunner,
    read_chunks: ChunkSource,
    size: tuple[int, int],
    tiling: Tiling,
    scale: float,
    multiple: int,
    path: str | Path,
    on_push: Callable[[int], None] | None = None,
) -> BlendedFrames:
    """Run every spatial tile of the input through the whole video, one tile after another, and blend the outputs
    into a file at `path` (see :class:`BlendedFrames`). The input's frames are `size` (H, W); tiles, weights and
    blending are those of :func:`vidtok.tiling.run_tiled` (`scale`, `multiple` as there), so the result is the
    whole-clip tiled pass's. `on_push(held_bytes)` is called after every chunk of every tile."""
    H, W = size
    tiles = placements(H, W, tiling, scale, multiple)
    out: BlendedFrames | None = None
    for tile in tiles:
        t = 0
        for y, held in run_tile(chunk[..., tile.rows, tile.cols] for chunk in read_chunks()):
            y = y.float().cpu()
            if out is None:
                weight = weight_sum(tiles, round(H * scale), round(W * scale))
                out = BlendedFrames(path, y.shape[0], y.shape[1], weight)
            if y.shape[2]:
                out.add(t, y * tile.weight, tile.out_rows, tile.out_cols)
                t += y.shape[2]
            if on_push is not None:
                on_push(held)
    if out is None:
        raise ValueError("tile-major streaming got no frames")
    return out


def encoder_tiles(model, num_frames: int, precision: Precision, device: torch.device | str) -> TileRunner:
    """Streams a tile's frames through the encoder (front padding of a `num_frames` clip); yields encoder outputs
    before the regularizer, as :func:`vidtok.tiling.encode_tiled` blends them."""
    require_causal(model)

    def run(chunks: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, int]]:
        encoder = StreamingEncoder(model, num_frames=num_frames)
        for chunk in chunks:
            with precision.encoding(device):
                h = encoder.features(chunk.to(device))
            yield h, encoder.state.nbytes()

    return run


def decoder_tiles(
    model, skip: int, num_frames: int, precision: Precision, device: torch.device | str
) -> TileRunner:
    """Streams a tile's latents through the decoder; of the frames decoded, drops the first `skip` and keeps
    `num_frames` (see :class:`FrameWindow`)."""
    require_causal(model)

    def run(latents: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, int]]:
        decoder = StreamingDecoder(model)
        window = FrameWindow(skip, num_frames)
        for z in latents:
            with precision.decoding(device):
                y = decoder.push(z.to(device))
            yield window(y), decoder.state.nbytes()
        with precision.decoding(device):
            y = decoder.finish()
        yield window(y), decoder.state.nbytes()

    return run


def _regularized(model, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Blended encoder outputs -> latents (the KL posterior mean) and the regularizer's log."""
    return model.regularization(h, **({} if model.is_fsq else {"sample": False}))


class TileMajorProgress:
    """A progress bar over tiles × chunks (or none) that also records the largest stream state held after a push."""

    def __init__(self, total: int, enabled: bool, desc: str = "tiles x chunks"):
        self.peak_state_bytes = 0
        self._bar = tqdm(total=total, desc=desc, disable=not enabled)

    def __call__(self, held_bytes: int) -> None:
        self.peak_state_bytes = max(self.peak_state_bytes, held_bytes)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _num_tiles(size: tuple[int, int], tiling: Tiling, multiple: int) -> int:
    return len(tiling.spans(size[0], multiple)) * len(tiling.spans(size[1], multiple))


def encode_tile_major(
    model,
    read_chunks: ChunkSource,
    size: tuple[int, int],
    length: int,
    tiles: SpatialTiles,
    workdir: str | Path,
    precision: str | Precision = "full",
    device: torch.device | str = "cpu",
    on_push: Callable[[int], None] | None = None,
) -> BlendedFrames:
    """Encoder pass of tile-major streaming: every pixel tile of `size` streams through the whole video
    (`read_chunks()` is called once per tile and must give `length` frames `[B, 3, t, H, W]`, padding included);
    the encoder outputs are blended, before the regularizer, into `workdir/encoded.f32`. Read latents from the
    result with :func:`tile_major_latents`."""
    f = model.spatial_downsample_factor
    runner = encoder_tiles(model, length, Precision.of(precision), device)
    return blend_tile_major(runner, read_chunks, size, tiles.pixels, 1 / f, f, Path(workdir) / "encoded.f32", on_push)


def tile_major_latents(model, encoded: BlendedFrames, step: int) -> Iterator[tuple[torch.Tensor, dict]]:
    """The latents of a tile-major encoder pass, `step` latent frames at a time: `(z [B, z, t', h, w], log)`."""
    for t0 in range(0, encoded.num_frames, step):
        yield _regularized(model, encoded.read(t0, t0 + step))


def decode_tile_major(
    model,
    read_latents: ChunkSource,
    size: tuple[int, int],
    skip: int,
    num_frames: int,
    tiles: SpatialTiles,
    workdir: str | Path,
    precision: str | Precision = "full",
    device: torch.device | str = "cpu",
    on_push: Callable[[int], None] | None = None,
) -> BlendedFrames:
    """Decoder pass of tile-major streaming: every latent tile of `size` (h, w) streams through all the latents
    (`read_latents()`, once per tile: `[B, z, t', h, w]` float); of the frames decoded, the first `skip` are dropped
    and `num_frames` kept, blended into `workdir/decoded.f32`."""
    runner = decoder_tiles(model, skip, num_frames, Precision.of(precision), device)
    f = model.spatial_downsample_factor
    return blend_tile_major(runner, read_latents, size, tiles.latents, f, 1, Path(workdir) / "decoded.f32", on_push)


def tile_major_reconstruct(
    model,
    read_chunks: ChunkSource,
    num_frames: int,
    tiles: SpatialTiles,
    precision: str | Precision = "full",
    device: torch.device | str = "cpu",
    progress: TileMajorProgress | bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Reconstruct a video with a causal model one spatial tile at a time, in bounded memory at any frame size.

    `read_chunks()` reads the video again from its start, `[3, t, H, W]` chunks on the CPU in [-1, 1],
    `num_frames` in all; it is called once per encoder tile and once more at the end. Every pixel tile streams
    through the whole video (padded as :class:`vidtok.streaming.StreamingReconstructor` pads it); the blended
    encoder outputs go to a temporary file, their latents (the KL posterior mean) through every latent tile of the
    decoder, blended into a second file; at the end the frames are read back beside their inputs. Yields
    `(inputs, outputs)` as :func:`vidtok.reconstruct.stream_reconstruct` does. Only one tile's stream state is held
    at a time. The result is the whole-clip tiled pass (:func:`vidtok.tiling.encode_tiled`,
    :func:`~vidtok.tiling.decode_tiled`) over the padded video, up to float rounding. `progress` is a
    :class:`TileMajorProgress` or whether to show one.
    """
    precision = Precision.of(precision)
    first = next(iter(read_chunks()))
    H, W = first.shape[-2:]
    chunk = first.shape[1]
    length = padded_stream_length(model, num_frames)
    f, tdf = model.spatial_downsample_factor, model.time_downsample_factor
    step = max(1, chunk // tdf)
    latents = model.encoder.latent_frames(length)
    if not isinstance(progress, TileMajorProgress):
        pushes = _num_tiles((H, W), tiles.pixels, f) * -(-length // chunk) + _num_tiles(
            (H // f, W // f), tiles.latents, 1
        ) * (-(-latents // step) + 1)
        progress = TileMajorProgress(pushes, progress)

    def frames() -> Iterator[torch.Tensor]:
        return pad_chunks((c.unsqueeze(0) for c in read_chunks()), length)

    with tempfile.TemporaryDirectory(prefix="vidtok-tiles-") as workdir:
        encoded = encode_tile_major(model, frames, (H, W), length, tiles, workdir, precision, device, progress)

        def read_latents() -> Iterator[torch.Tensor]:
            return (z.float() for z, _ in tile_major_latents(model, encoded, step))

        decoded = decode_tile_major(
            model, read_latents, (H // f, W // f), decoded_before_first_frame(model, length), num_frames, tiles,
            workdir, precision, device, progress,
        )
        progress.close()
        t = 0
        for x in read_chunks():
            out = decoded.read(t, t + x.shape[1])
            t += x.shape[1]
            yield x, out[0].clamp(-1, 1)
