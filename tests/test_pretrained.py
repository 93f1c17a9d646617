"""The pre-trained tokenizer shipped in `checkpoints/` (model card: `checkpoints/README.md`).

It must load from the repository as it is, stay small, and reconstruct held-out real video (`assets/example.mp4`,
frames of Big Buck Bunny it was never trained on) about as well as the model card says: the floors sit a little
under the measured figures, so a change that breaks the weights, their loading or the model code fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from scripts.demo import CONFIG, EVAL_SIZE, EXAMPLE, PRETRAINED
from vidtok import load_model_from_config
from vidtok.evaluate import evaluate

# scripts/inference_evaluate.py on assets/example.mp4 at 64×64, 17-frame clips, every frame (checkpoints/README.md)
MEASURED = {"psnr": 23.61, "ssim": 0.684}
FLOOR = {"psnr": MEASURED["psnr"] - 2.0, "ssim": MEASURED["ssim"] - 0.03}
MAX_BYTES = 5 * 2**20  # the repository's limit on a tracked file


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model_from_config(CONFIG, PRETRAINED).eval()


def test_shipped_file_is_small_and_float16() -> None:
    assert PRETRAINED.stat().st_size <= MAX_BYTES
    with safe_open(str(PRETRAINED), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert not any(k.startswith(("loss.", "model_ema.")) for k in f.keys())
    assert dtypes == {"F16"}


def test_held_out_video_reconstructs_above_the_floor(model: torch.nn.Module, tmp_path: Path) -> None:
    held_out = tmp_path / "held_out.csv"
    held_out.write_text(f"videos\n{EXAMPLE.name}\n")
    with torch.no_grad():
        result = evaluate(model, EXAMPLE.parent, meta_path=held_out, input_height=EVAL_SIZE, input_width=EVAL_SIZE,
                          sample_fps=25, num_frames_per_batch=17, metrics=("psnr", "ssim"), progress=False)
    assert [v.num_frames for v in result.videos] == [85]  # 75 frames in five 17-frame clips, the last one padded
    assert result.metrics["psnr"] > FLOOR["psnr"], result.metrics
    assert result.metrics["ssim"] > FLOOR["ssim"], result.metrics

