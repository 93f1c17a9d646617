"""Winograd F(4×4, 3×3) convolution: the 3×3 spatial kernels of VidTok on CPU in fp32, forward and backward.

Why: the network's time goes to 3×3 and 3×3×3 convolutions at 256–512 channels. On a CPU without a fast direct
kernel (oneDNN reached 100–130 GFLOP/s on a 2-core AVX2 machine), computing each 4×4 output tile from a 6×6 input
tile in the Winograd domain needs 36 multiply-adds per channel pair instead of 144, done as 36 batched GEMMs. The
transforms are a few additions per value; they run on bands of tile rows through one workspace per thread, reused
by every band and every call, so no large block is page-faulted in again and again.

A k×3×3 kernel (k frames) is k spatial 3×3 kernels: frame tap j of output frame t reads input frame t + j, so the
Winograd-domain input of a frame is computed once and the k taps accumulate into the same GEMM output.

Results differ from a direct convolution by rounding only (about 1e-5 relative for unit-scale inputs). The input's
gradient is a Winograd convolution of the output's gradient; the weight's is made in the Winograd domain
(`winograd_weight_grad`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import torch
from torch import nn

# F(4, 3) with interpolation points 0, ±1, ±2, ∞ (Lavin & Gray 2016). Only G is applied as a matrix (to the weights,
# once per call); B^T and A^T are applied as the additions written out in `_input_transform` and `_output_transform`.
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)

# the workspace of one band (its Winograd-domain input, GEMM output and scratch) stays under this size
BAND_BYTES = 96 << 20
MIN_CHANNELS = 64


def transform_weight(weight: torch.Tensor, out: torch.Tensor | None = None, transposed: bool = False) -> torch.Tensor:
    """`[C_out, C_in, k, 3, 3]` (or `[C_out, C_in, 3, 3]`) -> `[k, 36, C_out, C_in]`: G w G^T for every frame tap,
    written into `out` if given. With `transposed`, the same for the kernel of the transposed convolution (taps
    flipped in time and space, channels swapped): `[k, 36, C_in, C_out]`, a view whose last two dims are swapped.

    One small GEMM per tap straight from the weight's own layout (36×9 coefficients against the nine taps of every
    channel pair), so no transposed or flipped copy of the weight is made.
    """
    c_out, c_in = weight.shape[:2]
    taps = weight.shape[2] if weight.ndim == 5 else 1
    flat = weight.detach().reshape(c_out * c_in, taps * 9)
    kron = torch.kron(_G, _G).to(weight)  # [36, 9]: G[a, i]·G[b, j] at [6a + b, 3i + j]
    if transposed:
        kron = kron.flip(1)  # a 3×3 kernel flipped both ways is its nine taps in reverse order
    u = weight.new_empty(taps, 36, c_out * c_in) if out is None else out.view(taps, 36, c_out * c_in)
    for t in range(taps):
        source = taps - 1 - t if transposed else t
        torch.matmul(kron, flat[:, 9 * source : 9 * source + 9].t(), out=u[t])
    u = u.view(taps, 36, c_out, c_in)
    return u.transpose(2, 3) if transposed else u


def _input_transform(d: Sequence[torch.Tensor], out: Sequence[torch.Tensor], p: torch.Tensor, q: torch.Tensor) -> None:
    """out[a] = sum_i B^T[a, i] d[i] for the six rows of B^T; p, q are scratch of out[a]'s shape."""
    d0, d1, d2, d3, d4, d5 = d
    torch.add(d4, d2, alpha=-5, out=out[0]).add_(d0, alpha=4)
    torch.add(d5, d3, alpha=-5, out=out[5]).add_(d1, alpha=4)
    torch.add(d4, d2, alpha=-4, out=p)
    torch.add(d3, d1, alpha=-4, out=q)
    torch.add(p, q, out=out[1])
    torch.sub(p, q, out=out[2])
    torch.sub(d4, d2, out=p)
    torch.sub(d3, d1, out=q)
    torch.add(p, q, alpha=2, out=out[3])
    torch.add(p, q, alpha=-2, out=out[4])


