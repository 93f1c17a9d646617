"""Token files (`python -m vidtok encode|decode`): smallest index type, exact round trip through disk, metadata;
streamed long videos equal the in-memory round trip; tiles."""

from __future__ import annotations

import json

import decord
import numpy as np
import pytest
import torch

import vidtok.inference
from tests.video_helpers import read_video_reference, save_tiny_model, split_padded, write_test_video
from vidtok.__main__ import main as cli
from vidtok.inference import reconstruct_clip
from vidtok.tokens import (
    EncodedVideo,
    check_model_matches,
    decode_tokens,
    encode_video,
    index_dtype,
    iter_decoded_frames,
    load_model_for,
    load_tokens,
    save_tokens,
)

SIZE = dict(input_height=32, input_width=32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "fsq": save_tiny_model(root, causal=True, regularizer="fsq"),  # 8·8·8 = 512 codes
        "kl": save_tiny_model(root, causal=True, regularizer="kl"),
        "v1.1": save_tiny_model(root, causal=True, regularizer="fsq", variant="v1.1"),
    }


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("videos") / "clip.mp4", num_frames=20)


@pytest.mark.parametrize(
    ("codebook", "dtype"),
    [(1, np.uint8), (256, np.uint8), (257, np.uint16), (4096, np.uint16), (65536, np.uint16), (65537, np.uint32),
     (262144, np.uint32)],
)
def test_index_dtype_is_the_smallest_that_fits(codebook, dtype):
    assert index_dtype(codebook) == dtype


