"""VidTokShardDataset: the same clips as VidTokDataset, bad samples skipped or fatal, every sample exactly once per
epoch across 2 DDP processes × 2 workers, resuming after finished shards, and 20 training steps from shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from shard_helpers import write_shards
from torch.utils.data import DataLoader
from training_utils import REPO, one_thread  # noqa: F401  (module-wide autouse fixture)

import main
from vidtok.data.shards import ShardProgress, VidTokShardDataset, shard_urls
from vidtok.data.video_io import VideoReadError
from vidtok.data.vidtok import VidTokDataset
from vidtok.errors import VidTokError

PARAMS = {"input_height": 16, "input_width": 16, "sample_num_frames": 5, "sample_fps": 10}
SHARDS_CONFIG = REPO / "configs" / "examples" / "vidtok_kl_causal_tiny_shards.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, num_shards=4, per_shard=3, broken=("s1_1",))
    return root


def pattern(root: Path) -> str:
    return str(root / "{00000..00003}.tar")


def test_urls_expand_braces_and_lists(tmp_path: Path) -> None:
    assert shard_urls("/d/{00..02}.tar") == ["/d/00.tar", "/d/01.tar", "/d/02.tar"]
    assert shard_urls(["/a/{0..1}.tar", "/b.tar"]) == ["/a/0.tar", "/a/1.tar", "/b.tar"]
    with pytest.raises(VidTokError, match="no shard URLs"):
        shard_urls([])


def test_clips_equal_the_csv_dataset_and_broken_samples_are_skipped(shards: Path) -> None:
    dataset = VidTokShardDataset(pattern(shards), PARAMS, start_index=0)
    items = list(dataset)
    assert [item["__key__"] for item in items] == [f"s{s}_{i}" for s in range(4) for i in range(3) if (s, i) != (1, 1)]
    assert set(dataset.skipped) == {f"{shards / '00001.tar'}#s1_1"}
    assert dataset.skipped[f"{shards / '00001.tar'}#s1_1"].startswith("unreadable")
    # the same video read from a file by the CSV dataset gives the same clip (shared sampling and transform)
    (shards / "one.csv").write_text("videos\nvideos/s2_0.mp4\n")
    reference = VidTokDataset(str(shards), str(shards / "one.csv"), PARAMS, start_index=0)[0]["jpg"]
    clip = next(item["jpg"] for item in items if item["__key__"] == "s2_0")
    assert clip.shape == (3, 5, 16, 16)
    assert torch.equal(clip, reference)


def test_strict_loading_raises_naming_the_sample(shards: Path) -> None:
    dataset = VidTokShardDataset(str(shards / "00001.tar"), PARAMS, is_strict_loading=True)
    with pytest.raises(VideoReadError, match=r"00001\.tar#s1_1"):
        list(dataset)


def test_finished_shards_are_reported_and_left_out_when_resuming(shards: Path) -> None:
    dataset = VidTokShardDataset(pattern(shards), PARAMS, start_index=0)
    finished = [item["finished_shards"] for item in DataLoader(dataset, batch_size=None)]
    # a shard is reported by the item that used up its last sample
    urls = [str(shards / f"{n:05d}.tar") for n in range(4)]
    assert finished == ["", "", urls[0], "", urls[1], "", "", urls[2], "", "", urls[3]]

    progress = ShardProgress()
    trainer = type("Trainer", (), {"current_epoch": 0, "datamodule": type("DM", (), {"datasets": {"train": dataset}})})
    progress.setup(trainer, None, "fit")
    progress.load_state_dict({"epoch": 0, "finished": urls[:2]})  # what a resumed run does before reading
    assert [item["__key__"] for item in dataset] == ["s2_0", "s2_1", "s2_2", "s3_0", "s3_1", "s3_2"]
    trainer.current_epoch = 1  # a new epoch reads everything again
    progress.on_train_epoch_start(trainer, None)
    assert len(list(dataset)) == 11 and progress.state_dict() == {"epoch": 1, "finished": []}


def test_shuffle_buffer_reorders_but_keeps_every_sample(shards: Path) -> None:
    dataset = VidTokShardDataset(pattern(shards), PARAMS, shuffle_buffer=5, start_index=0)
    first = [item["__key__"] for item in dataset]
    dataset.set_epoch(1)
    second = [item["__key__"] for item in dataset]
    assert sorted(first) == sorted(second) and len(first) == 11
    assert first != second


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_two_ddp_processes_with_two_workers_see_every_sample_exactly_once(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "shards", num_shards=4, per_shard=2, num_frames=3)[0].parent
    cmd = [sys.executable, str(REPO / "tests" / "shard_split_probe.py"), pattern(root), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = [json.loads((tmp_path / f"keys-{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    assert sorted(seen[0] + seen[1]) == sorted(f"s{s}_{i}" for s in range(4) for i in range(2))


def test_twenty_training_steps_from_shards_skip_and_count_a_broken_sample(shards: Path, tmp_path: Path) -> None:
    overrides = {
        "model.params.encoder_config.params.ch": 16,
        "model.params.loss_config.params.lpips_pretrained": "false",
        "data.params.num_workers": 0,
        "data.params.train.params.urls": pattern(shards),
        "data.params.train.params.video_params.input_height": 32,
        "data.params.train.params.video_params.input_width": 32,
        "lightning.trainer.limit_val_batches": 0,  # no validation: step checkpoints are then not held back
        "lightning.trainer.num_sanity_val_steps": 0,
        "lightning.trainer.enable_progress_bar": "false",
        "lightning.trainer.enable_model_summary": "false",
        "lightning.callbacks.image_logger.params.disabled": "true",
        "lightning.modelcheckpoint.params.every_n_train_steps": 10,
        "lightning.modelcheckpoint.params.save_top_k": -1,  # keep the checkpoint of step 10
        "data.params.train.params.shuffle_buffer": 0,  # shard order, so that the finished shards are known
        "lightning.callbacks.paths.target": "test_shards.PathProbe",
    }
    argv = ["-b", str(SHARDS_CONFIG), "--logdir", str(tmp_path), "-n", "shards", "--accelerator",
            "cpu", "--max_steps", "20", *(f"{k}={v}" for k, v in overrides.items())]
    result = main.main(argv)
    assert result.trainer.global_step == 20
    assert float(result.trainer.callback_metrics["data/skipped_videos"]) == 1
    assert list(result.datamodule.skipped_summary()["train"]) == [f"{shards / '00001.tar'}#s1_1"]
    assert [p for _, p in next(c for c in result.trainer.callbacks if isinstance(c, PathProbe)).paths] == [
        f"{shards / f'{s:05d}.tar'}#s{s}_{i}" for s in range(4) for i in range(3) if (s, i) != (1, 1)][:10]

    # resumed from the checkpoint of step 10 (5 batches: shards 0 and 1 finished), epoch 0 goes on with shards 2
    # and 3 only, then epoch 1 reads everything again
    ckpt = next(result.logdir.glob("checkpoints/*step=00000010.ckpt"))
    resumed = main.main(["-r", str(ckpt), "--max_steps", "26"])
    assert resumed.trainer.global_step == 26
    paths = next(c for c in resumed.trainer.callbacks if isinstance(c, PathProbe)).paths
    assert paths == [(0, f"{shards / f'{s:05d}.tar'}#s{s}_{i}") for s in (2, 3) for i in range(3)] + [
        (1, f"{shards / '00000.tar'}#s0_0"), (1, f"{shards / '00000.tar'}#s0_1")]


class PathProbe(Callback):
    """Records `(epoch, url#key)` of every training sample."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[tuple[int, str]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.paths += [(trainer.current_epoch, path) for path in batch["path"]]
