"""Audio -> aligned codes and causal log-mel frames with `datasets`, and the batches the model trains on.

Three steps:

1. `build_processor`: fit a locally built EnCodec's encoder to the log-mel of training audio and calibrate its
   codebooks (k-means; `whisper_gpt.training.codec_fitting`), and wrap it with the causal log-mel feature
   extractor. Skip it when a trained codec is available (`WhisperGPTProcessor.from_pretrained`).
2. `prepare_dataset`: audio -> a `datasets.Dataset` with one row per file:

   * ``codes``: (T, K) uint16 codec codes (frame-major, so `datasets` can store a variable T),
   * ``input_features``: (T, M) float16 causal log-mel frames, aligned 1:1 with the codes,
   * ``num_frames``: T, and ``path``: where the audio came from.

   It takes a folder of audio files, a built corpus (`whisper_gpt.apps.corpus`), a folder written by
   ``save_to_disk``, a `datasets.Dataset` with an audio column, a streamed `datasets.IterableDataset`
   (``load_dataset(..., streaming=True)``), or any of these already prepared (returned as they are, once checked
   against the processor). The result is saved with `Dataset.save_to_disk` under a fingerprint of the processor
   (feature extractor settings, codec weights, bandwidth) and of the inputs (paths, sizes, modification times; or
   the input dataset's own fingerprint), so a second run loads it memory-mapped instead of encoding again. Audio is
   decoded with soundfile, never torchcodec. A stream (or ``streaming=True``) instead gives a lazily encoded
   `IterableDataset` (nothing is stored), split between processes with `datasets.distributed.split_dataset_by_node`.
3. `WhisperGPTDataCollator`: rows -> padded model inputs, with fixed-length random crops for training;
   `TrainingCrops` + `EpochShuffleSampler` make those crops reproducible (for exact resumption), `StreamedCrops`
   makes the same examples from a stream with a position to resume from, and `SlidingWindows` cuts whole files
   into evaluation windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ..feature_extraction_whisper_gpt import (
    AudioInputError,
    WhisperGPTFeatureExtractor,
    check_sampling_rate,
    normalize_audio_batch,
)
from ..processing_whisper_gpt import WhisperGPTProcessor
from ..tokenization_whisper_gpt import WhisperGPTAudioTokenizer, small_encodec_config
from .codec_fitting import calibrate, fit_encoder_to_mel, fit_mel_exemplars, initialize_encoder

logger = logging.getLogger(__name__)

# Bumped whenever the layout of a prepared dataset changes, so old caches are never read as new ones.
PREPARED_FORMAT = 1
PREPARED_COLUMNS = ("path", "codes", "input_features", "num_frames")
# The splits of data that has none of its own (a folder, a single dataset): a file or row is in validation when a
# hash of its path falls below VALIDATION_FRACTION (`whisper_gpt.apps.corpus` splits plain folders by the same rule).
SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.1
# What `save_to_disk` writes at the top of a Dataset's or a DatasetDict's folder.
SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json")
ACCEPTED_FOLDERS = "a folder of audio files, a built corpus, or a dataset saved with save_to_disk"
ACCEPTED_DATA = (
    "an audio folder, a built corpus, a folder written by save_to_disk, or a datasets.Dataset, DatasetDict, "
    "IterableDataset or IterableDatasetDict with an audio column or already prepared"
)
DEFAULT_CACHE_DIR = Path(os.environ.get("HF_DATASETS_CACHE", Path.home() / ".cache" / "huggingface" / "datasets"))
# What one unreadable or invalid audio file raises: soundfile's decode/open errors and our own check of the audio.
# Every step that walks over files (calibration, encoding, evaluation data) skips such a file with a warning that
# names it; any other exception (out of memory, a bug) propagates.
UNREADABLE_AUDIO_ERRORS = (sf.SoundFileError, AudioInputError)
# Temporary folders of `prepare_dataset` carry this tag, the host and the process id, so a later run can tell the
# leftovers of a killed run (process gone) from the work of one still running.
_SCRATCH_TAG = "whisper-gpt-partial"
_SCRATCH_PATTERN = re.compile(rf"^\..*\.{_SCRATCH_TAG}\.(?P<host>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+$")
# Leftovers of another host are removed after this long (its processes cannot be checked from here).
_SCRATCH_MAX_AGE_S = 7 * 24 * 3600


def load_audio(source: str | os.PathLike | bytes | dict) -> tuple[np.ndarray, int]:
    """Decode one audio file with soundfile.

    Args:
        source: a path, the file's bytes, or a `datasets` audio value: ``{"path": ..., "bytes": ...}`` (as
            ``Audio(decode=False)`` gives it) or ``{"array": ..., "sampling_rate": ...}`` (already decoded).
    Returns:
        (samples (N,) or (N, channels) float32, sampling rate).
    Raises ``soundfile.SoundFileError`` for a file it cannot decode and `AudioInputError` (a ``ValueError``) for an
    audio value without audio or with an implausible sampling rate (`check_sampling_rate`): together
    ``UNREADABLE_AUDIO_ERRORS``.
    """
    if isinstance(source, dict):
        if source.get("array") is not None:
            if source.get("sampling_rate") is None:
                raise AudioInputError("An audio value with an 'array' needs its 'sampling_rate'.")
            return np.asarray(source["array"], dtype=np.float32), check_sampling_rate(source["sampling_rate"])
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path") is not None:
            source = source["path"]
        else:
            raise AudioInputError(f"Audio value holds neither 'array', 'bytes' nor 'path': keys {sorted(source)}.")
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    data, rate = sf.read(handle, dtype="float32", always_2d=False)
    return data, check_sampling_rate(rate, "the file's sampling rate")


def _readable_clips(
    items: Iterable[str | os.PathLike | np.ndarray | dict],
    sampling_rate: int | None,
    target_sampling_rate: int,
    skipped: list,
) -> Iterator[np.ndarray]:
    """Yield each item (a path, an array at ``sampling_rate`` or a `datasets` audio value, see `load_audio`) as a
    float32 mono clip at ``target_sampling_rate``; skip unreadable ones.

    An item that raises one of ``UNREADABLE_AUDIO_ERRORS`` is logged as a warning with its name (the path, or
    ``calibration_audio[i]`` for an array or an audio value without a path) and appended to ``skipped``; any other
    error propagates.
    """
    for index, item in enumerate(items):
        is_array = isinstance(item, np.ndarray)
        name = _describe(item, index)
        if name.startswith("row "):
            name = f"calibration_audio[{index}]"
        try:
            audio, rate = (item, sampling_rate) if is_array else load_audio(item)
            clip = normalize_audio_batch(audio, rate, target_sampling_rate)[0]
        except UNREADABLE_AUDIO_ERRORS as error:
            logger.warning("skipped %s: %s", name, error)
            skipped.append(name)
            continue
        yield clip


def build_processor(
    calibration_audio: Iterable[str | os.PathLike | np.ndarray | dict],
    sampling_rate: int | None = None,
    *,
    num_mel_bins: int = 80,
    codebook_size: int = 1024,
    bandwidth: float = 6.0,
    num_codebooks: int | None = None,
    max_frames: int = 100_000,
    iterations: int = 20,
    encoder_steps: int = 400,
    encoder_seconds: float = 600.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[WhisperGPTProcessor, dict[str, Any]]:
    """Build a small local 24 kHz EnCodec, fit it to ``calibration_audio``, wrap it in a processor.

    Use this where no trained codec can be downloaded. The steps on the audio (`whisper_gpt.training.codec_fitting`):
    `initialize_encoder` (data-driven scaling of the random encoder), `fit_encoder_to_mel` (``encoder_steps`` steps
    on the first ``encoder_seconds`` of audio, so codes describe each frame's spectrum), then `calibrate` (k-means
    codebooks), then `fit_mel_exemplars` (one real log-mel frame per codebook-0 code, from the same first
    ``encoder_seconds``). The codes are good for training and comparing language models; the decoder
    stays untrained, so listen through the exemplar frames (``generate(mel_source="exemplar")``, the default for
    such a codec) and Griffin-Lim instead (see `small_encodec_config`).

    Args:
        calibration_audio: audio file paths, arrays at ``sampling_rate``, or `datasets` audio values (see
            `load_audio`; `dataset_audio` gives those of a dataset). A file that cannot be read or holds no
            valid audio (``UNREADABLE_AUDIO_ERRORS``) is skipped with a warning naming it; a ValueError is raised
            only when none is readable.
        sampling_rate: rate of the arrays in Hz, 1 kHz to 384 kHz (`check_sampling_rate`); required for arrays,
            ignored for paths, whose rate comes from the file.
        num_mel_bins: mel bins of the feature extractor; must equal the model config's ``num_mel_bins``.
        codebook_size: codes per codebook (the model's ``codebook_size``).
        bandwidth: codec bandwidth in kbps; 1.5 gives 2 codebooks, 6.0 gives 8.
        num_codebooks: codebooks to calibrate (default: all used at ``bandwidth``).
        max_frames, iterations: k-means sample size (75 frames per second of audio) and iterations.
        encoder_steps: steps of `fit_encoder_to_mel`; 0 keeps the random (initialised) encoder.
        encoder_seconds: audio that the encoder fit and the mel exemplars read (the start of the calibration audio).
        seed: seeds the codec's random weights, the encoder fit and the k-means.
    Returns:
        (processor, calibration statistics from `calibrate`, plus those of the encoder
        fit under ``"encoder_fit"`` when it ran and of `fit_mel_exemplars` under ``"mel_exemplars"``, and the names
        of the skipped items under ``"skipped"``).
    """
    from transformers import EncodecModel

    if sampling_rate is not None:
        sampling_rate = check_sampling_rate(sampling_rate)
    if encoder_steps < 0:
        raise ValueError(f"encoder_steps must be 0 (no encoder fit) or positive, got {encoder_steps}.")

    # The codec's encoder weights are random; seeding makes the same call build the same codec.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        codec = EncodecModel(small_encodec_config(codebook_size=codebook_size))
    tokenizer = WhisperGPTAudioTokenizer(codec, bandwidth=bandwidth, decoder_trained=False)
    feature_extractor = WhisperGPTFeatureExtractor(feature_size=num_mel_bins)

    def checked(items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            if isinstance(item, np.ndarray) and sampling_rate is None:
                raise ValueError("build_processor got audio arrays without their sampling_rate; pass sampling_rate=.")
            yield item

    skipped: list[str] = []
    # calibrate() takes one sampling rate for everything, so files are brought to the codec's rate first.
    resampled = _readable_clips(checked(calibration_audio), sampling_rate, tokenizer.sampling_rate, skipped)
    head, seconds = [], 0.0  # the first encoder_seconds of audio: the encoder fit and the mel exemplars read it
    for clip in resampled:
        head.append(clip)
        seconds += len(clip) / tokenizer.sampling_rate
        if seconds >= encoder_seconds:
            break
    if not head:
        if skipped:
            raise ValueError(
                f"build_processor could read none of its {len(skipped)} calibration files (each skipped with a "
                f"warning), e.g. {', '.join(skipped[:3])}. Pass readable audio files."
            )
        raise ValueError("build_processor got no calibration audio.")
    fit_stats = {}
    if encoder_steps > 0:
        initialize_encoder(tokenizer, head)
        fit_stats = fit_encoder_to_mel(
            tokenizer,
            head,
            feature_extractor,
            steps=encoder_steps,
            max_seconds=encoder_seconds,
            seed=seed,
            progress=progress,
        )
    stats = calibrate(
        tokenizer,
        itertools.chain(head, resampled),
        sampling_rate=tokenizer.sampling_rate,
        max_frames=max_frames,
        iterations=iterations,
        seed=seed,
        num_codebooks=num_codebooks,
    )
    if fit_stats:
        stats["encoder_fit"] = fit_stats
    stats["mel_exemplars"] = fit_mel_exemplars(tokenizer, head, feature_extractor, max_seconds=encoder_seconds)
    stats["skipped"] = skipped
    if skipped:
        logger.warning("calibration skipped %d unreadable files: %s", len(skipped), ", ".join(skipped))
    processor = WhisperGPTProcessor(feature_extractor, tokenizer)
    return processor, stats


def processor_fingerprint(processor: WhisperGPTProcessor) -> str:
    """A hash of everything in a processor that changes the codes or features it produces."""
    digest = hashlib.sha256()
    settings = processor.feature_extractor.to_dict()
    # Bookkeeping that saving adds, not settings: a saved and a fresh processor must share their cache.
    for key in ("processor_class", "auto_map"):
        settings.pop(key, None)
    settings["bandwidth"] = processor.audio_tokenizer.bandwidth
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(processor.audio_tokenizer.codec.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _code_dtype(codebook_size: int) -> str:
    return "uint16" if codebook_size <= 2**16 else "int32"


def prepared_features(processor: WhisperGPTProcessor):
    """The `datasets.Features` of a prepared dataset made with ``processor``."""
    from datasets import Array2D, Features, Value

    tokenizer = processor.audio_tokenizer
    return Features(
        {
            "path": Value("string"),
            "codes": Array2D(shape=(None, tokenizer.num_codebooks), dtype=_code_dtype(tokenizer.codebook_size)),
            "input_features": Array2D(shape=(None, processor.feature_extractor.feature_size), dtype="float16"),
            "num_frames": Value("int32"),
        }
    )


class _Encoder:
    """The `datasets.map` function: a batch of audio references -> codes and features.

    It carries the processor's folder rather than the processor, because EnCodec's weight-normalised layers
    cannot be pickled into `num_proc` worker processes; each worker loads the processor once.
    """

    def __init__(self, processor_dir: str, audio_column: str, processor: WhisperGPTProcessor | None = None):
        self.processor_dir = processor_dir
        self.audio_column = audio_column
        self._processor = processor

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_processor": None}

    @property
    def processor(self) -> WhisperGPTProcessor:
        if self._processor is None:
            # One thread per worker: several workers with several threads each oversubscribe the cores.
            torch.set_num_threads(1)
            self._processor = WhisperGPTProcessor.from_pretrained(self.processor_dir)
        return self._processor

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in PREPARED_COLUMNS}
        for value, row in zip(batch[self.audio_column], indices, strict=True):
            name = _describe(value, row)
            try:
                audio, rate = load_audio(value)
                inputs = self.processor(audio=audio, sampling_rate=rate, return_tensors="np")
            except UNREADABLE_AUDIO_ERRORS as error:
                # One unreadable or empty file should not cost the user the whole corpus; out-of-memory errors
                # and bugs are no property of a file and propagate.
                logger.warning("skipped %s: %s", name, error)
                continue
            out["path"].append(name)
            out["codes"].append(inputs["input_ids"][0].T)  # (T, K)
            out["input_features"].append(inputs["input_features"][0].astype(np.float16))  # (T, M)
            out["num_frames"].append(inputs["input_ids"].shape[-1])
        return out


def _describe(value: Any, row: int) -> str:
    """Where a row's audio came from: its file path, else its row number in the input dataset."""
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {row}"


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) for ``text`` (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _row_key(value: Any) -> str:
    """What decides a dataset row's split: its audio's path, else a hash of its audio (or of its codes, for a
    prepared row without a path), so a row keeps its split however the rows are ordered or sharded."""
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    content = value
    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        content = value["bytes"] if value.get("bytes") is not None else value.get("array")
    if isinstance(content, (bytes, bytearray)):
        data = bytes(content)
    else:  # float32 whatever the input's format, so a list and an array of the same values agree
        data = np.ascontiguousarray(np.asarray(content, dtype=np.float32)).tobytes()
    return hashlib.sha256(data).hexdigest()


def _split_of(key: str) -> str:
    return "validation" if _unit_hash(key) < VALIDATION_FRACTION else "train"


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r} for a dataset without splits: expected one of {', '.join(SPLITS)}, or None for "
            "all rows (a DatasetDict's splits are chosen by their own names)."
        )


