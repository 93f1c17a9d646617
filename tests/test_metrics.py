"""PSNR / SSIM / LPIPS as the original evaluates them, the frame-weighted accumulator, and FVD's pieces."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.video_helpers import psnr_reference, save_fake_i3d, ssim_reference
from vidtok import fvd, metrics
from vidtok.errors import VidTokError
from vidtok.fvd import (
    FeatureStatistics,
    FVDAccumulator,
    find_i3d,
    frechet_distance,
    i3d_search_paths,
    load_i3d,
    video_to_uint8,
)
from vidtok.metrics import (
    MetricAccumulator,
    compute_psnr,
    compute_ssim,
    parse_metrics,
    psnr_per_frame,
    score_frame_groups,
    ssim_per_frame,
    ssim_pool_factor,
)
from vidtok.training.lpips import LPIPS, VGG16_ENV, VGG16_FILENAME


def video(T: int = 5, H: int = 32, W: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, T, H, W, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def random_lpips() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(pretrained=False).eval()


# --- PSNR / SSIM / LPIPS -------------------------------------------------------------------------------------------


def test_identical_clips_give_the_80db_cap_ssim_one_and_lpips_zero(random_lpips):
    x = video(T=20)
    groups = score_frame_groups(x, x.clone(), ("psnr", "ssim", "lpips"), random_lpips)
    acc = MetricAccumulator()
    acc.update_groups(groups)
    result = acc.compute()
    assert result["psnr"] == pytest.approx(80.0, abs=1e-3)  # -10·log10(0 + 1e-8)
    assert result["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert [n for _, n in groups] == [16, 4]  # frames in groups of 16


def test_known_noise_level_gives_the_expected_psnr():
    torch.manual_seed(1)
    x = torch.rand(6, 3, 24, 24) * 0.6 + 0.2  # [0.2, 0.8]: ±0.1 never leaves [0, 1]
    sign = torch.randint(0, 2, x.shape).float() * 2 - 1
    y = x + 0.1 * sign  # mse = 0.01 exactly -> 20 dB
    torch.testing.assert_close(psnr_per_frame(x, y), torch.full((6,), 20.0), atol=1e-4, rtol=0)
    # and through the [-1, 1] pipeline: the same frames as videos
    to_video = lambda f: (f * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)  # noqa: E731
    ((values, n),) = score_frame_groups(to_video(x), to_video(y), ("psnr",))
    assert n == 6 and values["psnr"] == pytest.approx(20.0, abs=1e-4)


def test_psnr_is_the_mean_of_per_frame_values_not_the_video_psnr():
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[0] += 0.1  # frame 0: 20 dB
    y[1] += 0.01  # frame 1: 40 dB
    assert compute_psnr(x, y).item() == pytest.approx(30.0, abs=1e-3)  # the 1e-8 shifts 40 dB by 4e-4
    whole_video = -10 * math.log10((0.01 + 0.0001) / 2)
    assert abs(compute_psnr(x, y).item() - whole_video) > 1


def test_ssim_matches_an_independent_scipy_implementation():
    torch.manual_seed(2)
    x = torch.rand(3, 3, 40, 48)
    y = (x + 0.15 * torch.randn_like(x)).clamp(0, 1)
    ours = ssim_per_frame(x.double(), y.double()).numpy()
    np.testing.assert_allclose(ours, ssim_reference(x.numpy(), y.numpy()), rtol=0, atol=1e-10)
    # float32, as evaluation runs it
    np.testing.assert_allclose(ssim_per_frame(x, y).numpy(), ssim_reference(x.numpy(), y.numpy()), atol=1e-5)


@pytest.mark.parametrize(
    ("size", "factor"), [((64, 64), 1), ((256, 256), 1), ((383, 500), 1), ((384, 384), 2), ((512, 700), 2),
                         ((640, 640), 2), ((720, 1280), 3)]
)
def test_ssim_pool_factor_uses_pythons_round(size, factor):
    assert ssim_pool_factor(*size) == factor


def test_ssim_of_large_frames_is_computed_after_average_pooling():
    torch.manual_seed(3)
    x = torch.rand(2, 3, 512, 520)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    pooled = ssim_reference(F.avg_pool2d(x, 2).numpy(), F.avg_pool2d(y, 2).numpy())
    np.testing.assert_allclose(ssim_per_frame(x, y).numpy(), pooled, atol=1e-5)


def test_ssim_rejects_frames_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11"):
        compute_ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))


def test_reconstruction_is_clamped_and_lpips_sees_both_in_minus_one_one():
    x = video(T=3)
    x_hat = x * 1.5  # goes past ±1
    seen = []

    def spy(a, b):
        seen.append((a.clone(), b.clone()))
        return ((a - b) ** 2).mean(dim=(1, 2, 3), keepdim=True)

    groups = score_frame_groups(x, x_hat, ("psnr", "ssim", "lpips"), spy)
    clamped = score_frame_groups(x, x_hat.clamp(-1, 1), ("psnr", "ssim", "lpips"), spy)
    assert groups == clamped
    a, b = seen[0]
    assert a.shape == (3, 3, 32, 32)  # frames [B·T, C, H, W]
    assert a.min() >= -1 and a.max() <= 1 and b.min() >= -1 and b.max() <= 1
    torch.testing.assert_close(a, x[0].permute(1, 0, 2, 3))


def test_score_frame_groups_can_leave_out_padding_and_needs_an_lpips_model():
    x, y = video(T=17), video(T=17, seed=1)
    groups = score_frame_groups(x, y, ("psnr",), num_valid_frames=5)
    assert [n for _, n in groups] == [5]
    with pytest.raises(ValueError, match="lpips_model"):
        score_frame_groups(x, y, ("lpips",))


def test_lpips_of_different_frames_is_positive(random_lpips):
    ((values, _),) = score_frame_groups(video(T=2), video(T=2, seed=5), ("lpips",), random_lpips)
    assert values["lpips"] > 0


def test_accumulator_is_a_frame_weighted_mean_and_merges():
    a = MetricAccumulator()
    a.update({"psnr": 30.0, "ssim": 0.5}, 16)
    a.update({"psnr": 20.0, "ssim": 1.0}, 1)
    b = MetricAccumulator()
    b.update({"psnr": 10.0}, 3)
    a += b
    expected_psnr = np.mean([30.0] * 16 + [20.0] + [10.0] * 3)
    assert a.compute()["psnr"] == pytest.approx(expected_psnr, rel=1e-15)
    assert a.compute()["ssim"] == pytest.approx((0.5 * 16 + 1.0) / 17)
    assert a.num_frames("psnr") == 20 and a.num_frames("ssim") == 17 and a.num_frames("lpips") == 0
    with pytest.raises(ValueError):
        a.update({"psnr": 1.0}, 0)


def test_parse_metrics():
    assert parse_metrics("lpips, PSNR") == ("psnr", "lpips")
    assert parse_metrics(["fvd", "ssim"]) == ("ssim", "fvd")
    with pytest.raises(ValueError, match="unknown"):
        parse_metrics("psnr,vmaf")
    with pytest.raises(ValueError, match="no metrics"):
        parse_metrics(" , ")


def test_missing_lpips_weights_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(VGG16_ENV, str(tmp_path / "nowhere" / VGG16_FILENAME))
    with pytest.raises(FileNotFoundError, match=VGG16_FILENAME) as info:
        metrics.load_lpips()
    assert "lpips" in str(info.value)


# --- FVD -----------------------------------------------------------------------------------------------------------


def test_frechet_distance_of_one_dimensional_gaussians():
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert d == pytest.approx((1 - 3) ** 2 + 4 + 9 - 2 * 2 * 3)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    sigma = A @ A.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    # equal covariances: only the means count
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)
    # scaled covariance c²Σ: tr(Σ)(1 - c)²
    c = 1.7
    assert frechet_distance(mu1, sigma, mu1, c**2 * sigma) == pytest.approx(np.trace(sigma) * (1 - c) ** 2, rel=1e-8)
    # diagonal covariances: per-dimension 1-D formula summed
    a, b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(mu1, sigma, mu2[:5], sigma[:5, :5])


def test_feature_statistics_use_the_population_covariance_and_merge():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    stats, first, second = FeatureStatistics(), FeatureStatistics(), FeatureStatistics()
    stats.update(x)
    first.update(x[:20])
    second.update(x[20:])
    first += second
    for s in (stats, first):
        mean, cov = s.mean_cov()
        np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(cov, np.cov(x, rowvar=False, bias=True), atol=1e-12)
    with pytest.raises(ValueError):
        FeatureStatistics().mean_cov()


def test_video_to_uint8_follows_stylegan_v():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5])
    assert video_to_uint8(x).tolist() == [0, 64, 128, 255, 255, 255]


@pytest.fixture
def fake_i3d_path(tmp_path):
    return save_fake_i3d(tmp_path / "i3d_torchscript.pt")


def test_fvd_with_a_torchscript_detector(fake_i3d_path):
    detector = load_i3d(fake_i3d_path)
    same, different = FVDAccumulator(detector), FVDAccumulator(detector)
    for seed in range(4):
        x = video(T=17, seed=seed)
        same.update(x, x.clone())
        different.update(x, (x * 0.3 + 0.5 * video(T=17, seed=100 + seed)).clamp(-1, 1))
    short = video(T=17, seed=9)
    same.update(short, short, num_valid_frames=10)  # fewer than 16 real frames: left out
    assert same.num_clips == 4 and same.skipped_clips == 1
    assert abs(same.compute()) < 1e-6
    assert different.compute() > 1e-3


def test_fvd_needs_two_clips(fake_i3d_path):
    acc = FVDAccumulator(load_i3d(fake_i3d_path))
    acc.update(video(T=16), video(T=16))
    with pytest.raises(ValueError, match="at least 2 clips"):
        acc.compute()


def test_missing_i3d_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv(fvd.I3D_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as info:
        find_i3d()
    message = str(info.value)
    assert "i3d_torchscript.pt" in message and fvd.I3D_URL in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "i3d_torchscript.pt") in message
    assert str(tmp_path / "home" / ".cache" / "vidtok" / "i3d_torchscript.pt") in message
    with pytest.raises(FileNotFoundError, match="elsewhere.pt"):
        find_i3d(tmp_path / "elsewhere.pt")


def test_i3d_is_found_in_the_torch_hub_cache_and_by_env(tmp_path, monkeypatch, fake_i3d_path):
    monkeypatch.delenv(fvd.I3D_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "i3d_torchscript.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(fake_i3d_path.read_bytes())
    assert find_i3d() == cached
    monkeypatch.setenv(fvd.I3D_ENV, str(fake_i3d_path))
    assert i3d_search_paths()[0] == fake_i3d_path and find_i3d() == fake_i3d_path


def test_psnr_reference_agrees_with_ours_in_float64():
    torch.manual_seed(4)
    x, y = torch.rand(4, 3, 16, 16).double(), torch.rand(4, 3, 16, 16).double()
    np.testing.assert_allclose(psnr_per_frame(x, y).numpy(), psnr_reference(x.numpy(), y.numpy()), rtol=1e-12)


def test_an_i3d_file_with_another_digest_is_refused_before_it_is_loaded(fake_i3d_path, monkeypatch):
    monkeypatch.delenv(fvd.I3D_SHA256_ENV, raising=False)
    loads = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    actual = hashlib.sha256(fake_i3d_path.read_bytes()).hexdigest()
    wrong = "0" * 64
    for given in ({"sha256": wrong}, {}):
        if not given:
            monkeypatch.setenv(fvd.I3D_SHA256_ENV, wrong.upper())  # the variable, in either case
        with pytest.raises(fvd.I3DChecksumError) as info:
            load_i3d(fake_i3d_path, **given)
        message = str(info.value)
        assert str(fake_i3d_path) in message and actual in message and wrong in message
    assert loads == []
    with pytest.raises(VidTokError, match="64 hexadecimal digits"):
        load_i3d(fake_i3d_path, sha256="abc")
    assert load_i3d(fake_i3d_path, sha256=actual) is not None and len(loads) == 1


def test_an_i3d_file_without_a_known_digest_loads_with_a_warning_giving_it(fake_i3d_path, monkeypatch, caplog):
    monkeypatch.delenv(fvd.I3D_SHA256_ENV, raising=False)
    assert fvd.I3D_SHA256 is None  # no published digest is known (see fvd.I3D_SHA256)
    with caplog.at_level("WARNING", logger="vidtok.metrics"):
        load_i3d(fake_i3d_path)
    assert hashlib.sha256(fake_i3d_path.read_bytes()).hexdigest() in caplog.text and "not verified" in caplog.text
