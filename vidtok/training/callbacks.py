"""The Lightning callbacks `vidtok.train.train` adds to every run: checkpoints ranked by their own step's
validation, and the count of bad videos the datasets skipped."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

logger = logging.getLogger(__name__)


class SkippedVideosMonitor(Callback):
    """Log `data/skipped_videos`: the bad samples (missing, unreadable or too short videos) met so far by the
    datasets that serve training and validation batches, summed over DataLoader workers and training processes.

    Skips happen inside DataLoader worker processes, whose own records never reach the main process, so each
    `VidTokDataset` item carries `num_skipped` (the bad files met while serving it). This callback adds those up per
    batch on each process and, at every training batch, all-reduces (sums) the running totals over the processes
    before logging. A file met again (by another worker, or in a later epoch by fresh workers) counts again.
    """

    def __init__(self) -> None:
        super().__init__()
        # bad samples this process's batches reported: a float tensor on the module's device, added to without
        # reading it back, since on a GPU every read of a device value waits for all the queued work
        self.local_count: torch.Tensor | None = None
        self.last_total = 0  # all processes, as last read for the warning

    def _add_batch(self, batch: Any, device: torch.device) -> torch.Tensor:
        counts = batch.get("num_skipped") if isinstance(batch, Mapping) else None
        if self.local_count is None:
            self.local_count = torch.zeros((), device=device)
        if counts is not None:
            self.local_count = self.local_count + torch.as_tensor(counts, device=device).sum()
        return self.local_count

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        # no collective here: validation batches need not line up across processes; the next training batch syncs
        self._add_batch(batch, pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # on the module's device: NCCL reduces only CUDA tensors
        total = trainer.strategy.reduce(self._add_batch(batch, pl_module.device).clone(), reduce_op="sum")
        pl_module.log("data/skipped_videos", total, on_step=True, on_epoch=False, logger=True)
        # the warning needs the value on the host: read it only as often as metrics are logged
        if (batch_idx + 1) % max(trainer.log_every_n_steps, 1) == 0 and int(total) != self.last_total:
            self.last_total = int(total)
            if trainer.is_global_zero:
                logger.warning("%d bad video sample(s) skipped so far (unreadable, missing or too short)",
                               self.last_total)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = getattr(trainer.datamodule, "skipped_summary", None)
        if callable(summary):
            for split, files in summary().items():
                for path, why in files.items():
                    logger.info("data.%s skipped %s (%s)", split, path, why)


class ValidatedModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose step-triggered checkpoints are ranked by the validation of their own step.

    Lightning calls `on_train_batch_end`, where `every_n_train_steps` saves, before the validation that ends the
    same batch, so the stock callback ranks the weights (and prints "reached ...") by the previous validation's
    value. With a monitored metric this one holds such a save until the next validation has finished and saves
    then, top-k and `last` together, with the value just computed for those weights. A held save that no
    validation follows (training stopped first) is written as `last` only, unranked.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._save_after_validation = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if self.monitor is None or not due:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        elif not self._should_skip_saving_checkpoint(trainer):
            self._save_after_validation = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._save_after_validation or self._should_skip_saving_checkpoint(trainer):
            super().on_validation_end(trainer, pl_module)
            return
        self._save_after_validation = False
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._save_after_validation:
            self._save_after_validation = False
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
