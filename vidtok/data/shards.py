"""Training and validation clips from WebDataset tar shards (the layout video2dataset writes).

A shard is a tar file; a sample is the files that share a key: ``{key}.mp4`` (or another video extension in
:data:`VIDEO_EXTENSIONS`), usually with ``{key}.json`` and ``{key}.txt``, which are ignored here. Shards are read
with the ``webdataset`` package, so any URL it opens works (local paths, ``pipe:aws s3 cp ... -``, ``https://``),
and a brace pattern such as ``/data/shards/{00000..00127}.tar`` expands to the list.

One epoch reads every shard once: the shard list (shuffled per epoch with ``shuffle_buffer > 0``, the same order on
every rank) is dealt to the ranks (``wds.split_by_node``), then to each rank's DataLoader workers
(``wds.split_by_worker``), so every sample is seen exactly once per epoch. Under DDP every rank must produce the same
number of batches: use a shard count divisible by ``world_size × num_workers`` and shards of similar size.

Resuming: items carry ``finished_shards``, the shards whose every sample has now been served, and
:class:`ShardProgress` (a callback) records them, across ranks, in the checkpoint. A resumed run reads, in that
epoch, only the shards that were not finished. Shards that were partly read when the run stopped are read again
from their start, so their first samples are seen twice in that epoch; nothing is lost.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.shardlists import expand_urls

from vidtok.data.transforms import VidTokVideoTransform
from vidtok.data.video_io import VideoReadError
from vidtok.data.vidtok import check_video_params, skip_or_raise, training_clip
from vidtok.errors import VidTokError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")
# finished_shards joins URLs with this character so that the default collate keeps it a string per item.
URL_SEPARATOR = "\n"


def shard_urls(urls: str | Sequence[str]) -> list[str]:
    """A brace pattern (``a/{000..009}.tar``, several joined by ``::``) or a list of URLs, expanded to a list.

    Raises:
        VidTokError: no URL at all.
    """
    found = expand_urls(urls) if isinstance(urls, str) else [u for url in urls for u in expand_urls(str(url))]
    if not found:
        raise VidTokError(f"no shard URLs in {urls!r}: give a list or a pattern like /data/{{00000..00127}}.tar")
    return found


def video_field(sample: Mapping[str, Any]) -> str | None:
    """The sample's video extension, or None."""
    return next((ext for ext in VIDEO_EXTENSIONS if ext in sample), None)


def sample_name(sample: Mapping[str, Any]) -> str:
    """``url#key``: where a sample came from, for messages and the ``path`` item."""
    return f"{sample.get('__url__', '?')}#{sample['__key__']}"


def with_video_file(sample: Mapping[str, Any], read: Any) -> Any:
    """Call ``read(path)`` on the sample's video bytes saved to a temporary file (the decoder reads files), with a
    VideoReadError naming ``url#key`` instead of the temporary file."""
    name = sample_name(sample)
    ext = video_field(sample)
    if ext is None:
        raise VideoReadError(name, "missing", f"the sample has no video (none of .{', .'.join(VIDEO_EXTENSIONS)})")
    with tempfile.NamedTemporaryFile(suffix=f".{ext}") as file:
        file.write(sample[ext])
        file.flush()
        try:
            return read(file.name)
        except VideoReadError as err:
            raise VideoReadError(name, err.reason, err.detail) from err


