"""Generation for Whisper-GPT: frame-by-frame continuation of audio codes, with new mel frames for the hybrid.

`WhisperGPTGenerationMixin.generate` runs on transformers' generation machinery (generation config, logits
processors, stopping criteria, streamers) with a decoding loop of its own: each new frame's K codes are picked one
codebook after another (the depth decoder when K > 1), and the hybrid model also reads a new log-mel frame per
frame, made by a `MelFrameSource` (decoded with the codec, looked up among the codec's exemplar frames, or predicted
by the model's mel head).

Shapes: B batch, K codebooks, T prompt frames, N new frames, V codebook size, M mel bins, H hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, StaticCache
from transformers.generation import GenerateDecoderOnlyOutput, GenerationConfig, GenerationMixin
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    ExponentialDecayLengthPenalty,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.generation.stopping_criteria import MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.masking_utils import create_causal_mask
from transformers.utils import logging

from .feature_extraction_whisper_gpt import WhisperGPTFeatureExtractor
from .processing_whisper_gpt import WhisperGPTProcessor

logger = logging.get_logger(__name__)


def default_generation_config(config: Any) -> GenerationConfig:
    """The generation defaults a model ships with: sampling from the 250 most likely codes, up to a context of
    frames (``max_length`` counts frames, prompt included)."""
    return GenerationConfig(do_sample=True, top_k=250, max_length=config.max_position_embeddings)


# ------------------------------------------------------------------------------------------ mel frame sources

# next_frame(new_codes (B, K), window_codes (B, K, W), window_mask (B, W)) -> the new frames' mel (B, 1, M); the
# window is what the model read before the new frame (left-padded).
NextMelFrame = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class MelFrameSource:
    """Where generate() takes the log-mel frame of each new frame from (the hybrid model reads it with the codes).

    A source holds only its own settings; generate() hands it the model, the codec and the feature extractor of the
    call. `check` raises a ValueError when the source cannot run with them; `start` binds the source to one
    generate() call and returns the function that makes the mel frames of each new frame (`NextMelFrame`).
    """

    name: ClassVar[str]

    def check(self, model: Any, audio_tokenizer: Any) -> None:
        """Raise a ValueError when this source cannot make frames for ``model`` with ``audio_tokenizer``."""

    def check_slide(self, model: Any, kept_frames: int) -> None:
        """Raise a ValueError when a context slide that keeps ``kept_frames`` frames leaves too few for the source."""

    def prompt_frames(self, audio_tokenizer: Any, codes: torch.Tensor) -> torch.Tensor | None:
        """Mel frames (B, T, M) for prompt codes (B, K, T) given without any (a token-only model's prompt, which
        the model does not read but whose continuation is rendered from mel frames); None: the source makes none."""
        return None

    def start(
        self,
        model: Any,
        audio_tokenizer: Any,
        feature_extractor: WhisperGPTFeatureExtractor,
        codes: torch.Tensor,
        mask: torch.Tensor,
    ) -> NextMelFrame:
        """Start on the prompt: codes (B, K, T) left-padded, mask (B, T) their real frames."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CodecMelSource(MelFrameSource):
    """Decode each new frame's codes with the codec's streaming decoder (one frame per step, its state carried
    along) and compute the causal log-mel frame of the newest ``hop`` samples with the feature extractor, exactly
    as in training. Exact, and the slowest source (the codec's decoder runs every frame).

    ``window_frames``: the streaming decoder starts from the last ``window_frames`` prompt frames, so starting costs
    the same for any prompt length. A larger window gives the codec's LSTM more of the prompt (closer to decoding the
    whole clip; the convolutions need 32 frames = 0.43 s at most) and only makes the start slower; generated frames
    are always decoded with all context since.
    """

    name = "codec"

    def __init__(self, window_frames: int = 32):
        if window_frames < 1:
            raise ValueError(f"mel_window_frames must be at least 1, got {window_frames}.")
        self.window_frames = window_frames

    def check(self, model: Any, audio_tokenizer: Any) -> None:
        if audio_tokenizer is None:
            raise ValueError(
                "The hybrid model needs audio_tokenizer= in generate(): each new frame's mel spectrogram is computed "
                'from its decoded audio. Pass processor.audio_tokenizer (or mel_source="learned" for a model with a '
                "mel head)."
            )

    def start(
        self,
        model: Any,
        audio_tokenizer: Any,
        feature_extractor: WhisperGPTFeatureExtractor,
        codes: torch.Tensor,
        mask: torch.Tensor,
    ) -> NextMelFrame:
        # Whole hops covering n_fft samples, so the last frame's window ends exactly at the newest sample.
        hop = feature_extractor.hop_length
        samples_needed = math.ceil(feature_extractor.n_fft / hop) * hop
        # Prompts of different lengths start their own streams on their real frames (padding decoded as audio
        # would linger in the codec's LSTM); the streams then go on as one batch.
        lengths = mask.sum(-1).tolist()
        groups = [slice(None)] if len(set(lengths)) == 1 else [slice(row, row + 1) for row in range(len(lengths))]
        streams, tails = [], []
        for rows in groups:
            stream = audio_tokenizer.streaming_decoder()
            audio = stream.start(codes[rows, :, -lengths[rows][0] :], context_frames=self.window_frames)
            streams.append(stream)
            # Zeros before a short prompt's start are what the feature extractor pads with too.
            tails.append(F.pad(audio, (max(0, samples_needed - audio.shape[-1]), 0))[:, -samples_needed:])
        decoder = streams[0].concatenate(streams)
        recent = torch.cat(tails)  # (B, samples_needed): the newest audio

        def next_frame(new_codes: torch.Tensor, window_codes: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
            nonlocal recent
            new_audio = decoder.step(new_codes[:, :, None].to(recent.device), check_values=False)  # sampled: in range
            recent = torch.cat([recent, new_audio], dim=-1)[:, -samples_needed:]
            return feature_extractor.causal_log_mel(recent)[:, -1:].to(model.device, model.dtype)

        return next_frame

    def __repr__(self) -> str:
        return f"CodecMelSource(window_frames={self.window_frames})"


class ExemplarMelSource(MelFrameSource):
    """The real log-mel frame the codec keeps for each codebook-0 code (`fit_mel_exemplars`): no decoder in the
    loop, and sharp frames that keep their harmonics."""

    name = "exemplar"

    def check(self, model: Any, audio_tokenizer: Any) -> None:
        if getattr(audio_tokenizer, "mel_exemplars", None) is None:
            other = '"codec" or "learned"' if model.config.use_mel_head else '"codec"'
            raise ValueError(
                'mel_source="exemplar" needs audio_tokenizer= with mel exemplars (WhisperGPTAudioTokenizer.'
                f"fit_mel_exemplars, which build_processor runs); use {other}."
            )

    def prompt_frames(self, audio_tokenizer: Any, codes: torch.Tensor) -> torch.Tensor:
        return audio_tokenizer.mel_exemplar_frames(codes)

    def start(
        self,
        model: Any,
        audio_tokenizer: Any,
        feature_extractor: WhisperGPTFeatureExtractor,
        codes: torch.Tensor,
        mask: torch.Tensor,
    ) -> NextMelFrame:
        audio_tokenizer.check_mel_exemplars(feature_extractor)
        table = audio_tokenizer.mel_exemplars.to(model.device, model.dtype)  # (V, M), moved once

        def next_frame(new_codes: torch.Tensor, window_codes: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
            return table[new_codes[:, :1]]  # sampled codes are in range: index the table directly

        return next_frame


class LearnedMelSource(MelFrameSource):
    """The mel head of a model trained with ``use_mel_head``: no codec in the loop, but its frames average over what
    a code stood for. It reads the codes of the new frame and of the frames before it that its window covers."""

    name = "learned"

    def check(self, model: Any, audio_tokenizer: Any) -> None:
        if not model.config.use_mel_head:
            raise ValueError('mel_source="learned" needs a model trained with use_mel_head=True; use "codec".')

    def check_slide(self, model: Any, kept_frames: int) -> None:
        needed = model.mel_head.window_frames - 1
        if kept_frames < needed:
            raise ValueError(
                f"context_stride keeps {kept_frames} frames when the context slides, fewer than the {needed} "
                "earlier frames the mel head reads; use a smaller stride."
            )

    def start(
        self,
        model: Any,
        audio_tokenizer: Any,
        feature_extractor: WhisperGPTFeatureExtractor,
        codes: torch.Tensor,
        mask: torch.Tensor,
    ) -> NextMelFrame:
        earlier = model.mel_head.window_frames - 1

        def next_frame(new_codes: torch.Tensor, window_codes: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
            start = max(0, window_codes.shape[-1] - earlier)  # not [-0:] for a 1-frame window
            frames = torch.cat([window_codes[..., start:], new_codes[:, :, None]], dim=-1)  # (B, K, <= F)
            real = F.pad(window_mask[:, start:], (0, 1), value=1)
            return model.mel_head(model.model.embed_codes(frames), real)[:, -1:]

        return next_frame


MEL_SOURCES: dict[str, type[MelFrameSource]] = {
    source.name: source for source in (CodecMelSource, ExemplarMelSource, LearnedMelSource)
}


def default_mel_source(config: Any, audio_tokenizer: Any) -> str | None:
    """The mel source generate() uses when none is asked for: decode with a trained decoder (exact); a local codec's
    decoder makes noise, so then the codec's exemplar frames when it has them (real frames: rendered, they keep
    pitch; a token-only model does not read them, but its continuation can then be rendered from them too), else
    the mel head of a model that has one, else the codec for the hybrid and none (None) for a token-only model."""
    decoder_usable = audio_tokenizer is not None and getattr(audio_tokenizer, "decoder_trained", True)
    if not decoder_usable and getattr(audio_tokenizer, "mel_exemplars", None) is not None:
        return "exemplar"
    if config.use_mel_head and not decoder_usable:
        return "learned"
    return "codec" if config.use_spectrogram else None


def mel_frame_source(
    model: Any,
    mel_source: str | MelFrameSource | None,
    audio_tokenizer: Any,
    mel_window_frames: int | None = None,
) -> MelFrameSource | None:
    """The one place a ``mel_source`` argument becomes a `MelFrameSource`: an instance is used as given, a name
    ("codec", "exemplar", "learned") builds that source, None picks `default_mel_source`. Returns None when a
    token-only model needs no mel frames. The source is checked against the model and codec (ValueError)."""
    if isinstance(mel_source, MelFrameSource):
        if mel_window_frames is not None:
            raise ValueError(
                "mel_window_frames configures the codec source built from a name; set it on the MelFrameSource "
                "instead (CodecMelSource(window_frames=...))."
            )
        source = mel_source
    else:
        name = default_mel_source(model.config, audio_tokenizer) if mel_source is None else mel_source
        if name is None:
            if mel_window_frames is not None:
                raise ValueError("mel_window_frames was passed, but this token-only model generates no mel frames.")
            return None
        if name not in MEL_SOURCES:
            raise ValueError(
                f'mel_source must be "codec", "exemplar", "learned", a MelFrameSource or None, got {mel_source!r}.'
            )
        if name == CodecMelSource.name:
            source = CodecMelSource() if mel_window_frames is None else CodecMelSource(mel_window_frames)
        elif mel_window_frames is not None:
            raise ValueError(
                f'mel_window_frames only applies to mel_source="codec"; the mel frames here come from "{name}".'
            )
        else:
            source = MEL_SOURCES[name]()
    source.check(model, audio_tokenizer)
    return source


# ------------------------------------------------------------------------------------------ generation config

# GenerationConfig fields generate() cannot honour, and why. One is refused (ValueError naming it) when it is set to
# anything but None, False or transformers' global default for it.
REFUSED_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        ("num_beams", "num_beam_groups", "diversity_penalty", "early_stopping", "length_penalty", "constraints"),
        "beam search is not supported; use greedy decoding or sampling",
    ),
    "force_words_ids": "constrained beam search is not supported; use greedy decoding or sampling",
    "low_memory": "it only concerns beam and contrastive search, which are not supported",
    "penalty_alpha": "contrastive search is not supported; use greedy decoding or sampling",
    "dola_layers": "DoLa decoding is not supported; use greedy decoding or sampling",
    **dict.fromkeys(
        (
            "use_mtp",
            "is_assistant",
            "num_assistant_tokens",
            "num_assistant_tokens_schedule",
            "assistant_confidence_threshold",
            "assistant_early_exit",
            "assistant_lookbehind",
            "target_lookbehind",
            "assistant_ensemble_weight",
            "speculation_type",
            "prompt_lookup_num_tokens",
            "max_matching_ngram_size",
        ),
        "assisted decoding and prompt lookup are not supported",
    ),
    "guidance_scale": "classifier-free guidance needs a condition to drop, and a continuation has only its prompt",
    "encoder_repetition_penalty": "the model has no encoder",
    "encoder_no_repeat_ngram_size": "the model has no encoder",
    "stop_strings": "codes are not text; pass a StoppingCriteria in stopping_criteria=",
    "token_healing": "codes are not text",
    "watermarking_config": "text watermarking does not apply to audio codes",
    **dict.fromkeys(
        ("bos_token_id", "forced_bos_token_id", "decoder_start_token_id"),
        "a continuation starts from its prompt; there is no beginning-of-sequence code",
    ),
    "output_attentions": "generate() does not collect them; run the model on the returned sequences instead",
    "output_hidden_states": "generate() does not collect them; run the model on the returned sequences instead",
    "cache_config": "the cache holds the model's context; set cache_implementation only",
    "max_cache_len": "the cache holds the model's context (max_position_embeddings frames)",
    "continuous_batching_config": "continuous batching is not supported",
    "prefill_chunk_size": "the prompt is prefilled in one pass",
}
# Fields generate() honours (the rest of GenerationConfig's fields are in REFUSED_FIELDS; a test checks the split).
HONOURED_FIELDS = (
    "max_length max_new_tokens min_length min_new_tokens max_time do_sample use_cache cache_implementation "
    "temperature top_k top_p min_p top_h typical_p epsilon_cutoff eta_cutoff repetition_penalty no_repeat_ngram_size "
    "bad_words_ids renormalize_logits forced_eos_token_id remove_invalid_values exponential_decay_length_penalty "
    "suppress_tokens begin_suppress_tokens sequence_bias num_return_sequences output_scores output_logits "
    "return_dict_in_generate pad_token_id eos_token_id compile_config disable_compile"
).split()
CACHE_IMPLEMENTATIONS = (None, "dynamic", "static")
# Arguments of transformers' generate() that this one cannot honour.
REFUSED_ARGUMENTS: dict[str, str] = {
    "assistant_model": "assisted decoding is not supported",
    "assistant_tokenizer": "assisted decoding is not supported",
    "prefix_allowed_tokens_fn": "pass a LogitsProcessor in logits_processor= (it sees each codebook's codes)",
    "negative_prompt_ids": "classifier-free guidance is not supported",
    "negative_prompt_attention_mask": "classifier-free guidance is not supported",
    "custom_generate": "this model's generate() is its own decoding loop",
    "synced_gpus": "generation across GPUs in lockstep is not supported",
    "tokenizer": "codes are not text",
    "inputs_embeds": "a prompt is given as codes (input_ids)",
    "cache": "generate() builds its own cache (the context slides)",
    "past_key_values": "generate() builds its own cache (the context slides)",
    "position_ids": "positions follow the attention mask",
}
# Logits processors that read only the scores, never the codes so far (whose length grows every frame): a compiled
# frame samples through these; any other processor makes the codes of a frame be picked eagerly.
SCORE_ONLY_PROCESSORS = (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    InfNanRemoveLogitsProcessor,
)
# Logits processors about the end-of-sequence code: they act on codebook 0 only, where an EOS ends a row.
EOS_PROCESSORS = (
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    ExponentialDecayLengthPenalty,
    ForcedEOSTokenLogitsProcessor,
)


def check_generation_config(config: GenerationConfig) -> None:
    """Raise a ValueError naming the first field of ``config`` that generate() cannot honour."""
    defaults = GenerationConfig._get_default_generation_params()
    for field, reason in REFUSED_FIELDS.items():
        value = getattr(config, field, None)
        if value is None or value is False or (field in defaults and value == defaults[field]):
            continue
        if field == "guidance_scale" and value == 1:
            continue
        raise ValueError(f"{field}={value!r} is not supported by Whisper-GPT's generate(): {reason}.")
    if config.cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise ValueError(
            f'cache_implementation={config.cache_implementation!r} is not supported; use None, "dynamic" or "static".'
        )
    if config.compile_config is not None and not config.disable_compile and config.cache_implementation != "static":
        raise ValueError(
            "compile_config compiles the decoding steps, which needs tensors of fixed shape: pass "
            'cache_implementation="static" too (or disable_compile=True).'
        )
    if config.pad_token_id is not None and config.eos_token_id is None:
        raise ValueError(
            "pad_token_id only pads the rows that ended with eos_token_id; set eos_token_id too, or drop pad_token_id."
        )


# ------------------------------------------------------------------------------------------ generate


class WhisperGPTGenerationMixin(GenerationMixin):
    """`generate()` for `WhisperGPTForCausalLM`: codes (B, K, T) in, codes (B, K, T + N) out."""

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: BaseStreamer | None = None,
        audio_tokenizer: Any = None,
        feature_extractor: WhisperGPTFeatureExtractor | None = None,
        mel_source: str | MelFrameSource | None = None,
        mel_window_frames: int | None = None,
        context_stride: int | None = None,
        generator: torch.Generator | None = None,
        output_audio: bool = False,
        **kwargs: Any,
    ) -> torch.LongTensor | WhisperGPTGenerateOutput | list[torch.Tensor]:
        """Continue audio given as codes (and, for the hybrid model, its mel frames), one frame at a time.

        Each step runs the decoder over the newest frame (with the KV cache), picks the next frame's K codes one
        codebook after another (the depth decoder, with its own cache, when K > 1: codebook k sees the codes
        already picked for the frame), and, when the model reads mel frames, gets that frame's log-mel frame from
        ``mel_source``. When the context (``max_position_embeddings`` frames) is full, the oldest
        ``context_stride`` frames are dropped and the rest re-read as a new prompt (positions restart at 0).

        Args:
            input_ids: (B, K_in >= K, T) prompt codes. Prompts of different lengths are padded as the processor
                pads them (right) or on the left; ``attention_mask`` says which.
            input_features: (B, T, M) prompt mel frames (the hybrid model reads them; for a token-only model they
                are only returned, with the new frames', for rendering).
            attention_mask: (B, T) 1 on each prompt's real frames, one run of them per row. Default: all real.
            generation_config / kwargs: a `GenerationConfig` and overrides of its fields (the model's
                ``generation_config`` fills the rest: sampling from the top 250 codes up to ``max_length`` = the
                context in frames). Lengths count frames: ``max_new_tokens`` frames to add (75 per second),
                ``max_length`` frames in all (the padded prompt included), ``min_new_tokens`` / ``min_length``
                frames before any stopping criterion or EOS may end a row. Sampling: ``do_sample``,
                ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``typical_p``, ... and the other logits
                processors transformers builds from the config; ``num_return_sequences`` samples per prompt;
                ``use_cache`` (False recomputes the whole window each frame; same result) and
                ``cache_implementation`` (None / "dynamic" or "static"). EOS: ``eos_token_id`` is a code of
                codebook 0; a row whose codebook-0 code is an EOS ends with that frame, and the rows that ended get
                ``pad_token_id`` (default: the first EOS) on every codebook while the others go on; in the returned
                sequences the frames after a row's end are padding. A field generate() cannot honour (beam search,
                assisted decoding and prompt lookup, contrastive search, guidance_scale, stop_strings, ...:
                `REFUSED_FIELDS`) raises a ValueError naming it.
            logits_processor: `LogitsProcessor`s merged with those built from the config (transformers' merge: a
                user processor of the same type replaces the built one). Every processor runs once per codebook
                per frame on that codebook's scores (N, V) with that codebook's codes so far as ``input_ids``
                (N, T + frames generated, the prompts left-padded), N = B * num_return_sequences. Those about the
                EOS (min_length, min_new_tokens, exponential_decay_length_penalty, forced_eos_token_id) act on
                codebook 0 only.
            stopping_criteria: `StoppingCriteria`s merged with those built from the config (``max_length``,
                ``max_time``, EOS). They see codebook 0's codes (N, T + frames generated, left-padded) and the
                scores so far (a tuple of (N, K, V) when ``output_scores``, else None), and return which rows end;
                generation stops when all have ended.
            streamer: a `BaseStreamer`: ``put`` gets the prompt's real frames (1, K, T), then each new frame
                (1, K, 1); ``end`` at the end. Batch size 1 (and one return sequence) only.
            audio_tokenizer: the codec the model was trained with: needed by the codec mel source, the exemplar
                source (its table) and ``output_audio``.
            feature_extractor: computes the codec source's mel frames; defaults to `mel_feature_extractor()` (pass
                the processor's to be explicit).
            mel_source: where new mel frames come from, a `MelFrameSource` or the name of one: ``"codec"``
                (`CodecMelSource`), ``"exemplar"`` (`ExemplarMelSource`), ``"learned"`` (`LearnedMelSource`).
                Default (`default_mel_source`): "exemplar" when the codec's decoder is not trained and the codec
                has exemplars (for a token-only model too: it reads none, but its continuation can be rendered
                from them), else "learned" for a model with a mel head and such a codec, else "codec" for the
                hybrid and none for a token-only model.
            mel_window_frames: the codec source's ``window_frames`` (default 32), when it is built from a name.
            context_stride: frames dropped when the context slides; default a quarter of the context.
            generator: a seeded `torch.Generator` for reproducible sampling (else the global RNG, so
                `transformers.set_seed` works too).
            output_audio: also return the waveforms, rendered as the pipeline and the command line render by
                default (`WhisperGPTProcessor.render` with renderer "auto": the codec's decoder when it is
                trained, else Griffin-Lim from the mel frames when there are any). Needs ``audio_tokenizer``.
        Returns:
            ``sequences`` (B * num_return_sequences, K, L) codes: each prompt's real frames followed by its new
            frames, right-padded with 0 (whatever the prompt's padding), L = the longest row (T + N without EOS).
            With ``return_dict_in_generate`` a `WhisperGPTGenerateOutput` with ``sequences``, ``attention_mask``
            (B, L) marking each row's real frames, ``input_features`` (B, L, M) the mel frames the model read and
            made (None without a mel source), ``scores`` / ``logits`` (``output_scores`` / ``output_logits``: N
            tensors (B, K, V), processed / raw) and ``audio`` (``output_audio``). Else, with ``output_audio``, the
            list of B waveforms (float32 1-D tensors at the codec's rate), else ``sequences``.
        """
        config, model_kwargs = self._prepare_generation_config(generation_config, **kwargs)
        check_generation_config(config)
        _check_arguments(model_kwargs)
        codes = self.model.validate_codes(input_ids).to(self.device)  # (B, K, T): the one check of their values
        batch_size, _, length = codes.shape
        starts, lengths = _prompt_spans(attention_mask, batch_size, length, codes.device)

        if audio_tokenizer is not None:
            self.validate_audio_tokenizer(audio_tokenizer)
        if output_audio and audio_tokenizer is None:
            raise ValueError("output_audio=True needs audio_tokenizer= (the codec that renders or decodes the codes).")
        source = mel_frame_source(self, mel_source, audio_tokenizer, mel_window_frames)
        if source is None:
            input_features = None
        else:
            feature_extractor = feature_extractor or self.mel_feature_extractor()
            self.validate_feature_extractor(feature_extractor)
            if input_features is None and not self.config.trains_on_mel_frames:
                # A token-only model reads no mel frames; its prompt's are only returned for rendering.
                input_features = source.prompt_frames(audio_tokenizer, codes)
                if input_features is None:
                    raise ValueError(
                        f'mel_source="{source.name}" returns mel frames for the whole sequence: pass the prompt\'s '
                        "input_features too (the processor returns them)."
                    )
                input_features = input_features.to(self.device, self.dtype)
            input_features = self.model.validate_features(input_features, length).to(self.device)
        codes, input_features, mask = _left_align(codes, input_features, starts, lengths)

        repeats = config.num_return_sequences or 1
        codes, mask = codes.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
        if input_features is not None:
            input_features = input_features.repeat_interleave(repeats, 0)
        lengths = [value for value in lengths for _ in range(repeats)]
        if streamer is not None and codes.shape[0] != 1:
            raise ValueError("A streamer follows one sequence: use batch size 1 and num_return_sequences=1.")

        context = self.config.max_position_embeddings
        stride = max(1, context // 4) if context_stride is None else context_stride
        if not 0 < stride < context:
            raise ValueError(f"context_stride must be in [1, {context - 1}], got {stride}.")
        if source is not None:
            source.check_slide(self, context - stride)

        if config.max_new_tokens is not None:  # max_new_tokens takes precedence, as in transformers
            config.max_length = length + config.max_new_tokens
        self._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=codes.device)
        _check_special_codes(config, self.config.codebook_size)
        processors = self._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=length,
            logits_processor=logits_processor if logits_processor is not None else LogitsProcessorList(),
            device=codes.device,
            model_kwargs={"attention_mask": mask},  # the repetition penalty skips the left padding
        )
        criteria = self._get_stopping_criteria(
            config, stopping_criteria if stopping_criteria is not None else StoppingCriteriaList()
        )
        for criterion in criteria:
            if type(criterion) is MaxLengthCriteria and criterion.max_length == config.max_length:
                criterion.max_position_embeddings = None  # the context slides: a long sequence is no warning
        max_length = min(c.max_length for c in criteria if isinstance(c, MaxLengthCriteria))  # a user's may be less
        max_new = max_length - length
        if max_new < 1:
            raise ValueError(
                f"max_length={max_length} frames leaves no room after the prompt's {length} frames; pass "
                "max_new_tokens (the number of frames to add, 75 per second)."
            )
        min_new = max(config.min_new_tokens or 0, (config.min_length or 0) - length)

        if streamer is not None:
            streamer.put(codes[..., length - lengths[0] :].cpu())
        loop = _FrameLoop(
            model=self,
            config=config,
            codebook_processors=self._codebook_processors(processors),
            criteria=criteria,
            next_mel=None if source is None else source.start(self, audio_tokenizer, feature_extractor, codes, mask),
            generator=generator,
            streamer=streamer,
            context=context,
            stride=stride,
        )
        sequences, new_lengths, new_features, scores, logits = loop.run(codes, input_features, mask, max_new, min_new)
        if streamer is not None:
            streamer.end()

        sequences, out_mask, features = _right_align(
            sequences, input_features, new_features, lengths, new_lengths, length
        )
        audio = None
        if output_audio:
            processor = WhisperGPTProcessor(feature_extractor or self.mel_feature_extractor(), audio_tokenizer)
            waves = processor.render(sequences, features, out_mask)
            audio = [torch.from_numpy(wave) for wave in waves]
        if config.return_dict_in_generate:
            return WhisperGPTGenerateOutput(
                sequences=sequences,
                scores=scores,
                logits=logits,
                attention_mask=out_mask,
                input_features=features,
                audio=audio,
            )
        return audio if output_audio else sequences

    def resolve_mel_source(self, mel_source: str | None, audio_tokenizer: Any) -> str | None:
        """The name of the mel source generate() uses for ``mel_source`` (None: `default_mel_source`) and this
        codec: "codec", "exemplar", "learned", or None (a token-only model needs none). ValueError when that source
        cannot run (see `mel_frame_source`)."""
        source = mel_frame_source(self, mel_source, audio_tokenizer)
        return None if source is None else source.name

    def _codebook_processors(self, processors: LogitsProcessorList) -> list[list[LogitsProcessor]]:
        """The processors each codebook's scores go through: all of them for codebook 0, all but the EOS ones for
        the others (an EOS is a codebook-0 code)."""
        others = [processor for processor in processors if not isinstance(processor, EOS_PROCESSORS)]
        return [list(processors)] + [others] * (self.config.num_codebooks - 1)

    def _sample_frame(
        self,
        frame_state: torch.Tensor,
        history: torch.Tensor | None,
        codebook_processors: list[list[LogitsProcessor]],
        uniforms: torch.Tensor | None,
        keep_scores: bool = False,
        keep_logits: bool = False,
        steps: DecodingSteps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Pick the K codes of the next frame from the frame state (N, H); history (N, K, L) the codes so far (None
        when every processor reads only the scores). ``uniforms`` (N, K) in [0, 1) are the frame's sampling draws,
        one per codebook (`draw_codes`); None decodes greedily. ``steps`` runs the depth decoder (None: the eager
        step with a cache of its own, which is also what one compiled graph for the whole frame traces).

        Returns the codes (N, K) and, when asked, the processed scores and the raw logits (N, K, V).
        """
        num_codebooks = self.config.num_codebooks
        if num_codebooks > 1:  # codebook k conditions on the codes already picked for this frame
            # Unrolled in one graph, the K steps see a growing cache of fixed shape at every step.
            depth_cache = DynamicCache() if steps is None else steps.depth_cache()
            depth_step = self.depth_decoder.step if steps is None else steps.depth_step
            projected = self.depth_decoder.in_proj(frame_state)
        picked: list[torch.Tensor] = []
        all_scores, all_logits = [], []
        for codebook in range(num_codebooks):
            if num_codebooks == 1:
                logits = self.lm_head(frame_state)
            else:
                previous = picked[-1][:, 0] if picked else None
                logits = depth_step(projected, previous, codebook, depth_cache)
            logits = logits.float()
            scores = logits
            codes_so_far = None if history is None else history[:, codebook]
            for processor in codebook_processors[codebook]:  # called directly: LogitsProcessorList inspects
                scores = processor(codes_so_far, scores)  # signatures on every call
            if uniforms is None:
                code = scores.argmax(dim=-1, keepdim=True)
            else:
                code = draw_codes(scores, uniforms[:, codebook])
            picked.append(code)
            if keep_scores:
                all_scores.append(scores)
            if keep_logits:
                all_logits.append(logits)
        return (
            torch.cat(picked, dim=1),
            torch.stack(all_scores, dim=1) if keep_scores else None,
            torch.stack(all_logits, dim=1) if keep_logits else None,
        )


def draw_codes(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one code per row of ``scores`` (N, V) from softmax(scores) by inverting its CDF at ``uniforms`` (N,)
    in [0, 1); returns (N, 1). A code of probability 0 is never drawn. Drawing the uniforms outside the decoding
    step keeps eager and compiled steps on the same random stream, so both give the same codes for one seed."""
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)
    targets = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, targets, right=True).clamp_(max=scores.shape[-1] - 1)


