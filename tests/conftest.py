"""Shared fixtures: where the conformance vectors and sample videos live, and tiny models for fast tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def shared_dir() -> Path:
    """`../shared` beside the repository (CI lays it there), or `$VIDTOK_SHARED`."""
    return Path(os.environ.get("VIDTOK_SHARED", REPO.parent / "shared"))


def require_shared(*parts: str) -> Path:
    """A path under shared/; skipped when absent on a developer machine, a failure under CI."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing (set VIDTOK_SHARED to the folder holding conformance/ and data/)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    path = require_shared("conformance")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))  # for `import recipe`
    return path


def tiny_model_config(causal: bool = True, regularizer: str = "kl", variant: str = "v1.0") -> dict:
    """A model config with the official structure but ch=8, two levels (spatial ×2, temporal ×2)."""
    params = {
        "double_z": regularizer == "kl",
        "z_channels": 4 if regularizer == "kl" else 3,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 8,
        "ch_mult": [1, 2, 2],
        "time_downsample_factor": 2,
        "num_res_blocks": 1,
        "dropout": 0.0,
        "norm_type": "layernorm",
        "tempo_ds": [0],
        "tempo_us": [1],
    }
    if causal:
        module = "model_3dcausal" if variant == "v1.0" else "model_3dcausal_v1_1"
        if variant == "v1.1":
            params["interpolation_mode"] = "trilinear"
        encoder = f"vidtok.modules.{module}.EncoderCausal3DPadding"
        decoder = f"vidtok.modules.{module}.DecoderCausal3DPadding"
    else:
        encoder, decoder = "vidtok.modules.model_3dnoncausal.Encoder3D", "vidtok.modules.model_3dnoncausal.Decoder3D"
        params["time_downsample_factor"] = 4  # non-causal models resample time at fixed levels [L-2, L-3]
    if regularizer == "kl":
        reg = {"target": "vidtok.modules.regularizers.DiagonalGaussianRegularizer"}
    else:
        reg = {"target": "vidtok.modules.regularizers.FSQRegularizer", "params": {"levels": [8, 8, 8]}}
    engine = "vidtok.models.autoencoder.AutoencodingEngine"
    return {
        "target": engine,
        "params": {
            "encoder_config": {"target": encoder, "params": params},
            "decoder_config": {"target": decoder, "params": params},
            "regularizer_config": reg,
        },
    }
