"""KL regularizer: the posterior mean/log-variance split, sampling, and the KL term."""

from __future__ import annotations

import torch

from vidtok.modules.gaussian import DiagonalGaussianRegularizer


def test_kl_matches_the_closed_form_and_sampling_uses_the_variance():
    reg = DiagonalGaussianRegularizer()
    mean = torch.randn(2, 3, 2, 4, 4)
    logvar = torch.full_like(mean, -1.0)
    h = torch.cat([mean, logvar], dim=1)
    z, log = reg(h, sample=False)
    assert torch.equal(z, mean)
    expected = 0.5 * (mean**2 + torch.exp(logvar) - 1 - logvar).sum() / 2
    torch.testing.assert_close(log["kl_loss"], expected)
    torch.manual_seed(0)
    samples = torch.stack([reg(h)[0] for _ in range(200)])
    torch.testing.assert_close(samples.std(0).mean(), torch.exp(torch.tensor(-0.5)), atol=0.02, rtol=0)


def test_logvar_is_clamped():
    reg = DiagonalGaussianRegularizer(sample=True)
    h = torch.cat([torch.zeros(1, 1, 1, 1, 1), torch.full((1, 1, 1, 1, 1), 100.0)], dim=1)
    _, log = reg(h)
    torch.testing.assert_close(log["kl_loss"], torch.tensor(0.5 * (torch.exp(torch.tensor(20.0)) - 1 - 20)))
