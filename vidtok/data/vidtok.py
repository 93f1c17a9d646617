"""VidTok's video datasets: random training clips listed in a CSV, and fixed windows for evaluation.

Both return clips as float ``[C, T, H, W]`` in [-1, 1] under the key ``"jpg"`` (the key the original's training
loop reads), resized and cropped by :class:`~vidtok.data.transforms.VidTokVideoTransform`.

Where this differs from the original, on purpose:

- A video that cannot be used is never replaced by a black clip. :class:`VidTokDataset` skips it and serves the
  next video in the list, records it in ``skipped``, logs one warning per file and reports the skip with the item
  (``num_skipped``) so the training loop can count skips made in DataLoader workers; ``is_strict_loading=True``
  raises instead. :class:`VidTokValDataset` decides at construction, so evaluation never silently changes clips.
- A dataset none of whose videos can be read stops at construction with :class:`NoUsableVideosError`, in the
  main process, instead of failing later inside a DataLoader worker.
- ``videos`` paths must be relative and stay inside ``data_dir``; the original also accepted absolute paths
  (``os.path.join`` drops ``data_dir`` for them).
- The evaluation glob is sorted, so item order no longer depends on the filesystem.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch.utils.data import Dataset

from vidtok.data.sampling import strided_frame_indices
from vidtok.data.transforms import VidTokVideoTransform, pad_by_repeating_last
from vidtok.data.video_io import VideoReadError, open_video, read_clip, read_frames, read_strided_frames
from vidtok.errors import DataError, VidTokError

logger = logging.getLogger(__name__)

VIDEO_PARAM_KEYS = ("input_height", "input_width", "sample_num_frames", "sample_fps")


# Failures listed in a NoUsableVideosError message; the rest are counted.
_LISTED_FAILURES = 5


class NoUsableVideosError(VidTokError, ValueError):
    """Not one of a dataset's videos can be used: every file listed is missing, unreadable or too short."""


def no_usable_videos(failures: Mapping[str, str], source: str, what_to_do: str) -> NoUsableVideosError:
    """The error for a dataset whose videos all failed: the first few files with their reasons, then what to do."""
    listed = "; ".join(f"{path} ({why})" for path, why in list(failures.items())[:_LISTED_FAILURES])
    more = f" and {len(failures) - _LISTED_FAILURES} more" if len(failures) > _LISTED_FAILURES else ""
    return NoUsableVideosError(
        f"none of the {len(failures)} videos of {source} can be used: {listed}{more}; {what_to_do}"
    )


