"""Encoding a video to tokens and decoding them back (`python -m vidtok encode|decode`); the file they go to and
come from is :mod:`vidtok.token_file`.

The video is cut as the inference scripts cut it (see :mod:`vidtok.clips`): consecutive non-overlapping
clips of `chunk_size + 1` frames (causal) or `chunk_size` (non-causal), each encoded on its own; the last clip is
padded by repeating its last frame, and decoding drops the padding again, so every sampled frame comes back.
Decoding a file gives exactly what decoding the in-memory :class:`EncodedVideo` gives.

Long videos (`read_long_video`, causal models): the whole video is one clip, padded to `1 + k·tdf` frames by
repeating its last frame, and *streamed*: frames are read `chunk_size` at a time and pushed through
:class:`vidtok.streaming.StreamingEncoder`, so memory does not grow with the length (only the latents, which are
what the file stores, are kept). Such a file (`clips.streamed` in its metadata) is decoded by streaming its latents
through :class:`vidtok.streaming.StreamingDecoder` too, and the frames come out a chunk at a time
(:func:`iter_decoded_frames`). It is still an ordinary one-clip file: decoding it in one pass gives the same video.
Non-causal models cannot stream; with `read_long_video` they are encoded clip by clip as usual.

`tile_size` / `tile_overlap` (pixels, off by default) encode or decode each frame in overlapping spatial tiles
(decoder tiles are `tile_size / f` latents), see :mod:`vidtok.tiling`. Encoder outputs are blended before
quantisation, so FSQ tokens stay valid codes.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from vidtok.clips import check_frame_size, clip_length, iter_clips, iter_frame_chunks, plan_clips, resolve_chunk_size
from vidtok.memory import check_memory
from vidtok.precision import Precision
from vidtok.streaming import FrameWindow, StreamingDecoder, StreamingEncoder, pad_chunks, padded_stream_length
from vidtok.tile_major import TileMajorProgress, decode_tile_major, encode_tile_major, tile_major_latents
from vidtok.tiling import SpatialTiles, decode_tiled, encode_tiled, resolve_tiles
from vidtok.token_file import (
    FORMAT,
    FORMAT_VERSION,
    LATENT_DTYPES,
    REENCODE,
    EncodedVideo,
    TokenFileError,
    check_model_matches,
    check_tokens,
    index_dtype,
    model_description,
)

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_video(
    model,
    video_path: str | Path,
    *,
    input_height: int = 256,
    input_width: int = 256,
    sample_fps: float | None = None,
    chunk_size: int | None = None,
    num_frames_per_batch: int | None = None,
    read_long_video: bool = False,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    latent_dtype: str = "float32",
    precision: str | Precision = "full",
    device: torch.device | str = "cpu",
    config: str | Path | None = None,
    ckpt: str | Path | None = None,
    progress: bool = False,
) -> EncodedVideo:
    """Encode every sampled frame of `video_path` (`sample_fps=None`: every frame) with `model` (on `device`,
    eval mode). `config`/`ckpt` are recorded so that the file can be decoded without naming them again.

    `chunk_size` / `num_frames_per_batch` set the clip length (:func:`vidtok.clips.resolve_chunk_size`).
    `read_long_video` streams a causal model's whole video as one clip (see the module docstring); a non-causal
    model is encoded clip by clip anyway. `tile_size`/`tile_overlap` (pixels) encode in spatial tiles.

    Raises:
        VideoReadError: the video cannot be read.
        ValueError: a frame size, chunk or tile size the model cannot take, or an unknown `latent_dtype`.
        ConfigError: a clip (or tile) of that size would not fit in the device's memory.
    """
    if latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"latent_dtype must be one of {LATENT_DTYPES}, got {latent_dtype!r}")
    device = torch.device(device)
    chunk = resolve_chunk_size(model, chunk_size, num_frames_per_batch)
    check_frame_size(model, input_height, input_width)
    tiles = resolve_tiles(model, tile_size, tile_overlap)
    streamed = read_long_video and model.is_causal
    if read_long_video and not streamed:
        logger.warning("read_long_video: a non-causal model cannot stream; encoding the video clip by clip")
    if streamed:
        plan = plan_clips(video_path, sample_fps, long_clip=lambda n: padded_stream_length(model, n))
    else:
        plan = plan_clips(video_path, sample_fps, length=clip_length(model, chunk))
    check_memory(model, chunk if streamed else plan.length, input_height, input_width, tiles, device)
    description = model_description(model)

    with Precision.of(precision).encoding(device):
        if streamed:
            parts = [_encode_streamed(model, plan, input_height, input_width, chunk, tiles, device, progress)]
        else:
            parts = []
            clips = iter_clips(plan, input_height, input_width)
            for clip, _ in tqdm(clips, total=len(plan.clips), disable=not progress):
                x = clip.unsqueeze(0).to(device)  # [1, 3, T, H, W]
                parts.append(_encode_clip(model, x, tiles))
    if model.is_fsq:
        stacked = np.stack(parts)
        dtype = index_dtype(description["codebook_size"])
        if stacked.min() < 0 or stacked.max() >= description["codebook_size"]:
            raise ValueError(f"token indices outside [0, {description['codebook_size']}): the model is inconsistent")
        tokens = stacked.astype(dtype)
    else:
        tokens = np.stack(parts).astype(latent_dtype)

    config_yaml = None
    if config is not None:  # only the model's section, resolved: data and trainer settings are not the file's business
        model_section = OmegaConf.to_container(OmegaConf.load(config).model, resolve=True)
        config_yaml = OmegaConf.to_yaml(OmegaConf.create({"model": model_section}))
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": description["kind"],
        "model": {
            **description,
            "config": None if config is None else Path(config).name,
            "config_yaml": config_yaml,
            "ckpt": None if ckpt is None else Path(ckpt).name,
            "latent": "indices" if model.is_fsq else "posterior_mean",
        },
        "video": {
            "source": Path(video_path).name,
            "source_fps": plan.source_fps,
            "interval": plan.interval,
            "fps": plan.output_fps,
            "num_frames": plan.num_frames,
            "height": input_height,
            "width": input_width,
        },
        "clips": {
            "chunk_size": chunk,
            "clip_frames": plan.length,
            "layout": [list(c) for c in plan.clips],
            **({"streamed": True} if streamed else {}),  # absent in clip files, as in files from before streaming
        },
        "tiling": None if tiles is None else {"tile_size": tiles.size, "tile_overlap": tiles.overlap},
        "dtype": str(tokens.dtype),
        "shape": list(tokens.shape),
    }
    return EncodedVideo(kind=description["kind"], tokens=tokens, meta=meta)


def _encode_clip(model, x: torch.Tensor, tiles: SpatialTiles | None) -> np.ndarray:
    """One clip `[1, 3, T, H, W]` -> FSQ indices `[T', H', W']` or the KL posterior mean `[C, T', H', W']`."""
    if tiles is None:
        z, reg_log = model.encode(x, sample=False)
    else:
        z, reg_log = encode_tiled(model, x, tiles.pixels, sample=False)
    if model.is_fsq:
        return reg_log["indices"][0].cpu().numpy()
    return z[0].float().cpu().numpy()


def _encode_streamed(
    model, plan, height: int, width: int, chunk: int, tiles: SpatialTiles | None, device, progress: bool
) -> np.ndarray:
    """Stream a planned one-clip video through a causal encoder, padding its tail to `plan.length` frames; with
    `tiles`, tile-major (:func:`vidtok.tile_major.encode_tile_major`)."""

    def read_chunks() -> Iterator[torch.Tensor]:
        chunks = iter_frame_chunks(plan.path, plan.frame_indices, height, width, chunk)
        return pad_chunks((c.unsqueeze(0) for c in chunks), plan.length)

    def numpy(z: torch.Tensor, reg_log: dict) -> np.ndarray:
        if model.is_fsq:
            return reg_log["indices"][0].cpu().numpy()  # [t', H', W']
        return z[0].float().cpu().numpy()  # [C, t', H', W']

    if tiles is not None:
        f = model.spatial_downsample_factor
        pushes = len(tiles.pixels.spans(height, f)) * len(tiles.pixels.spans(width, f)) * -(-plan.length // chunk)
        bar = TileMajorProgress(pushes, progress)
        with tempfile.TemporaryDirectory(prefix="vidtok-tiles-") as workdir:
            encoded = encode_tile_major(model, read_chunks, (height, width), plan.length, tiles, workdir,
                                        device=device, on_push=bar)
            bar.close()
            parts = [numpy(z, log) for z, log in tile_major_latents(model, encoded, chunk)]
        return np.concatenate(parts, axis=0 if model.is_fsq else 1)
    encoder = StreamingEncoder(model, num_frames=plan.length)
    parts = []
    with tqdm(total=plan.length, unit="frame", disable=not progress) as bar:
        for frames in read_chunks():
            parts.append(numpy(*encoder.push(frames.to(device))))
            bar.update(frames.shape[2])
    return np.concatenate(parts, axis=0 if model.is_fsq else 1)


@torch.no_grad()
def iter_decoded_frames(
    model,
    encoded: EncodedVideo,
    *,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    precision: str | Precision = "full",
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Iterator[torch.Tensor]:
    """Decode a token file a piece at a time: frames `[3, t, H, W]` in [-1, 1] (clamped), on the CPU, in order,
    every one of the file's `num_frames` frames once.

    Clip files yield a clip at a time: each clip's last `clip_frames` decoded frames (v1.1 decoders return a few
    more), less its padding. Streamed files (causal models) are decoded by streaming their latents `chunk_size /
    tdf` at a time, so memory does not grow with the length. `tile_size`/`tile_overlap` (pixels) decode in
    overlapping latent tiles of `tile_size / f`.
    """
    check_tokens(encoded)
    check_model_matches(model, encoded)
    device = torch.device(device)
    precision = Precision.of(precision)
    tiles = resolve_tiles(model, tile_size, tile_overlap)
    clips = encoded.meta["clips"]
    clip_frames = int(clips["clip_frames"])
    layout = clips["layout"]
    if clips.get("streamed") and model.is_causal:
        yield from _decode_streamed(model, encoded, tiles, precision, device, progress)
        return
    for part, (_, num_valid) in tqdm(zip(encoded.tokens, layout, strict=True), total=len(layout),
                                     disable=not progress):
        with precision.decoding(device):
            z = _latents(model, encoded, part).to(device)
            video = model.decoder(z) if tiles is None else decode_tiled(model, z, tiles.latents)
        yield video[:, :, -clip_frames:][0, :, :num_valid].float().clamp(-1, 1).cpu()


def _latents(model, encoded: EncodedVideo, part: np.ndarray) -> torch.Tensor:
    """One clip's stored tokens as the decoder's input `[1, C, T', H', W']`."""
    if encoded.kind == "fsq":
        indices = torch.from_numpy(part.astype(np.int64)).unsqueeze(0)  # [1, T', H', W']
        return model.regularization.indices_to_codes(indices).to(next(model.decoder.parameters()).dtype)
    return torch.from_numpy(part.astype(np.float32)).unsqueeze(0)  # [1, C, T', H', W']


def _decode_streamed(
    model, encoded: EncodedVideo, tiles: SpatialTiles | None, precision: Precision, device, progress: bool
) -> Iterator[torch.Tensor]:
    """Stream a one-clip file's latents through the decoder (tile-major with `tiles`,
    :func:`vidtok.tile_major.decode_tile_major`); drop the frames of the encoder's front padding (v1.1) and of the
    tail padding."""
    (part,), ((_, num_valid),) = encoded.tokens, encoded.meta["clips"]["layout"]
    clip_frames = int(encoded.meta["clips"]["clip_frames"])
    num_latents = part.shape[0] if encoded.kind == "fsq" else part.shape[1]
    step = max(1, int(encoded.meta["clips"]["chunk_size"]) // model.time_downsample_factor)
    skip = model.decoder.output_frames(num_latents) - clip_frames  # decoded frames before the clip's first
    decoded = 0

    def latents() -> Iterator[torch.Tensor]:
        for start in range(0, num_latents, step):
            piece = part[start : start + step] if encoded.kind == "fsq" else part[:, start : start + step]
            yield _latents(model, encoded, piece)

    if tiles is not None:
        h, w = part.shape[-2:]
        pushes = len(tiles.latents.spans(h)) * len(tiles.latents.spans(w)) * (-(-num_latents // step) + 1)
        bar = TileMajorProgress(pushes, progress)
        with tempfile.TemporaryDirectory(prefix="vidtok-tiles-") as workdir:
            frames = decode_tile_major(model, latents, (h, w), skip, num_valid, tiles, workdir, precision, device, bar)
            bar.close()
            for t0 in range(0, frames.num_frames, step * model.time_downsample_factor):
                video = frames.read(t0, t0 + step * model.time_downsample_factor)[0].clamp(-1, 1)
                decoded += video.shape[1]
                yield video
    else:
        decoder = StreamingDecoder(model)
        window = FrameWindow(skip, num_valid)

        def keep(video: torch.Tensor) -> torch.Tensor:
            return window(video)[0].float().clamp(-1, 1).cpu()

        with tqdm(total=num_valid, unit="frame", disable=not progress) as bar:
            for z in latents():
                with precision.decoding(device):
                    video = keep(decoder.push(z.to(device)))
                if video.shape[1]:
                    decoded += video.shape[1]
                    bar.update(video.shape[1])
                    yield video
            with precision.decoding(device):
                video = keep(decoder.finish())
            if video.shape[1]:
                decoded += video.shape[1]
                bar.update(video.shape[1])
                yield video
    if decoded != num_valid:
        raise TokenFileError(
            f"{encoded.where}: its latents decode to {decoded} frames, its metadata says {num_valid}: {REENCODE}"
        )


@torch.no_grad()
def decode_tokens(
    model,
    encoded: EncodedVideo,
    *,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    precision: str | Precision = "full",
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Decode a token file's clips and join them: video `[3, num_frames, H, W]` in [-1, 1] (clamped), on the CPU.

    See :func:`iter_decoded_frames`, which gives the same frames a piece at a time.
    """
    frames = iter_decoded_frames(
        model, encoded, tile_size=tile_size, tile_overlap=tile_overlap, precision=precision, device=device,
        progress=progress,
    )
    return torch.cat(list(frames), dim=1)
