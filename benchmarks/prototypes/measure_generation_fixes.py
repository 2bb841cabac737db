"""PROTOTYPE measurement: codec-in-the-loop generation before / after the changes proposed in PROFILING.md.

Monkeypatches private methods of the package as they were at commit 7a51ae9 (generate() with
``_next_mel(mel_source, frame_state, codes, new_codes, audio_tokenizer, feature_extractor, window)`` and
``_sample_frame``); it is a measuring device for proposed src changes, not part of the package, and breaks when
those private methods change. Levels are cumulative:

  0  as in src
  1  `_silence_codes()` cached (decode() re-encodes 14 frames of silence on every call)
  2  stateful streaming decoder (streaming_decoder.py) under parametrize.cached(): one new frame decoded per
     step instead of 32 + 14 frames; the stream starts from the last mel_window_frames (32) prompt frames
  3  depth transformer sampled with a KV cache, only the current codebook's head evaluated, logits processors
     called directly (LogitsProcessorList calls inspect.signature on every call)

    nice python benchmarks/prototypes/measure_generation_fixes.py [--batch-size 1] [--new-frames 75] [--repeats 3]

Prints JSON: CPU ms per generated frame and RTF per level and K, speedups over level 0 (median of per-round
ratios, interleaved), and how far the mel frames generate() fed the model are from the mel of decoding the
final codes in one piece (``mel_vs_full_decode``; the streaming decoder should match it as well as the window).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch.nn.utils import parametrize
from transformers.cache_utils import DynamicCache

import whisper_gpt.modeling_whisper_gpt as modeling
import whisper_gpt.tokenization_whisper_gpt as tokenization
from benchmarks.common import interleaved, machine_info, random_weight_codec, setup_torch, synthetic_audio
from benchmarks.prototypes.streaming_decoder import StreamingEncodecDecoder

ORIGINAL = {
    "silence": tokenization.WhisperGPTAudioTokenizer._silence_codes,
    "next_mel": modeling.WhisperGPTForCausalLM._next_mel,
    "generate": modeling.WhisperGPTForCausalLM.generate,
    "sample_frame": modeling.WhisperGPTForCausalLM._sample_frame,
}


def cached_silence(self):
    cache = self.__dict__.setdefault("_silence_cache", {})
    key = (self.bandwidth, str(self.device))
    if key not in cache:  # the real change must also clear this in calibrate()
        cache[key] = ORIGINAL["silence"](self)
    return cache[key]


def streaming_next_mel(self, mel_source, frame_state, codes, new_codes, audio_tokenizer, feature_extractor, window):
    if mel_source != "codec":
        return ORIGINAL["next_mel"](
            self, mel_source, frame_state, codes, new_codes, audio_tokenizer, feature_extractor, window
        )
    needed = math.ceil(feature_extractor.n_fft / feature_extractor.hop_length) * feature_extractor.hop_length
    stream = self.__dict__.get("_stream")
    if stream is None:  # first step: decode the prompt once, keep the decoder state
        stream = StreamingEncodecDecoder(audio_tokenizer)
        stream.audio = stream.prime(codes, window=window)[:, -needed:]
        self.__dict__["_stream"] = stream
    stream.audio = torch.cat([stream.audio, stream.step(new_codes[:, :, None])], dim=-1)[:, -needed:]
    return feature_extractor.causal_log_mel(stream.audio)[:, -1:].to(self.dtype)


def streaming_generate(self, *args, **kwargs):
    self.__dict__.pop("_stream", None)
    try:
        with parametrize.cached():
            return ORIGINAL["generate"](self, *args, **kwargs)
    finally:
        self.__dict__.pop("_stream", None)


def incremental_sample_frame(self, frame_state, history, processors, do_sample, generator):
    if self.config.num_codebooks == 1:
        return ORIGINAL["sample_frame"](self, frame_state, history, processors, do_sample, generator)
    depth = self.depth_decoder
    for index, block in enumerate(depth.blocks):
        block.attn.layer_idx = index  # the real change gives the depth blocks cache slots
    cache = DynamicCache()
    base = depth.in_proj(frame_state)
    picked = []
    for codebook in range(self.config.num_codebooks):
        inputs = base + depth.codebook_positions.weight[codebook]
        if codebook:
            inputs = inputs + depth.code_embeddings(picked[-1][:, 0] + (codebook - 1) * depth.codebook_size)
        hidden = inputs[:, None]
        for block in depth.blocks:
            hidden, _ = block(hidden, None, cache=cache)
        scores = (depth.norm(hidden[:, 0]) @ depth.heads[codebook]).float()
        for processor in processors:
            scores = processor(history[:, codebook], scores)
        if do_sample:
            code = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)
        else:
            code = scores.argmax(dim=-1, keepdim=True)
        picked.append(code)
    return torch.cat(picked, dim=1)


def apply(level: int) -> None:
    tokenization.WhisperGPTAudioTokenizer._silence_codes = cached_silence if level >= 1 else ORIGINAL["silence"]
    modeling.WhisperGPTForCausalLM._next_mel = streaming_next_mel if level >= 2 else ORIGINAL["next_mel"]
    modeling.WhisperGPTForCausalLM.generate = streaming_generate if level >= 2 else ORIGINAL["generate"]
    modeling.WhisperGPTForCausalLM._sample_frame = incremental_sample_frame if level >= 3 else ORIGINAL["sample_frame"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-frames", type=int, default=75)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup_torch(args.threads)

    from whisper_gpt import WhisperGPTConfig, WhisperGPTFeatureExtractor, WhisperGPTForCausalLM, WhisperGPTProcessor

    tokenizer = random_weight_codec(quick=False)
    extractor = WhisperGPTFeatureExtractor()
    processor = WhisperGPTProcessor(extractor, tokenizer)
    clips = [synthetic_audio(1.0, seed=seed) for seed in range(args.batch_size)]
    prompt = processor(audio=clips, sampling_rate=24_000)
    models = {k: WhisperGPTForCausalLM(WhisperGPTConfig.paper_hybrid(num_codebooks=k)).eval() for k in (1, 8)}

    result: dict = {"batch_size": args.batch_size, "new_frames": args.new_frames, "mel_vs_full_decode": {}}
    for level in (0, 2):
        apply(level)
        out = models[8].generate(
            **prompt, audio_tokenizer=tokenizer, max_new_tokens=20, mel_source="codec", return_dict_in_generate=True
        )
        reference = extractor.causal_log_mel(tokenizer.decode(out.sequences))
        start = prompt["input_ids"].shape[-1]
        difference = (reference[:, start:] - out.input_features[:, start:]).abs()
        result["mel_vs_full_decode"][f"level_{level}"] = {
            "max_abs": float(difference.max()),
            "mean_abs": float(difference.mean()),
        }

    def case(level: int, k: int):
        def run() -> None:
            apply(level)
            generator = torch.Generator().manual_seed(0)
            models[k].generate(
                **prompt,
                audio_tokenizer=tokenizer,
                max_new_tokens=args.new_frames,
                do_sample=True,
                top_k=50,
                mel_source="codec",
                generator=generator,
            )

        return run

    cases = {f"level{level}_k{k}": case(level, k) for level in args.levels for k in (1, 8)}
    times = interleaved(cases, repeats=args.repeats, warmup=0)
    apply(0)
    result["cases"] = {}
    for name, timing in times.items():
        k = name.split("_k")[1]
        baseline = times[f"level{args.levels[0]}_k{k}"].cpu
        cpu = statistics.median(timing.cpu)
        speedup = statistics.median(b / a for a, b in zip(timing.cpu, baseline, strict=True))
        result["cases"][name] = {
            "cpu_ms_per_frame": round(1000 * cpu / args.new_frames, 2),
            "rtf_per_stream": round(args.new_frames / 75 / cpu, 4),
            "speedup_vs_first_level": round(speedup, 2),
            "wall_ms_per_frame": round(1000 * statistics.median(timing.wall) / args.new_frames, 2),
        }
    result["machine"] = machine_info()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
