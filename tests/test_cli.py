"""The whisper-gpt command."""

from __future__ import annotations

import json

from whisper_gpt.apps.cli import main
from whisper_gpt.apps.cli import run as main_run


def test_presets_prints_parameter_counts_as_json(capsys) -> None:
    main(["presets", "--json"])
    rows = {row["preset"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"paper_gpt_s", "paper_hybrid", "paper_gpt_l"}
    assert rows["paper_gpt_s"]["params"] < rows["paper_hybrid"]["params"] < rows["paper_gpt_l"]["params"]
    assert all(abs(row["relative_difference"]) < 0.15 for row in rows.values())


def test_generate_writes_wav_and_plot(tiny_processor, tmp_path, capsys) -> None:
    import soundfile
    from conftest import real_like_audio, tiny_config

    from whisper_gpt import WhisperGPTForCausalLM

    WhisperGPTForCausalLM(tiny_config()).save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    soundfile.write(tmp_path / "prompt.wav", real_like_audio(0.2, sampling_rate=16000), 16000)
    out, png = tmp_path / "out.wav", tmp_path / "out.png"
    main(
        [
            "generate",
            str(tmp_path / "model"),
            str(tmp_path / "prompt.wav"),
            "--seconds",
            "0.2",
            "--out",
            str(out),
            "--plot",
            str(png),
        ]
    )
    audio, rate = soundfile.read(out)
    assert rate == 24000
    assert len(audio) == (15 + 15) * 320  # 0.2 s prompt -> 15 frames, plus 15 new frames
    assert png.stat().st_size > 10_000
    assert "Griffin-Lim" in capsys.readouterr().out  # a locally calibrated codec: rendered from mel frames


def test_generate_greedy_is_deterministic_and_takes_no_sampling_options(tiny_processor, tmp_path) -> None:
    import numpy as np
    import pytest
    import soundfile
    from conftest import real_like_audio, tiny_config

    from whisper_gpt import WhisperGPTForCausalLM

    WhisperGPTForCausalLM(tiny_config(num_codebooks=2)).save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    soundfile.write(tmp_path / "prompt.wav", real_like_audio(0.1), 24000)
    command = ["generate", str(tmp_path / "model"), str(tmp_path / "prompt.wav"), "--seconds", "0.1", "--greedy"]
    waves = []
    for seed in ("1", "2"):  # greedy: the seed does not matter
        out = tmp_path / f"greedy{seed}.wav"
        chosen = main_run([*command, "--seed", seed, "--render", "codec", "--out", str(out)])
        peak = chosen.pop("peak")
        assert chosen == {"mel_source": "codec", "renderer": "codec", "new_frames": 8}
        assert np.abs(soundfile.read(out)[0]).max() == pytest.approx(peak, abs=1 / 32768)  # 16-bit WAV, unclipped
        waves.append(soundfile.read(out)[0])
    np.testing.assert_array_equal(*waves)
    with pytest.raises(ValueError, match="drop them with --greedy"):
        main_run([*command, "--top-k", "5", "--out", str(tmp_path / "x.wav")])
