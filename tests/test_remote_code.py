"""A folder written by save_pretrained loads with trust_remote_code where whisper_gpt is NOT importable."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from conftest import real_like_audio, tiny_config
from transformers import pipeline

from whisper_gpt import WhisperGPTForCausalLM

# `sys.modules[name] = None` makes `import whisper_gpt` fail, as on a machine where it is not installed.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["whisper_gpt"] = None
    import numpy as np, torch
    from transformers import AutoModelForCausalLM, AutoProcessor, pipeline
    folder, audio_path, out_path = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert not type(model).__module__.startswith("whisper_gpt"), type(model).__module__
    assert processor.audio_tokenizer.mel_exemplars is not None  # generation's default mel frames come from them
    batch = processor(audio=np.load(audio_path), sampling_rate=24000, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    pipe = pipeline("audio-continuation", model=folder, trust_remote_code=True)
    assert not type(pipe).__module__.startswith("whisper_gpt"), type(pipe).__module__
    audio = np.load(audio_path)
    continuation = pipe(audio, sampling_rate=24000, max_new_seconds=0.1, return_prompt=False, renderer="codec")
    np.savez(
        out_path,
        logits=logits.numpy(),
        input_ids=batch.input_ids.numpy(),
        module=type(model).__module__,
        continuation=continuation["audio"],
    )
    """
)


def test_model_processor_and_pipeline_load_without_the_package(tiny_processor, tmp_path) -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=4)).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor = copy.deepcopy(tiny_processor)
    processor.audio_tokenizer.fit_mel_exemplars([real_like_audio(2.0, seed=3)], processor.feature_extractor)
    processor.save_pretrained(folder)
    for name in (
        "configuration_whisper_gpt.py",
        "modeling_whisper_gpt.py",
        "processing_whisper_gpt.py",
        "feature_extraction_whisper_gpt.py",
        "tokenization_whisper_gpt.py",
    ):
        assert (folder / name).exists(), name

    audio = real_like_audio(0.8, seed=21)
    np.save(tmp_path / "audio.npy", audio)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_SCRIPT,
            str(folder),
            str(tmp_path / "audio.npy"),
            str(tmp_path / "out.npz"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = np.load(tmp_path / "out.npz")
    assert str(remote["module"]).startswith("transformers_modules")

    batch = processor(audio=audio, sampling_rate=24000, return_tensors="pt")
    with torch.no_grad():
        local = model(**batch).logits
    np.testing.assert_array_equal(remote["input_ids"], batch.input_ids.numpy())
    np.testing.assert_array_equal(remote["logits"], local.numpy())

    local_pipe = pipeline("audio-continuation", model=model, processor=processor)
    expected = local_pipe(audio, sampling_rate=24000, max_new_seconds=0.1, return_prompt=False, renderer="codec")[
        "audio"
    ]
    assert len(remote["continuation"]) == round(0.1 * 75) * 320
    np.testing.assert_allclose(remote["continuation"], expected, atol=1e-6)
