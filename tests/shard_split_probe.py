"""Run by tests/test_shards.py as `python shard_split_probe.py PATTERN OUT_DIR`: one training epoch of a trivial
module over `VidTokShardDataset` with Lightning DDP (2 gloo processes on CPU, 2 DataLoader workers each); every
rank writes the sample keys it trained on to `OUT_DIR/keys-{rank}.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from vidtok.data.shards import VidTokShardDataset
from vidtok.distributed import leave_process_group


class KeyRecorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.keys: list[str] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.keys.extend(batch["__key__"])
        return self.layer(batch["jpg"].mean().view(1, 1)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(pattern: str, out: Path) -> None:
    params = {"input_height": 16, "input_width": 16, "sample_num_frames": 1, "sample_fps": 30}
    loader = DataLoader(VidTokShardDataset(pattern, params, shuffle_buffer=4), batch_size=1, num_workers=2)
    module = KeyRecorder()
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    (out / f"keys-{trainer.global_rank}.json").write_text(json.dumps(module.keys))
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
