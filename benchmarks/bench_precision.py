"""How much reduced precision changes a reconstruction, per stage, on a real video.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_precision.py [--config CONFIG --ckpt CKPT]
        [--video assets/example.mp4] [--frames 17] [--size 128] [--device cpu|cuda]
        [--precisions bf16/bf16,full/bf16,bf16/full] [--json OUT]

Reads the first `--frames` frames of `--video` (every frame, shorter side resized to `--size`, centre crop), runs
the model once in full precision (fp32) and once per `ENCODE/DECODE` pair of `--precisions` (names of
:mod:`vidtok.precision`: full, autocast, bf16, fp16), and prints per pair: encode and decode time, the largest
latent difference from fp32 (FSQ: the fraction of tokens that changed), PSNR of the reconstruction against the fp32
one and against the input (frames clamped to [-1, 1], scored in [0, 1], mean per-frame PSNR). Without `--ckpt` the
weights are random (seeded): the precision figures then describe the numerics only, not a trained model's outputs.

On a CPU without native bfloat16 (AVX2 machines) bf16 convolutions take a fallback path hundreds of times slower
than fp32: use a small model (e.g. the tiny one `make demo` trains) there, or a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidtok.api import load_model_from_config  # noqa: E402
from vidtok.clips import iter_frame_chunks  # noqa: E402
from vidtok.data.video_io import open_video  # noqa: E402
from vidtok.metrics import compute_psnr  # noqa: E402
from vidtok.precision import Precision  # noqa: E402


def read_clip(path: str, frames: int, size: int) -> torch.Tensor:
    """The first `frames` frames of `path` as `[1, 3, T, size, size]` in [-1, 1]."""
    available = len(open_video(path))
    if available < frames:
        raise SystemExit(f"{path} has {available} frames, fewer than --frames {frames}")
    return next(iter_frame_chunks(path, list(range(frames)), size, size, frames)).unsqueeze(0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_once(model, x: torch.Tensor, precision: Precision) -> dict:
    device = x.device
    synchronize(device)
    start = time.perf_counter()
    with precision.encoding(device):
        z, log = model.encode(x, sample=False)
    synchronize(device)
    encoded = time.perf_counter()
    with precision.decoding(device):
        recon = model.decode(z.float())[:, :, -x.shape[2] :]
    synchronize(device)
    return {
        "z": z.float(),
        "indices": log.get("indices"),
        "recon": recon.float().clamp(-1, 1),
        "encode_s": encoded - start,
        "decode_s": time.perf_counter() - encoded,
    }


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return compute_psnr((a.cpu() + 1) / 2, (b.cpu() + 1) / 2).item()


def compare(run: dict, reference: dict, x: torch.Tensor) -> dict:
    row = {
        "encode_s": run["encode_s"],
        "decode_s": run["decode_s"],
        "max_abs_diff_z": (run["z"] - reference["z"]).abs().max().item(),
        "psnr_vs_fp32": psnr(run["recon"], reference["recon"]),
        "psnr_vs_input": psnr(run["recon"], x),
    }
    if run["indices"] is not None:
        row["tokens_changed"] = (run["indices"] != reference["indices"]).float().mean().item()
    return row


def parse_pairs(text: str) -> list[Precision]:
    pairs = []
    for item in text.split(","):
        encode, sep, decode = item.strip().partition("/")
        if not sep:
            raise SystemExit(f"--precisions takes ENCODE/DECODE pairs such as full/bf16, got {item!r}")
        try:
            pairs.append(Precision(encode, decode))
        except ValueError as err:
            raise SystemExit(f"--precisions: {err}") from err
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "vidtok_kl_causal_488_4chn.yaml"))
    parser.add_argument("--ckpt", default=None, help="trained weights for --config (default: seeded random weights)")
    parser.add_argument("--video", default=str(REPO / "assets" / "example.mp4"))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="bf16/bf16,full/bf16,bf16/full", help="ENCODE/DECODE pairs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    pairs = parse_pairs(args.precisions)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = load_model_from_config(args.config, args.ckpt).to(device).eval()
    x = read_clip(args.video, args.frames, args.size).to(device)
    reference = run_once(model, x, Precision())
    rows = {"full": compare(reference, reference, x)}
    for precision in pairs:
        rows[str(precision)] = compare(run_once(model, x, precision), reference, x)

    print(f"{Path(args.config).stem} ({args.ckpt or 'random weights'}), {Path(args.video).name} "
          f"1x3x{args.frames}x{args.size}x{args.size}, {device}")
    print("| precision | enc s | dec s | max|dz| | tokens changed | PSNR vs fp32 | PSNR vs input |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        tokens = f"{row['tokens_changed']:.2%}" if "tokens_changed" in row else "-"
        print(f"| {name} | {row['encode_s']:.2f} | {row['decode_s']:.2f} | {row['max_abs_diff_z']:.3g} | {tokens} "
              f"| {row['psnr_vs_fp32']:.2f} | {row['psnr_vs_input']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"config": args.config, "ckpt": args.ckpt, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
