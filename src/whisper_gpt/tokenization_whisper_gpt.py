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

import json
import math
import os
from collections.abc import Iterator, Sequence
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
# Rows of the (frames, codes) distance matrix computed at once: bounds memory at 64 MiB for 1024 codes.
_DISTANCE_ROWS = 16_384
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
    narrow layers (8 filters, 32-dim embeddings, one LSTM layer), so it is cheap to build and run on a CPU.
    Its weights are random: fit its encoder with ``whisper_gpt.training.codec_fitting.fit_encoder_to_mel``
    (optional, makes the codes describe the spectrum) and calibrate its codebooks with
    ``whisper_gpt.training.codec_fitting.calibrate``, or let ``whisper_gpt.training.data.build_processor`` do both;
    its decoder never makes listenable audio. Keyword arguments override any `EncodecConfig` field.
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
            codec's convolutions sees; bounds memory for long audio and big batches (peak memory grows with it).
        encoder_fitted_to_mel (`bool`, defaults to False): whether the encoder was trained locally by
            ``whisper_gpt.training.codec_fitting.fit_encoder_to_mel`` (its codes are then spectral prototypes; the
            decoder is still untrained).

    ``mel_exemplars`` ((codebook_size, M) float32 or None): one real causal log-mel frame per codebook-0 code,
    installed by `set_mel_exemplars` (``whisper_gpt.training.codec_fitting.fit_mel_exemplars`` computes them) and
    saved with the codec; ``mel_exemplar_geometry`` holds the feature-extractor settings they were computed with.
    Changing the codes (`set_codebook`, `reset_codebooks`, `codes_changed`) clears them.

    Fitting a locally built codec to audio (encoder initialisation and fit, k-means codebooks, mel exemplars) is
    training-time code in ``whisper_gpt.training.codec_fitting``; this class only holds the setters it writes
    through.

    Special tokens: every code value is audio, so ``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` are
    ``None`` (padding is carried by ``attention_mask``); ``Trainer(processing_class=processor)`` reads them and
    leaves the model's configs as they are.

    Memory and exactness on long audio: the convolutions before the encoder's LSTM and after the decoder's
    LSTM run over chunks of at most ``max_seconds_per_pass`` with generous left context, which is exact
    because their receptive field is finite (a few frames). The LSTMs and the frame-rate layers around them
    run over the whole clip at once, at 75 frames/s (92 MB per 512-channel tensor per 10 minutes), so
    their state is never cut. Chunked and whole-clip results are therefore the same computation; only
    floating-point summation order can differ between chunk shapes.
    """

    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

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
        _check_flag("calibrated", calibrated, allow_none=True)
        _check_flag("decoder_trained", decoder_trained, allow_none=True)
        _check_flag("encoder_fitted_to_mel", encoder_fitted_to_mel, allow_none=False)
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
        reads 6 frames ahead), so twice the largest kernel keeps all look-ahead inside the silence.
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

    def codes_changed(self) -> None:
        """Forget what was derived from the current codes: the cached silence codes and the mel exemplars.

        Call it whenever the encoder's weights change in place (the codes of any audio change with them);
        `set_codebook` and `reset_codebooks` call it themselves.
        """
        self._silence_cache = {}
        self.mel_exemplars = None
        self.mel_exemplar_geometry = None

    @torch.no_grad()
    def set_codebook(self, index: int, centroids: torch.Tensor, counts: torch.Tensor) -> None:
        """Install codebook ``index`` of the residual quantizer and forget what the old codes gave (`codes_changed`).

        Args:
            index: the quantizer layer, 0 to ``codec.config.num_quantizers - 1``.
            centroids: (codebook_size, codebook_dim) float code vectors.
            counts: (codebook_size,) number of frames each code stands for.
        The buffers are written as EnCodec's EMA keeps them: ``embed`` = centroids, ``cluster_size`` = counts,
        ``embed_avg`` = centroids * counts, ``inited`` = 1. ``calibrated`` is left alone: set it once every codebook
        used at the bandwidth is installed.
        """
        num_quantizers = int(self.codec.config.num_quantizers)
        if not 0 <= index < num_quantizers:
            raise ValueError(f"index must be between 0 and {num_quantizers - 1}, got {index}.")
        codebook = self.codec.quantizer.layers[index].codebook
        if tuple(centroids.shape) != tuple(codebook.embed.shape) or tuple(counts.shape) != (self.codebook_size,):
            raise ValueError(
                f"set_codebook needs centroids of shape {tuple(codebook.embed.shape)} and counts of shape "
                f"({self.codebook_size},), got {tuple(centroids.shape)} and {tuple(counts.shape)}."
            )
        self.codes_changed()
        codebook.embed.copy_(centroids)
        codebook.cluster_size.copy_(counts)
        codebook.embed_avg.copy_(centroids * counts[:, None])
        codebook.inited.fill_(1.0)

    @torch.no_grad()
    def reset_codebooks(self) -> None:
        """Zero every codebook's buffers (``inited`` too), as in a freshly built EnCodec, and set ``calibrated`` to
        False: after the encoder changed, the old codebooks no longer fit it. `encode` warns until they are installed
        again (`set_codebook`)."""
        self.codes_changed()
        for layer in self.codec.quantizer.layers:
            for buffer in (layer.codebook.embed, layer.codebook.embed_avg, layer.codebook.cluster_size):
                buffer.zero_()
            layer.codebook.inited.fill_(0.0)
        self.calibrated = False

    def set_mel_exemplars(self, exemplars: torch.Tensor, feature_extractor: Any) -> None:
        """Install the mel exemplars: (codebook_size, M) float ``exemplars``, row ``c`` the log-mel frame that
        codebook-0 code ``c`` stands for, M = ``feature_extractor.feature_size``.

        Records ``feature_extractor``'s mel settings (``MEL_GEOMETRY_KEYS``), so `check_mel_exemplars` refuses an
        extractor of another geometry; `save_pretrained` writes both. Exemplars holding NaN or Inf raise a
        ValueError: a model would read them and render NaN audio.
        """
        expected = (self.codebook_size, feature_extractor.feature_size)
        if not isinstance(exemplars, torch.Tensor) or not exemplars.is_floating_point():
            got = exemplars.dtype if isinstance(exemplars, torch.Tensor) else type(exemplars).__name__
            raise ValueError(f"mel exemplars must be a float tensor of shape {expected}, got {got}.")
        self.mel_exemplars = _checked_exemplars(exemplars, expected, "mel exemplars")
        self.mel_exemplar_geometry = {key: getattr(feature_extractor, key) for key in MEL_GEOMETRY_KEYS}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, sampling_rate={self.sampling_rate}, "
            f"hop_length={self.hop_length}, bandwidth={self.bandwidth}, num_codebooks={self.num_codebooks}, "
            f"codebook_size={self.codebook_size}, calibrated={self.calibrated}, "
            f"decoder_trained={self.decoder_trained}, encoder_fitted_to_mel={self.encoder_fitted_to_mel})"
        )

    def __getstate__(self) -> dict[str, Any]:
        """Picklable state: the codec as its config and weights (a weight-normalised module cannot be pickled).

        The same codec always gives the same bytes, so `datasets` can fingerprint a function that uses it."""
        state = self.__dict__.copy()
        codec = state.pop("codec")
        state["_codec_config"] = codec.config.to_dict()
        state["_codec_weights"] = {key: value.detach().cpu() for key, value in codec.state_dict().items()}
        state["_codec_placement"] = (str(codec.device), codec.dtype)
        state["_silence_cache"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        device, dtype = state.pop("_codec_placement")
        codec = EncodecModel(EncodecConfig.from_dict(state.pop("_codec_config")))
        codec.load_state_dict(state.pop("_codec_weights"))
        self.__dict__.update(state)
        self.codec = codec.to(device=device, dtype=dtype).eval()

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
        codebooks are non-zero; one that holds ``mel_exemplars.npy`` but not that config is refused (the config
        records the exemplars' mel settings and the codec's flags). The config's flags must be JSON booleans (or
        null for ``calibrated`` / ``decoder_trained``: infer them), and saved exemplars must be finite; anything
        else raises a ValueError that names the file.
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
            if not isinstance(saved, dict):
                raise ValueError(
                    f"{CONFIG_NAME} in {hub_id_or_dir} must hold a JSON object, got {type(saved).__name__}."
                )
            for key, allow_none in (("calibrated", True), ("decoder_trained", True), ("encoder_fitted_to_mel", False)):
                value = saved.get(key, None if allow_none else False)
                if not isinstance(value, bool) and not (allow_none and value is None):
                    raise ValueError(
                        f"{CONFIG_NAME} in {hub_id_or_dir} has {key}={value!r}; it must be true or false"
                        + (" (or null to infer it)." if allow_none else ".")
                    )
        exemplars_file = cached_file(
            hub_id_or_dir,
            MEL_EXEMPLARS_NAME,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **lookup,
        )
        if config_file is None and exemplars_file is not None:
            raise ValueError(
                f"{hub_id_or_dir} holds {MEL_EXEMPLARS_NAME} but no {CONFIG_NAME}, which records the mel settings "
                "the exemplars were computed with and whether the codec's decoder is trained; without it the "
                f"exemplars cannot be used and a local codec would pass for a trained one. Restore {CONFIG_NAME} "
                "(save_pretrained writes it) or delete the exemplars to load the codec without them."
            )
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
            if not isinstance(geometry, dict) or set(geometry) != set(MEL_GEOMETRY_KEYS):
                raise ValueError(
                    f"{CONFIG_NAME} in {hub_id_or_dir} has mel_exemplar_geometry={geometry!r}; it must map exactly "
                    f"{list(MEL_GEOMETRY_KEYS)} to the feature extractor's settings. Save the codec again."
                )
            if exemplars_file is None:
                raise ValueError(
                    f"{CONFIG_NAME} in {hub_id_or_dir} records mel exemplars but {MEL_EXEMPLARS_NAME} is missing; "
                    "save the codec again (save_pretrained writes both) or fit them again (fit_mel_exemplars in "
                    "whisper_gpt.training.codec_fitting)."
                )
            exemplars = np.load(exemplars_file, allow_pickle=False)
            if not np.issubdtype(exemplars.dtype, np.floating):
                raise ValueError(
                    f"{MEL_EXEMPLARS_NAME} in {hub_id_or_dir} has dtype {exemplars.dtype}; it must be float."
                )
            expected = (tokenizer.codebook_size, geometry["feature_size"])
            tokenizer.mel_exemplars = _checked_exemplars(
                torch.from_numpy(exemplars), expected, f"{MEL_EXEMPLARS_NAME} in {hub_id_or_dir}"
            )
            tokenizer.mel_exemplar_geometry = geometry
        elif exemplars_file is not None:
            logger.warning(
                f"{hub_id_or_dir} holds {MEL_EXEMPLARS_NAME}, but its {CONFIG_NAME} records no mel settings for them "
                "(mel_exemplar_geometry is null), so the codec is loaded without mel exemplars. Save the codec again "
                "to keep them, or delete the file."
            )
        return tokenizer

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the codec (``config.json`` + ``model.safetensors``, codebook buffers included),
        ``audio_tokenizer_config.json`` (bandwidth, the three flags, the exemplars' mel settings) and, when there
        are mel exemplars (`set_mel_exemplars`), ``mel_exemplars.npy`` to ``save_directory``."""
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
        shapes, which flips near-tied codes (more of them for a codec whose embeddings barely vary, such as a
        small random one). The default, one clip at a time, gives every clip the same codes whatever it is
        batched with.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        zero = self._zero_codebooks(self.num_codebooks)
        if zero:
            logger.warning_once(
                f"Codebooks {zero} of the codec are all zero, so their codes are always 0. Calibrate them with "
                "some audio first (calibrate in whisper_gpt.training.codec_fitting), or load a trained codec such "
                "as facebook/encodec_24khz."
            )
        codes = []
        with torch.inference_mode():
            for embeddings in self.embed_clips(clips, batch_size):
                codes.append(self._quantize(embeddings).cpu())
        return codes

    def embed_clips(self, clips: Sequence[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
        """Yield each clip's encoder output (D, ceil(N_i / hop)), before quantization, in the order of ``clips``.

        ``clips`` and ``batch_size`` are as for `encode_clips` (float32 mono at `sampling_rate`; batching changes float
        rounding only). Runs under the caller's autograd mode.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
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

    def _check_codes(self, codes: torch.Tensor | np.ndarray, check_values: bool = True) -> torch.Tensor:
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
        if check_values and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes range from {int(codes.min())} to {int(codes.max())}; valid codes are 0 to "
                f"{self.codebook_size - 1}. Remove special tokens (padding, BOS) before decoding."
            )
        return codes.long()

    def _silence_codes(self) -> torch.Tensor:
        """(num_codebooks, silence_frames) codes of the silence `encode` puts in front of every clip.

        Cached per bandwidth and device, so decoding a few frames at a time does not re-encode it each time.
        `codes_changed` (so `set_codebook` and `reset_codebooks`), `to` and the bandwidth setter clear the cache.
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

    def check_mel_exemplars(self, feature_extractor: Any = None) -> None:
        """Raise a ValueError unless this codec has mel exemplars made with ``feature_extractor``'s settings (frames
        of another mel geometry would be read as garbage by a model)."""
        if self.mel_exemplars is None:
            raise ValueError(
                "This codec has no mel exemplars: run fit_mel_exemplars(tokenizer, clips, feature_extractor) from "
                "whisper_gpt.training.codec_fitting after calibrate (whisper_gpt.training.data.build_processor "
                'does), or generate with another mel_source ("codec", or "learned" for a model with a mel head).'
            )
        if feature_extractor is None:
            return
        for key, value in (self.mel_exemplar_geometry or {}).items():
            if getattr(feature_extractor, key, None) != value:
                raise ValueError(
                    f"The codec's mel exemplars were computed with {key}={value!r}, but the feature extractor "
                    f"has {key}={getattr(feature_extractor, key, None)!r}; fit the exemplars with it again "
                    "(fit_mel_exemplars in whisper_gpt.training.codec_fitting)."
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


def _check_flag(name: str, value: Any, allow_none: bool) -> None:
    """Refuse a flag that is not a bool (or None where inference is allowed): ``bool("false")`` is True."""
    if isinstance(value, (bool, np.bool_)) or (allow_none and value is None):
        return
    raise ValueError(f"{name} must be True or False{' or None' if allow_none else ''}, got {value!r}.")


def _checked_exemplars(exemplars: torch.Tensor, expected: tuple[int, int], what: str) -> torch.Tensor:
    """(codebook_size, M) float32 exemplars after checking their shape and that every value is finite."""
    if tuple(exemplars.shape) != expected:
        raise ValueError(
            f"{what} have shape {tuple(exemplars.shape)}; this codec and feature extractor need {expected} (one "
            "frame of feature_size bins per codebook-0 code): they were made for another codec or mel geometry. Fit "
            "them again (fit_mel_exemplars in whisper_gpt.training.codec_fitting)."
        )
    exemplars = exemplars.to(torch.float32)
    bad = int((~torch.isfinite(exemplars)).any(dim=1).sum())
    if bad:
        raise ValueError(
            f"{what} hold NaN or Inf values in {bad} of {expected[0]} rows; a model would read them and render NaN "
            "audio. Fit them again from finite audio (fit_mel_exemplars in whisper_gpt.training.codec_fitting)."
        )
    return exemplars


def _conv_transpose1d(inputs: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """``F.conv_transpose1d`` without bias, fast for the few frames of a streaming step.

    On a handful of input frames torch's CPU kernel takes a slow path; a matmul (B, T, C_in) @ (C_in, C_out * k)
    and an overlap-add (``F.fold``) compute the same (B, C_out, (T - 1) * stride + k) output. Inputs longer than
    ``_FOLD_MAX_FRAMES`` frames keep torch's kernel.
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
    def step(self, codes: torch.Tensor, check_values: bool = True) -> torch.FloatTensor:
        """Decode the next frames (B, K, n) of the stream; returns their audio (B, n * hop).

        ``check_values=False`` skips the code-range check (a host sync), for codes a model has just sampled."""
        if self._shape is None:
            raise ValueError("Call start(prompt_codes) before step(): the stream has no state yet.")
        codes = self.tokenizer._check_codes(codes, check_values).to(self.tokenizer.device)
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
            # One frame: torch.lstm_cell per layer is faster than nn.LSTM, which re-packs its weights every call.
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
