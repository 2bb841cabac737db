"""Whisper-GPT: a hybrid log-mel + EnCodec-token audio language model for the Hugging Face ecosystem.

Importing the package registers the config, models, feature extractor and processor with the Auto classes,
and marks them for `register_for_auto_class` so saved folders load with ``trust_remote_code=True``.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_whisper_gpt import WhisperGPTConfig
from .feature_extraction_whisper_gpt import WhisperGPTFeatureExtractor
from .generation_whisper_gpt import (
    CodecMelSource,
    ExemplarMelSource,
    LearnedMelSource,
    MelFrameSource,
    WhisperGPTGenerateOutput,
    default_mel_source,
)
from .modeling_whisper_gpt import WhisperGPTForCausalLM, WhisperGPTModel, WhisperGPTPreTrainedModel
from .pipeline_whisper_gpt import TASK, AudioContinuationPipeline, WhisperGPTAudioStreamer
from .processing_whisper_gpt import WhisperGPTProcessor
from .tokenization_whisper_gpt import WhisperGPTAudioTokenizer, small_encodec_config

__version__ = "0.1.0.dev0"

AutoConfig.register(WhisperGPTConfig.model_type, WhisperGPTConfig, exist_ok=True)
AutoModel.register(WhisperGPTConfig, WhisperGPTModel, exist_ok=True)
AutoModelForCausalLM.register(WhisperGPTConfig, WhisperGPTForCausalLM, exist_ok=True)
AutoFeatureExtractor.register(WhisperGPTConfig, WhisperGPTFeatureExtractor, exist_ok=True)
AutoProcessor.register(WhisperGPTConfig, WhisperGPTProcessor, exist_ok=True)

WhisperGPTConfig.register_for_auto_class()
WhisperGPTModel.register_for_auto_class("AutoModel")
WhisperGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
WhisperGPTFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
WhisperGPTProcessor.register_for_auto_class("AutoProcessor")
PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AudioContinuationPipeline, pt_model=AutoModelForCausalLM)

__all__ = [
    "AudioContinuationPipeline",
    "CodecMelSource",
    "ExemplarMelSource",
    "LearnedMelSource",
    "MelFrameSource",
    "WhisperGPTAudioStreamer",
    "WhisperGPTAudioTokenizer",
    "WhisperGPTConfig",
    "WhisperGPTFeatureExtractor",
    "WhisperGPTForCausalLM",
    "WhisperGPTGenerateOutput",
    "WhisperGPTModel",
    "WhisperGPTPreTrainedModel",
    "WhisperGPTProcessor",
    "default_mel_source",
    "small_encodec_config",
]
