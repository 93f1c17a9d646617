"""Encode/decode speed of our tokenizer against diffusers' `AutoencoderVidTok`, on the same weights and input.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_speed.py [--config configs/vidtok_kl_causal_488_4chn.yaml]
        [--frames 17] [--size 128] [--repeats 3] [--dtype fp32|bf16]
        [--encode_dtype fp32|bf16] [--decode_dtype fp32|bf16] [--compile] [--channels_last] [--device cpu|cuda]
        [--json OUT]

Implementations, timed alternately within one run so that load on a shared machine hits them alike:
- `ours`: the config's model (v1.0 engine for v1.0 configs);
- `ours-v1.1`: for a v1.0 causal config, the same weights run with v1.1 semantics (what diffusers computes);
- `diffusers`: `AutoencoderVidTok` with the same weights (skipped, with a note, when diffusers is not installed).

Weights are the conformance recipe's (`tests/data/conformance/recipe.py`), the input its
`make_input`. KL latents are posterior means. Encode is `[B, 3, T, H, W]` -> latent (regularizer included; diffusers
through `forward(encoder_mode=True)`, i.e. with its padding), decode is latent -> T frames. Reported per
implementation: median encode and decode time over `--repeats`, frames/s (T over encode+decode), peak memory of
each stage above the resident set before it (Linux peak-RSS reset, with glibc told to unmap freed blocks; one
pass per implementation in a fresh process), FLOPs of one encode+decode (`torch.utils.flop_counter`, counted with
direct convolutions: the architecture's FLOPs, the same for every implementation), effective GFLOP/s (those FLOPs
over the time) and its fraction of the best 3x3x3 Conv3d throughput measured in the same run (our Winograd layers
do a quarter of the multiplies, so this can pass 100 %), the time ratio to diffusers and the largest output
difference from it (outputs of the last timed run). Our networks keep activations channels-last by themselves;
`--channels_last` also converts the weights and the input (and diffusers', which otherwise runs channels-first).

CPU timings depend on glibc's allocator: by default every block above 32 MiB is a fresh `mmap` whose pages fault
in on first touch, which costs implementations that allocate more activations more. To time the arithmetic
without that, run under `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184` (the
memory pass, in its own process, sets its own allocator options either way).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memtools import PeakMemory, peak_rss_resettable, return_freed_memory  # noqa: E402

from tests.data.conformance import recipe  # noqa: E402
from vidtok.api import load_model_from_config  # noqa: E402
from vidtok.interop.diffusers import (  # noqa: E402
    DiffusersSemanticsWarning,
    config_from_diffusers_kwargs,
    diffusers_kwargs_from_model,
    to_diffusers,
)
from vidtok.kernels.fast_conv import direct_convs  # noqa: E402

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
DEVICE = torch.device("cpu")  # set from --device


# --- implementations --------------------------------------------------------------------------------------------


@dataclass
class Impl:
    name: str
    module: torch.nn.Module
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    encode_mib: list[float] = field(default_factory=list)
    decode_mib: list[float] = field(default_factory=list)
    flops: int = 0
    z: torch.Tensor | None = None
    recon: torch.Tensor | None = None


def ours_impl(name: str, model: torch.nn.Module, frames: int) -> Impl:
    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode(x, sample=False)[0]  # KL: posterior mean; FSQ: codes

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode(z)[:, :, -frames:]  # a v1.1 decoder returns tdf·T' frames; the clip is the last T

    return Impl(name, model, encode, decode)


def diffusers_impl(dmodel: torch.nn.Module, frames: int) -> Impl:
    fsq = dmodel.config.regularizer == "fsq"
    tcr = dmodel.temporal_compression_ratio
    # diffusers' causal forward pads the end to 1 + k·tcr frames and crops it after decoding
    end_pad = tcr - frames % tcr + 1 if dmodel.is_causal and frames % tcr != 1 else 0

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = dmodel(x, encoder_mode=True, sample_posterior=False)
        return out[0] if fsq else out

    def decode(z: torch.Tensor) -> torch.Tensor:
        out = dmodel.decode(z)
        return out[:, :, : out.shape[2] - end_pad]

    return Impl("diffusers", dmodel, encode, decode)


def v1_1_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The v1.1 model of a v1.0 causal model's architecture, with its weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffusersSemanticsWarning)
        config = config_from_diffusers_kwargs(diffusers_kwargs_from_model(model))
    twin = load_model_from_config(config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def to_channels_last(module: torch.nn.Module) -> None:
    for p in module.parameters():
        if p.ndim == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        elif p.ndim == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)


def build_impls(args: argparse.Namespace) -> list[Impl]:
    model = recipe.fill_parameters_(load_model_from_config(args.config).eval())
    impls = [ours_impl("ours", model.to(DEVICE), args.frames)]
    layout = model.encoder.layout
    if layout.causal and layout.crop_output:  # v1.0 causal
        impls.append(ours_impl("ours-v1.1", v1_1_twin(model).to(DEVICE), args.frames))
    if HAVE_DIFFUSERS and not args.no_diffusers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DiffusersSemanticsWarning)
            impls.append(diffusers_impl(to_diffusers(model).to(DEVICE), args.frames))
    return [in_stage_dtypes(impl, args) for impl in impls]


# --- measuring --------------------------------------------------------------------------------------------------


def autocast(dtype: str):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def stage_dtypes(args: argparse.Namespace) -> tuple[str, str]:
    """The encoder's and the decoder's dtype: `--dtype` unless `--encode_dtype`/`--decode_dtype` say otherwise."""
    return args.encode_dtype or args.dtype, args.decode_dtype or args.dtype


def in_stage_dtypes(impl: Impl, args: argparse.Namespace) -> Impl:
    """`impl` with encode and decode each under its stage's autocast; latents reach the decoder as fp32."""
    encode_dtype, decode_dtype = stage_dtypes(args)
    encode, decode = impl.encode, impl.decode

    def encode_in_dtype(x: torch.Tensor) -> torch.Tensor:
        with autocast(encode_dtype):
            return encode(x)

    def decode_in_dtype(z: torch.Tensor) -> torch.Tensor:
        with autocast(decode_dtype):
            return decode(z.float())

    impl.encode, impl.decode = encode_in_dtype, decode_in_dtype
    return impl


