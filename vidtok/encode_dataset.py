"""`python -m vidtok encode-dataset`: tokenize a whole dataset on many processes, into WebDataset shards.

    python -m vidtok encode-dataset -c CONFIG --ckpt CKPT -o OUT (--meta_path CSV --data_dir DIR | --shards PATTERN)
        [--input_height 256 --input_width 256 --sample_fps 30 --num_frames_per_batch 17 --read_long_video
         --tile_size PX --precision P] [--devices N --accelerator cpu|gpu --num_nodes M]

The inputs run through Lightning's predict loop (DDP with several devices or nodes, so ``torchrun`` and SLURM
launch it as they launch training). Each rank encodes its share (CSV rows ``rank::world_size``, or shards
``rank::world_size``) with :func:`vidtok.tokens.encode_video`, exactly as ``python -m vidtok encode`` does, and
writes its own shards ``OUT/part-{rank}-{n:05d}.tar``: per input video ``{key}.tokens.npy`` and ``{key}.json``
(see :mod:`vidtok.data.token_shards`). The key is the CSV path without its extension (dots made ``_``), or the
input shard's key.

Afterwards rank 0 writes ``OUT/failed.csv`` (every input that could not be read, with the reason; the run goes on
without them) and ``OUT/stats.json`` (:mod:`vidtok.latent_stats`, merged exactly over the ranks). Started again on
the same OUT, a run skips every input whose sample is complete in an existing part (an interrupted run's last part
may end in a torn sample: that input is encoded again) and writes new parts numbered after the old ones; the
statistics cover the old samples too.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from vidtok.cli import add_frame_arguments, add_precision_arguments, add_tile_arguments, video_options
from vidtok.clips import resolve_chunk_size
from vidtok.data.shards import shard_urls, with_video_file
from vidtok.data.token_shards import META, TOKENS, iter_token_samples
from vidtok.data.video_io import VideoReadError
from vidtok.data.vidtok import read_meta_csv, resolve_video_path
from vidtok.distributed import gather, leave_process_group
from vidtok.errors import VidTokError
from vidtok.latent_stats import CodeUsage, LatentMoments, stats_for
from vidtok.token_file import LATENT_DTYPES, model_description
from vidtok.tokens import encode_video

logger = logging.getLogger(__name__)

PART_PATTERN = "part-{rank}-%05d.tar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `encode-dataset` subcommand's flags."""
    parser.add_argument("-c", "--config", required=True, help="model config (YAML)")
    parser.add_argument("--ckpt", required=True, help="model checkpoint")
    parser.add_argument("-o", "--output", required=True, help="folder for part-*.tar, stats.json and failed.csv")
    parser.add_argument("--meta_path", default=None, help="CSV with a `videos` column (with --data_dir)")
    parser.add_argument("--data_dir", default=None, help="folder the CSV's paths are relative to")
    parser.add_argument("--shards", default=None, help="input WebDataset shards, e.g. /data/{00000..00127}.tar")
    add_frame_arguments(parser, "frames per second to sample (every round(fps / sample_fps)-th frame is kept)")
    parser.add_argument("--read_long_video", action="store_true", help="stream each video as one clip (causal)")
    add_tile_arguments(parser)
    parser.add_argument("--latent_dtype", choices=LATENT_DTYPES, default="float32", help="KL latents' storage type")
    add_precision_arguments(parser, stages=False)
    parser.add_argument("--devices", type=int, default=1, help="processes (devices) per node")
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="auto", help="device kind")
    parser.add_argument("--num_nodes", type=int, default=1, help="nodes (torchrun/SLURM)")
    parser.add_argument("--samples_per_shard", type=int, default=1000, help="videos per output part")


def sample_key(relative_path: str) -> str:
    """A WebDataset key for a CSV path: no extension, and no other dots (webdataset splits names at the first)."""
    return os.path.splitext(relative_path)[0].replace(".", "_")


def csv_inputs(meta_path: str, data_dir: str) -> list[dict[str, str]]:
    """``{"key", "name", "path"}`` for every CSV row (rows with a missing value dropped, as the datasets do).

    Raises:
        VidTokError: two rows give the same key.
    """
    rows = read_meta_csv(meta_path).dropna()
    items, seen = [], {}
    for row, rel in zip(rows.index, rows["videos"], strict=True):
        rel = str(rel)
        key = sample_key(rel)
        if key in seen:
            raise VidTokError(f"meta CSV {meta_path!r}: rows {seen[key]} and {row} both give key {key!r} "
                              f"({rel!r}); list each video once, with distinct names apart from the extension")
        seen[key] = row
        items.append({"key": key, "name": rel, "path": resolve_video_path(data_dir, rel, row, meta_path)})
    return items


class ShardInputs(IterableDataset):
    """The samples of input shards (``{"key", "name": "shard#key", "sample"}``), left out those in `done`."""

    def __init__(self, urls: Sequence[str], done: set[str]) -> None:
        super().__init__()
        self.urls = list(urls)
        self.done = done

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in wds.DataPipeline(wds.SimpleShardList(self.urls),
                                       wds.tarfile_to_samples(handler=wds.warn_and_continue)):
            if sample["__key__"] not in self.done:
                name = f"{os.path.basename(sample['__url__'])}#{sample['__key__']}"
                yield {"key": sample["__key__"], "name": name, "sample": sample}


@dataclass
class Existing:
    """What earlier runs left in OUT: the keys of its complete samples and their statistics."""

    keys: set[str]
    stats: LatentMoments | CodeUsage


