"""Small folders of real-like audio files for the data, training and demo tests."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
from conftest import real_like_audio

DEFAULT_SECONDS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 1.0, 2.2, 2.8, 1.8)


def write_audio_folder(folder: Path, seconds: tuple[float, ...] = DEFAULT_SECONDS, seed: int = 0) -> list[Path]:
    """Write one 24 kHz 16-bit WAV per entry of ``seconds`` under ``folder`` (nested, like a user's folder)."""
    paths = []
    for index, length in enumerate(seconds):
        path = folder / f"group{index % 2}" / f"clip{index:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), real_like_audio(length, seed=seed + index), 24000, subtype="PCM_16")
        paths.append(path)
    return paths
