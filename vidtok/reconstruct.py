"""Reconstruct one video with a tokenizer and save `[input | reconstruction]` side by side (`inference_reconstruct`).

As in the original script:

- the video is read at `sample_fps` and cut into consecutive, non-overlapping clips of 17 frames (causal models)
  or 16 (non-causal) — `chunk_size + 1` or `chunk_size` — each encoded and decoded on its own;
- the output is clamped to [-1, 1] and turned into uint8 by truncating `(x + 1) / 2 · 255`, the input beside it
  (unless `concat_input=False`), and written as `{stem}_reconstructed.mp4` (H.264) at `sample_fps` frames per
  second;
- `pad_gen_frames` (causal models, clip mode): from the second clip on, the model sees the last `tdf - 1`
  *reconstructed* frames of the previous clip followed by the 17 new input frames (20 for tdf 4), and the last 17
  output frames are kept — so each clip starts from what the decoder produced rather than from a fresh first
  frame;
- `read_long_video`: the whole video is one clip.

Different from the original, on purpose:

- The tail that does not fill a clip is reconstructed too: it is padded by repeating its last frame, encoded and
  decoded, and the padding is cut off again, so the output has every sampled frame. (The original drops it.)
- With `read_long_video` the clip is likewise padded up to the next length the model takes (`1 + k·chunk_size`
  or `k·chunk_size`) instead of cut down to it, and it runs through the model in one pass: this engine has no
  temporal tiling, so memory grows with the video's length. The original required a v1.1 model for this mode
  (for its tiling); here any model works.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidtok.inference import (
    check_frame_size,
    clip_length,
    iter_clips,
    long_clip_length,
    plan_clips,
    precision_context,
    reconstruct_clip,
    resolve_chunk_size,
    to_uint8,
    write_video,
)

logger = logging.getLogger(__name__)


@dataclass
class Reconstruction:
    """A reconstructed video: uint8 frames `[T, H, W, 3]` for the input and the output, and timing."""

    inputs: np.ndarray
    outputs: np.ndarray
    fps: float
    clip_length: int
    num_clips: int
    seconds: float

    def side_by_side(self, concat_input: bool = True) -> np.ndarray:
        """`[input | output]` along the width, or the output alone."""
        return np.concatenate([self.inputs, self.outputs], axis=2) if concat_input else self.outputs


@torch.no_grad()
def forward_after_context(model, context: torch.Tensor, x: torch.Tensor, sample_posterior: bool = True) -> torch.Tensor:
    """Reconstruct `x` `[B, 3, T, H, W]` with `context` frames in front; returns the last T output frames.

    This is the original's `pad_gen_frames` step, `model(cat([context, x]))[..., -T:]`. The combined clip
    (`tdf - 1 + T` frames, e.g. 20) is not a length the engine's `encode` accepts for v1.0 models (it wants
    `1 + k·tdf`), so the encoder, regularizer and decoder are called directly, which is what the original's
    engine did with such a clip: no front padding (the length is a multiple of tdf) and, for v1.0, a decoder
    output of `T` frames.
    """
    clip = torch.cat([context, x], dim=2)
    h = model.encoder(clip)
    kwargs = {} if model.is_fsq else {"sample": sample_posterior}
    z, _ = model.regularization(h, compute_aux=False, **kwargs)
    return model.decoder(z)[:, :, -x.shape[2] :]


def reconstruct_video(
    model,
    video_path: str | Path,
    *,
    input_height: int = 256,
    input_width: int = 256,
    sample_fps: float = 30,
    chunk_size: int | None = None,
    num_frames_per_batch: int | None = None,
    read_long_video: bool = False,
    pad_gen_frames: bool = False,
    sample_posterior: bool = True,
    precision: str = "full",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Reconstruction:
    """Reconstruct every sampled frame of `video_path` with `model` (already on `device`, in eval mode).

    Raises:
        VideoReadError: the video is missing, unreadable, empty or its frame rate is too low for `sample_fps`.
        ValueError: a frame size or clip length the model cannot take (naming the flag).
    """
    device = torch.device(device)
    chunk = resolve_chunk_size(model, chunk_size, num_frames_per_batch)
    check_frame_size(model, input_height, input_width)
    if pad_gen_frames and (not model.is_causal or read_long_video):
        logger.warning("pad_gen_frames applies to causal models in clip mode only; ignoring it")
        pad_gen_frames = False
    if read_long_video:
        plan = plan_clips(video_path, sample_fps, long_clip=lambda n: long_clip_length(model, n, chunk))
    else:
        plan = plan_clips(video_path, sample_fps, length=clip_length(model, chunk))
    context_frames = model.time_downsample_factor - 1

    inputs, outputs = [], []
    context = None
    tic = time.time()
    with precision_context(precision, device):
        clips = iter_clips(plan, input_height, input_width)
        for clip, num_valid in tqdm(clips, total=len(plan.clips), desc="reconstructing", disable=not progress):
            x = clip.unsqueeze(0).to(device)  # [1, 3, T, H, W]
            if context is not None:
                x_hat = forward_after_context(model, context, x, sample_posterior)
            else:
                x_hat = reconstruct_clip(model, x, sample_posterior)
            x_hat = x_hat.float().clamp(-1, 1)
            if pad_gen_frames and context_frames > 0:
                # the padded tail is never followed by another clip, so its padding never becomes context
                context = x_hat[:, :, -context_frames:].to(x.dtype)
            inputs.append(x[0, :, :num_valid].cpu())
            outputs.append(x_hat[0, :, :num_valid].cpu())
    seconds = time.time() - tic
    return Reconstruction(
        inputs=to_uint8(torch.cat(inputs, dim=1)),
        outputs=to_uint8(torch.cat(outputs, dim=1)),
        fps=sample_fps,
        clip_length=plan.length,
        num_clips=len(plan.clips),
        seconds=seconds,
    )


def output_path_for(video_path: str | Path, output_dir: str | Path) -> Path:
    """`{output_dir}/{stem}_reconstructed.mp4`."""
    return Path(output_dir) / f"{Path(video_path).stem}_reconstructed.mp4"


def reconstruct_to_file(
    model, video_path: str | Path, output_dir: str | Path, *, concat_input: bool = True, **kwargs
) -> tuple[Path, Reconstruction]:
    """:func:`reconstruct_video`, then write `{stem}_reconstructed.mp4` to `output_dir` at `sample_fps`."""
    result = reconstruct_video(model, video_path, **kwargs)
    path = write_video(output_path_for(video_path, output_dir), result.side_by_side(concat_input), result.fps)
    return path, result
