"""``whisper-gpt reproduce``: the paper's comparison (arXiv 2412.11449) on real speech and music, plus ablations.

One command, one time budget (``--budget-minutes``):

1. builds (or reuses) a speech and a music corpus (`whisper_gpt.apps.corpus.build_corpus`; the minutes cap per domain is
   derived from the budget), or takes folders of the user's own audio;
2. calibrates ONE local EnCodec (8 codebooks, 6 kbps geometry) on training audio of both domains and encodes every
   file once: codes, causal log-mel, and for the ablation domain the centered-STFT (leaky) mel and the mel of the
   codec's resynthesis (``mel_source="codec"``);
3. times a few optimizer steps of every model it will train (and one evaluation batch), then gives every run the
   SAME number of optimizer steps, batch and crop length (so the same epochs), AdamW and warmup + cosine schedule,
   choosing the step count so that the whole study fits in the budget on this machine;
4. trains GPT-S and the hybrid with several seeds and GPT-L with one seed per domain, evaluates on the held-out
   (validation) files at a few points during training and at the end, and runs the ablations on one domain;
5. writes ``results.json``, ``results.md`` and validation-loss plots (``figures/``) into ``--docs-dir``.

The flattened baseline of the context-length ablation (``flat8``) is a token-only GPT-S whose vocabulary is the 8
codebooks side by side (``codebook_size = 8 * 1024``): frame t's codes become 8 consecutive tokens
``k * 1024 + code_k`` (k = 0..7), so the same seconds of audio make a sequence 8 times longer. Its NLL per codebook
is computed over the 1024 logits of the codebook the next token belongs to (which is known from the position), so
it is comparable with the hybrid K=8 model's per-codebook NLL; tokens of a window's first frame are not scored
(the frame-level models cannot predict frame 0 of a window either).

Every run trains with the package's one loop, `whisper_gpt.training.loop.train`, on the encoded data held in
memory, without checkpoints or final folder (its ``metrics.jsonl`` goes to ``OUTPUT_DIR/logs/DOMAIN-RUN-seedS/``):
AdamW (`build_optimizer`: beta2 0.95, weight decay 0.1 on matrices only), linear warmup then cosine decay, gradient
clipping at 1.0; the seed sets the initialisation and the data order, so the models of a comparison see the same
batches. Validation is `evaluate_model`, the code of ``whisper-gpt evaluate``; the flattened baseline is wrapped as a
frame model (`FlattenedCodebooks`) so that the loop and the evaluation treat it like the others. The step timings of
point 3 are `seconds_per_step`: a few steps of the same loop.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..configuration_whisper_gpt import PAPER_RESULTS

logger = logging.getLogger(__name__)

DOMAINS = ("speech", "music")
MAIN_MODELS = ("gpt_s", "gpt_l", "hybrid")
PRESET = {"gpt_s": "paper_gpt_s", "gpt_l": "paper_gpt_l", "hybrid": "paper_hybrid"}
LABEL = {model: PAPER_RESULTS[preset]["model"] for model, preset in PRESET.items()}
CODEC_CODEBOOKS = 8  # 6 kbps: what the K=8 ablations read; the paper's models read codebook 0 only
EVAL_BATCH_SIZE = 8


def paper_numbers(domain: str, model: str) -> dict[str, float]:
    """What the paper reports for ``model`` (gpt_s / gpt_l / hybrid) on ``domain``, in the layout of
    ``results.json``: ``params``, ``nll``, ``accuracy``, ``ppl`` (from `PAPER_RESULTS`)."""
    reported = PAPER_RESULTS[PRESET[model]]
    numbers = reported[domain]
    return {
        "params": reported["params"],
        "nll": numbers["nll"],
        "accuracy": numbers["accuracy"],
        "ppl": numbers["perplexity"],
    }


@dataclass
class ReproductionConfig:
    """Everything the study needs; the defaults are the committed run's settings."""

    budget_minutes: float = 50.0
    output_dir: str = "runs/reproduce"  # corpora (unless given), codec, encoded-data cache, per-run logs
    docs_dir: str = "docs"  # results.json, results.md, figures/
    speech_dir: str | None = None  # an existing corpus or audio folder; default OUTPUT_DIR/corpora/speech
    music_dir: str | None = None
    corpus_minutes: float | None = None  # per domain; default derived from the budget
    seeds: tuple[int, ...] = (0, 1)  # GPT-S and hybrid
    large_seeds: tuple[int, ...] = (0,)  # GPT-L
    ablations: bool = True
    ablation_domain: str = "music"
    batch_size: int = 8
    max_frames: int = 125  # training crop and evaluation window (frames at 75 / s)
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    warmup_fraction: float = 0.05
    max_grad_norm: float = 1.0
    eval_points: int = 4  # validation evaluations per run (evenly spaced, the last at the final step)
    validation_seconds: float = 90.0  # cap on held-out audio per domain (whole files, in manifest order)
    min_steps: int = 2
    max_steps: int | None = None  # force the step count (otherwise derived from the budget)
    codebook_size: int = 1024
    num_mel_bins: int = 80
    calibration_seconds: float = 240.0  # of training audio, split between the domains
    calibration_frames: int = 30_000
    calibration_iterations: int = 10
    # docs/results.* were measured with a random (initialised) encoder: 0 reproduces them; 400 gives the codec the
    # demo and `whisper-gpt train` use now (`fit_encoder_to_mel`).
    calibration_encoder_steps: int = 0
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # keys: "all" or a model name
    torch_threads: int = 1
    timing_steps: int = 2
    measure_memory: bool = True
    progress: bool = False
    command: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Corpora, codec and encoded data


def _corpus_dirs(config: ReproductionConfig) -> dict[str, Path]:
    root = Path(config.output_dir) / "corpora"
    return {
        "speech": Path(config.speech_dir) if config.speech_dir else root / "speech",
        "music": Path(config.music_dir) if config.music_dir else root / "music",
    }


def corpus_minutes_for(budget_minutes: float) -> float:
    """Minutes of audio per domain for a budget: enough for about an epoch or two of training, at most an hour."""
    return float(min(60.0, max(2.0, budget_minutes / 3.0)))


