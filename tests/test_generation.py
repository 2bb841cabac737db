"""generate(): codec-in-the-loop mel frames, cache equality, sampling, sliding context, streaming, pipeline."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import real_like_audio, tiny_config
from transformers import pipeline, set_seed

from whisper_gpt import WhisperGPTAudioStreamer, WhisperGPTForCausalLM

HOP = 320


def make_model(**overrides) -> WhisperGPTForCausalLM:
    torch.manual_seed(0)
    return WhisperGPTForCausalLM(tiny_config(**overrides)).eval()


def prompt(processor, seconds=(0.3,), **kwargs):
    clips = [real_like_audio(s, seed=i) for i, s in enumerate(seconds)]
    return processor(audio=clips if len(clips) > 1 else clips[0], sampling_rate=24000, **kwargs)


def generate(model, processor, batch, **kwargs):
    return model.generate(
        **batch, audio_tokenizer=processor.audio_tokenizer, feature_extractor=processor.feature_extractor, **kwargs
    )


@pytest.mark.parametrize("num_codebooks", [1, 4])
@pytest.mark.parametrize("use_spectrogram", [True, False])
def test_shapes_short_prompt_continuation_and_beyond_context(tiny_processor, num_codebooks, use_spectrogram):
    model = make_model(num_codebooks=num_codebooks, use_spectrogram=use_spectrogram, max_position_embeddings=24)
    one_frame = prompt(tiny_processor, seconds=(0.01,))
    assert one_frame.input_ids.shape[-1] == 1
    assert generate(model, tiny_processor, one_frame, max_new_tokens=5).shape == (1, num_codebooks, 6)
    batch = prompt(tiny_processor, seconds=(0.2,))  # 15 frames
    out = generate(model, tiny_processor, batch, max_new_tokens=40)  # 55 frames > 24-frame context
    assert out.shape == (1, num_codebooks, 55)
    torch.testing.assert_close(out[:, :, :15], batch.input_ids[:, :num_codebooks])
    assert int(out.max()) < model.config.codebook_size


@pytest.mark.parametrize("num_codebooks", [1, 4])
def test_greedy_with_cache_equals_recomputing_without_cache(tiny_processor, num_codebooks):
    model = make_model(num_codebooks=num_codebooks, max_position_embeddings=32)
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    cached = generate(model, tiny_processor, batch, max_new_tokens=30, do_sample=False)
    recomputed = generate(model, tiny_processor, batch, max_new_tokens=30, do_sample=False, use_cache=False)
    torch.testing.assert_close(cached, recomputed, atol=0, rtol=0)


def test_batched_prompts_of_different_lengths_match_each_alone(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor, seconds=(0.3, 0.12))
    out = generate(model, tiny_processor, batch, max_new_tokens=8, return_dict_in_generate=True)
    lengths = batch.attention_mask.sum(-1)
    assert out.attention_mask.sum(-1).tolist() == (lengths + 8).tolist()
    for index, seconds in enumerate((0.3, 0.12)):
        alone = tiny_processor(audio=real_like_audio(seconds, seed=index), sampling_rate=24000)
        single = generate(model, tiny_processor, alone, max_new_tokens=8, return_dict_in_generate=True)
        end = lengths[index] + 8
        torch.testing.assert_close(out.sequences[index, :, :end], single.sequences[0])
        # The mel frames of the generated audio too: the padding of the shorter prompt is never decoded.
        torch.testing.assert_close(out.input_features[index, :end], single.input_features[0], atol=1e-5, rtol=0)


def test_generated_mel_frames_are_the_feature_extractor_on_decoded_codes(tiny_processor):
    model = make_model()
    # A prompt of whole frames: a partial last frame has zeros where generation later has decoded audio.
    batch = prompt(tiny_processor, seconds=(0.12,), mel_source="codec", mel_num_codebooks=1)
    out = generate(model, tiny_processor, batch, max_new_tokens=6, mel_window_frames=64, return_dict_in_generate=True)
    audio = tiny_processor.audio_tokenizer.decode(out.sequences)  # all codes at once, K = 1
    expected = tiny_processor.feature_extractor.causal_log_mel(audio)
    torch.testing.assert_close(out.input_features, expected, atol=1e-4, rtol=0)


def test_mel_source_codec_uses_the_resynthesised_audio(tiny_processor):
    audio = real_like_audio(0.4, seed=7)
    plain = tiny_processor(audio=audio, sampling_rate=24000)
    codec = tiny_processor(audio=audio, sampling_rate=24000, mel_source="codec", mel_num_codebooks=1)
    torch.testing.assert_close(codec.input_ids, plain.input_ids)
    resynthesised = tiny_processor.audio_tokenizer.decode(plain.input_ids[:, :1])[:, : len(audio)]
    expected = tiny_processor.feature_extractor.causal_log_mel(resynthesised)
    torch.testing.assert_close(codec.input_features, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(codec.input_features, plain.input_features)
    with pytest.raises(ValueError, match="mel_source"):
        tiny_processor(audio=audio, sampling_rate=24000, mel_source="learned-later")


def test_seeded_sampling_is_reproducible(tiny_processor):
    model = make_model(num_codebooks=4)
    batch = prompt(tiny_processor)

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return generate(model, tiny_processor, batch, max_new_tokens=12, do_sample=True, top_k=20, generator=generator)

    torch.testing.assert_close(sample(1), sample(1), atol=0, rtol=0)
    assert not torch.equal(sample(1), sample(2))
    set_seed(5)
    first = generate(model, tiny_processor, batch, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9)
    set_seed(5)
    second = generate(model, tiny_processor, batch, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_num_return_sequences_and_repetition_penalty(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor, seconds=(0.2, 0.1))
    out = generate(model, tiny_processor, batch, max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert out.shape == (6, 1, 20)
    greedy = generate(model, tiny_processor, batch, max_new_tokens=20)
    penalised = generate(model, tiny_processor, batch, max_new_tokens=20, repetition_penalty=50.0)
    assert not torch.equal(greedy, penalised)


def test_saved_generation_config_is_used(tiny_processor, tmp_path):
    model = make_model()
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(tmp_path)
    loaded = WhisperGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert generate(loaded, tiny_processor, prompt(tiny_processor)).shape[-1] == 23 + 7


def test_generation_errors_are_clear(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor)
    with pytest.raises(ValueError, match="audio_tokenizer"):
        model.generate(**batch, max_new_tokens=2)
    with pytest.raises(TypeError, match="unexpected"):
        generate(model, tiny_processor, batch, max_new_tokens=2, not_a_generation_option=1)
    with pytest.raises(ValueError, match="Beam search"):
        generate(model, tiny_processor, batch, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match="codebook_size"):
        make_model(codebook_size=128).generate(
            **batch, audio_tokenizer=tiny_processor.audio_tokenizer, max_new_tokens=2
        )
    token_only = make_model(use_spectrogram=False)
    assert token_only.generate(input_ids=batch.input_ids, max_new_tokens=2).shape[-1] == 25  # no codec needed


def test_streamed_chunks_concatenate_to_the_non_streamed_continuation(tiny_processor):
    model = make_model()
    batch = prompt(tiny_processor)
    prompt_frames = batch.input_ids.shape[-1]
    streamer = WhisperGPTAudioStreamer(tiny_processor.audio_tokenizer, chunk_frames=7, timeout=120)
    kwargs = dict(max_new_tokens=20, do_sample=True, top_k=10, generator=torch.Generator().manual_seed(3))
    thread = threading.Thread(
        target=generate, args=(model, tiny_processor, batch), kwargs=dict(kwargs, streamer=streamer)
    )
    thread.start()
    chunks = list(streamer)
    thread.join()
    assert [len(chunk) for chunk in chunks] == [7 * HOP, 7 * HOP, 6 * HOP]
    kwargs["generator"] = torch.Generator().manual_seed(3)
    codes = generate(model, tiny_processor, batch, **kwargs)
    full = tiny_processor.batch_decode(codes)[0][prompt_frames * HOP :]
    np.testing.assert_allclose(np.concatenate(chunks), full, atol=1e-5)


def test_pipeline_continues_audio(tiny_processor):
    model = make_model()
    pipe = pipeline("audio-continuation", model=model, processor=tiny_processor)
    out = pipe(real_like_audio(0.3), sampling_rate=24000, max_new_seconds=0.2)
    assert out["sampling_rate"] == 24000 and out["audio"].dtype == np.float32
    assert len(out["audio"]) == (23 + 15) * HOP
    outs = pipe(
        [real_like_audio(0.3), {"array": real_like_audio(0.1, 16000), "sampling_rate": 16000}],
        sampling_rate=24000,
        max_new_seconds=0.2,
        return_prompt=False,
    )
    assert [len(o["audio"]) for o in outs] == [15 * HOP, 15 * HOP]
    with pytest.raises(ValueError, match="sampling_rate is required"):
        pipe(real_like_audio(0.1))
