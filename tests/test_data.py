"""Preparation with `datasets` (split by file, caching, parallel, streaming) and the collator."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch
from audio_folder import write_audio_folder
from conftest import TINY_MEL_BINS

from whisper_gpt.apps.corpus import audio_files
from whisper_gpt.training.data import (
    EpochShuffleSampler,
    SlidingWindows,
    TrainingCrops,
    WhisperGPTDataCollator,
    _Encoder,
    load_audio,
    prepare_dataset,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    write_audio_folder(root)
    return root


@pytest.fixture(scope="module")
def prepared(folder, tiny_processor, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    train = prepare_dataset(folder, tiny_processor, split="train", cache_dir=cache, progress=False)
    validation = prepare_dataset(folder, tiny_processor, split="validation", cache_dir=cache, progress=False)
    return train, validation, cache


def test_prepare_splits_by_file_and_matches_processor(folder, prepared, tiny_processor):
    train, validation, _ = prepared
    train_paths, validation_paths = set(train["path"]), set(validation["path"])
    assert train_paths and validation_paths and not train_paths & validation_paths
    assert train_paths | validation_paths == {str(path) for path in audio_files(folder)}
    assert train.features["codes"].dtype == "uint16"
    assert train.features["input_features"].dtype == "float16"

    row = train.with_format("numpy")[0]
    audio, rate = load_audio(row["path"])
    expected = tiny_processor(audio=audio, sampling_rate=rate, return_tensors="np")
    assert row["num_frames"] == math.ceil(len(audio) / 320) == row["codes"].shape[0]
    np.testing.assert_array_equal(row["codes"], expected["input_ids"][0].T)
    np.testing.assert_allclose(row["input_features"], expected["input_features"][0], atol=2e-3)
    assert row["input_features"].shape[1] == TINY_MEL_BINS


def test_second_prepare_is_a_cache_hit_and_a_changed_file_is_not(folder, prepared, tiny_processor, monkeypatch):
    train, _, cache = prepared

    def refuse(self, batch, indices):
        raise AssertionError("the cached dataset was encoded again")

    with monkeypatch.context() as patch:
        patch.setattr(_Encoder, "__call__", refuse)
        again = prepare_dataset(folder, tiny_processor, split="train", cache_dir=cache, progress=False)
    assert (
        again["path"] == train["path"]
        and again.cache_files
        == prepare_dataset(folder, tiny_processor, split="train", cache_dir=cache, progress=False).cache_files
    )

    touched = audio_files(folder, split="train")[0]
    stat = touched.stat()
    import os

    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls = []
    original = _Encoder.__call__
    monkeypatch.setattr(
        _Encoder, "__call__", lambda self, batch, indices: calls.append(1) or original(self, batch, indices)
    )
    fresh = prepare_dataset(folder, tiny_processor, split="train", cache_dir=cache, progress=False)
    assert calls and fresh.cache_files != train.cache_files


def test_prepare_from_a_dataset_with_an_audio_column(folder, prepared, tiny_processor, tmp_path):
    train, _, _ = prepared
    files = audio_files(folder, split="train")
    by_path = datasets.Dataset.from_dict({"audio": [str(f) for f in files]}).cast_column("audio", datasets.Audio())
    from_paths = prepare_dataset(by_path, tiny_processor, cache_dir=tmp_path, progress=False)
    assert from_paths["num_frames"] == [train["num_frames"][train["path"].index(str(f))] for f in files]

    audio, rate = load_audio(files[0])
    import soxr

    at_16k = soxr.resample(audio, rate, 16000)
    arrays = datasets.Dataset.from_dict({"sound": [{"array": at_16k, "sampling_rate": 16000}]})
    resampled = prepare_dataset(arrays, tiny_processor, audio_column="sound", cache_dir=tmp_path, progress=False)
    assert resampled["num_frames"] == [math.ceil(len(at_16k) * 24000 / 16000 / 320)]
    with pytest.raises(ValueError, match="no column 'audio'"):
        prepare_dataset(arrays, tiny_processor, cache_dir=tmp_path)


def test_num_proc_and_streaming_give_the_same_rows(folder, prepared, tiny_processor, tmp_path):
    train, _, _ = prepared
    parallel = prepare_dataset(folder, tiny_processor, split="train", cache_dir=tmp_path, num_proc=2, progress=False)
    assert parallel["path"] == train["path"]
    assert parallel["codes"] == train["codes"]

    shards = [
        list(
            prepare_dataset(
                folder, tiny_processor, split="train", cache_dir=tmp_path, streaming=True, rank=rank, world_size=2
            )
        )
        for rank in range(2)
    ]
    paths = [{row["path"] for row in shard} for shard in shards]
    assert paths[0] and paths[1] and not paths[0] & paths[1]
    assert paths[0] | paths[1] == set(train["path"])
    row = next(row for row in shards[0])
    np.testing.assert_array_equal(
        np.asarray(row["codes"]), np.asarray(train[train["path"].index(row["path"])]["codes"])
    )


def _rows(lengths, codebooks=2, mel=3):
    rng = np.random.default_rng(0)
    return [
        {
            "codes": rng.integers(0, 64, (length, codebooks)).astype(np.uint16),
            "input_features": rng.standard_normal((length, mel)).astype(np.float16),
        }
        for length in lengths
    ]


def test_collator_crops_pads_masks_and_labels():
    rows = _rows([5, 12, 300])
    batch = WhisperGPTDataCollator(max_frames=10)(rows)
    assert batch["input_ids"].shape == (3, 2, 10) and batch["input_ids"].dtype == torch.int64
    assert batch["input_features"].shape == (3, 10, 3) and batch["input_features"].dtype == torch.float32
    assert batch["labels"].shape == (3, 2, 10)
    assert batch["attention_mask"].tolist()[0] == [1] * 5 + [0] * 5
    assert batch["attention_mask"].sum(-1).tolist() == [5, 10, 10]
    assert (batch["labels"][0, :, 5:] == -100).all() and (batch["input_ids"][0, :, 5:] == 0).all()
    assert torch.equal(batch["labels"][:, :, :5], batch["input_ids"][:, :, :5])
    assert torch.equal(batch["input_ids"][0, :, :5], torch.from_numpy(rows[0]["codes"].T.astype(np.int64)))
    # A crop is a contiguous stretch of its row, features aligned with codes.
    codes = rows[2]["codes"].astype(np.int64)
    crop = batch["input_ids"][2].T.numpy()
    start = next(s for s in range(291) if np.array_equal(codes[s : s + 10], crop))
    np.testing.assert_array_equal(batch["input_features"][2].numpy(), rows[2]["input_features"][start : start + 10])

    keyed = [{**rows[2], "crop_key": (0, 7)}]
    first = WhisperGPTDataCollator(max_frames=10, seed=1)(keyed)["input_ids"]
    assert torch.equal(first, WhisperGPTDataCollator(max_frames=10, seed=1)(keyed)["input_ids"])
    starts = {
        int(np.argmax([np.array_equal(codes[s : s + 10], c.T.numpy()) for s in range(291)]))
        for c in [
            WhisperGPTDataCollator(max_frames=10, seed=1)([{**rows[2], "crop_key": (0, k)}])["input_ids"][0]
            for k in range(8)
        ]
    }
    assert len(starts) > 1
    padded = WhisperGPTDataCollator(pad_to_multiple_of=8)(_rows([5]))
    assert padded["input_ids"].shape[-1] == 8


def test_collator_rejects_bad_rows():
    collate = WhisperGPTDataCollator()
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="needs 'codes'"):
        collate([{"input_features": np.zeros((3, 2))}])
    with pytest.raises(ValueError, match="do not line up"):
        collate([{"codes": np.zeros((3, 1)), "input_features": np.zeros((4, 2))}])
    with pytest.raises(ValueError, match="at least 2"):
        WhisperGPTDataCollator(max_frames=1)


def test_sliding_windows_score_every_frame_once(prepared):
    train, _, _ = prepared
    windows = SlidingWindows(train, window=40, stride=25)
    collate = WhisperGPTDataCollator(max_frames=40, random_crop=False)
    scored = {}
    for index, (row, start, _, _) in enumerate(windows.windows):
        labels = collate([windows[index]])["labels"][0, 0].numpy()
        for offset in np.flatnonzero(labels[1:] != -100) + 1:  # frames predicted from the window's context
            key = (row, start + int(offset))
            assert key not in scored
            scored[key] = True
    for row, length in enumerate(train["num_frames"]):
        assert {frame for r, frame in scored if r == row} == set(range(1, length))


def test_training_crops_and_epoch_sampler(prepared):
    train, _, _ = prepared
    crops = TrainingCrops(train, max_frames=50)
    assert len(crops) == sum(math.ceil(n / 50) for n in train["num_frames"])
    sampler = EpochShuffleSampler(len(crops), seed=3)
    first = list(sampler)
    assert sorted(index for _, index in first) == list(range(len(crops)))
    assert first == list(sampler)
    sampler.set_epoch(1)
    assert [index for _, index in sampler] != [index for _, index in first]
    assert crops[(1, 4)]["crop_key"] == (1, 4) and "crop_key" not in crops[4]


def test_packed_crops_join_short_files_in_order(prepared):
    train, _, _ = prepared
    lengths = list(train["num_frames"])
    max_frames = max(lengths) + min(lengths)  # room for at least two files in a pack
    packed = TrainingCrops(train, max_frames=max_frames, pack=True)
    assert [row for rows in packed.examples for row in rows] == list(range(len(lengths)))  # every file once, in order
    assert len(packed) < len(lengths)
    rows = train.with_format("numpy")
    for index, members in enumerate(packed.examples):
        assert sum(lengths[row] for row in members) <= max_frames
        example = packed[index]
        np.testing.assert_array_equal(example["codes"], np.concatenate([rows[row]["codes"] for row in members]))
        expected = np.concatenate([rows[row]["input_features"] for row in members])
        np.testing.assert_array_equal(example["input_features"], expected)
    # Packs join neighbours only: a long file between short ones ends the pack before it.
    rows = {"num_frames": [10, 100, 10, 10], "codes": [np.zeros((n, 1), np.int16) for n in (10, 100, 10, 10)]}
    assert TrainingCrops(datasets.Dataset.from_dict(rows), max_frames=50, pack=True).examples == [[0], [1], [1], [2, 3]]
    # A file as long as the crop is never packed; it gives its usual crops.
    alone = TrainingCrops(train, max_frames=min(lengths), pack=True)
    assert len(alone) == sum(math.ceil(n / min(lengths)) for n in lengths)


def test_prepare_command_and_subcommand_registration(folder, prepared, tiny_processor, tmp_path, capsys):
    import argparse

    from whisper_gpt.apps import demo
    from whisper_gpt.training import data, evaluation, loop, model_card

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (data, loop, evaluation, demo, model_card):
        module.register_cli(commands)
    assert parser.parse_args(["train", "audio", "out", "--resume"]).resume == "latest"
    assert parser.parse_args(["evaluate", "model", "audio", "--plot"]).plot == ""
    assert parser.parse_args(["demo", "--minutes", "2"]).minutes == 2.0
    assert parser.parse_args(["push", "model", "user/repo"]).repo_id == "user/repo"

    _, _, cache = prepared
    tiny_processor.save_pretrained(tmp_path / "processor")
    args = parser.parse_args(["prepare", str(folder), str(tmp_path / "processor"), "--cache-dir", str(cache)])
    summary = args.handler(args)
    assert summary["train"]["files"] + summary["validation"]["files"] == len(audio_files(folder))
    assert "validation:" in capsys.readouterr().out
