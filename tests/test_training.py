"""Training: the tiny configs train on real clips, stage 2 freezes the encoder, runs resume after SIGKILL, DDP on two
CPU processes, bad videos are skipped, missing LPIPS weights stop start-up, EMA state and logs.

Runs go through `main.main` (the command line) in-process, or `main.py` in a subprocess where a process has to die
or fork. Every run uses random LPIPS weights, 9×32×32 clips and ch=16, so a batch takes about a second on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf
from training_utils import (
    REPO,
    TINY_FSQ,
    TINY_KL,
    StateProbe,
    make_dataset,
    one_thread,  # noqa: F401  (module-wide autouse fixture)
    tiny_overrides,
    write_clip,
    write_csv,
)

import main
from vidtok.data.video_io import VideoReadError
from vidtok.data.vidtok import NoUsableVideosError
from vidtok.train import (
    SkippedVideosMonitor,
    count_devices,
    find_resume,
    resolve_precision,
    resolve_strategy,
    run_name,
    run_timestamp,
    train,
)
from vidtok.training.ema import LitEma
from vidtok.util import instantiate_from_config, lightning_target, merge_configs

PROBE = "lightning.callbacks.probe.target=training_utils.StateProbe"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("videos"), num_clips=3, num_frames=40, size=64)


def run(config: Path, logdir: Path, name: str, max_steps: int, overrides: list[str], *extra: str) -> Any:
    argv = ["-b", str(config), "--logdir", str(logdir), "-n", name, "--accelerator", "cpu",
            "--max_steps", str(max_steps), *extra, *overrides]
    return main.main(argv)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.pop("VIDTOK_RUN_TIMESTAMP", None)
    env["OMP_NUM_THREADS"] = "1"  # see one_thread
    return env


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Recursive exact equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# --- full runs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY_KL, TINY_FSQ], ids=["kl", "fsq"])
def test_tiny_config_trains_through_the_gan_phase(config: Path, videos: Path, tmp_path: Path) -> None:
    # 2 batches = 4 optimiser steps; the GAN terms start at global_step 2, i.e. with the second batch
    result = run(config, tmp_path, "run", 4, tiny_overrides(videos, images=True) + [PROBE])
    trainer, metrics = result.trainer, result.trainer.callback_metrics
    assert trainer.global_step == 4
    assert next(c for c in trainer.callbacks if isinstance(c, StateProbe)).batches == 2  # two steps per batch
    for key in ("train/aeloss_step", "train/discloss_step", "train/nll_loss_step", "val/rec_loss", "val/psnr"):
        assert math.isfinite(float(metrics[key])), key
    assert float(metrics["train/disc_factor_step"]) == 1.0  # the discriminator phase was reached
    assert float(metrics["train/discloss_step"]) > 0
    assert float(metrics["lr_abs"]) == pytest.approx(1e-4)
    reg_key = "train/aux_loss" if config == TINY_FSQ else "train/kl_loss"
    assert math.isfinite(float(metrics[f"{reg_key}_step"]))

    logdir = result.logdir
    assert logdir.parent == tmp_path and logdir.name.endswith("_run")
    assert (logdir / "checkpoints" / "last.ckpt").is_file()
    assert load_ckpt(logdir / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert sorted(p.name.rsplit("-", 1)[-1] for p in (logdir / "configs").glob("*.yaml")) == [
        "lightning.yaml", "project.yaml"]
    saved = merge_configs(sorted(str(p) for p in (logdir / "configs").glob("*.yaml")))
    assert saved.model.params.loss_config.params.disc_start == 2 and saved.lightning.trainer.max_steps == 4
    assert list((logdir / "tensorboard").rglob("events.out.tfevents.*"))
    train_images = logdir / "images" / "train"
    assert list(train_images.glob("inputs_gs-*.png")) and list(train_images.glob("recs_gs-*.png"))
    assert list(train_images.glob("compare_gs-*.mp4")) and list((logdir / "images" / "val").glob("compare_*.png"))


class ValidationRecorder(Callback):
    """`val/rec_loss` of every validation, by global step (Lightning runs it before any ModelCheckpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[int, float] = {}

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.values[trainer.global_step] = float(trainer.callback_metrics["val/rec_loss"])


def test_checkpoints_are_ranked_by_the_validation_of_their_own_step(videos: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # a save every 2 batches, validation every batch: the stock callback ranked step 4 by step 2's validation
    overrides = tiny_overrides(videos, frames=1, every_n_train_steps=4, val_check_interval=1)
    recorder = ValidationRecorder()
    with caplog.at_level(logging.INFO):
        result = train(merge_configs([TINY_KL], overrides), tmp_path / "run", callbacks=[recorder],
                       trainer_overrides={"accelerator": "cpu", "max_steps": 8})
    checkpoint = next(c for c in result.trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert len(set(recorder.values.values())) == 4  # every validation gave another value
    ranked = {int(re.search(r"step=(\d+)", Path(p).name)[1]): float(v) for p, v in checkpoint.best_k_models.items()}
    assert ranked == {step: recorder.values[step] for step in (4, 8)}
    for step in (4, 8):
        assert f"'val/rec_loss' reached {recorder.values[step]:.5f}" in caplog.text
        saved = load_ckpt(next((tmp_path / "run" / "checkpoints").glob(f"*step={step:08}*.ckpt")))
        assert saved["global_step"] == step
    assert load_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_held_checkpoint_without_a_later_validation_is_saved_as_last(videos: Path, tmp_path: Path) -> None:
    # a save every batch, validation every 2: the held step-2 save goes out with step 4's validation, and the step-6
    # one, which no validation follows, becomes last.ckpt
    overrides = tiny_overrides(videos, frames=1, every_n_train_steps=2, val_check_interval=2)
    result = train(merge_configs([TINY_KL], overrides), tmp_path / "run",
                   trainer_overrides={"accelerator": "cpu", "max_steps": 6})
    checkpoint = next(c for c in result.trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert sorted(int(re.search(r"step=(\d+)", Path(p).name)[1]) for p in checkpoint.best_k_models) == [4]
    assert load_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_two_stage_fix_encoder_keeps_encoder_bit_identical(videos: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(videos, val_check_interval=None)
    stage1 = run(TINY_KL, tmp_path, "stage1", 2, overrides)
    ckpt_path = stage1.logdir / "checkpoints" / "last.ckpt"
    stage1_state = load_ckpt(ckpt_path)["state_dict"]

    stage2 = run(TINY_KL, tmp_path, "stage2", 2, overrides + [
        f"model.params.ckpt_path={ckpt_path}", "model.params.encoder_config.params.fix_encoder=true", PROBE])
    start = next(c for c in stage2.trainer.callbacks if isinstance(c, StateProbe)).captured["state_dict"]
    end = stage2.model.state_dict()
    encoder_keys = [k for k in stage1_state if k.startswith("encoder.")]
    decoder_keys = [k for k in stage1_state if k.startswith("decoder.")]
    assert encoder_keys and decoder_keys
    for key in encoder_keys:
        assert torch.equal(end[key], stage1_state[key]), key
    # stage 2 started from every stage-1 weight, the loss's (logvar, discriminator) included
    for key in stage1_state:
        assert torch.equal(start[key], stage1_state[key]), key
    assert any(not torch.equal(end[k], stage1_state[k]) for k in decoder_keys)
    assert all(not p.requires_grad for p in stage2.model.encoder.parameters())


def test_resume_after_sigkill_restores_step_optimisers_and_discriminator(videos: Path, tmp_path: Path) -> None:
    # validation every 2 batches: Lightning holds a checkpoint back until the monitored val/rec_loss exists
    overrides = tiny_overrides(videos, frames=1, every_n_train_steps=4)
    cmd = [sys.executable, str(REPO / "main.py"), "-b", str(TINY_KL), "--logdir", str(tmp_path), "-n", "killed",
           "--accelerator", "cpu", "--max_steps", "1000", *overrides]
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(tmp_path), stdout=out, stderr=out)
    deadline = time.monotonic() + 240
    last = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(tmp_path.glob("*_killed/checkpoints/last.ckpt"))
            if found:
                last = found[0]
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no checkpoint appeared (rc={proc.poll()}):\n{log.read_text()[-3000:]}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    ckpt = load_ckpt(last)  # what the killed run left behind
    saved_step = ckpt["global_step"]
    assert saved_step >= 4 and saved_step % 4 == 0
    result = main.main(["-r", str(last.parent.parent), "--max_steps", str(saved_step + 4), PROBE])

    captured = next(c for c in result.trainer.callbacks if isinstance(c, StateProbe)).captured
    assert result.logdir == last.parent.parent
    assert captured["global_step"] == saved_step
    assert_same(captured["optimizer_states"], ckpt["optimizer_states"], "optimizer_states")
    disc_keys = [k for k in ckpt["state_dict"] if k.startswith("loss.discriminator.")]
    assert disc_keys
    assert_same({k: captured["state_dict"][k] for k in ckpt["state_dict"]}, ckpt["state_dict"], "state_dict")
    assert result.trainer.global_step == saved_step + 4
    assert len(list((last.parent.parent / "configs").glob("*-project.yaml"))) >= 2  # the resumed run saved its own


def test_ddp_two_cpu_processes(videos: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(videos, frames=1, every_n_train_steps=4)
    cmd = [sys.executable, str(REPO / "main.py"), "-b", str(TINY_KL), "--logdir", str(tmp_path), "-n", "ddp",
           "--accelerator", "cpu", "--devices", "2", "--max_steps", "4", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 training processes: strategy lightning.pytorch.strategies.DDPStrategy" in proc.stderr
    runs = list(tmp_path.glob("*_ddp"))
    assert len(runs) == 1, runs
    ckpts = sorted(p.name for p in (runs[0] / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["epoch=0000-step=00000004.ckpt", "last.ckpt"]
    ckpt = load_ckpt(runs[0] / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert len(list((runs[0] / "configs").glob("*.yaml"))) == 2


def test_single_process_ignores_the_yaml_ddp_strategy(caplog: pytest.LogCaptureFixture) -> None:
    node = {"target": "lightning.pytorch.strategies.DDPStrategy", "params": {"find_unused_parameters": True}}
    with caplog.at_level(logging.INFO, logger="vidtok.train"):
        assert resolve_strategy({"devices": "auto"}, node, "cpu") == "auto"
    assert "one training process" in caplog.text
    strategy = resolve_strategy({"devices": 2}, node, "cpu")
    assert type(strategy).__name__ == "DDPStrategy" and strategy._ddp_kwargs["find_unused_parameters"] is True
    assert resolve_strategy({"strategy": "ddp", "devices": 2}, node, "cpu") == "ddp"


# --- data problems and missing weights ---------------------------------------------------------------------------


@pytest.fixture()
def bad_videos(videos: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    root.mkdir()
    os.symlink(videos / "clip0.mp4", root / "good.mp4")
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_clip(videos / "clip1.mp4", root / "short.mp4", num_frames=3, size=32)
    write_csv(root / "train.csv", ["good.mp4", "corrupt.mp4", "missing.mp4", "short.mp4"])
    write_csv(root / "val.csv", ["good.mp4"])
    write_csv(root / "strict.csv", ["good.mp4", "corrupt.mp4"])
    return root


def test_bad_videos_are_skipped_and_reported(bad_videos: Path, tmp_path: Path) -> None:
    # a fixed start_index of 5 makes the 3-frame video too short; one batch of 4 reads every row
    overrides = tiny_overrides(bad_videos, frames=1, batch_size=4, val_check_interval=None,
                               extra=["data.params.train.params.start_index=5"])
    result = run(TINY_KL, tmp_path, "bad", 2, overrides)
    assert result.trainer.global_step == 2
    assert float(result.trainer.callback_metrics["data/skipped_videos"]) == 3
    skipped = result.datamodule.skipped_summary()["train"]
    assert {Path(p).name: why.split(":")[0] for p, why in skipped.items()} == {
        "corrupt.mp4": "unreadable", "missing.mp4": "missing", "short.mp4": "too_short"}


def test_skips_in_dataloader_workers_of_two_ddp_processes_are_all_counted(videos: Path, tmp_path: Path) -> None:
    # good and unreadable rows alternate, so each bad row is met once, by whichever worker of whichever process is
    # given its index (its substitute is the good row after it); 8 rows = one epoch of 4 batches per process
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for i in range(4):
        os.symlink(videos / f"clip{i % 3}.mp4", root / f"good{i}.mp4")
        (root / f"bad{i}.mp4").write_text("not a video\n")
        rows += [f"good{i}.mp4", f"bad{i}.mp4"]
    write_csv(root / "train.csv", rows)
    write_csv(root / "val.csv", ["good0.mp4"])
    overrides = tiny_overrides(root, frames=1, every_n_train_steps=8, extra=[
        "data.params.num_workers=2", "lightning.trainer.limit_val_batches=0",
        "lightning.callbacks.dump.target=training_utils.MetricsDump",
        f"lightning.callbacks.dump.params.directory={tmp_path / 'metrics'}"])
    cmd = [sys.executable, str(REPO / "main.py"), "-b", str(TINY_KL), "--logdir", str(tmp_path / "logs"), "-n", "skips",
           "--accelerator", "cpu", "--devices", "2", "--max_steps", "8", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        metrics = json.loads((tmp_path / "metrics" / f"metrics-rank{rank}.json").read_text())
        assert metrics["data/skipped_videos"] == 4, (rank, metrics)


def test_every_listed_video_unreadable_stops_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.mp4").write_text("not a video\n")
    (root / "b.mp4").write_bytes(b"\x00" * 2048)
    write_csv(root / "train.csv", ["a.mp4", "b.mp4", "gone.mp4"])
    write_csv(root / "val.csv", ["a.mp4"])
    # DataLoader workers would wrap a failure met inside them in a traceback; the check runs before they start
    overrides = tiny_overrides(root, frames=1, extra=["data.params.num_workers=2"])
    started = time.monotonic()
    with pytest.raises(NoUsableVideosError) as err:
        run(TINY_KL, tmp_path / "logs", "broken", 4, overrides)
    assert time.monotonic() - started < 120
    message = str(err.value)
    assert "none of the 3 videos" in message and "train.csv" in message
    assert all(name in message for name in ("a.mp4 (unreadable", "b.mp4 (unreadable", "gone.mp4 (missing"))
    assert "Traceback" not in message and "\n" not in message


def test_strict_loading_stops_naming_the_file(bad_videos: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(bad_videos, frames=1, batch_size=2, val_check_interval=None, extra=[
        "data.params.train.params.is_strict_loading=true",
        f"data.params.train.params.meta_path={bad_videos / 'strict.csv'}"])
    with pytest.raises(VideoReadError, match=r"corrupt\.mp4"):
        run(TINY_KL, tmp_path, "strict", 8, overrides)


def test_missing_lpips_weights_stop_start_up_before_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(empty))
    monkeypatch.setenv("VIDTOK_VGG16_PATH", str(empty / "vgg16-397923af.pth"))
    # the data paths do not exist either: reading data first would fail on them instead
    overrides = [o for o in tiny_overrides(tmp_path / "no_data") if "lpips_pretrained" not in o]
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth") as err:
        run(TINY_KL, tmp_path / "logs", "lpips", 4, overrides)
    assert "no_data" not in str(err.value)
    assert not (tmp_path / "logs").exists()  # nothing was created


# --- EMA ------------------------------------------------------------------------------------------------------------


def test_ema_keys_val_ema_logs_and_scope(videos: Path, tmp_path: Path) -> None:
    result = run(TINY_KL, tmp_path, "ema", 4, tiny_overrides(videos, frames=1) + ["model.params.ema_decay=0.9"])
    model, metrics = result.model, result.trainer.callback_metrics
    for key in ("val_ema/rec_loss", "val_ema/psnr", "val/rec_loss"):
        assert math.isfinite(float(metrics[key])), key

    state = load_ckpt(result.logdir / "checkpoints" / "last.ckpt")["state_dict"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    ema_keys = {k for k in state if k.startswith("model_ema.")}
    expected = {"model_ema." + n.replace(".", "") for n in trainable} | {"model_ema.decay", "model_ema.num_updates"}
    assert ema_keys == expected
    assert {"model_ema.decoderconv_outconvweight", "model_ema.losslogvar",
            "model_ema.lossdiscriminatormain0weight"} <= ema_keys
    assert not any(k.startswith("model_ema.lossperceptual_loss") for k in ema_keys)  # frozen LPIPS is not tracked
    assert state["model_ema.num_updates"].dtype == torch.int32 and int(state["model_ema.num_updates"]) == 2
    assert state["model_ema.decay"].dtype == torch.float32 and float(state["model_ema.decay"]) == pytest.approx(0.9)

    weight = model.decoder.conv_out.conv.weight
    trained = weight.detach().clone()
    shadow = model.model_ema.decoderconv_outconvweight
    assert not torch.equal(trained, shadow)
    with model.ema_scope():
        assert torch.equal(weight, shadow)
    assert torch.equal(weight, trained)

    batch = {"jpg": torch.rand(1, 3, 5, 32, 32) * 2 - 1}
    logs = model.log_images(batch, split="val", n_rows=5)
    assert set(logs) == {"inputs", "recs", "recs_ema"} and logs["recs_ema"].shape == (1, 3, 5, 32, 32)


def test_lit_ema_update_rule_and_names() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[1].bias.requires_grad_(False)
    ema = LitEma(net, decay=0.99)
    assert sorted(ema.state_dict()) == ["0bias", "0weight", "1weight", "decay", "num_updates"]
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema(net)  # first update: decay min(0.99, 2/11)
    d = 2 / 11
    torch.testing.assert_close(ema.get_buffer("0weight"), d * start + (1 - d) * net[0].weight.detach())
    assert int(ema.num_updates) == 1
    with pytest.raises(ValueError, match="decay"):
        LitEma(net, decay=1.5)


# --- logging under several devices -----------------------------------------------------------------------------------


def test_every_logged_tensor_is_on_the_module_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL all-reduces only CUDA tensors, so one CPU tensor among the synced logs crashes multi-GPU validation. The
    `meta` device stands in for CUDA here: every op of the model and loss runs on it (shapes only, no numbers)."""
    config = OmegaConf.load(TINY_KL).model
    model = instantiate_from_config(config)
    model.build_loss(lpips_pretrained=False)
    model = model.to("meta")
    logged: dict[str, Any] = {}

    def log_dict(values: dict[str, Any], **kwargs: Any) -> None:
        logged.update(values)

    monkeypatch.setattr(model, "log_dict", log_dict)
    monkeypatch.setattr(model, "log", lambda name, value, **kwargs: log_dict({name: value}))

    def assert_on_module_device(log: dict[str, Any], where: str) -> None:
        assert log, where
        off = {k: v.device for k, v in log.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
        assert not off, f"{where}: tensors not on the module's device: {off}"

    x = torch.zeros(1, 3, 9, 32, 32, device="meta")  # [B, C, T, H, W]
    _, xrec, reg_log = model(x)
    disc_start = model.loss.discriminator_iter_start
    for optimizer_idx in (0, 1):
        for step in (0, disc_start):  # before and after the GAN terms switch on
            _, log = model.loss(reg_log, x, xrec, optimizer_idx, step, last_layer=model.get_last_layer(),
                                split="train")
            assert_on_module_device(log, f"loss branch {optimizer_idx} at step {step}")
    model.eval()
    with torch.no_grad():
        model.validation_step({"jpg": x}, 0)
    assert {"val/disc_factor", "val/psnr", "val/lecam_loss", "val/rec_loss"} <= set(logged)
    assert_on_module_device(logged, "validation_step")


# --- command line pieces ----------------------------------------------------------------------------------------------


def test_command_line_parsing_and_naming(tmp_path: Path) -> None:
    opt, rest = main.parse_args(
        ["-b", "a.yaml", "b.yaml", "--max_steps", "20", "--devices", "2", "--precision", "bf16-mixed",
         "--val_check_interval", "0.5", "--scale_lr", "--no_date", "model.x=1", "--data.y=2", "-t", "false"])
    assert opt.base == ["a.yaml", "b.yaml"] and opt.scale_lr and opt.no_date and not opt.train
    assert (opt.max_steps, opt.devices, opt.precision, opt.val_check_interval) == (20, 2, "bf16-mixed", 0.5)
    assert rest == ["model.x=1", "--data.y=2"]
    assert not hasattr(opt, "accelerator")  # Trainer flags not given stay out of the overrides
    assert run_name(["configs/tiny/x_tiny.yaml"], now="NOW") == "NOW_x_tiny"
    assert run_name(["configs/x.yaml"], name="exp", postfix="-v2", now="NOW") == "NOW_exp-v2"
    assert run_name(["configs/x.yaml"], no_date=True) == "x"

    a = tmp_path / "a.yaml"
    a.write_text("model: {lr: 1, keep: 2}\n")
    b = tmp_path / "b.yaml"
    b.write_text("model: {lr: 3}\n")
    cfg = merge_configs([a, b], ["model.lr=5", "--model.new=x"])
    assert OmegaConf.to_container(cfg) == {"model": {"lr": 5, "keep": 2, "new": "x"}}
    with pytest.raises(ValueError, match="key=value"):
        merge_configs([a], ["--oops"])


def test_two_runs_in_one_process_get_their_own_run_folders(videos: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(videos, frames=1)
    first = run(TINY_KL, tmp_path, "twice", 2, overrides, "-t", "false")
    second = run(TINY_KL, tmp_path, "twice", 2, overrides, "-t", "false")
    assert first.logdir != second.logdir and first.logdir.parent == second.logdir.parent == tmp_path
    for result in (first, second):
        assert len(list((result.logdir / "configs").glob("*-project.yaml"))) == 1


def test_run_timestamp_is_new_per_run_and_inherited_only_by_launched_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    stamps = [run_timestamp() for _ in range(2)]
    assert stamps[0] != stamps[1]
    assert os.environ["VIDTOK_RUN_TIMESTAMP"] == stamps[1]  # what the ranks launched from here will read
    # a rank started by Lightning's DDP launcher takes the launcher's value, for its one run
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("VIDTOK_RUN_TIMESTAMP", "2001-01-01T00-00-00")
    assert run_timestamp() == "2001-01-01T00-00-00"
    assert run_timestamp() != "2001-01-01T00-00-00"


def test_find_resume_accepts_run_dir_or_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "NOW_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "configs").mkdir()
    (run_dir / "configs" / "NOW-project.yaml").write_text("model: {}\n")
    with pytest.raises(FileNotFoundError, match="no checkpoints/last"):
        find_resume(run_dir)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    point = find_resume(run_dir)
    assert point.ckpt == run_dir / "checkpoints" / "last.ckpt" and point.logdir == run_dir
    assert [Path(c).name for c in point.configs] == ["NOW-project.yaml"]
    other = run_dir / "checkpoints" / "epoch=0000-step=00000004.ckpt"
    other.write_bytes(b"x")
    assert find_resume(other).ckpt == other and find_resume(other).logdir == run_dir


def test_lightning_targets_devices_and_precision(caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert lightning_target("pytorch_lightning.strategies.DDPStrategy") == "lightning.pytorch.strategies.DDPStrategy"
    assert lightning_target("lightning.pytorch.callbacks.ModelCheckpoint") == (
        "lightning.pytorch.callbacks.ModelCheckpoint")
    assert lightning_target("vidtok.modules.logger.ImageVideoLogger") == "vidtok.modules.logger.ImageVideoLogger"
    assert [count_devices(d, "cpu") for d in ("auto", 2, "2", "0,1", [0, 1, 2], None)] == [1, 2, 2, 2, 3, 1]
    monkeypatch.setattr("vidtok.train.bf16_supported", lambda kind: False)
    with caplog.at_level(logging.WARNING, logger="vidtok.train"):
        assert resolve_precision("bf16-mixed", "cpu") == "32-true"
    assert "bfloat16" in caplog.text
    assert resolve_precision(32, "cpu") == 32
    monkeypatch.setattr("vidtok.train.bf16_supported", lambda kind: True)
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


# --- host synchronisation --------------------------------------------------------------------------------------------


def tiny_gan_model(ema_decay: float | None = None) -> Any:
    """The tiny KL model (ch=16, random LPIPS weights) with the GAN terms on from the first batch."""
    config = OmegaConf.load(TINY_KL).model
    config.params.encoder_config.params.ch = 16
    config.params.loss_config.params.disc_start = 0
    if ema_decay is not None:
        config.params.ema_decay = ema_decay
    torch.manual_seed(0)
    model = instantiate_from_config(config)
    model.learning_rate = 1e-4
    model.build_loss(lpips_pretrained=False)
    return model


def fit_two_batches(model: Any, callbacks: list[Callback]) -> Any:
    """Train `model` on two batches of one random 9×32×32 clip in this process; returns the Trainer."""
    import lightning.pytorch as pl

    clip = torch.rand(3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         log_every_n_steps=50, callbacks=callbacks)
    trainer.fit(model, torch.utils.data.DataLoader([{"jpg": clip, "num_skipped": 1}] * 2, batch_size=1))
    return trainer


def test_training_step_and_ema_never_read_a_tensor_back_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU every `.item()`, `float()`, `int()` or `bool()` of a tensor waits for all queued work, so the step
    (LeCAM's EMAs, the EMA's warm-up, the optimisers) and the skipped-video count between logs must run on tensor
    operations only: here each of them raises while a tiny model trains two batches in the GAN phase with an EMA."""
    model = tiny_gan_model(ema_decay=0.999)

    def host_read(self: torch.Tensor, *args: Any) -> Any:
        raise AssertionError("a tensor was read back to the host inside the training step")

    def without_host_reads(method: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with monkeypatch.context() as patch:
                for name in ("item", "__float__", "__int__", "__bool__"):
                    patch.setattr(torch.Tensor, name, host_read)
                return method(*args, **kwargs)
        return run

    monkeypatch.setattr(model, "training_step", without_host_reads(model.training_step))
    monkeypatch.setattr(model, "on_train_batch_end", without_host_reads(model.on_train_batch_end))
    monitor = SkippedVideosMonitor()
    monkeypatch.setattr(monitor, "on_train_batch_end", without_host_reads(monitor.on_train_batch_end))
    trainer = fit_two_batches(model, [monitor])
    assert trainer.global_step == 4
    assert int(model.model_ema.num_updates) == 2
    assert float(model.loss.lecam_ema.logits_real_ema) != 0.0
    logged = trainer.logged_metrics
    assert math.isfinite(float(logged["train/lecam_loss_step"])) and float(logged["train/d_weight_step"]) > 0
    assert float(monitor.local_count) == 2


def test_last_batch_gradients_are_freed_before_the_next_forward() -> None:
    """A batch's gradients, as large as the weights, are not carried through the next batch's forward pass and
    adaptive weight, where every activation is held too; both backward passes still give every trainable
    parameter its gradient."""
    model = tiny_gan_model()
    held_at_forward: list[list[str]] = []
    model.encoder.register_forward_pre_hook(
        lambda module, args: held_at_forward.append([n for n, p in model.named_parameters() if p.grad is not None]))
    fit_two_batches(model, [])
    assert held_at_forward == [[], []]
    trained = {id(p) for p in [*model.get_autoencoder_params(), *model.get_discriminator_params()]}
    without_grad = [n for n, p in model.named_parameters() if id(p) in trained and p.grad is None]
    assert not without_grad, f"no gradient after the last batch: {without_grad}"


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_cpu_allocator_settings_of_the_training_step(monkeypatch: pytest.MonkeyPatch, use_checkpoint: bool) -> None:
    """On the CPU the autoencoder's backward pass, and only it, runs inside `heap_backed` (its temporaries reuse
    freed heap memory); the forward pass, whose stored activations would fragment the heap, does not. With
    `use_checkpoint`, which puts memory first, the whole step runs inside `memory_first` instead."""
    from vidtok.training import allocator, engine_training

    model = tiny_gan_model()
    model.encoder.use_checkpoint = use_checkpoint
    inside: list[str] = []

    def recording(name: str) -> Any:
        @contextlib.contextmanager
        def setting() -> Any:
            with getattr(allocator, name)() as applied:
                inside.append(name)
                try:
                    yield applied
                finally:
                    inside.remove(name)
        return setting

    for name in ("heap_backed", "memory_first"):
        monkeypatch.setattr(engine_training, name, recording(name))
    seen: dict[str, list[tuple[str, ...]]] = {"forward": [], "backward": []}
    model.decoder.register_forward_hook(lambda *_: seen["forward"].append(tuple(inside)))
    model.decoder.register_full_backward_hook(lambda *_: seen["backward"].append(tuple(inside)))
    fit_two_batches(model, [])
    if use_checkpoint:
        assert seen == {"forward": [("memory_first",)] * 2, "backward": [("memory_first",)] * 2}
    else:
        assert seen == {"forward": [(), ()], "backward": [("heap_backed",)] * 2}