def _split_rows(rows: Any, split: str, key_column: str) -> Any:
    """The rows of a map-style dataset in ``split``, chosen as a plain folder's files are (`_row_key`): a row is in
    validation when the hash of its key falls in the lowest ``VALIDATION_FRACTION``; with two or more rows each split
    gets at least one."""
    _check_split_name(split)
    scores = []
    for batch in rows.select_columns([key_column]).iter(batch_size=256):
        scores.extend(_unit_hash(_row_key(value)) for value in batch[key_column])
    splits = ["validation" if score < VALIDATION_FRACTION else "train" for score in scores]
    if len(scores) >= 2 and "validation" not in splits:
        splits[int(np.argmin(scores))] = "validation"
    if len(scores) >= 2 and "train" not in splits:
        splits[int(np.argmax(scores))] = "train"
    chosen = [index for index, name in enumerate(splits) if name == split]
    if not chosen:
        raise ValueError(
            f"The dataset has {len(scores)} row(s), none of them in the {split!r} split: give more rows, or split=None "
            "to use all of them."
        )
    return rows.select(chosen)


@dataclass
class _Source:
    """The input of `prepare_dataset`, resolved.

    ``rows`` (a `datasets.Dataset` or `IterableDataset`) hold audio references in ``column``, or are already prepared
    (``column`` None); ``columns`` are their column names; ``fingerprint`` identifies map-style rows (None for a
    stream, which has none); ``name`` names them in messages and cache folders.
    """

    rows: Any
    column: str | None
    columns: list[str]
    fingerprint: str | None
    name: str

    @property
    def streamed(self) -> bool:
        import datasets

        return isinstance(self.rows, datasets.IterableDataset)


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return any((Path(path) / name).is_file() for name in SAVED_DATASET_FILES)


