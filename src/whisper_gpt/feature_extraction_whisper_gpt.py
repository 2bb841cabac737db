"""Causal log-mel features aligned one-to-one with EnCodec frames.

Frame ``t`` is computed from the ``n_fft`` samples that END at sample ``(t + 1) * hop_length`` (zeros
before the start of the clip), so it never sees the future. The log compression uses fixed constants,
never statistics of the clip. A clip of ``N`` samples gives ``ceil(N / hop_length)`` frames, exactly
as many as a causal codec with the same hop emits codes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import PaddingStrategy, logging

logger = logging.get_logger(__name__)

# log10(mel power) is floored at 1e-10 (-10) and mapped with fixed constants to roughly [-1.5, 1.5].
LOG_MEL_FLOOR = 1e-10
LOG_MEL_OFFSET = 4.0
LOG_MEL_SCALE = 4.0
MAX_CHANNELS = 2
# Plausible audio rates: below 1 kHz is almost always kHz typed as Hz (16 for 16000), above 384 kHz no audio
# interface records.
MIN_SAMPLING_RATE = 1_000
MAX_SAMPLING_RATE = 384_000
# The longest clip accepted, in seconds at the rate it is processed at: longer ones are refused before they are
# resampled or featurised (4 hours at 24 kHz is 1.4 GB of float32 samples).
MAX_CLIP_SECONDS = 4 * 3600
# `fit_clip_lengths`' answer (and `features_from_clips`'s default) for "pad every clip to the longest one's frames".
LONGEST = -1
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")

AudioInput = np.ndarray | torch.Tensor | Sequence[float]


class AudioInputError(ValueError):
    """Audio that cannot be processed: wrong type, shape, rate or length, empty, or holding NaN/Inf samples.

    A `ValueError`, raised by `normalize_audio_batch` and `check_sampling_rate`. Code that walks over many files
    catches this (and the audio reader's own errors) to skip one bad file, and lets every other error through.
    """


def check_sampling_rate(sampling_rate: Any, name: str = "sampling_rate") -> int:
    """Return ``sampling_rate`` as an int after checking it is a whole number of Hz in the plausible range.

    Accepts Python and numpy integers and integral floats (16000.0). Raises `AudioInputError` (a `ValueError`)
    naming ``name`` and the value it got for anything else: strings ("16000"), booleans, fractions, and rates
    outside [``MIN_SAMPLING_RATE``, ``MAX_SAMPLING_RATE``] (1 kHz to 384 kHz; 16 is kHz typed as Hz).
    """
    if isinstance(sampling_rate, (bool, np.bool_)) or not isinstance(sampling_rate, numbers.Real):
        raise AudioInputError(
            f"{name} must be a whole number of Hz such as 16000, got {sampling_rate!r} "
            f"({type(sampling_rate).__name__}); pass int({sampling_rate!r}) if it is a number."
        )
    if not math.isfinite(sampling_rate) or not float(sampling_rate).is_integer():
        raise AudioInputError(f"{name} must be a whole number of Hz such as 16000, got {sampling_rate!r}.")
    rate = int(sampling_rate)
    if not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        hint = f" ({rate} looks like kHz: pass {rate * 1000})" if 0 < rate < MIN_SAMPLING_RATE else ""
        raise AudioInputError(
            f"{name}={rate} Hz is outside the plausible range {MIN_SAMPLING_RATE} to {MAX_SAMPLING_RATE} Hz{hint}."
        )
    return rate


def _to_float_mono(clip: Any, index: int) -> np.ndarray:
    """One clip -> float32 mono (N,). Integer PCM is scaled to [-1, 1]; up to two channels are averaged."""
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu().numpy()
    array = np.asarray(clip)
    where = f"audio[{index}]"
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise AudioInputError(f"{where} is not numeric audio (dtype {array.dtype}); pass float or integer PCM samples.")
    if np.issubdtype(array.dtype, np.complexfloating) or array.dtype == np.bool_:
        raise AudioInputError(f"{where} has dtype {array.dtype}; pass real-valued float or integer PCM samples.")
    if array.ndim == 0 or array.ndim > 2:
        raise AudioInputError(
            f"{where} has shape {array.shape}; expected (num_samples,) for mono or (channels, num_samples) / "
            f"(num_samples, channels) with at most {MAX_CHANNELS} channels. Pass a batch as a list of clips."
        )
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        # Unsigned PCM (e.g. 8-bit WAV) is centred on the middle of its range.
        centre = (int(info.max) + int(info.min) + 1) / 2
        array = (array.astype(np.float64) - centre) / (int(info.max) - centre + 1)
    if array.ndim == 2:
        channel_axis = int(np.argmin(array.shape))
        if array.shape[channel_axis] > MAX_CHANNELS or array.shape[0] == array.shape[1]:
            raise AudioInputError(
                f"{where} has shape {array.shape}, which is ambiguous: a single clip may have at most "
                f"{MAX_CHANNELS} channels on its shorter axis. To pass several clips, pass a list of 1-D arrays."
            )
        array = array.mean(axis=channel_axis)
    if array.size == 0:
        raise AudioInputError(f"{where} is empty; every clip needs at least one sample.")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise AudioInputError(f"{where} contains NaN or Inf samples; clean or drop the clip before processing it.")
    return array


def normalize_audio_batch(
    audio: AudioInput | Mapping[str, Any] | Sequence[AudioInput | Mapping[str, Any]],
    sampling_rate: int | None,
    target_sampling_rate: int,
) -> list[np.ndarray]:
    """Validate audio and bring it to float32 mono at ``target_sampling_rate``.

    ``audio`` is one clip (1-D, or 2-D with up to two channels) or a list of clips. A clip may also be a dict
    ``{"array": samples, "sampling_rate": rate}`` as `datasets` yields it (``"raw"`` is taken for ``"array"``, as
    transformers' audio pipelines do; other keys such as ``"path"`` are not read); its own rate applies to it, and a
    ``sampling_rate`` passed as well must agree with it. Returns a list of (num_samples,) float32 arrays. Raises
    `AudioInputError` (a ``ValueError``) for a missing or invalid sampling rate (`check_sampling_rate`), a dict without
    its keys, empty clips, non-finite samples, arrays of the wrong rank, and clips longer than ``MAX_CLIP_SECONDS`` at
    ``target_sampling_rate`` (checked before resampling allocates them). Audio at another rate is resampled with soxr
    (an optional dependency); ``ImportError`` says what to do when it is not installed.
    """
    is_single = isinstance(audio, (np.ndarray, torch.Tensor, Mapping)) or (
        isinstance(audio, Sequence) and len(audio) > 0 and np.isscalar(audio[0])
    )
    items = [audio] if is_single else list(audio)
    if not items:
        raise AudioInputError("audio is an empty list; pass at least one clip.")
    if sampling_rate is not None:
        sampling_rate = check_sampling_rate(sampling_rate)
    mono, rates = [], []
    for index, item in enumerate(items):
        clip, rate = _unpack_clip(item, index, sampling_rate, target_sampling_rate)
        mono.append(_to_float_mono(clip, index))
        rates.append(rate)
    limit = MAX_CLIP_SECONDS * target_sampling_rate
    for index, (clip, rate) in enumerate(zip(mono, rates, strict=True)):
        resampled = math.ceil(clip.shape[0] * target_sampling_rate / rate)
        if resampled > limit:
            raise AudioInputError(
                f"audio[{index}] is {clip.shape[0] / rate:.0f} s long at sampling_rate={rate} "
                f"({resampled:,} samples at {target_sampling_rate} Hz); clips are limited to {MAX_CLIP_SECONDS} s. "
                "Check the sampling rate, or split the audio into shorter clips."
            )
    return [_resample(clip, rate, target_sampling_rate) for clip, rate in zip(mono, rates, strict=True)]


def _unpack_clip(item: Any, index: int, sampling_rate: int | None, target_sampling_rate: int) -> tuple[Any, int]:
    """(samples, rate) of one item: a dict carries its own rate, anything else takes ``sampling_rate``."""
    if not isinstance(item, Mapping):
        if sampling_rate is None:
            raise AudioInputError(
                "sampling_rate is required: pass the rate the audio was recorded at, e.g. "
                f"sampling_rate=16000. It is resampled to {target_sampling_rate} Hz when it differs."
            )
        return item, sampling_rate
    where = f"audio[{index}]"
    if ("array" in item) == ("raw" in item) or "sampling_rate" not in item:
        raise AudioInputError(
            f'{where} is a dict with keys {sorted(item)}; an audio dict needs "array" (or "raw") and "sampling_rate", '
            'e.g. {"array": samples, "sampling_rate": 16000}.'
        )
    rate = check_sampling_rate(item["sampling_rate"], f'the "sampling_rate" of {where}')
    if sampling_rate is not None and sampling_rate != rate:
        raise AudioInputError(
            f"{where} is at {rate} Hz (its dict says so) but sampling_rate={sampling_rate} was passed; drop "
            "sampling_rate, the dict's rate is used."
        )
    return item["array"] if "array" in item else item["raw"], rate


def _resample(clip: np.ndarray, sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    if sampling_rate == target_sampling_rate:
        return clip
    # Optional: neither torch nor transformers has a resampler of its own (transformers uses soxr or
    # torchaudio), and audio already at the model's rate never needs one.
    try:
        import soxr
    except ImportError as error:
        raise ImportError(
            f"Resampling audio from {sampling_rate} Hz to {target_sampling_rate} Hz needs the soxr package: "
            f"pip install soxr, or pass audio recorded or resampled at {target_sampling_rate} Hz."
        ) from error
    logger.warning_once(
        f"Resampling audio from {sampling_rate} Hz to {target_sampling_rate} Hz with soxr. Pass audio at "
        f"{target_sampling_rate} Hz to skip this step."
    )
    resampled = soxr.resample(clip, sampling_rate, target_sampling_rate).astype(np.float32)
    return resampled if resampled.size else np.zeros(1, dtype=np.float32)


def num_frames(num_samples: int, hop_length: int) -> int:
    """Frames a causal codec (and this extractor) emits for ``num_samples`` samples."""
    return math.ceil(num_samples / hop_length)


class WhisperGPTFeatureExtractor(SequenceFeatureExtractor):
    r"""Causal log-mel spectrogram with one frame per codec frame.

    Args:
        feature_size (`int`, defaults to 80): number of mel bins.
        sampling_rate (`int`, defaults to 24000): rate the features are computed at; other rates are
            resampled with soxr (optional: ``pip install soxr``).
        hop_length (`int`, defaults to 320): samples per frame; must equal the codec's hop.
        n_fft (`int`, defaults to 1024): window length in samples; the window of frame ``t`` ends at
            sample ``(t + 1) * hop_length``.
        f_min / f_max (`float`): mel filterbank range in Hz (``f_max`` defaults to Nyquist).
        padding_value (`float`, defaults to 0.0): value of padded frames in a batch.
        framing (`str`, defaults to "causal"): "causal" (the window of frame t ends at sample (t + 1) * hop).
            "centered" centres it on the middle of frame t's hop, as the common STFT implementations do: it
            sees ``n_fft / 2 - hop / 2`` samples of the future and breaks the causality rule. It exists only
            to measure how much of a hybrid model's gain such leakage would fake; never train a model for use
            with it.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 24000,
        hop_length: int = 320,
        n_fft: int = 1024,
        framing: str = "causal",
        f_min: float = 0.0,
        f_max: float | None = None,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        sampling_rate = check_sampling_rate(sampling_rate)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        if n_fft < hop_length:
            raise ValueError(f"n_fft ({n_fft}) must be at least hop_length ({hop_length}).")
        self.hop_length = hop_length
        self.n_fft = n_fft
        if framing not in ("causal", "centered"):
            raise ValueError(f'framing must be "causal" or "centered", got {framing!r}.')
        self.framing = framing
        self.f_min = f_min
        self.f_max = f_max
        self._mel_filters = torch.from_numpy(
            mel_filter_bank(
                num_frequency_bins=n_fft // 2 + 1,
                num_mel_filters=feature_size,
                min_frequency=f_min,
                max_frequency=f_max if f_max is not None else sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            ).astype(np.float32)
        )  # (n_freq, n_mels)
        self._window = torch.hann_window(n_fft, periodic=True)

    @property
    def num_mel_bins(self) -> int:
        return self.feature_size

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_mel_filters", None)
        output.pop("_window", None)
        return output

    def log_mel_range(self) -> tuple[float, float]:
        """(lowest, highest) feature value `causal_log_mel` can give for audio within [-1, 1].

        The lowest is the log floor; the highest bounds a full-scale clip: a windowed frame's spectrum is at most
        the window's sum (``n_fft / 2`` for the periodic Hann window) in magnitude at every frequency, so mel bin
        ``m`` is at most ``(n_fft / 2) ** 2`` times the sum of its filter.
        """
        lowest = (math.log10(LOG_MEL_FLOOR) + LOG_MEL_OFFSET) / LOG_MEL_SCALE
        loudest = (self.n_fft / 2) ** 2 * float(self._mel_filters.sum(0).max())
        return lowest, (math.log10(max(loudest, LOG_MEL_FLOOR)) + LOG_MEL_OFFSET) / LOG_MEL_SCALE

    def causal_log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Causal log-mel of waveforms at ``self.sampling_rate``.

        Args:
            waveforms: (B, N) float audio.
        Returns:
            (B, ceil(N / hop_length), num_mel_bins) float32 features.

        This one function computes the features for training and for generation (where it is called on
        the last ``n_fft`` decoded samples), so the two can never drift apart.
        """
        power = self._causal_stft(waveforms.float()).abs().pow(2)  # (B, n_freq, T)
        mel = torch.einsum("bft,fm->btm", power, self._mel_filters.to(power.device))  # (B, T, n_mels)
        log_mel = torch.log10(mel.clamp(min=LOG_MEL_FLOOR))
        return (log_mel + LOG_MEL_OFFSET) / LOG_MEL_SCALE

    def _causal_stft(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, n_freq, ceil(N / hop)) complex STFT whose frame t ends at sample (t + 1) * hop."""
        length = waveforms.shape[-1]
        frames = num_frames(length, self.hop_length)
        # Zeros before the clip so frame 0's window ends at sample hop; zeros after the last partial frame.
        left = self._left_padding()
        right = self.n_fft + (frames - 1) * self.hop_length - left - length
        padded = torch.nn.functional.pad(waveforms, (left, right))
        return torch.stft(
            padded,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self._window.to(padded.device),
            center=False,
            return_complex=True,
        )

    def _left_padding(self) -> int:
        """Zeros before the clip: causal framing ends frame 0's window at sample hop."""
        if self.framing == "causal":
            return self.n_fft - self.hop_length
        return (self.n_fft - self.hop_length) // 2

    def _inverse_causal_stft(self, spectrum: torch.Tensor) -> torch.Tensor:
        """(B, n_freq, T) complex -> (B, T * hop) audio: windowed overlap-add, the inverse of `_causal_stft`."""
        frames = spectrum.shape[-1]
        window = self._window.to(spectrum.device)
        pieces = torch.fft.irfft(spectrum, n=self.n_fft, dim=1) * window[None, :, None]  # (B, n_fft, T)
        padded_length = self.n_fft - self.hop_length + frames * self.hop_length
        fold = {"output_size": (1, padded_length), "kernel_size": (1, self.n_fft), "stride": (1, self.hop_length)}
        audio = torch.nn.functional.fold(pieces, **fold)[:, 0, 0]
        norm = torch.nn.functional.fold(window.pow(2)[None, :, None].expand(1, -1, frames), **fold)[:, 0, 0]
        # The last hop is covered only by the near-zero tail of one window: floor the norm so it fades out
        # instead of amplifying rounding noise.
        audio = audio / norm.clamp(min=1e-2 * float(norm.max()))
        left = self._left_padding()
        return audio[:, left : left + frames * self.hop_length]

    def _mel_to_linear_power(self, mel_power: torch.Tensor, iterations: int = 50) -> torch.Tensor:
        """(B, T, M) mel power -> (B, T, n_freq) non-negative power spectrum whose mel projection matches it.

        A non-negative least-squares pseudo-inverse of the filterbank (multiplicative updates from the
        normalised transposed filterbank): on speech-like audio its mel is ~10x closer to the input than the
        clamped Moore-Penrose pseudo-inverse.
        """
        filters = self._mel_filters.to(mel_power.device)  # (n_freq, M)
        power = mel_power @ (filters.T / filters.sum(0)[:, None].clamp(min=1e-8)) + 1e-12
        target = mel_power @ filters.T
        for _ in range(iterations):
            power = power * target / ((power @ filters) @ filters.T).clamp(min=1e-20)
        return power

    def mel_to_audio(
        self, features: torch.Tensor | np.ndarray, num_iterations: int = 32, momentum: float = 0.99, seed: int = 0
    ) -> torch.Tensor:
        """Render causal log-mel frames back to audio: a non-negative pseudo-inverse of the mel filterbank, then
        Griffin-Lim.

        Args:
            features: (B, T, num_mel_bins) or (T, num_mel_bins) features as this extractor computes them.
            num_iterations: Griffin-Lim iterations (fast Griffin-Lim with ``momentum``); 32 is a good
                quality/speed balance, each iteration is one STFT and one inverse STFT of the whole batch.
            seed: seeds the initial random phase, so rendering is reproducible.
        Returns:
            (B, T * hop_length) float32 audio at ``self.sampling_rate``. Phase is estimated, so it sounds
            like the spectrogram (pitch, formants, rhythm) rather than the exact original waveform.

        Features holding NaN or Inf raise a ValueError. Finite features are clamped to `log_mel_range`, the values
        audio within [-1, 1] can give (a warning says when values above it were clamped): beyond it the mel power
        overflows float32 and the audio would be NaN.
        """
        features = torch.as_tensor(features, dtype=torch.float32)
        if features.dim() == 2:
            features = features[None]
        if features.dim() != 3 or features.shape[-1] != self.feature_size:
            raise ValueError(
                f"features must have shape (batch, frames, {self.feature_size}), got {tuple(features.shape)}."
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError(
                "features contain NaN or Inf values, which have no audio; find where they came from (e.g. a model "
                "run in fp16 or fed NaN inputs) or replace them before rendering."
            )
        lowest, highest = self.log_mel_range()
        if bool((features > highest).any()):
            logger.warning_once(
                f"mel_to_audio clamped log-mel values above {highest:.3f}, the loudest audio within [-1, 1] can "
                "give; larger ones would overflow into NaN audio."
            )
        features = features.clamp(lowest, highest)
        mel_power = torch.pow(10.0, features * LOG_MEL_SCALE - LOG_MEL_OFFSET)  # (B, T, M)
        magnitude = self._mel_to_linear_power(mel_power).sqrt().transpose(1, 2)  # (B, n_freq, T)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # One phase pattern for every clip, so a clip renders the same alone and in a batch.
        phase = torch.rand(magnitude.shape[1:], generator=generator).to(features.device) * 2 * math.pi
        angles = torch.polar(torch.ones_like(magnitude), phase.expand_as(magnitude))
        previous = torch.zeros_like(angles)
        for _ in range(num_iterations):
            rebuilt = self._causal_stft(self._inverse_causal_stft(magnitude * angles))
            angles = rebuilt - previous * (momentum / (1 + momentum))
            angles = angles / angles.abs().clamp(min=1e-16)
            previous = rebuilt
        return self._inverse_causal_stft(magnitude * angles).float()

    def __call__(
        self,
        raw_speech: AudioInput | Mapping[str, Any] | Sequence[AudioInput | Mapping[str, Any]],
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        padding: bool | str | PaddingStrategy = True,
        truncation: bool = False,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Compute causal log-mel features for one clip or a list of clips.

        Args:
            raw_speech: a clip (N,), (N, C) or (C, N) with C <= 2, or a list of clips; float or integer PCM. A clip
                may be a dict ``{"array": samples, "sampling_rate": rate}`` (the `datasets` audio format), which
                carries its own rate (`normalize_audio_batch`).
            sampling_rate: rate of ``raw_speech`` in Hz (required unless every clip is a dict; resampled when it
                differs from ``self.sampling_rate``).
            return_tensors: ``"pt"``, ``"np"`` or ``None`` (lists).
            return_attention_mask: return ``attention_mask`` (default: ``self.return_attention_mask``, True).
            padding, truncation, max_length: as transformers' audio feature extractors take them, with
                ``max_length`` in samples at ``self.sampling_rate`` (after resampling); see `fit_clip_lengths`.
        Returns:
            `BatchFeature` with ``input_features`` (B, T, num_mel_bins) and ``attention_mask`` (B, T). T is
            ceil(longest clip's samples / hop_length), or ceil(max_length / hop_length) with
            ``padding="max_length"``; shorter clips are right-padded with ``padding_value`` (mask 0). Without padding
            each clip keeps its own T_i: lists of (T_i, num_mel_bins) and (T_i,) arrays.
        """
        if kwargs:
            raise TypeError(
                f"Unexpected arguments for WhisperGPTFeatureExtractor: {sorted(kwargs)}; it takes sampling_rate, "
                "return_tensors, return_attention_mask, padding, truncation and max_length."
            )
        clips = normalize_audio_batch(raw_speech, sampling_rate, self.sampling_rate)
        clips, padded_frames = fit_clip_lengths(clips, padding, truncation, max_length, self.hop_length)
        return self.features_from_clips(clips, return_tensors, return_attention_mask, padded_frames)

    def features_from_clips(
        self,
        clips: list[np.ndarray],
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        padded_frames: int | None = LONGEST,
    ) -> BatchFeature:
        """Features of clips already validated by `normalize_audio_batch` (float32 mono, right rate).

        ``padded_frames``: the frames to right-pad every clip to (`LONGEST`: the longest clip's; None: no padding),
        as `fit_clip_lengths` returns it.
        """
        lengths = [num_frames(clip.shape[0], self.hop_length) for clip in clips]
        features = []
        with torch.inference_mode():
            for clip in clips:
                features.append(self.causal_log_mel(torch.from_numpy(clip)[None])[0].numpy())
        if padded_frames == LONGEST:
            padded_frames = max(lengths)
        data = {"input_features": stack_frames(features, padded_frames, self.padding_value, 0, return_tensors)}
        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            masks = [np.ones(length, dtype=np.int64) for length in lengths]
            data["attention_mask"] = stack_frames(masks, padded_frames, 0, 0, return_tensors)
        return BatchFeature(data, tensor_type=return_tensors)


def fit_clip_lengths(
    clips: list[np.ndarray],
    padding: bool | str | PaddingStrategy,
    truncation: bool,
    max_length: int | None,
    hop_length: int,
) -> tuple[list[np.ndarray], int | None]:
    """Apply transformers' audio length options to clips (float32 mono at the extractor's rate).

    ``max_length`` counts samples at the extractor's rate, as transformers' audio feature extractors count it (the
    frames are ceil(max_length / hop_length)). ``truncation=True`` cuts every clip to its first ``max_length``
    samples. ``padding``: True or "longest" pads to the longest clip, "max_length" to ``max_length``'s frames (a
    longer clip is refused unless ``truncation=True``), False or "do_not_pad" pads nothing. ``max_length`` is needed
    by "max_length" and truncation and refused elsewhere (it would do nothing).

    Returns:
        The (possibly truncated) clips and the frames to pad them to: an int, `LONGEST`, or None (no padding).
    """
    strategy = _padding_strategy(padding)
    if max_length is not None and (
        isinstance(max_length, (bool, np.bool_)) or not isinstance(max_length, numbers.Integral) or max_length < 1
    ):
        raise ValueError(f"max_length must be a positive whole number of samples, got {max_length!r}.")
    if not isinstance(truncation, (bool, np.bool_)):
        raise ValueError(f"truncation must be True or False, got {truncation!r}.")
    if max_length is None and (truncation or strategy == "max_length"):
        what = "truncation=True" if truncation else 'padding="max_length"'
        raise ValueError(f"{what} needs max_length, the number of samples at the extractor's rate.")
    if max_length is not None and not truncation and strategy != "max_length":
        raise ValueError(
            f'max_length={max_length} is only used with padding="max_length" or truncation=True (padding='
            f'"{strategy}" does not read it); pass one of them or drop max_length.'
        )
    if truncation:
        clips = [clip[:max_length] for clip in clips]
    if strategy == "do_not_pad":
        return clips, None
    if strategy == "longest":
        return clips, LONGEST
    for index, clip in enumerate(clips):
        if clip.shape[0] > max_length:
            raise ValueError(
                f"audio[{index}] has {clip.shape[0]} samples, more than max_length={max_length} for "
                'padding="max_length"; pass truncation=True to cut it, or a larger max_length.'
            )
    return clips, num_frames(max_length, hop_length)


def _padding_strategy(padding: Any) -> str:
    if isinstance(padding, (bool, np.bool_)):
        return "longest" if padding else "do_not_pad"
    value = padding.value if isinstance(padding, PaddingStrategy) else padding
    if value not in PADDING_STRATEGIES:
        raise ValueError(f'padding must be True, False, "longest", "max_length" or "do_not_pad", got {padding!r}.')
    return value


def stack_frames(
    arrays: list[np.ndarray], frames: int | None, padding_value: float, frame_axis: int, return_tensors: str | None
) -> np.ndarray | list[np.ndarray]:
    """Right-pad per-clip arrays along ``frame_axis`` to ``frames`` and stack them into (B, ...).

    ``frames`` None (no padding) keeps the list, unless tensors are asked for: clips of one length stack as they
    are, clips of different lengths raise a ValueError (a tensor cannot hold them).
    """
    if frames is None:
        if return_tensors is None:
            return arrays
        if len({array.shape[frame_axis] for array in arrays}) > 1:
            raise ValueError(
                f'Clips of different lengths cannot be stacked into return_tensors="{return_tensors}" without '
                "padding: pass padding=True (or 'max_length'), or return_tensors=None for a list per clip."
            )
        return np.stack(arrays)
    shape = list(arrays[0].shape)
    shape[frame_axis] = frames
    stacked = np.full([len(arrays), *shape], padding_value, dtype=arrays[0].dtype)
    for index, array in enumerate(arrays):
        stacked[(index, *[slice(None)] * frame_axis, slice(0, array.shape[frame_axis]))] = array
    return stacked


__all__ = [
    "AudioInputError",
    "WhisperGPTFeatureExtractor",
    "check_sampling_rate",
    "fit_clip_lengths",
    "normalize_audio_batch",
    "num_frames",
]
