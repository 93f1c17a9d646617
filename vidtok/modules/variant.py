"""What distinguishes the VidTok model families at run time, resolved once from the config."""

from __future__ import annotations

from collections.abc import Sequence
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


def resampling_levels(
    layout: TemporalLayout,
    spatial: Sequence[int] | None,
    tempo: Sequence[int] | None,
    defaults: tuple[list[int], list[int]],
    time_downsample_factor: int,
    keys: tuple[str, str],
    resamp_with_conv: bool = True,
) -> tuple[list[int], list[int]]:
    """The levels that resample space and time, from the config's lists (causal models) or the `defaults`
    (always, for non-causal models: the original hard-codes them), checked against `time_downsample_factor`."""
    if not resamp_with_conv:
        raise ValueError("resamp_with_conv=False is not supported: every VidTok model resamples with convs")
    if layout.causal:
        spatial_levels = defaults[0] if spatial is None else list(spatial)
        tempo_levels = defaults[1] if tempo is None else list(tempo)
    else:
        spatial_levels, tempo_levels = defaults
    factor = 2 ** len([i for i in spatial_levels if i in tempo_levels])
    if time_downsample_factor != factor:
        raise ValueError(
            f"time_downsample_factor={time_downsample_factor} does not match {keys[1]}={tempo_levels} with "
            f"{keys[0]}={spatial_levels}, which resample time by {factor}; set time_downsample_factor: {factor} or "
            f"change {keys[1]} in the encoder_config params"
        )
    return spatial_levels, tempo_levels
