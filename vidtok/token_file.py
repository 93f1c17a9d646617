"""The token file: its format (an `.npz` of tokens and JSON metadata), writing and reading it, checking it, and
finding the model that decodes it.

A token file is an `.npz` archive with two arrays:

- `tokens`: FSQ models: the token indices `[N, T', H', W']` of the N clips, in the smallest unsigned integer type
  that holds the codebook (`uint8` up to 256 codes, `uint16` up to 65,536, else `uint32`). KL models: the
  posterior **mean** `[N, C, T', H', W']` (float32, or float16 on request), not a sample, so the file is
  deterministic.
- `meta`: a JSON string with what decoding needs: the model (config and checkpoint file names, the config's
  `model:` section as YAML text, kind, causality, temporal/spatial factors, codebook or latent channels), the video
  (source file name, source and output fps, frame count, size), the clip layout (clip length, `(start, num_valid)`
  of every clip, and `streamed: true` for a streamed long video) and the encoder's spatial tiles (`tiling`, or
  null). Paths are stored as file names only, so a shared file does not reveal the writer's folders.

Token files are data, never code. They are read with `allow_pickle=False`, and the stored config builds a model
only when every `target:` in its `model:` section is one of vidtok's own model classes (:data:`MODEL_TARGETS`, the
names the official configs use); anything else is refused, and `--config` names the model instead. The checkpoint
is looked up by its recorded file name beside the token file, then in the current folder and the repository's
checkpoint folders (or given with `--ckpt`).
Loading checks the metadata and the array against each other, and decoding checks them against the model, so a
damaged or mismatched file stops with a :class:`TokenFileError` that names it.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from yaml import YAMLError

from vidtok.api import load_model_from_config
from vidtok.cli import replace_atomically
from vidtok.errors import VidTokError
from vidtok.models import autoencoder, autoencoder_v1_1
from vidtok.modules import losses, model_3dcausal, model_3dcausal_v1_1, model_3dnoncausal, regularizers
from vidtok.util import iter_targets

logger = logging.getLogger(__name__)

FORMAT = "vidtok-tokens"
FORMAT_VERSION = 1
LATENT_DTYPES = ("float32", "float16")
REENCODE = "encode the video again with `python -m vidtok encode`"


class TokenFileError(VidTokError, ValueError):
    """A token file that cannot be decoded as it is: missing, damaged, incomplete, or not what its metadata says."""


class UnsafeTokenConfigError(TokenFileError):
    """The config stored in a token file names a `target` that is not one of vidtok's model classes."""


class TokenModelMismatchError(TokenFileError):
    """The model given for a token file does not fit it (kind, factors, channels, codebook or latent frames)."""


def _official_targets() -> frozenset[str]:
    """The `target:` names of vidtok's model classes, as the official configs spell them: every public
    `nn.Module` class of the modules those configs name under `model:` (a class re-exported by a module, as
    `regularizers` does, counts under that module's name)."""
    names = set()
    for module in (autoencoder, autoencoder_v1_1, model_3dcausal, model_3dcausal_v1_1, model_3dnoncausal,
                   regularizers, losses):
        public = getattr(module, "__all__", None)
        for name, obj in vars(module).items():
            own = name in public if public is not None else getattr(obj, "__module__", None) == module.__name__
            if own and not name.startswith("_") and isinstance(obj, type) and issubclass(obj, nn.Module):
                names.add(f"{module.__name__}.{name}")
    return frozenset(names)


MODEL_TARGETS = _official_targets()


def index_dtype(codebook_size: int) -> np.dtype:
    """Smallest unsigned integer type that holds indices `0 .. codebook_size - 1`."""
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"codebook of {codebook_size} codes does not fit in uint32")


