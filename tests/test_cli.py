"""`vidtok.cli`: every entry point turns a failure the user can fix into one `error: ...` line naming the file or
value, exit status 1, no traceback (unless `--debug` / `VIDTOK_DEBUG=1`), and checks its output before any model
work. Each test runs a real entry point: its `main(argv)` in-process, or the command in a subprocess."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from training_utils import TINY_KL, make_dataset, tiny_overrides

import main as train_main
import vidtok.cli
import vidtok.data.video_io
import vidtok.memory
import vidtok.tiling
from scripts import convert_diffusers, inference_evaluate, inference_reconstruct
from tests.conftest import REPO
from tests.video_helpers import save_tiny_model, write_test_video
from vidtok.__main__ import main as vidtok_main
from vidtok.cli import debug_requested, partial_path, run

SIZE = ["--input_height", "32", "--input_width", "32", "--no_progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, ckpt, model) of a tiny causal FSQ model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), causal=True, regularizer="fsq")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", num_frames=9)


def fails(capsys, main, argv, *named: str) -> str:
    """Run `main(argv)`; assert exit status 1, no traceback, exactly one `error:` line naming every `named`."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for name in named:
        assert str(name) in lines[0], lines[0]
    with capsys.disabled():
        print(lines[0])  # shown by `pytest -s`: the message each failure prints
    return lines[0]


def reconstruct_args(config, ckpt, video, out_dir) -> list:
    return ["--config", config, "--ckpt", ckpt, "--input_video_path", video, "--output_video_dir", out_dir,
            "--sample_fps", "30", *SIZE]


def write_config(path: Path, config: Path, key: str, value) -> Path:
    cfg = OmegaConf.load(config)
    OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, path)
    return path


# --- the boundary itself --------------------------------------------------------------------------------------------


def test_debug_is_read_from_the_command_line_and_the_environment(monkeypatch):
    monkeypatch.delenv(vidtok.cli.DEBUG_ENV, raising=False)
    assert not debug_requested(["--config", "x"])
    assert debug_requested(["--config", "x", "--debug"])
    assert debug_requested(["--debug=1"]) and not debug_requested(["--debug=false"])
    assert not debug_requested(["--debug", "false"])  # main.py's str2bool form
    monkeypatch.setenv(vidtok.cli.DEBUG_ENV, "1")
    assert debug_requested([])


