"""Counting the bytes of tensors that stay alive, on any device (CPU included, which has no allocator statistics)."""

from __future__ import annotations

import gc

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Inside the `with` block, every storage an op allocates is watched; `live_bytes()` sums those still alive.

    What autograd keeps for the backward pass, and what a checkpoint stores on the side, are both counted, as they
    would be by a device allocator. Tensors made before the block are not, unless an op inside it returns a view of
    one (a reshaped weight): then that storage counts too, alike in every model compared."""

    def __init__(self) -> None:
        super().__init__()
        self._watched: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak_bytes = 0  # the most bytes alive right after any op inside the block

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                seen = self._watched.get(storage.data_ptr())
                if seen is None or seen[0].expired():  # a freed storage's address may be handed out again
                    self._watched[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self.peak_bytes = max(self.peak_bytes, self._alive())
        return out

    def _alive(self) -> int:
        return sum(n for ref, n in self._watched.values() if not ref.expired())

    def live_bytes(self) -> int:
        gc.collect()
        self._watched = {k: v for k, v in self._watched.items() if not v[0].expired()}
        return self._alive()
