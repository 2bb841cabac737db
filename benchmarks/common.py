"""Shared helpers for the benchmark scripts: torch set-up, machine info, interleaved timing, peak memory.

Every benchmark measures the things it compares side by side in ONE process, interleaving the repetitions
(case A, case B, case C, then C, B, A, ...) so that load from other processes on a shared machine hits all
cases alike. Each repetition records wall-clock time and process CPU time. Headline ratios are medians of the
per-round CPU-time ratios (with one torch thread, CPU time is the wall time the step would take on an idle
machine, and it does not jump when another process takes the core); the wall-clock ratios are reported next
to them. Absolute numbers from a shared 2-core machine are noisy; the ratios are what the scripts are for.

Peak memory (CPU): tracemalloc does not see torch's allocations, so memory is read from the kernel. A fresh
subprocess per measurement (`python -m benchmarks.common memory MODULE CASE_JSON`) builds the workload, runs
it once to warm up (so one-time allocations such as optimizer state and oneDNN caches are not counted as the
step's), then:

* ``mallopt(M_MMAP_THRESHOLD, 64 KiB)`` (set before anything is allocated) makes every block of 64 KiB or
  more a private mapping that ``free`` returns to the kernel at once, so resident memory follows live
  tensors instead of glibc's cached heap;
* ``malloc_trim(0)``, then writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's peak-RSS mark
  (``VmHWM``) to the current RSS;
* the workload runs once; ``VmHWM - VmRSS(before)`` is the peak memory the step added on top of what already
  existed (parameters, gradients and optimizer state after the warm-up step), and ``VmHWM`` the process's
  absolute peak (which includes ~0.4 GB of Python, torch and transformers).

``--quick`` runs the same measurement in-process (no fresh interpreter, which costs ~10 s of imports here);
the JSON says which method was used.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
AUDIO_FRAME_RATE = 75.0  # 24 kHz EnCodec: 320-sample hop

_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024


# ----------------------------------------------------------------------------------------------- set-up


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a run of seconds that checks the plumbing only")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on this 2-core machine two threads on busy cores ran ~5x slower)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="override the number of timed repetitions")


def setup_torch(threads: int) -> None:
    """One deterministic torch set-up for every benchmark: thread count, no denormals, quiet transformers."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    # Denormal floats make codec training several times slower on CPU.
    torch.set_flush_denormal(True)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "src"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+uncommitted-src-changes" if dirty else "")


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on. Load average is included: the machine may be shared."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "flush_denormal": True,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "memory_gib": _memory_gib(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "whisper_gpt_commit": _git_commit(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _memory_gib() -> float | None:
    match = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


GPU_NOT_MEASURED = "not measured: no GPU on the machine this ran on (CPU figures only)"


def gpu_section() -> dict[str, Any] | str:
    import torch

    if not torch.cuda.is_available():
        return GPU_NOT_MEASURED
    return f"not measured: {torch.cuda.get_device_name(0)} present but the GPU benchmarks are not written yet"


# ----------------------------------------------------------------------------------------------- timing


@dataclass
class Timings:
    """Wall-clock and process CPU seconds of each repetition of one case."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


@contextlib.contextmanager
def cold_inductor_cache():
    """Point torch's inductor cache at a new empty folder for the block, so a compile inside it costs what the
    first run on a machine pays; the previous setting comes back afterwards."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            yield
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def interleaved(
    cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, log: Callable[[str], None] | None = None
) -> dict[str, Timings]:
    """Time every case ``repeats`` times, interleaved, alternating the order each round (A B C, C B A, ...).

    Records wall-clock time and the process's CPU time (`time.process_time`, all threads). With one torch
    thread the CPU time is what the wall time would be on an idle machine; on a shared machine the wall time
    also holds the time spent waiting for a core, which changes from one repetition to the next.
    """
    for _ in range(warmup):
        for name, run in cases.items():
            if log:
                log(f"warm-up {name}")
            run()
    times = {name: Timings() for name in cases}
    names = list(cases)
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            cpu, wall = time.process_time(), time.perf_counter()
            cases[name]()
            times[name].wall.append(time.perf_counter() - wall)
            times[name].cpu.append(time.process_time() - cpu)
            if log:
                wall_s, cpu_s = times[name].wall[-1], times[name].cpu[-1]
                log(f"repeat {repeat + 1}/{repeats} {name}: {wall_s:.3f} s wall, {cpu_s:.3f} s cpu")
    return times


def summary(times: Timings) -> dict[str, Any]:
    return {
        "cpu_median_s": round(statistics.median(times.cpu), 6),
        "median_s": round(statistics.median(times.wall), 6),
        "min_s": round(min(times.wall), 6),
        "max_s": round(max(times.wall), 6),
        "repeats": len(times.wall),
    }


