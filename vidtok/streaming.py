"""Frame-exact streaming for causal models (v1.0 and v1.1), optionally on spatial tiles: encode a video chunk by
chunk as its frames are read, and decode latents chunk by chunk, with results equal to the whole-clip pass (exactly
so without tiles) and memory that does not grow with the video's length or, with tiles, its frame size.

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

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vidtok.modules.causal_conv import CausalConv1d, CausalConv3d, TimeBuffer, pad_time_front
from vidtok.modules.resample import LinearUpsampleStream, TemporalDownsample, TemporalUpsample
from vidtok.tiling import Tiling, run_tiled


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


class _TiledStream:
    """One `StreamState` per spatial tile (a single one without tiling) and the blended pass over all tiles."""

    def __init__(self, network: nn.Module, tiling: Tiling | None, scale: float, multiple: int):
        self.network = network
        self.tiling = tiling
        self.scale = scale
        self.multiple = multiple
        self.states: dict[tuple[int, int], StreamState] = {}

    def _run_tile(self, x: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
        state = self.states.setdefault(tile, StreamState(self.network))
        with state.active():
            return self.network.forward_frames(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.tiling is None:
            return self._run_tile(x, (0, 0))
        return run_tiled(self._run_tile, x, self.tiling, self.scale, self.multiple)

    def finish(self) -> None:
        for state in self.states.values():
            state.finish()


class StreamingEncoder:
    """Encodes a video pushed in chunks of frames; `push` returns the latent frames that are complete so far.

    With `num_frames` the front padding is the whole-clip pass's for that length; without it, it is that of
    T ≡ 1 (mod tdf), the lengths v1.0 models accept (17, 33, …). KL latents are the posterior mean, or samples of
    the posterior with `sample=True` (drawn chunk by chunk, so not the draws of a whole-clip `encode`). `tiling`
    (pixels) encodes each frame in overlapping tiles and blends the encoder outputs before quantisation.
    """

    def __init__(
        self, model, num_frames: int | None = None, tiling: Tiling | None = None, sample: bool = False
    ):
        _require_causal(model)
        self.model = model
        encoder = model.encoder
        f = encoder.spatial_downsample_factor
        tdf = encoder.time_downsample_factor
        self._pad = encoder.layout.front_pad(num_frames if num_frames is not None else 1, tdf)
        self._started = False
        self._stream = _TiledStream(encoder, tiling, 1 / f, f)
        self._regularizer_kwargs = {} if model.is_fsq else {"sample": sample}

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`frames` `[B, 3, t, H, W]` -> (latent `[B, z, t', H/f, W/f]`, regularizer log); t' may be 0."""
        if not self._started and frames.shape[2]:
            frames = pad_time_front(frames, self._pad, self.model.encoder.init_pad_mode)
            self._started = True
        h = self._stream.run(frames)
        return self.model.regularization(h, **self._regularizer_kwargs)


class StreamingDecoder:
    """Decodes latents pushed in chunks; `push` returns the frames that are final, `finish` the rest.

    `tiling` (latent positions) decodes each frame in overlapping tiles and blends the outputs.
    """

    def __init__(self, model, tiling: Tiling | None = None):
        _require_causal(model)
        self.model = model
        decoder = model.decoder
        self._to_drop = decoder.time_downsample_factor - 1 if decoder.layout.crop_output else 0
        self._stream = _TiledStream(decoder, tiling, model.spatial_downsample_factor, 1)
        self._empty: torch.Tensor | None = None  # a zero-frame latent shaped like the pushed ones

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        drop = min(self._to_drop, x.shape[2])
        self._to_drop -= drop
        return x[:, :, drop:]

    @torch.no_grad()
    def push(self, z: torch.Tensor, from_indices: bool = False) -> torch.Tensor:
        """Latent `[B, z, t', h, w]` (or FSQ indices `[B, t', h, w]`) -> video frames `[B, 3, t, H, W]`."""
        if from_indices:
            z = self.model.regularization.indices_to_codes(z).to(next(self.model.decoder.parameters()).dtype)
        self._empty = z[:, :, :0]
        return self._crop(self._stream.run(z))

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """The frames held back for lookahead (v1.1 upsamplers); call once, at the end of the video."""
        if self._empty is None:
            raise ValueError("finish() before any latent was pushed")
        self._stream.finish()
        # an empty chunk flows through every layer; each upsampler emits what it held, in network order
        return self._crop(self._stream.run(self._empty))


def encode_in_chunks(
    model, x: torch.Tensor, chunk_frames: int, tiling: Tiling | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Encode a whole clip `[B, 3, T, H, W]` by streaming it in chunks of `chunk_frames` frames."""
    encoder = StreamingEncoder(model, num_frames=x.shape[2], tiling=tiling)
    parts = [encoder.push(x[:, :, i : i + chunk_frames]) for i in range(0, x.shape[2], chunk_frames)]
    z = torch.cat([p[0] for p in parts], dim=2)
    log = {}
    if "indices" in parts[0][1]:
        log["indices"] = torch.cat([p[1]["indices"] for p in parts], dim=1)
    return z, log


def decode_in_chunks(model, z: torch.Tensor, chunk_latents: int, tiling: Tiling | None = None) -> torch.Tensor:
    """Decode a latent `[B, z, T', h, w]` by streaming it in chunks of `chunk_latents` latent frames."""
    decoder = StreamingDecoder(model, tiling=tiling)
    parts = [decoder.push(z[:, :, i : i + chunk_latents]) for i in range(0, z.shape[2], chunk_latents)]
    parts.append(decoder.finish())
    return torch.cat(parts, dim=2)
