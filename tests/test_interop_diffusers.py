"""Interop with diffusers' `AutoencoderVidTok`: config mapping, key identity, and output parity on recipe weights.

The parity cases run full-size models on 32×32 clips (a few seconds each on CPU); everything else uses tiny models.
"""

from __future__ import annotations

import copy
import inspect
import sys
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("diffusers")

from diffusers import AutoencoderVidTok  # noqa: E402

from scripts import convert_diffusers  # noqa: E402
from tests.conftest import CONFIGS, CONFORMANCE, tiny_model_config  # noqa: E402
from tests.data.conformance import recipe  # noqa: E402
from vidtok.api import load_model_from_config  # noqa: E402
from vidtok.checkpoint import read_state_dict  # noqa: E402
from vidtok.interop import diffusers as interop  # noqa: E402

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "vidtok_v1_1").glob("*.yaml"))

# config, input (T, H, W)
PARITY_CASES = {
    "kl_causal_v1_1": ("vidtok_v1_1/vidtok_kl_causal_488_4chn_v1_1.yaml", (17, 32, 32)),
    "fsq_causal_v1_1": ("vidtok_v1_1/vidtok_fsq_causal_488_32768_v1_1.yaml", (17, 32, 32)),
    "kl_noncausal_v1_0": ("vidtok_kl_noncausal_488_4chn.yaml", (16, 32, 32)),
}


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """max |actual - expected| <= rel · max |expected|."""
    assert actual.shape == expected.shape
    diff, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert diff <= rel * scale, f"max |diff| = {diff:.3g} > {rel} · max |expected| = {rel * scale:.3g}"


def is_v1_0_causal(path: Path) -> bool:
    return "noncausal" not in path.name and "v1_1" not in path.name


def keys_tsv(path: Path) -> Path:
    sub = "v1_1" if path.stem.endswith("_v1_1") else ""
    return CONFORMANCE / "keys" / sub / f"{path.stem}.tsv"


def kwargs_quietly(config) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", interop.DiffusersSemanticsWarning)
        return interop.diffusers_kwargs_from_config(config)


def full_config(node: dict):
    return OmegaConf.create({"model": node})


