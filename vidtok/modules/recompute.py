"""Selective recomputation in training: keep what the convolutions produce, redo the cheap work around them.

For a norm → SiLU → conv, autograd would keep the norm's input, the SiLU's input and the conv's (padded) input:
three activations, two of them the product of elementwise work that takes a few percent of the conv's time to redo.
The residual blocks (each 2D block with the temporal block after it, as one region), the up- and downsamplers
and the output heads therefore run in training as selective checkpoints: the outputs of their convolutions are
stored, and their norms, activations, interpolations, padding copies and residual sums run again in the backward
pass, bit for bit as they ran the first time, so the gradients are unchanged.
`use_checkpoint: true` recomputes the convolutions of the residual blocks too (:func:`recomputable`'s `whole`), so
each pair of blocks keeps only its input, and wraps whole levels of the networks in :func:`recomputable_stage`, so
each such level keeps only its input until the backward pass reaches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from vidtok.kernels.fast_conv import winograd_conv3d
from vidtok.kernels.time_conv import time_conv

_STORED_OPS = frozenset({torch.ops.aten.convolution.default, winograd_conv3d._opoverload, time_conv._opoverload})
_selective: ContextVar[bool] = ContextVar("vidtok_selective_recompute", default=True)
_stateless: ContextVar[bool] = ContextVar("vidtok_stateless_forward", default=True)
# the kind of region ("whole", "selective" or "stage") whose function is running; None outside any
_enclosing: ContextVar[str | None] = ContextVar("vidtok_enclosing_recompute_region", default=None)


def _store_conv_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _STORED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE = partial(create_selective_checkpoint_contexts, _store_conv_outputs)


@contextmanager
def _switched_off(switch: ContextVar[bool]) -> Iterator[None]:
    token = switch.set(False)
    try:
        yield
    finally:
        switch.reset(token)


def keep_all_activations() -> AbstractContextManager[None]:
    """Inside the block, in this thread, train as plain autograd would, keeping every activation the backward pass
    reads (to measure what the selective recomputation saves, or to rule it out)."""
    return _switched_off(_selective)


def stateful_forward() -> AbstractContextManager[None]:
    """Inside the block, in this thread, nothing is recomputed: the modules carry stream state from call to call
    (`vidtok.streaming.StreamState.active`), and a recomputation would update that state a second time."""
    return _switched_off(_stateless)


def _region(kind: str, fn: Callable[..., torch.Tensor], *args: object) -> torch.Tensor:
    token = _enclosing.set(kind)
    try:
        return fn(*args)
    finally:
        _enclosing.reset(token)


def recomputable(training: bool, fn: Callable[..., torch.Tensor], *args: torch.Tensor,
                 whole: bool = False) -> torch.Tensor:
    """`fn(*args)`; when `training` with autograd on, as a selective checkpoint (convolution outputs stored, the rest
    recomputed in backward) or, with `whole`, as a full one (everything recomputed). Called inside another such
    region, `fn` runs plain: the outer region decides what is kept. `fn` must not modify in place a convolution's
    output: the selective checkpoint hands that tensor back to the recomputation."""
    if not (training and torch.is_grad_enabled() and _stateless.get()) or _enclosing.get() not in (None, "stage"):
        return fn(*args)
    if whole:
        return checkpoint(_region, "whole", fn, *args, use_reentrant=False)
    if not _selective.get():
        return fn(*args)
    return checkpoint(_region, "selective", fn, *args, use_reentrant=False, context_fn=_SELECTIVE)


def recomputable_stage(enabled: bool, fn: Callable[..., torch.Tensor], *args: object) -> torch.Tensor:
    """`fn(*args)`; when `enabled` with autograd on, as a full checkpoint inside which the regions of
    :func:`recomputable` still checkpoint themselves. Until the backward pass reaches it the stage keeps only its
    input, not the input of every region in it; then it runs once more, keeping those inputs, and each region is
    recomputed from its own in turn. The price is one more forward pass of `fn`, less its last region: the
    recomputation stops once it has that region's input back."""
    if not (enabled and torch.is_grad_enabled() and _stateless.get()) or _enclosing.get() is not None:
        return fn(*args)
    return checkpoint(_region, "stage", fn, *args, use_reentrant=False)
