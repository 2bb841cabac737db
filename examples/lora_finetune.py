"""Fine-tune a saved Whisper-GPT model with LoRA (PEFT) through `transformers.Trainer`, then reload the adapter.

    python examples/lora_finetune.py MODEL_DIR DATA OUTPUT_DIR [--max-steps 200] [--rank 8] [--alpha 16]
        [--learning-rate 1e-3] [--target-modules qkv_proj out_proj fc_in fc_out]
    python examples/lora_finetune.py --tiny OUTPUT_DIR [--max-steps 4]

MODEL_DIR is a folder written by `whisper-gpt train` (model + processor); DATA a folder of audio files, a built
corpus or a prepared dataset (its train split trains, its validation split evaluates). ``--tiny`` needs neither: it
writes a few seconds of synthetic tones, builds a tiny random model and a tiny calibrated codec from them under
OUTPUT_DIR/tiny-model and fine-tunes that, to try the whole path in under a minute on a CPU.

``LoraConfig(task_type="CAUSAL_LM")`` needs no ``target_modules``: importing `whisper_gpt` with peft installed
makes the attention and MLP projections of every transformer block (`whisper_gpt.peft_support.LORA_TARGET_MODULES`)
the default; ``--target-modules`` picks others (the module names are listed in `whisper_gpt.peft_support`). Only
the LoRA weights train; the base model's weights are frozen. OUTPUT_DIR/adapter receives the adapter
(adapter_config.json, adapter_model.safetensors, PEFT's card) and eval_results.json; an existing adapter is
replaced only with --overwrite-output-dir. The adapter is then reloaded onto a fresh copy of the base model with
`peft.PeftModel.from_pretrained` and its logits on a validation window compared with the trained model's.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Trainer, TrainingArguments

from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.training import configure_torch
from whisper_gpt.training.data import (
    SlidingWindows,
    TrainingCrops,
    WhisperGPTDataCollator,
    build_processor,
    prepare_dataset,
)
from whisper_gpt.training.evaluation import compute_metrics, preprocess_logits_for_metrics
from whisper_gpt.training.loop import replace_folder

SAMPLING_RATE = 24_000
# The --tiny model: a few thousand parameters, 64 codes per codebook, 16 mel bins, 2 codebooks at 1.5 kbps.
TINY_MODEL = {
    "codebook_size": 64,
    "num_codebooks": 2,
    "num_mel_bins": 16,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "spectrogram_hidden_size": 16,
    "spectrogram_num_heads": 2,
    "spectrogram_layers": 1,
    "depth_hidden_size": 16,
    "depth_num_heads": 2,
    "depth_num_layers": 1,
    "depth_intermediate_size": 32,
    "max_position_embeddings": 64,
}


class _DropFeatures:
    """Token-only models take no mel frames; the collator makes them for every row, so they are dropped here."""

    def __init__(self, collator: WhisperGPTDataCollator):
        self.collator = collator

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(rows)
        batch.pop("input_features", None)
        return batch


def _tones(seconds: float, seed: int) -> np.ndarray:
    """Harmonic tones whose pitch glides between random notes, with plucked-note envelopes (float32, 24 kHz)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    notes = rng.uniform(110.0, 440.0, size=int(seconds * 4) + 1)[(t * 4).astype(int)]
    phase = 2 * np.pi * np.cumsum(notes) / SAMPLING_RATE
    envelope = np.exp(-4.0 * (t % 0.25) / 0.25)
    return (0.3 * envelope * sum(np.sin(k * phase) / k for k in range(1, 6))).astype(np.float32)