@torch.no_grad()
def ours_outputs(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    z, log = model.encode(x, sample=False)
    out = {"z": z, "recon": model.decode(z)[:, :, -x.shape[2]:]}
    if model.is_fsq:
        out["indices"] = log["indices"]
    return out


@torch.no_grad()
def diffusers_outputs(dmodel, x: torch.Tensor, via_forward: bool = True) -> dict[str, torch.Tensor]:
    """Through diffusers' own `forward` (its padding and cropping), as a user would call it. Without
    `via_forward` the clip is encoded once and the latent decoded with `decode`, which is the same computation
    when no end padding is needed (causal T = 1 + k·tcr, non-causal T = 16k) at half the cost."""
    fsq = dmodel.config.regularizer == "fsq"
    encoded = dmodel(x, encoder_mode=True, sample_posterior=False)
    z = encoded[0] if fsq else encoded
    recon = dmodel(x, sample_posterior=False).sample if via_forward else dmodel.decode(z)
    out = {"z": z, "recon": recon}
    if fsq:
        out["indices"] = encoded[1]
    return out


def assert_same_outputs(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    if "indices" in ours:
        assert torch.equal(ours["indices"].long(), theirs["indices"].long())
    assert_close_rel(ours["z"], theirs["z"])
    assert_close_rel(ours["recon"], theirs["recon"])


# --- full-size parity on recipe weights -------------------------------------------------------------------------


class Case:
    """One parity case: our model with recipe weights, its diffusers export, and the model imported back."""

    def __init__(self, config: Path, shape: tuple[int, int, int], recipe):
        self.config = config
        self.ours = recipe.fill_parameters_(load_model_from_config(config).eval())
        with warnings.catch_warnings():
            warnings.simplefilter("error", interop.DiffusersSemanticsWarning)  # these cases are exact
            self.dmodel = interop.to_diffusers(self.ours)
        self.back = interop.from_diffusers(self.dmodel)
        self.x = recipe.make_input(*shape)
        self._theirs: dict[str, torch.Tensor] | None = None

    @property
    def theirs(self) -> dict[str, torch.Tensor]:
        if self._theirs is None:
            self._theirs = diffusers_outputs(self.dmodel, self.x, via_forward=False)
        return self._theirs


@pytest.fixture(scope="module", params=list(PARITY_CASES))
def case(request) -> Case:
    name, shape = PARITY_CASES[request.param]
    return Case(CONFIGS / name, shape, recipe)


@pytest.mark.slow
def test_state_dict_is_the_original_minus_loss(case: Case) -> None:
    official = [line.split("\t")[0] for line in keys_tsv(case.config).read_text().splitlines()]
    expected = [k for k in official if not k.startswith("loss.")]
    theirs = case.dmodel.state_dict()
    assert list(theirs) == expected  # names and order
    ours = case.ours.state_dict()
    assert list(ours) == expected
    for key, value in theirs.items():
        assert value.dtype == ours[key].dtype and torch.equal(value, ours[key]), key
    back = case.back.state_dict()
    assert list(back) == expected
    assert all(torch.equal(back[k], theirs[k]) for k in expected)


@pytest.mark.slow
def test_to_diffusers_matches_ours(case: Case) -> None:
    assert case.dmodel.training is False
    assert_same_outputs(ours_outputs(case.ours, case.x), case.theirs)


@pytest.mark.slow
def test_from_diffusers_matches_diffusers(case: Case) -> None:
    back = case.back
    assert back.training is False
    expected_engine = "autoencoder_v1_1" if back.is_causal else "autoencoder"
    assert type(back).__module__ == f"vidtok.models.{expected_engine}"
    assert_same_outputs(ours_outputs(back, case.x), case.theirs)
    if back.is_fsq:  # token -> code lookup is the same
        codes = back.regularization.indices_to_codes(case.theirs["indices"])
        assert torch.equal(codes, case.dmodel.indices_to_latent(case.theirs["indices"]))


# --- config mapping ---------------------------------------------------------------------------------------------


def test_diffusers_defaults_are_the_installed_ones() -> None:
    params = inspect.signature(AutoencoderVidTok.__init__).parameters
    installed = {k: p.default for k, p in params.items() if k != "self"}
    assert installed == interop.DIFFUSERS_DEFAULTS


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_mapping_round_trips(path: Path) -> None:
    if is_v1_0_causal(path):
        with pytest.warns(interop.DiffusersSemanticsWarning, match="v1.1 semantics"):
            kwargs = interop.diffusers_kwargs_from_config(path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", interop.DiffusersSemanticsWarning)
            kwargs = interop.diffusers_kwargs_from_config(path)
    cfg = OmegaConf.load(path)
    enc = cfg.model.params.encoder_config.params
    assert kwargs["out_channels"] == enc.out_ch and kwargs["ch_mult"] == list(enc.ch_mult)
    assert kwargs["is_causal"] == ("noncausal" not in path.name)
    assert 2 ** len(kwargs["tempo_ds"]) == enc.time_downsample_factor
    if kwargs["regularizer"] == "fsq":
        assert kwargs["codebook_size"] == 8 ** enc.z_channels

    back = interop.config_from_diffusers_kwargs(kwargs)
    assert kwargs_quietly(back) == kwargs
    back_params = OmegaConf.to_container(back.model.params.encoder_config.params)
    official_params = OmegaConf.to_container(enc)
    if is_v1_0_causal(path):  # comes back as the v1.1 model of the same architecture
        assert back.model.target == interop.ENGINE_TARGETS["v1.1"]
        official_params["interpolation_mode"] = "trilinear"
    else:  # comes back as the official config
        assert back.model.target == cfg.model.target
        assert back.model.params.encoder_config.target == cfg.model.params.encoder_config.target
        assert OmegaConf.to_container(back.model.params.regularizer_config) == OmegaConf.to_container(
            cfg.model.params.regularizer_config
        )
        assert back.model.params.loss_config == cfg.model.params.loss_config
    assert back_params == official_params


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_config_builds_in_diffusers_with_the_original_keys(path: Path) -> None:
    kwargs = kwargs_quietly(path)
    if kwargs["regularizer"] == "fsq":
        # FSQ's constructor needs real tensors; its state dict is the KL one with z (not 2z) output channels
        kwargs = {**kwargs, "regularizer": "kl", "double_z": False}
    with torch.device("meta"):
        dmodel = AutoencoderVidTok(**kwargs)
    expected = []
    for line in keys_tsv(path).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        if not key.startswith("loss."):
            expected.append((key, tuple(int(s) for s in shape.split(",") if s), dtype))
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in dmodel.state_dict().items()]
    assert got == expected


@pytest.mark.parametrize(
    "causal, regularizer, variant",
    [(True, "kl", "v1.0"), (True, "fsq", "v1.1"), (True, "kl", "v1.1"), (False, "fsq", "v1.0")],
)
def test_kwargs_from_a_built_model_equal_those_from_its_config(causal: bool, regularizer: str, variant: str) -> None:
    node = tiny_model_config(causal, regularizer, variant)
    model = load_model_from_config(full_config(node))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", interop.DiffusersSemanticsWarning)
        assert interop.diffusers_kwargs_from_model(model) == interop.diffusers_kwargs_from_config(node)


def _tiny(causal=True, regularizer="kl", variant="v1.1", **changes) -> dict:
    node = copy.deepcopy(tiny_model_config(causal, regularizer, variant))
    node["params"]["encoder_config"]["params"].update(changes)
    node["params"]["decoder_config"]["params"] = node["params"]["encoder_config"]["params"]
    return node


def _tiny_fsq_levels(levels: list[int]) -> dict:
    node = _tiny(regularizer="fsq")
    node["params"]["regularizer_config"]["params"]["levels"] = levels
    return node


@pytest.mark.parametrize(
    "node, message",
    [
        (_tiny(norm_type="groupnorm"), "LayerNorm only"),
        (_tiny(tanh_out=True), "tanh_out"),
        (_tiny(interpolation_mode="nearest"), "upsamples time linearly"),
        (_tiny(init_pad_mode="constant"), "init_pad_mode"),
        (_tiny(double_z=False), "double_z: true"),
        (_tiny(tempo_ds=[0, 5]), "also in spatial_ds"),
        (_tiny_fsq_levels([8, 8, 4]), "8 levels per channel"),
    ],
    ids=["groupnorm", "tanh_out", "v1_1_nearest", "init_pad_constant", "kl_single_z", "tempo_ds_not_spatial",
         "fsq_levels"],
)
def test_what_diffusers_cannot_express_is_refused(node: dict, message: str) -> None:
    with pytest.raises(interop.DiffusersIncompatibleError, match=message):
        interop.diffusers_kwargs_from_config(node)


def test_encoder_decoder_mismatch_is_refused() -> None:
    node = _tiny()
    node["params"]["decoder_config"]["params"] = {**node["params"]["encoder_config"]["params"], "ch": 16}
    with pytest.raises(interop.DiffusersIncompatibleError, match=r"differ in \['ch'\]"):
        interop.diffusers_kwargs_from_config(node)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"is_causal": False, "tempo_ds": [0]}, "always resample"),
        ({"regularizer": "fsq", "z_channels": 6, "double_z": False, "codebook_size": 300000}, "8\\*\\*z_channels"),
        ({"regularizer": "kl", "double_z": False}, "double_z=True"),
        ({"tempo_ds": [0, 1, 5]}, "inconsistent"),
        ({"new_option": 1}, "unknown"),
    ],
)
def test_what_vidtok_cannot_express_is_refused(changes: dict, message: str) -> None:
    with pytest.raises(interop.DiffusersIncompatibleError, match=message):
        interop.config_from_diffusers_kwargs({**interop.DIFFUSERS_DEFAULTS, **changes})


