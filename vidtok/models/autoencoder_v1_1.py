"""The official v1.1 engine name (`vidtok.models.autoencoder_v1_1.AutoencodingEngine`), with the original's
chunked mode.

v1.1 models are causal models fine-tuned on long videos. Without tiling the engine is v1.0's (its `forward` keeps
the last T decoded frames). With `use_tiling` it reproduces the original's chunked encode/decode: encoder chunks
of frames [0, 1) then `t_chunk_enc` frames, decoder chunks of latents [0, 1) then `t_chunk_dec`, and with
`use_overlap` one extra latent per decoder chunk whose frames are dropped. That mode's decode differs from the
whole-clip decode by ~3e-3 (see `ChunkedUpsampleCache`); for exact chunking use `vidtok.streaming`.
"""

from __future__ import annotations

from typing import Any

import torch

from vidtok.models.autoencoder import AutoencodingEngine as _Engine
from vidtok.modules.causal_conv import CausalConv1d, CausalConv3d, pad_time_front
from vidtok.modules.resample import ChunkedUpsampleCache, TemporalUpsample
from vidtok.streaming import StreamState

__all__ = ["AutoencodingEngine"]


def chunk_spans(length: int, chunk: int) -> list[tuple[int, int]]:
    """The original's chunk schedule: [0, 1), then blocks of `chunk` up to `length`."""
    spans = [(0, min(1, length))]
    start = 1
    while start < length:
        spans.append((start, min(length, start + chunk)))
        start = spans[-1][1]
    return spans


class AutoencodingEngine(_Engine):
    def __init__(
        self,
        *,
        use_tiling: bool = False,
        t_chunk_enc: int = 16,
        t_chunk_dec: int | None = None,
        use_overlap: bool = False,
        **params: Any,
    ):
        super().__init__(**params)
        if not self.is_causal:
            raise ValueError("the v1.1 engine is for causal models (model_3dcausal_v1_1 encoder/decoder targets)")
        self.use_tiling = use_tiling
        self.t_chunk_enc = t_chunk_enc
        self.t_chunk_dec = t_chunk_enc // self.time_downsample_factor if t_chunk_dec is None else t_chunk_dec
        self.use_overlap = use_overlap

    def encode(
        self, x: torch.Tensor, sample: bool | None = None, return_reg_log: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | torch.Tensor:
        if not self.use_tiling:
            return super().encode(x, sample=sample, return_reg_log=return_reg_log)
        self._check_video(x)
        tdf = self.time_downsample_factor
        state = StreamState(self.encoder)
        zs, logs = [], []
        with state.active():
            for start, end in chunk_spans(x.shape[2], self.t_chunk_enc):
                chunk = x[:, :, start:end]
                # as the original, every chunk whose length is not a multiple of tdf gets copies of its own first frame
                chunk = pad_time_front(chunk, (tdf - chunk.shape[2] % tdf) % tdf, self.encoder.init_pad_mode)
                h = self.encoder.forward_frames(chunk)
                kwargs: dict[str, Any] = {"n_steps": self.global_step // 2, "compute_aux": self.loss is not None}
                if sample is not None and not self.is_fsq:
                    kwargs["sample"] = sample
                z, log = self.regularization(h, **kwargs)
                zs.append(z)
                logs.append(log)
        z = torch.cat(zs, dim=2)
        reg_log = {k: torch.stack([log[k] for log in logs]).mean() for k in ("kl_loss", "aux_loss") if k in logs[0]}
        if self.is_fsq:
            reg_log["indices"] = torch.cat([log["indices"] for log in logs], dim=1)
        return (z, reg_log) if return_reg_log else z

    def decode(self, z: torch.Tensor, decode_from_indices: bool = False) -> torch.Tensor:
        if not self.use_tiling:
            return super().decode(z, decode_from_indices=decode_from_indices)
        if decode_from_indices:
            return self.decode(self.regularization.indices_to_codes(z).to(next(self.decoder.parameters()).dtype))
        tdf = self.time_downsample_factor
        if self.use_overlap and tdf != 4:
            raise ValueError(f"the original's overlapping chunked decode supports tdf 4 only, this model has {tdf}")
        state = self._chunked_decoder_state()
        T = z.shape[2]
        frames = []
        with state.active():
            for start, end in chunk_spans(T, self.t_chunk_dec):
                overlap = self.use_overlap and end + 1 <= T
                out = self.decoder.forward_frames(z[:, :, start : end + overlap])
                frames.append(out[:, :, :-tdf] if overlap else out)
        return torch.cat(frames, dim=2)

    def _chunked_decoder_state(self) -> StreamState:
        """Decoder state with the original's upsampler caches, and (with overlap) causal caches that skip the frames
        made from the extra latent: 1 at latent rate, ×2 after each temporal upsampler."""
        state = StreamState(self.decoder)
        for m in state.buffers:
            if isinstance(m, TemporalUpsample):
                state.buffers[m] = ChunkedUpsampleCache()
        if self.use_overlap:
            for name, m in self.decoder.named_modules():
                if isinstance(m, CausalConv3d | CausalConv1d):
                    state.buffers[m].rewind = self._frames_per_latent_at(name)
        return state

    def _frames_per_latent_at(self, name: str) -> int:
        """Frames per latent at the time resolution of decoder module `name` (a causal conv)."""
        rate = 1
        for i in reversed(range(self.decoder.num_resolutions)):
            level_blocks, level_upsample = f"up_temporal.{i}.block.", f"up_temporal.{i}.upsample."
            if name.startswith(level_blocks):
                return rate
            if i in self.decoder.spatial_us and i in self.decoder.tempo_us:
                rate *= 2
                if name.startswith(level_upsample):
                    return rate
        return 1 if not name.startswith("conv_out") else rate