def build_tiny_model(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write eight 3 s clips of synthetic tones to ``folder/audio`` (split into train and validation by file name,
    as any audio folder is) and a tiny random model with a tiny calibrated codec to ``folder/model``; returns
    (model folder, audio folder)."""
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    clips = [_tones(3.0, seed + index) for index in range(8)]
    for index, clip in enumerate(clips):
        soundfile.write(audio / f"clip{index}.wav", clip, SAMPLING_RATE, subtype="PCM_16")
    processor, _ = build_processor(
        clips,
        SAMPLING_RATE,
        num_mel_bins=TINY_MODEL["num_mel_bins"],
        codebook_size=TINY_MODEL["codebook_size"],
        bandwidth=1.5,
        iterations=5,
        encoder_steps=0,
        seed=seed,
        progress=False,
    )
    torch.manual_seed(seed)
    model = WhisperGPTForCausalLM(WhisperGPTConfig(**TINY_MODEL))
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model", audio


def lora_finetune(
    model_dir: str | Path,
    data: str | Path,
    output_dir: str | Path,
    *,
    max_steps: int = 200,
    rank: int = 8,
    alpha: int = 16,
    learning_rate: float = 1e-3,
    target_modules: list[str] | None = None,
    batch_size: int = 8,
    max_frames: int | None = None,
    eval_steps: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
    report_to: str = "none",
    overwrite_output_dir: bool = False,
) -> dict[str, Any]:
    """LoRA fine-tuning of ``model_dir`` on the train split of ``data``.

    Returns ``{"metrics": final evaluation (Trainer's eval_* keys), "adapter_dir", "trainable_parameters",
    "reload_max_abs_difference"}`` (the largest logit difference between the trained and the reloaded model on one
    validation window; 0.0 when the adapter round-trips exactly). Raises ValueError when ``output_dir/adapter``
    exists, unless ``overwrite_output_dir``, or when ``rank`` or ``alpha`` is not positive.
    """
    adapter_dir = Path(output_dir) / "adapter"
    if adapter_dir.exists() and not overwrite_output_dir:
        raise ValueError(f"{adapter_dir} holds an earlier adapter; pass --overwrite-output-dir to replace it.")
    if rank < 1 or alpha < 1:
        raise ValueError(f"--rank and --alpha must be positive, got {rank} and {alpha}.")
    configure_torch(num_processes=1)
    base = WhisperGPTForCausalLM.from_pretrained(model_dir)
    processor = WhisperGPTProcessor.from_pretrained(model_dir)
    base.validate_audio_tokenizer(processor.audio_tokenizer)
    # Training never decodes step by step; without this every forward would build a KV cache for nothing.
    base.config.use_cache = False
    lora = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules)
    model = get_peft_model(base, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    max_frames = max_frames or base.config.max_position_embeddings
    train_set = prepare_dataset(data, processor, split="train", cache_dir=cache_dir, progress=False)
    validation_set = prepare_dataset(data, processor, split="validation", cache_dir=cache_dir, progress=False)
    collator = WhisperGPTDataCollator(max_frames=max_frames, random_crop=True, seed=seed)
    collate = collator if base.config.trains_on_mel_frames else _DropFeatures(collator)
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 10),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_steps=max(1, eval_steps // 4),
        save_strategy="no",
        seed=seed,
        report_to=report_to,
        # The collator reads "codes"/"input_features" and makes the model's columns; keep every column for it.
        remove_unused_columns=False,
        # A PeftModel's forward takes **kwargs, so the Trainer cannot find the label column by itself.
        label_names=["labels"],
        # Windows differ in length, so their labels cannot be concatenated; compute_metrics takes a list.
        eval_do_concat_batches=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    validation_windows = SlidingWindows(validation_set, max_frames)
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=TrainingCrops(train_set, max_frames),
        eval_dataset=validation_windows,
        data_collator=collate,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    partial = adapter_dir.with_name(".adapter.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed earlier save
    model.save_pretrained(str(partial))
    (partial / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    replace_folder(partial, adapter_dir)

    batch = collate([validation_windows[0]])
    batch.pop("labels")
    device = next(model.parameters()).device
    batch = {name: tensor.to(device) for name, tensor in batch.items()}
    reloaded = PeftModel.from_pretrained(WhisperGPTForCausalLM.from_pretrained(model_dir), str(adapter_dir)).to(device)
    model.eval()
    reloaded.eval()
    with torch.inference_mode():
        difference = (model(**batch, use_cache=False).logits - reloaded(**batch, use_cache=False).logits).abs().max()
    return {
        "metrics": metrics,
        "adapter_dir": str(adapter_dir),
        "trainable_parameters": trainable,
        "reload_max_abs_difference": float(difference),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="MODEL_DIR DATA OUTPUT_DIR, or OUTPUT_DIR with --tiny")
    parser.add_argument("--tiny", action="store_true", help="build a tiny model and synthetic audio and use those")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default 200; 4 with --tiny)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--target-modules", nargs="+", default=None, help="module names (default: the package's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--eval-steps", type=int, default=None, help="default: 100, or --max-steps if fewer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--report-to", default="none")
    parser.add_argument("--overwrite-output-dir", action="store_true", help="replace an existing OUTPUT_DIR/adapter")
    args = parser.parse_args(argv)
    if len(args.paths) != (1 if args.tiny else 3):
        parser.error("pass OUTPUT_DIR with --tiny, MODEL_DIR DATA OUTPUT_DIR otherwise")
    max_steps = args.max_steps or (4 if args.tiny else 200)
    if max_steps < 1:
        parser.error(f"--max-steps must be positive, got {max_steps}")
    if args.tiny:
        output_dir = Path(args.paths[0])
        model_dir, data = build_tiny_model(output_dir / "tiny-model", seed=args.seed)
    else:
        model_dir, data, output_dir = args.paths
    result = lora_finetune(
        model_dir,
        data,
        output_dir,
        max_steps=max_steps,
        rank=args.rank,
        alpha=args.alpha,
        learning_rate=args.learning_rate,
        target_modules=args.target_modules,
        batch_size=args.batch_size,
        max_frames=args.max_frames,
        eval_steps=args.eval_steps or min(100, max_steps),
        seed=args.seed,
        cache_dir=args.cache_dir,
        report_to=args.report_to,
        overwrite_output_dir=args.overwrite_output_dir,
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