def _load_saved(path: Path) -> Any:
    """`datasets.load_from_disk`, refusing first what it cannot load: a dataset (or a split) saved without rows."""
    import datasets

    folders = [path]
    if (path / "dataset_dict.json").is_file():
        folders = [path / name for name in json.loads((path / "dataset_dict.json").read_text()).get("splits", [])]
    for folder in folders:
        state = folder / "state.json"
        if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
            raise ValueError(f"{folder} holds a dataset without rows: there is no audio to use.")
    return datasets.load_from_disk(str(path))


def _audio_column(columns: list[str], audio_column: str, what: str) -> str | None:
    """``audio_column``, or None for rows that are already prepared; refuses rows that are neither."""
    if set(PREPARED_COLUMNS[1:]) <= set(columns):
        return None
    if audio_column in columns:
        return audio_column
    raise ValueError(
        f"{what} has no column {audio_column!r} and is not a prepared dataset (which has the columns "
        f"{', '.join(PREPARED_COLUMNS[1:])}); its columns: {', '.join(columns) or 'none'}. Pass audio_column= the "
        "column that holds the audio."
    )


def _open_source(data: Any, split: str | None, audio_column: str, rank: int = 0, world_size: int = 1) -> _Source:
    """Resolve any input that `prepare_dataset` accepts (see there) into a `_Source` holding ``split``; a stream
    is first cut to process ``rank``'s share of ``world_size``, so this process reads nothing of the others'."""
    import datasets

    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"no data at {path}: expected {ACCEPTED_FOLDERS}")
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is a file, not {ACCEPTED_FOLDERS}")
        if is_saved_dataset(path):
            source = _open_source(_load_saved(path), split, audio_column, rank, world_size)
            return dataclasses.replace(source, name=f"{path.resolve().name}-{split or 'all'}")
        from ..apps.corpus import audio_files

        files = audio_files(path, split=split)
        if not files:
            raise ValueError(f"{path} holds no audio files" + (f" in split {split!r}" if split else "") + ".")
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        name = f"{path.resolve().name}-{split or 'all'}"
        rows = datasets.Dataset.from_dict({"file": [str(f) for f in files]})
        return _Source(rows, "file", ["file"], digest.hexdigest(), name)
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None or split not in data:
            problem = "pass split= one of them" if split is None else f"it has no split {split!r}"
            raise ValueError(f"The dataset has the splits {', '.join(sorted(data))}: {problem}.")
        source = _open_source(data[split], None, audio_column, rank, world_size)
        return dataclasses.replace(source, name=f"dataset-{split}")
    if isinstance(data, datasets.Dataset):
        column = _audio_column(data.column_names, audio_column, "The dataset")
        rows, fingerprint = data, data._fingerprint
        if column is not None and isinstance(data.features[column], datasets.Audio):
            # Decoding through `datasets` needs torchcodec; soundfile reads the raw bytes or paths instead.
            rows = rows.cast_column(column, datasets.Audio(decode=False))
        if split is not None:
            rows = _split_rows(rows, split, column or ("path" if "path" in data.column_names else "codes"))
            fingerprint = hashlib.sha256(f"{fingerprint}\0{split}".encode()).hexdigest()
        return _Source(rows, column, list(data.column_names), fingerprint, f"dataset-{split or 'all'}")
    if isinstance(data, datasets.IterableDataset):
        if world_size > 1:
            from datasets.distributed import split_dataset_by_node

            data = split_dataset_by_node(data, rank=rank, world_size=world_size)
        columns = data.column_names
        if columns is None:  # a stream whose features are unknown until it is read
            first = next(iter(data.take(1)), None)
            if first is None:
                raise ValueError("The stream is empty: it yielded no rows.")
            columns = list(first)
        column = _audio_column(columns, audio_column, "The stream")
        stream = data
        if column is not None and data.features is not None and isinstance(data.features[column], datasets.Audio):
            stream = stream.cast_column(column, datasets.Audio(decode=False))
        if split is not None:
            # A stream cannot be looked at ahead, so unlike a map-style dataset a split may come out empty.
            _check_split_name(split)
            key = column or ("path" if "path" in columns else "codes")
            stream = stream.filter(lambda row: _split_of(_row_key(row[key])) == split)
        return _Source(stream, column, list(columns), None, f"stream-{split or 'all'}")
    raise ValueError(f"Cannot prepare {type(data).__name__}: pass {ACCEPTED_DATA}.")


