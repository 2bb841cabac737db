"""``whisper-gpt demo``: the paper's comparison, end to end, on a fresh machine in about 20 minutes of CPU.

1. builds a small real speech corpus and a small real music corpus (`whisper_gpt.apps.corpus.build_corpus`),
2. builds one local EnCodec on training audio of both (no trained codec can be downloaded here): its encoder is
   fitted to predict each frame's log-mel (`whisper_gpt.training.codec_fitting.fit_encoder_to_mel`), so the codes
   are spectral prototypes a language model learns quickly, then its codebooks are calibrated by k-means and it
   keeps one real log-mel frame per codebook-0 code (`whisper_gpt.training.codec_fitting.fit_mel_exemplars`),
3. encodes both corpora with `datasets` (cached),
4. trains the paper's hybrid Whisper-GPT and token-only GPT-S for ``minutes`` each per domain (the two models of a
   domain train at the same time, one CPU core each; `whisper_gpt.training.loop.seconds_per_step` turns the minutes
   into each model's step count) on crops of ``max_frames``, with short files packed into full
   crops (most speech files are single words of about a second: unpacked, a crop is mostly padding and the model
   never sees one word end and the next begin),
5. prints the paper-style table (parameters, NLL, accuracy, perplexity on each domain's held-out files, with the
   paper's numbers beside them) and writes it to ``OUTPUT_DIR/results.md`` and ``results.json``,
6. leaves every model as a Hub-ready folder (``OUTPUT_DIR/models/DOMAIN-MODEL``) and writes a short generated
   continuation of a held-out file by each hybrid model (WAV and PNG, `write_continuation`), with a few objective
   numbers that tell it apart from noise without listening (`describe_continuation`).

No trained codec can be downloaded here, so the local codec's decoder makes noise. The continuation is instead
generated with the codec's exemplar frame of each new code as that frame's log-mel and rendered from those frames
with Griffin-Lim (``whisper-gpt generate``'s "auto" choice for such a codec). Real frames keep the harmonics that an
average over what a code stood for (the mel head's frames) blurs away, so the continuation keeps pitch.

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

from ..configuration_whisper_gpt import PAPER_RESULTS

logger = logging.getLogger(__name__)

MODELS = {"gpt_s": ("GPT-S (token-only)", "paper_gpt_s"), "hybrid": ("Whisper-GPT (hybrid)", "paper_hybrid")}
# Config overrides on top of the preset: the hybrid's mel stream enters through a gate that starts closed, because on
# the fitted codec's codes the ungated mel stream slowed the hybrid's learning (scripts/mel_gate_effect.py).
MODEL_EXTRAS: dict[str, dict[str, Any]] = {"gpt_s": {}, "hybrid": {"mel_gate": True}}
DOMAINS = ("speech", "music")
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


def _train_for(config_values: dict[str, Any], minutes: float) -> dict[str, Any]:
    """Worker: size ``max_steps`` to fill ``minutes`` of this process's time, then train. Runs in a subprocess."""
    from ..training.loop import TrainingConfig, configure_torch, seconds_per_step, train

    configure_torch(num_processes=1, threads=config_values["torch_threads"])
    config = TrainingConfig(**config_values)
    step_seconds = seconds_per_step(config, _TIMED_STEPS)
    # Validation and saving take a little of the budget too; 90% of it goes to optimizer steps.
    config.max_steps = max(10, int(0.9 * minutes * 60 / step_seconds))
    config.warmup_steps = max(1, config.max_steps // 20)
    config.eval_every = 0
    summary = train(config)
    summary.pop("history")
    summary["seconds_per_step"] = step_seconds
    return summary


def write_continuation(
    model_dir: str | os.PathLike,
    prompt: str | os.PathLike,
    out_stem: Path,
    seconds: float,
    prompt_seconds: float = 3.0,
    mel_source: str = "auto",
    render: str = "auto",
) -> dict[str, Any]:
    """Continue ``prompt`` with the model in ``model_dir``: ``out_stem.wav`` and ``out_stem.png`` (log-mel).

    Uses ``whisper-gpt generate`` (with ``--mel-source`` / ``--render`` as given, "auto" by default), so the demo shows
    exactly what the command gives a user. Returns where the files are and what the command chose: ``mel_source``
    ("exemplar": the codec's exemplar frames, "learned": the mel head, "codec": decoded codes, None: token-only model),
    ``renderer`` ("mel": Griffin-Lim from the log-mel frames, "codec": the codec's decoder) and ``new_frames``
    (generated frames at the end of the WAV).
    """
    from .cli import run

    wav, png = out_stem.with_suffix(".wav"), out_stem.with_suffix(".png")
    chosen = run(
        [
            "generate",
            str(model_dir),
            str(prompt),
            "--seconds",
            str(seconds),
            "--prompt-seconds",
            str(prompt_seconds),
            "--mel-source",
            mel_source,
            "--render",
            render,
            "--out",
            str(wav),
            "--plot",
            str(png),
        ]
    )
    return {"wav": str(wav), "png": str(png), **chosen, "prompt": str(prompt)}


def _syllable_rate_modulation(frame_db: np.ndarray, frame_rate: float, floor_db: float) -> float | None:
    """Std (dB) of the frame energy (T,) at the rate of syllables and notes (about 1.5-12 Hz): what is left after
    removing the trend over 0.5 s and smoothing over 50 ms. A steady or slowly swelling sound has none. Energies are
    floored at ``floor_db`` so digital silence counts as quiet, not as -200 dB. None for a signal too short to tell
    (under 0.75 s)."""
    level = np.maximum(frame_db, floor_db)
    edge = round(0.25 * frame_rate)  # frames whose trend window reaches past an end
    if len(level) < 3 * edge:
        return None

    def moving_average(values: np.ndarray, seconds: float) -> np.ndarray:
        width = max(1, round(seconds * frame_rate))
        padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")  # a steady sound stays steady
        return np.convolve(padded, np.ones(width) / width, mode="valid")

    band = moving_average(level - moving_average(level, 0.5), 0.05)[edge : len(level) - edge]
    return float(band.std())


def frame_periodicity(
    wave: np.ndarray, rate: int, min_hz: float = 60.0, max_hz: float = 1000.0, active_db: float = 30.0
) -> np.ndarray:
    """Per active 40 ms frame (10 ms apart), the height of the highest autocorrelation peak at the lag of a pitch
    between ``min_hz`` and ``max_hz``: about 1 for a periodic sound (voiced speech, a held note), low for noise.

    The autocorrelation of each Hann-windowed frame is normalised by its value at lag 0 and divided by the window's
    own autocorrelation (Boersma 1993), so a periodic signal reads near 1 at its period's lag however long the lag.
    Frames more than ``active_db`` below the loudest are left out (pauses are neither pitched nor noisy). Returns an
    empty array for a signal shorter than one frame.
    """
    size, hop = round(0.04 * rate), round(0.01 * rate)
    if len(wave) < size:
        return np.zeros(0)
    starts = np.arange(0, len(wave) - size + 1, hop)
    frames = np.asarray(wave, dtype=np.float64)[starts[:, None] + np.arange(size)]  # (N, size)
    frames -= frames.mean(axis=1, keepdims=True)
    energy_db = 10.0 * np.log10((frames**2).mean(axis=1) + 1e-20)
    window = np.hanning(size)
    windowed = frames[energy_db >= energy_db.max() - active_db] * window
    lags = np.arange(math.ceil(rate / max_hz), min(size // 2, math.floor(rate / min_hz)) + 1)
    autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(windowed, 2 * size, axis=1)) ** 2, axis=1)  # (N, 2 * size)
    window_autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(window, 2 * size)) ** 2)
    relative = autocorrelation[:, lags] / np.maximum(autocorrelation[:, :1], 1e-30)
    return (relative / (window_autocorrelation[lags] / window_autocorrelation[0])).max(axis=1)


