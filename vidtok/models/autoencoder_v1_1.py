"""The official v1.1 engine name (`vidtok.models.autoencoder_v1_1.AutoencodingEngine`).

v1.1 models are causal models fine-tuned on long videos; the engine is the same as v1.0's (its `forward` keeps
the last T decoded frames either way). The original's tiling switches (`use_tiling`, `t_chunk_enc`,
`t_chunk_dec`, `use_overlap`) are accepted so official YAMLs build.
"""

from __future__ import annotations

from typing import Any

from vidtok.models.autoencoder import AutoencodingEngine as _Engine

__all__ = ["AutoencodingEngine"]


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
        if use_tiling:
            raise ValueError(
                "use_tiling=True (the original's chunked v1.1 mode) is not available yet; "
                "set model.params.use_tiling: false"
            )
        self.use_tiling = use_tiling
        self.t_chunk_enc = t_chunk_enc
        self.t_chunk_dec = t_chunk_enc // self.time_downsample_factor if t_chunk_dec is None else t_chunk_dec
        self.use_overlap = use_overlap
