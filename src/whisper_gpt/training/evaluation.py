"""Next-frame prediction metrics: NLL (nats per predicted code), accuracy and perplexity.

Reported overall, for codebook 0 alone (the number comparable with the Whisper-GPT paper, which models codebook 0
only) and per codebook, plus the NLL as a function of the context length inside a window. Evaluation windows are
split between processes without duplicates and their sums are added up across processes, so one process and
several processes give the same numbers up to floating-point summation order.

``whisper-gpt evaluate MODEL_DIR DATA`` runs it on a folder of audio, a built corpus or a saved dataset; it prints
the metrics and writes them (JSON) only where ``--output`` says, never into the model folder unasked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import SlidingWindows, WhisperGPTDataCollator


def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prediction NLL, correctness and validity of next-frame logits.

    Args:
        logits: (B, K, L, V); position t predicts frame t + 1.
        labels: (B, K_in >= K, L) codes, -100 where a frame is not scored (padding, context already scored).
    Returns:
        nll (B, K, L-1) float32 nats (0 where invalid), correct (B, K, L-1) bool, valid (B, K, L-1) bool.
    """
    num_codebooks = logits.shape[1]
    targets = labels[:, :num_codebooks, 1:].to(logits.device)
    valid = targets != -100
    log_probs = F.log_softmax(logits[:, :, :-1].float(), dim=-1)
    safe = targets.clamp(min=0)
    nll = -log_probs.gather(-1, safe[..., None])[..., 0] * valid
    correct = (log_probs.argmax(dim=-1) == safe) & valid
    return nll, correct, valid


