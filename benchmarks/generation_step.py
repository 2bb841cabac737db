"""Where one generated frame's time goes: hybrid K=8, batch 1, codec in the loop (benchmarks/PROFILING.md 1.4).

Times each piece of a generation step alone, as `generate()` runs it, on the paper-size hybrid (K=8) with the real
24 kHz EnCodec architecture (random weights), one torch thread:

* ``codec_step``: the streaming decoder decoding one new frame (`EncodecStreamingDecoder.step`);
* ``mel_frame``: the causal log-mel frame of the newest samples (`causal_log_mel` on 4 hops of audio);
* ``model_step``: the decoder with its KV cache over one new frame (`decoding_step`: 2 mel blocks + fusion + 4 GPT
  blocks);
* ``depth_sampling``: `_sample_frame` (8 depth-decoder steps with their cache, top-k 50 sampling with the logits
  processors generate() builds);
* ``depth_steps_only``: the 8 depth-decoder steps without the sampling;
* ``depth_steps_functional``: the same 8 steps written with plain tensor functions on the same weights (no
  `nn.Module` calls, no dropout modules, a list as cache): how much of ``depth_steps_only`` is module overhead.
  A measuring device only; the package keeps one implementation of the block.

``--compile`` also times ``torch.compile`` of the functional steps (and prints the compile time); it needs a C++
compiler and takes about a minute on 2 cores.

    nice python benchmarks/generation_step.py [--repeats 200] [--compile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from benchmarks.common import machine_info, random_weight_codec, setup_torch


def functional_depth_steps(depth, frame_state: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The depth decoder's K teacher-forced steps with plain tensor functions; logits (1, K, V)."""
    width = depth.in_proj.out_features
    heads = depth.blocks[0].attn.num_heads
    projected = depth.in_proj(frame_state)
    keys: list[list[torch.Tensor]] = [[] for _ in depth.blocks]
    values: list[list[torch.Tensor]] = [[] for _ in depth.blocks]
    logits = []
    for codebook in range(depth.num_codebooks):
        hidden = projected + depth.codebook_positions.weight[codebook]
        if codebook:
            offset = (codebook - 1) * depth.codebook_size
            hidden = hidden + depth.code_embeddings.weight[codes[:, codebook - 1] + offset]
        hidden = hidden[:, None]  # (1, 1, D)
        for index, block in enumerate(depth.blocks):
            normed = F.layer_norm(hidden, (width,), block.attn_norm.weight, block.attn_norm.bias)
            qkv = F.linear(normed, block.attn.qkv_proj.weight, block.attn.qkv_proj.bias)
            query, key, value = qkv.view(1, 1, 3, heads, -1).permute(2, 0, 3, 1, 4)
            keys[index].append(key)
            values[index].append(value)
            attended = F.scaled_dot_product_attention(query, torch.cat(keys[index], 2), torch.cat(values[index], 2))
            attended = attended.transpose(1, 2).reshape(1, 1, width)
            hidden = hidden + F.linear(attended, block.attn.out_proj.weight, block.attn.out_proj.bias)
            normed = F.layer_norm(hidden, (width,), block.mlp_norm.weight, block.mlp_norm.bias)
            inner = F.gelu(F.linear(normed, block.fc_in.weight, block.fc_in.bias))
            hidden = hidden + F.linear(inner, block.fc_out.weight, block.fc_out.bias)
        logits.append(F.layer_norm(hidden[:, 0], (width,), depth.norm.weight, depth.norm.bias) @ depth.heads[codebook])
    return torch.stack(logits, dim=1)


def milliseconds(function, repeats: int) -> float:
    for _ in range(max(5, repeats // 20)):
        function()
    started = time.process_time()
    for _ in range(repeats):
        function()
    return round(1000 * (time.process_time() - started) / repeats, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the functional steps")
    args = parser.parse_args()
    setup_torch(1)

    from transformers.cache_utils import DynamicCache
    from transformers.generation import LogitsProcessorList

    from whisper_gpt import WhisperGPTConfig, WhisperGPTFeatureExtractor, WhisperGPTForCausalLM

    tokenizer = random_weight_codec(quick=False)
    extractor = WhisperGPTFeatureExtractor()
    model = WhisperGPTForCausalLM(WhisperGPTConfig.paper_hybrid(num_codebooks=8)).eval()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1024, (1, 8, 75), generator=generator)
    depth = model.depth_decoder
    results: dict[str, float] = {}
    with torch.inference_mode():
        stream = tokenizer.streaming_decoder()
        stream.start(prompt, context_frames=32)
        results["codec_step"] = milliseconds(lambda: stream.step(prompt[..., :1]), args.repeats)
        audio = torch.randn(1, 4 * 320, generator=generator)
        results["mel_frame"] = milliseconds(lambda: extractor.causal_log_mel(audio)[:, -1:], args.repeats)

        cache = DynamicCache(config=model.config)
        mask, positions = torch.ones(1, 76, dtype=torch.long), torch.arange(76)[None]
        hidden = model.decoding_step(prompt, torch.randn(1, 75, 80), mask[:, :75], positions[:, :75], cache)
        features = torch.randn(1, 1, 80)

        def model_step() -> None:
            model.decoding_step(prompt[..., :1], features, mask, positions[:, 75:], cache)
            cache.crop(-1)

        results["model_step"] = milliseconds(model_step, args.repeats)
        frame_state = hidden[:, -1]
        # The processors generate() builds for do_sample=True, top_k=50, one list per codebook.
        config, _ = model._prepare_generation_config(None, do_sample=True, top_k=50)
        model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=prompt.device)
        processors = model._codebook_processors(
            model._get_logits_processor(
                config, input_ids_seq_length=75, logits_processor=LogitsProcessorList(), device=prompt.device
            )
        )
        results["depth_sampling"] = milliseconds(
            lambda: model._sample_frame(frame_state, prompt, processors, torch.rand(1, 8, generator=generator)),
            args.repeats,
        )
        codes = prompt[..., 0]

        def depth_steps() -> torch.Tensor:
            depth_cache, projected = DynamicCache(), depth.in_proj(frame_state)
            return torch.stack(
                [depth.step(projected, codes[:, k - 1] if k else None, k, depth_cache) for k in range(8)], dim=1
            )

        results["depth_steps_only"] = milliseconds(depth_steps, args.repeats)
        results["depth_steps_functional"] = milliseconds(
            lambda: functional_depth_steps(depth, frame_state, codes), args.repeats
        )
        difference = float((depth_steps() - functional_depth_steps(depth, frame_state, codes)).abs().max())
        report: dict = {"cpu_ms": results, "functional_vs_module_max_abs_diff": difference}
        if args.compile:
            started = time.perf_counter()
            compiled = torch.compile(functional_depth_steps, dynamic=False)
            compiled(depth, frame_state, codes)
            report["compile_seconds"] = round(time.perf_counter() - started, 1)
            results["depth_steps_functional_compiled"] = milliseconds(
                lambda: compiled(depth, frame_state, codes), args.repeats
            )
    report["frame_budget_ms_for_real_time"] = round(1000 / 75, 2)
    report["machine"] = machine_info()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
