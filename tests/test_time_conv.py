"""The time convolutions' per-tap GEMMs (`vidtok::time_conv`): PyTorch's conv's values and gradients, and when
they apply (what a selective recomputation keeps of them: `test_recompute.py`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidtok.kernels import fast_conv
from vidtok.kernels import time_conv as time_conv_module
from vidtok.kernels.time_conv import time_conv, time_conv_applies
from vidtok.modules.causal_conv import CausalConv1d, conv1d_over_time
from vidtok.modules.reshape import channels_last


@pytest.fixture
def gemm_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Counts the GEMM path's forward passes (their input shapes) while still computing them."""
    calls: list[tuple[int, ...]] = []
    real = time_conv_module._convolve

    def spy(x: torch.Tensor, *args) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(time_conv_module, "_convolve", spy)
    return calls


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, front: int, back: int,
               replicate_front: bool = False) -> torch.Tensor:
    """PyTorch's conv in float64 on an explicitly padded copy."""
    x = x.double()
    head = x[:, :, :1].expand(-1, -1, front, -1, -1) * (1.0 if replicate_front else 0.0)
    padded = F.pad(torch.cat([head, x], dim=2), (0, 0, 0, 0, 0, back))
    return F.conv3d(padded, weight.double()[..., None, None], None if bias is None else bias.double())


@pytest.mark.parametrize(("taps", "front", "back", "replicate"),
                         [(3, 2, 0, False), (3, 2, 0, True), (3, 1, 1, False), (1, 0, 0, False), (3, 0, 0, False),
                          (5, 4, 0, True)])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_time_conv_gives_the_padded_convs_values_and_gradients(taps: int, front: int, back: int, replicate: bool,
                                                               layout: str, with_bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 3, 4)
    x = (channels_last(x) if layout == "channels_last" else x.contiguous()).requires_grad_()
    weight = torch.randn(7, 6, taps, requires_grad=True)
    bias = torch.randn(7, requires_grad=True) if with_bias else None
    out = time_conv(x, weight, bias, front, back, replicate)
    expected = _reference(x, weight, bias, front, back, replicate)
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)

    upstream = torch.randn(out.shape, dtype=torch.float64)
    inputs = [x, weight] + ([bias] if with_bias else [])
    got = torch.autograd.grad(out, inputs, upstream.float())
    wanted = torch.autograd.grad(expected, inputs, upstream)
    for a, b in zip(got, wanted, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_a_frame_that_no_tap_reaches_gets_a_zero_gradient() -> None:
    x = torch.randn(1, 4, 2, 2, 2, requires_grad=True)
    weight = torch.randn(4, 4, 3, requires_grad=True)
    out = time_conv(x, weight, None, 2, 0, False)[:, :, :1]  # frame 0 reads only frame 0 (and the padding)
    out.sum().backward()
    assert x.grad[:, :, 1].abs().max() == 0
    assert weight.grad[:, :, :2].abs().max() == 0  # the two taps on the padding


@pytest.mark.parametrize("replicate", [False, True])
def test_a_gradient_of_a_gradient_matches_pytorchs_conv(replicate: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 3, 3, requires_grad=True)
    weight = torch.randn(4, 4, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)

    def penalty(conv) -> torch.Tensor:
        out = conv(x, weight, bias, 2, 0, replicate)
        (grad,) = torch.autograd.grad((out * torch.linspace(-1, 1, 5)[:, None, None]).square().sum(), x,
                                      create_graph=True)
        return (grad * torch.linspace(0, 2, 5)[:, None, None]).square().sum()

    ours = torch.autograd.grad(penalty(time_conv), (x, weight, bias))
    theirs = torch.autograd.grad(penalty(lambda *a: _reference(*a).float()), (x, weight, bias))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mode", ["constant", "replicate"])
def test_causal_conv1d_trains_through_the_gemms_as_through_pytorchs_conv(mode: str, gemm_calls: list) -> None:
    torch.manual_seed(0)
    conv = CausalConv1d(16, 24, 3, time_pad_mode=mode)
    x0 = channels_last(torch.randn(2, 16, 6, 5, 4))

    def train_step() -> list[torch.Tensor]:
        x = x0.clone().requires_grad_()
        conv.zero_grad()
        out = conv(x)
        out.square().sum().backward()
        return [out.detach(), x.grad, conv.conv.weight.grad.clone(), conv.conv.bias.grad.clone()]

    fast = train_step()
    assert gemm_calls == [tuple(x0.shape)]
    with fast_conv.direct_convs():
        direct = train_step()
    assert len(gemm_calls) == 1
    for a, b in zip(fast, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_uneven_padding_on_the_direct_path_drops_the_extra_frames() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 4, 3)
    x = torch.randn(1, 4, 6, 2, 2)
    with fast_conv.direct_convs():
        direct = conv1d_over_time(conv, x, padding=(2, 0))
    torch.testing.assert_close(direct.double(), _reference(x, conv.weight, conv.bias, 2, 0), rtol=1e-5, atol=1e-5)
    strided = torch.nn.Conv1d(4, 4, 3, stride=2)
    with pytest.raises(ValueError, match="stride-1 conv"):
        conv1d_over_time(strided, x, padding=(2, 0))


def test_time_conv_applies_only_to_plain_fp32_cpu_convs() -> None:
    x = torch.randn(1, 8, 4, 2, 2)
    conv = torch.nn.Conv1d(8, 8, 3, padding=1)
    assert time_conv_applies(conv, x)
    assert not time_conv_applies(conv, x[:, :, :, 0, 0])  # [N, C, T]: PyTorch's conv1d
    assert not time_conv_applies(conv, x.double())
    assert not time_conv_applies(torch.nn.Conv1d(8, 8, 3, stride=2), x)
    assert not time_conv_applies(torch.nn.Conv1d(8, 8, 3, dilation=2), x)
    assert not time_conv_applies(torch.nn.Conv1d(8, 8, 3, groups=2), x)
    assert not time_conv_applies(torch.nn.Conv1d(8, 8, 3, padding=1, padding_mode="circular"), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not time_conv_applies(conv, x)
    with fast_conv.direct_convs():
        assert not time_conv_applies(conv, x)
