"""EnCodec audio <-> discrete codes for Whisper-GPT.

`WhisperGPTAudioTokenizer` wraps a causal `transformers.EncodecModel` (24 kHz EnCodec: 75 frames/s, a hop of
320 samples, 8 residual codebooks at 6 kbps) and guarantees the property the model's causality rule rests on:
the codes of frame ``t`` depend only on samples ``[0, (t + 1) * hop)``.

Two details of ``EncodecModel`` break that property if it is called directly, and are handled here:

* Its "causal" convolutions pad on the left with *reflect* padding, so near the start of a clip a layer reads
  samples to the right of its output: frames 0-5 of the 24 kHz codec look up to 6 frames ahead. Every clip is
  therefore encoded behind a short stretch of silence (`WhisperGPTAudioTokenizer.silence_frames` frames of
  zeros, whose codes are dropped). The reflections then only ever read silence, and the codes of the first
  ~100 ms differ from a bare ``EncodecModel.encode`` call (later codes are the same up to the LSTM state,
  which has seen silence rather than nothing). `decode` puts the codes of the same silence in front of the
  codes it is given, so decoded sample ``s`` depends only on frames ``<= s // hop``.
* A clip whose length is not a multiple of the hop is reflect-padded on the right, so its last frame
  depends on what follows the clip in a batch. Clips are zero-padded to a whole number of frames instead, so
  right padding never changes a clip's codes in exact arithmetic (see
  `WhisperGPTAudioTokenizer.encode_clips` on rounding).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EncodecConfig, EncodecModel
from transformers.models.encodec.modeling_encodec import (
    EncodecConv1d,
    EncodecConvTranspose1d,
    EncodecLSTM,
    EncodecResnetBlock,
)
from transformers.utils import cached_file, logging

from .feature_extraction_whisper_gpt import normalize_audio_batch, num_frames

logger = logging.get_logger(__name__)

CONFIG_NAME = "audio_tokenizer_config.json"
MEL_EXEMPLARS_NAME = "mel_exemplars.npy"
# The feature-extractor settings that make a log-mel frame what it is: exemplars are only valid for the same ones.
MEL_GEOMETRY_KEYS = ("sampling_rate", "hop_length", "n_fft", "feature_size", "f_min", "f_max", "framing")
DEFAULT_CODEC = "facebook/encodec_24khz"
DEFAULT_BANDWIDTH = 6.0
# k-means needs many frames per code; below this many per code `calibrate` warns.
MIN_FRAMES_PER_CODE = 10
# Rows of the (frames, codes) distance matrix computed at once: bounds memory at 64 MiB for 1024 codes.
_DISTANCE_ROWS = 16_384
# k-means stops once fewer than this fraction of the frames change code in an iteration.
_KMEANS_SETTLED = 1e-3
# Clips encoded together while collecting calibration frames.
_CALIBRATION_BATCH = 8
# Up to this many input frames a transposed convolution runs as matmul + overlap-add (see _conv_transpose1d).
_FOLD_MAX_FRAMES = 8
# Arguments of `EncodecModel.from_pretrained` that also locate `audio_tokenizer_config.json`.
_FILE_LOOKUP_KWARGS = (
    "cache_dir",
    "force_download",
    "proxies",
    "token",
    "revision",
    "local_files_only",
    "subfolder",
)


def small_encodec_config(**overrides: Any) -> EncodecConfig:
    """A tiny causal 24 kHz EnCodec with the real geometry, for tests and CPU demos.

    Same sampling rate, hop (320 = 8 * 5 * 4 * 2), kernels, bandwidths (8 codebooks at 6 kbps, 32 at 24 kbps),
    codebook size (1024), causal convolutions and weight normalisation as ``facebook/encodec_24khz``, but with
    narrow layers (8 filters, 32-dim embeddings, one LSTM layer), so a model builds and runs in milliseconds.
    Its weights are random: fit its encoder with `WhisperGPTAudioTokenizer.fit_encoder_to_mel` (optional, makes
    the codes describe the spectrum) and calibrate its codebooks with `WhisperGPTAudioTokenizer.calibrate`, or
    let `whisper_gpt.training.data.build_processor` do both; its decoder never makes listenable audio. Keyword arguments
    override any `EncodecConfig` field.
    """
    params: dict[str, Any] = {
        "sampling_rate": 24_000,
        "audio_channels": 1,
        "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0],
        "upsampling_ratios": [8, 5, 4, 2],
        "codebook_size": 1024,
        "use_causal_conv": True,
        "norm_type": "weight_norm",
        "normalize": False,
        "chunk_length_s": None,
        "overlap": None,
        "num_filters": 8,
        "hidden_size": 32,
        "num_lstm_layers": 1,
    }
    params.update(overrides)
    return EncodecConfig(**params)


def _run_layers(layers: Sequence[torch.nn.Module], hidden: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden)
    return hidden


def _run_in_chunks(
    layers: Sequence[torch.nn.Module],
    inputs: torch.Tensor,
    in_per_frame: int,
    out_per_frame: int,
    chunk_frames: int,
    context_frames: int,
) -> torch.Tensor:
    """Run a stack of causal convolutions over a long sequence a chunk of frames at a time.

    ``inputs`` is (B, C, T * in_per_frame); returns (B, C', T * out_per_frame). Each chunk is preceded by
    ``context_frames`` frames of real left context that are computed and thrown away: the stack's receptive
    field is finite and shorter than that context, and the reflect padding at a chunk's start only disturbs
    the context, so the kept outputs equal a whole-sequence run. This must not be used across the LSTM,
    whose memory is unbounded.
    """
    total = inputs.shape[-1] // in_per_frame
    if total <= chunk_frames:
        return _run_layers(layers, inputs)
    pieces = []
    for start in range(0, total, chunk_frames):
        first = max(0, start - context_frames)
        stop = min(total, start + chunk_frames)
        output = _run_layers(layers, inputs[..., first * in_per_frame : stop * in_per_frame])
        pieces.append(output[..., (start - first) * out_per_frame :])
    return torch.cat(pieces, dim=-1)


def _nearest(points: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and squared distance to, the nearest centroid for (N, D) points and (K, D) centroids."""
    centroid_norms = centroids.pow(2).sum(dim=1)
    indices, distances = [], []
    for chunk in points.split(_DISTANCE_ROWS):
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin, so add it afterwards.
        best, index = torch.addmm(centroid_norms, chunk, centroids.T, alpha=-2.0).min(dim=1)
        indices.append(index)
        distances.append((best + chunk.pow(2).sum(dim=1)).clamp(min=0.0))
    return torch.cat(indices), torch.cat(distances)


def _kmeans(
    points: torch.Tensor, num_codes: int, iterations: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd's k-means on (N, D) points.

    Returns (num_codes, D) centroids, the (N,) assignment to them, and the iterations run: it stops early once
    fewer than ``_KMEANS_SETTLED`` of the points change code in an iteration.
    """
    start = torch.randperm(points.shape[0], generator=generator)[:num_codes].to(points.device)
    centroids = points[start].clone()
    assignment, distance = _nearest(points, centroids)
    for iteration in range(1, iterations + 1):
        counts = torch.bincount(assignment, minlength=num_codes)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            # Move unused codes onto the points worst served by their centroid: this splits the loosest
            # clusters, and copies of one point (e.g. digital silence) cannot keep codes idle forever.
            worst = distance.topk(int(empty.sum())).indices
            centroids[empty] = points[worst]
        previous = assignment
        assignment, distance = _nearest(points, centroids)
        if int((assignment != previous).sum()) < _KMEANS_SETTLED * points.shape[0]:
            return centroids, assignment, iteration
    return centroids, assignment, iterations


def _entropy_bits(counts: torch.Tensor) -> float:
    probabilities = counts[counts > 0].double() / counts.sum()
    return float(-(probabilities * probabilities.log2()).sum())


def _reservoir_add(reservoir: np.ndarray, seen: int, frames: np.ndarray, rng: np.random.Generator) -> int:
    """Reservoir-sample (N, D) ``frames`` into ``reservoir`` (M, D); returns the number of frames seen so far.

    Keeps a uniform sample of everything seen, however long and however ordered the audio is (e.g. all
    speech before all music).
    """
    capacity = reservoir.shape[0]
    fill = min(max(capacity - seen, 0), frames.shape[0])
    reservoir[seen : seen + fill] = frames[:fill]
    rest = frames[fill:]
    if rest.shape[0]:
        slots = rng.integers(0, np.arange(seen + fill, seen + frames.shape[0]) + 1)
        kept = slots < capacity
        reservoir[slots[kept]] = rest[kept]
    return seen + frames.shape[0]


class WhisperGPTAudioTokenizer:
    r"""Turns audio into EnCodec codes (B, K, T) and codes back into audio, causally.

    Args:
        codec (`EncodecModel`): a causal, mono EnCodec (``config.use_causal_conv=True``, ``normalize=False``,
            no chunking), e.g. ``facebook/encodec_24khz`` or ``EncodecModel(small_encodec_config())``.
        bandwidth (`float`, defaults to 6.0): one of ``codec.config.target_bandwidths``; sets how many
            codebooks are used (8 at 6 kbps for the 24 kHz codec).
        calibrated (`bool`, *optional*): whether the RVQ codebooks hold trained or k-means centroids. ``None``
            infers it from the codebooks used at ``bandwidth``: a freshly initialised EnCodec has all-zero
            codebooks, and then every code is 0.
        decoder_trained (`bool`, *optional*): whether `decode` makes listenable audio. ``None`` infers it from
            all codebooks being non-zero, as in a trained EnCodec. That guess cannot tell a fully calibrated
            local codec (random decoder) from a trained one: pass it explicitly for codecs you build.
        max_seconds_per_pass (`float`, defaults to 60.0): audio (summed over the batch) that one pass of the
            codec's convolutions sees; bounds memory for long audio and big batches. Measured with the 24 kHz
            codec on 3 minutes of audio: 0.9 GB peak at 60 s per pass, 2.4 GB in one pass (it grows by about
            0.8 GB per minute).
        encoder_fitted_to_mel (`bool`, defaults to False): whether the encoder was trained locally by
            `fit_encoder_to_mel` (its codes are then spectral prototypes; the decoder is still untrained).

    ``mel_exemplars`` ((codebook_size, M) float32 or None): one real causal log-mel frame per codebook-0 code, made
    by `fit_mel_exemplars` and saved with the codec; ``mel_exemplar_geometry`` holds the feature-extractor settings
    they were computed with. Changing the codes (`initialize_encoder`, `fit_encoder_to_mel`, `calibrate`) clears them.

    Memory and exactness on long audio: the convolutions before the encoder's LSTM and after the decoder's
    LSTM run over chunks of at most ``max_seconds_per_pass`` with generous left context, which is exact
    because their receptive field is finite (a few frames). The LSTMs and the frame-rate layers around them
    run over the whole clip at once, at 75 frames/s (92 MB per 512-channel tensor per 10 minutes), so
    their state is never cut. Chunked and whole-clip results are therefore the same computation; only
    floating-point summation order can differ between chunk shapes.
    """

    def __init__(
        self,
        codec: EncodecModel,
        bandwidth: float = DEFAULT_BANDWIDTH,
        calibrated: bool | None = None,
        decoder_trained: bool | None = None,
        max_seconds_per_pass: float = 60.0,
        encoder_fitted_to_mel: bool = False,
    ):
        if not isinstance(codec, EncodecModel):
            raise TypeError(f"codec must be a transformers.EncodecModel, got {type(codec).__name__}.")
        config = codec.config
        if not config.use_causal_conv:
            raise ValueError(
                "The codec is not causal (config.use_causal_conv=False): its codes would see future audio, "
                "which breaks Whisper-GPT's causality rule. Use a causal codec such as "
                "facebook/encodec_24khz."
            )
        if config.normalize or config.chunk_length_s is not None:
            raise ValueError(
                "The codec normalises or chunks its input (config.normalize / config.chunk_length_s, as the "
                "48 kHz EnCodec does); both use statistics of future audio. Use a causal codec such as "
                "facebook/encodec_24khz."
            )
        if config.audio_channels != 1:
            raise ValueError(f"The codec must be mono; it has {config.audio_channels} audio channels.")
        if max_seconds_per_pass <= 0:
            raise ValueError(f"max_seconds_per_pass must be positive, got {max_seconds_per_pass}.")
        self.codec = codec.eval()
        self.bandwidth = bandwidth
        self.max_seconds_per_pass = max_seconds_per_pass
        if calibrated is None:
            calibrated = not self._zero_codebooks(self.num_codebooks)
        if decoder_trained is None:
            # A trained EnCodec has trained codebooks at every bandwidth; a calibrated local one rarely does.
            decoder_trained = not self._zero_codebooks(int(config.num_quantizers))
        self.calibrated = bool(calibrated)
        self.decoder_trained = bool(decoder_trained)
        self.encoder_fitted_to_mel = bool(encoder_fitted_to_mel)
        self.mel_exemplars: torch.Tensor | None = None
        self.mel_exemplar_geometry: dict[str, Any] | None = None
        layers = list(codec.encoder.layers)
        self._encoder_lstm = next(i for i, layer in enumerate(layers) if isinstance(layer, EncodecLSTM))
        layers = list(codec.decoder.layers)
        self._decoder_lstm = next(i for i, layer in enumerate(layers) if isinstance(layer, EncodecLSTM))

    @property
    def bandwidth(self) -> float:
        """Target bandwidth in kbps; one of ``codec.config.target_bandwidths``."""
        return self._bandwidth

    @bandwidth.setter
    def bandwidth(self, value: float) -> None:
        valid = list(self.codec.config.target_bandwidths)
        if isinstance(value, bool) or value not in valid:
            raise ValueError(f"bandwidth {value!r} is not supported by this codec; choose one of {valid} (kbps).")
        self._bandwidth = float(value)
        self._silence_cache: dict[tuple[float, str], torch.Tensor] = {}

    @property
    def sampling_rate(self) -> int:
        return int(self.codec.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        """Samples per codec frame: the product of the upsampling ratios (320 for 24 kHz EnCodec)."""
        return int(math.prod(self.codec.config.upsampling_ratios))

    @property
    def num_codebooks(self) -> int:
        """Codebooks used at this bandwidth (8 at 6 kbps for the 24 kHz codec)."""
        return int(self.codec.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))

    @property
    def codebook_size(self) -> int:
        return int(self.codec.config.codebook_size)

    @property
    def name_or_path(self) -> str:
        return str(self.codec.name_or_path)

    @property
    def device(self) -> torch.device:
        return self.codec.device

    @property
    def silence_frames(self) -> int:
        """Frames of silence encoded in front of every clip (and decoded in front of every code sequence).

        With reflect padding, output ``i`` of a convolution whose effective kernel is ``k`` reads up to
        ``k - 1 - i`` positions ahead. The frame-rate convolutions dominate (the 24 kHz codec's frame 0
        reads 6 frames ahead, measured), so twice the largest kernel keeps all look-ahead inside the silence.
        """
        config = self.codec.config
        return 2 * max(config.kernel_size, config.last_kernel_size)

    def codec_geometry(self) -> dict[str, int]:
        """The numbers a Whisper-GPT model config must agree with."""
        return {
            "sampling_rate": self.sampling_rate,
            "hop_length": self.hop_length,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
        }

    def to(self, device: str | torch.device) -> WhisperGPTAudioTokenizer:
        """Move the codec (and the mel exemplars) to ``device``; returns self."""
        self.codec.to(device)
        self._silence_cache = {}
        if self.mel_exemplars is not None:
            self.mel_exemplars = self.mel_exemplars.to(device)
        return self

    def _codes_changed(self) -> None:
        """The encoder or the codebooks changed: what was derived from the old codes no longer holds."""
        self._silence_cache = {}
        self.mel_exemplars = None
        self.mel_exemplar_geometry = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, sampling_rate={self.sampling_rate}, "
            f"hop_length={self.hop_length}, bandwidth={self.bandwidth}, num_codebooks={self.num_codebooks}, "
            f"codebook_size={self.codebook_size}, calibrated={self.calibrated}, "
            f"decoder_trained={self.decoder_trained}, encoder_fitted_to_mel={self.encoder_fitted_to_mel})"
        )

    @classmethod
    def from_pretrained(
        cls, hub_id_or_dir: str | os.PathLike = DEFAULT_CODEC, bandwidth: float | None = None, **kwargs: Any
    ) -> WhisperGPTAudioTokenizer:
        """Load a codec saved by `save_pretrained`, by ``EncodecModel.save_pretrained``, or from the Hub.

        Args:
            hub_id_or_dir: Hub id (default ``facebook/encodec_24khz``) or local folder.
            bandwidth: kbps; ``None`` takes the saved one (6.0 for a folder without
                ``audio_tokenizer_config.json``).
            **kwargs: passed to ``EncodecModel.from_pretrained`` (``revision``, ``cache_dir``, ``subfolder``,
                ``local_files_only``, ...).
        A folder without ``audio_tokenizer_config.json`` counts as calibrated and decoder-trained when its
        codebooks are non-zero.
        """
        lookup = {key: kwargs[key] for key in _FILE_LOOKUP_KWARGS if key in kwargs}
        config_file = cached_file(
            hub_id_or_dir,
            CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **lookup,
        )
        saved: dict[str, Any] = {}
        if config_file is not None:
            with open(config_file, encoding="utf-8") as handle:
                saved = json.load(handle)
        codec = EncodecModel.from_pretrained(hub_id_or_dir, **kwargs)
        tokenizer = cls(
            codec,
            bandwidth=bandwidth if bandwidth is not None else saved.get("bandwidth", DEFAULT_BANDWIDTH),
            calibrated=saved.get("calibrated"),
            decoder_trained=saved.get("decoder_trained"),
            encoder_fitted_to_mel=saved.get("encoder_fitted_to_mel", False),
        )
        geometry = saved.get("mel_exemplar_geometry")
        if geometry is not None:
            exemplars_file = cached_file(
                hub_id_or_dir, MEL_EXEMPLARS_NAME, _raise_exceptions_for_missing_entries=False, **lookup
            )
            if exemplars_file is None:
                raise ValueError(
                    f"{CONFIG_NAME} in {hub_id_or_dir} records mel exemplars but {MEL_EXEMPLARS_NAME} is missing; "
                    "save the codec again (save_pretrained writes both) or run fit_mel_exemplars."
                )
            exemplars = np.load(exemplars_file, allow_pickle=False)
            expected = (tokenizer.codebook_size, geometry["feature_size"])
            if exemplars.shape != expected:
                raise ValueError(
                    f"{MEL_EXEMPLARS_NAME} has shape {exemplars.shape}, but this codec and its recorded mel settings "
                    f"need {expected} (one frame per code); it was saved with another codec. Run fit_mel_exemplars."
                )
            tokenizer.mel_exemplars = torch.from_numpy(exemplars.astype(np.float32))
            tokenizer.mel_exemplar_geometry = geometry
        return tokenizer

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the codec (``config.json`` + ``model.safetensors``, codebook buffers included),
        ``audio_tokenizer_config.json`` (bandwidth, the three flags, the exemplars' mel settings) and, after
        `fit_mel_exemplars`, ``mel_exemplars.npy`` to ``save_directory``."""
        os.makedirs(save_directory, exist_ok=True)
        self.codec.save_pretrained(save_directory)
        settings = {
            "audio_tokenizer_class": type(self).__name__,
            "bandwidth": self.bandwidth,
            "calibrated": self.calibrated,
            "decoder_trained": self.decoder_trained,
            "encoder_fitted_to_mel": self.encoder_fitted_to_mel,
            "mel_exemplar_geometry": self.mel_exemplar_geometry,
        }
        exemplars_path = os.path.join(save_directory, MEL_EXEMPLARS_NAME)
        if self.mel_exemplars is not None:
            np.save(exemplars_path, self.mel_exemplars.cpu().numpy())
        elif os.path.exists(exemplars_path):
            os.remove(exemplars_path)  # left from an earlier save of other codes
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(settings, handle, indent=2, sort_keys=True)
            handle.write("\n")

    def encode(self, audio: Any, sampling_rate: int | None, batch_size: int = 1) -> torch.LongTensor:
        """Encode one clip or a list of clips.

        Args:
            audio: anything `normalize_audio_batch` accepts: a clip (N,), (N, C) or (C, N) with C <= 2, or
                a list of clips; float or integer PCM. It is resampled to `sampling_rate` when needed.
            sampling_rate: rate of ``audio`` in Hz (required).
            batch_size: clips run through the codec together; see `encode_clips`.
        Returns:
            (B, K, T) int64 codes on the CPU, K = `num_codebooks`, T = ceil(longest clip / hop). Shorter
            clips' codes are right-padded with 0, which is also a valid code: use the processor's
            ``attention_mask`` (or ``ceil(num_samples / hop)`` per clip) to tell padding apart.
        """
        clips = normalize_audio_batch(audio, sampling_rate, self.sampling_rate)
        codes = self.encode_clips(clips, batch_size=batch_size)
        batch = torch.zeros(len(codes), self.num_codebooks, max(c.shape[-1] for c in codes), dtype=torch.long)
        for index, clip_codes in enumerate(codes):
            batch[index, :, : clip_codes.shape[-1]] = clip_codes
        return batch

    def encode_clips(self, clips: Sequence[np.ndarray], batch_size: int = 1) -> list[torch.LongTensor]:
        """Encode clips that are already float32 mono at `sampling_rate` (as `normalize_audio_batch` returns).

        Returns one (K, ceil(N_i / hop)) int64 CPU tensor per clip.

        ``batch_size`` > 1 runs up to that many clips (longest first, at most ``max_seconds_per_pass`` of
        padded audio) through the codec together, zero-padded on the right. Causality makes this exact in
        exact arithmetic, but not bit for bit: the convolution kernels round differently for other batch
        shapes (~5e-8 on the 24 kHz codec's embeddings), which flips near-tied codes (1-3% of them with the
        small random codec of the tests, whose embeddings barely vary). The default, one clip at a time, gives
        every clip the same codes whatever it is batched with.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        zero = self._zero_codebooks(self.num_codebooks)
        if zero:
            logger.warning_once(
                f"Codebooks {zero} of the codec are all zero, so their codes are always 0. Call calibrate() "
                "with some audio first, or load a trained codec such as facebook/encodec_24khz."
            )
        codes = []
        with torch.inference_mode():
            for embeddings in self._clip_embeddings(clips, batch_size):
                codes.append(self._quantize(embeddings).cpu())
        return codes

    def _clip_embeddings(self, clips: Sequence[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
        """Yield each clip's encoder output (D, ceil(N_i / hop)), in the order of ``clips``."""
        lengths = [self._check_clip(clip, index) for index, clip in enumerate(clips)]
        order = list(range(len(clips)))
        if batch_size > 1:
            # Longest first, so each batch pads its clips to a similar length.
            order.sort(key=lambda index: -lengths[index])
        budget = self._samples_per_pass()
        prefix = self.silence_frames * self.hop_length
        done: dict[int, torch.Tensor] = {}
        next_out = 0
        position = 0
        while position < len(order):
            frames = num_frames(lengths[order[position]], self.hop_length)
            group = order[position : position + min(batch_size, max(1, budget // (frames * self.hop_length)))]
            position += len(group)
            # Silence in front (see module docstring), zeros after each clip up to the batch's frame count.
            inputs = torch.zeros(len(group), 1, prefix + frames * self.hop_length, dtype=self.codec.dtype)
            for row, index in enumerate(group):
                inputs[row, 0, prefix : prefix + lengths[index]] = torch.as_tensor(clips[index])
            embeddings = self._embed(inputs.to(self.device))[..., self.silence_frames :]
            for row, index in enumerate(group):
                done[index] = embeddings[row, :, : num_frames(lengths[index], self.hop_length)]
            # Hand results out in input order as soon as they exist, so calibration need not hold them all.
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1

    def _check_clip(self, clip: np.ndarray, index: int) -> int:
        shape = tuple(clip.shape)
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(
                f"clips[{index}] has shape {shape}; encode_clips expects non-empty 1-D mono clips at "
                f"{self.sampling_rate} Hz. Use encode(audio, sampling_rate) for raw audio."
            )
        return shape[0]

    def _samples_per_pass(self) -> int:
        return max(self.hop_length, int(self.max_seconds_per_pass * self.sampling_rate))

    def _embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 1, T * hop) audio -> (B, D, T) encoder output; convolutions before the LSTM run in chunks."""
        layers = list(self.codec.encoder.layers)
        chunk = max(1, self._samples_per_pass() // (inputs.shape[0] * self.hop_length))
        hidden = _run_in_chunks(layers[: self._encoder_lstm], inputs, self.hop_length, 1, chunk, self.silence_frames)
        return _run_layers(layers[self._encoder_lstm :], hidden)

    def _quantize(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(D, T) encoder output -> (K, T) codes; frames are independent, so chunking over time is exact."""
        pieces = [
            self.codec.quantizer.encode(chunk[None], self.bandwidth)[:, 0]
            for chunk in embeddings.split(_DISTANCE_ROWS, dim=-1)
        ]
        return torch.cat(pieces, dim=-1)

    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.FloatTensor:
        """Decode codes to audio at `sampling_rate`.

        Args:
            codes: (B, K, T) or (K, T) integer codes in [0, codebook_size), 1 <= K <= `num_codebooks`;
                these are the first K codebooks (K=1: the coarse codebook 0 alone, as in the Whisper-GPT
                paper).
        Returns:
            (B, T * hop) float32 audio ((1, T * hop) for (K, T) codes) on the device of ``codes`` when it is a
            tensor. Decoded sample ``s`` depends only on frames ``<= s // hop``.
        """
        codes = self._check_codes(codes)
        self.warn_if_decoder_untrained()
        output_device = codes.device
        batch_size, _, length = codes.shape
        if length == 0:
            return torch.zeros(batch_size, 0, device=output_device)
        with torch.inference_mode():
            codes = self._behind_silence(codes.to(self.device))
            total = codes.shape[-1] * self.hop_length
            per_group = max(1, self._samples_per_pass() // total)
            audio = [self._synthesize(group) for group in codes.split(per_group)]
            audio = torch.cat(audio)[:, self.silence_frames * self.hop_length :]
        return audio.float().to(output_device)

    def _check_codes(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(np.asarray(codes))
        if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
            raise ValueError(
                f"codes have dtype {codes.dtype}; pass integer codes (e.g. codes.long()), as encode returns them."
            )
        if codes.dim() == 2:
            codes = codes[None]
        if codes.dim() != 3:
            raise ValueError(f"codes have shape {tuple(codes.shape)}; expected (B, K, T) or (K, T).")
        num_codes = codes.shape[1]
        if not 1 <= num_codes <= self.num_codebooks:
            raise ValueError(
                f"codes have {num_codes} codebooks on axis 1 of {tuple(codes.shape)}; this tokenizer decodes "
                f"1 to {self.num_codebooks} at {self.bandwidth} kbps. Pass codes[:, :{self.num_codebooks}], "
                "or load it with a higher bandwidth."
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes range from {int(codes.min())} to {int(codes.max())}; valid codes are 0 to "
                f"{self.codebook_size - 1}. Remove special tokens (padding, BOS) before decoding."
            )
        return codes.long()

    def _silence_codes(self) -> torch.Tensor:
        """(num_codebooks, silence_frames) codes of the silence `encode` puts in front of every clip.

        Cached per bandwidth and device: re-encoding it was ~40% of each generated frame's cost with the codec
        in the loop. `calibrate`, `initialize_encoder`, `to` and the bandwidth setter clear the cache.
        """
        key = (self._bandwidth, str(self.device))
        if key not in self._silence_cache:
            silence = torch.zeros(
                1, 1, self.silence_frames * self.hop_length, dtype=self.codec.dtype, device=self.device
            )
            with torch.no_grad():
                self._silence_cache[key] = self._quantize(self._embed(silence)[0]).clone()
        return self._silence_cache[key]

    def warn_if_decoder_untrained(self) -> None:
        """Warn once when this codec's decoder is not trained, so its audio is not worth listening to."""
        if not self.decoder_trained:
            logger.warning_once(
                "This codec's decoder was never trained (a locally built EnCodec): decoded audio is not "
                "listenable. Load a trained codec such as facebook/encodec_24khz to listen to codes."
            )

    def streaming_decoder(self) -> EncodecStreamingDecoder:
        """A decoder that turns codes into audio a few frames at a time, keeping each layer's state.

        ``stream.start(prompt_codes)`` returns the prompt's audio, then ``stream.step(new_codes)`` the audio of the
        new frames; together they equal `decode` of all the codes (to float rounding). Generation with the codec
        in the loop and `WhisperGPTAudioStreamer` use it, so each new frame costs one frame of decoding.
        """
        return EncodecStreamingDecoder(self)

    def _behind_silence(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, T) codes -> (B, K, silence_frames + T): the codes of `encode`'s silence prefix, then ``codes``.

        Decoding behind it keeps decoded sample ``s`` from depending on anything after frame ``s // hop``; the
        audio of the first ``silence_frames * hop`` samples is dropped afterwards.
        """
        silence = self._silence_codes()[: codes.shape[1]]
        return torch.cat([silence[None].expand(codes.shape[0], -1, -1), codes], dim=-1)

    def _synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, T) codes -> (B, T * hop) audio; convolutions after the decoder's LSTM run in chunks."""
        layers = list(self.codec.decoder.layers)
        hidden = _run_layers(layers[: self._decoder_lstm + 1], self.codec.quantizer.decode(codes.transpose(0, 1)))
        chunk = max(1, self._samples_per_pass() // (codes.shape[0] * self.hop_length))
        audio = _run_in_chunks(layers[self._decoder_lstm + 1 :], hidden, 1, self.hop_length, chunk, self.silence_frames)
        return audio[:, 0]

    @torch.no_grad()
    def initialize_encoder(self, clips: Sequence[np.ndarray], max_seconds: float = 30.0) -> dict[str, float]:
        """Data-driven (LSUV-style) initialisation of a freshly built codec's encoder.

        A random EnCodec encoder's output is dominated by its biases: the part that varies with the input was
        ~30x smaller than the constant offset here, so k-means codes carried little information. This zeroes
        every encoder convolution's bias and, layer by layer in forward order, rescales the convolution's
        weight (its weight-norm gain) so its output has unit standard deviation on the given audio.

        Args:
            clips: float32 mono clips at the codec's rate (`normalize_audio_batch` output).
            max_seconds: audio used (the start of the clips, concatenated).
        Returns:
            ``{"signal_to_offset_before", "signal_to_offset_after"}``: the encoder output's standard deviation
            over time divided by the magnitude of its mean, averaged over channels.
        """
        self._codes_changed()
        self.encoder_fitted_to_mel = False  # rescaling undoes a fit
        audio = np.concatenate(list(clips))[: int(max_seconds * self.sampling_rate)]
        inputs = torch.from_numpy(audio)[None, None].to(self.device, self.codec.dtype)
        before = _signal_to_offset(self.codec.encoder(inputs))
        convolutions = [module.conv for module in self.codec.encoder.modules() if hasattr(module, "conv")]
        for conv in convolutions:
            if conv.bias is not None:
                conv.bias.zero_()
        for conv in convolutions:
            captured: list[torch.Tensor] = []
            hook = conv.register_forward_hook(lambda _module, _inputs, output, store=captured: store.append(output))
            self.codec.encoder(inputs)
            hook.remove()
            std = float(captured[0].std())
            if std > 0:
                _scale_weight(conv, 1.0 / std)
        return {
            "signal_to_offset_before": before,
            "signal_to_offset_after": _signal_to_offset(self.codec.encoder(inputs)),
        }

    def fit_encoder_to_mel(
        self,
        clips: Sequence[np.ndarray],
        feature_extractor: Any,
        steps: int = 400,
        batch_size: int = 16,
        crop_frames: int = 75,
        learning_rate: float = 2e-3,
        max_seconds: float = 600.0,
        seed: int = 0,
        progress: bool = True,
    ) -> dict[str, float]:
        """Train a locally built codec's encoder so each frame's embedding predicts that frame's causal log-mel.

        A randomly initialised encoder reads the waveform's phase, not its spectrum: k-means of its output gives
        codes that jump between frames of a steady vowel and say little about the sound. Here the encoder and a
        linear read-out (thrown away afterwards) learn to predict ``feature_extractor.causal_log_mel`` of every
        frame (L1 loss, Adam), on random crops of the clips joined end to end. Afterwards k-means codes are
        spectral prototypes: on 300 s of the demo's speech corpus, 400 steps (about 3 minutes with 2 threads)
        took consecutive frames sharing a codebook-0 code from 1.6% to 53.5% and a per-code mel probe's L1
        from 0.415 to 0.364 on held-out speech (``scripts/codec_init_effect.py``). Frame ``t``'s embedding
        still only sees samples before ``(t + 1) * hop``: the encoder stays causal, and so does the target
        (a causal feature extractor is required). The decoder is untouched (and untrained). The codebooks no
        longer fit the encoder, so they are reset to zero (`encode` warns) until `calibrate` runs again.

        Args:
            clips: float32 mono clips at the codec's rate (`normalize_audio_batch` output).
            feature_extractor: the `WhisperGPTFeatureExtractor` whose frames the codes should describe.
            steps, batch_size, learning_rate: optimisation; ``crop_frames`` frames per crop, each behind 8
                frames of audio that warm the encoder up and are not scored.
            max_seconds: audio used (the start of the clips, joined).
            seed: makes the read-out's initialisation and the crops reproducible.
        Returns:
            ``{"mel_l1_first", "mel_l1_last"}`` (mean training loss over the first and last 10% of the steps)
            and ``"seconds"``.
        """
        from tqdm.auto import tqdm

        if self.decoder_trained:
            raise ValueError(
                "This codec's decoder was trained together with its encoder; changing the encoder would break "
                "decoding. fit_encoder_to_mel is only for locally built codecs (decoder_trained=False)."
            )
        self._check_frames_match_codes(feature_extractor, "fit_encoder_to_mel")
        if steps < 1 or batch_size < 1 or crop_frames < 1:
            raise ValueError(
                f"steps, batch_size and crop_frames must be positive, got {steps}, {batch_size} and {crop_frames}."
            )
        warmup = 8
        audio = np.concatenate(list(clips))[: int(max_seconds * self.sampling_rate)]
        frames = len(audio) // self.hop_length
        if frames < warmup + crop_frames:
            raise ValueError(
                f"fit_encoder_to_mel got {len(audio) / self.sampling_rate:.2f} s of audio; it needs at least "
                f"{(warmup + crop_frames) * self.hop_length / self.sampling_rate:.2f} s (one crop). Pass more audio."
            )
        started = time.perf_counter()
        waveform = torch.from_numpy(audio[: frames * self.hop_length]).to(self.device, self.codec.dtype)
        with torch.inference_mode():
            target = feature_extractor.causal_log_mel(waveform[None].float())[0].to(self.device)  # (frames, M)
        generator = torch.Generator().manual_seed(seed)
        readout = torch.nn.Linear(self.codec.config.hidden_size, target.shape[1]).to(self.device)
        with torch.no_grad():
            readout.weight.copy_(torch.randn(readout.weight.shape, generator=generator) * 0.01)
            readout.bias.copy_(target.mean(0))
        encoder = self.codec.encoder
        self._codes_changed()  # from here on the codes change, even if the fit stops part way
        optimizer = torch.optim.Adam([*encoder.parameters(), *readout.parameters()], lr=learning_rate)
        span = warmup + crop_frames
        losses = []
        for _ in tqdm(range(steps), desc="fitting the codec encoder to log-mel", unit="step", disable=not progress):
            starts = torch.randint(0, frames - span + 1, (batch_size,), generator=generator).tolist()
            inputs = torch.stack([waveform[s * self.hop_length : (s + span) * self.hop_length] for s in starts])
            wanted = torch.stack([target[s + warmup : s + span] for s in starts])  # (B, crop, M)
            embeddings = encoder(inputs[:, None])[..., warmup:]  # (B, D, crop)
            loss = (readout(embeddings.transpose(1, 2)) - wanted).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for layer in self.codec.quantizer.layers:
                for buffer in (layer.codebook.embed, layer.codebook.embed_avg, layer.codebook.cluster_size):
                    buffer.zero_()
                layer.codebook.inited.fill_(0.0)
        self.calibrated = False
        self.encoder_fitted_to_mel = True
        tail = max(1, steps // 10)
        return {
            "mel_l1_first": float(np.mean(losses[:tail])),
            "mel_l1_last": float(np.mean(losses[-tail:])),
            "seconds": time.perf_counter() - started,
        }

    def calibrate(
        self,
        audio_iterable: Iterable[Any],
        sampling_rate: int | None,
        max_frames: int = 100_000,
        iterations: int = 20,
        seed: int = 0,
        num_codebooks: int | None = None,
        initialize_encoder: bool | None = None,
    ) -> dict[str, Any]:
        """Initialise the RVQ codebooks by k-means on the codec's own encoder output.

        A freshly built EnCodec has all-zero codebooks (every code is 0). This runs the encoder over the
        audio, keeps a uniform random sample of at most ``max_frames`` embedding frames, then for each
        quantizer layer in turn runs k-means on the residual the previous layers leave and writes the
        centroids into that layer's buffers (``embed``; ``embed_avg`` = centroid * count and ``cluster_size``
        = count, as EnCodec's EMA keeps them; ``inited``). Cost: about 0.4 s per k-means iteration per
        codebook for 100k frames of the 24 kHz codec's 128-dim embeddings on two CPU cores.

        Args:
            audio_iterable: clips, or lists of clips (anything `normalize_audio_batch` accepts per item); a
                single array counts as one clip.
            sampling_rate: rate of the audio in Hz.
            max_frames: frames (75 per second of audio) k-means runs on.
            iterations: most k-means iterations per codebook; it stops earlier once fewer than 0.1% of the
                frames change code.
            seed: makes the frame sample and the k-means start reproducible.
            initialize_encoder: run `initialize_encoder` on the first item of the audio (up to 30 s) first.
                ``None``: only for a freshly built codec (not calibrated, decoder not trained, encoder not fitted
                by `fit_encoder_to_mel`); never for a pretrained one, whose encoder must stay as it was trained.
            num_codebooks: how many codebooks (from the first) to calibrate. ``None``: those used at this
                tokenizer's bandwidth (8 at 6 kbps); ``codec.config.num_quantizers`` for all of them, so any
                bandwidth works later. `encode` warns when it uses a codebook that is still all zero.
        Returns:
            ``{"frames": frames used, "frames_seen": frames encoded, "seconds": wall time, per calibrated
            codebook: "entropy_bits" (usage entropy of its codes on the sample), "codes_used", "iterations",
            "residual_energy" (mean squared residual after it / variance of the embeddings)}``.
        Raises `ValueError` when there are fewer frames than codes; warns below ``MIN_FRAMES_PER_CODE`` frames
        per code.
        """
        from tqdm.auto import tqdm

        num_quantizers = int(self.codec.config.num_quantizers)
        num_codebooks = self.num_codebooks if num_codebooks is None else num_codebooks
        if not 1 <= num_codebooks <= num_quantizers:
            raise ValueError(f"num_codebooks must be between 1 and {num_quantizers}, got {num_codebooks}.")
        if max_frames < self.codebook_size:
            raise ValueError(f"max_frames ({max_frames}) must be at least codebook_size ({self.codebook_size}).")
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}.")
        if isinstance(audio_iterable, (np.ndarray, torch.Tensor)):
            audio_iterable = [audio_iterable]
        started = time.perf_counter()
        rng = np.random.default_rng(seed)
        reservoir = np.empty((max_frames, self.codec.config.codebook_dim), dtype=np.float32)
        seen = 0
        if initialize_encoder is None:
            initialize_encoder = not (self.calibrated or self.decoder_trained or self.encoder_fitted_to_mel)
        items = (normalize_audio_batch(item, sampling_rate, self.sampling_rate) for item in audio_iterable)
        encoder_stats: dict[str, float] = {}
        if initialize_encoder:
            first = next(items, None)
            if first is None:
                raise ValueError("calibrate got no audio.")
            encoder_stats = self.initialize_encoder(first)
            items = itertools.chain([first], items)
        with torch.inference_mode():
            for clips in items:
                # Batched: codes are not computed here, so rounding differences do not matter.
                for embeddings in self._clip_embeddings(clips, _CALIBRATION_BATCH):
                    seen = _reservoir_add(reservoir, seen, embeddings.T.float().cpu().numpy(), rng)
        used = min(seen, max_frames)
        wanted = MIN_FRAMES_PER_CODE * self.codebook_size
        frame_rate = self.sampling_rate / self.hop_length
        if used < self.codebook_size:
            raise ValueError(
                f"calibrate got {used} frames for {self.codebook_size} codes per codebook; k-means needs at "
                f"least {wanted} ({wanted / frame_rate:.0f} s of audio). Pass more audio."
            )
        if used < wanted:
            warnings.warn(
                f"calibrate got only {used} frames for {self.codebook_size} codes per codebook; k-means "
                f"wants at least {MIN_FRAMES_PER_CODE}x as many frames as codes ({wanted / frame_rate:.0f} s "
                "of audio). Pass more audio for codes that generalise.",
                UserWarning,
                stacklevel=2,
            )
        generator = torch.Generator().manual_seed(seed)
        residual = torch.from_numpy(reservoir[:used]).to(self.device)
        # Relative to the embeddings' variance: their mean alone would make any codebook look good.
        variance = max(float(residual.var(dim=0, unbiased=False).mean()), torch.finfo(torch.float32).tiny)
        stats: dict[str, Any] = {"frames": used, "frames_seen": seen, **encoder_stats}
        per_codebook: dict[str, list] = {
            "entropy_bits": [],
            "codes_used": [],
            "iterations": [],
            "residual_energy": [],
        }
        layers = self.codec.quantizer.layers[:num_codebooks]
        self._codes_changed()  # from here on the codebooks change, even if k-means stops part way
        for layer in tqdm(layers, desc="k-means per codebook", unit="codebook"):
            with torch.inference_mode():
                centroids, assignment, iterations_run = _kmeans(residual, self.codebook_size, iterations, generator)
                counts = torch.bincount(assignment, minlength=self.codebook_size)
                residual = residual - centroids[assignment]
            codebook = layer.codebook
            with torch.no_grad():
                codebook.embed.copy_(centroids)
                codebook.cluster_size.copy_(counts)
                codebook.embed_avg.copy_(centroids * counts[:, None])
                codebook.inited.fill_(1.0)
            per_codebook["entropy_bits"].append(_entropy_bits(counts))
            per_codebook["codes_used"].append(int((counts > 0).sum()))
            per_codebook["iterations"].append(iterations_run)
            per_codebook["residual_energy"].append(float(residual.pow(2).mean()) / variance)
        self.calibrated = True
        stats.update(per_codebook)
        stats["seconds"] = time.perf_counter() - started
        return stats

    def fit_mel_exemplars(
        self, clips: Sequence[np.ndarray], feature_extractor: Any, max_seconds: float = 600.0
    ) -> dict[str, Any]:
        """Keep, for each codebook-0 code, one real causal log-mel frame that the code stood for.

        A local codec's decoder is untrained, so a generated code cannot be heard through it. The mean of the
        frames a code stood for (what a regression such as the mel head learns) blurs the harmonics of different
        pitches into a smooth spectrum, and Griffin-Lim renders that as noise with the right envelope. A real
        frame keeps them. Each code's exemplar is its member frame closest (L1) to the members' per-bin median: a
        typical frame of the code, not an outlier. Codes that never occur in ``clips`` borrow the exemplar of the
        nearest occurring code (distance between codebook vectors). ``generate(mel_source="exemplar")`` feeds
        these frames to the model and renders them; each depends only on its own frame's code, so it is causal.

        Args:
            clips: float32 mono clips at the codec's rate (`normalize_audio_batch` output).
            feature_extractor: the `WhisperGPTFeatureExtractor` whose frames the model reads (causal framing).
            max_seconds: audio used (the start of the clips).
        Returns:
            ``{"frames", "codes_seen", "seconds"}``.
        """
        if not self.calibrated:
            raise ValueError("fit_mel_exemplars needs calibrated codebooks: run calibrate() first.")
        self._check_frames_match_codes(feature_extractor, "fit_mel_exemplars")
        started = time.perf_counter()
        codes, frames, seconds = [], [], 0.0
        for clip in clips:
            if seconds >= max_seconds:
                break
            clip = np.asarray(clip, dtype=np.float32)[: int((max_seconds - seconds) * self.sampling_rate)]
            if len(clip) == 0:
                continue
            codes.append(self.encode_clips([clip])[0][0])  # (T,) codebook 0
            with torch.inference_mode():
                frames.append(feature_extractor.causal_log_mel(torch.from_numpy(clip)[None])[0])  # (T, M)
            seconds += len(clip) / self.sampling_rate
        if not codes:
            raise ValueError("fit_mel_exemplars got no audio.")
        codes, frames = torch.cat(codes), torch.cat(frames).float()
        exemplars = torch.zeros(self.codebook_size, frames.shape[1])
        order = torch.argsort(codes, stable=True)
        seen, counts = torch.unique_consecutive(codes[order], return_counts=True)
        for code, members in zip(seen.tolist(), torch.split(order, counts.tolist()), strict=True):
            member_frames = frames[members]  # (n, M)
            typical = member_frames.median(dim=0).values
            exemplars[code] = member_frames[(member_frames - typical).abs().sum(dim=1).argmin()]
        codebook = self.codec.quantizer.layers[0].codebook.embed.detach().float().cpu()  # (V, D)
        unseen = torch.ones(self.codebook_size, dtype=torch.bool)
        unseen[seen] = False
        if bool(unseen.any()):
            nearest = torch.cdist(codebook[unseen], codebook[seen]).argmin(dim=1)
            exemplars[unseen] = exemplars[seen[nearest]]
        self.mel_exemplars = exemplars
        self.mel_exemplar_geometry = {key: getattr(feature_extractor, key) for key in MEL_GEOMETRY_KEYS}
        return {"frames": len(codes), "codes_seen": len(seen), "seconds": time.perf_counter() - started}

    def _check_frames_match_codes(self, feature_extractor: Any, method: str) -> None:
        """``method`` pairs each code with the causal log-mel frame of the same samples: refuse an extractor whose
        frames see later samples or are framed at another rate or hop."""
        if getattr(feature_extractor, "framing", "causal") != "causal":
            raise ValueError(
                f"{method} needs causal log-mel targets; this feature extractor uses "
                f"framing={feature_extractor.framing!r}, whose frames see later samples. Use framing='causal'."
            )
        if (feature_extractor.sampling_rate, feature_extractor.hop_length) != (self.sampling_rate, self.hop_length):
            raise ValueError(
                f"The feature extractor ({feature_extractor.sampling_rate} Hz, hop {feature_extractor.hop_length}) "
                f"does not match the codec ({self.sampling_rate} Hz, hop {self.hop_length}), so its frames would not "
                f"line up with the codes; build it with sampling_rate={self.sampling_rate}, "
                f"hop_length={self.hop_length}."
            )

    def check_mel_exemplars(self, feature_extractor: Any = None) -> None:
        """Raise a ValueError unless this codec has mel exemplars made with ``feature_extractor``'s settings (frames
        of another mel geometry would be read as garbage by a model)."""
        if self.mel_exemplars is None:
            raise ValueError(
                "This codec has no mel exemplars: run fit_mel_exemplars(clips, feature_extractor) after calibrate() "
                '(whisper_gpt.training.data.build_processor does), or generate with another mel_source ("codec", or '
                '"learned" for a model with a mel head).'
            )
        if feature_extractor is None:
            return
        for key, value in (self.mel_exemplar_geometry or {}).items():
            if getattr(feature_extractor, key, None) != value:
                raise ValueError(
                    f"The codec's mel exemplars were computed with {key}={value!r}, but the feature extractor "
                    f"has {key}={getattr(feature_extractor, key, None)!r}; run fit_mel_exemplars with it again."
                )

    def mel_exemplar_frames(self, codes: torch.Tensor, feature_extractor: Any = None) -> torch.Tensor:
        """(B, K, T) codes -> (B, T, M) the exemplar log-mel frame of each frame's codebook-0 code.

        With ``feature_extractor``, first checks that the exemplars were made with its settings
        (`check_mel_exemplars`).
        """
        self.check_mel_exemplars(feature_extractor)
        codes = self._check_codes(codes)
        return self.mel_exemplars[codes[:, 0].to(self.mel_exemplars.device)]

    def _zero_codebooks(self, count: int) -> list[int]:
        """Indices among the first ``count`` codebooks that are all zero (never trained or calibrated)."""
        layers = self.codec.quantizer.layers[:count]
        return [index for index, layer in enumerate(layers) if not bool(layer.codebook.embed.any())]


def _signal_to_offset(embeddings: torch.Tensor) -> float:
    """(B, D, T) encoder output -> mean over channels of std over time / |mean over time|."""
    flat = embeddings.transpose(0, 1).reshape(embeddings.shape[1], -1)
    return float((flat.std(dim=1) / flat.mean(dim=1).abs().clamp(min=1e-12)).mean())


def _scale_weight(conv: torch.nn.Conv1d, factor: float) -> None:
    """Multiply a convolution's effective weight by ``factor`` (its weight-norm gain when it has one)."""
    parametrizations = getattr(conv, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        parametrizations.weight.original0.mul_(factor)
    else:
        conv.weight.mul_(factor)


def _conv_transpose1d(inputs: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """``F.conv_transpose1d`` without bias, fast for the few frames of a streaming step.

    On a handful of input frames torch's CPU kernel takes a slow path (10-13 ms at batch 1 for EnCodec's
    512->256 kernel-16 layer); a matmul (B, T, C_in) @ (C_in, C_out * k) and an overlap-add (``F.fold``) take
    ~0.5 ms. Longer inputs keep torch's kernel.
    """
    if inputs.shape[-1] > _FOLD_MAX_FRAMES:
        return F.conv_transpose1d(inputs, weight, None, stride=stride)
    channels_in, channels_out, kernel = weight.shape
    batch_size, _, length = inputs.shape
    columns = inputs.transpose(1, 2) @ weight.reshape(channels_in, channels_out * kernel)  # (B, T, C_out * k)
    size = (length - 1) * stride + kernel
    output = F.fold(
        columns.transpose(1, 2).contiguous(), output_size=(1, size), kernel_size=(1, kernel), stride=(1, stride)
    )
    return output.view(batch_size, channels_out, size)


class EncodecStreamingDecoder:
    """Decodes EnCodec codes incrementally: each call decodes only the new frames.

    Every layer of the SEANet decoder keeps exactly the left context it needs between calls: the LSTM its
    (h, c), each convolution its last ``(kernel - 1) * dilation`` inputs, each transposed convolution the
    ``kernel - stride`` output samples that the next frame overlaps. So decoding frame by frame computes every
    output sample once, and the audio equals `WhisperGPTAudioTokenizer.decode` of all the codes up to float
    rounding: both decode behind the tokenizer's silence prefix, and on its first call each convolution
    reflect-pads its left context as EnCodec does.

    Get one from `WhisperGPTAudioTokenizer.streaming_decoder`. Supports the causal, weight-normalised EnCodec
    (``facebook/encodec_24khz`` and `small_encodec_config`). Audio comes back on the codec's device.
    """

    def __init__(self, tokenizer: WhisperGPTAudioTokenizer):
        config = tokenizer.codec.config
        convolutions = [layer for layer in tokenizer.codec.decoder.modules() if isinstance(layer, EncodecConv1d)]
        strided = any(layer.conv.stride[0] > 1 for layer in convolutions)
        if config.norm_type != "weight_norm" or config.trim_right_ratio != 1.0 or strided:
            raise ValueError(
                "Streaming decoding needs a causal EnCodec with weight normalisation, trim_right_ratio=1.0 and "
                f"unstrided decoder convolutions (got norm_type={config.norm_type!r}, trim_right_ratio="
                f"{config.trim_right_ratio}), as facebook/encodec_24khz has."
            )
        self.tokenizer = tokenizer
        self.codec = tokenizer.codec
        self.hop_length = tokenizer.hop_length
        self._state: dict[Any, Any] = {}
        self._shape: tuple[int, int] | None = None  # (batch, codebooks) of the stream
        # Weight norm recomputes each weight on every access; the weights do not change during a stream.
        self._weights: dict[torch.nn.Module, torch.Tensor] = {}

    @torch.inference_mode()
    def start(self, codes: torch.Tensor, context_frames: int | None = None) -> torch.FloatTensor:
        """Begin a stream with ``codes`` (B, K, T); returns their audio (B, T' * hop), T' = min(T, context_frames).

        ``context_frames`` decodes only the newest frames, so starting costs the same for any prompt length; the
        codec's LSTM then starts from silence that many frames back instead of at the start of the prompt. Long
        prompts are decoded in passes of ``max_seconds_per_pass`` (like `decode`), which changes nothing.
        """
        codes = self.tokenizer._check_codes(codes).to(self.tokenizer.device)
        if context_frames is not None:
            if context_frames < 1:
                raise ValueError(f"context_frames must be at least 1, got {context_frames}.")
            codes = codes[..., -context_frames:]
        self._state, self._weights, self._shape = {}, {}, (codes.shape[0], codes.shape[1])
        silence_frames = self.tokenizer.silence_frames
        frames_per_pass = self.tokenizer._samples_per_pass() // (codes.shape[0] * self.hop_length)
        pieces = self.tokenizer._behind_silence(codes).split(max(silence_frames + 1, frames_per_pass), dim=-1)
        audio = torch.cat([self._decode(piece) for piece in pieces], dim=-1)
        return audio[:, silence_frames * self.hop_length :]

    @torch.inference_mode()
    def step(self, codes: torch.Tensor) -> torch.FloatTensor:
        """Decode the next frames (B, K, n) of the stream; returns their audio (B, n * hop)."""
        if self._shape is None:
            raise ValueError("Call start(prompt_codes) before step(): the stream has no state yet.")
        codes = self.tokenizer._check_codes(codes).to(self.tokenizer.device)
        if (codes.shape[0], codes.shape[1]) != self._shape:
            raise ValueError(
                f"The stream was started with batch size {self._shape[0]} and {self._shape[1]} codebooks; got "
                f"codes of shape {tuple(codes.shape)}."
            )
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 0, device=codes.device)
        return self._decode(codes)

    @classmethod
    def concatenate(cls, streams: Sequence[EncodecStreamingDecoder]) -> EncodecStreamingDecoder:
        """One stream over the batches of ``streams`` in order, e.g. prompts of different lengths started apart."""
        if not streams or any(stream._shape is None for stream in streams):
            raise ValueError("concatenate() needs one or more started streams.")
        if len({stream._shape[1] for stream in streams}) != 1 or len({id(s.codec) for s in streams}) != 1:
            raise ValueError("Only streams of the same codec and number of codebooks can be concatenated.")
        merged = cls(streams[0].tokenizer)
        merged._shape = (sum(stream._shape[0] for stream in streams), streams[0]._shape[1])
        for key, value in streams[0]._state.items():
            parts = [stream._state[key] for stream in streams]
            if isinstance(value, tuple):  # the LSTM's (h, c), batch on dim 1
                merged._state[key] = tuple(torch.cat(tensors, dim=1) for tensors in zip(*parts, strict=True))
            else:
                merged._state[key] = torch.cat(parts, dim=0)
        return merged

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        hidden = self.codec.quantizer.decode(codes.transpose(0, 1))  # (B, D, n)
        for index, layer in enumerate(self.codec.decoder.layers):
            hidden = self._run(layer, hidden, index)
        return hidden[:, 0].float()

    def _run(self, layer: torch.nn.Module, hidden: torch.Tensor, key: Any) -> torch.Tensor:
        if isinstance(layer, EncodecConv1d):
            return self._conv(layer, hidden, key)
        if isinstance(layer, EncodecConvTranspose1d):
            return self._conv_transpose(layer, hidden, key)
        if isinstance(layer, EncodecLSTM):
            return self._lstm(layer, hidden, key)
        if isinstance(layer, EncodecResnetBlock):
            residual = hidden
            for index, sublayer in enumerate(layer.block):
                hidden = self._run(sublayer, hidden, (key, index))
            if isinstance(layer.shortcut, EncodecConv1d):
                residual = self._conv(layer.shortcut, residual, (key, "shortcut"))
            return residual + hidden
        return layer(hidden)  # pointwise activations hold no state

    def _weight(self, conv: torch.nn.Module) -> torch.Tensor:
        if conv not in self._weights:
            self._weights[conv] = conv.weight
        return self._weights[conv]

    def _conv(self, layer: EncodecConv1d, hidden: torch.Tensor, key: Any) -> torch.Tensor:
        conv = layer.conv
        context = (conv.kernel_size[0] - 1) * conv.dilation[0]
        if context:
            previous = self._state.get(key)
            if previous is None:  # the start of the stream: pad as EnCodec does (reflect for the 24 kHz codec)
                previous = layer._pad1d(hidden, (context, 0), mode=layer.pad_mode)[..., :context]
            hidden = torch.cat([previous, hidden], dim=-1)
            self._state[key] = hidden[..., -context:]
        # Unpadded: the inputs are exactly the receptive field (reflect-padded small inputs hit a slow kernel).
        return F.conv1d(hidden, self._weight(conv), conv.bias, dilation=conv.dilation[0])

    def _conv_transpose(self, layer: EncodecConvTranspose1d, hidden: torch.Tensor, key: Any) -> torch.Tensor:
        conv = layer.conv
        stride = conv.stride[0]
        output = _conv_transpose1d(hidden, self._weight(conv), stride)  # (B, C, (n - 1) * stride + kernel)
        overlap = self._state.get(key)
        if overlap is not None:
            output[..., : overlap.shape[-1]] += overlap
        ready = hidden.shape[-1] * stride
        self._state[key] = output[..., ready:]  # what the next frame completes (the causal trim)
        return output[..., :ready] + conv.bias[:, None]

    def _lstm(self, layer: EncodecLSTM, hidden: torch.Tensor, key: Any) -> torch.Tensor:
        lstm = layer.lstm
        sequence = hidden.permute(2, 0, 1)  # (n, B, C)
        state = self._state.get(key)
        if sequence.shape[0] == 1 and state is not None:
            # One frame: torch.lstm_cell per layer is ~3.5x faster than nn.LSTM (which re-packs its weights).
            h, c = state
            inputs, hs, cs = sequence[0], [], []
            for index in range(lstm.num_layers):
                inputs, cell = torch.lstm_cell(
                    inputs,
                    (h[index], c[index]),
                    getattr(lstm, f"weight_ih_l{index}"),
                    getattr(lstm, f"weight_hh_l{index}"),
                    getattr(lstm, f"bias_ih_l{index}"),
                    getattr(lstm, f"bias_hh_l{index}"),
                )
                hs.append(inputs)
                cs.append(cell)
            output, state = inputs[None], (torch.stack(hs), torch.stack(cs))
        else:
            output, state = lstm(sequence, state)
        self._state[key] = state
        return (output + sequence).permute(1, 2, 0)


__all__ = ["EncodecStreamingDecoder", "WhisperGPTAudioTokenizer", "small_encodec_config"]