def _prepared_record(processor: WhisperGPTProcessor) -> str:
    """The description a prepared dataset carries: its layout version and the processor that made it."""
    return json.dumps({"whisper_gpt_prepared": PREPARED_FORMAT, "processor": processor_fingerprint(processor)})


def _check_prepared(rows: Any, processor: WhisperGPTProcessor, name: str) -> None:
    """Refuse prepared rows that ``processor`` did not make: another processor's record, or codes or mel frames of
    another width."""
    import datasets

    try:
        record = json.loads(rows.info.description or "")
    except ValueError:
        record = None
    advice = "prepare the audio again with this processor, or use the processor the data was prepared with"
    if isinstance(record, dict) and "whisper_gpt_prepared" in record:
        if record["whisper_gpt_prepared"] != PREPARED_FORMAT:
            raise ValueError(
                f"{name} was prepared in layout {record['whisper_gpt_prepared']}; this version reads layout "
                f"{PREPARED_FORMAT}: prepare the audio again."
            )
        if record.get("processor") != processor_fingerprint(processor):
            raise ValueError(f"{name} was prepared with another processor (codec or feature settings): {advice}.")
    features = rows.features or {}
    expected = {
        "codes": (processor.audio_tokenizer.num_codebooks, "codebooks"),
        "input_features": (processor.feature_extractor.feature_size, "mel bins"),
    }
    for column, (width, unit) in expected.items():
        feature = features.get(column)
        if isinstance(feature, datasets.Array2D) and feature.shape[1] != width:
            raise ValueError(
                f"{name} holds {column} of {feature.shape[1]} {unit}, the processor makes {width}: {advice}."
            )


def _as_stream(rows: Any, world_size: int) -> Any:
    """A map-style dataset as a stream, in shards that divide evenly between ``world_size`` processes (each then
    reads only its own shards) where it has enough rows."""
    count = len(rows)
    if count == 0:
        raise ValueError("The dataset is empty: it has no rows to stream.")
    shards = min(count, 4 * world_size) // world_size * world_size if count >= world_size else count
    return rows.to_iterable_dataset(num_shards=shards)


