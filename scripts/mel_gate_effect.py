"""Does the hybrid's mel stream slow its learning, and does the mel gate fix that?

Trains GPT-S and three hybrids (concat fusion, sum fusion, concat with ``mel_gate=True``) for the same number of
optimizer steps on one corpus with one processor, with the demo's settings (crops of 200 frames, packing, batch 8,
learning rate 1e-3), two at a time with one thread each, and reports each model's held-out codebook-0 NLL and
accuracy, plus how open the gated model's gate ended (tanh of its learned scalar). Prints JSON; ``--out`` also
writes it.

    whisper-gpt demo                                  # builds runs/demo/corpus and runs/demo/processor
    python scripts/mel_gate_effect.py --corpus runs/demo/corpus/speech --processor runs/demo/processor
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

VARIANTS = {
    "gpt_s": ("paper_gpt_s", {}),
    "hybrid_concat": ("paper_hybrid", {}),
    "hybrid_sum": ("paper_hybrid", {"fusion": "sum"}),
    "hybrid_concat_gated": ("paper_hybrid", {"mel_gate": True}),
}


def train_variant(name: str, corpus: str, processor: str, work_dir: str, steps: int, seed: int) -> dict[str, Any]:
    """Worker: train one variant in this process (one thread) and measure it."""
    import torch

    from whisper_gpt import WhisperGPTForCausalLM
    from whisper_gpt.training import TrainingConfig, configure_torch, train

    configure_torch(num_processes=1, threads=1)
    preset, overrides = VARIANTS[name]
    summary = train(
        TrainingConfig(
            output_dir=str(Path(work_dir) / name),
            train_data=corpus,
            processor=processor,
            preset=preset,
            model_overrides=overrides,
            max_frames=200,
            pack=True,
            eval_window=200,
            batch_size=8,
            learning_rate=1e-3,
            max_steps=steps,
            warmup_steps=max(1, steps // 20),
            eval_every=0,
            save_every=0,
            report_to="none",
            seed=seed,
            torch_threads=1,
            progress=False,
        )
    )
    fusion = getattr(WhisperGPTForCausalLM.from_pretrained(summary["final_dir"]).model, "fusion", None)
    gate = fusion.mel_gate if fusion is not None else None
    first = summary["validation"]["codebook_0"]
    return {
        "preset": preset,
        "overrides": overrides,
        "steps": summary["steps"],
        "train_seconds": summary["seconds"],
        "nll": first["nll"],
        "accuracy": first["accuracy"],
        "validation_codes": first["tokens"],
        "mel_gate": torch.tanh(gate).item() if gate is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="built corpus or folder of audio")
    parser.add_argument("--processor", required=True, help="saved processor (e.g. the demo's runs/demo/processor)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="runs/mel_gate_effect")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        jobs = {
            name: pool.submit(train_variant, name, args.corpus, args.processor, args.work_dir, args.steps, args.seed)
            for name in VARIANTS
        }
        runs = {name: job.result() for name, job in jobs.items()}
    report = {"corpus": args.corpus, "processor": args.processor, "steps": args.steps, "seed": args.seed, "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
