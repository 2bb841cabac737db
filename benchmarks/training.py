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

``compile`` (in a fresh interpreter; skipped with ``--no-compile``): eager vs `torch.compile` training steps of
``hybrid`` and ``token_only`` (K=1) at ``--compile-batch-size`` x ``--compile-frames`` (default 16 x 256) on
``--compile-threads`` (default 2) torch threads, one fresh model per variant from the same seed:

* ``eager``: the step above;
* ``compiled_model``: ``torch.compile(model, dynamic=False)`` (default mode; the whole forward is one graph, so
  AOTAutograd compiles the backward too), eager AdamW;
* ``compiled_model_and_optimizer``: the same plus ``torch.compile(optimizer.step)`` (the whole step compiled
  apart from ``loss.backward()``'s dispatch into the compiled backward).

The compile (first two steps, with a cold inductor cache in a temporary folder) is timed apart; then every variant
takes one step per round, interleaved with the order reversed each round. ``hybrid_compiled_speedup`` /
``token_only_compiled_speedup`` = eager step time / ``compiled_model`` step time (median of per-round wall-clock
ratios, as two threads share the machine; the CPU-time ratios are beside them). Where
the time goes: forward / backward / optimizer from per-phase timers over the timed steps, and the forward +
backward split into matmul, attention and the rest (elementwise, norms, fused kernels, dispatch) from one
`torch.profiler` step (self CPU time). ``compile.decision`` says whether a compiled step reaches the
``COMPILE_GAIN_NEEDED`` (1.2x) that would justify a ``--compile`` training option, and why not if it does not.

    python benchmarks/training.py [--quick] [--threads 1] [--batch-size 4] [--frames 750] [--no-compile]
        [--compile-threads 2] [--compile-batch-size 16] [--compile-frames 256] [--compile-repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO_ROOT,
    Timings,
    add_common_arguments,
    cold_inductor_cache,
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
COMPILE_MODELS = ("hybrid", "token_only")
COMPILE_VARIANTS = ("eager", "compiled_model", "compiled_model_and_optimizer")
COMPILE_GAIN_NEEDED = 1.2  # the speed-up (eager / compiled step time) that would justify a --compile option
PHASES = ("forward", "backward", "optimizer")
# Self CPU time of these aten ops is "matmul" in the profile; compiled graphs call the same extern kernels.
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::dot"})


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


class PhasedStep:
    """One training step (forward with labels, backward, AdamW step, zero_grad) that times its three phases.

    ``forward`` is the model or its compiled wrapper, ``optimizer_step`` ``optimizer.step`` or its compiled
    wrapper. Each call appends its loss to ``losses`` and the wall seconds of each phase to ``phases``.
    """

    def __init__(self, forward: Callable[..., Any], optimizer, optimizer_step: Callable[[], Any], batch: dict):
        self.forward, self.optimizer, self.optimizer_step, self.batch = forward, optimizer, optimizer_step, batch
        self.losses: list[float] = []
        self.phases: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def __call__(self) -> float:
        started = time.perf_counter()
        loss = self.forward(**self.batch).loss
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        self.optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        finished = time.perf_counter()
        for phase, seconds in zip(
            PHASES, (forward_done - started, backward_done - forward_done, finished - backward_done), strict=True
        ):
            self.phases[phase].append(seconds)
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def forget(self) -> None:
        """Drop the phase times recorded so far (the compile steps), keep the losses."""
        self.phases = {phase: [] for phase in PHASES}


def compile_variant(name: str, variant: str, batch_size: int, frames: int) -> PhasedStep:
    """A fresh ``name`` model (seed 0, so every variant starts from the same weights) stepping as ``variant``."""
    import torch

    from whisper_gpt.training.loop import build_optimizer

    model = build_model(name, frames)
    optimizer = build_optimizer(model, learning_rate=1e-4)
    forward = model if variant == "eager" else torch.compile(model, dynamic=False)
    optimizer_step = torch.compile(optimizer.step) if variant == "compiled_model_and_optimizer" else optimizer.step
    return PhasedStep(forward, optimizer, optimizer_step, make_batch(name, batch_size, frames))


def profile_split(step: PhasedStep) -> dict[str, float]:
    """Fractions of one step's forward + backward self CPU time spent in matmul, attention and everything else."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    matmul = attention = total = 0.0
    for event in prof.key_averages():
        if event.key.startswith("Optimizer."):
            continue  # the optimizer phase is timed apart; its own ops are skipped below by their record scope
        total += event.self_cpu_time_total
        if event.key in MATMUL_OPS:
            matmul += event.self_cpu_time_total
        elif "scaled_dot_product" in event.key or "flash_attention" in event.key:
            attention += event.self_cpu_time_total
    optimizer = _optimizer_self_time(prof)
    forward_backward = total - optimizer
    return {
        "matmul": round(matmul / forward_backward, 3),
        "attention": round(attention / forward_backward, 3),
        "elementwise_norms_and_other": round((forward_backward - matmul - attention) / forward_backward, 3),
    }


def _optimizer_self_time(prof) -> float:
    """Self CPU time (us) of the ops inside the optimizer's ``Optimizer.step#...`` record scope."""
    scopes = [event for event in prof.events() if event.name.startswith("Optimizer.step")]
    inside = 0.0
    for event in prof.events():
        if event.name.startswith("Optimizer."):
            continue
        start, end = event.time_range.start, event.time_range.end
        if any(scope.time_range.start <= start and end <= scope.time_range.end for scope in scopes):
            inside += event.self_cpu_time_total
    return inside


def _phase_medians(step: PhasedStep) -> dict[str, float]:
    return {phase: round(statistics.median(seconds), 4) for phase, seconds in step.phases.items()}


def _decision(result: dict[str, Any]) -> str:
    """Whether the measured speed-up justifies a --compile option; if not, why not, from the measured figures."""
    speedups = {name: result["models"][name]["speedup"]["compiled_model"]["wall"] for name in result["models"]}
    best = {
        name: max(entry["speedup"].values(), key=lambda detail: detail["wall"])["wall"]
        for name, entry in result["models"].items()
    }
    if all(value >= COMPILE_GAIN_NEEDED for value in speedups.values()):
        figures = ", ".join(f"{name} {value:.2f}x" for name, value in speedups.items())
        return f"compile: eager / compiled step time {figures} >= {COMPILE_GAIN_NEEDED}x: worth a --compile option"
    parts = []
    for name, entry in result["models"].items():
        eager, compiled = entry["phases_s"]["eager"], entry["phases_s"]["compiled_model"]
        split = entry["eager_forward_backward_split"]
        parts.append(
            f"{name}: compiled_model {speedups[name]:.2f}x (best variant {best[name]:.2f}x) after "
            f"{entry['compile_s']['compiled_model']:.0f} s of compile; eager step = forward {eager['forward']:.3f} + "
            f"backward {eager['backward']:.3f} + optimizer {eager['optimizer']:.3f} s, compiled "
            f"{compiled['forward']:.3f} + {compiled['backward']:.3f} + {compiled['optimizer']:.3f} s; of eager "
            f"forward + backward, {split['matmul']:.0%} matmul and {split['attention']:.0%} attention (which "
            f"compile leaves to the same kernels), {split['elementwise_norms_and_other']:.0%} elementwise, norms "
            "and dispatch (what fusion can shrink; removing all of it would give at most "
            f"{1 / (split['matmul'] + split['attention']):.2f}x)"
        )
    return f"no --compile option: the speed-up is below {COMPILE_GAIN_NEEDED}x. " + "; ".join(parts)


def run_compile(args: argparse.Namespace) -> dict[str, Any]:
    """The ``compile`` section: eager vs compiled training steps, interleaved (see the module docstring)."""
    import torch

    batch_size = args.compile_batch_size or (2 if args.quick else 16)
    frames = args.compile_frames or (48 if args.quick else 256)
    repeats = args.compile_repeats or (1 if args.quick else 10)
    # --quick checks the plumbing: the headline pair only.
    models = ("hybrid",) if args.quick else COMPILE_MODELS
    variants = ("eager", "compiled_model") if args.quick else COMPILE_VARIANTS
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.compile_threads)
    try:
        with cold_inductor_cache():
            torch._dynamo.reset()
            steps: dict[str, PhasedStep] = {}
            compile_s: dict[str, dict[str, float]] = {name: {} for name in models}
            for name in models:
                for variant in variants:
                    case = f"{name}/{variant}"
                    steps[case] = compile_variant(name, variant, batch_size, frames)
                    log(f"first two steps of {case}")
                    started = time.perf_counter()
                    steps[case]()
                    steps[case]()  # the compiled optimizer compiles again once its state exists
                    compile_s[name][variant] = time.perf_counter() - started
                    steps[case].forget()
            times = interleaved(steps, repeats=repeats, warmup=0, log=log)
            phases = {case: _phase_medians(step) for case, step in steps.items()}
            losses = {case: list(step.losses) for case, step in steps.items()}
            splits = {}
            for name in models:
                log(f"profiling one eager and one compiled step of {name}")
                splits[name] = {v: profile_split(steps[f"{name}/{v}"]) for v in ("eager", "compiled_model")}
    finally:
        torch.set_num_threads(threads_before)

    result: dict[str, Any] = {
        "setup": {
            "batch_size": batch_size,
            "frames_per_sequence": frames,
            "torch_threads": args.compile_threads,
            "interleaved_repeats": repeats,
            "variants": list(variants),
            "compile": "torch.compile(model, dynamic=False), default mode (inductor, C++ kernels on the CPU)",
            "compile_s": "first two steps with a cold inductor cache minus two timed steps",
            "gradient_checkpointing": False,
        },
        "models": {},
    }
    for name in models:
        eager = f"{name}/eager"
        step_s = {variant: summary(times[f"{name}/{variant}"]) for variant in variants}
        median = {variant: step_s[variant]["median_s"] for variant in variants}
        eager_losses = losses[eager]
        result["models"][name] = {
            "step_s": step_s,
            "steps_per_s": {variant: round(1.0 / median[variant], 4) for variant in variants},
            "compile_s": {v: round(max(0.0, compile_s[name][v] - 2 * median[v]), 1) for v in variants},
            "speedup": {v: _speedup(times[eager], times[f"{name}/{v}"]) for v in variants if v != "eager"},
            "phases_s": {variant: phases[f"{name}/{variant}"] for variant in variants},
            "eager_forward_backward_split": splits[name]["eager"],
            "compiled_forward_backward_split": splits[name]["compiled_model"],
            # The same weights, batch and steps: the losses must agree up to floating-point order.
            "max_loss_difference_vs_eager": round(
                max(
                    abs(a - b)
                    for variant in variants
                    for a, b in zip(losses[f"{name}/{variant}"], eager_losses, strict=True)
                ),
                6,
            ),
        }
    for name in models:
        result[f"{name}_compiled_speedup"] = result["models"][name]["speedup"]["compiled_model"]["wall"]
    result["decision"] = _decision(result)
    return result


def _speedup(eager: Timings, compiled: Timings) -> dict[str, Any]:
    """eager / compiled step time (> 1: compiled is faster), per-round medians from wall-clock and CPU time."""
    detail = ratio_detail(eager, compiled)
    return {"wall": detail["wall"], "wall_spread": detail["wall_spread"], "cpu": detail["cpu"]}


def compile_in_fresh_process(args: argparse.Namespace) -> dict[str, Any]:
    """`run_compile` in a new interpreter: run after the five models above in one process, every step of the
    comparison (eager too) ran ~50x slower on one busy thread; a fresh process measures what a training run gets."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.training",
        "--compile-only",
        "--compile-threads",
        str(args.compile_threads),
    ]
    for option in ("compile_batch_size", "compile_frames", "compile_repeats"):
        if getattr(args, option) is not None:
            command += ["--" + option.replace("_", "-"), str(getattr(args, option))]
    if args.quick:
        command.append("--quick")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the compile comparison failed (exit {completed.returncode}): {' '.join(command)}")
    return json.loads(completed.stdout)


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_torch(args.threads)
    if args.compile_only:
        result = run_compile(args)
        result["machine"] = machine_info()
        return result
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
    if not args.no_compile:
        result["compile"] = compile_in_fresh_process(args)
        for name in COMPILE_MODELS:
            if f"{name}_compiled_speedup" in result["compile"]:
                result[f"{name}_compiled_speedup"] = result["compile"][f"{name}_compiled_speedup"]
    result["machine"] = machine_info()
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 4)")
    parser.add_argument("--frames", type=int, default=None, help="frames per sequence (default 750 = 10 s)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-compile", action="store_true", help="skip the eager vs torch.compile comparison")
    parser.add_argument(
        "--compile-only", action="store_true", help="run only the eager vs torch.compile comparison, in this process"
    )
    parser.add_argument("--compile-threads", type=int, default=2, help="torch threads of the compile comparison")
    parser.add_argument("--compile-batch-size", type=int, default=None, help="its sequences per step (default 16)")
    parser.add_argument("--compile-frames", type=int, default=None, help="its frames per sequence (default 256)")
    parser.add_argument("--compile-repeats", type=int, default=None, help="its interleaved rounds (default 10)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import run_script

    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
