"""Configuration of Whisper-GPT, the hybrid (log-mel + EnCodec codes) decoder-only audio LM."""

from __future__ import annotations

from transformers import PretrainedConfig

FUSION_MODES = ("concat", "sum")
# The paper's three models (arXiv 2412.11449) as config values on top of the defaults, which are GPT-S's.
PAPER_PRESETS: dict[str, dict] = {
    "paper_gpt_s": {"use_spectrogram": False},
    "paper_hybrid": {"use_spectrogram": True},
    "paper_gpt_l": {
        "use_spectrogram": False,
        "hidden_size": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
}
# What the paper reports for each preset (arXiv 2412.11449, Table 1): the model, its parameter count, and per domain
# its next-frame numbers on codebook 0 of the published 24 kHz EnCodec: NLL in nats per code, accuracy of the arg-max
# code (a fraction) and perplexity as printed.
PAPER_RESULTS: dict[str, dict] = {
    "paper_gpt_s": {
        "model": "token-only GPT-S",
        "params": 3.7e6,
        "speech": {"nll": 2.02, "accuracy": 0.3418, "perplexity": 7.54},
        "music": {"nll": 2.78, "accuracy": 0.3496, "perplexity": 16.12},
    },
    "paper_hybrid": {
        "model": "hybrid Whisper-GPT",
        "params": 4.0e6,
        "speech": {"nll": 1.93, "accuracy": 0.3505, "perplexity": 6.96},
        "music": {"nll": 2.52, "accuracy": 0.3847, "perplexity": 12.43},
    },
    "paper_gpt_l": {
        "model": "token-only GPT-L",
        "params": 40e6,
        "speech": {"nll": 1.94, "accuracy": 0.3482, "perplexity": 6.96},
        "music": {"nll": 2.77, "accuracy": 0.3572, "perplexity": 15.96},
    },
}
# Lets `pipeline(model=folder, trust_remote_code=True)` find the pipeline file the processor saves next to the weights.
CUSTOM_PIPELINES = {
    "audio-continuation": {"impl": "pipeline_whisper_gpt.AudioContinuationPipeline", "pt": ["AutoModelForCausalLM"]}
}


class WhisperGPTConfig(PretrainedConfig):
    r"""Configuration of [`WhisperGPTForCausalLM`].

    One position per codec frame (75 frames/s for 24 kHz EnCodec). The input of frame ``t`` is the sum of the
    embeddings of its ``num_codebooks`` codes and, when ``use_spectrogram`` is set, its causal log-mel frame
    passed through ``spectrogram_layers`` light causal blocks; the decoder predicts the codes of frame ``t + 1``.

    Args:
        codebook_size (`int`, 1024): codes per codebook (the vocabulary of each codebook).
        num_codebooks (`int`, 1): codebooks read and predicted. 1 is the paper (codebook 0 only); more
            codebooks are predicted by a small depth transformer over the codebook axis.
        use_spectrogram (`bool`, True): the hybrid model. False gives the token-only baseline, which has no
            mel parameters and ignores ``input_features``.
        num_mel_bins (`int`, 80): mel bins of ``input_features``.
        spectrogram_hidden_size (`int`, 96), spectrogram_layers (`int`, 2), spectrogram_num_heads (`int`, 2):
            width, depth and heads of the causal blocks over mel frames. ``spectrogram_layers=0`` feeds the
            projected mel frames straight to the fusion.
        fusion (`str`, "concat"): "concat" concatenates token and mel streams and projects them to
            ``hidden_size`` (the paper); "sum" adds a projection of the mel stream to the token embedding.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: the GPT decoder.
        max_position_embeddings (`int`, 750): longest context in frames (10 s at 75 frames/s).
        dropout (`float`, 0.0): dropout on embeddings, attention and residual branches.
        depth_hidden_size, depth_num_layers, depth_num_heads, depth_intermediate_size: the depth transformer
            over codebooks, used only when ``num_codebooks > 1``.
        sampling_rate (`int`, 24000), hop_length (`int`, 320): audio geometry of the codec and features the
            model was trained with; features or codecs of another geometry are refused.
        n_fft (`int`, 1024): window of the causal log-mel frames; generation computes the mel frame of each
            new frame with the same feature extractor settings.
        layer_norm_eps (`float`, 1e-5), initializer_range (`float`, 0.02).
        use_mel_head (`bool`, False): add a head that predicts each causal log-mel frame from the codes of the
            ceil(n_fft / hop_length) frames its window covers, trained with an L1 loss of weight
            ``mel_loss_weight`` (1.0).
            Generation can then compute new mel frames without decoding audio (``mel_source="learned"``).
        mel_init_scale (`float`, 0.1): scale of the mel part of the fusion projection at initialisation
            relative to ``initializer_range``, so the untrained mel path starts as a small perturbation of the
            token embedding.
        mel_gate (`bool`, False): multiply the mel stream by tanh of a learned scalar that starts at 0 (as
            Flamingo gates its new cross-attention), so the hybrid starts as the token-only model and can open
            the mel path if the mel frames help. Requires ``use_spectrogram=True``.
    """

    model_type = "whisper_gpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        codebook_size: int = 1024,
        num_codebooks: int = 1,
        use_spectrogram: bool = True,
        num_mel_bins: int = 80,
        spectrogram_hidden_size: int = 96,
        spectrogram_layers: int = 2,
        spectrogram_num_heads: int = 2,
        fusion: str = "concat",
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 1024,
        max_position_embeddings: int = 750,
        dropout: float = 0.0,
        depth_hidden_size: int = 128,
        depth_num_layers: int = 2,
        depth_num_heads: int = 4,
        depth_intermediate_size: int = 512,
        sampling_rate: int = 24000,
        hop_length: int = 320,
        n_fft: int = 1024,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        mel_init_scale: float = 0.1,
        mel_gate: bool = False,
        use_mel_head: bool = False,
        mel_loss_weight: float = 1.0,
        use_cache: bool = True,
        **kwargs,
    ):
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.use_spectrogram = use_spectrogram
        self.num_mel_bins = num_mel_bins
        self.spectrogram_hidden_size = spectrogram_hidden_size
        self.spectrogram_layers = spectrogram_layers
        self.spectrogram_num_heads = spectrogram_num_heads
        self.fusion = fusion
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.depth_hidden_size = depth_hidden_size
        self.depth_num_layers = depth_num_layers
        self.depth_num_heads = depth_num_heads
        self.depth_intermediate_size = depth_intermediate_size
        self.sampling_rate = sampling_rate
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.mel_init_scale = mel_init_scale
        self.mel_gate = mel_gate
        self.use_mel_head = use_mel_head
        self.mel_loss_weight = mel_loss_weight
        self.use_cache = use_cache
        self._validate()
        kwargs.setdefault("custom_pipelines", CUSTOM_PIPELINES)
        super().__init__(**kwargs)

    def _validate(self) -> None:
        positive = {
            "codebook_size": self.codebook_size,
            "num_codebooks": self.num_codebooks,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "sampling_rate": self.sampling_rate,
            "hop_length": self.hop_length,
            "n_fft": self.n_fft,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WhisperGPTConfig.{name} must be a positive integer, got {value!r}.")
        widths = [("hidden_size", "num_attention_heads")]
        if self.use_spectrogram:
            widths.append(("spectrogram_hidden_size", "spectrogram_num_heads"))
        if self.num_codebooks > 1:
            widths.append(("depth_hidden_size", "depth_num_heads"))
        for width, heads in widths:
            if getattr(self, width) % getattr(self, heads) != 0:
                raise ValueError(
                    f"WhisperGPTConfig.{width} ({getattr(self, width)}) must be divisible by {heads} "
                    f"({getattr(self, heads)})."
                )
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"WhisperGPTConfig.fusion must be one of {FUSION_MODES}, got {self.fusion!r}.")
        if self.spectrogram_layers < 0:
            raise ValueError(f"spectrogram_layers must be >= 0, got {self.spectrogram_layers}.")
        if self.mel_gate and not self.use_spectrogram:
            raise ValueError(
                "mel_gate gates the hybrid's mel stream; a token-only model (use_spectrogram=False) has none."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")

    @property
    def trains_on_mel_frames(self) -> bool:
        """Whether training batches need ``input_features``: the mel path reads them, a mel head learns from them."""
        return self.use_spectrogram or self.use_mel_head

    @property
    def frame_rate(self) -> float:
        """Frames (positions) per second of audio."""
        return self.sampling_rate / self.hop_length

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> WhisperGPTConfig:
        """The config of one of the paper's models (a key of ``PAPER_PRESETS``), with ``overrides`` on top."""
        if preset not in PAPER_PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PAPER_PRESETS)}.")
        return cls(**{**PAPER_PRESETS[preset], **overrides})

    @classmethod
    def paper_gpt_s(cls, **overrides) -> WhisperGPTConfig:
        """Token-only GPT-S of the paper (about 3.7M parameters with codebook 0 only)."""
        return cls.from_preset("paper_gpt_s", **overrides)

    @classmethod
    def paper_hybrid(cls, **overrides) -> WhisperGPTConfig:
        """Hybrid Whisper-GPT of the paper (about 4.0M parameters): GPT-S plus the light mel path."""
        return cls.from_preset("paper_hybrid", **overrides)

    @classmethod
    def paper_gpt_l(cls, **overrides) -> WhisperGPTConfig:
        """Token-only GPT-L of the paper (about 40M parameters)."""
        return cls.from_preset("paper_gpt_l", **overrides)


__all__ = ["PAPER_PRESETS", "PAPER_RESULTS", "WhisperGPTConfig"]