def synchronize() -> None:
    """Wait for the device's queued work, so a time covers the kernels launched in it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return out, time.perf_counter() - start


def conv3d_peak(args: argparse.Namespace, repeats: int = 3) -> tuple[float, float]:
    """The best GFLOP/s of a 3x3x3 Conv3d and of a 3x3 Conv2d over shapes like the model's heavy layers (channels
    x frames x size: 128x8x32², 256x8x64², 512x6x32²), each in both memory layouts: the machine's practical peak
    for these kernels, against which the model's throughput is compared."""
    g = torch.Generator().manual_seed(0)
    best = {3: 0.0, 2: 0.0}
    for channels, frames, size in ((128, 8, 32), (256, 8, 64), (512, 6, 32)):
        for dims, conv, shape in (
            (3, torch.nn.Conv3d(channels, channels, 3, padding=1), (1, channels, frames, size, size)),
            (2, torch.nn.Conv2d(channels, channels, 3, padding=1), (frames, channels, size, size)),
        ):
            x = torch.randn(shape, generator=g).to(DEVICE)
            conv = conv.to(DEVICE)
            for layout in (torch.contiguous_format, torch.channels_last_3d if dims == 3 else torch.channels_last):
                x = x.contiguous(memory_format=layout)
                with torch.no_grad(), autocast(args.dtype), FlopCounterMode(display=False) as counter:
                    conv(x)
                with torch.no_grad(), autocast(args.dtype):
                    times = [timed(lambda: conv(x))[1] for _ in range(repeats)]  # noqa: B023
                best[dims] = max(best[dims], counter.get_total_flops() / min(times) / 1e9)
    return best[3], best[2]


MEMORY_TAG = "BENCH_MEMORY "


