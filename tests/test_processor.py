"""WhisperGPTProcessor: aligned codes and mel frames, decoding, save/load, geometry checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, real_like_audio, tiny_config
from transformers import AutoProcessor, EncodecModel
from transformers.utils import PaddingStrategy

from whisper_gpt import (
    WhisperGPTAudioTokenizer,
    WhisperGPTFeatureExtractor,
    WhisperGPTForCausalLM,
    WhisperGPTProcessor,
    small_encodec_config,
)


@pytest.mark.parametrize("num_samples", [1, 319, 320, 321, 24000 + 7, 2 * 24000 + 333])
def test_codes_and_features_are_aligned(tiny_processor, num_samples: int) -> None:
    batch = tiny_processor(audio=real_like_audio(3)[:num_samples], sampling_rate=24000, return_tensors="pt")
    frames = math.ceil(num_samples / 320)
    assert (
        batch.input_ids.shape == (1, tiny_processor.audio_tokenizer.num_codebooks, frames)
        and batch.input_ids.dtype == torch.int64
    )
    assert batch.input_features.shape == (1, frames, TINY_MEL_BINS)
    assert batch.attention_mask.shape == (1, frames)
    assert int(batch.input_ids.max()) < TINY_CODEBOOK_SIZE


def test_batch_of_different_lengths_matches_items_alone(tiny_processor) -> None:
    clips = [real_like_audio(1.0), real_like_audio(0.4, seed=5), real_like_audio(0.05, seed=6)]
    batch = tiny_processor(audio=clips, sampling_rate=24000)
    for index, clip in enumerate(clips):
        alone = tiny_processor(audio=clip, sampling_rate=24000)
        frames = alone.input_ids.shape[-1]
        assert batch.attention_mask[index].sum() == frames
        torch.testing.assert_close(batch.input_ids[index, :, :frames], alone.input_ids[0])
        torch.testing.assert_close(batch.input_features[index, :frames], alone.input_features[0])
        assert (batch.input_ids[index, :, frames:] == 0).all()


def test_codes_are_not_degenerate_after_calibration(tiny_processor) -> None:
    codes = tiny_processor(audio=real_like_audio(2.0, seed=9), sampling_rate=24000).input_ids
    assert len(torch.unique(codes[0, 0])) > 8


def test_one_processor_output_serves_k1_and_k8_models(tiny_processor) -> None:
    batch = tiny_processor(audio=real_like_audio(0.5), sampling_rate=24000)
    for num_codebooks in (1, 8):
        model = WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)).eval()
        model.validate_audio_tokenizer(tiny_processor.audio_tokenizer)
        out = model(**batch, labels=batch.input_ids)
        assert out.logits.shape == (1, num_codebooks, batch.input_ids.shape[-1], TINY_CODEBOOK_SIZE)
        assert torch.isfinite(out.loss)


def test_batch_decode_returns_24khz_float32_waveforms(tiny_processor) -> None:
    batch = tiny_processor(audio=[real_like_audio(0.5), real_like_audio(0.2, seed=4)], sampling_rate=24000)
    waves = tiny_processor.batch_decode(batch.input_ids, attention_mask=batch.attention_mask)
    assert [w.dtype for w in waves] == [np.float32, np.float32]
    assert [len(w) for w in waves] == [frames * 320 for frames in batch.attention_mask.sum(-1).tolist()]
    assert tiny_processor.decode(batch.input_ids[0, :1]).shape == (batch.input_ids.shape[-1] * 320,)


def test_save_and_load_keeps_the_calibrated_codec(tiny_processor, tmp_path) -> None:
    tiny_processor.save_pretrained(tmp_path)
    assert (tmp_path / "audio_tokenizer" / "model.safetensors").exists()
    audio = real_like_audio(1.0, seed=11)
    expected = tiny_processor(audio=audio, sampling_rate=24000)
    for loader in (WhisperGPTProcessor, AutoProcessor):
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is WhisperGPTProcessor
        got = loaded(audio=audio, sampling_rate=24000)
        for key in ("input_ids", "input_features", "attention_mask"):
            torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)
        assert loaded.audio_tokenizer.calibrated


def test_loading_a_folder_without_codec_says_how_to_fix(tmp_path) -> None:
    WhisperGPTFeatureExtractor().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="audio_tokenizer"):
        WhisperGPTProcessor.from_pretrained(tmp_path)


def test_feature_extractor_and_codec_geometry_must_match(tiny_processor) -> None:
    with pytest.raises(ValueError, match="hop_length"):
        WhisperGPTProcessor(WhisperGPTFeatureExtractor(hop_length=240), tiny_processor.audio_tokenizer)
    with pytest.raises(ValueError, match="sampling_rate"):
        WhisperGPTProcessor(WhisperGPTFeatureExtractor(sampling_rate=16000), tiny_processor.audio_tokenizer)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"codebook_size": 128}, "codebook_size"),
        ({"hop_length": 240}, "hop_length"),
        ({"num_codebooks": 16}, "bandwidth"),
    ],
)
def test_model_refuses_a_codec_it_was_not_trained_with(tiny_processor, overrides: dict, message: str) -> None:
    model = WhisperGPTForCausalLM(tiny_config(**overrides))
    with pytest.raises(ValueError, match=message):
        model.validate_audio_tokenizer(tiny_processor.audio_tokenizer)


def test_bad_audio_is_refused_by_the_processor(tiny_processor) -> None:
    with pytest.raises(ValueError, match="sampling_rate is required"):
        tiny_processor(audio=real_like_audio(0.1))
    with pytest.raises(ValueError, match="NaN"):
        tiny_processor(audio=np.full(100, np.nan, np.float32), sampling_rate=24000)
    with pytest.raises(ValueError, match="Pass the audio"):
        tiny_processor(sampling_rate=24000)


def test_processor_needs_a_whisper_gpt_audio_tokenizer() -> None:
    with pytest.raises(ValueError, match="WhisperGPTAudioTokenizer"):
        WhisperGPTProcessor(WhisperGPTFeatureExtractor(), EncodecModel(small_encodec_config()))
    tokenizer = WhisperGPTAudioTokenizer(EncodecModel(small_encodec_config()))
    assert not tokenizer.calibrated


def test_datasets_audio_dicts_are_accepted_with_their_own_rates(tiny_processor) -> None:
    clip, other = real_like_audio(0.3), real_like_audio(0.2, sampling_rate=16000, seed=3)
    expected = [tiny_processor(audio=clip, sampling_rate=24000), tiny_processor(audio=other, sampling_rate=16000)]
    single = tiny_processor(audio={"array": clip, "sampling_rate": 24000, "path": "ignored.wav"})
    torch.testing.assert_close(single.input_ids, expected[0].input_ids, atol=0, rtol=0)
    batch = tiny_processor(audio=[{"array": clip, "sampling_rate": 24000}, {"raw": other, "sampling_rate": 16000}])
    for index, alone in enumerate(expected):
        frames = alone.input_ids.shape[-1]
        torch.testing.assert_close(batch.input_ids[index, :, :frames], alone.input_ids[0], atol=0, rtol=0)
        torch.testing.assert_close(batch.input_features[index, :frames], alone.input_features[0], atol=0, rtol=0)
    extracted = tiny_processor.feature_extractor({"array": clip, "sampling_rate": 24000}, return_tensors="pt")
    torch.testing.assert_close(extracted.input_features, expected[0].input_features, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"audio\[1\] is at 16000 Hz \(its dict says so\) but sampling_rate=24000"):
        tiny_processor(audio=[clip, {"array": other, "sampling_rate": 16000}], sampling_rate=24000)
    with pytest.raises(ValueError, match=r'audio\[0\] is a dict with keys \[\'audio\'\]; an audio dict needs "array"'):
        tiny_processor(audio={"audio": clip})
    with pytest.raises(ValueError, match='"sampling_rate" of audio'):
        tiny_processor(audio={"array": clip, "sampling_rate": "24000"})


def test_padding_truncation_and_max_length_count_samples(tiny_processor) -> None:
    long, short = real_like_audio(0.5, seed=1), real_like_audio(0.1, seed=2)  # 12000 and 2400 samples
    longest = tiny_processor(audio=[long, short], sampling_rate=24000)
    for padding in (True, "longest", PaddingStrategy.LONGEST):
        padded = tiny_processor(audio=[long, short], sampling_rate=24000, padding=padding)
        torch.testing.assert_close(padded.input_ids, longest.input_ids, atol=0, rtol=0)

    # max_length 16001 samples: ceil(16001 / 320) = 51 frames, the real ones as without padding.
    padded = tiny_processor(audio=[long, short], sampling_rate=24000, padding="max_length", max_length=16001)
    assert padded.input_ids.shape[-1] == padded.input_features.shape[1] == 51
    assert padded.attention_mask.sum(-1).tolist() == [38, 8]
    torch.testing.assert_close(padded.input_ids[:, :, :38], longest.input_ids, atol=0, rtol=0)
    torch.testing.assert_close(padded.input_features[:, :38], longest.input_features, atol=0, rtol=0)
    assert (padded.input_ids[:, :, 38:] == 0).all() and (padded.input_features[:, 38:] == 0).all()

    # Truncation keeps the first max_length samples: the same as cutting the clip first.
    cut = tiny_processor(audio=[long, short], sampling_rate=24000, truncation=True, max_length=3000)
    alone = tiny_processor(audio=[long[:3000], short], sampling_rate=24000)
    for key in ("input_ids", "input_features", "attention_mask"):
        torch.testing.assert_close(cut[key], alone[key], atol=0, rtol=0)
    assert cut.input_ids.shape[-1] == 10  # ceil(3000 / 320)
    both = tiny_processor(
        audio=[long, short], sampling_rate=24000, truncation=True, max_length=3000, padding="max_length"
    )
    assert both.input_ids.shape[-1] == 10 and both.attention_mask.sum(-1).tolist() == [10, 8]

    for padding in (False, "do_not_pad"):
        ragged = tiny_processor(audio=[long, short], sampling_rate=24000, padding=padding, return_tensors=None)
        codebooks = tiny_processor.audio_tokenizer.num_codebooks
        assert [codes.shape for codes in ragged["input_ids"]] == [(codebooks, 38), (codebooks, 8)]
        assert [features.shape[0] for features in ragged["input_features"]] == [38, 8]
        np.testing.assert_array_equal(ragged["input_ids"][1], alone.input_ids[1, :, :8].numpy())
        assert [mask.tolist() for mask in ragged["attention_mask"]] == [[1] * 38, [1] * 8]
    unpadded = tiny_processor(audio=long, sampling_rate=24000, padding=False)
    torch.testing.assert_close(unpadded.input_ids, longest.input_ids[:1], atol=0, rtol=0)

    no_mask = tiny_processor(audio=[long, short], sampling_rate=24000, return_attention_mask=False)
    assert "attention_mask" not in no_mask and no_mask.input_ids.shape == longest.input_ids.shape
    features_only = tiny_processor.feature_extractor(
        [long, short], sampling_rate=24000, padding="max_length", max_length=16001, return_tensors="pt"
    )
    torch.testing.assert_close(features_only.input_features, padded.input_features, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"padding": "max_length"}, 'padding="max_length" needs max_length'),
        ({"truncation": True}, "truncation=True needs max_length"),
        ({"max_length": 4000}, 'max_length=4000 is only used with padding="max_length" or truncation=True'),
        ({"padding": "max_length", "max_length": 4000}, r"audio\[0\] has 12000 samples, more than max_length=4000"),
        ({"padding": "maximum"}, "padding must be True, False"),
        ({"padding": "max_length", "max_length": 0}, "max_length must be a positive whole number of samples"),
        ({"truncation": True, "max_length": 100.5}, "max_length must be a positive whole number"),
        ({"truncation": "longest_first", "max_length": 100}, "truncation must be True or False"),
        ({"padding": False}, "Clips of different lengths cannot be stacked"),
    ],
)
def test_length_options_that_cannot_be_honoured_are_refused(tiny_processor, options: dict, message: str) -> None:
    clips = [real_like_audio(0.5, seed=1), real_like_audio(0.1, seed=2)]
    with pytest.raises(ValueError, match=message):
        tiny_processor(audio=clips, sampling_rate=24000, **options)
    with pytest.raises(ValueError, match=message):
        tiny_processor.feature_extractor(clips, sampling_rate=24000, return_tensors="np", **options)
    with pytest.raises(TypeError, match="pad_to_multiple_of"):
        tiny_processor(audio=clips, sampling_rate=24000, pad_to_multiple_of=8)
