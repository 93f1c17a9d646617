"""Calibrate the activation-memory estimate the inference entry points check before running a clip
(:func:`vidtok.memory.estimate_peak_bytes`).

    PYTHONPATH=. .venv/bin/python benchmarks/memory_estimate.py [--config CONFIG] [--frames 17] [--sizes 64,128]

For each size, a fresh child process builds the model (random weights: memory does not depend on them), records its
resident set, encodes and decodes one clip of `--frames` frames at `size`² under `torch.no_grad()` and records its
peak resident set (`ru_maxrss`). The growth between two sizes, divided by the extra pixels × the model's
full-resolution width (channels) × 4 bytes, is the per-pixel, per-channel factor; the estimate uses the largest
factor measured. It prints one line per size and the factor.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys


def measure(config: str, frames: int, size: int) -> dict[str, float]:
    import torch

    from vidtok.api import load_model_from_config
    from vidtok.memory import activation_width

    model = load_model_from_config(config).eval()
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        z, _ = model.encode(x)
        model.decode(z)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "base": base, "peak": peak, "width": activation_width(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/vidtok_kl_causal_488_4chn.yaml")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.config, args.frames, args.child)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, __file__, "--config", args.config, "--frames", str(args.frames),
                   "--child", str(size)]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rows.append(row)
        print(f"{args.frames}x{size}x{size}: base {row['base'] / 2**20:.0f} MiB, peak {row['peak'] / 2**20:.0f} MiB, "
              f"growth {(row['peak'] - row['base']) / 2**20:.0f} MiB")
    for small, large in itertools.pairwise(rows):
        pixels = args.frames * (large["size"] ** 2 - small["size"] ** 2)
        growth = (large["peak"] - large["base"]) - (small["peak"] - small["base"])
        factor = growth / (pixels * large["width"] * 4)
        print(f"{small['size']}->{large['size']}: {factor:.2f} float32 values per pixel per channel "
              f"(width {large['width']})")


if __name__ == "__main__":
    main()
