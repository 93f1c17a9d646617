"""Seconds and peak memory per training batch (autoencoder step + discriminator step) of an official config.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_train.py [--config configs/vidtok_kl_causal_488_4chn.yaml]
        [--frames 17] [--size 64] [--batches 3] [--rounds 2] [--device cpu|cuda] [--precision 32|bf16-mixed]
        [--use_checkpoint] [--keep_all_activations] [--channels_last] [--compile] [--disc_start N]
        [--baseline GITREF] [--checkpoint_ab] [--plain_ab]

Every measurement runs in a fresh child process that builds the model (recipe weights from
`tests/data/conformance/recipe.py` on every parameter, LPIPS included; no downloads), then
trains `1 + --batches` batches of one fixed clip with Lightning, exactly as `vidtok train` does; the first batch is
a warm-up. Variants are interleaved round by round so that load on a shared machine hits them alike:

- `new`: this checkout;
- `base` (`--baseline GITREF`): the code at GITREF, from a detached worktree under /tmp, run by this same script;
- `ckpt` (`--checkpoint_ab`): this checkout with `use_checkpoint: true`;
- `plain` (`--plain_ab`): this checkout without the selective recomputation of `vidtok/modules/recompute.py`.

Reported per variant: median and spread (min-max) of the seconds per timed batch, the median time in each phase
(`gen_fwd`: encoder, regularizer, decoder forward; `lpips` and `disc`: their forward passes; `backward`: every
`manual_backward`; `optim`: the two optimiser steps; `other`: the rest, e.g. the adaptive weight's gradients and
gradient clipping), the peak memory of a timed batch (whole-process peak RSS on CPU, `max_memory_allocated` on
CUDA) and the first batch's losses. With `--baseline`, the largest difference of the first batch's logged
losses between `new` and `base` is printed: the step's numbers must not change.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from memtools import PeakMemory, peak_rss_resettable

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_TRAIN "
PHASES = ("gen_fwd", "lpips", "disc", "backward", "optim")


# --- the child: one process, one variant --------------------------------------------------------------------------


def load_recipe() -> Any:
    """The conformance recipe shipped beside this script (loaded by path: a baseline run imports vidtok from another
    checkout, which may not have it)."""
    spec = importlib.util.spec_from_file_location("recipe", REPO / "tests" / "data" / "conformance" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PhaseClock:
    """Wall time spent in each phase of a batch; on CUDA every boundary synchronises so kernels are counted where
    they were launched."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._open: dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self, phase: str) -> None:
        self._open[phase] = self.now()

    def stop(self, phase: str) -> None:
        self.seconds[phase] += self.now() - self._open.pop(phase)

    @contextmanager
    def phase(self, name: str) -> Any:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def time_module(self, module: torch.nn.Module, phase: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.start(phase))
        module.register_forward_hook(lambda *_: self.stop(phase))

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    from omegaconf import OmegaConf

    from vidtok.util import instantiate_from_config

    config = OmegaConf.load(args.config)
    params = config.model.params
    params.encoder_config.params.use_checkpoint = args.use_checkpoint
    params.compile_model = args.compile
    params.pop("ckpt_path", None)
    if args.disc_start is not None:
        params.loss_config.params.disc_start = args.disc_start
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.build_loss(lpips_pretrained=False)
    load_recipe().fill_parameters_(model)
    model.learning_rate = float(config.model.base_learning_rate)
    if args.channels_last:
        model.loss.perceptual_loss.to(memory_format=torch.channels_last)
        model.loss.discriminator.to(memory_format=torch.channels_last)
    return model


def make_clip(args: argparse.Namespace) -> torch.Tensor:
    """`[3, T, H, W]` in [-1, 1]: the recipe's input, else seeded noise."""
    recipe = load_recipe()
    if recipe is not None:
        return recipe.make_input(args.frames, args.size, args.size)[0]
    g = torch.Generator().manual_seed(1234)
    return torch.rand((3, args.frames, args.size, args.size), generator=g) * 2 - 1


def child(args: argparse.Namespace) -> None:
    """Train `1 + batches` batches and print one `BENCH_TRAIN {json}` line."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    device = torch.device(args.device)
    model = build_model(args)
    clip = make_clip(args)
    clock = PhaseClock(device)
    cpu_memory = device.type == "cpu" and peak_rss_resettable()
    batches: list[dict[str, Any]] = []

    class Probe(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            for name in ("encoder", "decoder", "regularization"):
                clock.time_module(getattr(pl_module, name), "gen_fwd")
            clock.time_module(pl_module.loss.perceptual_loss, "lpips")
            clock.time_module(pl_module.loss.discriminator, "disc")
            manual_backward = pl_module.manual_backward

            def timed_backward(*a: Any, **k: Any) -> None:
                with clock.phase("backward"):
                    manual_backward(*a, **k)

            pl_module.manual_backward = timed_backward
            for opt in trainer.optimizers:
                opt.register_step_pre_hook(lambda *_: clock.start("optim"))
                opt.register_step_post_hook(lambda *_: clock.stop("optim"))

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            clock.reset()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            self.memory = PeakMemory().__enter__() if cpu_memory else None
            self.t0 = clock.now()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            seconds = clock.now() - self.t0
            if self.memory is not None:
                self.memory.__exit__()
                peak = self.memory.peak
            else:
                peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            record = {"seconds": seconds, "peak_mib": peak, **clock.seconds}
            if batch_idx == 0:
                record["losses"] = {k: float(v) for k, v in outputs.items() if torch.is_tensor(v) and v.numel() == 1}
            batches.append(record)

    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision=args.precision, max_steps=2 * (1 + args.batches),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Probe()],
    )
    loader = torch.utils.data.DataLoader([{"jpg": clip}] * (1 + args.batches), batch_size=1)
    torch.manual_seed(1)  # the posterior sample and LPIPS's dropout draw from here
    if args.keep_all_activations:
        from vidtok.modules.recompute import keep_all_activations

        with keep_all_activations():
            trainer.fit(model, loader)
    else:
        trainer.fit(model, loader)
    print(RESULT_TAG + json.dumps({"batches": batches, "threads": torch.get_num_threads()}), flush=True)


# --- the parent: variants, rounds, table ------------------------------------------------------------------------


def baseline_tree(ref: str) -> Path:
    """A detached worktree of `ref` under /tmp (made once, reused while it exists)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = Path("/tmp") / f"bench_train_base_{sha[:12]}"
    if not tree.is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), sha], check=True,
                       capture_output=True)
    return tree


