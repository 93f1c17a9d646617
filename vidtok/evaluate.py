"""Reconstruction quality of a tokenizer over a folder of videos (`scripts/inference_evaluate.py`).

The protocol is the original's (VidTok's README table, spec §7/§11):

- every `*.mp4` under `data_dir` (sorted; or the `videos` column of a meta CSV) is read at `sample_fps`, resized
  and centre-cropped to `input_height × input_width` and cut into consecutive, non-overlapping clips of
  `chunk_size + 1` frames (causal models, 17) or `chunk_size` (non-causal, 16); the last clip is padded by
  repeating its last frame (:class:`vidtok.data.vidtok.VidTokValDataset`, `last_frames_handle="repeat"`). A
  video shorter than one clip is therefore one padded clip. With `read_long_video` each video is one clip of its
  first `chunk·⌊(L-1)/chunk⌋+1` (causal) or `chunk·⌊L/chunk⌋` frames (causal videos of at most `chunk` frames
  are left out, as in the original). Causal models stream it: frames are read `chunk` at a time, pushed through
  :class:`vidtok.streaming.StreamingReconstructor` and scored as they come out, so memory does not grow with the
  length, and the figures are those of the whole-clip pass (KL: of the posterior mean, as streaming does not
  sample). Non-causal models cannot stream: the clip goes through the model in one pass;
- `tile_size` / `tile_overlap` (pixels, off by default) run encoder and decoder on overlapping spatial tiles
  (:mod:`vidtok.tiling`);
- batch size 1; KL posteriors are sampled (the seed fixes them) unless `sample_posterior=False`;
- PSNR / SSIM / LPIPS as in :mod:`vidtok.metrics`, a frame-weighted mean over all frames of all clips, the
  padding frames of last clips included (the original counts them; `count_padded_frames=False` leaves them out);
- optional FVD (StyleGAN-V I3D protocol, see :mod:`vidtok.metrics`): one clip of the first 16 frames of every clip
  with at least 16 real frames, input against reconstruction.

Beyond the original: a video that cannot be read (missing, not a video, corrupt, too low a frame rate) does not
stop the run; it is left out and listed with its reason. Per-video figures are kept alongside the overall ones.
The seed is set just before the first clip, after the model and metric networks are built (the original seeds
before building them, so its noise also depends on how many random numbers weight initialisation drew).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import seed_everything
from tqdm import tqdm

from vidtok.cli import replace_atomically
from vidtok.clips import check_frame_size, clip_length, iter_frame_chunks, resolve_chunk_size
from vidtok.data.video_io import VideoReadError
from vidtok.data.vidtok import VidTokValDataset
from vidtok.fvd import FVD_NUM_FRAMES, FVDAccumulator
from vidtok.memory import check_memory
from vidtok.metrics import FRAME_GROUP_SIZE, FRAME_METRICS, FrameDistance, MetricAccumulator, score_frame_groups
from vidtok.precision import Precision
from vidtok.reconstruct import reconstruct_clip, stream_reconstruct
from vidtok.tiling import resolve_tiles

logger = logging.getLogger(__name__)

VideoStatus = Literal["ok", "skipped", "failed"]
CSV_NAME = "metrics_per_video.csv"
JSON_NAME = "metrics_summary.json"


@dataclass
class VideoResult:
    """One video's outcome. `status`: `ok`; `skipped` (unusable, found while listing the videos); `failed`
    (broke while being read; nothing of it is counted). `num_frames` counts scored frames (padding included
    unless left out), `num_valid_frames` the real ones."""

    path: str
    status: VideoStatus = "ok"
    reason: str = ""
    num_clips: int = 0
    num_frames: int = 0
    num_valid_frames: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """Overall (frame-weighted) metrics, per-video results, the settings used and the time the loop took."""

    metrics: dict[str, float]
    videos: list[VideoResult]
    settings: dict[str, Any]
    num_clips: int
    num_frames: int
    seconds: float
    fvd_clips: int = 0

    @property
    def failed(self) -> list[VideoResult]:
        """Videos left out (skipped or failed)."""
        return [v for v in self.videos if v.status != "ok"]

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: metrics, counts, settings and every left-out video with its reason."""
        return {
            "metrics": self.metrics,
            "num_videos": sum(v.status == "ok" for v in self.videos),
            "num_clips": self.num_clips,
            "num_frames": self.num_frames,
            "fvd_clips": self.fvd_clips,
            "time_taken_s": self.seconds,
            "left_out": [{"path": v.path, "status": v.status, "reason": v.reason} for v in self.failed],
            "settings": self.settings,
        }

    def write(self, output_dir: str | Path) -> tuple[Path, Path]:
        """Write `metrics_per_video.csv` and `metrics_summary.json` to `output_dir` (created if needed), each under
        a temporary name renamed once complete, so a failure leaves no half-written file."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        names = [m for m in FRAME_METRICS if m in self.settings["metrics"]]

        def write_csv(path: Path) -> None:
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["video", "status", "num_clips", "num_frames", "num_valid_frames", *names, "reason"])
                for v in self.videos:
                    values = [f"{v.metrics[n]:.6f}" if n in v.metrics else "" for n in names]
                    writer.writerow([v.path, v.status, v.num_clips, v.num_frames, v.num_valid_frames, *values,
                                     v.reason])

        summary = json.dumps(self.summary(), indent=2) + "\n"
        csv_path = replace_atomically(write_csv, out / CSV_NAME)
        json_path = replace_atomically(lambda path: path.write_text(summary), out / JSON_NAME)
        return csv_path, json_path


class StreamScorer:
    """Scores a reconstruction that arrives a few frames at a time exactly as :func:`score_frame_groups` scores
    the whole clip: frames are gathered into the same groups of 16, and FVD gets the same first frames.

    `add(x, x_hat)` takes `[3, t, H, W]` input and output frames in [-1, 1]; `close()` scores the last group.
    Groups are scored on `device` (where `lpips_model` is).
    """

    def __init__(
        self,
        metrics: Sequence[str],
        lpips_model: FrameDistance | None = None,
        fvd: FVDAccumulator | None = None,
        group_size: int = FRAME_GROUP_SIZE,
        device: torch.device | str = "cpu",
    ):
        self.metrics = metrics
        self.device = torch.device(device)
        self.lpips_model = lpips_model
        self.fvd = fvd
        self.group_size = group_size
        self.scores = MetricAccumulator()
        self.num_frames = 0
        self._group: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._group_frames = 0
        self._fvd_frames: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if fvd is not None else None

    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        self.num_frames += x.shape[1]
        if self._fvd_frames is not None:
            self._fvd_frames.append((x, x_hat))
            if sum(a.shape[1] for a, _ in self._fvd_frames) >= self.fvd.num_frames:
                self._score_fvd()
        while x.shape[1]:
            take = min(self.group_size - self._group_frames, x.shape[1])
            self._group.append((x[:, :take], x_hat[:, :take]))
            self._group_frames += take
            x, x_hat = x[:, take:], x_hat[:, take:]
            if self._group_frames == self.group_size:
                self._score_group()

    def close(self) -> None:
        if self._group_frames:
            self._score_group()
        if self._fvd_frames is not None:
            self._score_fvd()

    def _score_group(self) -> None:
        x = torch.cat([a for a, _ in self._group], dim=1).unsqueeze(0).to(self.device)  # [1, 3, t, H, W]
        x_hat = torch.cat([b for _, b in self._group], dim=1).unsqueeze(0).to(self.device)
        self.scores.update_groups(
            score_frame_groups(x, x_hat, self.metrics, self.lpips_model, group_size=self.group_size)
        )
        self._group, self._group_frames = [], 0

    def _score_fvd(self) -> None:
        """FVD sees the first `fvd.num_frames` frames, or (for a shorter video) all of them, once."""
        if not self._fvd_frames:
            return
        x = torch.cat([a for a, _ in self._fvd_frames], dim=1)[:, : self.fvd.num_frames].unsqueeze(0)
        x_hat = torch.cat([b for _, b in self._fvd_frames], dim=1)[:, : self.fvd.num_frames].unsqueeze(0)
        self.fvd.update(x, x_hat)
        self._fvd_frames = None


def format_metrics(metrics: dict[str, float]) -> str:
    """`PSNR: 29.6400, SSIM: 0.8520, LPIPS: 0.1140` (the original's line), plus `FVD: ...` when computed."""
    return ", ".join(f"{name.upper()}: {value:.4f}" for name, value in metrics.items())


def evaluate(
    model,
    data_dir: str | Path,
    *,
    meta_path: str | Path | None = None,
    input_height: int = 256,
    input_width: int = 256,
    sample_fps: float = 30,
    chunk_size: int | None = None,
    num_frames_per_batch: int | None = None,
    read_long_video: bool = False,
    metrics: Sequence[str] = ("psnr", "ssim", "lpips"),
    lpips_model: FrameDistance | None = None,
    i3d: torch.nn.Module | None = None,
    fvd_num_frames: int = FVD_NUM_FRAMES,
    count_padded_frames: bool = True,
    sample_posterior: bool = True,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    precision: str | Precision = "full",
    seed: int | None = 42,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate `model` (on `device`, eval mode) on the videos of `data_dir`; see the module docstring.

    `lpips_model` is needed for `lpips` (:func:`vidtok.metrics.load_lpips`), `i3d` for `fvd`
    (:func:`vidtok.fvd.load_i3d`).

    Raises:
        ValueError: a frame size or clip length the model cannot take, or no usable clip at all (the message
            lists the videos left out).
        FileNotFoundError: `data_dir` or `meta_path` does not exist.
    """
    device = torch.device(device)
    precision = Precision.of(precision)
    metrics = tuple(metrics)
    if "lpips" in metrics and lpips_model is None:
        raise ValueError("the lpips metric needs lpips_model (vidtok.metrics.load_lpips)")
    if "fvd" in metrics and i3d is None:
        raise ValueError("the fvd metric needs the I3D detector (vidtok.fvd.load_i3d)")
    chunk = resolve_chunk_size(model, chunk_size, num_frames_per_batch)
    check_frame_size(model, input_height, input_width)
    tiles = resolve_tiles(model, tile_size, tile_overlap)
    length = clip_length(model, chunk)
    streaming = read_long_video and model.is_causal
    check_memory(model, chunk if streaming else length, input_height, input_width, tiles, device)
    if streaming and not model.is_fsq and sample_posterior:
        logger.info("streaming decodes the KL posterior mean (the latents are not sampled)")
    dataset = VidTokValDataset(
        data_dir=str(data_dir),
        meta_path=None if meta_path is None else str(meta_path),
        video_params={
            "input_height": input_height,
            "input_width": input_width,
            "sample_num_frames": length,
            "sample_fps": sample_fps,
        },
        pre_load_frames=False,
        is_strict_loading=False,
        skip_missing_files=True,
        last_frames_handle="repeat",
        read_long_video=read_long_video,
        chunk_size=chunk,
        is_causal=model.is_causal,
    )
    videos = {path: VideoResult(path) for path in dataset.video_paths}
    for path, why in dataset.skipped.items():
        videos[path].status, videos[path].reason = "skipped", why
    frame_scores = {path: MetricAccumulator() for path in videos}
    fvd = {path: FVDAccumulator(i3d, fvd_num_frames) for path in videos} if "fvd" in metrics else {}

    if seed is not None:
        seed_everything(seed)
    tic = time.time()
    with torch.no_grad():
        for index in tqdm(range(len(dataset)), desc="evaluating", disable=not progress):
            path = dataset.windows[index].path
            video = videos[path]
            if video.status != "ok":
                continue
            if streaming:
                window = dataset.windows[index]
                scorer = StreamScorer(metrics, lpips_model, fvd.get(path), device=device)
                try:
                    indices = window.frame_indices[: window.num_valid_frames]

                    def chunks(indices=indices, path=path):  # read again for every tile when tiled
                        return iter_frame_chunks(path, indices, input_height, input_width, chunk)

                    for x, x_hat in stream_reconstruct(model, chunks, window.num_valid_frames, tiles, precision,
                                                       device):
                        scorer.add(x, x_hat)
                    scorer.close()
                except VideoReadError as err:
                    video.status, video.reason = "failed", f"{err.reason}: {err.detail}"
                    logger.warning("leaving out %s: %s", path, video.reason)
                    continue
                frame_scores[path] += scorer.scores
                video.num_clips += 1
                video.num_frames += scorer.num_frames
                video.num_valid_frames += scorer.num_frames
                continue
            try:
                item = dataset[index]
            except VideoReadError as err:
                video.status, video.reason = "failed", f"{err.reason}: {err.detail}"
                logger.warning("leaving out %s: %s", path, video.reason)
                continue
            x = item["jpg"].unsqueeze(0).to(device)  # [1, 3, T, H, W]
            # only the model runs in `precision`: metrics are computed in float32
            x_hat = reconstruct_clip(model, x, sample_posterior, tiles, precision)
            num_valid = item["num_valid_frames"]
            scored = x.shape[2] if count_padded_frames else num_valid
            frame_scores[path].update_groups(
                score_frame_groups(x, x_hat, metrics, lpips_model, num_valid_frames=scored)
            )
            if fvd:
                fvd[path].update(x, x_hat, num_valid_frames=num_valid)
            video.num_clips += 1
            video.num_frames += scored
            video.num_valid_frames += num_valid
    seconds = time.time() - tic

    overall = MetricAccumulator()
    fvd_total = FVDAccumulator(i3d, fvd_num_frames) if fvd else None
    for path, video in videos.items():
        if video.status != "ok":
            continue
        video.metrics = frame_scores[path].compute()
        overall += frame_scores[path]
        if fvd_total is not None:
            fvd_total += fvd[path]
    ok = [v for v in videos.values() if v.status == "ok"]
    if not ok:
        reasons = "; ".join(f"{v.path}: {v.reason}" for v in videos.values())
        raise ValueError(f"no video under {str(data_dir)!r} could be evaluated ({reasons})")
    results = {m: v for m, v in overall.compute().items() if m in metrics}
    if fvd_total is not None:
        try:
            results["fvd"] = fvd_total.compute()
        except ValueError as err:
            logger.warning("FVD not computed: %s", err)
            results["fvd"] = float("nan")
    settings = {
        "metrics": list(metrics),
        "data_dir": str(data_dir),
        "meta_path": None if meta_path is None else str(meta_path),
        "input_height": input_height,
        "input_width": input_width,
        "sample_fps": sample_fps,
        "chunk_size": chunk,
        "clip_frames": length,
        "read_long_video": read_long_video,
        "streaming": streaming,
        "tile_size": None if tiles is None else tiles.size,
        "tile_overlap": None if tiles is None else tiles.overlap,
        "count_padded_frames": count_padded_frames,
        "sample_posterior": sample_posterior,
        "precision": str(precision),
        "seed": seed,
        "device": str(device),
        "frame_group_size": 16,
        "fvd_num_frames": fvd_num_frames if fvd else None,
    }
    return EvaluationResult(
        metrics=results,
        videos=list(videos.values()),
        settings=settings,
        num_clips=sum(v.num_clips for v in ok),
        num_frames=sum(v.num_frames for v in ok),
        seconds=seconds,
        fvd_clips=fvd_total.num_clips if fvd_total is not None else 0,
    )


def load_metric_networks(
    metrics: Sequence[str],
    device: torch.device | str = "cpu",
    i3d_path: str | Path | None = None,
    i3d_sha256: str | None = None,
) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """`(lpips_model, i3d)` for the chosen metrics (None for those not chosen), loaded before any video is read
    so that missing weights fail at once, with a FileNotFoundError naming the file; the I3D file is checked
    against `i3d_sha256` (or `$VIDTOK_I3D_SHA256`) first, see :func:`vidtok.fvd.verify_i3d`."""
    from vidtok.fvd import load_i3d
    from vidtok.metrics import load_lpips

    lpips_model = load_lpips(device) if "lpips" in metrics else None
    i3d = load_i3d(i3d_path, device, sha256=i3d_sha256) if "fvd" in metrics else None
    return lpips_model, i3d
