"""`whisper-gpt demo` end to end with tiny models on small local corpora (the real one downloads Debian packages)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from audio_folder import write_audio_folder
from conftest import tiny_config

from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.apps.demo import run_demo
from whisper_gpt.configuration_whisper_gpt import PAPER_RESULTS


def test_demo_trains_both_models_on_both_domains_and_prints_the_table(tmp_path, capsys):
    corpora = {}
    for seed, domain in enumerate(("speech", "music")):
        corpora[domain] = tmp_path / domain
        write_audio_folder(corpora[domain], seed=10 * seed)
    tiny = {
        key: value
        for key, value in tiny_config().to_diff_dict().items()
        if key in tiny_config().__init__.__code__.co_varnames and key not in ("use_spectrogram", "use_mel_head")
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
        codec_encoder_steps=3,
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
        hybrid = row["model"].startswith("Whisper-GPT")
        assert row["params"] == sum(p.numel() for p in model.parameters()) > 0
        # The paper's two models, without a mel head: the codec's exemplar frames make the continuation audible.
        assert model.config.use_spectrogram == hybrid and not model.config.use_mel_head
        card = (Path(row["model_dir"]) / "README.md").read_text()
        assert "| mel-from-codes head | no |" in card
        assert "whose encoder was trained to predict each frame's log-mel spectrum" in card
        assert 'codec\'s exemplar frame of its code (`mel_source="exemplar"`' in card
    assert "2.52" in printed and "38.47%" in printed and "12.43" in printed  # the paper's music hybrid numbers
    for row in rows:
        reported = PAPER_RESULTS["paper_hybrid" if row["model"].startswith("Whisper-GPT") else "paper_gpt_s"]
        assert (row["paper_params"], row["paper_nll"], row["paper_accuracy"], row["paper_perplexity"]) == (
            reported["params"],
            reported[row["domain"]]["nll"],
            reported[row["domain"]]["accuracy"],
            reported[row["domain"]]["perplexity"],
        )
    # The hybrid's mel stream is gated; the table says how open each gate ended.
    gates = {row["domain"]: row["mel_gate"] for row in rows if row["model"].startswith("Whisper-GPT")}
    assert all(-1.0 <= gate <= 1.0 for gate in gates.values())  # tanh(g)
    assert all(row["mel_gate"] is None for row in rows if row["model"].startswith("GPT-S"))
    assert f"After training: speech {gates['speech']:.3f}, music {gates['music']:.3f}." in result["table"]
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["table"] == result["table"] and saved["timings_seconds"]["total"] > 0
    for domain in ("speech", "music"):
        assert (tmp_path / "demo" / f"continuation-{domain}.wav").stat().st_size > 0
        assert (tmp_path / "demo" / f"continuation-{domain}.png").read_bytes()[:4] == b"\x89PNG"
        # The untrained local codec's decoder would make noise: "auto" uses the exemplar frames and Griffin-Lim.
        continuation = saved["continuations"][domain]
        assert (continuation["mel_source"], continuation["renderer"]) == ("exemplar", "mel")
        assert f"{domain} continuation" in printed and "Griffin-Lim" in printed
        described = continuation["description"]
        for key in ("spectral_flatness", "energy_std_db", "energy_modulation_db", "periodicity"):
            assert set(described[key]) == {"continuation", "rendered_prompt", "corpus", "white_noise"}
        assert 0 < described["periodicity"]["corpus"] <= 1.01 and "periodicity (pitch)" in printed
        assert set(described["mel_l1_db"]) == {"continuation", "rendered_prompt", "white_noise"}
        numbers = [
            value for key in ("spectral_flatness", "energy_std_db", "mel_l1_db") for value in described[key].values()
        ]
        assert all(math.isfinite(value) for value in numbers)
        # The tiny run generates under 0.75 s, too short for a syllable-rate number; the corpus is long enough.
        assert math.isfinite(described["energy_modulation_db"]["corpus"])
        assert described["energy_modulation_db"]["continuation"] is None
        assert described["generated_seconds"] > 0 and described["reference_seconds"] > 0
    assert "## Continuations" in (tmp_path / "demo" / "results.md").read_text()
    # The demo's local codec has its encoder fitted to log-mel, so its codes describe each frame's spectrum.
    tokenizer = WhisperGPTProcessor.from_pretrained(tmp_path / "demo" / "processor").audio_tokenizer
    assert tokenizer.encoder_fitted_to_mel and tokenizer.calibrated and not tokenizer.decoder_trained
    assert tokenizer.mel_exemplars is not None and tokenizer.mel_exemplars.shape[1] == tiny["num_mel_bins"]


def test_describe_continuation_tells_corpus_like_audio_from_noise(tmp_path):
    import numpy as np
    import soundfile as sf
    from conftest import real_like_audio

    from whisper_gpt import WhisperGPTFeatureExtractor
    from whisper_gpt.apps.demo import describe_continuation

    references = []
    for seed in range(3):
        references.append(tmp_path / f"{seed}.wav")
        sf.write(str(references[-1]), real_like_audio(2.0, seed=seed), 24000)
    prompt = real_like_audio(1.0, seed=7)
    like_corpus = np.concatenate([prompt, real_like_audio(1.0, seed=8)])
    noise = np.concatenate([prompt, 0.1 * np.random.default_rng(0).standard_normal(24000).astype(np.float32)])
    extractor = WhisperGPTFeatureExtractor()
    good = describe_continuation(like_corpus, 24000, 75, references, extractor)
    bad = describe_continuation(noise, 24000, 75, references, extractor)
    assert good["mel_l1_db"]["continuation"] < good["mel_l1_db"]["white_noise"] / 2
    assert bad["mel_l1_db"]["continuation"] > good["mel_l1_db"]["continuation"] * 2
    assert good["spectral_flatness"]["continuation"] < 0.2 < 0.5 < bad["spectral_flatness"]["continuation"]
    assert good["spectral_flatness"]["white_noise"] > 0.5 and good["reference_seconds"] == 6.0
    # A tone that only swells varies in energy as much, but not at the rate of syllables and notes.
    t = np.arange(24000) / 24000
    swelling = np.concatenate([prompt, (0.01 + 0.5 * t) * np.sin(2 * np.pi * 220 * t)]).astype(np.float32)
    hum = describe_continuation(swelling, 24000, 75, references, extractor)
    assert hum["energy_std_db"]["continuation"] > 0.5 * good["energy_std_db"]["continuation"]
    assert hum["energy_modulation_db"]["continuation"] < 0.3 * good["energy_modulation_db"]["continuation"]
    assert good["energy_modulation_db"]["white_noise"] < 0.3 * good["energy_modulation_db"]["corpus"]
    # Periodicity hears pitch: the corpus-like signal and the tone are periodic, noise is not, and neither is noise
    # with the signal's spectral envelope but its harmonics smoothed away (what a blurred mel renders to).
    assert good["periodicity"]["continuation"] > 0.8 and good["periodicity"]["corpus"] > 0.8
    assert hum["periodicity"]["continuation"] > 0.95
    assert bad["periodicity"]["continuation"] < 0.2 and good["periodicity"]["white_noise"] < 0.2
    magnitude = np.abs(np.fft.rfft(like_corpus[24000:]))
    envelope = np.convolve(magnitude, np.ones(400) / 400, mode="same")  # 400 Hz wide: wider than any harmonic gap
    phases = np.exp(2j * np.pi * np.random.default_rng(1).uniform(size=len(magnitude)))
    blurred = np.concatenate([prompt, np.fft.irfft(envelope * phases, 24000).astype(np.float32)])
    assert describe_continuation(blurred, 24000, 75, references, extractor)["periodicity"]["continuation"] < 0.5
    assert describe_continuation(prompt[:500], 24000, 1, references, extractor)["periodicity"]["continuation"] is None
    from whisper_gpt.apps.demo import _syllable_rate_modulation

    for level in (-60.0, 0.0):  # a steady sound has no modulation, however loud and however short
        assert _syllable_rate_modulation(np.full(57, level), 75.0, floor_db=-110.0) == pytest.approx(0.0, abs=1e-9)


def test_frame_periodicity_reads_pitch_not_noise():
    import numpy as np

    from whisper_gpt.apps.demo import frame_periodicity

    t = np.arange(48000) / 24000
    for pitch in (70.0, 220.0, 900.0):  # the ends of the range and the middle
        tone = np.sin(2 * np.pi * pitch * t) + 0.5 * np.sin(2 * np.pi * 2 * pitch * t)
        assert np.median(frame_periodicity(tone, 24000)) > 0.98
    noise = np.random.default_rng(0).standard_normal(48000)
    assert np.median(frame_periodicity(noise, 24000)) < 0.2
    assert frame_periodicity(noise[:900], 24000).size == 0  # shorter than one 40 ms frame
    # Pauses do not count: a tone with silences between its notes reads as the tone.
    gated = np.where((t % 0.5) < 0.25, np.sin(2 * np.pi * 150 * t), 0.0)
    assert np.median(frame_periodicity(gated, 24000)) > 0.95
