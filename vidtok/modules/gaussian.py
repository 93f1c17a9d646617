"""KL regularizer: the encoder's `2·z` channels are the mean and log-variance of a diagonal Gaussian."""

from __future__ import annotations

import torch
from torch import nn


class DiagonalGaussianRegularizer(nn.Module):
    """`[B, 2z, T, H, W]` -> (`[B, z, T, H, W]`, {"kl_loss": scalar}).

    Like the original, it samples `mean + std·ε` by default, at inference too, so two encodes of one clip differ.
    Pass `sample=False` (here or per call) for the deterministic posterior mean.
    """

    def __init__(self, sample: bool = True):
        super().__init__()
        self.sample = sample

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(
        self, z: torch.Tensor, n_steps: int | None = None, sample: bool | None = None, compute_aux: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = torch.chunk(z, 2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        if self.sample if sample is None else sample:
            out = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        else:
            out = mean
        # sum over every latent element, averaged over the batch (the original's `sum(kl) / kl.shape[0]`)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
        return out, {"kl_loss": kl.sum() / z.shape[0]}
