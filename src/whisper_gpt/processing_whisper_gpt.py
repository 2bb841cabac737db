"""Processor: audio -> aligned (codes, causal log-mel, mask) model inputs, and codes -> audio."""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import PaddingStrategy

from .feature_extraction_whisper_gpt import (
    LONGEST,
    AudioInput,
    WhisperGPTFeatureExtractor,
    fit_clip_lengths,
    normalize_audio_batch,
    stack_frames,
)

# Importing the pipeline also registers its task where this file runs as remote code (trust_remote_code; the model's
# code reaches this file through generation), so pipelines built from model objects find it without the package.
from .pipeline_whisper_gpt import AudioContinuationPipeline
from .tokenization_whisper_gpt import WhisperGPTAudioTokenizer

AUDIO_TOKENIZER_SUBFOLDER = "audio_tokenizer"
# Arguments of from_pretrained that only concern where files come from, forwarded to both components.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class WhisperGPTProcessor(ProcessorMixin):
    r"""Turns audio into Whisper-GPT inputs and codes back into audio.

    ``processor(audio=..., sampling_rate=...)`` returns ``input_ids`` (B, K, T) codec codes,
    ``input_features`` (B, T, num_mel_bins) causal log-mel frames and ``attention_mask`` (B, T), aligned
    frame for frame (T = ceil(num_samples / hop_length) of the longest clip; shorter clips are right-padded,
    their codes with 0).

    Args:
        feature_extractor ([`WhisperGPTFeatureExtractor`]): the causal log-mel front end.
        audio_tokenizer ([`WhisperGPTAudioTokenizer`]): the EnCodec wrapper. Saved with the processor in the
            ``audio_tokenizer/`` subfolder, calibrated codebooks included.
    """

    def __init__(self, feature_extractor: WhisperGPTFeatureExtractor, audio_tokenizer: WhisperGPTAudioTokenizer):
        # The mixin only knows hub audio-tokenizer classes, so it manages the feature extractor alone.
        super().__init__(feature_extractor=feature_extractor)
        if not isinstance(audio_tokenizer, WhisperGPTAudioTokenizer):
            raise ValueError(
                f"audio_tokenizer must be a WhisperGPTAudioTokenizer, got {type(audio_tokenizer).__name__}; wrap "
                "an EncodecModel with WhisperGPTAudioTokenizer(codec)."
            )
        geometry = {
            "sampling_rate": feature_extractor.sampling_rate,
            "hop_length": feature_extractor.hop_length,
        }
        for name, value in geometry.items():
            if getattr(audio_tokenizer, name) != value:
                raise ValueError(
                    f"The feature extractor has {name}={value} but the codec has {name}="
                    f"{getattr(audio_tokenizer, name)}; mel frames and codes would not line up. Build the "
                    f"feature extractor with {name}={getattr(audio_tokenizer, name)}."
                )
        self.audio_tokenizer = audio_tokenizer

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    @property
    def tokenizer(self) -> WhisperGPTAudioTokenizer:
        """The model's tokenizer: the codec, whose codes are the model's ``input_ids`` (there is no text tokenizer).

        transformers reads it where a processor's tokenizer matters: `Trainer(processing_class=processor)` aligns the
        model's special token ids with its ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` before training.
        The codec defines none, so the model's generation config (whose EOS, if any, is a codebook-0 code) is kept.
        """
        return self.audio_tokenizer

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "input_features", "attention_mask"]

    def __call__(
        self,
        audio: AudioInput | Mapping[str, Any] | list[AudioInput | Mapping[str, Any]] | None = None,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        mel_source: str = "audio",
        mel_num_codebooks: int | None = None,
        padding: bool | str | PaddingStrategy = True,
        truncation: bool = False,
        max_length: int | None = None,
        return_attention_mask: bool | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Encode one clip or a list of clips (any rate, mono or stereo, float or integer PCM).

        Args:
            audio: a clip, a dict ``{"array": samples, "sampling_rate": rate}`` as `datasets` yields it (its own
                rate applies), or a list of these.
            sampling_rate: the rate of the audio in Hz; required unless every clip is a dict.
            mel_source: ``"audio"`` computes the mel frames from the audio itself. ``"codec"`` computes them from
                the codec's resynthesis ``decode(encode(audio))`` with the first ``mel_num_codebooks`` codebooks
                (default: all the codec emits). Generation can only compute mel frames from decoded codes, so a
                hybrid model trained on ``"codec"`` mel sees the same kind of input in training and generation;
                use it with the model's ``num_codebooks`` (e.g. 1 for the paper's model, whose one-codebook
                audio is far from the original) whenever the model will generate.
            padding, truncation, max_length: transformers' audio length options, with ``max_length`` in samples at
                the processor's rate (``sampling_rate``, after resampling): True / "longest" (default) pads to the
                longest clip, "max_length" to ceil(max_length / hop_length) frames, False / "do_not_pad" not at
                all; ``truncation=True`` keeps the first ``max_length`` samples of each clip (see
                `fit_clip_lengths`).
            return_attention_mask: return ``attention_mask`` (default: the feature extractor's setting, True).
        Returns:
            `BatchFeature` with ``input_ids`` (B, K, T) int64, ``input_features`` (B, T, M) float32 and
            ``attention_mask`` (B, T) int64; padded frames have code 0, features ``padding_value`` and mask 0.
            Without padding and with ``return_tensors=None``: lists of per-clip (K, T_i), (T_i, M) and (T_i,) arrays.
        """
        if kwargs:
            raise TypeError(
                f"Unexpected arguments for WhisperGPTProcessor: {sorted(kwargs)}; it takes audio, sampling_rate, "
                "return_tensors, mel_source, mel_num_codebooks, padding, truncation, max_length and "
                "return_attention_mask."
            )
        if audio is None:
            raise ValueError("Pass the audio to encode: processor(audio=waveform, sampling_rate=rate).")
        if mel_source not in ("audio", "codec"):
            raise ValueError(f'mel_source must be "audio" or "codec", got {mel_source!r}.')
        clips = normalize_audio_batch(audio, sampling_rate, self.sampling_rate)
        clips, padded_frames = fit_clip_lengths(
            clips, padding, truncation, max_length, self.feature_extractor.hop_length
        )
        codes = self.audio_tokenizer.encode_clips(clips)  # list of (K, T_i)
        if mel_source == "codec":
            clips = [
                self.resynthesize(clip_codes, mel_num_codebooks, len(clip))
                for clip_codes, clip in zip(codes, clips, strict=True)
            ]
        features = self.feature_extractor.features_from_clips(
            clips, return_tensors, return_attention_mask, padded_frames
        )
        if padded_frames == LONGEST:
            padded_frames = max(clip_codes.shape[-1] for clip_codes in codes)
        codes = [clip_codes.cpu().numpy().astype(np.int64) for clip_codes in codes]
        data = {"input_ids": stack_frames(codes, padded_frames, 0, 1, return_tensors), **features}
        return BatchFeature(data, tensor_type=return_tensors)

    def resynthesize(self, codes: torch.Tensor, num_codebooks: int | None, num_samples: int) -> np.ndarray:
        """Codes (K, T) -> the codec's audio from the first ``num_codebooks`` codebooks, ``num_samples`` long."""
        num_codebooks = num_codebooks or codes.shape[0]
        if not 1 <= num_codebooks <= codes.shape[0]:
            raise ValueError(f"mel_num_codebooks must be in [1, {codes.shape[0]}], got {num_codebooks}.")
        audio = self.audio_tokenizer.decode(codes[None, :num_codebooks])[0]
        return audio[:num_samples].cpu().numpy().astype(np.float32)

    def batch_decode(self, codes: torch.Tensor | np.ndarray, attention_mask: Any = None) -> list[np.ndarray]:
        """Codes (B, K, T) -> list of B float32 waveforms at the codec's rate, trimmed to ``attention_mask``."""
        codes = torch.as_tensor(codes)
        if codes.dim() == 2:
            codes = codes[None]
        waves = self.audio_tokenizer.decode(codes).cpu().numpy()  # (B, T * hop)
        return _trim(waves, attention_mask, self.audio_tokenizer.hop_length)

    def mel_to_audio(
        self, features: torch.Tensor | np.ndarray, attention_mask: Any = None, num_iterations: int = 32
    ) -> list[np.ndarray]:
        """Render log-mel frames (B, T, M) to a list of float32 waveforms with Griffin-Lim (see
        `WhisperGPTFeatureExtractor.mel_to_audio`), trimmed to ``attention_mask``. For codecs whose decoder is
        not trained for listening (``audio_tokenizer.decoder_trained`` is False)."""
        waves = self.feature_extractor.mel_to_audio(features, num_iterations=num_iterations).cpu().numpy()
        return _trim(waves, attention_mask, self.feature_extractor.hop_length)

    def resolve_renderer(self, renderer: str, have_mel_frames: bool) -> str:
        """ "auto" -> "mel" when the codec's decoder is not trained and mel frames exist, else "codec"."""
        if renderer not in ("auto", "codec", "mel"):
            raise ValueError(f'renderer must be "auto", "codec" or "mel", got {renderer!r}.')
        if renderer != "auto":
            return renderer
        return "mel" if have_mel_frames and not self.audio_tokenizer.decoder_trained else "codec"

    def render(
        self,
        codes: torch.Tensor,
        input_features: torch.Tensor | None = None,
        attention_mask: Any = None,
        renderer: str = "auto",
    ) -> list[np.ndarray]:
        """Turn generated codes (B, K, T) and their mel frames (B, T, M) into waveforms.

        ``renderer``: "codec" decodes the codes, "mel" renders the mel frames with Griffin-Lim, "auto" decodes
        when the codec's decoder is trained and otherwise renders the mel frames when there are any.
        """
        renderer = self.resolve_renderer(renderer, input_features is not None)
        if renderer == "mel":
            if input_features is None:
                raise ValueError('renderer="mel" needs mel frames: generate with return_dict_in_generate=True.')
            return self.mel_to_audio(input_features, attention_mask)
        return self.batch_decode(codes, attention_mask)

    def decode(self, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """Codes (K, T) or (1, K, T) -> one float32 waveform."""
        return self.batch_decode(codes)[0]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("audio_tokenizer", None)  # saved as its own folder, weights included
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Write the feature extractor config and the codec (``audio_tokenizer/``) to ``save_directory``."""
        files = super().save_pretrained(save_directory, **kwargs)
        self.audio_tokenizer.save_pretrained(os.path.join(save_directory, AUDIO_TOKENIZER_SUBFOLDER))
        # The audio-continuation pipeline needs the processor, so its code travels with it (see CUSTOM_PIPELINES).
        pipeline_file = Path(inspect.getsourcefile(AudioContinuationPipeline))
        shutil.copy(pipeline_file, Path(save_directory) / pipeline_file.name)
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", os.path.basename(os.path.abspath(save_directory))), **kwargs)
        return files

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload the whole processor, codec included, to the Hub repository ``repo_id``."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=kwargs.pop("token", None))
        repo_id = api.create_repo(repo_id, exist_ok=True, private=kwargs.pop("private", None)).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=kwargs.pop("commit_message", "Upload processor"),
            )
        return commit

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        audio_tokenizer: WhisperGPTAudioTokenizer | None = None,
        **kwargs,
    ) -> WhisperGPTProcessor:
        """Load a processor saved by `save_pretrained` (local folder or Hub id).

        ``audio_tokenizer`` replaces the saved codec, e.g. ``WhisperGPTAudioTokenizer.from_pretrained(
        "facebook/encodec_24khz")`` for a folder saved without one.
        """
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        feature_extractor = WhisperGPTFeatureExtractor.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if audio_tokenizer is None:
            audio_tokenizer = WhisperGPTAudioTokenizer.from_pretrained(
                _resolve_subfolder(pretrained_model_name_or_path, AUDIO_TOKENIZER_SUBFOLDER, hub_kwargs)
            )
        return cls(feature_extractor=feature_extractor, audio_tokenizer=audio_tokenizer)


def _trim(waves: np.ndarray, attention_mask: Any, hop_length: int) -> list[np.ndarray]:
    """(B, T * hop) audio -> list of float32 waveforms, each cut to its real frames when a mask is given."""
    if attention_mask is None:
        return [wave.astype(np.float32) for wave in waves]
    frames = torch.as_tensor(attention_mask).sum(-1).tolist()
    return [wave[: int(count) * hop_length].astype(np.float32) for wave, count in zip(waves, frames, strict=True)]


def _resolve_subfolder(name_or_path: str | os.PathLike, subfolder: str, hub_kwargs: dict[str, Any]) -> str:
    """Local path of ``subfolder`` of a local directory or a Hub repository (downloaded on demand)."""
    inner = os.path.join(hub_kwargs.get("subfolder", ""), subfolder)
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, inner)
        if not os.path.isdir(path):
            raise ValueError(
                f"{name_or_path} holds no {inner}/ folder with the codec; save the processor with "
                "processor.save_pretrained(), or pass audio_tokenizer=WhisperGPTAudioTokenizer.from_pretrained(...)."
            )
        return path
    from huggingface_hub import snapshot_download

    download_kwargs = {key: hub_kwargs[key] for key in ("cache_dir", "token", "revision") if key in hub_kwargs}
    root = snapshot_download(
        str(name_or_path),
        allow_patterns=[f"{inner}/*"],
        local_files_only=hub_kwargs.get("local_files_only", False),
        **download_kwargs,
    )
    return os.path.join(root, inner)


__all__ = ["WhisperGPTProcessor"]
