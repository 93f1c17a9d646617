"""`ImageVideoLogger`: a Lightning callback that saves what the model reconstructs while it trains.

Every `batch_frequency` optimiser steps (Lightning's `global_step`, two per batch for VidTok) and on the first
batch of each validation run, it asks the module for `log_images(batch, split=..., **log_images_kwargs)`, a dict
of `[B, C, T, H, W]` (or `[B, C, H, W]`) tensors in [-1, 1] such as `inputs`, `recs`, `recs_ema`, and writes under
`<logdir>/images/<split>/`:

- `{key}_gs-{step:06}_e-{epoch:06}_b-{batch:06}.png`: one grid per key, one row of frames per sample
  (the original's file names);
- `compare_gs-..._b-....png`: the keys' rows interleaved per sample (input, reconstruction, ...), to compare at
  a glance;
- `compare_gs-..._b-....mp4`: for videos, the keys side by side (input | reconstruction | ...), samples stacked
  vertically.

It runs on global rank 0 only and never on the other ranks. The `params:` of the official YAMLs map one to one onto
the constructor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from vidtok.data.video_io import write_video

logger = logging.getLogger(__name__)


def frames_of(images: torch.Tensor) -> torch.Tensor:
    """`[B, C, T, H, W]` -> `[B*T, C, H, W]` (sample-major); `[B, C, H, W]` is returned unchanged."""
    if images.ndim == 5:
        B, C, T, H, W = images.shape
        return images.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    return images


def to_unit_range(images: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Map [-1, 1] to [0, 1] when `rescale`, and clamp to [0, 1]."""
    return ((images + 1.0) / 2.0 if rescale else images).clamp(0.0, 1.0)


