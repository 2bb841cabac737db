"""Whisper-GPT: a decoder-only LM over EnCodec frames that also reads each frame's causal log-mel spectrogram.

Reading order: attention -> block -> mel path and fusion -> depth decoder (K > 1) -> WhisperGPTModel
(embed codes -> mel path -> fuse -> positions -> decoder blocks -> norm) -> WhisperGPTForCausalLM (heads, loss).
Shapes: B batch, K codebooks, T frames, V codebook size, M mel bins, H hidden size, S spectrogram width.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_whisper_gpt import WhisperGPTConfig
from .feature_extraction_whisper_gpt import WhisperGPTFeatureExtractor
from .generation_whisper_gpt import WhisperGPTGenerationMixin, default_generation_config


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention that also returns the weights: q (B, h, Tq, d), k/v (B, h, Tk, d), mask (B, 1, Tq, Tk)
    additive (from transformers' masking utilities) or None (every key visible). Returns (B, Tq, h, d), weights."""
    scores = query @ key.transpose(-1, -2) * scaling  # (B, h, Tq, Tk)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def codebook_offsets(codes: torch.Tensor, codebook_size: int, dim: int) -> torch.Tensor:
    """Shift codebook k's codes by k * codebook_size so all codebooks share one embedding table."""
    shape = [1] * codes.dim()
    shape[dim] = codes.shape[dim]
    return codes + torch.arange(codes.shape[dim], device=codes.device).view(shape) * codebook_size


class ResidualProjection(nn.Linear):
    """A linear layer that writes into the residual stream; its init is scaled down with depth (GPT-2)."""


class WhisperGPTAttention(nn.Module):
    """Causal multi-head self-attention through transformers' attention interface (eager, sdpa, flex, flash), with
    an optional KV cache slot ``layer_idx``. A mask of None means plain causal attention (every key for one query)."""

    is_causal = True

    def __init__(self, width: int, num_heads: int, dropout: float, layer_idx: int | None, config: WhisperGPTConfig):
        super().__init__()
        self.num_heads = num_heads
        self.scaling = (width // num_heads) ** -0.5
        self.attention_dropout = dropout
        self.layer_idx = layer_idx
        self.config = config
        self.qkv_proj = nn.Linear(width, 3 * width)
        self.out_proj = ResidualProjection(width, width)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, length, 3, self.num_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, T, d)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )  # (B, T, h, d)
        return self.out_proj(output.reshape(batch_size, length, width)), weights


