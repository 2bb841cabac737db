"""Every kind of DATA input (audio folder, save_to_disk folders, datasets with an audio column, prepared datasets,
streams), the split of data without splits, and training on a stream: its examples, its exact resumption, and its
shares between two processes."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from audio_folder import write_audio_folder
from conftest import TINY_MEL_BINS, tiny_config

from whisper_gpt import WhisperGPTFeatureExtractor, WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.apps.corpus import audio_files
from whisper_gpt.training import TrainingConfig, train
from whisper_gpt.training.data import StreamedCrops, TrainingCrops, _Encoder, prepare_dataset
from whisper_gpt.training.evaluation import evaluate_model

TINY = {
    key: value
    for key, value in tiny_config().to_diff_dict().items()
    if key in tiny_config().__init__.__code__.co_varnames
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_processor):
    root = tmp_path_factory.mktemp("sources")
    write_audio_folder(root / "audio")
    tiny_processor.save_pretrained(root / "processor")
    whole = prepare_dataset(root / "audio", tiny_processor, cache_dir=root / "cache", progress=False)
    return root, whole


def _audio_dataset(root: Path) -> datasets.Dataset:
    files = [str(path) for path in audio_files(root / "audio")]
    return datasets.Dataset.from_dict({"audio": files}).cast_column("audio", datasets.Audio())


def _by_name(rows) -> dict[str, np.ndarray]:
    """Codes by file name: datasets that embed their audio keep only its file name as its path."""
    return {Path(row["path"]).name: np.asarray(row["codes"]) for row in rows}


def _no_encoding(monkeypatch) -> None:
    def refuse(self, batch, indices):
        raise AssertionError("prepared rows were encoded again")

    monkeypatch.setattr(_Encoder, "__call__", refuse)


def test_saved_and_in_memory_prepared_datasets_are_used_as_they_are(setup, tiny_processor, tmp_path, monkeypatch):
    _, whole = setup
    whole.save_to_disk(str(tmp_path / "prepared"))
    datasets.DatasetDict({"train": whole.select(range(6)), "test": whole.select(range(6, 10))}).save_to_disk(
        str(tmp_path / "prepared-dict")
    )
    _no_encoding(monkeypatch)
    assert prepare_dataset(whole, tiny_processor) is whole
    saved = prepare_dataset(tmp_path / "prepared", tiny_processor)
    assert list(saved["path"]) == list(whole["path"]) and list(saved["codes"]) == list(whole["codes"])
    test_split = prepare_dataset(tmp_path / "prepared-dict", tiny_processor, split="test")
    assert list(test_split["path"]) == list(whole["path"])[6:]
    streamed = list(prepare_dataset(whole, tiny_processor, streaming=True))
    assert [row["path"] for row in streamed] == list(whole["path"])


def test_saved_audio_datasets_and_streams_give_the_rows_of_the_folder(setup, tiny_processor, tmp_path):
    root, whole = setup
    expected = _by_name(whole)
    audio = _audio_dataset(root)
    audio.save_to_disk(str(tmp_path / "audio-dataset"))
    from_disk = prepare_dataset(tmp_path / "audio-dataset", tiny_processor, cache_dir=tmp_path, progress=False)
    from_stream = prepare_dataset(audio.to_iterable_dataset(num_shards=3), tiny_processor, cache_dir=tmp_path)
    assert isinstance(from_stream, datasets.IterableDataset)
    # A stream as load_dataset(..., streaming=True) gives it, from parquet files.
    audio.to_parquet(str(tmp_path / "audio.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "audio.parquet"), streaming=True)
    from_hub_layout = prepare_dataset(loaded, tiny_processor, split="train", cache_dir=tmp_path)
    for rows in (from_disk, from_stream, from_hub_layout):
        got = _by_name(rows)
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[path], expected[path]) for path in expected)


def test_a_dataset_without_splits_is_split_by_file_like_a_folder(setup, tiny_processor, tmp_path, monkeypatch):
    _, whole = setup
    whole.save_to_disk(str(tmp_path / "prepared"))
    _no_encoding(monkeypatch)
    train_rows = list(prepare_dataset(tmp_path / "prepared", tiny_processor, split="train")["path"])
    validation_rows = list(prepare_dataset(tmp_path / "prepared", tiny_processor, split="validation")["path"])
    assert train_rows and validation_rows and not set(train_rows) & set(validation_rows)
    assert sorted(train_rows + validation_rows) == sorted(whole["path"])
    # The same rule on a stream, which cannot move a row to keep a split non-empty (the map-style split may).
    stream = whole.to_iterable_dataset(num_shards=2)
    streamed = [row["path"] for row in prepare_dataset(stream, tiny_processor, split="validation")]
    assert len(set(streamed) ^ set(validation_rows)) <= 1
    assert not set(streamed) & {row["path"] for row in prepare_dataset(stream, tiny_processor, split="train")}


def test_prepared_data_of_another_processor_is_refused(setup, tiny_processor):
    _, whole = setup
    other = WhisperGPTProcessor(WhisperGPTFeatureExtractor(feature_size=8), tiny_processor.audio_tokenizer)
    with pytest.raises(ValueError, match="prepared with another processor"):
        prepare_dataset(whole, other)
    codebooks = tiny_processor.audio_tokenizer.num_codebooks
    unrecorded = datasets.Dataset.from_dict(  # made elsewhere: no record of its processor, 8 mel bins
        {"codes": [np.zeros((3, codebooks))], "input_features": [np.zeros((3, 8))], "num_frames": [3]},
        features=datasets.Features(
            {
                "codes": datasets.Array2D((None, codebooks), "uint16"),
                "input_features": datasets.Array2D((None, 8), "float16"),
                "num_frames": datasets.Value("int32"),
            }
        ),
    )
    with pytest.raises(ValueError, match=f"input_features of 8 mel bins, the processor makes {TINY_MEL_BINS}"):
        prepare_dataset(unrecorded, tiny_processor)


def test_inputs_that_cannot_work_are_refused_saying_what_to_do(setup, tiny_processor, tmp_path):
    root, whole = setup
    labels = datasets.Dataset.from_dict({"label": [1, 2]})
    labels.save_to_disk(str(tmp_path / "labels"))
    with pytest.raises(ValueError, match=r"no column 'audio' and is not a prepared dataset.*columns: label"):
        prepare_dataset(tmp_path / "labels", tiny_processor)
    with pytest.raises(ValueError, match="splits train: pass split="):
        prepare_dataset(datasets.DatasetDict({"train": whole}), tiny_processor)
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        prepare_dataset(whole, tiny_processor, split="test")
    stream = _audio_dataset(root).to_iterable_dataset()
    with pytest.raises(ValueError, match="a stream cannot be cached"):
        prepare_dataset(stream, tiny_processor, streaming=False)
    with pytest.raises(ValueError, match="pass streaming=True"):
        prepare_dataset(root / "audio", tiny_processor, rank=0, world_size=2)
    with pytest.raises(ValueError, match="the process reading a stream encodes it"):
        prepare_dataset(stream, tiny_processor, num_proc=2)
    with pytest.raises(ValueError, match="The stream is empty"):
        prepare_dataset(datasets.IterableDataset.from_generator(lambda: iter(())), tiny_processor)
    with pytest.raises(FileNotFoundError, match="no data at"):
        prepare_dataset(tmp_path / "missing", tiny_processor)
    (tmp_path / "file.wav").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_dataset(tmp_path / "file.wav", tiny_processor)
    with pytest.raises(ValueError, match="StreamedCrops"):
        TrainingCrops(whole.to_iterable_dataset(), max_frames=48)


def _take(reader: StreamedCrops, count: int) -> None:
    """Read ``count`` examples and stop there, as a training run stopped after its last batch does."""
    list(itertools.islice(iter(reader), count))


@pytest.mark.parametrize(("pack", "max_frames"), [(False, 48), (True, 200)])
def test_streamed_crops_are_the_training_crops_and_resume_after_any_example(setup, pack, max_frames):
    _, whole = setup
    crops = TrainingCrops(whole, max_frames, pack=pack)
    expected = [crops[index]["codes"] for index in range(len(crops))]
    stream = whole.to_iterable_dataset(num_shards=3)
    examples = list(StreamedCrops(stream, max_frames, pack=pack, shard=1))
    assert [example["crop_key"] for example in examples] == [(0, 1, index) for index in range(len(expected))]
    assert all(np.array_equal(got["codes"], want) for got, want in zip(examples, expected, strict=True))
    for cut in range(1, len(examples)):
        reader = StreamedCrops(stream, max_frames, pack=pack, shard=1)
        _take(reader, cut)
        resumed = StreamedCrops(stream, max_frames, pack=pack, shard=1)
        resumed.load_state_dict(json.loads(json.dumps(reader.state_dict())))  # as a checkpoint stores it
        rest = list(resumed)
        assert [example["crop_key"] for example in rest] == [example["crop_key"] for example in examples[cut:]]
        assert all(np.array_equal(a["codes"], b["codes"]) for a, b in zip(rest, examples[cut:], strict=True))


def test_a_stream_shuffled_through_a_buffer_resumes_exactly_by_reading_its_epoch_again(setup):
    _, whole = setup
    stream = whole.to_iterable_dataset(num_shards=3).shuffle(seed=1, buffer_size=4)
    reader = StreamedCrops(stream, 48)
    reader.set_epoch(2)
    examples = list(reader)
    assert reader.replays
    assert [len(example["codes"]) for example in examples] != [len(c["codes"]) for c in TrainingCrops(whole, 48)]
    for cut in (1, 7, len(examples) - 1):
        reader = StreamedCrops(stream, 48)
        reader.set_epoch(2)
        _take(reader, cut)
        resumed = StreamedCrops(stream, 48)
        resumed.load_state_dict(reader.state_dict())
        rest = list(resumed)
        assert len(rest) == len(examples) - cut
        assert all(np.array_equal(a["codes"], b["codes"]) for a, b in zip(rest, examples[cut:], strict=True))


def _config(root: Path, output: str, **overrides) -> TrainingConfig:
    values = {
        "output_dir": str(root / output),
        "preset": "custom",
        "model_overrides": {**TINY, "dropout": 0.1},  # dropout draws from the restored random state
        "max_frames": 48,
        "batch_size": 4,
        "max_steps": 6,
        "warmup_steps": 1,
        "validate": False,
        "save_every": 0,
        "save_final": False,
        "log_every": 1,
        "cache_dir": str(root / "cache"),
        "progress": False,
        "report_to": "none",
        "torch_threads": 1,
        "seed": 3,
    }
    values.update(overrides)
    return TrainingConfig(**values)


def _losses(*summaries) -> list[float]:
    return [record["train/loss"] for summary in summaries for record in summary["history"]]


@pytest.mark.parametrize(
    ("kind", "stop"),
    [("audio stream", 5), ("shuffled prepared stream, packed", 3)],  # 5: right after the last batch of an epoch
)
def test_training_on_a_stream_resumes_exactly(setup, tiny_processor, kind, stop):
    root, whole = setup
    validation = whole.select(range(3)).to_iterable_dataset()  # a stream to validate on is read once, whole
    if kind == "audio stream":
        make, settings = lambda: _audio_dataset(root).to_iterable_dataset(num_shards=2), {}
    else:
        make = lambda: whole.to_iterable_dataset(num_shards=2).shuffle(seed=5, buffer_size=3)  # noqa: E731
        settings = {"pack": True}
    name = kind.split(",")[0].replace(" ", "-")
    data = {"processor": tiny_processor, "validation_dataset": validation}
    # 128-frame crops: the 10 files give 20 examples (fewer packed), so 6 steps of 4 go into a second epoch.
    common = {"validate": True, "eval_every": 0, "eval_window": 48, "max_frames": 128, **settings}
    full = train(_config(root, f"{name}-full", **common), train_dataset=make(), **data)
    first = train(_config(root, f"{name}-split", stop_at_step=stop, **common), train_dataset=make(), **data)
    resumed = train(_config(root, f"{name}-split", resume="latest", **common), train_dataset=make(), **data)
    assert _losses(first, resumed) == _losses(full)
    assert resumed["validation"]["nll"] == full["validation"]["nll"]
    assert full["train_examples"] is None and full["epochs"] == 1.0


def test_a_stream_too_small_for_a_batch_is_refused(setup, tiny_processor):
    root, whole = setup
    config = _config(root, "tiny-stream", max_frames=128, batch_size=8, max_steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match="gave no batch of 8 examples in epoch 0"):
        train(config, processor=tiny_processor, train_dataset=whole.select(range(2)).to_iterable_dataset())


def test_evaluating_a_stream_scores_what_its_dataset_scores(setup):
    _, whole = setup
    model = WhisperGPTForCausalLM(tiny_config())
    on_stream = evaluate_model(model, whole.to_iterable_dataset(num_shards=2), window=64, progress=False)
    assert on_stream["nll"] == evaluate_model(model, whole, window=64, progress=False)["nll"]


# Run by torchrun in each of two processes: trains on a stream of the audio files and records the files it reads.
TWO_PROCESS_RUN = """
import json, os, sys
from pathlib import Path
import datasets
from whisper_gpt import WhisperGPTProcessor
from whisper_gpt.training import TrainingConfig, train

