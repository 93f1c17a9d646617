"""The official v1.1 causal names (`target:` paths in the VidTok v1.1 YAMLs), bound to the shared encoder/decoder.

v1.1 differs from v1.0 in time only: the first chunk's causal padding repeats frame 0, the encoder pads the
input to a multiple of the temporal factor (latent length ceil(T/tdf)), the decoder returns all tdf·T' frames
(the engine keeps the last T), and `interpolation_mode: trilinear` upsamples time linearly.
"""

from __future__ import annotations

from typing import Any

from .decoder import VideoDecoder
from .encoder import VideoEncoder

__all__ = ["EncoderCausal3DPadding", "DecoderCausal3DPadding"]


class EncoderCausal3DPadding(VideoEncoder):
    def __init__(self, **params: Any):
        super().__init__(variant="v1.1", **params)


class DecoderCausal3DPadding(VideoDecoder):
    def __init__(self, **params: Any):
        super().__init__(variant="v1.1", **params)
