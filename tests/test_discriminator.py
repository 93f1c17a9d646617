"""PatchGAN discriminators: the original's keys and sizes, output shapes and GAN initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import CONFORMANCE
from vidtok.training.discriminator import NLayerDiscriminator, NLayerDiscriminator3D, weights_init

PREFIX = "loss.discriminator."


def listing(module: nn.Module) -> list[tuple[str, str, str]]:
    return [
        (k, ",".join(map(str, v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()
    ]


def test_2d_state_dict_matches_the_original_layout():
    lines = (CONFORMANCE / "keys" / "vidtok_kl_causal_488_4chn.tsv").read_text().splitlines()
    expected = [
        (k.removeprefix(PREFIX), s, d) for k, s, d in (line.split("\t") for line in lines) if k.startswith(PREFIX)
    ]
    assert len(expected) == 22
    assert listing(NLayerDiscriminator()) == expected


def test_2d_size_and_patch_output():
    disc = NLayerDiscriminator()
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633  # spec §2, counted on the original
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2
    assert disc(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_2d_layers():
    main = NLayerDiscriminator().main
    convs = [m for m in main if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(4, 4)] * 5
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (2, 2), (1, 1), (1, 1)]
    assert [c.padding for c in convs] == [(1, 1)] * 5
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]  # no bias before BatchNorm
    assert all(isinstance(main[i], nn.BatchNorm2d) for i in (3, 6, 9))
    relus = [m for m in main if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == 4 and all(r.negative_slope == 0.2 for r in relus)


def test_3d_layout_and_output():
    disc = NLayerDiscriminator3D()
    state = disc.state_dict()
    assert list(state) == [k for k, _, _ in listing(NLayerDiscriminator())]  # same key names as the 2D model
    assert state["main.0.weight"].shape == (64, 3, 3, 3, 3)
    assert state["main.8.weight"].shape == (512, 256, 3, 3, 3)
    assert state["main.11.weight"].shape == (1, 512, 3, 3, 3)
    convs = [m for m in disc.main if isinstance(m, nn.Conv3d)]
    assert [c.stride for c in convs] == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1)]
    assert all(isinstance(disc.main[i], nn.BatchNorm3d) for i in (3, 6, 9))
    # 17 frames: 17 -> 9 -> 5 -> 5; 32 px: 32 -> 16 -> 8 -> 4
    assert disc(torch.randn(2, 3, 17, 32, 32)).shape == (2, 1, 5, 4, 4)


@pytest.mark.parametrize("cls", [NLayerDiscriminator, NLayerDiscriminator3D])
def test_gan_initialisation(cls):
    torch.manual_seed(0)
    disc = cls()
    big_conv = disc.main[8].weight  # 2M (2D) or 3.5M (3D) values: sample statistics are tight
    assert abs(big_conv.mean().item()) < 1e-3
    assert big_conv.std().item() == pytest.approx(0.02, rel=0.01)
    for i in (3, 6, 9):
        bn = disc.main[i]
        assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01)
        assert 0.005 < bn.weight.std().item() < 0.04
        torch.testing.assert_close(bn.bias, torch.zeros_like(bn.bias))
    # conv biases keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zeros
    first = disc.main[0]
    bound = 1 / first.weight[0].numel() ** 0.5
    assert first.bias.abs().max().item() <= bound and first.bias.abs().max().item() > 0


def test_weights_init_on_single_modules():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3)
    bias_before = conv.bias.clone()
    weights_init(conv)
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    torch.testing.assert_close(conv.bias, bias_before)
    bn = nn.BatchNorm3d(256)
    weights_init(bn)
    torch.testing.assert_close(bn.bias, torch.zeros(256))
    linear = nn.Linear(4, 4)
    before = linear.weight.clone()
    weights_init(linear)  # neither conv nor BatchNorm: untouched
    torch.testing.assert_close(linear.weight, before)


@pytest.mark.parametrize("n_layers", [1, 2, 4])
def test_other_depths(n_layers):
    disc = NLayerDiscriminator(n_layers=n_layers, ndf=8)
    widths = [m.out_channels for m in disc.main if isinstance(m, nn.Conv2d)]
    assert widths == [8 * min(2**n, 8) for n in range(n_layers + 1)] + [1]
    assert disc(torch.randn(2, 3, 64, 64)).shape[:2] == (2, 1)


@pytest.mark.parametrize("cls", [NLayerDiscriminator, NLayerDiscriminator3D])
def test_actnorm_is_rejected(cls):
    with pytest.raises(ValueError, match="use_actnorm"):
        cls(use_actnorm=True)
