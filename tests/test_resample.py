"""Temporal resampling: frame repetition and the α-blend, in and out of autograd."""

from __future__ import annotations

import pytest
import torch

from vidtok.modules.resample import TemporalDownsample, TemporalUpsample, repeat_frames


@pytest.mark.parametrize("layout", [torch.channels_last_3d, torch.contiguous_format])
def test_repeat_frames_equals_repeat_interleave(layout: torch.memory_format) -> None:
    x = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=layout)
    out = repeat_frames(x)
    torch.testing.assert_close(out, torch.repeat_interleave(x, 2, dim=2), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("module", [
    TemporalUpsample(4, causal=True),
    TemporalDownsample(4, causal=True),
    TemporalDownsample(4, causal=False),
])
def test_blend_is_the_same_with_and_without_autograd(module: torch.nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 3, 3)
    alpha = torch.sigmoid(module.mix_factor)
    with torch.no_grad():
        fast = module(x)  # the in-place blend
    out = module(x)
    torch.testing.assert_close(fast, out, rtol=1e-6, atol=1e-6)
    out.sum().backward()  # α gets a gradient through the out-of-place blend
    assert module.mix_factor.grad is not None and module.mix_factor.grad.abs().item() > 0
    assert 0.5 < alpha.item() < 1


def test_upsample_blend_is_alpha_weighted_sum() -> None:
    torch.manual_seed(0)
    module = TemporalUpsample(4, causal=True)
    x = torch.randn(1, 4, 3, 3, 3)
    with torch.no_grad():
        up = torch.repeat_interleave(x, 2, dim=2)
        alpha = torch.sigmoid(module.mix_factor)
        expected = alpha * up + (1 - alpha) * module.conv(up)
        torch.testing.assert_close(module(x), expected, rtol=1e-6, atol=1e-6)
