"""Audio -> aligned codes and causal log-mel frames with `datasets`, and the batches the model trains on.

Three steps:

1. `build_processor`: fit a locally built EnCodec's encoder to the log-mel of training audio and calibrate its
   codebooks (k-means; `whisper_gpt.training.codec_fitting`), and wrap it with the causal log-mel feature
   extractor. Skip it when a trained codec is available (`WhisperGPTProcessor.from_pretrained`).
2. `prepare_dataset`: a folder of audio files, a built corpus (`whisper_gpt.apps.corpus`) or a `datasets.Dataset` with
   an audio column -> a `datasets.Dataset` with one row per file:

   * ``codes``: (T, K) uint16 codec codes (frame-major, so `datasets` can store a variable T),
   * ``input_features``: (T, M) float16 causal log-mel frames, aligned 1:1 with the codes,
   * ``num_frames``: T, and ``path``: where the audio came from.

   The result is saved with `Dataset.save_to_disk` under a fingerprint of the processor (feature extractor
   settings, codec weights, bandwidth) and of the inputs (paths, sizes, modification times; or the input
   dataset's own fingerprint), so a second run loads it memory-mapped instead of encoding again. Audio is decoded
   with soundfile, never torchcodec. ``streaming=True`` instead returns a lazily encoded `IterableDataset`
   (nothing is stored), split between processes with `datasets.distributed.split_dataset_by_node`.
3. `WhisperGPTDataCollator`: rows -> padded model inputs, with fixed-length random crops for training;
   `TrainingCrops` + `EpochShuffleSampler` make those crops reproducible (for exact resumption) and
   `SlidingWindows` cuts whole files into evaluation windows.
"""

from __future__ import annotations

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
    items: Iterable[str | os.PathLike | np.ndarray], sampling_rate: int | None, target_sampling_rate: int, skipped: list
) -> Iterator[np.ndarray]:
    """Yield each item as a float32 mono clip at ``target_sampling_rate``; skip unreadable ones.

    An item that raises one of ``UNREADABLE_AUDIO_ERRORS`` is logged as a warning with its name (the path, or
    ``calibration_audio[i]`` for an array) and appended to ``skipped``; any other error propagates.
    """
    for index, item in enumerate(items):
        is_array = isinstance(item, np.ndarray)
        name = f"calibration_audio[{index}]" if is_array else str(item)
        try:
            audio, rate = (item, sampling_rate) if is_array else load_audio(item)
            clip = normalize_audio_batch(audio, rate, target_sampling_rate)[0]
        except UNREADABLE_AUDIO_ERRORS as error:
            logger.warning("skipped %s: %s", name, error)
            skipped.append(name)
            continue
        yield clip


