"""What the inference entry points share: clip lengths, reading a video clip by clip or chunk by chunk, spatial
tiles, streaming reconstruction, video output.

A video is read the way VidTok's scripts read it: every `round(fps / sample_fps)`-th frame from frame 0, resized
(shorter side to `input_height`, antialiased) and centre-cropped to `input_height × input_width`, in [-1, 1]; see
:mod:`vidtok.data.video_read` and :mod:`vidtok.data.transforms`. It is then cut into consecutive, non-overlapping
clips of `chunk_size + 1` frames for causal models (17) or `chunk_size` frames for non-causal ones (16). Each clip
goes through the model on its own, as in the original.

Long videos and causal models: :class:`StreamingReconstructor` encodes and decodes a whole video frame-exactly while
its frames are pushed a chunk at a time (:func:`iter_frame_chunks` reads them from the file that way), so memory
does not grow with the video's length; :class:`VideoWriter` writes the output as it comes. Non-causal models cannot
stream (each frame depends on the whole clip). Large frames: :class:`SpatialTiles` (`--tile_size`) runs encoder and
decoder on overlapping tiles of each frame, see :mod:`vidtok.tiling`; a long video with tiles is streamed
tile-major (:func:`tile_major_reconstruct`), one tile through the whole video at a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

from vidtok.cli import partial_path
from vidtok.data.transforms import VidTokVideoTransform, pad_by_repeating_last
from vidtok.data.video_read import VideoReadError, frame_interval, open_video, read_frames
from vidtok.errors import ConfigError
from vidtok.precision import PRECISIONS, Precision
from vidtok.streaming import (
    BlendedFrames,
    ChunkSource,
    FrameWindow,
    StreamingDecoder,
    StreamingEncoder,
    blend_tile_major,
    decoder_tiles,
    encoder_tiles,
)
from vidtok.tiling import Tiling, decode_tiled, encode_tiled

logger = logging.getLogger(__name__)

def resolve_chunk_size(model, chunk_size: int | None = None, num_frames_per_batch: int | None = None) -> int:
    """The temporal chunk (16 by default) from `--chunk_size` and/or the README's `--num_frames_per_batch`.

    `num_frames_per_batch` is the clip length: `chunk + 1` for causal models (17 -> 16), `chunk` for non-causal
    ones (16 -> 16). Giving both is fine if they agree. The chunk must be a positive multiple of the model's
    temporal factor (the original asserts `chunk_size % tdf == 0`).

    Raises:
        ValueError: naming the flag to fix.
    """
    tdf = model.time_downsample_factor
    from_batch = None
    if num_frames_per_batch is not None:
        from_batch = num_frames_per_batch - 1 if model.is_causal else num_frames_per_batch
        if from_batch < 1:
            raise ValueError(f"--num_frames_per_batch {num_frames_per_batch} is too small for this model")
    if chunk_size is not None and from_batch is not None and chunk_size != from_batch:
        raise ValueError(
            f"--num_frames_per_batch {num_frames_per_batch} means chunk_size {from_batch} for this "
            f"{'causal' if model.is_causal else 'non-causal'} model, but --chunk_size {chunk_size} was given"
        )
    chunk = from_batch if from_batch is not None else (16 if chunk_size is None else chunk_size)
    if chunk < 1 or chunk % tdf:
        hint = (
            f"clips of 1 + k·{tdf} frames, e.g. --num_frames_per_batch {4 * tdf + 1}"
            if model.is_causal
            else f"clips of k·{tdf} frames, e.g. --num_frames_per_batch {4 * tdf}"
        )
        raise ValueError(
            f"chunk_size must be a positive multiple of the model's temporal factor {tdf}, got {chunk}: "
            f"this model takes {hint}"
        )
    return chunk


def clip_length(model, chunk_size: int) -> int:
    """Frames per clip: `chunk_size + 1` for causal models, `chunk_size` otherwise."""
    return chunk_size + 1 if model.is_causal else chunk_size


def long_clip_length(model, num_frames: int, chunk_size: int) -> int:
    """Smallest clip length the model takes that holds `num_frames`: `1 + k·chunk` (causal) or `k·chunk`."""
    if model.is_causal:
        return 1 + chunk_size * max(1, -(-(num_frames - 1) // chunk_size))
    return chunk_size * max(1, -(-num_frames // chunk_size))


def check_frame_size(model, height: int, width: int) -> None:
    """Raise a ValueError naming `--input_height/--input_width` unless both are multiples of the spatial factor."""
    f = model.spatial_downsample_factor
    if height < 1 or width < 1 or height % f or width % f:
        raise ValueError(
            f"--input_height/--input_width must be positive multiples of the model's spatial factor {f}, got "
            f"{height}×{width} (e.g. {max(f, height // f * f)}×{max(f, width // f * f)})"
        )


def str2bool(value: str | bool) -> bool:
    """Command-line booleans as the original parses them: `yes/true/t/y/1` or `no/false/f/n/0`, any case."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def add_precision_arguments(parser: argparse.ArgumentParser, stages: bool = True) -> None:
    """`--precision` (the original's flag) and, with `stages`, `--encode_precision`/`--decode_precision` that
    override it for one stage; read them back with :func:`precision_from_args`."""
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="full",
        help="full (fp32), autocast (fp16 on CUDA, bf16 on CPU), bf16 or fp16",
    )
    if stages:
        for stage in ("encode", "decode"):
            parser.add_argument(
                f"--{stage}_precision", choices=PRECISIONS, default=None,
                help=f"precision of the {stage}r only (default: --precision), e.g. --encode_precision full "
                "--decode_precision bf16",
            )


