"""The whisper-gpt command under bad input: each test injects one fault and checks the refusal or the warning."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import soundfile
from audio_folder import write_audio_folder
from conftest import real_like_audio, tiny_config

import whisper_gpt
from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.apps import cli
from whisper_gpt.apps.cli import (
    main,
    model_location,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    write_audio,
)
from whisper_gpt.training.evaluation import evaluate_model
from whisper_gpt.training.model_card import push_to_hub


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_processor):
    """A tiny saved model folder and a 0.2 s 24 kHz prompt."""
    folder = tmp_path_factory.mktemp("saved")
    WhisperGPTForCausalLM(tiny_config()).save_pretrained(folder / "model")
    tiny_processor.save_pretrained(folder / "model")
    soundfile.write(folder / "prompt.wav", real_like_audio(0.2), 24000)
    return folder / "model", folder / "prompt.wav"


def _fails(capsys, argv: list[str]) -> str:
    """Run the console script, expect exit status 2 and return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _one_line_error(capsys, argv: list[str]) -> str:
    err = _fails(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Loading", "generating"))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# Option types


def test_option_types_accept_their_range_and_refuse_the_rest() -> None:
    assert positive_int("3") == 3 and non_negative_int("0") == 0
    assert positive_float("0.5") == 0.5 and non_negative_float("0") == 0.0
    for parse, bad in [
        (positive_int, ["0", "-1", "1.5", "x"]),
        (non_negative_int, ["-1", "2.0"]),
        (positive_float, ["0", "-5", "nan", "inf", "-inf", "x"]),
        (non_negative_float, ["-0.1", "nan", "inf"]),
    ]:
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
                parse(text)


# generate: numeric options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--prompt-seconds", "0"),  # used the whole prompt
        ("--prompt-seconds", "-1"),  # dropped the first second
        ("--seconds", "0"),  # generated one frame
        ("--seconds", "-5"),  # generated one frame
        ("--seconds", "nan"),
        ("--temperature", "0"),
        ("--top-k", "0"),
    ],
)
def test_generate_prompt_seconds_zero_is_refused(capsys, tmp_path, option, value) -> None:
    err = _fails(capsys, ["generate", "model", "prompt.wav", option, value, "--out", str(tmp_path / "o.wav")])
    assert f"argument {option}: expected" in err and repr(value) in err
    assert not (tmp_path / "o.wav").exists()


def test_generate_prompt_seconds_below_one_sample_is_refused(capsys, saved, tmp_path) -> None:
    model_dir, prompt = saved
    line = _one_line_error(
        capsys, ["generate", str(model_dir), str(prompt), "--prompt-seconds", "1e-6", "--out", str(tmp_path / "o.wav")]
    )
    assert "--prompt-seconds 1e-06 keeps no sample of a 24000 Hz prompt" in line


def test_generate_seconds_below_one_frame_is_refused(capsys, saved, tmp_path) -> None:
    model_dir, prompt = saved
    line = _one_line_error(
        capsys, ["generate", str(model_dir), str(prompt), "--seconds", "0.001", "--out", str(tmp_path / "o.wav")]
    )
    assert "--seconds 0.001 is less than one frame (1/75 s)" in line
    assert not (tmp_path / "o.wav").exists()


def test_generate_prompt_seconds_keeps_the_last_seconds(saved, tmp_path) -> None:
    model_dir, prompt = saved
    out = tmp_path / "o.wav"
    main(["generate", str(model_dir), str(prompt), "--prompt-seconds", "0.1", "--seconds", "0.04", "--out", str(out)])
    # 0.1 s of prompt -> 8 frames (rounded up by the codec), plus 3 new frames.
    assert len(soundfile.read(out)[0]) == (8 + 3) * 320


# Missing or wrong files


def test_missing_model_folder_is_one_line_exit_2(capsys, saved, tmp_path) -> None:
    _, prompt = saved
    missing = tmp_path / "runs" / "final"
    line = _one_line_error(capsys, ["generate", str(missing), str(prompt), "--out", str(tmp_path / "o.wav")])
    assert line == f"whisper-gpt generate: error: no model folder at {missing}"


