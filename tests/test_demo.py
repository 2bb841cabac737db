"""`whisper-gpt demo` end to end with tiny models on small local corpora (the real one downloads Debian packages)."""

from __future__ import annotations

import json
from pathlib import Path

from audio_folder import write_audio_folder
from conftest import tiny_config

from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.demo import run_demo


def test_demo_trains_both_models_on_both_domains_and_prints_the_table(tmp_path, capsys):
    corpora = {}
    for seed, domain in enumerate(("speech", "music")):
        corpora[domain] = tmp_path / domain
        write_audio_folder(corpora[domain], seed=10 * seed)
    tiny = {
        key: value
        for key, value in tiny_config().to_diff_dict().items()
        if key in tiny_config().__init__.__code__.co_varnames and key != "use_spectrogram"
    }
    result = run_demo(
        tmp_path / "demo",
        minutes=0.02,
        corpora=corpora,
        max_frames=48,
        batch_size=4,
        model_overrides=tiny,
        calibration_seconds=20,
        calibration_iterations=3,
        continuation_seconds=0.03,
        parallel=False,
        num_proc=None,
        progress=False,
    )
    printed = capsys.readouterr().out
    rows = result["rows"]
    assert {(row["domain"], row["model"].split()[0]) for row in rows} == {
        (domain, model) for domain in ("speech", "music") for model in ("GPT-S", "Whisper-GPT")
    }
    for row in rows:
        assert row["steps"] >= 10 and 0 < row["nll"] < 10 and 0 <= row["accuracy"] <= 1
        assert row["model"] in printed and f"{row['nll']:.3f}" in printed
        model = WhisperGPTForCausalLM.from_pretrained(row["model_dir"])
        assert sum(p.numel() for p in model.parameters()) == row["params"]
        assert model.config.use_spectrogram == row["model"].startswith("Whisper-GPT")
        assert (Path(row["model_dir"]) / "README.md").is_file()
    assert "2.52" in printed and "38.47%" in printed  # the paper's music hybrid numbers beside ours
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["table"] == result["table"] and saved["timings_seconds"]["total"] > 0
    for domain in ("speech", "music"):
        assert (tmp_path / "demo" / f"continuation-{domain}.wav").stat().st_size > 0
        assert (tmp_path / "demo" / f"continuation-{domain}.png").read_bytes()[:4] == b"\x89PNG"