def precision_from_args(args: argparse.Namespace) -> Precision:
    stage = {name: getattr(args, f"{name}_precision", None) for name in ("encode", "decode")}
    return Precision.of(args.precision, **stage)


def add_model_arguments(parser: argparse.ArgumentParser, *, long_video_help: str, sample_fps_help: str) -> None:
    """The flags both inference scripts share (model, frame sampling, clip layout, tiling, device), with the
    original's names and defaults."""
    parser.add_argument("--seed", type=int, default=42, help="seed (the KL posterior is sampled)")
    add_precision_arguments(parser)
    parser.add_argument("--config", default="configs/vidtok_kl_causal_488_4chn.yaml", help="model config (YAML)")
    parser.add_argument("--ckpt", default="checkpoints/vidtok_kl_causal_488_4chn.ckpt", help="model checkpoint")
    parser.add_argument("--input_height", type=int, default=256, help="frame height (shorter side is resized to it)")
    parser.add_argument("--input_width", type=int, default=256, help="frame width (centre crop)")
    parser.add_argument("--sample_fps", type=int, default=30, help=sample_fps_help)
    parser.add_argument(
        "--num_frames_per_batch", type=int, default=None,
        help="frames per clip: 17 for causal models, 16 for non-causal ones (sets --chunk_size to 16)",
    )
    parser.add_argument(
        "--chunk_size", type=int, default=None,
        help="temporal chunk (default 16): clips are chunk_size+1 frames (causal) or chunk_size (non-causal)",
    )
    parser.add_argument("--read_long_video", action="store_true", help=long_video_help)
    parser.add_argument(
        "--tile_size", type=int, default=None,
        help="run encoder and decoder on overlapping spatial tiles of this many pixels (a multiple of the model's "
        "spatial factor f; the decoder's tiles are tile_size/f latents), for large frames; off by default",
    )
    parser.add_argument(
        "--tile_overlap", type=int, default=None,
        help="overlap of neighbouring tiles in pixels, a multiple of f (default: a quarter of --tile_size)",
    )
    parser.add_argument(
        "--sample_posterior", type=str2bool, nargs="?", const=True, default=True,
        help="KL models: sample the posterior as the original does (default) or decode its mean (false); "
        "streaming (--read_long_video, causal models) always decodes the mean",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the KL posterior is sampled, so the seed fixes the reconstruction)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# --- spatial tiles -------------------------------------------------------------------------------------------------


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