def prepare_dataset(
    data: str | os.PathLike | Any,
    processor: WhisperGPTProcessor,
    *,
    split: str | None = None,
    audio_column: str = "audio",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    num_proc: int | None = None,
    streaming: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> Any:
    """Encode audio into a `datasets.Dataset` of aligned codes and causal log-mel frames (one row per file).

    Args:
        data: any of
            * a folder of audio files or a built corpus (`whisper_gpt.apps.corpus`);
            * a folder written by ``save_to_disk`` (a `Dataset` or `DatasetDict`), holding audio or already
              prepared rows;
            * a `datasets.Dataset` / `DatasetDict` with an ``audio_column`` holding `Audio` values (decoded with
              soundfile), paths or ``{"array", "sampling_rate"}`` dicts;
            * a `datasets.IterableDataset` / `IterableDatasetDict` (``load_dataset(..., streaming=True)``) with
              such a column;
            * any of these already prepared (the columns ``codes``, ``input_features``, ``num_frames``): returned as
              they are, after checking that ``processor`` made them (the processor a prepared dataset records, and
              the widths of its codes and mel frames).
        split: which part of ``data``: a `DatasetDict`'s split by name; ``"train"`` or ``"validation"`` of anything
            else, chosen by file as for a folder (a row is in validation when a hash of its audio's path, or of its
            audio where it has no path, falls in the lowest 10%; a map-style dataset of two or more rows gives each
            split at least one, a stream cannot be looked at ahead and may give an empty one); None: all of it.
        processor: turns audio into codes and features; part of the cache key.
        cache_dir: where prepared datasets live (default: ``$HF_DATASETS_CACHE/whisper_gpt``).
        batch_size: files per `datasets.map` batch.
        num_proc: worker processes encoding in parallel (each loads the processor once and uses one thread); not
            for a stream, which the process reading it encodes.
        streaming: return a lazily encoded `IterableDataset` (nothing is stored; for corpora larger than memory or
            disk) instead of a cached `Dataset`. Default: a stream for a stream, a `Dataset` otherwise; a stream
            cannot be stored (it has no fingerprint to cache it by), so ``streaming=False`` refuses one.
        rank, world_size: with ``world_size`` > 1 the returned stream is process ``rank``'s share
            (`datasets.distributed.split_dataset_by_node`, applied before encoding, so each process encodes only
            its own files).
        progress: show the `datasets` progress bar.
    Returns:
        A `Dataset` (or `IterableDataset`) with columns ``path``, ``codes`` (T, K) uint16, ``input_features``
        (T, M) float16 and ``num_frames``, whose ``info.description`` records the processor. Files that cannot be
        decoded or hold no valid audio (``UNREADABLE_AUDIO_ERRORS``) are skipped with a warning naming them; a
        ValueError is raised when none is left. Any other error while encoding (out of memory, a bug) propagates.
        Temporary folders that a killed run left in ``cache_dir`` are removed.
    """
    import datasets

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"num_proc must be at least 1 or None, got {num_proc}.")
    if world_size is not None and world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}.")
    if rank is not None and not 0 <= rank < (world_size or 1):
        raise ValueError(f"rank must be between 0 and world_size - 1 ({(world_size or 1) - 1}), got {rank}.")
    source = _open_source(data, split, audio_column, rank or 0, world_size or 1)
    streamed = source.streamed if streaming is None else streaming
    if source.streamed and not streamed:
        raise ValueError(
            "streaming=False asks for a stored dataset, but a stream cannot be cached (it has no fingerprint): "
            "leave streaming unset to encode it as it is read, or load the data as a datasets.Dataset."
        )
    if (world_size or 1) > 1 and not streamed:
        raise ValueError("rank and world_size split a stream between processes: pass streaming=True as well.")
    if streamed and (num_proc or 1) > 1:
        raise ValueError("num_proc encodes a stored dataset in parallel; the process reading a stream encodes it.")

    def shared(rows: Any) -> Any:
        """``rows`` as this process's share of a stream (a stream input is already cut to it)."""
        if isinstance(rows, datasets.IterableDataset):
            return rows
        stream = _as_stream(rows, world_size or 1)
        if (world_size or 1) > 1:
            from datasets.distributed import split_dataset_by_node

            stream = split_dataset_by_node(stream, rank=rank or 0, world_size=world_size)
        return stream

    if source.column is None:  # already prepared
        _check_prepared(source.rows, processor, source.name)
        return shared(source.rows) if streamed else source.rows
    features = prepared_features(processor)
    cache_root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR / "whisper_gpt"
    processor_dir = cache_root / "processors" / processor_fingerprint(processor)[:20]
    if not (processor_dir / "audio_tokenizer").is_dir():
        _save_atomically(processor_dir, processor.save_pretrained)
    encoder = _Encoder(str(processor_dir), source.column, processor if not num_proc or num_proc == 1 else None)

    if streamed:
        stream = shared(source.rows).map(
            encoder,
            with_indices=True,
            batched=True,
            batch_size=batch_size,
            remove_columns=source.columns,
            features=features,
        )
        stream.info.description = _prepared_record(processor)
        return stream

    source_rows = source.rows
    if len(source_rows) == 0:
        raise ValueError(f"{source.name} is empty: it has no audio to prepare.")
    fingerprint = hashlib.sha256(
        f"{PREPARED_FORMAT}\0{processor_fingerprint(processor)}\0{source.fingerprint}".encode()
    ).hexdigest()[:20]
    name = source.name
    target = cache_root / f"{name}-{fingerprint}"
    if (target / "dataset_info.json").is_file():
        logger.info("loading prepared %s from the cache %s", name, target)
        return datasets.load_from_disk(str(target))

    def write(folder: Path) -> None:
        with tempfile.TemporaryDirectory(dir=cache_root, prefix=_scratch_prefix(".map")) as scratch:
            prepared = source_rows.map(
                encoder,
                with_indices=True,
                batched=True,
                batch_size=batch_size,
                num_proc=num_proc,
                remove_columns=source_rows.column_names,
                features=features,
                cache_file_name=str(Path(scratch) / "encoded.arrow"),
                new_fingerprint=fingerprint,
                desc=f"Encoding {name}",
            )
            if len(prepared) == 0:
                raise ValueError(f"None of the {len(source_rows)} audio files of {name} could be encoded.")
            prepared.info.description = _prepared_record(processor)
            prepared.save_to_disk(str(folder))

    if not progress:
        datasets.disable_progress_bars()
    try:
        _save_atomically(target, write)
    finally:
        if not progress:
            datasets.enable_progress_bars()
    return datasets.load_from_disk(str(target))


def dataset_audio(
    data: str | os.PathLike | Any, split: str | None = "train", *, audio_column: str = "audio", seed: int = 0
) -> tuple[Iterator[Any], str, int]:
    """The audio of a dataset's ``split`` (a ``save_to_disk`` folder or a `datasets.Dataset` / `DatasetDict`, split
    as `prepare_dataset` splits it) in a random order seeded by ``seed``, to calibrate a codec on.

    Returns (a lazy iterator of its audio values for `build_processor`, a fingerprint of the split, its row count).
    Raises ValueError for a prepared dataset (codes hold no audio) and for a stream (a codec is calibrated on a
    map-style dataset, whose fingerprint identifies the calibration).
    """
    source = _open_source(data, split, audio_column)
    if source.column is None:
        raise ValueError(
            f"{source.name} is already prepared: it holds codes and mel frames, not audio, so no codec can be "
            "calibrated on it. Give the processor it was prepared with (--processor, or an existing PROCESSOR_DIR)."
        )
    if source.fingerprint is None:
        raise ValueError("A codec is calibrated on stored audio, not on a stream: give a processor to train a stream.")
    rows, column = source.rows, source.column
    order = np.random.default_rng(seed).permutation(len(rows))
    return (rows[int(index)][column] for index in order), source.fingerprint, len(rows)


