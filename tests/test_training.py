"""Training through Accelerate (one process, two processes, exact resume), the Hub folder and its card, Trainer."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from audio_folder import write_audio_folder
from conftest import tiny_config
from safetensors.torch import load_file

from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.configuration_whisper_gpt import PAPER_PRESETS, PAPER_RESULTS
from whisper_gpt.training import TrainingConfig, latest_checkpoint, train
from whisper_gpt.training.data import prepare_dataset
from whisper_gpt.training.evaluation import evaluate_model
from whisper_gpt.training.loop import PRESETS, _mixed_precision, build_optimizer, model_config, seconds_per_step

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    key: value
    for key, value in tiny_config().to_diff_dict().items()
    if key in tiny_config().__init__.__code__.co_varnames
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_processor):
    root = tmp_path_factory.mktemp("training")
    write_audio_folder(root / "audio")
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
        "max_steps": 6,
        "warmup_steps": 2,
        "eval_every": 3,
        "eval_batch_size": 4,
        "eval_window": 64,
        "save_every": 0,
        "log_every": 1,
        "cache_dir": str(setup / "cache"),
        "progress": False,
        "report_to": "none",
        "torch_threads": 1,
        "command": "whisper-gpt train audio out --preset custom",
    }
    values.update(overrides)
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def trained(setup):
    return train(_config(setup, "run", report_to="tensorboard", save_every=3))


@pytest.mark.parametrize("use_spectrogram", [True, False])
def test_packed_training_with_a_mel_head_logs_the_mel_loss(setup, use_spectrogram):
    overrides = {**TINY, "use_mel_head": True, "use_spectrogram": use_spectrogram}
    summary = train(_config(setup, f"packed-{use_spectrogram}", model_overrides=overrides, pack=True, max_steps=2))
    for record in summary["history"]:
        # train/loss is the codes' cross-entropy plus mel_loss_weight (1.0) times the mel L1.
        assert 0 < record["train/mel_loss"] < record["train/loss"]


def test_training_logs_validates_and_writes_a_hub_ready_folder(setup, trained):
    losses = [record["train/loss"] for record in trained["history"]]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert trained["finished"] and trained["steps"] == 6
    run = setup / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "validation" in r] == [3, 6]
    assert list((run / "logs").rglob("events.out.tfevents*")), "TensorBoard wrote no event file"
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000003", "step-00000006"]

    final = Path(trained["final_dir"])
    for name in ("config.json", "model.safetensors", "generation_config.json", "README.md", "eval_results.json"):
        assert (final / name).is_file(), name
    for name in ("configuration_whisper_gpt.py", "modeling_whisper_gpt.py", "processing_whisper_gpt.py"):
        assert (final / name).is_file(), name  # remote code, so the folder works without the package
    assert (final / "audio_tokenizer" / "model.safetensors").is_file()
    model = WhisperGPTForCausalLM.from_pretrained(final)
    processor = WhisperGPTProcessor.from_pretrained(final)
    model.validate_audio_tokenizer(processor.audio_tokenizer)
    # The saved weights are the trained ones: re-evaluating them gives the run's final validation numbers.
    dataset = prepare_dataset(setup / "audio", processor, split="validation", cache_dir=setup / "cache", progress=False)
    again = evaluate_model(model, dataset, window=64, batch_size=4, progress=False)
    assert again["nll"] == pytest.approx(trained["validation"]["nll"], abs=1e-6)


def test_model_card_content(trained):
    final = Path(trained["final_dir"])
    text = (final / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "audio-to-audio"
    assert {"whisper-gpt", "audio-continuation", "hybrid", "custom_code"} <= set(metadata["tags"])
    results = json.loads((final / "eval_results.json").read_text())
    values = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert values["nll"] == pytest.approx(results["codebook_0"]["nll"])
    assert values["accuracy"] == pytest.approx(results["codebook_0"]["accuracy"])
    assert values["perplexity"] == pytest.approx(results["codebook_0"]["perplexity"])
    assert f"{results['nll']:.4f}" in text
    assert "whisper-gpt train audio out --preset custom" in text
    assert "not listenable" in text  # the locally built codec's decoder was never trained
    assert "| mel-from-codes head | no |" in text
    assert 'pipeline("audio-continuation"' in text
    assert "{{" not in text and "{%" not in text


def test_resume_continues_exactly(setup):
    common = {"max_steps": 8, "eval_every": 0, "gradient_accumulation_steps": 2, "seed": 3}
    dropout = {**TINY, "dropout": 0.1}  # dropout draws from the RNG, so a restored RNG state matters
    full = train(_config(setup, "full", model_overrides=dropout, **common))
    first = train(_config(setup, "split", model_overrides=dropout, stop_at_step=4, **common))
    assert not first["finished"] and latest_checkpoint(setup / "split").name == "step-00000004"
    resumed = train(_config(setup, "split", model_overrides=dropout, resume="latest", **common))
    full_losses = [r["train/loss"] for r in full["history"]]
    split_losses = [r["train/loss"] for r in first["history"] + resumed["history"]]
    assert split_losses == full_losses
    logged = [json.loads(line) for line in (setup / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in logged if "train/loss" in r] == full_losses
    weights = load_file(setup / "full" / "final" / "model.safetensors")
    resumed_weights = load_file(setup / "split" / "final" / "model.safetensors")
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[name], resumed_weights[name]) for name in weights)


def test_two_process_cpu_launch_matches_one_process(setup, trained):
    output = setup / "two"
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in TINY.items()]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    settings = {
        "--processor": setup / "processor",
        "--preset": "custom",
        "--max-frames": 48,
        "--batch-size": 4,
        "--max-steps": 6,
        "--warmup-steps": 2,
        "--eval-every": 3,
        "--eval-batch-size": 4,
        "--eval-window": 64,
        "--save-every": 3,
        "--log-every": 1,
        "--cache-dir": setup / "cache",
        "--report-to": "none",
    }
    options = [str(item) for pair in settings.items() for item in pair]
    script = [str(ROOT / "examples" / "train_accelerate.py"), str(setup / "audio"), str(output)]
    with socket.socket() as probe:  # a free port, so concurrent test runs do not collide
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [*launch, "--main_process_port", port, *script, *options, *overrides, "--no-progress"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    # Two processes split each global batch: same data, so the same model up to float summation order.
    assert summary["validation"]["nll"] == pytest.approx(trained["validation"]["nll"], abs=2e-3)
    assert summary["validation"]["tokens"] == trained["validation"]["tokens"]  # no window dropped or counted twice
    # The validation numbers gathered across processes equal a single-process evaluation of the saved model.
    model = WhisperGPTForCausalLM.from_pretrained(output / "final")
    processor = WhisperGPTProcessor.from_pretrained(output / "final")
    dataset = prepare_dataset(setup / "audio", processor, split="validation", cache_dir=setup / "cache", progress=False)
    single = evaluate_model(model, dataset, window=64, batch_size=4, progress=False)
    assert single["nll"] == pytest.approx(summary["validation"]["nll"], abs=1e-6)
    assert single["accuracy"] == summary["validation"]["accuracy"]
    assert (output / "checkpoints" / "step-00000003" / "random_states_1.pkl").is_file()


def test_trainer_fine_tuning(setup, trained):
    spec = importlib.util.spec_from_file_location("finetune_trainer", ROOT / "examples" / "finetune_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metrics = module.finetune(
        trained["final_dir"],
        str(setup / "audio"),
        str(setup / "finetuned"),
        max_steps=4,
        batch_size=4,
        max_frames=48,
        eval_steps=2,
        cache_dir=str(setup / "cache"),
    )
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_nll"]))
    assert 0 <= metrics["eval_accuracy"] <= 1 and metrics["eval_codebook_0_nll"] == metrics["eval_nll"]
    assert metrics["eval_nll"] == pytest.approx(metrics["eval_loss"], abs=0.05)  # token- vs batch-weighted mean
    assert WhisperGPTForCausalLM.from_pretrained(setup / "finetuned" / "final").config.use_cache
    # Trainer(processing_class=processor) saved the processor with the model.
    assert WhisperGPTProcessor.from_pretrained(setup / "finetuned" / "final").audio_tokenizer.num_codebooks >= 1


def test_bad_training_settings_are_refused(setup):
    with pytest.raises(ValueError, match="Unknown preset"):
        train(_config(setup, "bad", preset="gpt_xl"))
    with pytest.raises(ValueError, match="mel bins"):
        train(_config(setup, "bad", model_overrides={**TINY, "num_mel_bins": 80}))
    with pytest.raises(ValueError, match="No complete checkpoint"):
        train(_config(setup, "bad", resume="latest"))
    with pytest.raises(ValueError, match="warmup_steps"):
        train(_config(setup, "bad", warmup_steps=100))


def test_mixed_precision_comes_from_the_launcher_unless_given(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert _mixed_precision(None) == "no" and _mixed_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision or its config
    assert _mixed_precision(None) == "bf16" and _mixed_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match=r"--mixed-precision no .*contradicts the launcher's mixed precision 'bf16'"):
        _mixed_precision("no")
    # "no" is also what accelerate launch sets when told nothing: a given precision overrides it.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert _mixed_precision("bf16") == "bf16" and _mixed_precision(None) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ValueError, match=r"'fp8'.*supports 'no', 'fp16' and 'bf16'"):
        _mixed_precision(None)


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one precision per process: another one needs its state reset (and reset back after)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_launcher_precision_is_trained_in_and_recorded(setup, trained, monkeypatch, fresh_accelerator_state):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    summary = train(_config(setup, "launcher-bf16", max_steps=1, warmup_steps=0, validate=False))
    # The first step's loss (before any update, same model and batch) is the float32 run's under bf16 autocast.
    first, reference = summary["history"][0]["train/loss"], trained["history"][0]["train/loss"]
    assert first != reference and first == pytest.approx(reference, rel=2e-2)
    card = (Path(summary["final_dir"]) / "README.md").read_text()
    assert "| mixed precision | bf16 |" in card


def test_an_fsdp_launch_that_accelerate_would_not_shard_is_refused(setup, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for an FSDP config
    with pytest.raises(ValueError, match=r"applies FSDP on GPUs .*only.*would train plain DDP, without sharding"):
        train(_config(setup, "fsdp-refused"))
    assert not (setup / "fsdp-refused").exists()


def _prepared(setup: Path, split: str):
    processor = WhisperGPTProcessor.from_pretrained(setup / "processor")
    return processor, prepare_dataset(
        setup / "audio", processor, split=split, cache_dir=setup / "cache", progress=False
    )


def test_in_memory_datasets_and_processor_train_the_same_model(setup, trained):
    processor, train_set = _prepared(setup, "train")
    _, validation_set = _prepared(setup, "validation")
    config = _config(setup, "in-memory", train_data=None, processor=None, save_final=False)
    summary = train(config, processor=processor, train_dataset=train_set, validation_dataset=validation_set)
    # The same data, seed and settings as the folder-based run: the same losses and validation numbers.
    assert [r["train/loss"] for r in summary["history"]] == [r["train/loss"] for r in trained["history"]]
    assert summary["validation"]["nll"] == pytest.approx(trained["validation"]["nll"], abs=1e-9)
    assert [entry["step"] for entry in summary["evaluations"]] == [3, 6]
    assert summary["evaluations"][-1]["validation"] == summary["validation"]
    assert summary["finished"] and "final_dir" not in summary and not (setup / "in-memory" / "final").exists()
    assert not (setup / "in-memory" / "checkpoints").exists()
    assert summary["train_seconds"] > 0 and summary["evaluation_seconds"] > 0
    assert summary["train_seconds"] + summary["evaluation_seconds"] <= summary["seconds"]
    assert summary["train_frames_per_second"] == pytest.approx(summary["train_frames"] / summary["train_seconds"])
    assert all(r["train/seconds_per_step"] > 0 for r in summary["history"])
    assert summary["epochs"] == pytest.approx(6 * 4 / (summary["train_examples"] // 4 * 4))


def test_a_given_model_is_trained_without_validation(setup):
    _, train_set = _prepared(setup, "train")
    model = WhisperGPTForCausalLM(tiny_config())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = _config(setup, "given-model", model_overrides={}, validate=False, max_steps=2, warmup_steps=0)
    summary = train(config, model=model, train_dataset=train_set)
    assert summary["validation"] is None and summary["evaluations"] == []
    assert summary["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert any(not torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert WhisperGPTForCausalLM.from_pretrained(summary["final_dir"]).config.hidden_size == model.config.hidden_size
    assert "eval_results.json" not in {path.name for path in Path(summary["final_dir"]).iterdir()}


def test_seconds_per_step_times_the_loop_and_leaves_no_files(setup):
    seconds = seconds_per_step(_config(setup, "timed"), steps=2)
    assert 0 < seconds < 60
    assert not (setup / "timed").exists()  # it trains in a temporary folder
    with pytest.raises(ValueError, match="steps"):
        seconds_per_step(_config(setup, "timed"), steps=0)


def test_in_memory_settings_that_cannot_work_are_refused(setup):
    processor, train_set = _prepared(setup, "train")
    with pytest.raises(ValueError, match="train_data is required"):
        train(_config(setup, "refused", train_data=None))
    with pytest.raises(ValueError, match="needs a processor"):
        train(_config(setup, "refused", train_data=None, processor=None), train_dataset=train_set)
    with pytest.raises(ValueError, match="give one of them"):
        train(_config(setup, "refused"), processor=processor)
    with pytest.raises(ValueError, match="Validation needs"):
        train(_config(setup, "refused", train_data=None), train_dataset=train_set)
    with pytest.raises(ValueError, match="preset='custom'"):
        train(_config(setup, "refused"), model=WhisperGPTForCausalLM(tiny_config()))
    assert not (setup / "refused").exists()  # refused before anything is written


def test_build_optimizer_decays_matrices_only():
    model = WhisperGPTForCausalLM(tiny_config())
    optimizer = build_optimizer(model, 3e-4, weight_decay=0.05, adam_beta2=0.9)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["betas"] == (0.9, 0.9)
    with pytest.raises(ValueError, match="learning_rate"):
        build_optimizer(model, 0.0)


def test_presets_come_from_the_paper_table():
    assert set(PAPER_PRESETS) == set(PAPER_RESULTS) and PRESETS == (*PAPER_PRESETS, "custom")
    for preset, reported in PAPER_RESULTS.items():
        assert {"speech", "music"} <= set(reported) and reported["params"] > 0
        assert model_config(preset).to_dict() == getattr(WhisperGPTConfig, preset)().to_dict()
    large = model_config("paper_gpt_l", {"num_hidden_layers": 2})
    assert large.hidden_size == 512 and large.num_hidden_layers == 2 and not large.use_spectrogram
    assert WhisperGPTConfig(hidden_size=64, use_spectrogram=False).hidden_size == 64  # flat keyword arguments
    with pytest.raises(ValueError, match="Unknown preset"):
        WhisperGPTConfig.from_preset("gpt_xl")
