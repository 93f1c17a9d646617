"""FastConv2d / FastConv3d: the Winograd path in inference and training, PyTorch's direct conv elsewhere, same keys."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from vidtok.kernels import fast_conv
from vidtok.kernels.fast_conv import FastConv2d, FastConv3d
from vidtok.modules.causal_conv import CausalConv3d
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


def _train_step(conv: torch.nn.Module, x: torch.Tensor, grad_seed: int = 1) -> list[torch.Tensor]:
    """Output and the gradients of input, weight and bias for one backward pass of a fixed random output gradient."""
    x = x.detach().requires_grad_()
    conv.zero_grad()
    out = conv(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)))
    return [out.detach(), x.grad, conv.weight.grad, conv.bias.grad]


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (FastConv2d(64, 72, 3, padding=1), (4, 64, 16, 20)),
        (FastConv3d(64, 80, 3, padding=(0, 1, 1)), (2, 64, 7, 12, 12)),  # as a causal conv runs it
        (FastConv3d(64, 64, 3, padding=1), (1, 64, 8, 12, 11)),
    ],
    ids=["2d", "3d_causal", "3d_centred"],
)
def test_fast_convs_train_with_winograd_forward_and_backward(conv: torch.nn.Module, shape: tuple[int, ...],
                                                             winograd_calls: list) -> None:
    """In training the output, the input's gradient (a Winograd conv of the output's gradient) and the weight's and
    bias's gradients are the direct kernel's up to rounding."""
    torch.manual_seed(0)
    x = channels_last(torch.randn(shape))
    with fast_conv.direct_convs():
        expected = _train_step(conv, x)
    assert winograd_calls == []
    actual = _train_step(conv, x)
    clips = shape[0] if len(shape) == 5 else 1  # a 2D conv's frames are one clip
    assert len(winograd_calls) == 2 * clips  # the forward pass and the input's gradient, clip by clip
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        _close(a, e)
    assert actual[0].is_contiguous(memory_format=channels_last_format(len(shape)))


def channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def test_a_gradient_of_a_gradient_takes_the_differentiable_direct_backward(winograd_calls: list) -> None:
    """create_graph: the backward pass runs PyTorch's own formulas so that it can be differentiated again."""
    torch.manual_seed(0)
    conv = FastConv3d(64, 64, 3, padding=(0, 1, 1))
    x = torch.randn(1, 64, 6, 16, 16, requires_grad=True)

    def penalty_grad() -> tuple[int, torch.Tensor]:
        (x_grad,) = torch.autograd.grad(conv(x).square().sum(), x, create_graph=True)
        calls_in_first_order = len(winograd_calls)
        weight_grad = torch.autograd.grad(x_grad.square().sum(), conv.weight)[0]
        return calls_in_first_order, weight_grad

    with fast_conv.direct_convs():
        _, expected = penalty_grad()
    calls, actual = penalty_grad()
    assert calls == 1  # the forward pass; the input's gradient came from the direct formulas, kept as a graph
    _close(actual, expected)


def test_fast_kernels_apply_to_eager_fp32_cpu_work_only() -> None:
    x, weight = torch.randn(1, 8, 4, 4), torch.randn(8, 8, 3, 3)
    assert fast_conv.fast_kernels_apply(x, weight)
    assert not fast_conv.fast_kernels_apply(x.double(), weight.double())
    assert not fast_conv.fast_kernels_apply(x, weight.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast_conv.fast_kernels_apply(x, weight)
    with fast_conv.direct_convs():
        assert not fast_conv.fast_kernels_apply(x, weight)
    assert not fast_conv.fast_kernels_apply(x.to("meta"), weight.to("meta"))


def test_training_reads_channels_last_unless_the_clip_is_smaller_than_the_weight() -> None:
    conv = FastConv3d(64, 64, 3, padding=(0, 1, 1))
    small, large = channels_last(torch.randn(1, 64, 3, 4, 4)), channels_last(torch.randn(1, 64, 8, 32, 32))
    with fast_conv.direct_convs():
        assert conv.takes_channels_last(large)
        # a channels-last input would give a channels-last weight gradient, which autograd then copies
        assert not conv.takes_channels_last(small)
        conv(small.requires_grad_()).sum().backward()
        assert conv.weight.grad.is_contiguous()
        with torch.no_grad():
            assert not conv.takes_channels_last(large)
    assert conv.takes_channels_last(large)  # Winograd


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


def _winograd_in_new_thread(conv: FastConv2d, x: torch.Tensor, winograd_calls: list) -> bool:
    """Run `conv(x)` without autograd in a freshly started thread; whether it took the Winograd path."""
    before = len(winograd_calls)

    def work() -> None:
        with torch.no_grad():
            conv(x)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return len(winograd_calls) > before


def test_the_process_wide_switch_reaches_new_threads(winograd_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_conv, "_process_enabled", True)  # restored afterwards
    conv, x = FastConv2d(64, 64, 3, padding=1), torch.randn(4, 64, 16, 16)
    assert _winograd_in_new_thread(conv, x, winograd_calls)
    with fast_conv.direct_convs():  # a block of this thread only: a thread started inside it still runs Winograd
        assert not fast_conv.fast_convs_enabled()
        assert _winograd_in_new_thread(conv, x, winograd_calls)
    fast_conv.set_fast_convs(False)
    assert not fast_conv.fast_convs_enabled()
    assert not _winograd_in_new_thread(conv, x, winograd_calls)
    with torch.no_grad():
        conv(x)  # and this thread too
    assert len(winograd_calls) == 2
    fast_conv.set_fast_convs(True)
    assert _winograd_in_new_thread(conv, x, winograd_calls)


@pytest.mark.parametrize(("value", "enabled"), [("0", False), ("1", True)])
def test_vidtok_fast_conv_environment_variable_sets_the_switch(value: str, enabled: bool) -> None:
    code = "from vidtok.kernels import fast_conv; print(fast_conv.fast_convs_enabled())"
    env = {**os.environ, "VIDTOK_FAST_CONV": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(enabled)


def test_jit_trace_records_the_direct_kernel(winograd_calls: list) -> None:
    torch.manual_seed(0)
    conv = FastConv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(2, 64, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(conv, x, check_trace=False)  # the check would rerun it eagerly, as Winograd
        assert winograd_calls == []
        assert "aten::_convolution" in str(traced.graph) and "aten::bmm" not in str(traced.graph)
        other = torch.randn(1, 64, 24, 40)  # a traced Winograd plan would be frozen to the first size
        torch.testing.assert_close(traced(other), torch.nn.functional.conv2d(other, conv.weight, conv.bias, padding=1))
