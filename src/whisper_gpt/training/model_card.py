"""Model cards for saved Whisper-GPT models, and pushing a saved folder to the Hub.

`build_model_card` fills the ``model_card.md`` template (at the repository root, shipped inside the package as
``whisper_gpt/model_card.md``) with `huggingface_hub.ModelCard`: metadata (library, tags, pipeline tag, datasets,
metrics and evaluation results) and a body describing the model, its evaluation and its training command.
`push_to_hub` uploads a folder written by the training script with ``model.push_to_hub``,
``processor.push_to_hub`` and ``card.push_to_hub``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_NAME = "model_card.md"
# The Hub has no "audio continuation" task; audio-to-audio is the task it lists audio-prompted generators under.
PIPELINE_TAG = "audio-to-audio"
PAPER_URL = "https://arxiv.org/abs/2412.11449"


def template_path() -> Path:
    """The model card template: the package's copy (a link to the repository root's ``model_card.md``)."""
    path = Path(str(importlib.resources.files("whisper_gpt.training").joinpath(TEMPLATE_NAME)))
    if not path.is_file():
        raise FileNotFoundError(
            f"The model card template {path} is missing; reinstall whisper-gpt (it ships as package data)."
        )
    return path


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def build_model_card(
    model: Any,
    processor: Any = None,
    *,
    metrics: dict[str, Any] | None = None,
    evaluation_data: str = "the validation split",
    datasets: list[str] | None = None,
    training_settings: dict[str, Any] | None = None,
    training_command: str | None = None,
    training_description: str = "",
    repo_id: str | None = None,
    model_name: str | None = None,
    description: str = "",
    license: str | None = None,
) -> ModelCard:
    """Fill the model card template for ``model`` (a `WhisperGPTForCausalLM`).

    Args:
        processor: the model's processor; its codec decides the note on listenable audio.
        metrics: the result of `whisper_gpt.training.evaluation.evaluate_model` on held-out data.
        evaluation_data: what ``metrics`` were measured on, in words.
        datasets: Hub dataset ids the model was trained on (local corpora are described in
            ``training_description`` instead: the metadata field only accepts Hub ids).
        training_settings: hyperparameters shown in a table.
        training_command: the command line that trained the model.
        repo_id: where the model will live on the Hub (used in the usage example).
    """
    config = model.config
    kind = "hybrid" if config.use_spectrogram else "token-only"
    model_name = model_name or f"whisper-gpt-{kind}"
    tags = ["whisper-gpt", "audio", "audio-continuation", "audio-language-model", "encodec", kind, "custom_code"]
    eval_results = None
    rows = []
    if metrics and metrics.get("tokens"):
        task = {"task_type": PIPELINE_TAG, "dataset_type": (datasets or ["custom"])[0], "dataset_name": evaluation_data}
        first = metrics["codebook_0"]
        eval_results = [
            EvalResult(**task, metric_type="nll", metric_name="codebook 0 NLL (nats)", metric_value=first["nll"]),
            EvalResult(
                **task, metric_type="accuracy", metric_name="codebook 0 accuracy", metric_value=first["accuracy"]
            ),
            EvalResult(
                **task, metric_type="perplexity", metric_name="codebook 0 perplexity", metric_value=first["perplexity"]
            ),
        ]
        entries = [("all", metrics)]
        if len(metrics["per_codebook"]) > 1:
            entries += [(str(entry["codebook"]), entry) for entry in metrics["per_codebook"]]
        else:
            entries.append(("0", first))
        rows = [
            {
                "name": name,
                "nll": _number(values["nll"]),
                "accuracy": "-" if values["accuracy"] is None else f"{values['accuracy']:.2%}",
                "perplexity": _number(values["perplexity"], 2),
                "tokens": f"{values['tokens']:,}",
            }
            for name, values in entries
        ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
        datasets=datasets,
        metrics=["perplexity", "accuracy"],
        license=license,
        model_name=model_name,
        eval_results=eval_results,
    )
    codec_note = ""
    tokenizer = getattr(processor, "audio_tokenizer", None)
    if tokenizer is not None and not tokenizer.decoder_trained:
        fitted = (
            "whose encoder was trained to predict each frame's log-mel spectrum and "
            if getattr(tokenizer, "encoder_fitted_to_mel", False)
            else ""
        )
        codec_note = (
            f"Its codec is a small EnCodec built locally {fitted}whose codebooks were calibrated by k-means on the "
            "training audio; its decoder was never trained, so decoded codes are not listenable audio. The codes "
            "are still a faithful discretisation for language-modelling comparisons."
        )
        if getattr(tokenizer, "mel_exemplars", None) is not None:
            codec_note += (
                " To listen, generation takes each new frame's log-mel from the codec's exemplar frame of its code "
                '(`mel_source="exemplar"`, the default for this codec) and the pipeline renders those frames with '
                "Griffin-Lim."
            )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=model_name,
        model_description=description,
        use_spectrogram=config.use_spectrogram,
        spectrogram_layers=config.spectrogram_layers,
        num_parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        num_codebooks=config.num_codebooks,
        codebook_size=config.codebook_size,
        max_position_embeddings=config.max_position_embeddings,
        context_seconds=f"{config.max_position_embeddings / config.frame_rate:.1f}",
        num_mel_bins=config.num_mel_bins,
        mel_head=(
            f"yes ({sum(p.numel() for p in model.mel_head.parameters()):,} of the parameters; generation can predict "
            'new mel frames with it, `mel_source="learned"`)'
            if config.use_mel_head
            else "no"
        ),
        repo_id=repo_id or "PATH_OR_REPO_ID",
        codec_note=codec_note,
        evaluation_rows=rows,
        evaluation_data=evaluation_data,
        evaluation_windows=(metrics or {}).get("windows"),
        evaluation_window=(metrics or {}).get("window"),
        training_description=training_description,
        training_settings=sorted((training_settings or {}).items()),
        training_command=training_command or "(not recorded)",
    )


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool | None = None, token: str | None = None) -> None:
    """Upload a folder written by the training script: model, processor (codec included) and model card.

    Raises:
        FileNotFoundError: "no model folder at PATH" when ``folder`` is not a folder (nothing is uploaded).
    """
    from .. import WhisperGPTForCausalLM, WhisperGPTProcessor

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    model = WhisperGPTForCausalLM.from_pretrained(folder)
    processor = WhisperGPTProcessor.from_pretrained(folder)
    model.push_to_hub(repo_id, private=private, token=token)
    processor.push_to_hub(repo_id, private=private, token=token)
    card_file = folder / "README.md"
    if card_file.is_file():
        ModelCard.load(card_file).push_to_hub(repo_id, token=token)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt push MODEL_DIR REPO_ID`` to an argparse subparsers object."""
    parser = subparsers.add_parser("push", help="upload a trained model folder (model, processor, card) to the Hub")
    parser.add_argument("model_dir", help="a folder written by whisper-gpt train")
    parser.add_argument("repo_id", help="Hub repository, e.g. user/whisper-gpt-speech")
    parser.add_argument("--private", action="store_true")
    parser.set_defaults(handler=lambda args: push_to_hub(args.model_dir, args.repo_id, private=args.private or None))


__all__ = ["build_model_card", "push_to_hub", "register_cli", "template_path"]