def test_missing_model_folder_under_an_existing_folder_is_not_sent_to_the_hub(monkeypatch, tmp_path) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(WhisperGPTForCausalLM, "from_pretrained", no_hub)
    with pytest.raises(FileNotFoundError, match="no model folder at runs/final"):
        cli.load_saved_model("runs/final")  # "runs/final" is also a valid repo id, but ./runs is a folder here
    assert model_location("someone/model") == "someone/model"  # nothing local: a Hub repo id


def test_hub_failure_for_a_repo_id_says_no_model_folder(capsys, monkeypatch, saved, tmp_path) -> None:
    _, prompt = saved
    monkeypatch.chdir(tmp_path)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files,\nand couldn't find them.")

    monkeypatch.setattr(WhisperGPTForCausalLM, "from_pretrained", offline)
    line = _one_line_error(capsys, ["generate", "someone/missing", str(prompt)])
    assert "no model folder at someone/missing, and no Hub model of that id could be loaded: We couldn't" in line


def test_model_folder_that_is_a_file_is_refused(capsys, saved) -> None:
    _, prompt = saved
    line = _one_line_error(capsys, ["generate", str(prompt), str(prompt)])
    assert f"{prompt} is a file, not a model folder" in line


def test_missing_prompt_file_is_one_line_exit_2(capsys, saved, tmp_path) -> None:
    model_dir, _ = saved
    line = _one_line_error(capsys, ["generate", str(model_dir), str(tmp_path / "nope.wav")])
    assert line.endswith(f"no prompt audio file at {tmp_path / 'nope.wav'}")


def test_prompt_that_is_not_audio_names_the_file(capsys, saved, tmp_path) -> None:
    model_dir, _ = saved
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    line = _one_line_error(capsys, ["generate", str(model_dir), str(text)])
    assert f"cannot read the prompt {text} as audio" in line


def test_output_with_an_unknown_extension_is_refused_before_generating(capsys, saved, tmp_path) -> None:
    model_dir, prompt = saved
    line = _one_line_error(capsys, ["generate", str(model_dir), str(prompt), "--out", str(tmp_path / "o.xyz")])
    assert "no audio format for the extension" in line


# Errors: one line for the user's, a traceback for bugs


def test_traceback_flag_and_debug_variable_show_the_full_error(monkeypatch, saved, tmp_path) -> None:
    _, prompt = saved
    missing = str(tmp_path / "missing")
    for argv in (["--traceback", "generate", missing, str(prompt)], ["generate", "--traceback", missing, str(prompt)]):
        with pytest.raises(FileNotFoundError, match="no model folder"):
            main(argv)
    monkeypatch.setenv("WHISPER_GPT_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        main(["generate", missing, str(prompt)])


def test_bugs_keep_their_traceback(monkeypatch) -> None:
    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "_presets", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["presets"])


def test_version_prints_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"whisper-gpt {whisper_gpt.__version__}"


# Clipping and non-finite audio


def _loud_render(monkeypatch, gain: float) -> list[np.ndarray]:
    """Make the processor render at ``gain`` times full scale; returns the rendered waves as they come."""
    original = WhisperGPTProcessor.render
    rendered = []

    def loud(self, *args, **kwargs):
        waves = [wave * (gain / np.abs(wave).max()) for wave in original(self, *args, **kwargs)]
        rendered.extend(waves)
        return waves

    monkeypatch.setattr(WhisperGPTProcessor, "render", loud)
    return rendered


def test_clipping_peaks_warn_before_writing(capsys, monkeypatch, saved, tmp_path) -> None:
    model_dir, prompt = saved
    _loud_render(monkeypatch, 4.0)
    stderr_at_write = []
    write = soundfile.write

    def recording_write(*args, **kwargs):
        stderr_at_write.append(capsys.readouterr().err)
        return write(*args, **kwargs)

    monkeypatch.setattr(soundfile, "write", recording_write)
    out = tmp_path / "o.wav"
    chosen = cli.run(["generate", str(model_dir), str(prompt), "--seconds", "0.04", "--out", str(out)])
    assert chosen["peak"] == pytest.approx(4.0)
    assert len(stderr_at_write) == 1 and "warning: the audio peaks at 4.000" in stderr_at_write[0]
    assert "--normalize" in stderr_at_write[0]
    assert np.abs(soundfile.read(out)[0]).max() == pytest.approx(1.0, abs=1e-4)  # clipped, as warned


