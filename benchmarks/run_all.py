"""Run every benchmark and write docs/benchmarks.json and docs/benchmarks.md.

    nice python benchmarks/run_all.py            # full run, ~15 min on 2 CPU cores; writes docs/
    python benchmarks/run_all.py --quick --output-dir /tmp/bench   # seconds; checks the plumbing only

The benchmarks run one after another in this process (each one's peak-memory measurements in fresh
subprocesses), with the same torch set-up (``--threads``, default 1, denormals flushed). The summary keys
(``training.spectrogram_overhead`` ...) are ratios of medians measured side by side in one run; the full
results of each script are kept under ``details``. The JSON is also printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import context, features, generation, training
from benchmarks.common import REPO_ROOT, _git_commit, gpu_section, log, machine_info

SCRIPTS = {"training": training, "context": context, "features": features, "generation": generation}

# Summary key -> (script, key in that script's JSON). These are the keys issue 7 asks for, plus a few more.
SUMMARY_KEYS = {
    "training": {
        "spectrogram_overhead": "spectrogram_overhead",
        "speed_vs_gpt2": "speed_vs_gpt2",
        "spectrogram_overhead_k8": "spectrogram_overhead_k8",
        "depth_transformer_overhead": "depth_transformer_overhead",
        "memory_ratio_hybrid_vs_token_only": "memory_ratio_hybrid_vs_token_only",
        "hybrid_compiled_speedup": "hybrid_compiled_speedup",
        "token_only_compiled_speedup": "token_only_compiled_speedup",
    },
    "context": {
        "speedup_5s": "speedup_5s",
        "speedup_10s": "speedup_10s",
        "speedup_20s": "speedup_20s",
        "memory_ratio_5s": "memory_ratio_5s",
        "memory_ratio_10s": "memory_ratio_10s",
        "memory_ratio_20s": "memory_ratio_20s",
        "attention_flops_ratio_10s": "attention_flops_ratio_10s",
    },
    "features": {
        "extractor_rtf": "extractor_rtf",
        "extractor_rtf_b8": "extractor_rtf_b8",
        "processor_rtf": "processor_rtf",
        "processor_rtf_b8": "processor_rtf_b8",
        "encode_rtf": "encode_rtf",
        "decode_rtf": "decode_rtf",
        "processor_codec_mel_rtf": "processor_codec_mel_rtf",
    },
    "generation": {
        "hybrid_k8_b1_rtf": "hybrid_k8_b1_rtf",
        "hybrid_k1_b1_rtf": "hybrid_k1_b1_rtf",
        "hybrid_k8_b8_rtf": "hybrid_k8_b8_rtf",
        "hybrid_k1_b8_rtf": "hybrid_k1_b8_rtf",
        "token_k8_b1_rtf": "token_k8_b1_rtf",
        "token_k1_b1_rtf": "token_k1_b1_rtf",
        "token_k8_b8_rtf": "token_k8_b8_rtf",
        "token_k1_b8_rtf": "token_k1_b8_rtf",
        "hybrid_k8_learned_mel_b1_rtf": "hybrid_k8_learned_mel_b1_rtf",
        "hybrid_k8_exemplar_mel_b1_rtf": "hybrid_k8_exemplar_mel_b1_rtf",
        "hybrid_k8_b1_compiled_speedup": "hybrid_k8_b1_compiled_speedup",
        "hybrid_k8_b1_static_speedup": "hybrid_k8_b1_static_speedup",
        "hybrid_k8_b1_compiled_rtf": "hybrid_k8_b1_compiled_rtf",
        "hybrid_k1_b1_compiled_speedup": "hybrid_k1_b1_compiled_speedup",
        "hybrid_k8_b8_compiled_speedup": "hybrid_k8_b8_compiled_speedup",
        "hybrid_k8_exemplar_mel_b1_compiled_speedup": "hybrid_k8_exemplar_mel_b1_compiled_speedup",
    },
}
REQUIRED_KEYS = (
    "training.spectrogram_overhead",
    "training.speed_vs_gpt2",
    "context.speedup_10s",
    "context.memory_ratio_10s",
    "features.extractor_rtf",
    "features.processor_rtf",
    "generation.hybrid_k8_b1_rtf",
    "generation.hybrid_k1_b1_rtf",
    "generation.hybrid_k8_b1_compiled_speedup",
    "machine",
)


def _cpu_seconds() -> float:
    """CPU time of this process and of the finished memory subprocesses."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def collect(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    started_cpu = _cpu_seconds()
    # The package is imported (and so measured) as it is now; others may commit while this runs.
    commit_at_start = _git_commit()
    details: dict[str, Any] = {}
    durations: dict[str, float] = {}
    for name in args.only or SCRIPTS:
        module = SCRIPTS[name]
        script_args = module.parser().parse_args([*(["--quick"] if args.quick else []), "--threads", str(args.threads)])
        log(f"=== {name} ===")
        start = time.perf_counter()
        details[name] = module.run(script_args)
        durations[name] = round(time.perf_counter() - start, 1)
        details[name].pop("machine", None)
    result: dict[str, Any] = {}
    for section, keys in SUMMARY_KEYS.items():
        if section not in details:
            continue
        result[section] = {key: details[section].get(source) for key, source in keys.items()}
    machine = machine_info()
    if machine["whisper_gpt_commit"] != commit_at_start:
        machine["whisper_gpt_commit_at_end"] = machine["whisper_gpt_commit"]
    machine["whisper_gpt_commit"] = commit_at_start
    result["machine"] = machine
    result["gpu"] = gpu_section()
    result["run"] = {
        "quick": bool(args.quick),
        "seconds_per_script": durations,
        "total_seconds": round(time.perf_counter() - started, 1),
        "total_cpu_seconds": round(_cpu_seconds() - started_cpu, 1),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/run_all.py" + (" --quick" if args.quick else ""),
        "note": "ratios are medians of interleaved repetitions in this one run; absolute times are noisy on a "
        "shared machine (see machine.load_average_1min)",
    }
    result["details"] = details
    return result


