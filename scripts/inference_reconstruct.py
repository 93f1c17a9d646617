"""Reconstruct a video with a VidTok tokenizer and save `[input | reconstruction]` side by side.

    python scripts/inference_reconstruct.py --config CONFIG --ckpt CKPT --input_video_path VIDEO_PATH \
        --num_frames_per_batch 17 --input_height 256 --input_width 256 --sample_fps 30 --output_video_dir OUTPUT_DIR

The work is done by :func:`vidtok.reconstruct.reconstruct_to_file`; see that module for the protocol.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lightning.pytorch import seed_everything

from vidtok.api import load_model_from_config
from vidtok.cli import (
    add_debug_argument,
    add_model_arguments,
    check_output_dir,
    check_output_file,
    device_from_args,
    entry_point,
    precision_from_args,
    str2bool,
    video_options,
)
from vidtok.reconstruct import output_path_for, reconstruct_to_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(
        parser,
        long_video_help=(
            "the whole video as one clip. Causal models stream it: frames are read, encoded, decoded and written "
            "--chunk_size at a time, so memory does not grow with the length (KL latents: the posterior mean). "
            "Non-causal models cannot stream: the video is padded to k·chunk_size frames and run in one pass"
        ),
        sample_fps_help="frames per second to sample and to write",
    )
    parser.add_argument("--output_video_dir", default="tmp", help="folder for {stem}_reconstructed.mp4")
    parser.add_argument("--input_video_path", default="assets/example.mp4", help="video to reconstruct")
    parser.add_argument(
        "--pad_gen_frames", action="store_true",
        help="causal models: start each clip after the previous clip's last tdf-1 reconstructed frames",
    )
    parser.add_argument(
        "--concate_input", type=str2bool, nargs="?", const=True, default=True,
        help="put the input beside the reconstruction (default true)",
    )
    add_debug_argument(parser)
    return parser


@entry_point
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = device_from_args(args)
    check_output_dir(args.output_video_dir, "--output_video_dir")
    check_output_file(output_path_for(args.input_video_path, args.output_video_dir), "output video")
    print(f"[scripts.inference_reconstruct] Evaluating model {args.ckpt}")
    model = load_model_from_config(args.config, args.ckpt).to(device).eval()
    seed_everything(args.seed)
    path, result = reconstruct_to_file(
        model,
        args.input_video_path,
        args.output_video_dir,
        concat_input=args.concate_input,
        **video_options(args),
        pad_gen_frames=args.pad_gen_frames,
        sample_posterior=args.sample_posterior,
        precision=precision_from_args(args),
        device=device,
        progress=not args.no_progress,
    )
    print(f"Results saved in: {path}")
    print(f"[scripts.inference_reconstruct] Time taken: {result.seconds:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