# --- memory ----------------------------------------------------------------------------------------------------

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


# --- running the model ---------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruct_clip(
    model,
    x: torch.Tensor,
    sample_posterior: bool = True,
    tiles: SpatialTiles | None = None,
    precision: str | Precision = "full",
) -> torch.Tensor:
    """Encode and decode a clip `[B, 3, T, H, W]` in [-1, 1]; returns the last T decoded frames, unclamped, in the
    decoder's output dtype.

    KL models sample the posterior (as the original's `model(x)` does) unless `sample_posterior=False`, which
    decodes the posterior mean; FSQ models are deterministic either way. With `tiles`, encoder and decoder run on
    overlapping spatial tiles (:func:`vidtok.tiling.encode_tiled` / :func:`~vidtok.tiling.decode_tiled`). Each
    stage runs in its `precision` (:class:`vidtok.precision.Precision`, or one name for both).
    """
    precision = Precision.of(precision)
    with precision.encoding(x.device):
        if tiles is None:
            z, _ = model.encode(x, sample=sample_posterior)
        else:
            z, _ = encode_tiled(model, x, tiles.pixels, sample=sample_posterior)
    with precision.decoding(x.device):
        out = model.decode(z.float()) if tiles is None else decode_tiled(model, z.float(), tiles.latents)
    return out[:, :, -x.shape[2] :]


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
    large for one stream state go tile by tile instead: :func:`tile_major_reconstruct`.
    """

    def __init__(self, model, num_frames: int, precision: str | Precision = "full"):
        if not model.is_causal:
            raise ValueError(
                "streaming needs a causal model: a non-causal model's every frame depends on the whole clip"
            )
        self.num_frames = num_frames
        self.length = padded_stream_length(model, num_frames)
        self.precision = Precision.of(precision)
        self._encoder = StreamingEncoder(model, num_frames=self.length)
        self._decoder = StreamingDecoder(model)
        self._window = FrameWindow(_decoded_before_first_frame(model, self.length), num_frames)
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


def _decoded_before_first_frame(model, length: int) -> int:
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
    through the whole video (padded as :class:`StreamingReconstructor` pads it); the blended encoder outputs go
    to a temporary file, their latents (the KL posterior mean) through every latent tile of the decoder, blended
    into a second file; at the end the frames are read back beside their inputs. Yields `(inputs, outputs)` as
    :func:`stream_reconstruct` does. Only one tile's stream state is held at a time. The result is the whole-clip
    tiled pass (:func:`vidtok.tiling.encode_tiled`, :func:`~vidtok.tiling.decode_tiled`) over the padded video,
    up to float rounding. `progress` is a :class:`TileMajorProgress` or whether to show one.
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
            model, read_latents, (H // f, W // f), _decoded_before_first_frame(model, length), num_frames, tiles,
            workdir, precision, device, progress,
        )
        progress.close()
        t = 0
        for x in read_chunks():
            out = decoded.read(t, t + x.shape[1])
            t += x.shape[1]
            yield x, out[0].clamp(-1, 1)


def stream_reconstruct(
    model,
    read_chunks: ChunkSource,
    num_frames: int,
    tiles: SpatialTiles | None = None,
    precision: str | Precision = "full",
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream a video through `model`: `read_chunks()` gives its chunks `[3, t, H, W]` (CPU, [-1, 1];
    `num_frames` in all).

    Yields `(inputs, outputs)`, both `[3, t', H, W]` float32 on the CPU, outputs clamped to [-1, 1]: the frames
    reconstructed so far, each beside its input. The model runs in `precision` on `device`, nothing else does.
    Without `tiles` the video is read once and frames come out as they are reconstructed
    (:class:`StreamingReconstructor`); with `tiles` it goes tile-major (:func:`tile_major_reconstruct`, which reads
    the video once per tile and shows a progress bar over tiles × chunks with `progress`), and frames come out at
    the end.
    """
    if tiles is not None:
        yield from tile_major_reconstruct(model, read_chunks, num_frames, tiles, precision, device, progress)
        return
    stream = StreamingReconstructor(model, num_frames, precision)
    pending: list[torch.Tensor] = []  # input frames whose reconstruction has not come out yet

    def pair(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joined = torch.cat(pending, dim=1)
        pending[:] = [joined[:, out.shape[2] :]]
        return joined[:, : out.shape[2]], out[0].float().clamp(-1, 1).cpu()

    for chunk in read_chunks():
        pending.append(chunk)
        out = stream.push(chunk.unsqueeze(0).to(device))
        if out.shape[2]:
            yield pair(out)
    out = stream.finish()
    if out.shape[2]:
        yield pair(out)


# --- reading a video clip by clip ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPlan:
    """How a video is cut: `frame_indices` (the strided source frames) and `clips`, `(start, num_valid)` pairs over
    them, each clip `length` frames long once padded by repeating its last frame."""

    path: str
    source_fps: float
    interval: int
    frame_indices: tuple[int, ...]
    length: int
    clips: tuple[tuple[int, int], ...]

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)

    @property
    def output_fps(self) -> float:
        """The frame rate of the strided frames: `source_fps / interval`."""
        return self.source_fps / self.interval


