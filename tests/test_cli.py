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


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the console script, expect exit status 2 with a one-line error on stderr; return that line."""
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "examples/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _tiny_options(cache) -> list[str]:
    """``whisper-gpt train`` options for a tiny model and a two-step run."""
    from conftest import tiny_config

    config = tiny_config()
    settings = {
        key: value for key, value in config.to_diff_dict().items() if key in config.__init__.__code__.co_varnames
    }
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]
    steps = ["--max-frames", "48", "--batch-size", "4", "--max-steps", "2", "--warmup-steps", "0"]
    quiet = ["--eval-every", "0", "--eval-window", "64", "--save-every", "0", "--report-to", "none", "--no-progress"]
    return ["--preset", "custom", *overrides, *steps, *quiet, "--cache-dir", str(cache)]


def test_train_evaluate_and_prepare_take_datasets_saved_to_disk(tiny_processor, tmp_path, capsys) -> None:
    import datasets
    import pytest
    from audio_folder import write_audio_folder

    from whisper_gpt.apps.corpus import audio_files
    from whisper_gpt.training.data import prepare_dataset

    write_audio_folder(tmp_path / "audio")
    tiny_processor.save_pretrained(tmp_path / "processor")
    prepared = prepare_dataset(tmp_path / "audio", tiny_processor, cache_dir=tmp_path / "cache", progress=False)
    prepared.save_to_disk(str(tmp_path / "prepared"))
    processor = ["--processor", str(tmp_path / "processor")]
    summary = main_run(
        ["train", str(tmp_path / "prepared"), str(tmp_path / "run"), *processor, *_tiny_options(tmp_path)]
    )
    assert summary["finished"] and summary["steps"] == 2
    metrics = main_run(["evaluate", summary["final_dir"], str(tmp_path / "prepared"), "--window", "64"])
    # The held-out rows of the saved dataset are the ones the run validated on: the same numbers.
    assert metrics["tokens"] == summary["validation"]["tokens"] > 0
    assert metrics["nll"] == pytest.approx(summary["validation"]["nll"], abs=1e-6)

    files = [str(path) for path in audio_files(tmp_path / "audio")]
    audio = datasets.Dataset.from_dict({"audio": files}).cast_column("audio", datasets.Audio())
    audio.save_to_disk(str(tmp_path / "audio-dataset"))
    capsys.readouterr()
    new_codec = ["--num-mel-bins", "16", "--codebook-size", "64", "--bandwidth", "1.5", "--encoder-steps", "0"]
    splits = main_run(["prepare", str(tmp_path / "audio-dataset"), str(tmp_path / "calibrated"), *new_codec])
    assert "calibrated a codec on" in capsys.readouterr().out  # on the dataset's own audio
    assert splits["train"]["files"] + splits["validation"]["files"] == len(files)


def test_saved_datasets_that_cannot_be_used_are_one_line_errors(tiny_processor, tmp_path, capsys) -> None:
    import datasets
    from audio_folder import write_audio_folder
    from conftest import tiny_config

    from whisper_gpt import WhisperGPTFeatureExtractor, WhisperGPTForCausalLM, WhisperGPTProcessor
    from whisper_gpt.training.data import prepare_dataset

    tiny_processor.save_pretrained(tmp_path / "processor")
    tiny = _tiny_options(tmp_path / "cache")
    processor = ["--processor", str(tmp_path / "processor"), *tiny]
    datasets.Dataset.from_dict({"label": [0, 1]}).save_to_disk(str(tmp_path / "labels"))
    line = _one_line_error(capsys, ["prepare", str(tmp_path / "labels"), str(tmp_path / "processor")])
    assert "no column 'audio' and is not a prepared dataset" in line and "columns: label" in line

    empty = datasets.Dataset.from_dict({"audio": []}, features=datasets.Features({"audio": datasets.Audio()}))
    empty.save_to_disk(str(tmp_path / "empty"))
    line = _one_line_error(capsys, ["train", str(tmp_path / "empty"), str(tmp_path / "run-empty"), *processor])
    assert "holds a dataset without rows" in line

    write_audio_folder(tmp_path / "audio", seconds=(1.0, 1.2))
    prepared = prepare_dataset(tmp_path / "audio", tiny_processor, cache_dir=tmp_path / "cache", progress=False)
    prepared.save_to_disk(str(tmp_path / "prepared"))
    line = _one_line_error(capsys, ["train", str(tmp_path / "prepared"), str(tmp_path / "run"), *tiny])
    assert "is already prepared" in line and "--processor" in line  # it holds no audio to calibrate a codec on

    other = WhisperGPTProcessor(WhisperGPTFeatureExtractor(feature_size=8), tiny_processor.audio_tokenizer)
    WhisperGPTForCausalLM(tiny_config()).save_pretrained(tmp_path / "model")
    other.save_pretrained(tmp_path / "model")
    line = _one_line_error(capsys, ["evaluate", str(tmp_path / "model"), str(tmp_path / "prepared"), "--all-files"])
    assert "was prepared with another processor" in line


def test_generate_compile_writes_the_eager_continuation(tiny_processor, tmp_path, caplog) -> None:
    import numpy as np
    import soundfile
    from conftest import real_like_audio, tiny_config

    from whisper_gpt import WhisperGPTForCausalLM

    WhisperGPTForCausalLM(tiny_config(num_codebooks=2)).save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    soundfile.write(tmp_path / "prompt.wav", real_like_audio(0.1), 24000)
    command = ["generate", str(tmp_path / "model"), str(tmp_path / "prompt.wav"), "--seconds", "0.2"]
    main_run([*command, "--seed", "3", "--render", "codec", "--out", str(tmp_path / "eager.wav")])
    main_run([*command, "--seed", "3", "--render", "codec", "--compile", "--out", str(tmp_path / "compiled.wav")])
    # One seed, the same sampled codes through the compiled steps: the same audio.
    np.testing.assert_array_equal(
        soundfile.read(tmp_path / "compiled.wav")[0], soundfile.read(tmp_path / "eager.wav")[0]
    )