@dataclass
class EncodedVideo:
    """Tokens (FSQ) or latents (KL) of a video, clip by clip, with the metadata needed to decode them."""

    kind: Literal["fsq", "kl"]
    tokens: np.ndarray
    meta: dict[str, Any]
    path: Path | None = None  # the file it was loaded from, named in errors and searched beside for the checkpoint

    @property
    def where(self) -> str:
        """How errors name these tokens: the file, or 'the tokens' when they were never on disk."""
        return "the tokens" if self.path is None else f"token file {str(self.path)!r}"

    @property
    def num_frames(self) -> int:
        return int(self.meta["video"]["num_frames"])

    @property
    def fps(self) -> float:
        return float(self.meta["video"]["fps"])


def model_description(model) -> dict[str, Any]:
    """What a token file records about the model, to check a decoding model against."""
    info: dict[str, Any] = {
        "kind": "fsq" if model.is_fsq else "kl",
        "causal": bool(model.is_causal),
        "time_downsample_factor": int(model.time_downsample_factor),
        "spatial_downsample_factor": int(model.spatial_downsample_factor),
        "z_channels": int(model.decoder.z_channels),
    }
    if model.is_fsq:
        info["codebook_size"] = int(model.regularization.codebook_size)
        info["levels"] = [int(v) for v in model.regularization.levels]
    return info


def save_tokens(encoded: EncodedVideo, path: str | Path) -> Path:
    """Write `encoded` to `path` (an `.npz` archive, compressed), exactly as given; under a temporary name until
    complete, so a failure (a full disk) leaves no truncated token file."""

    def write(target: Path) -> None:
        with target.open("wb") as f:
            np.savez_compressed(f, tokens=encoded.tokens, meta=np.array(json.dumps(encoded.meta)))

    return replace_atomically(write, path)


