"""Token files (`python -m vidtok encode|decode`): smallest index type, exact round trip through disk, metadata;
streamed long videos equal the in-memory round trip; tiles."""

from __future__ import annotations

import json
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import vidtok.clips
from scripts import inference_reconstruct
from tests.conftest import REPO, tiny_model_config
from tests.video_helpers import read_video_reference, save_tiny_model, split_padded, write_test_video
from vidtok.__main__ import build_parser
from vidtok.__main__ import main as cli
from vidtok.reconstruct import reconstruct_clip
from vidtok.token_file import (
    MODEL_TARGETS,
    EncodedVideo,
    check_model_matches,
    index_dtype,
    load_model_for,
    load_tokens,
    save_tokens,
)
from vidtok.tokens import decode_tokens, encode_video, iter_decoded_frames

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
    from_disk = decode_tokens(load_model_for(loaded, ckpt=ckpt), loaded)
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
    assert torch.equal(decode_tokens(load_model_for(loaded, ckpt=ckpt), loaded), in_memory)
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
    assert meta["model"]["config"] == config.name and meta["model"]["ckpt"] == ckpt.name  # names, never folders
    assert "encoder_config" in meta["model"]["config_yaml"]
    assert meta["video"] == {
        "source": video.name, "source_fps": 30.0, "interval": 3, "fps": 10.0, "num_frames": 7,
        "height": 32, "width": 32,
    }
    assert meta["clips"] == {"chunk_size": 16, "clip_frames": 17, "layout": [[0, 7]]}
    json.dumps(meta)


def test_v11_decoders_extra_frames_are_cut(models, video):
    _, _, model = models["v1.1"]
    encoded = encode_video(model, video, **SIZE)
    assert decode_tokens(model, encoded).shape == (3, 20, 32, 32)


def test_cli_encode_then_decode(models, video, tmp_path, capsys, monkeypatch):
    config, ckpt, _ = models["fsq"]
    monkeypatch.chdir(ckpt.parent)  # the recorded checkpoint name is found in the current folder
    tokens = tmp_path / "out" / "tokens.npz"
    code = cli(["encode", str(video), "-c", str(config), "--ckpt", str(ckpt), "-o", str(tokens),
                "--height", "32", "--width", "32", "--sample_fps", "15"])
    assert code == 0 and "fsq tokens (1, 9, 8, 8) uint16 for 10 frames" in capsys.readouterr().out
    out = tmp_path / "out.mp4"
    assert cli(["decode", str(tokens), "-o", str(out)]) == 0
    reader = decord.VideoReader(str(out))
    assert len(reader) == 10 and reader.get_avg_fps() == pytest.approx(15) and reader[0].shape == (32, 32, 3)


def test_encode_takes_the_scripts_flag_names_and_defaults():
    encode = build_parser().parse_args(["encode", "v.mp4", "-c", "c.yaml", "--ckpt", "m.ckpt", "-o", "t.npz"])
    script = inference_reconstruct.build_parser().parse_args([])
    shared = ("input_height", "input_width", "sample_fps", "num_frames_per_batch", "chunk_size", "read_long_video",
              "tile_size", "tile_overlap", "device", "precision")
    assert {k: getattr(encode, k) for k in shared} == {k: getattr(script, k) for k in shared}
    assert (encode.input_height, encode.input_width, encode.sample_fps) == (256, 256, 30)
    old = build_parser().parse_args(["encode", "v.mp4", "-c", "c", "--ckpt", "m", "-o", "t", "--height", "64",
                                     "--width", "48", "--chunk_size", "8"])
    assert (old.input_height, old.input_width, old.chunk_size) == (64, 48, 8)


def test_a_25_fps_video_sampled_at_30_decodes_at_25(models, tmp_path, capsys):
    config, ckpt, _ = models["fsq"]
    video = write_test_video(tmp_path / "pal.mp4", num_frames=9, fps=25)
    tokens = tmp_path / "pal.npz"
    code = cli(["encode", str(video), "-c", str(config), "--ckpt", str(ckpt), "-o", str(tokens), "--input_height",
                "32", "--input_width", "32", "--sample_fps", "30", "--num_frames_per_batch", "9"])
    assert code == 0 and "uint16 for 9 frames" in capsys.readouterr().out
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "pal_out.mp4"), "--ckpt", str(ckpt)]) == 0
    assert "9 frames at 25 fps" in capsys.readouterr().out
    reader = decord.VideoReader(str(tmp_path / "pal_out.mp4"))
    assert len(reader) == 9 and reader.get_avg_fps() == pytest.approx(25)


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
    moved_ckpt.write_bytes(ckpt.read_bytes())  # a checkpoint of the recorded name beside the token file is found
    assert cli(["decode", str(path), "-o", str(tmp_path / "c.mp4")]) == 0

    kl_config, kl_ckpt, kl_model = models["kl"]
    with pytest.raises(ValueError, match="kind"):
        check_model_matches(kl_model, encoded)
    assert cli(["decode", str(path), "-o", str(tmp_path / "b.mp4"), "-c", str(kl_config), "--ckpt", str(kl_ckpt)]) == 1
    assert "does not fit" in capsys.readouterr().err


