"""Helpers for the shard tests: small synthetic videos written into WebDataset shards with PyAV and
`webdataset`'s writer, in the layout video2dataset uses (`{key}.mp4`, `{key}.json`, `{key}.txt`)."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds
from video_helpers import write_test_video


def write_shards(root: Path, num_shards: int, per_shard: int, *, num_frames: int = 12, size: int = 32,
                 broken: tuple[str, ...] = ()) -> list[Path]:
    """`root/{00000..}.tar` with `per_shard` videos each, keyed `s{shard}_{i}`; keys in `broken` hold random bytes
    instead of an mp4. Every video differs (its seed is its position)."""
    root.mkdir(parents=True, exist_ok=True)
    videos = root / "videos"
    paths = []
    for shard in range(num_shards):
        path = root / f"{shard:05d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in range(per_shard):
                key = f"s{shard}_{i}"
                if key in broken:
                    data = bytes(range(256)) * 8
                else:
                    mp4 = write_test_video(videos / f"{key}.mp4", num_frames, size, size, seed=shard * 100 + i)
                    data = mp4.read_bytes()
                writer.write({"__key__": key, "mp4": data, "json": json.dumps({"key": key}).encode(),
                              "txt": f"caption {key}".encode()})
        paths.append(path)
    return paths
