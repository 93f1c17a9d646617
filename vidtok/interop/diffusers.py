"""Our models <-> diffusers' `AutoencoderVidTok` (checked against diffusers 0.42.1).

Weights. diffusers names every tensor as the original does: its state dict is ours without the training-only
`loss.*` and `model_ema.*` entries, with the same keys, shapes, dtypes and order (416 tensors for the 488 models).
So no renaming table is needed: `to_diffusers_state_dict` only drops entries, and `from_diffusers_state_dict` is
the identity.

Config. `diffusers_kwargs_from_config` maps a model config (an official or vidtok YAML) to `AutoencoderVidTok(...)`
arguments; `config_from_diffusers_kwargs` maps them back to a config in the official layout.

| ours (`encoder_config`/`decoder_config` params, `regularizer_config`) | `AutoencoderVidTok` |
|---|---|
| `ch`, `ch_mult`, `num_res_blocks`, `z_channels`, `double_z`, `in_channels`, `dropout` | same names |
| `out_ch` | `out_channels` |
| `spatial_ds`, `tempo_ds`, `spatial_us`, `tempo_us` | same names, always given as explicit lists |
| `time_downsample_factor` | none: diffusers uses `2**len(tempo_ds)`, which must agree |
| encoder/decoder target family (causal or not) | `is_causal` |
| `DiagonalGaussianRegularizer` / `FSQRegularizer(levels=[8]*z)` | `regularizer="kl"` / `"fsq"`, `codebook_size=8**z` |

What diffusers cannot express raises `DiffusersIncompatibleError`: `norm_type: groupnorm`, FSQ levels other than
all 8, `tanh_out`/`give_pre_end`, a v1.1 decoder with `interpolation_mode: nearest`, `init_pad_mode` other than
`replicate`, a KL model without `double_z`, and encoder/decoder params that differ in a key diffusers shares.
Keys that only matter for training (`use_checkpoint`, `fix_encoder`, `fix_decoder`, the FSQ loss weights,
`loss_config`) or that are run-time switches (`use_tiling` and its chunk sizes, the KL regularizer's `sample`)
have no diffusers counterpart and are dropped; going back, the official values are written.

Semantics. diffusers has no v1.0/v1.1 switch: every causal model runs the v1.1 way (causal padding and the
temporal downsampler's average repeat frame 0, the temporal upsampler is linear with the first frames apart).
Causal models therefore come back from diffusers as v1.1 configs, and exporting a v1.0 causal model warns
(`DiffusersSemanticsWarning`): its weights load, but it computes something else (figures in `V1_0_CAUSAL_WARNING`).
v1.1 causal and v1.0 non-causal models agree with diffusers to float32 rounding: on the recipe weights at 32x32
the latent differs by at most 4.3e-6, the reconstruction by 1.7e-5, and FSQ tokens are identical.

Frame counts (diffusers 0.42.1; `tcr` = temporal factor):
- Causal `AutoencoderVidTok.forward` pads the end of the clip to `1 + k·tcr` frames with copies of the last frame,
  prepends `tcr-1` copies of frame 0, encodes, decodes and crops back to T. For T = 1 + k·tcr this is exactly our
  v1.1 `forward`; for other T the latent is longer than ours (T=16, tcr 4: 6 latent frames against 4), so the
  latents differ although both return T frames.
- `AutoencoderVidTok.encode` does not pad (17 frames give 4 latent frames, ours 5): prepend the `tcr-1` copies
  yourself, or use `forward(..., encoder_mode=True)`. Its causal `decode` always drops the first `tcr-1` frames.
- Non-causal `forward` pads the end to a multiple of 16 frames with copies of the last frame (ours takes any
  multiple of 4 as it is, so T=8 gives other latents), `forward(..., encoder_mode=True)` truncates to a multiple
  of 16 instead, and `decode` truncates the latent to a multiple of 4 frames.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from vidtok.api import load_config, load_model_from_config
from vidtok.checkpoint import check_compatible, read_state_dict
from vidtok.errors import VidTokError
from vidtok.modules.decoder import VideoDecoder
from vidtok.modules.encoder import VideoEncoder
from vidtok.modules.fsq import FSQRegularizer
from vidtok.modules.gaussian import DiagonalGaussianRegularizer
from vidtok.modules.normalization import LayerNorm
from vidtok.modules.resample import TemporalUpsample
from vidtok.modules.variant import LAYOUTS, Variant, resampling_levels
from vidtok.training.ema import shadow_name
from vidtok.util import get_obj_from_str

if TYPE_CHECKING:
    from diffusers import AutoencoderVidTok

    from vidtok.models.autoencoder import AutoencodingEngine

__all__ = [
    "DIFFUSERS_VERSION",
    "V1_0_CAUSAL_WARNING",
    "DiffusersIncompatibleError",
    "DiffusersSemanticsWarning",
    "config_from_diffusers",
    "config_from_diffusers_kwargs",
    "diffusers_kwargs_from_config",
    "diffusers_kwargs_from_model",
    "export_to_diffusers",
    "from_diffusers",
    "from_diffusers_state_dict",
    "import_from_diffusers",
    "to_diffusers",
    "to_diffusers_state_dict",
]

logger = logging.getLogger(__name__)

DIFFUSERS_VERSION = "0.42.1"  # the release this mapping was checked against (key identity and outputs)

# checkpoint entries that exist for training only and have no place in a diffusers model
TRAINING_ONLY_PREFIXES = ("loss.", "model_ema.")

_FAMILY_MODULES: dict[Variant, str] = {
    "v1.0": "vidtok.modules.model_3dcausal",
    "v1.1": "vidtok.modules.model_3dcausal_v1_1",
    "noncausal": "vidtok.modules.model_3dnoncausal",
}
ENCODER_TARGETS: dict[Variant, str] = {
    "v1.0": f"{_FAMILY_MODULES['v1.0']}.EncoderCausal3DPadding",
    "v1.1": f"{_FAMILY_MODULES['v1.1']}.EncoderCausal3DPadding",
    "noncausal": f"{_FAMILY_MODULES['noncausal']}.Encoder3D",
}
DECODER_TARGETS: dict[Variant, str] = {
    "v1.0": f"{_FAMILY_MODULES['v1.0']}.DecoderCausal3DPadding",
    "v1.1": f"{_FAMILY_MODULES['v1.1']}.DecoderCausal3DPadding",
    "noncausal": f"{_FAMILY_MODULES['noncausal']}.Decoder3D",
}
ENGINE_TARGETS: dict[Variant, str] = {
    "v1.0": "vidtok.models.autoencoder.AutoencodingEngine",
    "v1.1": "vidtok.models.autoencoder_v1_1.AutoencodingEngine",
    "noncausal": "vidtok.models.autoencoder.AutoencodingEngine",
}
KL_TARGET = "vidtok.modules.regularizers.DiagonalGaussianRegularizer"
FSQ_TARGET = "vidtok.modules.regularizers.FSQRegularizer"

# `AutoencoderVidTok.__init__` defaults in diffusers 0.42.1 (kept here so the mapping works without diffusers)
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "z_channels": 4,
    "double_z": True,
    "num_res_blocks": 2,
    "spatial_ds": None,
    "spatial_us": None,
    "tempo_ds": None,
    "tempo_us": None,
    "dropout": 0.0,
    "regularizer": "kl",
    "codebook_size": 262144,
    "is_causal": True,
}

# what the official YAMLs use for the training-only parts, written into configs made from a diffusers model
FSQ_TRAINING_PARAMS: dict[str, Any] = {
    "entropy_loss_weight": 0.1,
    "entropy_loss_annealing_steps": 2000,
    "entropy_loss_annealing_factor": 3,
    "commitment_loss_weight": 0.25,
}
OFFICIAL_LOSS_CONFIG: dict[str, Any] = {
    "target": "vidtok.modules.losses.GeneralLPIPSWithDiscriminator",
    "params": {
        "dims": 3,
        "perceptual_weight": 1.0,
        "disc_start": 20001,
        "disc_weight": 0.2,
        "disc_type": "2d",
        "learn_logvar": True,
        "gen_loss_cross_entropy": True,
        "lecam_loss_weight": 0.005,
        "regularization_weights": {"aux_loss": 1.0, "kl_loss": 0.000001},
    },
}

# keys that diffusers shares between its encoder and decoder: ours may differ, diffusers' cannot
_SHARED_KEYS = ("ch", "ch_mult", "num_res_blocks", "z_channels", "dropout", "norm_type", "time_downsample_factor")

V1_0_CAUSAL_WARNING = (
    "diffusers' AutoencoderVidTok runs causal models with VidTok v1.1 semantics (frame-0 causal padding, linear "
    "temporal upsampling); this v1.0 causal model uses zero padding and nearest upsampling. Its weights load "
    "unchanged, but the diffusers model computes a different function. Measured with the conformance recipe "
    "weights (random, not trained) on 1x3x17x32x32 (1x3x17x64x64) clips: the KL posterior mean differs by up to "
    "1.51 (1.77) where its largest value is 1.54 (1.58) (kl_causal_488_4chn); 100% of the FSQ tokens differ, 80 of 80 "
    "(320 of 320) (fsq_causal_488_262144); reconstructions differ by up to 2.57 (2.57). The same weights run with "
    "v1.1 semantics in vidtok agree with diffusers to 1e-5. Export a v1.1 model, or keep this one in vidtok."
)


class DiffusersIncompatibleError(ValueError):
    """A model or config that diffusers' `AutoencoderVidTok` cannot represent (or the reverse)."""


