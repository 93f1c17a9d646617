"""Our models against the original VidTok's own outputs (`tests/data/conformance`, see its README).

For every official config: the state dict has the original's keys, shapes and dtypes in the same order (loss
included), and with the recipe's deterministic weights our encoder output, latent, reconstruction and FSQ
indices equal the original's (indices exactly, tensors within 1e-4·max(1, max|theirs|)).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, CONFORMANCE
from tests.data.conformance import recipe
from vidtok import load_model_from_config
from vidtok.kernels import fast_conv

V1_0 = sorted(p.stem for p in CONFIGS.glob("vidtok_*.yaml"))
V1_1 = sorted(p.stem for p in (CONFIGS / "vidtok_v1_1").glob("vidtok_*.yaml"))


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor | dict, what: str) -> None:
    """`theirs` is a whole tensor, or a reconstruction's sample: its `shape`, its `values` at `positions` of the
    flattened tensor and the whole tensor's `absmax`, which sets the tolerance as the whole tensor would."""
    if isinstance(theirs, torch.Tensor):
        theirs = {"shape": list(theirs.shape), "positions": None, "values": theirs, "absmax": theirs.abs().max().item()}
    shape = tuple(theirs["shape"])
    assert ours.shape == shape, f"{what}: shape {tuple(ours.shape)} != {shape}"
    if theirs["positions"] is not None:
        ours = ours.flatten()[theirs["positions"].long()]
    tol = 1e-4 * max(1.0, theirs["absmax"])
    diff = (ours.float() - theirs["values"].float()).abs().max().item()
    assert diff <= tol, f"{what}: max |ours - original| = {diff:.3g} > {tol:.3g}"


def read_keys(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


def state_dict_listing(model: torch.nn.Module) -> list[tuple[str, str, str]]:
    return [
        (k, ",".join(map(str, v.shape)), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]


def test_every_official_config_has_vectors():
    assert len(V1_0) == 16 and len(V1_1) == 7
    assert DIRECT_KERNEL_CONFIGS <= set(V1_0) | set(V1_1)
    assert {p.stem for p in (CONFORMANCE / "keys").glob("*.tsv")} == set(V1_0)
    assert {p.stem for p in (CONFORMANCE / "vectors").glob("*.pt")} == set(V1_0)
    assert {p.stem for p in (CONFORMANCE / "keys" / "v1_1").glob("*.tsv")} == set(V1_1)
    assert {p.stem for p in (CONFORMANCE / "vectors" / "v1_1").glob("*.pt")} == set(V1_1)


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
def test_v1_0_config_matches_original(name, offline, kernel):
    keys = read_keys(CONFORMANCE / "keys" / f"{name}.tsv")
    vectors = torch.load(CONFORMANCE / "vectors" / f"{name}.pt", weights_only=True)

    model = load_model_from_config(CONFIGS / f"{name}.yaml")
    assert model.loss is None
    inference_keys = [k for k in keys if not k[0].startswith("loss.")]
    assert state_dict_listing(model) == inference_keys

    model.build_loss(lpips_pretrained=False)
    assert state_dict_listing(model) == keys
    assert sum(k[0].startswith("loss.") for k in keys) == 56

    recipe.fill_parameters_(model)
    model.eval()
    x = recipe.make_input(*vectors["x_shape"][2:])
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
def test_v1_1_config_matches_original_full_pass(name, offline, kernel):
    keys = read_keys(CONFORMANCE / "keys" / "v1_1" / f"{name}.tsv")
    vectors = torch.load(CONFORMANCE / "vectors" / "v1_1" / f"{name}.pt", weights_only=True)

    model = load_model_from_config(CONFIGS / "vidtok_v1_1" / f"{name}.yaml")
    model.build_loss(lpips_pretrained=False)
    assert state_dict_listing(model) == keys

    recipe.fill_parameters_(model)
    model.eval()
    x = recipe.make_input(*vectors["x_shape"][2:])
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
            assert_matches(recon_forward, vectors["recon"], "forward reconstruction")  # the same bits in theirs
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


def test_every_sample_meets_each_row_and_column_of_each_channel_and_frame():
    """A reconstruction error confined to one row or one column of one frame (an edge's padding, one frame's
    cache) still meets a stored position."""
    samples = 0
    for path in sorted(CONFORMANCE.glob("vectors/**/*.pt")):
        for name, ref in torch.load(path, weights_only=True).items():
            if not isinstance(ref, dict):
                continue
            _, c, t, h, w = ref["shape"]
            pos = ref["positions"].long()
            plane, y, x = pos // (h * w), pos // w % h, pos % w
            assert ref["values"].shape == pos.shape and ref["values"].abs().max() <= ref["absmax"], (path, name)
            assert (plane * h + y).unique().numel() == c * t * h, f"{path.name} {name}: a row has no sample"
            assert (plane * w + x).unique().numel() == c * t * w, f"{path.name} {name}: a column has no sample"
            samples += 1
    assert samples >= 23  # every config has at least its reconstruction sampled


@pytest.fixture(scope="module")
def kl_causal_case():
    """vidtok_kl_causal_488_4chn with the recipe's weights, its vectors, and its reconstruction from their z."""
    vectors = torch.load(CONFORMANCE / "vectors" / "vidtok_kl_causal_488_4chn.pt", weights_only=True)
    model = recipe.fill_parameters_(load_model_from_config(CONFIGS / "vidtok_kl_causal_488_4chn.yaml")).eval()
    with torch.no_grad():
        recon = model.decode(vectors["z"])
    assert_matches(recon, vectors["recon"], "reconstruction")
    return model, vectors, recon


def test_sampled_reconstruction_catches_an_error_in_one_row_of_any_frame(kl_causal_case):
    _, vectors, recon = kl_causal_case
    frames, height = recon.shape[2], recon.shape[3]
    for t in range(frames):
        wrong = recon.clone()
        wrong[0, t % 3, t, (5 * t) % height, :] += 1e-3  # over four times the tolerance, in one row of one frame
        with pytest.raises(AssertionError, match="reconstruction"):
            assert_matches(wrong, vectors["recon"], "reconstruction")


def test_sampled_reconstruction_catches_a_perturbed_decoder_weight(kl_causal_case):
    model, vectors, _ = kl_causal_case
    weight = model.decoder.mid.block_1.conv1.conv.weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0, 1, 1, 1] += 1e-2  # one of 7 million weights, by about their spread (0.0085)
        try:
            recon = model.decode(vectors["z"])
        finally:
            weight.copy_(kept)
    with pytest.raises(AssertionError, match="reconstruction"):
        assert_matches(recon, vectors["recon"], "reconstruction")