def _save_atomically(target: Path, write: Any) -> None:
    """Call ``write(folder)`` on a temporary folder next to ``target`` and rename it into place.

    A crash never leaves a half-written folder at ``target``, which a later run would take for a finished one; the
    temporary folders a killed run leaves in ``target.parent`` are removed by the next call (`_remove_stale_scratch`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(target.parent)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=_scratch_prefix(f".{target.name}")))
    try:
        write(partial)
        if target.exists():  # another process finished the same work first
            shutil.rmtree(partial)
        else:
            os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _scratch_prefix(stem: str) -> str:
    """Prefix of a temporary folder of this process: ``stem``, the tag, the host and the pid."""
    return f"{stem}.{_SCRATCH_TAG}.{socket.gethostname()}.{os.getpid()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_scratch(parent: Path) -> None:
    """Delete the temporary folders that killed runs left in ``parent``.

    A folder named by `_scratch_prefix` is stale when it comes from this host and its process no longer runs, or
    from another host and is older than ``_SCRATCH_MAX_AGE_S``. Folders of running processes are left alone.
    """
    if not parent.is_dir():
        return
    host, now = socket.gethostname(), time.time()
    for path in parent.iterdir():
        match = _SCRATCH_PATTERN.match(path.name)
        if match is None or not path.is_dir():
            continue
        if match["host"] == host:
            stale = not _process_alive(int(match["pid"]))
        else:
            try:
                stale = now - path.stat().st_mtime > _SCRATCH_MAX_AGE_S
            except FileNotFoundError:  # its owner just finished
                continue
        if stale:
            logger.warning("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)


def _crop_rng(seed: int, key: Sequence[int] | int | None) -> np.random.Generator | None:
    if key is None:
        return None
    return np.random.default_rng([seed, *np.atleast_1d(key).tolist()])


@dataclass
class WhisperGPTDataCollator:
    """Rows of a prepared dataset -> padded model inputs.

    Each row holds ``codes`` (T, K) (or ``input_ids`` (K, T)) and optionally ``input_features`` (T, M). A row
    longer than ``max_frames`` is cropped to ``max_frames`` frames: at a random offset when ``random_crop``
    (training), else from its start. The offset comes from the row's ``crop_key`` when it has one (see
    `TrainingCrops`; the crop then never depends on what was drawn before, so a resumed run repeats it) and from
    the collator's own generator otherwise. Rows are right-padded to the longest in the batch (rounded up to
    ``pad_to_multiple_of``).

    Returns ``input_ids`` (B, K, L) int64 (padding: code 0), ``input_features`` (B, L, M) float32 (padding: 0),
    ``attention_mask`` (B, L) int64 and ``labels`` (B, K, L) int64, equal to ``input_ids`` except -100 on padding
    and on frames a row marks as already scored (``score_from``, see `SlidingWindows`).
    """

    max_frames: int | None = None
    random_crop: bool = True
    pad_to_multiple_of: int | None = None
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2 (one frame predicts the next), got {self.max_frames}.")
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("Cannot collate an empty batch.")
        codes, features, score_from = [], [], []
        for row in rows:
            row_codes, row_features = _row_arrays(row)
            length = row_codes.shape[0]
            start = 0
            if self.max_frames is not None and length > self.max_frames:
                if self.random_crop:
                    rng = _crop_rng(self.seed, row.get("crop_key")) or self._rng
                    start = int(rng.integers(0, length - self.max_frames + 1))
                row_codes = row_codes[start : start + self.max_frames]
                row_features = None if row_features is None else row_features[start : start + self.max_frames]
            codes.append(row_codes)
            features.append(row_features)
            score_from.append(int(row.get("score_from", 0)))
        has_features = [f is not None for f in features]
        if any(has_features) and not all(has_features):
            raise ValueError("Some rows have input_features and some do not; prepare all rows the same way.")
        length = max(c.shape[0] for c in codes)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size, num_codebooks = len(rows), codes[0].shape[1]
        input_ids = torch.zeros(batch_size, num_codebooks, length, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        labels = torch.full((batch_size, num_codebooks, length), -100, dtype=torch.long)
        batch: dict[str, torch.Tensor] = {}
        if all(has_features):
            batch["input_features"] = torch.zeros(batch_size, length, features[0].shape[1], dtype=torch.float32)
        for index, row_codes in enumerate(codes):
            frames = row_codes.shape[0]
            if row_codes.shape[1] != num_codebooks:
                raise ValueError(f"Rows have {num_codebooks} and {row_codes.shape[1]} codebooks; they must agree.")
            input_ids[index, :, :frames] = torch.from_numpy(row_codes.T.astype(np.int64))
            attention_mask[index, :frames] = 1
            labels[index, :, score_from[index] : frames] = input_ids[index, :, score_from[index] : frames]
            if all(has_features):
                batch["input_features"][index, :frames] = torch.from_numpy(features[index].astype(np.float32))
        batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return batch


def _row_arrays(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, K) codes and (T, M) features (or None) of one row, whichever layout it uses."""
    if "codes" in row:
        codes = np.asarray(row["codes"])
    elif "input_ids" in row:
        codes = np.asarray(row["input_ids"]).T
    else:
        raise ValueError(f"A row needs 'codes' (T, K) or 'input_ids' (K, T); it has {sorted(row)}.")
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"A row's codes must be a non-empty (frames, codebooks) array, got shape {codes.shape}.")
    features = row.get("input_features")
    if features is not None:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] != codes.shape[0]:
            raise ValueError(
                f"A row's input_features {features.shape} do not line up with its {codes.shape[0]} frames of codes."
            )
    return codes, features


