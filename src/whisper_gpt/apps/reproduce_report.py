"""The report of ``whisper-gpt reproduce``: ``results.json``, ``results.md`` and figures, from stored run results.

`build_report` gathers the stored results of the study's runs (one dict each, as
`whisper_gpt.apps.reproduce.run_reproduction` writes them), the planned runs and the study's settings into the
JSON report. Everything else is derived from the per-run numbers by `summarize` whenever the report is rendered:
means and standard deviations over seeds, the paired per-seed difference hybrid − GPT-S, validation curves, NLL by
context, mel-path diagnostics, ablation deltas, and the findings (`findings`), whose every sentence is computed
from those numbers. So `render_markdown` of an edited ``results.json`` states what the edited numbers say.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .reproduce import DOMAINS, LABEL, MAIN_MODELS, REGIMES, paper_numbers

# Context buckets of the NLL-by-position table: predictions made with [start, stop) frames of context.
CONTEXT_BUCKETS = ((1, 8), (8, 32), (32, 128), (128, None))
ABLATION_LABELS = {
    "gpt_s": "token-only GPT-S (reference)",
    "hybrid": "hybrid: causal mel, concat fusion, 2 mel blocks, no gate (reference)",
    "hybrid_centered_mel": "centred-STFT mel (its window reaches 352 samples into the predicted frame)",
    "hybrid_codec_mel": "mel of the codec's resynthesis (codebook 0) instead of the audio's",
    "hybrid_mel_gate": "mel gate (tanh(g) * mel, g starts at 0)",
    "hybrid_sum_fusion": "sum fusion instead of concat",
    "hybrid_spectrogram_layers_0": "0 mel blocks instead of 2",
}
CODEBOOK_LABELS = {
    "hybrid": "hybrid K=1 (paper)",
    "gpt_s": "token-only GPT-S K=1 (paper)",
    "hybrid_k8": "hybrid K=8 (depth transformer)",
    "gpt_s_k8": "token-only GPT-S K=8 (depth transformer)",
    "flat8_gpt_s": "token-only, 8 codebooks flattened (8 positions per frame)",
}
REGIME_TEXT = {
    "random_kmeans": "random (initialised) encoder, k-means codebooks: codes that quantise the signal",
    "fitted_encoder": "encoder fitted to the log-mel (`fit_encoder_to_mel`, the codec `whisper-gpt train` "
    "calibrates by default), k-means codebooks: codes that are spectral prototypes",
}


def _ablation_label(name: str) -> str:
    if name.startswith("hybrid_mel_bins_"):
        return f"{name.rsplit('_', 1)[1]} mel bins instead of 80"
    return ABLATION_LABELS.get(name, name)


def build_report(results: list[dict[str, Any]], plan: list[dict[str, Any]], study: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: ``study`` (settings), ``provenance`` (commits, commands, machines, wall time), ``runs``
    (the stored results without their settings' key material), ``pending`` (planned runs not stored yet), and the
    derived ``summary`` and ``findings``.

    Args:
        results: stored run results (each with ``regime``, ``domain``, ``name``, ``model``, ``seed`` and numbers).
        plan: every planned run as ``regime``, ``domain``, ``name``, ``model``, ``seed``, ``groups``.
        study: the study's settings (`whisper_gpt.apps.reproduce.study_settings`).
    """
    runs = [{k: v for k, v in result.items() if k != "settings"} for result in results]
    done = {(r["regime"], r["domain"], r["name"], r["seed"]) for r in runs}
    pending = [row for row in plan if (row["regime"], row["domain"], row["name"], row["seed"]) not in done]

    def distinct(key: str) -> list[Any]:
        return list(dict.fromkeys(r.get(key) for r in runs if r.get(key) is not None))

    report = {
        "title": "Reproducing Whisper-GPT (arXiv 2412.11449) on real speech and music",
        "study": study,
        "provenance": {
            "commits": distinct("commit"),
            "commands": distinct("command"),
            "machines": distinct("machine"),
            "torch_versions": distinct("torch_version"),
            "threads": distinct("threads"),
            "wall_seconds": round(sum(r.get("wall_seconds", 0.0) for r in runs), 1),
            "runs_stored": len(runs),
            "runs_planned": len(plan),
        },
        "runs": runs,
        "pending": pending,
    }
    report["summary"] = summarize(report)
    report["findings"] = findings(report)
    return report


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _context_buckets(run: dict[str, Any]) -> list[float | None]:
    """Token-weighted mean NLL of each `CONTEXT_BUCKETS` bucket (None where the window has no such position)."""
    nll, tokens = run.get("nll_by_context") or [], run.get("tokens_by_context") or []
    out = []
    for start, stop in CONTEXT_BUCKETS:
        pairs = [
            (value, count)
            for context, (value, count) in enumerate(zip(nll, tokens, strict=False), 1)
            if context >= start and (stop is None or context < stop) and value is not None and count
        ]
        weight = sum(count for _, count in pairs)
        out.append(sum(value * count for value, count in pairs) / weight if weight else None)
    return out


