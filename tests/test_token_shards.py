"""TokenShardDataset: encode-dataset's samples back as (tokens, meta) or fixed windows of latent frames, each sample
once across DataLoader workers; torn samples are passed over."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from vidtok.data.token_shards import TokenShardDataset, latent_frames, read_token_sample
from vidtok.encode_dataset import npy_bytes
from vidtok.errors import VidTokError
from vidtok.token_file import TokenFileError


def write_parts(root: Path, samples: dict[str, tuple[np.ndarray, str]], per_part: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(root / "part-0-%05d.tar"), maxcount=per_part, verbose=0) as writer:
        for key, (tokens, kind) in samples.items():
            meta = {"kind": kind, "model": {"config": "m.yaml", "ckpt": "m.ckpt"}, "video": {"source": f"{key}.mp4"}}
            writer.write({"__key__": key, "tokens.npy": npy_bytes(tokens), "json": json.dumps(meta).encode()})
    return sorted(str(p) for p in root.glob("part-*.tar"))


def fsq_tokens(clips: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 512, size=(clips, 3, 2, 2)).astype(np.uint16)  # [N, T', H', W']


def test_whole_samples_once_across_workers(tmp_path: Path) -> None:
    samples = {f"v{i}": (fsq_tokens(i + 1, i), "fsq") for i in range(4)}
    urls = write_parts(tmp_path, samples, per_part=1)
    loader = DataLoader(TokenShardDataset(urls), batch_size=None, num_workers=2)
    seen = {meta["video"]["source"]: tokens for tokens, meta in loader}
    assert sorted(seen) == [f"v{i}.mp4" for i in range(4)]
    for i in range(4):
        assert seen[f"v{i}.mp4"].dtype == torch.int64
        assert np.array_equal(seen[f"v{i}.mp4"].numpy(), samples[f"v{i}"][0])


def test_windows_of_latent_frames_fsq_and_kl(tmp_path: Path) -> None:
    kl = np.random.default_rng(0).normal(size=(2, 4, 3, 2, 2)).astype(np.float16)  # [N, C, T', H', W']
    urls = write_parts(tmp_path, {"f": (fsq_tokens(2, 1), "fsq"), "k": (kl, "kl")}, per_part=5)
    windows = list(TokenShardDataset(urls, window=4, stride=2))
    assert [(w["key"], w["start"]) for w in windows] == [("f", 0), ("f", 2), ("k", 0), ("k", 2)]
    frames = latent_frames(kl.astype(np.float32), "kl")  # clips joined in time: [C, 6, H', W']
    assert frames.shape == (4, 6, 2, 2) and np.array_equal(frames[:, 3:], kl[1])
    assert windows[3]["tokens"].dtype == torch.float32
    assert np.array_equal(windows[3]["tokens"].numpy(), frames[:, 2:6])
    assert np.array_equal(windows[1]["tokens"].numpy(), fsq_tokens(2, 1).reshape(6, 2, 2)[2:6].astype(np.int64))


def test_a_torn_sample_is_passed_over_and_keys_are_checked(tmp_path: Path) -> None:
    urls = write_parts(tmp_path, {"a": (fsq_tokens(1, 0), "fsq")}, per_part=5)
    with wds.TarWriter(str(tmp_path / "part-1-00000.tar")) as writer:
        writer.write({"__key__": "torn", "tokens.npy": npy_bytes(fsq_tokens(1, 1))})
    with pytest.warns(UserWarning, match="torn"):
        items = list(TokenShardDataset(urls + [str(tmp_path / "part-1-00000.tar")]))
    assert [meta["video"]["source"] for _, meta in items] == ["a.mp4"]
    # this test's metadata names only config and checkpoint: read_token_sample checks it like a token file's
    with pytest.raises(TokenFileError, match="part-0-00000.tar"):
        read_token_sample(urls[0], "a")
    with pytest.raises(VidTokError, match="no sample 'b'.*a"):
        read_token_sample(urls[0], "b")
    with pytest.raises(VidTokError, match="does not exist"):
        read_token_sample(str(tmp_path / "nope.tar"), "a")
