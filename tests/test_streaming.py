"""Streaming equals the whole-clip pass, for every causal variant, at chunk sizes that do and do not divide T."""

from __future__ import annotations

import pytest
import torch

from tests.test_autoencoder import build, clip
from vidtok.streaming import StreamingDecoder, StreamingEncoder, decode_in_chunks, encode_in_chunks


def full_pass(model, x):
    with torch.no_grad():
        h = model.encoder(x)
        z, log = model.regularization(h, **({} if model.is_fsq else {"sample": False}))
        return z, log, model.decoder(z)


def assert_close_rel(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    assert (ours - ref).abs().max().item() <= tol


CASES = [
    ("v1.0", 9, 1, "kl"), ("v1.0", 17, 3, "fsq"), ("v1.0", 17, 7, "kl"), ("v1.0", 1, 4, "fsq"),
    ("v1.1", 9, 1, "fsq"), ("v1.1", 12, 3, "kl"), ("v1.1", 12, 5, "fsq"), ("v1.1", 5, 64, "kl"),
]


@pytest.mark.parametrize("variant, T, chunk, regularizer", CASES)
def test_chunked_encode_and_decode_equal_the_full_pass(variant, T, regularizer, chunk):
    model = build(True, regularizer, variant)
    x = clip(T)
    z_full, log_full, recon_full = full_pass(model, x)
    z, log = encode_in_chunks(model, x, chunk)
    assert_close_rel(z, z_full)
    if regularizer == "fsq":
        assert torch.equal(log["indices"], log_full["indices"])
    recon = decode_in_chunks(model, z_full, max(1, chunk // 2))
    assert_close_rel(recon, recon_full)


def test_v1_1_decoder_holds_back_one_frame_until_finish():
    model = build(True, "kl", "v1.1")
    z_full, _, recon_full = full_pass(model, clip(9))
    decoder = StreamingDecoder(model)
    first = decoder.push(z_full[:, :, :2])
    # latent 1's second upsampled frame needs latent 2, so the output stops short of 2 latents' worth of frames
    assert first.shape[2] < 2 * model.time_downsample_factor
    rest = decoder.push(z_full[:, :, 2:])
    tail = decoder.finish()
    assert tail.shape[2] > 0
    assert_close_rel(torch.cat([first, rest, tail], dim=2), recon_full)


def test_streaming_state_is_per_video_and_removed_after():
    model = build(True, "fsq", "v1.1")
    a, b = clip(9, seed=1), clip(9, seed=2)
    z_a, _ = encode_in_chunks(model, a, 2)
    z_b, _ = encode_in_chunks(model, b, 2)
    assert torch.equal(z_b, full_pass(model, b)[0])
    assert torch.equal(z_a, full_pass(model, a)[0])
    assert all(getattr(m, "stream", None) is None for m in model.modules())


def test_pushing_frames_one_by_one_yields_latents_as_soon_as_complete():
    model = build(True, "kl", "v1.0")
    encoder = StreamingEncoder(model)
    sizes = [encoder.push(frame)[0].shape[2] for frame in clip(9).split(1, dim=2)]
    # tdf 2, v1.0 pads one frame in front: frame 0 completes latent 0, then every second frame one more
    assert sizes == [1, 0, 1, 0, 1, 0, 1, 0, 1]


def test_non_causal_models_cannot_stream():
    with pytest.raises(ValueError, match="causal"):
        StreamingEncoder(build(False))


def test_streaming_encoder_samples_the_kl_posterior_on_request():
    model = build(True, "kl", "v1.0")
    x = clip(9)
    with torch.no_grad():
        h = model.encoder(x)
    mean, logvar = h.chunk(2, dim=1)
    mean_z, _ = StreamingEncoder(model, num_frames=9).push(x)
    assert_close_rel(mean_z, mean)
    torch.manual_seed(1)
    sampled, _ = StreamingEncoder(model, num_frames=9, sample=True).push(x)
    torch.manual_seed(1)
    again, _ = StreamingEncoder(model, num_frames=9, sample=True).push(x)
    assert torch.equal(sampled, again)  # seeded
    noise = (sampled - mean) / torch.exp(0.5 * logvar.clamp(-30, 20))
    # what was added is standard normal noise scaled by the posterior's std
    assert not torch.allclose(sampled, mean)
    assert abs(noise.mean().item()) < 0.2 and 0.8 < noise.std().item() < 1.2
