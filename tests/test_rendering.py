"""Offline listening path: the learned mel head, Griffin-Lim rendering and the renderer choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_MEL_BINS, real_like_audio, tiny_config
from transformers import pipeline

from whisper_gpt import WhisperGPTFeatureExtractor, WhisperGPTForCausalLM

HOP = 320


@pytest.fixture(scope="module")
def extractor() -> WhisperGPTFeatureExtractor:
    return WhisperGPTFeatureExtractor()


def mel_l1(extractor, audio: torch.Tensor, features: torch.Tensor) -> float:
    return (extractor.causal_log_mel(audio) - features).abs().mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_griffin_lim_reproduces_the_mel_of_a_clip(extractor, seed: int) -> None:
    audio = torch.from_numpy(real_like_audio(2.0, seed=seed))[None]
    features = extractor.causal_log_mel(audio)
    rendered = extractor.mel_to_audio(features, num_iterations=32)
    assert rendered.shape == (1, features.shape[1] * HOP) and rendered.dtype == torch.float32
    # Measured ~0.07-0.08 here; noise is ~0.9 and silence ~1.5 from the same features.
    assert mel_l1(extractor, rendered, features) < 0.12
    random_phase = extractor.mel_to_audio(features, num_iterations=0)
    assert mel_l1(extractor, rendered, features) < 0.7 * mel_l1(extractor, random_phase, features)
    assert mel_l1(extractor, torch.randn_like(audio) * 0.1, features) > 0.5


def test_griffin_lim_is_batched_and_reproducible(extractor) -> None:
    clips = [real_like_audio(1.0, seed=2), real_like_audio(1.0, seed=3)]
    features = extractor(clips, sampling_rate=24000, return_tensors="pt").input_features
    batch = extractor.mel_to_audio(features, num_iterations=4)
    alone = extractor.mel_to_audio(features[1], num_iterations=4)
    assert batch.shape == (2, 75 * HOP)
    torch.testing.assert_close(batch[1], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(extractor.mel_to_audio(features, num_iterations=4), batch, atol=0, rtol=0)
    with pytest.raises(ValueError, match="features must have shape"):
        extractor.mel_to_audio(features[..., :10])


def test_causal_stft_inverts_away_from_the_last_frame(extractor) -> None:
    audio = torch.from_numpy(real_like_audio(0.5, seed=4))[None]
    rebuilt = extractor._inverse_causal_stft(extractor._causal_stft(audio))
    # The last hop is covered only by the tail of one window, so it is left out of the check.
    torch.testing.assert_close(rebuilt[:, : audio.shape[1] - HOP], audio[:, :-HOP], atol=1e-4, rtol=0)


def test_processor_mel_to_audio_trims_to_the_mask(tiny_processor) -> None:
    batch = tiny_processor(audio=[real_like_audio(0.4), real_like_audio(0.1, seed=5)], sampling_rate=24000)
    waves = tiny_processor.mel_to_audio(batch.input_features, batch.attention_mask)
    assert [len(w) for w in waves] == [n * HOP for n in batch.attention_mask.sum(-1).tolist()]


def test_mel_head_loss_is_l1_to_the_next_frame_and_joins_the_loss() -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config(use_mel_head=True, mel_loss_weight=0.5)).eval()
    ids = torch.randint(0, 64, (2, 8, 12))
    features = torch.randn(2, 12, TINY_MEL_BINS)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    out = model(input_ids=ids, input_features=features, attention_mask=mask, labels=ids)
    assert out.predicted_mel.shape == (2, 12, TINY_MEL_BINS)
    errors = (out.predicted_mel[:, :-1] - features[:, 1:]).abs().mean(-1)
    expected = torch.cat([errors[0], errors[1, :8]]).mean()
    torch.testing.assert_close(out.mel_loss, expected)
    code_loss = model.next_frame_loss(out.logits, ids, mask)
    torch.testing.assert_close(out.loss, code_loss + 0.5 * expected)


def test_mel_head_learns_the_next_frame(tiny_processor) -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config(use_mel_head=True))
    batch = tiny_processor(audio=[real_like_audio(1.0, seed=s) for s in range(2)], sampling_rate=24000)
    features, mask = batch.input_features, batch.attention_mask
    real = mask[:, 1:, None].bool()
    # The best constant guess per bin: how far a head that ignores its inputs can get.
    mean_frame = features[:, 1:][real.expand_as(features[:, 1:])].view(-1, features.shape[-1]).median(0).values
    constant = ((features[:, 1:] - mean_frame).abs().mean(-1) * mask[:, 1:]).sum() / mask[:, 1:].sum()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        out = model(**batch, labels=batch.input_ids)
        losses.append(out.mel_loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * constant.item(), (constant.item(), losses[::10])


@pytest.mark.parametrize("use_spectrogram", [True, False])
def test_learned_mel_generation_needs_no_codec_and_matches_without_cache(tiny_processor, use_spectrogram) -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config(use_mel_head=True, use_spectrogram=use_spectrogram)).eval()
    batch = tiny_processor(audio=[real_like_audio(0.2), real_like_audio(0.1, seed=1)], sampling_rate=24000)
    kwargs = dict(mel_source="learned", max_new_tokens=12, return_dict_in_generate=True, do_sample=False)
    cached = model.generate(**batch, **kwargs)  # no audio_tokenizer: the mel head makes the mel frames
    recomputed = model.generate(**batch, use_cache=False, **kwargs)
    torch.testing.assert_close(cached.sequences, recomputed.sequences, atol=0, rtol=0)
    torch.testing.assert_close(cached.input_features, recomputed.input_features, atol=1e-5, rtol=0)
    assert cached.sequences.shape == (2, 1, 15 + 12)
    assert cached.input_features.shape == (2, 15 + 12, TINY_MEL_BINS)


def test_learned_mel_frames_depend_only_on_the_codes(tiny_processor) -> None:
    """Generation's learned frames equal the mel head run over the finished codes: feeding them back changes none."""
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config(use_mel_head=True)).eval()
    # The one-frame prompt's first new frames have left padding inside the head's window.
    batch = tiny_processor(audio=[real_like_audio(0.2), real_like_audio(0.01, seed=1)], sampling_rate=24000)
    assert batch.attention_mask.sum(-1).tolist()[1] == 1
    out = model.generate(**batch, mel_source="learned", max_new_tokens=10, return_dict_in_generate=True)
    with torch.inference_mode():
        again = model(out.sequences, out.input_features, attention_mask=out.attention_mask).predicted_mel
    for row, prompt_length in enumerate(batch.attention_mask.sum(-1).tolist()):
        new = slice(prompt_length, prompt_length + 10)
        torch.testing.assert_close(out.input_features[row, new], again[row, prompt_length - 1 : prompt_length + 9])