def test_fsq_round_trip_through_disk_is_exact(models, video, tmp_path):
    config, ckpt, model = models["fsq"]
    encoded = encode_video(model, video, config=config, ckpt=ckpt, **SIZE)
    assert encoded.kind == "fsq" and encoded.tokens.dtype == np.uint16 and encoded.tokens.shape == (2, 9, 8, 8)
    in_memory = decode_tokens(model, encoded)
    loaded = load_tokens(save_tokens(encoded, tmp_path / "t.npz"))
    np.testing.assert_array_equal(loaded.tokens, encoded.tokens)
    assert loaded.tokens.dtype == np.uint16 and loaded.meta == encoded.meta
    from_disk = decode_tokens(load_model_for(loaded), loaded)
    assert from_disk.shape == (3, 20, 32, 32)
    assert torch.equal(from_disk, in_memory)

    # and the tokens decode to the model's own reconstruction of each (padded) clip
    frames = read_video_reference(video, 32, 32, 30)
    with torch.no_grad():
        expected = torch.cat([reconstruct_clip(model, x)[0, :, :n] for x, n in split_padded(frames, 17)], dim=1)
    torch.testing.assert_close(in_memory, expected.clamp(-1, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("latent_dtype", ["float32", "float16"])
def test_kl_latents_are_the_posterior_mean_and_round_trip_exactly(models, video, tmp_path, latent_dtype):
    config, ckpt, model = models["kl"]
    encoded = encode_video(model, video, latent_dtype=latent_dtype, config=config, ckpt=ckpt, **SIZE)
    assert encoded.kind == "kl" and encoded.tokens.dtype == np.dtype(latent_dtype)
    assert encoded.tokens.shape == (2, 4, 9, 8, 8)
    in_memory = decode_tokens(model, encoded)
    loaded = load_tokens(save_tokens(encoded, tmp_path / "k.npz"))
    assert torch.equal(decode_tokens(load_model_for(loaded), loaded), in_memory)
    if latent_dtype == "float32":
        frames = read_video_reference(video, 32, 32, 30)
        with torch.no_grad():
            expected = torch.cat(
                [reconstruct_clip(model, x, sample_posterior=False)[0, :, :n] for x, n in split_padded(frames, 17)],
                dim=1,
            )
        torch.testing.assert_close(in_memory, expected.clamp(-1, 1), rtol=0, atol=1e-6)


def test_metadata_describes_model_video_and_clips(models, video):
    config, ckpt, model = models["fsq"]
    meta = encode_video(model, video, sample_fps=10, config=config, ckpt=ckpt, **SIZE).meta
    assert meta["model"]["kind"] == "fsq" and meta["model"]["codebook_size"] == 512
    assert meta["model"]["causal"] is True and meta["model"]["time_downsample_factor"] == 2
    assert meta["model"]["config"] == str(config.resolve()) and meta["model"]["ckpt"] == str(ckpt.resolve())
    assert "encoder_config" in meta["model"]["config_yaml"]
    assert meta["video"] == {
        "source": str(video.resolve()), "source_fps": 30.0, "interval": 3, "fps": 10.0, "num_frames": 7,
        "height": 32, "width": 32,
    }
    assert meta["clips"] == {"chunk_size": 16, "clip_frames": 17, "layout": [[0, 7]]}
    json.dumps(meta)


def test_v11_decoders_extra_frames_are_cut(models, video):
    _, _, model = models["v1.1"]
    encoded = encode_video(model, video, **SIZE)
    assert decode_tokens(model, encoded).shape == (3, 20, 32, 32)


def test_cli_encode_then_decode(models, video, tmp_path, capsys):
    config, ckpt, _ = models["fsq"]
    tokens = tmp_path / "out" / "tokens.npz"
    code = cli(["encode", str(video), "-c", str(config), "--ckpt", str(ckpt), "-o", str(tokens),
                "--height", "32", "--width", "32", "--sample_fps", "15"])
    assert code == 0 and "fsq tokens (1, 9, 8, 8) uint16 for 10 frames" in capsys.readouterr().out
    out = tmp_path / "out.mp4"
    assert cli(["decode", str(tokens), "-o", str(out)]) == 0
    reader = decord.VideoReader(str(out))
    assert len(reader) == 10 and reader.get_avg_fps() == pytest.approx(15) and reader[0].shape == (32, 32, 3)


def test_decode_finds_the_model_or_says_what_is_missing(models, video, tmp_path, capsys):
    config, ckpt, model = models["fsq"]
    moved_config, moved_ckpt = tmp_path / "moved.yaml", tmp_path / "moved.ckpt"
    moved_config.write_bytes(config.read_bytes())
    moved_ckpt.write_bytes(ckpt.read_bytes())
    encoded = encode_video(model, video, config=moved_config, ckpt=moved_ckpt, **SIZE)
    path = save_tokens(encoded, tmp_path / "t.npz")
    moved_config.unlink()  # the config text stored in the file is used instead
    moved_ckpt.unlink()
    assert cli(["decode", str(path), "-o", str(tmp_path / "a.mp4")]) == 1
    err = capsys.readouterr().err
    assert "moved.ckpt" in err and "--ckpt" in err
    assert cli(["decode", str(path), "-o", str(tmp_path / "a.mp4"), "--ckpt", str(ckpt)]) == 0

    kl_config, kl_ckpt, kl_model = models["kl"]
    with pytest.raises(ValueError, match="kind"):
        check_model_matches(kl_model, encoded)
    assert cli(["decode", str(path), "-o", str(tmp_path / "b.mp4"), "-c", str(kl_config), "--ckpt", str(kl_ckpt)]) == 1
    assert "does not match" in capsys.readouterr().err


def test_bad_token_files_are_rejected(tmp_path, capsys):
    (tmp_path / "x.npz").write_text("nope")
    with pytest.raises(ValueError, match="not a vidtok token file"):
        load_tokens(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", tokens=np.zeros(3), meta=np.array(json.dumps({"format": "other"})))
    with pytest.raises(ValueError, match="not a vidtok token file"):
        load_tokens(tmp_path / "y.npz")
    with pytest.raises(FileNotFoundError):
        load_tokens(tmp_path / "z.npz")
    assert cli(["decode", str(tmp_path / "z.npz"), "-o", str(tmp_path / "o.mp4")]) == 1
    assert "z.npz" in capsys.readouterr().err


def test_encode_rejects_bad_inputs(models, tmp_path, capsys):
    config, ckpt, model = models["fsq"]
    with pytest.raises(ValueError, match="latent_dtype"):
        encode_video(model, tmp_path / "v.mp4", latent_dtype="bfloat16")
    code = cli(["encode", str(tmp_path / "none.mp4"), "-c", str(config), "--ckpt", str(ckpt), "-o",
                str(tmp_path / "t.npz")])
    assert code == 1 and "none.mp4" in capsys.readouterr().err


# --- long videos (streamed token files) and spatial tiles ----------------------------------------------------------


@pytest.mark.parametrize("name", ["fsq", "kl", "v1.1"])
def test_streamed_round_trip_equals_the_in_memory_one(models, video, tmp_path, monkeypatch, name):
    config, ckpt, model = models[name]
    read_sizes = []
    real_read = vidtok.inference.read_frames
    monkeypatch.setattr(
        vidtok.inference, "read_frames", lambda r, idx, p: read_sizes.append(len(idx)) or real_read(r, idx, p)
    )
    streamed = encode_video(model, video, read_long_video=True, chunk_size=4, config=config, ckpt=ckpt, **SIZE)
    assert read_sizes == [4] * 5  # read a chunk at a time
    assert streamed.meta["clips"] == {"chunk_size": 4, "clip_frames": 21, "layout": [[0, 20]], "streamed": True}

    # in memory: the whole video padded to 21 frames with its last one, encoded in one pass
    frames = read_video_reference(video, 32, 32, 30)
    x = torch.cat([frames, frames[:, -1:]], dim=1).unsqueeze(0)  # [1, 3, 21, 32, 32]
    with torch.no_grad():
        z, log = model.encode(x, sample=False)
    if name == "kl":
        assert streamed.tokens.shape == (1, 4, 11, 8, 8)
        torch.testing.assert_close(torch.from_numpy(streamed.tokens), z, rtol=0, atol=1e-4)
    else:
        assert streamed.tokens.dtype == np.uint16 and streamed.tokens.shape == (1, 11, 8, 8)
        np.testing.assert_array_equal(streamed.tokens, log["indices"].numpy())

    # decoding streams the latents: pieces come out as they are decoded, and they equal the one-pass decode
    loaded = load_tokens(save_tokens(streamed, tmp_path / "s.npz"))
    pieces = list(iter_decoded_frames(load_model_for(loaded), loaded))
    assert len(pieces) > 1
    decoded = torch.cat(pieces, dim=1)
    one_pass = dict(streamed.meta, clips={k: v for k, v in streamed.meta["clips"].items() if k != "streamed"})
    in_memory = decode_tokens(model, EncodedVideo(streamed.kind, streamed.tokens, one_pass))
    assert decoded.shape == in_memory.shape == (3, 20, 32, 32)
    torch.testing.assert_close(decoded, in_memory, rtol=0, atol=1e-4)
    assert torch.equal(decode_tokens(model, loaded), decoded)


def test_cli_streams_long_videos_both_ways(models, video, tmp_path, capsys):
    config, ckpt, _ = models["v1.1"]
    tokens = tmp_path / "long.npz"
    code = cli(["encode", str(video), "-c", str(config), "--ckpt", str(ckpt), "-o", str(tokens), "--height", "32",
                "--width", "32", "--chunk_size", "4", "--read_long_video"])
    assert code == 0 and "fsq tokens (1, 11, 8, 8) uint16 for 20 frames" in capsys.readouterr().out
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "long.mp4")]) == 0
    assert "20 frames at 30 fps" in capsys.readouterr().out
    assert len(decord.VideoReader(str(tmp_path / "long.mp4"))) == 20


