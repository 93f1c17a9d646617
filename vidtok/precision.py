"""Inference precision, chosen per stage: the encoder and the decoder may run in different dtypes.

A stage runs in `full` (fp32), `autocast` (the original's `--precision autocast`: `torch.autocast("cuda")`, so
float16 on CUDA; on any other device it changes nothing and the stage runs in fp32, as the original's does there),
`bf16` or `fp16` (autocast with that type, on any device).
Users of the original found that decoding in bf16 is close to lossless while encoding in it drifts over causal
rollouts, hence `Precision(encode="full", decode="bf16")`. Whatever a stage runs in, FSQ rounding and the
temporal interpolation stay in fp32 (those modules leave autocast themselves), and latents are handed from the
encoder to the decoder in fp32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("full", "autocast", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def stage_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context one stage runs in on `device`: nothing for `full` (and for `autocast` off CUDA), else
    `torch.autocast`."""
    check_precision(precision)
    device_type = torch.device(device).type
    if precision == "full" or (precision == "autocast" and device_type != "cuda"):
        return contextlib.nullcontext()
    dtype = _AUTOCAST_DTYPES.get(precision, torch.get_autocast_dtype(device_type))
    if device_type == "cpu" and dtype == torch.bfloat16:
        _warn_without_native_bf16()
    return torch.autocast(device_type=device_type, dtype=dtype)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@functools.cache
def _warn_without_native_bf16() -> None:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning(
            "this CPU has no native bfloat16 (no AVX-512 BF16/AMX): bf16 convolutions take a fallback path that "
            "is far slower than fp32; use --precision full here, bf16 pays off on GPUs and recent server CPUs"
        )


@dataclass(frozen=True)
class Precision:
    """The precision of each stage, e.g. `Precision("full", "bf16")`: encode in fp32, decode in bf16."""

    encode: str = "full"
    decode: str = "full"

    def __post_init__(self) -> None:
        check_precision(self.encode)
        check_precision(self.decode)

    @classmethod
    def of(cls, precision: str | Precision = "full", encode: str | None = None, decode: str | None = None) -> Precision:
        """Both stages from `precision` (a name or a `Precision`), then `encode`/`decode` where given."""
        base = precision if isinstance(precision, Precision) else cls(precision, precision)
        return cls(base.encode if encode is None else encode, base.decode if decode is None else decode)

    def encoding(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        return stage_context(self.encode, device)

    def decoding(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        return stage_context(self.decode, device)

    def __str__(self) -> str:
        return self.encode if self.encode == self.decode else f"encode {self.encode}, decode {self.decode}"