def _mel_statistics(log_mel: np.ndarray, frame_rate: float, active_db: float = 50.0) -> dict[str, Any]:
    """Per-signal numbers of `describe_continuation` from causal log-mel frames (T, M) in the extractor's scale."""
    from ..feature_extraction_whisper_gpt import LOG_MEL_OFFSET, LOG_MEL_SCALE

    log10_power = log_mel.astype(np.float64) * LOG_MEL_SCALE - LOG_MEL_OFFSET  # (T, M) log10 of mel power
    power = 10.0**log10_power
    frame_db = 10.0 * np.log10(power.sum(axis=1) + 1e-20)  # (T,)
    active = frame_db >= frame_db.max() - active_db
    geometric = np.exp(np.log(power[active] + 1e-20).mean(axis=1))
    flatness = geometric / (power[active].mean(axis=1) + 1e-20)
    return {
        "mean_spectrum_db": 10.0 * log10_power[active].mean(axis=0),  # (M,)
        "spectral_flatness": float(flatness.mean()),
        "energy_std_db": float(frame_db[active].std()),
        "energy_modulation_db": _syllable_rate_modulation(frame_db, frame_rate, frame_db.max() - active_db),
        "active_frames": int(active.sum()),
    }


def describe_continuation(
    wave: np.ndarray,
    sampling_rate: int,
    new_frames: int,
    reference_files: list[Path],
    feature_extractor: Any,
    *,
    max_reference_seconds: float = 60.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Objective, cheap evidence that a generated continuation is (or is not) like the corpus rather than noise.

    ``wave`` is what ``whisper-gpt generate`` wrote (prompt + continuation); its last ``new_frames`` frames are the
    generated part, the rest is the held-out prompt rendered the same way. The reference is the corpus's held-out
    audio (``reference_files``, up to ``max_reference_seconds``). A white Gaussian noise of the generated part's
    length and RMS (equal loudness) is the "it is just noise" baseline. Every number comes from the causal log-mel
    of the feature extractor, over each signal's active frames (within 50 dB of its loudest frame, so silences do
    not dominate a mean of logarithms):

    * ``mel_l1_db``: mean absolute difference, over mel bins, between a signal's average log-mel spectrum and the
      reference's, in dB (lower: closer to the corpus's spectral envelope).
    * ``spectral_flatness``: mean over frames of the geometric / arithmetic mean of the mel power spectrum (about 1
      for white noise; low for voiced speech and pitched music, whose energy sits in formants and harmonics).
    * ``energy_std_db``: standard deviation of the frame energy in dB (near 0 for steady noise; large for speech's
      syllable rhythm and for music's notes, but also for a sound that only swells).
    * ``energy_modulation_db``: the part of that energy's variation at the rate of syllables and notes (about
      1.5-12 Hz; near 0 for a steady or slowly swelling sound; None for under 0.75 s of audio).
    * ``periodicity``: from the waveform, not the log-mel: the median over active 40 ms frames of the highest
      normalised autocorrelation peak at a pitch's lag (60-1000 Hz): about 1 for voiced speech and held notes, about
      0.15 for white noise (None for under 40 ms). The one number here that hears pitch: harmonics blurred into a
      smooth spectrum read low however speech-like the envelope.

    Keys ``continuation``, ``rendered_prompt``, ``corpus`` and ``white_noise`` hold each signal's numbers.
    """
    import soundfile

    def log_mel(audio: np.ndarray, rate: int) -> np.ndarray:
        return np.asarray(feature_extractor(audio.astype(np.float32), sampling_rate=rate)["input_features"][0])

    # Frames of the whole WAV, so the generated frames' analysis windows see the audio before them as in generate().
    frames = log_mel(np.asarray(wave, dtype=np.float32), sampling_rate)
    new_frames = min(new_frames, len(frames))
    generated, prompt_part = frames[len(frames) - new_frames :], frames[: len(frames) - new_frames]
    generated_audio = np.asarray(wave, dtype=np.float64)[len(wave) - round(len(wave) * new_frames / len(frames)) :]
    reference, reference_periodicity, total = [], [], 0.0
    for path in reference_files:
        if total >= max_reference_seconds:
            break
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)[: int((max_reference_seconds - total) * rate) + 1]
        reference.append(log_mel(audio, rate))
        reference_periodicity.append(frame_periodicity(audio, rate))
        total += len(audio) / rate
    rms = float(np.sqrt(np.mean(generated_audio**2))) if len(generated_audio) else 0.0
    # Noise from before the generated part too, so its first frames are not a window half full of zeros.
    lead = feature_extractor.n_fft * sampling_rate // feature_extractor.sampling_rate
    noise = np.random.default_rng(seed).standard_normal(lead + len(generated_audio)) * rms
    signals = {
        "continuation": generated,
        "rendered_prompt": prompt_part,
        "corpus": np.concatenate(reference) if reference else None,
        "white_noise": log_mel(noise, sampling_rate)[-new_frames:],
    }
    periodicity = {
        "continuation": frame_periodicity(generated_audio, sampling_rate),
        "rendered_prompt": frame_periodicity(np.asarray(wave)[: len(wave) - len(generated_audio)], sampling_rate),
        "corpus": np.concatenate(reference_periodicity) if reference else np.zeros(0),
        "white_noise": frame_periodicity(noise[lead:], sampling_rate),
    }
    frame_rate = feature_extractor.sampling_rate / feature_extractor.hop_length
    stats = {name: _mel_statistics(mel, frame_rate) for name, mel in signals.items() if mel is not None and len(mel)}
    result: dict[str, Any] = {
        "generated_seconds": len(generated_audio) / sampling_rate,
        "reference_seconds": total,
        "rms": rms,
    }
    for key in ("spectral_flatness", "energy_std_db", "energy_modulation_db"):
        result[key] = {name: values[key] for name, values in stats.items()}
    result["periodicity"] = {
        name: float(np.median(values)) if len(values) else None for name, values in periodicity.items() if name in stats
    }
    if "corpus" in stats:
        target = stats["corpus"]["mean_spectrum_db"]
        result["mel_l1_db"] = {
            name: float(np.abs(values["mean_spectrum_db"] - target).mean())
            for name, values in stats.items()
            if name != "corpus"
        }
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    """The paper-style table: ours beside the paper's, per domain and model.

    ``steps`` is shown because each model gets the same training time, not the same number of steps: the hybrid's
    mel path makes its steps slower. A footnote says how open each gated mel stream ended (``mel_gate``).
    """
    header = (
        f"{'domain':<7} {'model':<21} {'params':>11} {'steps':>6} {'NLL':>6} {'acc':>7} {'PPL':>7} | "
        f"{'paper':>6} {'NLL':>5} {'acc':>7} {'PPL':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['domain']:<7} {row['model']:<21} {row['params'] / 1e6:>9.2f}M  {row['steps']:>6} "
            f"{row['nll']:>6.3f} {row['accuracy']:>7.2%} {row['perplexity']:>7.2f} | "
            f"{row['paper_params'] / 1e6:>5.1f}M {row['paper_nll']:>5.2f} {row['paper_accuracy']:>7.2%} "
            f"{row['paper_perplexity']:>6.2f}"
        )
    gates = [f"{row['domain']} {row['mel_gate']:.3f}" for row in rows if row.get("mel_gate") is not None]
    if gates:
        lines.append(
            "  The hybrid's mel stream enters through a learned gate tanh(g) that starts at 0 (mel_gate=True), so it\n"
            "  starts as GPT-S and can open the mel path if the mel frames help; near 0 the mel frames are unused.\n"
            f"  After training: {', '.join(gates)}."
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
    codec_encoder_steps: int = 400,
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
        calibration_seconds: training audio the codec's encoder fit and k-means see (about, over both domains).
        codec_encoder_steps: steps fitting the codec's encoder to log-mel (`fit_encoder_to_mel`; 0: skip).
        parallel: train the two models of a domain in two processes at once (one thread each).
        num_proc: processes encoding the corpora.
    """
    from ..configuration_whisper_gpt import WhisperGPTConfig
    from ..training.data import build_processor, prepare_dataset
    from ..training.loop import configure_torch
    from .corpus import build_corpus

    started = time.perf_counter()
    # Calibration and evaluation run here; training runs in one process per model with one thread each.
    configure_torch(num_processes=2 if parallel else 1)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    overrides = dict(model_overrides or {})
    for name in ("use_spectrogram", "use_mel_head"):
        if name in overrides:
            raise ValueError(f"The demo compares the paper's hybrid and token-only models; do not override {name}.")

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
        # Nothing else runs while the codec is fitted, so every core works on it.
        configure_torch(num_processes=1, threads=len(os.sched_getaffinity(0)))
        reference = WhisperGPTConfig(**overrides)
        processor, stats = build_processor(
            _calibration_files(corpora, calibration_seconds, seed),
            num_mel_bins=reference.num_mel_bins,
            codebook_size=reference.codebook_size,
            bandwidth=1.5,  # 2 codebooks: the models read codebook 0 only, as in the paper
            max_frames=100_000,
            iterations=calibration_iterations,
            encoder_steps=codec_encoder_steps,
            encoder_seconds=calibration_seconds,
            progress=progress,
            seed=seed,
        )
        logger.info(
            "codec calibrated on %d frames; codebook 0 entropy %.2f bits", stats["frames"], stats["entropy_bits"][0]
        )
        processor.save_pretrained(processor_dir)
        configure_torch(num_processes=2 if parallel else 1)
    timings["codec"] = time.perf_counter() - mark

    mark = time.perf_counter()
    from ..processing_whisper_gpt import WhisperGPTProcessor

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
                    # A rerun of the demo replaces its own earlier models rather than refusing the folder.
                    "overwrite_output_dir": True,
                    "train_data": str(corpora[domain]),
                    "processor": str(processor_dir),
                    "preset": preset,
                    "model_overrides": {**overrides, **MODEL_EXTRAS[key]},
                    "max_frames": max_frames,
                    "pack": True,
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
        paper = PAPER_RESULTS[MODELS[key][1]]
        first = summary["validation"]["codebook_0"]
        gate = _mel_gate(summary["final_dir"])
        rows.append(
            {
                "domain": domain,
                "model": MODELS[key][0],
                "params": summary["num_parameters"],
                "mel_gate": gate,
                "nll": first["nll"],
                "accuracy": first["accuracy"],
                "perplexity": first["perplexity"],
                "validation_codes": first["tokens"],
                "steps": summary["steps"],
                "train_seconds": summary["seconds"],
                "paper_params": paper["params"],
                "paper_nll": paper[domain]["nll"],
                "paper_accuracy": paper[domain]["accuracy"],
                "paper_perplexity": paper[domain]["perplexity"],
                "model_dir": summary["final_dir"],
            }
        )
    table = format_table(rows)
    timings["total"] = time.perf_counter() - started
    result = {"rows": rows, "table": table, "timings_seconds": timings, "output_dir": str(out)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    _write_results_md(out, table, {})
    print(table)
    print(f"\nmodels: {', '.join(row['model_dir'] for row in rows)}")

    if continuation_seconds > 0:
        mark = time.perf_counter()
        import soundfile

        from .corpus import audio_files

        continuations = {}
        for domain in DOMAINS:
            held_out = audio_files(corpora[domain], split="validation")
            prompt = _prompt_file(held_out, seed)
            written = write_continuation(
                out / "models" / f"{domain}-hybrid" / "final",
                prompt,
                out / f"continuation-{domain}",
                continuation_seconds,
            )
            if (written["mel_source"], written["renderer"]) != ("exemplar", "mel"):
                logger.warning(
                    "%s continuation: mel from %s, rendered by %s (expected the codec's exemplars and Griffin-Lim)",
                    domain,
                    written["mel_source"],
                    written["renderer"],
                )
            wave, rate = soundfile.read(written["wav"], dtype="float32")
            # The reference leaves the prompt's own file out when there are others.
            others = [path for path in held_out if Path(path) != Path(prompt)] or held_out
            written["description"] = describe_continuation(
                wave, rate, written["new_frames"], others, processor.feature_extractor, seed=seed
            )
            continuations[domain] = written
            print(f"\n{domain} continuation: {_continuation_line(written)}")
        result["continuations"] = continuations
        _write_results_md(out, table, continuations)
        timings["continuation"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    result["timings_seconds"] = timings
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"demo finished in {timings['total'] / 60:.1f} minutes; results in {out}")
    return result


def _mel_gate(model_dir: str | os.PathLike) -> float | None:
    """How open the saved model's mel gate is (tanh of the learned scalar; None without a gate)."""
    import torch

    from ..modeling_whisper_gpt import WhisperGPTForCausalLM

    fusion = getattr(WhisperGPTForCausalLM.from_pretrained(model_dir).model, "fusion", None)
    gate = fusion.mel_gate if fusion is not None else None
    return torch.tanh(gate).item() if gate is not None else None


def _continuation_line(written: dict[str, Any]) -> str:
    """One line: how a continuation was made and its numbers beside the corpus's and white noise's."""
    source = {"learned": "the mel head", "codec": "the codec-decoded codes", "exemplar": "the codec's exemplar frames"}
    source = source.get(written["mel_source"], "none")
    renderer = {"mel": "Griffin-Lim from the log-mel frames", "codec": "the codec's decoder"}[written["renderer"]]
    described = written["description"]
    parts = [f"{Path(written['wav']).name} (mel frames from {source}; rendered with {renderer})"]
    if "mel_l1_db" in described:
        l1 = described["mel_l1_db"]
        parts.append(
            f"mean log-mel spectrum L1 to the held-out corpus: {l1['continuation']:.1f} dB "
            f"(white noise of equal loudness: {l1['white_noise']:.1f} dB)"
        )
    flatness = described["spectral_flatness"]
    parts.append(
        "spectral flatness " + ", ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in flatness.items())
    )
    for key, label, shown in (
        ("energy_std_db", "frame-energy std", "{:.1f} dB"),
        ("energy_modulation_db", "its 1.5-12 Hz part", "{:.1f} dB"),
        ("periodicity", "periodicity (pitch)", "{:.2f}"),
    ):
        values = {name.replace("_", " "): "n/a" if v is None else shown.format(v) for name, v in described[key].items()}
        parts.append(label + " " + ", ".join(f"{name} {value}" for name, value in values.items()))
    return "; ".join(parts)


def _write_results_md(out: Path, table: str, continuations: dict[str, dict[str, Any]]) -> None:
    """``results.md``: the table, and how each continuation was made with its `describe_continuation` numbers."""
    text = (
        "Codebook 0, held-out files; NLL in nats per code; paper numbers from arXiv 2412.11449.\n\n```\n"
        + table
        + "\n```\n"
    )
    if continuations:
        text += (
            "\n## Continuations\n\nEach hybrid model continues 3 s of a held-out file (`whisper-gpt generate`, default "
            "options). Numbers from `describe_continuation`: L1 between the average log-mel spectrum of the generated "
            "part and of the held-out corpus (dB; white noise of the same loudness for comparison), spectral flatness "
            "(about 1 for white noise), the standard deviation of frame energy (about 0 for steady noise) and its "
            "syllable-rate part, and periodicity (the autocorrelation peak at a pitch's lag: about 1 for voiced "
            "speech and held notes, about 0.15 for white noise).\n\n"
        )
        for domain, written in continuations.items():
            text += f"- **{domain}**: {_continuation_line(written)}\n"
    (out / "results.md").write_text(text)


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


__all__ = [
    "describe_continuation",
    "format_table",
    "frame_periodicity",
    "register_cli",
    "run_demo",
    "write_continuation",
]
