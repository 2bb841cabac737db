"""Whisper-GPT: a hybrid log-mel + EnCodec-token audio language model for the Hugging Face ecosystem.

Importing the package registers the config, models, feature extractor and processor with the Auto classes,
and marks them for `register_for_auto_class` so saved folders load with ``trust_remote_code=True``. With ``peft``
installed it also gives LoRA its default target modules for Whisper-GPT (`whisper_gpt.peft_support`).
"""

import importlib.util
import warnings

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

if importlib.util.find_spec("peft") is not None:
    try:
        from .peft_support import register_lora_target_modules

        register_lora_target_modules()
    except ImportError as error:  # an installed but broken or incompatible peft must not break this package
        warnings.warn(
            f"peft is installed but could not be imported ({error}); LoraConfig then needs "
            "target_modules=list(whisper_gpt.peft_support.LORA_TARGET_MODULES).",
            stacklevel=2,
        )

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
