"""Training Whisper-GPT with Accelerate: `train(TrainingConfig(...))`, ``whisper-gpt train`` and
``examples/train_accelerate.py``.

One loop for one process or many (``accelerate launch --num_processes N``): AdamW with warmup + cosine decay,
gradient accumulation, gradient clipping, mixed precision, periodic validation (NLL, accuracy, perplexity; overall,
codebook 0 and per codebook), TensorBoard logging (plus ``metrics.jsonl``), tqdm progress, checkpoints written
atomically with ``accelerator.save_state``, exact resumption, and a final ``save_pretrained`` folder (model,
processor with its codec, generation config, model card) ready for the Hub.

Data: ``train_data`` / ``validation_data`` name a folder of audio files, a built corpus or a folder written by
``save_to_disk`` (audio or prepared); `train` also takes the datasets themselves (``train_dataset`` /
``validation_dataset``): a `datasets.Dataset` with an audio column, a prepared one, or a streamed
`datasets.IterableDataset` (``load_dataset(..., streaming=True)``). All go through
`whisper_gpt.training.data.prepare_dataset`.

Exact resumption: the data order is a function of (seed, epoch) and each training crop a function of
(seed, epoch, example) (`whisper_gpt.training.data.EpochShuffleSampler`, `TrainingCrops`), checkpoints store the
optimizer, scheduler and every process's RNG states, and a resumed run skips the batches already consumed in the
current epoch (`accelerator.skip_first_batches`). A run resumed from step k therefore repeats the uninterrupted
run's losses.

Streams: each process reads its own share of a streamed training set (`datasets.distributed.split_dataset_by_node`,
before encoding, so each process encodes only its files) in the stream's order, ``batch_size / N`` examples per
step (`whisper_gpt.training.data.StreamedCrops`; one pass over its share is that process's epoch, so processes
with unequal shares start epochs at different steps, and unlike a map-style dataset N processes do not train on the
batches one process trains on). Resumption is exact there too: a checkpoint stores each
process's position in its share (the epoch and the examples already consumed), and the resumed run continues with
the next example, so its losses repeat the uninterrupted run's. Without a shuffle buffer the stream restarts where
that example's file was read (the stream's ``state_dict``; at most one `datasets.map` batch is encoded again); a
stream shuffled with `IterableDataset.shuffle` (whose buffer no ``state_dict`` holds) is read again from the start
of the epoch and the consumed examples are skipped, which costs the reading and encoding of that part of the epoch.
A streamed validation set is read into memory once (evaluation windows index their files).

``batch_size`` is the global batch: Accelerate splits each batch between processes (``split_batches=True``), so one
process and N processes see the same examples in the same steps and train (up to floating-point order) the same
model; it must be divisible by the number of processes.

Several CPU processes: ``accelerate launch --cpu --num_processes N``, or a config file with ``use_cpu: true`` and
``num_processes: N`` (Accelerate's launcher by itself starts one process there unless mpirun is set up; the script
then restarts as this machine's share of the N processes with torchrun, over ``num_machines`` machines with
``--machine_rank`` as Accelerate reads them), or ``torchrun --nproc_per_node N``.

The same loop serves ``whisper-gpt demo`` and ``whisper-gpt reproduce``: `train` also takes in-memory datasets and
a ready-built model, runs without validation, checkpoints or final folder when told, and `seconds_per_step` times
a few of its steps to turn a time budget into a step count. `build_optimizer` is the one optimizer factory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import pickle
import random
import shlex
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..configuration_whisper_gpt import PAPER_PRESETS, WhisperGPTConfig
from ..modeling_whisper_gpt import WhisperGPTForCausalLM
from ..processing_whisper_gpt import WhisperGPTProcessor
from .data import (
    EpochShuffleSampler,
    StreamedCrops,
    TrainingCrops,
    WhisperGPTDataCollator,
    build_processor,
    dataset_audio,
    is_saved_dataset,
    prepare_dataset,
    processor_fingerprint,
    stream_to_dataset,
)
from .evaluation import evaluate_model, format_metrics

logger = logging.getLogger(__name__)

PRESETS = (*PAPER_PRESETS, "custom")
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "training_summary.json"
FINAL_DIR = "final"
LOGS_DIR = "logs"
LOCK_FILE = "training.lock"
PROCESSOR_DIR = "processor"
# Beside a calibrated OUTPUT_DIR/processor: the corpus and settings it was calibrated on.
CALIBRATION_FILE = "calibration_source.json"
# In a checkpoint of a run on a stream: process i's position in its share of the stream.
STREAM_POSITION = "stream_position_{}.json"
# What a run leaves in its output folder; a folder holding any of them belongs to that run.
RUN_RECORDS = (CHECKPOINTS, FINAL_DIR, METRICS_FILE, SUMMARY_FILE, LOGS_DIR)


@dataclass
class TrainingConfig:
    """Everything a training run needs. ``batch_size`` is global (split between processes).

    ``train_data`` and ``validation_data`` are folders: of audio files, a built corpus, or a dataset written by
    ``save_to_disk`` (with an audio column, or prepared); its "train" split trains (a single saved dataset is split
    by file as a folder is, see `whisper_gpt.training.data.prepare_dataset`). ``train_data`` may be None when `train`
    is given ``train_dataset`` (then a processor is required, here or given to `train`, and validation needs
    ``validation_data`` or a ``validation_dataset``). ``resume`` and ``overwrite_output_dir`` exclude each other;
    how the output folder is claimed is described in `train`.
    """

    output_dir: str
    train_data: str | None = None
    validation_data: str | None = None  # used whole; default: the "validation" split of train_data
    processor: str | None = None  # a saved processor; None calibrates a local codec on the training audio
    preset: str = "paper_hybrid"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    max_frames: int | None = None  # training crop; default: the model's context
    pack: bool = False  # join consecutive short files into examples of max_frames (see TrainingCrops)
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    warmup_steps: int = 100
    max_steps: int = 1000
    stop_at_step: int | None = None  # end this run early with a checkpoint (e.g. a job time limit); --resume goes on
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # "no", "fp16" or "bf16"; None: the launcher's (see _mixed_precision)
    eval_every: int = 200  # 0: validate at the end only
    validate: bool = True  # False: no validation at all (no validation data is read)
    eval_batch_size: int = 8
    eval_window: int | None = None
    save_every: int = 500
    save_total_limit: int = 2
    save_final: bool = True  # write the Hub-ready folder OUTPUT_DIR/final when the run finishes
    log_every: int = 10
    report_to: str = "tensorboard"
    seed: int = 0
    resume: str | None = None  # "latest" or a checkpoint folder
    overwrite_output_dir: bool = False  # delete the records of the run output_dir holds (see train) and start over
    ignore_missing_rng_state: bool = False  # resume from a checkpoint whose random states are unreadable (inexact)
    cache_dir: str | None = None
    num_proc: int | None = None
    calibration_bandwidth: float | None = None  # kbps of a calibrated codec; default: the least giving K codebooks
    calibration_max_frames: int = 100_000
    calibration_iterations: int = 20
    calibration_encoder_steps: int = 400  # `fit_encoder_to_mel` steps of a calibrated codec (0: random encoder)
    torch_threads: int | None = None
    progress: bool = True
    command: str | None = None
    dataset_description: str | None = None


def model_config(preset: str, overrides: dict[str, Any] | None = None) -> WhisperGPTConfig:
    """A paper preset (a key of `whisper_gpt.configuration_whisper_gpt.PAPER_PRESETS`) or ``custom`` (the config
    defaults), with ``overrides`` on top."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    overrides = dict(overrides or {})
    return WhisperGPTConfig(**overrides) if preset == "custom" else WhisperGPTConfig.from_preset(preset, **overrides)


