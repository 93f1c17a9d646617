"""Building objects from `target:`/`params:` config nodes, the convention every VidTok YAML follows."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def get_obj_from_str(path: str) -> Any:
    """Import `package.module.Name` and return `Name`, with an error that says what could not be found."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"target {path!r} is not a dotted path such as 'vidtok.modules.regularizers.FSQRegularizer'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportError(f"unknown target {path!r}: module {module_name!r} cannot be imported ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ImportError(f"unknown target {path!r}: module {module_name!r} has no attribute {attr!r}") from err


def instantiate_from_config(config: Mapping, **overrides: Any) -> Any:
    """Call `config["target"]` with `config["params"]` (plus `overrides`, which win)."""
    if "target" not in config:
        raise KeyError(f"config node has no 'target' key (keys: {sorted(config)}); every built object needs one")
    params = dict(config.get("params") or {})
    params.update(overrides)
    return get_obj_from_str(config["target"])(**params)
