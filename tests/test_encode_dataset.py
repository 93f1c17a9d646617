"""`python -m vidtok encode-dataset`: every good video once with the tokens `encode` writes, bad ones in
failed.csv, statistics that do not depend on the number of processes (2 gloo processes against 1), restarts after a
torn part and after SIGKILL, shard input, and `decode --key`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_helpers import write_shards
from training_utils import one_thread  # noqa: F401  (module-wide autouse fixture)
from video_helpers import save_tiny_model, write_test_video

from vidtok.__main__ import main
from vidtok.data.token_shards import iter_token_samples, read_token_sample
from vidtok.token_file import load_model_for, load_tokens
from vidtok.tokens import iter_decoded_frames

REPO = Path(__file__).resolve().parents[1]
GOOD = {"a": 12, "b": 20, "sub/c.v2": 9}  # name -> frames; "sub/c.v2" checks nested paths and dots in names
FLAGS = ["--input_height", "32", "--input_width", "32", "--num_frames_per_batch", "9"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("encode_dataset")
    for seed, (name, frames) in enumerate(GOOD.items()):
        write_test_video(root / "videos" / f"{name}.mp4", frames, seed=seed)
    (root / "videos" / "broken.mp4").write_bytes(os.urandom(2048))
    rows = ["a.mp4", "b.mp4", "broken.mp4", "missing.mp4", "sub/c.v2.mp4"]  # rank 0 gets a, broken, sub/c.v2
    (root / "videos" / "list.csv").write_text("videos\n" + "".join(f"{r}\n" for r in rows))
    for kind in ("fsq", "kl"):
        save_tiny_model(root / "models", regularizer=kind)
    return root


def model_flags(data: Path, kind: str) -> list[str]:
    stem = data / "models" / f"tiny_causal_{kind}_v1.0"
    return ["-c", f"{stem}.yaml", "--ckpt", f"{stem}.ckpt"]


def encode_dataset_argv(data: Path, kind: str, out: Path, *extra: str) -> list[str]:
    csv_flags = ["--meta_path", str(data / "videos" / "list.csv"), "--data_dir", str(data / "videos")]
    return ["encode-dataset", *model_flags(data, kind), "-o", str(out), *csv_flags, *FLAGS,
            "--accelerator", "cpu", *extra]


def written(out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """Every complete sample of `out`'s parts; fails on a key written twice."""
    samples: dict[str, tuple[np.ndarray, dict]] = {}
    for key, tokens, meta in iter_token_samples(sorted(str(p) for p in out.glob("part-*.tar"))):
        assert key not in samples, f"{key} written twice"
        samples[key] = (tokens, meta)
    return samples


def encoded_alone(data: Path, kind: str, video: Path, tmp_path: Path) -> tuple[np.ndarray, dict]:
    """What `python -m vidtok encode` writes for `video` with the same flags."""
    path = tmp_path / f"{video.stem}.npz"
    argv = ["encode", str(video), *model_flags(data, kind), "-o", str(path), "--height", "32", "--width", "32",
            "--chunk_size", "8", "--device", "cpu"]
    assert main(argv) == 0
    encoded = load_tokens(path)
    return encoded.tokens, encoded.meta


def without_paths(meta: dict) -> dict:
    model = {k: v for k, v in meta["model"].items() if k not in ("config", "ckpt")}
    video = {k: v for k, v in meta["video"].items() if k != "source"}
    return {**meta, "model": model, "video": video}


def failures(out: Path) -> dict[str, str]:
    with (out / "failed.csv").open() as f:
        return {row["input"]: row["reason"] for row in csv.DictReader(f)}


