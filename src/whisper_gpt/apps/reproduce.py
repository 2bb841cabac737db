"""``whisper-gpt reproduce``: the paper's comparison (arXiv 2412.11449) on real speech and music, plus ablations.

The study, for each of two codec regimes (`REGIMES`):

* ``random_kmeans``: the local EnCodec with its random (initialised) encoder and k-means codebooks
  (``encoder_steps=0``): codes that quantise the signal, closest to EnCodec's role;
* ``fitted_encoder``: the codec ``whisper-gpt train`` calibrates by default, whose encoder is first fitted to the
  log-mel (`fit_encoder_to_mel`, ``TrainingConfig.calibration_encoder_steps`` steps): codes that are spectral
  prototypes.

Each regime has ONE codec, calibrated on training audio of both domains (8 codebooks, 6 kbps geometry; the paper's
models read codebook 0 only) and kept in ``OUTPUT_DIR/codecs/REGIME-ID/``. Its runs are grouped (`GROUPS`):

* ``headline``: token-only GPT-S and the hybrid on speech and music with every seed of ``seeds``, and GPT-L with
  ``large_seeds``;
* ``ablations`` (on ``ablation_domain``, the first seed): centred-STFT mel (which sees 352 future samples: what
  leakage would fake), the mel of the codec's resynthesis, the mel gate, sum fusion, 0 mel blocks, 64 mel bins;
  GPT-S and the hybrid of the headline (same seed) are their references;
* ``codebooks`` (opt-in, costly): hybrid and GPT-S reading 8 codebooks (depth transformer) and the flattened
  token-only baseline (8 tokens per frame), with the peak memory of a training step.

Every run trains with the package's one loop (`whisper_gpt.training.loop.train`) for the same ``steps`` optimizer
steps, batch, crop, AdamW and warmup + cosine schedule; the seed sets the initialisation and the data order, which
the loop makes a function of (seed, epoch, example) only, so GPT-S, GPT-L and the hybrid of one seed see the same
batches. Validation is `evaluate_model` (the code of ``whisper-gpt evaluate``) on held-out files at ``eval_points``
evenly spaced steps, the last at the final step. For hybrid runs `mel_path_diagnostics` then measures whether the
mel path is used: the gate, the NLL with the mel frames zeroed or taken from another clip, and the gradient norm of
the fusion's mel part.

Resumable: each run's result is written atomically to ``OUTPUT_DIR/runs/REGIME/DOMAIN-NAME-seedS-ID.json`` as soon
as it finishes, where ID hashes every setting the result depends on (`run_settings`): a rerun skips stored runs,
and a changed setting gives a new ID, so an old result is never reused for it. ``regimes``, ``domains``,
``groups`` and ``models`` choose which runs of the study train now, so the study can be done in parts; every
invocation first times each model with a few steps of the loop (`seconds_per_step`) and logs the estimated total,
and ends by rendering ``DOCS_DIR/results.{json,md}`` and ``DOCS_DIR/figures/`` from all stored results of the
study (`whisper_gpt.apps.reproduce_report`); runs not yet stored are listed as pending there.
``import_report`` (``--import-report RESULTS_JSON``) stores the runs of an earlier report that are runs of these
same settings (`import_report`), so a study can be continued in a fresh ``OUTPUT_DIR`` from a committed report.

The flattened baseline (``flat8``) is a token-only GPT-S whose vocabulary is the 8 codebooks side by side
(``codebook_size = 8 * 1024``): frame t's codes become 8 consecutive tokens ``k * 1024 + code_k`` (k = 0..7). Its
NLL per codebook is computed over the 1024 logits of the codebook the next token belongs to, so it is comparable
with the K=8 models' per-codebook NLL; tokens of a window's first frame are not scored.
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
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..configuration_whisper_gpt import PAPER_RESULTS
from .cli import non_negative_int, positive_float, positive_int

logger = logging.getLogger(__name__)

DOMAINS = ("speech", "music")
MAIN_MODELS = ("gpt_s", "gpt_l", "hybrid")
PRESET = {"gpt_s": "paper_gpt_s", "gpt_l": "paper_gpt_l", "hybrid": "paper_hybrid"}
LABEL = {model: PAPER_RESULTS[preset]["model"] for model, preset in PRESET.items()}
REGIMES = ("random_kmeans", "fitted_encoder")
GROUPS = ("headline", "ablations", "codebooks")
CODEC_CODEBOOKS = 8  # 6 kbps: what the K=8 runs read; the paper's models read codebook 0 only
CODEC_BANDWIDTH = 6.0
EVAL_BATCH_SIZE = 8
RESULT_FORMAT = 1  # bumped when a run's stored result changes meaning, so older results are not reused


def paper_numbers(domain: str, model: str) -> dict[str, float]:
    """What the paper reports for ``model`` (gpt_s / gpt_l / hybrid) on ``domain``: ``params``, ``nll``,
    ``accuracy``, ``ppl`` (from `PAPER_RESULTS`)."""
    reported = PAPER_RESULTS[PRESET[model]]
    numbers = reported[domain]
    return {
        "params": reported["params"],
        "nll": numbers["nll"],
        "accuracy": numbers["accuracy"],
        "ppl": numbers["perplexity"],
    }


def _fitted_encoder_steps() -> int:
    """`fit_encoder_to_mel` steps of the codec ``whisper-gpt train`` calibrates by default."""
    from ..training.loop import TrainingConfig

    return TrainingConfig.calibration_encoder_steps


@dataclass
class ReproductionConfig:
    """The study's settings (what results depend on) and which of its runs to train now (``regimes``, ``domains``,
    ``groups``, ``models``: these select, they do not change any run's result)."""

    output_dir: str = "runs/reproduce"  # corpora (unless given), codecs, encoded-data cache, run results and logs
    docs_dir: str = "docs"  # results.json, results.md, figures/
    speech_dir: str | None = None  # an existing corpus or audio folder; default OUTPUT_DIR/corpora/speech
    music_dir: str | None = None
    corpus_minutes: float = 15.0  # per domain, for a corpus built here
    seeds: tuple[int, ...] = (0, 1, 2)  # GPT-S and hybrid
    large_seeds: tuple[int, ...] = (0,)  # GPT-L
    ablation_domain: str = "speech"
    steps: int = 400  # optimizer steps of every run
    warmup_steps: int = 50
    batch_size: int = 16
    max_frames: int = 256  # training crop and evaluation window (frames at 75 / s)
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    eval_points: int = 5  # validations per run (evenly spaced, the last at the final step)
    validation_seconds: float = 100.0  # cap on held-out audio per domain (whole files, in manifest order)
    codebook_size: int = 1024
    num_mel_bins: int = 80
    ablation_mel_bins: int = 64
    calibration_seconds: float = 240.0  # of training audio, split between the domains
    calibration_frames: int = 30_000
    calibration_iterations: int = 10
    fitted_encoder_steps: int = field(default_factory=_fitted_encoder_steps)  # the fitted_encoder regime's
    diagnostic_batches: int = 4  # training batches the fusion's gradient norms are averaged over
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # keys: "all" or a model name
    torch_threads: int | None = None  # None: the training loop's choice (`configure_torch`)
    timing_steps: int = 2
    measure_memory: bool = True  # peak memory of a training step, for the runs of the codebooks group
    # Which runs train now (None: all).
    regimes: tuple[str, ...] = REGIMES
    domains: tuple[str, ...] = DOMAINS
    groups: tuple[str, ...] = ("headline", "ablations")
    models: tuple[str, ...] | None = None
    progress: bool = False
    command: str | None = None
    import_report: str | None = None  # an earlier results.json whose runs of these same settings count as stored


