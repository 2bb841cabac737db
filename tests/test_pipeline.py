"""The audio-continuation pipeline and the streamer that yields audio while generate() runs."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import soundfile
import torch
from conftest import real_like_audio, tiny_config
from transformers import pipeline

from whisper_gpt import WhisperGPTAudioStreamer, WhisperGPTForCausalLM

HOP = 320


def make_model(**overrides) -> WhisperGPTForCausalLM:
    torch.manual_seed(0)
    return WhisperGPTForCausalLM(tiny_config(**overrides)).eval()


def test_pipeline_continues_audio(tiny_processor):
    pipe = pipeline("audio-continuation", model=make_model(), processor=tiny_processor)
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
    with pytest.raises(ValueError, match="output_audio is set by the pipeline"):
        pipe(real_like_audio(0.1), sampling_rate=24000, output_audio=True)


def test_pipeline_passes_generation_options_through(tiny_processor):
    model = make_model()
    pipe = pipeline("audio-continuation", model=model, processor=tiny_processor)
    audio = real_like_audio(0.2)
    kwargs = dict(sampling_rate=24000, max_new_tokens=6, return_prompt=False, renderer="codec", do_sample=False)
    greedy = pipe(audio, **kwargs)["audio"]
    codes = model.generate(
        **tiny_processor(audio=audio, sampling_rate=24000),
        audio_tokenizer=tiny_processor.audio_tokenizer,
        max_new_tokens=6,
        do_sample=False,
    )
    np.testing.assert_allclose(greedy, tiny_processor.batch_decode(codes)[0][15 * HOP :], atol=1e-6)
    three = pipe(audio, num_return_sequences=3, **{**kwargs, "do_sample": True})
    assert len(three) == 3 and all(len(o["audio"]) == 6 * HOP for o in three)


def test_pipeline_reads_audio_files_and_says_when_soundfile_is_missing(tiny_processor, tmp_path, monkeypatch):
    pipe = pipeline("audio-continuation", model=make_model(), processor=tiny_processor)
    path = tmp_path / "prompt.wav"
    soundfile.write(path, real_like_audio(0.2, sampling_rate=16000), 16000)
    out = pipe(str(path), max_new_tokens=3, return_prompt=False)
    assert len(out["audio"]) == 3 * HOP
    with pytest.raises(ValueError, match="is at 16000 Hz but sampling_rate=24000"):
        pipe(str(path), sampling_rate=24000, max_new_tokens=3)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as where soundfile is not installed
    with pytest.raises(ImportError, match="needs the soundfile package: pip install soundfile"):
        pipe(str(path), max_new_tokens=3)


def test_streamed_chunks_concatenate_to_the_non_streamed_continuation(tiny_processor):
    model = make_model()
    batch = tiny_processor(audio=real_like_audio(0.3), sampling_rate=24000)
    prompt_frames = batch.input_ids.shape[-1]
    streamer = WhisperGPTAudioStreamer(tiny_processor.audio_tokenizer, chunk_frames=7, timeout=120)

    def generate(**kwargs) -> torch.Tensor:
        return model.generate(
            **batch,
            audio_tokenizer=tiny_processor.audio_tokenizer,
            max_new_tokens=20,
            do_sample=True,
            top_k=10,
            generator=torch.Generator().manual_seed(3),
            **kwargs,
        )

    thread = threading.Thread(target=generate, kwargs={"streamer": streamer})
    thread.start()
    chunks = list(streamer)
    thread.join()
    assert [len(chunk) for chunk in chunks] == [7 * HOP, 7 * HOP, 6 * HOP]
    full = tiny_processor.batch_decode(generate())[0][prompt_frames * HOP :]
    np.testing.assert_allclose(np.concatenate(chunks), full, atol=1e-5)