def test_keyboard_interrupt_exits_130_without_traceback(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    assert run(interrupted, []) == 130
    err = capsys.readouterr().err
    assert err == "interrupted\n"


def test_a_bug_keeps_its_traceback():
    def broken(argv):
        return [][1]

    with pytest.raises(IndexError):
        run(broken, [])


def test_usage_errors_keep_exit_status_2(tiny, capsys):
    with pytest.raises(SystemExit) as info:
        inference_reconstruct.main(["--concate_input", "maybe"])
    assert info.value.code == 2


def test_subprocess_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.yaml"
    command = [sys.executable, "-m", "vidtok", "encode", "v.mp4", "-c", str(missing), "--ckpt", "x.ckpt",
               "-o", str(tmp_path / "t.npz")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(vidtok.cli.DEBUG_ENV, None)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: config {str(missing)!r} does not exist")
    debug = subprocess.run([*command, "--debug"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "MissingFileError" in debug.stderr
    env[vidtok.cli.DEBUG_ENV] = "1"
    by_env = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert by_env.returncode == 1 and "Traceback" in by_env.stderr


# --- config -----------------------------------------------------------------------------------------------------


def test_config_missing(tiny, video, tmp_path, capsys):
    _, ckpt, _ = tiny
    fails(capsys, inference_reconstruct.main, reconstruct_args(tmp_path / "nope.yaml", ckpt, video, tmp_path),
          "nope.yaml", "does not exist")


def test_config_yaml_syntax_error_names_line_and_column(tiny, video, tmp_path, capsys):
    _, ckpt, _ = tiny
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  target: x\n  params: [1, 2\n")
    line = fails(capsys, inference_reconstruct.main, reconstruct_args(bad, ckpt, video, tmp_path), "bad.yaml")
    assert "line 4, column 1" in line


def test_config_unknown_target_names_its_key(tiny, video, tmp_path, capsys):
    config, ckpt, _ = tiny
    bad = write_config(tmp_path / "t.yaml", config, "model.params.encoder_config.target", "vidtok.modules.Nope")
    fails(capsys, inference_reconstruct.main, reconstruct_args(bad, ckpt, video, tmp_path),
          "model.params.encoder_config.target", "vidtok.modules.Nope", "t.yaml")


def test_config_unknown_parameter_names_its_key(tiny, tmp_path, capsys):
    config, ckpt, _ = tiny
    bad = write_config(tmp_path / "p.yaml", config, "model.params.regularizer_config.params.levelz", [8, 8, 8])
    fails(capsys, vidtok_main, ["encode", "v.mp4", "-c", bad, "--ckpt", ckpt, "-o", tmp_path / "t.npz"],
          "model.params.regularizer_config.params.levelz", "FSQRegularizer")


def test_config_wrong_parameter_type_names_its_key(tiny, video, tmp_path, capsys):
    config, ckpt, _ = tiny
    bad = write_config(tmp_path / "w.yaml", config, "model.params.encoder_config.params.ch", "eight")
    fails(capsys, inference_reconstruct.main, reconstruct_args(bad, ckpt, video, tmp_path),
          "model.params.encoder_config.params.ch", "expects int", "'eight'")


# --- checkpoint -------------------------------------------------------------------------------------------------


def test_checkpoint_missing(tiny, video, tmp_path, capsys):
    config, _, _ = tiny
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, tmp_path / "none.ckpt", video, tmp_path),
          "none.ckpt", "does not exist")


def test_checkpoint_truncated(tiny, video, tmp_path, capsys):
    config, ckpt, _ = tiny
    short = tmp_path / "short.ckpt"
    short.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, short, video, tmp_path),
          "short.ckpt", "truncated or corrupt")


def test_checkpoint_corrupt_safetensors_header(tiny, video, tmp_path, capsys):
    config, _, model = tiny
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(good))
    data = bytearray(good.read_bytes())
    data[8:16] = b"\xff" * 8  # the JSON header's first bytes
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, bad, video, tmp_path),
          "bad.safetensors", "not a readable .safetensors file")
    short = tmp_path / "short.safetensors"
    short.write_bytes(good.read_bytes()[:-100])
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, short, video, tmp_path), "short.safetensors")


class Custom:
    """A class weights-only loading does not know, so unpickling it is refused."""

    def __init__(self) -> None:
        self.value = 1


def test_checkpoint_pickle_refused_by_weights_only(tiny, video, tmp_path, capsys):
    config, _, model = tiny
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": model.state_dict(), "extra": Custom()}, evil)
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, evil, video, tmp_path),
          "evil.ckpt", "test_cli.Custom", "weights-only")


def test_checkpoint_keys_and_shapes_that_do_not_fit(tiny, video, tmp_path, capsys):
    config, _, model = tiny
    state = dict(model.state_dict())
    name = next(k for k, v in state.items() if v.ndim == 5)
    state[name] = torch.zeros(1, *state[name].shape[1:])
    state.pop(next(k for k in state if k != name))
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": state}, ckpt)
    line = fails(capsys, inference_reconstruct.main, reconstruct_args(config, ckpt, video, tmp_path),
                 "other.ckpt", "1 missing", "1 with another shape", name)
    assert str(config) in line


# --- evaluation data ----------------------------------------------------------------------------------------------


def evaluate_args(tiny, data_dir, *extra) -> list:
    config, ckpt, _ = tiny
    return ["--config", config, "--ckpt", ckpt, "--data_dir", data_dir, "--metrics", "psnr", *SIZE, *extra]


def test_evaluate_empty_meta_csv(tiny, tmp_path, capsys):
    meta = tmp_path / "meta.csv"
    meta.write_text("")
    fails(capsys, inference_evaluate.main, evaluate_args(tiny, tmp_path, "--meta_path", meta), "meta.csv", "empty")
    meta.write_text("videos\n")
    fails(capsys, inference_evaluate.main, evaluate_args(tiny, tmp_path, "--meta_path", meta), "meta.csv",
          "lists no videos")