class WhisperGPTBlock(GradientCheckpointingLayer):
    """Pre-norm transformer decoder block (GPT-2 layout) used by the mel path, the decoder and the depth decoder."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        intermediate_size: int,
        config: WhisperGPTConfig,
        layer_idx: int | None,
    ):
        super().__init__()
        self.attn_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attn = WhisperGPTAttention(width, num_heads, config.dropout, layer_idx, config)
        self.mlp_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.fc_in = nn.Linear(width, intermediate_size)
        self.fc_out = ResidualProjection(intermediate_size, width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.attn_norm(hidden_states), attention_mask, cache)
        hidden_states = hidden_states + self.dropout(attended)
        mlp_out = self.fc_out(F.gelu(self.fc_in(self.mlp_norm(hidden_states))))
        return hidden_states + self.dropout(mlp_out), weights


class WhisperGPTFusion(nn.Module):
    """Merges the token embedding (B, T, H) and the mel stream (B, T, S) into the decoder input (B, T, H).

    Initialised so that the output starts as the token embedding plus a small mel term (see `_init_weights`).
    """

    def __init__(self, config: WhisperGPTConfig):
        super().__init__()
        self.mode = config.fusion
        in_features = config.spectrogram_hidden_size + (config.hidden_size if self.mode == "concat" else 0)
        # Parameters live here, not in a child Linear, so `_init_weights` sees this module and can init it.
        self.weight = nn.Parameter(torch.empty(config.hidden_size, in_features))
        self.bias = nn.Parameter(torch.empty(config.hidden_size))
        self.mel_gate = nn.Parameter(torch.empty(())) if config.mel_gate else None

    def forward(self, token_embeds: torch.Tensor, mel_states: torch.Tensor) -> torch.Tensor:
        if self.mel_gate is not None:
            mel_states = torch.tanh(self.mel_gate) * mel_states
        if self.mode == "concat":
            return F.linear(torch.cat([token_embeds, mel_states], dim=-1), self.weight, self.bias)
        return token_embeds + F.linear(mel_states, self.weight, self.bias)


class WhisperGPTDepthDecoder(nn.Module):
    """Predicts the K codes of frame t+1 one codebook after another from the frame state h_t (as Moshi does).

    Input at codebook k: proj(h_t) + embedding of code k-1 of frame t+1 (teacher-forced in training) +
    a learned codebook position; causal attention over k; one output head per codebook.
    """

    def __init__(self, config: WhisperGPTConfig):
        super().__init__()
        self.config = config
        self.num_codebooks = config.num_codebooks
        self.codebook_size = config.codebook_size
        width = config.depth_hidden_size
        self.in_proj = nn.Linear(config.hidden_size, width)
        self.code_embeddings = nn.Embedding((config.num_codebooks - 1) * config.codebook_size, width)
        self.codebook_positions = nn.Embedding(config.num_codebooks, width)
        # Cache slots are used when sampling, one codebook at a time (`step`); training runs all K at once.
        self.blocks = nn.ModuleList(
            WhisperGPTBlock(width, config.depth_num_heads, config.depth_intermediate_size, config, layer_idx=index)
            for index in range(config.depth_num_layers)
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.heads = nn.Parameter(torch.empty(config.num_codebooks, width, config.codebook_size))

    def forward(self, frame_states: torch.Tensor, previous_codes: torch.Tensor) -> torch.Tensor:
        """frame_states (N, H), previous_codes (N, k) with k < K codes of the frame being predicted.

        Returns logits (N, k + 1, V) for codebooks 0..k.
        """
        steps = previous_codes.shape[1] + 1
        inputs = self.in_proj(frame_states)[:, None, :].expand(-1, steps, -1)  # (N, k+1, D)
        code_embeds = self.code_embeddings(codebook_offsets(previous_codes, self.codebook_size, dim=1))  # (N, k, D)
        inputs = inputs + F.pad(code_embeds, (0, 0, 1, 0)) + self.codebook_positions.weight[:steps]
        mask = create_causal_mask(config=self.config, inputs_embeds=inputs, attention_mask=None, cache=None)
        for block in self.blocks:
            inputs, _ = block(inputs, mask)
        return torch.einsum("nkd,kdv->nkv", self.norm(inputs), self.heads[:steps])

    def step(
        self,
        projected_states: torch.Tensor,
        previous_code: torch.Tensor | None,
        codebook: int,
        cache: Cache,
    ) -> torch.Tensor:
        """Logits (N, V) of codebook ``codebook`` when sampling, one codebook per call with a KV cache
        (a `DynamicCache`, or the fixed-shape `static_cache()`).

        ``projected_states`` is ``in_proj(frame_states)`` (N, D); ``previous_code`` (N,) the code just picked for
        codebook - 1 (None for codebook 0); ``codebook`` the codebook's index.
        Equals ``forward(...)[:, codebook]`` with the codes picked so far.
        """
        position, head = self.codebook_positions.weight[codebook], self.heads[codebook]
        inputs = projected_states + position
        if previous_code is not None:
            inputs = inputs + self.code_embeddings(previous_code + (codebook - 1) * self.codebook_size)
        hidden = inputs[:, None]  # (N, 1, D)
        # One query sees every key of a growing cache; a static one also holds the slots of codebooks to come.
        mask = None
        if cache.is_compileable:
            mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=None, cache=cache)
        for block in self.blocks:
            hidden, _ = block(hidden, mask, cache=cache)
        return self.norm(hidden[:, 0]) @ head

    def static_cache(self) -> Cache:
        """A cache of fixed shape for `step` (one slot per codebook); `Cache.reset()` readies it for a new frame."""
        return Cache(layers=[StaticLayer(max_cache_len=self.num_codebooks) for _ in self.blocks])


class WhisperGPTMelHead(nn.Module):
    """Predicts a causal log-mel frame from the codes of the frames its analysis window covers: a learned stand-in
    for decoding those codes with the codec and taking the mel frame of the audio, as ``mel_source="codec"`` does.

    Frame t's window (n_fft samples ending at frame t's last sample) reaches back into frames t-F+1..t, with
    F = ceil(n_fft / hop) (4 at 1024 / 320), so the head reads the embedded codes of those F frames (the model's own
    code embeddings; zeros before the first frame). It reads neither the decoder state nor earlier mel frames, so it
    gives the same frame for the same codes whether its frames are fed back in generation or not (docs/design_notes.md
    says why that matters).
    """

    def __init__(self, config: WhisperGPTConfig):
        super().__init__()
        self.window_frames = math.ceil(config.n_fft / config.hop_length)
        # Code embeddings start tiny (std initializer_range); normalised, the head learns at the trunk's pace.
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc_in = nn.Linear(self.window_frames * config.hidden_size, config.hidden_size)
        self.fc_out = nn.Linear(config.hidden_size, config.num_mel_bins)

    def forward(self, code_embeds: torch.Tensor, real_frames: torch.Tensor | None = None) -> torch.Tensor:
        """code_embeds (B, T, H) of consecutive frames -> (B, T, M): frame t's mel from frames t-F+1..t.

        ``real_frames`` (B, T) marks left padding (0) to read as "before the audio", like the frames before t=0.
        """
        normed = self.norm(code_embeds)
        if real_frames is not None:
            normed = normed * real_frames[..., None].to(normed.dtype)
        padded = F.pad(normed, (0, 0, self.window_frames - 1, 0))  # (B, T + F - 1, H)
        windows = padded.unfold(1, self.window_frames, 1).transpose(-1, -2).flatten(2)  # (B, T, F * H), oldest first
        return self.fc_out(F.gelu(self.fc_in(windows)))


@dataclass
class WhisperGPTCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus, with a mel head, ``predicted_mel`` (B, T, M) (frame t+1 at t) and
    ``mel_loss`` (its L1 to the true frames, included in ``loss`` with weight ``config.mel_loss_weight``)."""

    mel_loss: torch.Tensor | None = None
    predicted_mel: torch.Tensor | None = None


