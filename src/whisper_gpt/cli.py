"""The ``whisper-gpt`` command."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

PRESETS = {
    "paper_gpt_s": ("token-only GPT-S", 3.7e6),
    "paper_hybrid": ("hybrid Whisper-GPT", 4.0e6),
    "paper_gpt_l": ("token-only GPT-L", 40e6),
}


def preset_parameter_counts() -> list[dict]:
    """Build each paper preset and count its parameters."""
    from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM

    rows = []
    for name, (description, paper_params) in PRESETS.items():
        config = getattr(WhisperGPTConfig, name)()
        model = WhisperGPTForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            {
                "preset": name,
                "model": description,
                "params": params,
                "paper_params": int(paper_params),
                "relative_difference": round(params / paper_params - 1, 4),
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="whisper-gpt", description="Whisper-GPT hybrid audio language model.")
    commands = parser.add_subparsers(dest="command", required=True)
    presets = commands.add_parser("presets", help="print the parameter counts of the paper's three models")
    presets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    presets.set_defaults(handler=_presets)
    from whisper_gpt.corpus import register_cli as register_corpus

    register_corpus(commands)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
