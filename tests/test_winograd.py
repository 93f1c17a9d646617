"""Winograd F(4×4, 3×3): transformed weights, the banded convolution and weight gradient against PyTorch's direct
ones, and when it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidtok.kernels import winograd
from vidtok.kernels.winograd import release_workspace, transform_weight, winograd_applies, winograd_conv


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, time_pad: int) -> torch.Tensor:
    """Direct conv of frames `[F, H, W, C]` in float64, returned as `[F', H, W, C_out]` float32."""
    clip = x.permute(3, 0, 1, 2).unsqueeze(0).double()
    w = weight if weight.ndim == 5 else weight.unsqueeze(2)
    b = None if bias is None else bias.double()
    out = F.conv3d(clip, w.double(), b, padding=(time_pad, 1, 1))
    return out[0].permute(1, 2, 3, 0).float()


def _assert_close_to_direct(out: torch.Tensor, expected: torch.Tensor) -> None:
    # F(4, 3) rounds differently from a direct conv, at about 1e-6 of the output's scale in fp32
    scale = expected.abs().max().item()
    assert (out - expected).abs().max().item() <= 2e-5 * scale


def test_transform_weight_is_g_w_gt_per_tap() -> None:
    torch.manual_seed(0)
    weight = torch.randn(5, 4, 3, 3, 3)
    g = winograd._G
    expected = torch.einsum("ai,ockij,bj->kaboc", g, weight.double(), g).reshape(3, 36, 5, 4)
    torch.testing.assert_close(transform_weight(weight).double(), expected, rtol=1e-6, atol=1e-6)
    # a 2D weight is one tap
    assert transform_weight(weight[:, :, 0]).shape == (1, 36, 5, 4)
    # the transposed convolution's kernel: flipped in time and space, channels swapped, without a copy of it
    transposed = weight.flip(2, 3, 4).transpose(0, 1)
    torch.testing.assert_close(transform_weight(weight, transposed=True), transform_weight(transposed.contiguous()),
                               rtol=0, atol=1e-6)


def test_the_transposed_conv_carries_an_outputs_gradient_back_to_the_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 9, 7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, 3, 3, 3)
    upstream = torch.randn(4, 9, 7, 4)  # two frames fewer: no time padding
    (expected,) = torch.autograd.grad(_reference(x, weight, None, 0).double(), x, upstream.double())
    _assert_close_to_direct(winograd_conv(upstream, weight, None, time_pad=2, transposed=True), expected.float())


@pytest.mark.parametrize(
    ("frames", "height", "width", "taps", "time_pad"),
    [(3, 8, 8, 1, 0), (5, 13, 18, 3, 0), (4, 7, 5, 3, 1), (6, 16, 9, 1, 0), (3, 4, 4, 3, 0)],
)
def test_winograd_conv_matches_direct_conv(frames: int, height: int, width: int, taps: int, time_pad: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(frames, height, width, 6)
    weight = torch.randn(7, 6, taps, 3, 3) if taps > 1 else torch.randn(7, 6, 3, 3)
    bias = torch.randn(7)
    out = winograd_conv(x, weight, bias, time_pad=time_pad)
    assert out.shape == (frames + 2 * time_pad - taps + 1, height, width, 7)
    _assert_close_to_direct(out, _reference(x, weight, bias, time_pad))


def test_winograd_conv_reads_any_strides_and_writes_into_out() -> None:
    torch.manual_seed(0)
    clip = torch.randn(1, 8, 4, 12, 12)  # channels-first: its [F, H, W, C] view is not contiguous
    x = clip[0].permute(1, 2, 3, 0)
    weight = torch.randn(5, 8, 3, 3, 3)
    out = torch.full((2, 12, 12, 5), float("nan"))
    result = winograd_conv(x, weight, None, out=out)
    assert result is out
    _assert_close_to_direct(out, _reference(x, weight, None, 0))


def _reference_weight_grad(x: torch.Tensor, grad: torch.Tensor, taps: int, time_pad: int) -> torch.Tensor:
    """The weight gradient of a direct conv of frames `x` `[F, H, W, C]` given the output gradient, in float64."""
    clip = x.permute(3, 0, 1, 2).unsqueeze(0).double()
    weight = torch.zeros(grad.shape[-1], x.shape[-1], taps, 3, 3, dtype=torch.float64, requires_grad=True)
    out = F.conv3d(clip, weight, padding=(time_pad, 1, 1))
    out.backward(grad.permute(3, 0, 1, 2).unsqueeze(0).double())
    return weight.grad.float()


@pytest.mark.parametrize(
    ("frames", "height", "width", "taps", "time_pad"),
    [(3, 8, 8, 1, 0), (5, 13, 18, 3, 0), (4, 7, 5, 3, 1), (3, 4, 4, 3, 0)],
)
def test_weight_grad_matches_direct_conv(frames: int, height: int, width: int, taps: int, time_pad: int) -> None:
    torch.manual_seed(0)
    clips = [torch.randn(frames, height, width, 6) for _ in range(2)]
    grads = [torch.randn(frames + 2 * time_pad - taps + 1, height, width, 7) for _ in range(2)]
    out = winograd.winograd_weight_grad(clips, grads, taps, time_pad)
    expected = sum(_reference_weight_grad(x, g, taps, time_pad) for x, g in zip(clips, grads, strict=True))
    assert out.shape == (7, 6, taps, 3, 3)
    _assert_close_to_direct(out, expected)


@pytest.mark.parametrize("weight_grad", [False, True], ids=["conv", "weight_grad"])
def test_bands_of_rows_and_of_frames_give_the_same_result(weight_grad: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small workspaces split the work into bands of tile rows, then into chunks of frames; the result is the same."""
    torch.manual_seed(0)
    x = torch.randn(7, 20, 12, 4)
    weight = torch.randn(4, 4, 3, 3, 3)
    bias = torch.randn(4)
    grad = torch.randn(7, 20, 12, 4)
    band_numel = winograd._weight_grad_band_numel if weight_grad else winograd._band_numel

    def run() -> torch.Tensor:
        if weight_grad:
            return winograd.winograd_weight_grad([x], [grad], 3, time_pad=1)
        return winograd_conv(x, weight, bias, time_pad=1)

    whole = run()
    frames_out, tw = 7, 3
    one_row = band_numel(frames_out, 1, tw, 3, 4, 4) * 4
    for budget, expected_plan in ((2 * one_row, (frames_out, 2)), (one_row // 2, None)):
        monkeypatch.setattr(winograd, "BAND_BYTES", budget)
        chunk, rows = winograd._plan(band_numel, frames_out, 5, tw, 3, 4, 4, 4)
        if expected_plan is not None:
            assert (chunk, rows) == expected_plan
        else:
            assert rows == 1 and 1 <= chunk < frames_out
        # GEMMs of other sizes may sum in another order: equal up to rounding
        banded = run()
        assert (banded - whole).abs().max().item() <= 1e-5 * whole.abs().max().item()
    expected = _reference_weight_grad(x, grad, 3, 1) if weight_grad else _reference(x, weight, bias, 1)
    _assert_close_to_direct(whole, expected)


def test_workspace_is_reused_across_calls_and_can_be_released() -> None:
    torch.manual_seed(0)
    release_workspace()
    weight = torch.randn(4, 4, 3, 3)
    winograd_conv(torch.randn(2, 8, 8, 4), weight, None)
    buffer = winograd._workspace().buffer
    assert buffer.numel() > 0
    winograd_conv(torch.randn(1, 8, 8, 4), weight, None)  # needs less: the same memory
    assert winograd._workspace().buffer.data_ptr() == buffer.data_ptr()
    release_workspace()
    assert winograd._workspace().buffer.numel() == 0


def test_a_workspace_made_under_inference_mode_serves_later_no_grad_calls() -> None:
    """Under inference_mode a new buffer would be an inference tensor, which no_grad code may not write into."""
    torch.manual_seed(0)
    release_workspace()
    weight, bias = torch.randn(5, 4, 3, 3), torch.randn(5)
    x = torch.randn(2, 8, 8, 4)
    with torch.inference_mode():
        first = winograd_conv(x, weight, bias)
    with torch.no_grad():
        again = winograd_conv(x, weight, bias)
    assert first.is_inference() and not again.is_inference()
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    _assert_close_to_direct(again, _reference(x, weight, bias, 0))
    with torch.inference_mode():  # and back: the same buffer serves both modes
        buffer = winograd._workspace().buffer.data_ptr()
        torch.testing.assert_close(winograd_conv(x, weight, bias), first, rtol=0, atol=0)
        assert winograd._workspace().buffer.data_ptr() == buffer


def test_winograd_applies_only_to_plain_3x3_kernels() -> None:
    assert winograd_applies(torch.nn.Conv2d(64, 64, 3, padding=1))
    assert winograd_applies(torch.nn.Conv3d(64, 128, 3, padding=(0, 1, 1)))
    assert not winograd_applies(torch.nn.Conv2d(64, 64, 3, stride=2, padding=1))
    assert not winograd_applies(torch.nn.Conv2d(64, 64, 3, padding=2, dilation=2))
    assert not winograd_applies(torch.nn.Conv2d(64, 64, 3, padding=1, groups=2))
    assert not winograd_applies(torch.nn.Conv2d(64, 64, 5, padding=2))
    assert not winograd_applies(torch.nn.Conv2d(64, 64, 3, padding=0))
    assert not winograd_applies(torch.nn.Conv2d(32, 64, 3, padding=1))
