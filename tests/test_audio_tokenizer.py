"""Tests for WhisperGPTAudioTokenizer, on tiny seeded EnCodec models built locally (no downloads)."""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import EncodecModel

from whisper_gpt.tokenization_whisper_gpt import WhisperGPTAudioTokenizer, small_encodec_config
from whisper_gpt.training.codec_fitting import calibrate, fit_encoder_to_mel, initialize_encoder

SR = 24_000
HOP = 320
# A 64-code codebook calibrates in a fraction of a second; at 6 kbps it gives 13 codebooks (6 bits each).
SMALL_CODEBOOK = 64
SMALL_NUM_CODEBOOKS = 13
# Codebook-0 usage entropy on the held-out clip (seed 100) after calibration measured 4.39 bits (of
# log2(64) = 6; 2.8-4.4 over other seeds); before calibration it is exactly 0.
MIN_ENTROPY_BITS = 3.0
# After calibrate's encoder initialisation the embeddings have unit std. Other batch or chunk shapes change
# float rounding (measured <= 4.5e-6), which flips a few near-tied codes, so compare embeddings instead: a clip
# reading the audio after its end would change its last frame by ~1.6.
EMBEDDING_ATOL = 2e-5
VOWEL_FORMANTS_HZ = [
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (660, 1720, 2410),
]


def _tone(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Harmonic tone whose pitch glides between notes, with 5.5 Hz vibrato and plucked-note envelopes."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 110.0 * 2 ** (rng.uniform(0.0, 2.5) + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t))
    f0 = f0 * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 9))
    note = rng.uniform(0.15, 0.4)
    return tone * np.exp(-3.0 * (t % note) / note)


def _vowels(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Speech-like: a jittered glottal pulse train shaped by the formants of a few vowels."""
    n = int(seconds * SR)
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * np.arange(n) / SR)) * rng.uniform(0.97, 1.03, n)
    pulses = np.diff(np.floor(np.cumsum(f0) / SR), prepend=0.0)
    pieces = []
    for part in np.array_split(pulses, 3):
        frequencies = np.fft.rfftfreq(part.size, 1 / SR)
        shape = sum(
            np.exp(-0.5 * ((frequencies - formant) / (60 + 0.05 * formant)) ** 2) / (1 + index)
            for index, formant in enumerate(VOWEL_FORMANTS_HZ[rng.integers(len(VOWEL_FORMANTS_HZ))])
        )
        pieces.append(np.fft.irfft(np.fft.rfft(part) * shape, n=part.size))
    return np.concatenate(pieces)


def _noise_bursts(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Bright noise bursts of 30-150 ms with sharp onsets."""
    n = int(seconds * SR)
    noise = np.diff(rng.standard_normal(n + 1))
    gate = np.zeros(n)
    for start in rng.integers(0, n, size=max(1, int(4 * seconds))):
        length = int(rng.uniform(0.03, 0.15) * SR)
        gate[start : start + length] = np.exp(-np.arange(min(length, n - start)) / (0.3 * length))
    return noise * gate


def synthetic_audio(seconds: float, seed: int) -> np.ndarray:
    """float32 mono audio at 24 kHz: tones, vowels and noise bursts in random order with short pauses."""
    rng = np.random.default_rng(seed)
    makers = [_tone, _vowels, _noise_bursts]
    pieces, total = [], 0.0
    while total < seconds:
        length = rng.uniform(0.4, 1.0)
        piece = makers[rng.integers(len(makers))](length, rng)
        pieces += [
            rng.uniform(0.1, 0.5) * piece / np.abs(piece).max(),
            np.zeros(int(rng.uniform(0.0, 0.1) * SR)),
        ]
        total += length
    return np.concatenate(pieces)[: int(seconds * SR)].astype(np.float32)


def usage_entropy_bits(codes: torch.Tensor) -> float:
    counts = torch.bincount(codes.flatten()).double()
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * probabilities.log2()).sum())


def build_tokenizer(seed: int = 0, **config_overrides) -> WhisperGPTAudioTokenizer:
    torch.manual_seed(seed)
    return WhisperGPTAudioTokenizer(EncodecModel(small_encodec_config(**config_overrides)))