def scan_output(out: Path, model_info: dict[str, Any]) -> Existing:
    """Read every complete sample already in `out`'s parts (see the module docstring)."""
    stats = stats_for(model_info)
    keys: set[str] = set()
    for key, tokens, _ in iter_token_samples(sorted(glob.glob(str(out / "part-*-*.tar")))):
        if key not in keys:
            keys.add(key)
            stats.update(tokens)
    return Existing(keys, stats)


def next_part(out: Path, rank: int) -> int:
    """First free part number of `rank` (parts are never overwritten)."""
    numbers = [int(p.stem.rsplit("-", 1)[1]) for p in out.glob(f"part-{rank}-*.tar")]
    return max(numbers, default=-1) + 1


def sample_meta(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """A token file's metadata (config and checkpoint already file names only) with the video named as the input
    names it (CSV path or ``shard#key``)."""
    return {**meta, "video": {**meta["video"], "source": name}}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class DatasetEncoder(pl.LightningModule):
    """Lightning wrapper that encodes one input per predict step and writes it to this rank's parts.

    After ``trainer.predict``: ``stats`` (this rank's new samples), ``failed`` (``[name, reason, detail]``) and
    ``written`` (count); call :meth:`close` to finish the last part.
    """

    def __init__(self, model: torch.nn.Module, args: argparse.Namespace, existing: Existing) -> None:
        super().__init__()
        self.model = model
        self.args = args
        self.out = Path(args.output)
        self.existing = existing
        resolve_chunk_size(model, args.chunk_size, args.num_frames_per_batch)  # a bad clip length stops it here
        self.stats = stats_for(model_description(model))
        self.failed: list[list[str]] = []
        self.written = 0
        self._writer: wds.ShardWriter | None = None
        self._bar: tqdm | None = None

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if self.args.shards:
            inputs: Any = ShardInputs(shard_urls(self.args.shards)[rank::world], self.existing.keys)
            total = None
        else:
            items = csv_inputs(self.args.meta_path, self.args.data_dir)
            inputs = [item for item in items if item["key"] not in self.existing.keys][rank::world]
            total = len(inputs)
        self._bar = tqdm(total=total, desc=f"rank {rank}", unit="video", position=rank)
        return DataLoader(inputs, batch_size=None, num_workers=0)

    def predict_step(self, item: dict[str, Any], batch_idx: int) -> str:
        """Encode one input and write its sample (or record its failure); returns its key (Lightning warns about
        steps that return None)."""
        args = self.args

        def encode(path: str):
            return encode_video(
                self.model, path, **video_options(args), latent_dtype=args.latent_dtype,
                precision=args.precision, device=self.device, config=args.config, ckpt=args.ckpt,
            )

        try:
            encoded = encode(item["path"]) if "path" in item else with_video_file(item["sample"], encode)
        except VideoReadError as err:
            logger.warning("%s: %s (%s); listed in failed.csv", item["name"], err.reason, err.detail)
            self.failed.append([item["name"], err.reason, err.detail])
        else:
            meta = sample_meta(encoded.meta, item["name"])
            self.writer.write({"__key__": item["key"], TOKENS: npy_bytes(encoded.tokens),
                               META: json.dumps(meta).encode()})
            self.stats.update(encoded.tokens)
            self.written += 1
        self._bar.update(1)
        return item["key"]

    @property
    def writer(self) -> wds.ShardWriter:
        """This rank's part writer, opened at the first sample so that a rank with nothing to do leaves no file."""
        if self._writer is None:
            rank = self.trainer.global_rank
            pattern = str(self.out / PART_PATTERN.format(rank=rank))
            self._writer = wds.ShardWriter(pattern, maxcount=self.args.samples_per_shard,
                                           start_shard=next_part(self.out, rank), verbose=0)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()


def check_inputs(args: argparse.Namespace) -> None:
    """Raise a VidTokError unless exactly one input (`--meta_path` with `--data_dir`, or `--shards`) is given."""
    csv_given = args.meta_path is not None or args.data_dir is not None
    if csv_given == (args.shards is not None):
        raise VidTokError("give the input as either --meta_path CSV --data_dir DIR or --shards PATTERN (one of them)")
    if csv_given and (args.meta_path is None or args.data_dir is None):
        raise VidTokError("--meta_path and --data_dir go together: the CSV's paths are relative to --data_dir")
    if args.samples_per_shard < 1:
        raise VidTokError(f"--samples_per_shard must be >= 1, got {args.samples_per_shard}")


def encode_dataset(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run the whole job (see the module docstring). Returns, on rank 0, ``{"written", "skipped", "failed",
    "stats"}`` for this run; other ranks return None."""
    from vidtok.api import load_model_from_config

    check_inputs(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model_from_config(args.config, args.ckpt).eval()
    existing = scan_output(out, model_description(model))
    if existing.keys:
        logger.warning("%s already holds %d encoded videos: they are skipped", out, len(existing.keys))
    processes = args.devices * args.num_nodes
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
        strategy="ddp" if processes > 1 else "auto", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )
    module = DatasetEncoder(model, args, existing)
    trainer.predict(module, return_predictions=False)
    module.close()
    parts = gather({"stats": module.stats, "failed": module.failed, "written": module.written})
    leave_process_group()
    if trainer.global_rank != 0:
        return None
    stats = existing.stats
    for part in parts:
        stats.merge(part["stats"])
    failed = [row for part in parts for row in part["failed"]]
    with (out / "failed.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "reason", "detail"])
        writer.writerows(failed)
    summary = stats.to_dict()
    (out / "stats.json").write_text(json.dumps(summary))
    return {"written": sum(p["written"] for p in parts), "skipped": len(existing.keys), "failed": len(failed),
            "stats": summary}