def run_child(tree: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", *args.child_argv, *extra]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tree)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_TAG)), None)
    if done.returncode or line is None:
        raise RuntimeError(f"the child for {tree} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line[len(RESULT_TAG):])


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    timed = [b for run in runs for b in run["batches"][1:]]
    seconds = [b["seconds"] for b in timed]
    row = {
        "variant": name,
        "batches": len(timed),
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "peak_mib": statistics.median(b["peak_mib"] for b in timed),
        "losses": runs[0]["batches"][0]["losses"],
    }
    for phase in PHASES:
        row[phase] = statistics.median(b[phase] for b in timed)
    row["other"] = row["median_s"] - sum(row[p] for p in PHASES)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'variant':8} {'n':>2} {'s/batch':>8} {'min-max':>13} " + " ".join(f"{p:>8}" for p in (*PHASES, "other"))
    lines = [head + f" {'peak MiB':>9} {'vs new':>7}"]
    new = next(r for r in rows if r["variant"] == "new")
    for r in rows:
        lines.append(
            f"{r['variant']:8} {r['batches']:2d} {r['median_s']:8.2f} {r['min_s']:6.2f}-{r['max_s']:<6.2f} "
            + " ".join(f"{r[p]:8.2f}" for p in (*PHASES, "other"))
            + f" {r['peak_mib']:9.0f} {r['median_s'] / new['median_s']:6.2f}x"
        )
    return "\n".join(lines)


def loss_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    """The largest difference of two loss logs, relative to the value where it exceeds 1 (the summed NLL is in the
    thousands, where one float32 rounding step is 1e-4), and the key it is at."""
    common = sorted(set(a) & set(b))
    diffs = {k: abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]), 1.0) for k in common}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def parent(args: argparse.Namespace) -> None:
    variants: list[tuple[str, Path, list[str]]] = [("new", REPO, [])]
    if args.baseline:
        variants.append(("base", baseline_tree(args.baseline), []))
    if args.checkpoint_ab:
        variants.append(("ckpt", REPO, ["--use_checkpoint"]))
    if args.plain_ab:
        variants.append(("plain", REPO, ["--keep_all_activations"]))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, tree, extra in order:
            result = run_child(tree, args, extra)
            runs[name].append(result)
            print(f"round {r + 1} {name}: " + ", ".join(f"{b['seconds']:.2f}s/{b['peak_mib']:.0f}MiB"
                                                      for b in result["batches"]), flush=True)
    rows = [summarise(name, runs[name]) for name, _, _ in variants]
    print(f"config {args.config}, clip 1x3x{args.frames}x{args.size}x{args.size}, device {args.device}, precision "
          f"{args.precision}, threads {runs['new'][0]['threads']}, {args.rounds} rounds x {args.batches} timed batches "
          f"(after 1 warm-up) per variant")
    print(format_table(rows))
    new = rows[0]
    print("first-batch losses (new): " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(new["losses"].items())))
    for row in rows[1:]:
        diff, key = loss_difference(new["losses"], row["losses"])
        print(f"largest first-batch loss difference new vs {row['variant']} (relative above 1): {diff:.3g} ({key})")
    if args.json:
        args.json.write_text(json.dumps({"args": args.child_argv, "rows": rows, "runs": runs}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "vidtok_kl_causal_488_4chn.yaml"))
    parser.add_argument("--frames", type=int, default=17, help="clip length T")
    parser.add_argument("--size", type=int, default=64, help="height = width")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per child, after one warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="children per variant, interleaved")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32", choices=("32", "bf16-mixed"), help="Lightning precision")
    parser.add_argument("--use_checkpoint", action="store_true", help="the configs' activation checkpointing")
    parser.add_argument("--keep_all_activations", action="store_true",
                        help="no selective recomputation: autograd keeps every activation (as before it existed)")
    parser.add_argument("--channels_last", action="store_true", help="LPIPS and discriminator weights channels-last")
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder and decoder")
    parser.add_argument("--disc_start", type=int, default=None,
                        help="override loss_config.params.disc_start (0: the GAN phase from the first batch)")
    parser.add_argument("--baseline", default=None, help="also run the code at this git ref (variant `base`)")
    parser.add_argument("--checkpoint_ab", action="store_true",
                        help="also run this checkout with use_checkpoint: true (variant `ckpt`)")
    parser.add_argument("--plain_ab", action="store_true",
                        help="also run this checkout with --keep_all_activations (variant `plain`)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


CHILD_OPTIONS = ("config", "frames", "size", "batches", "device", "precision", "disc_start")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        child(args)
        return 0
    args.config = str(Path(args.config).resolve())
    args.child_argv = [f"--{k}={getattr(args, k)}" for k in CHILD_OPTIONS if getattr(args, k) is not None]
    args.child_argv += [f"--{k}" for k in ("use_checkpoint", "keep_all_activations", "channels_last", "compile")
                        if getattr(args, k)]
    parent(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