# --- bad token files: each is refused by `python -m vidtok decode` with one `error:` line that names it ------------


@pytest.fixture(scope="module")
def token_file(models, video, tmp_path_factory):
    """An FSQ token file of 10 frames (one clip: tokens [1, 9, 8, 8], 512 codes) and the checkpoint it needs."""
    config, ckpt, model = models["fsq"]
    encoded = encode_video(model, video, sample_fps=15, config=config, ckpt=ckpt, **SIZE)
    return save_tokens(encoded, tmp_path_factory.mktemp("tokens") / "good.npz"), ckpt


def rewrite(source, target, tokens=None, edit=None):
    """Copy token file `source` to `target`, replacing its array and/or editing its metadata dict in place."""
    with np.load(source) as archive:
        array, meta = archive["tokens"], json.loads(archive["meta"].item())
    if edit is not None:
        edit(meta)
    np.savez_compressed(target, tokens=array if tokens is None else tokens(array), meta=np.array(json.dumps(meta)))
    return target


def decode_error(capsys, *argv) -> str:
    """Run `python -m vidtok decode ARGV`; it must exit 1 with one `error:` line and no traceback; return that line."""
    code = cli(["decode", *map(str, argv)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def test_missing_damaged_and_foreign_files_are_refused(token_file, tmp_path, capsys):
    good, ckpt = token_file
    out = tmp_path / "o.mp4"
    assert "none.npz" in decode_error(capsys, tmp_path / "none.npz", "-o", out)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.npz"
    text.write_text("nope")
    for path in (truncated, text):
        line = decode_error(capsys, path, "-o", out, "--ckpt", ckpt)
        assert path.name in line and "truncated" in line and "python -m vidtok encode" in line

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, tokens=np.zeros(3), meta=np.array(json.dumps({"format": "other"})))
    assert "foreign.npz' is not a vidtok token file (format 'other')" in decode_error(capsys, foreign, "-o", out)
    assert not out.exists()


def test_token_files_are_loaded_without_pickle(tmp_path, capsys):
    sentinel = tmp_path / "PICKLE_RAN"

    class Payload:
        def __reduce__(self):
            return Path.touch, (sentinel,)

    path = tmp_path / "pickled.npz"
    np.savez(path, tokens=np.array([Payload()], dtype=object), meta=np.array(json.dumps({"format": "vidtok-tokens"})))
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4")
    assert "pickled.npz" in line and "allow_pickle" in line
    assert not sentinel.exists()


@pytest.mark.parametrize("key", ["clips.layout", "clips", "model.codebook_size", "video.fps", "kind"])
def test_missing_metadata_keys_are_named(token_file, tmp_path, capsys, key):
    good, ckpt = token_file

    def drop(meta):
        *parents, last = key.split(".")
        node = meta
        for part in parents:
            node = node[part]
        del node[last]

    path = rewrite(good, tmp_path / "incomplete.npz", edit=drop)
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "incomplete.npz" in line and f"no metadata key {key!r}" in line


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda meta: meta["clips"].update(clip_frames="17"), "'clips.clip_frames' is '17', not a int"),
        (lambda meta: meta["model"].update(causal=1), "'model.causal' is 1, not a bool"),
        (lambda meta: meta["model"].update(spatial_downsample_factor=0), "'model.spatial_downsample_factor' is 0, it "
         "must be positive"),
        (lambda meta: meta["video"].update(fps=-30.0), "'video.fps' is -30.0, it must be positive"),
        (lambda meta: meta.update(version="2"), "has format version 2; this vidtok reads up to 1"),
        (lambda meta: meta["clips"].update(layout=[[0, 18]]), "clip [0, 18] of metadata 'clips.layout'"),
    ],
)
def test_metadata_values_of_the_wrong_type_or_range_are_named(token_file, tmp_path, capsys, edit, named):
    good, ckpt = token_file
    path = rewrite(good, tmp_path / "typed.npz", edit=edit)
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "typed.npz" in line and named in line


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda a: a[0], "uint16 [9, 8, 8] (rank 3)"),  # a clip dimension lost
        (lambda a: a[..., None], "uint16 [1, 9, 8, 8, 1] (rank 5)"),
        (lambda a: a.astype(np.float32), "float32 [1, 9, 8, 8]"),  # latents where indices belong
        (lambda a: a.astype(np.int16), "int16 [1, 9, 8, 8]"),  # signed indices
        (lambda a: a[:, :, :4], "uint16 [1, 9, 4, 8]"),  # not the frame size the metadata gives
        (lambda a: np.concatenate([a, a]), "uint16 [2, 9, 8, 8]"),  # more clips than the layout lists
    ],
)
def test_arrays_that_do_not_fit_the_metadata_are_refused(token_file, tmp_path, capsys, change, named):
    good, ckpt = token_file
    path = rewrite(good, tmp_path / "reshaped.npz", tokens=change)
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "reshaped.npz" in line and named in line and "[1, T', 8, 8] (rank 4: 1 clip(s) of 32x32" in line