def check_video_params(video_params: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``video_params`` as a dict after checking it has every key the datasets read."""
    missing = [key for key in VIDEO_PARAM_KEYS if key not in video_params]
    if missing:
        raise KeyError(f"video_params is missing {missing}; it needs all of {list(VIDEO_PARAM_KEYS)}")
    params = dict(video_params)
    if int(params["sample_num_frames"]) < 1:
        raise ValueError(f"video_params.sample_num_frames must be >= 1, got {params['sample_num_frames']}")
    return params


def read_meta_csv(meta_path: str) -> pd.DataFrame:
    """Load a metadata CSV the way the original does; it must have a ``videos`` column.

    The CSV is parsed with the python engine, ``ISO-8859-1`` encoding and malformed lines skipped. The caller
    drops rows with a missing value in *any* column (the original's ``dropna()``), not only in ``videos``.
    """
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"meta CSV {meta_path!r} does not exist; check the dataset's meta_path")
    try:
        metadata = pd.read_csv(meta_path, on_bad_lines="skip", encoding="ISO-8859-1", engine="python", sep=",")
    except pd.errors.EmptyDataError as err:
        raise DataError(
            f"meta CSV {meta_path!r} is empty; it needs a 'videos' column header and one video path per row"
        ) from err
    if "videos" not in metadata.columns:
        raise ValueError(
            f"meta CSV {meta_path!r} has no 'videos' column (columns: {list(metadata.columns)}); "
            "it needs one with video paths relative to data_dir"
        )
    return metadata


def resolve_video_path(data_dir: str, relative_path: str, row: Any, meta_path: str) -> str:
    """``os.path.join(data_dir, relative_path)`` after checking the path cannot leave ``data_dir``.

    The check is lexical (``..`` and absolute paths), so symlinks inside ``data_dir`` that point elsewhere still
    work, as they do for datasets assembled from links.

    Raises:
        ValueError: naming the CSV row, for an absolute path or one whose ``..`` parts climb out of ``data_dir``.
    """
    if os.path.isabs(relative_path):
        raise ValueError(
            f"meta CSV {meta_path!r}, row {row}: videos={relative_path!r} is absolute; "
            f"paths must be relative to data_dir={data_dir!r}"
        )
    root = os.path.abspath(data_dir)
    full = os.path.abspath(os.path.join(root, relative_path))
    if os.path.commonpath([root, full]) != root:
        raise ValueError(
            f"meta CSV {meta_path!r}, row {row}: videos={relative_path!r} resolves to {full!r}, outside "
            f"data_dir={data_dir!r}; paths must stay inside data_dir"
        )
    return os.path.join(data_dir, relative_path)


def _paths_from_meta(data_dir: str, metadata: pd.DataFrame, meta_path: str) -> list[str]:
    """`data_dir`-joined video path of every row, each checked to stay inside `data_dir` (rows are 0-based)."""
    return [
        resolve_video_path(data_dir, str(rel), row, meta_path)
        for row, rel in zip(metadata.index, metadata["videos"], strict=True)
    ]


def skip_or_raise(
    err: VideoReadError, skipped: dict[str, str], *, skip_missing_files: bool, is_strict_loading: bool, action: str
) -> None:
    """Raise for a failure the flags make fatal (a missing file unless `skip_missing_files`, any other failure with
    `is_strict_loading`); otherwise record it in `skipped` and warn, saying what happens instead (`action`)."""
    if err.reason == "missing" and not skip_missing_files:
        raise VideoReadError(err.path, err.reason, f"{err.detail} (skip_missing_files=False)") from err
    if err.reason != "missing" and is_strict_loading:
        raise VideoReadError(err.path, err.reason, f"{err.detail} (is_strict_loading=True)") from err
    skipped[err.path] = f"{err.reason}: {err.detail}"
    logger.warning("%s (%s: %s): %s", err.path, err.reason, err.detail, action)


def training_clip(
    path: str, video_params: Mapping[str, Any], transform: VidTokVideoTransform, start_index: int | None = None
) -> torch.Tensor:
    """One training clip of the video at `path`: ``sample_num_frames`` frames at ``sample_fps`` (see
    :func:`~vidtok.data.sampling.sample_frame_indices`), transformed, and padded by repeating the last frame when
    the video is shorter. Returns float ``[C, sample_num_frames, H, W]`` in [-1, 1].

    Raises:
        VideoReadError: the video cannot be used.
    """
    frames, _ = read_clip(path, video_params["sample_num_frames"], video_params["sample_fps"], start_index=start_index)
    clip = transform.frames_to_tchw(frames)  # [T, C, H, W]
    return pad_by_repeating_last(clip, video_params["sample_num_frames"]).permute(1, 0, 2, 3)


class VidTokDataset(Dataset):
    """Random training clips: ``sample_num_frames`` frames at ``sample_fps`` from each video listed in a CSV.

    Args:
        data_dir: folder the CSV's paths are relative to.
        meta_path: CSV with a ``videos`` column.
        video_params: ``input_height``, ``input_width`` (output size), ``sample_num_frames``, ``sample_fps``.
        data_frac: keep this random fraction of the rows (``DataFrame.sample``, drawn from NumPy's global RNG as
            in the original, before ``dropna``).
        is_strict_loading: raise when a video exists but cannot be used (undecodable, empty, too low an fps, or
            shorter than a fixed ``start_index``), instead of skipping it.
        skip_missing_files: skip a listed file that does not exist; ``False`` raises. As in the original, missing
            files are governed by this flag alone and unusable ones by ``is_strict_loading``.
        start_index: first frame of every clip (validation uses 0); ``None`` draws a random start.

    Items are ``{"jpg": float [C, sample_num_frames, input_height, input_width] in [-1, 1], "path": str,
    "num_skipped": int}``. Videos shorter than the clip are padded by repeating their last frame, as in the original.

    Skipping: a bad item ``i`` is replaced by the first usable video among ``i+1, i+2, ...`` (wrapping), so the
    substitute is deterministic. Each bad file is logged once (WARNING, with its path and reason), kept in
    ``skipped`` and never decoded again by this process. With DataLoader workers each worker process holds its own
    ``skipped`` (the main process copy stays empty), so each item carries ``num_skipped``, the bad files this
    process met while serving it: summed over batches (and ranks) it counts every bad sample met, whichever worker
    met it (:class:`vidtok.training.callbacks.SkippedVideosMonitor` logs that sum).

    Raises:
        NoUsableVideosError: at construction, when not one listed video can be read (checked by reading videos in
            order until one works, usually just the first).
    """

    def __init__(
        self,
        data_dir: str,
        meta_path: str,
        video_params: Mapping[str, Any],
        data_frac: float = 1.0,
        is_strict_loading: bool = False,
        skip_missing_files: bool = True,
        start_index: int | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.meta_path = meta_path
        self.video_params = check_video_params(video_params)
        self.data_frac = data_frac
        self.is_strict_loading = is_strict_loading
        self.skip_missing_files = skip_missing_files
        self.start_index = start_index
        self.transform = VidTokVideoTransform(self.video_params["input_height"], self.video_params["input_width"])

        metadata = read_meta_csv(meta_path)
        if data_frac < 1:
            metadata = metadata.sample(frac=data_frac)
        self.metadata = metadata.dropna()
        self.video_paths = _paths_from_meta(data_dir, self.metadata, meta_path)
        if not self.video_paths:
            raise ValueError(f"meta CSV {meta_path!r} lists no videos (after data_frac={data_frac} and dropna)")
        # path -> "reason: detail" for every video this process gave up on.
        self.skipped: dict[str, str] = {}
        self._check_some_video_is_usable()
        logger.info("VidTokDataset: %d videos from %s under %s", len(self.video_paths), meta_path, data_dir)

    def _check_some_video_is_usable(self) -> None:
        """Read videos in order until one gives a clip; raise if none does. Failures are not recorded in
        ``skipped``: they are counted and logged when training meets them."""
        failures: dict[str, str] = {}
        for path in self.video_paths:
            try:
                training_clip(path, self.video_params, self.transform, self.start_index)
                return
            except VideoReadError as err:
                failures[path] = f"{err.reason}: {err.detail}"
        raise no_usable_videos(
            failures, f"meta CSV {self.meta_path!r}",
            f"check data_dir={self.data_dir!r}, the CSV's 'videos' column and the files (ffprobe FILE shows why a "
            "file does not decode)",
        )

    @property
    def num_skipped(self) -> int:
        """Distinct videos this process has skipped."""
        return len(self.skipped)

    @property
    def missing_files(self) -> list[str]:
        """Skipped videos whose file does not exist (the original kept this list under the same name)."""
        return [path for path, why in self.skipped.items() if why.startswith("missing")]

    def __len__(self) -> int:
        return len(self.video_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self.video_paths)
        first = index % count
        skipped_before = len(self.skipped)
        for offset in range(count):
            path = self.video_paths[(first + offset) % count]
            if path in self.skipped:
                continue
            try:
                clip = training_clip(path, self.video_params, self.transform, self.start_index)
            except VideoReadError as err:
                self._skip_or_raise(err)
                continue
            return {"jpg": clip, "path": path, "num_skipped": len(self.skipped) - skipped_before}
        raise no_usable_videos(
            self.skipped, f"meta CSV {self.meta_path!r}",
            "every listed video failed while training (were files removed or changed?); check the files",
        )

    def _skip_or_raise(self, err: VideoReadError) -> None:
        skip_or_raise(err, self.skipped, skip_missing_files=self.skip_missing_files,
                      is_strict_loading=self.is_strict_loading, action="skipped, the next video is served instead")


@dataclass(frozen=True)
class EvalWindow:
    """One evaluation clip: positions ``[start, start + num_valid_frames)`` of a video's strided frames.

    ``frame_indices`` are the source frame numbers, padded the way the original pads them (last index repeated).
    """

    path: str
    start: int
    num_valid_frames: int
    frame_indices: tuple[int, ...]


class VidTokValDataset(Dataset):
    """Every frame of every video, at ``sample_fps``, cut into consecutive non-overlapping clips (evaluation).

    Each video is read at a stride of ``round(fps / sample_fps)`` frames from frame 0 and split into windows of
    ``sample_num_frames``. A shorter last window is padded by repeating its last frame
    (``last_frames_handle="repeat"``, what the published numbers use) or dropped (``"drop"``). With
    ``read_long_video`` each video is instead one item of its first ``chunk_size*((L-1)//chunk_size)+1`` strided
    frames for causal models (videos with ``L <= chunk_size`` are skipped) or ``chunk_size*(L//chunk_size)`` for
    non-causal ones.

    Args:
        data_dir: root folder; without ``meta_path`` every ``**/*.mp4`` below it is used (sorted).
        video_params: ``input_height``, ``input_width``, ``sample_num_frames``, ``sample_fps``.
        meta_path: optional CSV with a ``videos`` column relative to ``data_dir``.
        pre_load_frames: decode and transform everything at construction. The original keeps native-resolution
            frames; this keeps the transformed ``[L, C, H, W]`` clip per video, which gives the same items in far
            less memory.
        is_strict_loading: raise at construction for a video that exists but cannot be used; ``False`` skips it
            (recorded in ``skipped`` and logged).
        last_frames_handle: ``"repeat"`` or ``"drop"``.
        skip_missing_files: skip listed files that do not exist; ``False`` raises. (The original silently left
            them out whatever this flag said.)
        read_long_video: one trimmed item per video instead of fixed windows.
        chunk_size: temporal chunk for ``read_long_video``.
        is_causal: trimming rule for ``read_long_video``.

    Items are ``{"jpg": float [C, T, H, W] in [-1, 1], "path": str, "num_valid_frames": int}``; ``T`` is
    ``sample_num_frames`` (or the trimmed length with ``read_long_video``) and ``num_valid_frames`` counts the
    frames before padding. Every clip is fixed at construction, so a file that fails later raises in
    ``__getitem__`` rather than changing what is evaluated.
    """

    def __init__(
        self,
        data_dir: str,
        video_params: Mapping[str, Any],
        meta_path: str | None = None,
        pre_load_frames: bool = True,
        is_strict_loading: bool = True,
        last_frames_handle: Literal["repeat", "drop"] = "repeat",
        skip_missing_files: bool = False,
        read_long_video: bool = False,
        chunk_size: int = 16,
        is_causal: bool = True,
    ) -> None:
        super().__init__()
        if last_frames_handle not in ("repeat", "drop"):
            raise ValueError(f"last_frames_handle must be 'repeat' or 'drop', got {last_frames_handle!r}")
        if read_long_video and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 with read_long_video, got {chunk_size}")
        self.data_dir = data_dir
        self.meta_path = meta_path
        self.video_params = check_video_params(video_params)
        self.pre_load_frames = pre_load_frames
        self.is_strict_loading = is_strict_loading
        self.last_frames_handle = last_frames_handle
        self.skip_missing_files = skip_missing_files
        self.read_long_video = read_long_video
        self.chunk_size = chunk_size
        self.is_causal = is_causal
        self.transform = VidTokVideoTransform(self.video_params["input_height"], self.video_params["input_width"])

        self.skipped: dict[str, str] = {}
        self.windows: list[EvalWindow] = []
        # path -> transformed strided frames [L, C, H, W], filled only when pre-loading.
        self._frames: dict[str, torch.Tensor] = {}
        self.video_paths = self._list_videos()
        for path in self.video_paths:
            self._index_video(path)
        if not self.windows and len(self.skipped) == len(self.video_paths):
            source = f"meta CSV {meta_path!r}" if meta_path is not None else f"data_dir {data_dir!r}"
            raise no_usable_videos(
                self.skipped, source,
                "fix or replace those files, give longer videos, or ask for shorter clips (sample_num_frames, "
                "chunk_size with read_long_video)",
            )
        if not self.windows:
            raise ValueError(
                f"no evaluation clips from {len(self.video_paths)} videos under {data_dir!r} "
                f"(skipped: {self.skipped or 'none'}; last_frames_handle={last_frames_handle!r} dropped the windows "
                f"of the others: they are shorter than sample_num_frames={self.video_params['sample_num_frames']} "
                "sampled frames)"
            )
        logger.info("VidTokValDataset: %d clips from %d videos", len(self.windows), len(self.video_paths))

    @property
    def num_skipped(self) -> int:
        """Videos left out at construction."""
        return len(self.skipped)

    def _list_videos(self) -> list[str]:
        """Video paths from the CSV, or a sorted recursive ``*.mp4`` glob of ``data_dir``."""
        if self.meta_path is not None:
            metadata = read_meta_csv(self.meta_path).dropna()
            if metadata.empty:
                raise DataError(f"meta CSV {self.meta_path!r} lists no videos (no row with every column filled)")
            return _paths_from_meta(self.data_dir, metadata, self.meta_path)
        if not os.path.isdir(self.data_dir):
            raise FileNotFoundError(f"data_dir {self.data_dir!r} is not a directory")
        paths = sorted(glob.glob(os.path.join(self.data_dir, "**", "*.mp4"), recursive=True))
        if not paths:
            raise DataError(
                f"no *.mp4 files under data_dir {self.data_dir!r} (searched recursively); point --data_dir at a "
                "folder of .mp4 videos or list them in a CSV with --meta_path"
            )
        return paths

    def _index_video(self, path: str) -> None:
        """Append the video's windows (and, when pre-loading, its frames), or skip/raise if it is unusable."""
        sample_fps = self.video_params["sample_fps"]
        try:
            if self.pre_load_frames:
                frames, indices = read_strided_frames(path, sample_fps)
            else:
                reader = open_video(path)
                try:
                    indices = strided_frame_indices(len(reader), reader.get_avg_fps(), sample_fps)
                except ValueError as err:
                    raise VideoReadError(path, "bad_fps", str(err)) from err
        except VideoReadError as err:
            self._skip_or_raise(err)
            return
        windows = self._split(path, [int(i) for i in indices])
        if windows and self.pre_load_frames:
            # Only the frames some window uses (read_long_video trims the tail) are kept.
            used = max(w.start + w.num_valid_frames for w in windows)
            self._frames[path] = self.transform.frames_to_tchw(frames[:used])
        self.windows.extend(windows)

    def _split(self, path: str, indices: list[int]) -> list[EvalWindow]:
        """Cut a video's strided frame indices into evaluation windows."""
        total = len(indices)
        if self.read_long_video:
            chunk = self.chunk_size
            keep = chunk * ((total - 1) // chunk) + 1 if self.is_causal else chunk * (total // chunk)
            if (self.is_causal and total <= chunk) or keep < 1:
                self.skipped[path] = f"too_short: {total} sampled frames, read_long_video needs more than {chunk}"
                logger.warning("leaving out %s: %s", path, self.skipped[path])
                return []
            return [EvalWindow(path, 0, keep, tuple(indices[:keep]))]

        length = self.video_params["sample_num_frames"]
        windows = []
        for start in range(0, total, length):
            part = indices[start : start + length]
            if len(part) < length and self.last_frames_handle == "drop":
                continue
            padded = part + [part[-1]] * (length - len(part))
            windows.append(EvalWindow(path, start, len(part), tuple(padded)))
        return windows

    def _skip_or_raise(self, err: VideoReadError) -> None:
        skip_or_raise(err, self.skipped, skip_missing_files=self.skip_missing_files,
                      is_strict_loading=self.is_strict_loading, action="left out of validation")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        window = self.windows[index]
        if window.path in self._frames:
            clip = self._frames[window.path][window.start : window.start + window.num_valid_frames]
        else:
            reader = open_video(window.path)
            frames = read_frames(reader, window.frame_indices[: window.num_valid_frames], window.path)
            clip = self.transform.frames_to_tchw(frames)  # [T_valid, C, H, W]
        clip = pad_by_repeating_last(clip, len(window.frame_indices))
        return {
            "jpg": clip.permute(1, 0, 2, 3),  # [C, T, H, W]
            "path": window.path,
            "num_valid_frames": window.num_valid_frames,
        }
