"""The ``whisper-gpt`` command.

Errors: `main` reports the package's user-facing errors, those in `USER_ERRORS`, in one line on stderr and exits
with status 2 (argparse's status for a bad command line); ``--traceback`` or ``WHISPER_GPT_DEBUG=1`` shows their
full traceback instead. Any other exception is a bug and keeps its traceback.

Option types for argparse (`positive_int`, `non_negative_int`, `positive_float`, `non_negative_float`) and the
model folder check (`model_location`, `load_saved_model`) are shared by the commands that other modules register.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# ValueError is the package's convention for bad input values (see the modules' docstrings) and OSError covers
# files and folders: missing, unreadable, no space left, the Hub out of reach. TypeError, RuntimeError, KeyError and
# the rest are not caught: they come from bugs, or from failures that a changed command line cannot fix.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError)
DEBUG_VARIABLE = "WHISPER_GPT_DEBUG"


def _number(text: str, kind: type, description: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=`` for an integer > 0 (a count, a size, a number of steps)."""
    value = _number(text, int, "an integer > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for an integer >= 0 (e.g. a number of worker processes where 0 means none)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type=`` for a finite number > 0 (a duration, a learning rate, a temperature)."""
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type=`` for a finite number >= 0 (a weight decay, a warm-up fraction)."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def model_location(model_dir: str | os.PathLike) -> str:
    """What ``from_pretrained`` should be given for a MODEL_DIR argument: a local folder, or else a Hub repo id.

    Raises:
        NotADirectoryError: ``model_dir`` is a file.
        FileNotFoundError: "no model folder at PATH" when nothing is at ``model_dir`` and it reads as a path rather
            than a Hub repo id: not of the form ``name`` or ``namespace/name``, or its first part is a local folder.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    location = os.fspath(model_dir)
    if os.path.isdir(location):
        return location
    if os.path.exists(location):
        raise NotADirectoryError(f"{location} is a file, not a model folder (give the folder save_pretrained wrote)")
    missing = FileNotFoundError(f"no model folder at {location}")
    first = Path(location).parts[0] if Path(location).parts else ""
    if len(Path(location).parts) > 1 and os.path.isdir(first):
        raise missing
    try:
        validate_repo_id(location)
    except HFValidationError:
        raise missing from None
    return location


def load_saved_model(model_dir: str | os.PathLike) -> tuple[Any, Any]:
    """The `WhisperGPTForCausalLM` and `WhisperGPTProcessor` saved in ``model_dir`` (a folder or a Hub repo id).

    Raises:
        FileNotFoundError: "no model folder at PATH" (see `model_location`), also when ``model_dir`` could be a
            Hub repo id but loading it from the Hub failed (the Hub's reason follows).
        NotADirectoryError: ``model_dir`` is a file.
    """
    from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor

    location = model_location(model_dir)
    try:
        model = WhisperGPTForCausalLM.from_pretrained(location)
        processor = WhisperGPTProcessor.from_pretrained(location)
    except OSError as error:
        if os.path.isdir(location):  # a local folder with a missing or unreadable file: transformers says which
            raise
        reason = " ".join(str(error).split())
        raise FileNotFoundError(
            f"no model folder at {location}, and no Hub model of that id could be loaded: {reason}"
        ) from error
    return model, processor


def preset_parameter_counts() -> list[dict]:
    """Build each paper preset and count its parameters beside the paper's (`PAPER_RESULTS`)."""
    from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM
    from whisper_gpt.configuration_whisper_gpt import PAPER_RESULTS

    rows = []
    for name, reported in PAPER_RESULTS.items():
        config = WhisperGPTConfig.from_preset(name)
        model = WhisperGPTForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            {
                "preset": name,
                "model": reported["model"],
                "params": params,
                "paper_params": int(reported["params"]),
                "relative_difference": round(params / reported["params"] - 1, 4),
                "hidden_size": config.hidden_size,
                "num_hidden_layers": config.num_hidden_layers,
                "spectrogram_layers": config.spectrogram_layers if config.use_spectrogram else 0,
            }
        )
    return rows


def _presets(args: argparse.Namespace) -> None:
    rows = preset_parameter_counts()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'preset':<14} {'model':<20} {'params':>12} {'paper':>8} {'diff':>7}")
    for row in rows:
        print(
            f"{row['preset']:<14} {row['model']:<20} {row['params']:>12,} {row['paper_params'] / 1e6:>7.1f}M "
            f"{row['relative_difference']:>+7.1%}"
        )


