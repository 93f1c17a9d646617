"""Frame-exact streaming for causal models (v1.0 and v1.1): encode a video chunk by chunk as its frames are read,
and decode latents chunk by chunk, with results equal to the whole-clip pass and memory that does not grow with the
video's length; and tile-major streaming (:func:`blend_tile_major`), which runs one spatial tile at a time through
the whole video so that memory does not grow with the frame size either.

Every time-mixing layer of a causal VidTok model is a causal sliding window (convs, the temporal average), a
frame repeat, or (v1.1) a linear ×2 upsampler that needs one frame of lookahead. While streaming, each keeps the
few input frames its next outputs need (`TimeBuffer`, `LinearUpsampleStream`); every other layer works per frame.
A chunk can hold any number of frames, including ones that do not fill a temporal window: the leftovers wait for
the next chunk.

    encoder = StreamingEncoder(model, num_frames=T)       # T, when known, fixes the v1.1 front padding
    latents = [encoder.push(chunk)[0] for chunk in chunks]  # chunk: [B, 3, t, H, W] -> [B, z, t', h, w]
    decoder = StreamingDecoder(model)
    frames = [decoder.push(z) for z in latents] + [decoder.finish()]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vidtok.modules.causal_conv import CausalConv1d, CausalConv3d, TimeBuffer, pad_time_front
from vidtok.modules.resample import LinearUpsampleStream, TemporalDownsample, TemporalUpsample
from vidtok.precision import Precision
from vidtok.tiling import Tiling, placements, weight_sum


class StreamState:
    """The streaming buffers of every time-mixing layer of one network, for one video (or one tile of it)."""

    def __init__(self, network: nn.Module):
        self.network = network
        self.buffers: dict[nn.Module, TimeBuffer | LinearUpsampleStream] = {}
        for m in network.modules():
            if isinstance(m, CausalConv3d | CausalConv1d) or (isinstance(m, TemporalDownsample) and m.causal):
                self.buffers[m] = TimeBuffer()
            elif isinstance(m, TemporalUpsample) and m.interpolation_mode == "trilinear":
                self.buffers[m] = LinearUpsampleStream()

    def held(self) -> dict[nn.Module, torch.Tensor]:
        """The frames each layer keeps for its next outputs, `[B, C, t, h, w]` (layers holding none left out)."""
        held = {}
        for m, buf in self.buffers.items():
            frames = buf.frames if isinstance(buf, TimeBuffer) else buf.last
            if frames is not None and frames.numel():
                held[m] = frames if frames.ndim == 5 else frames.unsqueeze(2)
        return held

    def nbytes(self) -> int:
        """Bytes of all the frames held."""
        return sum(t.numel() * t.element_size() for t in self.held().values())

    def finish(self) -> None:
        """Mark the end of the video: lookahead layers emit what they hold on the next (empty) pass."""
        for buf in self.buffers.values():
            if isinstance(buf, LinearUpsampleStream):
                buf.final = True

    @contextmanager
    def active(self) -> Iterator[None]:
        for m, buf in self.buffers.items():
            m.stream = buf
        try:
            yield
        finally:
            for m in self.buffers:
                m.stream = None


def _require_causal(model) -> None:
    if not model.is_causal:
        raise ValueError("streaming needs a causal model: a non-causal model's every frame depends on the whole clip")


class StreamingEncoder:
    """Encodes a video (or one spatial tile of it) pushed in chunks of frames; `push` returns the latent frames that
    are complete so far.

    With `num_frames` the front padding is the whole-clip pass's for that length; without it, it is that of
    T ≡ 1 (mod tdf), the lengths v1.0 models accept (17, 33, …). KL latents are the posterior mean, or samples of
    the posterior with `sample=True` (drawn chunk by chunk, so not the draws of a whole-clip `encode`).
    """

    def __init__(self, model, num_frames: int | None = None, sample: bool = False):
        _require_causal(model)
        self.model = model
        encoder = model.encoder
        tdf = encoder.time_downsample_factor
        self._pad = encoder.layout.front_pad(num_frames if num_frames is not None else 1, tdf)
        self._started = False
        self.state = StreamState(encoder)
        self._regularizer_kwargs = {} if model.is_fsq else {"sample": sample}

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """`frames` `[B, 3, t, H, W]` -> the encoder's output `[B, C, t', H/f, W/f]` before the regularizer."""
        if not self._started and frames.shape[2]:
            frames = pad_time_front(frames, self._pad, self.model.encoder.init_pad_mode)
            self._started = True
        with self.state.active():
            return self.model.encoder.forward_frames(frames)

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`frames` `[B, 3, t, H, W]` -> (latent `[B, z, t', H/f, W/f]`, regularizer log); t' may be 0."""
        return self.model.regularization(self.features(frames), **self._regularizer_kwargs)


class StreamingDecoder:
    """Decodes latents (of a whole frame or one spatial tile) pushed in chunks; `push` returns the frames that are
    final, `finish` the rest."""

    def __init__(self, model):
        _require_causal(model)
        self.model = model
        decoder = model.decoder
        self._to_drop = decoder.time_downsample_factor - 1 if decoder.layout.crop_output else 0
        self.state = StreamState(decoder)
        self._empty: torch.Tensor | None = None  # a zero-frame latent shaped like the pushed ones

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        drop = min(self._to_drop, x.shape[2])
        self._to_drop -= drop
        return x[:, :, drop:]

    def _run(self, z: torch.Tensor) -> torch.Tensor:
        with self.state.active():
            return self._crop(self.model.decoder.forward_frames(z))

    @torch.no_grad()
    def push(self, z: torch.Tensor, from_indices: bool = False) -> torch.Tensor:
        """Latent `[B, z, t', h, w]` (or FSQ indices `[B, t', h, w]`) -> video frames `[B, 3, t, H, W]`."""
        if from_indices:
            z = self.model.regularization.indices_to_codes(z).to(next(self.model.decoder.parameters()).dtype)
        self._empty = z[:, :, :0]
        return self._run(z)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """The frames held back for lookahead (v1.1 upsamplers); call once, at the end of the video."""
        if self._empty is None:
            raise ValueError("finish() before any latent was pushed")
        self.state.finish()
        # an empty chunk flows through every layer; each upsampler emits what it held, in network order
        return self._run(self._empty)


def encode_in_chunks(model, x: torch.Tensor, chunk_frames: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Encode a whole clip `[B, 3, T, H, W]` by streaming it in chunks of `chunk_frames` frames."""
    encoder = StreamingEncoder(model, num_frames=x.shape[2])
    parts = [encoder.push(x[:, :, i : i + chunk_frames]) for i in range(0, x.shape[2], chunk_frames)]
    z = torch.cat([p[0] for p in parts], dim=2)
    log = {}
    if "indices" in parts[0][1]:
        log["indices"] = torch.cat([p[1]["indices"] for p in parts], dim=1)
    return z, log


def decode_in_chunks(model, z: torch.Tensor, chunk_latents: int) -> torch.Tensor:
    """Decode a latent `[B, z, T', h, w]` by streaming it in chunks of `chunk_latents` latent frames."""
    decoder = StreamingDecoder(model)
    parts = [decoder.push(z[:, :, i : i + chunk_latents]) for i in range(0, z.shape[2], chunk_latents)]
    parts.append(decoder.finish())
    return torch.cat(parts, dim=2)


class FrameWindow:
    """Keeps `count` frames of a stream of decoded pieces `[B, C, t, H, W]` after dropping the first `skip` (the
    reconstruction of the encoder's front padding); the frames past them (of the tail padding) are dropped too."""

    def __init__(self, skip: int, count: int):
        self.skip = skip
        self.left = count

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        drop = min(self.skip, x.shape[2])
        self.skip -= drop
        x = x[:, :, drop : drop + self.left]
        self.left -= x.shape[2]
        return x


# --- tile-major streaming ------------------------------------------------------------------------------------------
#
# Streaming every tile of a frame at once keeps every tile's stream state at once: the state grows with the frame's
# area (tens of GiB at 1080p for the full-size models). Tile-major runs one tile through the whole video, then the
# next: only one tile's state is alive, the video is read again for every tile, and the tiles' outputs are blended
# into a file, a few frames of which are in memory at a time.

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
    _require_causal(model)

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
    _require_causal(model)

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
