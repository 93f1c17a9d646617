"""PatchGAN discriminators of VidTok's training loss: 2D (per frame, the one every official config uses) and 3D.

Both are the pix2pix / taming-transformers "N-layer" design: a strided conv, then `n_layers` conv + BatchNorm +
LeakyReLU(0.2) stages whose width doubles up to 8·ndf, and a final conv to a one-channel logit map. Convs followed by
BatchNorm carry no bias. With the defaults the 2D model has 2,765,633 parameters and state keys
`main.{0,2,3,5,6,8,9,11}`.

Initialisation (`weights_init`, applied at construction): conv weights N(0, 0.02) with PyTorch's default bias init,
BatchNorm weights N(1, 0.02) and biases 0.
"""

from __future__ import annotations

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def weights_init(module: nn.Module) -> None:
    """GAN initialisation for one module (use with `Module.apply`): convs N(0, 0.02), BatchNorm N(1, 0.02) / 0."""
    if isinstance(module, _CONVS):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, _BATCH_NORMS):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)


def _reject_actnorm(use_actnorm: bool) -> None:
    if use_actnorm:
        raise ValueError("use_actnorm=True (ActNorm) is not supported: VidTok's discriminators use BatchNorm")


def _widths(ndf: int, n_layers: int) -> list[int]:
    """Output channels of the first conv and of each of the `n_layers` normalised stages: ndf·min(2^n, 8)."""
    return [ndf * min(2**n, 8) for n in range(n_layers + 1)]


class NLayerDiscriminator(nn.Module):
    """2D PatchGAN: `[N, input_nc, H, W]` -> logits `[N, 1, H', W']` (for 256² and 3 layers, 30×30).

    Layout (n_layers=3): conv k4 s2 → LReLU → [conv k4 s2 → BN → LReLU] ×2 → conv k4 s1 → BN → LReLU → conv k4 s1 → 1.
    Every conv pads 1.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False) -> None:
        super().__init__()
        _reject_actnorm(use_actnorm)
        widths = _widths(ndf, n_layers)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, widths[0], kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1  # the last normalised stage keeps the resolution
            layers += [
                nn.Conv2d(widths[n - 1], widths[n], kernel_size=4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(widths[n]),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, C, H, W]` -> `[N, 1, H', W']` patch logits."""
        return self.main(x)


class NLayerDiscriminator3D(nn.Module):
    """3D PatchGAN: `[B, input_nc, T, H, W]` -> logits `[B, 1, T', H', W']`.

    The 2D layout with k3 convs (padding 1) and BatchNorm3d. Strides: the first conv (2, 2, 2); among the normalised
    stages the first (2, 2, 2), the next ones (1, 2, 2), the last 1; the final conv 1. So time is halved twice and
    space three times with n_layers=3 (17 frames -> 5).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False) -> None:
        super().__init__()
        _reject_actnorm(use_actnorm)
        widths = _widths(ndf, n_layers)
        layers: list[nn.Module] = [
            nn.Conv3d(input_nc, widths[0], kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for n in range(1, n_layers + 1):
            if n == n_layers:
                stride: tuple[int, int, int] = (1, 1, 1)
            else:
                stride = (2 if n == 1 else 1, 2, 2)
            layers += [
                nn.Conv3d(widths[n - 1], widths[n], kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(widths[n]),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv3d(widths[-1], 1, kernel_size=3, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T, H, W]` -> `[B, 1, T', H', W']` patch logits."""
        return self.main(x)