def _progress_streamer(frames: int) -> Any:
    """A generate() streamer (transformers' `BaseStreamer`) that only advances a progress bar: its first ``put`` is
    the prompt, then one per new frame."""
    from tqdm.auto import tqdm
    from transformers.generation.streamers import BaseStreamer

    class ProgressStreamer(BaseStreamer):
        def __init__(self) -> None:
            self._bar = tqdm(total=frames, unit="frame", desc="generating")
            self._seen_prompt = False

        def put(self, value: Any) -> None:
            if self._seen_prompt:
                self._bar.update(value.shape[-1])
            self._seen_prompt = True

        def end(self) -> None:
            self._bar.close()

    return ProgressStreamer()


def _check_audio_path(path: str, option: str) -> None:
    """Refuse before generating an output name whose extension soundfile cannot write."""
    import soundfile

    extension = Path(path).suffix.lstrip(".").upper()
    if extension not in soundfile.available_formats():
        raise ValueError(f"{option} {path}: no audio format for the extension; use .wav, .flac or .ogg")


def _read_prompt(path: str) -> tuple[Any, int]:
    import soundfile

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no prompt audio file at {path}")
    try:
        return soundfile.read(path, dtype="float32")
    except soundfile.LibsndfileError as error:
        raise ValueError(f"cannot read the prompt {path} as audio: {error.error_string}") from error


def write_audio(path: str | os.PathLike, wave: Any, sampling_rate: int, *, normalize: bool = False) -> float:
    """Write ``wave`` (float samples, full scale 1.0) to an audio file; returns its peak before any scaling.

    Samples beyond +-1.0 are clipped by the file's integer format: the peak is checked first and, with
    ``normalize``, a wave that peaks above 1.0 is scaled down to peak 1.0 (quieter waves are written unchanged);
    without it a warning on stderr says that the file clips and by how much.

    Raises:
        ValueError: ``wave`` holds NaN or Inf (nothing is written).
    """
    import numpy as np
    import soundfile

    wave = np.asarray(wave)
    if not np.isfinite(wave).all():
        raise ValueError(f"the rendered audio holds NaN or Inf samples; nothing was written to {path}")
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 1.0:
        if normalize:
            wave = wave / peak
            print(f"scaled the audio by {1 / peak:.3f} (it peaked at {peak:.3f})")
        else:
            print(
                f"warning: the audio peaks at {peak:.3f}, above full scale 1.0: {path} clips those samples "
                "(--normalize scales it down instead)",
                file=sys.stderr,
            )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, sampling_rate)
    return peak


