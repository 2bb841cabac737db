"""Benchmark scripts for whisper-gpt (see docs/benchmarks.md). Each prints JSON; run_all.py writes docs/."""
