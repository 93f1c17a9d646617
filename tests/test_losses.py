"""The training loss: closed-form GAN terms, the original's state-dict layout, the generator and discriminator steps
(GAN switched on at disc_start, adaptive weight from the last layer's gradients, LeCAM) and the logged keys."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from tests.conftest import CONFIGS, CONFORMANCE
from vidtok.modules.reshape import batch_to_time, time_to_batch
from vidtok.training.discriminator import NLayerDiscriminator, NLayerDiscriminator3D
from vidtok.training.losses import (
    GeneralLPIPSWithDiscriminator,
    LeCAMEMA,
    adopt_weight,
    hinge_d_loss,
    lecam_reg,
    non_saturate_gen_loss,
    vanilla_d_loss,
)
from vidtok.training.lpips import LPIPS_ENV, VGG16_ENV
from vidtok.util import instantiate_from_config

# the loss_config params of every official config (spec §2), with a near disc_start
OFFICIAL = {
    "dims": 3,
    "perceptual_weight": 1.0,
    "disc_start": 20001,
    "disc_weight": 0.2,
    "disc_type": "2d",
    "learn_logvar": True,
    "gen_loss_cross_entropy": True,
    "lecam_loss_weight": 0.005,
    "regularization_weights": {"aux_loss": 1.0, "kl_loss": 0.000001},
}
DISC_START = 5
GENERATOR_KEYS = [
    "kl_loss",
    "total_loss",
    "logvar",
    "nll_loss",
    "rec_loss",
    "p_loss",
    "d_weight",
    "disc_factor",
    "g_loss",
]
DISCRIMINATOR_KEYS = ["disc_loss", "logits_real", "logits_fake", "disc_factor", "non_saturated_d_loss", "lecam_loss"]


def make_loss(**overrides) -> GeneralLPIPSWithDiscriminator:
    torch.manual_seed(0)
    params = {**OFFICIAL, "disc_start": DISC_START, "lpips_pretrained": False, **overrides}
    return GeneralLPIPSWithDiscriminator(**params)


class TinyDecoder(nn.Module):
    """Stands in for the autoencoder: a 1×1×1 conv whose weight plays the decoder's last layer."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.eye(3).view(3, 3, 1, 1, 1) + 0.1 * torch.randn(3, 3, 1, 1, 1, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.conv3d(x, self.weight))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, TinyDecoder]:
    """inputs `[2, 3, 2, 32, 32]` in [-1, 1], their reconstruction, and the decoder that made it."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 2, 32, 32, generator=g) * 2 - 1
    noisy = x + 0.3 * torch.randn(x.shape, generator=g)
    decoder = TinyDecoder()
    return x, decoder(noisy), decoder


def kl_log() -> dict[str, torch.Tensor]:
    return {"kl_loss": torch.tensor(1234.0), "indices": torch.zeros(3)}  # `indices` has no weight: ignored


def expected_nll_and_g(loss: GeneralLPIPSWithDiscriminator, x: torch.Tensor, recon: torch.Tensor):
    """The generator terms written out from spec §4, per frame."""
    xf, rf = time_to_batch(x), time_to_batch(recon)  # [B*T, C, H, W]
    rec = (xf - rf).abs() + loss.perceptual_weight * loss.perceptual_loss(xf, rf)
    nll = (rec / torch.exp(loss.logvar) + loss.logvar).sum() / xf.shape[0]
    mean_logits = loss.discriminator(rf).reshape(xf.shape[0], -1).mean(dim=1)
    g = F.softplus(-mean_logits).mean()
    return nll, g


# --- pure functions --------------------------------------------------------------------------------------------------


def test_hinge_and_vanilla_closed_form():
    real = torch.tensor([0.5, 2.0, -1.0])
    fake = torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0.5, 0, 2], relu(1 + fake) = [0, 1, 1.5]
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 2.5 / 3)))
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = 0.5 * (sum(softplus(-r) for r in (0.5, 2.0, -1.0)) / 3 + sum(softplus(f) for f in (-2.0, 0.0, 0.5)) / 3)
    torch.testing.assert_close(vanilla_d_loss(real, fake), torch.tensor(expected))


def test_non_saturating_generator_loss_closed_form():
    logits = torch.tensor([[[[2.0, 0.0], [1.0, 1.0]]], [[[-3.0, -1.0], [0.0, 0.0]]]])  # [2, 1, 2, 2]
    # per-sample means 1.0 and -1.0; BCE(label 1) = softplus(-mean)
    expected = 0.5 * (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)))
    torch.testing.assert_close(non_saturate_gen_loss(logits), torch.tensor(expected))
    # the original's stable form relu(z) - z + log1p(exp(-|z|)), also for extreme logits
    z = torch.tensor([-100.0, -5.0, 0.0, 5.0, 100.0]).view(5, 1, 1, 1)
    stable = (F.relu(z) - z + torch.log1p(torch.exp(-z.abs()))).mean()
    torch.testing.assert_close(non_saturate_gen_loss(z), stable)


def test_adopt_weight():
    assert adopt_weight(1.0, 4, threshold=5) == 0.0
    assert adopt_weight(1.0, 5, threshold=5) == 1.0
    assert adopt_weight(0.7, 6, threshold=5) == 0.7
    assert adopt_weight(1.0, 0, threshold=5, value=0.25) == 0.25


def test_lecam_ema_and_regulariser_closed_form():
    ema = LeCAMEMA()
    real = torch.tensor([1.0, 3.0])  # mean 2
    fake = torch.tensor([-2.0, 0.0])  # mean -1
    ema.update(real, fake)
    # float64 tensors, so the update does the original's Python-float arithmetic without reading values back
    assert ema.logits_real_ema.dtype == ema.logits_fake_ema.dtype == torch.float64
    assert float(ema.logits_real_ema) == pytest.approx(0.002)
    assert float(ema.logits_fake_ema) == pytest.approx(-0.001)
    # relu(real + 0.001)² = [1.001², 3.001²]; relu(0.002 - fake)² = [2.002², 0.002²]
    expected = (1.001**2 + 3.001**2) / 2 + (2.002**2 + 0.002**2) / 2
    torch.testing.assert_close(lecam_reg(real, fake, ema), torch.tensor(expected))
    ema.update(real, fake)
    assert float(ema.logits_real_ema) == pytest.approx(0.002 * 0.999 + 0.002)


# --- construction ----------------------------------------------------------------------------------------------------


def test_state_dict_matches_the_original_layout():
    lines = (CONFORMANCE / "keys" / "vidtok_kl_causal_488_4chn.tsv").read_text().splitlines()
    expected = [tuple(line.split("\t")) for line in lines if line.startswith("loss.")]
    loss = GeneralLPIPSWithDiscriminator(**OFFICIAL, lpips_pretrained=False)
    listing = [
        (f"loss.{k}", ",".join(map(str, v.shape)), str(v.dtype).removeprefix("torch."))
        for k, v in loss.state_dict().items()
    ]
    assert len(expected) == 56
    assert listing == expected
    assert listing[0] == ("loss.logvar", "", "float32")


def test_official_yaml_builds_it(tmp_path, monkeypatch):
    cfg = OmegaConf.load(CONFIGS / "vidtok_kl_causal_488_4chn.yaml").model.params.loss_config
    loss = instantiate_from_config(cfg, lpips_pretrained=False)
    assert isinstance(loss, GeneralLPIPSWithDiscriminator)
    assert isinstance(loss.discriminator, NLayerDiscriminator)
    assert (loss.dims, loss.discriminator_iter_start, loss.discriminator_weight) == (3, 20001, 0.2)
    assert loss.regularization_weights == {"aux_loss": 1.0, "kl_loss": 1e-6}
    assert loss.lecam_ema is not None and loss.gen_loss_cross_entropy and loss.learn_logvar
    # without lpips_pretrained the real LPIPS is wanted, and a missing file is named
    monkeypatch.delenv(LPIPS_ENV, raising=False)
    monkeypatch.setenv(VGG16_ENV, str(tmp_path / "vgg16-397923af.pth"))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        instantiate_from_config(cfg)


def test_original_defaults():
    loss = GeneralLPIPSWithDiscriminator(disc_start=0, lpips_pretrained=False)
    assert isinstance(loss.discriminator, NLayerDiscriminator3D)  # the original defaults to "3d"
    assert (loss.dims, loss.disc_factor, loss.discriminator_weight, loss.perceptual_weight) == (2, 1.0, 1.0, 1.0)
    assert loss.lecam_ema is None and not loss.learn_logvar and not loss.gen_loss_cross_entropy
    assert loss.logvar.item() == 0.0 and loss.disc_loss is hinge_d_loss


@pytest.mark.parametrize(
    "bad", [{"disc_loss": "wgan"}, {"disc_type": "1d"}, {"dims": 4}], ids=["disc_loss", "disc_type", "dims"]
)
def test_invalid_options_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_loss(**bad)


@pytest.mark.parametrize("learn_logvar", [True, False])
def test_parameter_groups(learn_logvar):
    loss = make_loss(learn_logvar=learn_logvar, logvar_init=0.5)
    ae_params = list(loss.get_trainable_autoencoder_parameters())
    assert ae_params == ([loss.logvar] if learn_logvar else [])
    assert loss.logvar.requires_grad == learn_logvar and loss.logvar.shape == ()
    assert loss.logvar.item() == 0.5
    disc_params = list(loss.get_trainable_parameters())
    assert [id(p) for p in disc_params] == [id(p) for p in loss.discriminator.parameters()]
    assert not any(p.requires_grad for p in loss.perceptual_loss.parameters())


# --- generator step --------------------------------------------------------------------------------------------------


def test_gan_terms_switch_on_at_disc_start(batch):
    x, recon, decoder = batch
    loss = make_loss()
    nll, g = expected_nll_and_g(loss, x, recon)
    reg = 1e-6 * 1234.0

    before, log = loss(kl_log(), x, recon, 0, DISC_START - 1, last_layer=decoder.weight)
    assert log["train/disc_factor"].item() == 0.0
    torch.testing.assert_close(before, nll + reg)
    torch.testing.assert_close(log["train/nll_loss"], nll.detach())
    torch.testing.assert_close(log["train/g_loss"], g.detach())

    after, log = loss(kl_log(), x, recon, 0, DISC_START, last_layer=decoder.weight)
    assert log["train/disc_factor"].item() == 1.0
    d_weight = log["train/d_weight"]
    assert d_weight.item() > 0 and g.item() > 0
    torch.testing.assert_close(after, nll + d_weight * g + reg)
    assert not torch.allclose(after, before)


def test_generator_backward_skips_the_discriminator_while_the_gan_is_off(batch):
    """Before disc_start the GAN term enters times 0: same loss value, a gradient of exactly zero, so the backward
    pass never reaches the discriminator; after it, the discriminator is part of the generator's gradient."""
    x, recon, decoder = batch
    loss = make_loss()
    nll, _ = expected_nll_and_g(loss, x, recon)
    disc_params = list(loss.discriminator.parameters())

    before, _ = loss(kl_log(), x, recon, 0, DISC_START - 1, last_layer=decoder.weight)
    grads = torch.autograd.grad(before, [decoder.weight, *disc_params], retain_graph=True, allow_unused=True)
    assert all(g is None for g in grads[1:])
    torch.testing.assert_close(grads[0], torch.autograd.grad(nll, decoder.weight, retain_graph=True)[0])

    after, _ = loss(kl_log(), x, recon, 0, DISC_START, last_layer=decoder.weight)
    grads = torch.autograd.grad(after, disc_params, retain_graph=True, allow_unused=True)
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_adaptive_weight_uses_the_last_layers_gradients(batch):
    x, recon, decoder = batch
    loss = make_loss()
    nll, g = expected_nll_and_g(loss, x, recon)
    nll_grad = torch.autograd.grad(nll, decoder.weight, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g, decoder.weight, retain_graph=True)[0]
    expected = 0.2 * torch.clamp(nll_grad.norm() / (g_grad.norm() + 1e-4), 0.0, 1e4)

    # computed before disc_start too (the original logs it every step), independent of the step
    for step in (0, DISC_START + 10):
        _, log = loss(kl_log(), x, recon, 0, step, last_layer=decoder.weight)
        torch.testing.assert_close(log["train/d_weight"], expected)
    assert not log["train/d_weight"].requires_grad