def test_kl_latents_with_other_channels_are_refused(models, video, tmp_path, capsys):
    config, ckpt, model = models["kl"]
    encoded = encode_video(model, video, sample_fps=15, config=config, ckpt=ckpt, **SIZE)
    path = save_tokens(EncodedVideo(encoded.kind, encoded.tokens[:, :3], encoded.meta), tmp_path / "kl.npz")
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "kl.npz" in line and "float32 [1, 3, 9, 8, 8]" in line and "latents [1, 4, T', 8, 8]" in line


def test_indices_outside_the_codebook_are_refused(token_file, tmp_path, capsys):
    good, ckpt = token_file

    def corrupt(a):
        a = a.copy()
        a[0, 3, 2, 1] = 600
        return a

    path = rewrite(good, tmp_path / "range.npz", tokens=corrupt)
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "range.npz" in line and "reach 600" in line and "codebook of 512 codes" in line


def test_a_model_that_does_not_fit_the_file_is_refused(models, token_file, tmp_path, capsys):
    good, ckpt = token_file
    kl_config, kl_ckpt, _ = models["kl"]
    line = decode_error(capsys, good, "-o", tmp_path / "o.mp4", "-c", kl_config, "--ckpt", kl_ckpt)
    assert "good.npz" in line and "kind: file 'fsq', model 'kl'" in line and "--config" in line

    small = tiny_model_config(regularizer="fsq")  # same network, a codebook of 8·8·5 = 320 codes
    small["params"]["regularizer_config"]["params"]["levels"] = [8, 8, 5]
    small_config = tmp_path / "small.yaml"
    OmegaConf.save(OmegaConf.create({"model": small}), small_config)
    line = decode_error(capsys, good, "-o", tmp_path / "o.mp4", "-c", small_config, "--ckpt", ckpt)
    assert "codebook_size: file 512, model 320" in line

    fewer = rewrite(good, tmp_path / "frames.npz", tokens=lambda a: a[:, :5])  # 5 latent frames for a 17-frame clip
    line = decode_error(capsys, fewer, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "frames.npz" in line and "5 latent frames per clip in the file, the model makes 9 of 17" in line


# --- the stored config is data: only vidtok's own model classes are built from it ------------------------------------


def test_model_targets_are_the_official_configs_model_classes():
    targets = set()
    for path in REPO.glob("configs/**/*.yaml"):
        section = OmegaConf.to_container(OmegaConf.load(path).model)
        targets.update(target for node in _config_nodes(section) if (target := node.get("target")))
    assert targets == MODEL_TARGETS


def _config_nodes(node):
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from _config_nodes(child)


@pytest.mark.parametrize("where", ["encoder_config", "regularizer_config"])
def test_a_stored_config_naming_other_code_is_refused_and_nothing_runs(token_file, tmp_path, capsys, where):
    good, ckpt = token_file
    sentinel = tmp_path / "SENTINEL"

    def inject(meta):
        config = OmegaConf.create(meta["model"]["config_yaml"])
        config.model.params[where] = {"target": "os.system", "params": {"command": f"touch {sentinel}"}}
        meta["model"]["config_yaml"] = OmegaConf.to_yaml(config)

    path = rewrite(good, tmp_path / "evil.npz", edit=inject)
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "evil.npz" in line and "'os.system'" in line and f"model.params.{where}" in line and "--config" in line
    assert not sentinel.exists() and not (tmp_path / "o.mp4").exists()

    # the model's own config is taken instead of the stored one, which is never read
    config = ckpt.with_suffix(".yaml")
    assert cli(["decode", str(path), "-o", str(tmp_path / "o.mp4"), "-c", str(config), "--ckpt", str(ckpt)]) == 0
    assert not sentinel.exists()


def test_interpolated_and_unreadable_stored_configs_are_refused(token_file, tmp_path, capsys, monkeypatch):
    good, ckpt = token_file
    monkeypatch.setenv("VIDTOK_TEST_TARGET", "os.system")

    def interpolate(meta):  # the check sees targets after interpolation
        meta["model"]["config_yaml"] += "  extra:\n    target: ${oc.env:VIDTOK_TEST_TARGET}\n"

    path = rewrite(good, tmp_path / "env.npz", edit=interpolate)
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "'os.system' at 'model.extra'" in line

    path = rewrite(good, tmp_path / "garbled.npz", edit=lambda meta: meta["model"].update(config_yaml="model: [1, "))
    line = decode_error(capsys, path, "-o", tmp_path / "o.mp4", "--ckpt", ckpt)
    assert "garbled.npz" in line and "cannot be read" in line and "--config" in line


def test_the_stored_config_is_the_model_section_alone_and_no_folder_is_recorded(token_file, video):
    path, ckpt = token_file
    meta = load_tokens(path).meta
    assert list(OmegaConf.create(meta["model"]["config_yaml"])) == ["model"]
    text = json.dumps(meta)
    assert str(ckpt.parent) not in text and str(video.parent) not in text and "/" not in text


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
    real_read = vidtok.clips.read_frames
    monkeypatch.setattr(
        vidtok.clips, "read_frames", lambda r, idx, p: read_sizes.append(len(idx)) or real_read(r, idx, p)
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
    pieces = list(iter_decoded_frames(load_model_for(loaded, ckpt=ckpt), loaded))
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
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "long.mp4"), "--ckpt", str(ckpt)]) == 0
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
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "t.mp4"), "--ckpt", str(ckpt), "--tile_size", "32"]) == 0
    assert len(decord.VideoReader(str(tmp_path / "t.mp4"))) == 5
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "u.mp4"), "--ckpt", str(ckpt), "--tile_size", "30"]) == 1
    assert "--tile_size" in capsys.readouterr().err and not (tmp_path / "u.mp4").exists()


