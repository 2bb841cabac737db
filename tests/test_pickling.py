"""The audio tokenizer pickles (so datasets can fingerprint the functions that use it and multiprocess map works)."""

import pickle

import torch
from conftest import build_tiny_processor, real_like_audio
from datasets.fingerprint import Hasher


def test_tokenizer_round_trips_through_pickle():
    tokenizer = build_tiny_processor().audio_tokenizer
    restored = pickle.loads(pickle.dumps(tokenizer))
    audio = real_like_audio(0.5)
    codes = tokenizer.encode(audio, tokenizer.sampling_rate)
    assert torch.equal(restored.encode(audio, tokenizer.sampling_rate), codes)
    assert torch.equal(restored.decode(codes), tokenizer.decode(codes))
    assert (restored.calibrated, restored.bandwidth) == (tokenizer.calibrated, tokenizer.bandwidth)
    assert restored.mel_exemplars is None or torch.equal(restored.mel_exemplars, tokenizer.mel_exemplars)


def test_equal_tokenizers_hash_equal_and_different_weights_do_not():
    first, second = build_tiny_processor().audio_tokenizer, build_tiny_processor().audio_tokenizer
    assert Hasher.hash(first) == Hasher.hash(second)
    with torch.no_grad():
        next(second.codec.decoder.parameters()).add_(1.0)
    assert Hasher.hash(first) != Hasher.hash(second)
