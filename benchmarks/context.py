"""The context-length argument of the paper: one position per frame vs K positions per frame, at K=8.

For 5, 10 and 20 s of 24 kHz EnCodec audio (75 frames/s, 8 codebooks at 6 kbps), one forward + backward
(loss over all codes, batch 1) of:

* ``hybrid``: `WhisperGPTConfig.paper_hybrid(num_codebooks=8)`: one position per frame (T = 75 * seconds)
  whose input is the 8 code embeddings summed plus the mel frame; the depth transformer (2 x 128, 8 steps
  per frame) predicts the next frame's 8 codes;
* ``token_depth``: the same without the mel path (`paper_gpt_s(num_codebooks=8)`), to separate the effect
  of one-position-per-frame from the spectrogram;
* ``flattened``: the token-only baseline that flattens the codebooks into one sequence (as UniAudio /
  SpeechGPT-style LMs do): `paper_gpt_s(num_codebooks=1, codebook_size=8 * 1024)` over 8 T positions, frame
  after frame ``c0_t, c1_t, ..., c7_t, c0_{t+1}, ...``, code c of codebook k written as ``k * 1024 + c`` so the
  8 codebooks keep separate vocabularies (its embedding table has the same 8 x 1024 rows as the hybrid's).
  Same decoder (4 x 256, SDPA); only the sequence is 8x longer.

Reported per duration: median time of the interleaved repetitions, peak memory of one forward + backward
(fresh subprocess, see `benchmarks.common`), and FLOPs counted analytically:
``attention`` = 4 * T_q * T_k * width per attention layer and forward (QK^T and attention x V, dense, as
the SDPA math kernels compute it; a causal kernel may skip about half of it for both models alike);
``linear`` = 2 * in * out per linear layer and position; forward + backward is about 3x the forward.
Ratios are flattened / hybrid: ``speedup`` (median of per-round CPU-time ratios; wall-clock ratio in
``speedup_detail``), ``memory_ratio``, ``attention_flops_ratio``.

    python benchmarks/context.py [--quick] [--threads 1] [--seconds 5 10 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    AUDIO_FRAME_RATE,
    add_common_arguments,
    interleaved,
    log,
    machine_info,
    measure_peak,
    ratio,
    ratio_detail,
    setup_torch,
    summary,
)

NUM_CODEBOOKS = 8
CODEBOOK_SIZE = 1024
MODELS = ("hybrid", "token_depth", "flattened")
QUICK_SECONDS = (0.1, 0.2, 0.4)
FULL_SECONDS = (5.0, 10.0, 20.0)


def model_config(name: str, frames: int):
    from whisper_gpt import WhisperGPTConfig

    if name == "flattened":
        return WhisperGPTConfig.paper_gpt_s(
            num_codebooks=1,
            codebook_size=NUM_CODEBOOKS * CODEBOOK_SIZE,
            max_position_embeddings=NUM_CODEBOOKS * frames,
            use_cache=False,
        )
    preset = WhisperGPTConfig.paper_hybrid if name == "hybrid" else WhisperGPTConfig.paper_gpt_s
    return preset(num_codebooks=NUM_CODEBOOKS, max_position_embeddings=frames, use_cache=False)


def make_inputs(name: str, frames: int, seed: int = 0) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, CODEBOOK_SIZE, (1, NUM_CODEBOOKS, frames), generator=generator)
    if name == "flattened":
        offsets = torch.arange(NUM_CODEBOOKS)[None, :, None] * CODEBOOK_SIZE
        flat = (codes + offsets).permute(0, 2, 1).reshape(1, 1, NUM_CODEBOOKS * frames)  # frame-major
        return {"input_ids": flat, "labels": flat}
    inputs = {"input_ids": codes, "labels": codes}
    if name == "hybrid":
        inputs["input_features"] = torch.randn(1, frames, 80, generator=generator) * 0.5
    return inputs


def forward_backward(model, inputs: dict[str, Any]):
    def run() -> None:
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def _workload(name: str, frames: int):
    import torch

    from whisper_gpt import WhisperGPTForCausalLM

    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(model_config(name, frames)).train()
    return model, forward_backward(model, make_inputs(name, frames))


def memory_workload(case: dict[str, Any]):
    return _workload(case["model"], case["frames"])[1]


MEMORY_MODELS = ("hybrid", "flattened")  # token_depth is timed only


def flops(name: str, frames: int) -> dict[str, int]:
    """Analytic forward FLOPs (multiply-add = 2) of attention and of the linear layers."""
    config = model_config(name, frames)
    positions = NUM_CODEBOOKS * frames if name == "flattened" else frames
    width, layers = config.hidden_size, config.num_hidden_layers
    attention = layers * 4 * positions * positions * width
    # Decoder blocks: qkv (3 H^2), out (H^2), MLP (2 H I); output head H x V per predicting position.
    linear = layers * positions * 2 * (4 * width * width + 2 * width * config.intermediate_size)
    if config.num_codebooks == 1:
        linear += positions * 2 * width * config.codebook_size
    else:
        depth, steps = config.depth_hidden_size, config.num_codebooks
        # The depth transformer runs `steps` positions per frame (teacher-forced, all at once in training).
        attention += config.depth_num_layers * frames * 4 * steps * steps * depth
        depth_block = 4 * depth * depth + 2 * depth * config.depth_intermediate_size
        linear += config.depth_num_layers * frames * steps * 2 * depth_block
        linear += frames * 2 * width * depth  # in_proj, once per frame
        linear += frames * steps * 2 * depth * config.codebook_size  # one head per codebook
    if config.use_spectrogram:
        mel, mel_layers = config.spectrogram_hidden_size, config.spectrogram_layers
        attention += mel_layers * 4 * frames * frames * mel
        linear += mel_layers * frames * 2 * (4 * mel * mel + 2 * mel * 4 * mel)
        linear += frames * 2 * config.num_mel_bins * mel  # mel projection
        linear += frames * 2 * (width + mel) * width  # fusion
    return {"attention_fwd": attention, "linear_fwd": linear, "total_fwd": attention + linear}


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_torch(args.threads)
    durations = tuple(args.seconds) if args.seconds else (QUICK_SECONDS if args.quick else FULL_SECONDS)
    labels = [f"{seconds:g}s" for seconds in (FULL_SECONDS if args.quick and not args.seconds else durations)]

    def repeats_for(seconds: float) -> int:
        # The 20 s flattened step takes ~35 s of CPU: 2 repetitions there, 3 below.
        if args.repeats:
            return args.repeats
        return 2 if args.quick or seconds > 10 else 3

    result: dict[str, Any] = {
        "setup": {
            "num_codebooks": NUM_CODEBOOKS,
            "batch_size": 1,
            "step": "forward with labels + backward (no optimizer)",
            "hybrid": "paper_hybrid(num_codebooks=8): 1 position per frame, depth transformer over codebooks",
            "token_depth": "paper_gpt_s(num_codebooks=8): as hybrid without the mel path",
            "flattened": "paper_gpt_s(num_codebooks=1, codebook_size=8*1024) over 8 positions per frame",
            "flops": "analytic; attention = 4*Tq*Tk*width per layer (dense), linear = 2*in*out per position",
            "interleaved_repeats": {f"{s:g}s": repeats_for(s) for s in durations},
            "quick": bool(args.quick),
        },
        "durations": {},
    }
    if args.quick and not args.seconds:
        result["setup"]["note"] = (
            f"--quick: the 5s/10s/20s keys hold runs on {', '.join(f'{s:g}' for s in QUICK_SECONDS)} s of audio"
        )
    for index, (label, seconds) in enumerate(zip(labels, durations, strict=True)):
        frames = round(seconds * AUDIO_FRAME_RATE)
        log(f"{label}: {frames} frames")
        runs = {name: _workload(name, frames)[1] for name in MODELS}
        # Warm-up at the first duration only: later ones reuse the same kernels and take seconds per call.
        times = interleaved(runs, repeats=repeats_for(seconds), warmup=1 if index == 0 else 0, log=log)
        del runs
        entry: dict[str, Any] = {"audio_seconds": seconds, "frames": frames, "models": {}}
        for name in MODELS:
            entry["models"][name] = {
                "positions": NUM_CODEBOOKS * frames if name == "flattened" else frames,
                **summary(times[name]),
                "flops": flops(name, frames),
            }
        entry["speedup"] = ratio(times["flattened"], times["hybrid"])
        entry["speedup_detail"] = ratio_detail(times["flattened"], times["hybrid"])
        entry["speedup_vs_token_depth"] = ratio(times["flattened"], times["token_depth"])
        flat_flops, hybrid_flops = entry["models"]["flattened"]["flops"], entry["models"]["hybrid"]["flops"]
        entry["attention_flops_ratio"] = round(flat_flops["attention_fwd"] / hybrid_flops["attention_fwd"], 2)
        entry["total_flops_ratio"] = round(flat_flops["total_fwd"] / hybrid_flops["total_fwd"], 2)
        if not args.no_memory:
            for name in MEMORY_MODELS:
                log(f"peak memory {label} {name}")
                entry["models"][name]["memory"] = measure_peak(
                    "benchmarks.context",
                    {"model": name, "frames": frames},
                    fresh_process=not args.quick,
                    threads=args.threads,
                    warmup=False,
                )
            flat_peak = entry["models"]["flattened"]["memory"].get("peak_delta_mb")
            hybrid_peak = entry["models"]["hybrid"]["memory"].get("peak_delta_mb")
            if flat_peak and hybrid_peak:
                entry["memory_ratio"] = round(flat_peak / hybrid_peak, 3)
        result["durations"][label] = entry
    for label, entry in result["durations"].items():
        result[f"speedup_{label}"] = entry["speedup"]
        if "memory_ratio" in entry:
            result[f"memory_ratio_{label}"] = entry["memory_ratio"]
        result[f"attention_flops_ratio_{label}"] = entry["attention_flops_ratio"]
    result["machine"] = machine_info()
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--seconds", type=float, nargs="+", default=None, help="audio durations (default 5 10 20)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import run_script

    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