def configure_torch(num_processes: int, threads: int | None = None) -> int:
    """Set torch's CPU threads and flush denormals; returns the thread count.

    Default: one core per process is left out of the count (at least one thread), because torch's threads
    spin-wait on cores they do not get on a shared machine; denormal floats slow CPU training severalfold.
    """
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, num_processes) - 1)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return threads


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints`` (temporary folders are ignored)."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(path for path in root.glob("step-*") if (path / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _save_checkpoint(
    accelerator: Any, output_dir: Path, state: dict[str, Any], keep: int, stream_position: dict[str, Any] | None = None
) -> Path:
    """``accelerator.save_state`` into a temporary folder, then rename it: a crash never leaves a partial checkpoint.

    ``state`` (step, epoch, batches_in_epoch and the ``run`` identity that `--resume` checks) becomes its
    trainer_state.json; ``stream_position`` (a run on a stream: this process's epoch, batches and
    `StreamedCrops` position) its ``STREAM_POSITION`` file.
    """
    root = output_dir / CHECKPOINTS
    final = root / f"step-{state['step']:08d}"
    partial = root / f".step-{state['step']:08d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its own RNG state
    if stream_position is not None:
        (partial / STREAM_POSITION.format(accelerator.process_index)).write_text(json.dumps(stream_position) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _flatten(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Scalar metrics for trackers: overall, codebook 0 and per codebook."""
    flat = {f"{prefix}/{name}": metrics[name] for name in ("nll", "accuracy", "perplexity")}
    flat.update({f"{prefix}/codebook_0_{name}": metrics["codebook_0"][name] for name in ("nll", "accuracy")})
    for entry in metrics["per_codebook"][1:]:
        flat.update({f"{prefix}/codebook_{entry['codebook']}_{name}": entry[name] for name in ("nll", "accuracy")})
    return {name: value for name, value in flat.items() if value is not None}


class _MetricsLog:
    """``metrics.jsonl`` on the main process: one JSON object per logged step or evaluation."""

    def __init__(self, path: Path, active: bool, keep_until_step: int | None):
        """``keep_until_step``: the step a resumed run continues from (later records are dropped); None for a new
        run, whose folder `_claim_output_dir` has checked to hold no earlier metrics."""
        self.path = path
        self.active = active
        if active and keep_until_step is not None and path.is_file():
            # A resumed run rewrites history after its checkpoint, so the file matches the run that continues.
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["step"] <= keep_until_step]
            _write_atomically(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.active:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def _trackers(config: TrainingConfig) -> str | None:
    if config.report_to in ("none", ""):
        return None
    if config.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401  (accelerate's tracker needs it; checked here for a clear message)
        except ImportError:
            logger.warning("TensorBoard is not installed (pip install tensorboard); logging to metrics.jsonl only.")
            return None
    return config.report_to


def _processor_for(config: TrainingConfig, accelerator: Any, model_cfg: WhisperGPTConfig) -> WhisperGPTProcessor:
    """Load the given processor, or calibrate a local codec on the training audio (main process) and share it.

    A calibrated processor is kept in OUTPUT_DIR/processor with the record of its corpus and settings
    (`_calibration_source`); `_claim_output_dir` has already refused or removed one made for other data.
    """
    if config.processor:
        return WhisperGPTProcessor.from_pretrained(config.processor)
    target = Path(config.output_dir) / PROCESSOR_DIR
    if accelerator.is_main_process and not (target / CALIBRATION_FILE).is_file():
        audio, source = _calibration_source(config, model_cfg)
        processor, stats = build_processor(
            audio,
            num_mel_bins=model_cfg.num_mel_bins,
            codebook_size=model_cfg.codebook_size,
            bandwidth=source["bandwidth"],
            max_frames=config.calibration_max_frames,
            iterations=config.calibration_iterations,
            encoder_steps=config.calibration_encoder_steps,
            seed=config.seed,
            progress=config.progress,
        )
        logger.info("calibrated the codec on %d frames: %s", stats["frames"], stats)
        # Written aside and renamed with its record: a kill leaves a complete processor or none.
        partial = target.with_name(f".{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        processor.save_pretrained(str(partial))
        (partial / CALIBRATION_FILE).write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)  # a processor folder without its record is incomplete
        os.replace(partial, target)
    accelerator.wait_for_everyone()
    return WhisperGPTProcessor.from_pretrained(str(target))


def _calibration_source(config: TrainingConfig, model_cfg: WhisperGPTConfig) -> tuple[Any, dict[str, Any]]:
    """The training audio a codec is calibrated on, shuffled by the seed (the encoder fit reads the first minutes,
    which then come from the whole corpus), and the record that identifies the calibration: a hash of the files'
    paths (relative to ``train_data``) and sizes, or the fingerprint of a saved dataset's train split; their count;
    the calibration settings. Audio files come as a list of paths, a dataset's audio as a lazy iterator."""
    from ..apps.corpus import audio_files

    root = Path(str(config.train_data))
    if is_saved_dataset(root):
        audio, corpus, count = dataset_audio(root, "train", seed=config.seed)
    else:
        audio = audio_files(root, split="train")
        if not audio:
            raise ValueError(f"{config.train_data} holds no training audio to calibrate a codec on.")
        digest = hashlib.sha256()
        for file in sorted(audio):
            digest.update(f"{file.relative_to(root).as_posix()}\0{file.stat().st_size}\n".encode())
        corpus, count = digest.hexdigest(), len(audio)
        random.Random(config.seed).shuffle(audio)
    source = {
        "corpus": corpus,
        "files": count,
        "num_mel_bins": model_cfg.num_mel_bins,
        "codebook_size": model_cfg.codebook_size,
        # 75 frames/s x 10 bits per codebook: 1.5 kbps gives 2 codebooks, 6 kbps gives 8.
        "bandwidth": config.calibration_bandwidth or 0.75 * 2 ** max(1, math.ceil(math.log2(model_cfg.num_codebooks))),
        "max_frames": config.calibration_max_frames,
        "iterations": config.calibration_iterations,
        "encoder_steps": config.calibration_encoder_steps,
        "seed": config.seed,
        "train_data": str(root.resolve()),  # for messages; a moved corpus is the same corpus
    }
    return audio, source


def _check_calibrated_processor(config: TrainingConfig, model_cfg: WhisperGPTConfig) -> None:
    """Refuse (or, with ``overwrite_output_dir``, remove) an OUTPUT_DIR/processor calibrated for other data."""
    target = Path(config.output_dir) / PROCESSOR_DIR
    if not target.exists():
        return
    record = target / CALIBRATION_FILE
    if not record.is_file():
        problem = f"it has no {CALIBRATION_FILE} saying which corpus it was calibrated on"
    else:
        saved = json.loads(record.read_text())
        _, source = _calibration_source(config, model_cfg)
        differences = [
            f"{key}: {saved.get(key)!r} then, {source[key]!r} now"
            for key in source
            if key != "train_data" and saved.get(key) != source[key]
        ]
        if not differences:
            return
        if "corpus" in {difference.split(":")[0] for difference in differences}:
            differences.insert(0, f"calibrated on {saved.get('train_data')}, training on {source['train_data']}")
        problem = "it was calibrated for other data or settings (" + "; ".join(differences) + ")"
    if config.overwrite_output_dir:
        logger.warning("overwrite_output_dir: recalibrating %s, because %s.", target, problem)
        shutil.rmtree(target)
        return
    raise ValueError(
        f"{target} cannot be reused: {problem}. Pass --overwrite-output-dir (overwrite_output_dir=True) to "
        f"calibrate a new codec there, --processor {target} to train with it anyway, or another output folder."
    )


class _OutputLock:
    """OUTPUT_DIR/training.lock: the pid, host and start time of the run that holds the folder.

    Taken by creating the file exclusively (a hard link of a complete temporary file, so a reader never sees it
    half-written); a lock whose process is dead on this host is stale and taken over with a warning.
    """

    def __init__(self, path: Path, record: dict[str, Any]):
        self.path = path
        self.record = record

    @classmethod
    def acquire(cls, folder: Path) -> _OutputLock:
        path = folder / LOCK_FILE
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": uuid.uuid4().hex,  # tells this run's lock from a later one of the same process
        }
        handle, name = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", dir=folder)
        staged = Path(name)
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(record) + "\n")
        try:
            for attempt in range(2):
                try:
                    os.link(staged, path)
                    return cls(path, record)
                except FileExistsError:
                    holder = _read_lock(path)
                    if attempt == 0 and holder is not None and _is_stale(holder):
                        logger.warning(
                            "%s was left by process %s, which no longer runs on this host; taking it over.",
                            path,
                            holder["pid"],
                        )
                        path.unlink(missing_ok=True)
                        continue
                    owner = (
                        f"process {holder['pid']} on {holder['host']}, started {holder['started']}"
                        if holder is not None
                        else "a run whose lock cannot be read"
                    )
                    raise ValueError(
                        f"{folder} is in use by another training run ({owner}). Wait for it to finish, or train into "
                        f"another output folder; if that run is gone (another host, or a reused pid), delete {path}."
                    ) from None
            raise AssertionError("unreachable: the second attempt returns or raises")
        finally:
            staged.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still this run's (it is not when someone deleted and retook it)."""
        if _read_lock(self.path) == self.record:
            self.path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"pid", "host", "started"} <= set(holder) else None


