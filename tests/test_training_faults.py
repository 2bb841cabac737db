"""Faults injected into training runs: concurrent runs, reused output folders, resumes of other runs or of damaged
checkpoints, kills while final/ is written, a processor reused for another corpus, fp16 that cannot work."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from audio_folder import write_audio_folder
from conftest import tiny_config

import whisper_gpt.training.loop as loop
from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.apps.corpus import audio_files
from whisper_gpt.training import TrainingConfig, latest_checkpoint, train
from whisper_gpt.training.loop import CALIBRATION_FILE, LOCK_FILE, _calibration_source, save_final

TESTS = Path(__file__).resolve().parent
TINY = {
    key: value
    for key, value in tiny_config().to_diff_dict().items()
    if key in tiny_config().__init__.__code__.co_varnames
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_processor):
    root = tmp_path_factory.mktemp("faults")
    write_audio_folder(root / "audio")
    write_audio_folder(root / "other-audio", seconds=(2.0, 3.0, 1.5, 2.5), seed=7)
    tiny_processor.save_pretrained(root / "processor")
    return root


def _config(setup: Path, output: str, **overrides) -> TrainingConfig:
    values = {
        "output_dir": str(setup / output),
        "train_data": str(setup / "audio"),
        "processor": str(setup / "processor"),
        "preset": "custom",
        "model_overrides": TINY,
        "max_frames": 48,
        "batch_size": 4,
        "max_steps": 4,
        "warmup_steps": 1,
        "validate": False,
        "save_every": 2,
        "log_every": 1,
        "cache_dir": str(setup / "cache"),
        "progress": False,
        "report_to": "none",
        "torch_threads": 1,
    }
    values.update(overrides)
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def stopped(setup):
    """A run stopped at step 2 of 4, with its checkpoint (dropout on, so its random states matter)."""
    train(_config(setup, "stopped", model_overrides={**TINY, "dropout": 0.1}, stop_at_step=2))
    return setup / "stopped"


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_second_concurrent_run_into_the_folder_is_refused(setup, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = loop.build_optimizer

    def held_optimizer(*args, **kwargs):
        started.set()  # the first run holds the folder from here until the second one has been refused
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "build_optimizer", held_optimizer)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(train, _config(setup, "concurrent", save_every=0))
        assert started.wait(60)
        try:
            with pytest.raises(ValueError, match=rf"in use by another training run \(process {os.getpid()} on"):
                train(_config(setup, "concurrent", save_every=0, seed=1))
        finally:
            release.set()
        summary = first.result(timeout=120)
    assert summary["finished"] and not (setup / "concurrent" / LOCK_FILE).exists()
    records = [json.loads(line) for line in (setup / "concurrent" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one run's metrics, not two interleaved


def test_stale_lock_of_a_killed_process_is_taken_over(setup, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = setup / "stale"
    folder.mkdir()
    stale = {"pid": dead.pid, "host": loop.socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (folder / LOCK_FILE).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        summary = train(_config(setup, "stale", save_every=0, max_steps=1, warmup_steps=0))
    assert summary["finished"]
    assert f"left by process {dead.pid}, which no longer runs" in caplog.text
    assert not (folder / LOCK_FILE).exists()


def test_lock_of_another_host_is_not_taken_over(setup):
    folder = setup / "remote-lock"
    folder.mkdir()
    remote = {"pid": 1, "host": "another-host.invalid", "started": "2026-01-01 00:00:00"}
    (folder / LOCK_FILE).write_text(json.dumps(remote))
    with pytest.raises(ValueError, match=r"process 1 on another-host.invalid.*delete"):
        train(_config(setup, "remote-lock"))
    assert json.loads((folder / LOCK_FILE).read_text()) == remote  # the other host's lock is left alone


def test_new_run_into_a_folder_with_another_runs_checkpoints_is_refused(setup, stopped):
    folder = _copy_run(stopped, setup / "reused")
    before = _digest(folder)
    with pytest.raises(ValueError, match=r"holds another training run \(checkpoints, metrics.jsonl.*--resume"):
        train(_config(setup, "reused", seed=5))
    assert _digest(folder) == before  # the old run's checkpoints and metrics.jsonl are untouched
    assert not (folder / LOCK_FILE).exists()  # a refused run releases the lock
    with pytest.raises(ValueError, match="give one of them"):
        train(_config(setup, "reused", resume="latest", overwrite_output_dir=True))


def test_folder_with_only_another_runs_metrics_is_refused(setup):
    train(_config(setup, "metrics-only", save_every=0, save_final=False, max_steps=1, warmup_steps=0))
    assert not (setup / "metrics-only" / "checkpoints").exists()
    with pytest.raises(ValueError, match=r"holds another training run \(metrics.jsonl"):
        train(_config(setup, "metrics-only", save_every=0, save_final=False, max_steps=1, warmup_steps=0))


def test_overwrite_output_dir_starts_a_new_run_whose_checkpoints_survive_rotation(setup):
    folder = setup / "overwritten"
    train(_config(setup, "overwritten", max_steps=6, save_every=3, save_total_limit=1))
    assert latest_checkpoint(folder).name == "step-00000006"
    new = _config(
        setup, "overwritten", max_steps=4, save_every=2, save_total_limit=1, seed=1, overwrite_output_dir=True
    )
    summary = train(new)
    assert summary["finished"]
    # The old run's step-6 is gone, so the new run's checkpoints are not rotated away and "latest" is the new run's.
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-00000004"]
    state = json.loads((latest_checkpoint(folder) / "trainer_state.json").read_text())
    assert state["run"]["seed"] == 1 and state["run"]["max_steps"] == 4
    assert [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_with_another_batch_size_is_refused(setup, stopped):
    folder = _copy_run(stopped, setup / "resume-batch")
    dropout = {**TINY, "dropout": 0.1}
    before = _digest(folder)
    with pytest.raises(ValueError, match="batch_size: 4 in the checkpoint, 2 now"):
        train(_config(setup, "resume-batch", model_overrides=dropout, batch_size=2, resume="latest"))
    with pytest.raises(ValueError, match="model config hidden_size: 32 in the checkpoint, 64 now"):
        train(_config(setup, "resume-batch", model_overrides={**dropout, "hidden_size": 64}, resume="latest"))
    with pytest.raises(ValueError, match="train_data: "):
        train(
            _config(
                setup, "resume-batch", model_overrides=dropout, train_data=str(setup / "other-audio"), resume="latest"
            )
        )
    assert _digest(folder) == before  # refused before anything is written
    resumed = train(_config(setup, "resume-batch", model_overrides=dropout, resume="latest"))
    assert resumed["finished"] and resumed["steps"] == 4  # the same settings resume


def test_resume_from_another_runs_checkpoint_is_refused(setup, stopped):
    checkpoint = latest_checkpoint(stopped)
    with pytest.raises(ValueError, match="seed: 0 in the checkpoint, 9 now"):
        train(_config(setup, "fork", model_overrides={**TINY, "dropout": 0.1}, seed=9, resume=str(checkpoint)))
    occupied = _copy_run(stopped, setup / "occupied")
    with pytest.raises(ValueError, match="is not one of its own"):
        train(_config(setup, "occupied", model_overrides={**TINY, "dropout": 0.1}, resume=str(checkpoint)))
    assert _digest(occupied) == _digest(stopped)


def test_missing_random_states_fail_the_resume(setup, stopped, caplog):
    dropout = {**TINY, "dropout": 0.1}
    folder = _copy_run(stopped, setup / "no-rng")
    (latest_checkpoint(folder) / "random_states_0.pkl").unlink()
    with pytest.raises(ValueError, match=r"random_states_0.pkl is missing.*--ignore-missing-rng-state"):
        train(_config(setup, "no-rng", model_overrides=dropout, resume="latest"))
    corrupt = _copy_run(stopped, setup / "corrupt-rng")
    (latest_checkpoint(corrupt) / "random_states_0.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"random_states_0.pkl cannot be read"):
        train(_config(setup, "corrupt-rng", model_overrides=dropout, resume="latest"))
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        summary = train(
            _config(setup, "no-rng", model_overrides=dropout, resume="latest", ignore_missing_rng_state=True)
        )
    assert summary["finished"] and "inexactly: random_states_0.pkl is missing" in caplog.text


def test_resume_from_an_earlier_checkpoint_replaces_the_later_ones(setup):
    folder = setup / "rewound"
    settings = {"model_overrides": {**TINY, "dropout": 0.1}, "max_steps": 6, "save_every": 2, "save_total_limit": 3}
    train(_config(setup, "rewound", **settings))
    earlier = folder / "checkpoints" / "step-00000002"
    summary = train(_config(setup, "rewound", **settings, stop_at_step=3, resume=str(earlier)))
    assert summary["steps"] == 3 and not summary["finished"]
    # The abandoned continuation's step-4 and step-6 are gone: "latest" is the resumed run's step 3, and rotation
    # did not delete it in favour of the higher old step numbers.
    assert [p.name for p in sorted((folder / "checkpoints").iterdir())] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(folder).name == "step-00000003"
    assert [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def _saved_final(setup: Path, folder: Path, processor, metrics: dict) -> dict[str, str]:
    model = WhisperGPTForCausalLM(tiny_config())
    save_final(model, processor, folder, _config(setup, "unused"), metrics)
    return _digest(folder)


class _Killed(BaseException):
    """Stands for a kill: no except clause catches it, like SIGKILL no cleanup runs."""


def test_kill_during_final_keeps_the_previous_final(setup, tiny_processor, monkeypatch):
    final = setup / "final-kill" / "final"
    previous = _saved_final(setup, final, tiny_processor, {"nll": 1.0})
    assert "eval_results.json" in previous and "model.safetensors" in previous

    # Killed after the new model is written, before the processor: the previous final/ is untouched.
    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(type(tiny_processor), "save_pretrained", killed)
    with pytest.raises(_Killed):
        _saved_final(setup, final, tiny_processor, {"nll": 2.0})
    assert _digest(final) == previous
    monkeypatch.undo()

    # Killed between moving the previous final/ aside and renaming the new one in: no final/ at all, never a mixture.
    real_replace = os.replace

    def replace(source, target):
        if Path(target) == final:
            raise _Killed
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        _saved_final(setup, final, tiny_processor, {"nll": 3.0})
    monkeypatch.undo()
    assert not final.exists() and _digest(final.with_name(".final.old")) == previous

    # The next save leaves one complete final/ with its evaluation JSON and no leftovers.
    done = _saved_final(setup, final, tiny_processor, {"nll": 4.0})
    assert json.loads((final / "eval_results.json").read_text()) == {"nll": 4.0} and "README.md" in done
    assert sorted(p.name for p in final.parent.iterdir()) == ["final"]


def test_sigkill_during_final_leaves_the_previous_final(setup, tiny_processor):
    final = setup / "final-sigkill" / "final"
    previous = _saved_final(setup, final, tiny_processor, {"nll": 1.0})
    script = f"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {str(TESTS)!r})
from conftest import tiny_config
from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.training import TrainingConfig
from whisper_gpt.training.loop import save_final
processor = WhisperGPTProcessor.from_pretrained({str(setup / "processor")!r})
# Killed once the new weights are on disk and the codec is being written.
processor.save_pretrained = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
config = TrainingConfig(output_dir="unused", train_data="unused")
save_final(WhisperGPTForCausalLM(tiny_config()), processor, Path({str(final)!r}), config, {{"nll": 2.0}})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert (final.with_name(".final.partial") / "model.safetensors").is_file()  # it was killed mid-save
    assert _digest(final) == previous


def test_fine_tuning_into_a_folder_with_a_final_model_is_refused(setup):
    spec = importlib.util.spec_from_file_location("finetune_trainer", TESTS.parent / "examples" / "finetune_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (setup / "finetune-reused" / "final").mkdir(parents=True)
    with pytest.raises(ValueError, match="--overwrite-output-dir"):
        module.finetune("no-model-needed", str(setup / "audio"), str(setup / "finetune-reused"))


def _record_calibration(setup: Path, output: str, corpus: str) -> Path:
    """OUTPUT/processor as a calibration on ``corpus`` leaves it (the tiny processor stands for the codec)."""
    target = setup / output / "processor"
    shutil.copytree(setup / "processor", target)
    config = _config(setup, output, train_data=str(setup / corpus), processor=None)
    _, source = _calibration_source(config, tiny_config())
    (target / CALIBRATION_FILE).write_text(json.dumps(source))
    return target


def test_processor_calibrated_on_another_corpus_is_refused_or_rebuilt(setup, tiny_processor, monkeypatch):
    target = _record_calibration(setup, "recalibrate", "other-audio")
    with pytest.raises(ValueError, match=r"calibrated for other data.*corpus: .*--overwrite-output-dir"):
        train(_config(setup, "recalibrate", processor=None))

    calls = []

    def calibrated(files, **kwargs):
        calls.append(sorted(files))
        return tiny_processor, {"frames": 1}

    monkeypatch.setattr(loop, "build_processor", calibrated)
    config = _config(setup, "recalibrate", processor=None, max_steps=1, warmup_steps=0, overwrite_output_dir=True)
    assert train(config)["finished"]
    assert calls == [sorted(audio_files(setup / "audio", split="train"))]  # calibrated again, on this corpus
    record = json.loads((target / CALIBRATION_FILE).read_text())
    assert record["train_data"] == str((setup / "audio").resolve())


def test_processor_of_the_same_corpus_is_reused_and_one_without_a_record_refused(setup, monkeypatch):
    _record_calibration(setup, "same-corpus", "audio")

    def not_expected(*args, **kwargs):
        raise AssertionError("the matching processor should have been reused")

    monkeypatch.setattr(loop, "build_processor", not_expected)
    assert train(_config(setup, "same-corpus", processor=None, max_steps=1, warmup_steps=0))["finished"]
    legacy = setup / "legacy" / "processor"
    shutil.copytree(setup / "processor", legacy)
    with pytest.raises(ValueError, match=f"has no {CALIBRATION_FILE}.*--processor"):
        train(_config(setup, "legacy", processor=None))


def test_pure_fp16_training_is_refused(setup):
    model = WhisperGPTForCausalLM(tiny_config()).half()
    config = _config(setup, "fp16-model", model_overrides={}, max_steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match=r"parameters are float16.*mixed_precision='fp16'.*bf16"):
        train(config, model=model)


@pytest.mark.skipif(torch.accelerator.is_available(), reason="fp16 autocast is real on an accelerator")
def test_fp16_mixed_precision_on_the_cpu_is_refused(setup):
    with pytest.raises(ValueError, match=r"no effect on the CPU.*'bf16'"):
        train(_config(setup, "fp16-cpu", mixed_precision="fp16"))
    assert not (setup / "fp16-cpu").exists()


def test_cli_flags_reach_the_config():
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)
    args = parser.parse_args(["data", "out", "--overwrite-output-dir", "--ignore-missing-rng-state"])
    config = loop.config_from_args(args)
    assert config.overwrite_output_dir and config.ignore_missing_rng_state
    defaults = loop.config_from_args(parser.parse_args(["data", "out"]))
    assert not defaults.overwrite_output_dir and not defaults.ignore_missing_rng_state
