"""Checkpoint files: the original's layout loads, safetensors loads, and anything that does not fit says why."""

from __future__ import annotations

import pickle

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_model_config
from vidtok import load_model_from_config
from vidtok.checkpoint import CheckpointMismatchError, export_weights
from vidtok.util import instantiate_from_config


@pytest.fixture
def tiny(tmp_path):
    """A tiny model, its YAML, and a checkpoint of it in the original's layout (state dict + `loss.*`, wrapped)."""
    cfg = {"model": tiny_model_config()}
    cfg_path = tmp_path / "tiny.yaml"
    OmegaConf.save(OmegaConf.create(cfg), cfg_path)
    torch.manual_seed(1)
    model = instantiate_from_config(cfg["model"])
    state = dict(model.state_dict())
    state["loss.logvar"] = torch.tensor(0.5)
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 10}, ckpt)
    return model, cfg_path, ckpt


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_original_layout_with_loss_keys_loads(tiny):
    model, cfg_path, ckpt = tiny
    loaded = load_model_from_config(cfg_path, ckpt)
    assert_same_weights(model, loaded)
    assert loaded.loss is None  # loss keys accepted and kept aside, not built


def test_bare_state_dict_and_safetensors_load(tiny, tmp_path):
    model, cfg_path, _ = tiny
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert_same_weights(model, load_model_from_config(cfg_path, bare))
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    assert_same_weights(model, load_model_from_config(cfg_path, st))


def test_ckpt_path_in_config_loads_at_construction(tiny):
    model, cfg_path, ckpt = tiny
    cfg = OmegaConf.load(cfg_path)
    cfg.model.params.ckpt_path = str(ckpt)
    assert_same_weights(model, instantiate_from_config(OmegaConf.to_container(cfg.model)))


def test_missing_unexpected_and_misshaped_keys_are_named(tiny, tmp_path):
    model, cfg_path, _ = tiny
    state = dict(model.state_dict())
    del state["decoder.conv_out.conv.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    state["encoder.conv_in.conv.weight"] = torch.zeros(1, 2, 3)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_from_config(cfg_path, bad)
    message = str(info.value)
    assert "1 missing: decoder.conv_out.conv.bias" in message
    assert "1 unexpected: encoder.extra.weight" in message
    assert "encoder.conv_in.conv.weight (checkpoint (1, 2, 3), model (8, 3, 3, 3, 3))" in message
    assert str(bad) in message and str(cfg_path) in message


def test_config_of_another_model_is_a_mismatch(tiny, tmp_path):
    _, _, ckpt = tiny
    other = {"model": tiny_model_config(regularizer="fsq")}  # z_channels 3 instead of 4, no double_z
    other_path = tmp_path / "other.yaml"
    OmegaConf.save(OmegaConf.create(other), other_path)
    with pytest.raises(CheckpointMismatchError, match="with another shape: encoder.conv_out.conv.weight"):
        load_model_from_config(other_path, ckpt)


def test_ignore_keys_drops_matching_keys(tiny, tmp_path):
    model, cfg_path, _ = tiny
    state = dict(model.state_dict())
    state["encoder.legacy.weight"] = torch.zeros(2)
    ckpt = tmp_path / "legacy.ckpt"
    torch.save(state, ckpt)
    assert_same_weights(model, load_model_from_config(cfg_path, ckpt, ignore_keys=[r"encoder\.legacy"]))


def test_loss_keys_load_into_the_loss_once_built(tiny, tmp_path):
    model, cfg_path, _ = tiny
    loss_config = {
        "target": "vidtok.modules.losses.GeneralLPIPSWithDiscriminator",
        "params": {"disc_start": 1, "lpips_pretrained": False, "learn_logvar": True, "disc_type": "2d"},
    }
    trained_loss = instantiate_from_config(loss_config)
    with torch.no_grad():
        trained_loss.logvar.fill_(0.5)
    state = dict(model.state_dict())
    state.update({f"loss.{k}": v for k, v in trained_loss.state_dict().items()})
    ckpt = tmp_path / "with_loss.ckpt"
    torch.save({"state_dict": state}, ckpt)

    cfg = OmegaConf.load(cfg_path)
    cfg.model.params.loss_config = loss_config
    loaded = load_model_from_config(cfg, ckpt)
    assert loaded.loss is None
    loss = loaded.build_loss()
    assert loss.logvar.item() == 0.5
    for k, v in trained_loss.state_dict().items():
        assert torch.equal(loss.state_dict()[k], v), k

    del state["loss.discriminator.main.0.weight"]
    torch.save({"state_dict": state}, ckpt)
    partial = load_model_from_config(cfg, ckpt)
    with pytest.raises(CheckpointMismatchError, match="1 missing: discriminator.main.0.weight"):
        partial.build_loss()


def test_missing_file_and_unknown_format(tmp_path, tiny):
    _, cfg_path, _ = tiny
    with pytest.raises(FileNotFoundError, match="checkpoints/README.md"):
        load_model_from_config(cfg_path, tmp_path / "nope.ckpt")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown format"):
        load_model_from_config(cfg_path, odd)
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_model_from_config(tmp_path / "missing.yaml")


class _Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickles_that_run_code_are_refused(tmp_path, tiny):
    _, cfg_path, _ = tiny
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    with pytest.raises(ValueError, match="weights-only"):
        load_model_from_config(cfg_path, evil)


def test_export_weights_keeps_the_tokenizer_in_float16(tiny, tmp_path):
    model, cfg_path, ckpt = tiny
    out = export_weights(ckpt, tmp_path / "small.safetensors")
    exported = load_file(str(out))
    assert set(exported) == set(model.state_dict())  # loss.* left behind
    assert {v.dtype for v in exported.values() if v.is_floating_point()} == {torch.float16}
    loaded = load_model_from_config(cfg_path, out)
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == value.dtype
        torch.testing.assert_close(loaded.state_dict()[key], value.half().to(value.dtype), rtol=0, atol=0)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = model.decode(model.encode(x, sample=False)[0])
        got = loaded.decode(loaded.encode(x, sample=False)[0])
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-2)


def test_export_weights_refuses_other_formats_and_loss_only_files(tiny, tmp_path):
    _, _, ckpt = tiny
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        export_weights(ckpt, tmp_path / "small.ckpt")
    loss_only = tmp_path / "loss.ckpt"
    torch.save({"state_dict": {"loss.logvar": torch.tensor(0.0)}}, loss_only)
    with pytest.raises(ValueError, match="nothing to export"):
        export_weights(loss_only, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
