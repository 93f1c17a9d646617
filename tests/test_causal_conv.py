"""Causal convolutions: the whole-clip fast paths against the plain padded-copy computation, and layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidtok.kernels.fast_conv import FastConv3d
from vidtok.modules.causal_conv import (
    CausalConv1d,
    CausalConv3d,
    conv1d_over_time,
    pad_time_front,
)
from vidtok.modules.reshape import channels_last

CL3 = torch.channels_last_3d


def _clip(frames: int = 7, channels: int = 6, layout: torch.memory_format = CL3) -> torch.Tensor:
    g = torch.Generator().manual_seed(frames)
    return torch.randn(2, channels, frames, 5, 4, generator=g).contiguous(memory_format=layout)


@pytest.mark.parametrize("mode", ["constant", "replicate"])
@pytest.mark.parametrize("layout", [CL3, torch.contiguous_format])
def test_pad_time_front_values_and_layout(mode: str, layout: torch.memory_format) -> None:
    x = _clip(layout=layout)
    out = pad_time_front(x, 3, mode)
    assert out.shape == (2, 6, 10, 5, 4)
    assert out.is_contiguous(memory_format=layout)
    torch.testing.assert_close(out[:, :, 3:], x, rtol=0, atol=0)
    expected = torch.zeros_like(x[:, :, :1]) if mode == "constant" else x[:, :, :1]
    torch.testing.assert_close(out[:, :, :3], expected.expand(-1, -1, 3, -1, -1), rtol=0, atol=0)
    # asking for a layout changes it in the same copy, and with no padding converts only
    assert pad_time_front(x, 2, mode, torch.contiguous_format).is_contiguous()
    assert pad_time_front(x, 0, mode) is x
    assert pad_time_front(x, 0, mode, CL3).is_contiguous(memory_format=CL3)
    with pytest.raises(ValueError, match="'constant' or 'replicate'"):
        pad_time_front(x, 1, "reflect")


@pytest.mark.parametrize("mode", ["constant", "replicate"])
@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (3, 2), (1, 1), (5, 1)])
@pytest.mark.parametrize("frames", [1, 2, 7])
def test_causal_conv1d_whole_clip_equals_padded_copy(mode: str, kernel: int, dilation: int, frames: int) -> None:
    torch.manual_seed(0)
    conv = CausalConv1d(6, 8, kernel, dilation=dilation, time_pad_mode=mode)
    x = _clip(frames)
    # the reference: pad in front with a copy, then the unpadded conv
    expected = conv1d_over_time(conv.conv, pad_time_front(x, conv.time_pad, mode))
    for autograd in (False, True):
        with torch.set_grad_enabled(autograd):
            out = conv(x)
        assert out.shape == (2, 8, frames, 5, 4)
        assert out.is_contiguous(memory_format=CL3)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_causal_conv1d_fast_path_has_gradients_of_the_reference() -> None:
    torch.manual_seed(0)
    conv = CausalConv1d(6, 8, 3, time_pad_mode="replicate")
    x = _clip().requires_grad_(True)
    conv(x).square().sum().backward()
    fast = (x.grad.clone(), conv.conv.weight.grad.clone())
    x.grad = None
    conv.zero_grad()
    conv1d_over_time(conv.conv, pad_time_front(x, conv.time_pad, "replicate")).square().sum().backward()
    torch.testing.assert_close(fast[0], x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast[1], conv.conv.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["constant", "replicate"])
def test_causal_conv3d_runs_channels_first_and_returns_channels_last(mode: str) -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(6, 8, 3, time_pad_mode=mode)
    assert isinstance(conv.conv, FastConv3d)  # too few channels for Winograd: oneDNN on a channels-first copy
    x = _clip()
    out = conv(x)
    assert out.is_contiguous(memory_format=CL3)
    expected = F.conv3d(pad_time_front(x.contiguous(), 2, mode), conv.conv.weight, conv.conv.bias, padding=(0, 1, 1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # 1×1×1 convs stay plain (channels-last in, channels-last out)
    assert type(CausalConv3d(6, 8, 1).conv) is torch.nn.Conv3d


def test_channels_last_helper() -> None:
    x = torch.randn(1, 3, 2, 4, 4)
    assert channels_last(x).is_contiguous(memory_format=CL3)
    y = channels_last(x)
    assert channels_last(y) is y
    assert channels_last(x[:, :, 0]).is_contiguous(memory_format=torch.channels_last)
