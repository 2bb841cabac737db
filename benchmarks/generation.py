"""Generation real-time factor with the codec in the loop, eager vs static cache vs compiled.

RTF = seconds of audio generated per second, per stream: ``(new_frames / 75) / time`` for one
``model.generate(...)`` call (prompt prefill included), from the median CPU time of the interleaved
repetitions (with one torch thread: the wall time on an idle machine); ``rtf_wall`` uses the wall-clock time
this shared machine gave. 1.0 is real time. ``rtf_total`` multiplies by the batch size (aggregate throughput).

Models (paper size, random weights; speed does not depend on the weights):
* ``hybrid_k1`` / ``hybrid_k8``: `paper_hybrid(num_codebooks=1 | 8)`, ``mel_source="codec"``: every new frame is
  decoded by the EnCodec decoder and its causal mel frame computed with the feature extractor;
* ``token_k1`` / ``token_k8``: `paper_gpt_s(num_codebooks=1 | 8)`, the token-only model of equal decoder
  (no codec in the loop);
* ``hybrid_k8_learned_mel`` (when the package has it): `paper_hybrid(num_codebooks=8, use_mel_head=True)` with
  ``mel_source="learned"``: the model predicts the next mel frame itself, no codec in the loop;
* ``hybrid_k8_exemplar_mel`` (when the package has it): `paper_hybrid(num_codebooks=8)` with ``mel_source="exemplar"``:
  each new frame's mel is the codec's exemplar frame of its codebook-0 code (a table look-up, no codec in the loop).

Decoding modes, for the hybrids with the codec in the loop and with exemplar mel (K=1 and K=8, batch 1 and 8):

* ``eager``: the default ``generate()`` (dynamic KV cache);
* ``static``: ``cache_implementation="static"`` (both decoders on fixed-shape caches, still eager);
* ``compiled``: the static cache plus ``compile_config=CompileConfig(fullgraph=True, dynamic=False)`` (the decoder
  step and the picking of a frame's codes through `torch.compile`; the codec step stays eager). Its first call,
  which compiles with a cold inductor cache in a temporary folder, is timed apart as ``compile_s`` (first call
  minus a timed call); the timed calls reuse the compiled graphs. ``--quick`` compiles with the ``eager`` backend
  (Dynamo's tracing without code generation) for hybrid K=8 batch 1 only: it checks the plumbing.

``*_static_speedup`` / ``*_compiled_speedup`` = eager time / that mode's time (median of per-round CPU-time
ratios), so ``hybrid_k8_b1_compiled_speedup`` is the compiled path's gain for hybrid K=8, batch 1, codec in the
loop. ``same_codes_as_eager`` says whether one seed gave the eager codes (sampling draws its uniforms from the
generator outside the compiled step, so it should).

Codec: the real 24 kHz EnCodec architecture (`transformers.EncodecConfig()`) with random weights, 8 codebooks
(6 kbps). Prompt: 1 s of audio through the processor. Sampling: ``do_sample=True, top_k=50`` with a seeded
generator. Cases are interleaved; each is a full generate() call.

    python benchmarks/generation.py [--quick] [--threads 1] [--new-frames 75] [--new-frames-b8 20]
        [--modes static compiled]
        [--device cuda] [--dtype bfloat16]

On a GPU (``--device cuda``; run it once with each ``--dtype``) the models, the codec and the prompts live on the
device, every call is synchronised and the headline figures use the wall clock instead of CPU time. The codec
stays in float32; ``--dtype`` sets the language models' dtype.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    AUDIO_FRAME_RATE,
    add_common_arguments,
    codec_description,
    cold_inductor_cache,
    interleaved,
    log,
    machine_info,
    random_weight_codec,
    ratio,
    ratio_detail,
    setup_torch,
    summary,
    synthetic_audio,
)

PROMPT_SECONDS = 1.0
# The cases whose new mel frames come from elsewhere than the codec's decoder.
MEL_SOURCES = {
    "hybrid_k8_learned_mel": "learned",
    "hybrid_k1_exemplar_mel": "exemplar",
    "hybrid_k8_exemplar_mel": "exemplar",
}
MODES = ("eager", "static", "compiled")


def build_models(quick: bool, exemplars: bool) -> dict[str, Any]:
    import torch

    from whisper_gpt import WhisperGPTConfig, WhisperGPTForCausalLM

    configs = {
        "hybrid_k1": WhisperGPTConfig.paper_hybrid(num_codebooks=1),
        "hybrid_k8": WhisperGPTConfig.paper_hybrid(num_codebooks=8),
        "token_k1": WhisperGPTConfig.paper_gpt_s(num_codebooks=1),
        "token_k8": WhisperGPTConfig.paper_gpt_s(num_codebooks=8),
    }
    if hasattr(WhisperGPTConfig(), "use_mel_head"):
        configs["hybrid_k8_learned_mel"] = WhisperGPTConfig.paper_hybrid(num_codebooks=8, use_mel_head=True)
    models = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        models[name] = WhisperGPTForCausalLM(config).eval()
    if exemplars:  # the same weights with another mel source (compiled graphs are shared, not compiled twice)
        models["hybrid_k1_exemplar_mel"] = models["hybrid_k1"]
        models["hybrid_k8_exemplar_mel"] = models["hybrid_k8"]
    return models


def mode_cases(models: dict[str, Any], quick: bool, modes: list[str]) -> list[tuple[str, int, str]]:
    """(model, batch size, mode) of every non-eager case of ``modes``: the hybrids with codec and exemplar mel."""
    if quick:
        return [("hybrid_k8", 1, mode) for mode in modes]
    names = ("hybrid_k1", "hybrid_k8", "hybrid_k1_exemplar_mel", "hybrid_k8_exemplar_mel")
    return [(name, b, mode) for name in names if name in models for b in (1, 8) for mode in modes]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from whisper_gpt import WhisperGPTFeatureExtractor, WhisperGPTProcessor

    setup_torch(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device}: only cpu and cuda are timed here (CUDA calls are synchronised).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda needs a CUDA device; this machine has none (use --device cpu).")
    # On a GPU the host's CPU time says nothing about the device's work: time the wall clock (synchronised).
    clock = "cpu_median_s" if device.type == "cpu" else "median_s"
    new_frames = {1: args.new_frames or (3 if args.quick else 75), 8: args.new_frames_b8 or (2 if args.quick else 20)}
    repeats = args.repeats or (1 if args.quick else 2)
    tokenizer = random_weight_codec(args.quick)
    processor = WhisperGPTProcessor(WhisperGPTFeatureExtractor(), tokenizer)
    try:
        from whisper_gpt.training.codec_fitting import fit_mel_exemplars
    except ImportError:  # a revision from before codec fitting left the tokenizer
        fit_mel_exemplars = getattr(type(tokenizer), "fit_mel_exemplars", None)
    exemplars = fit_mel_exemplars is not None
    if exemplars:  # the look-up costs the same whatever the frames; 10 s of audio fills the table
        fit_mel_exemplars(tokenizer, [synthetic_audio(10.0, seed=99)], processor.feature_extractor)
    models = {name: model.to(device=device, dtype=dtype) for name, model in build_models(args.quick, exemplars).items()}
    tokenizer.to(device)
    generate_parameters = inspect.signature(next(iter(models.values())).generate).parameters
    has_mel_source = "mel_source" in generate_parameters

    prompts = {}
    for batch_size in (1, 8):
        clips = [synthetic_audio(PROMPT_SECONDS, seed=seed) for seed in range(batch_size)]
        prompt = processor(audio=clips, sampling_rate=24_000)
        prompts[batch_size] = {
            key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
            for key, value in prompt.items()
        }

    from transformers import CompileConfig

    compile_config = CompileConfig(fullgraph=True, dynamic=False, **({"backend": "eager"} if args.quick else {}))
    codes: dict[str, Any] = {}

    def case(name: str, batch_size: int, mode: str = "eager"):
        model = models[name]
        prompt = dict(prompts[batch_size])
        kwargs: dict[str, Any] = {"max_new_tokens": new_frames[batch_size], "do_sample": True, "top_k": 50}
        if mode != "eager":
            kwargs["cache_implementation"] = "static"
        if mode == "compiled":
            kwargs["compile_config"] = compile_config
        label = f"{name}_b{batch_size}" + ("" if mode == "eager" else f"_{mode}")
        if name.startswith("hybrid"):
            kwargs["audio_tokenizer"] = tokenizer
            if has_mel_source:
                kwargs["mel_source"] = MEL_SOURCES.get(name, "codec")
        else:
            prompt.pop("input_features", None)

        def generate() -> None:
            generator = torch.Generator(device=device).manual_seed(0)
            out = model.generate(**prompt, generator=generator, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            assert out.shape[-1] >= new_frames[batch_size]
            codes[label] = out.cpu()

        return label, generate

    cases = {}
    for batch_size in (1, 8):
        for name in models:
            if name.endswith("learned_mel") and not has_mel_source:
                continue
            if name == "hybrid_k1_exemplar_mel" and not args.modes:
                continue
            label, generate = case(name, batch_size)
            cases[label] = generate
    first_call: dict[str, dict[str, float]] = {}
    with cold_inductor_cache():  # the compile time is what the first generate() on a machine pays
        for name, batch_size, mode in mode_cases(models, args.quick, args.modes):
            label, generate = case(name, batch_size, mode)
            cases[label] = generate
            if mode == "compiled":
                log(f"first call of {label} (compiles)")
                cpu, wall = time.process_time(), time.perf_counter()
                generate()
                first_call[label] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
        times = interleaved(cases, repeats=repeats, warmup=0, log=log)

    result: dict[str, Any] = {
        "setup": {
            "codec": codec_description(args.quick),
            "prompt_seconds": PROMPT_SECONDS,
            "new_frames": {f"b{b}": n for b, n in new_frames.items()},
            "new_seconds": {f"b{b}": round(n / AUDIO_FRAME_RATE, 4) for b, n in new_frames.items()},
            "sampling": "do_sample=True, top_k=50, seeded torch.Generator",
            "rtf": "seconds of audio generated per CPU second (1 thread), per stream, prompt prefill included",
            "mel_source": "codec for hybrid_k1/hybrid_k8" if has_mel_source else "codec (only option)",
            "interleaved_repeats": repeats,
            "warmup": "none: one generate() call is many steps long",
            "modes": {
                "eager": "generate() defaults (dynamic cache)",
                "static": 'cache_implementation="static"',
                "compiled": 'cache_implementation="static", '
                f"compile_config=CompileConfig(fullgraph=True, dynamic=False, backend={compile_config.backend!r})",
                "compile_s": "first compiled call minus the median timed one, cold inductor cache",
                "run": ["eager", *args.modes],
            },
            "device": str(device),
            "dtype": args.dtype,
            "clock": "process CPU time" if clock == "cpu_median_s" else "wall clock, CUDA synchronised per call",
            "quick": bool(args.quick),
        },
        "cases": {},
    }
    for name, seconds in times.items():
        eager_name = name.removesuffix("_static").removesuffix("_compiled")
        batch_size = int(eager_name.rsplit("_b", 1)[1])
        entry = summary(seconds)
        generated = new_frames[batch_size] / AUDIO_FRAME_RATE
        entry["batch_size"] = batch_size
        entry["ms_per_frame"] = round(1000 * entry[clock] / new_frames[batch_size], 2)
        entry["rtf"] = round(generated / entry[clock], 4)
        entry["rtf_wall"] = round(generated / entry["median_s"], 4)
        entry["rtf_total"] = round(batch_size * generated / entry[clock], 4)
        entry["frames_per_s"] = round(batch_size * new_frames[batch_size] / entry[clock], 2)
        if eager_name != name:
            entry["speedup_vs_eager"] = ratio_detail(times[eager_name], seconds)
            same_shape = codes[name].shape == codes[eager_name].shape
            entry["same_codes_as_eager"] = same_shape and bool((codes[name] == codes[eager_name]).all())
        if name in first_call:
            entry["compile_s"] = round(first_call[name]["wall_s"] - entry["median_s"], 2)
            entry["first_call_s"] = round(first_call[name]["wall_s"], 2)
        result["cases"][name] = entry
    for name, entry in result["cases"].items():
        result[f"{name}_rtf"] = entry["rtf"]
    for k in (1, 8):
        for b in (1, 8):
            hybrid, token = times[f"hybrid_k{k}_b{b}"], times[f"token_k{k}_b{b}"]
            result[f"hybrid_vs_token_k{k}_b{b}_time_ratio"] = ratio(hybrid, token)
    for name, entry in result["cases"].items():
        if "speedup_vs_eager" in entry:
            result[f"{name}_speedup"] = entry["speedup_vs_eager"]["cpu" if clock == "cpu_median_s" else "wall"]
    result["real_time_target_hybrid_k8_b1"] = {
        "target_rtf": 1.0,
        "measured_rtf": result["hybrid_k8_b1_rtf"],
        "met": result["hybrid_k8_b1_rtf"] >= 1.0,
    }
    if "hybrid_k8_b1_compiled" in result["cases"]:
        compiled_rtf = result["hybrid_k8_b1_compiled_rtf"]
        result["compiled_targets_hybrid_k8_b1"] = {
            "speedup_needed": 1.5,
            "speedup": result["hybrid_k8_b1_compiled_speedup"],
            "rtf_needed": 1.0,
            "rtf": compiled_rtf,
            "met": result["hybrid_k8_b1_compiled_speedup"] >= 1.5 and compiled_rtf >= 1.0,
        }
    result["machine"] = machine_info()
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--new-frames", type=int, default=None, help="frames generated at batch 1 (default 75)")
    parser.add_argument("--new-frames-b8", type=int, default=None, help="frames generated at batch 8 (default 20)")
    parser.add_argument(
        "--modes",
        nargs="*",
        choices=MODES[1:],
        default=list(MODES[1:]),
        help="modes timed beside eager (default: static compiled; none: eager only)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: models, codec and prompts there")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="the models' dtype"
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import run_script

    return run_script(parser, run, argv)


if __name__ == "__main__":
    main()
