"""Opening videos with decord and choosing which frames to read, following VidTok's sampling rule.

Frames come back as ``uint8`` tensors laid out ``[T, H, W, C]`` with ``C == 3`` (RGB). decord converts every
pixel format to RGB24 before handing frames over, which means:

- grayscale videos arrive with the luma value copied into all three channels;
- an alpha channel (PNG/ProRes 4444/QTRLE with ``rgba``) is dropped, not composited onto a background.

Every failure is raised as :class:`VideoReadError`, which carries the path and a machine-readable ``reason`` so
datasets can decide whether to skip the file or stop.
"""

from __future__ import annotations

import logging
import math
import os
import random
from typing import Literal

import decord
import numpy as np
import torch

logger = logging.getLogger(__name__)

ReadFailure = Literal["missing", "unreadable", "empty", "too_short", "bad_fps"]

# decord reports open/decode failures as DECORDError (a plain Exception subclass) or as RuntimeError
# ("Error reading ..."); OSError/ValueError cover the filesystem and bad-argument paths of its FFI layer.
_DECORD_ERRORS: tuple[type[Exception], ...] = (decord.DECORDError, RuntimeError, OSError, ValueError)


class VideoReadError(RuntimeError):
    """A video that cannot be used.

    Attributes:
        path: the file that failed.
        reason: ``"missing"`` (no such file), ``"unreadable"`` (decord could not open or decode it: not a video,
            truncated, no video stream), ``"empty"`` (zero frames), ``"too_short"`` (fewer frames than a strict
            caller or a fixed ``start_index`` needs) or ``"bad_fps"`` (its frame rate is too low for ``sample_fps``).
        detail: a human-readable explanation.
    """

    def __init__(self, path: str, reason: ReadFailure, detail: str) -> None:
        super().__init__(f"cannot read video {path!r} ({reason}): {detail}")
        self.path = path
        self.reason: ReadFailure = reason
        self.detail = detail


def open_video(path: str) -> decord.VideoReader:
    """Open ``path`` with decord (``num_threads=0`` lets FFmpeg pick, as the original does).

    Raises:
        VideoReadError: ``missing`` if there is no such file, ``unreadable`` if decord rejects it, ``empty`` if it
            has no frames.
    """
    if not os.path.isfile(path):
        raise VideoReadError(path, "missing", "no such file")
    try:
        reader = decord.VideoReader(path, num_threads=0)
    except _DECORD_ERRORS as err:
        # decord's own message is a multi-line C++ trace; keep only its first line.
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VideoReadError(path, "unreadable", f"decord could not open it: {first_line}") from err
    if len(reader) == 0:
        raise VideoReadError(path, "empty", "the video stream has no frames")
    return reader


def frame_interval(video_fps: float, sample_fps: float) -> int:
    """Source frames between two sampled frames: ``round(video_fps / sample_fps)``.

    Python's ``round`` rounds halves to even (25 fps at 10 fps gives 2, not 3); the original uses it too, so the
    interval matches it exactly.

    Raises:
        ValueError: if the interval would be 0 (``sample_fps`` more than twice ``video_fps``) or the fps is not a
            positive finite number. The original would then sample one frame over and over (training) or crash in
            ``range(..., 0)`` (evaluation).
    """
    if not sample_fps > 0:
        raise ValueError(f"sample_fps must be positive, got {sample_fps}")
    if not (math.isfinite(video_fps) and video_fps > 0):
        raise ValueError(f"video fps must be a positive number, got {video_fps}")
    interval = round(video_fps / sample_fps)
    if interval < 1:
        raise ValueError(
            f"sample_fps={sample_fps} is more than twice the video's {video_fps:.3f} fps, so round(fps/sample_fps)=0; "
            "lower video_params.sample_fps"
        )
    return interval