def test_diffusers_metadata_keys_are_skipped() -> None:
    kwargs = {**interop.DIFFUSERS_DEFAULTS, "_class_name": "AutoencoderVidTok", "_diffusers_version": "0.42.1"}
    cfg = interop.config_from_diffusers_kwargs(kwargs)
    assert cfg.model.params.encoder_config.target == interop.ENCODER_TARGETS["v1.1"]


# --- semantics on tiny models -----------------------------------------------------------------------------------


def _tiny_model(variant: str, regularizer: str = "kl"):
    model = load_model_from_config(full_config(tiny_model_config(True, regularizer, variant)))
    return recipe.fill_parameters_(model.eval())


@pytest.mark.parametrize("regularizer", ["kl", "fsq"])
def test_v1_1_forward_matches_for_1_plus_k_tcr_frames_only(regularizer: str) -> None:
    """diffusers' causal forward equals ours for T = 1 + k·tcr; for other T it pads the end and its latent is longer,
    as the module docstring says (tiny model: tcr 2)."""
    model = _tiny_model("v1.1", regularizer)
    dmodel = interop.to_diffusers(model)
    for T in (1, 5, 9):
        x = recipe.make_input(T, 16, 16)
        theirs = diffusers_outputs(dmodel, x)
        assert_same_outputs(ours_outputs(model, x), theirs)
        assert_same_outputs(diffusers_outputs(dmodel, x, via_forward=False), theirs)
    x = recipe.make_input(8, 16, 16)
    ours, theirs = ours_outputs(model, x), diffusers_outputs(dmodel, x)
    assert ours["recon"].shape == theirs["recon"].shape
    assert (ours["z"].shape[2], theirs["z"].shape[2]) == (4, 6)


