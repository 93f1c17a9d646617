"""Video files in and out: reading frames with decord (PyAV when decord cannot), and writing mp4s with PyAV, the
one writer of the project (inference outputs, the training logger's clips, the tests' videos).

Reading. Frames come back as ``uint8`` tensors laid out ``[T, H, W, C]`` with ``C == 3`` (RGB), upright: a rotation
stored in the file's display matrix (phone videos shot in portrait) is applied, so a 1920x1080 stream tagged 90°
comes back 1080 wide and 1920 high. Both decoders convert every pixel format (10-bit included) to RGB24, which means:

- grayscale videos arrive with the luma value copied into all three channels;
- an alpha channel (PNG/ProRes 4444/QTRLE with ``rgba``) is dropped, not composited onto a background.

decord is tried first (it is the original's reader and the faster one). Any file it cannot open or decode is read
with PyAV instead: decord's buffer-size check rejects many rotated phone videos. Only a file neither can read is
unreadable. Mirroring flags of the display matrix are not applied (only its rotation). Which frames to read is
:mod:`vidtok.data.sampling`'s business.

Every read failure is raised as :class:`VideoReadError`, which carries the path and a machine-readable ``reason``
so datasets can decide whether to skip the file or stop.

Writing. :func:`to_uint8` turns model output in [-1, 1] into frames as the original does; :class:`VideoWriter`
writes them a chunk at a time, :func:`write_video` in one go.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import decord
import numpy as np
import torch

from vidtok.cli import partial_path
from vidtok.data.sampling import sample_frame_indices, strided_frame_indices
from vidtok.errors import VidTokError

logger = logging.getLogger(__name__)

ReadFailure = Literal["missing", "unreadable", "empty", "too_short", "bad_fps"]

# decord reports open/decode failures as DECORDError (a plain Exception subclass) or as RuntimeError
# ("Error reading ..."); OSError/ValueError cover the filesystem and bad-argument paths of its FFI layer.
_DECORD_ERRORS: tuple[type[Exception], ...] = (decord.DECORDError, RuntimeError, OSError, ValueError)
# PyAV raises FFmpegError subclasses (most also ValueError/OSError); PyAVVideo raises IndexError when the stream ends
# before a frame its packets promised (a truncated file).
_PYAV_ERRORS: tuple[type[Exception], ...] = (av.FFmpegError, OSError, ValueError, IndexError)

# What the user can do about each failure; appended to the message.
_ADVICE: dict[str, str] = {
    "missing": "check the path (relative paths are resolved from the current folder or the dataset's data_dir)",
    "unreadable": "check that it is a complete video file; re-encoding it (ffmpeg -i IN -c:v libx264 OUT.mp4) "
    "repairs most damaged or exotic files",
    "empty": "the file holds no frames; re-export the video",
    "too_short": "use a longer video or ask for fewer frames",
    "bad_fps": "lower the sampling frame rate (--sample_fps / video_params.sample_fps)",
}

# Decoding forward from the current position beats seeking when the next wanted frame is at most this many frames
# ahead (a seek lands on the previous keyframe, typically further back than that).
_SEEK_GAP = 32


def _first_line(err: BaseException) -> str:
    """decord's messages are multi-line C++ traces; keep the first line (or the type when there is no message)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class VideoReadError(VidTokError, RuntimeError):
    """A video that cannot be used.

    Attributes:
        path: the file that failed.
        reason: ``"missing"`` (no such file), ``"unreadable"`` (neither decord nor PyAV could open or decode it: not
            a video, truncated, no video stream), ``"empty"`` (zero frames), ``"too_short"`` (fewer frames than a
            strict caller or a fixed ``start_index`` needs) or ``"bad_fps"`` (its frame rate is too low for
            ``sample_fps``).
        detail: a human-readable explanation.

    The message names the file, says what went wrong and what to do about it, on one line.
    """

    def __init__(self, path: str, reason: ReadFailure, detail: str) -> None:
        super().__init__(f"cannot read video {path!r} ({reason}): {detail}; {_ADVICE[reason]}")
        self.path = path
        self.reason: ReadFailure = reason
        self.detail = detail


