"""The command line's shared parts: the error boundary every entry point runs inside, the flags the entry points
share (one vocabulary: the original scripts' names and defaults), and the output checks they run before any work.

:func:`run` (or the :func:`entry_point` decorator) calls an entry point's `main(argv)`. A failure the user can fix
is printed as one `error: ...` line on stderr and exits 1: :class:`vidtok.errors.VidTokError` and the project's
other user-facing errors, a file the OS reports missing or unwritable, a full disk, a YAML or OmegaConf error, and
the `ValueError`, `FileNotFoundError` and `ImportError` that vidtok's own code raises (their messages are written
for the user: a flag the model cannot take, a missing optional dependency). argparse usage errors keep their exit
status 2; Ctrl-C exits 130. Anything else is a bug and keeps its traceback. `--debug` on the command line or
`VIDTOK_DEBUG=1` shows the traceback of every failure.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vidtok.errors import OutputError, VidTokError
from vidtok.precision import PRECISIONS, Precision

DEBUG_ENV = "VIDTOK_DEBUG"
FALSE_WORDS = ("0", "false", "no", "n", "f", "off", "")
# Where vidtok's own code lives: a ValueError raised there carries a message written for the user.
OWN_CODE = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "scripts"))
# Missing or unwritable paths named by the OS: the message names the file, which is all the user needs.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)

MainFunction = Callable[[list[str]], Any]


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """`--debug`: show the traceback of an error (read by :func:`run` before parsing, so it works for any error)."""
    parser.add_argument("--debug", action="store_true", help=f"show the full traceback of an error (or {DEBUG_ENV}=1)")


def debug_requested(argv: Sequence[str]) -> bool:
    """`VIDTOK_DEBUG` set to a true value, or `--debug` (`--debug=VALUE`, `--debug VALUE`) in `argv`."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in FALSE_WORDS:
        return True
    for i, arg in enumerate(argv):
        if arg.startswith("--debug="):
            return arg.split("=", 1)[1].strip().lower() not in FALSE_WORDS
        if arg == "--debug":
            following = argv[i + 1].strip().lower() if i + 1 < len(argv) else "true"
            return following not in FALSE_WORDS
    return False


def _raised_by_own_code(err: BaseException) -> bool:
    """Whether the innermost frame of `err`'s traceback is in vidtok or its scripts (not in a library)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(OWN_CODE)


def _one_line(text: object) -> str:
    """A multi-line message as one line; a line that ends without punctuation ends a sentence."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(line if i == len(lines) - 1 or line[-1] in ".:;,!?" else f"{line}." for i, line in
                    enumerate(lines))


def _known_types() -> tuple[type[BaseException], ...]:
    """The project's user-facing error classes (imported late: they pull in decord and diffusers glue)."""
    from vidtok.checkpoint import CheckpointMismatchError
    from vidtok.data.video_io import VideoReadError
    from vidtok.interop.diffusers import DiffusersIncompatibleError

    return VidTokError, VideoReadError, CheckpointMismatchError, DiffusersIncompatibleError


def describe(err: BaseException) -> str | None:
    """The one-line message for a failure the user can fix, or None for a bug (which keeps its traceback)."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, _known_types()):
        return _one_line(err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename!r}" if err.filename else ""
        return f"no space left on device{where}: free some space or write the output elsewhere"
    if isinstance(err, PATH_ERRORS) and err.filename is not None:
        return f"{err.strerror}: {str(err.filename)!r}; check the path and its permissions"
    if isinstance(err, yaml.YAMLError):
        return f"invalid YAML: {_one_line(err)}"
    if isinstance(err, OmegaConfBaseException):
        return f"config: {_one_line(err)}"
    if isinstance(err, (ValueError, FileNotFoundError, ImportError)) and _raised_by_own_code(err):
        return _one_line(err)
    return None


def run(main: MainFunction, argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)` inside the error boundary and return the exit status (0 when `main` returns None or a
    non-integer result, e.g. main.py's TrainResult)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        result = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as err:
        message = None if debug else describe(err)
        if message is None:
            raise
        sys.stderr.write(f"error: {message}\n")
        return 1
    return result if isinstance(result, int) else 0


def entry_point(main: MainFunction) -> Callable[[Sequence[str] | None], int]:
    """Decorate an entry point's `main(argv)` so that calling it runs it inside :func:`run`."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        return run(main, argv)

    return wrapped


# --- shared flags ----------------------------------------------------------------------------------------------


