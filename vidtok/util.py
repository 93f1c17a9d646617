"""Configs: reading VidTok's YAML files (one, or several merged with command-line overrides) with errors that name
the file, the line or the config key, and building objects from their `target:`/`params:` nodes."""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from vidtok.errors import ConfigError, MissingFileError, UnknownTargetError

# The official YAMLs name Lightning classes under either package name; a Trainer only accepts its own package's
# classes (vidtok trains with `lightning.pytorch`).
LIGHTNING_PACKAGES = ("lightning.pytorch.", "pytorch_lightning.")
TRAINER_PACKAGE = "lightning.pytorch."


def lightning_target(target: str) -> str:
    """`pytorch_lightning.X` as `lightning.pytorch.X`, the package our Trainer comes from; other targets unchanged."""
    for prefix in LIGHTNING_PACKAGES:
        if target.startswith(prefix) and prefix != TRAINER_PACKAGE:
            return TRAINER_PACKAGE + target[len(prefix):]
    return target


def get_obj_from_str(path: str) -> Any:
    """Import `package.module.Name` and return `Name` (Lightning names mapped by :func:`lightning_target`), with an
    error that says what could not be found."""
    path = lightning_target(path)
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise UnknownTargetError(
            f"target {path!r} is not a dotted path such as 'vidtok.modules.regularizers.FSQRegularizer'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise UnknownTargetError(f"unknown target {path!r}: module {module_name!r} cannot be imported ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise UnknownTargetError(f"unknown target {path!r}: module {module_name!r} has no attribute {attr!r}") from err


def instantiate_from_config(config: Mapping, **overrides: Any) -> Any:
    """Call `config["target"]` with `config["params"]` (plus `overrides`, which win)."""
    if "target" not in config:
        raise ConfigError(f"config node has no 'target' key (keys: {sorted(config)}); every built object needs one")
    params = dict(config.get("params") or {})
    params.update(overrides)
    return get_obj_from_str(config["target"])(**params)


def read_yaml_config(path: str | Path) -> DictConfig:
    """Load a YAML config with OmegaConf; a missing file or a syntax error (with its line and column) is a
    :class:`~vidtok.errors.VidTokError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config {str(path)!r} does not exist; the official configs are in configs/")
    try:
        return OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config {str(path)!r} is not valid YAML{where}: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {err}") from err


def merge_configs(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge YAML files left to right, then `key.sub=value` overrides (a leading `--` is allowed): the training
    command line's `-b A.yaml -b B.yaml model.params.x=1`."""
    if not paths:
        raise ConfigError("no config given: pass one or more YAML files with -b/--base")
    configs = [read_yaml_config(p) for p in paths]
    dotlist = [o[2:] if o.startswith("--") else o for o in overrides]
    bad = [o for o in dotlist if "=" not in o]
    if bad:
        raise ConfigError(f"unrecognised arguments {bad}: config overrides look like model.params.key=value")
    return OmegaConf.merge(*configs, OmegaConf.from_dotlist(dotlist))


def iter_targets(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Every `target` value in a config tree (a resolved container at key `key`), with the dotted key of the node
    that holds it."""
    if isinstance(node, Mapping):
        if "target" in node:
            yield key, node["target"]
        for name, child in node.items():
            yield from iter_targets(child, f"{key}.{name}")
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            yield from iter_targets(child, f"{key}[{i}]")


# Parameter annotations checked against config values; others (tensors, callables, nested types) are not checked.
_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    bool: (bool,),
    str: (str,),
    list: (list, tuple),
    tuple: (list, tuple),
    Sequence: (list, tuple),
    dict: (dict, Mapping),
    Mapping: (dict, Mapping),
}


def _accepted_types(hint: Any) -> tuple[type, ...] | None:
    """The value types a parameter annotation accepts, or None when it is not one we check."""
    if hint is None or hint is type(None):
        return (type(None),)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        accepted: tuple[type, ...] = ()
        for arg in typing.get_args(hint):
            arg_types = _accepted_types(arg)
            if arg_types is None:
                return None
            accepted += arg_types
        return accepted
    return _SIMPLE_TYPES.get(origin if origin is not None else hint)


def _signature_source(obj: Callable) -> Callable:
    """The callable whose parameters `obj` really takes: a class whose `__init__` only forwards `**params` to its
    base (`EncoderCausal3DPadding(**params)` -> `VideoEncoder`) is checked against the base's `__init__`."""
    if not inspect.isclass(obj):
        return obj
    for cls in obj.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            kinds = {p.kind for n, p in inspect.signature(init).parameters.items() if n != "self"}
        except (TypeError, ValueError):
            return obj
        if kinds != {inspect.Parameter.VAR_KEYWORD}:
            return init
    return obj


def _check_params(obj: Callable, params: Mapping[str, Any], where: str, target: str) -> None:
    source = _signature_source(obj)
    try:
        signature = inspect.signature(source)
    except (TypeError, ValueError):
        return
    parameters = {n: p for n, p in signature.parameters.items() if n != "self"}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    names = [n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    try:
        hints = typing.get_type_hints(source.__init__ if inspect.isclass(source) else source)
    except Exception:  # an annotation that does not resolve at run time: leave the types unchecked
        hints = {}
    for name, value in params.items():
        if name not in parameters:
            if not takes_any:
                raise ConfigError(
                    f"{where}.params.{name}: {target} has no parameter {name!r}; it takes {', '.join(names)}"
                )
            continue
        accepted = _accepted_types(hints.get(name))
        if accepted is None or value is None and parameters[name].default is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in accepted
        if wrong_bool or not isinstance(value, accepted):
            expected = " or ".join(sorted({t.__name__ for t in accepted}))
            raise ConfigError(
                f"{where}.params.{name}: {target} expects {expected}, got {value!r} ({type(value).__name__})"
            )


def check_config_targets(node: Any, where: str, source: str | None = None) -> None:
    """Import every `target` under `node` (a resolved config container at key `where`, e.g. `model`) and check
    its `params` against the target's signature (unknown names, simple annotated types), before anything is built,
    so the error names the config key (`model.params.encoder_config.target`) instead of failing deep inside the
    constructor. `source` (the config file) goes in front of the message.

    Raises:
        UnknownTargetError: for a target that cannot be imported.
        ConfigError: for a parameter the target does not take or a value of the wrong type.
    """
    prefix = f"config {source!r}: " if source else ""
    if isinstance(node, Mapping):
        if "target" in node:
            target = lightning_target(str(node["target"]))
            try:
                obj = get_obj_from_str(target)
            except UnknownTargetError as err:
                raise UnknownTargetError(f"{prefix}{where}.target: {err}") from err
            params = node.get("params") or {}
            if isinstance(params, Mapping):
                try:
                    _check_params(obj, params, where, target)
                except ConfigError as err:
                    raise ConfigError(f"{prefix}{err}") from err
        for key, value in node.items():
            check_config_targets(value, f"{where}.{key}", source)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_config_targets(value, f"{where}[{i}]", source)
