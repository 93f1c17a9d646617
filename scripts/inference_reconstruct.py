"""Reconstruct a video with a VidTok tokenizer and save `[input | reconstruction]` side by side.

    python scripts/inference_reconstruct.py --config CONFIG --ckpt CKPT --input_video_path VIDEO_PATH \
        --num_frames_per_batch 17 --input_height 256 --input_width 256 --sample_fps 30 --output_video_dir OUTPUT_DIR

The work is done by :func:`vidtok.reconstruct.reconstruct_to_file`; see that module for the protocol.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vidtok.api import load_model_from_config
from vidtok.data.video_read import VideoReadError
from vidtok.inference import PRECISIONS, default_device, seed_everything, str2bool
from vidtok.reconstruct import reconstruct_to_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=42, help="seed (the KL posterior is sampled)")
    parser.add_argument("--precision", choices=PRECISIONS, default="full", help="full (fp32) or autocast")
    parser.add_argument("--config", default="configs/vidtok_kl_causal_488_4chn.yaml", help="model config (YAML)")
    parser.add_argument("--ckpt", default="checkpoints/vidtok_kl_causal_488_4chn.ckpt", help="model checkpoint")
    parser.add_argument("--output_video_dir", default="tmp", help="folder for {stem}_reconstructed.mp4")
    parser.add_argument("--input_video_path", default="assets/example.mp4", help="video to reconstruct")
    parser.add_argument("--input_height", type=int, default=256, help="frame height (shorter side is resized to it)")
    parser.add_argument("--input_width", type=int, default=256, help="frame width (centre crop)")
    parser.add_argument("--sample_fps", type=int, default=30, help="frames per second to sample and to write")
    parser.add_argument(
        "--num_frames_per_batch", type=int, default=None,
        help="frames per clip: 17 for causal models, 16 for non-causal ones (sets --chunk_size to 16)",
    )
    parser.add_argument(
        "--chunk_size", type=int, default=None,
        help="temporal chunk (default 16): clips are chunk_size+1 frames (causal) or chunk_size (non-causal)",
    )
    parser.add_argument(
        "--read_long_video", action="store_true",
        help="the whole video as one clip. Causal models stream it: frames are read, encoded, decoded and written "
        "--chunk_size at a time, so memory does not grow with the length (KL latents: the posterior mean). "
        "Non-causal models cannot stream: the video is padded to k·chunk_size frames and run in one pass",
    )
    parser.add_argument(
        "--tile_size", type=int, default=None,
        help="run encoder and decoder on overlapping spatial tiles of this many pixels (a multiple of the model's "
        "spatial factor f; the decoder's tiles are tile_size/f latents), for large frames; off by default",
    )
    parser.add_argument(
        "--tile_overlap", type=int, default=None,
        help="overlap of neighbouring tiles in pixels, a multiple of f (default: a quarter of --tile_size)",
    )
    parser.add_argument(
        "--pad_gen_frames", action="store_true",
        help="causal models: start each clip after the previous clip's last tdf-1 reconstructed frames",
    )
    parser.add_argument(
        "--concate_input", type=str2bool, nargs="?", const=True, default=True,
        help="put the input beside the reconstruction (default true)",
    )
    parser.add_argument(
        "--sample_posterior", type=str2bool, nargs="?", const=True, default=True,
        help="KL models: sample the posterior as the original does (default) or decode its mean (false); "
        "streaming (--read_long_video, causal models) always decodes the mean",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = default_device() if args.device is None else args.device
    print(f"[scripts.inference_reconstruct] Evaluating model {args.ckpt}")
    model = load_model_from_config(args.config, args.ckpt).to(device).eval()
    seed_everything(args.seed)
    try:
        path, result = reconstruct_to_file(
            model,
            args.input_video_path,
            args.output_video_dir,
            concat_input=args.concate_input,
            input_height=args.input_height,
            input_width=args.input_width,
            sample_fps=args.sample_fps,
            chunk_size=args.chunk_size,
            num_frames_per_batch=args.num_frames_per_batch,
            read_long_video=args.read_long_video,
            pad_gen_frames=args.pad_gen_frames,
            sample_posterior=args.sample_posterior,
            tile_size=args.tile_size,
            tile_overlap=args.tile_overlap,
            precision=args.precision,
            device=device,
            progress=not args.no_progress,
        )
    except (VideoReadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Results saved in: {path}")
    print(f"[scripts.inference_reconstruct] Time taken: {result.seconds:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
