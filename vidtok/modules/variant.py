"""What distinguishes the VidTok model families at run time, resolved once from the config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .causal_conv import TimePadMode

Variant = Literal["v1.0", "v1.1", "noncausal"]


@dataclass(frozen=True)
class TemporalLayout:
    """Time-axis behaviour of one model family.

    causal:        convs see only past frames.
    time_pad_mode: what fills a causal conv's front padding (v1.0 zeros, v1.1 copies of frame 0).
    input_pad:     encoder input padding for T not divisible by the temporal factor `tdf`: v1.0 always prepends
                   `tdf-1` copies of frame 0 (so only T = 1 + k·tdf round-trips); v1.1 prepends just enough to
                   reach a multiple of tdf; non-causal models pad nothing.
    crop_output:   v1.0 decoders drop their first `tdf-1` frames; v1.1 leaves the cut to the engine.
    """

    causal: bool
    time_pad_mode: TimePadMode
    input_pad: Literal["fixed", "to_multiple", "none"]
    crop_output: bool

    def front_pad(self, num_frames: int, tdf: int) -> int:
        """Frames the encoder prepends to a `num_frames` clip."""
        if self.input_pad == "none" or num_frames % tdf == 0:
            return 0
        return tdf - 1 if self.input_pad == "fixed" else tdf - num_frames % tdf


LAYOUTS: dict[Variant, TemporalLayout] = {
    "v1.0": TemporalLayout(causal=True, time_pad_mode="constant", input_pad="fixed", crop_output=True),
    "v1.1": TemporalLayout(causal=True, time_pad_mode="replicate", input_pad="to_multiple", crop_output=False),
    "noncausal": TemporalLayout(causal=False, time_pad_mode="constant", input_pad="none", crop_output=False),
}