def load_tokens(path: str | Path) -> EncodedVideo:
    """Read a token file written by :func:`save_tokens` and check its metadata and array against each other.

    Raises:
        TokenFileError: no such file; a damaged or truncated one; not a vidtok token file or one from a newer
            format version; metadata keys missing; an array whose rank, dtype or shape the metadata does not
            describe; FSQ indices outside the codebook.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenFileError(f"token file {str(path)!r} does not exist; check the path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            tokens = archive["tokens"]
            meta = json.loads(archive["meta"].item())
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        raise TokenFileError(
            f"token file {str(path)!r} cannot be read ({type(err).__name__}: {_one_line(err)}): it is truncated, "
            "damaged or not "
            f"a vidtok token file (.npz with 'tokens' and 'meta'); {REENCODE}"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise TokenFileError(
            f"{str(path)!r} is not a vidtok token file (format {found!r}); pass a file written by `python -m vidtok "
            "encode`"
        )
    if not isinstance(meta.get("version", 0), int) or meta.get("version", 0) > FORMAT_VERSION:
        raise TokenFileError(
            f"{str(path)!r} has format version {meta['version']}; this vidtok reads up to {FORMAT_VERSION}: "
            "update vidtok"
        )
    encoded = EncodedVideo(kind=meta.get("kind"), tokens=tokens, meta=meta, path=path)
    check_tokens(encoded)
    return encoded


def _one_line(err: Exception) -> str:
    """A parser's message (YAML's spans lines, with a caret) squeezed into the one line an error gets."""
    return " ".join(str(err).split())


# metadata decoding reads, with the types it needs; FSQ files also need `model.codebook_size`
_META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "model": dict,
    "model.kind": str,
    "model.causal": bool,
    "model.time_downsample_factor": int,
    "model.spatial_downsample_factor": int,
    "model.z_channels": int,
    "video": dict,
    "video.fps": (int, float),
    "video.num_frames": int,
    "video.height": int,
    "video.width": int,
    "clips": dict,
    "clips.chunk_size": int,
    "clips.clip_frames": int,
    "clips.layout": list,
}


def _meta_field(encoded: EncodedVideo, key: str, kind: type | tuple[type, ...]) -> Any:
    node: Any = encoded.meta
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TokenFileError(f"{encoded.where} has no metadata key {key!r}; it is incomplete: {REENCODE}")
        node = node[part]
    if not isinstance(node, kind) or (kind is not bool and isinstance(node, bool)):
        raise TokenFileError(f"{encoded.where}: metadata {key!r} is {node!r}, not a {_type_names(kind)}; {REENCODE}")
    if isinstance(node, int | float) and not isinstance(node, bool) and not node > 0:  # counts, sizes, factors, fps
        raise TokenFileError(f"{encoded.where}: metadata {key!r} is {node!r}, it must be positive; {REENCODE}")
    return node


def _type_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


def check_tokens(encoded: EncodedVideo) -> None:
    """Raise TokenFileError unless the metadata has every key decoding reads and the array is what it describes:
    FSQ unsigned integer indices `[N, T', H', W']` inside the codebook, or KL latents `[N, C, T', H', W']`
    (float32/float16, C = z_channels), N = the clips of the layout and H', W' = height, width / the spatial factor.
    """
    for key, kind in _META_FIELDS.items():
        _meta_field(encoded, key, kind)
    meta, tokens, where = encoded.meta, encoded.tokens, encoded.where
    if meta["kind"] not in ("fsq", "kl") or meta["model"]["kind"] != meta["kind"]:
        raise TokenFileError(
            f"{where}: metadata kind {meta['kind']!r} / model.kind {meta['model']['kind']!r}, expected both 'fsq' or "
            f"both 'kl'; {REENCODE}"
        )
    model, video, clips = meta["model"], meta["video"], meta["clips"]
    layout = clips["layout"]
    for entry in layout:
        if not (isinstance(entry, list) and len(entry) == 2 and all(type(v) is int for v in entry)
                and 0 < entry[1] <= clips["clip_frames"]):
            raise TokenFileError(
                f"{where}: clip {entry!r} of metadata 'clips.layout' is not [start, frames] with 1..clip_frames "
                f"({clips['clip_frames']}) frames; {REENCODE}"
            )
    f = model["spatial_downsample_factor"]
    grid = (video["height"] // f, video["width"] // f)
    n = len(layout)
    if encoded.kind == "fsq":
        codebook = _meta_field(encoded, "model.codebook_size", int)
        dtype_ok, lead, described = tokens.dtype.kind == "u", (n,), f"unsigned integer indices [{n}, T'"
    else:
        codebook, channels = None, model["z_channels"]
        dtype_ok, lead = tokens.dtype.name in LATENT_DTYPES, (n, channels)
        described = f"{'/'.join(LATENT_DTYPES)} latents [{n}, {channels}, T'"
    rank = len(lead) + 3
    if not (dtype_ok and tokens.ndim == rank and tokens.shape[: len(lead)] == lead and tokens.shape[-2:] == grid):
        raise TokenFileError(
            f"{where}: 'tokens' is {tokens.dtype} {list(tokens.shape)} (rank {tokens.ndim}), but its metadata "
            f"describes {described}, {grid[0]}, {grid[1]}] (rank {rank}: {n} clip(s) of {video['height']}x"
            f"{video['width']} frames, spatial factor {f}); the array was damaged or replaced: {REENCODE}"
        )
    if codebook is not None and tokens.size and int(tokens.max()) >= codebook:
        raise TokenFileError(
            f"{where}: token indices reach {int(tokens.max())}, outside the codebook of {codebook} codes "
            f"(0..{codebook - 1}); the file is damaged or belongs to another model: {REENCODE}"
        )


def embedded_model_config(encoded: EncodedVideo) -> DictConfig:
    """The `model:` section of the config stored in a token file, resolved, for :func:`load_model_from_config`.

    Nothing is imported here: every `target` in the section must be one of :data:`MODEL_TARGETS`.

    Raises:
        TokenFileError: the file stores no config, or one that cannot be parsed.
        UnsafeTokenConfigError: a `target` that is not one of vidtok's model classes.
    """
    text = encoded.meta["model"].get("config_yaml")
    if not text:
        raise TokenFileError(f"{encoded.where} stores no model config; pass the model's config with --config")
    try:
        section = OmegaConf.to_container(OmegaConf.create(text).model, resolve=True)
    except (OmegaConfBaseException, YAMLError, ValueError) as err:
        raise TokenFileError(
            f"the model config stored in {encoded.where} cannot be read ({_one_line(err)}); pass the model's config "
            "with --config"
        ) from err
    for key, target in iter_targets(section, "model"):
        if target not in MODEL_TARGETS:
            raise UnsafeTokenConfigError(
                f"the model config stored in {encoded.where} names target {target!r} at {key!r}, which is not one of "
                f"vidtok's model classes, so it is not used (a token file is data, never code); pass the model's "
                "config with --config"
            )
    return OmegaConf.create({"model": section})


def _recorded_checkpoint(encoded: EncodedVideo) -> Path:
    """The checkpoint a token file names: its file name beside the token file, else in the current folder, else
    where this repository keeps checkpoints (`checkpoints/`, `checkpoints/vidtok_v1_1/`, from the current folder)."""
    recorded = encoded.meta["model"].get("ckpt")
    if not recorded:
        raise TokenFileError(f"{encoded.where} records no checkpoint; pass one with --ckpt")
    name = Path(recorded).name  # files from before names were stored hold absolute paths: only the name is used
    here = Path.cwd()
    folders = [encoded.path.parent] if encoded.path is not None else []
    folders += [here, here / "checkpoints", here / "checkpoints" / "vidtok_v1_1"]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise TokenFileError(
        f"checkpoint {name!r} recorded in {encoded.where} is neither beside it nor in the current folder or its "
        "checkpoints/; pass it with --ckpt"
    )


def load_model_for(encoded: EncodedVideo, config: str | Path | None = None, ckpt: str | Path | None = None):
    """Build the model a token file was made with (CPU, eval mode); `config`/`ckpt` override the recorded ones.

    The config is `config`, else the `model:` section stored in the file (:func:`embedded_model_config`); the
    checkpoint is `ckpt`, else the recorded file name beside the token file, in the current folder or its
    `checkpoints/`.

    Raises:
        TokenFileError: no usable config or checkpoint (pass `config`/`ckpt`).
        UnsafeTokenConfigError: the stored config names a target that is not a vidtok model class.
        TokenModelMismatchError: the model does not fit the file (kind, factors, channels, codebook or latent frames).
    """
    if config is None:
        config = embedded_model_config(encoded)
    ckpt = _recorded_checkpoint(encoded) if ckpt is None else ckpt
    model = load_model_from_config(config, ckpt).eval()
    check_model_matches(model, encoded)
    return model


def check_model_matches(model, encoded: EncodedVideo) -> None:
    """Raise TokenModelMismatchError if `model` cannot decode `encoded`: a different kind, causality, factor,
    latent channels or codebook, or latents of another length than the model makes of a clip."""
    ours = model_description(model)
    recorded = encoded.meta["model"]
    keys = [k for k in ("kind", "causal", "time_downsample_factor", "spatial_downsample_factor", "z_channels",
                        "codebook_size") if k in ours or k in recorded]
    diffs = [f"{k}: file {recorded.get(k)!r}, model {ours.get(k)!r}" for k in keys if ours.get(k) != recorded.get(k)]
    if not diffs:
        clip_frames = int(encoded.meta["clips"]["clip_frames"])
        latents = encoded.tokens.shape[1 if encoded.kind == "fsq" else 2]
        expected = model.encoder.latent_frames(clip_frames)
        if latents != expected:
            diffs = [f"{latents} latent frames per clip in the file, the model makes {expected} of {clip_frames}"]
    if diffs:
        raise TokenModelMismatchError(
            f"the model does not fit {encoded.where} (" + "; ".join(diffs) + "); pass the --config and --ckpt it "
            "was encoded with"
        )