class DiffusersSourceError(VidTokError):
    """A diffusers model that is neither a local folder nor in the Hugging Face cache, with downloads off."""


class DiffusersSemanticsWarning(UserWarning):
    """The diffusers model loads these weights but computes something else (a v1.0 causal model)."""


# --- our config -> diffusers kwargs -----------------------------------------------------------------------------


def diffusers_kwargs_from_config(config: str | Path | DictConfig | Mapping) -> dict[str, Any]:
    """`AutoencoderVidTok(**kwargs)` arguments for a model config: a YAML path, a loaded config, or its `model` node.

    Every argument is given, the resampling lists resolved as our model resolves them. Raises
    `DiffusersIncompatibleError` for what diffusers cannot express; warns (`DiffusersSemanticsWarning`) for a v1.0
    causal model, which diffusers would run with v1.1 semantics.
    """
    node, source = _model_node(config)
    return _kwargs_from_model_node(node, source)


def diffusers_kwargs_from_model(model: AutoencodingEngine) -> dict[str, Any]:
    """`AutoencoderVidTok(**kwargs)` arguments for a built model (read from its modules, not from a config)."""
    return _kwargs_from_model_node(_model_node_of(model), f"model {type(model).__name__}")


def _model_node(config: str | Path | DictConfig | Mapping) -> tuple[dict[str, Any], str]:
    if isinstance(config, str | Path):
        cfg, source = load_config(config), str(config)
    elif isinstance(config, DictConfig):
        cfg, source = config, "<in-memory config>"
    elif isinstance(config, Mapping):
        cfg, source = OmegaConf.create(dict(config)), "<in-memory config>"
    else:
        raise TypeError(f"expected a config path, a DictConfig or a mapping, got {type(config).__name__}")
    node = cfg.model if "model" in cfg else cfg
    try:
        resolved = OmegaConf.to_container(node, resolve=True)
    except Exception as err:  # omegaconf raises several interpolation error types
        raise ValueError(
            f"{source}: the model config could not be resolved ({err}); pass the whole config (with `model:`) so "
            "that interpolations such as ${{model.params.encoder_config.params}} resolve"
        ) from err
    return resolved, source