@pytest.fixture(scope="module")
def calibration():
    """A small-codebook tokenizer: its codes before calibration, then calibrated on 16 s of audio."""
    tokenizer = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    held_out = synthetic_audio(6.0, seed=100)
    codes_before = tokenizer.encode(held_out, SR)
    clips = [synthetic_audio(4.0, seed) for seed in range(4)]
    stats = calibrate(tokenizer, clips, SR)
    return tokenizer, stats, codes_before, held_out


@pytest.fixture(scope="module")
def tokenizer(calibration) -> WhisperGPTAudioTokenizer:
    return calibration[0]


def test_small_config_has_the_24khz_geometry():
    tokenizer = build_tokenizer()
    assert tokenizer.codec_geometry() == {
        "sampling_rate": 24_000,
        "hop_length": 320,
        "num_codebooks": 8,
        "codebook_size": 1024,
    }
    assert tokenizer.codec.config.use_causal_conv
    assert list(tokenizer.codec.config.target_bandwidths) == [1.5, 3.0, 6.0, 12.0, 24.0]
    assert tokenizer.encode(synthetic_audio(0.5, seed=1), SR).shape == (1, 8, math.ceil(0.5 * SR / HOP))
    # A fresh codec has all-zero codebooks and a random decoder.
    assert not tokenizer.calibrated
    assert not tokenizer.decoder_trained
    assert not tokenizer.codec.training


@pytest.mark.parametrize("num_samples", [1, 319, 320, 321, 3 * SR + 7])
def test_one_frame_per_hop_rounded_up(tokenizer, num_samples):
    audio = synthetic_audio(num_samples / SR + 0.1, seed=2)[:num_samples]
    codes = tokenizer.encode(audio, SR)
    assert codes.shape == (1, SMALL_NUM_CODEBOOKS, math.ceil(num_samples / HOP))
    assert codes.dtype == torch.long
    [clip_codes] = tokenizer.encode_clips([audio])
    assert torch.equal(clip_codes, codes[0])


@pytest.mark.parametrize("frame", [0, 1, 2, 3, 5, 8, 30, 120])
def test_codes_do_not_see_the_future(tokenizer, frame):
    audio = synthetic_audio(2.0, seed=3)
    changed = audio.copy()
    changed[(frame + 1) * HOP :] = synthetic_audio(2.0, seed=4)[(frame + 1) * HOP :]
    codes, changed_codes = tokenizer.encode([audio, changed], SR)
    assert torch.equal(codes[:, : frame + 1], changed_codes[:, : frame + 1])
    assert not torch.equal(codes[:, frame + 1 :], changed_codes[:, frame + 1 :])


def test_bare_encodec_looks_ahead_at_the_start(tokenizer):
    """Why the tokenizer encodes behind silence: EnCodec's reflect padding reads ahead near the start."""
    audio = torch.from_numpy(synthetic_audio(1.0, seed=3))[None, None]
    changed = audio.clone()
    changed[..., HOP:] = torch.from_numpy(synthetic_audio(1.0, seed=4))[HOP:]
    with torch.inference_mode():
        first = tokenizer.codec.encoder(audio)[..., 0]
        changed_first = tokenizer.codec.encoder(changed)[..., 0]
    assert not torch.equal(first, changed_first)


def test_padded_batch_matches_each_clip_alone(tokenizer):
    clips = [synthetic_audio(seconds, seed) for seed, seconds in enumerate([1.5, 0.013, 2.0, 0.7])]
    batch = tokenizer.encode(clips, SR)
    assert batch.shape == (4, SMALL_NUM_CODEBOOKS, math.ceil(2.0 * SR / HOP))
    for index, clip in enumerate(clips):
        alone = tokenizer.encode(clip, SR)[0]
        frames = math.ceil(clip.size / HOP)
        assert torch.equal(batch[index, :, :frames], alone)
        assert not batch[index, :, frames:].any()


def test_batched_codec_passes_match_single_clips_up_to_rounding(tokenizer):
    clips = [synthetic_audio(seconds, seed) for seed, seconds in enumerate([1.5, 0.013, 2.0, 0.7])]
    with torch.inference_mode():
        batched = list(tokenizer.embed_clips(clips, batch_size=4))
        alone = list(tokenizer.embed_clips(clips, batch_size=1))
    for together, single in zip(batched, alone, strict=True):
        torch.testing.assert_close(together, single, rtol=0.0, atol=EMBEDDING_ATOL)
    batched_codes = tokenizer.encode(clips, SR, batch_size=4)
    assert batched_codes.shape == (4, SMALL_NUM_CODEBOOKS, math.ceil(2.0 * SR / HOP))
    assert not batched_codes[1, :, 1:].any()
    # Measured 97-99% (see EMBEDDING_ATOL for why not 100%).
    assert (batched_codes == tokenizer.encode(clips, SR)).float().mean() > 0.9


