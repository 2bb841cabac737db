"""``whisper-gpt demo``: the paper's comparison, end to end, on a fresh machine in about 20 minutes of CPU.

1. builds a small real speech corpus and a small real music corpus (`whisper_gpt.corpus.build_corpus`),
2. calibrates one local EnCodec on training audio of both (no trained codec can be downloaded here),
3. encodes both corpora with `datasets` (cached),
4. trains the paper's hybrid Whisper-GPT and token-only GPT-S for ``minutes`` each per domain (the two models of a
   domain train at the same time, one CPU core each),
5. prints the paper-style table (parameters, NLL, accuracy, perplexity on each domain's held-out files, with the
   paper's numbers beside them) and writes it to ``OUTPUT_DIR/results.md`` and ``results.json``,
6. leaves every model as a Hub-ready folder (``OUTPUT_DIR/models/DOMAIN-MODEL``) and writes a short generated
   continuation of a held-out file by each hybrid model (WAV and PNG, `write_continuation`).

The numbers are honest measurements of minutes of CPU training on under an hour of audio with a locally calibrated
codec; the paper trained far longer on far more audio with the published EnCodec, so only the comparison between
the two models is meaningful, not the absolute values.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODELS = {"gpt_s": ("GPT-S (token-only)", "paper_gpt_s"), "hybrid": ("Whisper-GPT (hybrid)", "paper_hybrid")}
DOMAINS = ("speech", "music")
# arXiv 2412.11449, codebook 0 of the published 24 kHz EnCodec: parameters, NLL (nats), accuracy.
PAPER = {
    ("speech", "gpt_s"): (3.7e6, 2.02, 0.3418),
    ("speech", "hybrid"): (4.0e6, 1.93, 0.3505),
    ("music", "gpt_s"): (3.7e6, 2.78, 0.3496),
    ("music", "hybrid"): (4.0e6, 2.52, 0.3847),
}
# Steps timed before training to turn a time budget into a step count (the cosine schedule needs it up front).
_TIMED_STEPS = 4


def _calibration_files(corpora: dict[str, Path], seconds: float, seed: int) -> list[Path]:
    """A seeded random choice of training files, about ``seconds`` of audio split evenly between the domains."""
    from .corpus import load_manifest

    chosen: list[Path] = []
    for folder in corpora.values():
        rows = [row for row in load_manifest(folder) if row["split"] == "train"]
        order = np.random.default_rng(seed).permutation(len(rows))
        total = 0.0
        for index in order:
            if total >= seconds / len(corpora):
                break
            chosen.append(Path(folder) / rows[index]["path"])
            total += rows[index]["duration"]
    return chosen


def _seconds_per_step(config: Any) -> float:
    """Time a few optimizer steps of ``config``'s model on real training batches, in this process."""
    import torch

    from .data import EpochShuffleSampler, TrainingCrops, WhisperGPTDataCollator, prepare_dataset
    from .modeling_whisper_gpt import WhisperGPTForCausalLM
    from .processing_whisper_gpt import WhisperGPTProcessor
    from .training import model_config

    processor = WhisperGPTProcessor.from_pretrained(config.processor)
    train_set = prepare_dataset(config.train_data, processor, split="train", cache_dir=config.cache_dir, progress=False)
    cfg = model_config(config.preset, config.model_overrides)
    model = WhisperGPTForCausalLM(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    crops = TrainingCrops(train_set, config.max_frames)
    sampler = EpochShuffleSampler(len(crops), seed=config.seed + 1)
    loader = torch.utils.data.DataLoader(
        crops,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=WhisperGPTDataCollator(max_frames=config.max_frames),
        drop_last=True,
    )
    timings = []
    for index, batch in enumerate(loader):
        if not cfg.use_spectrogram:
            batch.pop("input_features")
        started = time.perf_counter()
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - started)
        if index == _TIMED_STEPS:
            break
    return float(np.mean(timings[1:]))  # the first step pays for one-off allocations