class MetricSums:
    """Running sums from which the metrics are computed: per codebook and per context length (in float64)."""

    def __init__(self, num_codebooks: int, window: int, device: torch.device | str = "cpu"):
        self.num_codebooks = num_codebooks
        self.window = window
        # Layout of the flat vector that is summed across processes in one collective.
        self.values = torch.zeros(3 * num_codebooks + 2 * (window - 1), dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        nll, correct, valid = token_statistics(logits, labels)
        k, positions = self.num_codebooks, nll.shape[-1]
        self.values[:k] += nll.double().sum(dim=(0, 2))
        self.values[k : 2 * k] += correct.double().sum(dim=(0, 2))
        self.values[2 * k : 3 * k] += valid.double().sum(dim=(0, 2))
        offset = 3 * k
        self.values[offset : offset + positions] += nll.double().sum(dim=(0, 1))
        offset += self.window - 1
        self.values[offset : offset + positions] += valid.double().sum(dim=(0, 1))

    def metrics(self) -> dict[str, Any]:
        """The sums as a JSON-ready dict (see `evaluate_model`)."""
        values = self.values.cpu().numpy()
        k = self.num_codebooks
        nll, correct, count = values[:k], values[k : 2 * k], values[2 * k : 3 * k]
        position_nll = values[3 * k : 3 * k + self.window - 1]
        position_count = values[3 * k + self.window - 1 :]
        per_codebook = [{"codebook": index, **_summary(nll[index], correct[index], count[index])} for index in range(k)]
        return {
            **_summary(nll.sum(), correct.sum(), count.sum()),
            "codebook_0": _summary(nll[0], correct[0], count[0]),
            "per_codebook": per_codebook,
            # Entry c - 1: predictions made with c frames of context in their window.
            "nll_by_context": [
                float(total / number) if number else None
                for total, number in zip(position_nll, position_count, strict=True)
            ],
            "tokens_by_context": [int(number) for number in position_count],
        }


def _summary(nll: float, correct: float, count: float) -> dict[str, Any]:
    if count == 0:
        return {"nll": None, "accuracy": None, "perplexity": None, "tokens": 0}
    mean = float(nll / count)
    return {"nll": mean, "accuracy": float(correct / count), "perplexity": math.exp(mean), "tokens": int(count)}


def evaluate_model(
    model: torch.nn.Module,
    dataset: Any,
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    accelerator: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a model's next-frame predictions on a prepared dataset (see `whisper_gpt.training.data.prepare_dataset`).

    Files are cut into windows of ``window`` frames (default: the model's context) every ``stride`` frames (see
    `SlidingWindows`), scored ``batch_size`` windows at a time. With an ``accelerator`` each process scores every
    ``num_processes``-th window and the sums are added across processes, so no window is counted twice; every
    process gets the same result.

    Returns:
        ``nll`` (mean nats per predicted code), ``accuracy``, ``perplexity`` (exp(nll)), ``tokens`` over all
        codebooks; the same under ``codebook_0`` and for each entry of ``per_codebook``; ``nll_by_context`` (entry
        c - 1: mean NLL of predictions made with c frames of context, ``None`` where there are none) with
        ``tokens_by_context``; and ``windows``, ``window`` and ``stride``.

    Raises:
        ValueError: ``batch_size`` < 1, ``window`` beyond the model's context, or a window/stride that
            `SlidingWindows` refuses.
    """
    from tqdm.auto import tqdm

    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    config = unwrapped.config
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    window = config.max_position_embeddings if window is None else window
    if window > config.max_position_embeddings:
        raise ValueError(f"window ({window}) exceeds the model's context ({config.max_position_embeddings} frames).")
    windows = SlidingWindows(dataset, window, stride)
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    mine = list(range(rank, len(windows), world))
    # Longest first: windows of similar length share a batch, so little compute goes to padding.
    mine.sort(key=lambda index: windows.windows[index][1] - windows.windows[index][2])
    collate = WhisperGPTDataCollator(max_frames=window, random_crop=False)
    device = next(unwrapped.parameters()).device
    sums = MetricSums(config.num_codebooks, window, device=device)
    was_training = unwrapped.training
    unwrapped.eval()
    batches = range(0, len(mine), batch_size)
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    with torch.inference_mode():
        for start in tqdm(batches, desc="evaluating", unit="batch", disable=not show, leave=False):
            batch = collate([windows[index] for index in mine[start : start + batch_size]])
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            labels = batch.pop("labels")
            if not config.use_spectrogram:
                batch.pop("input_features", None)
            if accelerator is not None:
                with accelerator.autocast():
                    logits = unwrapped(**batch, use_cache=False).logits
            else:
                logits = unwrapped(**batch, use_cache=False).logits
            sums.add(logits, labels)
    unwrapped.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        sums.values = accelerator.reduce(sums.values, reduction="sum")
    metrics = sums.metrics()
    metrics.update(windows=len(windows), window=window, stride=window if stride is None else stride)
    return metrics


def preprocess_logits_for_metrics(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """For `transformers.Trainer`: reduce (B, K, L, V) logits to per-example sums (B, 3, K).

    Rows: NLL sum, correct predictions, scored predictions; so evaluation never keeps the full logits in memory.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]  # the model's other outputs (cache, hidden states) are not needed
    nll, correct, valid = token_statistics(logits, labels)
    return torch.stack([nll.sum(-1), correct.sum(-1).float(), valid.sum(-1).float()], dim=1)


def compute_metrics(eval_prediction: Any) -> dict[str, float]:
    """For `transformers.Trainer` (with `preprocess_logits_for_metrics`): NLL, accuracy, perplexity, codebook 0.

    Accepts the predictions concatenated (N, 3, K) or, with ``eval_do_concat_batches=False``, as a list of
    per-batch arrays.
    """
    predictions = eval_prediction.predictions
    if isinstance(predictions, (list, tuple)):
        sums = sum(np.asarray(part, dtype=np.float64).sum(axis=0) for part in predictions)  # (3, K)
    else:
        sums = np.asarray(predictions, dtype=np.float64).sum(axis=0)
    overall = _summary(sums[0].sum(), sums[1].sum(), sums[2].sum())
    first = _summary(sums[0, 0], sums[1, 0], sums[2, 0])
    return {
        "nll": overall["nll"],
        "accuracy": overall["accuracy"],
        "perplexity": overall["perplexity"],
        "codebook_0_nll": first["nll"],
        "codebook_0_accuracy": first["accuracy"],
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human-readable table of `evaluate_model`'s result."""

    def row(name: str, values: dict[str, Any]) -> str:
        if not values["tokens"]:
            return f"{name:<14} {'-':>10} {'-':>10} {'-':>10} {0:>10}"
        return (
            f"{name:<14} {values['nll']:>10.4f} {values['accuracy']:>10.2%} {values['perplexity']:>10.2f} "
            f"{values['tokens']:>10,}"
        )

    lines = [f"{'':<14} {'NLL (nats)':>10} {'accuracy':>10} {'perplexity':>10} {'tokens':>10}"]
    lines.append(row("all codebooks", metrics))
    lines.append(row("codebook 0", metrics["codebook_0"]))
    if len(metrics["per_codebook"]) > 1:
        lines += [row(f"codebook {entry['codebook']}", entry) for entry in metrics["per_codebook"][1:]]
    return "\n".join(lines)


def plot_nll_by_context(metrics: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a PNG of the NLL against the context length (frames and seconds at 75 frames/s)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Plotting needs matplotlib: pip install matplotlib") from error
    values = metrics["nll_by_context"]
    context = [index + 1 for index, value in enumerate(values) if value is not None]
    nll = [value for value in values if value is not None]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(context, nll, linewidth=1)
    axis.set_xlabel("frames of context in the window")
    axis.set_ylabel("NLL (nats per code)")
    axis.set_title(title or "Next-frame NLL against context length")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt evaluate MODEL_DIR DATA`` to an argparse subparsers object."""
    from ..apps.cli import positive_int

    parser = subparsers.add_parser(
        "evaluate", help="NLL, accuracy and perplexity of a saved model on audio (overall, codebook 0, per codebook)"
    )
    parser.add_argument("model_dir", help="a folder written by save_pretrained (model and processor)")
    parser.add_argument("data", help="a folder of audio files, a built corpus, or a dataset saved with save_to_disk")
    parser.add_argument("--split", default="validation", help="corpus split to score (default: validation)")
    parser.add_argument("--all-files", action="store_true", help="score every file of DATA, ignoring the split")
    parser.add_argument(
        "--output", help="JSON file to write the metrics to (default: none; MODEL_DIR/evaluation.json is one choice)"
    )
    parser.add_argument(
        "--plot",
        nargs="?",
        const="",
        default=None,
        help="also write a PNG of NLL by context (default: beside --output)",
    )
    parser.add_argument(
        "--window", type=positive_int, default=None, help="frames per window (default: the model's context)"
    )
    parser.add_argument(
        "--stride", type=positive_int, default=None, help="frames between windows (default: the window)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows scored at a time (default 8)")
    parser.add_argument("--cache-dir", default=None, help="where prepared data is cached")
    parser.add_argument("--num-proc", type=positive_int, default=None, help="processes encoding audio")
    parser.set_defaults(handler=_evaluate_command)


def _evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    from ..apps.cli import load_saved_model
    from .data import prepare_dataset
    from .loop import configure_torch

    if args.plot == "" and not args.output:
        raise ValueError("--plot without a file name writes beside --output; give --output or --plot FILE.png")
    configure_torch(num_processes=1)
    model, processor = load_saved_model(args.model_dir)
    model.validate_audio_tokenizer(processor.audio_tokenizer)
    dataset = prepare_dataset(
        args.data,
        processor,
        split=None if args.all_files else args.split,
        cache_dir=args.cache_dir,
        num_proc=args.num_proc,
    )
    metrics = evaluate_model(model, dataset, window=args.window, stride=args.stride, batch_size=args.batch_size)
    metrics.update(model=str(args.model_dir), data=str(args.data), split=None if args.all_files else args.split)
    print(format_metrics(metrics))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {output}")
    if args.plot is not None:
        png = plot_nll_by_context(metrics, args.plot or Path(args.output).with_suffix(".png"))
        print(f"wrote {png}")
    return metrics


__all__ = [
    "MetricSums",
    "compute_metrics",
    "evaluate_model",
    "format_metrics",
    "plot_nll_by_context",
    "preprocess_logits_for_metrics",
    "register_cli",
    "token_statistics",
]
