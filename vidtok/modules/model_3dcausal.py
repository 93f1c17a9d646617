"""The official v1.0 causal names (`target:` paths in the VidTok YAMLs), bound to the shared encoder/decoder."""

from __future__ import annotations

from typing import Any

from .decoder import VideoDecoder
from .encoder import VideoEncoder

__all__ = ["EncoderCausal3DPadding", "DecoderCausal3DPadding"]


class EncoderCausal3DPadding(VideoEncoder):
    """v1.0 causal encoder: zero causal padding; `tdf-1` copies of frame 0 prepended when T % tdf != 0."""

    def __init__(self, **params: Any):
        super().__init__(variant="v1.0", **params)


class DecoderCausal3DPadding(VideoDecoder):
    """v1.0 causal decoder: nearest temporal upsampling; the first `tdf-1` output frames are dropped."""

    def __init__(self, **params: Any):
        super().__init__(variant="v1.0", **params)