def measure_memory_in_child(args: argparse.Namespace, name: str) -> tuple[list[float], list[float]]:
    """Peak encode and decode memory (MiB) of implementation `name`, measured in a fresh process.

    A process of its own, because the measurement needs glibc to unmap freed blocks from the start (otherwise
    memory freed by earlier runs is reused unseen), and that setting would slow the timed runs in this one."""
    if DEVICE.type == "cpu" and not (sys.platform.startswith("linux") and peak_rss_resettable()):
        return [], []
    argv = [sys.executable, __file__, *args.argv, "--memory_child", name]
    done = subprocess.run(argv, capture_output=True, text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MEMORY_TAG)), None)
    if done.returncode or line is None:
        print(f"note: memory of {name} not measured: {done.stderr.strip()[-300:]}")
        return [], []
    encode_mib, decode_mib = json.loads(line[len(MEMORY_TAG) :])
    return [encode_mib], [decode_mib]


def memory_child(args: argparse.Namespace) -> None:
    """The `--memory_child` process: one encode and one decode of one implementation, each under `PeakMemory` (on
    CUDA: the peak of allocated memory above the amount at its start)."""
    return_freed_memory()
    x = recipe.make_input(args.frames, args.size, args.size).to(DEVICE)
    impl = next(i for i in build_impls(args) if i.name == args.memory_child)
    with torch.no_grad():
        with device_peak() as encode_mem:
            z = impl.encode(x)
        with device_peak() as decode_mem:
            impl.decode(z)
    print(MEMORY_TAG + json.dumps([encode_mem.mib, decode_mem.mib]))


class CudaPeak:
    """Peak allocated CUDA memory (MiB) while the block runs, above the amount allocated at entry."""

    def __enter__(self) -> CudaPeak:
        synchronize()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        self.start = torch.cuda.memory_allocated(DEVICE)
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize()
        self.mib = (torch.cuda.max_memory_allocated(DEVICE) - self.start) / 2**20


