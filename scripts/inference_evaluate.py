"""Evaluate a VidTok tokenizer's reconstructions (PSNR, SSIM, LPIPS, optionally FVD) over a folder of videos.

    python scripts/inference_evaluate.py --config CONFIG --ckpt CKPT --data_dir DATA_DIR \
        --num_frames_per_batch 17 --input_height 256 --input_width 256 --sample_fps 30 [--meta_path META]

Every `*.mp4` under DATA_DIR is evaluated (or the `videos` column of META). The protocol is described in
:mod:`vidtok.evaluate`. `load_model_from_config` is re-exported here because the original README imports it from
this script.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vidtok.api import load_model_from_config
from vidtok.cli import (
    add_debug_argument,
    add_model_arguments,
    check_output_dir,
    device_from_args,
    entry_point,
    precision_from_args,
    str2bool,
    video_options,
)
from vidtok.evaluate import evaluate, format_metrics, load_metric_networks
from vidtok.metrics import METRIC_NAMES, parse_metrics

__all__ = ["load_model_from_config", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(
        parser,
        long_video_help=(
            "each video as one clip of its first 1+k·chunk_size (causal) or k·chunk_size frames. Causal models "
            "stream it: frames are read, reconstructed and scored --chunk_size at a time, so memory does not grow with "
            "the length (KL latents: the posterior mean). Non-causal models cannot stream: the clip runs in one pass"
        ),
        sample_fps_help="frames per second to sample",
    )
    parser.add_argument("--data_dir", default="./", help="folder of videos (every **/*.mp4 unless --meta_path)")
    parser.add_argument("--meta_path", default=None, help="CSV with a 'videos' column of paths relative to data_dir")
    parser.add_argument(
        "--metrics", default="psnr,ssim,lpips",
        help=f"comma-separated, from {','.join(METRIC_NAMES)} (default psnr,ssim,lpips)",
    )
    parser.add_argument("--i3d_path", default=None, help="i3d_torchscript.pt for FVD (default: the cache paths)")
    parser.add_argument(
        "--i3d_sha256", default=None,
        help="SHA-256 the I3D file must have; it is checked before the file is loaded (or $VIDTOK_I3D_SHA256)",
    )
    parser.add_argument("--output", default=None, help="folder for metrics_per_video.csv and metrics_summary.json")
    parser.add_argument(
        "--count_padded_frames", type=str2bool, nargs="?", const=True, default=True,
        help="score the repeated frames that pad each video's last clip, as the original does (default true)",
    )
    add_debug_argument(parser)
    return parser


@entry_point
def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics = parse_metrics(args.metrics)
    except ValueError as err:
        parser.error(str(err))
    device = device_from_args(args)
    if args.output is not None:
        check_output_dir(args.output, "--output")
    print(f"[scripts.inference_evaluate] Evaluating model {args.ckpt}")
    lpips_model, i3d = load_metric_networks(metrics, device, args.i3d_path, args.i3d_sha256)
    model = load_model_from_config(args.config, args.ckpt).to(device).eval()
    result = evaluate(
        model,
        args.data_dir,
        meta_path=args.meta_path,
        **video_options(args),
        metrics=metrics,
        lpips_model=lpips_model,
        i3d=i3d,
        count_padded_frames=args.count_padded_frames,
        sample_posterior=args.sample_posterior,
        precision=precision_from_args(args),
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    for video in result.failed:
        print(f"left out {video.path} ({video.status}): {video.reason}", file=sys.stderr)
    print(f"[scripts.inference_evaluate] {format_metrics(result.metrics)}")
    print(f"[scripts.inference_evaluate] Time taken: {result.seconds:.2f}s")
    if args.output is not None:
        csv_path, json_path = result.write(args.output)
        print(f"[scripts.inference_evaluate] Per-video results: {csv_path}; summary: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