def test_v1_0_causal_export_warns_and_differs() -> None:

    model = _tiny_model("v1.0")
    with pytest.warns(interop.DiffusersSemanticsWarning, match="different function"):
        dmodel = interop.to_diffusers(model)
    assert torch.equal(dmodel.state_dict()["decoder.conv_out.conv.weight"], model.decoder.conv_out.conv.weight)
    x = recipe.make_input(9, 16, 16)
    ours, theirs = ours_outputs(model, x), diffusers_outputs(dmodel, x)
    assert ours["z"].shape == theirs["z"].shape
    assert (ours["z"] - theirs["z"]).abs().max() > 1e-2  # v1.0 zero padding vs diffusers' frame-0 padding
    back = interop.from_diffusers(dmodel)  # comes back as v1.1, the semantics diffusers ran
    assert type(back).__module__ == "vidtok.models.autoencoder_v1_1"
    assert_same_outputs(ours_outputs(back, x), theirs)


def test_to_diffusers_state_dict_drops_training_state_and_can_take_the_ema() -> None:
    state = {
        "encoder.w": torch.zeros(2),
        "decoder.conv.bias": torch.zeros(1),
        "loss.logvar": torch.zeros(()),
        "model_ema.encoderw": torch.ones(2),
        "model_ema.decay": torch.tensor(0.999),
    }
    plain = interop.to_diffusers_state_dict(state)
    assert list(plain) == ["encoder.w", "decoder.conv.bias"] and not plain["encoder.w"].any()
    ema = interop.to_diffusers_state_dict(state, use_ema=True)
    assert ema["encoder.w"].eq(1).all() and not ema["decoder.conv.bias"].any()
    with pytest.raises(ValueError, match="no model_ema"):
        interop.to_diffusers_state_dict(plain, use_ema=True)
    assert interop.from_diffusers_state_dict(plain) == plain


def test_cli_round_trip(tmp_path: Path) -> None:

    node = tiny_model_config(True, "fsq", "v1.1")
    config = tmp_path / "tiny.yaml"
    OmegaConf.save(full_config(node), config)
    model = recipe.fill_parameters_(load_model_from_config(config).eval())
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {**model.state_dict(), "loss.logvar": torch.zeros(())}}, ckpt)

    out_dir = tmp_path / "diffusers"
    assert convert_diffusers.main(["--config", str(config), "--ckpt", str(ckpt), "--output", str(out_dir)]) == 0
    dmodel = AutoencoderVidTok.from_pretrained(str(out_dir)).eval()
    assert dmodel.config.regularizer == "fsq" and dmodel.config.codebook_size == 512

    ckpt2, config2 = tmp_path / "back.ckpt", tmp_path / "back.yaml"
    args = ["--from_diffusers", str(out_dir), "--output", str(ckpt2), "--config_out", str(config2)]
    assert convert_diffusers.main(args) == 0
    back = load_model_from_config(config2, ckpt2).eval()
    assert list(read_state_dict(ckpt2)) == list(model.state_dict())
    x = recipe.make_input(9, 16, 16)
    assert_same_outputs(ours_outputs(back, x), ours_outputs(model, x))
    assert_same_outputs(ours_outputs(back, x), diffusers_outputs(dmodel, x))


def test_missing_diffusers_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"vidtok\[diffusers\]"):
        interop.to_diffusers(load_model_from_config(full_config(tiny_model_config(variant="v1.1"))))


def test_import_reads_only_local_files_unless_downloads_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("importing a diffusers model opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ckpt, config = tmp_path / "out.ckpt", tmp_path / "out.yaml"
    with pytest.raises(interop.DiffusersSourceError) as info:
        interop.import_from_diffusers("vidtok-tests/not-cached", ckpt, config)
    assert "'vidtok-tests/not-cached'" in str(info.value) and "allow_download=True" in str(info.value)
    assert not ckpt.exists() and not config.exists()

    asked = []

    class Recorder:
        @classmethod
        def from_pretrained(cls, source, **kwargs):
            asked.append(kwargs)
            raise OSError("offline")

    monkeypatch.setattr(interop, "_diffusers_class", lambda: Recorder)
    with pytest.raises(interop.DiffusersSourceError):
        interop.load_diffusers("org/model")
    with pytest.raises(OSError, match="offline"):  # the Hub's own error, once the user asked for it
        interop.load_diffusers("org/model", allow_download=True)
    assert asked == [{"local_files_only": True}, {"local_files_only": False}]
