"""Token files (`python -m vidtok encode|decode`): smallest index type, exact round trip through disk, metadata."""

from __future__ import annotations

import json

import decord
import numpy as np
import pytest
import torch

from tests.video_helpers import read_video_reference, save_tiny_model, split_padded, write_test_video
from vidtok.__main__ import main as cli
from vidtok.inference import reconstruct_clip
from vidtok.tokens import (
    check_model_matches,
    decode_tokens,
    encode_video,
    index_dtype,
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
