"""Fine-tune a saved Whisper-GPT model with `transformers.Trainer`.

    python examples/finetune_trainer.py MODEL_DIR DATA OUTPUT_DIR [--max-steps 200] [--learning-rate 2e-4]
        [--weight-decay 0.1]

MODEL_DIR is a folder written by `whisper-gpt train` (model + processor); DATA a folder of audio files, a built
corpus or a prepared dataset. The model computes its loss from ``labels`` (the package's collator makes them), and
evaluation reports NLL (nats per code), accuracy and perplexity through ``compute_metrics``; the logits are reduced
to per-example sums as they are produced, so evaluation never holds them all. The optimizer is the one
``whisper-gpt train`` uses (`whisper_gpt.training.loop.build_optimizer`); the Trainer adds its warmup + cosine
schedule.

OUTPUT_DIR/final is written into a temporary folder and renamed into place, so a kill leaves the previous final/ or
none; a final/ that is already there is replaced only with --overwrite-output-dir.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainingArguments

from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.training import configure_torch
from whisper_gpt.training.data import SlidingWindows, TrainingCrops, WhisperGPTDataCollator, prepare_dataset
from whisper_gpt.training.evaluation import compute_metrics, preprocess_logits_for_metrics
from whisper_gpt.training.loop import build_optimizer, replace_folder


class _DropFeatures:
    """Token-only models take no mel frames; the collator makes them for every row, so they are dropped here."""

    def __init__(self, collator: WhisperGPTDataCollator):
        self.collator = collator

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(rows)
        batch.pop("input_features", None)
        return batch


def finetune(
    model_dir: str,
    data: str,
    output_dir: str,
    *,
    max_steps: int = 200,
    learning_rate: float = 2e-4,
    weight_decay: float = 0.1,
    batch_size: int = 8,
    max_frames: int | None = None,
    eval_steps: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
    report_to: str = "none",
    overwrite_output_dir: bool = False,
) -> dict[str, float]:
    """Fine-tune ``model_dir`` on the train split of ``data``; returns the final evaluation metrics.

    Raises ValueError when ``output_dir/final`` exists, unless ``overwrite_output_dir``.
    """
    final = Path(output_dir) / "final"
    if final.exists() and not overwrite_output_dir:
        raise ValueError(f"{final} holds an earlier fine-tuned model; pass --overwrite-output-dir to replace it.")
    configure_torch(num_processes=1)
    model = WhisperGPTForCausalLM.from_pretrained(model_dir)
    processor = WhisperGPTProcessor.from_pretrained(model_dir)
    model.validate_audio_tokenizer(processor.audio_tokenizer)
    # Training never decodes step by step; without this every forward would build a KV cache for nothing.
    model.config.use_cache = False
    max_frames = max_frames or model.config.max_position_embeddings
    train_set = prepare_dataset(data, processor, split="train", cache_dir=cache_dir)
    validation_set = prepare_dataset(data, processor, split="validation", cache_dir=cache_dir)

    collator = WhisperGPTDataCollator(max_frames=max_frames, random_crop=True, seed=seed)
    arguments = TrainingArguments(
        output_dir=output_dir,
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
        label_names=["labels"],
        # Windows differ in length, so their labels cannot be concatenated; compute_metrics takes a list.
        eval_do_concat_batches=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=TrainingCrops(train_set, max_frames),
        eval_dataset=SlidingWindows(validation_set, max_frames),
        data_collator=collator if model.config.trains_on_mel_frames else _DropFeatures(collator),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        optimizers=(build_optimizer(model, learning_rate, weight_decay), None),
        processing_class=processor,  # save_model (and any checkpoint) saves it with the model
    )
    trainer.train()
    metrics = trainer.evaluate()
    model.config.use_cache = True
    partial = final.with_name(".final.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed earlier save
    trainer.save_model(str(partial))
    (partial / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    replace_folder(partial, final)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("output_dir")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--report-to", default="none")
    parser.add_argument("--overwrite-output-dir", action="store_true", help="replace an existing OUTPUT_DIR/final")
    args = parser.parse_args(argv)
    metrics = finetune(**{key.replace("-", "_"): value for key, value in vars(args).items()})
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
