"""Behaviour of `AutoencodingEngine` on tiny models: shapes, causality, frame-count rules, KL/FSQ paths."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.conftest import tiny_model_config
from tests.memory_helpers import LiveTensorBytes
from vidtok.modules.recompute import keep_all_activations
from vidtok.util import instantiate_from_config


def build(causal: bool = True, regularizer: str = "kl", variant: str = "v1.0"):
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_model_config(causal, regularizer, variant))
    # the temporal blocks start as the identity (zero-initialised conv2); perturb them so time mixing is tested
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "temporal" in name and name.endswith("conv2.conv.weight") or name.endswith("conv2.weight"):
                p.normal_(0, 0.1)
    return model.eval()


def clip(T: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, T, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize(
    "causal, variant, T, latent_T",
    [(True, "v1.0", 9, 5), (True, "v1.0", 1, 1), (True, "v1.1", 9, 5), (True, "v1.1", 8, 4), (False, "v1.0", 8, 2)],
)
def test_shapes_round_trip(causal, variant, T, latent_T):
    model = build(causal, "kl", variant)
    x = clip(T)
    with torch.no_grad():
        z, recon, log = model(x)
    assert z.shape == (1, 4, latent_T, 4, 4)
    assert recon.shape == x.shape
    assert log["kl_loss"].ndim == 0


@pytest.mark.parametrize("variant", ["v1.0", "v1.1"])
def test_causal_model_outputs_do_not_depend_on_future_frames(variant):
    model = build(True, "kl", variant)
    x = clip(9)
    y = x.clone()
    y[:, :, 5:] = -y[:, :, 5:]  # change frames 5..8 only
    with torch.no_grad():
        hx, hy = model.encoder(x), model.encoder(y)
        # latent t (tdf 2) covers frames up to 2t (v1.0 pads 1 frame in front); latents 0..2 see frames <= 4
        torch.testing.assert_close(hx[:, :, :3], hy[:, :, :3])
        assert not torch.allclose(hx[:, :, 3:], hy[:, :, 3:])
        z = hx[:, :4]
        z2 = z.clone()
        z2[:, :, 3:] += 1.0
        dx, dy = model.decode(z), model.decode(z2)
    changed = (dx - dy).abs().amax(dim=(0, 1, 3, 4)) > 0
    first_changed = int(changed.nonzero()[0])
    assert changed[first_changed:].all() and not changed[:first_changed].any()
    assert first_changed >= 5


def test_v1_0_causal_rejects_frame_counts_it_would_shorten():
    model = build(True, "kl", "v1.0")
    with pytest.raises(ValueError, match=r"T = 1 \+ k·2 frames.*got T=8.*shorten to 7"):
        model.encode(clip(8))


def test_noncausal_rejects_frame_counts_not_multiple_of_tdf():
    model = build(False)
    with pytest.raises(ValueError, match="multiple of 4, got T=9"):
        model.encode(clip(9))


def test_rejects_sizes_not_divisible_by_spatial_factor():
    model = build()
    with pytest.raises(ValueError, match="multiples of 4.*17×16"):
        model.encode(torch.zeros(1, 3, 9, 17, 16))


def test_rejects_wrong_rank_and_channels():
    model = build()
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        model.encode(torch.zeros(3, 9, 16, 16))
    with pytest.raises(ValueError, match="3-channel video, got 1"):
        model.encode(torch.zeros(1, 1, 9, 16, 16))


def test_kl_samples_by_default_and_gives_the_mean_on_request():
    model = build()
    x = clip(9)
    with torch.no_grad():
        z1, _ = model.encode(x)
        z2, _ = model.encode(x)
        m1, _ = model.encode(x, sample=False)
        m2, _ = model.encode(x, sample=False)
        h = model.encoder(x)
    assert not torch.equal(z1, z2)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(m1, h[:, :4])


def test_fsq_tokenize_detokenize_matches_forward():
    model = build(regularizer="fsq")
    x = clip(9)
    with torch.no_grad():
        z, recon, log = model(x)
        tokens = model.tokenize(x)
        again = model.detokenize(tokens)
    assert tokens.dtype == torch.int32 and tokens.shape == (1, 5, 4, 4)
    assert torch.equal(tokens, log["indices"])
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 8**3
    assert torch.equal(again, recon)
    assert log["aux_loss"].item() == 0.0  # no loss built: the aux terms are not computed


def test_kl_model_refuses_token_paths():
    model = build()
    with pytest.raises(ValueError, match="FSQ"):
        model.tokenize(clip(9))
    with pytest.raises(ValueError, match="FSQ"):
        model.decode(torch.zeros(1, 5, 4, 4, dtype=torch.int32), decode_from_indices=True)


def test_fix_encoder_freezes_encoder_only():
    cfg = tiny_model_config()
    cfg["params"]["encoder_config"]["params"]["fix_encoder"] = True
    model = instantiate_from_config(cfg)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    z, recon, _ = model(clip(9))
    recon.mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.decoder.get_last_layer().grad is not None


def test_fsq_levels_must_match_z_channels():
    cfg = tiny_model_config(regularizer="fsq")
    cfg["params"]["regularizer_config"]["params"]["levels"] = [8, 8, 8, 8]
    with pytest.raises(ValueError, match=r"need z_channels=4.*z_channels=3"):
        instantiate_from_config(cfg)


def test_unknown_target_is_a_clear_error():
    cfg = tiny_model_config()
    cfg["params"]["encoder_config"]["target"] = "vidtok.modules.model_3dcausal.NoSuchEncoder"
    with pytest.raises(ImportError, match="NoSuchEncoder"):
        instantiate_from_config(cfg)


def test_inconsistent_temporal_factor_names_the_key():
    cfg = tiny_model_config()
    cfg["params"]["encoder_config"]["params"]["time_downsample_factor"] = 4
    with pytest.raises(ValueError, match="time_downsample_factor=4 does not match tempo_ds"):
        instantiate_from_config(cfg)


def test_loss_is_not_built_for_inference():
    model = build()
    assert model.loss is None
    assert not any(k.startswith("loss.") for k in model.state_dict())


@pytest.mark.parametrize("causal", [True, False])
def test_training_recomputes_without_changing_gradients_and_keeps_fewer_activations(causal):
    """In training the residual blocks store their conv outputs and recompute norms, SiLU and padding in the
    backward pass: gradients bit-equal to plain autograd's, with far fewer bytes kept between forward and backward.
    `use_checkpoint: true` recomputes whole pairs of blocks and the up-samplers, and runs levels as stages that keep
    only their input: the same gradients bit for bit (the recomputed convolutions round alike), and fewer bytes
    still (0.36x of the selective path's with pairs alone, 0.23x with the stages)."""
    def build(use_checkpoint: bool) -> torch.nn.Module:
        cfg = tiny_model_config(causal)
        cfg["params"]["encoder_config"]["params"] = {**cfg["params"]["encoder_config"]["params"],
                                                     "use_checkpoint": use_checkpoint}
        cfg["params"]["decoder_config"]["params"] = cfg["params"]["encoder_config"]["params"]
        torch.manual_seed(0)
        return instantiate_from_config(cfg).train()

    x = torch.rand(1, 3, 9 if causal else 8, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def step(model: torch.nn.Module) -> tuple[int, dict[str, torch.Tensor]]:
        with LiveTensorBytes() as memory:
            z = model.encoder(x)[:, : model.decoder.z_channels]  # the posterior mean: no sampling
            loss = model.decoder(z).square().mean()
            kept = memory.live_bytes()
        loss.backward()
        return kept, {n: p.grad for n, p in model.named_parameters()}

    with keep_all_activations():
        plain_bytes, plain = step(build(False))
    selective_bytes, selective = step(build(False))
    ckpt_bytes, ckpt = step(build(True))
    assert plain.keys() == selective.keys() == ckpt.keys()
    for name in plain:
        assert torch.equal(selective[name], plain[name]), name
        assert torch.equal(ckpt[name], plain[name]), name
    assert selective_bytes < 0.7 * plain_bytes
    assert ckpt_bytes < 0.3 * selective_bytes
    print(f"kept {plain_bytes} plain, {selective_bytes} selective, {ckpt_bytes} checkpointed")


def test_chunked_v1_1_mode_trains_with_the_plain_gradients():
    """The v1.1 chunked mode carries stream state from chunk to chunk, which a recomputation would advance twice: in
    training it keeps every activation, so its gradients are plain autograd's (with and without `use_checkpoint`)."""
    def grads(use_checkpoint: bool, keep_all: bool) -> dict[str, torch.Tensor]:
        cfg = tiny_model_config(variant="v1.1")
        cfg["target"] = "vidtok.models.autoencoder_v1_1.AutoencodingEngine"
        for part in ("encoder_config", "decoder_config"):
            cfg["params"][part]["params"] = {**cfg["params"][part]["params"], "use_checkpoint": use_checkpoint}
        cfg["params"].update(use_tiling=True, t_chunk_enc=4, use_overlap=False)
        torch.manual_seed(0)
        model = instantiate_from_config(cfg).train()
        x = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with keep_all_activations() if keep_all else contextlib.nullcontext():
            z, _ = model.encode(x, sample=False)
            model.decode(z).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain = grads(False, keep_all=True)
    for use_checkpoint in (False, True):
        got = grads(use_checkpoint, keep_all=False)
        assert got.keys() == plain.keys()
        for name in plain:
            assert torch.equal(got[name], plain[name]), (use_checkpoint, name)


def test_compiled_model_gives_the_eager_outputs_and_gradients():
    """`compile_model: true` runs encoder and decoder through torch.compile: the same reconstruction and gradients
    to float rounding (inductor on CPU once gave the frame attention an output of the wrong shape, which broke
    every compiled model with attention)."""
    def run(compile_model: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = tiny_model_config()
        cfg["params"]["compile_model"] = compile_model
        torch.manual_seed(0)
        model = instantiate_from_config(cfg).train()
        x = clip(9)
        model.decoder(model.encoder(x)[:, : model.decoder.z_channels]).square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        model.eval()
        with torch.no_grad():
            return model.decoder(model.encoder(x)[:, : model.decoder.z_channels]), grads

    eager_out, eager_grads = run(False)
    out, grads = run(True)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