def split_into_clips(num_frames: int, length: int) -> tuple[tuple[int, int], ...]:
    """Consecutive non-overlapping clips `(start, num_valid)` covering all `num_frames` frames; the last may be
    short (`num_valid < length`) and is padded when read."""
    if num_frames < 1 or length < 1:
        raise ValueError(f"need at least one frame and a positive clip length, got {num_frames} and {length}")
    return tuple((start, min(length, num_frames - start)) for start in range(0, num_frames, length))


def plan_clips(
    path: str | Path, sample_fps: float | None, length: int | None = None, long_clip=None
) -> ClipPlan:
    """Open `path` and plan its clips: fixed `length`, or (with `long_clip`, a function of the frame count) one
    clip of `long_clip(num_frames)` frames. `sample_fps=None` keeps every frame.

    Raises:
        VideoReadError: missing, unreadable or empty file, or a frame rate too low for `sample_fps`.
    """
    path = str(path)
    reader = open_video(path)
    fps = reader.get_avg_fps()
    try:
        interval = 1 if sample_fps is None else frame_interval(fps, sample_fps)
    except ValueError as err:
        raise VideoReadError(path, "bad_fps", str(err)) from err
    indices = tuple(range(0, len(reader), interval))
    if long_clip is not None:
        length = long_clip(len(indices))
        clips: tuple[tuple[int, int], ...] = ((0, len(indices)),)
    elif length is None:
        raise ValueError("give a clip length or long_clip")
    else:
        clips = split_into_clips(len(indices), length)
    return ClipPlan(path, fps, interval, indices, length, clips)


