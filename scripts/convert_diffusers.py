"""Convert a VidTok checkpoint to a diffusers `AutoencoderVidTok` folder, or back.

    python scripts/convert_diffusers.py --config CONFIG --ckpt CKPT --output DIR [--use_ema]
    python scripts/convert_diffusers.py --from_diffusers DIR --output OUT.ckpt --config_out OUT.yaml

The weights keep their names (diffusers uses the original's, without the training-only `loss.*` entries). diffusers
runs causal models with v1.1 semantics: a v1.0 causal checkpoint converts, with a warning that the diffusers model
computes something else, and a diffusers causal model comes back as a v1.1 config. The work is done by
`vidtok.interop.diffusers`; see that module for the config mapping and what cannot be expressed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vidtok.cli import add_debug_argument, check_output_dir, check_output_file, entry_point
from vidtok.interop.diffusers import export_to_diffusers, import_from_diffusers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="vidtok model config (YAML), to export")
    parser.add_argument("--ckpt", help="checkpoint to export (.ckpt, .pt or .safetensors)")
    parser.add_argument("--use_ema", action="store_true", help="export the checkpoint's EMA weights (model_ema.*)")
    parser.add_argument(
        "--from_diffusers", metavar="DIR",
        help="diffusers model to import: a save_pretrained folder, or a Hub id already in the local cache",
    )
    parser.add_argument(
        "--allow_download", action="store_true",
        help="import: let diffusers fetch a Hub id that is not cached (off: only local files are read)",
    )
    parser.add_argument(
        "--output", required=True,
        help="export: folder to write the diffusers model to; import: checkpoint to write (.ckpt or .safetensors)",
    )
    parser.add_argument("--config_out", help="import: where to write the vidtok config (YAML)")
    parser.add_argument(
        "--no_safetensors", action="store_true", help="export: write PyTorch .bin weights instead of safetensors"
    )
    add_debug_argument(parser)
    return parser


@entry_point
def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.from_diffusers:
        if args.config or args.ckpt:
            parser.error("--from_diffusers imports a diffusers model: drop --config/--ckpt")
        if not args.config_out:
            parser.error("--from_diffusers needs --config_out for the vidtok config")
        check_output_file(args.output, "--output")
        check_output_file(args.config_out, "--config_out")
        import_from_diffusers(args.from_diffusers, args.output, args.config_out, allow_download=args.allow_download)
        print(f"[scripts.convert_diffusers] wrote {args.output} and {args.config_out}")
    else:
        if not (args.config and args.ckpt):
            parser.error("export needs --config and --ckpt (or use --from_diffusers DIR to import)")
        check_output_dir(args.output, "--output")
        export_to_diffusers(
            args.config, args.ckpt, args.output, use_ema=args.use_ema, safe_serialization=not args.no_safetensors
        )
        print(f"[scripts.convert_diffusers] wrote diffusers AutoencoderVidTok to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
