"""Train a VidTok tokenizer: `python main.py -b CONFIG [CONFIG ...] --logdir LOGDIR [key.sub=value ...]`.

The flags are the original `main.py`'s; the work is done by `vidtok.train.train`.

- `-b` configs merge left to right, then `key.sub=value` (or `--key.sub=value`) overrides, e.g.
  `model.params.loss_config.params.disc_start=2001`.
- Any `Trainer` argument is accepted as `--key value` (`--max_steps 1000 --accelerator cpu --devices 2`) and wins
  over `lightning.trainer` in the YAML.
- Runs go to `LOGDIR/{timestamp}_{config stem or -n name}{-f postfix}`; `-r RUN_DIR` (or `-r RUN_DIR/checkpoints/
  X.ckpt`) resumes that run, with its saved configs, from its newest `last*.ckpt`.
- Errors the user can fix (a missing file, a bad config value, ...) print one `error: ...` line and exit 1;
  `--debug` (or `VIDTOK_DEBUG=1`) shows the traceback instead (see `vidtok.cli`).
- `--wandb` logs to Weights & Biases (`--wandb_offline`, `-d` or `WANDB_MODE=offline` keep it offline);
  TensorBoard otherwise.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

from vidtok.cli import run, str2bool
from vidtok.train import (
    TrainResult,
    WandbOptions,
    find_resume,
    run_name,
    run_timestamp,
    train,
)
from vidtok.util import merge_configs

logger = logging.getLogger("main")

# Trainer arguments that main.py sets itself.
OWN_TRAINER_ARGS = {"self", "logger", "callbacks", "default_root_dir", "plugins"}
# `key.sub=value` config overrides (without leading dashes), told apart before argparse sees them so that a flag
# with an optional value (`--scale_lr`) does not take an override for its value.
OVERRIDE = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-\[\]]+)*=")


def trainer_value(text: str) -> object:
    """`--key value` for the Trainer: YAML scalars (`2` -> 2, `null` -> None, `0.5`, `true`), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def trainer_arg_names() -> list[str]:
    return [n for n in inspect.signature(Trainer.__init__).parameters if n not in OWN_TRAINER_ARGS]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a VidTok video tokenizer.", allow_abbrev=False,
        epilog="Unrecognised key.sub=value arguments override the merged config.",
    )
    flag = {"type": str2bool, "nargs": "?", "const": True}
    parser.add_argument("-b", "--base", nargs="*", default=[], metavar="CONFIG",
                        help="config YAMLs, merged left to right")
    parser.add_argument("-l", "--logdir", default="logs", help="folder that holds the runs (default: logs)")
    parser.add_argument("-n", "--name", default="", help="run name instead of the first config's file name")
    parser.add_argument("-f", "--postfix", default="", help="appended to the run name")
    parser.add_argument("--no_date", default=False, **flag, help="leave the timestamp out of the run name")
    parser.add_argument("-r", "--resume", default="", help="a run folder or one of its checkpoints to resume")
    parser.add_argument("--resume_from_checkpoint", default=None,
                        help="resume trainer state from this checkpoint in a new run folder")
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything (default 23)")
    parser.add_argument("--scale_lr", default=False, **flag,
                        help="learning rate = base_learning_rate × accumulate × devices × batch size")
    parser.add_argument("--enable_tf32", default=True, **flag, help="allow TF32 on CUDA (default true)")
    parser.add_argument("-t", "--train", default=True, **flag, help="train (false: validate only)")
    parser.add_argument("-d", "--debug", default=False, **flag,
                        help="debug run (keeps wandb offline); --debug also shows the traceback of an error")
    parser.add_argument("--wandb", default=False, **flag, help="log to Weights & Biases instead of TensorBoard")
    parser.add_argument("--wandb_entity", default=None)
    parser.add_argument("--wandb_project", default="vidtok")
    parser.add_argument("--wandb_id", default=None, help="wandb run id (default: the run name)")
    parser.add_argument("--wandb_offline", default=False, **flag, help="write wandb logs locally only")
    # accepted for compatibility with the original's command lines; they change nothing here
    parser.add_argument("-p", "--project", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-test", default=True, **flag, help=argparse.SUPPRESS)
    parser.add_argument("--legacy_naming", default=False, **flag, help=argparse.SUPPRESS)
    parser.add_argument("--no_base_name", default=False, **flag, help=argparse.SUPPRESS)

    trainer_group = parser.add_argument_group("Trainer arguments (override lightning.trainer)")
    for name in trainer_arg_names():
        trainer_group.add_argument(f"--{name}", type=trainer_value, default=argparse.SUPPRESS, metavar="VALUE")
    return parser


class RankZeroFilter(logging.Filter):
    """Keep every record on global rank 0; on other ranks only errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return rank_zero_only.rank == 0 or record.levelno >= logging.ERROR


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if any(isinstance(f, RankZeroFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RankZeroFilter())
    root.addHandler(handler)
    root.setLevel(level)


def parse_args(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> tuple[argparse.Namespace,
                                                                                         list[str]]:
    """(flags, config overrides): `key.sub=value` and unrecognised `--key.sub=value` arguments are overrides."""
    parser = parser or get_parser()
    overrides = [a for a in argv if OVERRIDE.match(a)]
    opt, unknown = parser.parse_known_args([a for a in argv if not OVERRIDE.match(a)])
    return opt, overrides + unknown


def main(argv: Sequence[str] | None = None) -> TrainResult:
    parser = get_parser()
    opt, overrides = parse_args(list(sys.argv[1:] if argv is None else argv), parser)
    if not opt.base and not opt.resume:
        parser.error("no config: pass one or more YAML files with -b/--base (or -r RUN_DIR to resume a run)")
    if opt.name and opt.resume:
        parser.error("-n/--name and -r/--resume cannot be combined; to continue a run in a new folder use "
                     "-n with --resume_from_checkpoint")
    setup_logging()
    now = run_timestamp()

    configs = list(opt.base)
    ckpt_path = opt.resume_from_checkpoint
    if opt.resume:
        point = find_resume(opt.resume)
        logdir, ckpt_path = point.logdir, point.ckpt
        configs = point.configs + configs
        logger.info("resuming %s from %s", logdir, ckpt_path)
    else:
        logdir = Path(opt.logdir) / run_name(opt.base, opt.name, opt.postfix, opt.no_date, now)
    config = merge_configs(configs, overrides)

    trainer_overrides = {k: getattr(opt, k) for k in trainer_arg_names() if hasattr(opt, k)}
    wandb = None
    if opt.wandb:
        offline = opt.wandb_offline or opt.debug or os.environ.get("WANDB_MODE") == "offline"
        wandb = WandbOptions(project=opt.wandb_project, entity=opt.wandb_entity, offline=offline,
                             run_id=opt.wandb_id)
    return train(
        config,
        logdir,
        ckpt_path=ckpt_path,
        seed=opt.seed,
        scale_lr=opt.scale_lr,
        trainer_overrides=trainer_overrides,
        wandb=wandb,
        now=now,
        enable_tf32=opt.enable_tf32,
        fit=opt.train,
    )


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
