"""Reading what `python -m vidtok encode-dataset` writes: WebDataset shards of tokens, one sample per video.

A sample is ``{key}.tokens.npy`` (what a token file's ``tokens`` array holds: FSQ indices ``[N, T', H', W']`` in
the token-file dtype, or KL posterior means ``[N, C, T', H', W']``, N clips) and ``{key}.json`` (a token file's
metadata; its model paths are relative to the folder of the shards, its video source is the input's path relative
to the data folder, or ``shard#key``). :class:`TokenShardDataset` serves them to a
generative model's training loop, whole or as fixed windows of latent frames; :func:`read_token_sample` gives one
sample as an :class:`~vidtok.token_file.EncodedVideo` for decoding.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from vidtok.data.shards import shard_urls
from vidtok.errors import VidTokError
from vidtok.token_file import EncodedVideo, check_tokens

TOKENS = "tokens.npy"
META = "json"


def decode_token_sample(sample: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """``(tokens, meta)`` from a raw tar sample.

    Raises:
        VidTokError: the sample lacks one of its two files (an interrupted write).
    """
    missing = [ext for ext in (TOKENS, META) if ext not in sample]
    if missing:
        raise VidTokError(f"token sample {sample.get('__url__')}#{sample['__key__']} has no .{' or .'.join(missing)}"
                          " (written by an interrupted run?); run encode-dataset again to redo it")
    tokens = np.load(io.BytesIO(sample[TOKENS]), allow_pickle=False)
    return tokens, json.loads(sample[META])


def iter_token_samples(urls: Sequence[str], split: bool = False) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """``(key, tokens, meta)`` of every complete sample in `urls`, in order; with `split`, only this rank's and
    DataLoader worker's share of the shards. Incomplete samples and the unreadable tail of a truncated shard are
    passed over with a warning."""
    if not urls:
        return
    stages: list[Any] = [wds.SimpleShardList(list(urls))]
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [wds.tarfile_to_samples(handler=wds.warn_and_continue),
               wds.map(lambda s: (s["__key__"], *decode_token_sample(s)), handler=wds.warn_and_continue)]
    yield from wds.DataPipeline(*stages)


def latent_frames(tokens: np.ndarray, kind: str) -> np.ndarray:
    """A sample's clips joined along time: FSQ ``[N, T', H', W'] -> [N·T', H', W']``, KL
    ``[N, C, T', H', W'] -> [C, N·T', H', W']``."""
    if kind == "fsq":
        return tokens.reshape(-1, *tokens.shape[2:])
    return np.concatenate(list(tokens), axis=1)


class TokenShardDataset(IterableDataset):
    """The samples of `encode-dataset`'s output shards, split across ranks and DataLoader workers.

    Args:
        urls: the shards (``OUT/part-*.tar`` files as a list, or a brace pattern).
        window: ``None`` yields ``(tokens, meta)`` per video (tokens a tensor shaped as stored). An int yields
            ``{"tokens": window, "key": str, "start": int}`` for every full window of `window` consecutive latent
            frames (see :func:`latent_frames`): FSQ ``[window, H', W']`` int64, KL ``[C, window, H', W']`` float32.
        stride: latent frames between window starts (default: `window`, no overlap).
    """

    def __init__(self, urls: str | Sequence[str], window: int | None = None, stride: int | None = None) -> None:
        super().__init__()
        if window is not None and window < 1 or stride is not None and stride < 1:
            raise VidTokError(f"window and stride must be >= 1, got window={window}, stride={stride}")
        self.urls = shard_urls(urls)
        self.window = window
        self.stride = stride or window

    def __iter__(self) -> Iterator[Any]:
        for key, tokens, meta in iter_token_samples(self.urls, split=True):
            if self.window is None:
                yield torch.from_numpy(tokens.astype(np.int64 if meta["kind"] == "fsq" else np.float32)), meta
            else:
                yield from self._windows(key, tokens, meta)

    def _windows(self, key: str, tokens: np.ndarray, meta: dict[str, Any]) -> Iterable[dict[str, Any]]:
        fsq = meta["kind"] == "fsq"
        frames = latent_frames(tokens.astype(np.int64 if fsq else np.float32), meta["kind"])
        length = frames.shape[0 if fsq else 1]
        for start in range(0, length - self.window + 1, self.stride):
            part = frames[start : start + self.window] if fsq else frames[:, start : start + self.window]
            yield {"tokens": torch.from_numpy(np.ascontiguousarray(part)), "key": key, "start": start}


def read_token_sample(url: str, key: str) -> EncodedVideo:
    """The sample `key` of the shard `url` as an :class:`EncodedVideo`, checked like a token file
    (:func:`vidtok.token_file.check_tokens`); its recorded checkpoint is looked for beside the shard.

    Raises:
        VidTokError: no such shard or no such key in it (the message lists a few keys it has).
        TokenFileError: the sample's metadata and tokens do not describe each other.
    """
    if not os.path.isfile(url):
        raise VidTokError(f"token shard {url!r} does not exist; give a part-*.tar file written by encode-dataset")
    keys = []
    for found, tokens, meta in iter_token_samples([url]):
        if found == key:
            encoded = EncodedVideo(kind=meta["kind"], tokens=tokens, meta=meta, path=Path(url))
            check_tokens(encoded)
            return encoded
        keys.append(found)
    raise VidTokError(f"no sample {key!r} in {url!r} (it has {len(keys)}: {', '.join(keys[:5])}"
                      f"{' ...' if len(keys) > 5 else ''}); pass one of them with --key")
