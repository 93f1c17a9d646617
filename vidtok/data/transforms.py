"""Turning decoded frames into model input: VidTok's resize, center crop and [-1, 1] scaling.

The pipeline, in the original's order (the order matters numerically, so it is not rearranged):

1. ``uint8 -> float32 / 255`` and ``[T, H, W, C] -> [T, C, H, W]``;
2. ``v2.Resize(input_height, antialias=True)``: an int size matches the **shorter** side to ``input_height`` and
   keeps the aspect ratio (bilinear with antialiasing, applied to the float frames);
3. ``v2.CenterCrop((input_height, input_width))``;
4. ``v2.Normalize(0.5, 0.5)``, mapping [0, 1] to [-1, 1];
5. ``[T, C, H, W] -> [C, T, H, W]``.

Quirk kept from the original: the resize always targets ``input_height``, even when ``input_width`` is larger.
If the resized width is smaller than ``input_width`` (say a 4:3 video with ``input_height=256,
input_width=512``), ``CenterCrop`` pads both sides with zeros, i.e. black bars at -1 after normalisation.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class VidTokVideoTransform:
    """Decoded frames to a normalised clip.

    Args:
        input_height: output height; also the shorter-side target of the resize.
        input_width: output width.
    """

    def __init__(self, input_height: int, input_width: int) -> None:
        if input_height < 1 or input_width < 1:
            raise ValueError(f"input_height and input_width must be positive, got {input_height}x{input_width}")
        self.input_height = input_height
        self.input_width = input_width
        self.spatial = v2.Compose(
            [
                v2.Resize(input_height, antialias=True),
                v2.CenterCrop((input_height, input_width)),
                v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
            ]
        )

    def frames_to_tchw(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, H, W, C]`` to float ``[T, C, input_height, input_width]`` in [-1, 1]."""
        if frames.dtype != torch.uint8 or frames.ndim != 4:
            raise ValueError(f"expected uint8 frames [T,H,W,C], got {frames.dtype} {tuple(frames.shape)}")
        clip = frames.permute(0, 3, 1, 2).float() / 255  # [T, C, H, W] in [0, 1]
        return self.spatial(clip)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, H, W, C]`` to float ``[C, T, input_height, input_width]`` in [-1, 1]."""
        return self.frames_to_tchw(frames).permute(1, 0, 2, 3)


def pad_by_repeating_last(clip: torch.Tensor, num_frames: int, time_dim: int = 0) -> torch.Tensor:
    """Lengthen ``clip`` to ``num_frames`` along ``time_dim`` by repeating its last frame (no-op if long enough).

    This is how the original fills clips from videos shorter than ``sample_num_frames``.
    """
    length = clip.shape[time_dim]
    if length == 0:
        raise ValueError("cannot pad an empty clip: it has no last frame to repeat")
    if length >= num_frames:
        return clip
    last = clip.narrow(time_dim, length - 1, 1)
    repeats = [1] * clip.ndim
    repeats[time_dim] = num_frames - length
    return torch.cat([clip, last.repeat(*repeats)], dim=time_dim)