def test_learned_mel_needs_a_slide_that_keeps_the_heads_window(tiny_processor) -> None:
    model = WhisperGPTForCausalLM(tiny_config(use_mel_head=True)).eval()
    batch = tiny_processor(audio=real_like_audio(0.1), sampling_rate=24000)
    context = model.config.max_position_embeddings
    with pytest.raises(ValueError, match="earlier frames the mel head reads"):
        model.generate(**batch, mel_source="learned", max_new_tokens=2, context_stride=context - 1)


def test_default_mel_source_follows_the_codec(tiny_processor) -> None:
    model = WhisperGPTForCausalLM(tiny_config(use_mel_head=True))
    untrained = tiny_processor.audio_tokenizer
    assert not untrained.decoder_trained  # a locally calibrated codec says its decoder is not for listening
    assert model.resolve_mel_source(None, untrained) == "learned"
    assert model.resolve_mel_source(None, None) == "learned"
    assert WhisperGPTForCausalLM(tiny_config()).resolve_mel_source(None, untrained) == "codec"
    with pytest.raises(ValueError, match="use_mel_head"):
        WhisperGPTForCausalLM(tiny_config()).resolve_mel_source("learned", untrained)


def test_pipeline_renders_mel_frames_when_the_decoder_is_not_trained(tiny_processor) -> None:
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(tiny_config(use_mel_head=True)).eval()
    pipe = pipeline("audio-continuation", model=model, processor=tiny_processor)
    audio = real_like_audio(0.3)
    kwargs = dict(sampling_rate=24000, max_new_seconds=0.2, return_prompt=False, do_sample=False)
    auto = pipe(audio, **kwargs)["audio"]
    mel = pipe(audio, renderer="mel", **kwargs)["audio"]
    codec = pipe(audio, renderer="codec", **kwargs)["audio"]
    assert len(auto) == len(mel) == len(codec) == math.ceil(0.2 * 75) * HOP
    np.testing.assert_array_equal(auto, mel)
    assert not np.allclose(auto, codec)