def test_evaluate_csv_without_the_videos_column(tiny, tmp_path, capsys):
    meta = tmp_path / "meta.csv"
    meta.write_text("path\nclip.mp4\n")
    fails(capsys, inference_evaluate.main, evaluate_args(tiny, tmp_path, "--meta_path", meta), "meta.csv",
          "no 'videos' column")


def test_evaluate_folder_without_videos(tiny, tmp_path, capsys):
    fails(capsys, inference_evaluate.main, evaluate_args(tiny, tmp_path), str(tmp_path), "no *.mp4 files")


def test_evaluate_path_escaping_the_data_dir(tiny, tmp_path, capsys):
    meta = tmp_path / "meta.csv"
    meta.write_text("videos\n../x.mp4\n")
    fails(capsys, inference_evaluate.main, evaluate_args(tiny, tmp_path / "data", "--meta_path", meta),
          "meta.csv", "'../x.mp4'", "outside data_dir")


# --- outputs, checked before the model is loaded -----------------------------------------------------------------


def test_output_folder_that_is_a_regular_file(tiny, video, tmp_path, capsys):
    config, _, _ = tiny
    taken = tmp_path / "taken"
    taken.write_text("")
    # the checkpoint does not exist: an error about it would mean the model was loaded first
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, tmp_path / "none.ckpt", video, taken),
          "--output_video_dir", str(taken), "not a folder")
    fails(capsys, inference_evaluate.main, evaluate_args(tiny, tmp_path, "--output", taken), str(taken))
    fails(capsys, convert_diffusers.main, ["--config", config, "--ckpt", "none.ckpt", "--output", taken], str(taken))
    fails(capsys, vidtok_main, ["decode", "x.npz", "-o", tmp_path], "--output", str(tmp_path), "is a folder")


def test_output_folder_below_a_file(tiny, video, tmp_path, capsys):
    config, _, _ = tiny
    (tmp_path / "file").write_text("")
    fails(capsys, inference_reconstruct.main,
          reconstruct_args(config, tmp_path / "none.ckpt", video, tmp_path / "file" / "out"),
          str(tmp_path / "file"), "is a file, not a folder")


def test_output_folder_that_cannot_be_written(tiny, video, tmp_path, capsys):
    config, _, _ = tiny
    # The tests run as root, which ignores permission bits (a chmod 0o500 folder stays writable); sysfs refuses new
    # files to everyone, root included.
    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    fails(capsys, inference_reconstruct.main,
          reconstruct_args(config, tmp_path / "none.ckpt", video, "/sys/vidtok-out"),
          "/sys/vidtok-out", "cannot create files in '/sys'")


def test_output_to_dev_full_is_refused_before_the_model(tmp_path, capsys):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    fails(capsys, vidtok_main, ["decode", tmp_path / "none.npz", "-o", "/dev/full"], "/dev/full", "not a regular file")


def test_output_folder_without_space(tiny, video, tmp_path, capsys, monkeypatch):
    config, _, _ = tiny
    real = os.statvfs

    def full(path):
        stats = real(path)
        return os.statvfs_result((*stats[:4], 0, *stats[5:]))  # f_bavail = 0

    monkeypatch.setattr(vidtok.cli.os, "statvfs", full)
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, tmp_path / "none.ckpt", video, tmp_path / "o"),
          str(tmp_path / "o"), "no space left")


def test_disk_full_while_writing_leaves_no_file(tiny, video, tmp_path, capsys, monkeypatch):
    config, ckpt, _ = tiny
    out = tmp_path / "out"
    write = vidtok.data.video_io.VideoWriter.write

    def write_then_fail(self, frames):
        write(self, frames)  # the partial file exists now
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial_path(self.path)))

    monkeypatch.setattr(vidtok.data.video_io.VideoWriter, "write", write_then_fail)
    fails(capsys, inference_reconstruct.main, reconstruct_args(config, ckpt, video, out), "no space left on device",
          "clip_reconstructed")
    assert list(out.iterdir()) == []  # neither the video nor its partial file