def _bucket_label(index: int) -> str:
    start, stop = CONTEXT_BUCKETS[index]
    return f"{start}+" if stop is None else f"{start}-{stop - 1}"


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Every table's numbers, from ``report["runs"]`` alone, per regime: ``headline`` (per domain and model: seeds,
    per-seed NLL and accuracy, mean ± std, PPL of the mean NLL, parameters, steps, epochs, wall seconds,
    ``under_trained`` for GPT-L), ``paired`` (per domain: the seeds both GPT-S and the hybrid have, hybrid − GPT-S
    per seed, its mean and std, the seeds where the hybrid is lower), ``paired_by_step`` (mean paired difference at
    each validation step), ``context`` (NLL by context bucket, mean over seeds), ``diagnostics`` (the headline
    hybrids'), ``ablations`` and ``codebooks`` (rows with deltas against the references)."""
    study = report["study"]
    headline_names = set(MAIN_MODELS)
    summary: dict[str, Any] = {}
    for regime in REGIMES:
        runs = [r for r in report["runs"] if r["regime"] == regime]
        if not runs:
            continue
        index = {(r["domain"], r["name"], r["seed"]): r for r in runs}
        part: dict[str, Any] = {"headline": {}, "paired": {}, "paired_by_step": {}, "context": {}, "diagnostics": {}}
        for domain in DOMAINS:
            models = {}
            for model in MAIN_MODELS:
                chosen = sorted(
                    (r for r in runs if r["domain"] == domain and r["name"] == model), key=lambda r: r["seed"]
                )
                if not chosen:
                    continue
                nll_mean, nll_std = _stats([r["nll"] for r in chosen])
                acc_mean, acc_std = _stats([r["accuracy"] for r in chosen])
                models[model] = {
                    "label": LABEL[model],
                    "seeds": [r["seed"] for r in chosen],
                    "nll_by_seed": [r["nll"] for r in chosen],
                    "accuracy_by_seed": [r["accuracy"] for r in chosen],
                    "nll_mean": nll_mean,
                    "nll_std": nll_std,
                    "accuracy_mean": acc_mean,
                    "accuracy_std": acc_std,
                    "ppl_of_mean_nll": math.exp(nll_mean),
                    "params": chosen[0]["params"],
                    "steps": chosen[0]["steps"],
                    "epochs": chosen[0]["epochs"],
                    "wall_seconds": [r.get("wall_seconds") for r in chosen],
                    "under_trained": model == "gpt_l",
                    "paper": paper_numbers(domain, model),
                }
            if not models:
                continue
            part["headline"][domain] = models
            seeds = sorted(s for (d, n, s) in index if d == domain and n == "gpt_s" and (domain, "hybrid", s) in index)
            if seeds:
                pairs = [(index[(domain, "gpt_s", s)], index[(domain, "hybrid", s)]) for s in seeds]
                differences = [h["nll"] - g["nll"] for g, h in pairs]
                mean, std = _stats(differences)
                part["paired"][domain] = {
                    "seeds": seeds,
                    "gpt_s": [g["nll"] for g, _ in pairs],
                    "hybrid": [h["nll"] for _, h in pairs],
                    "by_seed": differences,
                    "mean": mean,
                    "std": std,
                    "hybrid_lower": sum(d < 0 for d in differences),
                }
                by_step = []
                steps = [entry["step"] for entry in pairs[0][0].get("history", [])]
                for position, step in enumerate(steps):
                    values = []
                    for g, h in pairs:
                        if len(g["history"]) > position and len(h["history"]) > position:
                            values.append(h["history"][position]["nll"] - g["history"][position]["nll"])
                    if len(values) == len(pairs):
                        by_step.append({"step": step, "mean": float(np.mean(values)), "by_seed": values})
                part["paired_by_step"][domain] = by_step
                buckets = {}
                for model in ("gpt_s", "hybrid"):
                    per_seed = [_context_buckets(index[(domain, model, s)]) for s in seeds]
                    buckets[model] = [
                        float(np.mean(column)) if all(v is not None for v in column) else None
                        for column in zip(*per_seed, strict=True)
                    ]
                part["context"][domain] = [
                    {
                        "context": _bucket_label(i),
                        "gpt_s": buckets["gpt_s"][i],
                        "hybrid": buckets["hybrid"][i],
                        "difference": None
                        if buckets["gpt_s"][i] is None or buckets["hybrid"][i] is None
                        else buckets["hybrid"][i] - buckets["gpt_s"][i],
                    }
                    for i in range(len(CONTEXT_BUCKETS))
                ]
            hybrids = sorted(
                (r for r in runs if r["domain"] == domain and r["name"] == "hybrid"), key=lambda r: r["seed"]
            )
            part["diagnostics"][domain] = [
                {"seed": r["seed"], "nll": r["nll"], **r["diagnostics"]} for r in hybrids if r.get("diagnostics")
            ]
        d, seed = study["ablation_domain"], study["seeds"][0]
        reference = {name: index.get((d, name, seed)) for name in ("gpt_s", "hybrid")}
        spread = part["headline"].get(d, {}).get("hybrid", {}).get("nll_std")
        for group, labels, base in (
            ("ablations", _ablation_label, "hybrid"),
            ("codebooks", lambda name: CODEBOOK_LABELS.get(name, name), "hybrid"),
        ):
            rows = []
            members = [r for r in runs if group in r.get("groups", []) and r["domain"] == d and r["seed"] == seed]
            for r in sorted(members, key=lambda r: (r["name"] not in headline_names, r["name"])):
                rows.append(
                    {
                        "name": r["name"],
                        "label": labels(r["name"]),
                        "nll": r["nll"],
                        "accuracy": r["accuracy"],
                        "params": r["params"],
                        "delta_vs_hybrid": None if reference[base] is None else r["nll"] - reference[base]["nll"],
                        "delta_vs_gpt_s": None if reference["gpt_s"] is None else r["nll"] - reference["gpt_s"]["nll"],
                        "num_codebooks": r.get("num_codebooks", 1),
                        "nll_all_codebooks": r.get("nll_all_codebooks"),
                        "train_frames_per_second": r.get("train_frames_per_second"),
                        "memory": r.get("memory"),
                        "diagnostics": r.get("diagnostics"),
                    }
                )
            extra = [row for row in rows if row["name"] not in headline_names]
            part[group] = {"domain": d, "seed": seed, "hybrid_seed_std": spread, "rows": rows if extra else []}
        summary[regime] = part
    return summary


def _signed(values: list[float]) -> str:
    return ", ".join(f"{v:+.3f}" for v in values)


def _change(earlier: float, later: float) -> str:
    return "grows" if later > earlier else "shrinks" if later < earlier else "stays the same"


def findings(report: dict[str, Any]) -> list[str]:
    """Statements derived by code from the report's per-run numbers (via `summarize`): every number and every
    direction word in them follows from the data, so a rerun (or an edited results.json) states its own result."""
    summary = summarize(report)
    study = report["study"]
    out = []
    for regime, part in summary.items():
        for domain, paired in part["paired"].items():
            n, lower = len(paired["seeds"]), paired["hybrid_lower"]
            if n == 1:
                verdict = "one seed only, so nothing can be said about seed variation"
            elif lower == n:
                verdict = "every seed agrees: the hybrid is better at this budget"
            elif lower == 0:
                verdict = "every seed agrees: the hybrid is worse at this budget"
            else:
                verdict = "the seeds disagree, so this budget gives no conclusion"
            out.append(
                f"[{regime}] {domain}: hybrid − GPT-S codebook-0 NLL per seed {_signed(paired['by_seed'])} nats "
                f"(mean {paired['mean']:+.3f} ± {paired['std']:.3f}); the hybrid is lower in {lower} of {n} seeds: "
                f"{verdict}."
            )
            models = part["headline"][domain]
            if "gpt_l" in models:
                large, small = models["gpt_l"], models["gpt_s"]
                difference = large["nll_mean"] - small["nll_mean"]
                out.append(
                    f"[{regime}] {domain}: GPT-L ({len(large['seeds'])} seed{'s' if len(large['seeds']) > 1 else ''}, "
                    f"{large['steps']} steps, under-trained "
                    f"at this budget) is {abs(difference):.3f} nats {'above' if difference > 0 else 'below'} "
                    "GPT-S's mean."
                )
            by_step = part["paired_by_step"].get(domain, [])
            if len(by_step) >= 2:
                early, late = -by_step[0]["mean"], -by_step[-1]["mean"]
                out.append(
                    f"[{regime}] {domain}: the hybrid's advantage (GPT-S − hybrid, mean over seeds) "
                    f"{_change(early, late)} during training: {early:+.3f} nats at step {by_step[0]['step']}, "
                    f"{late:+.3f} at step {by_step[-1]['step']}."
                )
            context = [row for row in part["context"].get(domain, []) if row["difference"] is not None]
            if len(context) >= 2:
                short, long = -context[0]["difference"], -context[-1]["difference"]
                out.append(
                    f"[{regime}] {domain}: by position in the context, the hybrid's advantage is {short:+.3f} nats "
                    f"with {context[0]['context']} frames of context and {long:+.3f} with {context[-1]['context']}: "
                    f"it {_change(short, long)} with context."
                )
        for domain, rows in part["diagnostics"].items():
            if not rows:
                continue
            sentences = []
            for key, what in (("nll_zero_mel_increase", "zeros"), ("nll_shuffled_mel_increase", "another clip's")):
                values = [row[key] for row in rows if row.get(key) is not None]
                if values:
                    sentences.append(
                        f"replacing its mel frames by {what} raises its NLL in {sum(v > 0 for v in values)} of "
                        f"{len(values)} seeds (mean {np.mean(values):+.3f} nats)"
                    )
            # Another clip's mel is the stricter test (it keeps the frames' statistics); zeros where it is missing.
            evidence = [
                row["nll_zero_mel_increase"]
                if row.get("nll_shuffled_mel_increase") is None
                else row["nll_shuffled_mel_increase"]
                for row in rows
            ]
            used = all(value > 0 for value in evidence)
            out.append(
                f"[{regime}] {domain}: is the hybrid's mel path used? "
                + "; ".join(sentences)
                + (
                    ": the trained hybrid relies on its mel frames."
                    if used
                    else ": not in every seed, so the mel path is not reliably used."
                )
            )
        ablations = part["ablations"]
        spread = ablations["hybrid_seed_std"]
        for row in ablations["rows"]:
            if row["name"] in MAIN_MODELS or row["delta_vs_hybrid"] is None:
                continue
            if spread and len(study["seeds"]) > 1:
                noise = (
                    "within two seed std of the hybrid, so it needs more seeds"
                    if abs(row["delta_vs_hybrid"]) < 2 * spread
                    else "beyond two seed std of the hybrid"
                )
            else:
                noise = "no seed std to compare with yet"
            sentence = (
                f"[{regime}] ablation ({ablations['domain']}, seed {ablations['seed']}): {row['label']}: NLL "
                f"{row['nll']:.3f}, {abs(row['delta_vs_hybrid']):.3f} nats "
                f"{'above' if row['delta_vs_hybrid'] > 0 else 'below'} the hybrid ({noise})"
            )
            gate = (row.get("diagnostics") or {}).get("mel_gate")
            if gate is not None:
                sentence += f"; its gate reads tanh(g) = {gate:+.3f}"
            out.append(sentence + ".")
    if report["pending"]:
        out.append(
            f"{len(report['pending'])} of {report['provenance']['runs_planned']} planned runs are not stored yet "
            "(listed under Pending runs); the tables show the stored ones."
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Writing


def write_report(report: dict[str, Any], docs_dir: str | os.PathLike) -> list[Path]:
    """Write ``results.json``, the figures and ``results.md`` into ``docs_dir`` (each written aside and renamed);
    returns the figure paths."""
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    _replace(docs / "results.json", json.dumps(report, indent=1) + "\n")
    return render_report(docs)


def render_report(docs_dir: str | os.PathLike) -> list[Path]:
    """Re-write ``results.md`` and the figures from ``DOCS_DIR/results.json`` (left as it is); the summary and
    findings are computed again from its runs."""
    docs = Path(docs_dir)
    report = json.loads((docs / "results.json").read_text())
    figures = plot_figures(report, docs / "figures")
    _replace(docs / "results.md", render_markdown(report, [f.relative_to(docs) for f in figures]))
    return figures


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def plot_figures(report: dict[str, Any], folder: Path) -> list[Path]:
    """Validation NLL (codebook 0) against optimizer steps: one figure per regime and domain (every headline model
    and seed) and one per regime for the ablations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"gpt_s": "tab:blue", "gpt_l": "tab:green", "hybrid": "tab:red"}
    paths = []
    summary = summarize(report)

    def save(figure: Any, axis: Any, title: str, name: str) -> None:
        axis.set_xlabel("optimizer steps")
        axis.set_ylabel("validation NLL, codebook 0 (nats)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = folder / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)

    for regime in REGIMES:
        runs = [r for r in report["runs"] if r["regime"] == regime]
        for domain in DOMAINS:
            chosen = [r for r in runs if r["domain"] == domain and r["name"] in MAIN_MODELS and r.get("history")]
            if not chosen:
                continue
            figure, axis = plt.subplots(figsize=(7, 4.2))
            for r in sorted(chosen, key=lambda r: (r["name"], r["seed"])):
                axis.plot(
                    [h["step"] for h in r["history"]],
                    [h["nll"] for h in r["history"]],
                    marker="o",
                    color=colours[r["name"]],
                    alpha=0.8,
                    label=f"{LABEL[r['name']]} seed {r['seed']}",
                )
            save(figure, axis, f"{regime}, {domain}", f"validation_nll_{regime}_{domain}.png")
        rows = summary.get(regime, {}).get("ablations", {}).get("rows", [])
        names = {row["name"] for row in rows}
        d = report["study"]["ablation_domain"]
        seed = report["study"]["seeds"][0]
        chosen = [r for r in runs if r["name"] in names and r["domain"] == d and r["seed"] == seed]
        if chosen:
            figure, axis = plt.subplots(figsize=(7, 4.2))
            for r in sorted(chosen, key=lambda r: r["name"]):
                axis.plot(
                    [h["step"] for h in r["history"]], [h["nll"] for h in r["history"]], marker=".", label=r["name"]
                )
            save(figure, axis, f"{regime}, ablations ({d}, seed {seed})", f"validation_nll_{regime}_ablations.png")
    return paths


def _pm(mean: float, std: float, n: int, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(mean)} ± {fmt.format(std)}" if n > 1 else fmt.format(mean)


def _num(value: float | None, fmt: str = "{:+.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def render_markdown(report: dict[str, Any], figures: list[Path]) -> str:
    """``results.md`` from the report (tables and findings recomputed from its runs)."""
    study, provenance = report["study"], report["provenance"]
    summary = summarize(report)
    lines = [f"# {report['title']}", ""]
    lines += [
        "Written by the run itself from its stored per-run results (`results.json` holds every number). Every model "
        f"trained for {study['steps']} optimizer steps, batch {study['batch_size']} random crops of "
        f"{study['crop_frames']} frames, {study['optimizer']}; the seed sets initialisation and data order, so the "
        "models of one seed saw the same batches. Metrics: codebook-0 next-frame NLL (nats) and accuracy on the "
        "held-out files.",
        "",
        f"- Seeds: GPT-S and hybrid {study['seeds']}, GPT-L {study['large_seeds']}; ablations on "
        f"{study['ablation_domain']}, seed {study['seeds'][0]}.",
        f"- Commands: {'; '.join(f'`{c}`' for c in provenance['commands']) or '-'}",
        f"- Commits: {', '.join(provenance['commits']) or '-'}",
        f"- Machines: {'; '.join(provenance['machines']) or '-'} (torch {', '.join(provenance['torch_versions'])}, "
        f"threads {provenance['threads']})",
        f"- Runs stored: {provenance['runs_stored']} of {provenance['runs_planned']} planned; their wall time "
        f"{provenance['wall_seconds'] / 60:.1f} min in all.",
        "",
        "## Findings (each sentence computed from the numbers)",
        "",
    ]
    lines += [f"- {sentence}" for sentence in findings(report)] or ["- No run is stored yet."]
    for regime, part in summary.items():
        codec = study["codecs"].get(regime, {})
        lines += ["", f"## Codec regime `{regime}`", "", f"Codec: {REGIME_TEXT[regime]}."]
        if codec.get("num_codebooks"):
            lines[-1] += (
                f" {codec['num_codebooks']} codebooks x {codec['codebook_size']} codes, calibrated on "
                f"{codec['settings']['calibration_files']} training files of both domains "
                f"({codec['settings']['encoder_steps']} encoder-fit steps); codebook-0 entropy "
                f"{_num((codec.get('entropy_bits') or [None])[0], '{:.2f}')} bits."
            )
        lines += [
            "",
            f"### Headline table ({regime})",
            "",
            "| domain | model | params | seeds | NLL (mean ± std) | accuracy | PPL of mean NLL | paper NLL "
            "| wall s per run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for domain, models in part["headline"].items():
            for row in models.values():
                n = len(row["seeds"])
                label = row["label"] + (f" (under-trained at {row['steps']} steps)" if row["under_trained"] else "")
                wall = [w for w in row["wall_seconds"] if w is not None]
                lines.append(
                    f"| {domain} | {label} | {row['params'] / 1e6:.2f}M | {n} | "
                    f"{_pm(row['nll_mean'], row['nll_std'], n)} | "
                    f"{_pm(100 * row['accuracy_mean'], 100 * row['accuracy_std'], n, '{:.2f}')}% | "
                    f"{row['ppl_of_mean_nll']:.2f} | {row['paper']['nll']:.2f} | "
                    f"{_num(float(np.mean(wall)) if wall else None, '{:.0f}')} |"
                )
        lines += [
            "",
            f"Paired per-seed difference, hybrid − GPT-S ({regime}; negative: the hybrid is better):",
            "",
            "| domain | seed | GPT-S NLL | hybrid NLL | hybrid − GPT-S | sign |",
            "|---|---|---|---|---|---|",
        ]
        for domain, paired in part["paired"].items():
            for seed, small, hybrid, difference in zip(
                paired["seeds"], paired["gpt_s"], paired["hybrid"], paired["by_seed"], strict=True
            ):
                sign = "hybrid lower" if difference < 0 else "hybrid higher" if difference > 0 else "equal"
                lines.append(f"| {domain} | {seed} | {small:.4f} | {hybrid:.4f} | {difference:+.4f} | {sign} |")
            lines.append(
                f"| {domain} | mean ± std | | | {paired['mean']:+.4f} ± {paired['std']:.4f} | "
                f"hybrid lower in {paired['hybrid_lower']} of {len(paired['seeds'])} |"
            )
        if any(part["paired_by_step"].values()):
            lines += ["", "Paired difference during training (mean over seeds):", ""]
            for domain, steps in part["paired_by_step"].items():
                lines.append(f"- {domain}: " + ", ".join(f"step {s['step']} {s['mean']:+.3f}" for s in steps))
        if any(part["context"].values()):
            lines += [
                "",
                "NLL by position in the context window (mean over the paired seeds):",
                "",
                "| domain | frames of context | GPT-S | hybrid | hybrid − GPT-S |",
                "|---|---|---|---|---|",
            ]
            for domain, rows in part["context"].items():
                for row in rows:
                    lines.append(
                        f"| {domain} | {row['context']} | {_num(row['gpt_s'], '{:.3f}')} | "
                        f"{_num(row['hybrid'], '{:.3f}')} | {_num(row['difference'])} |"
                    )
        if any(part["diagnostics"].values()):
            lines += [
                "",
                "Is the mel path used? (trained hybrids, held-out files; mel gradient norms: the fusion weight's "
                "columns reading the mel stream, averaged over a few training batches)",
                "",
                "| domain | seed | gate tanh(g) | NLL | zero mel (increase) | another clip's mel (increase) | "
                "mel-part grad norm | token-part grad norm |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for domain, rows in part["diagnostics"].items():
                for row in rows:
                    lines.append(
                        f"| {domain} | {row['seed']} | {_num(row['mel_gate'])} | {row['nll']:.4f} | "
                        f"{row['nll_zero_mel']:.4f} ({row['nll_zero_mel_increase']:+.4f}) | "
                        + (
                            f"{row['nll_shuffled_mel']:.4f} ({row['nll_shuffled_mel_increase']:+.4f})"
                            if row.get("nll_shuffled_mel") is not None
                            else "- (one held-out file)"
                        )
                        + f" | {row['mel_part_grad_norm']:.2e} | {_num(row['token_part_grad_norm'], '{:.2e}')} |"
                    )
        for group, title in (("ablations", "Ablations"), ("codebooks", "Codebooks and context length")):
            block = part[group]
            if not block["rows"]:
                continue
            lines += [
                "",
                f"### {title} ({regime}; {block['domain']}, seed {block['seed']}; one run each)",
                "",
                f"Seed std of the hybrid on {block['domain']}: {_num(block['hybrid_seed_std'], '{:.3f}')} nats; "
                "differences within two of it need more seeds.",
                "",
                "| variant | params | NLL cb0 | Δ vs hybrid | Δ vs GPT-S | accuracy | gate | zero-mel increase | "
                "mean NLL all codebooks | train frames/s | peak step memory |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for row in block["rows"]:
                diagnostics = row.get("diagnostics") or {}
                memory = row.get("memory")
                lines.append(
                    f"| {row['label']} | {row['params'] / 1e6:.2f}M | {row['nll']:.4f} | "
                    f"{_num(row['delta_vs_hybrid'])} | {_num(row['delta_vs_gpt_s'])} | {100 * row['accuracy']:.2f}% | "
                    f"{_num(diagnostics.get('mel_gate'))} | {_num(diagnostics.get('nll_zero_mel_increase'))} | "
                    f"{_num(row['nll_all_codebooks'], '{:.3f}')} | {_num(row['train_frames_per_second'], '{:.0f}')} | "
                    + (f"+{memory['step_increase_mib']:.0f} MiB" if memory else "-")
                    + " |"
                )
        shown = [f for f in figures if f.stem.startswith(f"validation_nll_{regime}_")]
        if shown:
            lines += ["", "Validation NLL against steps:", ""] + [f"![{f.stem}]({f.as_posix()})" for f in shown]
    if report["pending"]:
        lines += [
            "",
            "## Pending runs",
            "",
            "Planned but not stored yet (a rerun of the same settings trains them):",
            "",
        ]
        for row in report["pending"]:
            lines.append(
                f"- {row['regime']} {row['domain']} {row['name']} seed {row['seed']} ({', '.join(row['groups'])})"
            )
    corpora = study.get("corpora", {})
    if corpora:
        lines += [
            "",
            "## Data",
            "",
            f"Held-out files scored: up to {study['validation_seconds']:g} s per domain (whole files, manifest order).",
            "",
            "| domain | train files | train s | held-out files | held-out s | sources (s) |",
            "|---|---|---|---|---|---|",
        ]
        for domain, c in corpora.items():
            lines.append(
                f"| {domain} | {c['files']['train']} | {c['seconds']['train']:.0f} | {c['files']['validation']} | "
                f"{c['seconds']['validation']:.0f} | {c['seconds_by_source']} |"
            )
    return "\n".join(lines) + "\n"


__all__ = ["build_report", "findings", "plot_figures", "render_markdown", "render_report", "summarize", "write_report"]