def test_adaptive_weight_needs_gradients_only_in_training(batch):
    x, recon, decoder = batch
    loss = make_loss(perceptual_weight=0.0)
    with pytest.raises(RuntimeError, match="last_layer"):
        loss(kl_log(), x, recon, 0, DISC_START, last_layer=None)
    loss.eval()
    with torch.no_grad():
        total, log = loss(kl_log(), x, recon, 0, DISC_START, last_layer=decoder.weight, split="val")
    assert log["val/d_weight"].item() == 0.0
    assert torch.isfinite(total)
    # disc_factor 0 turns the GAN off entirely, and no gradient is needed
    off = make_loss(disc_factor=0.0)
    _, log = off(kl_log(), x, recon, 0, DISC_START, last_layer=None)
    assert log["train/d_weight"].item() == 0.0 and log["train/disc_factor"].item() == 0.0


def test_generator_log_keys(batch):
    x, recon, decoder = batch
    loss = make_loss(perceptual_weight=0.0)
    _, log = loss(kl_log(), x, recon, 0, 0, last_layer=decoder.weight, split="val")
    assert list(log) == [f"val/{k}" for k in GENERATOR_KEYS]
    assert all(not v.requires_grad for v in log.values())
    torch.testing.assert_close(log["val/kl_loss"], torch.tensor(1234.0))
    # FSQ logs aux_loss instead
    _, log = loss({"aux_loss": torch.tensor(0.5)}, x, recon, 0, 0, last_layer=decoder.weight)
    assert list(log)[0] == "train/aux_loss"