def test_normalize_scales_clipping_audio_to_full_scale(capsys, monkeypatch, saved, tmp_path) -> None:
    model_dir, prompt = saved
    rendered = _loud_render(monkeypatch, 3.0)
    out = tmp_path / "o.wav"
    cli.run(["generate", str(model_dir), str(prompt), "--seconds", "0.04", "--out", str(out), "--normalize"])
    written = soundfile.read(out)[0]
    np.testing.assert_allclose(written, rendered[0] / 3.0, atol=1 / 32768)
    captured = capsys.readouterr()
    assert "scaled the audio by 0.333" in captured.out and "warning" not in captured.err


def test_normalize_leaves_audio_within_full_scale_unchanged(tmp_path) -> None:
    wave = 0.5 * np.sin(np.linspace(0, 100, 2400)).astype(np.float32)
    assert write_audio(tmp_path / "q.wav", wave, 24000, normalize=True) == pytest.approx(0.5, abs=1e-3)
    np.testing.assert_allclose(soundfile.read(tmp_path / "q.wav")[0], wave, atol=1 / 32768)


def test_nan_audio_is_not_written(tmp_path) -> None:
    wave = np.zeros(100, dtype=np.float32)
    wave[3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        write_audio(tmp_path / "n.wav", wave, 24000)
    assert not (tmp_path / "n.wav").exists()


# evaluate and push


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    write_audio_folder(folder, seconds=(1.0, 1.2), seed=3)
    return folder


def test_evaluate_batch_size_zero_is_refused(capsys, saved, audio) -> None:
    model_dir, _ = saved
    err = _fails(capsys, ["evaluate", str(model_dir), str(audio), "--all-files", "--batch-size", "0"])
    assert "argument --batch-size: expected an integer > 0, got '0'" in err


def test_evaluate_window_zero_is_refused(capsys, saved, audio) -> None:
    model_dir, _ = saved
    err = _fails(capsys, ["evaluate", str(model_dir), str(audio), "--all-files", "--window", "0"])
    assert "argument --window: expected an integer > 0" in err


def test_evaluate_writes_nothing_into_the_model_folder_by_default(capsys, saved, audio, tmp_path) -> None:
    model_dir, _ = saved
    before = sorted(path.name for path in model_dir.iterdir())
    main(["evaluate", str(model_dir), str(audio), "--all-files", "--cache-dir", str(tmp_path / "cache")])
    assert sorted(path.name for path in model_dir.iterdir()) == before
    out = capsys.readouterr().out
    assert "codebook 0" in out and "wrote" not in out


def test_evaluate_plot_without_output_is_refused_before_loading(capsys, saved, audio) -> None:
    model_dir, _ = saved
    line = _one_line_error(capsys, ["evaluate", str(model_dir), str(audio), "--plot"])
    assert "--plot without a file name writes beside --output" in line


def test_evaluate_missing_model_folder_is_one_line_exit_2(capsys, audio, tmp_path) -> None:
    line = _one_line_error(capsys, ["evaluate", str(tmp_path / "missing"), str(audio)])
    assert line == f"whisper-gpt evaluate: error: no model folder at {tmp_path / 'missing'}"


def test_evaluate_model_refuses_batch_size_zero_and_window_zero(saved, audio, tiny_processor, tmp_path) -> None:
    from whisper_gpt.training.data import prepare_dataset

    dataset = prepare_dataset(audio, tiny_processor, cache_dir=tmp_path / "cache", progress=False)
    model = WhisperGPTForCausalLM(tiny_config())
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        evaluate_model(model, dataset, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="window >= 2"):  # was silently the model's whole context
        evaluate_model(model, dataset, window=0, progress=False)


def test_push_missing_model_folder_is_refused_before_the_hub(capsys, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        push_to_hub(tmp_path / "missing", "someone/model")
    line = _one_line_error(capsys, ["push", str(tmp_path / "missing"), "someone/model"])
    assert line == f"whisper-gpt push: error: no model folder at {tmp_path / 'missing'}"
