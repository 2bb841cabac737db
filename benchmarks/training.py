"""Training throughput: hybrid vs token-only (equal decoder) vs transformers' GPT-2 of the same shape.

One training step = forward with labels, backward, AdamW step, zero_grad, on the same random batch of codes
(B sequences of T frames) for every model; the optimizer is the package's (`whisper_gpt.training.loop.build_optimizer`,
GPT-2's too). Paper sizes (K=1, codebook 0 only):

* ``hybrid``: `WhisperGPTConfig.paper_hybrid()` (GPT-S decoder 4 x 256 + 2 mel blocks of width 96), reading
  random log-mel frames beside the codes;
* ``token_only``: `WhisperGPTConfig.paper_gpt_s()` (the same decoder without the mel path);
* ``gpt2``: `transformers.GPT2LMHeadModel` with the same width / depth / heads / MLP / vocabulary (1024) /
  context, dropout 0 like ours, SDPA attention;
* ``hybrid_k8`` / ``token_only_k8``: the same pair predicting all 8 codebooks with the depth transformer.

Ratios (median of per-round CPU-time ratios of interleaved repetitions; wall-clock ratios under ``ratios``):
``spectrogram_overhead`` = hybrid step time / token-only step time (the issue's budget: <= 1.15);
``speed_vs_gpt2`` = GPT-2 step time / token-only step time (>= 1.0 means ours is at least as fast).
Throughput (steps/s, frames/s) is from CPU time (= idle-machine wall time with one thread); ``frames_per_s_wall``
is what the shared machine gave. Peak memory per model: see `benchmarks.common`.

    python benchmarks/training.py [--quick] [--threads 1] [--batch-size 4] [--frames 750]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
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

MODELS = ("hybrid", "token_only", "gpt2", "hybrid_k8", "token_only_k8")
MEMORY_MODELS = ("hybrid", "token_only", "gpt2")  # the K=8 pair is timed only (each memory run costs ~15 s)


def build_model(name: str, frames: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM

    torch.manual_seed(0)
    context = max(750, frames)
    if name == "gpt2":
        reference = WhisperGPTConfig.paper_gpt_s()
        config = GPT2Config(
            vocab_size=reference.codebook_size,
            n_positions=context,
            n_embd=reference.hidden_size,
            n_layer=reference.num_hidden_layers,
            n_head=reference.num_attention_heads,
            n_inner=reference.intermediate_size,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
            use_cache=False,
        )
        return GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").train()
    num_codebooks = 8 if name.endswith("_k8") else 1
    preset = WhisperGPTConfig.paper_hybrid if name.startswith("hybrid") else WhisperGPTConfig.paper_gpt_s
    config = preset(num_codebooks=num_codebooks, max_position_embeddings=context, use_cache=False)
    return WhisperGPTForCausalLM(config).train()


def make_batch(name: str, batch_size: int, frames: int, seed: int = 0) -> dict[str, Any]:
    """The same codes for every model (GPT-2 reads codebook 0 as a (B, T) token sequence)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1024, (batch_size, 8, frames), generator=generator)
    features = torch.randn(batch_size, frames, 80, generator=generator) * 0.5
    if name == "gpt2":
        return {"input_ids": codes[:, 0], "labels": codes[:, 0]}
    batch = {"input_ids": codes, "labels": codes}
    if name.startswith("hybrid"):
        batch["input_features"] = features
    return batch


def training_step(model, optimizer, batch: dict[str, Any]):
    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _workload(name: str, batch_size: int, frames: int):
    from whisper_gpt.training.loop import build_optimizer

    model = build_model(name, frames)
    optimizer = build_optimizer(model, learning_rate=1e-4)
    return model, training_step(model, optimizer, make_batch(name, batch_size, frames))


def memory_workload(case: dict[str, Any]):
    """For `benchmarks.common.measure_peak`: one training step of ``case["model"]``."""
    return _workload(case["model"], case["batch_size"], case["frames"])[1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_torch(args.threads)
    batch_size = args.batch_size or (2 if args.quick else 4)
    frames = args.frames or (48 if args.quick else 750)
    repeats = args.repeats or (2 if args.quick else 5)
    models = {}
    steps = {}
    for name in MODELS:
        model, step = _workload(name, batch_size, frames)
        models[name] = model
        steps[name] = step
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    times = interleaved(steps, repeats=repeats, warmup=1, log=log)
    del models, steps

    result: dict[str, Any] = {
        "setup": {
            "batch_size": batch_size,
            "frames_per_sequence": frames,
            "audio_seconds_per_sequence": frames / 75.0,
            "step": "forward with labels + backward + AdamW step (build_optimizer) + zero_grad; same random codes "
            "for every model",
            "gpt2": "transformers.GPT2LMHeadModel, same width/depth/heads/MLP/vocab 1024, dropout 0, sdpa",
            "interleaved_repeats": repeats,
            "quick": bool(args.quick),
        },
        "models": {},
    }
    for name in MODELS:
        seconds = summary(times[name])
        result["models"][name] = {
            "params": params[name],
            **seconds,
            "steps_per_s": round(1.0 / seconds["cpu_median_s"], 4),
            "frames_per_s": round(batch_size * frames / seconds["cpu_median_s"], 1),
            "frames_per_s_wall": round(batch_size * frames / seconds["median_s"], 1),
        }
    pairs = {
        "spectrogram_overhead": ("hybrid", "token_only"),
        "speed_vs_gpt2": ("gpt2", "token_only"),
        "spectrogram_overhead_k8": ("hybrid_k8", "token_only_k8"),
        "depth_transformer_overhead": ("token_only_k8", "token_only"),
    }
    result["ratios"] = {}
    for key, (numerator, denominator) in pairs.items():
        result[key] = ratio(times[numerator], times[denominator])
        result["ratios"][key] = ratio_detail(times[numerator], times[denominator])

    if not args.no_memory:
        for name in MEMORY_MODELS:
            log(f"peak memory {name}")
            case = {"model": name, "batch_size": batch_size, "frames": frames}
            result["models"][name]["memory"] = measure_peak(
                "benchmarks.training", case, fresh_process=not args.quick, threads=args.threads
            )
        peaks = {name: result["models"][name]["memory"].get("peak_delta_mb") for name in MEMORY_MODELS}
        if peaks["hybrid"] and peaks["token_only"]:
            result["memory_ratio_hybrid_vs_token_only"] = round(peaks["hybrid"] / peaks["token_only"], 4)
        if peaks["gpt2"] and peaks["token_only"]:
            result["memory_ratio_gpt2_vs_token_only"] = round(peaks["gpt2"] / peaks["token_only"], 4)
    result["machine"] = machine_info()
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 4)")
    parser.add_argument("--frames", type=int, default=None, help="frames per sequence (default 750 = 10 s)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import run_script

    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
