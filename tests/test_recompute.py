"""Recomputation regions (`vidtok.modules.recompute`): which kind of region is running, and norm+SiLU inside a full
checkpoint, which saves only its input and still gives plain autograd's gradients bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from vidtok.modules.normalization import make_norm, norm_silu
from vidtok.modules.recompute import in_whole_region, recomputable


def test_in_whole_region_only_while_a_full_checkpoint_runs_its_function() -> None:
    seen: list[tuple[str, bool]] = []

    def probe(kind: str):
        def fn(x: torch.Tensor) -> torch.Tensor:
            seen.append((kind, in_whole_region()))
            return (x * 2).sin()
        return fn

    x = torch.randn(4, requires_grad=True)
    recomputable(True, probe("whole"), x, whole=True).sum().backward()
    recomputable(True, probe("selective"), x).sum().backward()
    recomputable(False, probe("eval"), x).sum().backward()
    # a checkpoint runs its function twice: the forward pass, then the recomputation in the backward pass
    assert seen == [("whole", True)] * 2 + [("selective", False)] * 2 + [("eval", False)]
    assert not in_whole_region()


@pytest.mark.parametrize("norm_type", ["layernorm", "groupnorm"])
def test_norm_silu_in_a_full_checkpoint_saves_its_input_alone_and_keeps_the_gradients(norm_type: str) -> None:
    torch.manual_seed(0)
    norm = make_norm(32, norm_type, "frame")
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    x0 = torch.randn(1, 32, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    grad_out = torch.randn(1, 32, 3, 4, 5)

    def run(whole: bool) -> tuple[list[int], list[torch.Tensor]]:
        saved: list[int] = []

        def fn(x: torch.Tensor) -> torch.Tensor:
            with saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
                return norm_silu(norm, x)

        norm.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        out = recomputable(True, fn, x, whole=True) if whole else fn(x)
        out.backward(grad_out)
        return saved, [x.grad, *(p.grad for p in norm.parameters())]

    plain_saved, plain_grads = run(whole=False)
    saved, grads = run(whole=True)
    assert len(plain_saved) > 1
    # the hooks inside the region see what it saves before the checkpoint does, so the checkpoint keeps nothing
    # and never recomputes: one pack, of the input
    assert saved == [x0.numel()]
    for got, want in zip(grads, plain_grads, strict=True):
        assert torch.equal(got, want)