class WhisperGPTPreTrainedModel(PreTrainedModel):
    config_class = WhisperGPTConfig
    config: WhisperGPTConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WhisperGPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, ResidualProjection):
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers))
        elif isinstance(module, WhisperGPTFusion):
            # The token part passes the embedding through unchanged; the mel part starts at mel_init_scale times
            # the embedding's scale for unit-scale mel states, so the untrained mel path is a small perturbation.
            mel_std = std * self.config.mel_init_scale / math.sqrt(self.config.spectrogram_hidden_size)
            weight = torch.randn_like(module.weight) * mel_std
            if module.mode == "concat":
                hidden = self.config.hidden_size
                weight[:, :hidden] = torch.eye(hidden, dtype=weight.dtype, device=weight.device)
            init.copy_(module.weight, weight)
            init.zeros_(module.bias)
            if module.mel_gate is not None:
                init.zeros_(module.mel_gate)
        elif isinstance(module, WhisperGPTDepthDecoder):
            init.normal_(module.heads, mean=0.0, std=std)

    def validate_audio_tokenizer(self, audio_tokenizer: Any) -> None:
        """Raise a ValueError when a codec does not produce the codes and geometry this model was trained on."""
        expected = {
            "sampling_rate": self.config.sampling_rate,
            "hop_length": self.config.hop_length,
            "codebook_size": self.config.codebook_size,
        }
        for name, value in expected.items():
            actual = getattr(audio_tokenizer, name)
            if actual != value:
                raise ValueError(
                    f"The audio tokenizer has {name}={actual} but the model was trained with {name}={value}; "
                    "load the codec the model was trained with (the one saved next to it by the processor)."
                )
        if audio_tokenizer.num_codebooks < self.config.num_codebooks:
            raise ValueError(
                f"The audio tokenizer emits {audio_tokenizer.num_codebooks} codebooks at bandwidth "
                f"{audio_tokenizer.bandwidth} kbps but the model reads {self.config.num_codebooks}; use a higher "
                "bandwidth."
            )