def iter_clips(plan: ClipPlan, height: int, width: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Read the planned clips one at a time: `(clip [3, length, height, width] in [-1, 1], num_valid)`.

    Only one clip's frames are decoded at a time, so memory does not grow with the video's length.
    """
    transform = VidTokVideoTransform(height, width)
    reader = open_video(plan.path)
    for start, num_valid in plan.clips:
        frames = read_frames(reader, plan.frame_indices[start : start + num_valid], plan.path)
        clip = pad_by_repeating_last(transform.frames_to_tchw(frames), plan.length)  # [T, C, H, W]
        yield clip.permute(1, 0, 2, 3), num_valid


def iter_frame_chunks(
    path: str, frame_indices: Sequence[int], height: int, width: int, chunk_frames: int
) -> Iterator[torch.Tensor]:
    """Read `frame_indices` of `path` a chunk at a time: `[3, t, height, width]` in [-1, 1], `t <= chunk_frames`.

    Only one chunk's frames are decoded at a time (decord seeks to each chunk).

    Raises:
        VideoReadError: the file cannot be opened or a chunk cannot be decoded.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    transform = VidTokVideoTransform(height, width)
    reader = open_video(path)
    for start in range(0, len(frame_indices), chunk_frames):
        frames = read_frames(reader, frame_indices[start : start + chunk_frames], path)
        yield transform.frames_to_tchw(frames).permute(1, 0, 2, 3)  # [3, t, H, W]


# --- writing videos ------------------------------------------------------------------------------------------------


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """`[C, T, H, W]` in [-1, 1] -> uint8 `[T, H, W, C]`, as the original: clamp, `(x + 1) / 2 · 255`, truncated."""
    if video.ndim != 4:
        raise ValueError(f"expected a video [C, T, H, W], got shape {tuple(video.shape)}")
    unit = (video.detach().float().clamp(-1.0, 1.0) + 1.0) / 2.0
    return (unit.permute(1, 2, 3, 0).cpu().numpy() * 255).astype(np.uint8)


class VideoWriter:
    """Write uint8 frames `[t, H, W, 3]` to a video a chunk at a time, with PyAV (H.264, yuv420p, encoder
    defaults: what `torchvision.io.write_video` did). `options` go to the encoder, e.g. `{"crf": "18"}`.

    The file is created at the first :meth:`write` (its frames fix the size, which must be even for yuv420p) under
    a hidden temporary name beside `path`, and renamed to `path` by :meth:`close`, so a failure (a full disk, an
    error in the frames' producer) never leaves a half-written video; use it as a context manager, which removes
    the temporary file if the block raises::

        with VideoWriter("out.mp4", fps=30) as writer:
            for frames in chunks:
                writer.write(frames)
    """

    def __init__(
        self, path: str | Path, fps: float, codec: str = "libx264", options: dict[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.codec = codec
        self.options = dict(options or {})
        self.num_frames = 0
        self._container = None
        self._stream = None

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        if frames.shape[0] == 0:
            return
        _, H, W, _ = frames.shape
        if self._stream is None:
            if H % 2 or W % 2:
                raise ValueError(f"H.264 (yuv420p) needs an even frame size, got {H}×{W}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(partial_path(self.path)), mode="w")
            self._stream = self._container.add_stream(self.codec, rate=self.rate)
            self._stream.width, self._stream.height = W, H
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = self.options
        elif (H, W) != (self._stream.height, self._stream.width):
            raise ValueError(f"frames of {H}×{W} in a {self._stream.height}×{self._stream.width} video")
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.num_frames += frames.shape[0]

    def close(self) -> None:
        """Flush the encoder, close the file and give it its name (nothing is written if no frame was)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self.discard()
            raise
        self._container = self._stream = None
        os.replace(partial_path(self.path), self.path)

    def discard(self) -> None:
        """Close and delete the half-written file, if this writer created one."""
        container, self._container, self._stream = self._container, None, None
        if container is None:
            return
        try:
            container.close()
        except Exception as err:  # the file goes anyway; the failure that led here is the one to report
            logger.debug("closing the discarded %s failed: %s", self.path, err)
        finally:
            partial_path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_video(
    path: str | Path, frames: np.ndarray, fps: float, codec: str = "libx264", options: dict[str, str] | None = None
) -> Path:
    """Write uint8 frames `[T, H, W, 3]` (T >= 1) in one go; see :class:`VideoWriter`. H and W must be even."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected uint8 frames [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    with VideoWriter(path, fps, codec, options) as writer:
        writer.write(frames)
    return Path(path)
