"""Frame-exact streaming for causal models (v1.0 and v1.1): encode a video chunk by chunk as its frames are read,
and decode latents chunk by chunk, with results equal to the whole-clip pass and memory that does not grow with the
video's length; :class:`StreamingReconstructor` does both for a whole video. Frames too large for one stream state
go one spatial tile at a time instead (:mod:`vidtok.tile_major`).

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

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vidtok.modules.causal_conv import CausalConv1d, CausalConv3d, TimeBuffer, pad_time_front
from vidtok.modules.recompute import stateful_forward
from vidtok.modules.resample import LinearUpsampleStream, TemporalDownsample, TemporalUpsample
from vidtok.precision import Precision


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
            with stateful_forward():
                yield
        finally:
            for m in self.buffers:
                m.stream = None


def require_causal(model) -> None:
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
        require_causal(model)
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
        require_causal(model)
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


# --- a whole video, frames in and frames out ------------------------------------------------------------------------


def padded_stream_length(model, num_frames: int) -> int:
    """The length a causal model streams a `num_frames` video at: the smallest `1 + k·tdf >= num_frames`.

    v1.0 models only take such lengths; v1.1 models take any, but with this length their front padding (`tdf - 1`
    copies of frame 0) is the one the original's chunked long-video mode uses. The tail is filled by repeating the
    last frame, and the reconstructions of those frames are dropped again.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    tdf = model.time_downsample_factor
    return 1 + tdf * -(-(num_frames - 1) // tdf)


class StreamingReconstructor:
    """Reconstruct a video of `num_frames` frames with a causal model while its frames arrive in chunks.

    `push(frames)` (`[B, 3, t, H, W]`, any t) returns the reconstructed frames that are final so far (`[B, 3, t',
    H, W]`, unclamped), in order from frame 0; `finish()`, once every frame was pushed, returns the rest. Memory
    depends on the chunk size and the frame size, not on the video's length. The video is padded to
    :func:`padded_stream_length` by repeating its last frame, so the result is the whole-clip pass
    `model(padded)[:, :, :num_frames]` up to float rounding, with one difference: KL latents are the posterior
    mean (streaming does not sample). The encoder and the decoder run in their stage's `precision`. Frames too
    large for one stream state go tile by tile instead: :func:`vidtok.tile_major.tile_major_reconstruct`.
    """

    def __init__(self, model, num_frames: int, precision: str | Precision = "full"):
        require_causal(model)
        self.num_frames = num_frames
        self.length = padded_stream_length(model, num_frames)
        self.precision = Precision.of(precision)
        self._encoder = StreamingEncoder(model, num_frames=self.length)
        self._decoder = StreamingDecoder(model)
        self._window = FrameWindow(decoded_before_first_frame(model, self.length), num_frames)
        self._pushed = 0
        self._last: torch.Tensor | None = None  # the last frame pushed, to pad the tail with

    def held_bytes(self) -> int:
        """Bytes of the encoder's and the decoder's stream state (the frames their causal layers keep)."""
        return self._encoder.state.nbytes() + self._decoder.state.nbytes()

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 5:
            raise ValueError(f"expected frames [B, C, t, H, W], got shape {tuple(frames.shape)}")
        if self._pushed + frames.shape[2] > self.num_frames:
            raise ValueError(f"pushed {self._pushed + frames.shape[2]} frames into a {self.num_frames}-frame stream")
        if frames.shape[2] == 0:
            return frames
        self._pushed += frames.shape[2]
        self._last = frames[:, :, -1:]
        return self._run(frames)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        if self._last is None or self._pushed != self.num_frames:
            raise ValueError(f"finish() after {self._pushed} of the stream's {self.num_frames} frames")
        parts = []
        if self.length > self.num_frames:
            parts.append(self._run(self._last.repeat(1, 1, self.length - self.num_frames, 1, 1)))
        with self.precision.decoding(self._last.device):
            parts.append(self._window(self._decoder.finish()))
        out = torch.cat(parts, dim=2)
        assert self._window.left == 0, (self._window.left, self.num_frames)
        return out

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        with self.precision.encoding(frames.device):
            z, _ = self._encoder.push(frames)
        if z.shape[2] == 0:
            return frames[:, :, :0]
        with self.precision.decoding(frames.device):
            return self._window(self._decoder.push(z.float()))


def decoded_before_first_frame(model, length: int) -> int:
    """v1.1 decoders return tdf frames per latent: the first ones reconstruct the encoder's front padding."""
    return model.decoder.output_frames(model.encoder.latent_frames(length)) - length


def pad_chunks(chunks: Iterable[torch.Tensor], length: int) -> Iterator[torch.Tensor]:
    """The chunks `[B, C, t, H, W]`, then the last frame repeated until `length` frames have come out in all."""
    pushed, last = 0, None
    for chunk in chunks:
        pushed += chunk.shape[2]
        last = chunk[:, :, -1:]
        yield chunk
    if last is not None and length > pushed:
        yield last.repeat(1, 1, length - pushed, 1, 1)