def test_nll_is_l1_plus_per_frame_lpips_under_the_learned_variance(batch):
    x, recon, decoder = batch
    loss = make_loss(logvar_init=0.5)
    _, log = loss({}, x, recon, 0, 0, last_layer=decoder.weight)
    xf, rf = time_to_batch(x), time_to_batch(recon)  # 4 frames
    p = loss.perceptual_loss(xf, rf)  # [4, 1, 1, 1]: one LPIPS value per frame
    rec = (xf - rf).abs() + p
    torch.testing.assert_close(log["train/p_loss"], p.mean())
    torch.testing.assert_close(log["train/rec_loss"], rec.mean().detach())
    expected = (rec / math.exp(0.5) + 0.5).sum() / 4
    torch.testing.assert_close(log["train/nll_loss"], expected.detach())
    torch.testing.assert_close(log["train/logvar"], torch.tensor(0.5))


def test_weights_scale_the_optimised_nll_but_not_the_logged_one(batch):
    x, recon, decoder = batch
    loss = make_loss(perceptual_weight=0.0)
    plain, log_plain = loss({}, x, recon, 0, 0, last_layer=decoder.weight)
    doubled, log_doubled = loss({}, x, recon, 0, 0, last_layer=decoder.weight, weights=torch.tensor(2.0))
    torch.testing.assert_close(doubled, 2 * plain)  # before disc_start the loss is the NLL alone
    torch.testing.assert_close(log_doubled["train/nll_loss"], log_plain["train/nll_loss"])


