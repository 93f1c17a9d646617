"""`scripts/inference_reconstruct.py` and `vidtok.reconstruct`: every frame comes back, clip by clip as the original
cuts them, and the side-by-side video is written as the original writes it; long videos stream (causal models) to
the whole-clip result, and spatial tiles keep every frame close to the untiled one."""

from __future__ import annotations

import decord
import numpy as np
import pytest
import torch

import vidtok.clips
from scripts import inference_reconstruct
from tests.video_helpers import read_video_reference, save_tiny_model, split_padded, write_test_video
from vidtok.clips import long_clip_length
from vidtok.data.video_io import VideoWriter, to_uint8, write_video
from vidtok.reconstruct import VideoReconstructor, forward_after_context, output_path_for, reconstruct_video
from vidtok.streaming import StreamingReconstructor, padded_stream_length
from vidtok.tiling import Tiling, resolve_tiles

SIZE = dict(input_height=32, input_width=32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (config, ckpt, model) for the tiny causal FSQ (v1.0 and v1.1) and non-causal KL models."""
    root = tmp_path_factory.mktemp("models")
    return {
        "causal": save_tiny_model(root, causal=True, regularizer="fsq"),
        "v1.1": save_tiny_model(root, causal=True, regularizer="fsq", variant="v1.1"),
        "noncausal": save_tiny_model(root, causal=False, regularizer="fsq"),
    }


@pytest.fixture(scope="module")
def video20(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("videos") / "clip.mp4", num_frames=20)


def reference_uint8(x: torch.Tensor) -> np.ndarray:
    """The original's `tensor_to_uint8`, on `[1, 3, T, H, W]` -> `[T, H, W, 3]`."""
    unit = (torch.clamp(x, -1.0, 1.0) + 1.0) / 2.0
    return (unit[0].permute(1, 2, 3, 0).numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize(("name", "length"), [("causal", 17), ("noncausal", 16)])
def test_every_frame_is_reconstructed_clip_by_clip(models, video20, name, length):
    _, _, model = models[name]
    result = reconstruct_video(model, video20, sample_fps=30, progress=False, **SIZE)
    frames = read_video_reference(video20, 32, 32, 30)  # [3, 20, 32, 32]
    expected_in, expected_out = [], []
    with torch.no_grad():
        for x, valid in split_padded(frames, length):  # the tail (3 or 4 frames) is padded, run, then trimmed
            expected_in.append(reference_uint8(x)[:valid])
            expected_out.append(reference_uint8(model(x)[1])[:valid])
    assert result.clip_length == length and result.num_clips == 2
    assert result.inputs.shape == result.outputs.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(result.inputs, np.concatenate(expected_in))
    np.testing.assert_array_equal(result.outputs, np.concatenate(expected_out))
    assert result.side_by_side().shape == (20, 32, 64, 3)
    np.testing.assert_array_equal(result.side_by_side(concat_input=False), result.outputs)


def test_the_script_writes_input_beside_reconstruction_at_sample_fps(models, video20, tmp_path, capsys):
    config, ckpt, _ = models["causal"]
    args = ["--config", str(config), "--ckpt", str(ckpt), "--input_video_path", str(video20),
            "--num_frames_per_batch", "17", "--input_height", "32", "--input_width", "32", "--no_progress"]
    assert inference_reconstruct.main([*args, "--sample_fps", "30", "--output_video_dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "a" / "clip_reconstructed.mp4"
    assert f"Results saved in: {path}" in out and "Time taken: " in out
    reader = decord.VideoReader(str(path))
    assert len(reader) == 20 and reader.get_avg_fps() == pytest.approx(30) and reader[0].shape == (32, 64, 3)

    # 30 fps source read at 10 fps: every 3rd frame, written at 10 fps; output alone
    code = inference_reconstruct.main(
        [*args, "--sample_fps", "10", "--concate_input", "false", "--output_video_dir", str(tmp_path / "b")]
    )
    assert code == 0
    reader = decord.VideoReader(str(output_path_for(video20, tmp_path / "b")))
    assert len(reader) == 7 and reader.get_avg_fps() == pytest.approx(10) and reader[0].shape == (32, 32, 3)


def test_the_script_writes_at_the_rate_of_the_frames_kept(models, tmp_path):
    # a 25 fps source asked for 30 fps: round(25 / 30) = 1 keeps every frame, which play at 25 fps, not 1.2× fast
    config, ckpt, _ = models["causal"]
    video = write_test_video(tmp_path / "pal.mp4", num_frames=9, fps=25)
    assert inference_reconstruct.main(
        ["--config", str(config), "--ckpt", str(ckpt), "--input_video_path", str(video), "--input_height", "32",
         "--input_width", "32", "--num_frames_per_batch", "9", "--sample_fps", "30", "--no_progress",
         "--output_video_dir", str(tmp_path)]
    ) == 0
    reader = decord.VideoReader(str(tmp_path / "pal_reconstructed.mp4"))
    assert len(reader) == 9 and reader.get_avg_fps() == pytest.approx(25)


def test_pad_gen_frames_feeds_the_previous_reconstruction_as_context(models, video20):
    _, _, model = models["causal"]  # tdf 2: one context frame
    plain = reconstruct_video(model, video20, sample_fps=30, progress=False, **SIZE)
    padded = reconstruct_video(model, video20, sample_fps=30, pad_gen_frames=True, progress=False, **SIZE)
    np.testing.assert_array_equal(padded.outputs[:17], plain.outputs[:17])  # the first clip has no context

    frames = read_video_reference(video20, 32, 32, 30)
    (first, _), (second, valid) = split_padded(frames, 17)
    with torch.no_grad():
        context = model(first)[1].clamp(-1, 1)[:, :, -1:]
        expected = forward_after_context(model, context, second)
        with pytest.raises(ValueError, match="1 \\+ k"):  # why the engine's own forward cannot take 1 + 17 frames
            model(torch.cat([context, second], dim=2))
    np.testing.assert_array_equal(padded.outputs[17:], reference_uint8(expected)[:valid])


def test_context_forward_equals_the_engine_forward_where_the_engine_accepts_the_length(models):
    _, _, model = models["v1.1"]  # v1.1 engines take any length and keep the last T frames
    torch.manual_seed(0)
    context, x = torch.rand(1, 3, 1, 32, 32) * 2 - 1, torch.rand(1, 3, 17, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            forward_after_context(model, context, x), model(torch.cat([context, x], dim=2))[1][:, :, -17:]
        )


def test_read_long_video_pads_to_a_length_the_model_takes(models, tmp_path):
    _, _, model = models["causal"]
    video = write_test_video(tmp_path / "long.mp4", num_frames=12)
    result = reconstruct_video(model, video, sample_fps=30, read_long_video=True, chunk_size=4, progress=False, **SIZE)
    assert long_clip_length(model, 12, 4) == 13 and result.clip_length == 13 and result.num_clips == 1
    frames = read_video_reference(video, 32, 32, 30)
    (x, valid), = split_padded(frames, 13)
    with torch.no_grad():
        expected = reference_uint8(model(x)[1])[:valid]
    # a causal model streams: the same frames up to float rounding, which may move a truncated uint8 by one
    assert result.streamed and np.abs(result.outputs.astype(int) - expected.astype(int)).max() <= 1


def test_bad_inputs_fail_with_a_message(models, tmp_path, capsys):
    config, ckpt, _ = models["causal"]
    args = ["--config", str(config), "--ckpt", str(ckpt), "--output_video_dir", str(tmp_path), "--no_progress"]
    assert inference_reconstruct.main([*args, "--input_video_path", str(tmp_path / "none.mp4")]) == 1
    assert "none.mp4" in capsys.readouterr().err
    (tmp_path / "text.mp4").write_text("not a video")
    assert inference_reconstruct.main([*args, "--input_video_path", str(tmp_path / "text.mp4")]) == 1
    assert "unreadable" in capsys.readouterr().err
    video = write_test_video(tmp_path / "v.mp4", num_frames=3)
    code = inference_reconstruct.main([*args, "--input_video_path", str(video), "--input_height", "34",
                                       "--input_width", "32"])
    assert code == 1 and "spatial factor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference_reconstruct.main([*args, "--concate_input", "maybe"])


def test_uint8_conversion_truncates_like_the_original():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 6, 1, 1)  # [C=1, T=6, 1, 1]
    assert to_uint8(x).ravel().tolist() == [0, 0, 127, 254, 255, 255]


def test_write_video_keeps_frames_and_rate(tmp_path):
    frames = np.zeros((5, 16, 24, 3), np.uint8)
    frames[:, :, :12] = 200
    reader = decord.VideoReader(str(write_video(tmp_path / "a.mp4", frames, 30000 / 1001)))
    assert len(reader) == 5 and reader.get_avg_fps() == pytest.approx(29.97, abs=1e-2)
    assert abs(int(reader[0].asnumpy()[8, 4, 0]) - 200) <= 3
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "b.mp4", np.zeros((2, 15, 16, 3), np.uint8), 30)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "c.mp4", np.zeros((2, 16, 16, 3), np.float32), 30)


# --- long videos: streaming (causal models), and spatial tiles --------------------------------------------------------


def whole_clip_reference(model, video, num_frames: int, length: int) -> torch.Tensor:
    """The window-free pass: the whole video padded to `length` frames with its last frame, encoded (KL: posterior
    mean) and decoded in one go; `[3, num_frames, 32, 32]`, clamped."""
    frames = read_video_reference(video, 32, 32, 30)
    assert frames.shape[1] == num_frames
    x = torch.cat([frames, frames[:, -1:].expand(-1, length - num_frames, -1, -1)], dim=1).unsqueeze(0)
    with torch.no_grad():
        z, _ = model.encode(x, sample=False)
        return model.decode(z)[:, :, -length:][0, :, :num_frames].clamp(-1, 1)


@pytest.mark.parametrize(("variant", "regularizer"), [("v1.0", "fsq"), ("v1.1", "fsq"), ("v1.0", "kl"), ("v1.1", "kl")])
def test_long_video_streams_and_equals_the_whole_clip_pass(tmp_path, video20, monkeypatch, variant, regularizer):
    _, _, model = save_tiny_model(tmp_path, causal=True, regularizer=regularizer, variant=variant)
    read_sizes = []
    real_read = vidtok.clips.read_frames
    monkeypatch.setattr(
        vidtok.clips, "read_frames", lambda r, idx, p: read_sizes.append(len(idx)) or real_read(r, idx, p)
    )
    reconstructor = VideoReconstructor(
        model, video20, sample_fps=30, read_long_video=True, chunk_size=4, progress=False, **SIZE
    )
    assert reconstructor.streaming and reconstructor.plan.length == padded_stream_length(model, 20) == 21
    pairs = list(reconstructor)
    assert read_sizes == [4] * 5  # the file is read a chunk at a time, never whole
    assert len(pairs) > 1  # and the reconstruction comes out while it is read
    inputs, outputs = (torch.cat(p, dim=1) for p in zip(*pairs, strict=True))
    assert inputs.shape == outputs.shape == (3, 20, 32, 32)
    torch.testing.assert_close(inputs, read_video_reference(video20, 32, 32, 30), rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs, whole_clip_reference(model, video20, 20, 21), rtol=0, atol=1e-4)


@pytest.mark.parametrize("num_frames", [1, 2, 17])
def test_streaming_pads_v10_videos_to_one_plus_k_tdf_and_trims_after(models, tmp_path, num_frames):
    _, _, model = models["causal"]  # tdf 2: 1 -> 1, 2 -> 3, 17 -> 17
    video = write_test_video(tmp_path / "v.mp4", num_frames=num_frames)
    result = reconstruct_video(model, video, sample_fps=30, read_long_video=True, chunk_size=2, progress=False, **SIZE)
    length = padded_stream_length(model, num_frames)
    assert result.streamed and result.clip_length == length == num_frames + (num_frames % 2 == 0)
    assert result.outputs.shape == (num_frames, 32, 32, 3) and result.num_frames == num_frames
    expected = whole_clip_reference(model, video, num_frames, length)
    assert np.abs(result.outputs.astype(int) - to_uint8(expected).astype(int)).max() <= 1  # uint8 truncation


def test_streaming_reconstructor_checks_how_it_is_fed(models):
    _, _, model = models["causal"]
    stream = StreamingReconstructor(model, num_frames=3)
    with pytest.raises(ValueError, match="finish"):
        stream.finish()
    with pytest.raises(ValueError, match="4 frames into a 3-frame stream"):
        stream.push(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="causal"):
        StreamingReconstructor(models["noncausal"][2], num_frames=3)


def test_the_script_streams_long_videos_to_the_output_file(models, video20, tmp_path):
    config, ckpt, _ = models["v1.1"]
    args = ["--config", str(config), "--ckpt", str(ckpt), "--input_video_path", str(video20), "--input_height", "32",
            "--input_width", "32", "--sample_fps", "30", "--chunk_size", "4", "--read_long_video", "--no_progress",
            "--output_video_dir", str(tmp_path)]
    assert inference_reconstruct.main(args) == 0
    reader = decord.VideoReader(str(output_path_for(video20, tmp_path)))
    assert len(reader) == 20 and reader[0].shape == (32, 64, 3)


def test_non_causal_long_videos_still_run_in_one_pass(models, tmp_path):
    _, _, model = models["noncausal"]
    video = write_test_video(tmp_path / "v.mp4", num_frames=10)
    result = reconstruct_video(model, video, sample_fps=30, read_long_video=True, chunk_size=4, progress=False, **SIZE)
    assert not result.streamed and result.num_clips == 1 and result.clip_length == 12
    (x, valid), = split_padded(read_video_reference(video, 32, 32, 30), 12)
    with torch.no_grad():
        np.testing.assert_array_equal(result.outputs, reference_uint8(model(x)[1])[:valid])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 videos."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize(("name", "long"), [("causal", False), ("v1.1", True), ("noncausal", True)])
def test_tiled_reconstruction_keeps_every_frame_and_stays_close(models, tmp_path, name, long):
    _, _, model = models[name]
    video = write_test_video(tmp_path / "v.mp4", num_frames=5, height=48, width=64)
    kwargs = dict(sample_fps=30, read_long_video=long, chunk_size=4, sample_posterior=False, progress=False,
                  input_height=48, input_width=48)
    plain = reconstruct_video(model, video, **kwargs)
    tiled = reconstruct_video(model, video, tile_size=32, tile_overlap=16, **kwargs)  # 2×2 tiles
    assert tiled.tiles.pixels == Tiling(32, 16) and tiled.tiles.latents == Tiling(8, 4)
    assert tiled.streamed == (long and name != "noncausal")
    assert tiled.outputs.shape == plain.outputs.shape == (5, 48, 48, 3)
    np.testing.assert_array_equal(tiled.inputs, plain.inputs)
    # random weights and a 12×12 latent: every output sees most of the frame, so tiling shows; the bound is loose
    assert 15 < psnr(tiled.outputs, plain.outputs) < 80


def test_one_tile_as_large_as_the_frame_is_no_tiling(models, video20):
    _, _, model = models["causal"]
    kwargs = dict(sample_fps=30, chunk_size=8, pad_gen_frames=True, progress=False, **SIZE)  # 3 clips, with context
    plain = reconstruct_video(model, video20, **kwargs)
    whole = reconstruct_video(model, video20, tile_size=32, tile_overlap=8, **kwargs)
    assert np.abs(whole.outputs.astype(int) - plain.outputs.astype(int)).max() <= 1
    tiled = reconstruct_video(model, video20, tile_size=24, tile_overlap=8, **kwargs)  # 2×2 tiles
    assert tiled.outputs.shape == plain.outputs.shape == (20, 32, 32, 3)
    # random FSQ weights, and every clip starts from the tiled end of the one before
    assert 12 < psnr(tiled.outputs, plain.outputs) < 80


def test_bad_tile_flags_fail_with_a_message(models, video20, tmp_path, capsys):
    config, ckpt, model = models["causal"]  # spatial factor 4
    args = ["--config", str(config), "--ckpt", str(ckpt), "--input_video_path", str(video20), "--input_height", "32",
            "--input_width", "32", "--output_video_dir", str(tmp_path), "--no_progress"]
    assert inference_reconstruct.main([*args, "--tile_size", "30"]) == 1
    assert "--tile_size" in capsys.readouterr().err
    assert inference_reconstruct.main([*args, "--tile_size", "16", "--tile_overlap", "16"]) == 1
    assert "--tile_overlap" in capsys.readouterr().err
    assert inference_reconstruct.main([*args, "--tile_overlap", "8"]) == 1
    assert "--tile_size" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.mp4"))
    assert resolve_tiles(model, None) is None
    assert resolve_tiles(model, 64).pixels.overlap == 16 and resolve_tiles(model, 36).pixels.overlap == 8


def test_video_writer_writes_chunks_and_removes_a_half_written_file(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (7, 16, 24, 3), dtype=np.uint8)
    with VideoWriter(tmp_path / "a.mp4", 30) as writer:
        for chunk in np.split(frames, [3, 3, 5]):
            writer.write(chunk)
    assert writer.num_frames == 7 and len(decord.VideoReader(str(tmp_path / "a.mp4"))) == 7
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(tmp_path / "b.mp4", 30) as writer:
        writer.write(frames[:2])
        raise RuntimeError("boom")
    assert not (tmp_path / "b.mp4").exists()
    with pytest.raises(ValueError, match="16×24 video"), VideoWriter(tmp_path / "c.mp4", 30) as writer:
        writer.write(frames[:1])
        writer.write(np.zeros((1, 16, 26, 3), np.uint8))
