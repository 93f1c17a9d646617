"""`scripts/inference_evaluate.py` and `vidtok.evaluate`: figures against an independent computation, inputs
that must not break a run, long videos streamed to the whole-clip figures, and tiles."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import vidtok.clips
import vidtok.fvd
import vidtok.metrics
from scripts import inference_evaluate
from tests.conftest import REPO
from tests.video_helpers import (
    EXAMPLE,
    psnr_reference,
    read_video_reference,
    save_fake_i3d,
    save_tiny_model,
    split_padded,
    ssim_reference,
    write_test_video,
)
from vidtok.api import load_model_from_config
from vidtok.clips import resolve_chunk_size
from vidtok.evaluate import StreamScorer, evaluate
from vidtok.metrics import MetricAccumulator, score_frame_groups
from vidtok.training.lpips import LPIPS, VGG16_ENV, VGG16_FILENAME

SIZE = ["--input_height", "32", "--input_width", "32"]


@pytest.fixture(scope="module")
def fsq_model(tmp_path_factory):
    config, ckpt, _ = save_tiny_model(tmp_path_factory.mktemp("fsq"), causal=True, regularizer="fsq")
    return config, ckpt


@pytest.fixture(scope="module")
def kl_model(tmp_path_factory):
    config, ckpt, _ = save_tiny_model(tmp_path_factory.mktemp("kl"), causal=True, regularizer="kl")
    return config, ckpt


@pytest.fixture(scope="module")
def random_lpips():
    torch.manual_seed(0)
    return LPIPS(pretrained=False).eval()


@pytest.fixture
def patched_lpips(monkeypatch, random_lpips):
    """The script's LPIPS is the random-weight network (no VGG weights here)."""
    monkeypatch.setattr(vidtok.metrics, "load_lpips", lambda device="cpu", pretrained=True: random_lpips)
    return random_lpips