def str2bool(value: str | bool) -> bool:
    """Command-line booleans as the original parses them: `yes/true/t/y/1` or `no/false/f/n/0`, any case."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def add_precision_arguments(parser: argparse.ArgumentParser, stages: bool = True) -> None:
    """`--precision` (the original's flag) and, with `stages`, `--encode_precision`/`--decode_precision` that
    override it for one stage; read them back with :func:`precision_from_args`."""
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="full",
        help="full (fp32), autocast (fp16 on CUDA; fp32 on CPU, as the original's CUDA-only autocast), bf16 or fp16",
    )
    if stages:
        for stage in ("encode", "decode"):
            parser.add_argument(
                f"--{stage}_precision", choices=PRECISIONS, default=None,
                help=f"precision of the {stage}r only (default: --precision), e.g. --encode_precision full "
                "--decode_precision bf16",
            )


def precision_from_args(args: argparse.Namespace) -> Precision:
    stage = {name: getattr(args, f"{name}_precision", None) for name in ("encode", "decode")}
    return Precision.of(args.precision, **stage)


def add_frame_arguments(parser: argparse.ArgumentParser, sample_fps_help: str) -> None:
    """How a video is read and cut into clips, with the original scripts' names and defaults (`--height`,
    `--width` stay as aliases of `--input_height`, `--input_width`)."""
    parser.add_argument(
        "--input_height", "--height", type=int, default=256, help="frame height (shorter side is resized to it)"
    )
    parser.add_argument("--input_width", "--width", type=int, default=256, help="frame width (centre crop)")
    parser.add_argument("--sample_fps", type=float, default=30, help=sample_fps_help)
    parser.add_argument(
        "--num_frames_per_batch", type=int, default=None,
        help="frames per clip: 17 for causal models, 16 for non-causal ones (sets --chunk_size to 16)",
    )
    parser.add_argument(
        "--chunk_size", type=int, default=None,
        help="temporal chunk (default 16): clips are chunk_size+1 frames (causal) or chunk_size (non-causal)",
    )


def add_tile_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tile_size` / `--tile_overlap`, read by :func:`vidtok.tiling.resolve_tiles`."""
    parser.add_argument(
        "--tile_size", type=int, default=None,
        help="run encoder and decoder on overlapping spatial tiles of this many pixels (a multiple of the model's "
        "spatial factor f; the decoder's tiles are tile_size/f latents), for large frames; off by default",
    )
    parser.add_argument(
        "--tile_overlap", type=int, default=None,
        help="overlap of neighbouring tiles in pixels, a multiple of f (default: a quarter of --tile_size)",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device`, read back with :func:`device_from_args`."""
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def device_from_args(args: argparse.Namespace) -> torch.device:
    """`--device`, or CUDA when there is one and the CPU otherwise."""
    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def video_options(args: argparse.Namespace) -> dict[str, Any]:
    """The reading, clip and tile flags (:func:`add_frame_arguments`, `--read_long_video`, :func:`add_tile_arguments`)
    as the keyword arguments the drivers take (`reconstruct_video`, `evaluate`, `encode_video`)."""
    names = ("input_height", "input_width", "sample_fps", "chunk_size", "num_frames_per_batch", "read_long_video",
             "tile_size", "tile_overlap")
    return {name: getattr(args, name) for name in names}


def add_model_arguments(parser: argparse.ArgumentParser, *, long_video_help: str, sample_fps_help: str) -> None:
    """The flags both inference scripts share (model, frame sampling, clip layout, tiling, device), with the
    original's names and defaults."""
    parser.add_argument("--seed", type=int, default=42, help="seed (the KL posterior is sampled)")
    add_precision_arguments(parser)
    parser.add_argument("--config", default="configs/vidtok_kl_causal_488_4chn.yaml", help="model config (YAML)")
    parser.add_argument("--ckpt", default="checkpoints/vidtok_kl_causal_488_4chn.ckpt", help="model checkpoint")
    add_frame_arguments(parser, sample_fps_help)
    parser.add_argument("--read_long_video", action="store_true", help=long_video_help)
    add_tile_arguments(parser)
    parser.add_argument(
        "--sample_posterior", type=str2bool, nargs="?", const=True, default=True,
        help="KL models: sample the posterior as the original does (default) or decode its mean (false); "
        "streaming (--read_long_video, causal models) always decodes the mean",
    )
    add_device_argument(parser)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


# --- outputs, checked before any model work -------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, what: str, path: Path) -> None:
    """`folder` (an existing ancestor of `path`) accepts new files and has space left."""
    if not folder.is_dir():
        raise OutputError(f"{what} {str(path)!r}: {str(folder)!r} is a file, not a folder; choose another path")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".vidtok-write-test-")
    except OSError as err:
        raise OutputError(
            f"{what} {str(path)!r}: cannot create files in {str(folder)!r} ({err.strerror}); choose a writable folder"
        ) from err
    os.close(handle)
    os.unlink(probe)
    stats = os.statvfs(folder)
    if stats.f_bavail * stats.f_frsize == 0:
        raise OutputError(
            f"{what} {str(path)!r}: no space left on the device of {str(folder)!r}; free some space or write elsewhere"
        )


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Check that a file can be written at `path` (a regular file or a new name in a writable folder), before the
    work that produces it. Folders on the way that do not exist yet are fine: they are created when writing.

    Raises:
        OutputError: naming `path` and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"{what} {str(path)!r} is not a regular file (a device or pipe); give a file name")
    _check_writable_folder(_nearest_existing(path.parent), what, path)
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Check that `path` is, or can be created as, a writable folder, before the work that fills it.

    Raises:
        OutputError: naming `path` and what is wrong with it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {str(path)!r} exists and is not a folder; remove it or choose another path")
    _check_writable_folder(_nearest_existing(path), what, path)
    return path


def replace_atomically(write: Callable[[Path], Any], path: str | Path) -> Path:
    """Call `write(temporary_path)` (a hidden name beside `path`, same suffix) and rename it to `path` once it
    returns, so a failure never leaves a half-written `path` behind (the temporary file is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def partial_path(path: Path) -> Path:
    """The hidden name a file is written under until it is complete: `.NAME.partial.SUFFIX`."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")