# --- training -----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def drop_new_log_handlers():
    """main.py's log handler writes to the stderr of the test that installed it, which capsys closes afterwards."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)


def train(argv) -> int:
    return run(train_main.main, [str(a) for a in argv])


def test_training_frame_rule_is_checked_at_start_up(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path / "no_data", frames=6)  # the tiny causal model takes 1 + 4k frames
    line = fails(capsys, train, ["-b", TINY_KL, "--logdir", tmp_path / "logs", "--accelerator", "cpu", *overrides],
                 "data.params.train.params.video_params", "T = 1 + k·4", "T=6")
    assert "no_data" not in line
    assert not (tmp_path / "logs").exists()


def test_training_config_missing_or_invalid(tmp_path, capsys):
    fails(capsys, train, ["-b", tmp_path / "none.yaml"], "none.yaml", "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  params: {a: 1\n")
    fails(capsys, train, ["-b", bad], "bad.yaml", "line 3, column 1")


def test_training_unknown_target_in_the_data_section(tmp_path, capsys):
    overrides = [*tiny_overrides(tmp_path / "no_data"), "data.params.train.target=vidtok.data.vidtok.NoSuchDataset"]
    fails(capsys, train, ["-b", TINY_KL, "--logdir", tmp_path / "logs", *overrides],
          "data.params.train.target", "NoSuchDataset")


def no_lpips_weights(tmp_path: Path, monkeypatch) -> list[str]:
    """Point LPIPS at files that do not exist; the overrides without tiny_overrides' `lpips_pretrained=false`."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(empty))
    monkeypatch.setenv("VIDTOK_VGG16_PATH", str(empty / "vgg16-397923af.pth"))
    return [o for o in tiny_overrides(tmp_path / "data") if "lpips_pretrained" not in o]


def test_training_lpips_weights_missing_with_a_perceptual_term(tmp_path, capsys, monkeypatch):
    overrides = no_lpips_weights(tmp_path, monkeypatch)
    fails(capsys, train, ["-b", TINY_KL, "--logdir", tmp_path / "logs", *overrides], "vgg16-397923af.pth",
          "lpips_pretrained: false")


def test_training_without_a_perceptual_term_needs_no_lpips_weights(tmp_path, monkeypatch):
    overrides = no_lpips_weights(tmp_path, monkeypatch)
    make_dataset(tmp_path / "data", num_clips=1, num_frames=10, size=32)
    argv = ["-b", TINY_KL, "--logdir", tmp_path / "logs", "--accelerator", "cpu", "--max_steps", "2", *overrides,
            "model.params.loss_config.params.perceptual_weight=0"]
    result = train_main.main([str(a) for a in argv])
    assert result.trainer.global_step == 2
    assert result.model.loss.perceptual_weight == 0


# --- memory -------------------------------------------------------------------------------------------------------


def test_frames_too_large_for_memory_name_tile_size(tiny, video, tmp_path, capsys, monkeypatch):
    config, ckpt, _ = tiny
    monkeypatch.setattr(vidtok.memory, "device_memory_bytes", lambda device: 8 * 2**30)
    argv = [*reconstruct_args(config, ckpt, video, tmp_path / "out"), "--input_height", "4096",
            "--input_width", "4096"]
    line = fails(capsys, inference_reconstruct.main, argv, "4096×4096", "--tile_size", "8 GiB")
    suggested = int(line.split("--tile_size ")[1].split()[0])
    tiles = vidtok.tiling.resolve_tiles(tiny[2], suggested)
    vidtok.memory.check_memory(tiny[2], 17, 4096, 4096, tiles, "cpu")  # the suggested tiles fit
    # `python -m vidtok encode` makes the same check before encoding anything
    tokens = tmp_path / "t.npz"
    fails(capsys, vidtok_main, ["encode", video, "-c", config, "--ckpt", ckpt, "-o", tokens, "--height", "4096",
                                "--width", "4096"], "4096×4096", "--tile_size")
    assert not tokens.exists()
    assert not (tmp_path / "out").exists()