def run(args, capsys):
    code = inference_evaluate.main([*args, "--no_progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def model_args(model):
    config, ckpt = model
    return ["--config", str(config), "--ckpt", str(ckpt)]


def test_readme_import_still_works():
    from scripts.inference_evaluate import load_model_from_config as loader

    assert loader is load_model_from_config


def test_figures_on_a_real_video_match_an_independent_computation(tmp_path, fsq_model, patched_lpips, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(EXAMPLE, data / "example.mp4")
    args = [*model_args(fsq_model), "--data_dir", str(data), "--num_frames_per_batch", "17", *SIZE]
    code, out, _ = run([*args, "--sample_fps", "8", "--output", str(tmp_path / "out")], capsys)
    assert code == 0

    # independently: decord + torchvision, 17-frame clips padded with the last frame, float64 PSNR/SSIM
    model = load_model_from_config(*fsq_model).eval()
    reference = read_video_reference(EXAMPLE, 32, 32, sample_fps=8)  # 25 fps -> every 3rd frame: 25 frames
    assert reference.shape[1] == 25
    psnrs, ssims, lpipss = [], [], []
    with torch.no_grad():
        for x, _ in split_padded(reference, 17):
            x_hat = model(x)[1].clamp(-1, 1)
            a = ((x + 1) / 2)[0].permute(1, 0, 2, 3)
            b = ((x_hat + 1) / 2)[0].permute(1, 0, 2, 3)
            psnrs += list(psnr_reference(a.numpy(), b.numpy()))
            ssims += list(ssim_reference(a.numpy(), b.numpy()))
            lpipss += patched_lpips(a * 2 - 1, b * 2 - 1).flatten().tolist()
    assert len(psnrs) == 34  # 2 clips of 17, the last one padded from 8 real frames

    summary = json.loads((tmp_path / "out" / "metrics_summary.json").read_text())
    got = summary["metrics"]
    assert got["psnr"] == pytest.approx(np.mean(psnrs), abs=2e-4)
    assert got["ssim"] == pytest.approx(np.mean(ssims), abs=2e-5)
    assert got["lpips"] == pytest.approx(np.mean(lpipss), abs=1e-5)
    assert summary["num_clips"] == 2 and summary["num_frames"] == 34 and summary["left_out"] == []
    line = f"PSNR: {got['psnr']:.4f}, SSIM: {got['ssim']:.4f}, LPIPS: {got['lpips']:.4f}"
    assert line in out
    assert "Time taken: " in out and out.rstrip().split("\n")[-2].endswith("s")

    with (tmp_path / "out" / "metrics_per_video.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["num_frames"] == "34" and rows[0]["num_valid_frames"] == "25"
    assert float(rows[0]["psnr"]) == pytest.approx(got["psnr"], abs=1e-5)


def test_padding_frames_can_be_left_out(tmp_path, fsq_model):
    write_test_video(tmp_path / "short.mp4", num_frames=5)
    model = load_model_from_config(*fsq_model).eval()
    kwargs = dict(input_height=32, input_width=32, metrics=("psnr",), progress=False)
    padded = evaluate(model, tmp_path, **kwargs)
    real_only = evaluate(model, tmp_path, count_padded_frames=False, **kwargs)
    (video,) = padded.videos
    assert (video.num_clips, video.num_frames, video.num_valid_frames) == (1, 17, 5)  # one clip, padded
    assert real_only.videos[0].num_frames == 5 and real_only.num_frames == 5
    assert padded.metrics["psnr"] != real_only.metrics["psnr"]


def test_one_bad_video_is_reported_and_the_others_are_evaluated(tmp_path, fsq_model, capsys):
    data = tmp_path / "data"
    good = write_test_video(data / "a_good.mp4", num_frames=20)
    (data / "b_not_a_video.mp4").write_text("this is not a video\n")
    corrupt = data / "sub" / "c_corrupt.mp4"
    corrupt.parent.mkdir()
    corrupt.write_bytes(good.read_bytes()[:300])
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(good, alone / "a_good.mp4")

    base = [*model_args(fsq_model), *SIZE, "--metrics", "psnr,ssim"]
    code, out, err = run([*base, "--data_dir", str(data), "--output", str(tmp_path / "out")], capsys)
    assert code == 0
    assert "b_not_a_video.mp4" in err and "c_corrupt.mp4" in err
    summary = json.loads((tmp_path / "out" / "metrics_summary.json").read_text())
    assert summary["num_videos"] == 1
    left_out = {e["path"].rsplit("/", 1)[-1]: e for e in summary["left_out"]}
    assert set(left_out) == {"b_not_a_video.mp4", "c_corrupt.mp4"}
    assert all(e["status"] == "skipped" and e["reason"].startswith("unreadable") for e in left_out.values())

    code, _, _ = run([*base, "--data_dir", str(alone), "--output", str(tmp_path / "alone_out")], capsys)
    assert code == 0
    only_good = json.loads((tmp_path / "alone_out" / "metrics_summary.json").read_text())
    assert only_good["metrics"] == summary["metrics"]


def test_missing_files_in_a_meta_csv_are_reported(tmp_path, fsq_model, capsys):
    write_test_video(tmp_path / "there.mp4", num_frames=9)
    (tmp_path / "meta.csv").write_text("videos\nthere.mp4\ngone.mp4\n")
    args = [*model_args(fsq_model), *SIZE, "--metrics", "psnr", "--data_dir", str(tmp_path)]
    code, out, err = run([*args, "--meta_path", str(tmp_path / "meta.csv"), "--output", str(tmp_path / "o")], capsys)
    assert code == 0 and "gone.mp4" in err
    summary = json.loads((tmp_path / "o" / "metrics_summary.json").read_text())
    assert [e["reason"].split(":")[0] for e in summary["left_out"]] == ["missing"]


@pytest.mark.parametrize(
    ("codec", "pix_fmt"), [("png", "gray"), ("png", "rgba"), ("libx264", "yuv420p")], ids=["gray", "alpha", "rgb"]
)
def test_grayscale_and_alpha_videos_are_read_as_rgb(tmp_path, fsq_model, codec, pix_fmt):
    write_test_video(tmp_path / "v.mp4", num_frames=6, codec=codec, pix_fmt=pix_fmt)
    model = load_model_from_config(*fsq_model).eval()
    result = evaluate(model, tmp_path, input_height=32, input_width=32, metrics=("psnr", "ssim"), progress=False)
    assert result.videos[0].status == "ok" and result.num_clips == 1
    assert np.isfinite(result.metrics["psnr"]) and np.isfinite(result.metrics["ssim"])


def test_bad_arguments_and_folders_fail_clearly(tmp_path, fsq_model, capsys):
    base = [*model_args(fsq_model), "--metrics", "psnr"]
    code, _, err = run([*base, *SIZE, "--data_dir", str(tmp_path / "does_not_exist")], capsys)
    assert code == 1 and "does_not_exist" in err and "not a directory" in err

    (tmp_path / "empty").mkdir()
    code, _, err = run([*base, *SIZE, "--data_dir", str(tmp_path / "empty")], capsys)
    assert code == 1 and "no *.mp4" in err

    write_test_video(tmp_path / "ok" / "v.mp4", num_frames=5)
    ok_dir = ["--data_dir", str(tmp_path / "ok")]
    code, _, err = run([*base, "--input_height", "30", "--input_width", "32", *ok_dir], capsys)
    assert code == 1 and "spatial factor 4" in err

    code, _, err = run([*base, *SIZE, "--num_frames_per_batch", "16", "--data_dir", str(tmp_path / "ok")], capsys)
    assert code == 1 and "temporal factor" in err

    (tmp_path / "bad" / "x.mp4").parent.mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"\x00" * 100)
    code, _, err = run([*base, *SIZE, "--data_dir", str(tmp_path / "bad")], capsys)
    assert code == 1 and "x.mp4" in err

    with pytest.raises(SystemExit):
        inference_evaluate.main([*base[:-1], "psnr,vmaf", "--data_dir", str(tmp_path / "ok")])


def test_missing_lpips_weights_fail_unless_lpips_is_left_out(tmp_path, fsq_model, monkeypatch, capsys):
    monkeypatch.setenv(VGG16_ENV, str(tmp_path / "absent" / VGG16_FILENAME))
    write_test_video(tmp_path / "data" / "v.mp4", num_frames=5)
    args = [*model_args(fsq_model), *SIZE, "--data_dir", str(tmp_path / "data")]
    code, _, err = run(args, capsys)
    assert code == 1 and VGG16_FILENAME in err and "lpips" in err
    code, out, _ = run([*args, "--metrics", "psnr,ssim"], capsys)
    assert code == 0 and "PSNR: " in out and "LPIPS" not in out


def test_fvd_needs_i3d_weights_and_uses_them_when_given(tmp_path, fsq_model, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(vidtok.fvd.I3D_ENV, raising=False)
    for i in range(2):
        write_test_video(tmp_path / "data" / f"v{i}.mp4", num_frames=17, seed=i)
    args = [*model_args(fsq_model), *SIZE, "--data_dir", str(tmp_path / "data"), "--metrics", "psnr,fvd"]
    code, _, err = run(args, capsys)
    assert code == 1 and "i3d_torchscript.pt" in err

    i3d = save_fake_i3d(tmp_path / "i3d_torchscript.pt")
    code, out, _ = run([*args, "--i3d_path", str(i3d), "--output", str(tmp_path / "o")], capsys)
    assert code == 0 and "FVD: " in out
    summary = json.loads((tmp_path / "o" / "metrics_summary.json").read_text())
    assert summary["fvd_clips"] == 2 and np.isfinite(summary["metrics"]["fvd"])


def test_kl_sampling_is_fixed_by_the_seed(tmp_path, kl_model):
    write_test_video(tmp_path / "v.mp4", num_frames=9)
    model = load_model_from_config(*kl_model).eval()
    kwargs = dict(input_height=32, input_width=32, metrics=("psnr",), progress=False)
    first = evaluate(model, tmp_path, seed=42, **kwargs).metrics
    assert evaluate(model, tmp_path, seed=42, **kwargs).metrics == first
    assert evaluate(model, tmp_path, seed=7, **kwargs).metrics != first
    mean = evaluate(model, tmp_path, sample_posterior=False, seed=1, **kwargs).metrics
    assert evaluate(model, tmp_path, sample_posterior=False, seed=2, **kwargs).metrics == mean


def test_read_long_video_evaluates_one_trimmed_clip_per_video(tmp_path, fsq_model):
    write_test_video(tmp_path / "v.mp4", num_frames=40)
    model = load_model_from_config(*fsq_model).eval()
    result = evaluate(model, tmp_path, input_height=32, input_width=32, metrics=("psnr",), read_long_video=True,
                      chunk_size=8, progress=False)
    assert result.num_clips == 1 and result.num_frames == 33  # 8·⌊39/8⌋ + 1


def test_chunk_size_and_num_frames_per_batch(tmp_path):
    _, _, causal = save_tiny_model(tmp_path, causal=True)  # tdf 2
    _, _, noncausal = save_tiny_model(tmp_path, causal=False, regularizer="kl")  # tdf 4
    assert resolve_chunk_size(causal) == 16
    assert resolve_chunk_size(causal, num_frames_per_batch=17) == 16
    assert resolve_chunk_size(causal, chunk_size=8, num_frames_per_batch=9) == 8
    assert resolve_chunk_size(noncausal, num_frames_per_batch=16) == 16
    with pytest.raises(ValueError, match="--chunk_size 12"):
        resolve_chunk_size(causal, chunk_size=12, num_frames_per_batch=17)
    with pytest.raises(ValueError, match="temporal factor 4"):
        resolve_chunk_size(noncausal, num_frames_per_batch=17)


@pytest.mark.slow
def test_the_script_runs_as_a_program(tmp_path, fsq_model):
    write_test_video(tmp_path / "v.mp4", num_frames=5)
    command = [sys.executable, "scripts/inference_evaluate.py", *model_args(fsq_model), "--data_dir", str(tmp_path),
               "--num_frames_per_batch", "17", *SIZE, "--sample_fps", "30", "--metrics", "psnr,ssim", "--no_progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "PSNR: " in done.stdout and "Time taken: " in done.stdout


def test_bf16_runs_the_model_in_reduced_precision_and_the_metrics_in_float32(tmp_path, fsq_model, monkeypatch):
    write_test_video(tmp_path / "v.mp4", num_frames=5)
    model = load_model_from_config(*fsq_model).eval()
    seen = []

    def spy(a, b):
        seen.append((a.dtype, torch.is_autocast_enabled("cpu")))
        return ((a - b) ** 2).mean(dim=(1, 2, 3), keepdim=True)

    result = evaluate(model, tmp_path, input_height=32, input_width=32, metrics=("psnr", "lpips"), lpips_model=spy,
                      precision="bf16", progress=False)
    assert np.isfinite(result.metrics["psnr"]) and set(seen) == {(torch.float32, False)}
    full = evaluate(model, tmp_path, input_height=32, input_width=32, metrics=("psnr",), progress=False)
    assert full.metrics["psnr"] != result.metrics["psnr"]  # bfloat16 on CPU changes the reconstruction


# --- long videos (streaming) and spatial tiles ---------------------------------------------------------------------


class RecordingFVD:
    """Stands in for FVDAccumulator: records what it is given."""

    num_frames = 16

    def __init__(self):
        self.calls = []

    def update(self, x, x_hat, num_valid_frames=None):
        self.calls.append((x.clone(), x_hat.clone()))


@pytest.mark.parametrize("num_frames", [37, 9])
def test_stream_scorer_scores_exactly_as_the_whole_clip_is_scored(random_lpips, num_frames):
    torch.manual_seed(0)
    x = torch.rand(3, num_frames, 32, 32) * 2 - 1
    x_hat = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    fvd = RecordingFVD()
    scorer = StreamScorer(("psnr", "ssim", "lpips"), random_lpips, fvd)
    for start, end in [(0, 3), (3, 4), (4, 21), (21, num_frames)]:
        scorer.add(x[:, start:end], x_hat[:, start:end])
    scorer.close()
    whole = MetricAccumulator()
    whole.update_groups(score_frame_groups(x.unsqueeze(0), x_hat.unsqueeze(0), ("psnr", "ssim", "lpips"), random_lpips))
    assert scorer.scores.compute() == whole.compute() and scorer.num_frames == num_frames
    ((fx, fx_hat),) = fvd.calls  # FVD sees the first 16 frames (or all of a shorter video), once
    assert torch.equal(fx, x[:, :16].unsqueeze(0)) and torch.equal(fx_hat, x_hat[:, :16].unsqueeze(0))


def test_read_long_video_streams_causal_models_to_the_whole_clip_figures(tmp_path, fsq_model, monkeypatch):
    write_test_video(tmp_path / "v.mp4", num_frames=40)
    model = load_model_from_config(*fsq_model).eval()
    read_sizes = []
    real_read = vidtok.clips.read_frames
    monkeypatch.setattr(
        vidtok.clips, "read_frames", lambda r, idx, p: read_sizes.append(len(idx)) or real_read(r, idx, p)
    )
    result = evaluate(model, tmp_path, input_height=32, input_width=32, metrics=("psnr", "ssim"),
                      read_long_video=True, chunk_size=8, progress=False)
    assert read_sizes == [8, 8, 8, 8, 1]  # 33 frames, read a chunk at a time
    assert result.settings["streaming"] is True and result.num_clips == 1 and result.num_frames == 33

    frames = read_video_reference(tmp_path / "v.mp4", 32, 32, 30)[:, :33].unsqueeze(0)
    with torch.no_grad():
        x_hat = model(frames)[1].clamp(-1, 1)
    a, b = (((v + 1) / 2)[0].permute(1, 0, 2, 3).numpy() for v in (frames, x_hat))
    assert result.metrics["psnr"] == pytest.approx(np.mean(psnr_reference(a, b)), abs=1e-3)
    assert result.metrics["ssim"] == pytest.approx(np.mean(ssim_reference(a, b)), abs=1e-4)


def test_non_causal_long_videos_are_not_streamed(tmp_path):
    _, _, model = save_tiny_model(tmp_path / "m", causal=False, regularizer="fsq")
    write_test_video(tmp_path / "data" / "v.mp4", num_frames=18)
    result = evaluate(model, tmp_path / "data", input_height=32, input_width=32, metrics=("psnr",),
                      read_long_video=True, chunk_size=8, progress=False)
    assert result.settings["streaming"] is False and result.num_frames == 16


def test_tiles_are_used_and_recorded(tmp_path, fsq_model, capsys):
    write_test_video(tmp_path / "data" / "v.mp4", num_frames=5, height=48, width=64)  # cropped to 48²
    base = [*model_args(fsq_model), "--data_dir", str(tmp_path / "data"), "--input_height", "48",
            "--input_width", "48", "--metrics", "psnr", "--chunk_size", "4"]
    figures = {}
    for name, tiles in (("plain", []), ("tiled", ["--tile_size", "32", "--tile_overlap", "16"]),
                        ("whole", ["--tile_size", "48"])):
        code, _, _ = run([*base, *tiles, "--output", str(tmp_path / name)], capsys)
        assert code == 0
        figures[name] = json.loads((tmp_path / name / "metrics_summary.json").read_text())
    assert figures["tiled"]["settings"]["tile_size"] == 32 and figures["tiled"]["settings"]["tile_overlap"] == 16
    assert figures["plain"]["settings"]["tile_size"] is None
    assert figures["whole"]["metrics"]["psnr"] == pytest.approx(figures["plain"]["metrics"]["psnr"], abs=1e-4)
    assert figures["tiled"]["metrics"]["psnr"] != figures["plain"]["metrics"]["psnr"]
    code, _, err = run([*base, "--tile_size", "30"], capsys)
    assert code == 1 and "--tile_size" in err