def _paired(numerator: list[float], denominator: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def ratio(numerator: Timings, denominator: Timings) -> float:
    """Headline ratio: median over repetitions of numerator CPU time / denominator CPU time, paired by round."""
    return round(statistics.median(_paired(numerator.cpu, denominator.cpu)), 4)


def ratio_detail(numerator: Timings, denominator: Timings) -> dict[str, Any]:
    """The same ratio from CPU and from wall-clock time, with the spread of the per-round ratios."""
    cpu, wall = _paired(numerator.cpu, denominator.cpu), _paired(numerator.wall, denominator.wall)
    return {
        "cpu": round(statistics.median(cpu), 4),
        "cpu_spread": [round(min(cpu), 4), round(max(cpu), 4)],
        "wall": round(statistics.median(wall), 4),
        "wall_spread": [round(min(wall), 4), round(max(wall), 4)],
    }


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- memory


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _fix_mmap_threshold() -> bool:
    libc = _libc()
    return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def _status_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", _read("/proc/self/status"))
    if not match:
        raise RuntimeError(f"/proc/self/status has no {field}; peak memory needs Linux")
    return int(match.group(1))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measure_peak_in_process(run: Callable[[], Any], warmup: bool = True, collect: bool = True) -> dict[str, Any]:
    """Peak RSS added by one call of ``run`` in this process (see the module docstring)."""
    if warmup:
        run()
    if collect:  # ~0.3 s with transformers loaded; tensors are freed by reference counting anyway
        gc.collect()
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    result = {
        "peak_delta_mb": round((peak - before) / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_before_mb": round(before / 1024, 1),
    }
    if not reset:
        result["note"] = "could not reset VmHWM: the peak is the process's peak since it started"
    return result


def measure_peak(
    module: str, case: dict[str, Any], fresh_process: bool, threads: int, warmup: bool = True
) -> dict[str, Any]:
    """Peak memory of ``module.memory_workload(case)``: in a fresh subprocess, or in-process for --quick.

    ``warmup=False`` measures the first call (for workloads of tens of seconds whose first call allocates
    nothing that later calls would not allocate again, such as forward + backward without an optimizer).
    """
    if not fresh_process:
        workload = importlib.import_module(module).memory_workload(case)
        result = measure_peak_in_process(workload, warmup=warmup, collect=False)
        result["method"] = "in-process VmHWM delta (--quick)"
        return result
    command = [sys.executable, "-m", "benchmarks.common", "memory", module, json.dumps(case), "--threads", str(threads)]
    if not warmup:
        command.append("--no-warmup")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1:] or ["memory worker failed"]}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["method"] = "fresh subprocess, VmHWM delta over one call" + (" after a warm-up call" if warmup else "")
    return result


def _memory_worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["memory"])
    parser.add_argument("module")
    parser.add_argument("case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-warmup", action="store_true")
    args = parser.parse_args(argv)
    fixed = _fix_mmap_threshold()
    setup_torch(args.threads)
    workload = importlib.import_module(args.module).memory_workload(json.loads(args.case))
    result = measure_peak_in_process(workload, warmup=not args.no_warmup)
    if not fixed:
        result["note"] = "mallopt(M_MMAP_THRESHOLD) failed: freed heap memory may hide part of the peak"
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------- misc


def synthetic_audio(seconds: float, sampling_rate: int = 24_000, seed: int = 0):
    """Speech/music-like float32 signal (harmonic glides, pulses, noise bursts). Timing does not depend on it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * sampling_rate)
    t = np.arange(n) / sampling_rate
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    voiced = sum(np.sin(h * phase) / h for h in range(1, 10))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)))
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.1 * t) > 0.6)
    return (0.3 * voiced * envelope + 0.05 * noise).astype(np.float32)


def random_weight_codec(quick: bool, seed: int = 0):
    """The EnCodec the processor uses, built locally with random weights (no Hub here).

    Full runs use ``transformers.EncodecConfig()``: the real 24 kHz EnCodec architecture (14.9M parameters,
    32 filters, 2-layer LSTM, 32 codebooks of 1024), so encode/decode timings are those of the published
    codec; only the weights are random. Its codebooks are filled with random vectors instead of running
    k-means: the quantizer's cost (nearest of 1024 codes per codebook) does not depend on their values.
    ``--quick`` uses `small_encodec_config()` (8 filters, 1 LSTM layer).
    """
    import torch
    from transformers import EncodecConfig, EncodecModel

    from whisper_gpt import WhisperGPTAudioTokenizer, small_encodec_config

    torch.manual_seed(seed)
    codec = EncodecModel(small_encodec_config() if quick else EncodecConfig()).eval()
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.inited.fill_(1.0)
    return WhisperGPTAudioTokenizer(codec, bandwidth=6.0, calibrated=True, decoder_trained=False)


def codec_description(quick: bool) -> str:
    if quick:
        return "small_encodec_config() (tiny test codec, --quick)"
    return "transformers.EncodecConfig() = real 24 kHz EnCodec architecture (14.9M params), random weights"


def finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))


def run_script(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    argv: list[str] | None,
) -> dict[str, Any]:
    """A benchmark script's main: parse ``argv``, run, print the JSON, return the result."""
    result = run(build_parser().parse_args(argv))
    emit(result)
    return result


if __name__ == "__main__":
    _memory_worker(sys.argv[1:])
