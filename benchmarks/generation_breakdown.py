"""Where a generated frame's time goes inside generate(), eager vs static cache vs compiled.

Runs the paper hybrid (K=8, batch 1, codec in the loop, the real 24 kHz EnCodec architecture with random weights,
1 s prompt, ``do_sample=True, top_k=50``) through `model.generate` in each mode and times, with process CPU time
on one torch thread, the pieces generate() calls while it runs:

* ``codec_step``: the streaming codec decoding each new frame (`EncodecStreamingDecoder.step`);
* ``mel_frame``: the causal log-mel frame of the newest samples (`causal_log_mel`);
* ``decoder_step``: the decoder over its cache for one new frame, mask building included (`DecodingSteps.frame`);
* ``code_picking``: the frame's K codes: depth steps, logits processors, draws (`DecodingSteps.sample`);
* ``prompt``: once per call: the codec stream's start over the prompt and the decoder's prefill;
* ``loop``: the rest of the call (the frame loop's own work: appending codes and mel frames, stopping criteria,
  the uniforms' draw, generate()'s set-up and output).

Each piece is the median over ``--repeats`` interleaved calls, divided by the number of new frames (``prompt``
too, so the pieces add up to the call's time per frame). The compiled mode's first call (compiling) is not timed.

    python benchmarks/generation_breakdown.py [--quick] [--repeats 3] [--new-frames 75]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    add_common_arguments,
    codec_description,
    log,
    machine_info,
    random_weight_codec,
    setup_torch,
    synthetic_audio,
)

MODES = ("eager", "static", "compiled")
PIECES = ("codec_step", "mel_frame", "decoder_step", "code_picking", "prompt", "loop")


def _timed_pieces(totals: dict[str, float]) -> ExitStack:
    """Patches that add each timed method's CPU time to ``totals`` under its piece's name."""
    from whisper_gpt import WhisperGPTFeatureExtractor
    from whisper_gpt.generation_whisper_gpt import DecodingSteps, _Window
    from whisper_gpt.tokenization_whisper_gpt import EncodecStreamingDecoder

    targets = {
        "codec_step": (EncodecStreamingDecoder, "step"),
        "mel_frame": (WhisperGPTFeatureExtractor, "causal_log_mel"),
        "decoder_step": (DecodingSteps, "frame"),
        "code_picking": (DecodingSteps, "sample"),
        "prompt": [(EncodecStreamingDecoder, "start"), (_Window, "prefill")],
    }
    stack = ExitStack()
    for piece, target in targets.items():
        for owner, name in target if isinstance(target, list) else [target]:
            original = getattr(owner, name)

            def timed(*args: Any, _original: Any = original, _piece: str = piece, **kwargs: Any) -> Any:
                started = time.process_time()
                try:
                    return _original(*args, **kwargs)
                finally:
                    totals[_piece] += time.process_time() - started

            stack.enter_context(mock.patch.object(owner, name, timed))
    return stack


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import CompileConfig

    from whisper_gpt import WhisperGPTConfig, WhisperGPTFeatureExtractor, WhisperGPTForCausalLM, WhisperGPTProcessor

    setup_torch(args.threads)
    new_frames = args.new_frames or (3 if args.quick else 75)
    repeats = args.repeats or (1 if args.quick else 3)
    tokenizer = random_weight_codec(args.quick)
    processor = WhisperGPTProcessor(WhisperGPTFeatureExtractor(), tokenizer)
    torch.manual_seed(0)
    model = WhisperGPTForCausalLM(WhisperGPTConfig.paper_hybrid(num_codebooks=8)).eval()
    prompt = processor(audio=[synthetic_audio(1.0, seed=0)], sampling_rate=24_000)
    backend = "eager" if args.quick else "inductor"
    settings = {
        "eager": {},
        "static": {"cache_implementation": "static"},
        "compiled": {
            "cache_implementation": "static",
            "compile_config": CompileConfig(fullgraph=True, dynamic=False, backend=backend),
        },
    }

    def generate(mode: str) -> torch.Tensor:
        return model.generate(
            **prompt,
            audio_tokenizer=tokenizer,
            mel_source="codec",
            max_new_tokens=new_frames,
            do_sample=True,
            top_k=50,
            generator=torch.Generator().manual_seed(0),
            **settings[mode],
        )

    log("first compiled call (compiles; not timed)")
    generate("compiled")
    samples: dict[str, dict[str, list[float]]] = {mode: defaultdict(list) for mode in MODES}
    codes: dict[str, torch.Tensor] = {}
    for repeat in range(repeats):
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
            totals: dict[str, float] = defaultdict(float)
            with _timed_pieces(totals):
                started = time.process_time()
                codes[mode] = generate(mode)
                call = time.process_time() - started
            totals["loop"] = call - sum(totals.values())
            totals["total"] = call
            for piece, seconds in totals.items():
                samples[mode][piece].append(seconds)
            log(f"repeat {repeat + 1}/{repeats} {mode}: {1000 * call / new_frames:.2f} ms per frame")

    result: dict[str, Any] = {
        "setup": {
            "model": "paper_hybrid(num_codebooks=8), batch 1, mel_source='codec'",
            "codec": codec_description(args.quick),
            "new_frames": new_frames,
            "repeats": repeats,
            "compile_backend": backend,
            "clock": "process CPU time, one torch thread; pieces are medians over the repeats, per new frame",
        },
        "ms_per_frame": {},
    }
    for mode in MODES:
        result["ms_per_frame"][mode] = {
            piece: round(1000 * statistics.median(samples[mode][piece]) / new_frames, 3) for piece in (*PIECES, "total")
        }
        result["ms_per_frame"][mode]["same_codes_as_eager"] = bool(torch.equal(codes[mode], codes["eager"]))
    eager, compiled = result["ms_per_frame"]["eager"], result["ms_per_frame"]["compiled"]
    result["compiled_speedup"] = round(eager["total"] / compiled["total"], 4)
    result["frame_budget_ms_for_real_time"] = round(1000 / 75, 2)
    result["machine"] = machine_info()
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--new-frames", type=int, default=None, help="frames generated per call (default 75)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import run_script

    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