class TrainingCrops(torch.utils.data.Dataset):
    """Training examples over a prepared dataset: file ``i`` of T_i frames gives ceil(T_i / max_frames) examples.

    One epoch therefore sees about as many frames as the corpus holds, and long files are drawn as often as their
    length warrants. An example is its file's row plus a ``crop_key``; indexed by an ``(epoch, index)`` pair (as
    `EpochShuffleSampler` yields them) the key is that pair, so the collator's random crop is a function of
    (seed, epoch, index) alone. A plain integer index (e.g. from `transformers.Trainer`) gives no key.

    ``pack=True`` joins consecutive files shorter than ``max_frames`` (in dataset order) into examples of at most
    ``max_frames`` frames, as text LMs pack documents: a corpus of short clips (isolated words, notes) then trains on
    full windows instead of padding, and the model sees one clip end and the next begin. Each file's codes and mel
    frames are its own (computed on that file alone), so a pack is the files' frames one after the other.
    """

    def __init__(self, dataset: Any, max_frames: int, pack: bool = False):
        import datasets

        if max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, got {max_frames}.")
        if isinstance(dataset, datasets.IterableDataset):
            raise ValueError("TrainingCrops indexes a map-style dataset; a stream gives its examples by StreamedCrops.")
        self.rows = dataset.with_format("numpy")
        lengths = np.asarray(dataset["num_frames"], dtype=np.int64)
        if lengths.size == 0:
            raise ValueError("The prepared dataset is empty.")
        self.examples: list[list[int]] = []
        pending, pending_frames = [], 0  # neighbouring short files filling a pack
        for row, length in enumerate(lengths.tolist()):
            short = pack and length < max_frames
            if pending and (not short or pending_frames + length > max_frames):
                self.examples.append(pending)
                pending, pending_frames = [], 0
            if short:
                pending.append(row)
                pending_frames += length
            else:
                self.examples.extend([[row]] * max(1, -(-length // max_frames)))
        if pending:
            self.examples.append(pending)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        rows = [self.rows[row] for row in self.examples[index]]
        features = [row["input_features"] for row in rows]
        example = {
            "codes": np.concatenate([row["codes"] for row in rows]),
            "input_features": None if any(f is None for f in features) else np.concatenate(features),
        }
        if epoch is not None:
            example["crop_key"] = (epoch, index)
        return example


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` for a permutation of ``range(num_examples)`` that depends only on (seed, epoch).

    Owns no generator state, so resuming at (epoch, batch) replays exactly what an uninterrupted run draws.
    """

    def __init__(self, num_examples: int, seed: int = 0):
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples)
        return ((self.epoch, int(index)) for index in order)


def _shuffles_through_a_buffer(stream: Any) -> bool:
    """Whether ``stream`` (a `datasets.IterableDataset`) reorders its rows through a shuffle buffer
    (`IterableDataset.shuffle`), whose content its ``state_dict`` does not hold."""
    from datasets.iterable_dataset import BufferShuffledExamplesIterable

    pending, seen = [stream._ex_iterable], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, BufferShuffledExamplesIterable):
            return True
        pending.extend(getattr(node, "ex_iterables", None) or [])
        if getattr(node, "ex_iterable", None) is not None:
            pending.append(node.ex_iterable)
    return False


class StreamedCrops(torch.utils.data.IterableDataset):
    """Training examples read in order from a prepared stream (a `datasets.IterableDataset` in the layout of
    `prepare_dataset`), made as `TrainingCrops` makes them from a map-style dataset.

    File ``i`` of T_i frames gives ceil(T_i / ``max_frames``) examples, one after the other; ``pack=True`` joins
    consecutive files shorter than ``max_frames`` into examples of at most ``max_frames`` frames. An example carries
    the ``crop_key`` (epoch, ``shard``, n) for the n-th example of the epoch, so its random crop is a function of
    (seed, epoch, shard, n) alone. Each epoch reads the stream once more, after ``stream.set_epoch(epoch)`` (which
    reshuffles a stream shuffled with `IterableDataset.shuffle`). The order is the stream's: shuffle it for training.

    Position (`state_dict` / `load_state_dict`): the epoch and the examples of it already given out. Iterating after
    `load_state_dict` continues with the next example, exactly as if the iteration had not stopped. Without a shuffle
    buffer the stream is restarted where that example's first file was read (the stream's own ``state_dict``), so
    resuming reads again at most the files of one pack, and encodes again at most those and one `datasets.map`
    batch. A shuffle buffer's content is not part of the stream's ``state_dict`` (restoring it would lose or repeat
    the buffered rows), so a stream shuffled through one is read again from the start of the epoch and the examples
    already given out are skipped: still exact, but resuming reads (and encodes) that part of the epoch again.

    ``stream``: a prepared stream; ``shard``: this process's index (it only enters the crop keys).
    """

    def __init__(self, stream: Any, max_frames: int, pack: bool = False, shard: int = 0):
        import datasets

        if not isinstance(stream, datasets.IterableDataset):
            raise ValueError(f"StreamedCrops reads a datasets.IterableDataset, got {type(stream).__name__}.")
        if max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, got {max_frames}.")
        self.stream = stream
        self.max_frames = max_frames
        self.pack = pack
        self.shard = shard
        self.replays = _shuffles_through_a_buffer(stream)
        self.epoch = 0
        self._position: dict[str, Any] = self._start(0)
        self._resume: dict[str, Any] | None = None

    @staticmethod
    def _start(epoch: int) -> dict[str, Any]:
        # "stream": the stream's state before the rows of the current example (None: the start of the epoch);
        # "skip": the examples given out since that state.
        return {"epoch": epoch, "index": 0, "stream": None, "skip": 0}

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration."""
        self.epoch = epoch
        self._position = self._start(epoch)
        self._resume = None

    def state_dict(self) -> dict[str, Any]:
        """The position after the last example given out (JSON-ready)."""
        return json.loads(json.dumps(self._position))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from `state_dict`) at the next iteration."""
        if not {"epoch", "index", "stream", "skip"} <= set(state):
            raise ValueError(f"Not a StreamedCrops position: keys {sorted(state)}.")
        self.epoch = int(state["epoch"])
        self._position = dict(state)
        self._resume = dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, resume, self._resume = self.epoch, self._resume, None
        # A fresh view per iteration: a loaded stream state applies to this iteration only.
        stream = self.stream.with_format("numpy")
        stream.set_epoch(epoch)
        discard, index, before = 0, 0, None
        if resume is not None and resume["index"] > 0:
            index = resume["index"]
            if self.replays or resume["stream"] is None:
                discard = resume["index"]  # read again from the start of the epoch
            else:
                stream.load_state_dict(resume["stream"])
                discard, before = resume["skip"], resume["stream"]
        for state, skip, example in self._examples(stream, before):
            if discard:
                discard -= 1
                continue
            example["crop_key"] = (epoch, self.shard, index)
            index += 1
            self._position = {"epoch": epoch, "index": index, "stream": state, "skip": skip}
            yield example

    def _examples(self, stream: Any, before: Any) -> Iterator[tuple[Any, int, dict[str, Any]]]:
        """(the stream's state before the example's first file, examples since that state, example) in order;
        ``before``: the stream's state where this iteration starts (None: the start of the epoch)."""
        pending: list[dict[str, Any]] = []  # neighbouring short files filling a pack
        pending_frames, pending_state = 0, None
        for row in stream:
            after = None if self.replays else stream.state_dict()
            length = int(row["num_frames"])
            short = self.pack and length < self.max_frames
            if pending and (not short or pending_frames + length > self.max_frames):
                yield pending_state, 1, _joined(pending)
                pending, pending_frames = [], 0
            if short:
                if not pending:
                    pending_state = before
                pending.append(row)
                pending_frames += length
            else:
                for count in range(max(1, -(-length // self.max_frames))):
                    yield before, count + 1, _joined([row])
            before = after
        if pending:
            yield pending_state, 1, _joined(pending)


def _joined(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One example of consecutive files: their codes and mel frames one after the other."""
    features = [row.get("input_features") for row in rows]
    return {
        "codes": np.concatenate([np.asarray(row["codes"]) for row in rows]),
        "input_features": None if any(f is None for f in features) else np.concatenate(features),
    }


def stream_to_dataset(stream: Any) -> Any:
    """Read a prepared stream whole into an in-memory `datasets.Dataset` (for evaluation data, whose windows index
    their files); a map-style dataset is returned as it is. Raises ValueError for an empty stream."""
    import datasets

    if not isinstance(stream, datasets.IterableDataset):
        return stream
    rows = list(stream.with_format("numpy"))
    if not rows:
        raise ValueError("The evaluation stream is empty: it yielded no rows.")
    return datasets.Dataset.from_list(rows, features=stream.features)


class SlidingWindows(torch.utils.data.Dataset):
    """Evaluation windows over whole files: ``window`` frames every ``stride`` frames (default: no overlap).

    A window after a file's first one re-reads ``window - stride`` frames of context and scores only the new
    frames (its ``score_from``), so no frame is scored twice. With ``stride < window`` every frame but a file's
    first is scored; with non-overlapping windows (the default, every window an independent context as in
    training) each window's first frame is not, as nothing in its window predicts it.

    ``dataset``: a prepared dataset; a prepared stream is read whole into memory first (`stream_to_dataset`).
    """

    def __init__(self, dataset: Any, window: int, stride: int | None = None):
        stride = window if stride is None else stride
        if window < 2 or not 1 <= stride <= window:
            raise ValueError(f"Need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}.")
        dataset = stream_to_dataset(dataset)
        self.rows = dataset.with_format("numpy")
        self.windows: list[tuple[int, int, int, int]] = []  # (row, start, stop, score_from)
        for row, length in enumerate(np.asarray(dataset["num_frames"], dtype=np.int64).tolist()):
            start = 0
            while True:
                stop = min(start + window, length)
                self.windows.append((row, start, stop, 0 if start == 0 else window - stride))
                if stop >= length:
                    break
                start += stride

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, start, stop, score_from = self.windows[index]
        example = self.rows[row]
        return {
            "codes": example["codes"][start:stop],
            "input_features": example["input_features"][start:stop],
            "score_from": score_from,
        }


def register_cli(subparsers: Any) -> None:
    """Add ``whisper-gpt prepare DATA PROCESSOR_DIR`` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "prepare", help="calibrate a local codec if needed and encode audio into cached codes + causal mel"
    )
    parser.add_argument(
        "data",
        help="a folder of audio files, a built corpus, or a dataset saved with save_to_disk (with an 'audio' column, "
        "or already prepared)",
    )
    parser.add_argument("processor_dir", help="a saved processor; if it does not exist, one is calibrated and saved")
    parser.add_argument("--splits", nargs="+", default=["train", "validation"], help="splits to encode")
    parser.add_argument("--num-mel-bins", type=int, default=80, help="mel bins of a new processor (model config)")
    parser.add_argument("--codebook-size", type=int, default=1024, help="codes per codebook of a new codec")
    parser.add_argument("--bandwidth", type=float, default=6.0, help="kbps of a new codec (1.5: 2 codebooks, 6: 8)")
    parser.add_argument(
        "--encoder-steps", type=int, default=400, help="steps fitting a new codec's encoder to log-mel (0: skip)"
    )
    parser.add_argument("--cache-dir", help="where prepared datasets are cached")
    parser.add_argument("--num-proc", type=int, help="processes encoding audio")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_prepare_command)


def _prepare_command(args: Any) -> dict[str, Any]:
    from ..apps.corpus import audio_files
    from .loop import configure_torch

    configure_torch(num_processes=1)
    processor_dir = Path(args.processor_dir)
    if (processor_dir / "audio_tokenizer").is_dir():
        processor = WhisperGPTProcessor.from_pretrained(processor_dir)
    else:
        # The encoder fit reads the first minutes of the audio: shuffled, they come from the whole corpus.
        if is_saved_dataset(args.data):
            calibration, _, _ = dataset_audio(args.data, "train", seed=args.seed)
        else:
            calibration = audio_files(args.data, split="train")
            random.Random(args.seed).shuffle(calibration)
        processor, stats = build_processor(
            calibration,
            num_mel_bins=args.num_mel_bins,
            codebook_size=args.codebook_size,
            bandwidth=args.bandwidth,
            encoder_steps=args.encoder_steps,
            seed=args.seed,
        )
        processor.save_pretrained(processor_dir)
        print(f"calibrated a codec on {stats['frames']:,} frames and saved the processor to {processor_dir}")
    summary = {}
    frame_rate = processor.audio_tokenizer.sampling_rate / processor.audio_tokenizer.hop_length
    for split in args.splits:
        prepared = prepare_dataset(args.data, processor, split=split, cache_dir=args.cache_dir, num_proc=args.num_proc)
        frames = int(np.sum(prepared["num_frames"]))
        cache = str(Path(prepared.cache_files[0]["filename"]).parent) if prepared.cache_files else "memory"
        summary[split] = {"files": len(prepared), "frames": frames, "cache": cache}
        print(f"{split}: {len(prepared)} files, {frames:,} frames ({frames / frame_rate / 60:.1f} min) in {cache}")
    return summary


__all__ = [
    "UNREADABLE_AUDIO_ERRORS",
    "EpochShuffleSampler",
    "SlidingWindows",
    "StreamedCrops",
    "TrainingCrops",
    "WhisperGPTDataCollator",
    "build_processor",
    "dataset_audio",
    "is_saved_dataset",
    "load_audio",
    "prepare_dataset",
    "prepared_features",
    "processor_fingerprint",
    "register_cli",
    "stream_to_dataset",
]
