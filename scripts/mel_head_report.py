"""How good are the learned mel-from-codes head and the codec's mel exemplars, and how much faster is generation?

Trains the paper's hybrid with ``use_mel_head=True`` on a built corpus (a short run), then on the held-out
files measures the mel L1 to the true causal log-mel frame t+1 of:
- the learned frame (the mel head on the true codes of the frames its window covers),
- the codec's exemplar frame of code t+1 (`whisper_gpt.training.codec_fitting.fit_mel_exemplars`: a real frame
  per code),
- the frame computed from codec-decoded audio (codebook 0 only, and all the codebooks the codec emits),
- copying frame t (a baseline generation cannot use: it has no true frame t),
- holding the frame at 0.5 s for the rest of the clip (what a head that only copies would give in generation),
  beside the learned frames on those same frames,
and the correlation of the learned frames' loudness (mean log-mel) with the true frames'. The head reads only codes,
so its frames here are the frames it gives in generation for the same codes. ``heldout_periodicity`` renders the
true, learned and exemplar frames of the held-out files with Griffin-Lim and gives the median periodicity of each
(`whisper_gpt.apps.demo.describe_continuation`: about 1 for voiced speech and held notes, 0.15 for white noise):
how much pitch survives each way of getting the frames. ``continuations`` continues 3 s of a held-out file (the
demo's prompt) with each mel source, same seeds, renders with Griffin-Lim and describes the results as the demo
does (mean over 3 seeds). Finally it times generation (seconds of audio per wall-clock second)
with ``mel_source="learned"`` and ``"exemplar"`` against ``mel_source="codec"`` for the same model.
Prints JSON; ``--out`` writes it.

    whisper-gpt corpus speech runs/corpus/speech --minutes 3
    python scripts/mel_head_report.py --corpus runs/corpus/speech --out docs/mel_head_speech.json

``--model DIR`` skips training and measures a model already trained with the head on that corpus;
``--processor DIR`` trains with that processor instead of building a codec (e.g. ``runs/demo/processor``, the codec
that ``whisper-gpt demo`` builds).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.apps.corpus import audio_files
from whisper_gpt.apps.demo import _prompt_file, describe_continuation, frame_periodicity
from whisper_gpt.feature_extraction_whisper_gpt import normalize_audio_batch
from whisper_gpt.training import TrainingConfig, train
from whisper_gpt.training.codec_fitting import fit_mel_exemplars
from whisper_gpt.training.data import build_processor, load_audio


def heldout_clips(corpus: Path, seconds: float) -> list[np.ndarray]:
    clips, total = [], 0.0
    for path in audio_files(corpus, split="validation"):
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        clips.append(audio.mean(axis=1))
        total += len(clips[-1]) / rate
        if total >= seconds:
            break
    return clips


def mel_errors(
    model: WhisperGPTForCausalLM, processor: WhisperGPTProcessor, clips: list[np.ndarray]
) -> tuple[dict, dict]:
    """Mean L1 (over frames and bins) to the true mel frame t+1 for each way of getting it, and the periodicity of
    the true, learned and exemplar frames rendered with Griffin-Lim."""
    sums = {
        "learned": 0.0,
        "exemplar": 0.0,
        "codec_codebook0": 0.0,
        "codec_all_codebooks": 0.0,
        "copy_previous_frame": 0.0,
    }
    periodicity: dict[str, list[np.ndarray]] = {"true": [], "learned": [], "exemplar": []}
    held, learned_late, learned_loudness, true_loudness = [], [], [], []
    frames = 0
    extractor = processor.feature_extractor
    hold_from = round(0.5 * model.config.frame_rate)
    with torch.inference_mode():
        for clip in clips:
            # At most the model's context (750 frames = 10 s) per clip.
            clip = clip[: model.config.max_position_embeddings * model.config.hop_length]
            batch = processor(audio=clip, sampling_rate=24000)
            true = batch.input_features[0]  # (T, M)
            predicted = model(**batch).predicted_mel[0]
            exemplar = processor.audio_tokenizer.mel_exemplar_frames(batch.input_ids, extractor)[0]
            sums["learned"] += float((predicted[:-1] - true[1:]).abs().mean(-1).sum())
            sums["exemplar"] += float((exemplar[1:] - true[1:]).abs().mean(-1).sum())
            for name, mel in (("true", true[1:]), ("learned", predicted[:-1]), ("exemplar", exemplar[1:])):
                periodicity[name].append(frame_periodicity(extractor.mel_to_audio(mel[None])[0].numpy(), 24000))
            for name, codebooks in (("codec_codebook0", 1), ("codec_all_codebooks", None)):
                audio = processor.audio_tokenizer.decode(batch.input_ids[:, :codebooks])[:, : len(clip)]
                decoded = extractor.causal_log_mel(audio)[0]
                sums[name] += float((decoded[1:] - true[1:]).abs().mean(-1).sum())
            sums["copy_previous_frame"] += float((true[:-1] - true[1:]).abs().mean(-1).sum())
            if true.shape[0] > hold_from:  # the hold baseline and the learned frames on the same frames
                held.append((true[hold_from:] - true[hold_from - 1]).abs().mean(-1))
                learned_late.append((predicted[hold_from - 1 : -1] - true[hold_from:]).abs().mean(-1))
            learned_loudness.append(predicted[:-1].mean(-1))
            true_loudness.append(true[1:].mean(-1))
            frames += true.shape[0] - 1
    loudness = torch.stack([torch.cat(learned_loudness), torch.cat(true_loudness)])
    return {name: value / frames for name, value in sums.items()} | {
        "frames": frames,
        "hold_frame_at_half_second": float(torch.cat(held).mean()),
        "learned_after_half_second": float(torch.cat(learned_late).mean()),
        "learned_loudness_correlation": float(torch.corrcoef(loudness)[0, 1]),
    }, {name: float(np.median(np.concatenate(values))) for name, values in periodicity.items()}


def sample(model, processor, prompt, mel_source: str, new_frames: int, seed: int, **kwargs: Any) -> Any:
    """The report's one way to generate: top-k 50 sampling from a seeded generator, new mel frames from
    ``mel_source``."""
    return model.generate(
        **prompt,
        audio_tokenizer=processor.audio_tokenizer,
        feature_extractor=processor.feature_extractor,
        mel_source=mel_source,
        max_new_tokens=new_frames,
        do_sample=True,
        top_k=50,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def continuations(model, processor, corpus: Path, new_frames: int, seeds: int = 3) -> dict:
    """Continue 3 s of a held-out file (the demo's prompt choice) with learned and with exemplar mel frames, same
    codes sampler and seeds, render with Griffin-Lim, and describe each (`describe_continuation`, mean over seeds)."""
    held_out = audio_files(corpus, split="validation")
    prompt_file = _prompt_file(held_out, 0)
    audio, rate = soundfile.read(prompt_file, dtype="float32", always_2d=True)
    prompt = processor(audio=audio.mean(axis=1)[-3 * rate :], sampling_rate=rate)
    others = [path for path in held_out if Path(path) != Path(prompt_file)]
    keys = ("periodicity", "energy_modulation_db", "spectral_flatness", "mel_l1_db")
    described: dict[str, dict[str, list[float]]] = {}
    for source in ("learned", "exemplar"):
        for seed in range(seeds):
            output = sample(model, processor, prompt, source, new_frames, seed, return_dict_in_generate=True)
            (wave,) = processor.mel_to_audio(output.input_features)
            numbers = describe_continuation(wave, 24000, new_frames, others, processor.feature_extractor, seed=seed)
            for key in keys:
                for name, value in numbers[key].items():
                    described.setdefault(f"{source}.{key}", {}).setdefault(name, []).append(value)
    return {"prompt": str(prompt_file), "seeds": seeds} | {
        key: {name: None if None in values else float(np.mean(values)) for name, values in by_signal.items()}
        for key, by_signal in described.items()
    }


def generation_speed(model, processor, clip: np.ndarray, new_frames: int, repeats: int) -> dict:
    """Seconds of generated audio per wall-clock second, interleaving the three mel sources."""
    prompt = processor(audio=clip[: 2 * 24000], sampling_rate=24000)
    times: dict[str, list[float]] = {"learned": [], "exemplar": [], "codec": []}
    for _ in range(repeats):
        for source in times:
            started = time.perf_counter()
            sample(model, processor, prompt, source, new_frames, seed=0)
            times[source].append(time.perf_counter() - started)
    seconds = new_frames / model.config.frame_rate
    rtf = {source: seconds / float(np.median(values)) for source, values in times.items()}
    return {
        "new_frames": new_frames,
        "rtf_learned": rtf["learned"],
        "rtf_exemplar": rtf["exemplar"],
        "rtf_codec": rtf["codec"],
        "speedup_learned_over_codec": rtf["learned"] / rtf["codec"],
        "speedup_exemplar_over_codec": rtf["exemplar"] / rtf["codec"],
    }


def train_with_mel_head(corpus: Path, work_dir: Path, steps: int, processor_dir: Path | None) -> Path:
    """Train the paper hybrid with the mel head on the corpus, with the processor in ``processor_dir`` (else a codec
    built on the corpus); returns the final folder."""
    if processor_dir is None:
        processor, _ = build_processor(audio_files(corpus, split="train"), bandwidth=6.0)
        processor_dir = work_dir / "processor"
        processor.save_pretrained(processor_dir)
    train(
        TrainingConfig(
            output_dir=str(work_dir / "model"),
            train_data=str(corpus),
            processor=str(processor_dir),
            preset="paper_hybrid",
            model_overrides={"use_mel_head": True},
            max_frames=300,
            batch_size=8,
            warmup_steps=steps // 10,
            max_steps=steps,
            eval_every=steps,
            save_every=steps,
            report_to="none",
            progress=False,
        )
    )
    return work_dir / "model" / "final"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a corpus built by `whisper-gpt corpus`")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/mel_head"))
    parser.add_argument("--model", type=Path, help="measure this trained model and its processor; no training")
    parser.add_argument("--processor", type=Path, help="train with this processor (e.g. runs/demo/processor)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--heldout-seconds", type=float, default=60.0)
    parser.add_argument("--new-frames", type=int, default=150)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    started = time.perf_counter()

    final = args.model or train_with_mel_head(args.corpus, args.work_dir, args.steps, args.processor)
    # `train` writes its summary next to the final folder (also for the demo's models).
    summary_file = final.parent / "training_summary.json"
    training = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    model = WhisperGPTForCausalLM.from_pretrained(final).eval()
    if not model.config.use_mel_head:
        raise ValueError(f"{final} has no mel head (use_mel_head=False); train one with use_mel_head=True.")
    processor = WhisperGPTProcessor.from_pretrained(final)
    if processor.audio_tokenizer.mel_exemplars is None:  # a codec saved before exemplars existed
        rate = processor.audio_tokenizer.sampling_rate
        train_clips = (
            normalize_audio_batch(*load_audio(path), rate)[0] for path in audio_files(args.corpus, split="train")
        )
        fit_mel_exemplars(processor.audio_tokenizer, train_clips, processor.feature_extractor)
    clips = heldout_clips(args.corpus, args.heldout_seconds)
    heldout_mel_l1, heldout_periodicity = mel_errors(model, processor, clips)
    report = {
        "command": "python scripts/mel_head_report.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "corpus": str(args.corpus),
        "model": str(final),
        "training": training,
        "heldout_mel_l1": heldout_mel_l1,
        "heldout_periodicity": heldout_periodicity,
        "continuations": continuations(model, processor, args.corpus, args.new_frames),
        "generation": generation_speed(model, processor, np.concatenate(clips), args.new_frames, repeats=3),
        "codec": repr(processor.audio_tokenizer),
        "machine": {"processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
        "wall_seconds": time.perf_counter() - started,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