def _train_for(config_values: dict[str, Any], minutes: float) -> dict[str, Any]:
    """Worker: size ``max_steps`` to fill ``minutes`` of this process's time, then train. Runs in a subprocess."""
    from .training import TrainingConfig, configure_torch, train

    configure_torch(num_processes=1, threads=config_values["torch_threads"])
    config = TrainingConfig(**config_values)
    step_seconds = _seconds_per_step(config)
    # Validation and saving take a little of the budget too; 90% of it goes to optimizer steps.
    config.max_steps = max(10, int(0.9 * minutes * 60 / step_seconds))
    config.warmup_steps = max(1, config.max_steps // 20)
    config.eval_every = 0
    summary = train(config)
    summary.pop("history")
    summary["seconds_per_step"] = step_seconds
    return summary


def write_continuation(model_dir: str | os.PathLike, prompt: str | os.PathLike, out_stem: Path, seconds: float) -> None:
    """Continue ``prompt`` with the model in ``model_dir``: ``out_stem.wav`` and ``out_stem.png`` (log-mel).

    Uses ``whisper-gpt generate``, so the demo shows exactly what the command gives a user.
    """
    from .cli import main

    main(
        [
            "generate",
            str(model_dir),
            str(prompt),
            "--seconds",
            str(seconds),
            "--prompt-seconds",
            "3",
            "--out",
            str(out_stem.with_suffix(".wav")),
            "--plot",
            str(out_stem.with_suffix(".png")),
        ]
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """The paper-style table: ours beside the paper's, per domain and model.

    ``steps`` is shown because each model gets the same training time, not the same number of steps: the hybrid's
    mel path makes its steps slower.
    """
    header = (
        f"{'domain':<7} {'model':<21} {'params':>10} {'steps':>6} {'NLL':>6} {'acc':>7} {'PPL':>7} | "
        f"{'paper':>6} {'NLL':>5} {'acc':>7} {'PPL':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['domain']:<7} {row['model']:<21} {row['params'] / 1e6:>9.2f}M {row['steps']:>6} {row['nll']:>6.3f} "
            f"{row['accuracy']:>7.2%} {row['perplexity']:>7.2f} | {row['paper_params'] / 1e6:>5.1f}M "
            f"{row['paper_nll']:>5.2f} {row['paper_accuracy']:>7.2%} {math.exp(row['paper_nll']):>6.2f}"
        )
    return "\n".join(lines)


def run_demo(
    output_dir: str | os.PathLike = "runs/demo",
    minutes: float = 6.0,
    corpus_minutes: float = 20.0,
    *,
    seed: int = 0,
    corpora: dict[str, str | os.PathLike] | None = None,
    max_frames: int = 200,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    model_overrides: dict[str, Any] | None = None,
    calibration_seconds: float = 600.0,
    calibration_iterations: int = 20,
    continuation_seconds: float = 2.0,
    parallel: bool = True,
    num_proc: int | None = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole demo; returns the table rows, timings and where everything was written.

    Args:
        minutes: training time of each model (the two models of a domain train side by side).
        corpus_minutes: audio per domain to build (split into train / validation by file).
        corpora: prebuilt corpus folders ``{"speech": ..., "music": ...}`` (skips building).
        max_frames: training crop and evaluation window in frames (200 = 2.7 s).
        model_overrides: config overrides applied to both presets (tests use tiny models).
        calibration_seconds: training audio the codec's k-means sees (about, over both domains).
        parallel: train the two models of a domain in two processes at once (one thread each).
        num_proc: processes encoding the corpora.
    """
    from .configuration_whisper_gpt import WhisperGPTConfig
    from .corpus import build_corpus
    from .data import build_processor, prepare_dataset
    from .training import configure_torch

    started = time.perf_counter()
    # Calibration and evaluation run here; training runs in one process per model with one thread each.
    configure_torch(num_processes=2 if parallel else 1)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    overrides = dict(model_overrides or {})
    if "use_spectrogram" in overrides:
        raise ValueError("The demo compares the hybrid and the token-only model; do not override use_spectrogram.")

    if corpora is None:
        corpora = {}
        for domain in DOMAINS:
            corpora[domain] = out / "corpus" / domain
            build_corpus(domain, corpora[domain], minutes=corpus_minutes, seed=seed, progress=progress)
    corpora = {domain: Path(folder) for domain, folder in corpora.items()}
    timings["corpus"] = time.perf_counter() - started

    mark = time.perf_counter()
    processor_dir = out / "processor"
    if not (processor_dir / "audio_tokenizer").is_dir():
        reference = WhisperGPTConfig(**overrides)
        processor, stats = build_processor(
            _calibration_files(corpora, calibration_seconds, seed),
            num_mel_bins=reference.num_mel_bins,
            codebook_size=reference.codebook_size,
            bandwidth=1.5,  # 2 codebooks: the models read codebook 0 only, as in the paper
            max_frames=100_000,
            iterations=calibration_iterations,
            seed=seed,
        )
        logger.info(
            "codec calibrated on %d frames; codebook 0 entropy %.2f bits", stats["frames"], stats["entropy_bits"][0]
        )
        processor.save_pretrained(processor_dir)
    timings["codec"] = time.perf_counter() - mark

    mark = time.perf_counter()
    from .processing_whisper_gpt import WhisperGPTProcessor

    processor = WhisperGPTProcessor.from_pretrained(processor_dir)
    for domain in DOMAINS:
        for split in ("train", "validation"):
            prepare_dataset(
                corpora[domain], processor, split=split, cache_dir=out / "cache", num_proc=num_proc, progress=progress
            )
    timings["prepare"] = time.perf_counter() - mark

    mark = time.perf_counter()
    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    pool = ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) if parallel else None
    try:
        for domain in DOMAINS:
            jobs = {}
            for key, (_, preset) in MODELS.items():
                values = {
                    "output_dir": str(out / "models" / f"{domain}-{key}"),
                    "train_data": str(corpora[domain]),
                    "processor": str(processor_dir),
                    "preset": preset,
                    "model_overrides": overrides,
                    "max_frames": max_frames,
                    "eval_window": max_frames,
                    "batch_size": batch_size,
                    "learning_rate": learning_rate,
                    "seed": seed,
                    "save_every": 0,
                    "log_every": 10,
                    "cache_dir": str(out / "cache"),
                    "torch_threads": 1 if parallel else None,
                    "progress": progress and not parallel,
                    "command": f"whisper-gpt demo --minutes {minutes:g} --output-dir {out}",
                    "dataset_description": f"a {corpus_minutes:g}-minute real {domain} corpus (whisper-gpt corpus)",
                }
                logger.info("training %s on %s for %.1f minutes", preset, domain, minutes)
                # Side by side in two processes (one core each), or one after the other in this process.
                jobs[key] = pool.submit(_train_for, values, minutes) if pool else _train_for(values, minutes)
            for key, job in jobs.items():
                summaries[(domain, key)] = job.result() if pool else job
    finally:
        if pool is not None:
            pool.shutdown()
    timings["training"] = time.perf_counter() - mark

    rows = []
    for (domain, key), summary in summaries.items():
        paper_params, paper_nll, paper_accuracy = PAPER[(domain, key)]
        first = summary["validation"]["codebook_0"]
        rows.append(
            {
                "domain": domain,
                "model": MODELS[key][0],
                "params": summary["num_parameters"],
                "nll": first["nll"],
                "accuracy": first["accuracy"],
                "perplexity": first["perplexity"],
                "validation_codes": first["tokens"],
                "steps": summary["steps"],
                "train_seconds": summary["seconds"],
                "paper_params": paper_params,
                "paper_nll": paper_nll,
                "paper_accuracy": paper_accuracy,
                "model_dir": summary["final_dir"],
            }
        )
    table = format_table(rows)
    timings["total"] = time.perf_counter() - started
    result = {"rows": rows, "table": table, "timings_seconds": timings, "output_dir": str(out)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(
        "Codebook 0, held-out files; NLL in nats per code; paper numbers from arXiv 2412.11449.\n\n```\n"
        + table
        + "\n```\n"
    )
    print(table)
    print(f"\nmodels: {', '.join(row['model_dir'] for row in rows)}")

    if continuation_seconds > 0:
        mark = time.perf_counter()
        from .corpus import audio_files

        for domain in DOMAINS:
            prompt = _prompt_file(audio_files(corpora[domain], split="validation"), seed)
            write_continuation(
                out / "models" / f"{domain}-hybrid" / "final",
                prompt,
                out / f"continuation-{domain}",
                continuation_seconds,
            )
        timings["continuation"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    result["timings_seconds"] = timings
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"demo finished in {timings['total'] / 60:.1f} minutes; results in {out}")
    return result


def _prompt_file(files: list[Path], seed: int) -> Path:
    """A seeded random held-out file long enough for a 3-second prompt (else the longest one)."""
    import soundfile

    durations = [soundfile.info(str(path)).duration for path in files]
    long_enough = [path for path, seconds in zip(files, durations, strict=True) if seconds >= 3.0]
    if not long_enough:
        return files[int(np.argmax(durations))]
    return long_enough[int(np.random.default_rng(seed).integers(len(long_enough)))]


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt demo [--minutes M]`` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "demo", help="build speech and music corpora, train the paper's hybrid and GPT-S models, print the table"
    )
    parser.add_argument("--minutes", type=float, default=6.0, help="training minutes per model (default 6)")
    parser.add_argument("--corpus-minutes", type=float, default=20.0, help="audio per domain (default 20)")
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequential", action="store_true", help="train one model at a time (all cores each)")
    parser.set_defaults(handler=_demo_command)


def _demo_command(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_demo(
        args.output_dir,
        minutes=args.minutes,
        corpus_minutes=args.corpus_minutes,
        seed=args.seed,
        parallel=not args.sequential,
    )


__all__ = ["format_table", "register_cli", "run_demo", "write_continuation"]
