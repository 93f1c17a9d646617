"""Reconstructing a video with a tokenizer (encode then decode): one clip, a video clip by clip, streamed, or
tile-major; and saving `[input | reconstruction]` side by side (`scripts/inference_reconstruct.py`).

As in the original script:

- the video is read at `sample_fps` and cut into consecutive, non-overlapping clips of 17 frames (causal models)
  or 16 (non-causal) — `chunk_size + 1` or `chunk_size` — each encoded and decoded on its own;
- the output is clamped to [-1, 1] and turned into uint8 by truncating `(x + 1) / 2 · 255`, the input beside it
  (unless `concat_input=False`), and written as `{stem}_reconstructed.mp4` (H.264);
- `pad_gen_frames` (causal models, clip mode): from the second clip on, the model sees the last `tdf - 1`
  *reconstructed* frames of the previous clip followed by the 17 new input frames (20 for tdf 4), and the last 17
  output frames are kept — so each clip starts from what the decoder produced rather than from a fresh first
  frame;
- `read_long_video`: the whole video is one clip, with no seams between windows.

Different from the original, on purpose:

- The output is written at the rate of the frames kept, `source_fps / round(source_fps / sample_fps)`, not at
  `sample_fps`: a 25 fps source with `sample_fps=30` keeps every frame and plays at 25 fps, not 1.2× fast.

- The tail that does not fill a clip is reconstructed too: it is padded by repeating its last frame, encoded and
  decoded, and the padding is cut off again, so the output has every sampled frame. (The original drops it.)
- `read_long_video` with a causal model (v1.0 or v1.1) *streams*: frames are read from the file `chunk_size` at a
  time, pushed through :class:`vidtok.streaming.StreamingReconstructor`, and the output is written as it comes,
  so memory does not grow with the video's length. The result is the whole-clip pass over the video padded to
  `1 + k·tdf` frames (by repeating the last one) up to float rounding; KL latents are the posterior mean (streaming
  does not sample). The original needed a v1.1 model and its chunked mode, whose decoder chunks differ slightly
  from the whole-clip pass.
- `read_long_video` with a non-causal model cannot stream: the video is padded to `k·chunk_size` frames and goes
  through the model in one pass, so memory grows with its length.
- `tile_size` / `tile_overlap` (pixels; off by default) run encoder and decoder on overlapping spatial tiles of
  each frame (latent tiles of `tile_size / f` for the decoder), for frames too large to fit in memory at once;
  see :mod:`vidtok.tiling`. Tiled and untiled results differ slightly near tile borders. With `read_long_video`
  (causal models) tiles go *tile-major* (:func:`vidtok.tile_major.tile_major_reconstruct`): each tile streams
  through the whole video, read again for it, so only one tile's stream state is held; the tiles' outputs are
  blended in temporary files, and the output is written once every tile is done. Memory is then bounded by the
  tile and the chunk, not by the frame size or the video's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidtok.clips import (
    check_frame_size,
    clip_length,
    iter_clips,
    iter_frame_chunks,
    long_clip_length,
    plan_clips,
    resolve_chunk_size,
)
from vidtok.data.video_io import VideoWriter, to_uint8
from vidtok.memory import check_memory
from vidtok.precision import Precision
from vidtok.streaming import StreamingReconstructor, padded_stream_length
from vidtok.tile_major import ChunkSource, tile_major_reconstruct
from vidtok.tiling import SpatialTiles, decode_tiled, encode_tiled, resolve_tiles, run_tiled

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ReconstructionInfo:
    """How a video was reconstructed: frame rate, clip layout (one clip when streamed), frames and time taken
    (reading and the model, not writing)."""

    fps: float
    clip_length: int
    num_clips: int
    num_frames: int
    seconds: float
    streamed: bool = False
    tiles: SpatialTiles | None = None


@dataclass(kw_only=True)
class Reconstruction(ReconstructionInfo):
    """A reconstructed video in memory: uint8 frames `[T, H, W, 3]` for the input and the output."""

    inputs: np.ndarray
    outputs: np.ndarray

    def side_by_side(self, concat_input: bool = True) -> np.ndarray:
        """`[input | output]` along the width, or the output alone."""
        return side_by_side(self.inputs, self.outputs, concat_input)


def side_by_side(inputs: np.ndarray, outputs: np.ndarray, concat_input: bool = True) -> np.ndarray:
    """`[input | output]` frames `[T, H, 2W, 3]`, or the output alone."""
    return np.concatenate([inputs, outputs], axis=2) if concat_input else outputs


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


@torch.no_grad()
def forward_after_context(
    model,
    context: torch.Tensor,
    x: torch.Tensor,
    sample_posterior: bool = True,
    tiles: SpatialTiles | None = None,
    precision: str | Precision = "full",
) -> torch.Tensor:
    """Reconstruct `x` `[B, 3, T, H, W]` with `context` frames in front; returns the last T output frames.

    This is the original's `pad_gen_frames` step, `model(cat([context, x]))[..., -T:]`. The combined clip
    (`tdf - 1 + T` frames, e.g. 20) is not a length the engine's `encode` accepts for v1.0 models (it wants
    `1 + k·tdf`), so the encoder, regularizer and decoder are called directly, which is what the original's
    engine did with such a clip: no front padding (the length is a multiple of tdf) and, for v1.0, a decoder
    output of `T` frames. `tiles` runs both on overlapping spatial tiles; each stage runs in its `precision`.
    """
    precision = Precision.of(precision)
    clip = torch.cat([context, x], dim=2)
    with precision.encoding(x.device):
        if tiles is None:
            h = model.encoder(clip)
        else:
            f = model.spatial_downsample_factor
            h = run_tiled(lambda tile, _: model.encoder(tile), clip, tiles.pixels, 1 / f, f)
        kwargs = {} if model.is_fsq else {"sample": sample_posterior}
        z, _ = model.regularization(h, compute_aux=False, **kwargs)
    with precision.decoding(x.device):
        out = model.decoder(z.float()) if tiles is None else decode_tiled(model, z.float(), tiles.latents)
    return out[:, :, -x.shape[2] :]


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


class VideoReconstructor:
    """One video's reconstruction: the settings are checked and the video planned when it is built, and iterating
    yields `(inputs, outputs)`, float32 `[3, t, H, W]` on the CPU in [-1, 1] (outputs clamped), every sampled
    frame once and in order: a clip at a time, or (streaming) as the frames come out of the model.

    Arguments are those of :func:`reconstruct_video`.

    Raises:
        VideoReadError: the video is missing, unreadable, empty or its frame rate is too low for `sample_fps`.
        ValueError: a frame size, clip length or tile size the model cannot take (naming the flag), or clips too
            large for the device's memory (naming `--tile_size`).
    """

    def __init__(
        self,
        model,
        video_path: str | Path,
        *,
        input_height: int = 256,
        input_width: int = 256,
        sample_fps: float = 30,
        chunk_size: int | None = None,
        num_frames_per_batch: int | None = None,
        read_long_video: bool = False,
        pad_gen_frames: bool = False,
        sample_posterior: bool = True,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        precision: str | Precision = "full",
        device: torch.device | str = "cpu",
        progress: bool = True,
    ):
        self.model = model
        self.device = torch.device(device)
        self.chunk = resolve_chunk_size(model, chunk_size, num_frames_per_batch)
        check_frame_size(model, input_height, input_width)
        self.tiles = resolve_tiles(model, tile_size, tile_overlap)
        self.height, self.width = input_height, input_width
        self.sample_posterior = sample_posterior
        self.precision = Precision.of(precision)
        self.progress = progress
        self.streaming = read_long_video and model.is_causal
        if pad_gen_frames and (not model.is_causal or read_long_video):
            logger.warning("pad_gen_frames applies to causal models in clip mode only; ignoring it")
            pad_gen_frames = False
        self.pad_gen_frames = pad_gen_frames
        if self.streaming:
            self.plan = plan_clips(video_path, sample_fps, long_clip=lambda n: padded_stream_length(model, n))
            if not model.is_fsq and sample_posterior:
                logger.info("streaming decodes the KL posterior mean (the latents are not sampled)")
        elif read_long_video:
            self.plan = plan_clips(video_path, sample_fps, long_clip=lambda n: long_clip_length(model, n, self.chunk))
        else:
            self.plan = plan_clips(video_path, sample_fps, length=clip_length(model, self.chunk))
        self.fps = self.plan.output_fps  # no frame is invented: a 25 fps source sampled "at 30" plays at 25
        check_memory(model, self.chunk if self.streaming else self.plan.length, input_height, input_width, self.tiles,
                     self.device)

    @property
    def num_frames(self) -> int:
        return self.plan.num_frames

    def info(self, seconds: float) -> ReconstructionInfo:
        return ReconstructionInfo(
            fps=self.fps,
            clip_length=self.plan.length,
            num_clips=len(self.plan.clips),
            num_frames=self.plan.num_frames,
            seconds=seconds,
            streamed=self.streaming,
            tiles=self.tiles,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._stream() if self.streaming else self._clips()

    def _stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.plan

        def read_chunks() -> Iterator[torch.Tensor]:
            return iter_frame_chunks(plan.path, plan.frame_indices, self.height, self.width, self.chunk)

        tile_major = self.tiles is not None  # it shows its own bar, over tiles × chunks
        pairs = stream_reconstruct(
            self.model, read_chunks, plan.num_frames, self.tiles, self.precision, self.device, self.progress
        )
        bar_off = not self.progress or tile_major
        with tqdm(total=plan.num_frames, desc="reconstructing", unit="frame", disable=bar_off) as bar:
            for inputs, outputs in pairs:
                bar.update(outputs.shape[1])
                yield inputs, outputs

    def _clips(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        model = self.model
        context_frames = model.time_downsample_factor - 1
        context = None
        clips = iter_clips(self.plan, self.height, self.width)
        total = len(self.plan.clips)
        for clip, num_valid in tqdm(clips, total=total, desc="reconstructing", disable=not self.progress):
            x = clip.unsqueeze(0).to(self.device)  # [1, 3, T, H, W]
            if context is not None:
                x_hat = forward_after_context(model, context, x, self.sample_posterior, self.tiles, self.precision)
            else:
                x_hat = reconstruct_clip(model, x, self.sample_posterior, self.tiles, self.precision)
            x_hat = x_hat.float().clamp(-1, 1)
            if self.pad_gen_frames and context_frames > 0:
                # the padded tail is never followed by another clip, so its padding never becomes context
                context = x_hat[:, :, -context_frames:].to(x.dtype)
            yield clip[:, :num_valid], x_hat[0, :, :num_valid].cpu()


def reconstruct_video(model, video_path: str | Path, **kwargs) -> Reconstruction:
    """Reconstruct every sampled frame of `video_path` with `model` (already on `device`, in eval mode), in memory.

    Keyword arguments (see :class:`VideoReconstructor`): `input_height`, `input_width` (256), `sample_fps` (30),
    `chunk_size` / `num_frames_per_batch`, `read_long_video`, `pad_gen_frames`, `sample_posterior` (True),
    `tile_size`, `tile_overlap`, `precision` ("full", or a :class:`vidtok.precision.Precision` per stage), `device`
    ("cpu"), `progress` (True).

    Raises:
        VideoReadError: the video is missing, unreadable, empty or its frame rate is too low for `sample_fps`.
        ValueError: a frame size, clip length or tile size the model cannot take (naming the flag).
    """
    reconstructor = VideoReconstructor(model, video_path, **kwargs)
    inputs, outputs = [], []
    tic = time.time()
    for x, x_hat in reconstructor:
        inputs.append(x)
        outputs.append(x_hat)
    seconds = time.time() - tic
    info = reconstructor.info(seconds)
    return Reconstruction(
        **vars(info), inputs=to_uint8(torch.cat(inputs, dim=1)), outputs=to_uint8(torch.cat(outputs, dim=1))
    )


def output_path_for(video_path: str | Path, output_dir: str | Path) -> Path:
    """`{output_dir}/{stem}_reconstructed.mp4`."""
    return Path(output_dir) / f"{Path(video_path).stem}_reconstructed.mp4"


def reconstruct_to_file(
    model, video_path: str | Path, output_dir: str | Path, *, concat_input: bool = True, **kwargs
) -> tuple[Path, ReconstructionInfo]:
    """Reconstruct `video_path` as :func:`reconstruct_video` does and write `{stem}_reconstructed.mp4` to
    `output_dir` at the rate of the frames kept (:attr:`vidtok.clips.ClipPlan.output_fps`), frames as they come:
    nothing of the video is kept in memory."""
    reconstructor = VideoReconstructor(model, video_path, **kwargs)
    path = output_path_for(video_path, output_dir)
    writing = 0.0
    tic = time.time()
    with VideoWriter(path, reconstructor.fps) as writer:  # a failure removes the half-written video
        for x, x_hat in reconstructor:
            start = time.time()
            writer.write(side_by_side(to_uint8(x), to_uint8(x_hat), concat_input))
            writing += time.time() - start
    return path, reconstructor.info(time.time() - tic - writing)
