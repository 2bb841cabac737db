"""Evaluation metrics: values that can fail (uniform model, agreement with the model's loss), JSON, plot, Trainer."""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from audio_folder import write_audio_folder
from conftest import TINY_CODEBOOK_SIZE, tiny_config

from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.training.data import SlidingWindows, WhisperGPTDataCollator, prepare_dataset
from whisper_gpt.training.evaluation import (
    _evaluate_command,
    compute_metrics,
    evaluate_model,
    format_metrics,
    preprocess_logits_for_metrics,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_processor):
    folder = tmp_path_factory.mktemp("audio")
    write_audio_folder(folder, seconds=(1.0, 2.5, 3.0, 1.7), seed=5)
    return folder, prepare_dataset(folder, tiny_processor, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _uniform(model: WhisperGPTForCausalLM) -> WhisperGPTForCausalLM:
    """All-zero output weights: every code gets probability 1/V at every position."""
    with torch.no_grad():
        if model.config.num_codebooks == 1:
            model.lm_head.weight.zero_()
        else:
            model.depth_decoder.heads.zero_()
    return model


@pytest.mark.parametrize("num_codebooks", [1, 2])
def test_uniform_model_scores_log_vocabulary(data, num_codebooks):
    _, dataset = data
    model = _uniform(WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)))
    metrics = evaluate_model(model, dataset, window=64, batch_size=3, progress=False)
    log_v = math.log(TINY_CODEBOOK_SIZE)
    # Every window's first frame is unpredicted; the rest of every file is scored once per codebook.
    windows = SlidingWindows(dataset, 64)
    expected_tokens = num_codebooks * sum(stop - start - 1 for _, start, stop, _ in windows.windows)
    assert metrics["tokens"] == expected_tokens
    assert metrics["nll"] == pytest.approx(log_v, abs=1e-5)
    assert metrics["perplexity"] == pytest.approx(TINY_CODEBOOK_SIZE, rel=1e-4)
    assert len(metrics["per_codebook"]) == num_codebooks
    # argmax of equal logits is code 0: accuracy is the share of targets equal to 0.
    codes = np.concatenate([np.asarray(windows[i]["codes"])[1:, :num_codebooks] for i in range(len(windows))])
    assert metrics["accuracy"] == pytest.approx(float((codes == 0).mean()))
    for entry in metrics["per_codebook"]:
        assert entry["nll"] == pytest.approx(log_v, abs=1e-5)
    assert metrics["codebook_0"]["tokens"] == expected_tokens // num_codebooks
    assert all(value == pytest.approx(log_v, abs=1e-5) for value in metrics["nll_by_context"] if value is not None)
    assert len(metrics["nll_by_context"]) == 63 and metrics["window"] == 64 and metrics["windows"] == len(windows)


def test_metrics_agree_with_the_model_loss(data):
    _, dataset = data
    model = WhisperGPTForCausalLM(tiny_config()).eval()
    metrics = evaluate_model(model, dataset, window=128, batch_size=2, progress=False)
    batch = WhisperGPTDataCollator(max_frames=128, random_crop=False)(list(SlidingWindows(dataset, 128)))
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits
    assert metrics["nll"] == pytest.approx(float(out.loss), abs=1e-5)
    targets = batch["labels"][:, 0, 1:]
    valid = targets != -100
    accuracy = float(((logits[:, 0, :-1].argmax(-1) == targets) & valid).sum() / valid.sum())
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["nll"]))
    assert "all codebooks" in format_metrics(metrics)

    # The Trainer hooks give the same numbers from per-example sums.
    sums = preprocess_logits_for_metrics((logits, None), batch["labels"])
    assert sums.shape == (len(batch["labels"]), 3, 1)
    trainer_metrics = compute_metrics(SimpleNamespace(predictions=[sums[:2].numpy(), sums[2:].numpy()]))
    assert trainer_metrics["nll"] == pytest.approx(metrics["nll"], abs=1e-5)
    assert trainer_metrics["accuracy"] == pytest.approx(metrics["accuracy"])


def test_evaluate_command_writes_json_and_plot(data, tiny_processor, tmp_path, capsys):
    folder, _ = data
    model_dir = tmp_path / "model"
    WhisperGPTForCausalLM(tiny_config()).save_pretrained(model_dir)
    tiny_processor.save_pretrained(model_dir)
    args = argparse.Namespace(
        model_dir=str(model_dir),
        data=str(folder),
        split="validation",
        all_files=True,
        output=str(tmp_path / "eval.json"),
        plot="",
        window=None,
        stride=None,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        num_proc=None,
    )
    metrics = _evaluate_command(args)
    written = json.loads((tmp_path / "eval.json").read_text())
    for key in ("nll", "accuracy", "perplexity", "tokens", "codebook_0", "per_codebook", "nll_by_context"):
        assert key in written
    assert written["nll"] == pytest.approx(metrics["nll"]) and written["nll"] > 0
    assert written["codebook_0"]["perplexity"] == pytest.approx(math.exp(written["codebook_0"]["nll"]))
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "codebook 0" in capsys.readouterr().out


def test_window_longer_than_the_context_is_refused(data):
    _, dataset = data
    with pytest.raises(ValueError, match="exceeds the model's context"):
        evaluate_model(WhisperGPTForCausalLM(tiny_config()), dataset, window=1000)
