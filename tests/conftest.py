"""Shared tiny models and audio for the test suite. Everything is built locally: no downloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whisper_gpt import WhisperGPTConfig

TINY_CODEBOOK_SIZE = 64
TINY_MEL_BINS = 16


def tiny_config(**overrides) -> WhisperGPTConfig:
    """A few-thousand-parameter Whisper-GPT with the real 24 kHz / 320-hop geometry."""
    values = {
        "codebook_size": TINY_CODEBOOK_SIZE,
        "num_mel_bins": TINY_MEL_BINS,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "spectrogram_hidden_size": 16,
        "spectrogram_num_heads": 2,
        "spectrogram_layers": 2,
        "depth_hidden_size": 16,
        "depth_num_heads": 2,
        "depth_num_layers": 1,
        "depth_intermediate_size": 32,
        "max_position_embeddings": 128,
    }
    values.update(overrides)
    return WhisperGPTConfig(**values)


def real_like_audio(seconds: float, sampling_rate: int = 24000, seed: int = 0) -> np.ndarray:
    """Speech/music-like test signal: gliding harmonic tones, formant-ish pulse trains, noise bursts."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sampling_rate)
    t = np.arange(n) / sampling_rate
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.7 * t) + 40 * rng.standard_normal() * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    voiced = sum(np.sin(h * phase) / h for h in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)))
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.1 * t) > 0.6)
    melody = np.sin(2 * np.pi * np.repeat(rng.choice([220, 262, 330, 392, 440], size=n // 4800 + 1), 4800)[:n] * t)
    return (0.3 * voiced * envelope + 0.05 * noise + 0.2 * melody).astype(np.float32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def build_tiny_processor():
    """A processor around a tiny calibrated EnCodec (64 codes per codebook) and a 16-bin mel front end."""
    from transformers import EncodecModel

    from whisper_gpt import (
        WhisperGPTAudioTokenizer,
        WhisperGPTFeatureExtractor,
        WhisperGPTProcessor,
        small_encodec_config,
    )
    from whisper_gpt.training.codec_fitting import calibrate

    torch.manual_seed(0)
    codec = EncodecModel(small_encodec_config(codebook_size=TINY_CODEBOOK_SIZE))
    tokenizer = WhisperGPTAudioTokenizer(codec, bandwidth=6.0)
    calibrate(tokenizer, [real_like_audio(6.0, seed=seed) for seed in range(2)], sampling_rate=24000, iterations=10)
    return WhisperGPTProcessor(WhisperGPTFeatureExtractor(feature_size=TINY_MEL_BINS), tokenizer)


@pytest.fixture(scope="session")
def tiny_processor():
    return build_tiny_processor()


def pytest_configure(config) -> None:
    # Two torch threads on two busy cores run several times slower than one (they spin-wait); CI has 2 cores.
    torch.set_num_threads(1)
