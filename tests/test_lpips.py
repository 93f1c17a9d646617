"""LPIPS-VGG: the original's state-dict layout, distance properties, weight-file lookup and its error messages."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torchvision

import vidtok.training.lpips as lpips_module
from tests.conftest import CONFORMANCE
from vidtok.training.lpips import (
    LPIPS,
    LPIPS_ENV,
    LPIPS_FILENAME,
    VGG16_ENV,
    VGG16_FILENAME,
    find_lpips_weights,
    lpips_weight_paths,
)

KEYS_FILE = CONFORMANCE / "keys" / "vidtok_kl_causal_488_4chn.tsv"
PREFIX = "loss.perceptual_loss."


@pytest.fixture(scope="module")
def model() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(pretrained=False)


@pytest.fixture
def no_weight_files(tmp_path, monkeypatch) -> Path:
    """Every place LPIPS looks is an empty temp dir: no env override, TORCH_HOME and cwd there, no lpips package."""
    monkeypatch.delenv(VGG16_ENV, raising=False)
    monkeypatch.delenv(LPIPS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lpips_module, "_packaged_lpips_weights", lambda: tmp_path / "site-packages" / "vgg.pth")
    return tmp_path


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_state_dict_matches_the_original_layout(model):
    expected = [
        (k.removeprefix(PREFIX), shape, dtype)
        for k, shape, dtype in (line.split("\t") for line in KEYS_FILE.read_text().splitlines())
        if k.startswith(PREFIX)
    ]
    listing = [
        (k, ",".join(map(str, v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()
    ]
    assert len(expected) == 33
    assert listing == expected


def test_constants_buffers_and_frozen_eval_state(model):
    buffers = dict(model.named_buffers())
    assert set(buffers) == {"scaling_layer.shift", "scaling_layer.scale"}
    torch.testing.assert_close(buffers["scaling_layer.shift"].flatten(), torch.tensor([-0.030, -0.088, -0.188]))
    torch.testing.assert_close(buffers["scaling_layer.scale"].flatten(), torch.tensor([0.458, 0.448, 0.450]))
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 14_716_160  # VGG16 features + 5 linear layers (spec §2)
    assert not any(k.startswith("lins") for k in model.state_dict())  # no duplicate of the lpips package's list


def test_identical_images_are_at_distance_zero(model):
    x = images()
    d = model(x, x.clone())
    assert d.shape == (2, 1, 1, 1)
    torch.testing.assert_close(d, torch.zeros_like(d))


def test_different_images_are_at_positive_symmetric_distance(model):
    x, y = images(seed=0), images(seed=1)
    d = model(x, y)
    assert d.shape == (2, 1, 1, 1)
    assert (d > 0).all()
    torch.testing.assert_close(d, model(y, x))
    # a small perturbation is closer than an unrelated image
    assert (model(x, x + 0.05 * (y - x)) < d).all()


def test_matches_the_lpips_package_with_the_same_weights(model):
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lpips calls torchvision with the deprecated `pretrained=` argument
        reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("lins.") for k in missing)  # `lins` aliases lin0..lin4
    x, y = images(seed=2), images(seed=3)
    torch.testing.assert_close(model(x, y), reference(x, y).detach())


def test_dropout_follows_train_mode_like_the_original():
    torch.manual_seed(0)
    model = LPIPS(pretrained=False)
    x, y = images(seed=4), images(seed=5)
    evaluated = model(x, y)
    model.train()
    torch.manual_seed(1)
    trained_1 = model(x, y)
    torch.manual_seed(2)
    trained_2 = model(x, y)
    assert not torch.allclose(trained_1, trained_2)  # Dropout(0.5) in front of each linear layer
    model.eval()
    torch.testing.assert_close(model(x, y), evaluated)


def test_random_build_touches_no_file(no_weight_files, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("pretrained=False must not read any file")

    monkeypatch.setattr(torch, "load", no_load)
    model = LPIPS(pretrained=False)
    assert (model.lin0.model[1].weight >= 0).all()  # non-negative, like trained LPIPS weights
    assert list(no_weight_files.iterdir()) == []  # nothing downloaded or created


def test_missing_files_raise_before_building_and_say_how_to_fix(no_weight_files, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("VGG16 was built before the weight files were checked")

    monkeypatch.setattr(torchvision.models, "vgg16", no_build)
    with pytest.raises(FileNotFoundError) as err:
        LPIPS()
    message = str(err.value)
    hub_file = no_weight_files / "torch_home" / "hub" / "checkpoints" / VGG16_FILENAME
    assert VGG16_FILENAME in message and str(hub_file) in message and VGG16_ENV in message
    assert LPIPS_FILENAME in message and LPIPS_ENV in message and "pip install lpips" in message
    assert "pretrained=False" in message


def test_env_variables_are_the_only_candidates_and_are_reported(no_weight_files, monkeypatch):
    vgg_path = no_weight_files / "mine" / "vgg16.pth"
    lin_path = no_weight_files / "mine" / "lin.pth"
    monkeypatch.setenv(VGG16_ENV, str(vgg_path))
    monkeypatch.setenv(LPIPS_ENV, str(lin_path))
    paths = lpips_weight_paths()
    assert paths["vgg16"].candidates == (vgg_path,)
    assert paths["lpips"].candidates == (lin_path,)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth") as err:
        find_lpips_weights()
    assert str(vgg_path) in str(err.value) and str(lin_path) in str(err.value)


def test_default_locations(monkeypatch, tmp_path):
    monkeypatch.delenv(VGG16_ENV, raising=False)
    monkeypatch.delenv(LPIPS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    paths = lpips_weight_paths()
    assert paths["vgg16"].candidates == (Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME,)
    assert paths["lpips"].candidates[-1] == tmp_path / "checkpoints" / "lpips" / LPIPS_FILENAME  # the original's spot
    lpips = pytest.importorskip("lpips")
    packaged = Path(lpips.__file__).parent / "weights" / "v0.1" / LPIPS_FILENAME
    assert paths["lpips"].candidates[0] == packaged


def test_pretrained_build_loads_both_files(no_weight_files, monkeypatch):
    lpips = pytest.importorskip("lpips")
    lin_file = Path(lpips.__file__).parent / "weights" / "v0.1" / LPIPS_FILENAME
    # a stand-in VGG16 file with known values; only `features.*` is read, so the classifier can be left out
    g = torch.Generator().manual_seed(7)
    net_state = LPIPS(pretrained=False).net.state_dict()  # keys `slice{k}.{i}.{weight,bias}`
    features = {
        "features." + key.split(".", 1)[1]: torch.randn(value.shape, generator=g) * 0.01
        for key, value in net_state.items()
    }
    vgg_file = no_weight_files / "vgg16.pth"
    torch.save(features, vgg_file)
    monkeypatch.setenv(VGG16_ENV, str(vgg_file))
    monkeypatch.setenv(LPIPS_ENV, str(lin_file))

    model = LPIPS()
    torch.testing.assert_close(model.net.slice3.get_submodule("12").weight, features["features.12.weight"])
    torch.testing.assert_close(model.net.slice5.get_submodule("28").bias, features["features.28.bias"])
    lins = torch.load(lin_file, map_location="cpu", weights_only=True)
    for i in range(5):
        torch.testing.assert_close(getattr(model, f"lin{i}").model[1].weight, lins[f"lin{i}.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_files_with_the_wrong_keys_are_rejected(model, no_weight_files, monkeypatch):
    bogus = no_weight_files / "bogus.pth"
    torch.save({"classifier.0.weight": torch.zeros(1)}, bogus)
    lin = no_weight_files / "lin.pth"
    torch.save({f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}, lin)
    monkeypatch.setenv(VGG16_ENV, str(bogus))
    monkeypatch.setenv(LPIPS_ENV, str(lin))
    with pytest.raises(ValueError, match="features"):
        LPIPS()
    monkeypatch.setenv(VGG16_ENV, str(no_weight_files / "vgg16.pth"))
    features = {"features." + k.split(".", 1)[1]: v for k, v in model.net.state_dict().items()}
    torch.save(features, no_weight_files / "vgg16.pth")
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, lin)
    with pytest.raises(ValueError, match="lin1.model.1.weight"):
        LPIPS()
