"""Quantisation error of the calibration k-means started from random points and from k-means++ seeding.

    python examples/kmeans_init.py [--points 18000] [--dim 32] [--codes 256] [--clusters 256] [--iterations 20]
        [--seeds 0 1 2]

The data are ``--points`` vectors drawn around ``--clusters`` Gaussian centres (spread 4 per coordinate) with
uneven cluster sizes (weights from a Dirichlet(1) draw) and uneven spreads (0.3 to 1 per coordinate), the kind of
clumpy cloud a codec's embeddings form. Each seed draws new data and runs the k-means `calibrate` uses
(`whisper_gpt.training.codec_fitting._kmeans`, ``--iterations`` Lloyd iterations at most) once per start; the
inertia (sum of squared distances of the points to their centroid) and the time of each run are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from whisper_gpt.training.codec_fitting import _kmeans


def clustered_points(points: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    """(points, dim) float32 vectors around ``clusters`` centres with uneven sizes and spreads."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, size=(clusters, dim))
    spreads = rng.uniform(0.3, 1.0, size=clusters)
    members = rng.choice(clusters, size=points, p=rng.dirichlet(np.ones(clusters)))
    data = centres[members] + rng.normal(size=(points, dim)) * spreads[members, None]
    return torch.from_numpy(data.astype(np.float32))


def measure(points: torch.Tensor, codes: int, iterations: int, seed: int, init: str) -> dict[str, float]:
    started = time.perf_counter()
    centroids, assignment, iterations_run = _kmeans(
        points, codes, iterations, torch.Generator().manual_seed(seed), init=init
    )
    seconds = time.perf_counter() - started
    inertia = float((points - centroids[assignment]).pow(2).sum())
    return {"inertia": inertia, "iterations": iterations_run, "seconds": seconds}


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=18_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if min(args.points, args.dim, args.codes, args.clusters, args.iterations) < 1 or args.points < args.codes:
        parser.error("sizes must be positive and --points at least --codes")
    results: dict[str, list[dict[str, float]]] = {"random": [], "k-means++": []}
    for seed in args.seeds:
        points = clustered_points(args.points, args.dim, args.clusters, seed)
        for init, runs in results.items():
            runs.append({"seed": seed, **measure(points, args.codes, args.iterations, seed, init)})
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
