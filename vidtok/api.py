"""Loading a tokenizer from a config and a checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vidtok.errors import ConfigError
from vidtok.util import check_config_targets, instantiate_from_config, read_yaml_config


def load_config(config: str | Path | DictConfig) -> DictConfig:
    """An OmegaConf config from a YAML path (or the config itself); a missing file, invalid YAML or a config
    without a `model:` section is a :class:`~vidtok.errors.ConfigError` naming the file."""
    if isinstance(config, DictConfig):
        return config
    cfg = read_yaml_config(config)
    if not isinstance(cfg, DictConfig) or "model" not in cfg:
        raise ConfigError(f"config {str(config)!r} has no `model:` section; is it a VidTok model config?")
    return cfg


def load_model_from_config(
    config: str | Path | DictConfig,
    ckpt: str | Path | None = None,
    ignore_keys: Iterable[str] = (),
    verbose: bool = False,
):
    """Build the model of `config` (a YAML path or a loaded config) and load `ckpt` into it, if given.

    Like the original, the model is returned on the CPU in training mode; call `.to(device).eval()` yourself.
    Every `target` of the config is imported and its `params` checked before anything is built, so an unknown
    target or parameter is an error naming its config key. A checkpoint that does not fit the config raises an
    error naming the keys, the config and the checkpoint.
    """
    cfg = load_config(config)
    where = "<in-memory config>" if isinstance(config, DictConfig) else str(config)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    check_config_targets(model_cfg, "model", source=where)
    params = model_cfg.setdefault("params", {})
    params.pop("ckpt_path", None)
    params["verbose"] = verbose
    model = instantiate_from_config(model_cfg)
    if ckpt is not None:
        try:
            model.init_from_ckpt(ckpt, ignore_keys=ignore_keys)
        except ValueError as err:
            raise type(err)(f"{err} (config: {where})") from err
    return model
