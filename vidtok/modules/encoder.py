"""The VidTok encoder: video `[B, 3, T, H, W]` in [-1, 1] -> latent `[B, z, T', H', W']`.

One class serves the causal (v1.0, v1.1) and non-causal families; `variant` picks the temporal behaviour
(see `variant.py`). Per level: `num_res_blocks` factorised blocks (2D per frame, then 1D along time), then a
spatial ×½ at levels in `spatial_ds` and a temporal ×½ at levels in both `spatial_ds` and `tempo_ds`.
Middle: 3D block, per-frame attention, 3D block. Output conv gives `2·z_channels` (mean, log-variance) when
`double_z`, else `z_channels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import FrameAttention
from .causal_conv import TimePadMode, pad_time_front
from .normalization import make_norm, norm_silu
from .recompute import recomputable, recomputable_stage
from .resample import SpatialDownsample, TemporalDownsample
from .resblock import ResnetBlock1D, ResnetBlock2D, ResnetBlock3D, factorised_level, make_conv3d
from .reshape import channels_last
from .variant import LAYOUTS, Variant, resampling_levels


class VideoEncoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        in_channels: int,
        z_channels: int,
        out_ch: int | None = None,
        double_z: bool = True,
        dropout: float = 0.0,
        norm_type: str = "groupnorm",
        spatial_ds: Sequence[int] | None = None,
        tempo_ds: Sequence[int] | None = None,
        time_downsample_factor: int = 4,
        init_pad_mode: TimePadMode = "replicate",
        use_checkpoint: bool = False,
        fix_encoder: bool = False,
        resamp_with_conv: bool = True,
        variant: Variant = "v1.0",
        # decoder-only keys: the official YAMLs give the decoder's params to the encoder too
        spatial_us: Sequence[int] | None = None,
        tempo_us: Sequence[int] | None = None,
        fix_decoder: bool = False,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        interpolation_mode: str = "nearest",
    ):
        super().__init__()
        layout = LAYOUTS[variant]
        self.layout = layout
        self.num_resolutions = L = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.in_channels = in_channels
        self.z_channels = z_channels
        self.init_pad_mode = init_pad_mode
        self.fix_encoder = fix_encoder
        self.use_checkpoint = use_checkpoint
        self.spatial_ds, self.tempo_ds = resampling_levels(
            layout, spatial_ds, tempo_ds, (list(range(L - 1)), [L - 2, L - 3]), time_downsample_factor,
            ("spatial_ds", "tempo_ds"), resamp_with_conv,
        )
        self.time_downsample_factor = time_downsample_factor
        self.spatial_downsample_factor = 2 ** len(self.spatial_ds)
        causal, pad_mode = layout.causal, layout.time_pad_mode

        self.conv_in = make_conv3d(in_channels, ch, 3, causal, pad_mode)
        in_ch_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        self.down_temporal = nn.ModuleList()
        for i in range(L):
            block_in, block_out = ch * in_ch_mult[i], ch * ch_mult[i]
            down, down_temporal = nn.Module(), nn.Module()
            down.block, down_temporal.block = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(
                    ResnetBlock2D(block_in, block_out, dropout=dropout, norm_type=norm_type,
                                  use_checkpoint=use_checkpoint)
                )
                down_temporal.block.append(
                    ResnetBlock1D(block_out, block_out, causal=causal, dropout=dropout, norm_type=norm_type,
                                  use_checkpoint=use_checkpoint, time_pad_mode=pad_mode)
                )
                block_in = block_out
            if i in self.spatial_ds:
                down.downsample = SpatialDownsample(block_in)
                if i in self.tempo_ds:
                    down_temporal.downsample = TemporalDownsample(block_in, causal=causal, time_pad_mode=pad_mode)
            self.down.append(down)
            self.down_temporal.append(down_temporal)

        self.mid = nn.Module()
        mid_kwargs = dict(causal=causal, dropout=dropout, norm_type=norm_type, time_pad_mode=pad_mode)
        self.mid.block_1 = ResnetBlock3D(block_in, block_in, use_checkpoint=use_checkpoint, **mid_kwargs)
        self.mid.attn_1 = FrameAttention(block_in, causal=causal, norm_type=norm_type, time_pad_mode=pad_mode)
        self.mid.block_2 = ResnetBlock3D(block_in, block_in, use_checkpoint=use_checkpoint, **mid_kwargs)
        self.norm_out = make_norm(block_in, norm_type, "frame" if causal else "clip")
        self.conv_out = make_conv3d(block_in, 2 * z_channels if double_z else z_channels, 3, causal, pad_mode)

        if fix_encoder:
            self.requires_grad_(False)

    def latent_frames(self, num_frames: int) -> int:
        """T' for a `num_frames` input."""
        t = num_frames + self.layout.front_pad(num_frames, self.time_downsample_factor)
        for _ in range(len([i for i in self.spatial_ds if i in self.tempo_ds])):
            t //= 2  # both temporal downsamplers pad one frame and use kernel 3, stride 2
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C_in, T, H, W]` -> `[B, 2z or z, T', H/f, W/f]` (raw encoder output, before any regularizer)."""
        pad = self.layout.front_pad(x.shape[2], self.time_downsample_factor)
        return self.forward_frames(pad_time_front(x, pad, self.init_pad_mode))

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The network without the input padding (streaming pads once, at the start of the video)."""
        h = channels_last(x)
        # with use_checkpoint each level is a stage: the decoder's whole backward pass runs before the encoder's, so
        # what the encoder keeps for its own is held all that time
        for i in range(self.num_resolutions):
            h = recomputable_stage(self.training and self.use_checkpoint, self._level, i, h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return recomputable(self.training, self._head, h).contiguous()

    def _level(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Level `i`'s blocks and downsamplers (after `conv_in` at the first)."""
        if i == 0:
            h = self.conv_in(h)
        return factorised_level(h, self.down[i], self.down_temporal[i], "downsample", i in self.spatial_ds,
                                i in self.tempo_ds)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_out(norm_silu(self.norm_out, h))