def device_peak() -> PeakMemory | CudaPeak:
    return CudaPeak() if DEVICE.type == "cuda" else PeakMemory()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = recipe.make_input(args.frames, args.size, args.size).to(DEVICE)
    impls = build_impls(args)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        for impl in impls:
            to_channels_last(impl.module)

    with torch.no_grad():
        for impl in impls:  # one eager pass each with direct convs: the architecture's FLOPs, and a warm-up
            with direct_convs(), FlopCounterMode(display=False) as counter:
                impl.decode(impl.encode(x))
            impl.flops = counter.get_total_flops()
        if args.compile:
            for impl in impls:
                impl.module.encoder.compile()
                impl.module.decoder.compile()
                impl.decode(impl.encode(x))  # compiles
        for _ in range(args.repeats):
            for impl in impls:  # alternate implementations within each repeat
                impl.z, seconds = timed(lambda: impl.encode(x))  # noqa: B023
                impl.encode_s.append(seconds)
                impl.recon, seconds = timed(lambda: impl.decode(impl.z))  # noqa: B023
                impl.decode_s.append(seconds)
        peak3d, peak2d = conv3d_peak(args)
    for impl in impls:
        impl.encode_mib, impl.decode_mib = measure_memory_in_child(args, impl.name)

    reference = next((i for i in impls if i.name == "diffusers"), None)
    rows = []
    for impl in impls:
        enc, dec = statistics.median(impl.encode_s), statistics.median(impl.decode_s)
        row = {
            "impl": impl.name,
            "encode_s": enc,
            "decode_s": dec,
            "frames_per_s": args.frames / (enc + dec),
            "encode_peak_mib": max(impl.encode_mib, default=math.nan),
            "decode_peak_mib": max(impl.decode_mib, default=math.nan),
            "gflop": impl.flops / 1e9,
            "gflop_per_s": impl.flops / 1e9 / (enc + dec),
            "of_conv3d_peak": impl.flops / 1e9 / (enc + dec) / peak3d,
            "runs_encode_s": impl.encode_s,
            "runs_decode_s": impl.decode_s,
        }
        if reference is not None and impl is not reference:
            ref_enc, ref_dec = statistics.median(reference.encode_s), statistics.median(reference.decode_s)
            row["ratio_to_diffusers"] = (enc + dec) / (ref_enc + ref_dec)
            row["max_abs_diff_z"] = _max_diff(impl.z, reference.z)
            row["max_abs_diff_recon"] = _max_diff(impl.recon, reference.recon)
        rows.append(row)
    return {
        "config": str(args.config),
        "input": [1, 3, args.frames, args.size, args.size],
        "dtype": args.dtype,
        "encode_dtype": stage_dtypes(args)[0],
        "decode_dtype": stage_dtypes(args)[1],
        "compile": args.compile,
        "channels_last": args.channels_last,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(DEVICE),
        "conv3d_peak_gflop_per_s": peak3d,
        "conv2d_peak_gflop_per_s": peak2d,
        "max_abs_recon": reference.recon.abs().max().item() if reference else impls[0].recon.abs().max().item(),
        "rows": rows,
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.nan
    return (a.float() - b.float()).abs().max().item()


# --- report -----------------------------------------------------------------------------------------------------


def dtypes_text(result: dict[str, Any]) -> str:
    encode, decode = result["encode_dtype"], result["decode_dtype"]
    return encode if encode == decode else f"encode {encode}, decode {decode}"


def format_report(result: dict[str, Any]) -> str:
    header = (
        f"{Path(result['config']).stem}, input {'x'.join(map(str, result['input']))}, {dtypes_text(result)}"
        f"{', compiled' if result['compile'] else ''}{', channels_last' if result['channels_last'] else ''}, "
        f"{result['device']}, {result['threads']} threads, torch {result['torch']}\n"
        f"Conv3d 3x3x3 peak {result['conv3d_peak_gflop_per_s']:.1f} GFLOP/s "
        f"(Conv2d 3x3: {result['conv2d_peak_gflop_per_s']:.1f}); max |recon| {result['max_abs_recon']:.2f}"
    )
    cols = [
        ("impl", "impl", "{}"),
        ("encode_s", "enc s", "{:.2f}"),
        ("decode_s", "dec s", "{:.2f}"),
        ("frames_per_s", "frames/s", "{:.2f}"),
        ("encode_peak_mib", "enc MiB", "{:.0f}"),
        ("decode_peak_mib", "dec MiB", "{:.0f}"),
        ("gflop", "GFLOP", "{:.1f}"),
        ("gflop_per_s", "GFLOP/s", "{:.1f}"),
        ("of_conv3d_peak", "of peak", "{:.0%}"),
        ("ratio_to_diffusers", "/diffusers", "{:.3f}"),
        ("max_abs_diff_z", "max|dz|", "{:.2e}"),
        ("max_abs_diff_recon", "max|drecon|", "{:.2e}"),
    ]
    table = [[title for _, title, _ in cols]]
    for row in result["rows"]:
        table.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in cols])
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |" for r in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    runs = "\n".join(
        f"  {row['impl']}: encode {', '.join(f'{s:.2f}' for s in row['runs_encode_s'])} s; "
        f"decode {', '.join(f'{s:.2f}' for s in row['runs_decode_s'])} s"
        for row in result["rows"]
    )
    return f"{header}\n" + "\n".join(lines) + f"\nruns:\n{runs}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "vidtok_kl_causal_488_4chn.yaml"))
    parser.add_argument("--frames", type=int, default=17, help="clip length T")
    parser.add_argument("--size", type=int, default=128, help="height = width")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: CPU autocast")
    for stage in ("encode", "decode"):
        parser.add_argument(
            f"--{stage}_dtype", choices=("fp32", "bf16"), default=None, help=f"the {stage}r's dtype (default --dtype)"
        )
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder and decoder")
    parser.add_argument("--channels_last", action="store_true", help="channels-last weights and input")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (synchronised timings, CUDA autocast for bf16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no_diffusers", action="store_true", help="bench ours only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.memory_child:
        memory_child(args)
        return 0
    if not HAVE_DIFFUSERS and not args.no_diffusers:
        print("note: diffusers is not installed (pip install 'vidtok[diffusers]'); benchmarking ours only")
    capability = torch.backends.cpu.get_cpu_capability()
    if DEVICE.type == "cpu" and "bf16" in stage_dtypes(args) and not capability.startswith("AVX512"):
        print(
            f"note: this CPU ({capability}) has no native bf16: bf16 convolutions take a fallback path that can be "
            "hundreds of times slower than fp32 (a 3x3x3 Conv3d: ~300x on an AVX2 machine)"
        )
    result = run(args)
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