def _add_mel_cache_layers(cache: Cache, needed: int) -> None:
    """A cache built from the config holds the decoder's layers; the mel blocks' layers follow them (same kind)."""
    if cache.layer_class_to_replicate is not None or len(cache.layers) >= needed:
        return  # a lazily growing DynamicCache adds layers itself
    template = cache.layers[0]
    if isinstance(template, StaticLayer):
        cache.layers.extend(StaticLayer(template.max_cache_len) for _ in range(needed - len(cache.layers)))
    elif type(template) is DynamicLayer:
        cache.layers.extend(DynamicLayer() for _ in range(needed - len(cache.layers)))
    else:
        raise ValueError(
            f"The hybrid model keeps its mel blocks' keys in the cache after the decoder's; a {type(cache).__name__} "
            f"with {type(template).__name__} layers cannot grow. Use DynamicCache or StaticCache."
        )


class WhisperGPTModel(WhisperGPTPreTrainedModel):
    """The backbone: codes (+ mel frames) -> hidden states (B, T, H), one position per codec frame."""

    def __init__(self, config: WhisperGPTConfig):
        super().__init__(config)
        self.num_codebooks = config.num_codebooks
        self.code_embeddings = nn.Embedding(config.num_codebooks * config.codebook_size, config.hidden_size)
        if config.use_spectrogram:
            self.mel_proj = nn.Linear(config.num_mel_bins, config.spectrogram_hidden_size)
            self.mel_positions = nn.Embedding(config.max_position_embeddings, config.spectrogram_hidden_size)
            # Cache slots after the decoder's, so cache.get_seq_length() (slot 0) is the decoder's length.
            self.mel_blocks = nn.ModuleList(
                WhisperGPTBlock(
                    config.spectrogram_hidden_size,
                    config.spectrogram_num_heads,
                    4 * config.spectrogram_hidden_size,
                    config,
                    layer_idx=config.num_hidden_layers + index,
                )
                for index in range(config.spectrogram_layers)
            )
            self.mel_norm = nn.LayerNorm(config.spectrogram_hidden_size, eps=config.layer_norm_eps)
            self.fusion = WhisperGPTFusion(config)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            WhisperGPTBlock(
                config.hidden_size,
                config.num_attention_heads,
                config.intermediate_size,
                config,
                layer_idx=index,
            )
            for index in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.code_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.code_embeddings = value

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, T) codes -> (B, T, H) sum of the K codebook embeddings."""
        return self.code_embeddings(codebook_offsets(codes, self.config.codebook_size, dim=1)).sum(dim=1)

    def validate_codes(self, input_ids: torch.Tensor, check_values: bool = True) -> torch.Tensor:
        """Validate (B, K_in >= K, T) integer codes and keep the first K codebooks: (B, K, T).

        ``check_values`` also checks that every code is in [0, codebook_size), which reads the tensor (a host sync);
        the public entry points do it once, never inside a decoding step."""
        if input_ids.dim() != 3:
            raise ValueError(
                f"input_ids must have shape (batch, codebooks, frames), got {tuple(input_ids.shape)}; "
                "use WhisperGPTProcessor to turn audio into codes."
            )
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be integer codes, got dtype {input_ids.dtype}.")
        if input_ids.shape[-1] == 0:
            raise ValueError("input_ids has no frames (T = 0); pass at least one frame of codes.")
        if input_ids.shape[1] < self.num_codebooks:
            raise ValueError(
                f"The model reads {self.num_codebooks} codebooks but input_ids has {input_ids.shape[1]}; encode "
                "the audio at a higher codec bandwidth."
            )
        codes = input_ids[:, : self.num_codebooks]
        if check_values and codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise ValueError(
                f"input_ids holds codes outside [0, {self.config.codebook_size}) (min {int(codes.min())}, max "
                f"{int(codes.max())}); pad with a valid code (e.g. 0) and mark padding with attention_mask, "
                "and check that the codec matches the model's codebook_size."
            )
        return codes

    def validate_features(
        self, input_features: torch.Tensor | None, length: int, check_values: bool = True
    ) -> torch.Tensor:
        """Validate (B, T, M) mel frames against the codes' length T and the config; ``check_values`` also refuses
        NaN and Inf (a host sync, done once at the public entry points)."""
        if input_features is None:
            raise ValueError(
                "This hybrid model needs input_features (the causal log-mel frames aligned with input_ids); get "
                "both from WhisperGPTProcessor, or use a config with use_spectrogram=False for a token-only model."
            )
        if input_features.dim() != 3 or input_features.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must have shape (batch, frames, {self.config.num_mel_bins}), got "
                f"{tuple(input_features.shape)}; the feature extractor must use num_mel_bins="
                f"{self.config.num_mel_bins} and hop_length={self.config.hop_length}."
            )
        if input_features.shape[1] != length:
            raise ValueError(
                f"input_features has {input_features.shape[1]} frames but input_ids has {length}; features and "
                "codes must come from the same audio with the same hop length (use WhisperGPTProcessor)."
            )
        if check_values and not bool(torch.isfinite(input_features).all()):
            raise ValueError(
                "input_features holds NaN or Inf values; compute the mel frames with WhisperGPTProcessor from finite "
                "audio (a NaN frame would make every later frame's output NaN)."
            )
        return input_features

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        """Decoder states (B, T, H) for codes input_ids (B, K_in >= K, T) and, for the hybrid, their mel frames
        input_features (B, T, M); attention_mask (B, past + T) marks real frames (1) and padding (0).

        Unset output flags and ``return_dict`` take the config's values. ``hidden_states`` holds the decoder input
        and every layer's output (the last after the final norm); ``attentions`` each decoder layer's weights.
        """
        if inputs_embeds is not None:
            raise ValueError(
                "Whisper-GPT reads codes (input_ids), not inputs_embeds: a frame's input is built from "
                "its codes and mel frame inside the model."
            )
        flags = self._resolve_output_flags(output_hidden_states, output_attentions, return_dict)
        if use_cache is None:  # a cache only helps decoding; in training it would just hold memory
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None and not (self.gradient_checkpointing and self.training):
            cache = DynamicCache(config=self.config)
        checking = not torch.compiler.is_compiling()
        codes = self.validate_codes(input_ids, check_values=checking)  # (B, K, T)
        batch_size, _, length = codes.shape
        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.shape != (batch_size, past_length + length):
            raise ValueError(
                f"attention_mask must have shape (batch, past + frames) = ({batch_size}, {past_length + length}), "
                f"got {tuple(attention_mask.shape)}."
            )
        if self.config.use_spectrogram:
            input_features = self.validate_features(input_features, length, check_values=checking)
        if position_ids is None:
            position_ids = frame_positions(attention_mask, past_length, length, codes.device)
        if checking and int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"The sequence reaches position {int(position_ids.max())} but the model's context is "
                f"{self.config.max_position_embeddings} frames; crop the input or generate with a sliding window."
            )
        outputs = self.decode(codes, input_features, attention_mask, position_ids, cache, *flags[:2])
        return outputs if flags[2] else outputs.to_tuple()

    def _resolve_output_flags(
        self, output_hidden_states: bool | None, output_attentions: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        config = self.config
        hidden = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        attentions = config.output_attentions if output_attentions is None else output_attentions
        if attentions and config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs eager attention; this model uses {config._attn_implementation!r}. "
                'Load it with attn_implementation="eager" or call model.set_attn_implementation("eager").'
            )
        return bool(hidden), bool(attentions), config.return_dict if return_dict is None else return_dict

    def decode(
        self,
        codes: torch.Tensor,
        input_features: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Cache | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPast:
        """The backbone on validated inputs, with no host sync (the decoding step generation compiles):
        codes (B, K, T), input_features (B, T, M) (hybrid) or None, attention_mask (B, past + T) or None,
        position_ids (B, T) -> last_hidden_state (B, T, H)."""
        hidden = self.embed_codes(codes)  # (B, T, H)
        # Skipping a plain causal mask (SDPA's is_causal) is decided by reading the padding mask, a host sync; a
        # single new frame gains nothing from it, so decoding steps always build their (B, 1, 1, past + 1) mask.
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            allow_is_causal_skip=codes.shape[-1] > 1,
        )
        if self.config.use_spectrogram:
            if cache is not None:
                _add_mel_cache_layers(cache, self.config.num_hidden_layers + len(self.mel_blocks))
            mel = self.mel_proj(input_features.to(self.mel_proj.weight.dtype)) + self.mel_positions(position_ids)
            for block in self.mel_blocks:
                mel, _ = block(mel, mask, cache=cache)
            hidden = self.fusion(hidden, self.mel_norm(mel))  # (B, T, H)
        hidden = self.dropout(hidden + self.position_embeddings(position_ids))

        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden,)
            hidden, weights = layer(hidden, mask, cache=cache)
            if output_attentions:
                all_attentions += (weights,)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden, cache=cache, hidden_states=all_hidden, attentions=all_attentions
        )


def _mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits (..., V) against targets (...) over the targets that are not -100."""
    if not torch.compiler.is_compiling() and not bool((targets != -100).any()):
        raise ValueError(
            "No position has a target to score: every label is -100 or under attention_mask == 0 (or only the last "
            "frame of each row is real). Drop such batches or give them at least two real frames."
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def frame_positions(
    attention_mask: torch.Tensor | None, past_length: int, length: int, device: torch.device
) -> torch.Tensor:
    """Position ids (B or 1, T) of the newest T frames: counted over real frames, so left padding starts at 0."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device)[None]
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


class WhisperGPTForCausalLM(WhisperGPTPreTrainedModel, WhisperGPTGenerationMixin):
    """Whisper-GPT with next-frame code prediction heads.

    ``num_codebooks == 1``: one linear head (the paper). ``num_codebooks > 1``: a depth decoder predicts the
    K codes of frame t+1 one after another, teacher-forced with the true codes of frame t+1 in ``forward``.
    """

    def __init__(self, config: WhisperGPTConfig):
        super().__init__(config)
        self.model = WhisperGPTModel(config)
        if config.num_codebooks == 1:
            self.lm_head = nn.Linear(config.hidden_size, config.codebook_size, bias=False)
        else:
            self.depth_decoder = WhisperGPTDepthDecoder(config)
        if config.use_mel_head:
            self.mel_head = WhisperGPTMelHead(config)
        self.post_init()
        self.generation_config = default_generation_config(config)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`; config.json's ``auto_map`` also names `WhisperGPTModel` for
        ``AutoModel`` (transformers writes only the saved class's own Auto class), which loads from these weights."""
        if self.is_remote_code():
            base = f"{__name__.rsplit('.', 1)[-1]}.{WhisperGPTModel.__name__}"
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": base}
        super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.code_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.code_embeddings = value

    def frame_logits(self, hidden: torch.Tensor, next_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the codes of the next frame.

        Args:
            hidden: (B, T, H) decoder states.
            next_codes: (B, K', T) codes of frame t+1 at position t (K' >= K-1); only read when K > 1.
        Returns:
            (B, K, T, V) logits.
        """
        if self.config.num_codebooks == 1:
            return self.lm_head(hidden)[:, None]
        batch_size, length, _ = hidden.shape
        previous = next_codes[:, : self.config.num_codebooks - 1].permute(0, 2, 1)  # (B, T, K-1)
        logits = self.depth_decoder(hidden.reshape(batch_size * length, -1), previous.reshape(batch_size * length, -1))
        return logits.view(batch_size, length, self.config.num_codebooks, -1).permute(0, 2, 1, 3)

    def decoding_step(
        self,
        codes: torch.Tensor,
        input_features: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        """Decoder states (B, T, H) of already validated inputs (no checks, no host sync: generation compiles it):
        codes (B, K, T), input_features (B, T, M) or None, attention_mask (B, past + T), position_ids (B, T).
        Used by generate() for the prompt and for each new frame."""
        return self.model.decode(codes, input_features, attention_mask, position_ids, cache).last_hidden_state

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """Refused: the vocabulary is the codec's (num_codebooks x codebook_size codes), not a tokenizer's."""
        raise ValueError(
            "Whisper-GPT's vocabulary is its codec's codebooks (num_codebooks x codebook_size codes); it cannot be "
            "resized. For a codec with another codebook_size, build a new WhisperGPTConfig(codebook_size=...) and "
            "train that model."
        )

    def enable_input_require_grads(self) -> None:
        """As in transformers, plus the mel projection's output: with reentrant gradient checkpointing, adapters
        in the mel blocks get gradients only if their input requires grad, and the mel frames never do."""
        super().enable_input_require_grads()
        if self.config.use_spectrogram:
            hook = self.model.mel_proj.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
            self._require_grads_hooks.append(hook)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        shift_labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> WhisperGPTCausalLMOutput | tuple:
        """Logits (B, K, T, V) where position t predicts the codes of frame t+1.

        ``labels`` (B, K_in >= K, T) are the codes themselves (usually ``input_ids``); they are shifted inside,
        entries equal to -100 or under ``attention_mask == 0`` are ignored, and the loss is the mean
        cross-entropy (nats) over all predicted codes of all K codebooks. ``shift_labels`` (B, K_in >= K, T) are
        targets already shifted (position t's target at t, -100 ignored), as sequence-parallel training passes
        them for a chunk whose next frame lies in another chunk; with K > 1 they also teacher-force the depth
        decoder. Pass one of the two. Unset output flags and ``return_dict`` take the config's values.
        """
        if labels is not None and shift_labels is not None:
            raise ValueError("Pass labels (shifted inside) or shift_labels (already shifted), not both.")
        if shift_labels is not None and self.config.use_mel_head:
            raise ValueError("The mel head learns from the next frame's input_features; train it with labels.")
        *_, return_dict = self.model._resolve_output_flags(output_hidden_states, output_attentions, return_dict)
        outputs = self.model(
            input_ids,
            input_features=input_features,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            inputs_embeds=inputs_embeds,
        )
        codes = input_ids[:, : self.config.num_codebooks]
        if shift_labels is not None:
            following = self._check_labels(shift_labels, codes.shape[-1]).clamp(min=0)  # -100: placeholder code 0
        else:
            # Position t is conditioned on (depth decoder) or predicts (mel head) frame t+1; the last position has
            # no next frame yet, and padding is no next frame either: both get the placeholder code 0.
            following = F.pad(codes[..., 1:], (0, 1))  # (B, K, T)
            if attention_mask is not None:
                next_valid = F.pad(attention_mask[:, -codes.shape[-1] :][:, 1:], (0, 1))
                following = following * next_valid[:, None].to(following.dtype)
        logits = self.frame_logits(outputs.last_hidden_state, following)

        loss = mel_loss = predicted_mel = None
        if self.config.use_mel_head:  # frames 0..T (frame T: the placeholder), predicting frames 1..T
            frames = torch.cat([codes[..., :1], following], dim=-1)
            # Left padding reads as "before the audio", as in generate(); right padding is never read by real frames.
            real = None if attention_mask is None else F.pad(attention_mask[:, -codes.shape[-1] :], (0, 1))
            predicted_mel = self.mel_head(self.model.embed_codes(frames), real)[:, 1:]
        if labels is not None:
            loss = self.next_frame_loss(logits, labels, attention_mask)
            if self.config.use_mel_head:
                mel_loss = self.next_mel_loss(predicted_mel, input_features, attention_mask)
                loss = loss + self.config.mel_loss_weight * mel_loss
        elif shift_labels is not None:
            loss = _mean_cross_entropy(logits, self._check_labels(shift_labels, codes.shape[-1]).to(logits.device))
        output = WhisperGPTCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            mel_loss=mel_loss,
            predicted_mel=predicted_mel,
        )
        return output if return_dict else output.to_tuple()

    def _check_labels(self, labels: torch.Tensor, length: int) -> torch.Tensor:
        """(B, K_in >= K, T) integer labels -> their first K codebooks (B, K, T)."""
        num_codebooks = self.config.num_codebooks
        if labels.dim() != 3 or labels.shape[1] < num_codebooks or labels.shape[2] != length:
            raise ValueError(
                f"labels must have shape (batch, >= {num_codebooks}, {length}) like input_ids, got "
                f"{tuple(labels.shape)}."
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer codes (-100 to ignore), got dtype {labels.dtype}.")
        return labels[:, :num_codebooks].long()

    def next_mel_loss(
        self, predicted_mel: torch.Tensor, input_features: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean L1 between the prediction at t (B, T, M) and the true mel frame t+1, over real frames."""
        if input_features is None:
            raise ValueError("The mel head learns from input_features: pass them with the labels.")
        length = predicted_mel.shape[1]
        target = self.model.validate_features(input_features, length)[:, 1:].to(predicted_mel.dtype)
        errors = (predicted_mel[:, :-1] - target).abs().mean(dim=-1)  # (B, T-1)
        if attention_mask is None:
            return errors.mean()
        valid = attention_mask[:, -length:][:, 1:].to(errors.dtype)
        return (errors * valid).sum() / valid.sum().clamp(min=1)

    def next_frame_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean cross-entropy of logits (B, K, T, V) at t against labels (B, K_in, T) at t+1."""
        length = logits.shape[2]
        labels = self._check_labels(labels, length).to(logits.device)
        if attention_mask is not None:
            labels = labels.masked_fill(attention_mask[:, None, -length:].to(labels.device) == 0, -100)
        if length < 2:
            raise ValueError("A loss needs at least 2 frames: with labels, position t is scored on frame t+1.")
        return _mean_cross_entropy(logits[:, :, :-1], labels[:, :, 1:])

    def mel_feature_extractor(self) -> WhisperGPTFeatureExtractor:
        """The feature extractor whose settings this model was configured with (used for generated frames)."""
        config = self.config
        return WhisperGPTFeatureExtractor(
            feature_size=config.num_mel_bins,
            sampling_rate=config.sampling_rate,
            hop_length=config.hop_length,
            n_fft=config.n_fft,
        )

    def validate_feature_extractor(self, feature_extractor: WhisperGPTFeatureExtractor) -> None:
        """Raise a ValueError when a feature extractor computes other mel frames than the model was built for."""
        expected = {
            "feature_size": self.config.num_mel_bins,
            "sampling_rate": self.config.sampling_rate,
            "hop_length": self.config.hop_length,
            "n_fft": self.config.n_fft,
        }
        for name, value in expected.items():
            if getattr(feature_extractor, name) != value:
                raise ValueError(
                    f"The feature extractor has {name}={getattr(feature_extractor, name)} but the model expects "
                    f"{value}; use the processor saved with the model."
                )


__all__ = [
    "WhisperGPTCausalLMOutput",
    "WhisperGPTForCausalLM",
    "WhisperGPTModel",
    "WhisperGPTPreTrainedModel",
]
