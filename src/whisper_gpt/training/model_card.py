"""Model cards for saved Whisper-GPT models, and pushing a saved folder to the Hub.

`build_model_card` fills the ``model_card.md`` template (at the repository root, shipped inside the package as
``whisper_gpt/model_card.md``) with `huggingface_hub.ModelCard`: metadata (library, tags, pipeline tag, datasets,
metrics and evaluation results) and a body describing the model, its evaluation and its training command.
`push_to_hub` uploads a folder written by the training script (model, generation config, processor with its codec,
remote code, card and evaluation results) with `huggingface_hub.HfApi.upload_folder`, in one commit.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

TEMPLATE_NAME = "model_card.md"
# The Hub has no "audio continuation" task; audio-to-audio is the task it lists audio-prompted generators under.
PIPELINE_TAG = "audio-to-audio"
PAPER_URL = "https://arxiv.org/abs/2412.11449"
# Stands for the repository in the card's usage example until `push_to_hub` knows it.
REPO_PLACEHOLDER = "PATH_OR_REPO_ID"
COMMIT_MESSAGE = "Upload Whisper-GPT model"
# What `whisper_gpt.training.loop.save_final` writes and every pushed folder must hold (besides the weights).
REQUIRED_FILES = ("config.json", "processor_config.json", "audio_tokenizer/config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


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
    base_model: str | list[str] | None = None,
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
        license: a Hub license identifier (e.g. "apache-2.0"); omitted from the metadata when None.
        base_model: Hub id(s) of the model this one was fine-tuned from; omitted when None.
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
        base_model=base_model,
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
        repo_id=repo_id or REPO_PLACEHOLDER,
        codec_note=codec_note,
        evaluation_rows=rows,
        evaluation_data=evaluation_data,
        evaluation_windows=(metrics or {}).get("windows"),
        evaluation_window=(metrics or {}).get("window"),
        training_description=training_description,
        training_settings=sorted((training_settings or {}).items()),
        training_command=training_command or "(not recorded)",
    )


def _hub_id(value: str, what: str) -> str:
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        raise ValueError(
            f"{what} must be a Hub id such as user/name (a local folder cannot be linked from the card); "
            f"got {value!r}: {error}"
        ) from None
    return value


def _check_model_folder(folder: Path) -> None:
    """Refuse, before any request, a folder that is not a saved model with its processor."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        hint = "; its final/ folder is the one to push" if (folder / "final" / "config.json").is_file() else ""
        raise FileNotFoundError(
            f"{folder} is not a saved Whisper-GPT model with its processor (missing {', '.join(missing)}){hint}."
        )


def _folder_card(folder: Path) -> ModelCard:
    """The folder's README.md, or (for a folder saved without one) a card built from its model, processor and,
    when it holds `evaluate_model` results, eval_results.json."""
    if (folder / "README.md").is_file():
        return ModelCard.load(folder / "README.md")
    from .. import WhisperGPTForCausalLM, WhisperGPTProcessor

    metrics = None
    results = folder / "eval_results.json"
    if results.is_file():
        loaded = json.loads(results.read_text())
        # The Trainer's evaluation (eval_* keys) has no per-codebook table; only evaluate_model's fills the card.
        metrics = loaded if {"codebook_0", "per_codebook", "tokens"} <= set(loaded) else None
    model = WhisperGPTForCausalLM.from_pretrained(folder)
    return build_model_card(model, WhisperGPTProcessor.from_pretrained(folder), metrics=metrics)


