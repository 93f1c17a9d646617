"""Loading throughput of CSV + files against WebDataset shards, and `encode-dataset` throughput on 1 and 2 processes.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_datasets.py                      # a few minutes on 2 CPU cores
    PYTHONPATH=. .venv/bin/python benchmarks/bench_datasets.py --videos 64 --size 256 --frames 96

It writes `--videos` synthetic videos (`--frames` frames of `--size`², H.264, 30 fps) into a temporary folder, once
as files listed in a CSV and once as 4 tar shards, then:

(a) iterates a `DataLoader` (batch 1) over :class:`vidtok.data.vidtok.VidTokDataset` and
    :class:`vidtok.data.shards.VidTokShardDataset` with 0, 1 and 2 workers: 17-frame 64×64 training clips at
    8 fps; clips per second, the best of `--repeats` epochs after a warm-up epoch. Workers are persistent, so their
    start-up is not timed. The main process runs one torch thread, as workers do.
(b) runs `python -m vidtok encode-dataset` over the CSV with `configs/tiny/vidtok_fsq_causal_tiny.yaml` (random
    weights: speed does not depend on them) at 64×64 with `--devices 1` and `--devices 2` on the CPU; videos per
    second over the whole command (process start-up and DDP set-up included), and for scale the time of the same
    command on an empty CSV (start-up alone).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidtok.api import load_model_from_config  # noqa: E402
from vidtok.data.shards import VidTokShardDataset  # noqa: E402
from vidtok.data.video_io import VideoWriter  # noqa: E402
from vidtok.data.vidtok import VidTokDataset  # noqa: E402

TINY_FSQ = REPO / "configs" / "tiny" / "vidtok_fsq_causal_tiny.yaml"
PARAMS = {"input_height": 64, "input_width": 64, "sample_num_frames": 17, "sample_fps": 8}


def write_videos(root: Path, count: int, frames: int, size: int, shards: int) -> None:
    """`root/videos/v{i}.mp4`, `root/list.csv` and `root/shards/{00000..}.tar` holding the same files."""
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        with VideoWriter(root / "videos" / f"v{i}.mp4", 30) as writer:
            phase = rng.uniform(0, 6)
            for t in range(frames):
                planes = [128 + 100 * np.sin((xx + 3 * t) / 9 + phase + c) * np.cos((yy - t) / 11) for c in range(3)]
                writer.write(np.stack(planes, axis=-1).astype(np.uint8)[None])
    (root / "list.csv").write_text("videos\n" + "".join(f"v{i}.mp4\n" for i in range(count)))
    (root / "shards").mkdir()
    with wds.ShardWriter(str(root / "shards" / "%05d.tar"), maxcount=-(-count // shards), verbose=0) as writer:
        for i in range(count):
            writer.write({"__key__": f"v{i}", "mp4": (root / "videos" / f"v{i}.mp4").read_bytes()})


def clips_per_second(dataset, workers: int, repeats: int) -> float:
    """The best of `repeats` timed epochs, after one warm-up epoch (page cache, decoder libraries, worker start)."""
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:
        pass
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(1 for _ in loader)
        best = max(best, count / (time.perf_counter() - start))
    return best


def encode_seconds(root: Path, csv: str, devices: int, out: str) -> float:
    cmd = [sys.executable, "-m", "vidtok", "encode-dataset", "-c", str(TINY_FSQ), "--ckpt", str(root / "tiny.ckpt"),
           "-o", str(root / out), "--meta_path", str(root / csv), "--data_dir", str(root / "videos"),
           "--input_height", "64", "--input_width", "64", "--devices", str(devices), "--accelerator", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(max(1, os.cpu_count() // devices))}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--frames", type=int, default=72)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed loading epochs; the best is reported")
    parser.add_argument("--parts", default="ab", help="a: loading, b: encode-dataset")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in DataLoader workers, so that 0 workers is not favoured by intra-op threads
    print(f"{args.videos} videos of {args.frames} frames at {args.size}², {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_videos(root, args.videos, args.frames, args.size, shards=4)

        if "a" in args.parts:
            loading(root, args.repeats)
        if "b" in args.parts:
            encoding(root, args.videos)


def loading(root: Path, repeats: int) -> None:
    print(f"\n(a) loading: clips/s (17×64×64 training clips, batch 1, best of {repeats} epochs)")
    print(f"{'workers':>8} {'CSV + files':>12} {'shards':>8}")
    files = VidTokDataset(str(root / "videos"), str(root / "list.csv"), PARAMS)
    shards = VidTokShardDataset(str(root / "shards" / "{00000..00003}.tar"), PARAMS)
    for workers in (0, 1, 2):
        print(f"{workers:>8} {clips_per_second(files, workers, repeats):>12.1f} "
              f"{clips_per_second(shards, workers, repeats):>8.1f}")


def encoding(root: Path, videos: int) -> None:
    torch.manual_seed(0)
    model = load_model_from_config(OmegaConf.load(TINY_FSQ))
    torch.save({"state_dict": model.state_dict()}, root / "tiny.ckpt")
    (root / "empty.csv").write_text("videos\n")
    print(f"\n(b) encode-dataset, tiny FSQ model, {videos} videos at 64×64 (all frames)")
    print(f"{'devices':>8} {'total s':>8} {'videos/s':>9} {'start-up s':>11}")
    for devices in (1, 2):
        total = encode_seconds(root, "list.csv", devices, f"out{devices}")
        startup = encode_seconds(root, "empty.csv", devices, f"empty{devices}")
        print(f"{devices:>8} {total:>8.1f} {videos / total:>9.2f} {startup:>11.1f}")


if __name__ == "__main__":
    main()
