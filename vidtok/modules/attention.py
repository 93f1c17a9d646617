"""Self-attention in the middle of the encoder and decoder: single head, over the H·W positions of each frame
separately (no attention across time, so it is causal by construction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .causal_conv import TimePadMode
from .normalization import make_norm
from .resblock import make_conv3d


class FrameAttention(nn.Module):
    """Residual per-frame attention on `[B, C, T, H, W]`; q/k/v/proj_out are 1×1×1 convs, scale 1/√C."""

    def __init__(
        self, channels: int, *, causal: bool, norm_type: str = "layernorm", time_pad_mode: TimePadMode = "constant"
    ):
        super().__init__()
        self.norm = make_norm(channels, norm_type, "frame" if causal else "clip")
        self.q = make_conv3d(channels, channels, 1, causal, time_pad_mode)
        self.k = make_conv3d(channels, channels, 1, causal, time_pad_mode)
        self.v = make_conv3d(channels, channels, 1, causal, time_pad_mode)
        self.proj_out = make_conv3d(channels, channels, 1, causal, time_pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        h = self.norm(x)
        # [B, C, T, H, W] -> [B, T, H*W, C]: one attention problem per frame. Two transposes rather than the same
        # view as permute(0, 2, 3, 1), which torch.compile (inductor, torch 2.14, CPU) turned into an attention output
        # of shape [B, T, C, H*W]
        q, k, v = (conv(h).flatten(3).transpose(1, 3).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 3, 1, 2).reshape(B, C, T, H, W)
        return x + self.proj_out(out)
