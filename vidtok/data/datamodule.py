"""``DataModuleFromConfig``: the Lightning data module the VidTok YAMLs name under ``data.target``.

Each split is a ``target:``/``params:`` node built with :func:`vidtok.util.instantiate_from_config`, e.g.::

    data:
      target: vidtok.data.datamodule.DataModuleFromConfig
      params:
        batch_size: 2
        num_workers: 12
        train: {target: vidtok.data.vidtok.VidTokDataset, params: {...}}
        validation: {target: vidtok.data.vidtok.VidTokDataset, params: {..., start_index: 0}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vidtok.util import instantiate_from_config

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class DataModuleFromConfig(pl.LightningDataModule):
    """Builds each configured split's dataset once and serves it through a ``DataLoader``.

    Args:
        batch_size: per-device batch size for every loader.
        train: config node of the training dataset (``None``: no training loader).
        validation: config node of the validation dataset (``None``: Lightning skips validation).
        test: config node of the test dataset.
        num_workers: loader worker processes; ``None`` means ``2 * batch_size``, the original's default.
        shuffle_val: shuffle the validation loader (off, as in the original).
        shuffle_test: shuffle the test loader.

    The training loader shuffles and pins memory when CUDA is available (a stream, such as a shard dataset,
    shuffles itself); validation and test do not shuffle
    unless asked. Only the loaders of configured splits exist as hooks, so Lightning sees no validation loop when
    ``validation`` is ``None`` instead of calling a hook that has nothing to return.
    """

    def __init__(
        self,
        batch_size: int,
        train: Mapping[str, Any] | None = None,
        validation: Mapping[str, Any] | None = None,
        test: Mapping[str, Any] | None = None,
        num_workers: int | None = None,
        shuffle_val: bool = False,
        shuffle_test: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.params.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = 2 * batch_size if num_workers is None else num_workers
        self.shuffle_val = shuffle_val
        self.shuffle_test = shuffle_test
        configs = {"train": train, "validation": validation, "test": test}
        self.dataset_configs: dict[str, Mapping[str, Any]] = {k: v for k, v in configs.items() if v is not None}
        self.datasets: dict[str, Dataset] = {}
        # Lightning decides whether a loop runs by whether its *_dataloader hook is overridden, so the hooks
        # are attached per instance, only for the splits that have a config.
        if "train" in self.dataset_configs:
            self.train_dataloader = self._train_dataloader
        if "validation" in self.dataset_configs:
            self.val_dataloader = self._val_dataloader
        if "test" in self.dataset_configs:
            self.test_dataloader = self._test_dataloader

    def setup(self, stage: str | None = None) -> None:
        """Instantiate every configured dataset (once; later calls reuse them)."""
        for split, config in self.dataset_configs.items():
            if split not in self.datasets:
                self.datasets[split] = instantiate_from_config(config)
                dataset = self.datasets[split]
                size = "a stream of" if isinstance(dataset, IterableDataset) else len(dataset)
                logger.info("data.%s: %s with %s items", split, type(dataset).__name__, size)

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.setup()
        return self.datasets[split]

    def _train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=not isinstance(dataset, IterableDataset),  # a stream shuffles itself (shuffle_buffer)
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def _val_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset("validation"),
            batch_size=self.batch_size,
            shuffle=self.shuffle_val,
            num_workers=self.num_workers,
        )

    def _test_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset("test"),
            batch_size=self.batch_size,
            shuffle=self.shuffle_test,
            num_workers=self.num_workers,
        )

    def skipped_summary(self) -> dict[str, dict[str, str]]:
        """``{split: {path: reason}}`` for the videos each built dataset has skipped, as seen by this process.

        With ``num_workers > 0`` the training datasets skip inside worker processes, whose records do not
        travel back; this then shows only what the main process saw (construction-time skips of
        ``VidTokValDataset``, or everything when ``num_workers == 0``). Every skip is also logged as a WARNING
        with its path, from whichever process hit it, and counted with the batch that met it (the
        ``data/skipped_videos`` metric of :class:`vidtok.training.callbacks.SkippedVideosMonitor` covers every process).
        """
        return {split: dict(getattr(ds, "skipped", {})) for split, ds in self.datasets.items()}

    @property
    def num_skipped(self) -> int:
        """Total of :meth:`skipped_summary` over all splits (same per-process caveat)."""
        return sum(len(files) for files in self.skipped_summary().values())