def _ensure_corpora(config: ReproductionConfig) -> dict[str, dict[str, Any]]:
    """Reuse a folder that already holds audio (a built corpus or the user's folder); otherwise build one."""
    from .corpus import audio_files, build_corpus, load_manifest

    info = {}
    for domain, folder in _corpus_dirs(config).items():
        started = time.perf_counter()
        # A built corpus (its manifest) or a user's folder of audio is reused as it is; anything else is built.
        reuse = (folder / "manifest.jsonl").is_file() or (
            folder.is_dir() and not (folder / "cache").is_dir() and bool(audio_files(folder))
        )
        if reuse:
            built = False
        else:
            minutes = config.corpus_minutes or corpus_minutes_for(config.budget_minutes)
            build_corpus(domain, folder, minutes=minutes, progress=config.progress)
            built = True
        rows = load_manifest(folder)
        sources: dict[str, float] = {}
        for row in rows:
            sources[row.get("source", "user")] = round(sources.get(row.get("source", "user"), 0.0) + row["duration"], 3)
        info[domain] = {
            "dir": str(folder),
            "built_now": built,
            "files": {s: sum(r["split"] == s for r in rows) for s in ("train", "validation")},
            "seconds": {
                s: round(sum(r["duration"] for r in rows if r["split"] == s), 2) for s in ("train", "validation")
            },
            "seconds_by_source": sources,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
    return info


def _calibration_files(dirs: dict[str, Path], seconds: float) -> list[Path]:
    """Training files of both domains, about ``seconds`` in all, half per domain, in a seeded order."""
    from .corpus import load_manifest

    chosen: list[Path] = []
    for folder in dirs.values():
        rows = [row for row in load_manifest(folder) if row["split"] == "train"]
        total = 0.0
        for index in np.random.default_rng(0).permutation(len(rows)):
            if total >= seconds / len(dirs):
                break
            chosen.append(folder / rows[index]["path"])
            total += rows[index]["duration"]
    return chosen


def _processor(config: ReproductionConfig, dirs: dict[str, Path]) -> tuple[Any, dict[str, Any]]:
    """One codec for everything: reuse OUTPUT_DIR/processor or calibrate it on training audio of both domains."""
    from ..processing_whisper_gpt import WhisperGPTProcessor
    from ..training.data import build_processor

    target = Path(config.output_dir) / "processor"
    stats_file = target / "calibration.json"
    if (target / "audio_tokenizer").is_dir() and stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        stats["reused"] = True
        return WhisperGPTProcessor.from_pretrained(str(target)), stats
    started = time.perf_counter()
    files = _calibration_files(dirs, config.calibration_seconds)
    processor, stats = build_processor(
        files,
        num_mel_bins=config.num_mel_bins,
        codebook_size=config.codebook_size,
        bandwidth=6.0,
        max_frames=config.calibration_frames,
        iterations=config.calibration_iterations,
        encoder_steps=config.calibration_encoder_steps,
        seed=0,
    )
    stats = {
        "frames": stats.get("frames"),
        "calibration_files": len(files),
        "calibration_seconds_of_audio": round(sum(_duration(f) for f in files), 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "entropy_bits": stats.get("entropy_bits"),
        "codes_used": stats.get("codes_used"),
        "residual_energy": stats.get("residual_energy"),
    }
    processor.save_pretrained(str(target))
    stats_file.write_text(json.dumps(stats, indent=2) + "\n")
    stats["reused"] = False
    return processor, stats


def _duration(path: Path) -> float:
    import soundfile as sf

    return float(sf.info(str(path)).duration)


def _validation_subset(folder: Path, seconds: float) -> list[Path]:
    """Held-out files in manifest order until ``seconds`` are reached (at least one file)."""
    from .corpus import load_manifest

    chosen, total = [], 0.0
    for row in load_manifest(folder):
        if row["split"] != "validation":
            continue
        if chosen and total + row["duration"] > seconds:
            continue
        chosen.append(folder / row["path"])
        total += row["duration"]
    return chosen


def _encode(processor: Any, files: list[Path], variants: tuple[str, ...], cache: Path) -> dict[str, Any]:
    """Codes (T, 8) and the requested mel variants (T, M) of every file, cached in one .npz per file list."""
    from ..feature_extraction_whisper_gpt import WhisperGPTFeatureExtractor, normalize_audio_batch
    from ..training.data import load_audio, processor_fingerprint

    digest = hashlib.sha256(processor_fingerprint(processor).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(",".join(variants).encode())
    target = cache / f"encoded-{digest.hexdigest()[:20]}.npz"
    if target.is_file():
        with np.load(target) as data:
            return _unpack(dict(data), variants)
    causal = processor.feature_extractor
    centered = WhisperGPTFeatureExtractor(
        feature_size=causal.feature_size,
        sampling_rate=causal.sampling_rate,
        hop_length=causal.hop_length,
        n_fft=causal.n_fft,
        framing="centered",
    )
    arrays: dict[str, list[np.ndarray]] = {"codes": [], **{v: [] for v in variants}}
    for file in files:
        audio, rate = load_audio(file)
        inputs = processor(audio=audio, sampling_rate=rate, return_tensors="np")
        arrays["codes"].append(inputs["input_ids"][0].T.astype(np.uint16))
        if "causal" in variants:
            arrays["causal"].append(inputs["input_features"][0].astype(np.float16))
        if "centered" in variants:
            clip = normalize_audio_batch(audio, rate, processor.sampling_rate)
            arrays["centered"].append(centered.features_from_clips(clip, return_tensors="np")["input_features"][0])
        if "codec" in variants:
            codec = processor(
                audio=audio, sampling_rate=rate, return_tensors="np", mel_source="codec", mel_num_codebooks=1
            )
            arrays["codec"].append(codec["input_features"][0].astype(np.float16))
    lengths = np.array([c.shape[0] for c in arrays["codes"]], dtype=np.int64)
    packed = {"lengths": lengths, **{k: np.concatenate(v).astype(v[0].dtype) for k, v in arrays.items()}}
    packed = {k: (v.astype(np.float16) if k in variants else v) for k, v in packed.items()}
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.stem + ".partial.npz")
    np.savez(partial, **packed)
    os.replace(partial, target)
    return _unpack(packed, variants)


def _unpack(packed: dict[str, np.ndarray], variants: tuple[str, ...]) -> dict[str, Any]:
    bounds = np.concatenate([[0], np.cumsum(packed["lengths"])])
    split = {k: [packed[k][a:b] for a, b in itertools.pairwise(bounds)] for k in ("codes", *variants)}
    return {"lengths": packed["lengths"], **split}


def _dataset(encoded: dict[str, Any], variant: str) -> Any:
    """A `datasets.Dataset` in the layout of `whisper_gpt.training.data.prepare_dataset` with the chosen mel variant."""
    import datasets

    num_codebooks = encoded["codes"][0].shape[1]
    mel_bins = encoded[variant][0].shape[1]
    features = datasets.Features(
        {
            "codes": datasets.Array2D(shape=(None, num_codebooks), dtype="uint16"),
            "input_features": datasets.Array2D(shape=(None, mel_bins), dtype="float16"),
            "num_frames": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(
        {"codes": encoded["codes"], "input_features": encoded[variant], "num_frames": encoded["lengths"].tolist()},
        features=features,
    )


# ---------------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunSpec:
    name: str  # row name, e.g. "gpt_s" or "hybrid_centered_mel"
    domain: str
    model: str  # gpt_s / gpt_l / hybrid (the preset it starts from)
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    mel: str = "causal"  # causal / centered / codec
    flat: bool = False  # the flattened 8-codebook token-only baseline

    @property
    def key(self) -> str:
        return f"{self.domain}/{self.name}/seed{self.seed}"


def _overrides(spec: RunSpec, config: ReproductionConfig) -> dict[str, Any]:
    """Config overrides of a frame model on top of its preset (for the flattened baseline: of the frame view)."""
    return {
        "codebook_size": config.codebook_size,
        "num_mel_bins": config.num_mel_bins,
        "max_position_embeddings": config.max_frames,
        **config.model_overrides.get("all", {}),
        **config.model_overrides.get(spec.model, {}),
        **spec.overrides,
    }


def _model(spec: RunSpec, config: ReproductionConfig) -> torch.nn.Module:
    """A fresh model of ``spec``: its preset with the overrides, or the flattened baseline."""
    from ..modeling_whisper_gpt import WhisperGPTForCausalLM
    from ..training.loop import model_config

    if spec.flat:
        return _flattened_model(spec, config)
    return WhisperGPTForCausalLM(model_config(PRESET[spec.model], _overrides(spec, config)))


def _flattened_model(spec: RunSpec, config: ReproductionConfig) -> FlattenedCodebooks:
    """A fresh flattened baseline: a token-only LM over 8 codebooks side by side, ``8 * max_frames`` tokens."""
    from ..modeling_whisper_gpt import WhisperGPTForCausalLM
    from ..training.loop import model_config

    overrides = _overrides(spec, config)
    overrides.update(
        codebook_size=CODEC_CODEBOOKS * overrides["codebook_size"],
        max_position_embeddings=CODEC_CODEBOOKS * config.max_frames,
        num_codebooks=1,
        use_spectrogram=False,
    )
    return FlattenedCodebooks(WhisperGPTForCausalLM(model_config(PRESET[spec.model], overrides)), config.max_frames)


def _flatten_batch(batch: dict[str, torch.Tensor], codebook_size: int) -> dict[str, torch.Tensor]:
    """(B, 8, L) frame codes -> (B, 1, 8L) tokens k * V + code_k, frame-major; the mask and labels (if any) follow."""
    ids = batch["input_ids"][:, :CODEC_CODEBOOKS]
    batch_size, k, length = ids.shape
    offsets = (torch.arange(k, device=ids.device) * codebook_size)[None, :, None]
    flat = (ids + offsets).transpose(1, 2).reshape(batch_size, 1, k * length)
    out = {"input_ids": flat, "attention_mask": batch["attention_mask"].repeat_interleave(k, dim=1)}
    if batch.get("labels") is not None:
        labels = batch["labels"][:, :CODEC_CODEBOOKS]
        flat_labels = torch.where(labels == -100, -100, labels + offsets)
        out["labels"] = flat_labels.transpose(1, 2).reshape(batch_size, 1, k * length)
    return out


class FlattenedCodebooks(torch.nn.Module):
    """The flattened baseline seen as a frame model, so `train` and `evaluate_model` handle it like the others.

    ``lm`` is a token-only `WhisperGPTForCausalLM` with one codebook of ``8 * V`` tokens and a context of
    ``8 * frames``. The forward pass takes frame batches as the collator makes them (``input_ids`` (B, >=8, L),
    ``attention_mask`` (B, L), ``labels``) and flattens them with `_flatten_batch`. With ``labels`` it returns the
    LM's loss (cross-entropy over all 8V logits); without, ``logits`` (B, 8, L, V): entry [:, c, t] is what the token
    before frame t + 1's code c predicts, over the V logits of codebook c. So frame t + 1 is scored as a frame model's
    prediction at t is, and a window's frame 0 is not scored. ``config`` describes that frame view: 8 codebooks of V
    codes, a context of ``frames``, no mel input.
    """

    def __init__(self, lm: torch.nn.Module, frames: int):
        super().__init__()
        if lm.config.num_codebooks != 1 or lm.config.codebook_size % CODEC_CODEBOOKS:
            raise ValueError("FlattenedCodebooks needs a one-codebook LM whose vocabulary is 8 codebooks side by side.")
        self.lm = lm
        self.codebook_size = lm.config.codebook_size // CODEC_CODEBOOKS
        self.config = copy.deepcopy(lm.config)
        self.config.num_codebooks = CODEC_CODEBOOKS
        self.config.codebook_size = self.codebook_size
        self.config.max_position_embeddings = frames

    def validate_audio_tokenizer(self, audio_tokenizer: Any) -> None:
        """The check of a frame model with this config (8 codebooks of V codes at the LM's geometry)."""
        from ..modeling_whisper_gpt import WhisperGPTForCausalLM

        WhisperGPTForCausalLM.validate_audio_tokenizer(self, audio_tokenizer)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> Any:
        from ..modeling_whisper_gpt import WhisperGPTCausalLMOutput

        if attention_mask is None:
            attention_mask = torch.ones(
                input_ids.shape[0], input_ids.shape[-1], dtype=torch.long, device=input_ids.device
            )
        frames = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        output = self.lm(**_flatten_batch(frames, self.codebook_size), use_cache=use_cache)
        if labels is not None:
            return WhisperGPTCausalLMOutput(loss=output.loss)
        k, size = CODEC_CODEBOOKS, self.codebook_size
        logits = output.logits[:, 0]  # (B, 8L, 8V): token j predicts token j + 1
        batch_size, tokens, _ = logits.shape
        length = tokens // k
        # Frame t + 1's code c is token 8(t + 1) + c, predicted at 8t + 7 + c; past the end (t = L - 1, c > 0) the
        # zero padding stands in, and the last frame's predictions are never scored.
        padded = torch.nn.functional.pad(logits, (0, 0, 0, k)).view(batch_size, tokens + k, k, size)
        book = torch.arange(k, device=logits.device)[:, None].expand(k, length)
        position = k * torch.arange(length, device=logits.device)[None, :] + (k - 1) + book
        return WhisperGPTCausalLMOutput(logits=padded[:, position, book])  # (B, 8, L, V)


def _training_config(spec: RunSpec, config: ReproductionConfig, steps: int, output_dir: Path) -> Any:
    """The run's `TrainingConfig`: the same steps, batch, crop, optimizer and schedule for every run; data order and
    initialisation from the seed; validation ``eval_points`` times; no checkpoints or final folder."""
    from ..training.loop import TrainingConfig

    return TrainingConfig(
        output_dir=str(output_dir),
        preset="custom" if spec.flat else PRESET[spec.model],
        model_overrides={} if spec.flat else _overrides(spec, config),
        max_frames=config.max_frames,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        warmup_steps=max(1, round(config.warmup_fraction * steps)) if steps > 1 else 0,
        max_steps=steps,
        max_grad_norm=config.max_grad_norm,
        eval_every=math.ceil(steps / config.eval_points),
        eval_batch_size=EVAL_BATCH_SIZE,
        eval_window=config.max_frames,
        save_every=0,
        save_final=False,
        log_every=1,
        report_to="none",
        seed=spec.seed,
        torch_threads=config.torch_threads,
        progress=config.progress,
    )


def _fresh_model(spec: RunSpec, config: ReproductionConfig) -> torch.nn.Module | None:
    """The model `train` is given: the flattened baseline (initialised from the seed); None for the frame models,
    which `train` builds from their preset."""
    if not spec.flat:
        return None
    torch.manual_seed(spec.seed)
    return _flattened_model(spec, config)


def _evaluation_seconds_per_batch(spec: RunSpec, config: ReproductionConfig, validation_set: Any) -> float:
    """Seconds of one `evaluate_model` batch of a fresh model of ``spec`` on the first held-out files."""
    from ..training.evaluation import evaluate_model

    model = _model(spec, config)
    files, windows = 0, 0
    for frames in validation_set["num_frames"]:
        files += 1
        windows += math.ceil(frames / config.max_frames)
        if windows >= EVAL_BATCH_SIZE:
            break
    subset = validation_set.select(range(files))
    started = time.perf_counter()
    evaluate_model(model, subset, window=config.max_frames, batch_size=EVAL_BATCH_SIZE, progress=False)
    return (time.perf_counter() - started) / math.ceil(windows / EVAL_BATCH_SIZE)


def _train_run(
    spec: RunSpec,
    config: ReproductionConfig,
    processor: Any,
    train_set: Any,
    validation_set: Any,
    steps: int,
    log_dir: Path,
) -> dict[str, Any]:
    """Train and evaluate one run with `whisper_gpt.training.loop.train`; its numbers for the report."""
    from ..training.loop import model_config, train

    output_dir = log_dir / f"{spec.domain}-{spec.name}-seed{spec.seed}"
    summary = train(
        _training_config(spec, config, steps, output_dir),
        model=_fresh_model(spec, config),
        processor=processor,
        train_dataset=train_set,
        validation_dataset=validation_set,
    )
    losses = [record["train/loss"] for record in summary["history"]]  # one per step (log_every=1)
    history, previous = [], 0
    for entry in summary["evaluations"]:
        step, first = entry["step"], entry["validation"]["codebook_0"]
        history.append(
            {
                "step": step,
                "epoch": entry["epoch"],
                "train_loss": float(np.mean(losses[previous:step])),
                "nll": first["nll"],
                "accuracy": first["accuracy"],
                "nll_all_codebooks": entry["validation"]["nll"],
            }
        )
        previous = step
        logger.info("%s step %d/%d: validation codebook-0 NLL %.4f", spec.key, step, steps, first["nll"])
    metrics = summary["validation"]
    first = metrics["codebook_0"]
    num_codebooks = len(metrics["per_codebook"])
    reads_mel = not spec.flat and model_config(PRESET[spec.model], _overrides(spec, config)).use_spectrogram
    frames_per_second = summary["train_frames_per_second"]
    return {
        "name": spec.name,
        "domain": spec.domain,
        "model": spec.model,
        "seed": spec.seed,
        "params": int(summary["num_parameters"]),
        "nll": float(first["nll"]),
        "accuracy": float(first["accuracy"]),
        "ppl": float(math.exp(first["nll"])),
        "nll_all_codebooks": float(metrics["nll"]),
        "per_codebook_nll": [float(entry["nll"]) for entry in metrics["per_codebook"]],
        "validation_tokens": int(first["tokens"]),
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "train_seconds": round(summary["train_seconds"], 2),
        "eval_seconds": round(summary["evaluation_seconds"], 2),
        "train_frames_per_second": frames_per_second,
        "train_tokens_per_second": frames_per_second * num_codebooks if frames_per_second else None,
        "num_codebooks": num_codebooks,
        "mel": spec.mel if reads_mel else None,
        "history": history,
    }


def _memory_probe(spec_json: str) -> None:
    """Subprocess entry: peak resident memory added by one training step (prints JSON)."""
    from ..training.loop import build_optimizer

    values = json.loads(spec_json)
    config = ReproductionConfig(**values["config"])
    spec = RunSpec(**values["spec"])
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    model = _model(spec, config).train()
    optimizer = build_optimizer(model, config.learning_rate, config.weight_decay, config.adam_beta2)
    b, frames = config.batch_size, config.max_frames
    codes = torch.randint(0, config.codebook_size, (b, CODEC_CODEBOOKS, frames))
    batch = {"input_ids": codes, "labels": codes.clone(), "attention_mask": torch.ones(b, frames, dtype=torch.long)}
    if model.config.trains_on_mel_frames:
        batch["input_features"] = torch.randn(b, frames, model.config.num_mel_bins)
    # Gradients and AdamW state first, without a forward pass: the high-water mark then grows only by what a
    # step needs on top of the weights and optimizer state (activations and temporaries).
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    # getrusage's ru_maxrss survives exec (a child of a large process starts with its parent's peak), so read
    # the kernel's own high-water mark of this process and reset it first.
    _reset_peak_rss()
    baseline = _status_kib("VmRSS")
    for _ in range(2):
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_rss_mib": peak / 1024, "step_increase_mib": (peak - baseline) / 1024}))


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS


def _measure_memory(spec: RunSpec, config: ReproductionConfig) -> dict[str, float] | None:
    payload = json.dumps({"config": _jsonable(asdict(config)), "spec": asdict(spec)})
    code = f"from whisper_gpt.apps.reproduce import _memory_probe; _memory_probe({payload!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        logger.warning("memory probe failed: %s", result.stderr[-500:])
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def remeasure_memory(docs_dir: str | os.PathLike = "docs") -> dict[str, Any]:
    """Re-run the memory probe (a fresh process per model, its ``VmHWM`` high-water mark) with the settings stored
    in ``DOCS_DIR/results.json``, replace the ablation rows' ``memory`` and rewrite the report."""
    docs = Path(docs_dir)
    report = json.loads((docs / "results.json").read_text())
    stored = report["config"]
    config = ReproductionConfig(**{k: tuple(v) if k in ("seeds", "large_seeds") else v for k, v in stored.items()})
    d = config.ablation_domain
    probes = {
        "hybrid": RunSpec("hybrid", d, "hybrid"),
        "hybrid_k8": RunSpec("hybrid_k8", d, "hybrid", 0, {"num_codebooks": CODEC_CODEBOOKS}),
        "flat8_gpt_s": RunSpec("flat8_gpt_s", d, "gpt_s", flat=True),
    }
    memory = {name: _measure_memory(spec, config) for name, spec in probes.items()}
    for row in report["ablations"]:
        if "memory" in row and row["run"] in memory:
            row["memory"] = memory[row["run"]]
    report.setdefault("notes", []).append(
        "memory re-measured with `whisper-gpt reproduce --remeasure-memory` (VmHWM probe) after the run"
    )
    write_report(report, docs)
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------------------------
# The study


def plan_runs(config: ReproductionConfig) -> tuple[list[RunSpec], list[RunSpec]]:
    """(main runs, extra ablation runs). Ablations reuse the main hybrid and GPT-S runs as their reference rows."""
    main = []
    for domain in DOMAINS:
        for model in MAIN_MODELS:
            for seed in config.large_seeds if model == "gpt_l" else config.seeds:
                main.append(RunSpec(model, domain, model, seed))
    ablations = []
    if config.ablations:
        d, seed = config.ablation_domain, config.seeds[0]
        ablations = [
            RunSpec("hybrid_centered_mel", d, "hybrid", seed, mel="centered"),
            RunSpec("hybrid_spectrogram_layers_0", d, "hybrid", seed, {"spectrogram_layers": 0}),
            RunSpec("hybrid_spectrogram_layers_4", d, "hybrid", seed, {"spectrogram_layers": 4}),
            RunSpec("hybrid_sum_fusion", d, "hybrid", seed, {"fusion": "sum"}),
            RunSpec("hybrid_codec_mel", d, "hybrid", seed, mel="codec"),
            RunSpec("hybrid_k8", d, "hybrid", seed, {"num_codebooks": CODEC_CODEBOOKS}),
            RunSpec("gpt_s_k8", d, "gpt_s", seed, {"num_codebooks": CODEC_CODEBOOKS}),
            RunSpec("flat8_gpt_s", d, "gpt_s", seed, flat=True),
        ]
    return main, ablations


def run_reproduction(config: ReproductionConfig) -> dict[str, Any]:
    """Run the whole study within ``config.budget_minutes``; write and return the report."""
    started = time.perf_counter()
    deadline = started + config.budget_minutes * 60
    torch.set_num_threads(config.torch_threads)
    torch.set_flush_denormal(True)
    if config.ablation_domain not in DOMAINS:
        raise ValueError(f"ablation_domain must be one of {DOMAINS}, got {config.ablation_domain!r}.")
    if config.eval_points < 1:
        raise ValueError(f"eval_points must be at least 1, got {config.eval_points}.")
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    log_dir = output / "logs"
    log_dir.mkdir(exist_ok=True)
    phases: dict[str, float] = {}

    corpora = _ensure_corpora(config)
    phases["corpora"] = time.perf_counter() - started
    dirs = _corpus_dirs(config)
    mark = time.perf_counter()
    processor, codec_stats = _processor(config, dirs)
    phases["codec_calibration"] = time.perf_counter() - mark

    from .corpus import audio_files

    mark = time.perf_counter()
    data: dict[str, dict[str, Any]] = {}
    for domain in DOMAINS:
        variants = (
            ("causal", "centered", "codec") if config.ablations and domain == config.ablation_domain else ("causal",)
        )
        train_files = audio_files(dirs[domain], split="train")
        val_files = _validation_subset(dirs[domain], config.validation_seconds)
        enc_train = _encode(processor, train_files, variants, output / "cache")
        enc_val = _encode(processor, val_files, variants, output / "cache")
        data[domain] = {v: (_dataset(enc_train, v), _dataset(enc_val, v)) for v in variants}
        corpora[domain]["validation_files_scored"] = len(val_files)
        corpora[domain]["validation_seconds_scored"] = round(float(enc_val["lengths"].sum()) / 75.0, 2)
        corpora[domain]["train_frames"] = int(enc_train["lengths"].sum())
    phases["encoding"] = time.perf_counter() - mark

    main, ablations = plan_runs(config)
    runs = main + ablations

    # Time every distinct model once (a few steps of the training loop itself), then allot one common step count.
    from ..training.loop import seconds_per_step

    mark = time.perf_counter()
    timing: dict[str, dict[str, float]] = {}
    for spec in runs:
        kind = _kind(spec)
        if kind in timing:
            continue
        train_set, val_set = data[spec.domain][spec.mel]
        step = seconds_per_step(
            _training_config(spec, config, config.timing_steps, log_dir),  # it runs in a temporary folder instead
            config.timing_steps,
            model=_fresh_model(spec, config),
            processor=processor,
            train_dataset=train_set,
        )
        timing[kind] = {"step": step, "eval_batch": _evaluation_seconds_per_batch(spec, config, val_set)}
    phases["timing"] = time.perf_counter() - mark

    eval_batches = {
        domain: math.ceil(
            sum(math.ceil(n / config.max_frames) for n in data[domain]["causal"][1]["num_frames"]) / EVAL_BATCH_SIZE
        )
        for domain in DOMAINS
    }
    per_step = sum(timing[_kind(spec)]["step"] for spec in runs)
    fixed = sum(timing[_kind(spec)]["eval_batch"] * eval_batches[spec.domain] * config.eval_points for spec in runs)
    reserve = 20.0 + (45.0 if config.measure_memory and config.ablations else 0.0)
    left = deadline - time.perf_counter() - reserve
    # Measured step times drift with the load of a shared machine: plan on 85% of what is left.
    steps = config.max_steps or max(config.min_steps, int((0.85 * left - fixed) / per_step))
    allotment = {
        "seconds_left_for_runs": round(left, 1),
        "planned_seconds_per_common_step": round(per_step, 3),
        "planned_evaluation_seconds": round(fixed, 1),
        "steps": steps,
        "seconds_per_step_by_model": {kind: round(t["step"], 4) for kind, t in timing.items()},
        "seconds_per_eval_batch_by_model": {kind: round(t["eval_batch"], 4) for kind, t in timing.items()},
    }
    logger.info("allotment: %s", allotment)

    mark = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    progress_file = output / "runs.jsonl"
    progress_file.write_text("")
    for spec in runs:
        train_set, val_set = data[spec.domain][spec.mel]
        logger.info("training %s (%d steps)", spec.key, steps)
        result = _train_run(spec, config, processor, train_set, val_set, steps, log_dir)
        results[spec.key] = result
        with progress_file.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    phases["training_and_evaluation"] = time.perf_counter() - mark

    memory = {}
    if config.measure_memory and config.ablations:
        mark = time.perf_counter()
        d = config.ablation_domain
        for spec in (
            RunSpec("hybrid", d, "hybrid"),
            RunSpec("hybrid_k8", d, "hybrid", 0, {"num_codebooks": 8}),
            RunSpec("flat8_gpt_s", d, "gpt_s", flat=True),
        ):
            memory[spec.name] = _measure_memory(spec, config)
        phases["memory_probe"] = time.perf_counter() - mark

    report = _report(config, corpora, codec_stats, processor, timing, allotment, results, memory, phases, started)
    write_report(report, Path(config.docs_dir))
    return report


def _kind(spec: RunSpec) -> str:
    """Runs whose step time is the same: same architecture (the mel variant does not change the cost)."""
    return json.dumps([spec.model, spec.flat, sorted(spec.overrides.items())])


def _kind_label(kind: str) -> str:
    model, flat, overrides = json.loads(kind)
    label = model + (" flattened" if flat else "")
    return label + "".join(f" {name}={value}" for name, value in overrides)


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def _report(config, corpora, codec_stats, processor, timing, allotment, results, memory, phases, started) -> dict:
    report: dict[str, Any] = {}
    for domain in DOMAINS:
        report[domain] = {}
        for model in MAIN_MODELS:
            seeds = config.large_seeds if model == "gpt_l" else config.seeds
            runs = [results[f"{domain}/{model}/seed{s}"] for s in seeds]
            nll = _stats([r["nll"] for r in runs])
            acc = _stats([r["accuracy"] for r in runs])
            report[domain][model] = {
                "params": runs[0]["params"],
                "nll": nll["mean"],
                "accuracy": acc["mean"],
                "ppl": math.exp(nll["mean"]),
                "seeds": list(seeds),
                "nll_by_seed": [r["nll"] for r in runs],
                "accuracy_by_seed": [r["accuracy"] for r in runs],
                "nll_std": nll["std"],
                "accuracy_std": acc["std"],
                "nll_range": [nll["min"], nll["max"]],
                "steps": runs[0]["steps"],
                "epochs": runs[0]["epochs"],
                "train_seconds": [r["train_seconds"] for r in runs],
                "train_frames_per_second": float(np.mean([r["train_frames_per_second"] for r in runs])),
                "history": {f"seed{r['seed']}": r["history"] for r in runs},
                "paper": paper_numbers(domain, model),
            }
        gain = [
            results[f"{domain}/gpt_s/seed{s}"]["nll"] - results[f"{domain}/hybrid/seed{s}"]["nll"] for s in config.seeds
        ]
        report[domain]["hybrid_minus_gpt_s_nll"] = {"by_seed": [-g for g in gain], **_stats([-g for g in gain])}

    ablations = []
    if config.ablations:
        d, seed = config.ablation_domain, config.seeds[0]
        reference = results[f"{d}/gpt_s/seed{seed}"]["nll"]

        def row(name: str, key: str, **extra: Any) -> dict[str, Any]:
            r = results[key]
            entry = {
                "name": name,
                "domain": d,
                "run": r["name"],
                "seed": r["seed"],
                "params": r["params"],
                "nll": r["nll"],
                "accuracy": r["accuracy"],
                "ppl": r["ppl"],
                "nll_minus_gpt_s": r["nll"] - reference,
                "num_codebooks": r["num_codebooks"],
                "per_codebook_nll": r["per_codebook_nll"],
                "nll_all_codebooks": r["nll_all_codebooks"],
                "train_tokens_per_second": r["train_tokens_per_second"],
                "train_frames_per_second": r["train_frames_per_second"],
                "steps": r["steps"],
                "history": r["history"],
            }
            entry.update(extra)
            return entry

        k = f"{d}/{{}}/seed{seed}"
        ablations = [
            row("token-only GPT-S (reference)", k.format("gpt_s"), group="reference"),
            row("hybrid, causal mel (ours)", k.format("hybrid"), group="mel framing"),
            row(
                "hybrid, centered-STFT mel (sees 352 future samples)",
                k.format("hybrid_centered_mel"),
                group="mel framing",
            ),
            row("hybrid, spectrogram_layers=0", k.format("hybrid_spectrogram_layers_0"), group="spectrogram layers"),
            row("hybrid, spectrogram_layers=2 (paper)", k.format("hybrid"), group="spectrogram layers"),
            row("hybrid, spectrogram_layers=4", k.format("hybrid_spectrogram_layers_4"), group="spectrogram layers"),
            row("hybrid, concat fusion (paper)", k.format("hybrid"), group="fusion"),
            row("hybrid, sum fusion", k.format("hybrid_sum_fusion"), group="fusion"),
            row("hybrid, mel of the original audio", k.format("hybrid"), group="mel source"),
            row(
                "hybrid, mel of the codec resynthesis (mel_source='codec', codebook 0)",
                k.format("hybrid_codec_mel"),
                group="mel source",
            ),
            row("hybrid K=1 (paper)", k.format("hybrid"), group="codebooks"),
            row("hybrid K=8 (depth transformer)", k.format("hybrid_k8"), group="codebooks"),
            row("token-only GPT-S K=8 (depth transformer)", k.format("gpt_s_k8"), group="codebooks"),
            row(
                "hybrid K=8, one position per frame",
                k.format("hybrid_k8"),
                group="context length",
                memory=memory.get("hybrid_k8"),
                sequence_length=config.max_frames,
            ),
            row(
                "token-only, 8 codebooks flattened (8 positions per frame)",
                k.format("flat8_gpt_s"),
                group="context length",
                memory=memory.get("flat8_gpt_s"),
                sequence_length=8 * config.max_frames,
            ),
        ]
        if memory.get("hybrid"):
            ablations[1]["memory"] = memory["hybrid"]

    tokenizer = processor.audio_tokenizer
    report["ablations"] = ablations
    report["budget"] = {
        "budget_minutes": config.budget_minutes,
        "wall_minutes": (time.perf_counter() - started) / 60,
        "phase_seconds": {name: round(value, 1) for name, value in phases.items()},
        "steps_per_run": allotment["steps"],
        "batch_size": config.batch_size,
        "crop_frames": config.max_frames,
        "crop_seconds": config.max_frames / 75.0,
        "optimizer": (
            f"AdamW lr {config.learning_rate}, betas (0.9, {config.adam_beta2}), weight decay {config.weight_decay} "
            f"on matrices, {config.warmup_fraction:.0%} linear warmup then cosine decay to 0, "
            f"clip {config.max_grad_norm}"
        ),
        "allotment": allotment,
        "torch_threads": torch.get_num_threads(),
        "flush_denormal": True,
        "device": "cpu",
        "hardware": _hardware(),
        "torch_version": torch.__version__,
    }
    report["codec"] = {
        "kind": "locally built small EnCodec (whisper_gpt.small_encodec_config), random encoder/decoder weights, "
        "codebooks calibrated by k-means on training audio of both domains",
        "sampling_rate": tokenizer.sampling_rate,
        "hop_length": tokenizer.hop_length,
        "frame_rate": tokenizer.sampling_rate / tokenizer.hop_length,
        "bandwidth_kbps": tokenizer.bandwidth,
        "num_codebooks": tokenizer.num_codebooks,
        "codebook_size": tokenizer.codebook_size,
        "calibration": codec_stats,
    }
    report["corpora"] = corpora
    report["config"] = _jsonable({k: v for k, v in asdict(config).items() if k != "command"})
    report["command"] = config.command
    report["runs"] = {key: {k: v for k, v in r.items() if k != "history"} for key, r in results.items()}
    return _jsonable(report)


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible (shared with other work), no GPU"


# ---------------------------------------------------------------------------------------------------------------
# Report writing


def write_report(report: dict[str, Any], docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    render_report(docs_dir)


def render_report(docs_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``results.md`` and the figures from ``results.json`` (the findings are computed from its numbers)."""
    docs_dir = Path(docs_dir)
    report = json.loads((docs_dir / "results.json").read_text())
    figures = _plot(report, docs_dir / "figures")
    (docs_dir / "results.md").write_text(render_markdown(report, [f.relative_to(docs_dir) for f in figures]))
    return report


def _plot(report: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = {"gpt_s": "tab:blue", "gpt_l": "tab:green", "hybrid": "tab:red"}
    for domain in DOMAINS:
        figure, axis = plt.subplots(figsize=(7, 4.2))
        for model in MAIN_MODELS:
            for index, (seed, history) in enumerate(sorted(report[domain][model]["history"].items())):
                axis.plot(
                    [h["epoch"] for h in history],
                    [h["nll"] for h in history],
                    marker="o",
                    color=colours[model],
                    linestyle="-" if index == 0 else "--",
                    label=f"{LABEL[model]} ({seed})",
                )
        axis.set_xlabel(f"epochs ({report[domain]['gpt_s']['steps']} optimizer steps in all)")
        axis.set_ylabel("validation NLL, codebook 0 (nats/token)")
        axis.set_title(f"{domain}: validation loss during training")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        path = folder / f"validation_loss_{domain}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    if report["ablations"]:
        figure, axis = plt.subplots(figsize=(7, 4.2))
        seen = set()
        for entry in report["ablations"]:
            if entry["run"] in seen:
                continue
            seen.add(entry["run"])
            axis.plot(
                [h["epoch"] for h in entry["history"]],
                [h["nll"] for h in entry["history"]],
                marker=".",
                label=entry["run"],
            )
        axis.set_xlabel("epochs")
        axis.set_ylabel("validation NLL, codebook 0 (nats/token)")
        axis.set_title(f"ablations ({report['ablations'][0]['domain']})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = folder / "validation_loss_ablations.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def _pm(mean: float, std: float, n: int, fmt: str) -> str:
    return f"{fmt.format(mean)} ± {fmt.format(std)}" if n > 1 else fmt.format(mean)


def render_markdown(report: dict[str, Any], figures: list[Path]) -> str:
    b, codec = report["budget"], report["codec"]
    lines = ["# Reproducing Whisper-GPT (arXiv 2412.11449) on real speech and music", ""]
    lines += [
        f"Produced by `{report.get('command') or 'whisper-gpt reproduce'}` "
        f"(budget {b['budget_minutes']:g} min, wall time {b['wall_minutes']:.1f} min, {b['hardware']}, "
        f"{b['torch_threads']} torch thread, torch {b['torch_version']}). Numbers: `docs/results.json`.",
        "",
        "## Headline table (codebook 0, next-frame prediction on held-out files)",
        "",
        "NLL in nats per codebook-0 token, accuracy of the arg-max code, PPL = exp(NLL). Ours: mean ± standard "
        "deviation over seeds (GPT-S and hybrid: "
        f"{len(report['speech']['gpt_s']['seeds'])} seeds; GPT-L: {len(report['speech']['gpt_l']['seeds'])}). "
        "Every model of a domain had the same data, optimizer steps, batch, crop and schedule.",
        "",
        "| domain | model | params (ours / paper) | NLL ours | NLL paper | acc ours | acc paper | PPL ours "
        "| PPL paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for domain in DOMAINS:
        for model in MAIN_MODELS:
            r, p = report[domain][model], report[domain][model]["paper"]
            n = len(r["seeds"])
            lines.append(
                f"| {domain} | {LABEL[model]} | {r['params'] / 1e6:.2f}M / {p['params'] / 1e6:.1f}M | "
                f"{_pm(r['nll'], r['nll_std'], n, '{:.3f}')} | {p['nll']:.2f} | "
                f"{_pm(100 * r['accuracy'], 100 * r['accuracy_std'], n, '{:.2f}')}% | {100 * p['accuracy']:.2f}% | "
                f"{r['ppl']:.2f} | {p['ppl']:.2f} |"
            )
    lines += ["", "Hybrid minus GPT-S codebook-0 NLL, per seed (negative = the hybrid is better):", ""]
    for domain in DOMAINS:
        g = report[domain]["hybrid_minus_gpt_s_nll"]
        per = ", ".join(f"{v:+.3f}" for v in g["by_seed"])
        lines.append(
            f"- {domain}: {per} (mean {g['mean']:+.3f}; paper "
            f"{report[domain]['hybrid']['paper']['nll'] - report[domain]['gpt_s']['paper']['nll']:+.2f})"
        )
    lines += [
        "",
        "Per-seed numbers:",
        "",
        "| domain | model | seed | NLL | accuracy | train s |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["runs"].values():
        if run["name"] in MAIN_MODELS:
            lines.append(
                f"| {run['domain']} | {run['name']} | {run['seed']} | {run['nll']:.4f} | "
                f"{100 * run['accuracy']:.2f}% | "
                f"{run['train_seconds']:.0f} |"
            )
    if report["ablations"]:
        d = report["ablations"][0]["domain"]
        lines += [
            "",
            f"## Ablations ({d}, seed {report['ablations'][0]['seed']}, same steps / data / schedule as the table)",
            "",
            f"Run on {d} only: the budget does not cover every ablation on both domains. Reference rows reuse the "
            "main table's seed-0 runs. NLL is codebook 0 for every row; Δ is against token-only GPT-S.",
            "",
            "| group | variant | params | NLL cb0 | Δ vs GPT-S | acc cb0 | per-codebook NLL (cb0..cb7) | "
            "train tokens/s | train frames/s | peak step memory |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in report["ablations"]:
            per = " / ".join(f"{v:.2f}" for v in row["per_codebook_nll"]) if row["num_codebooks"] > 1 else "-"
            memory = row.get("memory")
            mem = f"+{memory['step_increase_mib']:.0f} MiB (peak {memory['peak_rss_mib']:.0f})" if memory else "-"
            lines.append(
                f"| {row['group']} | {row['name']} | {row['params'] / 1e6:.2f}M | {row['nll']:.4f} | "
                f"{row['nll_minus_gpt_s']:+.4f} | {100 * row['accuracy']:.2f}% | {per} | "
                f"{row['train_tokens_per_second']:.0f} | {row['train_frames_per_second']:.0f} | {mem} |"
            )
    lines += [
        "",
        "## Setup",
        "",
        f"- **Codec**: {codec['kind']}; {codec['sampling_rate']} Hz, hop {codec['hop_length']} "
        f"({codec['frame_rate']:g} frames/s), {codec['num_codebooks']} codebooks x {codec['codebook_size']} codes "
        f"({codec['bandwidth_kbps']:g} kbps geometry). No pretrained EnCodec can be downloaded here, so these codes "
        "are not the paper's: absolute NLLs are not comparable with the paper's, only the comparison between models.",
        f"- **Training**: {b['steps_per_run']} optimizer steps per run, batch {b['batch_size']} random crops of "
        f"{b['crop_frames']} frames ({b['crop_seconds']:.2f} s), {b['optimizer']}. Step count chosen from the budget "
        f"after timing every model (seconds per step: "
        + ", ".join(f"{_kind_label(k)} {v:.2f}" for k, v in b["allotment"]["seconds_per_step_by_model"].items())
        + ").",
        f"- **Evaluation**: the held-out (validation split) files, non-overlapping windows of {b['crop_frames']} "
        "frames; "
        "the final step's model is reported (no early stopping or model selection on these files).",
        f"- **Phases (s)**: {b['phase_seconds']}.",
        "",
        "| domain | train files | train s | held-out files (scored) | held-out s scored | sources (s) |",
        "|---|---|---|---|---|---|",
    ]
    for domain in DOMAINS:
        c = report["corpora"][domain]
        lines.append(
            f"| {domain} | {c['files']['train']} | {c['seconds']['train']:.0f} | {c['validation_files_scored']} | "
            f"{c['validation_seconds_scored']:.0f} | {c['seconds_by_source']} |"
        )
    lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.as_posix()})" for f in figures]
    lines += ["", "## Findings (computed from the numbers above)", ""] + [f"- {line}" for line in findings(report)]
    if report.get("notes"):
        lines += ["", "Notes: " + "; ".join(report["notes"]) + "."]
    if report.get("discussion"):
        lines += ["", "## Discussion", "", report["discussion"]]
    return "\n".join(lines) + "\n"


def findings(report: dict[str, Any]) -> list[str]:
    """Plain statements about the comparison, derived from the report (so a rerun states its own result)."""
    out = []
    spreads = []
    for domain in DOMAINS:
        s, h, large = report[domain]["gpt_s"], report[domain]["hybrid"], report[domain]["gpt_l"]
        gain = report[domain]["hybrid_minus_gpt_s_nll"]
        spread = max(s["nll_std"], h["nll_std"])
        spreads.append(spread)
        wins = sum(value < 0 for value in gain["by_seed"])
        if gain["mean"] < 0 and abs(gain["mean"]) > 2 * spread:
            verdict = "the hybrid is better than GPT-S by more than twice the seed spread"
        elif gain["mean"] < 0:
            verdict = "the hybrid is ahead of GPT-S on average, but by less than twice the seed spread"
        else:
            verdict = "the hybrid does NOT beat GPT-S"
        out.append(
            f"{domain}: hybrid - GPT-S codebook-0 NLL = {gain['mean']:+.3f} nats (per seed "
            + ", ".join(f"{v:+.3f}" for v in gain["by_seed"])
            + f"; hybrid better in {wins} of {len(gain['by_seed'])} seeds; seed std GPT-S {s['nll_std']:.3f}, "
            f"hybrid {h['nll_std']:.3f}): {verdict}. Paper: "
            f"{h['paper']['nll'] - s['paper']['nll']:+.2f}. GPT-L - GPT-S = "
            f"{large['nll'] - s['nll']:+.3f} nats ({len(large['seeds'])} seed)."
        )
    steps, epochs = report["speech"]["gpt_s"]["steps"], report["speech"]["gpt_s"]["epochs"]
    out.append(
        f"Every run trained for {steps} optimizer steps ({epochs:.2f} epochs of speech, "
        f"{report['music']['gpt_s']['epochs']:.2f} of music): far from convergence, so this measures which model "
        "learns faster at a fixed small budget, not where each would end up. GPT-L in particular is the most "
        "under-trained relative to its size."
    )
    rows = {row["run"]: row for row in report.get("ablations", [])}
    if rows:
        spread = max(spreads)
        out.append(
            f"Ablations are single runs (seed {report['ablations'][0]['seed']}); differences below about "
            f"{2 * spread:.3f} nats (twice the largest seed std of the main table) are within noise."
        )
        base = rows["gpt_s"]["nll"]
        causal, centered = base - rows["hybrid"]["nll"], base - rows["hybrid_centered_mel"]["nll"]
        if abs(centered - causal) < 2 * spread:
            leak = f"the difference, {centered - causal:+.3f} nats, is within noise"
        elif causal > 0 and centered > causal:
            leak = f"{(centered - causal) / centered:.0%} of the centered gain is leakage"
        else:
            leak = f"the centered mel is {centered - causal:+.3f} nats better than the causal one"
        out.append(
            f"Mel framing: gain over GPT-S with causal mel {causal:+.3f} nats, with centered-STFT mel "
            f"{centered:+.3f} nats ({leak}). The centered STFT window of frame t reaches n_fft/2 - hop/2 = 352 "
            "samples past the frame's end: all 320 samples of frame t + 1, the frame being predicted."
        )
        out.append(
            "Spectrogram layers 0 / 2 / 4: "
            + " / ".join(
                f"{rows[name]['nll']:.3f}"
                for name in ("hybrid_spectrogram_layers_0", "hybrid", "hybrid_spectrogram_layers_4")
            )
            + f"; fusion concat / sum: {rows['hybrid']['nll']:.3f} / {rows['hybrid_sum_fusion']['nll']:.3f}; "
            f"mel from audio / from codec resynthesis: {rows['hybrid']['nll']:.3f} / "
            f"{rows['hybrid_codec_mel']['nll']:.3f}. With this codec (random decoder weights) the resynthesised "
            "audio is a deterministic function of the codebook-0 codes, so its mel carries no information the "
            "codes do not already carry; any gain it shows is from the extra computation, not from audio."
        )
        k8, flat, s8 = rows["hybrid_k8"], rows["flat8_gpt_s"], rows["gpt_s_k8"]
        memory = ""
        if k8.get("memory") and flat.get("memory"):
            memory = (
                f"; peak memory added by a training step for the same {report['budget']['crop_seconds']:.2f} s crops: "
                f"{k8['memory']['step_increase_mib']:.0f} MiB (hybrid K=8) vs {flat['memory']['step_increase_mib']:.0f}"
                " MiB (flattened)"
            )
        out.append(
            f"K=1 vs K=8: codebook-0 NLL hybrid K=1 {rows['hybrid']['nll']:.3f}, hybrid K=8 {k8['nll']:.3f}, "
            f"token-only K=8 {s8['nll']:.3f}. Context length: hybrid K=8 (one position per frame) mean NLL over the 8 "
            f"codebooks {k8['nll_all_codebooks']:.3f} vs flattened token-only {flat['nll_all_codebooks']:.3f}; "
            f"training speed {k8['train_frames_per_second']:.0f} vs {flat['train_frames_per_second']:.0f} frames/s "
            f"({k8['train_tokens_per_second']:.0f} vs {flat['train_tokens_per_second']:.0f} codes/s){memory}. The "
            f"flattened model has {flat['params'] / 1e6:.1f}M parameters (8x larger vocabulary) against "
            f"{k8['params'] / 1e6:.1f}M."
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ReproductionConfig()
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=defaults.budget_minutes,
        help="wall-clock budget for the whole study on this machine (step counts scale with it)",
    )
    parser.add_argument("--output-dir", default=defaults.output_dir, help="corpora, codec, cache and logs")
    parser.add_argument("--docs-dir", default=defaults.docs_dir, help="where results.json/.md and figures/ go")
    parser.add_argument("--speech-dir", default=None, help="an existing speech corpus or audio folder to reuse")
    parser.add_argument("--music-dir", default=None, help="an existing music corpus or audio folder to reuse")
    parser.add_argument("--corpus-minutes", type=float, default=None, help="minutes per domain (default: from budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="seeds (GPT-S, hybrid)")
    parser.add_argument("--large-seeds", type=int, nargs="+", default=list(defaults.large_seeds), help="GPT-L seeds")
    parser.add_argument("--ablation-domain", choices=DOMAINS, default=defaults.ablation_domain)
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-frames", type=int, default=defaults.max_frames, help="crop and evaluation window")
    parser.add_argument("--max-steps", type=int, default=None, help="force the steps per run instead of the budget")
    parser.add_argument("--validation-seconds", type=float, default=defaults.validation_seconds)
    parser.add_argument("--eval-points", type=int, default=defaults.eval_points)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--remeasure-memory", action="store_true", help="only re-run the memory probe of DOCS_DIR/results.json"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only re-write DOCS_DIR/results.md and figures/ from DOCS_DIR/results.json (which is left as it is)",
    )


def config_from_args(args: argparse.Namespace, command: str | None = None) -> ReproductionConfig:
    return ReproductionConfig(
        budget_minutes=args.budget_minutes,
        output_dir=args.output_dir,
        docs_dir=args.docs_dir,
        speech_dir=args.speech_dir,
        music_dir=args.music_dir,
        corpus_minutes=args.corpus_minutes,
        seeds=tuple(args.seeds),
        large_seeds=tuple(args.large_seeds),
        ablations=not args.no_ablations,
        ablation_domain=args.ablation_domain,
        batch_size=args.batch_size,
        max_frames=args.max_frames,
        max_steps=args.max_steps,
        validation_seconds=args.validation_seconds,
        eval_points=args.eval_points,
        progress=args.progress,
        command=command,
    )


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt reproduce`` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "reproduce", help="the paper's GPT-S / GPT-L / hybrid comparison and ablations on real speech and music"
    )
    add_arguments(parser)
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.remeasure_memory:
        return remeasure_memory(args.docs_dir)
    if args.render_only:
        return render_report(args.docs_dir)
    command = "whisper-gpt reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    report = run_reproduction(config_from_args(args, command))
    print(render_markdown(report, []))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.remeasure_memory:
        return remeasure_memory(args.docs_dir)
    if args.render_only:
        return render_report(args.docs_dir)
    argv = sys.argv[1:] if argv is None else argv
    command = "python examples/reproduce_paper.py " + " ".join(shlex.quote(a) for a in argv)
    report = run_reproduction(config_from_args(args, command))
    print(render_markdown(report, []))
    return report


__all__ = [
    "FlattenedCodebooks",
    "ReproductionConfig",
    "RunSpec",
    "add_arguments",
    "main",
    "paper_numbers",
    "plan_runs",
    "register_cli",
    "render_markdown",
    "run_reproduction",
    "write_report",
]
