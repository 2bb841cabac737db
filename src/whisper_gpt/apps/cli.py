"""The ``whisper-gpt`` command."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence
from typing import Any


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


def _generate(args: argparse.Namespace) -> dict[str, Any]:
    import soundfile
    import torch

    from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor

    model = WhisperGPTForCausalLM.from_pretrained(args.model_dir).eval()
    processor = WhisperGPTProcessor.from_pretrained(args.model_dir)
    audio, rate = soundfile.read(args.prompt, dtype="float32")
    if args.prompt_seconds is not None:
        audio = audio[-int(args.prompt_seconds * rate) :]
    batch = processor(
        audio=audio, sampling_rate=rate, mel_source=args.prompt_mel, mel_num_codebooks=model.config.num_codebooks
    )
    frames = max(1, round(args.seconds * model.config.frame_rate))
    requested = None if args.mel_source == "auto" else args.mel_source
    mel_source = model.resolve_mel_source(requested, processor.audio_tokenizer)
    if args.greedy and (args.temperature is not None or args.top_k is not None):
        raise ValueError("--temperature and --top-k set sampling; drop them with --greedy.")
    sampling = {}
    if not args.greedy:
        sampling = {
            "temperature": 1.0 if args.temperature is None else args.temperature,
            "top_k": 50 if args.top_k is None else args.top_k,
        }
    output = model.generate(
        **batch,
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
    soundfile.write(args.out, wave, processor.audio_tokenizer.sampling_rate)
    print(f"wrote {args.out}: {len(wave) / processor.audio_tokenizer.sampling_rate:.2f} s ({frames} new frames)")
    if renderer == "mel":
        print("rendered from the log-mel frames with Griffin-Lim (the codec's decoder is not trained)")
    elif not processor.audio_tokenizer.decoder_trained:
        print(
            "note: this codec's decoder was not trained, so the WAV is not meant for listening; use --render mel "
            "(with --mel-source exemplar, after the codec's fit_mel_exemplars, or a model with a mel head)"
        )
    if args.plot:
        from whisper_gpt.apps.plotting import plot_continuation

        plot_continuation(wave, batch.input_ids.shape[-1], args.plot, processor.feature_extractor)
        print(f"wrote {args.plot}")
    return {"mel_source": mel_source, "renderer": renderer, "new_frames": frames}


def _add_generate_command(commands) -> None:
    generate = commands.add_parser("generate", help="continue a WAV file with a saved model")
    generate.add_argument("model_dir", help="folder written by save_pretrained (model + processor)")
    generate.add_argument("prompt", help="audio file to continue (any rate; wav/flac/ogg/mp3)")
    generate.add_argument("--seconds", type=float, default=5.0, help="seconds of audio to add (default 5)")
    generate.add_argument("--out", default="continuation.wav", help="output WAV (prompt + continuation)")
    generate.add_argument("--plot", help="also write a PNG of the prompt and continuation log-mel")
    generate.add_argument("--prompt-seconds", type=float, help="use only the last N seconds of the prompt")
    generate.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    generate.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    generate.add_argument("--top-k", type=int, help="sample from the k most likely codes (default 50)")
    generate.add_argument("--seed", type=int, default=0)
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


def main(argv: Sequence[str] | None = None) -> None:
    """The ``whisper-gpt`` console script."""
    run(argv)


def run(argv: Sequence[str] | None = None) -> Any:
    """Run one ``whisper-gpt`` command; returns what its handler returns (e.g. `generate`'s choices)."""
    parser = argparse.ArgumentParser(prog="whisper-gpt", description="Whisper-GPT hybrid audio language model.")
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
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    main()
