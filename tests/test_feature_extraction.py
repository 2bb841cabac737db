"""WhisperGPTFeatureExtractor: causal framing, aligned lengths, input handling and clear errors."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from conftest import real_like_audio

from whisper_gpt import WhisperGPTFeatureExtractor
from whisper_gpt.feature_extraction_whisper_gpt import normalize_audio_batch

HOP = 320


@pytest.fixture(scope="module")
def extractor() -> WhisperGPTFeatureExtractor:
    return WhisperGPTFeatureExtractor()


@pytest.mark.parametrize("num_samples", [1, 2, 319, 320, 321, 641, 1023, 24000 + 7, 3 * 24000 + 161])
def test_one_frame_per_hop_rounding_up(extractor, num_samples: int) -> None:
    out = extractor(real_like_audio(4)[:num_samples], sampling_rate=24000, return_tensors="pt")
    frames = math.ceil(num_samples / HOP)
    assert out.input_features.shape == (1, frames, 80)
    assert out.input_features.dtype == torch.float32
    assert out.attention_mask.tolist() == [[1] * frames]


@pytest.mark.parametrize("frame", [0, 1, 7, 40])
def test_future_samples_do_not_change_past_frames(extractor, frame: int) -> None:
    audio = real_like_audio(1.0)
    changed = audio.copy()
    changed[(frame + 1) * HOP :] = np.random.default_rng(1).standard_normal(len(audio) - (frame + 1) * HOP)
    a = extractor(audio, sampling_rate=24000, return_tensors="pt").input_features[0]
    b = extractor(changed, sampling_rate=24000, return_tensors="pt").input_features[0]
    torch.testing.assert_close(a[: frame + 1], b[: frame + 1], atol=0, rtol=0)
    assert not torch.allclose(a[frame + 1], b[frame + 1])  # the very next frame does see the change


def test_centered_stft_would_leak_and_ours_does_not(extractor) -> None:
    """Guards the reason for causal framing: a centered STFT frame t already sees samples after (t+1)*hop."""
    audio = torch.from_numpy(real_like_audio(0.5))
    changed = audio.clone()
    changed[2 * HOP :] += 0.5
    centered = [
        torch.stft(x, 1024, HOP, window=torch.hann_window(1024), center=True, return_complex=True)
        for x in (audio, changed)
    ]
    assert not torch.allclose(centered[0][:, 1].abs(), centered[1][:, 1].abs())
    ours = [extractor.causal_log_mel(x[None])[0] for x in (audio, changed)]
    torch.testing.assert_close(ours[0][:2], ours[1][:2], atol=0, rtol=0)


def test_fixed_normalisation_does_not_depend_on_the_rest_of_the_clip(extractor) -> None:
    quiet = real_like_audio(1.0) * 0.01
    loud_tail = quiet.copy()
    loud_tail[12000:] *= 100  # Whisper's max-8 clamp would shift every earlier frame
    a = extractor(quiet, sampling_rate=24000).input_features[0]
    b = extractor(loud_tail, sampling_rate=24000).input_features[0]
    np.testing.assert_array_equal(np.asarray(a)[:37], np.asarray(b)[:37])


def test_batch_is_right_padded_with_mask(extractor) -> None:
    long, short = real_like_audio(1.0), real_like_audio(0.3, seed=2)
    batch = extractor([long, short], sampling_rate=24000, return_tensors="pt")
    alone = extractor(short, sampling_rate=24000, return_tensors="pt")
    assert batch.input_features.shape == (2, 75, 80)
    short_frames = math.ceil(len(short) / HOP)
    assert batch.attention_mask.sum(-1).tolist() == [75, short_frames]
    torch.testing.assert_close(batch.input_features[1, :short_frames], alone.input_features[0])
    assert (batch.input_features[1, short_frames:] == 0).all()


def test_resampling_keeps_the_frame_count_of_the_24khz_signal(extractor, caplog) -> None:
    audio_16k = real_like_audio(1.0, sampling_rate=16000)
    out = extractor(audio_16k, sampling_rate=16000, return_tensors="pt")
    assert out.input_features.shape[1] == 75


def test_resampling_without_soxr_says_what_to_do(extractor, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "soxr", None)  # `import soxr` now fails, as where it is not installed
    with pytest.raises(ImportError, match=r"pip install soxr, or pass audio recorded or resampled at 24000 Hz"):
        extractor(real_like_audio(0.2, sampling_rate=16000), sampling_rate=16000)
    at_24k = extractor(real_like_audio(0.2), sampling_rate=24000, return_tensors="pt")  # no resampler needed
    assert at_24k.input_features.shape == (1, 15, 80)


def test_stereo_is_downmixed_both_layouts(extractor) -> None:
    left, right = real_like_audio(0.5), real_like_audio(0.5, seed=3)
    mono = extractor((left + right) / 2, sampling_rate=24000, return_tensors="pt").input_features
    for stereo in (np.stack([left, right]), np.stack([left, right], axis=1)):
        torch.testing.assert_close(extractor(stereo, sampling_rate=24000, return_tensors="pt").input_features, mono)


@pytest.mark.parametrize(
    ("dtype", "scale", "offset"), [(np.int16, 32768, 0), (np.int32, 2**31, 0), (np.uint8, 128, 128)]
)
def test_integer_pcm_is_scaled_to_unit_range(dtype, scale: int, offset: int) -> None:
    audio = np.clip(real_like_audio(0.5), -0.99, 0.99)
    as_int = (np.round(audio.astype(np.float64) * scale) + offset).astype(dtype)
    (scaled,) = normalize_audio_batch(as_int, 24000, 24000)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, audio, atol=1.0 / scale)


def test_torch_tensors_and_lists_are_accepted(extractor) -> None:
    audio = real_like_audio(0.2)
    reference = extractor(audio, sampling_rate=24000, return_tensors="pt").input_features
    torch.testing.assert_close(
        extractor(torch.from_numpy(audio), sampling_rate=24000, return_tensors="pt").input_features, reference
    )
    torch.testing.assert_close(
        extractor(audio.tolist(), sampling_rate=24000, return_tensors="pt").input_features, reference
    )


def test_save_and_load_round_trip(tmp_path) -> None:
    extractor = WhisperGPTFeatureExtractor(feature_size=40, n_fft=640)
    extractor.save_pretrained(tmp_path)
    loaded = WhisperGPTFeatureExtractor.from_pretrained(tmp_path)
    audio = real_like_audio(0.3)
    np.testing.assert_array_equal(
        extractor(audio, sampling_rate=24000, return_tensors="np").input_features,
        loaded(audio, sampling_rate=24000, return_tensors="np").input_features,
    )
    assert loaded.num_mel_bins == 40


BAD_AUDIO = [
    ("missing rate", np.zeros(100, np.float32), None, "sampling_rate is required"),
    ("zero rate", np.zeros(100, np.float32), 0, "outside the plausible range"),
    ("fractional rate", np.zeros(100, np.float32), 22050.5, "whole number of Hz"),
    ("empty clip", np.zeros(0, np.float32), 24000, "empty"),
    ("empty list", [], 24000, "at least one clip"),
    ("NaN", np.array([0.0, np.nan, 0.1], np.float32), 24000, "NaN or Inf"),
    ("Inf", np.array([0.0, np.inf], np.float32), 24000, "NaN or Inf"),
    ("3-D array", np.zeros((1, 2, 100), np.float32), 24000, "shape"),
    ("ambiguous 2-D", np.zeros((4, 1000), np.float32), 24000, "list of 1-D arrays"),
    ("strings", np.array(["a", "b"]), 24000, "numeric"),
]


@pytest.mark.parametrize(("case", "audio", "rate", "message"), BAD_AUDIO, ids=[c for c, *_ in BAD_AUDIO])
def test_bad_audio_raises_clear_value_error(extractor, case, audio, rate, message) -> None:
    with pytest.raises(ValueError, match=message):
        extractor(audio, sampling_rate=rate)


def test_bad_clip_in_a_batch_is_named(extractor) -> None:
    with pytest.raises(ValueError, match=r"audio\[1\]"):
        extractor([np.zeros(10, np.float32), np.zeros(0, np.float32)], sampling_rate=24000)


def test_centered_framing_is_an_ablation_that_leaks_the_future() -> None:
    centered = WhisperGPTFeatureExtractor(framing="centered")
    audio = real_like_audio(0.5)
    changed = audio.copy()
    changed[3 * HOP :] += 0.5  # frames <= 2 must not see this
    a, b = (centered(x, sampling_rate=24000, return_tensors="pt").input_features[0] for x in (audio, changed))
    assert a.shape == (math.ceil(len(audio) / HOP), 80)  # same frame count as causal framing
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)  # frame 0's window ends at hop + 352 = 672
    assert not torch.allclose(a[1], b[1])  # frame 1's ends at 992 > 3 * hop: 352 samples of future
    causal = WhisperGPTFeatureExtractor()
    c, d = (causal(x, sampling_rate=24000, return_tensors="pt").input_features[0] for x in (audio, changed))
    torch.testing.assert_close(c[:3], d[:3], atol=0, rtol=0)
    round_trip = WhisperGPTFeatureExtractor.from_dict(centered.to_dict())
    assert round_trip.framing == "centered"
    with pytest.raises(ValueError, match="framing"):
        WhisperGPTFeatureExtractor(framing="future")
