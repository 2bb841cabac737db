"""The audio-continuation pipeline and the streamer that yields audio while generate() runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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


def _audios(results: list) -> list[np.ndarray]:
    """The waveforms of a list of pipeline results (an input with several return sequences gives a list)."""
    return [out["audio"] for result in results for out in (result if isinstance(result, list) else [result])]


def test_batch_size_gives_each_input_what_it_gets_alone(tiny_processor):
    model = make_model(num_codebooks=4)
    pipe = pipeline("audio-continuation", model=model, processor=tiny_processor)
    clips = [
        real_like_audio(0.3),
        real_like_audio(0.1, seed=2),
        {"array": real_like_audio(0.2, 16000, seed=3), "sampling_rate": 16000},
    ]
    common = {"sampling_rate": 24000, "max_new_tokens": 6}
    for options in (
        {"do_sample": False, "renderer": "codec"},
        {"seed": 7, "top_k": 10},  # the default renderer: Griffin-Lim from the mel frames (untrained decoder)
        {"seed": 7, "num_return_sequences": 2, "renderer": "codec"},
    ):
        alone = _audios(pipe(clips, batch_size=1, **common, **options))
        batched = _audios(pipe(clips, batch_size=2, **common, **options))  # a batch of two, then one of one
        assert len(batched) == len(alone) == 3 * options.get("num_return_sequences", 1)
        for got, expected in zip(batched, alone, strict=True):
            np.testing.assert_array_equal(got, expected, err_msg=str(options))
    streamed = _audios(list(pipe((clip for clip in clips), batch_size=2, **common, seed=7, top_k=10)))
    for got, expected in zip(streamed, _audios(pipe(clips, **common, seed=7, top_k=10)), strict=True):
        np.testing.assert_array_equal(got, expected)

    # The seed contract: input i samples as generate() on it alone with a generator seeded with seed + i.
    batch = tiny_processor(audio=clips[1], sampling_rate=24000)
    codes = model.generate(
        **batch,
        audio_tokenizer=tiny_processor.audio_tokenizer,
        feature_extractor=tiny_processor.feature_extractor,
        max_new_tokens=6,
        top_k=10,
        generator=torch.Generator().manual_seed(7 + 1),
    )
    second = pipe(clips, batch_size=3, **common, seed=7, top_k=10, renderer="codec", return_prompt=False)[1]
    np.testing.assert_array_equal(
        second["audio"], tiny_processor.batch_decode(codes)[0][batch.input_ids.shape[-1] * HOP :]
    )
    other_seed = pipe(clips[1], **common, seed=8, top_k=10, renderer="codec", return_prompt=False)
    np.testing.assert_array_equal(other_seed["audio"], second["audio"])  # position 0 with seed 8 is seed 7 + 1


def test_seed_and_generator_are_refused_where_they_would_mislead(tiny_processor):
    pipe = pipeline("audio-continuation", model=make_model(), processor=tiny_processor)
    clips, common = [real_like_audio(0.1), real_like_audio(0.2, seed=1)], {"sampling_rate": 24000, "max_new_tokens": 2}
    with pytest.raises(ValueError, match="generator= is shared by all the inputs of a batch"):
        pipe(clips, batch_size=2, generator=torch.Generator().manual_seed(0), **common)
    with pytest.raises(ValueError, match="Pass seed or generator, not both"):
        pipe(clips[0], seed=0, generator=torch.Generator(), **common)
    with pytest.raises(ValueError, match="seed only matters when sampling"):
        pipe(clips[0], seed=0, do_sample=False, **common)
    with pytest.raises(ValueError, match="seed must be a non-negative whole number"):
        pipe(clips[0], seed=-1, **common)
    # One generator over a list at batch size 1 is consumed input after input, as before.
    assert len(pipe(clips, generator=torch.Generator().manual_seed(0), **common)) == 2


def test_generate_kwargs_and_forward_params_as_in_text_to_audio(tiny_processor):
    model = make_model()
    pipe = pipeline("audio-continuation", model=model, processor=tiny_processor)
    assert pipe.sampling_rate == tiny_processor.audio_tokenizer.sampling_rate == 24000
    audio = real_like_audio(0.2)
    common = {"sampling_rate": 24000, "return_prompt": False, "renderer": "codec"}
    expected = pipe(audio, max_new_tokens=4, do_sample=False, **common)["audio"]
    assert len(expected) == 4 * HOP
    for split in (
        {"generate_kwargs": {"max_new_tokens": 4, "do_sample": False}},
        {"forward_params": {"do_sample": False}, "generate_kwargs": {"max_new_tokens": 4}},
        {"max_new_tokens": 4, "forward_params": {"do_sample": False}},
    ):
        np.testing.assert_array_equal(pipe(audio, **split, **common)["audio"], expected, err_msg=str(split))
    configured = pipeline(
        "audio-continuation", model=model, processor=tiny_processor, generate_kwargs={"max_new_tokens": 4}
    )
    np.testing.assert_array_equal(configured(audio, do_sample=False, **common)["audio"], expected)

    refusals = [
        ({"max_new_tokens": 4, "generate_kwargs": {"max_new_tokens": 5}}, "passed both in keyword arguments and"),
        ({"forward_params": {"top_k": 3}, "generate_kwargs": {"top_k": 3}}, "passed both in forward_params and"),
        ({"max_new_seconds": 1.0, "generate_kwargs": {"max_new_tokens": 5}}, "max_new_seconds or max_new_tokens"),
        ({"generate_kwargs": {"renderer": "mel"}}, "renderer is an argument of the pipeline"),
        ({"generate_kwargs": {"top_kk": 5}}, r"Unknown argument\(s\) \['top_kk'\]"),
        ({"no_such_option": 1}, r"Unknown argument\(s\) \['no_such_option'\]"),
        ({"forward_params": {"audio_tokenizer": None}}, "audio_tokenizer is set by the pipeline"),
        ({"generate_kwargs": [("top_k", 5)]}, "generate_kwargs must be a dict"),
    ]
    for arguments, message in refusals:
        with pytest.raises(ValueError, match=message):
            pipe(audio, **common, **arguments)
    with pytest.raises(ValueError, match="Unknown argument"):
        pipeline("audio-continuation", model=model, processor=tiny_processor, forward_params={"top_kk": 1})


# Run in a fresh interpreter that never imports the package: only the folder's remote code knows the task.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor, pipeline

    torch.set_num_threads(1)  # as in the test process: the same kernels sum in the same order
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    pipe = pipeline("audio-continuation", model=model, processor=processor)
    audio = np.load(sys.argv[2])
    out = pipe([audio, audio], sampling_rate=24000, max_new_tokens=3, do_sample=False, renderer="codec", batch_size=2)
    assert "whisper_gpt" not in sys.modules, "the package was imported"
    np.save(sys.argv[3], out[0]["audio"])
    print(type(pipe).__module__, pipe.sampling_rate)
    """
)


def test_pipeline_from_remote_code_model_objects_without_the_package(tiny_processor, tmp_path):
    model = make_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    audio = real_like_audio(0.1)
    np.save(tmp_path / "audio.npy", audio)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    arguments = [str(folder), str(tmp_path / "audio.npy"), str(tmp_path / "out.npy")]
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, *arguments], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module, rate = result.stdout.split()
    assert module.startswith("transformers_modules.") and module.endswith(".pipeline_whisper_gpt")
    assert int(rate) == 24000
    local = pipeline("audio-continuation", model=model, processor=tiny_processor)
    expected = local(audio, sampling_rate=24000, max_new_tokens=3, do_sample=False, renderer="codec")["audio"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
