"""Peak memory and wall time of long-video streaming and spatial tiling, and what tiling costs in quality.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_long_video.py --quick            # minutes on a laptop CPU
    PYTHONPATH=. .venv/bin/python benchmarks/bench_long_video.py --parts a --frames 33,257 --size 128
    PYTHONPATH=. .venv/bin/python benchmarks/bench_long_video.py --parts c --config CONFIG --ckpt CKPT

Three measurements, each in a fresh child process (so one's peak does not hide another's):

(a) streaming encode+decode (:class:`vidtok.streaming.StreamingReconstructor`, `--chunk` frames pushed at a time)
    of `--frames` frames at `--size`² with the full-size `configs/vidtok_kl_causal_488_4chn.yaml` model. Memory
    should not grow with the number of frames (the issue's target: 257 frames at most 1.3× the peak of 33).
(b) one 17-frame clip at `--hd` (1080×1920) encoded and decoded without tiles (`model.encode`/`decode`), with
    tiles (`--tile`/`--tile_overlap` pixels, latent tiles of a 1/8 of that: `encode_tiled`/`decode_tiled`), and
    with tiles while streaming. The untiled run needs at least two full-resolution activations of the first level
    (128 channels); when even that exceeds the memory cap it is skipped with a note, otherwise it runs under the
    cap (`RLIMIT_AS`), where running out of memory is reported, not fatal. Target: tiled peak <= 6 GiB.
(c) PSNR between the untiled and the tiled decode of the same latents of a real video (the example clip), and of
    each against the input, with `--config`/`--ckpt` if given, else the random-weight full-size model (whose
    reconstructions mean nothing: only the tiled-vs-untiled figure is informative, and only roughly).

Models in (a) and (b) have random weights: memory and time do not depend on the weights. Peak memory is the
child's peak resident set (`VmHWM`, or `ru_maxrss`) on the CPU, `torch.cuda.max_memory_allocated` on a GPU; the
"base" column is the resident set (or allocated GPU memory) after building the model, before the work.
`--quick` shrinks everything so it runs in minutes on a CPU: (a) at 32², (b) at 17×64×128 and (c) at 64², both
with 32-px tiles (4 latents) overlapping by 8 px (1 latent). Nothing here is used by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_CONFIG = REPO / "configs" / "vidtok_kl_causal_488_4chn.yaml"
GIB = 1024**3
RESULT_TAG = "BENCH_RESULT "


# --- the child: one measurement ----------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's peak resident set: `VmHWM` from /proc, else `ru_maxrss` (KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def build_model(config: str, ckpt: str | None, device):
    import torch

    from vidtok.api import load_model_from_config

    torch.manual_seed(0)
    return load_model_from_config(config, ckpt).to(device).eval()


def work_stream(model, spec, device) -> dict:
    """(a) push `frames` random frames through the streaming reconstructor, `chunk` at a time; outputs dropped."""
    import torch

    from vidtok.streaming import StreamingReconstructor

    size, frames, chunk = spec["size"], spec["frames"], spec["chunk"]
    generator = torch.Generator().manual_seed(0)
    stream = StreamingReconstructor(model, frames)
    emitted = 0
    for start in range(0, frames, chunk):
        t = min(chunk, frames - start)
        x = torch.rand(1, 3, t, size, size, generator=generator).to(device) * 2 - 1
        emitted += stream.push(x).shape[2]
    emitted += stream.finish().shape[2]
    return {"frames_out": emitted}


def work_clip(model, spec, device) -> dict:
    """(b) one clip, untiled, tiled (whole clip per tile) or tiled while streaming."""
    import torch

    from vidtok.tile_major import TileMajorProgress, tile_major_reconstruct
    from vidtok.tiling import decode_tiled, encode_tiled, resolve_tiles

    T, H, W = spec["frames"], spec["height"], spec["width"]
    x = torch.rand(1, 3, T, H, W, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    mode = spec["mode"]
    with torch.no_grad():
        if mode == "untiled":
            z, _ = model.encode(x, sample=False)
            out = model.decode(z)
        elif mode == "tiled":
            tiles = resolve_tiles(model, spec["tile"], spec["tile_overlap"])
            z, _ = encode_tiled(model, x, tiles.pixels)
            out = decode_tiled(model, z, tiles.latents)
        else:  # tiled + streamed: tile-major, as the entry points run it
            tiles = resolve_tiles(model, spec["tile"], spec["tile_overlap"])
            progress = TileMajorProgress(0, enabled=spec.get("progress", False))
            frames_out = 0
            for _, out in tile_major_reconstruct(
                model, lambda: iter(x[0].split(spec["chunk"], dim=1)), T, tiles, device=device, progress=progress
            ):
                frames_out += out.shape[1]
            return {"frames_out": frames_out, "state_mib": progress.peak_state_bytes / 2**20}
    return {"frames_out": int(out.shape[2])}


def work_state(model, spec, device) -> dict:
    """(s) what one tile's stream state holds: stream `frames` frames of a `tile`² tile through the encoder and
    its latents through the decoder, and list the frames each causal layer keeps after the last push."""
    import torch

    from vidtok.streaming import StreamingDecoder, StreamingEncoder, padded_stream_length

    size, T = spec["tile"], spec["frames"]
    x = torch.rand(1, 3, T, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    encoder, decoder = StreamingEncoder(model, num_frames=padded_stream_length(model, T)), StreamingDecoder(model)
    with torch.no_grad():
        for chunk in x.split(spec["chunk"], dim=2):
            decoder.push(encoder.push(chunk)[0])
    groups: dict[tuple, list[int]] = {}
    for name, state in (("encoder", encoder.state), ("decoder", decoder.state)):
        for layer, frames in state.held().items():
            key = (name, type(layer).__name__, frames.shape[1], frames.shape[2], frames.shape[3], frames.shape[4])
            count_bytes = groups.setdefault(key, [0, 0])
            count_bytes[0] += 1
            count_bytes[1] += frames.numel() * frames.element_size()
    rows = [[*key, *v] for key, v in sorted(groups.items(), key=lambda kv: -kv[1][1])]
    return {"frames_out": 0, "layers": rows, "encoder_mib": encoder.state.nbytes() / 2**20,
            "decoder_mib": decoder.state.nbytes() / 2**20}


def work_quality(model, spec, device) -> dict:
    """(c) encode the first frames of a real video, decode the latents with and without tiles; PSNRs."""
    import torch

    from vidtok.clips import iter_frame_chunks
    from vidtok.data.sampling import frame_interval
    from vidtok.data.video_io import open_video
    from vidtok.tiling import decode_tiled, resolve_tiles

    path, size, T = spec["video"], spec["size"], spec["frames"]
    reader = open_video(path)
    interval = frame_interval(reader.get_avg_fps(), spec["sample_fps"])
    indices = list(range(0, len(reader), interval))[:T]
    x = next(iter_frame_chunks(path, indices, size, size, len(indices))).unsqueeze(0).to(device)
    tiles = resolve_tiles(model, spec["tile"], spec["tile_overlap"])
    with torch.no_grad():
        z, _ = model.encode(x, sample=False)
        untiled = model.decode(z)[:, :, -x.shape[2] :].clamp(-1, 1)
        tiled = decode_tiled(model, z, tiles.latents)[:, :, -x.shape[2] :].clamp(-1, 1)

    def psnr(a, b) -> float:  # frames in [-1, 1] mapped to [0, 1]
        mse = (((a - b) / 2) ** 2).mean().item()
        return float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()

    return {
        "frames_out": int(tiled.shape[2]),
        "psnr_tiled_vs_untiled": psnr(tiled, untiled),
        "psnr_untiled_vs_input": psnr(untiled, x),
        "psnr_tiled_vs_input": psnr(tiled, x),
    }


WORK = {"stream": work_stream, "clip": work_clip, "quality": work_quality, "state": work_state}


def child(spec: dict) -> None:
    """Run one measurement and print its result as one JSON line."""
    if spec.get("cap_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (spec["cap_bytes"], spec["cap_bytes"]))
    import torch

    device = torch.device(spec["device"])
    result: dict = {"ok": True}
    try:
        model = build_model(spec["config"], spec.get("ckpt"), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            result["base_bytes"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            result["base_bytes"] = current_rss_bytes()
        tic = time.perf_counter()
        result.update(WORK[spec["work"]](model, spec, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["seconds"] = time.perf_counter() - tic
    except (MemoryError, RuntimeError) as err:  # RLIMIT_AS or CUDA out of memory
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        result = {"ok": False, "error": f"out of memory: {str(err).splitlines()[0][:160]}"}
    if device.type == "cuda":
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        result["peak_bytes"] = peak_rss_bytes()
    print(RESULT_TAG + json.dumps(result), flush=True)


# --- the parent: plan, run children, print the table ----------------------------------------------------------------


def available_memory_bytes(device: str) -> int:
    """Free GPU memory, or `MemAvailable` on the CPU (a bound that keeps the cap from pushing the host into swap
    or the OOM killer)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def run_child(spec: dict, timeout: float | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=None if spec.get("progress") else subprocess.PIPE, text=True, env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = ((done.stderr or "(see the child's stderr above)").strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "error": f"child exited with {done.returncode}: {tail[:200]}"}


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def row(label: str, result: dict) -> str:
    if not result.get("ok"):
        return f"  {label:<44} {'-':>9} {'-':>9} {'-':>9}  {result.get('error', '')}"
    extra = " ".join(f"{k}={v:.2f}" for k, v in result.items() if k.startswith("psnr") or k.endswith("_mib"))
    return (
        f"  {label:<44} {gib(result['peak_bytes']):>9} {gib(result.get('base_bytes')):>9} "
        f"{result['seconds']:>9.1f}  frames_out={result['frames_out']} {extra}"
    )


def header(title: str) -> None:
    print(f"\n{title}")
    print(f"  {'measurement':<44} {'peak GiB':>9} {'base GiB':>9} {'seconds':>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes that run in minutes on a CPU")
    parser.add_argument("--parts", default="a,b,c", help="which measurements to run, from a,b,c,s (default a,b,c)")
    parser.add_argument("--frames", default="33,257", help="(a) frame counts to stream (default 33,257)")
    parser.add_argument("--size", type=int, default=None, help="(a) frame size in pixels (default 128; quick 32)")
    parser.add_argument("--chunk", type=int, default=16, help="frames pushed per streaming step (default 16)")
    parser.add_argument("--hd", default=None, help="(b) HxW of the 17-frame clip (default 1080x1920; quick 64x128)")
    parser.add_argument("--clip_frames", type=int, default=17, help="(b) frames of the clip (default 17)")
    parser.add_argument("--modes", default="untiled,tiled,streamed", help="(b) which of untiled,tiled,streamed to run")
    parser.add_argument("--tile", type=int, default=None, help="(b, c) tile size in pixels (default 256; quick 32)")
    parser.add_argument("--tile_overlap", type=int, default=None, help="(b, c) tile overlap (default 64; quick 8)")
    parser.add_argument("--progress", action="store_true", help="(b) the streamed mode's tiles x chunks bar on stderr")
    parser.add_argument("--cap_gib", type=float, default=24.0, help="(b) memory cap of the untiled run (GiB)")
    parser.add_argument("--config", default=str(FULL_CONFIG), help="model config (default: full-size 488 KL)")
    parser.add_argument("--ckpt", default=None, help="(c) trained weights for --config (default: random weights)")
    parser.add_argument("--video", default=str(REPO / "assets" / "example.mp4"), help="(c) real video")
    parser.add_argument("--quality_size", type=int, default=None, help="(c) frame size (default 256; quick 64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a measurement is abandoned")
    args = parser.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return 0

    import yaml

    parts = set(args.parts.split(","))
    params = yaml.safe_load(Path(args.config).read_text())["model"]["params"]["encoder_config"]["params"]
    tdf, ch, f = params["time_downsample_factor"], params["ch"], 2 ** (len(params["ch_mult"]) - 1)
    size = args.size or (32 if args.quick else 128)
    hd = args.hd or ("64x128" if args.quick else "1080x1920")
    height, width = (int(v) for v in hd.lower().split("x"))
    tile = args.tile or (32 if args.quick else 256)
    overlap = args.tile_overlap if args.tile_overlap is not None else (8 if args.quick else 64)
    quality_size = args.quality_size or (64 if args.quick else 256)
    base = {"config": args.config, "device": args.device, "chunk": args.chunk}
    print(f"device: {args.device}; config: {args.config}; weights: {args.ckpt or 'random (memory/time only)'}")
    print(f"torch threads: default; streaming chunk: {args.chunk} frames")

    if "a" in parts:
        header(f"(a) streaming encode+decode at {size}x{size}, {args.chunk} frames per push")
        peaks = {}
        for frames in (int(v) for v in args.frames.split(",")):
            result = run_child({**base, "work": "stream", "frames": frames, "size": size}, args.timeout)
            print(row(f"{frames} frames", result), flush=True)
            if result.get("ok"):
                peaks[frames] = result["peak_bytes"]
        if len(peaks) >= 2:
            lo, hi = min(peaks), max(peaks)
            print(f"  peak({hi} frames) / peak({lo} frames) = {peaks[hi] / peaks[lo]:.3f} (target <= 1.3)")

    if "b" in parts:
        T = args.clip_frames
        clip = {**base, "work": "clip", "frames": T, "height": height, "width": width, "tile": tile,
                "tile_overlap": overlap, "progress": args.progress}
        header(f"(b) one {T}x{height}x{width} clip, encode+decode; tiles {tile} px / {tile // f} latents (overlap "
               f"{overlap} / {overlap // f})")
        modes = set(args.modes.split(","))
        cap = int(min(args.cap_gib * GIB, 0.8 * available_memory_bytes(args.device)))
        # lower bound of the untiled peak: input and output of a first-level conv, ch channels at full resolution
        need = 2 * ch * (T + tdf - 1) * height * width * 4
        if "untiled" in modes and need > cap:
            print(f"  {'untiled':<44} skipped: needs more than {need / GIB:.1f} GiB (two {ch}-channel full-"
                  f"resolution activations), over the {cap / GIB:.1f} GiB cap")
        elif "untiled" in modes:
            print(row(f"untiled (cap {cap / GIB:.1f} GiB)", run_child({**clip, "mode": "untiled", "cap_bytes": cap},
                                                                       args.timeout)), flush=True)
        if "tiled" in modes:
            print(row("tiled (whole clip per tile)", run_child({**clip, "mode": "tiled"}, args.timeout)), flush=True)
        if "streamed" in modes:
            print(row(f"tiled + streamed, tile-major ({args.chunk} frames per push)",
                      run_child({**clip, "mode": "streamed"}, args.timeout)), flush=True)
        print("  target: tiled peak <= 6 GiB at 1080x1920 with the full-size 488 model")

    if "s" in parts:
        header(f"(s) one tile's stream state: {tile}x{tile} px, {args.chunk} frames per push, after 17 frames")
        result = run_child({**base, "work": "state", "tile": tile, "frames": 17}, args.timeout)
        print(row("encoder + decoder of one tile", result), flush=True)
        print(f"  {'network':<8} {'layer':<20} {'C':>5} {'t':>3} {'h':>5} {'w':>5} {'layers':>7} {'MiB':>9}")
        for net, layer, c, t, h, w, count, size in result.get("layers", []):
            print(f"  {net:<8} {layer:<20} {c:>5} {t:>3} {h:>5} {w:>5} {count:>7} {size / 2**20:>9.2f}")

    if "c" in parts:
        video = args.video
        header(f"(c) tiled vs untiled decode of the same latents: {video}, 17 frames at {quality_size}², "
               f"tiles {tile} px / {tile // f} latents")
        if args.ckpt is None:
            print("  caveat: random weights; the reconstructions are noise, so only the tiled-vs-untiled PSNR is "
                  "(roughly) informative. Pass --config and --ckpt of a trained model for real figures.")
        spec = {**base, "work": "quality", "ckpt": args.ckpt, "video": video, "size": quality_size, "frames": 17,
                "sample_fps": 30, "tile": tile, "tile_overlap": overlap}
        print(row("decode of the posterior mean", run_child(spec, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