def _output_transform(m: Sequence[torch.Tensor], out: Sequence[torch.Tensor], scratch: Sequence[torch.Tensor]) -> None:
    """out[u] = sum_a A^T[u, a] m[a] for the four rows of A^T; scratch: four tensors of m[a]'s shape."""
    m0, m1, m2, m3, m4, m5 = m
    s12, d12, s34, d34 = scratch
    torch.add(m1, m2, out=s12)
    torch.sub(m1, m2, out=d12)
    torch.add(m3, m4, out=s34)
    torch.sub(m3, m4, out=d34)
    torch.add(s12, s34, out=out[0]).add_(m0)
    torch.add(d12, d34, alpha=2, out=out[1])
    torch.add(s12, s34, alpha=4, out=out[2])
    torch.add(d12, d34, alpha=8, out=out[3]).add_(m5)


def _output_grad_transform(g: Sequence[torch.Tensor], out: Sequence[torch.Tensor], p: torch.Tensor,
                           q: torch.Tensor) -> None:
    """out[a] = sum_u A[a, u] g[u] for the six rows of A, the transpose of `_output_transform`'s A^T: how a
    gradient on four output values reaches the six Winograd-domain values they were made from. p, q: scratch."""
    g0, g1, g2, g3 = g
    out[0].copy_(g0)
    out[5].copy_(g3)
    torch.add(g0, g2, out=p)
    torch.add(g1, g3, out=q)
    torch.add(p, q, out=out[1])
    torch.sub(p, q, out=out[2])
    torch.add(g0, g2, alpha=4, out=p)
    torch.add(g1, g3, alpha=4, out=q)
    torch.add(p, q, alpha=2, out=out[3])
    torch.add(p, q, alpha=-2, out=out[4])


