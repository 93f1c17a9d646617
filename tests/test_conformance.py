"""Our models against the original VidTok's own outputs (`../shared/conformance`, see its README).

For every official config: the state dict has the original's keys, shapes and dtypes in the same order (loss
included), and with the recipe's deterministic weights our encoder output, latent, reconstruction and FSQ
indices equal the original's (indices exactly, tensors within 1e-4·max(1, max|theirs|)).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS
from vidtok import load_model_from_config
from vidtok.kernels import fast_conv

V1_0 = sorted(p.stem for p in CONFIGS.glob("vidtok_*.yaml"))
V1_1 = sorted(p.stem for p in (CONFIGS / "vidtok_v1_1").glob("vidtok_*.yaml"))


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    tol = 1e-4 * max(1.0, theirs.abs().max().item())
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert diff <= tol, f"{what}: max |ours - original| = {diff:.3g} > {tol:.3g}"


def read_keys(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


def state_dict_listing(model: torch.nn.Module) -> list[tuple[str, str, str]]:
    return [
        (k, ",".join(map(str, v.shape)), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]


def test_every_official_config_has_vectors(conformance_dir):
    assert len(V1_0) == 16 and len(V1_1) == 7
    assert DIRECT_KERNEL_CONFIGS <= set(V1_0) | set(V1_1)
    assert {p.stem for p in (conformance_dir / "keys").glob("*.tsv")} == set(V1_0)
    assert {p.stem for p in (conformance_dir / "vectors").glob("*.pt")} == set(V1_0)
    assert {p.stem for p in (conformance_dir / "keys" / "v1_1").glob("*.tsv")} == set(V1_1)
    assert {p.stem for p in (conformance_dir / "vectors" / "v1_1").glob("*.pt")} == set(V1_1)


@pytest.fixture(scope="module")
def recipe(conformance_dir):
    import recipe as module

    return module


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and no cached weights: building a model for inference must need neither."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("building a model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setenv("VIDTOK_VGG16_PATH", str(tmp_path / "no-vgg16.pth"))


# the direct kernel on one config per family (v1.0 causal FSQ, non-causal KL, v1.1 KL and FSQ): all 23 under both
# kernels would double the longest test file of the suite
DIRECT_KERNEL_CONFIGS = {
    "vidtok_fsq_causal_488_4096", "vidtok_kl_noncausal_488_4chn", "vidtok_kl_causal_488_4chn_v1_1",
    "vidtok_fsq_causal_488_32768_v1_1",
}


def with_kernels(names: list[str]) -> list[tuple[str, str]]:
    """(config, kernel): every config under Winograd, those of DIRECT_KERNEL_CONFIGS under the direct kernel too."""
    return [(n, k) for n in names for k in ("winograd", "direct") if k == "winograd" or n in DIRECT_KERNEL_CONFIGS]


@pytest.fixture
def kernel(request, monkeypatch):
    """Run the test with the fp32 CPU convolutions as Winograd (the default) or PyTorch's direct kernel, and check
    afterwards that the Winograd path ran exactly when asked for."""
    calls = []
    real = fast_conv.winograd_conv
    monkeypatch.setattr(fast_conv, "winograd_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fast_conv, "_process_enabled", fast_conv._process_enabled)  # restored afterwards
    fast_conv.set_fast_convs(request.param == "winograd")
    yield request.param
    assert bool(calls) == (request.param == "winograd")


@pytest.mark.parametrize(("name", "kernel"), with_kernels(V1_0), indirect=["kernel"])
def test_v1_0_config_matches_original(name, conformance_dir, recipe, offline, kernel):
    keys = read_keys(conformance_dir / "keys" / f"{name}.tsv")
    vectors = torch.load(conformance_dir / "vectors" / f"{name}.pt", weights_only=True)

    model = load_model_from_config(CONFIGS / f"{name}.yaml")
    assert model.loss is None
    inference_keys = [k for k in keys if not k[0].startswith("loss.")]
    assert state_dict_listing(model) == inference_keys

    model.build_loss(lpips_pretrained=False)
    assert state_dict_listing(model) == keys
    assert sum(k[0].startswith("loss.") for k in keys) == 56

    recipe.fill_parameters_(model)
    model.eval()
    x = vectors["x"]
    with torch.no_grad():
        h = model.encoder(x)
        assert_matches(h, vectors["h"], "encoder output h")
        if model.is_fsq:
            z, log = model.regularization(h)
            assert_matches(z, vectors["z"], "quantised z")
            assert torch.equal(log["indices"], vectors["indices"]), "FSQ indices differ from the original's"
            recon = model.decode(z)
            assert_matches(recon, vectors["recon"], "reconstruction")
            from_indices = model.decode(vectors["indices"], decode_from_indices=True)
            assert torch.equal(from_indices, recon)
            _, recon_forward, _ = model(x)
            assert torch.equal(recon_forward, recon)
            assert torch.equal(model.tokenize(x), vectors["indices"])
        else:
            z, _ = model.encode(x, sample=False)
            assert_matches(z, vectors["z"], "posterior mean z")
            recon = model.decode(vectors["z"])
            assert_matches(recon, vectors["recon"], "reconstruction")
        assert torch.isfinite(recon).all()



@pytest.mark.parametrize(("name", "kernel"), with_kernels(V1_1), indirect=["kernel"])
def test_v1_1_config_matches_original_full_pass(name, conformance_dir, recipe, offline, kernel):
    keys = read_keys(conformance_dir / "keys" / "v1_1" / f"{name}.tsv")
    vectors = torch.load(conformance_dir / "vectors" / "v1_1" / f"{name}.pt", weights_only=True)

    model = load_model_from_config(CONFIGS / "vidtok_v1_1" / f"{name}.yaml")
    model.build_loss(lpips_pretrained=False)
    assert state_dict_listing(model) == keys

    recipe.fill_parameters_(model)
    model.eval()
    x = vectors["x"]
    T = x.shape[2]
    with torch.no_grad():
        h = model.encoder(x)
        assert_matches(h, vectors["h"], "encoder output h")
        if model.is_fsq:
            z, log = model.regularization(h)
            assert_matches(z, vectors["z"], "quantised z")
            assert torch.equal(log["indices"], vectors["indices"]), "FSQ indices differ from the original's"
            recon = model.decode(z)
            from_indices = model.decode(vectors["indices"], decode_from_indices=True)
            assert torch.equal(from_indices, recon)
            z_fwd, recon_forward, log_fwd = model(x)
            assert torch.equal(log_fwd["indices"], vectors["indices"])
            assert_matches(recon_forward, vectors["recon_forward"], "forward reconstruction")
        else:
            z, _ = model.encode(x, sample=False)
            assert_matches(z, vectors["z"], "posterior mean z")
            recon = model.decode(vectors["z"])
        assert_matches(recon, vectors["recon_uncropped"], "uncropped reconstruction")
        assert_matches(recon[:, :, -T:], vectors["recon"], "reconstruction (last T frames)")

    if "recon_tiled" in vectors:  # the original's chunked mode, run on the same model
        model.use_tiling, model.t_chunk_enc, model.t_chunk_dec, model.use_overlap = True, 16, 4, True
        with torch.no_grad():
            z_tiled, _ = model.encode(x, sample=False)
            assert_matches(z_tiled, vectors["z_tiled"], "chunked-mode latent")
            if model.is_fsq:
                assert torch.equal(model.tokenize(x), vectors["indices_tiled"])
            recon_tiled = model.decode(z_tiled)[:, :, -T:]
        assert_matches(recon_tiled, vectors["recon_tiled"], "chunked-mode reconstruction")
        # the original's chunked decode is not its whole-clip decode; ours reproduces that difference
        gap = (recon_tiled - recon[:, :, -T:]).abs().max().item()
        assert gap == pytest.approx(vectors["max_abs_diff_tiled_vs_full"].item(), rel=0.05)
