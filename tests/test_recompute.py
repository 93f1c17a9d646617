"""Recomputation regions (`vidtok.modules.recompute`), and norm+SiLU, which saves only its input and still gives plain
autograd's gradients bit for bit."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from vidtok.modules.normalization import make_norm, norm_silu
from vidtok.modules.recompute import recomputable, recomputable_stage


def test_a_stage_keeps_its_input_alone_and_its_regions_still_checkpoint() -> None:
    """Until the backward pass the stage holds neither the regions' inputs nor their activations; then it runs again
    and each region is recomputed from its own input, with plain autograd's gradients."""
    calls = {"stage": 0, "region": 0}
    inner_inputs: list[weakref.ref] = []

    def region(h: torch.Tensor) -> torch.Tensor:
        calls["region"] += 1
        return (h * 1.5).sin() * h

    def stage(x: torch.Tensor) -> torch.Tensor:
        calls["stage"] += 1
        h = recomputable(True, region, x.exp(), whole=True)
        inner_inputs.append(weakref.ref(h))
        return recomputable(True, region, h, whole=True)

    x0 = torch.randn(64)
    x = x0.clone().requires_grad_()
    out = recomputable_stage(True, stage, x)
    assert inner_inputs[0]() is None  # the second region's input went with the forward pass
    out.sum().backward()
    # the stage runs twice, the first region three times (forward, the stage's recomputation, its own) and the last
    # one twice: the stage's recomputation stops as soon as it has the last region's input back
    assert calls == {"stage": 2, "region": 5}

    plain = x0.clone().requires_grad_()
    with torch.no_grad():
        assert torch.equal(out, stage(plain))
    stage(plain).sum().backward()
    assert torch.equal(x.grad, plain.grad)

    calls.update(stage=0, region=0)
    recomputable_stage(False, stage, x0.clone().requires_grad_()).sum().backward()
    assert calls == {"stage": 1, "region": 4}  # off: the regions checkpoint as they would anywhere else


@pytest.mark.parametrize("norm_type", ["layernorm", "groupnorm"])
@pytest.mark.parametrize("region", ["none", "whole"])
def test_norm_silu_saves_its_input_alone_and_keeps_plain_autograds_gradients(norm_type: str, region: str) -> None:
    torch.manual_seed(0)
    norm = make_norm(32, norm_type, "frame")
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    x0 = torch.randn(1, 32, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    grad_out = torch.randn(1, 32, 3, 4, 5)

    def run(fn) -> tuple[torch.Tensor, list[int], list[torch.Tensor]]:
        saved: list[int] = []

        def packed(x: torch.Tensor) -> torch.Tensor:
            with saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
                return fn(x)

        norm.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        out = recomputable(True, packed, x, whole=True) if region == "whole" else packed(x)
        out.backward(grad_out)
        return out.detach(), saved, [x.grad, *(p.grad for p in norm.parameters())]

    want, plain_saved, plain_grads = run(lambda x: torch.nn.functional.silu(norm(x)))
    got, saved, grads = run(lambda x: norm_silu(norm, x))
    assert len(plain_saved) > 1
    # in a full checkpoint the hooks inside see what the region saves before the checkpoint does, so it keeps
    # nothing and never recomputes; either way norm_silu packs one tensor, its input
    assert saved == [x0.numel()]
    assert torch.equal(got, want)
    for g, w in zip(grads, plain_grads, strict=True):
        assert torch.equal(g, w)


def _winograd_conv_case() -> tuple:
    from vidtok.kernels import fast_conv

    # the Winograd kernel runs in the forward pass and again for the input's gradient
    conv = fast_conv.FastConv2d(64, 64, 3, padding=1)
    return fast_conv, "winograd_conv", conv, conv, torch.randn(2, 64, 32, 32), 2


def _time_conv_case() -> tuple:
    from vidtok.kernels import time_conv
    from vidtok.modules.causal_conv import conv1d_over_time

    conv = torch.nn.Conv1d(8, 8, 3, padding=1)
    # `_convolve` is the forward pass only (the backward pass has GEMMs of its own)
    return time_conv, "_convolve", lambda h: conv1d_over_time(conv, h), conv, torch.randn(1, 8, 5, 4, 4), 1


@pytest.mark.parametrize("whole", [False, True], ids=["selective", "whole"])
@pytest.mark.parametrize("case", [_winograd_conv_case, _time_conv_case], ids=["winograd", "time_conv"])
def test_a_selective_region_keeps_the_output_of_vidtoks_conv_ops(whole: bool, case,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """vidtok's conv ops are stored like `aten.convolution`: a selective region does not run them again in the
    backward pass (a full one does), and the gradients are plain autograd's bit for bit."""
    torch.manual_seed(0)
    module, kernel, conv, params, x0, plain_calls = case()
    calls: list[int] = []
    real = getattr(module, kernel)
    monkeypatch.setattr(module, kernel, lambda *a, **k: calls.append(1) or real(*a, **k))

    def block(h: torch.Tensor) -> torch.Tensor:
        return conv(torch.nn.functional.silu(h * 2))

    def grads(run) -> list[torch.Tensor]:
        x = x0.clone().requires_grad_()
        params.zero_grad()
        run(x).square().sum().backward()
        return [x.grad, params.weight.grad.clone(), params.bias.grad.clone()]

    plain = grads(block)
    assert len(calls) == plain_calls
    calls.clear()
    region = grads(lambda x: recomputable(True, block, x, whole=whole))
    assert len(calls) == plain_calls + whole
    for a, b in zip(region, plain, strict=True):
        assert torch.equal(a, b)