def check_config(config: ReproductionConfig) -> None:
    """Refuse settings the study cannot run, naming the option to change."""
    choices = {"regimes": REGIMES, "domains": DOMAINS, "groups": GROUPS, "models": MAIN_MODELS}
    for name, allowed in choices.items():
        values = getattr(config, name)
        if values is None and name == "models":
            continue
        unknown = [value for value in values if value not in allowed]
        if unknown or not values:
            raise ValueError(f"{name} must be a non-empty selection of {', '.join(allowed)}; got {list(values)}.")
    if config.ablation_domain not in DOMAINS:
        raise ValueError(f"ablation_domain must be one of {DOMAINS}, got {config.ablation_domain!r}.")
    if not config.seeds or not config.large_seeds:
        raise ValueError("seeds and large_seeds need at least one seed each.")
    if len(set(config.seeds)) != len(config.seeds) or len(set(config.large_seeds)) != len(config.large_seeds):
        raise ValueError(f"seeds must not repeat: got {list(config.seeds)} and {list(config.large_seeds)}.")
    if config.steps < 1:
        raise ValueError(f"steps must be at least 1, got {config.steps}.")
    if not 0 <= config.warmup_steps < config.steps:
        raise ValueError(
            f"warmup_steps ({config.warmup_steps}) must be below steps ({config.steps}): give --warmup-steps smaller "
            "than --steps."
        )
    if not 1 <= config.eval_points <= config.steps:
        raise ValueError(f"eval_points must be between 1 and steps ({config.steps}), got {config.eval_points}.")
    if config.diagnostic_batches < 1:
        raise ValueError(f"diagnostic_batches must be at least 1, got {config.diagnostic_batches}.")
    if config.import_report is not None and not Path(config.import_report).is_file():
        raise ValueError(
            f"--import-report {config.import_report} is not a file: give the results.json of an earlier run of the "
            "study (for example docs/results.json)."
        )


# ---------------------------------------------------------------------------------------------------------------
# Corpora, codecs and encoded data


def _corpus_dirs(config: ReproductionConfig) -> dict[str, Path]:
    root = Path(config.output_dir) / "corpora"
    return {
        "speech": Path(config.speech_dir) if config.speech_dir else root / "speech",
        "music": Path(config.music_dir) if config.music_dir else root / "music",
    }


def _ensure_corpora(config: ReproductionConfig, build: bool = True) -> dict[str, dict[str, Any]]:
    """Both domains' corpora (a regime's codec is calibrated on both): a folder that already holds audio (a built
    corpus or the user's folder) is used as it is; otherwise a corpus of ``corpus_minutes`` is built, or with
    ``build=False`` a ValueError says that there is none."""
    from .corpus import audio_files, build_corpus, load_manifest

    info = {}
    for domain, folder in _corpus_dirs(config).items():
        reuse = (folder / "manifest.jsonl").is_file() or (
            folder.is_dir() and not (folder / "cache").is_dir() and bool(audio_files(folder))
        )
        if not reuse and not build:
            raise ValueError(
                f"No {domain} corpus at {folder}, so no run of this study can be stored: run the study first, or "
                f"give the same --output-dir / --{domain}-dir as the runs."
            )
        if not reuse:
            build_corpus(domain, folder, minutes=config.corpus_minutes, progress=config.progress)
        rows = load_manifest(folder)
        sources: dict[str, float] = {}
        for row in rows:
            source = row.get("source", "user")
            sources[source] = round(sources.get(source, 0.0) + row["duration"], 3)
        info[domain] = {
            "dir": str(folder),
            "files": {s: sum(r["split"] == s for r in rows) for s in ("train", "validation")},
            "seconds": {
                s: round(sum(r["duration"] for r in rows if r["split"] == s), 2) for s in ("train", "validation")
            },
            "seconds_by_source": sources,
        }
    return info


def _calibration_files(dirs: dict[str, Path], seconds: float) -> list[tuple[Path, str]]:
    """Training files of both domains, about ``seconds`` in all, half per domain, in a seeded order: (corpus folder,
    path relative to it)."""
    from .corpus import load_manifest

    chosen: list[tuple[Path, str]] = []
    for folder in dirs.values():
        rows = [row for row in load_manifest(folder) if row["split"] == "train"]
        total = 0.0
        for index in np.random.default_rng(0).permutation(len(rows)):
            if total >= seconds / len(dirs):
                break
            chosen.append((folder, rows[index]["path"]))
            total += rows[index]["duration"]
    return chosen


def _files_identity(root: Path, files: list[Path]) -> str:
    """A hash of files' paths relative to ``root`` and their sizes: the same corpus gives the same identity
    wherever it lies; rebuilt or changed files give another."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{Path(file).relative_to(root).as_posix()}\0{Path(file).stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def codec_settings(config: ReproductionConfig, regime: str, dirs: dict[str, Path]) -> dict[str, Any]:
    """Everything a regime's codec depends on (its ID is a hash of this)."""
    files = _calibration_files(dirs, config.calibration_seconds)
    digest = hashlib.sha256()
    for folder, relative in files:
        digest.update(f"{relative}\0{(folder / relative).stat().st_size}\n".encode())
    return {
        "regime": regime,
        "encoder_steps": config.fitted_encoder_steps if regime == "fitted_encoder" else 0,
        "codebook_size": config.codebook_size,
        "num_mel_bins": config.num_mel_bins,
        "bandwidth_kbps": CODEC_BANDWIDTH,
        "calibration_seconds": config.calibration_seconds,
        "calibration_frames": config.calibration_frames,
        "calibration_iterations": config.calibration_iterations,
        "calibration_files": len(files),
        "calibration_audio": digest.hexdigest()[:16],
        "seed": 0,
    }


