"""FSQ: the codes, the index layout (channel 0 least significant), the round trip and the training losses."""

from __future__ import annotations

import pytest
import torch

from vidtok.modules.fsq import FSQRegularizer


def test_codes_are_the_eight_levels_and_indices_round_trip():
    fsq = FSQRegularizer(levels=[8, 8, 8])
    z = torch.randn(2, 3, 4, 5, 6) * 3
    codes, log = fsq(z)
    allowed = torch.arange(-4, 4) / 4
    assert torch.isin(codes, allowed).all()
    indices = log["indices"]
    assert indices.dtype == torch.int32 and indices.shape == (2, 4, 5, 6)
    assert torch.equal(fsq.indices_to_codes(indices), codes)
    assert torch.equal(fsq.indices_to_codes(indices.to(torch.int64)), codes)


def test_channel_zero_is_the_least_significant_digit():
    fsq = FSQRegularizer(levels=[8, 8])
    # digits (code·4 + 4): channel 0 -> 1 (code -0.75), channel 1 -> 2 (code -0.5): index 1 + 2·8 = 17
    codes = fsq.indices_to_codes(torch.tensor([[[[17]]]]))
    assert codes.flatten().tolist() == [-0.75, -0.5]
    assert fsq.codes_to_indices(codes.movedim(1, -1)).item() == 17


def test_bound_rounds_half_to_even_and_stays_in_range():
    fsq = FSQRegularizer(levels=[8])
    big = torch.tensor([[[[[50.0]]]], [[[[-50.0]]]]])
    codes, log = fsq(big)
    assert codes.flatten().tolist() == [0.75, -1.0]
    assert log["indices"].flatten().tolist() == [7, 0]


def test_straight_through_gradient():
    fsq = FSQRegularizer(levels=[8, 8])
    z = torch.randn(1, 2, 1, 2, 2, requires_grad=True)
    codes, _ = fsq(z)
    codes.sum().backward()
    assert z.grad is not None and (z.grad > 0).all()


def test_aux_loss_only_when_asked():
    fsq = FSQRegularizer(levels=[8] * 6, entropy_loss_weight=0.1, commitment_loss_weight=0.25)

    def refuse(device):
        raise AssertionError("the codebook matrix must not be built at inference")

    fsq.implicit_codebook = refuse
    _, log = fsq(torch.randn(1, 6, 2, 4, 4))
    assert log["aux_loss"].item() == 0.0


def test_aux_loss_is_entropy_plus_commitment():
    fsq = FSQRegularizer(levels=[4, 4], entropy_loss_weight=0.1, commitment_loss_weight=0.25)
    z = torch.randn(2, 2, 1, 3, 3)
    codes, log = fsq(z, compute_aux=True)
    flat_z = z.movedim(1, -1).reshape(-1, 2)
    codebook = fsq.implicit_codebook(z.device)
    prob = (200 * flat_z @ codebook.T).softmax(-1)
    ent = lambda p: (-p * p.clamp(min=1e-5).log()).sum(-1)  # noqa: E731
    commit = ((flat_z - codes.movedim(1, -1).reshape(-1, 2)) ** 2).mean()
    expected = 0.1 * (ent(prob).mean() - ent(prob.mean(0))) + 0.25 * commit
    torch.testing.assert_close(log["aux_loss"], expected)


def test_entropy_weight_anneals_linearly():
    fsq = FSQRegularizer(levels=[8], entropy_loss_weight=0.1, entropy_loss_annealing_steps=2000,
                         entropy_loss_annealing_factor=3)
    assert fsq.entropy_weight(0) == pytest.approx(0.3)
    assert fsq.entropy_weight(1000) == pytest.approx(0.2)
    assert fsq.entropy_weight(2000) == pytest.approx(0.1)
    assert fsq.entropy_weight(10**6) == pytest.approx(0.1)


def test_bad_inputs_are_clear_errors():
    fsq = FSQRegularizer(levels=[8, 8])
    with pytest.raises(ValueError, match="quantizes 2 channels, got a latent with 3"):
        fsq(torch.zeros(1, 3, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        fsq.indices_to_codes(torch.tensor([[[[64]]]]))
    with pytest.raises(TypeError, match="integer"):
        fsq.indices_to_codes(torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match="no projection"):
        FSQRegularizer(levels=[8, 8], dim=4)