def _is_stale(holder: dict[str, Any]) -> bool:
    """True when the lock's process ran on this host and is gone (a lock from another host is never judged)."""
    if holder["host"] != socket.gethostname() or not isinstance(holder["pid"], int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _found_run_records(output_dir: Path) -> list[str]:
    """The names in ``RUN_RECORDS`` that ``output_dir`` holds (an empty checkpoints folder does not count)."""
    found = []
    for name in RUN_RECORDS:
        path = output_dir / name
        if (path.is_dir() and any(path.iterdir())) or path.is_file():
            found.append(name)
    return found


def _check_ownership(config: TrainingConfig) -> None:
    """Refuse a new run into a folder that holds another run, unless it resumes that run or overwrites it."""
    output_dir = Path(config.output_dir)
    found = _found_run_records(output_dir)
    if not found:
        return
    if config.resume:
        resumed = Path(config.resume).resolve() if config.resume != "latest" else None
        if resumed is None or resumed.is_relative_to((output_dir / CHECKPOINTS).resolve()):
            return
        raise ValueError(
            f"{output_dir} holds another training run ({', '.join(found)}), and the checkpoint to resume, "
            f"{config.resume}, is not one of its own. Continue that checkpoint's run in an empty output folder."
        )
    if config.overwrite_output_dir:
        logger.warning("overwrite_output_dir: deleting the previous run's %s in %s", ", ".join(found), output_dir)
        for name in found:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    raise ValueError(
        f"{output_dir} holds another training run ({', '.join(found)}). Pass --resume (resume='latest') to "
        "continue it, --overwrite-output-dir (overwrite_output_dir=True) to delete it and start over, or choose "
        "another output folder."
    )


def _claim_output_dir(
    accelerator: Any, config: TrainingConfig, model_cfg: WhisperGPTConfig, calibrates: bool
) -> _OutputLock | None:
    """On the main process: create the output folder, take its lock, and check that this run may use it (see
    `train`). A refusal is raised on every process. Returns the lock (main process) or None."""
    from accelerate.utils import broadcast_object_list

    lock, failure = None, None
    if accelerator.is_main_process:
        try:
            Path(config.output_dir).mkdir(parents=True, exist_ok=True)
            lock = _OutputLock.acquire(Path(config.output_dir))
            _check_ownership(config)
            if calibrates:
                _check_calibrated_processor(config, model_cfg)
        except Exception as error:  # re-raised below; the other processes must not wait for this one forever
            if lock is not None:
                lock.release()
            failure = error
    message = str(failure) if failure is not None else None
    if accelerator.num_processes > 1:
        message = broadcast_object_list([message])[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise ValueError(message)
    return lock


def _run_identity(
    config: TrainingConfig,
    model_cfg: WhisperGPTConfig,
    processor: WhisperGPTProcessor,
    train_set: Any,
    max_frames: int,
    num_processes: int,
) -> dict[str, Any]:
    """What makes a resumed run the continuation of the run that wrote the checkpoint: the model config, the
    batch, crops, optimizer and schedule, the process count (one RNG state each), the processor and the data."""
    model = {key: value for key, value in model_cfg.to_dict().items() if key not in ("transformers_version",)}
    return {
        "model_config": json.loads(json.dumps(model, sort_keys=True, default=str)),
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_frames": max_frames,
        "pack": config.pack,
        "seed": config.seed,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "adam_beta2": config.adam_beta2,
        "warmup_steps": config.warmup_steps,
        "max_steps": config.max_steps,
        "max_grad_norm": config.max_grad_norm,
        "mixed_precision": config.mixed_precision,
        "num_processes": num_processes,
        "processor": processor_fingerprint(processor),
        "train_data": _data_identity(train_set),
    }


def _data_identity(train_set: Any) -> str:
    """A prepared dataset carries the fingerprint of its processor and source files; other datasets their size; a
    stream has neither, so only its shards and columns are checked."""
    import datasets

    if isinstance(train_set, datasets.IterableDataset):
        return f"a stream of {train_set.n_shards} shards per process with columns {', '.join(train_set.column_names)}"
    return getattr(train_set, "_fingerprint", None) or f"{type(train_set).__name__} of {len(train_set)}"


def _identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    differences = []
    for key in sorted(set(saved) | set(current)):
        then, now = saved.get(key), current.get(key)
        if key == "model_config" and isinstance(then, dict) and isinstance(now, dict):
            differences += [
                f"model config {name}: {then.get(name)!r} in the checkpoint, {now.get(name)!r} now"
                for name in sorted(set(then) | set(now))
                if then.get(name) != now.get(name)
            ]
        elif then != now:
            differences.append(f"{key}: {then!r} in the checkpoint, {now!r} now")
    return differences


def _check_resume(path: Path, saved: dict[str, Any], identity: dict[str, Any], config: TrainingConfig) -> None:
    """Refuse to resume from a checkpoint of another run configuration, or one whose random states are unreadable
    (unless ``ignore_missing_rng_state``)."""
    from accelerate.utils import load

    if "run" not in saved:
        logger.warning("%s records no run configuration (an older checkpoint); it is resumed unchecked.", path)
    else:
        differences = _identity_differences(saved["run"], identity)
        if differences:
            raise ValueError(
                f"Cannot resume from {path}: it was written by a run with other settings ("
                + "; ".join(differences)
                + "). Resume with the checkpoint's settings, or start a new run in another output folder."
            )
    problems = []
    for index in range(identity["num_processes"]):
        file = path / f"random_states_{index}.pkl"
        try:
            states = load(file)
        except FileNotFoundError:
            problems.append(f"{file.name} is missing")
            continue
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            problems.append(f"{file.name} cannot be read ({type(error).__name__}: {str(error)[:200]})")
            continue
        if not isinstance(states, dict) or not {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(
            states
        ):
            problems.append(f"{file.name} lacks the Python, NumPy or torch random state")
    if not problems:
        return
    consequence = "the run would continue with other random draws (dropout) than the uninterrupted run"
    if config.ignore_missing_rng_state:
        logger.warning("Resuming from %s inexactly: %s; %s.", path, "; ".join(problems), consequence)
        return
    raise ValueError(
        f"Cannot resume exactly from {path}: {'; '.join(problems)}, so {consequence}. Pass "
        "--ignore-missing-rng-state (ignore_missing_rng_state=True) to resume anyway, inexactly."
    )


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it over ``path``: a kill leaves the old file or the new one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` in place of ``target``: a kill leaves the previous ``target`` (possibly
    renamed aside to ``.NAME.old``) or the new one, never a mixture."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def build_optimizer(
    model: torch.nn.Module, learning_rate: float, weight_decay: float = 0.1, adam_beta2: float = 0.95
) -> torch.optim.AdamW:
    """The optimizer every training run of the package uses: AdamW with betas (0.9, ``adam_beta2``) and
    ``weight_decay`` on the parameters of two or more dimensions (matrices, embeddings) only."""
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be at least 0, got {weight_decay}.")
    # Decaying biases and LayerNorm gains only pulls them away from their roles.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, adam_beta2))


def train(
    config: TrainingConfig,
    *,
    model: torch.nn.Module | None = None,
    processor: WhisperGPTProcessor | None = None,
    train_dataset: Any = None,
    validation_dataset: Any = None,
) -> dict[str, Any]:
    """Train a model as ``config`` says; returns a summary (final metrics, history, timing, output folder).

    Runs in the current process or, launched with ``accelerate launch``, in each of several processes.

    The output folder belongs to one run. The main process holds ``OUTPUT_DIR/training.lock`` while it trains, so
    a second run into the folder is refused (a lock left by a process that is dead on this host is taken over).
    A new run into a folder that holds another run's records (checkpoints/, final/, metrics.jsonl,
    training_summary.json, logs/) is refused unless ``resume`` continues that run or ``overwrite_output_dir``
    deletes those records first. A resumed run must have the checkpoint's run configuration (model config, batch,
    crops, optimizer and schedule, mixed precision, process count, processor and training data) and every
    process's random states, or it is refused naming what differs or is missing (``ignore_missing_rng_state``
    resumes without the random states, inexactly). A codec calibrated into ``OUTPUT_DIR/processor`` is reused
    only for the same corpus and calibration settings; otherwise the run is refused, or with
    ``overwrite_output_dir`` the codec is calibrated again. ``mixed_precision=None`` trains in the launcher's
    precision (``accelerate launch --mixed_precision`` or its config file's), else "no"; a given precision overrides
    the launcher's "no" and is refused when the launcher asks for another one. ``mixed_precision='fp16'`` on the CPU
    (where it has no effect), a model with float16 parameters (pure fp16 training) and an FSDP launch that
    Accelerate would not shard (FSDP needs GPUs: on the CPU it would train plain DDP) are refused.

    Args:
        config: the run's settings.
        model: a model to train instead of one built from ``config.preset`` and ``model_overrides`` (which must
            then be ``"custom"`` and empty): a `WhisperGPTForCausalLM`, or a module with its ``config``,
            ``validate_audio_tokenizer`` and forward (``loss``, ``mel_loss`` and, without labels, ``logits``
            (B, K, L, V)); ``save_final`` needs its ``save_pretrained``. Its initialisation is the caller's.
        processor: the processor (codec and feature extractor) to use instead of loading ``config.processor``
            (which must then be None) or calibrating one.
        train_dataset: data to train on (whole) instead of ``config.train_data``: anything `prepare_dataset`
            takes, e.g. a `datasets.Dataset` with an audio column, a prepared dataset (its layout), or a streamed
            `datasets.IterableDataset`, which each process then reads its own share of (see the module docstring for
            what resuming a stream means); each is checked against the processor.
        validation_dataset: data to validate on (whole, the same kinds; a stream is read into memory once)
            instead of ``config.validation_data`` or the validation split of ``config.train_data``.

    Returns:
        ``steps``, ``finished``, ``num_parameters``; ``history`` (one record per ``log_every`` steps: loss,
        learning rate, gradient norm, frames/s and seconds per step of that window); ``validation`` (the last
        `evaluate_model` result, None without validation) and ``evaluations`` (every validation as ``step``,
        ``epoch``, ``validation``); ``train_seconds`` (optimizer steps, data loading included),
        ``evaluation_seconds``, ``seconds`` (the whole loop), ``train_frames``, ``train_frames_per_second``,
        ``train_examples`` (crops per epoch; None for a stream) and ``epochs`` (fractional epochs trained; for a
        stream, the passes this process completed over its share); ``final_dir`` when a
        final folder was written; the process layout.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration

    _check(config, model=model, processor=processor, train_dataset=train_dataset, validation_dataset=validation_dataset)
    # From here on the config holds the precision the run trains in (recorded in checkpoints and the model card).
    config = dataclasses.replace(config, mixed_precision=_mixed_precision(config.mixed_precision))
    output_dir = Path(config.output_dir)
    on_cpu = not torch.accelerator.is_available()
    if config.mixed_precision == "fp16" and on_cpu:
        raise ValueError(
            "mixed_precision='fp16' has no effect on the CPU (Accelerate trains in float32 there, as with 'no'): use "
            "'bf16' for CPU autocast, or 'no'."
        )
    accelerator = Accelerator(
        # Without a GPU, Accelerate only forms a multi-process (gloo) group when told to run on the CPU.
        cpu=on_cpu,
        mixed_precision=config.mixed_precision,
        log_with=_trackers(config),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / LOGS_DIR)),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if fsdp_asked and accelerator.distributed_type != DistributedType.FSDP:
        raise ValueError(
            "The launcher asks for FSDP (ACCELERATE_USE_FSDP=true), but Accelerate applies FSDP on GPUs (and other "
            f"accelerators) only, in processes a distributed launcher started: this run "
            f"({accelerator.distributed_type.value}, {accelerator.num_processes} process(es)) would train plain DDP, "
            "without sharding. On the CPU launch with a DDP config (examples/accelerate/multi_node_ddp.yaml), "
            "`accelerate launch --cpu` or torchrun."
        )
    if config.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size ({config.batch_size}) is the global batch and must be divisible by the number of processes "
            f"({accelerator.num_processes})."
        )
    model_cfg = model.config if model is not None else model_config(config.preset, config.model_overrides)
    lock = _claim_output_dir(accelerator, config, model_cfg, calibrates=processor is None and not config.processor)
    try:
        return _train_in_claimed_folder(
            config,
            accelerator,
            model=model,
            processor=processor,
            train_dataset=train_dataset,
            validation_dataset=validation_dataset,
        )
    finally:
        if lock is not None:
            lock.release()


def _train_in_claimed_folder(
    config: TrainingConfig,
    accelerator: Any,
    *,
    model: torch.nn.Module | None,
    processor: WhisperGPTProcessor | None,
    train_dataset: Any,
    validation_dataset: Any,
) -> dict[str, Any]:
    """The body of `train`, once the output folder is this run's."""
    import datasets
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    output_dir = Path(config.output_dir)
    resume_from = _resume_path(config)
    threads = configure_torch(accelerator.num_processes, config.torch_threads)
    set_seed(config.seed)

    if model is None:
        # Built right after seeding, before a codec is loaded or calibrated (which draws from the same RNG), so
        # the initialisation depends on the seed alone.
        model = WhisperGPTForCausalLM(model_config(config.preset, config.model_overrides))
    cfg = model.config
    half = [name for name, parameter in model.named_parameters() if parameter.dtype == torch.float16]
    if half:
        raise ValueError(
            f"The model's parameters are float16 ({half[0]} and {len(half) - 1} more): pure fp16 training loses its "
            "small gradients and updates to float16's range and turns the loss to NaN within a few steps. Keep the "
            "parameters in float32 and train with mixed_precision='fp16' (on a GPU) or 'bf16', or convert the model "
            "to bfloat16."
        )
    if processor is None:
        processor = _processor_for(config, accelerator, cfg)
    if processor.feature_extractor.feature_size != cfg.num_mel_bins:
        raise ValueError(
            f"The processor makes {processor.feature_extractor.feature_size} mel bins but the model reads "
            f"{cfg.num_mel_bins}; set num_mel_bins={processor.feature_extractor.feature_size} or use a matching "
            "processor."
        )
    model.validate_audio_tokenizer(processor.audio_tokenizer)
    max_frames = config.max_frames or cfg.max_position_embeddings
    if max_frames > cfg.max_position_embeddings:
        raise ValueError(f"max_frames ({max_frames}) exceeds the model's context ({cfg.max_position_embeddings}).")

    rank, world = accelerator.process_index, accelerator.num_processes

    def prepared(data: Any, split: str | None, share: bool) -> Any:
        """``data`` through `prepare_dataset`; a stream split between processes when ``share``."""
        options = {"split": split, "cache_dir": config.cache_dir, "progress": config.progress}
        if isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
            return prepare_dataset(
                data, processor, rank=rank if share else None, world_size=world if share else None, **options
            )
        return prepare_dataset(data, processor, num_proc=config.num_proc, **options)

    with accelerator.main_process_first():  # the main process encodes, the others read its cache
        if train_dataset is not None:
            train_set = prepared(train_dataset, None, share=True)
        else:
            train_set = prepared(config.train_data, "train", share=True)
        # A separate validation folder is used whole; otherwise the validation split of the training data.
        validation_set = None
        if config.validate and validation_dataset is not None:
            validation_set = prepared(validation_dataset, None, share=False)
        elif config.validate and config.validation_data:
            validation_set = prepared(config.validation_data, None, share=False)
        elif config.validate:
            validation_set = prepared(config.train_data, "validation", share=False)
        if validation_set is not None:
            validation_set = stream_to_dataset(validation_set)  # read once, not at every validation

    streamed = isinstance(train_set, datasets.IterableDataset)
    collate = WhisperGPTDataCollator(max_frames=max_frames, random_crop=True, seed=config.seed)
    # Its own generator: creating an iterator draws a seed, which must not shift the global RNG (dropout) that
    # checkpoints restore, or a resumed run (which creates its iterator at another time) would diverge.
    loader_generator = torch.Generator().manual_seed(config.seed)
    optimizer = build_optimizer(model, config.learning_rate, config.weight_decay, config.adam_beta2)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    if streamed:
        crops = StreamedCrops(train_set, max_frames, pack=config.pack, shard=rank)
        # Each process reads its own share, so Accelerate must not split the batches again: it gets no loader.
        loader = torch.utils.data.DataLoader(
            crops, batch_size=config.batch_size // world, collate_fn=collate, drop_last=True, generator=loader_generator
        )
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        batches_per_epoch = None
    else:
        crops = TrainingCrops(train_set, max_frames, pack=config.pack)
        if len(crops) < config.batch_size:
            raise ValueError(
                f"The training data gives {len(crops)} examples, fewer than batch_size={config.batch_size}."
            )
        sampler = EpochShuffleSampler(len(crops), seed=config.seed)
        loader = torch.utils.data.DataLoader(
            crops,
            batch_size=config.batch_size,
            sampler=sampler,
            collate_fn=collate,
            drop_last=True,
            generator=loader_generator,
        )
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        batches_per_epoch = len(loader)
    num_parameters = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())

    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0}
    identity = _run_identity(config, cfg, processor, train_set, max_frames, accelerator.num_processes)
    if resume_from is not None:
        saved = json.loads((resume_from / STATE_FILE).read_text())
        _check_resume(resume_from, saved, identity, config)
        accelerator.load_state(str(resume_from))
        state = {key: saved[key] for key in state}
        if streamed:
            position = _stream_position(resume_from, rank)
            state.update(epoch=position["epoch"], batches_in_epoch=position["batches_in_epoch"])
            crops.load_state_dict(position["crops"])
        accelerator.print(f"resumed from {resume_from} at step {state['step']}")
        own = (output_dir / CHECKPOINTS).resolve()
        if accelerator.is_main_process and resume_from.resolve().parent == own:
            # Later checkpoints belong to the continuation given up by resuming earlier (its metrics are dropped
            # below too); left in place, "latest" would return to it and rotation would delete the new ones.
            for later in sorted(path for path in own.glob("step-*") if path.name > resume_from.name):
                logger.warning("removing %s: resuming from the earlier %s replaces it", later, resume_from.name)
                shutil.rmtree(later)
        accelerator.wait_for_everyone()
    log = _MetricsLog(output_dir / METRICS_FILE, accelerator.is_main_process, state["step"] if resume_from else None)
    if accelerator.log_with:
        hparams = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("whisper-gpt", config={**hparams, "num_parameters": num_parameters})

    def micro_batches():
        """The stream of batches across epochs, starting where ``state`` says; updates ``state`` as it goes."""
        while True:
            if streamed:
                for batch in loader:
                    state["batches_in_epoch"] += 1
                    yield {name: tensor.to(accelerator.device) for name, tensor in batch.items()}
                if state["batches_in_epoch"] == 0:
                    raise ValueError(
                        f"Process {rank}'s share of the training stream gave no batch of {config.batch_size // world} "
                        f"examples in epoch {state['epoch']}: give more data, a smaller batch_size or fewer processes."
                    )
                crops.set_epoch(state["epoch"] + 1)
            else:
                loader.set_epoch(state["epoch"])
                sampler.set_epoch(state["epoch"])
                skip = state["batches_in_epoch"]
                for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
                    state["batches_in_epoch"] += 1
                    yield batch
            state["epoch"] += 1
            state["batches_in_epoch"] = 0

    def epochs_done() -> float:
        """Epochs trained: fractional over a map-style dataset; over a stream, whose length is unknown, the passes
        this process has completed over its share."""
        if streamed:
            return float(state["epoch"])
        return state["epoch"] + state["batches_in_epoch"] / batches_per_epoch

    stream = micro_batches()
    if streamed:
        stream = _first_batch_everywhere(accelerator, stream)
    stop = min(config.max_steps, config.stop_at_step or config.max_steps)
    accumulation = config.gradient_accumulation_steps
    history: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    evaluation: dict[str, Any] | None = None
    bar = tqdm(
        total=config.max_steps,
        initial=state["step"],
        desc="training",
        unit="step",
        disable=not (config.progress and accelerator.is_local_main_process),
    )
    started = time.perf_counter()
    # Step time counts the optimizer steps with their data loading; logging, validation and checkpoints are not in it.
    train_seconds = evaluation_seconds = 0.0
    train_frames = 0
    window_seconds, window_steps, window_frames = 0.0, 0, 0
    model.train()
    while state["step"] < stop:
        step_started = time.perf_counter()
        losses, mel_losses = [], []
        for micro in range(accumulation):
            batch = next(stream)
            if not cfg.trains_on_mel_frames:
                batch.pop("input_features", None)
            window_frames += int(batch["attention_mask"].sum())  # this process's share of the batch
            # Gradients are all-reduced only on the last micro-batch of an optimizer step.
            sync = nullcontext() if micro == accumulation - 1 else accelerator.no_sync(model)
            with sync:
                output = model(**batch, use_cache=False)
                accelerator.backward(output.loss / accumulation)
            losses.append(output.loss.detach())
            if output.mel_loss is not None:
                mel_losses.append(output.mel_loss.detach())
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        step_seconds = time.perf_counter() - step_started
        train_seconds += step_seconds
        window_seconds += step_seconds
        window_steps += 1
        bar.update(1)
        step = state["step"]
        if step % config.log_every == 0 or step == stop:
            train_loss = float(accelerator.reduce(torch.stack(losses).mean(), reduction="mean"))
            frames = int(accelerator.reduce(torch.tensor(window_frames, device=accelerator.device), reduction="sum"))
            train_frames += frames
            record = {
                "step": step,
                "epoch": state["epoch"],
                "train/loss": train_loss,
                "train/learning_rate": scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm),
                "train/frames_per_second": frames / window_seconds if window_seconds > 0 else None,
                "train/seconds_per_step": window_seconds / window_steps,
            }
            if mel_losses:  # the mel head's L1, included in train/loss with weight mel_loss_weight
                record["train/mel_loss"] = float(accelerator.reduce(torch.stack(mel_losses).mean(), reduction="mean"))
            window_seconds, window_steps, window_frames = 0.0, 0, 0
            history.append(record)
            log.write(record)
            accelerator.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=step)
            bar.set_postfix(loss=f"{train_loss:.3f}")
        if config.validate and ((config.eval_every and step % config.eval_every == 0) or step == config.max_steps):
            evaluation_started = time.perf_counter()
            evaluation = evaluate_model(
                model,
                validation_set,
                window=config.eval_window,
                batch_size=config.eval_batch_size,
                accelerator=accelerator,
                progress=config.progress,
            )
            evaluation_seconds += time.perf_counter() - evaluation_started
            evaluations.append({"step": step, "epoch": epochs_done(), "validation": evaluation})
            log.write({"step": step, "validation": {k: v for k, v in evaluation.items() if k != "nll_by_context"}})
            accelerator.log(_flatten(evaluation, "validation"), step=step)
            accelerator.print(
                f"step {step}: validation NLL {evaluation['nll']:.4f}, accuracy {evaluation['accuracy']:.2%}"
            )
            model.train()
        if (config.save_every and step % config.save_every == 0) or (step == stop < config.max_steps):
            position = {**state, "crops": crops.state_dict()} if streamed else None
            _save_checkpoint(accelerator, output_dir, {**state, "run": identity}, config.save_total_limit, position)
    bar.close()
    seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        record = {"steps": state["step"], "seconds": seconds, "num_processes": accelerator.num_processes}
        _write_atomically(output_dir / SUMMARY_FILE, json.dumps({**record, "validation": evaluation}) + "\n")

    summary: dict[str, Any] = {
        "output_dir": str(output_dir),
        "steps": state["step"],
        "finished": state["step"] >= config.max_steps,
        "num_parameters": num_parameters,
        "seconds": seconds,
        "train_seconds": train_seconds,
        "evaluation_seconds": evaluation_seconds,
        "train_frames": train_frames,
        "train_frames_per_second": train_frames / train_seconds if train_seconds > 0 else None,
        "train_examples": None if streamed else len(crops),
        "epochs": epochs_done(),
        "threads_per_process": threads,
        "num_processes": accelerator.num_processes,
        "is_main_process": accelerator.is_main_process,
        "history": history,
        "evaluations": evaluations,
        "validation": evaluation,
    }
    if summary["finished"] and config.save_final:
        summary["final_dir"] = str(output_dir / FINAL_DIR)
        trained = _model_to_save(accelerator, model)  # a collective under FSDP: every process calls it
        if accelerator.is_main_process:
            save_final(trained, processor, output_dir / FINAL_DIR, config, evaluation)
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _model_to_save(accelerator: Any, model: torch.nn.Module) -> torch.nn.Module | None:
    """The trained ``model`` (as `accelerator.prepare` returned it) in the form `save_final` writes: on the main
    process the model itself, None on the others.

    Under FSDP every process must call this, because it gathers the sharded weights (a collective). The model
    Accelerate unwraps there is FSDP's own subclass of the model's class (``FSDP<Class>`` under FSDP2), whose
    tensors are shards and whose ``save_pretrained`` would copy torch's FSDP sources as remote code; so the full
    state dict is loaded into a new model of the original class, built from the same config, in the same dtype.
    """
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import FSDPModule

    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type != DistributedType.FSDP:
        return unwrapped if accelerator.is_main_process else None
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    original = next(cls for cls in type(unwrapped).__mro__ if not issubclass(cls, FSDPModule))
    plain = original(unwrapped.config).to(next(unwrapped.parameters()).dtype)
    plain.load_state_dict(state_dict)
    return plain


def _mixed_precision(requested: str | None) -> str:
    """The precision a run trains in: ``requested`` (``TrainingConfig.mixed_precision``, ``--mixed-precision``) when
    given, else the launcher's (``ACCELERATE_MIXED_PRECISION``: ``accelerate launch --mixed_precision`` or its config
    file's ``mixed_precision``), else "no".

    A requested precision overrides the launcher's "no", which is also what ``accelerate launch`` sets when told
    nothing; one that differs from another launcher precision is refused, as is a launcher precision training does
    not support (fp8).
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower() or None
    if requested is None:
        if launcher not in (None, "no", "fp16", "bf16"):
            raise ValueError(
                f"The launcher asks for mixed precision {launcher!r} (ACCELERATE_MIXED_PRECISION); training supports "
                "'no', 'fp16' and 'bf16': set one in the launcher or pass --mixed-precision."
            )
        return launcher or "no"
    if launcher not in (None, "no", requested):
        raise ValueError(
            f"--mixed-precision {requested} (mixed_precision={requested!r}) contradicts the launcher's mixed precision "
            f"{launcher!r} (accelerate launch --mixed_precision or its config file's mixed_precision): give it in one "
            "place, or the same value in both."
        )
    return requested


def _first_batch_everywhere(accelerator: Any, batches: Iterator[Any]) -> Iterator[Any]:
    """``batches`` after every process has read its first one: a process whose share of a stream is too small fails
    them all with its message, instead of leaving the others waiting for it in the first gradient reduction."""
    from accelerate.utils import gather_object

    first, failure = None, None
    try:
        first = next(batches)
    except ValueError as error:
        failure = str(error)
    failures = gather_object([failure]) if accelerator.num_processes > 1 else [failure]
    failures = [message for message in failures if message]
    if failures:
        raise ValueError(failures[0])
    return itertools.chain([first], batches)


def _stream_position(checkpoint: Path, rank: int) -> dict[str, Any]:
    """Process ``rank``'s position in its share of the training stream, as the checkpoint recorded it."""
    path = checkpoint / STREAM_POSITION.format(rank)
    try:
        position = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"Cannot resume from {checkpoint}: it holds no {path.name}, the position of process {rank} in the training "
            "stream (it was written by a run on a map-style dataset, or is damaged)."
        ) from None
    except ValueError as error:
        raise ValueError(f"Cannot resume from {checkpoint}: {path.name} cannot be read ({error}).") from None
    if not isinstance(position, dict) or not {"epoch", "batches_in_epoch", "crops"} <= set(position):
        raise ValueError(f"Cannot resume from {checkpoint}: {path.name} lacks the epoch, batch or stream position.")
    return position


def seconds_per_step(
    config: TrainingConfig,
    steps: int = 3,
    *,
    model: torch.nn.Module | None = None,
    processor: WhisperGPTProcessor | None = None,
    train_dataset: Any = None,
) -> float:
    """Mean wall-clock seconds of one optimizer step (data loading included) of the run ``config`` describes.

    Runs `train` itself for ``steps + 1`` steps, with the run's model, data, batch and optimizer, into a temporary
    folder and without validation, checkpoints or final folder; the first step pays for one-off allocations and is
    not counted. ``model``, ``processor`` and ``train_dataset`` are passed to `train` (a given model is trained by
    these steps: pass a fresh one). A run without a processor calibrates a codec first, which is not timed but costs.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    with tempfile.TemporaryDirectory() as folder:
        timing = dataclasses.replace(
            config,
            output_dir=folder,
            max_steps=steps + 1,
            stop_at_step=None,
            warmup_steps=0,
            validate=False,
            save_every=0,
            save_final=False,
            log_every=1,
            report_to="none",
            resume=None,
            progress=False,
        )
        summary = train(timing, model=model, processor=processor, train_dataset=train_dataset)
    return float(np.mean([record["train/seconds_per_step"] for record in summary["history"][1:]]))


def _check(
    config: TrainingConfig,
    *,
    model: torch.nn.Module | None = None,
    processor: WhisperGPTProcessor | None = None,
    train_dataset: Any = None,
    validation_dataset: Any = None,
) -> None:
    if train_dataset is None and not config.train_data:
        raise ValueError("TrainingConfig.train_data is required unless train() is given a train_dataset.")
    if processor is not None and config.processor:
        raise ValueError("train() was given a processor and TrainingConfig.processor; give one of them.")
    if processor is None and not config.processor and not config.train_data:
        raise ValueError(
            "Training on an in-memory dataset needs a processor (TrainingConfig.processor or train(processor=...)): "
            "without one a codec is calibrated on the audio of train_data, and there is none."
        )
    if config.validate and validation_dataset is None and not (config.validation_data or config.train_data):
        raise ValueError(
            "Validation needs validation_data, train_data (its validation split) or a validation_dataset; "
            "or set validate=False."
        )
    if model is not None and (config.preset != "custom" or config.model_overrides):
        raise ValueError(
            "train() was given a model, so the config's preset and model_overrides would be ignored: set "
            "preset='custom' and leave model_overrides empty."
        )
    if model is not None and config.save_final and not hasattr(model, "save_pretrained"):
        raise ValueError(
            "save_final writes the model with save_pretrained, which this model lacks; set save_final=False."
        )
    positive = {
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_steps": config.max_steps,
        "log_every": config.log_every,
        "eval_batch_size": config.eval_batch_size,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if config.warmup_steps < 0 or config.warmup_steps > config.max_steps:
        raise ValueError(
            f"warmup_steps must be between 0 and max_steps ({config.max_steps}), got {config.warmup_steps}."
        )
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {config.learning_rate}.")
    if config.mixed_precision not in (None, "no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be 'no', 'fp16', 'bf16' or None, got {config.mixed_precision!r}.")
    if config.resume and config.overwrite_output_dir:
        raise ValueError(
            "resume continues the run in output_dir and overwrite_output_dir deletes it; give one of them."
        )
    if config.stop_at_step is not None and config.stop_at_step < 1:
        raise ValueError(f"stop_at_step must be at least 1, got {config.stop_at_step}.")
    if config.report_to not in ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "all", "none", ""):
        raise ValueError(f"Unknown tracker {config.report_to!r}.")


def _resume_path(config: TrainingConfig) -> Path | None:
    if not config.resume:
        return None
    path = latest_checkpoint(config.output_dir) if config.resume == "latest" else Path(config.resume)
    if path is None or not (path / STATE_FILE).is_file():
        where = f"under {Path(config.output_dir) / CHECKPOINTS}" if config.resume == "latest" else str(path)
        raise ValueError(f"No complete checkpoint to resume from {where}.")
    return path


def save_final(
    model: WhisperGPTForCausalLM,
    processor: WhisperGPTProcessor,
    folder: Path,
    config: TrainingConfig,
    metrics: dict[str, Any] | None,
) -> None:
    """Write the Hub-ready folder: model, generation config, processor (codec included), model card, metrics
    (eval_results.json, when given).

    Everything is written into ``.NAME.partial`` beside ``folder`` and then renamed into place (`replace_folder`),
    so a kill during the save leaves the previous ``folder`` or none, never a partial one.
    """
    from .model_card import build_model_card

    final = folder
    folder = final.with_name(f".{final.name}.partial")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if metrics is not None:
        (folder / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    settings = {
        "preset": config.preset,
        "global batch (crops)": config.batch_size * config.gradient_accumulation_steps,
        "crop length (frames)": config.max_frames or model.config.max_position_embeddings,
        "short files packed into crops": config.pack,
        "optimizer steps": config.max_steps,
        "learning rate": config.learning_rate,
        "schedule": f"{config.warmup_steps} warmup steps, cosine decay",
        "weight decay": config.weight_decay,
        "gradient clipping": config.max_grad_norm,
        "mixed precision": config.mixed_precision,
        "seed": config.seed,
    }
    data = config.dataset_description or config.train_data or "an in-memory dataset"
    if config.validation_data:
        evaluation_data = Path(config.validation_data).name
    else:
        evaluation_data = (
            f"the validation split of {config.dataset_description or Path(config.train_data or data).name}"
        )
    card = build_model_card(
        model,
        processor,
        metrics=metrics,
        evaluation_data=evaluation_data,
        training_settings=settings,
        training_command=config.command,
        training_description=f"Trained with `whisper_gpt.training` (Accelerate) on {data}.",
    )
    card.save(folder / "README.md")
    replace_folder(folder, final)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``whisper-gpt train`` / ``examples/train_accelerate.py``."""
    defaults = TrainingConfig(output_dir="", train_data="")
    parser.add_argument(
        "train_data",
        help="a folder of audio files, a built corpus, or a dataset saved with save_to_disk (with an 'audio' column, "
        "or prepared); its train split trains",
    )
    parser.add_argument("output_dir", help="checkpoints, logs, metrics.jsonl and the final model (final/)")
    parser.add_argument(
        "--validation-data",
        help="the same kinds of data, used whole for validation (default: TRAIN_DATA's validation split)",
    )
    parser.add_argument("--processor", help="a saved processor; default: calibrate a local codec on the training audio")
    parser.add_argument("--preset", choices=PRESETS, default=defaults.preset)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. --set hidden_size=128 --set num_hidden_layers=2 (custom sizes)",
    )
    for name in (
        "max_frames",
        "batch_size",
        "gradient_accumulation_steps",
        "warmup_steps",
        "max_steps",
        "stop_at_step",
        "eval_every",
        "eval_batch_size",
        "calibration_encoder_steps",
        "eval_window",
        "save_every",
        "save_total_limit",
        "log_every",
        "seed",
        "num_proc",
        "torch_threads",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("learning_rate", "weight_decay", "adam_beta2", "max_grad_norm", "calibration_bandwidth"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default=defaults.mixed_precision,
        help="default: the launcher's (accelerate launch --mixed_precision or its config file's), else no; a "
        "value here overrides the launcher's 'no' and must match any other; fp16 needs a GPU (refused on the CPU, "
        "where it has no effect); bf16 works on both",
    )
    parser.add_argument("--report-to", default=defaults.report_to, help="tensorboard (default), wandb, ..., or none")
    parser.add_argument("--resume", nargs="?", const="latest", help="continue from the latest (or a given) checkpoint")
    parser.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        help="OUTPUT_DIR holds another run: delete its checkpoints, final/, metrics.jsonl, summary and logs, and "
        "start over (a calibrated processor/ is kept when it fits the corpus)",
    )
    parser.add_argument(
        "--ignore-missing-rng-state",
        action="store_true",
        help="resume from a checkpoint whose random states are missing or unreadable (the run is no longer "
        "identical to an uninterrupted one)",
    )
    parser.add_argument("--cache-dir", help="where prepared datasets are cached")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--pack", action="store_true", help="join consecutive files shorter than --max-frames into full examples"
    )


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    values = {name: value for name, value in vars(args).items() if name in fields}
    values["model_overrides"] = _parse_overrides(args.overrides)
    values["progress"] = not args.no_progress
    values["command"] = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return TrainingConfig(**values)


def _train_command(args: argparse.Namespace) -> dict[str, Any]:
    # accelerate launch on the CPU runs one process unless mpirun is set up; start the ones it was asked for here.
    _relaunch_if_accelerate_cpu_started_one_process()
    summary = train(config_from_args(args))
    if not summary["is_main_process"]:
        return summary
    if summary["validation"] is not None:
        print(format_metrics(summary["validation"]))
    if summary.get("final_dir"):
        print(f"saved {summary['final_dir']}")
    return summary


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt train TRAIN_DATA OUTPUT_DIR [options]`` to an argparse subparsers object."""
    parser = subparsers.add_parser("train", help="train a Whisper-GPT model with Accelerate")
    add_arguments(parser)
    parser.set_defaults(handler=_train_command)


def _launch_arguments(launcher_argv: list[str]) -> list[str] | None:
    """The arguments given to ``accelerate launch`` in the command line ``launcher_argv`` of the process that started
    this one (``accelerate launch ...``, ``accelerate-launch ...`` or ``python -m accelerate.commands.launch ...``),
    or None when that process is not Accelerate's launcher."""
    for index, argument in enumerate(launcher_argv):
        if Path(argument).name == "accelerate-launch" or argument == "accelerate.commands.launch":
            return launcher_argv[index + 1 :]
        if argument == "launch" and index > 0 and Path(launcher_argv[index - 1]).name.startswith("accelerate"):
            return launcher_argv[index + 1 :]
    return None


def _torchrun_for_accelerate_cpu(
    launcher_argv: list[str], environment: dict[str, str], default_config: str
) -> list[str] | None:
    """The torchrun command that starts the processes ``accelerate launch`` (command line ``launcher_argv``) asked of
    this machine, when its CPU launcher started one process instead; None when it asked for one process on one
    machine, or ``launcher_argv`` is not Accelerate's launcher.

    The layout is resolved as Accelerate resolves it: ``--num_processes`` (the total over all machines),
    ``--num_machines`` and ``--machine_rank`` from the command line, else from ``--config_file``, else from
    ``default_config`` (Accelerate's default config file, read only without ``--cpu``); one process on one
    machine otherwise. The processes meet at ``environment``'s MASTER_ADDR and MASTER_PORT (the launcher's
    ``main_process_ip`` and ``main_process_port``) and run the script (or ``-m`` module) with the launcher's arguments.
    """
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import ComputeEnvironment

    arguments = _launch_arguments(launcher_argv)
    if arguments is None:
        return None
    args = launch_command_parser().parse_args(arguments)
    layout = {"num_processes": args.num_processes, "num_machines": args.num_machines, "machine_rank": args.machine_rank}
    if args.config_file is not None or (os.path.isfile(default_config) and not args.cpu):
        defaults = load_config_from_file(args.config_file or default_config)
        if defaults.compute_environment == ComputeEnvironment.LOCAL_MACHINE:
            layout = {name: getattr(defaults, name, None) if value is None else value for name, value in layout.items()}
    processes, machines, rank = layout["num_processes"] or 1, layout["num_machines"] or 1, layout["machine_rank"] or 0
    if processes == 1 and machines == 1:
        return None
    if processes % machines or not 0 <= rank < machines:
        raise ValueError(
            f"accelerate launch asked for {processes} CPU processes on {machines} machines, this one of rank {rank}: "
            "num_processes is the total over all machines and must be a multiple of num_machines, and machine_rank "
            "must be between 0 and num_machines - 1."
        )
    script = [*(["--no-python"] if args.no_python else []), *(["-m"] if args.module else [])]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={machines}",
        f"--node_rank={rank}",
        f"--nproc_per_node={processes // machines}",
        f"--master_addr={environment['MASTER_ADDR']}",
        f"--master_port={environment.get('MASTER_PORT', '29500')}",
        *script,
        args.training_script,
        *args.training_script_args,
    ]


def _relaunch_if_accelerate_cpu_started_one_process() -> None:
    """Replace this process by this machine's torchrun processes when ``accelerate launch`` on the CPU asked for
    several processes or machines and started one process (its launcher starts several CPU processes only through
    mpirun, and passes the layout nowhere but its own command line and config file, read here; see
    `_torchrun_for_accelerate_cpu`).

    torchrun's processes find the group through the environment, and Accelerate joins it on the CPU (gloo).
    """
    from accelerate.commands.config import default_config_file

    env = os.environ
    # Accelerate's CPU launcher sets MASTER_ADDR only when it was asked for several processes or machines.
    launched_by_cpu_launcher = env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1") and "MASTER_ADDR" in env
    if not launched_by_cpu_launcher or any(name in env for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return
    try:
        launcher = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        raise ValueError(
            "accelerate launch on the CPU asked for several processes but started one, and its command line cannot "
            "be read here (no /proc) to start the others: run `torchrun --nproc_per_node N` on one machine, or "
            "`torchrun --nnodes M --node_rank R --master_addr HOST0 --master_port PORT --nproc_per_node N` on each "
            "of several."
        ) from None
    command = _torchrun_for_accelerate_cpu(launcher, dict(env), default_config_file)
    if command is None:
        return
    logger.info("accelerate launch --cpu started one process; starting this machine's with %s", shlex.join(command))
    os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``examples/train_accelerate.py`` (run it with ``accelerate launch`` for several processes)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="Train Whisper-GPT with Accelerate.")
    add_arguments(parser)
    return _train_command(parser.parse_args(argv))


__all__ = [
    "PRESETS",
    "TrainingConfig",
    "add_arguments",
    "build_optimizer",
    "configure_torch",
    "latest_checkpoint",
    "model_config",
    "register_cli",
    "replace_folder",
    "save_final",
    "seconds_per_step",
    "train",
]