def write_mp4(path: Path, video: torch.Tensor, fps: int) -> None:
    """Write `[T, H, W, 3]` uint8 frames as H.264 (yuv420p, so odd sizes are padded by one pixel)."""
    _, H, W, _ = video.shape
    write_video(path, np.pad(video.numpy(), ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge"), fps)


class ImageVideoLogger(Callback):
    """Save input/reconstruction grids (PNG) and side-by-side clips (mp4) during training and validation.

    Args:
        batch_frequency: log training batches whose `global_step` is a multiple of this.
        max_samples: at most this many samples of a batch are written.
        clamp: clamp tensors to [-1, 1] before writing.
        increase_log_steps: also log at the powers of two below `batch_frequency` (1, 2, 4, ...), once each.
        rescale: the tensors are in [-1, 1] (map them to [0, 1]); `False` means they already are in [0, 1].
        disabled: switch the callback off.
        log_on_batch_idx: count `batch_idx` instead of `global_step`.
        log_first_step: also log at step 0.
        log_images_kwargs: passed to `log_images`; `n_rows` is also the number of frames per grid row
            (default: the clip length, one sample per row).
        log_before_first_step: log the first training batch before the first optimiser step.
        enable_autocast: run `log_images` under autocast.
        log_videos: also write the mp4 comparison for video tensors.
        video_fps: frame rate of those mp4s.
        save_dir: where `images/` goes; by default the logger's `save_dir` (the run's logdir) or, without a
            logger, the Trainer's `default_root_dir`.
    """

    def __init__(
        self,
        batch_frequency: int,
        max_samples: int,
        clamp: bool = True,
        increase_log_steps: bool = True,
        rescale: bool = True,
        disabled: bool = False,
        log_on_batch_idx: bool = False,
        log_first_step: bool = False,
        log_images_kwargs: dict[str, Any] | None = None,
        log_before_first_step: bool = False,
        enable_autocast: bool = True,
        log_videos: bool = True,
        video_fps: int = 8,
        save_dir: str | None = None,
    ):
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"image_logger batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_freq = batch_frequency
        self.max_samples = max_samples
        self.clamp = clamp
        self.rescale = rescale
        self.disabled = disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step = log_first_step
        self.log_before_first_step = log_before_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.enable_autocast = enable_autocast
        self.log_videos = log_videos
        self.video_fps = video_fps
        self.save_dir = save_dir
        # extra early steps, each used once
        self.log_steps = [2**n for n in range(int(np.log2(batch_frequency)))] if increase_log_steps else []

    # --- when to log ----------------------------------------------------------------------------------------------

    def check_frequency(self, check_idx: int) -> bool:
        if check_idx == 0 and not self.log_first_step:
            return False
        if check_idx in self.log_steps:
            self.log_steps.remove(check_idx)
            return True
        return check_idx % self.batch_freq == 0

    @rank_zero_only
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.disabled and self.log_before_first_step and pl_module.global_step == 0:
            logger.info("image logger: logging the first batch before training")
            self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    @rank_zero_only
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if not self.disabled and self.check_frequency(check_idx):
            self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    @rank_zero_only
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # the first batch of each validation run after training has started (not the sanity check)
        if not self.disabled and batch_idx == 0 and pl_module.global_step > 0 and not trainer.sanity_checking:
            self.log_img(trainer, pl_module, batch, batch_idx, split="val")

    # --- what to write --------------------------------------------------------------------------------------------

    def _root(self, trainer: pl.Trainer) -> Path:
        if self.save_dir is not None:
            return Path(self.save_dir)
        if trainer.logger is not None and trainer.logger.save_dir is not None:
            return Path(trainer.logger.save_dir)
        return Path(trainer.default_root_dir)

    def log_img(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                split: str) -> None:
        if self.max_samples <= 0 or not callable(getattr(pl_module, "log_images", None)):
            return
        was_training = pl_module.training
        pl_module.eval()
        device_type = pl_module.device.type
        try:
            with torch.no_grad(), torch.autocast(device_type, enabled=self.enable_autocast):
                images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        finally:
            if was_training:
                pl_module.train()
        tensors = {}
        for key, value in images.items():
            if not isinstance(value, torch.Tensor) or value.ndim not in (4, 5):
                continue
            value = value[: self.max_samples].detach().float().cpu()
            tensors[key] = value.clamp(-1.0, 1.0) if self.clamp else value
        if tensors:
            self.log_local(self._root(trainer) / "images" / split, tensors, pl_module.global_step,
                           pl_module.current_epoch, batch_idx)

    def log_local(self, root: Path, images: dict[str, torch.Tensor], global_step: int, epoch: int,
                  batch_idx: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        stem = f"gs-{global_step:06}_e-{epoch:06}_b-{batch_idx:06}"
        first = next(iter(images.values()))
        nrow = int(self.log_images_kwargs.get("n_rows") or (first.shape[2] if first.ndim == 5 else 4))
        for key, value in images.items():
            grid = torchvision.utils.make_grid(frames_of(value), nrow=nrow)
            torchvision.utils.save_image(to_unit_range(grid, self.rescale), root / f"{key}_{stem}.png")

        same_shape = [v for v in images.values() if v.shape == first.shape]
        if len(same_shape) < 2:
            return
        # rows interleaved per sample: sample 0 of every key, then sample 1, ...
        interleaved = torch.stack(same_shape, dim=1).flatten(0, 1)
        grid = torchvision.utils.make_grid(frames_of(interleaved), nrow=nrow)
        torchvision.utils.save_image(to_unit_range(grid, self.rescale), root / f"compare_{stem}.png")
        if self.log_videos and first.ndim == 5 and first.shape[2] > 1:
            side_by_side = torch.cat(same_shape, dim=-1)  # [B, C, T, H, k*W]
            stacked = torch.cat(list(side_by_side), dim=-2)  # [C, T, B*H, k*W]
            video = (to_unit_range(stacked, self.rescale) * 255).round().to(torch.uint8).permute(1, 2, 3, 0)
            try:
                write_mp4(root / f"compare_{stem}.mp4", video, self.video_fps)
            except Exception as err:  # a missing codec must not stop training
                logger.warning("image logger: could not write %s.mp4: %s", stem, err)
        logger.debug("image logger: wrote %s under %s", stem, root)
