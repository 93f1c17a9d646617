"""What the tests share: where the conformance vectors and the sample video are (both ship with the repository),
and tiny model configs for fast tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# the original VidTok's outputs for every official config, reduced (see its README.md)
CONFORMANCE = REPO / "tests" / "data" / "conformance"
# 75 frames of 256x256 at 25 fps (see assets/README.md)
EXAMPLE_VIDEO = REPO / "assets" / "example.mp4"


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
