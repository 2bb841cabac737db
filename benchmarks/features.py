"""Real-time factors of the front end: feature extractor, audio tokenizer encode / decode, whole processor.

RTF = seconds of audio processed per second (higher is faster; 200 means 200x real time), from the median CPU
time of the interleaved repetitions (with one torch thread: the wall time on an idle machine); ``rtf_wall`` is
the same from the wall-clock time this shared machine gave.
Audio: 60 s of 24 kHz audio, processed as batch 1 (one 60 s clip) and batch 8 (eight 7.5 s clips, the same
60 s of audio in total), so the two batch sizes do the same amount of work and their RTFs compare directly.

* ``extractor``: `WhisperGPTFeatureExtractor()` (80 mels, n_fft 1024, hop 320) called on the clips;
* ``encode``: `WhisperGPTAudioTokenizer.encode_clips` (K=8 codes at 6 kbps);
* ``decode``: `WhisperGPTAudioTokenizer.decode` of those 8 codebooks back to audio;
* ``processor``: `WhisperGPTProcessor(audio=..., sampling_rate=24000)` (validation, encode, features);
* ``processor_codec_mel`` (batch 1 only): the same with ``mel_source="codec"`` (mel of decode(encode(audio))).

The codec is the real 24 kHz EnCodec architecture (`transformers.EncodecConfig()`) with random weights (no Hub
here): timings are those of the published model's size, outputs are meaningless. The extractor is timed with
more repetitions than the codec because it is ~1000x faster.

    python benchmarks/features.py [--quick] [--threads 1] [--seconds 60]
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    add_common_arguments,
    codec_description,
    interleaved,
    log,
    machine_info,
    random_weight_codec,
    setup_torch,
    summary,
    synthetic_audio,
)

SAMPLING_RATE = 24_000
BATCH_SIZES = (1, 8)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from whisper_gpt import WhisperGPTFeatureExtractor, WhisperGPTProcessor

    setup_torch(args.threads)
    total_seconds = args.seconds or (2.0 if args.quick else 60.0)
    extractor_repeats = args.repeats or (2 if args.quick else 7)
    codec_repeats = args.repeats or (1 if args.quick else 2)
    tokenizer = random_weight_codec(args.quick)
    extractor = WhisperGPTFeatureExtractor()
    processor = WhisperGPTProcessor(extractor, tokenizer)
    has_codec_mel = "mel_source" in inspect.signature(processor.__call__).parameters
    audio = synthetic_audio(total_seconds, SAMPLING_RATE)

    batches = {}
    for batch_size in BATCH_SIZES:
        clip = len(audio) // batch_size
        batches[batch_size] = [audio[i * clip : (i + 1) * clip] for i in range(batch_size)]
    codes = {b: tokenizer.encode_clips(clips) for b, clips in batches.items()}  # list of (K, T_i)
    stacked = {b: torch.stack(c) for b, c in codes.items()}  # equal lengths: (B, K, T)

    fast_cases, slow_cases = {}, {}
    for b, clips in batches.items():
        fast_cases[f"extractor_b{b}"] = lambda clips=clips: extractor(clips, sampling_rate=SAMPLING_RATE)
        slow_cases[f"encode_b{b}"] = lambda clips=clips: tokenizer.encode_clips(clips)
        slow_cases[f"decode_b{b}"] = lambda b=b: tokenizer.decode(stacked[b])
        slow_cases[f"processor_b{b}"] = lambda clips=clips: processor(audio=clips, sampling_rate=SAMPLING_RATE)
    if has_codec_mel:
        slow_cases["processor_codec_mel_b1"] = lambda: processor(
            audio=batches[1], sampling_rate=SAMPLING_RATE, mel_source="codec"
        )
    fast_times = interleaved(fast_cases, repeats=extractor_repeats, warmup=1, log=log)
    slow_times = interleaved(slow_cases, repeats=codec_repeats, warmup=0 if not args.quick else 1, log=log)
    times = {**fast_times, **slow_times}

    result: dict[str, Any] = {
        "setup": {
            "audio_seconds": total_seconds,
            "batches": "batch 1 = one clip of all the audio; batch 8 = eight clips splitting the same audio",
            "sampling_rate": SAMPLING_RATE,
            "codec": codec_description(args.quick),
            "num_codebooks": int(stacked[1].shape[1]),
            "extractor_repeats": extractor_repeats,
            "codec_repeats": codec_repeats,
            "codec_warmup": "none (full run): each codec call is seconds long" if not args.quick else "1",
            "quick": bool(args.quick),
        },
        "cases": {},
    }
    for name, seconds in times.items():
        entry = summary(seconds)
        entry["rtf"] = round(total_seconds / entry["cpu_median_s"], 2)
        entry["rtf_wall"] = round(total_seconds / entry["median_s"], 2)
        result["cases"][name] = entry
    cases = result["cases"]
    result["extractor_rtf"] = cases["extractor_b1"]["rtf"]
    result["extractor_rtf_b8"] = cases["extractor_b8"]["rtf"]
    result["processor_rtf"] = cases["processor_b1"]["rtf"]
    result["processor_rtf_b8"] = cases["processor_b8"]["rtf"]
    result["encode_rtf"] = cases["encode_b1"]["rtf"]
    result["encode_rtf_b8"] = cases["encode_b8"]["rtf"]
    result["decode_rtf"] = cases["decode_b1"]["rtf"]
    result["decode_rtf_b8"] = cases["decode_b8"]["rtf"]
    if has_codec_mel:
        result["processor_codec_mel_rtf"] = cases["processor_codec_mel_b1"]["rtf"]
    result["extractor_share_of_processor"] = round(
        cases["extractor_b1"]["cpu_median_s"] / cases["processor_b1"]["cpu_median_s"], 4
    )
    result["machine"] = machine_info()
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--seconds", type=float, default=None, help="total audio per case (default 60)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import run_script

    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