def _generate(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.greedy and (args.temperature is not None or args.top_k is not None):
        raise ValueError("--temperature and --top-k set sampling; drop them with --greedy.")
    _check_audio_path(args.out, "--out")
    audio, rate = _read_prompt(args.prompt)
    if args.prompt_seconds is not None:
        keep = round(args.prompt_seconds * rate)
        if keep < 1:
            raise ValueError(f"--prompt-seconds {args.prompt_seconds} keeps no sample of a {rate} Hz prompt")
        audio = audio[-keep:]
    model, processor = load_saved_model(args.model_dir)
    model.eval()
    frame_rate = model.config.frame_rate
    frames = round(args.seconds * frame_rate)
    if frames < 1:
        raise ValueError(f"--seconds {args.seconds} is less than one frame (1/{frame_rate:g} s)")
    batch = processor(
        audio=audio, sampling_rate=rate, mel_source=args.prompt_mel, mel_num_codebooks=model.config.num_codebooks
    )
    requested = None if args.mel_source == "auto" else args.mel_source
    mel_source = model.resolve_mel_source(requested, processor.audio_tokenizer)
    sampling = {}
    if not args.greedy:
        sampling = {
            "temperature": 1.0 if args.temperature is None else args.temperature,
            "top_k": 50 if args.top_k is None else args.top_k,
        }
    compiled = {}
    if args.compile:
        from transformers import CompileConfig

        compiled = {
            "cache_implementation": "static",
            "compile_config": CompileConfig(fullgraph=True, dynamic=False),
        }
    output = model.generate(
        **batch,
        **compiled,
        audio_tokenizer=processor.audio_tokenizer,
        feature_extractor=processor.feature_extractor,
        mel_source=mel_source,
        max_new_tokens=frames,
        do_sample=not args.greedy,
        **sampling,
        generator=torch.Generator().manual_seed(args.seed),
        streamer=_progress_streamer(frames),
        return_dict_in_generate=True,
    )
    renderer = processor.resolve_renderer(args.render, output.input_features is not None)
    (wave,) = processor.render(output.sequences, output.input_features, renderer=renderer)
    output_rate = processor.audio_tokenizer.sampling_rate
    peak = write_audio(args.out, wave, output_rate, normalize=args.normalize)
    print(f"wrote {args.out}: {len(wave) / output_rate:.2f} s ({frames} new frames)")
    if renderer == "mel":
        print("rendered from the log-mel frames with Griffin-Lim (the codec's decoder is not trained)")
    elif not processor.audio_tokenizer.decoder_trained:
        print(
            "note: this codec's decoder was not trained, so the WAV is not meant for listening; use --render mel "
            "(with --mel-source exemplar, after the codec's fit_mel_exemplars, or a model with a mel head)"
        )
    if args.plot:
        from whisper_gpt.apps.plotting import plot_continuation

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_continuation(wave, batch.input_ids.shape[-1], args.plot, processor.feature_extractor)
        print(f"wrote {args.plot}")
    return {"mel_source": mel_source, "renderer": renderer, "new_frames": frames, "peak": peak}


def _add_generate_command(commands) -> None:
    generate = commands.add_parser("generate", help="continue a WAV file with a saved model")
    generate.add_argument("model_dir", help="folder written by save_pretrained (model + processor)")
    generate.add_argument("prompt", help="audio file to continue (any rate; wav/flac/ogg/mp3)")
    generate.add_argument("--seconds", type=positive_float, default=5.0, help="seconds of audio to add (default 5)")
    generate.add_argument("--out", default="continuation.wav", help="output WAV (prompt + continuation)")
    generate.add_argument("--plot", help="also write a PNG of the prompt and continuation log-mel")
    generate.add_argument("--prompt-seconds", type=positive_float, help="use only the last N seconds of the prompt")
    generate.add_argument(
        "--normalize",
        action="store_true",
        help="scale audio that peaks above 1.0 down to peak 1.0 instead of writing it clipped (with a warning)",
    )
    generate.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    generate.add_argument("--temperature", type=positive_float, help="sampling temperature (default 1.0)")
    generate.add_argument("--top-k", type=positive_int, help="sample from the k most likely codes (default 50)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument(
        "--compile",
        action="store_true",
        help="static caches and torch.compile'd decoding steps: the same codes for a seed, faster frames after a "
        "one-off compile of about half a minute, so it pays for long continuations",
    )
    generate.add_argument(
        "--mel-source",
        choices=["auto", "codec", "exemplar", "learned"],
        default="auto",
        help="new frames' mel: decode them with the codec, the codec's exemplar frame per code, or the model's mel "
        "head (auto: see generate())",
    )
    generate.add_argument(
        "--prompt-mel",
        choices=["audio", "codec"],
        default="audio",
        help="prompt's mel: its audio or its codec resynthesis",
    )
    generate.add_argument(
        "--render",
        choices=["auto", "codec", "mel"],
        default="auto",
        help="decode the codes with the codec or render the mel frames with Griffin-Lim (auto: by the codec)",
    )
    generate.set_defaults(handler=_generate)


def build_parser() -> argparse.ArgumentParser:
    """The ``whisper-gpt`` argument parser with every command registered."""
    from whisper_gpt import __version__

    parser = argparse.ArgumentParser(prog="whisper-gpt", description="Whisper-GPT hybrid audio language model.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help=f"show the full traceback of an input or file error instead of one line (also {DEBUG_VARIABLE}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    presets = commands.add_parser("presets", help="print the parameter counts of the paper's three models")
    presets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    presets.set_defaults(handler=_presets)
    _add_generate_command(commands)
    for module in (
        "apps.corpus",
        "training.data",
        "training.loop",
        "training.evaluation",
        "training.model_card",
        "apps.demo",
        "apps.reproduce",
    ):
        importlib.import_module(f"whisper_gpt.{module}").register_cli(commands)
    for command in commands.choices.values():
        # Also accepted after the command name; SUPPRESS keeps a subcommand from resetting the top-level value.
        command.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """The ``whisper-gpt`` console script: `run`, with `USER_ERRORS` reported in one line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except USER_ERRORS as error:
        if args.traceback or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"whisper-gpt {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def run(argv: Sequence[str] | None = None) -> Any:
    """Run one ``whisper-gpt`` command; returns what its handler returns (e.g. `generate`'s choices) and lets its
    errors propagate."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    main()
