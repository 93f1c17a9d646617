"""`python -m vidtok encode|decode`: a video to a token file and back.

    python -m vidtok encode VIDEO -c CONFIG --ckpt CKPT -o tokens.npz [--input_height 256 --input_width 256]
        [--sample_fps 30] [--num_frames_per_batch 17] [--read_long_video] [--tile_size PX [--tile_overlap PX]]
    python -m vidtok decode tokens.npz -o out.mp4 [-c CONFIG --ckpt CKPT] [--tile_size PX [--tile_overlap PX]]
    python -m vidtok decode OUT/part-0-00000.tar --key KEY -o out.mp4   (a sample of encode-dataset's shards)
    python -m vidtok encode-dataset ...   (a whole dataset on many processes, see vidtok.encode_dataset)

The encoder's flags are the inference scripts' (same names and defaults, built by the same helpers in
:mod:`vidtok.cli`; `--height`, `--width` stay as aliases). See :mod:`vidtok.tokens` for the file format.
Decoding writes the video as it is decoded, at the rate of the frames the encoder kept.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vidtok.cli import (
    add_debug_argument,
    add_device_argument,
    add_frame_arguments,
    add_precision_arguments,
    add_tile_arguments,
    check_output_dir,
    check_output_file,
    device_from_args,
    entry_point,
    video_options,
)
from vidtok.data.token_shards import read_token_sample
from vidtok.data.video_io import VideoWriter, to_uint8
from vidtok.encode_dataset import add_arguments as add_encode_dataset_arguments
from vidtok.encode_dataset import encode_dataset
from vidtok.token_file import LATENT_DTYPES, load_model_for, load_tokens, save_tokens
from vidtok.tokens import encode_video, iter_decoded_frames

SAMPLE_FPS_HELP = (
    "frames per second to sample: every round(fps / sample_fps)-th frame is kept, and the video is decoded at "
    "the rate of the frames kept"
)
LONG_VIDEO_HELP = (
    "causal models: encode the whole video as one clip, streaming it (frames read --chunk_size at a time, memory "
    "independent of the length); decoding such a file streams too. Non-causal models cannot stream: they are "
    "encoded clip by clip as without the flag"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vidtok", description="VidTok video tokenizer")
    commands = parser.add_subparsers(dest="command", required=True)

    enc = commands.add_parser("encode", help="video -> token file (.npz)")
    enc.add_argument("video", help="input video")
    enc.add_argument("-c", "--config", required=True, help="model config (YAML)")
    enc.add_argument("--ckpt", required=True, help="model checkpoint")
    enc.add_argument("-o", "--output", required=True, help="token file to write (.npz)")
    add_frame_arguments(enc, SAMPLE_FPS_HELP)
    enc.add_argument("--latent_dtype", choices=LATENT_DTYPES, default="float32", help="KL latents' storage type")
    enc.add_argument("--read_long_video", action="store_true", help=LONG_VIDEO_HELP)

    dec = commands.add_parser("decode", help="token file -> video (.mp4)")
    dec.add_argument("tokens", help="token file written by `encode`, or a part-*.tar of `encode-dataset` with --key")
    dec.add_argument("--key", default=None, help="the sample to decode from an encode-dataset shard")
    dec.add_argument("-o", "--output", required=True, help="video to write (.mp4)")
    dec.add_argument("-c", "--config", default=None, help="model config (default: the one recorded in the file)")
    dec.add_argument("--ckpt", default=None, help="model checkpoint (default: the one recorded in the file)")

    dataset = commands.add_parser(
        "encode-dataset", help="a dataset (CSV + files, or shards) -> token shards, on many processes"
    )
    add_encode_dataset_arguments(dataset)
    add_debug_argument(dataset)

    for sub in (enc, dec):
        add_tile_arguments(sub)
        add_device_argument(sub)
        add_precision_arguments(sub, stages=False)  # each command runs one stage
        add_debug_argument(sub)
    return parser


@entry_point
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "encode-dataset":
        check_output_dir(args.output, "--output")
        summary = encode_dataset(args)
        if summary is not None:
            sys.stdout.write(f"{summary['written']} videos encoded, {summary['skipped']} already done, "
                             f"{summary['failed']} failed -> {args.output}\n")
        return 0
    device = device_from_args(args)
    check_output_file(args.output, "--output")
    if args.command == "encode":
        from vidtok.api import load_model_from_config

        model = load_model_from_config(args.config, args.ckpt).to(device).eval()
        encoded = encode_video(
            model, args.video, **video_options(args), latent_dtype=args.latent_dtype, precision=args.precision,
            device=device, config=args.config, ckpt=args.ckpt, progress=True,
        )
        path = save_tokens(encoded, args.output)
        sys.stdout.write(
            f"{encoded.kind} tokens {tuple(encoded.tokens.shape)} {encoded.tokens.dtype} "
            f"for {encoded.num_frames} frames -> {path}\n"
        )
    else:
        encoded = load_tokens(args.tokens) if args.key is None else read_token_sample(args.tokens, args.key)
        model = load_model_for(encoded, args.config, args.ckpt).to(device)
        frames = iter_decoded_frames(
            model, encoded, tile_size=args.tile_size, tile_overlap=args.tile_overlap, precision=args.precision,
            device=device, progress=True,
        )
        with VideoWriter(args.output, encoded.fps) as writer:
            for video in frames:
                writer.write(to_uint8(video))
        sys.stdout.write(f"{writer.num_frames} frames at {encoded.fps:g} fps -> {writer.path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
