"""Streaming equals the whole-clip pass, for every causal variant, at chunk sizes that do and do not divide T."""

from __future__ import annotations

import pytest
import torch

from tests.test_autoencoder import build, clip
from vidtok.precision import Precision
from vidtok.streaming import (
    StreamingDecoder,
    StreamingEncoder,
    StreamingReconstructor,
    decode_in_chunks,
    encode_in_chunks,
    padded_stream_length,
)
from vidtok.tile_major import TileMajorProgress, decoder_tiles, encoder_tiles, tile_major_reconstruct
from vidtok.tiling import decode_tiled, encode_tiled, resolve_tiles


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


# --- tile-major streaming ------------------------------------------------------------------------------------------


def tiled_whole_clip(model, x, tiles):
    """The reference: the whole clip padded as streaming pads it, encoded and decoded on tiles, every frame."""
    length = padded_stream_length(model, x.shape[2])
    padded = torch.cat([x, x[:, :, -1:].repeat(1, 1, length - x.shape[2], 1, 1)], dim=2)
    z, _ = encode_tiled(model, padded, tiles.pixels)
    with torch.no_grad():
        recon = decode_tiled(model, z, tiles.latents)
    skip = recon.shape[2] - length
    return recon[:, :, skip : skip + x.shape[2]].clamp(-1, 1)


def tile_major(model, x, tiles, chunk, progress=False):
    def read_chunks():
        return iter(x[0].split(chunk, dim=1))

    pairs = list(tile_major_reconstruct(model, read_chunks, x.shape[2], tiles, progress=progress))
    inputs = torch.cat([p[0] for p in pairs], dim=1)
    assert torch.equal(inputs, x[0])  # each output beside its own input
    return torch.cat([p[1] for p in pairs], dim=1).unsqueeze(0)


TILE_MAJOR_CASES = [("v1.0", 5, 2, "kl"), ("v1.1", 6, 4, "kl"), ("v1.1", 3, 2, "fsq")]


@pytest.mark.parametrize("variant, T, chunk, regularizer", TILE_MAJOR_CASES)
def test_tile_major_reconstruction_equals_the_tiled_whole_clip_pass(variant, T, chunk, regularizer):
    model = build(True, regularizer, variant)
    x = clip(T, size=24)
    tiles = resolve_tiles(model, 16, 8)  # 2×2 tiles of 16 px, 2×2 latent tiles of 4
    assert_close_rel(tile_major(model, x, tiles, chunk), tiled_whole_clip(model, x, tiles))


def test_tile_major_handles_frames_that_are_not_square_or_a_whole_number_of_tiles():
    model = build(True, "kl", "v1.1")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 4, 16, 40, generator=g) * 2 - 1
    tiles = resolve_tiles(model, 16, 8)
    assert_close_rel(tile_major(model, x, tiles, 4), tiled_whole_clip(model, x, tiles))


def one_tile_state_bytes(model, tile_px, T):
    """The largest stream state of one tile-sized stream: the encoder over a tile_px² clip, the decoder over its
    latents (the two passes do not overlap in time)."""
    x = clip(T, size=tile_px)
    length = padded_stream_length(model, T)
    run_enc = encoder_tiles(model, length, Precision.of("full"), "cpu")
    enc_held = [held for _, held in run_enc(iter(x.split(2, dim=2)))]
    z, _ = StreamingEncoder(model, num_frames=length).push(x)
    run_dec = decoder_tiles(model, 0, T, Precision.of("full"), "cpu")
    dec_held = [held for _, held in run_dec(iter(z.split(1, dim=2)))]
    return max(enc_held + dec_held)


def test_tile_major_state_does_not_grow_with_the_number_of_tiles():
    model = build(True, "kl", "v1.1")  # time buffers and a linear upsampler's lookahead
    tiles = resolve_tiles(model, 16, 8)
    peaks = {}
    for size in (16, 32):  # 1 and 9 tiles
        progress = TileMajorProgress(0, enabled=False)
        tile_major(model, clip(5, size=size), tiles, 2, progress)
        peaks[size] = progress.peak_state_bytes
    # one tile's stream at a time: what a single 16-px stream holds, whatever the number of tiles
    assert peaks[16] == peaks[32] == one_tile_state_bytes(model, 16, 5)
    # a whole-frame stream holds state for every position of the frame (4× a tile's area here)
    stream = StreamingReconstructor(model, 5)
    stream.push(clip(5, size=32)[:, :, :2])
    assert stream.held_bytes() > 3 * peaks[32]


def test_stream_state_keeps_only_the_past_frames_the_causal_windows_need():
    model = build(True, "kl", "v1.1")
    encoder, decoder = StreamingEncoder(model, num_frames=9), StreamingDecoder(model)
    for chunk in clip(9, size=16).split(2, dim=2):
        z, _ = encoder.push(chunk)
        decoder.push(z)
        for state, spatial in ((encoder.state, 16), (decoder.state, 4 * 4)):
            for layer, frames in state.held().items():
                extent = getattr(layer, "time_extent", 3)  # the temporal average's window is 3; upsamplers keep 1
                assert frames.shape[2] <= extent - 1
                assert frames.shape[3] <= spatial and frames.shape[4] <= spatial
    held = encoder.state.nbytes() + decoder.state.nbytes()
    assert held == sum(t.numel() * 4 for s in (encoder.state, decoder.state) for t in s.held().values()) > 0