@dataclass
class WhisperGPTGenerateOutput(GenerateDecoderOnlyOutput):
    """What `WhisperGPTGenerationMixin.generate` returns with ``return_dict_in_generate=True``.

    ``sequences`` (B, K, L) codes, prompt then new frames, right-padded with 0; ``scores`` / ``logits`` (with
    ``output_scores`` / ``output_logits``) a tuple of one (B, K, V) tensor per new frame, processed / raw;
    ``attention_mask`` (B, L) each row's real frames; ``input_features`` (B, L, M) the mel frames the model read
    and made (the prompt's, then those of the new frames), right-padded with 0, or None without a mel source;
    ``audio`` (with ``output_audio``) B float32 waveforms (1-D tensors at the codec's rate), each trimmed to its
    row. ``attentions``, ``hidden_states`` and ``cache`` are not collected (None).
    """

    attention_mask: torch.LongTensor | None = None
    input_features: torch.Tensor | None = None
    audio: list[torch.Tensor] | None = None


class _FrameLoop:
    """The decoding loop of one generate() call, over a left-padded window (codes (B, K, W), mel frames
    (B, W, M) for a model that reads them, mask (B, W)) and the full sequences (B, K, T + N)."""

    def __init__(
        self,
        model: Any,
        config: GenerationConfig,
        codebook_processors: list[list[LogitsProcessor]],
        criteria: StoppingCriteriaList,
        next_mel: NextMelFrame | None,
        generator: torch.Generator | None,
        streamer: BaseStreamer | None,
        context: int,
        stride: int,
    ):
        self.model, self.config = model, config
        self.codebook_processors, self.criteria = codebook_processors, criteria
        self.next_mel, self.generator, self.streamer = next_mel, generator, streamer
        self.context, self.stride = context, stride
        # Only criteria beyond max_length need a look at the codes each frame (max_length bounds the loop); that
        # look is the loop's one host sync per frame.
        self.check_criteria = any(not isinstance(criterion, MaxLengthCriteria) for criterion in criteria)
        self.reads_mel = model.config.use_spectrogram

    def run(
        self,
        codes: torch.Tensor,
        features: torch.Tensor | None,
        mask: torch.Tensor,
        max_new: int,
        min_new: int,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], tuple | None, tuple | None]:
        """Generate up to ``max_new`` frames after the prompt (codes (B, K, T), features (B, T, M) or None,
        mask (B, T), left-padded); no criterion ends a row before ``min_new`` frames.

        Returns the sequences (B, K, T + n) (left-padded prompt, then n frames), each row's new frames up to its
        end (B,), the new mel frames (n of (B, 1, M)) and the scores / logits (tuples of (B, K, V)) when asked.
        """
        config, model = self.config, self.model
        batch_size, num_codebooks, length = codes.shape
        sequences = codes.new_zeros(batch_size, num_codebooks, length + max_new)
        sequences[..., :length] = codes
        keep_scores = bool(config.return_dict_in_generate and config.output_scores)
        keep_logits = bool(config.return_dict_in_generate and config.output_logits)
        scores: tuple | None = () if keep_scores else None
        logits: tuple | None = () if keep_logits else None
        eos = config._eos_token_tensor
        pad = config._pad_token_tensor
        unfinished = torch.ones(batch_size, dtype=torch.bool, device=codes.device)
        new_lengths = torch.zeros(batch_size, dtype=torch.long, device=codes.device)
        new_features: list[torch.Tensor] = []

        window = _Window(codes, features if self.reads_mel else None, mask)
        if window.codes.shape[-1] > self.context:  # a prompt longer than the context: keep its newest frames
            window.crop(self.context - self.stride)
        steps = DecodingSteps(model, config, self.codebook_processors, keep_scores, keep_logits)
        cache = steps.new_cache(frames=min(self.context, window.codes.shape[-1] + max_new))
        frame_state = window.prefill(model, cache)
        current = length
        for step in range(max_new):
            uniforms = None
            if config.do_sample:
                uniforms = torch.rand(batch_size, num_codebooks, generator=self.generator, device=codes.device)
            new_codes, step_scores, step_logits = steps.sample(frame_state, sequences[..., :current], uniforms)
            if eos is not None:  # rows that ended go on with padding
                new_codes = torch.where(unfinished[:, None], new_codes, pad)
            new_lengths += unfinished
            sequences[..., current] = new_codes
            current += 1
            if keep_scores:
                scores += (step_scores,)
            if keep_logits:
                logits += (step_logits,)
            new_mel = None
            if self.next_mel is not None:
                new_mel = self.next_mel(new_codes, window.codes, window.mask)
                new_features.append(new_mel)
            window.append(new_codes, new_mel if self.reads_mel else None)
            if self.streamer is not None:
                self.streamer.put(new_codes[:, :, None].cpu())
            if self.check_criteria and step + 1 >= min_new:
                unfinished &= ~self.criteria(sequences[:, 0, :current], scores)
                if not bool(unfinished.any()):
                    break
            if step == max_new - 1:
                break
            if window.codes.shape[-1] > self.context:  # context full: slide the window
                window.crop(self.context - self.stride)
                cache = steps.new_cache(cache)
                frame_state = window.prefill(model, cache)
            elif cache is None:
                frame_state = window.prefill(model, None)
            else:
                frame_state = window.step(steps, cache)
        return sequences[..., :current], new_lengths, new_features, scores, logits