def test_generator_loss_variants(batch):
    x, recon, decoder = batch
    loss = make_loss(gen_loss_cross_entropy=False, perceptual_weight=0.0)
    _, log = loss({}, x, recon, 0, 0, last_layer=decoder.weight)
    logits = loss.discriminator(time_to_batch(recon))
    torch.testing.assert_close(log["train/g_loss"], -logits.mean().detach())
    assert log["train/p_loss"].item() == 0.0
    torch.testing.assert_close(log["train/rec_loss"], (x - recon).abs().mean().detach())


def test_images_with_dims_2(batch):
    x, recon, decoder = batch
    loss = make_loss(dims=2, perceptual_weight=0.0)
    images, recon_images = x[:, :, 0], recon[:, :, 0]  # [2, 3, 32, 32]
    total, log = loss({}, images, recon_images, 0, DISC_START, last_layer=decoder.weight)
    assert total.ndim == 0 and log["train/d_weight"].item() > 0
    d_loss, _ = loss({}, images, recon_images, 1, DISC_START)
    assert d_loss.item() > 0
    with pytest.raises(ValueError, match="dims"):
        loss({}, x, recon, 0, 0, last_layer=decoder.weight)
    # a video loss (dims=3) also takes single images
    video_loss = make_loss(perceptual_weight=0.0)
    _, video_log = video_loss({}, images, recon_images, 0, DISC_START, last_layer=decoder.weight)
    torch.testing.assert_close(video_log["train/rec_loss"], log["train/rec_loss"])


