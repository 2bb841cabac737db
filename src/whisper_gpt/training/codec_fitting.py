"""Fitting a locally built EnCodec to audio: encoder initialisation, the log-mel encoder fit, k-means codebooks and
the mel exemplars.

Each function takes a `WhisperGPTAudioTokenizer` and changes it in place; `build_processor` runs them in order::

    initialize_encoder(tokenizer, clips)                    # data-driven scaling of the random encoder
    fit_encoder_to_mel(tokenizer, clips, feature_extractor)  # codes describe each frame's spectrum
    calibrate(tokenizer, clips, sampling_rate=24000)        # k-means, layer by layer on the residual
    fit_mel_exemplars(tokenizer, clips, feature_extractor)  # a real log-mel frame per codebook-0 code

None of this ships in a saved model folder: the tokenizer file keeps encoding, decoding, saving, loading and the
exemplar look-up, and the setters these functions write through (`WhisperGPTAudioTokenizer.set_codebook`,
`reset_codebooks`, `set_mel_exemplars`, `codes_changed`).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..feature_extraction_whisper_gpt import AudioInputError, check_sampling_rate, normalize_audio_batch
from ..tokenization_whisper_gpt import WhisperGPTAudioTokenizer

# Rows of the (frames, codes) distance matrix computed at once: bounds memory at 64 MiB for 1024 codes.
_DISTANCE_ROWS = 16_384
# k-means needs many frames per code; below this many per code `calibrate` warns.
MIN_FRAMES_PER_CODE = 10
# k-means stops once fewer than this fraction of the frames change code in an iteration.
_KMEANS_SETTLED = 1e-3
# Clips encoded together while collecting calibration frames.
_CALIBRATION_BATCH = 8
# Frames of audio in front of each `fit_encoder_to_mel` crop that warm the encoder up and are not scored.
_FIT_WARMUP_FRAMES = 8


@torch.no_grad()
def initialize_encoder(
    tokenizer: WhisperGPTAudioTokenizer, clips: Sequence[np.ndarray], max_seconds: float = 30.0
) -> dict[str, float]:
    """Data-driven (LSUV-style) initialisation of a freshly built codec's encoder.

    A random EnCodec encoder's output is dominated by its biases: the part that varies with the input is much
    smaller than the constant offset, so k-means codes carry little information. This zeroes every encoder
    convolution's bias and, layer by layer in forward order, rescales the convolution's weight (its weight-norm
    gain) so its output has unit standard deviation on the given audio. The codes change: the mel exemplars are
    cleared and ``encoder_fitted_to_mel`` becomes False (rescaling undoes a fit).

    Args:
        tokenizer: the codec to change in place.
        clips: float32 mono clips at the codec's rate (`normalize_audio_batch` output).
        max_seconds: audio used (the start of the clips, concatenated).
    Returns:
        ``{"signal_to_offset_before", "signal_to_offset_after"}``: the encoder output's standard deviation
        over time divided by the magnitude of its mean, averaged over channels.
    """
    codec = tokenizer.codec
    tokenizer.codes_changed()
    tokenizer.encoder_fitted_to_mel = False
    audio = np.concatenate(list(clips))[: int(max_seconds * tokenizer.sampling_rate)]
    inputs = torch.from_numpy(audio)[None, None].to(tokenizer.device, codec.dtype)
    before = _signal_to_offset(codec.encoder(inputs))
    convolutions = [module.conv for module in codec.encoder.modules() if hasattr(module, "conv")]
    for conv in convolutions:
        if conv.bias is not None:
            conv.bias.zero_()
    for conv in convolutions:
        captured: list[torch.Tensor] = []
        hook = conv.register_forward_hook(lambda _module, _inputs, output, store=captured: store.append(output))
        codec.encoder(inputs)
        hook.remove()
        std = float(captured[0].std())
        if std > 0:
            _scale_weight(conv, 1.0 / std)
    return {
        "signal_to_offset_before": before,
        "signal_to_offset_after": _signal_to_offset(codec.encoder(inputs)),
    }


# `calibrate`'s ``initialize_encoder`` argument shadows the function inside it.
_initialize_encoder = initialize_encoder


def fit_encoder_to_mel(
    tokenizer: WhisperGPTAudioTokenizer,
    clips: Sequence[np.ndarray],
    feature_extractor: Any,
    steps: int = 400,
    batch_size: int = 16,
    crop_frames: int = 75,
    learning_rate: float = 2e-3,
    max_seconds: float = 600.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train a locally built codec's encoder so each frame's embedding predicts that frame's causal log-mel.

    A randomly initialised encoder reads the waveform's phase, not its spectrum: k-means of its output gives
    codes that jump between frames of a steady vowel and say little about the sound. Here the encoder and a
    linear read-out (thrown away afterwards) learn to predict ``feature_extractor.causal_log_mel`` of every
    frame (L1 loss, Adam), on random crops of the clips joined end to end; afterwards k-means codes are
    spectral prototypes (``scripts/codec_init_effect.py`` measures the effect). Frame ``t``'s embedding still
    only sees samples before ``(t + 1) * hop``: the encoder stays causal, and so does the target (a causal
    feature extractor is required). The decoder is untouched (and untrained). The codebooks no longer fit the
    encoder, so they are reset to zero (`encode` warns) until `calibrate` runs again; the mel exemplars are
    cleared.

    Args:
        tokenizer: the codec to change in place; its decoder must not be trained (``decoder_trained=False``).
        clips: float32 mono clips at the codec's rate (`normalize_audio_batch` output).
        feature_extractor: the `WhisperGPTFeatureExtractor` whose frames the codes should describe.
        steps, batch_size, learning_rate: optimisation; ``crop_frames`` frames per crop, each behind 8
            frames of audio that warm the encoder up and are not scored.
        max_seconds: audio used (the start of the clips, joined).
        seed: makes the read-out's initialisation and the crops reproducible.
        progress: show a progress bar.
    Returns:
        ``{"mel_l1_first", "mel_l1_last"}`` (mean training loss over the first and last 10% of the steps)
        and ``"seconds"``.
    """
    from tqdm.auto import tqdm

    if tokenizer.decoder_trained:
        raise ValueError(
            "This codec's decoder was trained together with its encoder; changing the encoder would break "
            "decoding. fit_encoder_to_mel is only for locally built codecs (decoder_trained=False)."
        )
    _check_frames_match_codes(tokenizer, feature_extractor, "fit_encoder_to_mel")
    if steps < 1 or batch_size < 1 or crop_frames < 1:
        raise ValueError(
            f"steps, batch_size and crop_frames must be positive, got {steps}, {batch_size} and {crop_frames}."
        )
    hop, rate, warmup = tokenizer.hop_length, tokenizer.sampling_rate, _FIT_WARMUP_FRAMES
    audio = np.concatenate(list(clips))[: int(max_seconds * rate)]
    frames = len(audio) // hop
    if frames < warmup + crop_frames:
        raise ValueError(
            f"fit_encoder_to_mel got {len(audio) / rate:.2f} s of audio; it needs at least "
            f"{(warmup + crop_frames) * hop / rate:.2f} s (one crop). Pass more audio."
        )
    started = time.perf_counter()
    waveform = torch.from_numpy(audio[: frames * hop]).to(tokenizer.device, tokenizer.codec.dtype)
    with torch.inference_mode():
        target = feature_extractor.causal_log_mel(waveform[None].float())[0].to(tokenizer.device)  # (frames, M)
    generator = torch.Generator().manual_seed(seed)
    readout = torch.nn.Linear(tokenizer.codec.config.hidden_size, target.shape[1]).to(tokenizer.device)
    with torch.no_grad():
        readout.weight.copy_(torch.randn(readout.weight.shape, generator=generator) * 0.01)
        readout.bias.copy_(target.mean(0))
    encoder = tokenizer.codec.encoder
    tokenizer.codes_changed()  # from here on the codes change, even if the fit stops part way
    optimizer = torch.optim.Adam([*encoder.parameters(), *readout.parameters()], lr=learning_rate)
    span = warmup + crop_frames
    losses = []
    for _ in tqdm(range(steps), desc="fitting the codec encoder to log-mel", unit="step", disable=not progress):
        starts = torch.randint(0, frames - span + 1, (batch_size,), generator=generator).tolist()
        inputs = torch.stack([waveform[s * hop : (s + span) * hop] for s in starts])
        wanted = torch.stack([target[s + warmup : s + span] for s in starts])  # (B, crop, M)
        embeddings = encoder(inputs[:, None])[..., warmup:]  # (B, D, crop)
        loss = (readout(embeddings.transpose(1, 2)) - wanted).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    optimizer.zero_grad(set_to_none=True)
    tokenizer.reset_codebooks()
    tokenizer.encoder_fitted_to_mel = True
    tail = max(1, steps // 10)
    return {
        "mel_l1_first": float(np.mean(losses[:tail])),
        "mel_l1_last": float(np.mean(losses[-tail:])),
        "seconds": time.perf_counter() - started,
    }


def calibrate(
    tokenizer: WhisperGPTAudioTokenizer,
    audio_iterable: Iterable[Any],
    sampling_rate: int | None,
    max_frames: int = 100_000,
    iterations: int = 20,
    seed: int = 0,
    num_codebooks: int | None = None,
    initialize_encoder: bool | None = None,
) -> dict[str, Any]:
    """Initialise the RVQ codebooks by k-means on the codec's own encoder output.

    A freshly built EnCodec has all-zero codebooks (every code is 0). This runs the encoder over the audio,
    keeps a uniform random sample of at most ``max_frames`` embedding frames, then for each quantizer layer in
    turn runs k-means (greedy k-means++ start, then Lloyd's iterations) on the residual the previous layers leave
    and installs the centroids with `WhisperGPTAudioTokenizer.set_codebook` (which clears the mel exemplars).
    Afterwards ``tokenizer.calibrated`` is True.

    Args:
        tokenizer: the codec to change in place.
        audio_iterable: clips, or lists of clips (anything `normalize_audio_batch` accepts per item); a
            single array counts as one clip. An invalid item (empty, NaN samples, ...) raises a ValueError naming
            its index; `whisper_gpt.training.data.build_processor` skips unreadable files before they get here.
        sampling_rate: rate of the audio in Hz, 1 kHz to 384 kHz (`check_sampling_rate`).
        max_frames: frames (75 per second of audio) k-means runs on.
        iterations: most k-means iterations per codebook; it stops earlier once fewer than 0.1% of the
            frames change code.
        seed: makes the frame sample and the k-means++ start reproducible.
        num_codebooks: how many codebooks (from the first) to calibrate. ``None``: those used at the
            tokenizer's bandwidth (8 at 6 kbps); ``codec.config.num_quantizers`` for all of them, so any
            bandwidth works later. `encode` warns when it uses a codebook that is still all zero.
        initialize_encoder: run `initialize_encoder` on the first item of the audio (up to 30 s) first.
            ``None``: only for a freshly built codec (not calibrated, decoder not trained, encoder not fitted
            by `fit_encoder_to_mel`); never for a pretrained one, whose encoder must stay as it was trained.
    Returns:
        ``{"frames": frames used, "frames_seen": frames encoded, "seconds": wall time, per calibrated
        codebook: "entropy_bits" (usage entropy of its codes on the sample), "codes_used", "iterations",
        "residual_energy" (mean squared residual after it / variance of the embeddings)}``, plus the
        `initialize_encoder` statistics when it ran.
    Raises `ValueError` when there are fewer frames than codes; warns below ``MIN_FRAMES_PER_CODE`` frames
    per code.
    """
    from tqdm.auto import tqdm

    codebook_size = tokenizer.codebook_size
    num_quantizers = int(tokenizer.codec.config.num_quantizers)
    num_codebooks = tokenizer.num_codebooks if num_codebooks is None else num_codebooks
    if not 1 <= num_codebooks <= num_quantizers:
        raise ValueError(f"num_codebooks must be between 1 and {num_quantizers}, got {num_codebooks}.")
    if max_frames < codebook_size:
        raise ValueError(f"max_frames ({max_frames}) must be at least codebook_size ({codebook_size}).")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}.")
    if sampling_rate is not None:
        sampling_rate = check_sampling_rate(sampling_rate)
    if isinstance(audio_iterable, (np.ndarray, torch.Tensor)):
        audio_iterable = [audio_iterable]
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    reservoir = np.empty((max_frames, tokenizer.codec.config.codebook_dim), dtype=np.float32)
    seen = 0
    if initialize_encoder is None:
        initialize_encoder = not (tokenizer.calibrated or tokenizer.decoder_trained or tokenizer.encoder_fitted_to_mel)
    items = _normalized_items(audio_iterable, sampling_rate, tokenizer.sampling_rate)
    encoder_stats: dict[str, float] = {}
    if initialize_encoder:
        first = next(items, None)
        if first is None:
            raise ValueError("calibrate got no audio.")
        encoder_stats = _initialize_encoder(tokenizer, first)
        items = itertools.chain([first], items)
    with torch.inference_mode():
        for clips in items:
            # Batched: codes are not computed here, so rounding differences do not matter.
            for embeddings in tokenizer.embed_clips(clips, _CALIBRATION_BATCH):
                seen = _reservoir_add(reservoir, seen, embeddings.T.float().cpu().numpy(), rng)
    used = min(seen, max_frames)
    wanted = MIN_FRAMES_PER_CODE * codebook_size
    frame_rate = tokenizer.sampling_rate / tokenizer.hop_length
    if used < codebook_size:
        raise ValueError(
            f"calibrate got {used} frames for {codebook_size} codes per codebook; k-means needs at "
            f"least {wanted} ({wanted / frame_rate:.0f} s of audio). Pass more audio."
        )
    if used < wanted:
        warnings.warn(
            f"calibrate got only {used} frames for {codebook_size} codes per codebook; k-means "
            f"wants at least {MIN_FRAMES_PER_CODE}x as many frames as codes ({wanted / frame_rate:.0f} s "
            "of audio). Pass more audio for codes that generalise.",
            UserWarning,
            stacklevel=2,
        )
    generator = torch.Generator().manual_seed(seed)
    residual = torch.from_numpy(reservoir[:used]).to(tokenizer.device)
    # Relative to the embeddings' variance: their mean alone would make any codebook look good.
    variance = max(float(residual.var(dim=0, unbiased=False).mean()), torch.finfo(torch.float32).tiny)
    stats: dict[str, Any] = {"frames": used, "frames_seen": seen, **encoder_stats}
    per_codebook: dict[str, list] = {
        "entropy_bits": [],
        "codes_used": [],
        "iterations": [],
        "residual_energy": [],
    }
    for index in tqdm(range(num_codebooks), desc="k-means per codebook", unit="codebook"):
        with torch.inference_mode():
            centroids, assignment, iterations_run = _kmeans(residual, codebook_size, iterations, generator)
            counts = torch.bincount(assignment, minlength=codebook_size)
            residual = residual - centroids[assignment]
        tokenizer.set_codebook(index, centroids, counts)
        per_codebook["entropy_bits"].append(_entropy_bits(counts))
        per_codebook["codes_used"].append(int((counts > 0).sum()))
        per_codebook["iterations"].append(iterations_run)
        per_codebook["residual_energy"].append(float(residual.pow(2).mean()) / variance)
    tokenizer.calibrated = True
    stats.update(per_codebook)
    stats["seconds"] = time.perf_counter() - started
    return stats


