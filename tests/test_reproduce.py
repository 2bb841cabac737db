"""The reproduction study at tiny settings: stored per-run results, resumption, selection, both codec regimes, the
same batches for every model of a seed, mel-path diagnostics, and a report whose findings follow the numbers."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_folder import write_audio_folder
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS

from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.apps import reproduce
from whisper_gpt.apps.reproduce import (
    CODEC_CODEBOOKS,
    FlattenedCodebooks,
    ReproductionConfig,
    RunSpec,
    _flatten_batch,
    _seeded_model,
    _training_config,
    add_arguments,
    config_from_args,
    mel_path_diagnostics,
    plan_runs,
    plan_study,
    run_reproduction,
)
from whisper_gpt.apps.reproduce_report import build_report, findings, render_markdown, render_report
from whisper_gpt.configuration_whisper_gpt import WhisperGPTConfig
from whisper_gpt.training.evaluation import evaluate_model
from whisper_gpt.training.loop import train

TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "spectrogram_hidden_size": 8,
    "spectrogram_num_heads": 2,
    "depth_hidden_size": 8,
    "depth_num_heads": 2,
    "depth_num_layers": 1,
    "depth_intermediate_size": 16,
}


def tiny_config(root, **changes) -> ReproductionConfig:
    config = ReproductionConfig(
        output_dir=str(root / "out"),
        docs_dir=str(root / "docs"),
        speech_dir=str(root / "speech"),
        music_dir=str(root / "music"),
        seeds=(0, 1),
        steps=2,
        warmup_steps=1,
        batch_size=2,
        max_frames=16,
        eval_points=2,
        codebook_size=TINY_CODEBOOK_SIZE,
        num_mel_bins=TINY_MEL_BINS,
        ablation_mel_bins=8,
        calibration_seconds=30.0,
        calibration_frames=1000,
        calibration_iterations=2,
        fitted_encoder_steps=2,
        diagnostic_batches=2,
        timing_steps=1,
        measure_memory=False,
        model_overrides={"all": TINY, "gpt_l": {"hidden_size": 24, "num_hidden_layers": 2}},
        regimes=("random_kmeans",),
        command="pytest",
    )
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    for domain, seed in (("speech", 0), ("music", 100)):
        write_audio_folder(root / domain, seed=seed)
    config = tiny_config(root)
    report = run_reproduction(config)
    return config, report, root


def stored_files(root, regime="random_kmeans"):
    return sorted((root / "out" / "runs" / regime).glob("*.json"))


def test_every_run_is_stored_as_it_finishes_with_its_regime_and_the_same_steps(study):
    config, report, root = study
    files = stored_files(root)
    # headline: 2 domains x (2 GPT-S + 2 hybrid + 1 GPT-L); ablations: 6 more on the ablation domain
    assert len(files) == 2 * 5 + 6
    results = [json.loads(f.read_text()) for f in files]
    assert {r["regime"] for r in results} == {"random_kmeans"}
    assert {r["steps"] for r in results} == {config.steps}
    assert {json.dumps(r["settings"]["training"], sort_keys=True) for r in results} == {
        json.dumps(results[0]["settings"]["training"], sort_keys=True)
    }
    for result, path in zip(results, files, strict=True):
        assert path.name.startswith(f"{result['domain']}-{result['name']}-seed{result['seed']}-")
        assert [h["step"] for h in result["history"]] == [1, 2]
        assert result["wall_seconds"] > 0 and 0 < result["nll"] < 20
        assert result["settings"]["codec"]["encoder_steps"] == 0
        reads_mel = result["model"] == "hybrid"
        assert (result["diagnostics"] is not None) == reads_mel
    gated = next(r for r in results if r["name"] == "hybrid_mel_gate")
    assert gated["diagnostics"]["mel_gate"] is not None
    plain = next(r for r in results if r["name"] == "hybrid")
    assert plain["diagnostics"]["mel_gate"] is None
    assert plain["diagnostics"]["mel_part_grad_norm"] > 0
    bins = next(r for r in results if r["name"] == "hybrid_mel_bins_8")
    assert bins["settings"]["mel"] == {"source": "causal", "bins": 8}
    # the report names the regime of every table and lists the other regime's runs as pending
    text = (root / "docs" / "results.md").read_text()
    assert "## Codec regime `random_kmeans`" in text and "fitted_encoder" in text
    assert "under-trained at 2 steps" in text
    pending = {(row["regime"], row["name"]) for row in report["pending"]}
    assert {name for regime, name in pending if regime == "random_kmeans"} == {"hybrid_k8", "gpt_s_k8", "flat8_gpt_s"}
    assert any(regime == "fitted_encoder" for regime, _ in pending)
    assert (root / "docs" / "figures" / "validation_nll_random_kmeans_speech.png").stat().st_size > 1000


def test_a_rerun_skips_stored_runs_and_a_missing_one_trains_again(study, monkeypatch):
    config, _, root = study
    files = stored_files(root)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    calls = []
    original = reproduce._train_run
    monkeypatch.setattr(
        reproduce, "_train_run", lambda spec, *a, **k: calls.append(spec.key) or original(spec, *a, **k)
    )
    run_reproduction(config)
    assert calls == [] and {f: f.stat().st_mtime_ns for f in files} == mtimes
    removed = next(f for f in files if f.name.startswith("music-hybrid-seed1-"))
    removed.unlink()
    run_reproduction(config)
    assert calls == ["music/hybrid/seed1"] and removed.is_file()
    assert {f: f.stat().st_mtime_ns for f in files if f != removed} == {f: m for f, m in mtimes.items() if f != removed}


def test_a_changed_setting_is_a_new_run_and_selection_trains_a_subset(study, monkeypatch):
    config, _, root = study
    before = set(stored_files(root))
    calls = []
    original = reproduce._train_run
    monkeypatch.setattr(
        reproduce, "_train_run", lambda spec, *a, **k: calls.append(spec.key) or original(spec, *a, **k)
    )
    changed = dataclasses.replace(
        config, steps=3, groups=("headline",), domains=("speech",), models=("gpt_s",), docs_dir=str(root / "docs3")
    )
    report = run_reproduction(changed)
    assert calls == ["speech/gpt_s/seed0", "speech/gpt_s/seed1"]
    new = set(stored_files(root)) - before
    assert len(new) == 2 and before <= set(stored_files(root))  # the 2-step results stay, under their own IDs
    assert {json.loads(f.read_text())["steps"] for f in new} == {3}
    assert len(report["runs"]) == 2  # the report of the 3-step study holds only 3-step runs


def test_estimate_only_times_and_trains_nothing(study, capsys):
    config, _, root = study
    before = set(stored_files(root))
    changed = dataclasses.replace(config, steps=5, groups=("headline",), domains=("music",), models=("gpt_l",))
    result = run_reproduction(changed, estimate_only=True)
    assert result["to_train"] == 1 and result["estimate"]["total_seconds"] > 0
    assert "1 runs to train (5 steps each), estimated" in capsys.readouterr().out
    assert set(stored_files(root)) == before


def test_fitted_encoder_regime_is_its_own_codec_and_labelled(study):
    config, _, root = study
    fitted = dataclasses.replace(
        config,
        regimes=("fitted_encoder",),
        groups=("headline",),
        domains=("speech",),
        models=("gpt_s", "hybrid"),
        seeds=(0,),
        docs_dir=str(root / "docs_fitted"),
    )
    report = run_reproduction(fitted)
    results = [json.loads(f.read_text()) for f in stored_files(root, "fitted_encoder")]
    assert sorted(r["name"] for r in results) == ["gpt_s", "hybrid"]
    assert {r["settings"]["codec"]["encoder_steps"] for r in results} == {2}
    # seed 0's random_kmeans runs have the same settings as before, so this smaller study's report reuses them
    assert {r["regime"] for r in report["runs"]} == {"fitted_encoder", "random_kmeans"}
    codecs = sorted(p.name for p in (root / "out" / "codecs").iterdir())
    assert [name.split("-")[0] for name in codecs] == ["fitted_encoder", "random_kmeans"]
    text = (root / "docs_fitted" / "results.md").read_text()
    assert "## Codec regime `fitted_encoder`" in text and "## Codec regime `random_kmeans`" in text


def test_the_report_re_renders_from_its_json(study):
    _, _, root = study
    docs = root / "docs"
    text, numbers = (docs / "results.md").read_text(), (docs / "results.json").read_text()
    (docs / "results.md").unlink()
    render_report(docs)
    assert (docs / "results.md").read_text() == text and (docs / "results.json").read_text() == numbers


def test_the_committed_report_is_what_its_json_renders_to(tmp_path):
    # docs/results.md (findings included) must follow from docs/results.json alone, as the study wrote them.
    docs = Path(__file__).resolve().parent.parent / "docs"
    shutil.copy(docs / "results.json", tmp_path / "results.json")
    figures = render_report(tmp_path)
    assert (tmp_path / "results.md").read_text() == (docs / "results.md").read_text()
    assert sorted(f.name for f in figures) == sorted(f.name for f in (docs / "figures").glob("validation_nll_*.png"))


def synthetic_report(gpt_s, hybrid, gpt_l):
    """A report from hand-made per-seed NLLs (speech, random_kmeans) with curves and context profiles."""

    def run(name, seed, nll, early):
        return {
            "regime": "random_kmeans",
            "domain": "speech",
            "name": name,
            "model": name,
            "seed": seed,
            "groups": ["headline"],
            "nll": nll,
            "accuracy": 0.1,
            "params": 1000,
            "steps": 10,
            "epochs": 1.0,
            "wall_seconds": 1.0,
            "history": [{"step": 5, "nll": early}, {"step": 10, "nll": nll}],
            "nll_by_context": [nll + 0.5, nll],
            "tokens_by_context": [10, 10],
        }

    runs = [run("gpt_s", s, v, v + 1) for s, v in enumerate(gpt_s)]
    runs += [run("hybrid", s, v, v + 1) for s, v in enumerate(hybrid)]
    runs += [run("gpt_l", 0, gpt_l, gpt_l + 1)]
    study = {
        "seeds": [0, 1, 2],
        "large_seeds": [0],
        "ablation_domain": "speech",
        "steps": 10,
        "batch_size": 16,
        "crop_frames": 256,
        "optimizer": "AdamW",
        "validation_seconds": 100.0,
        "codecs": {},
        "corpora": {},
    }
    plan = [{k: r[k] for k in ("regime", "domain", "name", "model", "seed", "groups")} for r in runs]
    return build_report(runs, plan, study)


def test_findings_follow_the_numbers():
    better = synthetic_report([5.0, 5.1, 5.2], [4.9, 5.0, 5.0], 5.3)
    text = render_markdown(better, [])
    assert "the hybrid is lower in 3 of 3 seeds: every seed agrees: the hybrid is better" in text
    assert "| speech | 2 | 5.2000 | 5.0000 | -0.2000 | hybrid lower |" in text
    assert "GPT-L (1 seed, 10 steps, under-trained at this budget) is 0.200 nats above" in text
    assert "token-only GPT-L (under-trained at 10 steps)" in text
    flipped = copy.deepcopy(better)
    hybrid_seed2 = next(r for r in flipped["runs"] if r["name"] == "hybrid" and r["seed"] == 2)
    hybrid_seed2["nll"] = 5.4  # now above GPT-S in seed 2
    text = render_markdown(flipped, [])
    assert "the hybrid is lower in 2 of 3 seeds: the seeds disagree" in text
    assert "| speech | 2 | 5.2000 | 5.4000 | +0.2000 | hybrid higher |" in text
    worse = synthetic_report([5.0, 5.1, 5.2], [5.1, 5.2, 5.3], 4.9)
    sentences = findings(worse)
    assert any("lower in 0 of 3 seeds: every seed agrees: the hybrid is worse" in s for s in sentences)
    assert any("is 0.200 nats below GPT-S's mean" in s for s in sentences)
    # early vs late: the hybrid's advantage grows when its late difference is larger than its early one
    growing = synthetic_report([5.0, 5.1, 5.2], [4.9, 5.0, 5.0], 5.3)
    for r in growing["runs"]:
        if r["name"] == "hybrid":
            r["history"][0]["nll"] = r["history"][0]["nll"] + 0.5  # worse than GPT-S early on
    assert any("advantage (GPT-S − hybrid, mean over seeds) grows during training" in s for s in findings(growing))


def test_same_batches_for_every_model_of_a_seed(study, tmp_path):
    config = study[0]
    from whisper_gpt.apps.reproduce import REGIMES, _RegimeData

    _, codecs = plan_study(config)
    data = _RegimeData(config, codecs[REGIMES[0]])
    seen = {}
    for name, model, seed in (
        ("gpt_s", "gpt_s", 0),
        ("hybrid", "hybrid", 0),
        ("gpt_l", "gpt_l", 0),
        ("gpt_s", "gpt_s", 1),
    ):
        spec = RunSpec(name, "speech", model, seed)
        processor, train_set, validation = data.get(spec)
        lm = _seeded_model(spec, config)
        batches = []
        lm.register_forward_pre_hook(
            lambda module, args, kwargs, seen=batches: (
                seen.append(kwargs["input_ids"].clone()) if module.training else None
            ),
            with_kwargs=True,
        )
        validation_set = reproduce._dataset(validation["codes"], validation[("causal", config.num_mel_bins)])
        summary = train(
            _training_config(spec, config, tmp_path / f"{name}{seed}"),
            model=lm,
            processor=processor,
            train_dataset=train_set,
            validation_dataset=validation_set,
        )
        # train() trained this very object, which the diagnostics then read
        final = evaluate_model(lm, validation_set, window=config.max_frames, progress=False)
        assert final["codebook_0"]["nll"] == pytest.approx(summary["validation"]["codebook_0"]["nll"])
        seen[(name, seed)] = batches
    assert len(seen[("gpt_s", 0)]) == config.steps
    for other in (("hybrid", 0), ("gpt_l", 0)):
        assert all(torch.equal(a, b) for a, b in zip(seen[("gpt_s", 0)], seen[other], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(seen[("gpt_s", 0)], seen[("gpt_s", 1)], strict=True))
    first, again = (
        _seeded_model(RunSpec("gpt_s", "speech", "gpt_s", 3), config),
        _seeded_model(RunSpec("gpt_s", "speech", "gpt_s", 3), config),
    )
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True))


def test_mel_path_diagnostics_see_a_closed_gate_and_an_open_path(study):
    config = study[0]
    from whisper_gpt.apps.reproduce import REGIMES, _RegimeData

    _, codecs = plan_study(config)
    data = _RegimeData(config, codecs[REGIMES[0]])
    spec = RunSpec("hybrid", "speech", "hybrid", 0)
    _, train_set, validation = data.get(spec)
    codes, mels = validation["codes"], validation[("causal", config.num_mel_bins)]
    gated = _seeded_model(RunSpec("g", "speech", "hybrid", 0, {"mel_gate": True}), config)  # gate starts at 0
    nll = evaluate_model(gated, reproduce._dataset(codes, mels), window=config.max_frames)["codebook_0"]["nll"]
    closed = mel_path_diagnostics(gated, codes, mels, train_set, config, 0, nll)
    assert closed["mel_gate"] == 0.0
    assert closed["nll_zero_mel_increase"] == pytest.approx(0.0, abs=1e-6)
    assert closed["mel_part_grad_norm"] == 0.0 and closed["gate_grad"] != 0.0
    open_ = _seeded_model(spec, config)
    with torch.no_grad():
        open_.model.fusion.weight[:, open_.config.hidden_size :] *= 100  # make the mel part matter
    nll = evaluate_model(open_, reproduce._dataset(codes, mels), window=config.max_frames)["codebook_0"]["nll"]
    used = mel_path_diagnostics(open_, codes, mels, train_set, config, 0, nll)
    assert used["mel_gate"] is None and abs(used["nll_zero_mel_increase"]) > 1e-4
    assert used["mel_part_grad_norm"] > 0 and used["token_part_grad_norm"] > 0
    if len(mels) > 1:
        assert abs(used["nll_shuffled_mel_increase"]) > 1e-4


def test_cli_defaults_and_refusals(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args([]))
    assert (config.steps, config.warmup_steps, config.batch_size, config.max_frames) == (400, 50, 16, 256)
    assert config.seeds == (0, 1, 2) and config.regimes == ("random_kmeans", "fitted_encoder")
    assert config.groups == ("headline", "ablations")
    runs = plan_runs(config)
    headline = [r for r in runs if r.groups[0] == "headline"]
    assert len(headline) == 2 * (3 + 3 + 1) and sum("ablations" in r.groups for r in runs) == 6 + 2
    assert sum("codebooks" in r.groups for r in runs) == 3 + 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--budget-minutes", "50"])
    assert "--budget-minutes is gone" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--warmup-steps smaller"):
        run_reproduction(dataclasses.replace(config, steps=10, warmup_steps=10))
    with pytest.raises(ValueError, match="regimes"):
        run_reproduction(dataclasses.replace(config, regimes=("pretrained",)))


def test_training_settings_are_identical_for_every_model(tmp_path):
    config = ReproductionConfig(steps=40, eval_points=4)
    specs = [RunSpec(m, "speech", m, 1) for m in ("gpt_s", "gpt_l", "hybrid")]
    specs += [
        RunSpec("hybrid_sum_fusion", "speech", "hybrid", 1, {"fusion": "sum"}),
        RunSpec("f", "speech", "gpt_s", 1, flat=True),
    ]
    settings = [vars(_training_config(spec, config, tmp_path)) for spec in specs]
    assert all(s == settings[0] for s in settings[1:])
    first = settings[0]
    assert first["max_steps"] == 40 and first["warmup_steps"] == config.warmup_steps == 50
    assert first["seed"] == 1 and first["eval_every"] == 10 and first["batch_size"] == 16 and first["max_frames"] == 256
    assert not first["save_final"] and first["save_every"] == 0


def test_flattened_model_scores_each_code_over_its_codebook():
    size, frames = 5, 3
    lm = WhisperGPTForCausalLM(
        WhisperGPTConfig.paper_gpt_s(
            codebook_size=CODEC_CODEBOOKS * size,
            max_position_embeddings=CODEC_CODEBOOKS * frames,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    model = FlattenedCodebooks(lm, frames)
    assert model.config.num_codebooks == CODEC_CODEBOOKS and model.config.codebook_size == size
    assert model.config.max_position_embeddings == frames and not model.config.trains_on_mel_frames
    codes = torch.randint(0, size, (2, CODEC_CODEBOOKS, frames), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, frames, dtype=torch.long)
    flat = _flatten_batch({"input_ids": codes, "attention_mask": mask, "labels": codes}, size)
    with torch.no_grad():
        token_logits = lm(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"]).logits[:, 0]
        logits = model(input_ids=codes, attention_mask=mask).logits
        loss = model(input_ids=codes, attention_mask=mask, labels=codes).loss
        expected_loss = lm(**flat).loss
    assert logits.shape == (2, CODEC_CODEBOOKS, frames, size)
    for c in range(CODEC_CODEBOOKS):
        for t in range(frames - 1):  # frame t + 1's code c, predicted by the token before it, over codebook c
            torch.testing.assert_close(logits[:, c, t], token_logits[:, 8 * t + 7 + c, c * size : (c + 1) * size])
    torch.testing.assert_close(loss, expected_loss)
    with pytest.raises(ValueError, match="8 codebooks side by side"):
        FlattenedCodebooks(WhisperGPTForCausalLM(WhisperGPTConfig.paper_gpt_s(codebook_size=12, hidden_size=16)), 3)


def test_flatten_batch_interleaves_codebooks():
    codes = torch.arange(2 * 8 * 3).reshape(2, 8, 3) % 5
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    labels = codes.masked_fill(mask[:, None] == 0, -100)
    flat = _flatten_batch({"input_ids": codes, "attention_mask": mask, "labels": labels}, codebook_size=5)
    assert flat["input_ids"].shape == (2, 1, 24)
    # frame 1 of row 0, codebook 3 sits at position 1 * 8 + 3 and carries the offset 3 * 5
    assert flat["input_ids"][0, 0, 11] == codes[0, 3, 1] + 15
    assert flat["attention_mask"][0].tolist() == [1] * 16 + [0] * 8
    assert (flat["labels"][0, 0, 16:] == -100).all()
    assert np.array_equal(flat["labels"][1, 0].numpy() >= 0, np.ones(24, dtype=bool))


def test_render_only_reports_the_stored_runs_of_the_given_settings(study, tmp_path):
    config = study[0]
    common = ["--output-dir", config.output_dir, "--speech-dir", config.speech_dir, "--music-dir", config.music_dir]
    tiny = [
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--batch-size",
        "2",
        "--max-frames",
        "16",
        "--eval-points",
        "2",
        "--seeds",
        "0",
        "1",
    ]
    # the CLI cannot set the tiny models and codec, so these settings match no stored run: all are pending
    report = reproduce.main(["--render-only", "--docs-dir", str(tmp_path / "docs"), *common, *tiny])
    assert report["runs"] == [] and len(report["pending"]) == len(plan_study(config)[0])
    planned = len(report["pending"])
    assert f"{planned} of {planned} planned runs are not stored yet" in (tmp_path / "docs" / "results.md").read_text()
    with pytest.raises(ValueError, match="No speech corpus at"):
        reproduce.main(["--render-only", "--output-dir", str(tmp_path / "empty"), "--docs-dir", str(tmp_path)])


def test_an_earlier_report_restores_its_runs_of_the_same_settings_only(study, tmp_path, monkeypatch, caplog):
    config, _, root = study
    earlier = json.loads((root / "docs" / "results.json").read_text())
    assert earlier["runs"] and all("id" in row for row in earlier["runs"])
    changed = copy.deepcopy(earlier)
    changed["runs"][0]["id"] = "0123456789"  # a run of other settings under the same name
    (tmp_path / "results.json").write_text(json.dumps(changed))
    monkeypatch.setattr(reproduce, "_train_run", lambda *a, **k: pytest.fail("an imported run trained"))
    fresh = dataclasses.replace(
        config,
        output_dir=str(tmp_path / "out"),
        docs_dir=str(tmp_path / "docs"),
        groups=("headline", "ablations"),
        import_report=str(tmp_path / "results.json"),
    )
    with caplog.at_level("WARNING"):
        with pytest.raises(pytest.fail.Exception, match="an imported run trained"):
            run_reproduction(fresh)
    assert f"{changed['runs'][0]['regime']} {changed['runs'][0]['domain']}/" in caplog.text
    restored = [json.loads(f.read_text()) for f in stored_files(tmp_path)]
    assert len(restored) == len(earlier["runs"]) - 1
    originals = {(r["domain"], r["name"], r["seed"]): r for r in earlier["runs"]}
    for result in restored:
        original = originals[(result["domain"], result["name"], result["seed"])]
        assert result["imported_from"] == str(tmp_path / "results.json")
        assert {k: v for k, v in result.items() if k not in ("settings", "imported_from")} == original
    # with the odd row left out, everything is stored: nothing trains and the report holds the earlier runs
    report = run_reproduction(dataclasses.replace(fresh, import_report=str(root / "docs" / "results.json")))
    assert len(report["runs"]) == len(earlier["runs"])
    with pytest.raises(ValueError, match="is not a file"):
        run_reproduction(dataclasses.replace(fresh, import_report=str(tmp_path / "missing.json")))


def test_a_report_without_run_ids_is_the_same_study_only_with_the_same_settings_and_corpora(study):
    earlier = json.loads((study[2] / "docs" / "results.json").read_text())["study"]
    current = copy.deepcopy(earlier)
    for info in current["corpora"].values():
        info["dir"] = "/elsewhere"
    assert reproduce._same_study(earlier, current, "random_kmeans")
    for change in (
        lambda s: s.update(steps=s["steps"] + 1),
        lambda s: s["corpora"]["music"]["files"].update(train=0),
        lambda s: s["codecs"]["random_kmeans"]["settings"].update(calibration_audio="another"),
    ):
        other = copy.deepcopy(current)
        change(other)
        assert not reproduce._same_study(earlier, other, "random_kmeans")