def test_3d_discriminator_scores_clips(batch):
    x, recon, decoder = batch
    loss = make_loss(disc_type="3d", perceptual_weight=0.0)
    total, log = loss(kl_log(), x, recon, 0, DISC_START, last_layer=decoder.weight)
    logits = loss.discriminator(recon)  # [2, 1, T', H', W'] on the clip itself
    g = F.softplus(-logits.reshape(2, -1).mean(dim=1)).mean()
    torch.testing.assert_close(log["train/g_loss"], g.detach())
    d_loss, log = loss({}, x, recon, 1, DISC_START)
    assert torch.isfinite(d_loss) and d_loss.item() > 0


def test_scale_input_to_target_size(batch):
    x, recon, decoder = batch
    loss = make_loss(scale_input_to_tgt_size=True, perceptual_weight=0.0)
    big = batch_to_time(F.interpolate(time_to_batch(x), size=(64, 64), mode="nearest"), 2)
    assert big.shape == (2, 3, 2, 64, 64)
    _, log = loss({}, big, recon, 0, 0, last_layer=decoder.weight)
    resized = F.interpolate(time_to_batch(big), size=(32, 32), mode="bicubic", antialias=True)
    torch.testing.assert_close(log["train/rec_loss"], (resized - time_to_batch(recon)).abs().mean().detach())


def test_unknown_optimizer_idx(batch):
    x, recon, _ = batch
    with pytest.raises(ValueError, match="optimizer_idx"):
        make_loss()({}, x, recon, 2, 0)


# --- discriminator step ----------------------------------------------------------------------------------------------


def test_discriminator_step_before_and_after_disc_start(batch):
    x, recon, _ = batch
    loss = make_loss()
    d_loss, log = loss({}, x, recon, 1, DISC_START - 1, split="val")
    assert list(log) == [f"val/{k}" for k in DISCRIMINATOR_KEYS]
    assert d_loss.item() == 0.0 and log["val/disc_factor"].item() == 0.0
    assert log["val/non_saturated_d_loss"].item() > 0  # computed, but weighted by 0

    loss = make_loss()
    d_loss, log = loss({}, x, recon.detach(), 1, DISC_START)
    real = loss.discriminator(time_to_batch(x))  # frames scored separately, real and fake in separate passes
    fake = loss.discriminator(time_to_batch(recon.detach()))
    # the EMAs were updated from 0 by this batch before the penalty was computed
    assert loss.lecam_ema.logits_real_ema == pytest.approx(0.001 * real.mean().item(), rel=1e-5)
    assert loss.lecam_ema.logits_fake_ema == pytest.approx(0.001 * fake.mean().item(), rel=1e-5)
    lecam = lecam_reg(real, fake, loss.lecam_ema)
    hinge = hinge_d_loss(real, fake)
    torch.testing.assert_close(log["train/lecam_loss"], lecam.detach())
    torch.testing.assert_close(log["train/non_saturated_d_loss"], hinge.detach())
    torch.testing.assert_close(d_loss, hinge + 0.005 * lecam)
    torch.testing.assert_close(log["train/logits_real"], real.mean().detach())
    assert log["train/disc_factor"].item() == 1.0


def test_discriminator_step_trains_only_the_discriminator(batch):
    x, recon, decoder = batch
    loss = make_loss(lecam_loss_weight=0.0, disc_loss="vanilla")
    d_loss, log = loss({}, x, recon, 1, DISC_START)
    assert "train/lecam_loss" not in log and loss.lecam_ema is None
    real = loss.discriminator(time_to_batch(x))
    fake = loss.discriminator(time_to_batch(recon.detach()))
    torch.testing.assert_close(d_loss, vanilla_d_loss(real, fake))
    d_loss.backward()
    assert decoder.weight.grad is None  # inputs are detached
    assert all(p.grad is not None for p in loss.discriminator.parameters())
