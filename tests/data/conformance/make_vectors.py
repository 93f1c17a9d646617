"""Writes the conformance vectors the tests ship with: the original VidTok's outputs, reduced to a few MB.

    python tests/data/conformance/make_vectors.py [SOURCE]     (SOURCE: the full set, default ../shared/conformance)

The encoder outputs, latents, FSQ indices and scalars are kept whole. A reconstruction (`recon*`, [1, 3, T, H, W])
is kept as a sample that misses no channel, frame, row or column: in every channel and frame, one seeded position
on each row and one on each column, stored with the tensor's shape and its max |value| (the tests' tolerance
scales with that). The input clip `x` is left out: `recipe.make_input` regenerates it bit for bit. So are
`recon_forward` and `recon_from_indices*`: the original gave the same bits as `recon*` there, so the tests compare
our forward pass with `recon` and our two decodes with each other. These facts are checked here before anything
is written.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEED = 0
# left out of the shipped files, with what each equals in the original's run
LEFT_OUT = {"recon_forward": "recon", "recon_from_indices": "recon", "recon_from_indices_uncropped": "recon_uncropped"}


def load_recipe(source: Path):
    spec = importlib.util.spec_from_file_location("source_recipe", source / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_positions(shape: tuple[int, ...]) -> torch.Tensor:
    """Flat positions in a [1, C, T, H, W] tensor: per channel and frame, a random column on every row and a random
    row on every column (seeded by SEED, sorted, duplicates removed)."""
    _, c, t, h, w = shape
    g = torch.Generator().manual_seed(SEED)
    planes = torch.arange(c * t).view(-1, 1) * (h * w)  # offset of each (channel, frame) plane
    rows = torch.arange(h) * w + torch.randint(w, (c * t, h), generator=g)
    cols = torch.randint(h, (c * t, w), generator=g) * w + torch.arange(w)
    return torch.cat([planes + rows, planes + cols], dim=1).flatten().unique().to(torch.int32)


def reduce_vectors(vectors: dict[str, torch.Tensor], recipe) -> dict:
    x = vectors.pop("x")
    if not torch.equal(x, recipe.make_input(*x.shape[2:])):
        raise SystemExit(f"recipe.make_input{tuple(x.shape[2:])} does not regenerate the stored x")
    for name, same_as in LEFT_OUT.items():
        if name in vectors and not torch.equal(vectors.pop(name), vectors[same_as]):
            raise SystemExit(f"{name} differs from {same_as}; it cannot be left out")
    reduced: dict = {"x_shape": list(x.shape)}
    positions: dict[tuple[int, ...], torch.Tensor] = {}  # one tensor per shape: torch.save stores it once
    for name, tensor in vectors.items():
        if not name.startswith("recon"):
            reduced[name] = tensor
            continue
        where = positions.setdefault(tuple(tensor.shape), sample_positions(tuple(tensor.shape)))
        reduced[name] = {
            "shape": list(tensor.shape),
            "positions": where,
            "values": tensor.flatten()[where.long()].clone(),
            "absmax": tensor.abs().max().item(),
        }
    return reduced


def main(source: Path) -> None:
    if not (source / "recipe.py").is_file():
        raise SystemExit(f"{source} holds no recipe.py: pass the folder of the full conformance set")
    recipe = load_recipe(source)
    shutil.copyfile(source / "recipe.py", HERE / "recipe.py")
    for sub in ("", "v1_1"):
        (HERE / "keys" / sub).mkdir(parents=True, exist_ok=True)
        (HERE / "vectors" / sub).mkdir(parents=True, exist_ok=True)
        for keys in sorted((source / "keys" / sub).glob("*.tsv")):
            shutil.copyfile(keys, HERE / "keys" / sub / keys.name)
        for path in sorted((source / "vectors" / sub).glob("*.pt")):
            reduced = reduce_vectors(torch.load(path, weights_only=True), recipe)
            out = HERE / "vectors" / sub / path.name
            torch.save(reduced, out)
            print(f"{out.relative_to(HERE)}: {path.stat().st_size} -> {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[3] / "shared" / "conformance")