audio, processor, out, overrides = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
files = sorted(str(path) for path in audio.rglob("*.wav"))

def record(row):
    with open(out / f"read-{os.environ['RANK']}.txt", "a") as handle:
        handle.write(row["audio"]["path"] + "\\n")
    return row

rows = datasets.Dataset.from_dict({"audio": files}).cast_column("audio", datasets.Audio())
stream = rows.to_iterable_dataset(num_shards=4).cast_column("audio", datasets.Audio(decode=False)).map(record)
config = TrainingConfig(
    output_dir=str(out / "run"), preset="custom", model_overrides=overrides, max_frames=128, batch_size=4,
    max_steps=6, warmup_steps=1, validate=False, save_every=3, save_final=False, log_every=1, report_to="none",
    progress=False, torch_threads=1, cache_dir=str(out / "cache"),
)
summary = train(config, processor=WhisperGPTProcessor.from_pretrained(processor), train_dataset=stream)
(out / f"summary-{os.environ['RANK']}.json").write_text(json.dumps({k: summary[k] for k in ("steps", "epochs")}))
"""


def test_two_processes_read_disjoint_shares_of_a_stream(setup, tmp_path):
    root, _ = setup
    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_RUN)
    with socket.socket() as probe:  # a free port, so concurrent test runs do not collide
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    arguments = [str(script), str(root / "audio"), str(root / "processor"), str(tmp_path), json.dumps(TINY)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    read = [set((tmp_path / f"read-{rank}.txt").read_text().split()) for rank in range(2)]
    assert read[0] and read[1] and not read[0] & read[1]  # each process encodes only its own files
    assert read[0] | read[1] == {str(path) for path in audio_files(root / "audio")}  # together: all, in 6 steps
    summaries = [json.loads((tmp_path / f"summary-{rank}.json").read_text()) for rank in range(2)]
    assert [summary["steps"] for summary in summaries] == [6, 6]
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000003"
    positions = [json.loads((checkpoint / f"stream_position_{rank}.json").read_text()) for rank in range(2)]
    assert [position["crops"]["index"] for position in positions] == [6, 6]  # 3 steps of 2 examples each
    assert positions[0]["crops"]["stream"] != positions[1]["crops"]["stream"]
