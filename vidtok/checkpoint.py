"""Reading checkpoint files safely and matching them to a model's state dict."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from vidtok.errors import CheckpointError, MissingFileError

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model built from a config."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.ckpt`/`.pt`/`.pth` (Lightning `{"state_dict": …}` or a bare state dict) or `.safetensors`
    file. Pickles are opened with `weights_only=True`: a checkpoint cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"checkpoint {str(path)!r} does not exist; download the official file into checkpoints/ "
            "(see checkpoints/README.md) or pass the right path"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors reports a bad header or a short file as its own SafetensorError
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a readable .safetensors file ({_first_line(err)}); it is truncated "
                "or corrupt: download or convert it again"
            ) from err
    if path.suffix not in TORCH_SUFFIXES:
        known = ", ".join((*TORCH_SUFFIXES, ".safetensors"))
        raise CheckpointError(f"checkpoint {str(path)!r}: unknown format; expected one of {known}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it names {refused.group(1)})" if refused else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds Python objects besides tensors{what}, which weights-only loading "
            "refuses because unpickling them could run code; if you trust the file, load it yourself and save only "
            "its state dict (torch.save(model.state_dict(), ...)) or convert it to .safetensors"
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read as a weights-only torch file ({_first_line(err)}); it is "
            "truncated or corrupt: download it again"
        ) from err
    if isinstance(payload, Mapping) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    # torch.compile'd modules save their weights under `_orig_mod.`
    return {k.replace("._orig_mod.", ".").removeprefix("_orig_mod."): v for k, v in payload.items()}


def _first_line(err: Exception) -> str:
    """The first sentence of a library's error: what went wrong, without its advice (ours follows)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__


def drop_ignored(weights: dict[str, torch.Tensor], ignore_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove every key matching (`re.match`) one of the `ignore_keys` patterns, as the original does."""
    patterns = [re.compile(p) for p in ignore_keys]
    kept = {}
    for key, value in weights.items():
        if any(p.match(key) for p in patterns):
            logger.info("ignoring checkpoint key %s", key)
        else:
            kept[key] = value
    return kept


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_compatible(
    expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise `CheckpointMismatchError` naming every missing, unexpected and mis-shaped key."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(weights[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in weights and weights[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} with another shape: {_listing(misshaped)}")
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not fit the model: " + "; ".join(problems)
            + ". Check that the config and the checkpoint belong together (same name in configs/ and checkpoints/)"
            ", or list keys to skip in `ignore_keys`."
        )


def export_weights(ckpt: str | Path, output: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the tokenizer's own tensors (no `loss.*` discriminator/LPIPS, no `model_ema.*`) of a training
    checkpoint as a `.safetensors` file, floating-point tensors cast to `dtype`: the file to ship for inference.

    Loading casts them back to the model's dtype, so a float16 file halves the size at the cost of rounding the
    weights; measure a model with the exported file, not the training checkpoint.
    """
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"export target {str(output)!r} must end in .safetensors")
    from safetensors.torch import save_file

    weights = read_state_dict(ckpt)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()
             if not k.startswith(("loss.", "model_ema."))}
    if not state:
        raise ValueError(f"checkpoint {str(ckpt)!r} holds only loss/EMA tensors; nothing to export")
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output))
    logger.info("exported %d tensors of %s to %s (%s)", len(state), ckpt, output, dtype)
    return output
