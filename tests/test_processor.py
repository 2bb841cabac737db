"""WhisperGPTProcessor: aligned codes and mel frames, decoding, save/load, geometry checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS, real_like_audio, tiny_config
from transformers import AutoProcessor, EncodecModel

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
