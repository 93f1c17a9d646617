"""Loading a tokenizer from a config and a checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vidtok.util import instantiate_from_config


def load_config(config: str | Path | DictConfig) -> DictConfig:
    """An OmegaConf config from a YAML path (or the config itself), with a clear error for a missing file."""
    if isinstance(config, DictConfig):
        return config
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist; the official configs are in configs/")
    cfg = OmegaConf.load(path)
    if "model" not in cfg:
        raise KeyError(f"config {str(path)!r} has no `model:` section")
    return cfg


def load_model_from_config(
    config: str | Path | DictConfig,
    ckpt: str | Path | None = None,
    ignore_keys: Iterable[str] = (),
    verbose: bool = False,
):
    """Build the model of `config` (a YAML path or a loaded config) and load `ckpt` into it, if given.

    Like the original, the model is returned on the CPU in training mode; call `.to(device).eval()` yourself.
    A checkpoint that does not fit the config raises an error naming the keys, the config and the checkpoint.
    """
    cfg = load_config(config)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    params = model_cfg.setdefault("params", {})
    params.pop("ckpt_path", None)
    params["verbose"] = verbose
    model = instantiate_from_config(model_cfg)
    if ckpt is not None:
        try:
            model.init_from_ckpt(ckpt, ignore_keys=ignore_keys)
        except ValueError as err:
            where = "<in-memory config>" if isinstance(config, DictConfig) else str(config)
            raise type(err)(f"{err} (config: {where})") from err
    return model