def sample_frame_indices(
    total_frames: int,
    video_fps: float,
    sample_num_frames: int,
    sample_fps: float,
    start_index: int | None = None,
    rng: random.Random | None = None,
) -> np.ndarray:
    """Indices of the frames VidTok trains on: ``sample_num_frames`` frames spaced ``round(fps/sample_fps)`` apart.

    The rule, with ``n = min(sample_num_frames, total_frames)`` and ``interval = frame_interval(...)``:

    - ``span = (n - 1) * interval + 1``;
    - ``start = start_index`` if given, else ``randint(0, total - span - 1)`` (both ends inclusive), or 0 when the
      video is shorter than that;
    - ``indices = linspace(start, min(total - 1, start + span), n)`` truncated to int.

    Quirk kept on purpose: ``linspace`` runs to ``start + span`` rather than ``start + span - 1``, so its step is
    ``interval + 1/(n-1)``. Truncation hides the fraction for every index but the last, which lands one frame late:
    n=17, interval=10, start=0 gives 0, 10, ..., 150, **161**. The original trains on exactly these frames (and the
    random start's upper bound of ``total - span - 1`` exists so that this overshoot stays inside the video), so
    changing it would change what the checkpoints were trained on. When the video is too short for ``span``, the
    ``min`` squeezes the ``n`` indices evenly into ``[start, total - 1]``.

    Args:
        total_frames: frames in the video (>= 1).
        video_fps: the video's average frame rate.
        sample_num_frames: frames wanted; fewer come back when the video has fewer frames.
        sample_fps: the frame rate to sample at.
        start_index: fixed first frame (e.g. 0 for validation); ``None`` draws it at random.
        rng: random source for the start; ``None`` uses the module-level ``random`` (which DataLoader seeds per
            worker), as the original does.

    Returns:
        int64 array of shape ``[min(sample_num_frames, total_frames)]``, non-decreasing.

    Raises:
        ValueError: for non-positive counts, a bad fps (see :func:`frame_interval`) or a ``start_index`` outside
            ``[0, total_frames)``.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if sample_num_frames < 1:
        raise ValueError(f"sample_num_frames must be >= 1, got {sample_num_frames}")
    if start_index is not None and not 0 <= start_index < total_frames:
        raise ValueError(f"start_index={start_index} is outside the video's {total_frames} frames")

    num = min(sample_num_frames, total_frames)
    interval = frame_interval(video_fps, sample_fps)
    span = (num - 1) * interval + 1

    if start_index is not None:
        start = start_index
    elif total_frames - span - 1 < 0:
        start = 0
    else:
        start = (rng or random).randint(0, total_frames - span - 1)

    return np.linspace(start, min(total_frames - 1, start + span), num).astype(np.int64)


def strided_frame_indices(total_frames: int, video_fps: float, sample_fps: float) -> np.ndarray:
    """Every ``round(fps/sample_fps)``-th frame from frame 0 (the evaluation rule): int64 ``[ceil(total/interval)]``."""
    return np.arange(0, total_frames, frame_interval(video_fps, sample_fps), dtype=np.int64)


def read_frames(reader: decord.VideoReader, indices: np.ndarray | list[int], path: str) -> torch.Tensor:
    """Decode ``indices`` from an open reader.

    Returns:
        uint8 tensor ``[len(indices), H, W, 3]``.

    Raises:
        VideoReadError: ``unreadable`` if decoding fails part-way (truncated or damaged stream).
    """
    index_list = [int(i) for i in indices]
    try:
        # asnumpy() rather than decord's torch bridge: the bridge is a process-wide switch we should not flip.
        batch = reader.get_batch(index_list).asnumpy()
    except _DECORD_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VideoReadError(path, "unreadable", f"decoding frames failed: {first_line}") from err
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise VideoReadError(path, "unreadable", f"expected RGB frames [T,H,W,3], decord returned {batch.shape}")
    return torch.from_numpy(batch)


def read_clip(
    path: str,
    sample_num_frames: int,
    sample_fps: float,
    start_index: int | None = None,
    strict: bool = False,
    rng: random.Random | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Open ``path`` and read one training clip chosen by :func:`sample_frame_indices`.

    Args:
        path: video file.
        sample_num_frames: frames wanted.
        sample_fps: sampling frame rate.
        start_index: fixed first frame, or ``None`` for a random start.
        strict: raise ``too_short`` instead of returning fewer than ``sample_num_frames`` frames.
        rng: random source for the start (see :func:`sample_frame_indices`).

    Returns:
        ``(frames, indices)``: uint8 ``[T, H, W, 3]`` with ``T = min(sample_num_frames, len(video))``, and the
        int64 frame indices ``[T]``.

    Raises:
        VideoReadError: see :func:`open_video`; ``bad_fps`` for a frame rate too low for ``sample_fps``;
            ``too_short`` for a ``start_index`` past the end, or (with ``strict``) a video shorter than the clip.
    """
    reader = open_video(path)
    total = len(reader)
    if start_index is not None and start_index >= total:
        raise VideoReadError(path, "too_short", f"start_index={start_index} but the video has {total} frames")
    if strict and total < sample_num_frames:
        raise VideoReadError(path, "too_short", f"{total} frames, {sample_num_frames} needed")
    fps = reader.get_avg_fps()
    try:
        indices = sample_frame_indices(total, fps, sample_num_frames, sample_fps, start_index=start_index, rng=rng)
    except ValueError as err:
        raise VideoReadError(path, "bad_fps", str(err)) from err
    return read_frames(reader, indices, path), indices


def read_strided_frames(path: str, sample_fps: float) -> tuple[torch.Tensor, np.ndarray]:
    """Read every ``round(fps/sample_fps)``-th frame of the whole video, for evaluation.

    Returns:
        ``(frames, indices)``: uint8 ``[L, H, W, 3]`` with ``L = ceil(len(video) / interval)``, and int64 ``[L]``.

    Raises:
        VideoReadError: see :func:`open_video`, plus ``bad_fps`` and ``unreadable``.
    """
    reader = open_video(path)
    try:
        indices = strided_frame_indices(len(reader), reader.get_avg_fps(), sample_fps)
    except ValueError as err:
        raise VideoReadError(path, "bad_fps", str(err)) from err
    return read_frames(reader, indices, path), indices
