"""Temporal resampling: frame repetition and the α-blend, in and out of autograd."""

from __future__ import annotations

import pytest
import torch

from tests.memory_helpers import LiveTensorBytes
from vidtok.modules import resample
from vidtok.modules.resample import TemporalDownsample, TemporalUpsample, _LerpReleasingInputs, repeat_frames


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


@pytest.mark.parametrize("layout", [torch.channels_last_3d, torch.contiguous_format])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, True), (True, True, False)])
def test_releasing_lerp_gives_autograd_lerp_gradients_bit_for_bit(
    layout: torch.memory_format, needs: tuple[bool, bool, bool]
) -> None:
    torch.manual_seed(0)
    inputs = [torch.randn(1, 16, 5, 6, 7).contiguous(memory_format=layout) for _ in range(2)] + [torch.tensor([2.0])]
    grad_out = torch.randn(1, 16, 5, 6, 7).contiguous(memory_format=layout)
    results = []
    for lerp in (torch.lerp, _LerpReleasingInputs.apply):
        leaves = [t.clone().requires_grad_(n) for t, n in zip(inputs, needs, strict=True)]
        start, end, mix = leaves
        out = lerp(start * 1, end * 1, torch.sigmoid(mix))
        out.backward(grad_out)
        results.append([out, *(t.grad for t in leaves if t.requires_grad)])
    for ours, autograd in zip(*results, strict=True):
        assert torch.equal(ours, autograd)


def test_checkpointed_upsampler_backward_peaks_two_activations_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a full checkpoint the blend's saved inputs are released before its input gradients are made."""
    torch.manual_seed(0)
    module = TemporalUpsample(8, causal=True, use_checkpoint=True).train()
    x0 = torch.randn(1, 8, 4, 16, 16)
    activation = 2 * x0.numel() * x0.element_size()  # one tensor at the output's size (twice the frames)

    def backward_peak() -> tuple[int, list[torch.Tensor]]:
        module.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        out = module(x)
        grad_out = torch.ones_like(out)
        with LiveTensorBytes() as memory:
            out.backward(grad_out)
        return memory.peak_bytes, [x.grad, *(p.grad for p in module.parameters())]

    peak, grads = backward_peak()
    with monkeypatch.context() as patch:
        patch.setattr(resample._LerpReleasingInputs, "apply", torch.lerp)
        autograd_peak, autograd_grads = backward_peak()
    assert all(torch.equal(a, b) for a, b in zip(grads, autograd_grads, strict=True))
    assert autograd_peak - peak >= 1.5 * activation, (peak, autograd_peak, activation)
