"""Generation for Whisper-GPT: frame-by-frame continuation of audio codes, with new mel frames for the hybrid.

Shapes: B batch, K codebooks, T frames, V codebook size, M mel bins, H hidden size.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationConfig, GenerationMixin
from transformers.generation.logits_process import (
    LogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.utils import ModelOutput

from .feature_extraction_whisper_gpt import WhisperGPTFeatureExtractor


def default_generation_config(config: Any) -> GenerationConfig:
    """The generation defaults a model ships with: sampling from the 250 most likely codes, up to a context of
    frames (``max_length`` counts frames, prompt included)."""
    return GenerationConfig(do_sample=True, top_k=250, max_length=config.max_position_embeddings)


class WhisperGPTGenerationMixin(GenerationMixin):
    """`generate()` for `WhisperGPTForCausalLM`: codes (B, K, T) in, codes (B, K, T + N) out."""

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_tokenizer: Any = None,
        feature_extractor: WhisperGPTFeatureExtractor | None = None,
        generation_config: GenerationConfig | None = None,
        generator: torch.Generator | None = None,
        streamer: Any = None,
        mel_source: str | None = None,
        mel_window_frames: int = 32,
        context_stride: int | None = None,
        use_cache: bool = True,
        return_dict_in_generate: bool = False,
        **kwargs: Any,
    ) -> torch.LongTensor | WhisperGPTGenerateOutput:
        """Continue audio given as codes (and, for the hybrid model, its mel frames).

        Args:
            input_ids: (B, K_in >= K, T) prompt codes, right-padded as the processor returns them.
            input_features: (B, T, M) prompt mel frames (hybrid model only).
            attention_mask: (B, T) marks the real frames of prompts of different lengths.
            audio_tokenizer: the codec the model was trained with. The hybrid model needs it: each new
                frame's codes are decoded with the codec's streaming decoder (one frame per step, the decoder's
                state carried along) and the mel frame of the newest ``hop`` samples is computed with the feature
                extractor, exactly as in training.
            mel_window_frames: the streaming decoder starts from the last ``mel_window_frames`` prompt frames,
                so starting costs the same for any prompt length. A larger window gives the codec's LSTM more of
                the prompt (closer to decoding the whole clip; the convolutions need 32 frames = 0.43 s at most)
                and only makes the start slower; generated frames are always decoded with all context since.
            feature_extractor: defaults to `mel_feature_extractor()`; pass the processor's to be explicit.
            mel_source: where new mel frames come from: ``"codec"`` (decode, as above; exact), ``"exemplar"``
                (the real log-mel frame the codec keeps for each codebook-0 code, `fit_mel_exemplars`: no decoder in
                the loop, and sharp frames that keep their harmonics), ``"learned"`` (the mel head of a model trained
                with ``use_mel_head``: no codec in the loop, but its frames average over what a code stood for).
                Default (`resolve_mel_source`): "exemplar" when the codec's decoder is not trained and the codec has
                exemplars (for a token-only model too: it reads none, but its continuation can be rendered from
                them), else "learned" for a model with a mel head and such a codec, else "codec" for the hybrid and
                none for a token-only model.
            generation_config / kwargs: ``max_new_tokens`` (frames to add), ``do_sample``, ``temperature``,
                ``top_k``, ``top_p``, ``repetition_penalty`` (per codebook, over that codebook's history),
                ``num_return_sequences``.
            generator: a seeded `torch.Generator` for reproducible sampling (else the global RNG, so
                `transformers.set_seed` works too).
            streamer: an object with ``put(codes)`` called with each new frame (B, K, 1) and ``end()``.
            context_stride: when the context (``max_position_embeddings`` frames) is full, the oldest
                ``context_stride`` frames are dropped and the rest re-encoded as a new prompt (positions restart
                at 0). Defaults to a quarter of the context.
            use_cache: reuse the KV cache (True) or recompute the whole window every step (False; same result).
        Returns:
            (B * num_return_sequences, K, T + max_new_tokens) codes: each prompt's real frames followed by its
            continuation, right-padded with 0. With ``return_dict_in_generate`` a `WhisperGPTGenerateOutput` that
            also holds the attention mask and, for the hybrid model, the mel frames it used.
        """
        config = self._generation_config(generation_config, kwargs)
        codes = self.model.validate_codes(input_ids)  # (B, K, T)
        batch_size, _, length = codes.shape
        lengths = attention_mask.sum(-1).long() if attention_mask is not None else torch.full((batch_size,), length)
        if bool((lengths < 1).any()):
            raise ValueError("Every prompt needs at least one frame of audio; got an empty prompt.")
        mel_source = self.resolve_mel_source(mel_source, audio_tokenizer)
        if audio_tokenizer is not None:
            self.validate_audio_tokenizer(audio_tokenizer)
        if mel_source is None:
            input_features = None
        else:
            feature_extractor = feature_extractor or self.mel_feature_extractor()
            self.validate_feature_extractor(feature_extractor)
            if mel_source == "exemplar":
                audio_tokenizer.check_mel_exemplars(feature_extractor)
                if input_features is None and not self.config.trains_on_mel_frames:
                    # A token-only model reads no mel frames; its prompt's are only rendered, so look them up too.
                    input_features = audio_tokenizer.mel_exemplar_frames(codes).to(self.device, self.dtype)
            input_features = self.model.validate_features(input_features, length)
        codes, input_features, mask = _left_align(codes, input_features, lengths)
        repeats = config.num_return_sequences or 1
        codes, mask = codes.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
        if input_features is not None:
            input_features = input_features.repeat_interleave(repeats, 0)
        processors = _logits_processors(config)
        context = self.config.max_position_embeddings
        stride = context_stride or max(1, context // 4)
        if not 0 < stride < context:
            raise ValueError(f"context_stride must be in [1, {context - 1}], got {stride}.")
        if mel_source == "learned" and context - stride < self.mel_head.window_frames - 1:
            raise ValueError(
                f"context_stride={stride} keeps {context - stride} frames when the context slides, fewer than the "
                f"{self.mel_head.window_frames - 1} earlier frames the mel head reads; use a smaller stride."
            )

        state = _GenerationState(codes, input_features, mask)
        codec_mel = None
        if mel_source == "codec":
            if mel_window_frames < 1:
                raise ValueError(f"mel_window_frames must be at least 1, got {mel_window_frames}.")
            codec_mel = _CodecMelFrames(audio_tokenizer, feature_extractor, state.codes, state.mask, mel_window_frames)
        if streamer is not None:
            if codes.shape[0] != 1:
                raise ValueError("A streamer follows one sequence: use batch size 1 and num_return_sequences=1.")
            streamer.put(state.prompt_codes[..., -int(lengths[0]) :].cpu())
        if state.codes.shape[-1] > context:  # a prompt longer than the context: keep its newest frames
            state.crop(context - stride)
        cache, frame_state = self._prefill(state, use_cache)
        for step in range(config.max_new_tokens):
            new_codes = self._sample_frame(frame_state, state.codes, processors, config.do_sample, generator)
            if mel_source == "learned":
                new_mel = self._learned_mel(state, new_codes)
            elif mel_source == "exemplar":  # sampled codes are in range: index the (V, M) table directly
                exemplars = audio_tokenizer.mel_exemplars
                new_mel = exemplars[new_codes[:, :1].to(exemplars.device)].to(self.device, self.dtype)  # (B, 1, M)
            else:
                new_mel = None if codec_mel is None else codec_mel.next_frame(new_codes).to(self.device, self.dtype)
            state.append(new_codes, new_mel)
            if streamer is not None:
                streamer.put(new_codes[:, :, None].cpu())
            if step == config.max_new_tokens - 1:
                break
            if state.codes.shape[-1] > context:  # context full: slide the window
                state.crop(context - stride)
                cache = None
            if cache is None or not use_cache:
                cache, frame_state = self._prefill(state, use_cache)
            else:
                out = self.model(
                    input_ids=state.codes[..., -1:],
                    input_features=None if state.features is None else state.features[:, -1:],
                    attention_mask=state.mask,
                    position_ids=state.positions()[:, -1:],
                    cache=cache,
                )
                frame_state = out.last_hidden_state[:, -1]
        if streamer is not None:
            streamer.end()
        sequences, out_mask, features = state.right_aligned(lengths.repeat_interleave(repeats), config.max_new_tokens)
        if return_dict_in_generate:
            return WhisperGPTGenerateOutput(sequences=sequences, attention_mask=out_mask, input_features=features)
        return sequences

    def _generation_config(self, generation_config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
        config = copy.deepcopy(generation_config or self.generation_config)
        unused = config.update(**kwargs)
        if unused:
            raise TypeError(f"generate() got unexpected arguments: {sorted(unused)}")
        if config.max_new_tokens is None:
            raise ValueError("Pass max_new_tokens: the number of frames (75 per second of audio) to generate.")
        if config.num_beams not in (None, 1):
            raise ValueError("Beam search is not supported; use greedy decoding or sampling.")
        return config

    def _prefill(self, state: _GenerationState, use_cache: bool) -> tuple[Cache | None, torch.Tensor]:
        """Run the current window; returns the cache (if used) and the last frame's state (B, H)."""
        out = self.model(
            input_ids=state.codes,
            input_features=state.features,
            attention_mask=state.mask,
            position_ids=state.positions(),
            use_cache=use_cache,
        )
        return out.cache, out.last_hidden_state[:, -1]

    def _sample_frame(
        self,
        frame_state: torch.Tensor,
        history: torch.Tensor,
        processors: list[LogitsProcessor],
        do_sample: bool,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Pick the K codes of the next frame from the frame state (B, H); history (B, K, L). Returns (B, K)."""
        if self.config.num_codebooks > 1:  # codebook k conditions on the codes already picked for this frame
            depth_cache = DynamicCache()
            projected = self.depth_decoder.in_proj(frame_state)
        picked: list[torch.Tensor] = []
        for codebook in range(self.config.num_codebooks):
            if self.config.num_codebooks == 1:
                scores = self.lm_head(frame_state)
            else:
                previous = picked[-1][:, 0] if picked else None
                scores = self.depth_decoder.step(projected, previous, codebook, depth_cache)
            scores = scores.float()
            for processor in processors:  # called directly: LogitsProcessorList inspects signatures every call
                scores = processor(history[:, codebook], scores)
            if do_sample:
                code = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)
            else:
                code = scores.argmax(dim=-1, keepdim=True)
            picked.append(code)
        return torch.cat(picked, dim=1)

    def resolve_mel_source(self, mel_source: str | None, audio_tokenizer: Any) -> str | None:
        """Where generate() takes new mel frames from for ``mel_source`` (None: the default) and this codec: "codec"
        (decode the new codes), "exemplar" (the codec's exemplar frame of each code), "learned" (the mel head) or
        None (a token-only model needs none).

        The default decodes with a trained decoder (exact). A local codec's decoder makes noise, so then the codec's
        exemplar frames are used when it has them (real frames: rendered, they keep pitch; a token-only model does not
        read them, but its continuation can then be rendered from them too), else the mel head."""
        if mel_source is None:
            decoder_usable = audio_tokenizer is not None and getattr(audio_tokenizer, "decoder_trained", True)
            has_exemplars = getattr(audio_tokenizer, "mel_exemplars", None) is not None
            if not decoder_usable and has_exemplars:  # also a token-only model: its continuation is rendered from them
                mel_source = "exemplar"
            elif self.config.use_mel_head and not decoder_usable:
                mel_source = "learned"
            elif self.config.use_spectrogram:
                mel_source = "codec"
            else:
                return None
        if mel_source not in ("codec", "exemplar", "learned"):
            raise ValueError(f'mel_source must be "codec", "exemplar", "learned" or None, got {mel_source!r}.')
        if mel_source == "learned" and not self.config.use_mel_head:
            raise ValueError('mel_source="learned" needs a model trained with use_mel_head=True; use "codec".')
        if mel_source == "exemplar" and getattr(audio_tokenizer, "mel_exemplars", None) is None:
            other = '"codec" or "learned"' if self.config.use_mel_head else '"codec"'
            raise ValueError(
                'mel_source="exemplar" needs audio_tokenizer= with mel exemplars (WhisperGPTAudioTokenizer.'
                f"fit_mel_exemplars, which build_processor runs); use {other}."
            )
        if mel_source == "codec" and audio_tokenizer is None:
            raise ValueError(
                "The hybrid model needs audio_tokenizer= in generate(): each new frame's mel spectrogram is computed "
                'from its decoded audio. Pass processor.audio_tokenizer (or mel_source="learned" for a model with a '
                "mel head)."
            )
        return mel_source

    def _learned_mel(self, state: _GenerationState, new_codes: torch.Tensor) -> torch.Tensor:
        """The mel head's frame (B, 1, M) for the new codes (B, K), after the window's newest frames."""
        start = max(0, state.codes.shape[-1] - (self.mel_head.window_frames - 1))  # not [-0:] for a 1-frame window
        codes = torch.cat([state.codes[..., start:], new_codes[:, :, None]], dim=-1)  # (B, K, <= F)
        real = F.pad(state.mask[:, start:], (0, 1), value=1)
        return self.mel_head(self.model.embed_codes(codes), real)[:, -1:]


@dataclass
class WhisperGPTGenerateOutput(ModelOutput):
    """sequences (B, K, T + N) codes; attention_mask (B, T + N) real frames; input_features (B, T + N, M) the mel
    frames the hybrid model read (prompt frames, then frames computed from generated audio); all right-padded."""

    sequences: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None
    input_features: torch.Tensor | None = None


def _left_align(
    codes: torch.Tensor, features: torch.Tensor | None, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Right-padded prompts -> left-padded ones, so every prompt's newest frame is the last column."""
    length = codes.shape[-1]
    shift = (length - lengths).tolist()
    codes = _roll_rows(codes, shift, dim=-1)
    if features is not None:
        features = _roll_rows(features, shift, dim=0)
    mask = (torch.arange(length)[None, :] >= torch.tensor(shift)[:, None]).long().to(codes.device)
    return codes * mask[:, None], features, mask


def _roll_rows(batch: torch.Tensor, shifts: list[int], dim: int) -> torch.Tensor:
    """Roll each row ``batch[i]`` by ``shifts[i]`` along its dimension ``dim`` (padding moves between ends)."""
    return torch.stack([torch.roll(row, shift, dims=dim) for row, shift in zip(batch, shifts, strict=True)])


class _CodecMelFrames:
    """The mel frames of generated audio: each new frame's codes go through the codec's streaming decoder and the
    feature extractor computes the causal log-mel frame of the newest ``hop`` samples, as in training."""

    def __init__(
        self,
        audio_tokenizer: Any,
        feature_extractor: WhisperGPTFeatureExtractor,
        prompt_codes: torch.Tensor,
        prompt_mask: torch.Tensor,
        window: int,
    ):
        """prompt_codes (B, K, T) left-padded, prompt_mask (B, T) marks their real frames."""
        self.feature_extractor = feature_extractor
        # Whole hops covering n_fft samples, so the last frame's window ends exactly at the newest sample.
        hop = feature_extractor.hop_length
        self.samples_needed = math.ceil(feature_extractor.n_fft / hop) * hop
        # Prompts of different lengths start their own streams on their real frames (padding decoded as audio
        # would linger in the codec's LSTM); the streams then go on as one batch.
        lengths = prompt_mask.sum(-1).tolist()
        groups = [slice(None)] if len(set(lengths)) == 1 else [slice(row, row + 1) for row in range(len(lengths))]
        streams, tails = [], []
        for rows in groups:
            stream = audio_tokenizer.streaming_decoder()
            audio = stream.start(prompt_codes[rows, :, -lengths[rows][0] :], context_frames=window)
            streams.append(stream)
            # Zeros before a short prompt's start are what the feature extractor pads with too.
            tails.append(F.pad(audio, (max(0, self.samples_needed - audio.shape[-1]), 0))[:, -self.samples_needed :])
        self.decoder = streams[0].concatenate(streams)
        self.audio = torch.cat(tails)

    def next_frame(self, new_codes: torch.Tensor) -> torch.Tensor:
        """New codes (B, K) -> their mel frame (B, 1, M)."""
        new_audio = self.decoder.step(new_codes[:, :, None])
        self.audio = torch.cat([self.audio, new_audio], dim=-1)[:, -self.samples_needed :]
        return self.feature_extractor.causal_log_mel(self.audio)[:, -1:]


def _logits_processors(config: GenerationConfig) -> list[LogitsProcessor]:
    processors: list[LogitsProcessor] = []
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


class _GenerationState:
    """The window the model reads during generation, left-padded: codes (B, K, W), features (B, W, M), mask (B, W).

    Also keeps every mel frame used, for `WhisperGPTGenerateOutput.input_features`.
    """

    def __init__(self, codes: torch.Tensor, features: torch.Tensor | None, mask: torch.Tensor):
        self.codes, self.features, self.mask = codes, features, mask
        self.generated: list[torch.Tensor] = []
        self.generated_features: list[torch.Tensor] = []
        self.prompt_codes, self.prompt_features, self.prompt_mask = codes, features, mask

    def positions(self) -> torch.Tensor:
        return (self.mask.cumsum(-1) - 1).clamp(min=0)

    def append(self, new_codes: torch.Tensor, new_features: torch.Tensor | None) -> None:
        self.generated.append(new_codes)
        self.codes = torch.cat([self.codes, new_codes[:, :, None]], dim=-1)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        if new_features is not None:
            self.generated_features.append(new_features)
            self.features = torch.cat([self.features, new_features], dim=1)

    def crop(self, keep: int) -> None:
        self.codes, self.mask = self.codes[..., -keep:], self.mask[:, -keep:]
        if self.features is not None:
            self.features = self.features[:, -keep:]

    def right_aligned(
        self, lengths: torch.Tensor, new_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prompt (left-padded) + generated frames -> right-padded codes (B, K, T + N), mask (B, T + N) and, for
        the hybrid model, mel frames (B, T + N, M), as the processor pads."""
        generated = torch.stack(self.generated, dim=-1)  # (B, K, N)
        full = torch.cat([self.prompt_codes, generated], dim=-1)
        total = full.shape[-1]
        shift = (total - (lengths + new_frames)).tolist()
        back = [-value for value in shift]
        sequences = _roll_rows(full, back, dim=-1)
        mask = (torch.arange(total)[None, :] < (lengths + new_frames)[:, None]).long()
        features = None
        if self.prompt_features is not None:
            features = torch.cat([self.prompt_features, *self.generated_features], dim=1)  # (B, T + N, M)
            features = _roll_rows(features, back, dim=0) * mask[:, :, None].to(features.dtype)
        return sequences * mask[:, None], mask, features


__all__ = ["WhisperGPTGenerateOutput", "WhisperGPTGenerationMixin"]
