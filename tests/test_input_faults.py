"""Hostile inputs and faults on the audio side: out-of-range sampling rates, unreadable files in calibration and
encoding, errors that must not be swallowed, NaN exemplars and mel frames, tampered codec folders, and temporary
folders left by a killed ``prepare``. Each test is named after the fault it injects."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_folder import write_audio_folder
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, real_like_audio, tiny_config
from transformers import pipeline

import whisper_gpt.feature_extraction_whisper_gpt as feature_extraction
from whisper_gpt import WhisperGPTAudioTokenizer, WhisperGPTFeatureExtractor, WhisperGPTForCausalLM
from whisper_gpt.feature_extraction_whisper_gpt import AudioInputError, check_sampling_rate
from whisper_gpt.tokenization_whisper_gpt import CONFIG_NAME, MEL_EXEMPLARS_NAME
from whisper_gpt.training import data as data_module
from whisper_gpt.training.codec_fitting import calibrate, fit_mel_exemplars
from whisper_gpt.training.data import build_processor, load_audio, prepare_dataset

AUDIO = real_like_audio(0.2)
# (value, what the message must say): kHz typed as Hz, a string, a bool, nonsense and out-of-range numbers.
BAD_RATES = [
    (16, r"outside the plausible range 1000 to 384000 Hz \(16 looks like kHz: pass 16000\)"),
    (1, "looks like kHz"),
    (0, "outside the plausible range"),
    (-24000, "outside the plausible range"),
    (768_000, "outside the plausible range"),
    ("16000", r"whole number of Hz such as 16000, got '16000' \(str\)"),
    (True, r"got True \(bool\)"),
    (22050.5, "whole number of Hz"),
    (float("nan"), "whole number of Hz"),
]


# ---- sampling_rate: one checker behind every entry point ----------------------------------------------------------


def _entry_points(processor):
    """Each public entry point that takes a sampling_rate, as a call of (rate)."""
    return {
        "feature extractor": lambda rate: processor.feature_extractor(AUDIO, sampling_rate=rate),
        "processor": lambda rate: processor(audio=AUDIO, sampling_rate=rate),
        "tokenizer encode": lambda rate: processor.audio_tokenizer.encode(AUDIO, sampling_rate=rate),
        "calibrate": lambda rate: calibrate(copy.deepcopy(processor.audio_tokenizer), [AUDIO], sampling_rate=rate),
        "build_processor": lambda rate: build_processor([AUDIO], sampling_rate=rate, progress=False),
        "feature extractor config": lambda rate: WhisperGPTFeatureExtractor(sampling_rate=rate),
        "load_audio of a dataset value": lambda rate: load_audio({"array": AUDIO, "sampling_rate": rate}),
    }


@pytest.mark.parametrize(("rate", "message"), BAD_RATES, ids=[repr(rate) for rate, _ in BAD_RATES])
@pytest.mark.parametrize(
    "entry",
    [
        "feature extractor",
        "processor",
        "tokenizer encode",
        "calibrate",
        "build_processor",
        "feature extractor config",
        "load_audio of a dataset value",
    ],
)
def test_sampling_rate_in_khz_string_or_out_of_range_is_refused(tiny_processor, entry, rate, message) -> None:
    with pytest.raises(ValueError, match=message):
        _entry_points(tiny_processor)[entry](rate)


@pytest.mark.parametrize(("rate", "message"), BAD_RATES[:2] + BAD_RATES[5:6], ids=["16", "1", "str"])
def test_sampling_rate_in_khz_is_refused_by_the_pipeline(tiny_processor, rate, message) -> None:
    torch.manual_seed(0)
    pipe = pipeline("audio-continuation", model=WhisperGPTForCausalLM(tiny_config()).eval(), processor=tiny_processor)
    with pytest.raises(ValueError, match=message):
        pipe(AUDIO, sampling_rate=rate, max_new_tokens=1)
    with pytest.raises(ValueError, match=message):
        pipe({"array": AUDIO, "sampling_rate": rate}, max_new_tokens=1)


def test_sampling_rate_string_is_a_value_error_not_a_type_error_from_a_comparison() -> None:
    with pytest.raises(AudioInputError) as caught:
        check_sampling_rate("16000")
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, TypeError)


def test_numpy_integer_and_integral_float_sampling_rates_are_accepted(tiny_processor) -> None:
    reference = tiny_processor.feature_extractor(AUDIO, sampling_rate=24000)["input_features"]
    for rate in (np.int64(24000), np.int32(24000), 24000.0, np.float32(24000)):
        assert check_sampling_rate(rate) == 24000 and type(check_sampling_rate(rate)) is int
        np.testing.assert_array_equal(
            tiny_processor.feature_extractor(AUDIO, sampling_rate=rate)["input_features"], reference
        )


def test_clip_longer_than_the_limit_is_refused_before_resampling(tiny_processor, monkeypatch) -> None:
    monkeypatch.setattr(feature_extraction, "MAX_CLIP_SECONDS", 10)
    # 1 s recorded at 16 kHz but declared as 1 kHz is 16 s at 24 kHz. soxr is not needed to refuse it: the check
    # runs before the resampler is imported or allocates anything (a soxr import error would come otherwise).
    with pytest.raises(AudioInputError, match=r"16 s long at sampling_rate=1000 \(384,000 samples at 24000 Hz\)"):
        tiny_processor(audio=real_like_audio(1.0, sampling_rate=16000), sampling_rate=1000)
    with pytest.raises(AudioInputError, match="clips are limited to 10 s"):
        tiny_processor.audio_tokenizer.encode(real_like_audio(11.0), sampling_rate=24000)
    assert tiny_processor.feature_extractor(real_like_audio(9.0), sampling_rate=24000)["input_features"].shape[1] == 675


# ---- unreadable files: calibration, encoding and evaluation data skip them by name --------------------------------


def _corpus_with_bad_files(folder: Path) -> tuple[list[Path], dict[str, Path]]:
    """Ten readable WAVs and four bad ones: zero bytes, text named .wav, a valid header with no samples, NaN."""
    good = write_audio_folder(folder, seconds=(3.0,) * 10)
    bad = {"zero bytes": folder / "zero.wav", "text": folder / "notes.wav", "no samples": folder / "empty.wav"}
    bad["zero bytes"].write_bytes(b"")
    bad["text"].write_text("this is not audio\n")
    sf.write(str(bad["no samples"]), np.zeros(0, np.float32), 24000)
    bad["nan samples"] = folder / "nan.wav"
    sf.write(str(bad["nan samples"]), np.full(2400, np.nan, np.float32), 24000, subtype="FLOAT")
    return good, bad


def _tiny_build(files, **kwargs):
    return build_processor(
        files,
        num_mel_bins=TINY_MEL_BINS,
        codebook_size=TINY_CODEBOOK_SIZE,
        encoder_steps=0,
        iterations=2,
        progress=False,
        **kwargs,
    )


def test_zero_byte_wav_is_skipped_by_calibration_with_its_name(tmp_path, caplog) -> None:
    good, bad = _corpus_with_bad_files(tmp_path)
    # Bad files first, where they used to abort the encoder fit and the exemplars as well as the k-means.
    files = [*bad.values(), *good]
    with caplog.at_level(logging.WARNING, logger=data_module.__name__):
        processor, stats = _tiny_build(files)
    assert stats["skipped"] == [str(path) for path in bad.values()]
    for path in bad.values():
        assert any(str(path) in record.getMessage() and "skipped" in record.getMessage() for record in caplog.records)
    assert processor.audio_tokenizer.calibrated and processor.audio_tokenizer.mel_exemplars is not None
    assert stats["frames_seen"] == 10 * 225  # every readable file, and only those


def test_calibration_fails_only_when_no_file_is_readable(tmp_path) -> None:
    _, bad = _corpus_with_bad_files(tmp_path)
    with pytest.raises(ValueError, match=r"could read none of its 4 calibration files .*zero\.wav"):
        _tiny_build(list(bad.values()))


def test_calibrate_names_the_item_with_empty_audio(tiny_processor) -> None:
    tokenizer = copy.deepcopy(tiny_processor.audio_tokenizer)
    with pytest.raises(ValueError, match=r"audio item 1: audio\[0\] is empty"):
        calibrate(tokenizer, [real_like_audio(1.0), np.zeros(0, np.float32)], sampling_rate=24000)


@pytest.mark.parametrize(
    "error",
    [MemoryError(), torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("a bug"), KeyError("a bug")],
    ids=["MemoryError", "OutOfMemoryError", "RuntimeError", "KeyError"],
)
def test_out_of_memory_or_bug_while_reading_calibration_audio_is_not_swallowed(tmp_path, monkeypatch, error) -> None:
    files = write_audio_folder(tmp_path, seconds=(1.0, 1.0))

    def failing(source):
        raise error

    monkeypatch.setattr(data_module, "load_audio", failing)
    with pytest.raises(type(error)):
        _tiny_build(files)


def test_unreadable_files_are_skipped_by_encoding_with_their_names(tiny_processor, tmp_path, caplog) -> None:
    good, bad = _corpus_with_bad_files(tmp_path / "audio")
    with caplog.at_level(logging.WARNING, logger=data_module.__name__):
        prepared = prepare_dataset(tmp_path / "audio", tiny_processor, cache_dir=tmp_path / "cache", progress=False)
    assert sorted(prepared["path"]) == sorted(str(path) for path in good)
    for path in bad.values():
        assert any(str(path) in record.getMessage() for record in caplog.records)


def test_encoding_fails_when_no_file_is_readable(tiny_processor, tmp_path) -> None:
    bad = _corpus_with_bad_files(tmp_path / "audio")[1]
    for path in (tmp_path / "audio").rglob("clip*.wav"):
        path.unlink()
    assert len(bad) == 4
    with pytest.raises(ValueError, match="None of the 4 audio files"):
        prepare_dataset(tmp_path / "audio", tiny_processor, cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory"),
        MemoryError(),
        RuntimeError("a bug"),
        ValueError("a bug that is no property of the file"),
        TypeError("a bug"),
    ],
    ids=["OutOfMemoryError", "MemoryError", "RuntimeError", "plain ValueError", "TypeError"],
)
def test_out_of_memory_during_encoding_is_not_swallowed(tiny_processor, tmp_path, monkeypatch, error) -> None:
    write_audio_folder(tmp_path / "audio", seconds=(1.0, 1.0))
    processor = copy.deepcopy(tiny_processor)

    def failing(clips, batch_size=1):
        raise error

    monkeypatch.setattr(processor.audio_tokenizer, "encode_clips", failing)
    with pytest.raises(type(error)) as caught:
        prepare_dataset(tmp_path / "audio", processor, cache_dir=tmp_path / "cache", progress=False)
    assert caught.value is error


def test_evaluation_data_with_an_unreadable_file_is_scored_without_it(tiny_processor, tmp_path, caplog) -> None:
    """`whisper-gpt evaluate` loads its data with prepare_dataset: the same skip-by-name rule applies."""
    from whisper_gpt.training.evaluation import evaluate_model

    good = write_audio_folder(tmp_path / "audio", seconds=(1.0, 1.5))
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00")
    with caplog.at_level(logging.WARNING, logger=data_module.__name__):
        dataset = prepare_dataset(tmp_path / "audio", tiny_processor, cache_dir=tmp_path / "cache", progress=False)
    assert any("broken.wav" in record.getMessage() for record in caplog.records)
    assert len(dataset) == len(good)
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config()).eval()
    metrics = evaluate_model(model, dataset, window=16, batch_size=2, progress=False)
    assert np.isfinite(metrics["nll"])


# ---- NaN/Inf in exemplars and in mel frames to render -------------------------------------------------------------


@pytest.fixture(scope="module")
def exemplar_tokenizer(tiny_processor) -> WhisperGPTAudioTokenizer:
    tokenizer = copy.deepcopy(tiny_processor.audio_tokenizer)
    fit_mel_exemplars(tokenizer, [real_like_audio(2.0, seed=5)], tiny_processor.feature_extractor)
    return tokenizer


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nan_exemplars_are_refused(exemplar_tokenizer, tiny_processor, value) -> None:
    tokenizer = copy.deepcopy(exemplar_tokenizer)
    exemplars = tokenizer.mel_exemplars.clone()
    exemplars[3, 2] = value
    with pytest.raises(ValueError, match="hold NaN or Inf values in 1 of 64 rows"):
        tokenizer.set_mel_exemplars(exemplars, tiny_processor.feature_extractor)
    torch.testing.assert_close(tokenizer.mel_exemplars, exemplar_tokenizer.mel_exemplars)  # the old ones stay


def test_nan_exemplars_in_a_saved_codec_folder_are_refused(exemplar_tokenizer, tmp_path) -> None:
    exemplar_tokenizer.save_pretrained(tmp_path)
    exemplars = np.load(tmp_path / MEL_EXEMPLARS_NAME)
    exemplars[0, 0] = np.nan
    np.save(tmp_path / MEL_EXEMPLARS_NAME, exemplars)
    with pytest.raises(ValueError, match=rf"{MEL_EXEMPLARS_NAME} in .* hold NaN or Inf values"):
        WhisperGPTAudioTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_mel_frames_are_refused_by_mel_to_audio(tiny_processor, value) -> None:
    features = tiny_processor.feature_extractor(real_like_audio(0.2), sampling_rate=24000, return_tensors="pt")
    frames = features["input_features"].clone()
    frames[0, 4, 1] = value
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        tiny_processor.feature_extractor.mel_to_audio(frames)
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        tiny_processor.mel_to_audio(frames)


def test_large_log_mel_values_render_finite_audio_by_clamping(tiny_processor) -> None:
    extractor = tiny_processor.feature_extractor
    lowest, highest = extractor.log_mel_range()
    frames = torch.tensor(extractor(real_like_audio(0.3), sampling_rate=24000)["input_features"])
    assert lowest <= float(frames.min()) and float(frames.max()) <= highest  # real audio lies inside the range
    loud = frames.clone()
    loud[0, 5:10] = 12.0  # 10 ** 44 mel power: overflowed float32 into NaN audio
    loud[0, 12] = 1e6
    loud[0, 14] = -50.0
    audio = extractor.mel_to_audio(loud, num_iterations=4)
    assert bool(torch.isfinite(audio).all())
    torch.testing.assert_close(audio, extractor.mel_to_audio(loud.clamp(lowest, highest), num_iterations=4))
    torch.testing.assert_close(
        extractor.mel_to_audio(frames, num_iterations=4),
        extractor.mel_to_audio(frames.clamp(lowest, highest), num_iterations=4),
    )  # values inside the range are rendered as they are


def test_log_mel_range_bounds_full_scale_audio(tiny_processor) -> None:
    extractor = tiny_processor.feature_extractor
    _, highest = extractor.log_mel_range()
    t = np.arange(24000) / 24000
    for clip in (np.sign(np.sin(2 * np.pi * 1000 * t)), np.ones(24000), np.sin(2 * np.pi * 3000 * t)):
        features = extractor(clip.astype(np.float32), sampling_rate=24000)["input_features"]
        assert float(np.max(features)) <= highest


# ---- tampered codec folders ---------------------------------------------------------------------------------------


def test_deleted_audio_tokenizer_config_does_not_drop_the_exemplars_silently(exemplar_tokenizer, tmp_path) -> None:
    exemplar_tokenizer.save_pretrained(tmp_path)
    assert WhisperGPTAudioTokenizer.from_pretrained(tmp_path).mel_exemplars is not None
    (tmp_path / CONFIG_NAME).unlink()
    with pytest.raises(ValueError, match=rf"holds {MEL_EXEMPLARS_NAME} but no {CONFIG_NAME}"):
        WhisperGPTAudioTokenizer.from_pretrained(tmp_path)
    # Deleting the exemplars too leaves a plain EncodecModel folder, which loads as before.
    (tmp_path / MEL_EXEMPLARS_NAME).unlink()
    assert WhisperGPTAudioTokenizer.from_pretrained(tmp_path).mel_exemplars is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("decoder_trained", "false"), ("calibrated", "true"), ("encoder_fitted_to_mel", 0), ("decoder_trained", 1)],
)
def test_decoder_trained_string_false_is_refused(exemplar_tokenizer, tmp_path, key, value) -> None:
    exemplar_tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config[key] = value
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME} in .* has {key}={value!r}; it must be true or false"):
        WhisperGPTAudioTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"{key} must be True or False"):
        WhisperGPTAudioTokenizer(exemplar_tokenizer.codec, **{key: value})


def test_null_flags_in_the_codec_config_are_still_inferred(exemplar_tokenizer, tmp_path) -> None:
    exemplar_tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config.update(calibrated=None, decoder_trained=None)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    loaded = WhisperGPTAudioTokenizer.from_pretrained(tmp_path)
    assert loaded.calibrated is True  # its codebooks at 6 kbps are non-zero


# ---- a killed prepare ---------------------------------------------------------------------------------------------


def test_killed_prepare_leaves_no_temporary_folder_behind(tiny_processor, tmp_path) -> None:
    """A prepare killed (SIGKILL) while encoding leaves its temporary folders; the next run removes them."""
    audio, cache, processor_dir = tmp_path / "audio", tmp_path / "cache", tmp_path / "processor"
    write_audio_folder(audio, seconds=(1.0, 1.0, 1.0))
    tiny_processor.save_pretrained(processor_dir)
    script = textwrap.dedent(
        f"""
        import os, signal
        from whisper_gpt import WhisperGPTProcessor
        from whisper_gpt.training.data import prepare_dataset

        processor = WhisperGPTProcessor.from_pretrained({str(processor_dir)!r})

        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        processor.audio_tokenizer.encode_clips = killed
        prepare_dataset({str(audio)!r}, processor, cache_dir={str(cache)!r}, progress=False)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    leftovers = sorted(path.name for path in cache.iterdir() if path.name.startswith("."))
    assert len(leftovers) == 2, leftovers  # the half-written dataset folder and the map's scratch folder
    # A folder of a process that still runs (this one) is another prepare at work: it must be left alone.
    running = cache / f"{data_module._scratch_prefix('.other-run')}abc123"
    running.mkdir()
    prepared = prepare_dataset(audio, tiny_processor, cache_dir=cache, progress=False)
    assert len(prepared) == 3
    assert sorted(path.name for path in cache.iterdir() if path.name.startswith(".")) == [running.name]
    assert os.path.isdir(running)