def test_files_written_before_the_model_section_alone_was_stored_still_decode(token_file, tmp_path, capsys,
                                                                              monkeypatch):
    """Older files stored the whole training config (data and trainer targets, interpolations) and absolute paths:
    only the model section is read, and only the checkpoint's file name is looked up."""
    good, ckpt = token_file

    def old_style(meta):
        node = tiny_model_config(regularizer="fsq")
        node["params"]["decoder_config"]["params"] = "${model.params.encoder_config.params}"
        data = {"target": "vidtok.data.datamodule.DataModuleFromConfig", "params": {"batch_size": 1}}
        meta["model"]["config_yaml"] = OmegaConf.to_yaml(OmegaConf.create({"model": node, "data": data}))
        meta["model"]["ckpt"] = str(Path("/elsewhere/checkpoints") / ckpt.name)

    path = rewrite(good, tmp_path / "old.npz", edit=old_style)
    monkeypatch.chdir(ckpt.parent)
    assert cli(["decode", str(path), "-o", str(tmp_path / "old.mp4")]) == 0
    assert "10 frames at 15 fps" in capsys.readouterr().out


def test_decode_finds_the_recorded_checkpoint_in_the_repositorys_checkpoints_folder(models, video, tmp_path, capsys,
                                                                                      monkeypatch):
    config, ckpt, _ = models["fsq"]
    repo = tmp_path / "repo"
    (repo / "checkpoints").mkdir(parents=True)
    (repo / "checkpoints" / ckpt.name).write_bytes(ckpt.read_bytes())
    tokens = tmp_path / "elsewhere" / "tokens.npz"
    assert cli(["encode", str(video), "-c", str(config), "--ckpt", str(ckpt), "-o", str(tokens),
                "--height", "32", "--width", "32"]) == 0
    monkeypatch.chdir(repo)  # the file is neither beside the tokens nor in the current folder, only in checkpoints/
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "a.mp4")]) == 0
    (repo / "checkpoints" / ckpt.name).unlink()
    capsys.readouterr()
    assert cli(["decode", str(tokens), "-o", str(tmp_path / "b.mp4")]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt.name!r}" in err and "--ckpt" in err and "Traceback" not in err