def test_long_audio_in_chunks_matches_one_pass(tokenizer):
    audio = synthetic_audio(12.0, seed=5)
    chunked = WhisperGPTAudioTokenizer(tokenizer.codec, max_seconds_per_pass=0.5)
    with torch.inference_mode():
        [whole] = tokenizer.embed_clips([audio], batch_size=1)
        [pieces] = chunked.embed_clips([audio], batch_size=1)
    torch.testing.assert_close(pieces, whole, rtol=0.0, atol=EMBEDDING_ATOL)
    codes = tokenizer.encode(audio, SR)
    torch.testing.assert_close(chunked.decode(codes), tokenizer.decode(codes), rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("num_codes", [1, 8])
def test_decode_shapes(tokenizer, num_codes):
    codes = tokenizer.encode([synthetic_audio(1.0, seed=6), synthetic_audio(0.4, seed=7)], SR)
    audio = tokenizer.decode(codes[:, :num_codes])
    assert audio.shape == (2, codes.shape[-1] * HOP)
    assert audio.dtype == torch.float32
    assert torch.isfinite(audio).all()
    assert tokenizer.decode(codes[0, :num_codes]).shape == (1, codes.shape[-1] * HOP)
    assert tokenizer.decode(codes[0, :num_codes].numpy()).shape == (1, codes.shape[-1] * HOP)


@pytest.mark.parametrize("lstm_layers", [1, 2])
def test_streaming_decoder_equals_decoding_all_codes(lstm_layers):
    tokenizer = build_tokenizer(num_lstm_layers=lstm_layers, hidden_size=48)
    with torch.no_grad():  # codebooks that make every code sound different (a fresh codec's are all zero)
        for layer in tokenizer.codec.quantizer.layers:
            layer.codebook.embed.normal_(generator=torch.Generator().manual_seed(7))
    codes = torch.randint(0, 1024, (2, 8, 40), generator=torch.Generator().manual_seed(lstm_layers))
    full = tokenizer.decode(codes)
    assert not torch.allclose(full, tokenizer.decode(torch.zeros_like(codes)), atol=1e-3)
    stream = tokenizer.streaming_decoder()
    pieces = [stream.start(codes[..., :12])]
    pieces += [stream.step(codes[..., t : t + 1]) for t in range(12, 20)]  # one frame per step
    pieces += [stream.step(codes[..., 20:31]), stream.step(codes[..., 31:])]  # several frames per step
    assert [piece.shape[-1] for piece in pieces] == [12 * HOP] + [HOP] * 8 + [11 * HOP, 9 * HOP]
    scale = float(full.abs().max())
    torch.testing.assert_close(torch.cat(pieces, dim=-1), full, rtol=0.0, atol=1e-6 * scale)
    # Starting from the last frames only: the convolutions see all they need, the LSTM starts later.
    windowed = stream.start(codes[..., :30], context_frames=5)
    assert windowed.shape == (2, 5 * HOP)
    assert torch.isfinite(windowed).all()
    assert stream.step(codes[..., :0]).shape == (2, 0)
    with pytest.raises(ValueError, match="start"):
        tokenizer.streaming_decoder().step(codes[..., :1])
    with pytest.raises(ValueError, match="batch size 2"):
        stream.step(codes[:1, :, :1])
    with pytest.raises(ValueError, match="at least 1"):
        stream.start(codes, context_frames=0)
    # Streams started apart (prompts of different lengths) go on as one batch.
    first, second = tokenizer.streaming_decoder(), tokenizer.streaming_decoder()
    first.start(codes[:1, :, :12]), second.start(codes[1:, :, 5:12])
    joined = first.concatenate([first, second]).step(codes[..., 12:15])
    torch.testing.assert_close(joined[:1], full[:1, 12 * HOP : 15 * HOP], rtol=0.0, atol=1e-6 * scale)
    torch.testing.assert_close(
        joined[1:], tokenizer.decode(codes[1:, :, 5:15])[:, 7 * HOP :], rtol=0.0, atol=1e-6 * scale
    )
    with pytest.raises(ValueError, match="codes range"):
        stream.step(torch.full((2, 8, 1), 1024))


@pytest.mark.parametrize("frame", [0, 2, 5, 40])
def test_decoded_audio_does_not_see_later_codes(tokenizer, frame):
    codes = tokenizer.encode(synthetic_audio(1.0, seed=8), SR)
    changed = codes.clone()
    changed[..., frame + 1 :] = torch.randint(0, SMALL_CODEBOOK, changed[..., frame + 1 :].shape)
    audio, changed_audio = tokenizer.decode(codes), tokenizer.decode(changed)
    end = (frame + 1) * HOP
    assert torch.equal(audio[:, :end], changed_audio[:, :end])
    assert not torch.equal(audio[:, end:], changed_audio[:, end:])


def test_calibration_turns_constant_codes_into_informative_ones(calibration):
    tokenizer, stats, codes_before, held_out = calibration
    assert not codes_before.any()
    assert usage_entropy_bits(codes_before[0, 0]) == 0.0
    assert tokenizer.calibrated
    codes = tokenizer.encode(held_out, SR)[0]
    assert usage_entropy_bits(codes[0]) > MIN_ENTROPY_BITS
    assert all(usage_entropy_bits(codes[k]) > MIN_ENTROPY_BITS for k in range(SMALL_NUM_CODEBOOKS))
    assert (codes[0, 1:] != codes[0, :-1]).float().mean() > 0.5
    assert stats["frames"] == stats["frames_seen"] == 4 * math.ceil(4.0 * SR / HOP)
    assert len(stats["entropy_bits"]) == SMALL_NUM_CODEBOOKS
    assert min(stats["entropy_bits"]) > MIN_ENTROPY_BITS
    # Each codebook quantizes what the previous ones left: the residual shrinks layer after layer.
    residual_energy = stats["residual_energy"]
    assert all(later < earlier for earlier, later in itertools.pairwise(residual_energy))


def test_calibration_writes_consistent_codebook_buffers(calibration):
    tokenizer, stats, _, _ = calibration
    layers = tokenizer.codec.quantizer.layers
    for layer in layers[:SMALL_NUM_CODEBOOKS]:
        codebook = layer.codebook
        assert torch.unique(codebook.embed, dim=0).shape[0] > SMALL_CODEBOOK // 2
        assert int(codebook.cluster_size.sum()) == stats["frames"]
        torch.testing.assert_close(codebook.embed_avg, codebook.embed * codebook.cluster_size[:, None])
        assert codebook.inited.item() == 1.0
    # Codebooks beyond the bandwidth are left alone by default.
    assert not layers[SMALL_NUM_CODEBOOKS].codebook.embed.any()


def test_calibration_is_reproducible(calibration):
    tokenizer = calibration[0]
    clips = [synthetic_audio(4.0, seed) for seed in range(4)]
    again = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    calibrate(again, clips, SR)
    for ours, theirs in zip(tokenizer.codec.quantizer.layers, again.codec.quantizer.layers, strict=True):
        assert torch.equal(ours.codebook.embed, theirs.codebook.embed)


def test_calibration_checks_the_amount_of_audio():
    tokenizer = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    with pytest.warns(UserWarning, match="k-means wants at least"):
        calibrate(tokenizer, [synthetic_audio(3.0, seed=9)], SR, num_codebooks=1)
    with pytest.raises(ValueError, match="Pass more audio"):
        calibrate(tokenizer, synthetic_audio(0.5, seed=9), SR)


def test_save_and_load_keep_codebooks_codes_and_flags(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["audio_tokenizer_config.json", "config.json", "model.safetensors"]
    settings = json.loads((tmp_path / "audio_tokenizer_config.json").read_text())
    assert settings["calibrated"] is True
    assert settings["decoder_trained"] is False
    assert settings["bandwidth"] == 6.0
    saved = load_file(tmp_path / "model.safetensors")
    for name in ("embed", "embed_avg", "cluster_size", "inited"):
        assert f"quantizer.layers.0.codebook.{name}" in saved

    loaded = WhisperGPTAudioTokenizer.from_pretrained(tmp_path)
    assert loaded.calibrated and not loaded.decoder_trained
    assert loaded.bandwidth == 6.0
    ours, theirs = tokenizer.codec.state_dict(), loaded.codec.state_dict()
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name
    audio = synthetic_audio(2.0, seed=10)
    assert torch.equal(loaded.encode(audio, SR), tokenizer.encode(audio, SR))
    assert WhisperGPTAudioTokenizer.from_pretrained(tmp_path, bandwidth=3.0).num_codebooks == 6


def test_load_a_plain_encodec_folder(tokenizer, tmp_path):
    tokenizer.codec.save_pretrained(tmp_path / "calibrated")
    loaded = WhisperGPTAudioTokenizer.from_pretrained(tmp_path / "calibrated")
    assert loaded.bandwidth == 6.0
    assert loaded.calibrated
    audio = synthetic_audio(1.0, seed=11)
    assert torch.equal(loaded.encode(audio, SR), tokenizer.encode(audio, SR))

    build_tokenizer().codec.save_pretrained(tmp_path / "fresh")
    fresh = WhisperGPTAudioTokenizer.from_pretrained(tmp_path / "fresh")
    assert not fresh.calibrated and not fresh.decoder_trained


def test_encode_rejects_bad_audio(tokenizer):
    with pytest.raises(ValueError, match="sampling_rate is required"):
        tokenizer.encode(synthetic_audio(0.1, seed=12), None)
    with pytest.raises(ValueError, match="1-D mono clips"):
        tokenizer.encode_clips([np.zeros((2, 100), dtype=np.float32)])
    with pytest.raises(ValueError, match="batch_size"):
        tokenizer.encode_clips([np.zeros(100, dtype=np.float32)], batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        next(tokenizer.embed_clips([np.zeros(100, dtype=np.float32)], batch_size=0))


def test_decode_rejects_bad_codes(tokenizer):
    codes = torch.zeros(1, 2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="valid codes are 0 to 63"):
        tokenizer.decode(codes - 1)
    with pytest.raises(ValueError, match="valid codes are 0 to 63"):
        tokenizer.decode(codes + SMALL_CODEBOOK)
    with pytest.raises(ValueError, match="integer codes"):
        tokenizer.decode(codes.float())
    with pytest.raises(ValueError, match="decodes 1 to 13"):
        tokenizer.decode(torch.zeros(1, SMALL_NUM_CODEBOOKS + 1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected \(B, K, T\)"):
        tokenizer.decode(torch.zeros(5, dtype=torch.long))


def test_constructor_rejects_unsuitable_codecs():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="not causal"):
        WhisperGPTAudioTokenizer(EncodecModel(small_encodec_config(use_causal_conv=False)))
    codec = EncodecModel(small_encodec_config())
    with pytest.raises(ValueError, match=r"choose one of \[1.5, 3.0, 6.0, 12.0, 24.0\]"):
        WhisperGPTAudioTokenizer(codec, bandwidth=5.0)
    with pytest.raises(ValueError, match="statistics of future audio"):
        WhisperGPTAudioTokenizer(EncodecModel(small_encodec_config(normalize=True)))


def test_repr_and_to(tokenizer):
    assert "num_codebooks=13" in repr(tokenizer) and "calibrated=True" in repr(tokenizer)
    assert tokenizer.to("cpu") is tokenizer
    assert tokenizer.device.type == "cpu"


def test_fresh_codec_encoder_is_initialised_from_data_before_kmeans():
    fresh = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    stats = calibrate(fresh, [synthetic_audio(4.0, seed) for seed in range(3)], SR, iterations=3)
    # A random encoder's output is mostly its bias offset; after initialisation it varies with the input.
    assert stats["signal_to_offset_before"] < 0.2
    assert stats["signal_to_offset_after"] > 10 * stats["signal_to_offset_before"]
    convolutions = [m.conv for m in fresh.codec.encoder.modules() if hasattr(m, "conv")]
    assert all(not conv.bias.any() for conv in convolutions)
    again = calibrate(fresh, [synthetic_audio(4.0, 7)], SR, iterations=1)  # calibrated now: encoder kept
    assert "signal_to_offset_after" not in again


def test_silence_codes_are_cached_until_the_codec_changes():
    tokenizer = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    first = tokenizer._silence_codes()
    assert tokenizer._silence_codes() is first  # not re-encoded on every decode
    calibrate(tokenizer, [synthetic_audio(4.0, seed) for seed in range(3)], SR, iterations=2)
    recomputed = tokenizer._silence_codes()
    assert recomputed is not first and not torch.equal(recomputed, first)  # new codebooks, new codes
    tokenizer.bandwidth = 1.5
    assert tokenizer._silence_codes().shape[0] == tokenizer.num_codebooks


def test_codebook_setters_write_encodecs_buffers_and_check_their_input(tokenizer):
    fresh = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    dim = fresh.codec.config.codebook_dim
    centroids, counts = torch.randn(SMALL_CODEBOOK, dim), torch.arange(SMALL_CODEBOOK)
    fresh._silence_codes()
    fresh.set_codebook(1, centroids, counts)
    codebook = fresh.codec.quantizer.layers[1].codebook
    assert torch.equal(codebook.embed, centroids) and torch.equal(codebook.cluster_size, counts.float())
    torch.testing.assert_close(codebook.embed_avg, centroids * counts[:, None])
    assert codebook.inited.item() == 1.0 and fresh._silence_cache == {}
    assert not fresh.calibrated  # codebook 0 is still zero: calibrated is the caller's to set
    layers = int(fresh.codec.config.num_quantizers)  # 53 six-bit codebooks make 24 kbps
    with pytest.raises(ValueError, match=f"index must be between 0 and {layers - 1}"):
        fresh.set_codebook(layers, centroids, counts)
    with pytest.raises(ValueError, match=r"centroids of shape \(64, 32\) and counts of shape \(64,\)"):
        fresh.set_codebook(0, centroids[:, :8], counts)
    again = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    again.codec.load_state_dict(tokenizer.codec.state_dict())
    again.calibrated = True
    again.reset_codebooks()
    assert not again.calibrated and again._zero_codebooks(layers) == list(range(layers))
    assert all(layer.codebook.inited.item() == 0.0 for layer in again.codec.quantizer.layers)


def test_the_exported_tokenizer_file_holds_no_codec_fitting():
    """The tokenizer file ships in every saved model folder: fitting stays in whisper_gpt.training."""
    import ast

    import whisper_gpt.tokenization_whisper_gpt as module

    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("training" in (name or "") for name in imported), imported
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    fitting = {"initialize_encoder", "fit_encoder_to_mel", "calibrate", "fit_mel_exemplars", "_kmeans", "_nearest"}
    assert not defined & fitting


def _code_mel_probe_l1(tokenizer, extractor, train_clips, test_clip) -> float:
    """Mel L1 on ``test_clip`` of the per-code mean log-mel frame (codebook 0) fitted on ``train_clips``."""

    def pairs(clips):
        codes = torch.cat([tokenizer.encode(clip, SR)[0, 0] for clip in clips])
        mels = torch.cat([extractor.causal_log_mel(torch.from_numpy(clip)[None])[0] for clip in clips])
        return codes, mels

    codes, mels = pairs(train_clips)
    sums = torch.zeros(tokenizer.codebook_size, mels.shape[1]).index_add_(0, codes, mels)
    counts = torch.bincount(codes, minlength=tokenizer.codebook_size)[:, None]
    table = torch.where(counts > 0, sums / counts.clamp(min=1), mels.mean(0))
    test_codes, test_mels = pairs([test_clip])
    return float((table[test_codes] - test_mels).abs().mean())


@pytest.fixture(scope="module")
def fitted_pair():
    """One fresh codec twice, both initialised on the same audio; one is fitted to log-mel; both calibrated."""
    from whisper_gpt import WhisperGPTFeatureExtractor

    clips = [synthetic_audio(4.0, seed) for seed in range(4)]
    extractor = WhisperGPTFeatureExtractor(feature_size=16)
    plain, fitted = build_tokenizer(codebook_size=SMALL_CODEBOOK), build_tokenizer(codebook_size=SMALL_CODEBOOK)
    for tokenizer in (plain, fitted):
        initialize_encoder(tokenizer, clips)
    stats = fit_encoder_to_mel(fitted, clips, extractor, steps=80, batch_size=4, crop_frames=24, progress=False)
    encoder_after_fit = {name: value.clone() for name, value in fitted.codec.encoder.state_dict().items()}
    for tokenizer in (plain, fitted):
        calibrate(tokenizer, clips, SR, iterations=5, initialize_encoder=None if tokenizer is fitted else False)
    return plain, fitted, stats, encoder_after_fit, extractor, clips


def test_fitting_the_encoder_to_log_mel_makes_codes_describe_the_spectrum(fitted_pair):
    plain, fitted, stats, encoder_after_fit, extractor, clips = fitted_pair
    assert stats["mel_l1_last"] < 0.8 * stats["mel_l1_first"]
    # calibrate() saw a fitted encoder and left it alone (no data-driven re-initialisation on top of the fit).
    for name, value in fitted.codec.encoder.state_dict().items():
        assert torch.equal(value, encoder_after_fit[name]), name
    for ours, theirs in zip(plain.codec.decoder.parameters(), fitted.codec.decoder.parameters(), strict=True):
        assert torch.equal(ours, theirs)  # only the encoder is trained
    # Measured 0.24 fitted vs 0.49 initialised only: the fitted codes say much more about the frame's spectrum.
    held_out = synthetic_audio(6.0, seed=100)
    assert _code_mel_probe_l1(fitted, extractor, clips, held_out) < 0.75 * _code_mel_probe_l1(
        plain, extractor, clips, held_out
    )


@pytest.mark.parametrize("frame", [0, 7, 60])
def test_a_fitted_encoder_still_does_not_see_the_future(fitted_pair, frame):
    fitted = fitted_pair[1]
    audio = synthetic_audio(2.0, seed=3)
    changed = audio.copy()
    changed[(frame + 1) * HOP :] = synthetic_audio(2.0, seed=4)[(frame + 1) * HOP :]
    codes, changed_codes = fitted.encode([audio, changed], SR)
    assert torch.equal(codes[:, : frame + 1], changed_codes[:, : frame + 1])
    assert not torch.equal(codes[:, frame + 1 :], changed_codes[:, frame + 1 :])


def test_the_fitted_flag_is_saved_and_loaded(fitted_pair, tmp_path):
    fitted = fitted_pair[1]
    assert fitted.encoder_fitted_to_mel and "encoder_fitted_to_mel=True" in repr(fitted)
    fitted.save_pretrained(tmp_path)
    loaded = WhisperGPTAudioTokenizer.from_pretrained(tmp_path)
    assert loaded.encoder_fitted_to_mel and loaded.calibrated and not loaded.decoder_trained
    audio = synthetic_audio(2.0, seed=10)
    assert torch.equal(loaded.encode(audio, SR), fitted.encode(audio, SR))


def test_fit_encoder_to_mel_rejects_what_it_cannot_fit(fitted_pair):
    from whisper_gpt import WhisperGPTFeatureExtractor

    extractor, clips = fitted_pair[4], fitted_pair[5]
    trained = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    trained.decoder_trained = True
    with pytest.raises(ValueError, match="would break decoding"):
        fit_encoder_to_mel(trained, clips, extractor, steps=1, progress=False)
    fresh = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    with pytest.raises(ValueError, match="does not match the codec"):
        fit_encoder_to_mel(fresh, clips, WhisperGPTFeatureExtractor(hop_length=160), steps=1, progress=False)
    with pytest.raises(ValueError, match="Pass more audio"):
        fit_encoder_to_mel(fresh, [clips[0][: HOP * 20]], extractor, steps=1, progress=False)
    with pytest.raises(ValueError, match="must be positive"):
        fit_encoder_to_mel(fresh, clips, extractor, steps=0, progress=False)
    with pytest.raises(ValueError, match="causal log-mel targets"):
        fit_encoder_to_mel(fresh, clips, WhisperGPTFeatureExtractor(framing="centered"), steps=1, progress=False)


def test_fitting_a_calibrated_codec_resets_its_codebooks_and_initialising_clears_the_flag(fitted_pair):
    extractor, clips = fitted_pair[4], fitted_pair[5]
    tokenizer = build_tokenizer(codebook_size=SMALL_CODEBOOK)
    calibrate(tokenizer, clips, SR, iterations=2)
    fit_encoder_to_mel(tokenizer, clips, extractor, steps=2, batch_size=2, crop_frames=8, progress=False)
    # The old codebooks describe the old encoder: they are cleared, so encode() warns instead of misleading.
    assert not tokenizer.calibrated and tokenizer._zero_codebooks(tokenizer.num_codebooks)
    initialize_encoder(tokenizer, clips)
    assert not tokenizer.encoder_fitted_to_mel
