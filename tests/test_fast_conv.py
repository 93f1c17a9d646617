"""FastConv2d / FastConv3d: the Winograd path in inference, PyTorch's direct conv in training, same keys."""

from __future__ import annotations

import pytest
import torch

from vidtok.modules import fast_conv
from vidtok.modules.causal_conv import CausalConv3d
from vidtok.modules.fast_conv import FastConv2d, FastConv3d
from vidtok.modules.reshape import channels_last


@pytest.fixture
def winograd_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Counts Winograd convolutions (their input shapes) while still computing them."""
    calls: list[tuple[int, ...]] = []
    real = fast_conv.winograd_conv

    def spy(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(fast_conv, "winograd_conv", spy)
    return calls


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert (actual - expected).abs().max().item() <= 2e-5 * expected.abs().max().item()


def test_fast_conv2d_takes_winograd_in_inference(winograd_calls: list) -> None:
    torch.manual_seed(0)
    conv = FastConv2d(64, 72, 3, padding=1)
    x = channels_last(torch.randn(4, 64, 16, 20))
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    with torch.inference_mode():
        out = conv(x)
    assert winograd_calls == [(4, 16, 20, 64)]
    assert out.is_contiguous(memory_format=torch.channels_last)
    _close(out, expected)


def test_fast_conv2d_trains_with_the_direct_kernel(winograd_calls: list) -> None:
    torch.manual_seed(0)
    conv = FastConv2d(64, 64, 3, padding=1)
    x = torch.randn(4, 64, 16, 16, requires_grad=True)
    conv(x).square().mean().backward()
    assert winograd_calls == []
    assert x.grad is not None and conv.weight.grad is not None


def test_small_layers_stay_direct(winograd_calls: list) -> None:
    """Below `MIN_WINOGRAD_PIXELS` output pixels the weight transform would cost more than it saves."""
    conv = FastConv2d(64, 64, 3, padding=1)
    with torch.no_grad():
        conv(torch.randn(1, 64, 8, 8))
    assert winograd_calls == []


@pytest.mark.parametrize("mode", ["constant", "replicate"])
def test_causal_conv3d_takes_winograd_on_channels_last_input(mode: str, winograd_calls: list) -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(64, 64, 3, time_pad_mode=mode)
    x = channels_last(torch.randn(2, 64, 5, 12, 12))
    with torch.no_grad():
        out = conv(x)
    # one call per clip of the batch, each on the clip with its two causal padding frames
    assert winograd_calls == [(7, 12, 12, 64), (7, 12, 12, 64)]
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    conv.conv.forward = lambda t: torch.nn.Conv3d.forward(conv.conv, t)  # the direct kernel, same padding
    with torch.no_grad():
        _close(out, conv(x))


def test_centred_fast_conv3d_pads_time_with_zeros(winograd_calls: list) -> None:
    torch.manual_seed(0)
    conv = FastConv3d(64, 64, 3, padding=1)
    x = channels_last(torch.randn(1, 64, 6, 16, 16))
    with torch.no_grad():
        out = conv(x)
        expected = torch.nn.functional.conv3d(x, conv.weight, conv.bias, padding=1)
    assert len(winograd_calls) == 1
    assert out.shape == expected.shape
    _close(out, expected)


def test_fast_convs_keep_the_state_dict_keys_of_plain_convs() -> None:
    assert FastConv2d(4, 4, 3).state_dict().keys() == torch.nn.Conv2d(4, 4, 3).state_dict().keys()
    assert FastConv3d(4, 4, 3).state_dict().keys() == torch.nn.Conv3d(4, 4, 3).state_dict().keys()


def test_direct_convs_turns_winograd_off_inside_the_block(winograd_calls: list) -> None:
    torch.manual_seed(0)
    conv = FastConv2d(64, 64, 3, padding=1)
    x = torch.randn(4, 64, 16, 16)
    with torch.no_grad():
        with fast_conv.direct_convs():
            direct = conv(x)
        assert winograd_calls == []
        fast = conv(x)
    assert len(winograd_calls) == 1
    torch.testing.assert_close(direct, torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
    _close(fast, direct)