class PyAVVideo:
    """Random access to a video's frames with PyAV, turned upright by the stream's display-matrix rotation.

    Frames are numbered in presentation order by the timestamps of the video packets (read once, without decoding,
    when the file is opened), which also holds for variable-frame-rate files. A read seeks to the keyframe before
    the first wanted frame and decodes forward.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._container = av.open(path)
        if not self._container.streams.video:
            self._container.close()
            raise ValueError("the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        # duplicates kept: a frame count that matches decord's keeps its indices valid after a switch to PyAV
        pts = sorted(p.pts for p in self._container.demux(self._stream) if p.pts is not None and p.size > 0)
        self._pts: list[int] = pts
        rate = self._stream.average_rate or self._stream.guessed_rate
        if not rate and pts and self._stream.time_base:
            # no rate in the header: frames per second of the packets' own timestamps
            span = (pts[-1] - pts[0]) * self._stream.time_base
            rate = Fraction(len(pts) - 1) / span if span > 0 else None
        self._fps = float(rate) if rate else 0.0

    def __len__(self) -> int:
        return len(self._pts)

    def get_avg_fps(self) -> float:
        return self._fps

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``[len(indices), H, W, 3]``, upright; indices may repeat and come in any order."""
        wanted = sorted(set(indices))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < len(self._pts):
            raise IndexError(f"frame indices {wanted[0]}..{wanted[-1]} outside the video's {len(self._pts)} frames")
        found: dict[int, np.ndarray] = {}
        frames = None
        position = -1
        for index in wanted:
            target = self._pts[index]
            # frames sharing a timestamp are told apart by their order: skip the ones before this index
            repeats = index - bisect.bisect_left(self._pts, target)
            if frames is None or index - position > _SEEK_GAP:
                self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
                frames = self._container.decode(self._stream)
            elif position >= 0 and self._pts[position] == target:
                repeats = index - position - 1
            for frame in frames:
                if frame.pts is None or frame.pts < target:
                    continue
                if frame.pts == target and repeats > 0:
                    repeats -= 1
                    continue
                found[index] = self._upright(frame)
                position = index
                break
            else:
                raise IndexError(f"the stream ended before frame {index}")
        return np.stack([found[i] for i in indices]) if indices else np.zeros((0, 0, 0, 3), np.uint8)

    @staticmethod
    def _upright(frame: av.VideoFrame) -> np.ndarray:
        """RGB ``[H, W, 3]`` rotated as the display matrix says (``frame.rotation``: degrees counter-clockwise)."""
        image = frame.to_ndarray(format="rgb24")
        turns = round(frame.rotation / 90) % 4
        return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def _diagnose(path: str) -> str:
    """A guess at why no decoder opens ``path``, from its first bytes: an MP4/MOV whose index is gone (the usual
    result of a copy or download cut short) or something that is not a video at all."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError as err:
        return f"the file cannot be read ({err.strerror})"
    if head[4:8] in (b"ftyp", b"mdat", b"moov", b"wide", b"free"):
        return "it starts like an MP4/MOV file but its index is missing or damaged, as in a copy cut short"
    return "no decoder recognises it as a video"


class VideoFile:
    """An open video: ``len()`` frames, ``get_avg_fps()`` and ``get_batch(indices) -> uint8 [T, H, W, 3]``.

    decord serves it while it can; the first time decord fails to open or decode the file, PyAV takes over for good
    (see the module docstring). ``backend`` says which one is in use.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._decord: decord.VideoReader | None = None
        self._pyav: PyAVVideo | None = None
        try:
            self._decord = decord.VideoReader(path, num_threads=0)
        except _DECORD_ERRORS as err:
            self._switch_to_pyav(f"decord could not open it: {_first_line(err)}")

    @property
    def backend(self) -> str:
        return "decord" if self._decord is not None else "pyav"

    def _switch_to_pyav(self, why: str) -> None:
        try:
            self._pyav = PyAVVideo(self.path)
        except _PYAV_ERRORS as err:
            raise VideoReadError(
                self.path, "unreadable", f"{_diagnose(self.path)} ({why}; PyAV could not open it: {_first_line(err)})"
            ) from err
        self._decord = None
        logger.info("%s: reading with PyAV (%s)", self.path, why)

    def __len__(self) -> int:
        return len(self._decord) if self._decord is not None else len(self._pyav)

    def get_avg_fps(self) -> float:
        return self._decord.get_avg_fps() if self._decord is not None else self._pyav.get_avg_fps()

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Decode ``indices``: uint8 ``[len(indices), H, W, 3]``.

        Raises:
            VideoReadError: ``unreadable`` if neither decoder can produce the frames (truncated or damaged stream).
        """
        if self._decord is not None:
            try:
                # asnumpy() rather than decord's torch bridge: the bridge is a process-wide switch we should not flip.
                return self._decord.get_batch(list(indices)).asnumpy()
            except _DECORD_ERRORS as err:
                self._switch_to_pyav(f"decord could not decode it: {_first_line(err)}")
        try:
            return self._pyav.get_batch(indices)
        except _PYAV_ERRORS as err:
            raise VideoReadError(self.path, "unreadable", f"decoding frames failed: {_first_line(err)}") from err


def open_video(path: str) -> VideoFile:
    """Open ``path`` with decord, or with PyAV when decord cannot (``num_threads=0`` lets FFmpeg pick, as the
    original does).

    Raises:
        VideoReadError: ``missing`` if there is no such file, ``unreadable`` if neither decoder can open it,
            ``empty`` if it has no frames.
    """
    if not os.path.isfile(path):
        raise VideoReadError(path, "missing", "no such file")
    video = VideoFile(path)
    if len(video) == 0:
        raise VideoReadError(path, "empty", "the video stream has no frames")
    return video


def read_frames(reader: VideoFile, indices: np.ndarray | list[int], path: str) -> torch.Tensor:
    """Decode ``indices`` from an open video.

    Returns:
        uint8 tensor ``[len(indices), H, W, 3]``.

    Raises:
        VideoReadError: ``unreadable`` if decoding fails part-way (truncated or damaged stream).
    """
    batch = reader.get_batch([int(i) for i in indices])
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise VideoReadError(path, "unreadable", f"expected RGB frames [T,H,W,3], the decoder returned {batch.shape}")
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


# --- writing videos ------------------------------------------------------------------------------------------------


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """`[C, T, H, W]` in [-1, 1] -> uint8 `[T, H, W, C]`, as the original: clamp, `(x + 1) / 2 · 255`, truncated."""
    if video.ndim != 4:
        raise ValueError(f"expected a video [C, T, H, W], got shape {tuple(video.shape)}")
    unit = (video.detach().float().clamp(-1.0, 1.0) + 1.0) / 2.0
    return (unit.permute(1, 2, 3, 0).cpu().numpy() * 255).astype(np.uint8)


# The PyAV layout of uint8 frames [T, H, W, C], by channel count C.
_INPUT_FORMATS = {1: "gray", 3: "rgb24", 4: "rgba"}


class VideoWriter:
    """Write uint8 frames `[t, H, W, C]` (C = 3 RGB; 1 gray or 4 RGBA also) to a video a chunk at a time, with PyAV
    (H.264, yuv420p, encoder defaults: what `torchvision.io.write_video` did). `options` go to the encoder, e.g.
    `{"crf": "18"}`; `codec` and `pix_fmt` choose another stream (e.g. `png` with `gray` or `rgba`), which the
    frames are converted to.

    The file is created at the first :meth:`write` (its frames fix the size, which must be even for yuv420p) under
    a hidden temporary name beside `path`, and renamed to `path` by :meth:`close`, so a failure (a full disk, an
    error in the frames' producer) never leaves a half-written video; use it as a context manager, which removes
    the temporary file if the block raises::

        with VideoWriter("out.mp4", fps=30) as writer:
            for frames in chunks:
                writer.write(frames)
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        codec: str = "libx264",
        options: dict[str, str] | None = None,
        pix_fmt: str = "yuv420p",
    ) -> None:
        self.path = Path(path)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.codec = codec
        self.options = dict(options or {})
        self.pix_fmt = pix_fmt
        self.num_frames = 0
        self._container = None
        self._stream = None

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in _INPUT_FORMATS:
            raise ValueError(f"expected uint8 frames [T, H, W, 3] (or 1 or 4 channels), got {frames.dtype} "
                             f"{frames.shape}")
        if frames.shape[0] == 0:
            return
        _, H, W, C = frames.shape
        if self._stream is None:
            if self.pix_fmt == "yuv420p" and (H % 2 or W % 2):
                raise ValueError(f"H.264 (yuv420p) needs an even frame size, got {H}×{W}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(partial_path(self.path)), mode="w")
            self._stream = self._container.add_stream(self.codec, rate=self.rate)
            self._stream.width, self._stream.height = W, H
            self._stream.pix_fmt = self.pix_fmt
            self._stream.options = self.options
        elif (H, W) != (self._stream.height, self._stream.width):
            raise ValueError(f"frames of {H}×{W} in a {self._stream.height}×{self._stream.width} video")
        for frame in frames:
            image = frame[..., 0] if C == 1 else frame
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(image, format=_INPUT_FORMATS[C])):
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
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Write uint8 frames `[T, H, W, C]` (T >= 1) in one go; see :class:`VideoWriter`. For yuv420p, H and W must
    be even."""
    if np.asarray(frames).shape[:1] == (0,):
        raise ValueError("write_video needs at least one frame, got none")
    with VideoWriter(path, fps, codec, options, pix_fmt) as writer:
        writer.write(frames)
    return Path(path)
