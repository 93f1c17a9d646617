"""How a video is cut into clips, as VidTok's scripts cut it, and read clip by clip or chunk by chunk.

A video is read every `round(fps / sample_fps)`-th frame from frame 0 (:mod:`vidtok.data.sampling`), resized
(shorter side to `input_height`, antialiased) and centre-cropped to `input_height × input_width`, in [-1, 1]
(:mod:`vidtok.data.transforms`). It is then cut into consecutive, non-overlapping clips of `chunk_size + 1` frames
for causal models (17) or `chunk_size` frames for non-causal ones (16); the last clip is padded by repeating its
last frame. Only one clip's (or chunk's) frames are decoded at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vidtok.data.sampling import frame_interval
from vidtok.data.transforms import VidTokVideoTransform, pad_by_repeating_last
from vidtok.data.video_io import VideoReadError, open_video, read_frames

# --- clip lengths --------------------------------------------------------------------------------------------------


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


# --- planning and reading -----------------------------------------------------------------------------------------


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