def _normalized_items(items: Iterable[Any], sampling_rate: int | None, target: int) -> Iterable[list[np.ndarray]]:
    """`normalize_audio_batch` of each item; an invalid one raises `AudioInputError` naming its index."""
    for index, item in enumerate(items):
        try:
            yield normalize_audio_batch(item, sampling_rate, target)
        except AudioInputError as error:
            raise AudioInputError(f"calibrate: audio item {index}: {error}") from error


def fit_mel_exemplars(
    tokenizer: WhisperGPTAudioTokenizer,
    clips: Iterable[np.ndarray],
    feature_extractor: Any,
    max_seconds: float = 600.0,
) -> dict[str, Any]:
    """Keep, for each codebook-0 code, one real causal log-mel frame that the code stood for.

    A local codec's decoder is untrained, so a generated code cannot be heard through it. The mean of the
    frames a code stood for (what a regression such as the mel head learns) blurs the harmonics of different
    pitches into a smooth spectrum, and Griffin-Lim renders that as noise with the right envelope. A real
    frame keeps them. Each code's exemplar is its member frame closest (L1) to the members' per-bin median: a
    typical frame of the code, not an outlier. Codes that never occur in ``clips`` borrow the exemplar of the
    nearest occurring code (distance between codebook vectors). ``generate(mel_source="exemplar")`` feeds
    these frames to the model and renders them; each depends only on its own frame's code, so it is causal.
    The (codebook_size, M) float32 table is installed with `WhisperGPTAudioTokenizer.set_mel_exemplars`.

    Args:
        tokenizer: a calibrated codec, changed in place.
        clips: float32 mono clips at the codec's rate (`normalize_audio_batch` output).
        feature_extractor: the `WhisperGPTFeatureExtractor` whose frames the model reads (causal framing).
        max_seconds: audio used (the start of the clips).
    Returns:
        ``{"frames", "codes_seen", "seconds"}``.
    """
    if not tokenizer.calibrated:
        raise ValueError("fit_mel_exemplars needs calibrated codebooks: run calibrate() first.")
    _check_frames_match_codes(tokenizer, feature_extractor, "fit_mel_exemplars")
    started = time.perf_counter()
    codes, frames, seconds = [], [], 0.0
    for clip in clips:
        if seconds >= max_seconds:
            break
        clip = np.asarray(clip, dtype=np.float32)[: int((max_seconds - seconds) * tokenizer.sampling_rate)]
        if len(clip) == 0:
            continue
        codes.append(tokenizer.encode_clips([clip])[0][0])  # (T,) codebook 0
        with torch.inference_mode():
            frames.append(feature_extractor.causal_log_mel(torch.from_numpy(clip)[None])[0])  # (T, M)
        seconds += len(clip) / tokenizer.sampling_rate
    if not codes:
        raise ValueError("fit_mel_exemplars got no audio.")
    codes, frames = torch.cat(codes), torch.cat(frames).float()
    exemplars = torch.zeros(tokenizer.codebook_size, frames.shape[1])
    order = torch.argsort(codes, stable=True)
    seen, counts = torch.unique_consecutive(codes[order], return_counts=True)
    for code, members in zip(seen.tolist(), torch.split(order, counts.tolist()), strict=True):
        member_frames = frames[members]  # (n, M)
        typical = member_frames.median(dim=0).values
        exemplars[code] = member_frames[(member_frames - typical).abs().sum(dim=1).argmin()]
    codebook = tokenizer.codec.quantizer.layers[0].codebook.embed.detach().float().cpu()  # (V, D)
    unseen = torch.ones(tokenizer.codebook_size, dtype=torch.bool)
    unseen[seen] = False
    if bool(unseen.any()):
        nearest = torch.cdist(codebook[unseen], codebook[seen]).argmin(dim=1)
        exemplars[unseen] = exemplars[seen[nearest]]
    tokenizer.set_mel_exemplars(exemplars, feature_extractor)
    return {"frames": len(codes), "codes_seen": len(seen), "seconds": time.perf_counter() - started}