class _Window:
    """The frames the model reads, left-padded: codes (B, K, W), mel frames (B, W, M) or None, mask (B, W)."""

    def __init__(self, codes: torch.Tensor, features: torch.Tensor | None, mask: torch.Tensor):
        self.codes, self.features, self.mask = codes, features, mask

    def positions(self) -> torch.Tensor:
        return (self.mask.cumsum(-1) - 1).clamp(min=0)

    def append(self, new_codes: torch.Tensor, new_features: torch.Tensor | None) -> None:
        self.codes = torch.cat([self.codes, new_codes[:, :, None]], dim=-1)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        if self.features is not None:
            self.features = torch.cat([self.features, new_features], dim=1)

    def crop(self, keep: int) -> None:
        self.codes, self.mask = self.codes[..., -keep:], self.mask[:, -keep:]
        if self.features is not None:
            self.features = self.features[:, -keep:]

    def prefill(self, model: Any, cache: Cache | None) -> torch.Tensor:
        """Run the whole window; returns the last frame's state (B, H)."""
        return model.decoding_step(self.codes, self.features, self.mask, self.positions(), cache)[:, -1]

    def step(self, steps: DecodingSteps, cache: Cache) -> torch.Tensor:
        """Run the newest frame over the cached window; returns its state (B, H)."""
        features = None if self.features is None else self.features[:, -1:]
        return steps.frame(self.codes[..., -1:], features, self.mask, self.positions()[:, -1:], cache)[:, -1]


