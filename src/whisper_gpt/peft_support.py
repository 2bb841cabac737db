"""PEFT (LoRA) for Whisper-GPT: which modules to adapt, and PEFT's default for ``model_type="whisper_gpt"``.

Importing `whisper_gpt` with ``peft`` installed calls `register_lora_target_modules`, so
``LoraConfig(task_type="CAUSAL_LM")`` without ``target_modules`` adapts `LORA_TARGET_MODULES`: the attention and
MLP projections of every transformer block (PEFT matches a name against the end of each module's path). Module
paths of a `WhisperGPTForCausalLM`, ``{i}`` a layer index:

- decoder: ``model.layers.{i}.attn.qkv_proj`` (fused query/key/value), ``model.layers.{i}.attn.out_proj``,
  ``model.layers.{i}.fc_in``, ``model.layers.{i}.fc_out`` (MLP);
- mel path (hybrid models): ``model.mel_proj`` (log-mel bins to the mel width) and ``model.mel_blocks.{i}.*`` with
  the four names above;
- fusion (hybrid models): ``model.fusion`` holds a bare ``weight`` and ``bias``, not a ``Linear``: adapt it with
  ``target_parameters=["model.fusion.weight"]`` or train it in full with ``modules_to_save=["fusion"]``;
- depth decoder (``num_codebooks > 1``): ``depth_decoder.in_proj``, ``depth_decoder.blocks.{i}.*`` with the four
  names above, and the per-codebook output heads, the bare parameter ``depth_decoder.heads`` (K, D, V);
- output: ``lm_head`` (``num_codebooks == 1``) and, with a mel head, ``mel_head.fc_in`` / ``mel_head.fc_out`` (these
  two share the MLP names, so the default adapts them too);
- embeddings (``nn.Embedding``, which LoRA also adapts): ``model.code_embeddings``, ``model.position_embeddings``,
  ``model.mel_positions``, ``depth_decoder.code_embeddings``, ``depth_decoder.codebook_positions``.

A model loaded with ``trust_remote_code=True`` without this package installed gets no default: pass
``target_modules=list(LORA_TARGET_MODULES)`` (the names above) yourself.
"""

from __future__ import annotations

from .configuration_whisper_gpt import WhisperGPTConfig

# Attention (fused QKV, output) and MLP (in, out) projections of the decoder, mel-path and depth-decoder blocks.
LORA_TARGET_MODULES: tuple[str, ...] = ("qkv_proj", "out_proj", "fc_in", "fc_out")


def register_lora_target_modules() -> None:
    """Make `LORA_TARGET_MODULES` PEFT's LoRA default for ``model_type="whisper_gpt"``.

    Writes into ``peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``, the table LoRA reads
    when a `LoraConfig` names no ``target_modules``; an entry already there (set by the user) is kept. Other PEFT
    methods keep their own tables and still need ``target_modules``. Raises ImportError without ``peft``.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as lora_defaults

    lora_defaults.setdefault(WhisperGPTConfig.model_type, list(LORA_TARGET_MODULES))


__all__ = ["LORA_TARGET_MODULES", "register_lora_target_modules"]