def _commit_note(machine: dict[str, Any]) -> str:
    if "commit_note" in machine:
        return f" ({machine['commit_note']})"
    if "whisper_gpt_commit_at_end" in machine:
        return f" (HEAD was {machine['whisper_gpt_commit_at_end']} when the run ended)"
    return ""


def _cpu_note(run: dict[str, Any]) -> str:
    return f", {run['total_cpu_seconds']:.0f} s CPU" if "total_cpu_seconds" in run else ""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    details = result.get("details", {})
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{result['run']['command']}` on {result['run']['date_utc']} "
        f"({result['run']['total_seconds']:.0f} s wall{_cpu_note(result['run'])}). "
        f"Machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, "
        f"{machine['memory_gib']} GiB, torch {machine['torch_version']} with **{machine['torch_threads']} thread(s)**, "
        f"transformers {machine['transformers_version']}, whisper-gpt {machine['whisper_gpt_commit']}"
        f"{_commit_note(machine)}, "
        f"load average {machine['load_average_1min']} when it finished. GPU: {result['gpu']}.",
        "",
        "Every ratio compares cases measured side by side in this one run (repetitions interleaved). Headline "
        "figures use process CPU time: with one torch thread it is the wall time the work takes on an idle "
        "machine, and it stays put when other processes take the core (wall-clock figures are in the tables "
        "and the JSON; on this shared machine wall time was up to 4x CPU time). Peak memory: growth of the "
        "resident set (VmHWM) during one call in a fresh process, see `benchmarks/common.py`. "
        "Re-run: `nice python benchmarks/run_all.py` (or any one script: each prints JSON, `--quick` for seconds). "
        "Where the time goes and what would make it faster: `benchmarks/PROFILING.md`.",
        "",
        "## Summary",
        "",
        "| key | value | what it is |",
        "|---|---|---|",
    ]
    explain = {
        "training.spectrogram_overhead": "hybrid step time / token-only step time, K=1 (budget <= 1.15)",
        "training.speed_vs_gpt2": "GPT-2 step time / our token-only step time (>= 1.0: ours at least as fast)",
        "training.spectrogram_overhead_k8": "the same at K=8 (depth transformer)",
        "training.depth_transformer_overhead": "token-only K=8 step time / token-only K=1 step time",
        "training.memory_ratio_hybrid_vs_token_only": "peak step memory, hybrid / token-only",
        "training.hybrid_compiled_speedup": "eager / torch.compile training step time, hybrid (>= 1.2: --compile)",
        "training.token_only_compiled_speedup": "the same for the token-only model",
        "context.speedup_5s": "flattened K=8 token LM time / hybrid time, forward+backward, 5 s",
        "context.speedup_10s": "the same for 10 s of audio",
        "context.speedup_20s": "the same for 20 s of audio",
        "context.memory_ratio_5s": "flattened / hybrid peak memory of forward+backward, 5 s",
        "context.memory_ratio_10s": "the same for 10 s",
        "context.memory_ratio_20s": "the same for 20 s",
        "context.attention_flops_ratio_10s": "flattened / hybrid attention FLOPs, 10 s (analytic)",
        "features.extractor_rtf": "feature extractor, x real time, batch 1 (target >= 200)",
        "features.extractor_rtf_b8": "feature extractor, x real time, batch 8",
        "features.processor_rtf": "whole processor (codec encode + mel), x real time, batch 1",
        "features.processor_rtf_b8": "whole processor, batch 8",
        "features.encode_rtf": "audio tokenizer encode, x real time, batch 1",
        "features.decode_rtf": "audio tokenizer decode (8 codebooks), x real time, batch 1",
        "features.processor_codec_mel_rtf": 'processor with mel_source="codec" (encode + decode + mel), batch 1',
        "generation.hybrid_k8_b1_rtf": "hybrid K=8 generate(), codec in the loop, x real time (target >= 1)",
        "generation.hybrid_k1_b1_rtf": "hybrid K=1 generate(), codec in the loop, x real time",
        "generation.hybrid_k8_b8_rtf": "hybrid K=8, batch 8, per stream",
        "generation.hybrid_k1_b8_rtf": "hybrid K=1, batch 8, per stream",
        "generation.token_k8_b1_rtf": "token-only K=8 (no codec in the loop), batch 1",
        "generation.token_k1_b1_rtf": "token-only K=1, batch 1",
        "generation.token_k8_b8_rtf": "token-only K=8, batch 8, per stream",
        "generation.token_k1_b8_rtf": "token-only K=1, batch 8, per stream",
        "generation.hybrid_k8_learned_mel_b1_rtf": 'hybrid K=8 with mel_source="learned" (no codec), batch 1',
        "generation.hybrid_k8_exemplar_mel_b1_rtf": 'hybrid K=8 with mel_source="exemplar" (no codec), batch 1',
        "generation.hybrid_k8_b1_compiled_speedup": "hybrid K=8 b1 codec in the loop: eager / compiled time "
        "(target >= 1.5)",
        "generation.hybrid_k8_b1_static_speedup": "the same, eager / static cache without compiling",
        "generation.hybrid_k8_b1_compiled_rtf": "compiled hybrid K=8 b1, codec in the loop, x real time (target >= 1)",
        "generation.hybrid_k1_b1_compiled_speedup": "hybrid K=1 b1: eager / compiled time",
        "generation.hybrid_k8_b8_compiled_speedup": "hybrid K=8 b8: eager / compiled time",
        "generation.hybrid_k8_exemplar_mel_b1_compiled_speedup": "hybrid K=8 b1, exemplar mel: eager / compiled",
    }
    for section in ("training", "context", "features", "generation"):
        for key, value in result.get(section, {}).items():
            name = f"{section}.{key}"
            lines.append(f"| `{name}` | {_fmt(value)} | {explain.get(name, '')} |")
    if "training" in details:
        training_result = details["training"]
        setup = training_result["setup"]
        lines += [
            "",
            f"## Training (batch {setup['batch_size']} x {setup['frames_per_sequence']} frames, K=1 unless noted)",
            "",
            "| model | params | step, CPU s | step, wall s | frames/s (CPU) | peak step memory (MB) |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in training_result["models"].items():
            memory = entry.get("memory", {}).get("peak_delta_mb")
            lines.append(
                f"| {name} | {entry['params']:,} | {entry['cpu_median_s']:.3f} | {entry['median_s']:.3f} | "
                f"{entry['frames_per_s']:,.0f} | {_fmt(memory)} |"
            )
        if "compile" in training_result:
            lines += ["", f"torch.compile: {training_result['compile']['decision']}"]
    if "context" in details:
        lines += [
            "",
            "## Context length at K=8 (forward + backward, batch 1)",
            "",
            "| audio | model | positions | CPU s | wall s | peak memory (MB) | attention GFLOP (fwd) |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, entry in details["context"]["durations"].items():
            for name, model in entry["models"].items():
                memory = model.get("memory", {}).get("peak_delta_mb")
                lines.append(
                    f"| {label} | {name} | {model['positions']:,} | {model['cpu_median_s']:.3f} | "
                    f"{model['median_s']:.3f} | {_fmt(memory)} | {model['flops']['attention_fwd'] / 1e9:.2f} |"
                )
    if "features" in details:
        lines += ["", "## Front end (60 s of audio; batch 8 = eight clips of the same 60 s)", ""]
        lines += ["| case | CPU s | wall s | x real time (CPU) | x real time (wall) |", "|---|---|---|---|---|"]
        for name, entry in details["features"]["cases"].items():
            lines.append(
                f"| {name} | {entry['cpu_median_s']:.3f} | {entry['median_s']:.3f} | {_fmt(entry['rtf'])} | "
                f"{_fmt(entry.get('rtf_wall'))} |"
            )
        lines += ["", f"Codec: {details['features']['setup']['codec']}."]
    if "generation" in details:
        setup = details["generation"]["setup"]
        lines += [
            "",
            f"## Generation (prompt {setup['prompt_seconds']} s; new frames {setup['new_frames']})",
            "",
            "| case | CPU ms per frame | x real time per stream | x real time, all streams | per stream (wall) |",
            "|---|---|---|---|---|",
        ]
        for name, entry in details["generation"]["cases"].items():
            rtf, total, wall = _fmt(entry["rtf"]), _fmt(entry["rtf_total"]), _fmt(entry.get("rtf_wall"))
            lines.append(f"| {name} | {entry['ms_per_frame']:.1f} | {rtf} | {total} | {wall} |")
        lines += ["", f"Codec: {setup['codec']}. Real time = 13.3 ms per frame (75 frames/s)."]
        lines += _generation_modes(details["generation"])
    lines += ["", "Full figures: `docs/benchmarks.json` (`details` holds every script's output).", ""]
    return "\n".join(lines)


def _cell(entry: dict[str, Any], key: str) -> str:
    """One figure of a case's entry (a speed-up's CPU-time ratio), or n/a where the mode did not run."""
    value = entry.get(key)
    return _fmt(value["cpu"] if isinstance(value, dict) else value)


def _generation_modes(generation: dict[str, Any]) -> list[str]:
    """The eager / static / compiled table: one row per hybrid case that ran in every mode."""
    cases = generation["cases"]
    rows = [name for name in cases if f"{name}_static" in cases or f"{name}_compiled" in cases]
    if not rows:
        return []
    lines = [
        "",
        "### Eager vs static cache vs compiled (CPU ms per frame; speed-up = eager / mode, median of rounds)",
        "",
        "| case | eager | static | compiled | static speed-up | compiled speed-up | compiled x real time | "
        "compile s | same codes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in rows:
        static, compiled = cases.get(f"{name}_static", {}), cases.get(f"{name}_compiled", {})
        same = [entry["same_codes_as_eager"] for entry in (static, compiled) if "same_codes_as_eager" in entry]
        lines.append(
            f"| {name} | {cases[name]['ms_per_frame']:.1f} | {_cell(static, 'ms_per_frame')} | "
            f"{_cell(compiled, 'ms_per_frame')} | {_cell(static, 'speedup_vs_eager')} | "
            f"{_cell(compiled, 'speedup_vs_eager')} | {_cell(compiled, 'rtf')} | {_cell(compiled, 'compile_s')} | "
            f"{'yes' if same and all(same) else 'no'} |"
        )
    lines += [
        "",
        f"Compiled: {generation['setup']['modes']['compiled']}; the codec step stays eager. Compile s: the first "
        "call's extra time with a cold inductor cache; near 0 for the exemplar rows, which reuse the graphs compiled "
        "for the codec row of the same model and batch.",
    ]
    return lines


def check_required(result: dict[str, Any]) -> list[str]:
    missing = []
    for key in REQUIRED_KEYS:
        node: Any = result
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(key)
    return missing


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long run that checks the plumbing only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every benchmark (default 1)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where benchmarks.json / benchmarks.md go (default docs/; --quick writes nothing unless given)",
    )
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=None, help="run only these scripts")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite benchmarks.md from an existing benchmarks.json"
    )
    args = parser.parse_args(argv)
    if args.markdown_only:
        output_dir = args.output_dir or REPO_ROOT / "docs"
        result = json.loads((output_dir / "benchmarks.json").read_text())
        (output_dir / "benchmarks.md").write_text(markdown(result))
        return result
    result = collect(args)
    output_dir = args.output_dir or (None if args.quick else REPO_ROOT / "docs")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")
        (output_dir / "benchmarks.md").write_text(markdown(result))
        log(f"wrote {output_dir / 'benchmarks.json'} and {output_dir / 'benchmarks.md'}")
    missing = check_required(result) if not args.only else []
    if missing:
        log(f"missing summary keys: {missing}")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
