"""Pictures of audio: log-mel spectrograms of a prompt and its continuation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..feature_extraction_whisper_gpt import WhisperGPTFeatureExtractor


def plot_continuation(
    audio: np.ndarray,
    prompt_frames: int,
    path: str | Path,
    feature_extractor: WhisperGPTFeatureExtractor | None = None,
    title: str | None = None,
) -> Path:
    """Save a PNG of the causal log-mel of ``audio`` (prompt + continuation) with the boundary marked.

    Args:
        audio: (num_samples,) float waveform at the feature extractor's rate.
        prompt_frames: frames of ``audio`` that were the prompt; a line marks where the continuation starts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feature_extractor = feature_extractor or WhisperGPTFeatureExtractor()
    with torch.inference_mode():
        mel = feature_extractor.causal_log_mel(torch.as_tensor(audio, dtype=torch.float32)[None])[0].numpy()
    frame_seconds = feature_extractor.hop_length / feature_extractor.sampling_rate
    figure, axis = plt.subplots(figsize=(10, 3.5), constrained_layout=True)
    image = axis.imshow(
        mel.T, origin="lower", aspect="auto", cmap="magma", extent=(0, mel.shape[0] * frame_seconds, 0, mel.shape[1])
    )
    boundary = prompt_frames * frame_seconds
    axis.axvline(boundary, color="cyan", linewidth=2)
    axis.text(boundary / 2, mel.shape[1] * 0.93, "prompt", color="white", ha="center")
    axis.text(
        (boundary + mel.shape[0] * frame_seconds) / 2, mel.shape[1] * 0.93, "continuation", color="white", ha="center"
    )
    axis.set_xlabel("time (s)")
    axis.set_ylabel("mel bin")
    axis.set_title(title or "log-mel spectrogram: prompt | continuation")
    figure.colorbar(image, ax=axis, label="log-mel (fixed scale)")
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