class _Workspace:
    """Views of one flat buffer, handed out front to back: every band, and every call on the same thread, reuses the
    same memory (kept between calls, because a freshly mapped block costs a page fault per 4 KiB on first touch:
    about 35 ms per 96 MiB on a 2-core CPU, per conv)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0)
        self.offset = 0

    def reserve(self, numel: int, like: torch.Tensor) -> None:
        if self.buffer.numel() < numel or self.buffer.dtype != like.dtype or self.buffer.device != like.device:
            # a normal tensor even under inference_mode: an inference tensor could not be written in place by a
            # later call under no_grad on this thread, and a normal one serves both modes
            with torch.inference_mode(False):
                self.buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
        self.offset = 0

    def take(self, *shape: int) -> torch.Tensor:
        n = math.prod(shape)
        view = self.buffer[self.offset : self.offset + n].view(shape)
        self.offset += n
        return view


_local = threading.local()


def _workspace() -> _Workspace:
    if not hasattr(_local, "workspace"):
        _local.workspace = _Workspace()
    return _local.workspace


def release_workspace() -> None:
    """Free this thread's Winograd workspace (one band, about `BAND_BYTES`, plus the largest layer's transformed
    weights); the next conv allocates it again."""
    _local.__dict__.pop("workspace", None)


def _band_numel(frames_out: int, rows: int, tw: int, taps: int, c_in: int, c_out: int) -> int:
    """Elements of the workspace one band of `winograd_conv` needs (the views `_convolve_band` takes)."""
    # GEMM output (36, later the output tiles), first output stage (24) and its scratch (4)
    return _input_band_numel(frames_out + taps - 1, rows, tw, c_in, after=64 * frames_out * rows * tw * c_out)


def _weight_grad_band_numel(frames_out: int, rows: int, tw: int, taps: int, c_in: int, c_out: int) -> int:
    """Elements of the workspace one band of `winograd_weight_grad` needs (the views `_weight_grad_band` takes)."""
    # the padded output gradient (16), its transformed rows (24) and their scratch (8), the transformed tiles (36)
    # and their scratch (2)
    return _input_band_numel(frames_out + taps - 1, rows, tw, c_in, after=86 * frames_out * rows * tw * c_out)


def _input_band_numel(frames_in: int, rows: int, tw: int, c_in: int, after: int) -> int:
    """Elements of the padded input band and its Winograd-domain tiles (`_input_band`), followed by `after` elements
    of the caller's that may overwrite the input transform's intermediate rows."""
    tiles, wp = rows * tw, 4 * tw + 2
    padded = frames_in * (4 * rows + 2) * wp * c_in
    v = 38 * frames_in * tiles * c_in  # 36 transformed tiles and two scratch
    rows_t = 8 * frames_in * rows * wp * c_in  # six transformed rows and two scratch
    return padded + v + max(rows_t, after)


def _plan(band_numel: Callable[..., int], frames_out: int, th: int, tw: int, taps: int, c_in: int, c_out: int,
          itemsize: int) -> tuple[int, int]:
    """(output frames, tile rows) per band: all frames and as many tile rows as `BAND_BYTES` allows; when one tile
    row of all frames is already too big, fewer frames (at least one). `band_numel` is `_band_numel` or
    `_weight_grad_band_numel`."""
    budget = BAND_BYTES // itemsize
    per_row = band_numel(frames_out, 1, tw, taps, c_in, c_out)
    if per_row <= budget:
        return frames_out, max(1, min(th, budget // per_row))
    chunk = frames_out
    while chunk > 1 and band_numel(chunk, 1, tw, taps, c_in, c_out) > budget:
        chunk -= 1
    return chunk, 1


def winograd_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    time_pad: int = 0,
    out: torch.Tensor | None = None,
    transposed: bool = False,
) -> torch.Tensor:
    """Convolve frames `x` `[F, H, W, C_in]` (any strides) with `weight` `[C_out, C_in, k, 3, 3]` (or
    `[C_out, C_in, 3, 3]`), spatial zero padding 1 and `time_pad` zero frames at both ends.
    Returns `[F + 2·time_pad - k + 1, H, W, C_out]`, written into `out` if given (else a new contiguous tensor).
    With `transposed`, the convolution's transpose (what carries an output's gradient back to the input): `x` has
    `C_out` channels and the result `C_in`."""
    c_out, c_in = weight.shape[1::-1] if transposed else weight.shape[:2]
    taps = weight.shape[2] if weight.ndim == 5 else 1
    frames, H, W, _ = x.shape
    frames_out = frames + 2 * time_pad - taps + 1
    if out is None:
        out = x.new_empty(frames_out, H, W, c_out)
    if frames_out <= 0:
        return out
    th, tw = -(-H // 4), -(-W // 4)
    chunk, rows = _plan(_band_numel, frames_out, th, tw, taps, c_in, c_out, x.element_size())
    ws = _workspace()
    u_numel = taps * 36 * c_out * c_in
    ws.reserve(u_numel + _band_numel(chunk, rows, tw, taps, c_in, c_out), x)
    u = transform_weight(weight, out=ws.take(u_numel), transposed=transposed)
    for t0 in range(0, frames_out, chunk):
        t1 = min(t0 + chunk, frames_out)
        for r0 in range(0, th, rows):
            r1 = min(r0 + rows, th)
            ws.offset = u_numel
            band = _convolve_band(x, u, ws, t0 - time_pad, t1 - t0, r0, r1 - r0, tw)
            h0, h1 = 4 * r0, min(4 * r1, H)
            target = out[t0:t1, h0:h1]
            source = band[:, : h1 - h0, :W]
            if bias is None:
                target.copy_(source)
            else:
                torch.add(source, bias, out=target)
    return out


def _input_band(x: torch.Tensor, ws: _Workspace, f0: int, fi: int, r0: int, rows: int, tw: int) -> torch.Tensor:
    """The Winograd-domain tiles `[36, fi, rows·tw, C_in]` of input frames `f0 .. f0 + fi` (zeros outside `x`) and
    tile rows `r0 .. r0 + rows`, a view into the workspace; what the workspace hands out next overwrites the
    intermediate rows of the transform."""
    frames, H, W, c_in = x.shape
    hp, wp = 4 * rows + 2, 4 * tw + 2

    # zero-padded input band: frames f0 .., rows 4·r0 - 1 .., columns -1 ..
    padded = ws.take(fi, hp, wp, c_in)
    padded.zero_()
    a0, a1 = max(f0, 0), min(f0 + fi, frames)
    y0, y1 = max(4 * r0 - 1, 0), min(4 * r0 - 1 + hp, H)
    if a1 > a0 and y1 > y0:
        padded[a0 - f0 : a1 - f0, y0 - (4 * r0 - 1) : y1 - (4 * r0 - 1), 1 : 1 + W] = x[a0:a1, y0:y1]

    v = ws.take(6, 6, fi, rows, tw, c_in)
    v_scratch = ws.take(fi, rows, tw, c_in), ws.take(fi, rows, tw, c_in)
    mark = ws.offset
    transformed_rows = ws.take(6, fi, rows, wp, c_in)
    p, q = ws.take(fi, rows, wp, c_in), ws.take(fi, rows, wp, c_in)
    _input_transform([padded[:, i : i + 4 * rows : 4] for i in range(6)], transformed_rows, p, q)
    for row, out in zip(transformed_rows, v, strict=True):
        _input_transform([row[:, :, j : j + 4 * tw : 4] for j in range(6)], out, *v_scratch)
    ws.offset = mark
    return v.view(36, fi, rows * tw, c_in)


def _convolve_band(
    x: torch.Tensor, u: torch.Tensor, ws: _Workspace, f0: int, frames_out: int, r0: int, rows: int, tw: int
) -> torch.Tensor:
    """Output frames `f0 + time_pad ...` of tile rows `r0 .. r0 + rows`, as `[frames_out, 4·rows, 4·tw, C_out]`
    (a view into the workspace, bias not added). `f0` is the first input frame (negative inside the padding)."""
    taps, _, c_out, c_in = u.shape
    v = _input_band(x, ws, f0, frames_out + taps - 1, r0, rows, tw)
    m = ws.take(36, frames_out * rows * tw, c_out)
    torch.bmm(v[:, :frames_out].reshape(36, -1, c_in), u[0].transpose(1, 2), out=m)
    for j in range(1, taps):
        m.baddbmm_(v[:, j : j + frames_out].reshape(36, -1, c_in), u[j].transpose(1, 2))
    m = m.view(6, 6, frames_out, rows, tw, c_out)
    y = ws.take(4, 6, frames_out, rows, tw, c_out)
    scratch = [ws.take(frames_out, rows, tw, c_out) for _ in range(4)]
    for b in range(6):
        _output_transform(m[:, b], y[:, b], scratch)
    # the output tiles overwrite the GEMM output, which is no longer needed
    tiles = m.view(-1)[: frames_out * rows * 16 * tw * c_out].view(frames_out, rows, 4, tw, 4, c_out)
    for r in range(4):
        _output_transform(y[r], tiles[:, :, r].unbind(3), scratch)
    return tiles.view(frames_out, 4 * rows, 4 * tw, c_out)


def winograd_weight_grad(
    xs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], taps: int, time_pad: int = 0
) -> torch.Tensor:
    """The gradient `[C_out, C_in, taps, 3, 3]` of the weight of `winograd_conv(x, weight, bias, time_pad)`, summed
    over the pairs of input frames `x` `[F, H, W, C_in]` and output gradients `[F', H, W, C_out]` (one per clip of a
    batch; any strides).

    The same algorithm run backwards: the forward pass multiplies, per Winograd-domain position, the transformed
    weight U by the transformed input tiles V, so U's gradient is a GEMM of V with the transformed output gradient
    (A g A^T per tile), summed over tiles, and the weight's is G^T (U's gradient) G. Rounding differs from the
    direct kernel's as the forward pass's does.
    """
    c_in, c_out = xs[0].shape[-1], grads[0].shape[-1]
    ws = _workspace()
    du_numel = taps * 36 * c_out * c_in
    du = None
    for x, grad in zip(xs, grads, strict=True):
        frames_out, H, W, _ = grad.shape
        th, tw = -(-H // 4), -(-W // 4)
        chunk, rows = _plan(_weight_grad_band_numel, frames_out, th, tw, taps, c_in, c_out, x.element_size())
        if du is None:
            ws.reserve(du_numel + _weight_grad_band_numel(chunk, rows, tw, taps, c_in, c_out), x)
            du = ws.take(taps, 36, c_out, c_in)
            du.zero_()
        for t0 in range(0, frames_out, chunk):
            t1 = min(t0 + chunk, frames_out)
            for r0 in range(0, th, rows):
                ws.offset = du_numel
                _weight_grad_band(x, grad, du, ws, t0, t1 - t0, time_pad, r0, min(rows, th - r0), tw)
    kron = torch.kron(_G, _G).to(xs[0])  # [36, 9]
    weight_grad = xs[0].new_empty(c_out, c_in, taps, 9)
    for t in range(taps):
        weight_grad[:, :, t] = torch.matmul(du[t].view(36, -1).t(), kron).view(c_out, c_in, 9)
    return weight_grad.view(c_out, c_in, taps, 3, 3)


def _weight_grad_band(
    x: torch.Tensor, grad: torch.Tensor, du: torch.Tensor, ws: _Workspace, t0: int, frames_out: int, time_pad: int,
    r0: int, rows: int, tw: int
) -> None:
    """Add to `du` `[taps, 36, C_out, C_in]` what output frames `t0 .. t0 + frames_out` and tile rows
    `r0 .. r0 + rows` contribute to the transformed weight's gradient."""
    taps, c_out = du.shape[0], du.shape[2]
    _, H, W, _ = grad.shape
    v = _input_band(x, ws, t0 - time_pad, frames_out + taps - 1, r0, rows, tw)

    # the output gradient of the band's tiles, zero where the tiles reach past the frame's edge
    padded = ws.take(frames_out, 4 * rows, 4 * tw, c_out)
    h0, h1 = 4 * r0, min(4 * (r0 + rows), H)
    if h1 - h0 < 4 * rows or W < 4 * tw:
        padded.zero_()
    padded[:, : h1 - h0, :W] = grad[t0 : t0 + frames_out, h0:h1]
    transformed_rows = ws.take(6, frames_out, rows, 4 * tw, c_out)
    p, q = ws.take(frames_out, rows, 4 * tw, c_out), ws.take(frames_out, rows, 4 * tw, c_out)
    _output_grad_transform([padded[:, i::4] for i in range(4)], transformed_rows, p, q)
    m = ws.take(6, 6, frames_out, rows, tw, c_out)
    p, q = ws.take(frames_out, rows, tw, c_out), ws.take(frames_out, rows, tw, c_out)
    for row, out in zip(transformed_rows, m, strict=True):
        _output_grad_transform([row[:, :, j::4] for j in range(4)], out, p, q)
    m = m.view(36, -1, c_out).transpose(1, 2)
    for j in range(taps):
        du[j].baddbmm_(m, v[:, j : j + frames_out].reshape(36, -1, v.shape[-1]))


def winograd_applies(conv: nn.Conv2d | nn.Conv3d) -> bool:
    """Whether `conv` has the shape the Winograd kernels compute: a 3×3 spatial kernel with stride 1, dilation 1,
    spatial zero padding 1, one group and at least `MIN_CHANNELS` channels each way. Whether they may run on a given
    input (CPU, fp32, eager) is `vidtok.kernels.fast_conv.fast_kernels_apply`'s to say."""
    return (
        conv.kernel_size[-2:] == (3, 3)
        and all(s == 1 for s in conv.stride)
        and all(d == 1 for d in conv.dilation)
        and tuple(conv.padding[-2:]) == (1, 1)
        and conv.padding_mode == "zeros"
        and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )
