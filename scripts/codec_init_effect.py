"""Measure what data-driven encoder initialisation and the log-mel encoder fit do for a locally built EnCodec.

Builds the same randomly initialised small EnCodec three times and calibrates its codebooks (k-means) after: nothing
("random"), `initialize_encoder` ("initialised"), and `initialize_encoder` + `fit_encoder_to_mel` ("fitted", as
`build_processor` does by default; all in `whisper_gpt.training.codec_fitting`). Reports on held-out audio:
codebook-0 usage entropy, codes used, how well a per-code probe predicts the causal log-mel frame from the frame's
codebook-0 code (mel L1 of the probe vs predicting the mean frame), how often consecutive frames keep their code,
and the held-out cross-entropy of a bigram model of the codes fitted on the training audio (what a language model
can learn quickly; nats). Prints JSON; ``--out`` also writes it.

    python scripts/codec_init_effect.py --corpus runs/corpus/speech        # a folder of audio or a built corpus
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import soundfile
import torch
from transformers import EncodecModel

from whisper_gpt import WhisperGPTAudioTokenizer, WhisperGPTFeatureExtractor, small_encodec_config
from whisper_gpt.apps.corpus import audio_files
from whisper_gpt.training.codec_fitting import calibrate, fit_encoder_to_mel, initialize_encoder


def load_clips(folder: Path, split: str, max_seconds: float) -> list[np.ndarray]:
    clips, total = [], 0.0
    for path in audio_files(folder, split=split):
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        if rate != 24000:
            raise ValueError(f"{path} is at {rate} Hz; build the corpus with `whisper-gpt corpus` (24 kHz).")
        clips.append(audio.mean(axis=1))
        total += len(clips[-1]) / rate
        if total >= max_seconds:
            break
    return clips


def entropy_bits(codes: torch.Tensor, size: int) -> float:
    counts = torch.bincount(codes.flatten(), minlength=size).double()
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * probs.log2()).sum())


def probe_mel_l1(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], size: int):
    """Per-code mean mel frame (the least-squares one-hot probe) fitted on train, mel L1 on test."""
    codes, mels = train
    sums = torch.zeros(size, mels.shape[1], dtype=torch.float64).index_add_(0, codes, mels.double())
    counts = torch.bincount(codes, minlength=size).double()[:, None]
    mean_frame = mels.double().mean(0)
    table = torch.where(counts > 0, sums / counts.clamp(min=1), mean_frame)
    test_codes, test_mels = test
    probe = float((table[test_codes] - test_mels.double()).abs().mean())
    baseline = float((mean_frame - test_mels.double()).abs().mean())
    return probe, baseline


def bigram_cross_entropy(train: list[torch.Tensor], test: list[torch.Tensor], size: int) -> float:
    """Held-out nats per code of an add-0.1 bigram model of codebook-0 codes (one sequence per clip)."""
    counts = torch.full((size, size), 0.1, dtype=torch.float64)
    for codes in train:
        counts.index_put_((codes[:-1], codes[1:]), torch.ones(len(codes) - 1, dtype=torch.float64), accumulate=True)
    log_probs = (counts / counts.sum(1, keepdim=True)).log()
    return float(-torch.cat([log_probs[codes[:-1], codes[1:]] for codes in test]).mean())


def measure(encoder: str, train_clips, test_clips, seed: int, fit_steps: int) -> dict:
    torch.manual_seed(seed)
    tokenizer = WhisperGPTAudioTokenizer(EncodecModel(small_encodec_config()), decoder_trained=False)
    extractor = WhisperGPTFeatureExtractor()
    fit = {}
    if encoder == "fitted":
        initialize_encoder(tokenizer, train_clips)
        fit = fit_encoder_to_mel(tokenizer, train_clips, extractor, steps=fit_steps, seed=seed)
    stats = calibrate(tokenizer, train_clips, 24000, initialize_encoder=encoder == "initialised", seed=seed)
    pairs, per_clip = {}, {}
    for name, clips in (("train", train_clips), ("test", test_clips)):
        per_clip[name] = [tokenizer.encode(clip, 24000)[0, 0] for clip in clips]
        mels = torch.cat([extractor.causal_log_mel(torch.from_numpy(clip)[None])[0] for clip in clips])
        pairs[name] = (torch.cat(per_clip[name]), mels)
    probe, baseline = probe_mel_l1(pairs["train"], pairs["test"], tokenizer.codebook_size)
    test_codes = pairs["test"][0]
    return {
        "encoder": encoder,
        "signal_to_offset": stats.get("signal_to_offset_after", None),
        "signal_to_offset_random_init": stats.get("signal_to_offset_before", None),
        "encoder_fit": fit or None,
        "calibration_entropy_bits_codebook0": stats["entropy_bits"][0],
        "heldout_entropy_bits_codebook0": entropy_bits(test_codes, tokenizer.codebook_size),
        "heldout_codes_used_codebook0": int(torch.unique(test_codes).numel()),
        "probe_mel_l1": probe,
        "mean_frame_mel_l1": baseline,
        "heldout_same_code_as_previous_frame": float(
            torch.cat([codes[1:] == codes[:-1] for codes in per_clip["test"]]).double().mean()
        ),
        "heldout_bigram_nats_per_code": bigram_cross_entropy(per_clip["train"], per_clip["test"], 1024),
        "calibrate_seconds": stats["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="built corpus or folder of 24 kHz audio")
    parser.add_argument("--train-seconds", type=float, default=150.0)
    parser.add_argument("--test-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-steps", type=int, default=400, help="fit_encoder_to_mel steps of the fitted codec")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    train = load_clips(args.corpus, "train", args.train_seconds)
    test = load_clips(args.corpus, "validation", args.test_seconds)
    report = {
        "corpus": str(args.corpus),
        "train_seconds": sum(len(c) for c in train) / 24000,
        "test_seconds": sum(len(c) for c in test) / 24000,
        "max_entropy_bits": math.log2(1024),
        "runs": [
            measure(encoder, train, test, args.seed, args.fit_steps) for encoder in ("random", "initialised", "fitted")
        ],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
