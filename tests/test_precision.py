"""`vidtok.precision`: per-stage precision, what each stage really runs in, and what stays in fp32."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

import vidtok.precision
from tests.conftest import tiny_model_config
from vidtok.cli import add_precision_arguments, precision_from_args
from vidtok.precision import PRECISIONS, Precision, stage_context
from vidtok.reconstruct import reconstruct_clip
from vidtok.streaming import StreamingReconstructor
from vidtok.util import instantiate_from_config


def tiny(regularizer: str = "kl", variant: str = "v1.0") -> torch.nn.Module:
    torch.manual_seed(0)
    return instantiate_from_config(tiny_model_config(regularizer=regularizer, variant=variant)).eval()


def clip(frames: int = 9, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand((1, 3, frames, size, size), generator=g) * 2 - 1


class StageSpy:
    """Records, for each call of the encoder's and the decoder's first layer, whether autocast was on and the input
    dtype (the first layers, because streaming does not call the networks' `forward`)."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[tuple[str, bool, torch.dtype, torch.dtype]] = []
        for name in ("encoder", "decoder"):
            getattr(model, name).conv_in.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str):
        def record(module, inputs):
            autocast_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
            self.calls.append((name, torch.is_autocast_enabled("cpu"), autocast_dtype, inputs[0].dtype))

        return record

    def stages(self) -> set[tuple[str, bool, torch.dtype, torch.dtype]]:
        return set(self.calls)


def test_precision_of_sets_both_stages_and_overrides_one():
    assert Precision.of("bf16") == Precision("bf16", "bf16")
    assert Precision.of("full", decode="bf16") == Precision("full", "bf16")
    assert Precision.of(Precision("fp16", "full"), encode="full") == Precision("full", "full")
    assert str(Precision("full", "full")) == "full"
    assert str(Precision("full", "bf16")) == "encode full, decode bf16"


@pytest.mark.parametrize("bad", ["half", "fp32", "", "BF16"])
def test_unknown_precision_names_the_choices(bad):
    with pytest.raises(ValueError, match=r"precision must be one of \('full', 'autocast', 'bf16', 'fp16'\)"):
        Precision("full", bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision.of(bad)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("full", None), ("autocast", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_stage_context_on_cpu(name, expected):
    # `autocast` is the original's torch.autocast("cuda"), which leaves CPU work in fp32
    with stage_context(name, "cpu"):
        enabled = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")
    assert enabled == (expected is not None)
    if expected is not None:
        assert dtype == expected


def test_bf16_on_a_cpu_without_it_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    vidtok.precision._warn_without_native_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="vidtok.precision"):
        for _ in range(3):
            with stage_context("bf16", "cpu"):
                pass
        with stage_context("fp16", "cpu"):
            pass
    vidtok.precision._warn_without_native_bf16.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(warnings) == 1 and "--precision full" in warnings[0]


def test_flags_give_each_stage_its_precision():
    parser = argparse.ArgumentParser()
    add_precision_arguments(parser)
    assert precision_from_args(parser.parse_args([])) == Precision("full", "full")
    assert precision_from_args(parser.parse_args(["--precision", "autocast"])) == Precision("autocast", "autocast")
    args = parser.parse_args(["--precision", "bf16", "--encode_precision", "full"])
    assert precision_from_args(args) == Precision("full", "bf16")
    assert precision_from_args(parser.parse_args(["--decode_precision", "fp16"])) == Precision("full", "fp16")
    with pytest.raises(SystemExit):
        parser.parse_args(["--decode_precision", "int8"])
    single = argparse.ArgumentParser()
    add_precision_arguments(single, stages=False)
    assert set(vars(single.parse_args([]))) == {"precision"}
    assert set(PRECISIONS) == {"full", "autocast", "bf16", "fp16"}


@torch.no_grad()
def test_reconstruct_clip_runs_each_stage_in_its_precision():
    model = tiny()
    x = clip()
    full = reconstruct_clip(model, x, sample_posterior=False)
    spy = StageSpy(model)
    mixed = reconstruct_clip(model, x, sample_posterior=False, precision=Precision("full", "bf16"))
    # the decoder gets fp32 latents from an fp32 encoder, and runs under bf16 autocast
    assert spy.stages() == {("encoder", False, torch.float32, torch.float32),
                            ("decoder", True, torch.bfloat16, torch.float32)}
    assert mixed.shape == full.shape and torch.isfinite(mixed).all()
    diff = (mixed.float() - full).abs().max().item()
    assert 0 < diff < 0.05 * full.abs().max().item()  # bf16 changed the decode, a little

    spy.calls.clear()
    # the original's autocast is torch.autocast("cuda"): on a CPU both stages stay fp32, bit for bit
    assert torch.equal(reconstruct_clip(model, x, sample_posterior=False, precision="autocast"), full)
    assert spy.stages() == {("encoder", False, torch.float32, torch.float32),
                            ("decoder", False, torch.float32, torch.float32)}

    spy.calls.clear()
    reconstruct_clip(model, x, sample_posterior=False, precision=Precision("bf16", "full"))
    # a bf16 encoder's latents reach an fp32 decoder as fp32 (the decoder's fp32 weights need that)
    assert spy.stages() == {("encoder", True, torch.bfloat16, torch.float32),
                            ("decoder", False, torch.float32, torch.float32)}


@torch.no_grad()
def test_streaming_runs_each_stage_in_its_precision():
    model = tiny()
    x = clip()
    spy = StageSpy(model)
    stream = StreamingReconstructor(model, x.shape[2], precision=Precision("full", "bf16"))
    out = torch.cat([stream.push(x[:, :, :4]), stream.push(x[:, :, 4:]), stream.finish()], dim=2)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert {(name, on, dtype) for name, on, dtype, _ in spy.calls} == {
        ("encoder", False, torch.float32), ("decoder", True, torch.bfloat16)
    }
    exact = StreamingReconstructor(model, x.shape[2])
    reference = torch.cat([exact.push(x), exact.finish()], dim=2)
    assert 0 < (out.float() - reference).abs().max().item() < 0.05 * reference.abs().max().item()


@torch.no_grad()
def test_fsq_tokens_do_not_depend_on_the_decoders_precision():
    model = tiny("fsq")
    x = clip()
    with Precision("full", "bf16").encoding("cpu"):
        _, log = model.encode(x)
    _, reference = model.encode(x)
    assert torch.equal(log["indices"], reference["indices"])


@torch.no_grad()
def test_fsq_rounds_in_fp32_under_bf16_autocast():
    model = tiny("fsq")
    h = model.encoder(clip()).to(torch.bfloat16)
    with stage_context("bf16", "cpu"):
        codes, log = model.regularization(h)
    reference_codes, reference = model.regularization(h.float())
    # the same tokens as fp32 rounding of the same values; the codes (multiples of 1/4 here) come back in the
    # input's dtype, exactly
    assert torch.equal(log["indices"], reference["indices"])
    assert codes.dtype == torch.bfloat16 and torch.equal(codes.float(), reference_codes)


@torch.no_grad()
def test_temporal_interpolation_runs_in_fp32_under_autocast(monkeypatch):
    model = tiny(variant="v1.1")
    seen = []
    interpolate = torch.nn.functional.interpolate

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    z, _ = model.encode(clip(), sample=False)
    with stage_context("bf16", "cpu"):
        out = model.decode(z)
    assert seen and set(seen) == {torch.float32} and torch.isfinite(out).all()