def _stage(folder: Path, staging: Path, card: ModelCard) -> None:
    """Mirror ``folder`` in ``staging`` with links to its files (copies where links are refused) and the card as
    README.md, so the upload sends the new card without writing into ``folder``."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        # Hidden files and folders are editor or system litter (or a save in progress), never part of a model.
        if any(part.startswith(".") for part in relative.parts) or not path.is_file() or relative == Path("README.md"):
            continue
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(path.resolve())
        except OSError:
            shutil.copy2(path, target)
    (staging / "README.md").write_text(str(card), encoding="utf-8")


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    *,
    license: str | None = None,
    base_model: str | list[str] | None = None,
    datasets: list[str] | None = None,
    commit_message: str = COMMIT_MESSAGE,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload a folder written by the training script (``OUTPUT_DIR/final``) to the Hub in one commit.

    The repository is created first if needed (``private=True``: a new repository is private; None: the account's
    default; an existing repository keeps its visibility). Then `HfApi.upload_folder` sends, in one commit, every
    file of the folder as it is on disk (config.json, the weights, generation_config.json, processor_config.json,
    the codec under audio_tokenizer/, the remote-code files, eval_results.json) and the model card as README.md:
    the folder's own card (or one built from the model when it has none) with ``license``, ``base_model`` and
    ``datasets`` set in its metadata where given (values already in the card are kept otherwise, and fields known
    to neither are left out) and the usage example pointing at the repository. Hidden files are not sent and the
    folder is not modified. The Hub checks the card's metadata (e.g. the license identifier) before any file is
    uploaded.

    Args:
        license: a Hub license identifier such as "apache-2.0" or "mit".
        base_model: the Hub id of the model this one was fine-tuned from (the Hub links the two).
        datasets: Hub ids of the datasets it was trained on.
        endpoint: the Hub's address (default: ``HF_ENDPOINT`` or huggingface.co).
    Returns:
        The commit (`huggingface_hub.CommitInfo`; ``commit_url`` links to it).
    Raises:
        FileNotFoundError: "no model folder at PATH" when ``folder`` is not a folder, or a message naming what is
            missing when it holds no saved model and processor (nothing is sent).
        ValueError: ``base_model`` or a dataset that is not a Hub id, or an empty ``license``.
    """
    folder = Path(folder)
    _check_model_folder(folder)
    if license is not None and not license.strip():
        raise ValueError("license must be a Hub license identifier such as apache-2.0, not empty.")
    base_models = [base_model] if isinstance(base_model, str) else base_model
    for name in base_models or []:
        _hub_id(name, "base_model")
    for name in datasets or []:
        _hub_id(name, "a dataset")
    card = _folder_card(folder)
    if license is not None:
        card.data.license = license
    if base_models:
        card.data.base_model = base_models[0] if len(base_models) == 1 else base_models
    if datasets:
        card.data.datasets = list(datasets)
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card.text = card.text.replace(REPO_PLACEHOLDER, repo_id)
    with tempfile.TemporaryDirectory(prefix="whisper-gpt-push-") as staging:
        _stage(folder, Path(staging), card)
        return api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message)


def _push_command(args: argparse.Namespace) -> CommitInfo:
    commit = push_to_hub(
        args.model_dir,
        args.repo_id,
        private=args.private or None,
        license=args.license,
        base_model=args.base_model,
        datasets=args.dataset or None,
    )
    print(f"pushed {args.model_dir} in one commit: {commit.commit_url}")
    return commit


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``whisper-gpt push MODEL_DIR REPO_ID`` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "push", help="upload a trained model folder (model, processor, codec, card, evaluation) in one commit"
    )
    parser.add_argument("model_dir", help="a folder written by whisper-gpt train (OUTPUT_DIR/final)")
    parser.add_argument("repo_id", help="Hub repository, e.g. user/whisper-gpt-speech")
    parser.add_argument("--private", action="store_true", help="make a new repository private")
    parser.add_argument("--license", help="Hub license identifier for the card, e.g. apache-2.0")
    parser.add_argument("--base-model", help="Hub id of the model this one was fine-tuned from")
    parser.add_argument(
        "--dataset", action="append", metavar="DATASET_ID", help="Hub id of a training dataset (repeatable)"
    )
    parser.set_defaults(handler=_push_command)


__all__ = ["build_model_card", "push_to_hub", "register_cli", "template_path"]