def build_processor(
    calibration_audio: Iterable[str | os.PathLike | np.ndarray],
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
        calibration_audio: audio file paths, or arrays at ``sampling_rate``. A file that cannot be read or holds no
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


def _source_rows(data: Any, split: str | None, audio_column: str) -> tuple[Any, str, str, str]:
    """Normalise the input of `prepare_dataset`.

    Returns (dataset of audio references, its audio column, a fingerprint of the inputs, a short name).
    """
    import datasets

    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_dir():
            raise ValueError(f"{path} is not a folder of audio files, a built corpus or a saved dataset.")
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _source_rows(datasets.load_from_disk(str(path)), split, audio_column)
        from ..apps.corpus import audio_files

        files = audio_files(path, split=split)
        if not files:
            raise ValueError(f"{path} holds no audio files" + (f" in split {split!r}" if split else "") + ".")
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        name = f"{path.resolve().name}-{split or 'all'}"
        return datasets.Dataset.from_dict({"file": [str(f) for f in files]}), "file", digest.hexdigest(), name
    if isinstance(data, datasets.DatasetDict):
        if split is None or split not in data:
            raise ValueError(f"Pass split= one of {sorted(data)} to prepare a DatasetDict.")
        data = data[split]
    if isinstance(data, datasets.Dataset):
        if audio_column not in data.column_names:
            raise ValueError(
                f"The dataset has no column {audio_column!r} (columns: {data.column_names}); pass audio_column=."
            )
        if isinstance(data.features[audio_column], datasets.Audio):
            # Decoding through `datasets` needs torchcodec; soundfile reads the raw bytes or paths instead.
            data = data.cast_column(audio_column, datasets.Audio(decode=False))
        return data, audio_column, data._fingerprint, f"dataset-{split or 'all'}"
    raise ValueError(
        f"Cannot prepare {type(data).__name__}: pass an audio folder, a built corpus, or a datasets.Dataset with an "
        "audio column."
    )


def prepare_dataset(
    data: str | os.PathLike | Any,
    processor: WhisperGPTProcessor,
    *,
    split: str | None = None,
    audio_column: str = "audio",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    num_proc: int | None = None,
    streaming: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> Any:
    """Encode audio into a `datasets.Dataset` of aligned codes and causal log-mel frames (one row per file).

    Args:
        data: a folder of audio files or a built corpus (``split`` picks "train"/"validation"), a folder written
            by `Dataset.save_to_disk`, or a `datasets.Dataset` / `DatasetDict` with an ``audio_column`` holding
            `Audio` values (decoded with soundfile) or ``{"array", "sampling_rate"}`` dicts.
        processor: turns audio into codes and features; part of the cache key.
        cache_dir: where prepared datasets live (default: ``$HF_DATASETS_CACHE/whisper_gpt``).
        batch_size: files per `datasets.map` batch.
        num_proc: worker processes encoding in parallel (each loads the processor once and uses one thread).
        streaming: return a lazily encoded `IterableDataset` instead (no cache; for corpora larger than memory or
            disk). With ``world_size`` > 1 it is split between processes, process ``rank`` getting its share.
        progress: show the `datasets` progress bar.
    Returns:
        A `Dataset` (or `IterableDataset`) with columns ``path``, ``codes`` (T, K) uint16, ``input_features``
        (T, M) float16 and ``num_frames``. Files that cannot be decoded or hold no valid audio
        (``UNREADABLE_AUDIO_ERRORS``) are skipped with a warning naming them; a ValueError is raised when none is
        left. Any other error while encoding (out of memory, a bug) propagates. Temporary folders that a killed run
        left in ``cache_dir`` are removed.
    """
    import datasets

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"num_proc must be at least 1 or None, got {num_proc}.")
    source, column, source_fingerprint, name = _source_rows(data, split, audio_column)
    if {"codes", "input_features", "num_frames"} <= set(source.column_names):
        return source  # already prepared (e.g. a folder written by save_to_disk)
    features = prepared_features(processor)
    fingerprint = hashlib.sha256(
        f"{PREPARED_FORMAT}\0{processor_fingerprint(processor)}\0{source_fingerprint}".encode()
    ).hexdigest()[:20]
    cache_root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR / "whisper_gpt"
    processor_dir = cache_root / "processors" / processor_fingerprint(processor)[:20]
    if not (processor_dir / "audio_tokenizer").is_dir():
        _save_atomically(processor_dir, processor.save_pretrained)
    encoder = _Encoder(str(processor_dir), column, processor if not num_proc or num_proc == 1 else None)

    if streaming:
        shards = max(1, min(len(source), (world_size or 1) * max(1, num_proc or 1) * 4))
        stream = source.to_iterable_dataset(num_shards=shards)
        stream = stream.map(
            encoder,
            with_indices=True,
            batched=True,
            batch_size=batch_size,
            remove_columns=source.column_names,
            features=features,
        )
        if world_size is not None and world_size > 1:
            from datasets.distributed import split_dataset_by_node

            stream = split_dataset_by_node(stream, rank=rank or 0, world_size=world_size)
        return stream

    target = cache_root / f"{name}-{fingerprint}"
    if (target / "dataset_info.json").is_file():
        logger.info("loading prepared %s from the cache %s", name, target)
        return datasets.load_from_disk(str(target))

    def write(folder: Path) -> None:
        with tempfile.TemporaryDirectory(dir=cache_root, prefix=_scratch_prefix(".map")) as scratch:
            prepared = source.map(
                encoder,
                with_indices=True,
                batched=True,
                batch_size=batch_size,
                num_proc=num_proc,
                remove_columns=source.column_names,
                features=features,
                cache_file_name=str(Path(scratch) / "encoded.arrow"),
                new_fingerprint=fingerprint,
                desc=f"Encoding {name}",
            )
            if len(prepared) == 0:
                raise ValueError(f"None of the {len(source)} audio files of {name} could be encoded.")
            prepared.save_to_disk(str(folder))

    if not progress:
        datasets.disable_progress_bars()
    try:
        _save_atomically(target, write)
    finally:
        if not progress:
            datasets.enable_progress_bars()
    return datasets.load_from_disk(str(target))


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
        if max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, got {max_frames}.")
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


class SlidingWindows(torch.utils.data.Dataset):
    """Evaluation windows over whole files: ``window`` frames every ``stride`` frames (default: no overlap).

    A window after a file's first one re-reads ``window - stride`` frames of context and scores only the new
    frames (its ``score_from``), so no frame is scored twice. With ``stride < window`` every frame but a file's
    first is scored; with non-overlapping windows (the default, every window an independent context as in
    training) each window's first frame is not, as nothing in its window predicts it.
    """

    def __init__(self, dataset: Any, window: int, stride: int | None = None):
        stride = window if stride is None else stride
        if window < 2 or not 1 <= stride <= window:
            raise ValueError(f"Need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}.")
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
    parser.add_argument("data", help="a folder of audio files or a built corpus")
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
        files = audio_files(args.data, split="train")
        # The encoder fit reads the first minutes of the list: shuffled, they come from the whole corpus.
        random.Random(args.seed).shuffle(files)
        processor, stats = build_processor(
            files,
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
        cache = str(Path(prepared.cache_files[0]["filename"]).parent)
        summary[split] = {"files": len(prepared), "frames": frames, "cache": cache}
        print(f"{split}: {len(prepared)} files, {frames:,} frames ({frames / frame_rate / 60:.1f} min) in {cache}")
    return summary


__all__ = [
    "UNREADABLE_AUDIO_ERRORS",
    "EpochShuffleSampler",
    "SlidingWindows",
    "TrainingCrops",
    "WhisperGPTDataCollator",
    "build_processor",
    "load_audio",
    "prepare_dataset",
    "prepared_features",
    "processor_fingerprint",
    "register_cli",
]