def _check_frames_match_codes(tokenizer: WhisperGPTAudioTokenizer, feature_extractor: Any, method: str) -> None:
    """``method`` pairs each code with the causal log-mel frame of the same samples: refuse an extractor whose
    frames see later samples or are framed at another rate or hop."""
    if getattr(feature_extractor, "framing", "causal") != "causal":
        raise ValueError(
            f"{method} needs causal log-mel targets; this feature extractor uses "
            f"framing={feature_extractor.framing!r}, whose frames see later samples. Use framing='causal'."
        )
    codec = (tokenizer.sampling_rate, tokenizer.hop_length)
    if (feature_extractor.sampling_rate, feature_extractor.hop_length) != codec:
        raise ValueError(
            f"The feature extractor ({feature_extractor.sampling_rate} Hz, hop {feature_extractor.hop_length}) "
            f"does not match the codec ({codec[0]} Hz, hop {codec[1]}), so its frames would not line up with the "
            f"codes; build it with sampling_rate={codec[0]}, hop_length={codec[1]}."
        )


def _nearest(points: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and squared distance to, the nearest centroid for (N, D) points and (K, D) centroids."""
    centroid_norms = centroids.pow(2).sum(dim=1)
    indices, distances = [], []
    for chunk in points.split(_DISTANCE_ROWS):
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin, so add it afterwards.
        best, index = torch.addmm(centroid_norms, chunk, centroids.T, alpha=-2.0).min(dim=1)
        indices.append(index)
        distances.append((best + chunk.pow(2).sum(dim=1)).clamp(min=0.0))
    return torch.cat(indices), torch.cat(distances)


def _kmeans_plus_plus(points: torch.Tensor, num_codes: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding of (N, D) points: (num_codes, D) starting centroids.

    The first centroid is a uniformly drawn point. Each next one is chosen among ``2 + floor(ln num_codes)``
    candidate points, each drawn with probability proportional to its squared distance to the nearest centroid
    so far: the candidate that lowers the sum of those squared distances most is kept (the greedy variant of
    Arthur and Vassilvitskii's k-means++, the one scikit-learn uses). The start so covers every cluster instead of
    piling several centroids into the dense ones, which Lloyd's iterations rarely undo. All draws come from
    ``generator`` (a CPU generator, whatever the points' device), so the result is reproducible. Beyond the points
    it holds a transposed copy of them and O(N * candidates) floats; each centroid costs one (candidates, D) x
    (D, N) product.
    """
    count = points.shape[0]
    trials = 2 + int(math.log(num_codes))
    draws = torch.rand(num_codes - 1, trials, generator=generator).to(points.device, points.dtype)
    norms = points.pow(2).sum(dim=1)
    # Candidates x points in this layout is twice as fast on a CPU as points x candidates (contiguous rows).
    columns = points.T.contiguous()
    chosen = torch.empty(num_codes, dtype=torch.long, device=points.device)
    chosen[0] = int(torch.randint(count, (1,), generator=generator))
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: matrix products, no (N, D) temporary.
    nearest = torch.addmv(norms + norms[chosen[0]], points, points[chosen[0]], alpha=-2.0).clamp_(min=0.0)
    for index in range(1, num_codes):
        cumulative = nearest.cumsum(dim=0)
        # right=True: a point at distance 0 (a centroid already, or a copy of one) is not drawn while others are
        # left; when all are at 0 (fewer distinct points than codes) Lloyd's rule for empty codes takes over.
        candidates = torch.searchsorted(cumulative, draws[index - 1] * cumulative[-1], right=True).clamp_(max=count - 1)
        distances = points[candidates] @ columns  # (trials, N)
        distances.mul_(-2.0).add_(norms).add_(norms[candidates, None]).clamp_(min=0.0)
        torch.minimum(distances, nearest, out=distances)
        best = distances.sum(dim=1).argmin()
        chosen[index] = candidates[best]
        nearest = distances[best]
    return points[chosen].clone()


def _kmeans(
    points: torch.Tensor,
    num_codes: int,
    iterations: int,
    generator: torch.Generator,
    init: str = "k-means++",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd's k-means on (N, D) points, started by `_kmeans_plus_plus` (``init="k-means++"``) or from
    ``num_codes`` distinct points drawn uniformly (``init="random"``, which ends at a markedly worse quantisation
    error on clustered data: ``examples/kmeans_init.py`` measures both).

    Returns (num_codes, D) centroids, the (N,) assignment to them, and the iterations run: it stops early once
    fewer than ``_KMEANS_SETTLED`` of the points change code in an iteration.
    """
    if init == "k-means++":
        centroids = _kmeans_plus_plus(points, num_codes, generator)
    elif init == "random":
        start = torch.randperm(points.shape[0], generator=generator)[:num_codes].to(points.device)
        centroids = points[start].clone()
    else:
        raise ValueError(f"init must be 'k-means++' or 'random', got {init!r}.")
    assignment, distance = _nearest(points, centroids)
    for iteration in range(1, iterations + 1):
        counts = torch.bincount(assignment, minlength=num_codes)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            # Move unused codes onto the points worst served by their centroid: this splits the loosest
            # clusters, and copies of one point (e.g. digital silence) cannot keep codes idle forever.
            worst = distance.topk(int(empty.sum())).indices
            centroids[empty] = points[worst]
        previous = assignment
        assignment, distance = _nearest(points, centroids)
        if int((assignment != previous).sum()) < _KMEANS_SETTLED * points.shape[0]:
            return centroids, assignment, iteration
    return centroids, assignment, iterations


def _entropy_bits(counts: torch.Tensor) -> float:
    probabilities = counts[counts > 0].double() / counts.sum()
    return float(-(probabilities * probabilities.log2()).sum())


def _reservoir_add(reservoir: np.ndarray, seen: int, frames: np.ndarray, rng: np.random.Generator) -> int:
    """Reservoir-sample (N, D) ``frames`` into ``reservoir`` (M, D); returns the number of frames seen so far.

    Keeps a uniform sample of everything seen, however long and however ordered the audio is (e.g. all
    speech before all music).
    """
    capacity = reservoir.shape[0]
    fill = min(max(capacity - seen, 0), frames.shape[0])
    reservoir[seen : seen + fill] = frames[:fill]
    rest = frames[fill:]
    if rest.shape[0]:
        slots = rng.integers(0, np.arange(seen + fill, seen + frames.shape[0]) + 1)
        kept = slots < capacity
        reservoir[slots[kept]] = rest[kept]
    return seen + frames.shape[0]


def _signal_to_offset(embeddings: torch.Tensor) -> float:
    """(B, D, T) encoder output -> mean over channels of std over time / |mean over time|."""
    flat = embeddings.transpose(0, 1).reshape(embeddings.shape[1], -1)
    return float((flat.std(dim=1) / flat.mean(dim=1).abs().clamp(min=1e-12)).mean())


def _scale_weight(conv: torch.nn.Conv1d, factor: float) -> None:
    """Multiply a convolution's effective weight by ``factor`` (its weight-norm gain when it has one)."""
    parametrizations = getattr(conv, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        parametrizations.weight.original0.mul_(factor)
    else:
        conv.weight.mul_(factor)


__all__ = ["MIN_FRAMES_PER_CODE", "calibrate", "fit_encoder_to_mel", "fit_mel_exemplars", "initialize_encoder"]