def test_non_causal_models_encode_clip_by_clip_even_for_long_videos(tmp_path, video):
    _, _, model = save_tiny_model(tmp_path, causal=False, regularizer="fsq")
    encoded = encode_video(model, video, read_long_video=True, **SIZE)
    assert "streamed" not in encoded.meta["clips"] and encoded.meta["clips"]["layout"] == [[0, 16], [16, 4]]
    assert decode_tokens(model, encoded).shape == (3, 20, 32, 32)


def test_tiled_long_videos_go_tile_major_and_equal_the_tiled_whole_clip(models, video):
    _, _, model = models["v1.1"]
    tiles = dict(tile_size=16, tile_overlap=8)  # 3×3 tiles of the 32-px frames
    streamed = encode_video(model, video, read_long_video=True, chunk_size=4, **tiles, **SIZE)
    one_pass = dict(streamed.meta, clips={k: v for k, v in streamed.meta["clips"].items() if k != "streamed"})
    whole = encode_video(model, video, chunk_size=20, **tiles, **SIZE)  # one 21-frame clip, tiled whole-clip
    assert whole.meta["clips"]["layout"] == [[0, 20]] and whole.meta["clips"]["clip_frames"] == 21
    np.testing.assert_array_equal(streamed.tokens, whole.tokens)
    decoded = torch.cat(list(iter_decoded_frames(model, streamed, **tiles)), dim=1)
    reference = decode_tokens(model, EncodedVideo(streamed.kind, streamed.tokens, one_pass), **tiles)
    assert decoded.shape == reference.shape == (3, 20, 32, 32)
    torch.testing.assert_close(decoded, reference, rtol=0, atol=1e-4)


def test_tiled_encode_and_decode(models, tmp_path, capsys):
    config, ckpt, model = models["kl"]
    big = write_test_video(tmp_path / "big.mp4", num_frames=5, height=48, width=64)  # decord mis-reads 48-wide
    plain = encode_video(model, big, input_height=48, input_width=48)
    tiled = encode_video(model, big, input_height=48, input_width=48, tile_size=32, tile_overlap=16)  # 2×2 tiles
    assert tiled.meta["tiling"] == {"tile_size": 32, "tile_overlap": 16} and plain.meta["tiling"] is None
    assert tiled.tokens.shape == plain.tokens.shape == (1, 4, 9, 12, 12)
    reference = decode_tokens(model, plain)
    for encoded, tiles in ((plain, {"tile_size": 32, "tile_overlap": 16}), (tiled, {})):
        video = decode_tokens(model, encoded, **tiles)
        assert video.shape == reference.shape == (3, 5, 48, 48)
        mse = ((video - reference) ** 2).mean().item()
        assert 15 < 10 * np.log10(4 / mse) < 80  # close, not identical (random weights, 12×12 latents)
    # one tile as large as the frame is no tiling at all
    torch.testing.assert_close(decode_tokens(model, plain, tile_size=48), reference)

    tokens = tmp_path / "t.npz"
    assert cli(["encode", str(big), "-c", str(config), "--ckpt", str(ckpt), "-o", str(tokens), "--height", "48",
                "--width", "48", "--tile_size", "32", "--read_long_video"]) == 0
    assert load_tokens(tokens).meta["tiling"] == {"tile_size": 32, "tile_overlap": 8}
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "t.mp4"), "--tile_size", "32"]) == 0
    assert len(decord.VideoReader(str(tmp_path / "t.mp4"))) == 5
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "u.mp4"), "--tile_size", "30"]) == 1
    assert "--tile_size" in capsys.readouterr().err and not (tmp_path / "u.mp4").exists()