class DecodingSteps:
    """How generate() runs one new frame: the decoder over its cache, then the picking of the frame's K codes.

    Eager by default, with `DynamicCache`s. ``cache_implementation="static"`` gives both decoders caches of fixed
    shape (the decoder's holds the context; the depth decoder's one slot per codebook, reset each frame), and the
    decoder's mask is built before the step, so every step sees tensors of the same shapes. A ``compile_config``
    (with the static cache) then runs, through `torch.compile` with its settings, the decoder step and the picking
    of a frame's codes as one graph each: the K depth steps unrolled, the logits processors and `draw_codes` inside,
    so a frame costs two compiled calls. Processors that read the codes so far (repetition penalty, n-gram bans, the
    EOS ones; see `SCORE_ONLY_PROCESSORS`) change shape every frame: with them the codes are picked eagerly, and a
    one-line warning says so. Where compiling fails (no C++ compiler, an unsupported backend), a one-line warning
    says so and the steps run eagerly.
    """

    def __init__(
        self,
        model: Any,
        config: GenerationConfig | None = None,
        codebook_processors: list[list[LogitsProcessor]] | None = None,
        keep_scores: bool = False,
        keep_logits: bool = False,
    ):
        self.model = model
        self.use_cache = True if config is None else bool(config.use_cache)
        self.static = config is not None and config.cache_implementation == "static"
        self.codebook_processors = codebook_processors or [[] for _ in range(model.config.num_codebooks)]
        self.keep_scores, self.keep_logits = keep_scores, keep_logits
        self._depth_cache: Cache | None = None
        self.frame_step = model.decoding_step
        self.depth_step = model.depth_decoder.step if model.config.num_codebooks > 1 else None
        self._compiled_frame_codes: Callable[[torch.Tensor, torch.Tensor | None], tuple] | None = None
        if self.static and config.compile_config is not None and not config.disable_compile:
            settings = config.compile_config.to_dict()
            options = {key: settings[key] for key in ("fullgraph", "dynamic", "backend", "mode", "options")}
            self.frame_step = _eager_fallback(torch.compile(model.decoding_step, **options), model.decoding_step)
            history_readers = sorted(
                {
                    type(processor).__name__
                    for processors in self.codebook_processors
                    for processor in processors
                    if not isinstance(processor, SCORE_ONLY_PROCESSORS)
                }
            )
            if history_readers:
                logger.warning(
                    f"compile_config: {', '.join(history_readers)} read the codes generated so far, so each frame's "
                    "codes are picked eagerly (the decoder step is still compiled)."
                )
            else:
                self._compiled_frame_codes = _eager_fallback(
                    torch.compile(self._frame_codes, **options), self._frame_codes
                )

    def _frame_codes(self, frame_state: torch.Tensor, uniforms: torch.Tensor | None) -> tuple:
        """`_sample_frame` with score-only processors: a function of the state and the draws alone."""
        return self.model._sample_frame(
            frame_state, None, self.codebook_processors, uniforms, self.keep_scores, self.keep_logits
        )

    def sample(
        self, frame_state: torch.Tensor, history: torch.Tensor, uniforms: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The next frame's codes (N, K) and, when kept, its scores and logits (N, K, V): `_sample_frame`."""
        if self._compiled_frame_codes is not None:
            return self._compiled_frame_codes(_fresh_strides(frame_state), uniforms)
        return self.model._sample_frame(
            frame_state, history, self.codebook_processors, uniforms, self.keep_scores, self.keep_logits, self
        )

    def new_cache(self, previous: Cache | None = None, frames: int | None = None) -> Cache | None:
        """The decoder's cache for a new window (None without a cache); a static one is reused, reset.

        ``frames``: the most the window will hold (default: the context). A static cache gets the smallest power
        of two from 64 up that holds them, at most the context: every step attends over all its slots, so a short
        continuation should not pay for the whole context, and a few sizes keep the compiled graphs few."""
        if not self.use_cache:
            return None
        if not self.static:
            return DynamicCache(config=self.model.config)
        if previous is not None:
            previous.reset()
            return previous
        context = self.model.config.max_position_embeddings
        slots = context if frames is None else min(context, max(64, 1 << (frames - 1).bit_length()))
        return StaticCache(config=self.model.config, max_cache_len=slots)

    def frame(
        self,
        codes: torch.Tensor,
        features: torch.Tensor | None,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Cache,
    ) -> torch.Tensor:
        """One new frame over the cache: `decoding_step` of codes (B, K, 1) -> states (B, 1, H)."""
        if self.static:  # fixed shapes and strides: the (B, 1, 1, context) mask is built outside the compiled step
            shape = torch.empty(codes.shape[0], 1, 0, dtype=self.model.dtype, device=codes.device)
            mask = create_causal_mask(
                config=self.model.config, inputs_embeds=shape, attention_mask=mask, cache=cache, position_ids=positions
            )
            codes, positions = _fresh_strides(codes), _fresh_strides(positions)
            features = None if features is None else _fresh_strides(features)
        return self.frame_step(codes, features, mask, positions, cache)

    def depth_cache(self) -> Cache:
        """The depth decoder's cache for a new frame."""
        if not self.static:
            return DynamicCache()
        if self._depth_cache is None:
            self._depth_cache = self.model.depth_decoder.static_cache()
        self._depth_cache.reset()
        return self._depth_cache


def _fresh_strides(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with the default strides of its shape. A compiled step is specialised on strides, and a slice
    such as ``x[:, -1:]`` keeps the strides of ``x``, whose length grows every frame (``contiguous()`` returns
    such a slice as it is when its sliced dimension has size 1)."""
    return tensor.clone(memory_format=torch.contiguous_format)


def _eager_fallback(compiled: Any, eager: Any) -> Any:
    """``compiled``, or ``eager`` from the first call on where compiling fails (with a one-line warning)."""
    state = {"function": compiled}

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return state["function"](*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            logger.warning(f"torch.compile failed ({first_line}); generating with the eager decoding steps.")
            state["function"] = eager
            return eager(*args, **kwargs)

    return call


def _check_arguments(model_kwargs: dict[str, Any]) -> None:
    """What `_prepare_generation_config` left over is no GenerationConfig field: refuse it."""
    passed = {key: value for key, value in model_kwargs.items() if value is not None and value is not False}
    for name, reason in REFUSED_ARGUMENTS.items():
        if name in passed:
            raise ValueError(f"{name} is not supported by Whisper-GPT's generate(): {reason}.")
    if passed:
        raise TypeError(f"generate() got unexpected arguments: {sorted(passed)}")


def _check_special_codes(config: GenerationConfig, codebook_size: int) -> None:
    """EOS and pad are codes of the codebooks: they must be in [0, codebook_size)."""
    for name, tensor in (("eos_token_id", config._eos_token_tensor), ("pad_token_id", config._pad_token_tensor)):
        if tensor is not None and bool(((tensor < 0) | (tensor >= codebook_size)).any()):
            raise ValueError(
                f"{name} must be a code in [0, {codebook_size}) (an EOS is a codebook-0 code), got {tensor.tolist()}."
            )


def _prompt_spans(
    attention_mask: torch.Tensor | None, batch_size: int, length: int, device: torch.device
) -> tuple[list[int], list[int]]:
    """Where each prompt's real frames start and how many there are, from a (B, T) mask (right or left padding)."""
    if attention_mask is None:
        return [0] * batch_size, [length] * batch_size
    if attention_mask.shape != (batch_size, length):
        raise ValueError(
            f"attention_mask must have shape (batch, frames) = ({batch_size}, {length}), got "
            f"{tuple(attention_mask.shape)}."
        )
    real = attention_mask.to(device) != 0
    counts = real.sum(-1)
    starts = real.int().argmax(-1)
    positions = torch.arange(length, device=device)[None]
    one_run = ((positions >= starts[:, None]) & (positions < (starts + counts)[:, None])) == real
    spans = torch.stack([starts, counts, one_run.all(-1).long()]).tolist()  # the one host sync on the mask
    if min(spans[1]) < 1:
        raise ValueError("Every prompt needs at least one frame of audio; got an empty prompt.")
    if not all(spans[2]):
        raise ValueError(
            "attention_mask must mark one run of real frames per row (prompts padded on the right, as the processor "
            "pads, or on the left)."
        )
    return spans[0], spans[1]


def _left_align(
    codes: torch.Tensor, features: torch.Tensor | None, starts: list[int], lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Padded prompts -> left-padded ones, so every prompt's newest frame is the last column; returns the codes
    (padding zeroed), the mel frames and the mask (B, T)."""
    length = codes.shape[-1]
    shift = [length - (start + count) for start, count in zip(starts, lengths, strict=True)]
    codes = _roll_rows(codes, shift, dim=-1)
    if features is not None:
        features = _roll_rows(features, shift, dim=0)
    mask = (torch.arange(length)[None, :] >= torch.tensor([length - count for count in lengths])[:, None]).long()
    mask = mask.to(codes.device)
    return codes * mask[:, None], features, mask


def _right_align(
    sequences: torch.Tensor,
    prompt_features: torch.Tensor | None,
    new_features: list[torch.Tensor],
    lengths: list[int],
    new_lengths: torch.Tensor,
    prompt_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Left-padded prompts of ``prompt_length`` frames + new frames (B, K, T + n) -> right-padded codes (B, K, L),
    mask (B, L) and mel frames (B, L, M) or None, as the processor pads; each row keeps its ``lengths`` prompt
    frames and its ``new_lengths`` new frames."""
    back = [count - prompt_length for count in lengths]  # each row's left padding moves to the end
    total = torch.tensor(lengths, device=new_lengths.device) + new_lengths  # (B,)
    width = int(total.max())  # the one host sync at the end
    mask = (torch.arange(width, device=total.device)[None, :] < total[:, None]).long()
    codes = _roll_rows(sequences, back, dim=-1)[..., :width] * mask[:, None]
    features = None
    if prompt_features is not None:
        features = torch.cat([prompt_features, *new_features], dim=1)  # (B, T + n, M)
        features = _roll_rows(features, back, dim=0)[:, :width] * mask[:, :, None].to(features.dtype)
    return codes, mask, features


def _roll_rows(batch: torch.Tensor, shifts: list[int], dim: int) -> torch.Tensor:
    """Roll each row ``batch[i]`` by ``shifts[i]`` along its dimension ``dim`` (padding moves between ends)."""
    return torch.stack([torch.roll(row, shift, dims=dim) for row, shift in zip(batch, shifts, strict=True)])


__all__ = [
    "CodecMelSource",
    "ExemplarMelSource",
    "LearnedMelSource",
    "MelFrameSource",
    "WhisperGPTGenerateOutput",
    "WhisperGPTGenerationMixin",
    "default_mel_source",
    "mel_frame_source",
]
