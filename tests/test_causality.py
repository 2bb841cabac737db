"""The causality rule, end to end: audio -> processor -> model.

Changing the audio after sample (t+1)*hop must leave the mel frames, the codes and the logits at every
position <= t unchanged. With K > 1 codebooks the depth decoder at position t is teacher-forced with the
codes of frame t+1 it is predicting (codebook k conditions on codebooks < k of that frame, as in any
autoregressive factorisation), so there the check is: everything at positions < t, and codebook 0 at t.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import real_like_audio, tiny_config

from whisper_gpt import WhisperGPTForCausalLM

HOP = 320


@pytest.mark.parametrize("num_codebooks", [1, 4])
@pytest.mark.parametrize("frame", [0, 3, 30])
def test_future_audio_changes_nothing_at_or_before_t(tiny_processor, num_codebooks: int, frame: int) -> None:
    model = WhisperGPTForCausalLM(tiny_config(num_codebooks=num_codebooks)).eval()
    audio = real_like_audio(0.6)
    changed = audio.copy()
    cut = (frame + 1) * HOP
    changed[cut:] = np.random.default_rng(frame).uniform(-0.9, 0.9, len(audio) - cut).astype(np.float32)

    inputs = [tiny_processor(audio=clip, sampling_rate=24000) for clip in (audio, changed)]
    with torch.no_grad():
        logits = [model(**batch).logits for batch in inputs]

    original, other = inputs
    for key in ("input_features", "attention_mask"):
        torch.testing.assert_close(original[key][:, : frame + 1], other[key][:, : frame + 1], atol=0, rtol=0)
    torch.testing.assert_close(original.input_ids[..., : frame + 1], other.input_ids[..., : frame + 1], atol=0, rtol=0)
    if num_codebooks == 1:
        torch.testing.assert_close(logits[0][:, :, : frame + 1], logits[1][:, :, : frame + 1], atol=0, rtol=0)
    else:
        torch.testing.assert_close(logits[0][:, :, :frame], logits[1][:, :, :frame], atol=0, rtol=0)
        torch.testing.assert_close(logits[0][:, 0, frame], logits[1][:, 0, frame], atol=0, rtol=0)
    # The check has teeth: the change does reach the next frame's features and codes.
    assert not torch.equal(original.input_features[:, frame + 1], other.input_features[:, frame + 1])
    assert not torch.equal(logits[0][:, 0, frame + 1 :], logits[1][:, 0, frame + 1 :])
