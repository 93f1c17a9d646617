"""The official non-causal names (`target:` paths in the VidTok YAMLs), bound to the shared encoder/decoder.

The original's non-causal models resample time at fixed levels (`tempo_ds = [L-2, L-3]`, `tempo_us = [1, 2]`)
and space at every level but one, whatever the config says; so do these.
"""

from __future__ import annotations

from typing import Any

from .decoder import VideoDecoder
from .encoder import VideoEncoder

__all__ = ["Encoder3D", "Decoder3D"]


class Encoder3D(VideoEncoder):
    """Non-causal encoder: centred 3D/1D convs; T must be a multiple of the temporal factor."""

    def __init__(self, **params: Any):
        super().__init__(variant="noncausal", **params)


class Decoder3D(VideoDecoder):
    """Non-causal decoder: centred convs, nearest temporal upsampling, `tdf·T'` output frames."""

    def __init__(self, **params: Any):
        super().__init__(variant="noncausal", **params)
