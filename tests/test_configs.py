"""The shipped YAML configs: they load, resolve, and carry the official VidTok hyperparameters.

Nothing here builds a model. The expected values come from the per-config table of the spec
(`VIDTOK_SPEC.md` §2) and from the released microsoft/VidTok configs; the optional last test
cross-checks each config against the state-dict key list the original produced from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from tests.conftest import CONFORMANCE
from vidtok.util import get_obj_from_str, iter_targets

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
DECODER_PARAMS_REF = "${model.params.encoder_config.params}"

ENGINE_V10 = "vidtok.models.autoencoder.AutoencodingEngine"
ENGINE_V11 = "vidtok.models.autoencoder_v1_1.AutoencodingEngine"
CAUSAL_V10 = "vidtok.modules.model_3dcausal"
CAUSAL_V11 = "vidtok.modules.model_3dcausal_v1_1"
NONCAUSAL = "vidtok.modules.model_3dnoncausal"
KL_TARGET = "vidtok.modules.regularizers.DiagonalGaussianRegularizer"
FSQ_TARGET = "vidtok.modules.regularizers.FSQRegularizer"


@dataclass(frozen=True)
class Expected:
    """What one config must say. `None` for a sampling list means the key is absent (code default)."""

    version: str  # "v1.0" or "v1.1"
    regularizer: str  # "kl" or "fsq"
    causal: bool
    z_channels: int
    ch_mult: tuple[int, ...]
    time_downsample_factor: int
    tempo_ds: tuple[int, ...] | None = None
    tempo_us: tuple[int, ...] | None = None
    spatial_ds: tuple[int, ...] | None = None
    spatial_us: tuple[int, ...] | None = None


L4 = (1, 2, 4, 4)
L5 = (1, 2, 4, 4, 4)

EXPECTED: dict[str, Expected] = {
    # v1.0, causal KL
    "vidtok_kl_causal_488_4chn": Expected("v1.0", "kl", True, 4, L4, 4),
    "vidtok_kl_causal_488_8chn": Expected("v1.0", "kl", True, 8, L4, 4),
    "vidtok_kl_causal_488_16chn": Expected("v1.0", "kl", True, 16, L4, 4),
    "vidtok_kl_causal_288_8chn": Expected("v1.0", "kl", True, 8, L4, 2, tempo_ds=(1,), tempo_us=(2,)),
    "vidtok_kl_causal_444_4chn": Expected("v1.0", "kl", True, 4, L4, 4, spatial_ds=(1, 2), spatial_us=(1, 2)),
    "vidtok_kl_causal_41616_4chn": Expected("v1.0", "kl", True, 4, L5, 4),
    # v1.0, non-causal KL
    "vidtok_kl_noncausal_488_4chn": Expected("v1.0", "kl", False, 4, L4, 4),
    "vidtok_kl_noncausal_488_16chn": Expected("v1.0", "kl", False, 16, L4, 4),
    "vidtok_kl_noncausal_41616_4chn": Expected("v1.0", "kl", False, 4, L5, 4),
    "vidtok_kl_noncausal_41616_16chn": Expected("v1.0", "kl", False, 16, L5, 4),
    # v1.0, FSQ
    "vidtok_fsq_causal_488_262144": Expected("v1.0", "fsq", True, 6, L4, 4),
    "vidtok_fsq_causal_488_32768": Expected("v1.0", "fsq", True, 5, L4, 4),
    "vidtok_fsq_causal_488_4096": Expected("v1.0", "fsq", True, 4, L4, 4),
    "vidtok_fsq_causal_41616_262144": Expected("v1.0", "fsq", True, 6, L5, 4),
    "vidtok_fsq_noncausal_488_262144": Expected("v1.0", "fsq", False, 6, L4, 4),
    "vidtok_fsq_noncausal_41616_262144": Expected("v1.0", "fsq", False, 6, L5, 4),
    # v1.1 (all causal)
    "vidtok_kl_causal_488_4chn_v1_1": Expected("v1.1", "kl", True, 4, L4, 4),
    "vidtok_kl_causal_488_16chn_v1_1": Expected("v1.1", "kl", True, 16, L4, 4),
    "vidtok_kl_causal_41616_16chn_v1_1": Expected("v1.1", "kl", True, 16, L5, 4),
    "vidtok_kl_causal_288_8chn_v1_1": Expected("v1.1", "kl", True, 8, L4, 2, tempo_ds=(1,), tempo_us=(2,)),
    "vidtok_fsq_causal_488_32768_v1_1": Expected("v1.1", "fsq", True, 5, L4, 4),
    "vidtok_fsq_causal_41616_262144_v1_1": Expected("v1.1", "fsq", True, 6, L5, 4),
    "vidtok_fsq_causal_888_32768_v1_1": Expected("v1.1", "fsq", True, 5, L4, 8, tempo_ds=(0, 1, 2), tempo_us=(1, 2, 3)),
}

NAMES = sorted(EXPECTED)


def config_path(name: str) -> Path:
    sub = "vidtok_v1_1" if EXPECTED[name].version == "v1.1" else ""
    return CONFIG_DIR / sub / f"{name}.yaml"


def load(name: str) -> DictConfig:
    return OmegaConf.load(config_path(name))


def resolved(name: str) -> dict:
    return OmegaConf.to_container(load(name), resolve=True, throw_on_missing=True)


def encoder_params(name: str) -> dict:
    return resolved(name)["model"]["params"]["encoder_config"]["params"]


def resample_levels(params: dict, causal: bool) -> tuple[set[int], set[int], set[int], set[int]]:
    """Which levels resample, filling in the original code's defaults where the YAML is silent.

    Returns (spatial_ds, tempo_ds, spatial_us, tempo_us) as level indices, for ch_mult of length L:
    spatial down at every level but the last, temporal down at L-2 and L-3, spatial up at 1..L-1 and
    temporal up at 1 and 2. Non-causal models ignore the YAML lists and always use these defaults.
    """
    n = len(params["ch_mult"])
    defaults = {"spatial_ds": set(range(n - 1)), "tempo_ds": {n - 2, n - 3}}
    defaults |= {"spatial_us": set(range(1, n)), "tempo_us": {1, 2}}
    keys = ("spatial_ds", "tempo_ds", "spatial_us", "tempo_us")
    if not causal:
        return tuple(defaults[k] for k in keys)
    return tuple(set(params[k]) if k in params else defaults[k] for k in keys)


def name_ratios(name: str) -> tuple[int, int]:
    """(temporal, spatial) compression from the file name: `488` is 4x8x8, `41616` is 4x16x16."""
    digits = re.search(r"_(\d{3,5})_", name).group(1)
    temporal, spatial = digits[0], digits[1:]
    half = len(spatial) // 2
    assert spatial[:half] == spatial[half:], f"{name}: height and width ratios differ"
    return int(temporal), int(spatial[:half])


# ---------------------------------------------------------------------------------------------
# Presence and loading
# ---------------------------------------------------------------------------------------------


def test_exactly_the_official_configs_are_shipped():
    # configs/tiny, configs/small and configs/examples hold our CPU-sized configs; every other YAML is an official one
    found = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")
             if p.parent.name not in ("tiny", "small", "examples")}
    expected = {config_path(n).relative_to(CONFIG_DIR).as_posix() for n in NAMES}
    assert found == expected, f"missing: {sorted(expected - found)}, unexpected: {sorted(found - expected)}"
    assert sum(EXPECTED[n].version == "v1.0" for n in NAMES) == 16
    assert sum(EXPECTED[n].version == "v1.1" for n in NAMES) == 7


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_yaml_loads_and_resolves(path: Path):
    cfg = OmegaConf.load(path)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert set(container) == {"model", "data", "lightning"}
    for section in ("model", "data"):
        assert isinstance(container[section]["target"], str) and "." in container[section]["target"]
        assert isinstance(container[section]["params"], dict)
    assert {"strategy", "modelcheckpoint", "callbacks", "trainer"} <= set(container["lightning"])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_target_imports(path: Path):
    # the official target paths (vidtok.modules.losses.*, vidtok.modules.logger.*, ...) outlive the code's moves
    found = {}
    for section, node in OmegaConf.to_container(OmegaConf.load(path), resolve=True).items():
        found |= dict(iter_targets(node, section))
    assert {"model", "model.params.encoder_config", "data", "data.params.train"} <= set(found)
    for where, target in found.items():
        assert callable(get_obj_from_str(target)), f"{path.name}: {where}.target = {target!r} is not callable"


@pytest.mark.parametrize("name", NAMES)
def test_decoder_reuses_encoder_params(name: str):
    raw = OmegaConf.to_container(load(name), resolve=False)
    assert raw["model"]["params"]["decoder_config"]["params"] == DECODER_PARAMS_REF
    params = resolved(name)["model"]["params"]
    assert params["decoder_config"]["params"] == params["encoder_config"]["params"]
    assert params["decoder_config"]["params"]["z_channels"] == EXPECTED[name].z_channels


@pytest.mark.parametrize("name", NAMES)
def test_numbers_parse_as_numbers(name: str):
    # `1e-5` has no dot: plain YAML 1.1 would read it as a string; OmegaConf's loader must give a float.
    model = resolved(name)["model"]
    assert model["base_learning_rate"] == pytest.approx(1e-5) and isinstance(model["base_learning_rate"], float)
    weights = model["params"]["loss_config"]["params"]["regularization_weights"]
    assert weights == {"aux_loss": 1.0, "kl_loss": pytest.approx(1e-6)}


# ---------------------------------------------------------------------------------------------
# Model section
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_engine_and_module_targets(name: str):
    exp = EXPECTED[name]
    model = resolved(name)["model"]
    encoder_target = model["params"]["encoder_config"]["target"]
    decoder_target = model["params"]["decoder_config"]["target"]
    if exp.version == "v1.1":
        assert model["target"] == ENGINE_V11
        module, enc, dec = CAUSAL_V11, "EncoderCausal3DPadding", "DecoderCausal3DPadding"
    elif exp.causal:
        assert model["target"] == ENGINE_V10
        module, enc, dec = CAUSAL_V10, "EncoderCausal3DPadding", "DecoderCausal3DPadding"
    else:
        assert model["target"] == ENGINE_V10
        module, enc, dec = NONCAUSAL, "Encoder3D", "Decoder3D"
    assert encoder_target == f"{module}.{enc}"
    assert decoder_target == f"{module}.{dec}"
    assert ("noncausal" in name) == (not exp.causal)


@pytest.mark.parametrize("name", NAMES)
def test_engine_params(name: str):
    params = resolved(name)["model"]["params"]
    expected_keys = {"monitor", "mode", "ignore_keys", "encoder_config", "decoder_config"}
    expected_keys |= {"regularizer_config", "loss_config"}
    if EXPECTED[name].version == "v1.1":
        expected_keys.add("use_tiling")
        assert params["use_tiling"] is False
    # No `is_causal`, `ckpt_path` or `ema_decay`: the released files leave those out or commented.
    assert set(params) == expected_keys
    assert params["monitor"] == "val/rec_loss"
    assert params["mode"] == "min"
    assert params["ignore_keys"] == []


@pytest.mark.parametrize("name", NAMES)
def test_encoder_hyperparameters(name: str):
    exp = EXPECTED[name]
    p = encoder_params(name)
    assert p["z_channels"] == exp.z_channels
    assert p["double_z"] is (exp.regularizer == "kl")
    assert tuple(p["ch_mult"]) == exp.ch_mult
    assert p["time_downsample_factor"] == exp.time_downsample_factor
    for key in ("tempo_ds", "tempo_us", "spatial_ds", "spatial_us"):
        want = getattr(exp, key)
        if want is None:
            assert key not in p, f"{name}: {key} is not set in the original config"
        else:
            assert tuple(p[key]) == want
    shared = {"in_channels": 3, "out_ch": 3, "ch": 128, "num_res_blocks": 2, "dropout": 0.0}
    shared |= {"use_checkpoint": False, "norm_type": "layernorm", "fix_encoder": False, "fix_decoder": False}
    assert {k: p[k] for k in shared} == shared
    assert p.get("init_pad_mode") == ("replicate" if exp.causal else None)
    assert p.get("interpolation_mode") == ("trilinear" if exp.version == "v1.1" else None)
    assert "embed_dim" not in p


@pytest.mark.parametrize("name", NAMES)
def test_file_name_matches_compression(name: str):
    exp = EXPECTED[name]
    temporal, spatial = name_ratios(name)
    params = encoder_params(name)
    spatial_ds, tempo_ds, spatial_us, tempo_us = resample_levels(params, exp.causal)
    assert 2 ** len(tempo_ds) == params["time_downsample_factor"] == temporal
    assert 2 ** len(spatial_ds) == spatial
    # the decoder undoes exactly what the encoder does
    assert len(spatial_us) == len(spatial_ds) and len(tempo_us) == len(tempo_ds)
    levels = set(range(len(params["ch_mult"])))
    assert tempo_ds <= spatial_ds <= levels, "temporal downsampling only happens at spatially downsampled levels"
    assert tempo_us <= spatial_us <= levels
    if exp.regularizer == "kl":
        assert name.removesuffix("_v1_1").endswith(f"_{params['z_channels']}chn")


@pytest.mark.parametrize("name", NAMES)
def test_regularizer(name: str):
    exp = EXPECTED[name]
    reg = resolved(name)["model"]["params"]["regularizer_config"]
    if exp.regularizer == "kl":
        assert reg == {"target": KL_TARGET}
        return
    assert reg["target"] == FSQ_TARGET
    params = reg["params"]
    levels = params.pop("levels")
    codebook_size = int(re.search(r"_fsq_\w+?_\d+_(\d+)", name).group(1))
    assert levels == [8] * exp.z_channels
    assert math.prod(levels) == codebook_size
    assert len(levels) == exp.z_channels, "FSQ has no projection: one latent channel per level"
    assert params == {
        "entropy_loss_weight": 0.1,
        "entropy_loss_annealing_steps": 2000,
        "entropy_loss_annealing_factor": 3,
        "commitment_loss_weight": 0.25,
    }


@pytest.mark.parametrize("name", NAMES)
def test_loss(name: str):
    loss = resolved(name)["model"]["params"]["loss_config"]
    assert loss["target"] == "vidtok.modules.losses.GeneralLPIPSWithDiscriminator"
    assert loss["params"] == {
        "dims": 3,
        "perceptual_weight": 1.0,
        "disc_start": 20001,
        "disc_weight": 0.2,
        "disc_type": "2d",
        "learn_logvar": True,
        "gen_loss_cross_entropy": True,
        "lecam_loss_weight": 0.005,
        "regularization_weights": {"aux_loss": 1.0, "kl_loss": 1e-6},
    }


# ---------------------------------------------------------------------------------------------
# Data and lightning sections
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_data_section(name: str):
    exp = EXPECTED[name]
    data = resolved(name)["data"]
    frames = 33 if exp.version == "v1.1" else (17 if exp.causal else 16)
    assert data["target"] == "vidtok.data.datamodule.DataModuleFromConfig"
    assert data["params"]["batch_size"] == (1 if exp.version == "v1.1" else 2)
    assert data["params"]["num_workers"] == 12
    for split, index, fps in (("train", "1", 3), ("validation", "2", 8)):
        ds = data["params"][split]
        assert ds["target"] == "vidtok.data.vidtok.VidTokDataset"
        assert ds["params"]["data_dir"] == f"DATA_DIR_{index}"
        assert ds["params"]["meta_path"] == f"META_PATH_{index}"
        assert ds["params"]["video_params"] == {
            "input_height": f"INPUT_HEIGHT_{index}",
            "input_width": f"INPUT_WIDTH_{index}",
            "sample_num_frames": frames,
            "sample_fps": fps,
        }
    assert "start_index" not in data["params"]["train"]["params"]
    assert data["params"]["validation"]["params"]["start_index"] == 0
    if exp.causal:
        assert (frames - 1) % exp.time_downsample_factor == 0, "causal clips are 1 + k * tdf frames"
    else:
        assert frames % exp.time_downsample_factor == 0


@pytest.mark.parametrize("name", NAMES)
def test_lightning_section(name: str):
    lightning = resolved(name)["lightning"]
    assert lightning["strategy"] == {
        "target": "lightning.pytorch.strategies.DDPStrategy",
        "params": {"find_unused_parameters": True},
    }
    assert lightning["modelcheckpoint"] == {"params": {"every_n_train_steps": 5000}}
    logger = lightning["callbacks"]["image_logger"]
    assert logger["target"] == "vidtok.modules.logger.ImageVideoLogger"
    assert logger["params"]["batch_frequency"] == 5000
    assert logger["params"]["max_samples"] == 2
    assert logger["params"]["log_images_kwargs"] == {"n_rows": 17 if EXPECTED[name].causal else 16}
    assert lightning["trainer"] == {
        "precision": "bf16-mixed",
        "devices": "auto",
        "num_nodes": 1,
        "benchmark": True,
        "num_sanity_val_steps": 10,
        "val_check_interval": 2000,
        "check_val_every_n_epoch": None,
        "accumulate_grad_batches": 1,
        "max_epochs": 1000,
    }


# ---------------------------------------------------------------------------------------------
# Cross-check against the state-dict keys the original built from its own copy of each config
# ---------------------------------------------------------------------------------------------


def read_key_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return shapes


def levels_with(shapes: dict[str, tuple[int, ...]], pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for key in shapes if (m := regex.fullmatch(key))}


@pytest.mark.parametrize("name", NAMES)
def test_config_matches_original_state_dict_layout(name: str):
    exp = EXPECTED[name]
    sub = "v1_1/" if exp.version == "v1.1" else ""
    shapes = read_key_shapes(CONFORMANCE / "keys" / f"{sub}{name}.tsv")
    p = encoder_params(name)
    wrap = ".conv" if exp.causal else ""  # causal 3D convs wrap an inner `conv`
    out_ch = p["z_channels"] * (2 if p["double_z"] else 1)
    assert shapes[f"encoder.conv_out{wrap}.weight"][0] == out_ch
    assert shapes[f"decoder.conv_in{wrap}.weight"][1] == p["z_channels"]
    # one encoder level per ch_mult entry, each ch * mult wide
    assert levels_with(shapes, r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight") == set(range(len(p["ch_mult"])))
    for level, mult in enumerate(p["ch_mult"]):
        assert shapes[f"encoder.down.{level}.block.0.conv1.weight"][0] == p["ch"] * mult
    spatial_ds, tempo_ds, spatial_us, tempo_us = resample_levels(p, exp.causal)
    assert levels_with(shapes, r"encoder\.down\.(\d+)\.downsample\.conv\.weight") == spatial_ds
    assert levels_with(shapes, r"encoder\.down_temporal\.(\d+)\.downsample\.mix_factor") == tempo_ds
    assert levels_with(shapes, r"decoder\.up\.(\d+)\.upsample\.conv\.weight") == spatial_us
    assert levels_with(shapes, r"decoder\.up_temporal\.(\d+)\.upsample\.mix_factor") == tempo_us
    # FSQ and KL add no parameters of their own
    assert not any(key.startswith("regularization.") for key in shapes)