def _family(target: str, targets: Mapping[Variant, str], base: type, params: Mapping, where: str) -> Variant:
    """The model family (v1.0, v1.1, non-causal) of an encoder or decoder `target`."""
    cls = get_obj_from_str(target)
    for variant, known in targets.items():
        if cls is get_obj_from_str(known):
            return variant
    if cls is base:
        return params.get("variant", "v1.0")
    raise DiffusersIncompatibleError(
        f"{where}: target {target!r} is not a VidTok {base.__name__}; diffusers' AutoencoderVidTok can hold "
        f"{sorted(set(targets.values()))}"
    )


def _with_defaults(cls: type, params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`params` completed with `cls`'s constructor defaults, as building the module would."""
    accepted = {
        name: p for name, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise DiffusersIncompatibleError(f"{where}: {cls.__name__} has no parameter(s) {unknown}")
    missing = [name for name, p in accepted.items() if p.default is p.empty and name not in params]
    if missing:
        raise DiffusersIncompatibleError(f"{where}: {cls.__name__} needs {missing}")
    out = {name: params.get(name, p.default) for name, p in accepted.items()}
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in out.items()}


def _kwargs_from_model_node(node: Mapping[str, Any], source: str) -> dict[str, Any]:
    params = node.get("params") or {}
    for key in ("encoder_config", "decoder_config", "regularizer_config"):
        if key not in params:
            raise DiffusersIncompatibleError(f"{source}: model.params has no {key}")
    enc_cfg, dec_cfg = params["encoder_config"], params["decoder_config"]
    where_enc, where_dec = f"{source}: encoder_config", f"{source}: decoder_config"
    enc_params, dec_params = dict(enc_cfg.get("params") or {}), dict(dec_cfg.get("params") or {})
    variant = _family(enc_cfg["target"], ENCODER_TARGETS, VideoEncoder, enc_params, where_enc)
    dec_variant = _family(dec_cfg["target"], DECODER_TARGETS, VideoDecoder, dec_params, where_dec)
    if dec_variant != variant:
        raise DiffusersIncompatibleError(
            f"{source}: the encoder is {variant} but the decoder is {dec_variant}; diffusers builds both alike"
        )
    enc = _with_defaults(VideoEncoder, enc_params, where_enc)
    dec = _with_defaults(VideoDecoder, dec_params, where_dec)
    differing = [k for k in _SHARED_KEYS if enc[k] != dec[k]]
    if differing:
        raise DiffusersIncompatibleError(
            f"{source}: encoder and decoder params differ in {differing}; diffusers has one value for both"
        )
    if enc["norm_type"] != "layernorm":
        raise DiffusersIncompatibleError(
            f"{source}: norm_type={enc['norm_type']!r}; diffusers' AutoencoderVidTok has LayerNorm only "
            "(every official config uses norm_type: layernorm)"
        )
    for key in ("tanh_out", "give_pre_end"):
        if dec[key]:
            raise DiffusersIncompatibleError(f"{where_dec}: {key}=true has no diffusers counterpart")
    layout = LAYOUTS[variant]
    if layout.causal and enc["init_pad_mode"] != "replicate":
        raise DiffusersIncompatibleError(
            f"{where_enc}: init_pad_mode={enc['init_pad_mode']!r}; diffusers pads causal input with copies of "
            "frame 0 (init_pad_mode: replicate)"
        )
    if variant == "v1.1" and dec["interpolation_mode"] != "trilinear":
        raise DiffusersIncompatibleError(
            f"{where_dec}: interpolation_mode={dec['interpolation_mode']!r}; diffusers upsamples time linearly in "
            "every causal model (interpolation_mode: trilinear)"
        )

    ch_mult, tdf = [int(m) for m in enc["ch_mult"]], int(enc["time_downsample_factor"])
    L = len(ch_mult)
    try:
        # the encoder/decoder's own defaults and checks, so the lists are the ones the built model uses
        spatial_ds, tempo_ds = resampling_levels(
            layout, enc["spatial_ds"], enc["tempo_ds"], (list(range(L - 1)), [L - 2, L - 3]), tdf,
            ("spatial_ds", "tempo_ds"),
        )
        spatial_us, tempo_us = resampling_levels(
            layout, dec["spatial_us"], dec["tempo_us"], (list(range(1, L)), [1, 2]), tdf,
            ("spatial_us", "tempo_us"),
        )
    except ValueError as err:
        raise DiffusersIncompatibleError(f"{source}: {err}") from err
    if 2 ** len(tempo_ds) != tdf:
        raise DiffusersIncompatibleError(
            f"{where_enc}: tempo_ds={tempo_ds} lists levels that do not resample space (spatial_ds={spatial_ds}); "
            f"the model resamples time by {tdf}, but diffusers pads and crops by 2**len(tempo_ds)="
            f"{2 ** len(tempo_ds)}; list only levels that are also in spatial_ds"
        )
    kwargs = {
        "in_channels": int(enc["in_channels"]),
        "out_channels": int(dec["out_ch"]),
        "ch": int(enc["ch"]),
        "ch_mult": ch_mult,
        "z_channels": int(enc["z_channels"]),
        "double_z": bool(enc["double_z"]),
        "num_res_blocks": int(enc["num_res_blocks"]),
        "spatial_ds": spatial_ds,
        "spatial_us": spatial_us,
        "tempo_ds": tempo_ds,
        "tempo_us": tempo_us,
        "dropout": float(enc["dropout"]),
        **_regularizer_kwargs(params["regularizer_config"], int(enc["z_channels"]), bool(enc["double_z"]), source),
        "is_causal": layout.causal,
    }
    if variant == "v1.0":
        warnings.warn(f"{source}: {V1_0_CAUSAL_WARNING}", DiffusersSemanticsWarning, stacklevel=3)
    return kwargs


def _regularizer_kwargs(reg_cfg: Mapping[str, Any], z_channels: int, double_z: bool, source: str) -> dict[str, Any]:
    where = f"{source}: regularizer_config"
    cls = get_obj_from_str(reg_cfg["target"])
    params = reg_cfg.get("params") or {}
    if isinstance(cls, type) and issubclass(cls, DiagonalGaussianRegularizer):
        if not double_z:
            raise DiffusersIncompatibleError(
                f"{where}: a KL latent needs double_z: true (mean and log-variance); diffusers splits the encoder "
                "output in two"
            )
        return {"regularizer": "kl", "codebook_size": DIFFUSERS_DEFAULTS["codebook_size"]}  # unused by KL
    if isinstance(cls, type) and issubclass(cls, FSQRegularizer):
        levels = [int(v) for v in params.get("levels", ())]
        if not levels or any(v != 8 for v in levels):
            raise DiffusersIncompatibleError(
                f"{where}: levels={levels}; diffusers' FSQ has 8 levels per channel (codebook_size = 8**z_channels)"
            )
        if len(levels) != z_channels or double_z:
            raise DiffusersIncompatibleError(
                f"{where}: FSQ with {len(levels)} levels needs z_channels: {len(levels)} and double_z: false, "
                f"got z_channels={z_channels}, double_z={double_z}"
            )
        return {"regularizer": "fsq", "codebook_size": 8 ** len(levels)}
    raise DiffusersIncompatibleError(
        f"{where}: target {reg_cfg['target']!r}; diffusers knows the KL ({KL_TARGET}) and FSQ ({FSQ_TARGET}) "
        "regularizers only"
    )


def _unwrap_conv(module: torch.nn.Module) -> torch.nn.Module:
    """The `nn.Conv*` of a causal conv wrapper (or the conv itself)."""
    return getattr(module, "conv", module)


def _variant_of(layout: Any) -> Variant:
    for variant, known in LAYOUTS.items():
        if layout == known:
            return variant
    raise DiffusersIncompatibleError(f"unknown temporal layout {layout}")


def _model_node_of(model: AutoencodingEngine) -> dict[str, Any]:
    """A model config node equivalent to a built model, read from its modules."""
    enc, dec = model.encoder, model.decoder
    variant = _variant_of(enc.layout)
    if _variant_of(dec.layout) != variant:
        raise DiffusersIncompatibleError(f"the encoder is {variant} but the decoder is {_variant_of(dec.layout)}")
    ch = _unwrap_conv(enc.conv_in).out_channels
    upsamplers = [m for m in dec.modules() if isinstance(m, TemporalUpsample)]
    params = {
        "double_z": _unwrap_conv(enc.conv_out).out_channels == 2 * enc.z_channels,
        "z_channels": enc.z_channels,
        "in_channels": enc.in_channels,
        "out_ch": _unwrap_conv(dec.conv_out).out_channels,
        "ch": ch,
        "ch_mult": [dec.up[i].block[0].out_channels // ch for i in range(dec.num_resolutions)],
        "time_downsample_factor": enc.time_downsample_factor,
        "num_res_blocks": enc.num_res_blocks,
        "dropout": enc.mid.block_1.dropout.p,
        "norm_type": "layernorm" if isinstance(enc.norm_out, LayerNorm) else "groupnorm",
        "spatial_ds": list(enc.spatial_ds),
        "tempo_ds": list(enc.tempo_ds),
        "spatial_us": list(dec.spatial_us),
        "tempo_us": list(dec.tempo_us),
        "init_pad_mode": enc.init_pad_mode,
        "interpolation_mode": upsamplers[0].interpolation_mode if upsamplers else "nearest",
        "tanh_out": dec.tanh_out,
        "give_pre_end": dec.give_pre_end,
    }
    reg = model.regularization
    if isinstance(reg, FSQRegularizer):
        reg_cfg: dict[str, Any] = {"target": FSQ_TARGET, "params": {"levels": list(reg.levels)}}
    elif isinstance(reg, DiagonalGaussianRegularizer):
        reg_cfg = {"target": KL_TARGET}
    else:
        raise DiffusersIncompatibleError(f"regularizer {type(reg).__name__} has no diffusers counterpart")
    return {
        "target": ENGINE_TARGETS[variant],
        "params": {
            "encoder_config": {"target": ENCODER_TARGETS[variant], "params": params},
            "decoder_config": {"target": DECODER_TARGETS[variant], "params": params},
            "regularizer_config": reg_cfg,
        },
    }


# --- diffusers kwargs -> our config -----------------------------------------------------------------------------


def config_from_diffusers_kwargs(kwargs: Mapping[str, Any]) -> DictConfig:
    """A full config (`model:` section, official layout) for `AutoencoderVidTok(**kwargs)` or a `.config`.

    Causal models get the v1.1 targets, since diffusers runs v1.1 semantics; non-causal models the non-causal
    ones. Keys starting with `_` (diffusers metadata) are skipped; missing keys take diffusers' defaults.
    """
    unknown = sorted(k for k in kwargs if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS)
    if unknown:
        raise DiffusersIncompatibleError(
            f"AutoencoderVidTok config keys {unknown} are unknown to this mapping (checked with diffusers "
            f"{DIFFUSERS_VERSION})"
        )
    kw = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in kwargs.items() if k in DIFFUSERS_DEFAULTS}}
    causal = bool(kw["is_causal"])
    variant: Variant = "v1.1" if causal else "noncausal"
    ch_mult = [int(m) for m in kw["ch_mult"]]
    L = len(ch_mult)
    defaults = {
        "spatial_ds": list(range(L - 1)),
        "tempo_ds": [L - 2, L - 3],
        "spatial_us": list(range(1, L)),
        "tempo_us": [1, 2],
    }
    lists = {k: defaults[k] if kw[k] is None else [int(i) for i in kw[k]] for k in defaults}
    if not causal:
        changed = [k for k in defaults if lists[k] != defaults[k]]
        if changed:
            raise DiffusersIncompatibleError(
                f"non-causal AutoencoderVidTok with {', '.join(f'{k}={lists[k]}' for k in changed)}: the original's "
                f"(and vidtok's) non-causal models always resample at {defaults}"
            )
    tdf = 2 ** len(lists["tempo_ds"])  # diffusers' temporal_compression_ratio
    for spatial, tempo in (("spatial_ds", "tempo_ds"), ("spatial_us", "tempo_us")):
        factor = 2 ** len([i for i in lists[spatial] if i in lists[tempo]])
        if factor != tdf:
            raise DiffusersIncompatibleError(
                f"AutoencoderVidTok with {spatial}={lists[spatial]}, {tempo}={lists[tempo]} resamples time by "
                f"{factor}, but its temporal_compression_ratio is {tdf}: the model is inconsistent"
            )

    z_channels = int(kw["z_channels"])
    if kw["regularizer"] == "kl":
        if not kw["double_z"]:
            raise DiffusersIncompatibleError("a KL AutoencoderVidTok needs double_z=True")
        regularizer: dict[str, Any] = {"target": KL_TARGET}
    elif kw["regularizer"] == "fsq":
        if 8**z_channels != int(kw["codebook_size"]) or kw["double_z"]:
            raise DiffusersIncompatibleError(
                f"an FSQ AutoencoderVidTok needs codebook_size = 8**z_channels and double_z=False, got "
                f"codebook_size={kw['codebook_size']}, z_channels={z_channels}, double_z={kw['double_z']}"
            )
        regularizer = {"target": FSQ_TARGET, "params": {"levels": [8] * z_channels, **FSQ_TRAINING_PARAMS}}
    else:
        raise DiffusersIncompatibleError(f"unknown AutoencoderVidTok regularizer {kw['regularizer']!r}")

    params: dict[str, Any] = {
        "double_z": bool(kw["double_z"]),
        "z_channels": z_channels,
        "in_channels": int(kw["in_channels"]),
        "out_ch": int(kw["out_channels"]),
        "ch": int(kw["ch"]),
        "ch_mult": ch_mult,
        "time_downsample_factor": tdf,
        "num_res_blocks": int(kw["num_res_blocks"]),
        "dropout": float(kw["dropout"]),
        "use_checkpoint": False,
    }
    if causal:
        params["init_pad_mode"] = "replicate"
        # like the official YAMLs, name the lists only where they differ from the defaults
        params.update({k: lists[k] for k in defaults if lists[k] != defaults[k]})
    params["norm_type"] = "layernorm"
    if causal:
        params["interpolation_mode"] = "trilinear"
    params.update(fix_encoder=False, fix_decoder=False)

    engine_params: dict[str, Any] = {"monitor": "val/rec_loss", "mode": "min", "ignore_keys": []}
    if variant == "v1.1":
        engine_params["use_tiling"] = False
    engine_params.update(
        encoder_config={"target": ENCODER_TARGETS[variant], "params": params},
        decoder_config={"target": DECODER_TARGETS[variant], "params": "${model.params.encoder_config.params}"},
        regularizer_config=regularizer,
        loss_config=OFFICIAL_LOSS_CONFIG,
    )
    return OmegaConf.create(
        {"model": {"base_learning_rate": 1e-5, "target": ENGINE_TARGETS[variant], "params": engine_params}}
    )


