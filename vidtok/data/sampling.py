"""VidTok's frame sampling rule: which frames of a video a clip takes, for training (a clip of evenly spaced frames
from a random or fixed start) and for evaluation and inference (every `round(fps / sample_fps)`-th frame)."""

from __future__ import annotations

import math
import random

import numpy as np


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