def count_shard_samples(samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pass samples through (in tar order), adding ``__shard_size__`` to the last one of each shard."""
    previous = None
    count = 0
    for sample in samples:
        if previous is not None and previous["__url__"] != sample["__url__"]:
            yield {**previous, "__shard_size__": count}
            count = 0
        elif previous is not None:
            yield previous
        previous = sample
        count += 1
    if previous is not None:
        yield {**previous, "__shard_size__": count}


class VidTokShardDataset(IterableDataset):
    """Training clips from WebDataset shards, sampled exactly like :class:`~vidtok.data.vidtok.VidTokDataset`.

    Args:
        urls: shard URLs, a list or a brace pattern (see :func:`shard_urls`).
        video_params: ``input_height``, ``input_width``, ``sample_num_frames``, ``sample_fps``.
        shuffle_buffer: samples held for shuffling (0: read in shard order); it also shuffles the shard order per
            epoch.
        is_strict_loading: raise on a sample whose video cannot be used instead of skipping it.
        start_index: first frame of every clip (validation uses 0); ``None`` draws a random start.
        seed: seed of the per-epoch shard order.

    Items are ``{"jpg": float [C, sample_num_frames, H, W] in [-1, 1], "path": "url#key", "__key__", "__url__",
    "finished_shards": URLs joined by newlines, "num_skipped": bad samples passed over before this one}``. Skipped
    samples are recorded in ``skipped`` (``url#key`` -> reason) and logged, per process, as in ``VidTokDataset``,
    whose ``num_skipped`` item field :class:`vidtok.training.callbacks.SkippedVideosMonitor` sums the same way.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        video_params: Mapping[str, Any],
        shuffle_buffer: int = 0,
        is_strict_loading: bool = False,
        start_index: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if shuffle_buffer < 0:
            raise VidTokError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.urls = shard_urls(urls)
        self.video_params = check_video_params(video_params)
        self.shuffle_buffer = shuffle_buffer
        self.is_strict_loading = is_strict_loading
        self.start_index = start_index
        self.seed = seed
        self.transform = VidTokVideoTransform(self.video_params["input_height"], self.video_params["input_width"])
        self.epoch = 0
        # Shards already read in this epoch (set by ShardProgress when a run resumes); left out of the epoch.
        self.finished_shards: set[str] = set()
        self.skipped: dict[str, str] = {}

    @property
    def num_skipped(self) -> int:
        """Distinct samples this process has skipped."""
        return len(self.skipped)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_shards(self) -> list[str]:
        """This epoch's shards in reading order, before the split across ranks and workers."""
        order = list(self.urls)
        if self.shuffle_buffer:
            random.Random(self.seed + self.epoch).shuffle(order)
        return [url for url in order if url not in self.finished_shards]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stages: list[Any] = [
            wds.SimpleShardList(self.epoch_shards()),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=wds.reraise_exception if self.is_strict_loading else wds.warn_and_continue),
            count_shard_samples,
        ]
        if self.shuffle_buffer:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=self.seed + self.epoch))
        stages.append(self._clips)
        return iter(wds.DataPipeline(*stages))

    def _clips(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Decode each sample's clip, skipping (or raising for) bad ones, and report shards as they finish."""
        served: Counter[str] = Counter()
        sizes: dict[str, int] = {}
        finished: list[str] = []
        skipped_before = len(self.skipped)
        for sample in samples:
            url = sample["__url__"]
            served[url] += 1
            if "__shard_size__" in sample:
                sizes[url] = sample["__shard_size__"]
            if served[url] == sizes.get(url):
                finished.append(url)
            name = sample_name(sample)
            if name in self.skipped:
                continue
            try:
                clip = with_video_file(
                    sample, lambda path: training_clip(path, self.video_params, self.transform, self.start_index)
                )
            except VideoReadError as err:
                skip_or_raise(err, self.skipped, skip_missing_files=True, is_strict_loading=self.is_strict_loading,
                              action="skipped")
                continue
            yield {
                "jpg": clip,
                "path": name,
                "__key__": sample["__key__"],
                "__url__": url,
                "finished_shards": URL_SEPARATOR.join(finished),
                "num_skipped": len(self.skipped) - skipped_before,
            }
            finished = []
            skipped_before = len(self.skipped)


class ShardProgress(pl.Callback):
    """Keeps, in the checkpoint, the training shards every rank has finished in the current epoch, and hands them to
    the :class:`VidTokShardDataset` when a run resumes so that the epoch goes on with the other shards.

    Add it under ``lightning.callbacks`` (see ``configs/examples/vidtok_kl_causal_tiny_shards.yaml``). Ranks share
    what they finished after every batch (one small ``all_gather_object``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch: int | None = None
        self.finished: set[str] = set()
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _hand_over(self) -> None:
        """Give the epoch and its finished shards to the training dataset (if it is a shard dataset)."""
        datasets = getattr(getattr(self._trainer, "datamodule", None), "datasets", {})
        dataset = datasets.get("train")
        if isinstance(dataset, VidTokShardDataset) and self.epoch is not None:
            dataset.set_epoch(self.epoch)
            dataset.finished_shards = set(self.finished)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epoch != trainer.current_epoch:
            self.epoch, self.finished = trainer.current_epoch, set()
        self._hand_over()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = [url for joined in batch.get("finished_shards", ()) for url in joined.split(URL_SEPARATOR) if url]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, done)
            done = [url for part in gathered for url in part]
        self.finished.update(done)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "finished": sorted(self.finished)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning creates the resumed epoch's data iterator before any epoch hook runs (and skips
        # on_train_epoch_start when it restarts mid-epoch), so the dataset learns the state now.
        self.epoch = state_dict["epoch"]
        self.finished = set(state_dict["finished"])
        if self.finished:
            logger.info("epoch %d resumes after %d finished shard(s)", self.epoch, len(self.finished))
        self._hand_over()