def test_two_processes_encode_every_good_video_once_like_encode(data: Path, tmp_path: Path) -> None:
    out2, out1 = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "vidtok", *encode_dataset_argv(data, "kl", out2, "--devices", "2")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "3 videos encoded, 0 already done, 2 failed" in proc.stdout
    assert sorted(p.name for p in out2.glob("part-*.tar")) == ["part-0-00000.tar", "part-1-00000.tar"]

    samples = written(out2)
    assert sorted(samples) == ["a", "b", "sub/c_v2"]
    for name, key in (("a", "a"), ("b", "b"), ("sub/c.v2", "sub/c_v2")):
        tokens, meta = samples[key]
        reference, reference_meta = encoded_alone(data, "kl", data / "videos" / f"{name}.mp4", tmp_path)
        assert tokens.dtype == reference.dtype and tokens.shape == reference.shape
        np.testing.assert_allclose(tokens, reference, rtol=0, atol=1e-5)
        assert without_paths(meta) == without_paths(reference_meta)
        assert meta["video"]["source"] == f"{name}.mp4"
        assert not os.path.isabs(meta["model"]["config"]) and not os.path.isabs(meta["model"]["ckpt"])
    assert failures(out2) == {"broken.mp4": "unreadable", "missing.mp4": "missing"}

    assert main(encode_dataset_argv(data, "kl", out1)) == 0
    stats1, stats2 = (json.loads((out / "stats.json").read_text()) for out in (out1, out2))
    assert stats1["count_per_channel"] == stats2["count_per_channel"]
    for field in ("mean", "std", "overall_mean", "overall_std", "scale_factor"):
        np.testing.assert_allclose(stats2[field], stats1[field], rtol=1e-6, atol=1e-9)
    # and they are the statistics of the written latents
    latents = np.concatenate([np.moveaxis(t, 1, 0).reshape(4, -1) for t, _ in samples.values()], axis=1)
    np.testing.assert_allclose(stats1["mean"], latents.mean(axis=1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats1["std"], latents.std(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats1["scale_factor"], 1 / latents.std(), rtol=1e-6)


def test_fsq_indices_are_identical_to_encode_and_decode_key_gives_the_same_video(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "fsq"
    assert main(encode_dataset_argv(data, "fsq", out)) == 0
    samples = written(out)
    tokens, _ = samples["b"]
    reference, _ = encoded_alone(data, "fsq", data / "videos" / "b.mp4", tmp_path)
    assert tokens.dtype == np.uint16 and np.array_equal(tokens, reference)  # 512 codes
    stats = json.loads((out / "stats.json").read_text())
    everything = np.concatenate([t.ravel() for t, _ in samples.values()]).astype(np.int64)
    assert stats["histogram"] == np.bincount(everything, minlength=512).tolist()

    # token files record the checkpoint by name only; it is not beside them here, so it is passed
    model = model_flags(data, "fsq")
    assert main(["decode", str(out / "part-0-00000.tar"), "--key", "b", "-o", str(tmp_path / "b.mp4"), *model]) == 0
    assert "20 frames at 30 fps" in capsys.readouterr().out
    # the shard sample decodes to the frames the token file decodes to (compared before the lossy mp4 encoding,
    # whose bytes can change with rounding in the last float bit)
    shard_sample = read_token_sample(str(out / "part-0-00000.tar"), "b")
    decoder = load_model_for(shard_sample, model[1], model[3])
    from_shard = torch.cat(list(iter_decoded_frames(decoder, shard_sample)), dim=1)
    from_file = torch.cat(list(iter_decoded_frames(decoder, load_tokens(tmp_path / "b.npz"))), dim=1)
    assert from_shard.shape == (3, 20, 32, 32)
    torch.testing.assert_close(from_shard, from_file, rtol=0, atol=1e-5)
    capsys.readouterr()
    assert main(["decode", str(out / "part-0-00000.tar"), "--key", "zzz", "-o", str(tmp_path / "x.mp4")]) == 1
    assert "no sample 'zzz'" in capsys.readouterr().err


def test_restart_after_an_interrupted_write_skips_finished_inputs(data: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "restart"
    assert main(encode_dataset_argv(data, "fsq", out)) == 0
    part = out / "part-0-00000.tar"
    names = [key for key, _, _ in iter_token_samples([str(part)])]
    assert names == ["a", "b", "sub/c_v2"]
    # cut the part inside its last file, as a kill during the write would
    with tarfile.open(part) as tar:
        last = tar.getmembers()[-1]
    assert last.name.startswith("sub/c_v2.")
    part.write_bytes(part.read_bytes()[: last.offset_data + 5])
    assert sorted(written(out)) == ["a", "b"]
    capsys.readouterr()

    assert main(encode_dataset_argv(data, "fsq", out)) == 0
    assert "1 videos encoded, 2 already done, 2 failed" in capsys.readouterr().out
    assert [key for key, _, _ in iter_token_samples([str(out / "part-0-00001.tar")])] == ["sub/c_v2"]
    assert sorted(written(out)) == ["a", "b", "sub/c_v2"]
    fresh = tmp_path / "fresh"
    assert main(encode_dataset_argv(data, "fsq", fresh)) == 0
    assert json.loads((out / "stats.json").read_text()) == json.loads((fresh / "stats.json").read_text())


def test_shard_input_keys_failures_and_tokens(data: Path, tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=2, per_shard=2, num_frames=9, broken=("s1_0",))
    out = tmp_path / "out"
    argv = ["encode-dataset", *model_flags(data, "fsq"), "-o", str(out), "--shards",
            str(tmp_path / "shards" / "{00000..00001}.tar"), *FLAGS, "--accelerator", "cpu"]
    assert main(argv) == 0
    samples = written(out)
    assert sorted(samples) == ["s0_0", "s0_1", "s1_1"]
    assert failures(out) == {f"{shards[1].name}#s1_0": "unreadable"}
    reference, _ = encoded_alone(data, "fsq", tmp_path / "shards" / "videos" / "s1_1.mp4", tmp_path)
    assert np.array_equal(samples["s1_1"][0], reference)
    assert samples["s1_1"][1]["video"]["source"] == "00001.tar#s1_1"


def test_input_flags_are_checked(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["encode-dataset", *model_flags(data, "fsq"), "-o", str(tmp_path), "--meta_path", "x.csv"]
    assert main(argv) == 1
    assert "--meta_path and --data_dir go together" in capsys.readouterr().err
    assert main(["encode-dataset", *model_flags(data, "fsq"), "-o", str(tmp_path)]) == 1
    assert "either --meta_path CSV --data_dir DIR or --shards PATTERN" in capsys.readouterr().err


def test_a_killed_run_started_again_skips_the_inputs_already_written(data: Path, tmp_path: Path) -> None:
    videos = tmp_path / "many"
    videos.mkdir()
    names = [f"v{i:02d}.mp4" for i in range(30)]
    for name in names:
        os.symlink(data / "videos" / "b.mp4", videos / name)
    (videos / "list.csv").write_text("videos\n" + "".join(f"{n}\n" for n in names))
    out = tmp_path / "out"
    argv = ["encode-dataset", *model_flags(data, "fsq"), "-o", str(out), "--meta_path", str(videos / "list.csv"),
            "--data_dir", str(videos), *FLAGS, "--accelerator", "cpu", "--samples_per_shard", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "vidtok", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # one sample per part: part 3 exists once parts 0-2 are closed, i.e. complete on disk
        while not (out / "part-0-00003.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = written(out)
    assert 3 <= len(before) < 30

    assert main(argv) == 0
    after = written(out)
    assert sorted(after) == sorted(n[:-4] for n in names)  # every input once
    new_parts = {p.name for p in out.glob("part-*.tar")} - {f"part-0-{n:05d}.tar" for n in range(len(before) + 1)}
    new_keys = {key for key, _, _ in iter_token_samples(sorted(str(out / p) for p in new_parts))}
    assert not new_keys & set(before)  # nothing written before the kill was encoded again
    for key in before:
        assert np.array_equal(before[key][0], after[key][0])
