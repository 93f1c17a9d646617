"""The VidTok decoder: latent `[B, z, T', H', W']` -> video `[B, out_ch, T, H, W]` (not clamped, no tanh by
default).

Mirror of `VideoEncoder`: middle (3D block, per-frame attention, 3D block), then per level from the coarsest
`num_res_blocks + 1` factorised blocks, a spatial ×2 at levels in `spatial_us` and a temporal ×2 at levels in
both `spatial_us` and `tempo_us`. A v1.0 causal decoder produces `tdf·T'` frames and drops the first `tdf-1`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import FrameAttention
from .causal_conv import TimePadMode
from .normalization import make_norm, norm_silu
from .recompute import recomputable, recomputable_stage
from .resample import SpatialUpsample, TemporalUpsample
from .resblock import ResnetBlock1D, ResnetBlock2D, ResnetBlock3D, factorised_level, make_conv3d
from .reshape import channels_last
from .variant import LAYOUTS, Variant, resampling_levels


class VideoDecoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        z_channels: int,
        in_channels: int | None = None,
        dropout: float = 0.0,
        norm_type: str = "groupnorm",
        spatial_us: Sequence[int] | None = None,
        tempo_us: Sequence[int] | None = None,
        time_downsample_factor: int = 4,
        use_checkpoint: bool = False,
        fix_decoder: bool = False,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        resamp_with_conv: bool = True,
        interpolation_mode: str = "nearest",
        variant: Variant = "v1.0",
        # encoder-only keys: the official YAMLs give the encoder's params to the decoder too
        double_z: bool = True,
        spatial_ds: Sequence[int] | None = None,
        tempo_ds: Sequence[int] | None = None,
        init_pad_mode: TimePadMode = "replicate",
        fix_encoder: bool = False,
    ):
        super().__init__()
        layout = LAYOUTS[variant]
        self.layout = layout
        self.num_resolutions = L = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.z_channels = z_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        self.fix_decoder = fix_decoder
        self.use_checkpoint = use_checkpoint
        self.spatial_us, self.tempo_us = resampling_levels(
            layout, spatial_us, tempo_us, (list(range(1, L)), [1, 2]), time_downsample_factor,
            ("spatial_us", "tempo_us"), resamp_with_conv,
        )
        self.time_downsample_factor = time_downsample_factor
        causal, pad_mode = layout.causal, layout.time_pad_mode

        block_in = ch * ch_mult[-1]
        self.conv_in = make_conv3d(z_channels, block_in, 3, causal, pad_mode)
        self.mid = nn.Module()
        mid_kwargs = dict(causal=causal, dropout=dropout, norm_type=norm_type, time_pad_mode=pad_mode)
        self.mid.block_1 = ResnetBlock3D(block_in, block_in, use_checkpoint=use_checkpoint, **mid_kwargs)
        self.mid.attn_1 = FrameAttention(block_in, causal=causal, norm_type=norm_type, time_pad_mode=pad_mode)
        self.mid.block_2 = ResnetBlock3D(block_in, block_in, use_checkpoint=use_checkpoint, **mid_kwargs)

        up_levels: list[nn.Module] = []
        for i in reversed(range(L)):
            up = nn.Module()
            up.block = nn.ModuleList()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                up.block.append(
                    ResnetBlock2D(block_in, block_out, dropout=dropout, norm_type=norm_type,
                                  use_checkpoint=use_checkpoint)
                )
                block_in = block_out
            if i in self.spatial_us:
                up.upsample = SpatialUpsample(block_in, use_checkpoint=use_checkpoint)
            up_levels.insert(0, up)
        self.up = nn.ModuleList(up_levels)

        if interpolation_mode != "nearest" and variant != "v1.1":
            raise ValueError(
                f"interpolation_mode={interpolation_mode!r} is a v1.1 option; {variant} decoders upsample time by "
                "repeating frames (remove interpolation_mode or use the model_3dcausal_v1_1 targets)"
            )
        temporal_levels_modules: list[nn.Module] = []
        num_temp_upsample = 1  # frames from the first input frame at each upsampler, in the order they run
        for i in reversed(range(L)):
            width = ch * ch_mult[i]
            up_temporal = nn.Module()
            up_temporal.block = nn.ModuleList(
                ResnetBlock1D(width, width, causal=causal, dropout=dropout, norm_type=norm_type,
                              use_checkpoint=use_checkpoint, time_pad_mode=pad_mode)
                for _ in range(num_res_blocks + 1)
            )
            if i in self.tempo_us:
                up_temporal.upsample = TemporalUpsample(
                    width, causal=causal, time_pad_mode=pad_mode, interpolation_mode=interpolation_mode,
                    num_temp_upsample=num_temp_upsample, use_checkpoint=use_checkpoint,
                )
                num_temp_upsample *= 2
            temporal_levels_modules.insert(0, up_temporal)
        self.up_temporal = nn.ModuleList(temporal_levels_modules)

        self.norm_out = make_norm(block_in, norm_type, "frame" if causal else "clip")
        self.conv_out = make_conv3d(block_in, out_ch, 3, causal, pad_mode)

        if fix_decoder:
            self.requires_grad_(False)

    def get_last_layer(self) -> torch.Tensor:
        """The weight the GAN loss balances its gradient against (the final conv's)."""
        conv = self.conv_out.conv if self.layout.causal else self.conv_out
        return conv.weight

    def output_frames(self, latent_frames: int) -> int:
        """Frames produced from `latent_frames` latents."""
        t = latent_frames * self.time_downsample_factor
        return t - (self.time_downsample_factor - 1) if self.layout.crop_output else t

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """`[B, z, T', H', W']` -> `[B, out_ch, T, H·f, W·f]`."""
        h = self.forward_frames(z)
        if self.layout.crop_output and not self.give_pre_end:
            h = h[:, :, self.time_downsample_factor - 1 :]
        return h

    def forward_frames(self, z: torch.Tensor) -> torch.Tensor:
        """The network without the v1.0 output crop (streaming crops once, at the start of the video)."""
        z = channels_last(z)
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        # with use_checkpoint every level but the last is a stage; the last one's backward pass is the first to run,
        # so as a stage it would be recomputed at once and hold as much as it does now
        for i in reversed(range(self.num_resolutions)):
            h = recomputable_stage(self.training and self.use_checkpoint and i > 0, self._level, i, h)
        if self.give_pre_end:
            return h
        h = recomputable(self.training, self._head, h).contiguous()
        return torch.tanh(h) if self.tanh_out else h

    def _level(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Level `i`'s blocks and upsamplers."""
        return factorised_level(h, self.up[i], self.up_temporal[i], "upsample", i in self.spatial_us,
                                i in self.tempo_us)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_out(norm_silu(self.norm_out, h))