def _codec(config: ReproductionConfig, settings: dict[str, Any], dirs: dict[str, Path]) -> tuple[Any, dict]:
    """The regime's processor: reused from OUTPUT_DIR/codecs/REGIME-ID, else calibrated there (written aside and
    renamed, so a kill leaves a complete codec or none)."""
    import shutil

    from ..processing_whisper_gpt import WhisperGPTProcessor
    from ..training.data import build_processor

    target = Path(config.output_dir) / "codecs" / f"{settings['regime']}-{_digest(settings)[:10]}"
    record = target / "calibration.json"
    if record.is_file():
        return WhisperGPTProcessor.from_pretrained(str(target)), json.loads(record.read_text())
    started = time.perf_counter()
    files = [folder / relative for folder, relative in _calibration_files(dirs, config.calibration_seconds)]
    processor, stats = build_processor(
        files,
        num_mel_bins=config.num_mel_bins,
        codebook_size=config.codebook_size,
        bandwidth=CODEC_BANDWIDTH,
        max_frames=config.calibration_frames,
        iterations=config.calibration_iterations,
        encoder_steps=settings["encoder_steps"],
        seed=settings["seed"],
        progress=config.progress,
    )
    tokenizer = processor.audio_tokenizer
    summary = {
        "settings": settings,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "frames": stats.get("frames"),
        "entropy_bits": stats.get("entropy_bits"),
        "codes_used": stats.get("codes_used"),
        "residual_energy": stats.get("residual_energy"),
        "sampling_rate": tokenizer.sampling_rate,
        "frame_rate": tokenizer.sampling_rate / tokenizer.hop_length,
        "num_codebooks": tokenizer.num_codebooks,
        "codebook_size": tokenizer.codebook_size,
    }
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    processor.save_pretrained(str(partial))
    (partial / "calibration.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    os.replace(partial, target)
    return processor, summary


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


def _mel_extractor(processor: Any, mel: str, bins: int) -> Any:
    """The feature extractor of a mel variant: causal or centred framing, ``bins`` mel bins, the codec's geometry."""
    from ..feature_extraction_whisper_gpt import WhisperGPTFeatureExtractor

    base = processor.feature_extractor
    return WhisperGPTFeatureExtractor(
        feature_size=bins,
        sampling_rate=base.sampling_rate,
        hop_length=base.hop_length,
        n_fft=base.n_fft,
        framing="centered" if mel == "centered" else "causal",
    )


def _encode(processor: Any, files: list[Path], variants: list[tuple[str, int]], cache: Path) -> dict[str, Any]:
    """Codes (T, 8) of every file and its mel frames (T, M) for each variant (mel, bins), cached as .npz files
    (codes once, one file per variant). Returns ``lengths``, ``codes`` and each variant's list of frames."""
    from ..training.data import load_audio, processor_fingerprint

    digest = hashlib.sha256(processor_fingerprint(processor).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    base = digest.hexdigest()[:20]
    targets = {"codes": cache / f"codes-{base}.npz"} | {v: cache / f"mel-{base}-{v[0]}{v[1]}.npz" for v in variants}
    missing = [name for name, path in targets.items() if not path.is_file()]
    if missing:
        default = ("causal", processor.feature_extractor.feature_size)
        extractors = {v: _mel_extractor(processor, *v) for v in missing if v not in ("codes", default)}
        arrays: dict[Any, list[np.ndarray]] = {name: [] for name in missing}
        for file in files:
            audio, rate = load_audio(file)
            inputs = processor(audio=audio, sampling_rate=rate, return_tensors="np")
            frames = inputs["input_ids"].shape[-1]
            for name in missing:
                if name == "codes":
                    values = inputs["input_ids"][0].T.astype(np.uint16)
                elif name == default:
                    values = inputs["input_features"][0]
                elif name[0] == "codec":
                    values = processor(
                        audio=audio, sampling_rate=rate, return_tensors="np", mel_source="codec", mel_num_codebooks=1
                    )["input_features"][0]
                else:
                    values = extractors[name](audio, sampling_rate=rate, return_tensors="np")["input_features"][0]
                if values.shape[0] != frames:
                    raise RuntimeError(f"{file}: {name} gives {values.shape[0]} frames, the codes {frames}")
                arrays[name].append(values if name == "codes" else values.astype(np.float16))
        cache.mkdir(parents=True, exist_ok=True)
        for name in missing:
            lengths = np.array([a.shape[0] for a in arrays[name]], dtype=np.int64)
            partial = targets[name].with_name(targets[name].stem + ".partial.npz")
            np.savez(partial, lengths=lengths, values=np.concatenate(arrays[name]))
            os.replace(partial, targets[name])
    out: dict[Any, Any] = {}
    for name, path in targets.items():
        with np.load(path) as data:
            lengths, values = data["lengths"], data["values"]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        out[name] = [values[a:b] for a, b in itertools.pairwise(bounds)]
        out["lengths"] = lengths
    return out


def _dataset(codes: list[np.ndarray], mels: list[np.ndarray]) -> Any:
    """A `datasets.Dataset` in the layout of `whisper_gpt.training.data.prepare_dataset`."""
    import datasets

    features = datasets.Features(
        {
            "codes": datasets.Array2D(shape=(None, codes[0].shape[1]), dtype="uint16"),
            "input_features": datasets.Array2D(shape=(None, mels[0].shape[1]), dtype="float16"),
            "num_frames": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(
        {"codes": codes, "input_features": mels, "num_frames": [len(c) for c in codes]}, features=features
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
    groups: tuple[str, ...] = ("headline",)  # the groups (`GROUPS`) whose tables use this run

    @property
    def key(self) -> str:
        return f"{self.domain}/{self.name}/seed{self.seed}"


def plan_runs(config: ReproductionConfig) -> list[RunSpec]:
    """Every run of one regime's study (the same for each regime), each once: the headline's GPT-S and hybrid of
    the ablation domain's first seed are also the references of the ablation and codebook groups."""
    seed, d = config.seeds[0], config.ablation_domain
    runs = []
    for domain in DOMAINS:
        for model in MAIN_MODELS:
            for s in config.large_seeds if model == "gpt_l" else config.seeds:
                reference = domain == d and s == seed and model != "gpt_l"
                runs.append(RunSpec(model, domain, model, s, groups=GROUPS if reference else ("headline",)))
    ablation = ("ablations",)
    runs += [
        RunSpec("hybrid_centered_mel", d, "hybrid", seed, mel="centered", groups=ablation),
        RunSpec("hybrid_codec_mel", d, "hybrid", seed, mel="codec", groups=ablation),
        RunSpec("hybrid_mel_gate", d, "hybrid", seed, {"mel_gate": True}, groups=ablation),
        RunSpec("hybrid_sum_fusion", d, "hybrid", seed, {"fusion": "sum"}, groups=ablation),
        RunSpec("hybrid_spectrogram_layers_0", d, "hybrid", seed, {"spectrogram_layers": 0}, groups=ablation),
        RunSpec(
            f"hybrid_mel_bins_{config.ablation_mel_bins}",
            d,
            "hybrid",
            seed,
            {"num_mel_bins": config.ablation_mel_bins},
            groups=ablation,
        ),
        RunSpec("hybrid_k8", d, "hybrid", seed, {"num_codebooks": CODEC_CODEBOOKS}, groups=("codebooks",)),
        RunSpec("gpt_s_k8", d, "gpt_s", seed, {"num_codebooks": CODEC_CODEBOOKS}, groups=("codebooks",)),
        RunSpec("flat8_gpt_s", d, "gpt_s", seed, flat=True, groups=("codebooks",)),
    ]
    return runs


def selected(spec: RunSpec, config: ReproductionConfig) -> bool:
    """Whether ``spec`` trains in this invocation (its regime is selected separately)."""
    return (
        spec.domain in config.domains
        and any(group in config.groups for group in spec.groups)
        and (config.models is None or spec.model in config.models)
    )


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


def _mel_variant(spec: RunSpec, config: ReproductionConfig) -> tuple[str, int]:
    """(framing or source, bins) of the mel frames the run's data holds."""
    return spec.mel, _overrides(spec, config)["num_mel_bins"]


def _model(spec: RunSpec, config: ReproductionConfig) -> torch.nn.Module:
    """A fresh model of ``spec`` (initialised from torch's global RNG): its preset with the overrides, or the
    flattened baseline."""
    from ..modeling_whisper_gpt import WhisperGPTForCausalLM
    from ..training.loop import model_config

    if not spec.flat:
        return WhisperGPTForCausalLM(model_config(PRESET[spec.model], _overrides(spec, config)))
    overrides = _overrides(spec, config)
    overrides.update(
        codebook_size=CODEC_CODEBOOKS * overrides["codebook_size"],
        max_position_embeddings=CODEC_CODEBOOKS * config.max_frames,
        num_codebooks=1,
        use_spectrogram=False,
    )
    return FlattenedCodebooks(WhisperGPTForCausalLM(model_config(PRESET[spec.model], overrides)), config.max_frames)


def _seeded_model(spec: RunSpec, config: ReproductionConfig) -> torch.nn.Module:
    """The model a run trains: built right after ``set_seed(seed)``, as `train` builds a preset's model, so its
    initialisation depends on the seed alone."""
    from accelerate.utils import set_seed

    set_seed(spec.seed)
    return _model(spec, config)


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


def _eval_every(config: ReproductionConfig) -> int:
    return math.ceil(config.steps / config.eval_points)


def _training_config(spec: RunSpec, config: ReproductionConfig, output_dir: Path) -> Any:
    """The run's `TrainingConfig`: the same steps, batch, crop, optimizer and schedule for every run; data order
    from the seed; validation ``eval_points`` times; no checkpoints or final folder. The model is given to `train`
    (`_seeded_model`), so the config names no preset; a run killed before its result was stored starts over."""
    from ..training.loop import TrainingConfig

    return TrainingConfig(
        output_dir=str(output_dir),
        preset="custom",
        model_overrides={},
        max_frames=config.max_frames,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        warmup_steps=config.warmup_steps,
        max_steps=config.steps,
        max_grad_norm=config.max_grad_norm,
        eval_every=_eval_every(config),
        eval_batch_size=EVAL_BATCH_SIZE,
        eval_window=config.max_frames,
        save_every=0,
        save_final=False,
        log_every=1,
        report_to="none",
        seed=spec.seed,
        overwrite_output_dir=True,
        torch_threads=config.torch_threads,
        progress=config.progress,
    )


def run_settings(
    spec: RunSpec, config: ReproductionConfig, codec: dict[str, Any], data: dict[str, str]
) -> dict[str, Any]:
    """Everything a run's result depends on: its ID (and stored file name) is a hash of this, so a changed setting
    is a different run. ``codec`` is `codec_settings`; ``data`` the identities of the domain's training and
    held-out files."""
    mel, bins = _mel_variant(spec, config)
    return {
        "format": RESULT_FORMAT,
        "regime": codec["regime"],
        "codec": codec,
        "domain": spec.domain,
        "data": data,
        "validation_seconds": config.validation_seconds,
        "name": spec.name,
        "model": {"preset": PRESET[spec.model], "overrides": _overrides(spec, config), "flat": spec.flat},
        "mel": {"source": mel, "bins": bins},
        "seed": spec.seed,
        "training": {
            "steps": config.steps,
            "warmup_steps": config.warmup_steps,
            "batch_size": config.batch_size,
            "crop_frames": config.max_frames,
            "learning_rate": config.learning_rate,
            "weight_decay": config.weight_decay,
            "adam_beta2": config.adam_beta2,
            "max_grad_norm": config.max_grad_norm,
            "eval_every": _eval_every(config),
            "eval_window": config.max_frames,
        },
        "diagnostic_batches": config.diagnostic_batches,
    }


def run_path(output_dir: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Where a run's result is stored: OUTPUT_DIR/runs/REGIME/DOMAIN-NAME-seedS-ID.json."""
    name = f"{settings['domain']}-{settings['name']}-seed{settings['seed']}-{_digest(settings)[:10]}.json"
    return Path(output_dir) / "runs" / settings["regime"] / name


def load_result(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result at ``path`` if it is one of the run ``settings`` describes (None otherwise)."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        logger.warning("%s is not readable JSON; the run trains again", path)
        return None
    if result.get("settings") != json.loads(json.dumps(settings, default=str)):
        logger.warning("%s holds another run's settings; the run trains again", path)
        return None
    return result


def _write_json_atomically(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(_jsonable(value), indent=1) + "\n")
    os.replace(partial, path)


def _processor_for(processor: Any, bins: int) -> Any:
    """``processor`` with a feature extractor of ``bins`` mel bins (the same codec), for the mel-bins ablation."""
    from ..processing_whisper_gpt import WhisperGPTProcessor

    if bins == processor.feature_extractor.feature_size:
        return processor
    return WhisperGPTProcessor(_mel_extractor(processor, "causal", bins), processor.audio_tokenizer)


def _train_run(
    spec: RunSpec,
    config: ReproductionConfig,
    processor: Any,
    train_set: Any,
    encoded_validation: dict[str, Any],
    log_dir: Path,
) -> dict[str, Any]:
    """Train and evaluate one run with `whisper_gpt.training.loop.train`; its result (metrics, validation curve,
    NLL by context, timing; mel-path diagnostics for a hybrid)."""
    from ..training.loop import train

    started = time.perf_counter()
    variant = _mel_variant(spec, config)
    validation_set = _dataset(encoded_validation["codes"], encoded_validation[variant])
    model = _seeded_model(spec, config)
    summary = train(
        _training_config(spec, config, log_dir),
        model=model,
        processor=_processor_for(processor, variant[1]),
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
    metrics = summary["validation"]
    first = metrics["codebook_0"]
    num_codebooks = len(metrics["per_codebook"])
    frames_per_second = summary["train_frames_per_second"]
    diagnostics = None
    if getattr(model.config, "use_spectrogram", False) and not spec.flat:
        diagnostics = mel_path_diagnostics(
            model, encoded_validation["codes"], encoded_validation[variant], train_set, config, spec.seed, first["nll"]
        )
    return {
        "name": spec.name,
        "domain": spec.domain,
        "model": spec.model,
        "seed": spec.seed,
        "groups": list(spec.groups),
        "mel": spec.mel if model.config.trains_on_mel_frames else None,
        "params": int(summary["num_parameters"]),
        "nll": float(first["nll"]),
        "accuracy": float(first["accuracy"]),
        "ppl": float(math.exp(first["nll"])),
        "nll_all_codebooks": float(metrics["nll"]),
        "per_codebook_nll": [float(entry["nll"]) for entry in metrics["per_codebook"]],
        "num_codebooks": num_codebooks,
        "validation_tokens": int(first["tokens"]),
        "validation_windows": int(metrics["windows"]),
        "nll_by_context": metrics["nll_by_context"],
        "tokens_by_context": metrics["tokens_by_context"],
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "train_seconds": round(summary["train_seconds"], 2),
        "eval_seconds": round(summary["evaluation_seconds"], 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "train_frames_per_second": frames_per_second,
        "train_tokens_per_second": frames_per_second * num_codebooks if frames_per_second else None,
        "threads": summary["threads_per_process"],
        "history": history,
        "diagnostics": diagnostics,
    }


def _fit_length(frames: np.ndarray, length: int) -> np.ndarray:
    """``frames`` (T', M) repeated or cut to ``length`` frames."""
    return frames[np.arange(length) % len(frames)]


def mel_path_diagnostics(
    model: torch.nn.Module,
    codes: list[np.ndarray],
    mels: list[np.ndarray],
    train_set: Any,
    config: ReproductionConfig,
    seed: int,
    nll: float,
) -> dict[str, Any]:
    """Is a trained hybrid's mel path used? Measured on the held-out files (``codes`` and their ``mels``, (T, M) per
    file) and a few training batches.

    Returns ``mel_gate`` (tanh of the gate; None for an ungated model); ``nll_zero_mel`` and ``nll_shuffled_mel``:
    codebook-0 NLL with every mel frame set to 0, and with each file's mel frames taken from the next file's
    (repeated or cut to its length; None with a single held-out file), with their increase over ``nll``;
    ``mel_part_grad_norm`` / ``token_part_grad_norm``: the mean norm, over ``diagnostic_batches`` training batches
    of the seed's first epoch, of the loss gradient of the fusion weight's columns that read the mel stream / the
    token embedding (sum fusion: the whole weight reads the mel stream, no token part), with those columns' weight
    norms; ``gate_grad``: the mean gradient of the gate (None without one).
    """
    from ..training.data import EpochShuffleSampler, TrainingCrops, WhisperGPTDataCollator
    from ..training.evaluation import evaluate_model

    def codebook0_nll(frames: list[np.ndarray]) -> float:
        metrics = evaluate_model(
            model, _dataset(codes, frames), window=config.max_frames, batch_size=EVAL_BATCH_SIZE, progress=False
        )
        return float(metrics["codebook_0"]["nll"])

    fusion = model.model.fusion
    zero = codebook0_nll([np.zeros_like(m) for m in mels])
    shuffled = None
    if len(mels) > 1:
        shuffled = codebook0_nll([_fit_length(mels[(i + 1) % len(mels)], len(m)) for i, m in enumerate(mels)])

    hidden = model.config.hidden_size
    concat = fusion.mode == "concat"
    crops = TrainingCrops(train_set, config.max_frames)
    collate = WhisperGPTDataCollator(max_frames=config.max_frames, random_crop=True, seed=seed)
    order = list(EpochShuffleSampler(len(crops), seed=seed))
    batches = min(config.diagnostic_batches, len(order) // config.batch_size)
    mel_norms, token_norms, gate_grads = [], [], []
    model.train()
    for index in range(batches):
        batch = collate([crops[key] for key in order[index * config.batch_size : (index + 1) * config.batch_size]])
        model.zero_grad(set_to_none=True)
        model(**batch, use_cache=False).loss.backward()
        grad = fusion.weight.grad
        mel_norms.append(float(grad[:, hidden:].norm() if concat else grad.norm()))
        if concat:
            token_norms.append(float(grad[:, :hidden].norm()))
        if fusion.mel_gate is not None:
            gate_grads.append(float(fusion.mel_gate.grad))
    model.zero_grad(set_to_none=True)
    model.eval()
    weight = fusion.weight.detach()
    return {
        "mel_gate": float(torch.tanh(fusion.mel_gate.detach())) if fusion.mel_gate is not None else None,
        "nll_zero_mel": zero,
        "nll_zero_mel_increase": zero - nll,
        "nll_shuffled_mel": shuffled,
        "nll_shuffled_mel_increase": None if shuffled is None else shuffled - nll,
        "gradient_batches": batches,
        "mel_part_grad_norm": float(np.mean(mel_norms)),
        "token_part_grad_norm": float(np.mean(token_norms)) if token_norms else None,
        "mel_part_weight_norm": float(weight[:, hidden:].norm() if concat else weight.norm()),
        "token_part_weight_norm": float(weight[:, :hidden].norm()) if concat else None,
        "gate_grad": float(np.mean(gate_grads)) if gate_grads else None,
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
    """Peak memory of a training step of ``spec``, in a fresh process (None, with a warning, if the probe fails)."""
    payload = json.dumps({"config": _jsonable(asdict(config)), "spec": _jsonable(asdict(spec))})
    code = f"from whisper_gpt.apps.reproduce import _memory_probe; _memory_probe({payload!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        logger.warning("memory probe failed: %s", result.stderr[-500:])
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores visible, {gpu}"


def _commit() -> str:
    """The package checkout's commit, with ``+uncommitted`` when tracked files differ from it."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+uncommitted" if dirty else "")


# ---------------------------------------------------------------------------------------------------------------
# The study


@dataclass
class PlannedRun:
    regime: str
    spec: RunSpec
    settings: dict[str, Any]
    path: Path


def plan_study(config: ReproductionConfig) -> tuple[list[PlannedRun], dict[str, dict[str, Any]]]:
    """Every run of the study (both regimes) with its settings and stored-result path, and each regime's codec
    settings. Needs the corpora (`_ensure_corpora`), not the codecs: the keys come from the settings and files."""
    from .corpus import audio_files

    dirs = _corpus_dirs(config)
    data = {}
    for domain, folder in dirs.items():
        data[domain] = {
            "train": _files_identity(folder, audio_files(folder, split="train")),
            "validation": _files_identity(folder, _validation_subset(folder, config.validation_seconds)),
        }
    codecs = {regime: codec_settings(config, regime, dirs) for regime in REGIMES}
    planned = []
    for regime in REGIMES:
        for spec in plan_runs(config):
            settings = json.loads(json.dumps(run_settings(spec, config, codecs[regime], data[spec.domain])))
            planned.append(PlannedRun(regime, spec, settings, run_path(config.output_dir, settings)))
    return planned, codecs


def _kind(spec: RunSpec) -> str:
    """Runs whose step time is the same: same architecture (the mel source does not change the cost)."""
    return json.dumps([spec.model, spec.flat, sorted(spec.overrides.items())])


def _kind_label(kind: str) -> str:
    model, flat, overrides = json.loads(kind)
    return model + (" flattened" if flat else "") + "".join(f" {name}={value}" for name, value in overrides)


class _RegimeData:
    """A regime's codec and encoded data, loaded on first use."""

    def __init__(self, config: ReproductionConfig, codec: dict[str, Any]):
        self.config, self.codec = config, codec
        self.processor: Any = None
        self.calibration: dict[str, Any] | None = None
        self.encoded: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, spec: RunSpec) -> tuple[Any, Any, dict[str, Any]]:
        """(processor, training dataset, encoded held-out files) of ``spec``'s domain and mel variant."""
        from .corpus import audio_files

        dirs = _corpus_dirs(self.config)
        if self.processor is None:
            self.processor, self.calibration = _codec(self.config, self.codec, dirs)
        cache = Path(self.config.output_dir) / "cache"
        variant = _mel_variant(spec, self.config)
        folder = dirs[spec.domain]
        train = _encode(self.processor, audio_files(folder, split="train"), [variant], cache)
        validation = _encode(
            self.processor, _validation_subset(folder, self.config.validation_seconds), [variant], cache
        )
        return self.processor, _dataset(train["codes"], train[variant]), validation


def estimate(todo: list[PlannedRun], config: ReproductionConfig, regime_data: dict[str, _RegimeData]) -> dict[str, Any]:
    """Time each distinct model of ``todo`` with `seconds_per_step` (``timing_steps`` steps of the loop itself, on
    the first run's regime: the step time does not depend on the codes) and one held-out window, and estimate the
    seconds of every run (steps, validations, diagnostics)."""
    from ..training.evaluation import evaluate_model
    from ..training.loop import seconds_per_step

    timing: dict[str, dict[str, float]] = {}
    windows: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for run in todo:
        kind, spec = _kind(run.spec), run.spec
        if kind not in timing or spec.domain not in windows:
            processor, train_set, validation = regime_data[todo[0].regime].get(spec)
            windows[spec.domain] = sum(math.ceil(len(c) / config.max_frames) for c in validation["codes"])
        if kind not in timing:
            variant = _mel_variant(spec, config)
            with tempfile.TemporaryDirectory() as folder:
                step = seconds_per_step(
                    _training_config(spec, config, Path(folder)),
                    config.timing_steps,
                    model=_seeded_model(spec, config),
                    processor=_processor_for(processor, variant[1]),
                    train_dataset=train_set,
                )
            first = _dataset(validation["codes"][:1], validation[variant][:1])
            started = time.perf_counter()
            evaluate_model(
                _model(spec, config), first, window=config.max_frames, batch_size=EVAL_BATCH_SIZE, progress=False
            )
            per_window = (time.perf_counter() - started) / math.ceil(len(validation["codes"][0]) / config.max_frames)
            timing[kind] = {"step": step, "eval_window": per_window}
            logger.info("%s: %.3f s per optimizer step", _kind_label(kind), step)
        hybrid = spec.model == "hybrid" and not spec.flat
        evaluations = config.eval_points + (2 if hybrid else 0)  # the diagnostics evaluate twice more
        seconds[f"{run.regime}/{spec.key}"] = (
            config.steps * timing[kind]["step"]
            + evaluations * windows[spec.domain] * timing[kind]["eval_window"]
            + (config.diagnostic_batches * timing[kind]["step"] if hybrid else 0.0)
        )
    return {
        "seconds_per_step": {_kind_label(k): round(t["step"], 4) for k, t in timing.items()},
        "seconds_by_run": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 1),
    }


def run_reproduction(config: ReproductionConfig, *, estimate_only: bool = False) -> dict[str, Any]:
    """Train the selected runs of the study that are not stored yet (each stored as it finishes), then write the
    report from every stored result; returns the report (with ``estimate_only``: only the time estimate, nothing
    trained or written)."""
    from .reproduce_report import build_report, write_report

    check_config(config)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    corpora = _ensure_corpora(config)
    planned, codecs = plan_study(config)
    if config.import_report is not None:
        import_report(Path(config.import_report), planned, config, study_settings(config, corpora, codecs))
    chosen = [run for run in planned if run.regime in config.regimes and selected(run.spec, config)]
    stored = [run for run in chosen if load_result(run.path, run.settings) is not None]
    todo = [run for run in chosen if load_result(run.path, run.settings) is None]
    logger.info("%d runs selected: %d already stored (skipped), %d to train", len(chosen), len(stored), len(todo))
    regime_data = {regime: _RegimeData(config, codecs[regime]) for regime in REGIMES}
    if todo or estimate_only:
        plan = estimate(todo, config, regime_data)
        lines = [f"  {label}: {value:.3f} s/step" for label, value in plan["seconds_per_step"].items()]
        print(
            f"{len(todo)} runs to train ({config.steps} steps each), estimated "
            f"{plan['total_seconds'] / 60:.1f} min on this machine (codec calibration and encoding not counted):\n"
            + "\n".join(lines),
            flush=True,
        )
        if estimate_only:
            return {"estimate": plan, "selected": len(chosen), "stored": len(stored), "to_train": len(todo)}
    commit, hardware = _commit(), _hardware()
    for index, run in enumerate(todo, 1):
        processor, train_set, validation = regime_data[run.regime].get(run.spec)
        logger.info("[%d/%d] training %s %s (%d steps)", index, len(todo), run.regime, run.spec.key, config.steps)
        log_dir = output / "logs" / run.regime / run.path.stem
        result = _train_run(run.spec, config, processor, train_set, validation, log_dir)
        if "codebooks" in run.spec.groups and run.spec.name != run.spec.model and config.measure_memory:
            result["memory"] = _measure_memory(run.spec, config)
        result.update(
            regime=run.regime,
            id=run.path.stem.rsplit("-", 1)[1],
            settings=run.settings,
            commit=commit,
            command=config.command,
            machine=hardware,
            torch_version=torch.__version__,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        _write_json_atomically(run.path, result)
        logger.info("%s %s: codebook-0 NLL %.4f (stored in %s)", run.regime, run.spec.key, result["nll"], run.path)
    report = build_report(_stored_results(planned), _plan_rows(planned), study_settings(config, corpora, codecs))
    write_report(report, Path(config.docs_dir))
    return report


def _stored_results(planned: list[PlannedRun]) -> list[dict[str, Any]]:
    found = []
    for run in planned:
        result = load_result(run.path, run.settings)
        if result is not None:
            found.append(result)
    return found


def _plan_rows(planned: list[PlannedRun]) -> list[dict[str, Any]]:
    return [
        {
            "regime": run.regime,
            "domain": run.spec.domain,
            "name": run.spec.name,
            "model": run.spec.model,
            "seed": run.spec.seed,
            "groups": list(run.spec.groups),
        }
        for run in planned
    ]


def study_settings(
    config: ReproductionConfig, corpora: dict[str, Any], codecs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The settings the report states (shared by every run of the study)."""
    codec_dirs = Path(config.output_dir) / "codecs"
    calibration = {}
    for regime, settings in codecs.items():
        record = codec_dirs / f"{regime}-{_digest(settings)[:10]}" / "calibration.json"
        calibration[regime] = json.loads(record.read_text()) if record.is_file() else {"settings": settings}
    return _jsonable(
        {
            "steps": config.steps,
            "warmup_steps": config.warmup_steps,
            "batch_size": config.batch_size,
            "crop_frames": config.max_frames,
            "optimizer": (
                f"AdamW lr {config.learning_rate}, betas (0.9, {config.adam_beta2}), weight decay "
                f"{config.weight_decay} on matrices, {config.warmup_steps} warmup steps then cosine decay to 0, "
                f"gradient clipping at {config.max_grad_norm}"
            ),
            "seeds": list(config.seeds),
            "large_seeds": list(config.large_seeds),
            "ablation_domain": config.ablation_domain,
            "ablation_mel_bins": config.ablation_mel_bins,
            "eval_points": config.eval_points,
            "validation_seconds": config.validation_seconds,
            "corpora": corpora,
            "codecs": calibration,
        }
    )


_SHARED_SETTINGS = (
    "steps",
    "warmup_steps",
    "batch_size",
    "crop_frames",
    "optimizer",
    "eval_points",
    "validation_seconds",
    "ablation_mel_bins",
)


def _same_study(earlier: dict[str, Any], current: dict[str, Any], regime: str) -> bool:
    """Whether a report's ``study`` settings are ``current``'s for the runs of ``regime``: training, validation,
    the regime's codec and the corpora (file counts, seconds, seconds by source; not where they lie)."""

    def corpora(study: dict[str, Any]) -> dict[str, Any]:
        return {domain: {k: v for k, v in info.items() if k != "dir"} for domain, info in study["corpora"].items()}

    return (
        all(earlier.get(key) == current[key] for key in _SHARED_SETTINGS)
        and corpora(earlier) == corpora(current)
        and earlier.get("codecs", {}).get(regime, {}).get("settings") == current["codecs"][regime]["settings"]
    )


def import_report(
    path: Path, planned: list[PlannedRun], config: ReproductionConfig, current: dict[str, Any]
) -> list[PlannedRun]:
    """Store the runs of an earlier report (its ``results.json``) that are runs of this study, so they are not
    trained again; returns the runs imported. A row counts when its regime, domain, name and seed are a planned
    run's and its ``id`` is that run's ID. A row of a report written before rows carried their ID counts when the
    report's study settings are ``current``'s (`_same_study`) and it was made from the command line, whose runs
    have the default model overrides and diagnostics this study must then have too. Runs already stored are left
    as they are; an imported result keeps its own commit, command and time and names the report it came from."""
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or not isinstance(report.get("runs"), list) or "study" not in report:
        raise ValueError(f"{path} is not a results.json written by whisper-gpt reproduce (no 'runs' and 'study').")
    defaults = ReproductionConfig()
    cli_defaults = config.model_overrides == {} and config.diagnostic_batches == defaults.diagnostic_batches
    by_key = {(run.regime, run.spec.domain, run.spec.name, run.spec.seed): run for run in planned}
    imported = []
    for row in report["runs"]:
        run = by_key.get((row.get("regime"), row.get("domain"), row.get("name"), row.get("seed")))
        if run is None or load_result(run.path, run.settings) is not None:
            continue
        if "id" in row:
            same = row["id"] == run.path.stem.rsplit("-", 1)[1]
        else:
            made_by_cli = str(row.get("command", "")).startswith(
                ("whisper-gpt reproduce", "python examples/reproduce_paper.py")
            )
            same = cli_defaults and made_by_cli and _same_study(report["study"], current, run.regime)
        if not same:
            logger.warning("%s: %s %s has other settings than this study; not imported", path, run.regime, run.spec.key)
            continue
        _write_json_atomically(run.path, {**row, "settings": run.settings, "imported_from": str(path)})
        imported.append(run)
    logger.info("imported %d stored runs from %s", len(imported), path)
    return imported


def render_stored(config: ReproductionConfig) -> dict[str, Any]:
    """Write the report from the stored results of the study ``config`` describes, training nothing."""
    from .reproduce_report import build_report, write_report

    check_config(config)
    corpora = _ensure_corpora(config, build=False)
    planned, codecs = plan_study(config)
    if config.import_report is not None:
        import_report(Path(config.import_report), planned, config, study_settings(config, corpora, codecs))
    report = build_report(_stored_results(planned), _plan_rows(planned), study_settings(config, corpora, codecs))
    write_report(report, Path(config.docs_dir))
    return report


# ---------------------------------------------------------------------------------------------------------------
# Command line


class _Refused(argparse.Action):
    """An option that is gone: refused with a message saying what replaces it."""

    def __init__(self, option_strings: list[str], dest: str, message: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.message = message

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None):
        parser.error(f"{option} {self.message}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ReproductionConfig()
    parser.add_argument(
        "--budget-minutes",
        action=_Refused,
        message="is gone: budgets are optimizer steps, identical for every model (--steps N, default "
        f"{defaults.steps}); --estimate-only prints what they cost on this machine",
    )
    parser.add_argument("--output-dir", default=defaults.output_dir, help="corpora, codecs, cache, run results, logs")
    parser.add_argument("--docs-dir", default=defaults.docs_dir, help="where results.json/.md and figures/ go")
    parser.add_argument("--speech-dir", default=None, help="an existing speech corpus or audio folder to reuse")
    parser.add_argument("--music-dir", default=None, help="an existing music corpus or audio folder to reuse")
    parser.add_argument(
        "--corpus-minutes", type=positive_float, default=defaults.corpus_minutes, help="per domain, if built here"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=defaults.steps, help="optimizer steps of every run (default 400)"
    )
    parser.add_argument("--warmup-steps", type=non_negative_int, default=defaults.warmup_steps)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--max-frames", type=positive_int, default=defaults.max_frames, help="crop and eval window")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="GPT-S and hybrid seeds")
    parser.add_argument("--large-seeds", type=int, nargs="+", default=list(defaults.large_seeds), help="GPT-L seeds")
    parser.add_argument("--ablation-domain", choices=DOMAINS, default=defaults.ablation_domain)
    parser.add_argument("--validation-seconds", type=positive_float, default=defaults.validation_seconds)
    parser.add_argument("--eval-points", type=positive_int, default=defaults.eval_points)
    parser.add_argument("--torch-threads", type=positive_int, default=None, help="default: the training loop's")
    parser.add_argument(
        "--regimes", choices=REGIMES, nargs="+", default=list(REGIMES), help="codec regimes to train now"
    )
    parser.add_argument("--domains", choices=DOMAINS, nargs="+", default=list(DOMAINS), help="domains to train now")
    parser.add_argument(
        "--only", choices=GROUPS, nargs="+", default=list(defaults.groups), help="groups of runs to train now"
    )
    parser.add_argument("--models", choices=MAIN_MODELS, nargs="+", default=None, help="model families to train now")
    parser.add_argument(
        "--estimate-only",
        action="store_true",
        help="time a few steps of each selected model, print the estimated total and stop",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="only re-write the report from the stored results of these settings"
    )
    parser.add_argument(
        "--import-report",
        default=None,
        metavar="RESULTS_JSON",
        help="an earlier results.json (e.g. docs/results.json): its runs of these same settings are stored in "
        "--output-dir and not trained again",
    )
    parser.add_argument("--progress", action="store_true")


def config_from_args(args: argparse.Namespace, command: str | None = None) -> ReproductionConfig:
    return ReproductionConfig(
        output_dir=args.output_dir,
        docs_dir=args.docs_dir,
        speech_dir=args.speech_dir,
        music_dir=args.music_dir,
        corpus_minutes=args.corpus_minutes,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        max_frames=args.max_frames,
        seeds=tuple(args.seeds),
        large_seeds=tuple(args.large_seeds),
        ablation_domain=args.ablation_domain,
        validation_seconds=args.validation_seconds,
        eval_points=args.eval_points,
        torch_threads=args.torch_threads,
        regimes=tuple(args.regimes),
        domains=tuple(args.domains),
        groups=tuple(args.only),
        models=None if args.models is None else tuple(args.models),
        progress=args.progress,
        command=command,
        import_report=args.import_report,
    )


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt reproduce`` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "reproduce", help="the paper's GPT-S / GPT-L / hybrid comparison and ablations, resumable, in optimizer steps"
    )
    add_arguments(parser)
    parser.set_defaults(handler=_command)


def _run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = config_from_args(args, command)
    if args.render_only:
        if args.estimate_only:
            raise ValueError("--render-only trains nothing and --estimate-only only times: give one of them.")
        return render_stored(config)
    report = run_reproduction(config, estimate_only=args.estimate_only)
    if not args.estimate_only:
        print(f"wrote {Path(config.docs_dir) / 'results.md'} and results.json")
    return report


def _command(args: argparse.Namespace) -> dict[str, Any]:
    return _run(args, "whisper-gpt reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    return _run(args, "python examples/reproduce_paper.py " + " ".join(shlex.quote(a) for a in argv))


__all__ = [
    "REGIMES",
    "FlattenedCodebooks",
    "ReproductionConfig",
    "RunSpec",
    "add_arguments",
    "import_report",
    "main",
    "mel_path_diagnostics",
    "paper_numbers",
    "plan_runs",
    "plan_study",
    "register_cli",
    "render_stored",
    "run_reproduction",
]