# --- weights ----------------------------------------------------------------------------------------------------


def to_diffusers_state_dict(state: Mapping[str, torch.Tensor], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Our (or an official) state dict -> `AutoencoderVidTok`'s: the same entries without `loss.*`/`model_ema.*`.

    With `use_ema`, each weight is taken from its EMA shadow (`model_ema.<key without dots>`) where there is one.
    """
    weights = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    if use_ema:
        shadows = {k: state.get("model_ema." + shadow_name(k)) for k in weights}
        if all(v is None for v in shadows.values()):
            raise ValueError("use_ema: the state dict has no model_ema.* weights (was it trained with ema_decay?)")
        weights = {k: v if shadows[k] is None else shadows[k] for k, v in weights.items()}
    return weights


def from_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`AutoencoderVidTok`'s state dict -> ours: the identity (the names are the original's)."""
    return dict(state)


# --- whole models -----------------------------------------------------------------------------------------------


def _diffusers_class() -> type[AutoencoderVidTok]:
    try:
        from diffusers import AutoencoderVidTok
    except ImportError as err:
        raise ImportError(
            "diffusers is needed for this: pip install 'vidtok[diffusers]' "
            f"(checked with diffusers=={DIFFUSERS_VERSION})"
        ) from err
    return AutoencoderVidTok


def _build_diffusers(kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str) -> AutoencoderVidTok:
    dmodel = _diffusers_class()(**kwargs)
    check_compatible(dmodel.state_dict(), state, source)
    dmodel.load_state_dict(state)
    return dmodel


def _match(module: torch.nn.Module, like: torch.Tensor) -> torch.nn.Module:
    """`module` moved to `like`'s device and dtype, if it is not there (diffusers logs a note on every cast)."""
    param = next(module.parameters())
    if param.device != like.device or param.dtype != like.dtype:
        module = module.to(device=like.device, dtype=like.dtype)
    return module


def to_diffusers(model: AutoencodingEngine) -> AutoencoderVidTok:
    """A diffusers `AutoencoderVidTok` with `model`'s architecture and weights, on its device and dtype, in its
    train/eval mode. Warns for a v1.0 causal model (see `V1_0_CAUSAL_WARNING`)."""
    kwargs = diffusers_kwargs_from_model(model)
    dmodel = _build_diffusers(kwargs, to_diffusers_state_dict(model.state_dict()), "the vidtok model's weights")
    return _match(dmodel, next(model.parameters())).train(model.training)


def config_from_diffusers(dmodel: AutoencoderVidTok) -> DictConfig:
    """The vidtok config of a diffusers model (see `config_from_diffusers_kwargs`)."""
    return config_from_diffusers_kwargs(dict(dmodel.config))


def from_diffusers(dmodel: AutoencoderVidTok) -> AutoencodingEngine:
    """Our `AutoencodingEngine` for a diffusers `AutoencoderVidTok` (v1.1 engine for causal models), with its
    weights, on its device and dtype, in its train/eval mode."""
    model = load_model_from_config(config_from_diffusers(dmodel))
    state = from_diffusers_state_dict(dmodel.state_dict())
    check_compatible(model.state_dict(), state, "the diffusers model's weights")
    model.load_state_dict(state)
    return _match(model, next(dmodel.parameters())).train(dmodel.training)


def export_to_diffusers(
    config: str | Path | DictConfig,
    ckpt: str | Path,
    output_dir: str | Path,
    use_ema: bool = False,
    safe_serialization: bool = True,
) -> AutoencoderVidTok:
    """Write the model of `config` with the weights of `ckpt` as a diffusers model folder (`save_pretrained`)."""
    kwargs = diffusers_kwargs_from_config(config)
    state = to_diffusers_state_dict(read_state_dict(ckpt), use_ema=use_ema)
    dmodel = _build_diffusers(kwargs, state, f"checkpoint {str(ckpt)!r}")
    dmodel.save_pretrained(str(output_dir), safe_serialization=safe_serialization)
    logger.info("wrote diffusers AutoencoderVidTok (%d tensors) to %s", len(state), output_dir)
    return dmodel


def load_diffusers(source: str | Path, allow_download: bool = False) -> AutoencoderVidTok:
    """diffusers' `AutoencoderVidTok.from_pretrained(source)`: a local `save_pretrained` folder, or a Hub id
    already in the Hugging Face cache. The Hub is asked (and files fetched) only with `allow_download=True`.

    Raises:
        DiffusersSourceError: `source` is neither a folder nor cached, and downloads are off.
    """
    try:
        return _diffusers_class().from_pretrained(str(source), local_files_only=not allow_download)
    except OSError as err:
        if allow_download or Path(source).exists():
            raise
        raise DiffusersSourceError(
            f"diffusers model {str(source)!r} is neither a local folder nor in the Hugging Face cache, and downloads "
            "are off: pass the folder that save_pretrained wrote, or allow fetching it from the Hub "
            "(allow_download=True)"
        ) from err


def import_from_diffusers(
    source: str | Path | AutoencoderVidTok, ckpt_out: str | Path, config_out: str | Path, allow_download: bool = False
) -> AutoencodingEngine:
    """Write a diffusers model (a local `save_pretrained` folder, a cached Hub id, or the model) as a vidtok
    checkpoint (`.ckpt` with a `state_dict`, or `.safetensors`) plus the config that builds it. Nothing is
    downloaded unless `allow_download` (see :func:`load_diffusers`)."""
    dmodel = load_diffusers(source, allow_download) if isinstance(source, str | Path) else source
    config = config_from_diffusers(dmodel)
    model = from_diffusers(dmodel)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ckpt_out, config_out = Path(ckpt_out), Path(config_out)
    ckpt_out.parent.mkdir(parents=True, exist_ok=True)
    config_out.parent.mkdir(parents=True, exist_ok=True)
    if ckpt_out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(ckpt_out))
    else:
        torch.save({"state_dict": state}, ckpt_out)
    OmegaConf.save(config, config_out)
    logger.info("wrote %s (%d tensors) and %s", ckpt_out, len(state), config_out)
    return model
