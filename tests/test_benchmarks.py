"""The benchmark suite runs end to end and writes the JSON and table it promises.

Structure only: timings on a shared CI machine prove nothing, so no number is compared with a target here.
The full figures live in docs/benchmarks.json (written by `python benchmarks/run_all.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

REQUIRED = (
    "training.spectrogram_overhead",
    "training.speed_vs_gpt2",
    "context.speedup_10s",
    "context.memory_ratio_10s",
    "features.extractor_rtf",
    "features.processor_rtf",
    "generation.hybrid_k8_b1_rtf",
    "generation.hybrid_k1_b1_rtf",
    "generation.hybrid_k8_b1_compiled_speedup",
)
MACHINE_KEYS = ("cpu_model", "cpu_cores", "torch_threads", "torch_version")


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} missing (at {part!r})"
        node = node[part]
    return node


def test_run_all_quick_writes_json_and_markdown(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "run_all.py"), "--quick", "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    printed = json.loads(completed.stdout)
    written = json.loads((tmp_path / "benchmarks.json").read_text())
    assert printed == written

    for key in REQUIRED:
        value = _lookup(written, key)
        assert isinstance(value, (int, float)) and value > 0, f"{key} = {value!r}"
    machine = written["machine"]
    for key in MACHINE_KEYS:
        assert machine.get(key) not in (None, ""), f"machine.{key} missing"
    assert machine["torch_threads"] == 1
    assert isinstance(written["gpu"], (str, dict))
    assert written["run"]["quick"] is True

    details = written["details"]
    assert set(details) == {"training", "context", "features", "generation"}
    for model in ("hybrid", "token_only", "gpt2"):
        entry = details["training"]["models"][model]
        assert entry["median_s"] > 0 and entry["frames_per_s"] > 0
        assert entry["memory"]["peak_delta_mb"] >= 0
    compiled = details["training"]["compile"]["models"]["hybrid"]
    assert compiled["speedup"]["compiled_model"]["wall"] > 0
    assert compiled["max_loss_difference_vs_eager"] < 1e-3  # same weights, batch and steps: the same losses
    split = compiled["eager_forward_backward_split"]
    assert abs(sum(split.values()) - 1) < 0.01 and split["matmul"] > 0
    assert details["training"]["compile"]["decision"]
    for label in ("5s", "10s", "20s"):
        duration = details["context"]["durations"][label]
        assert duration["models"]["flattened"]["positions"] == 8 * duration["models"]["hybrid"]["positions"]
        assert duration["attention_flops_ratio"] > 1
    for case in ("extractor_b1", "extractor_b8", "encode_b1", "decode_b1", "processor_b1", "processor_b8"):
        assert details["features"]["cases"][case]["rtf"] > 0
    for case in ("hybrid_k1_b1", "hybrid_k8_b1", "token_k1_b1", "token_k8_b1", "hybrid_k8_b8", "token_k8_b8"):
        assert details["generation"]["cases"][case]["rtf"] > 0
    for mode in ("static", "compiled"):
        entry = details["generation"]["cases"][f"hybrid_k8_b1_{mode}"]
        assert entry["same_codes_as_eager"] is True  # one seed, the eager codes
        assert entry["speedup_vs_eager"]["cpu"] > 0
    assert details["generation"]["cases"]["hybrid_k8_b1_compiled"]["first_call_s"] > 0

    table = (tmp_path / "benchmarks.md").read_text()
    assert "| `generation.hybrid_k8_b1_rtf` |" in table
    assert "| `generation.hybrid_k8_b1_compiled_speedup` |" in table
    assert "| hybrid_k8_b1 |" in table.split("### Eager vs static cache vs compiled")[1]
    assert machine["cpu_model"] in table


def _compile_result(speedups: dict[str, float]) -> dict:
    phases = {"forward": 0.2, "backward": 0.4, "optimizer": 0.1}
    split = {"matmul": 0.5, "attention": 0.1, "elementwise_norms_and_other": 0.4}
    return {
        "models": {
            name: {
                "speedup": {"compiled_model": {"wall": value}, "compiled_model_and_optimizer": {"wall": value + 0.01}},
                "phases_s": {"eager": phases, "compiled_model": phases},
                "eager_forward_backward_split": split,
                "compile_s": {"compiled_model": 45.0},
            }
            for name, value in speedups.items()
        }
    }


def test_training_compile_decision_follows_the_measured_speedup() -> None:
    from benchmarks.training import COMPILE_GAIN_NEEDED, _decision

    fast = _decision(_compile_result({"hybrid": COMPILE_GAIN_NEEDED + 0.1, "token_only": COMPILE_GAIN_NEEDED + 0.2}))
    assert "worth a --compile option" in fast
    slow = _decision(_compile_result({"hybrid": 1.04, "token_only": COMPILE_GAIN_NEEDED + 0.2}))
    assert slow.startswith("no --compile option")
    # Why not, in the measured figures: the ratio, the best variant, the compile time and where the time goes.
    for figure in ("hybrid: compiled_model 1.04x", "best variant 1.05x", "45 s of compile", "50% matmul"):
        assert figure in slow


def test_generation_benchmark_refuses_a_cuda_device_it_does_not_have() -> None:
    import pytest
    import torch

    from benchmarks import generation

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the refusal is for machines without one")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        generation.run(generation.parser().parse_args(["--quick", "--device", "cuda"]))
    with pytest.raises(ValueError, match="only cpu and cuda"):  # no synchronisation for other devices
        generation.run(generation.parser().parse_args(["--quick", "--device", "meta"]))


def test_generation_breakdown_pieces_add_up_to_the_call(capsys) -> None:
    from benchmarks import generation_breakdown

    result = generation_breakdown.main(["--quick"])
    assert json.loads(capsys.readouterr().out) == result
    for mode, pieces in result["ms_per_frame"].items():
        assert pieces["same_codes_as_eager"] is True, mode
        timed = [pieces[piece] for piece in generation_breakdown.PIECES]
        assert all(value >= 0 for value in timed[:-1]) and pieces["codec_step"] > 0 and pieces["code_picking"] > 0
        # One call's pieces add up to it exactly; medians over one quick repeat are that call's.
        assert abs(sum(timed) - pieces["total"]) < 0.01
    assert result["compiled_speedup"] > 0
