"""The reproduction study end to end at a tiny budget: structure of the report, not its numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from audio_folder import write_audio_folder
from conftest import TINY_CODEBOOK_SIZE, TINY_MEL_BINS

from whisper_gpt import WhisperGPTForCausalLM
from whisper_gpt.apps.reproduce import (
    CODEC_CODEBOOKS,
    FlattenedCodebooks,
    ReproductionConfig,
    RunSpec,
    _flatten_batch,
    _training_config,
    add_arguments,
    config_from_args,
    main,
    paper_numbers,
    plan_runs,
    run_reproduction,
)
from whisper_gpt.configuration_whisper_gpt import PAPER_RESULTS, WhisperGPTConfig

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


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    for domain, seed in (("speech", 0), ("music", 100)):
        write_audio_folder(root / domain, seed=seed)
    config = ReproductionConfig(
        budget_minutes=0.5,
        output_dir=str(root / "out"),
        docs_dir=str(root / "docs"),
        speech_dir=str(root / "speech"),
        music_dir=str(root / "music"),
        batch_size=2,
        max_frames=16,
        max_steps=2,
        eval_points=2,
        validation_seconds=5.0,
        codebook_size=TINY_CODEBOOK_SIZE,
        num_mel_bins=TINY_MEL_BINS,
        calibration_seconds=30.0,
        calibration_frames=1000,
        calibration_iterations=2,
        timing_steps=1,
        measure_memory=False,
        model_overrides={"all": TINY, "gpt_l": {"hidden_size": 24, "num_hidden_layers": 2}},
        command="pytest",
    )
    return run_reproduction(config), root


def test_report_structure_and_ranges(report):
    result, root = report
    written = json.loads((root / "docs" / "results.json").read_text())
    assert written["speech"]["gpt_s"]["params"] == result["speech"]["gpt_s"]["params"]
    for domain in ("speech", "music"):
        for model in ("gpt_s", "gpt_l", "hybrid"):
            row = written[domain][model]
            assert isinstance(row["params"], int) and row["params"] > 0
            assert isinstance(row["nll"], float) and 0 < row["nll"] < 20
            assert 0.0 <= row["accuracy"] <= 1.0
            assert math.isclose(row["ppl"], math.exp(row["nll"]), rel_tol=1e-6)
            assert row["nll_std"] >= 0 and len(row["nll_by_seed"]) == len(row["seeds"])
            preset = {"gpt_s": "paper_gpt_s", "gpt_l": "paper_gpt_l", "hybrid": "paper_hybrid"}[model]
            assert row["paper"] == paper_numbers(domain, model)
            assert row["paper"]["ppl"] == PAPER_RESULTS[preset][domain]["perplexity"]
            assert all(len(history) == 2 for history in row["history"].values())
        assert written[domain]["gpt_l"]["params"] > written[domain]["gpt_s"]["params"]
        assert written[domain]["hybrid"]["params"] > written[domain]["gpt_s"]["params"]
    assert len(written["speech"]["gpt_s"]["seeds"]) >= 2
    names = {row["name"] for row in written["ablations"]}
    assert any("centered" in name for name in names) and any("flattened" in name for name in names)
    for row in written["ablations"]:
        assert isinstance(row["name"], str) and row["domain"] in ("speech", "music")
        assert isinstance(row["nll"], float) and 0 < row["nll"] < 20 and 0 <= row["accuracy"] <= 1
        assert len(row["per_codebook_nll"]) == row["num_codebooks"]
        assert row["train_tokens_per_second"] > 0
    flat = next(row for row in written["ablations"] if "flattened" in row["name"])
    assert flat["num_codebooks"] == CODEC_CODEBOOKS and flat["sequence_length"] == 8 * 16
    assert written["budget"]["steps_per_run"] == 2 and written["budget"]["budget_minutes"] == 0.5
    assert written["budget"]["torch_threads"] == 1
    assert written["codec"]["num_codebooks"] >= CODEC_CODEBOOKS  # 6 kbps: 8 codebooks of 1024, more of 64
    assert written["codec"]["codebook_size"] == TINY_CODEBOOK_SIZE
    assert written["corpora"]["speech"]["files"]["validation"] >= 1


def test_markdown_and_figures(report):
    _, root = report
    text = (root / "docs" / "results.md").read_text()
    assert "pytest" in text and "| speech | token-only GPT-S |" in text and "Ablations" in text
    for name in ("validation_loss_speech.png", "validation_loss_music.png", "validation_loss_ablations.png"):
        assert (root / "docs" / "figures" / name).stat().st_size > 1000
    # The report re-renders from results.json alone (which it leaves untouched), to the same text.
    numbers = (root / "docs" / "results.json").read_text()
    (root / "docs" / "results.md").unlink()
    main(["--render-only", "--docs-dir", str(root / "docs")])
    assert (root / "docs" / "results.md").read_text() == text
    assert (root / "docs" / "results.json").read_text() == numbers


def test_second_run_reuses_codec_and_encoded_data(report, tmp_path):
    result, root = report
    assert result["codec"]["calibration"]["reused"] is False
    cached = sorted((root / "out" / "cache").glob("encoded-*.npz"))
    assert cached  # the encoded data is cached for a rerun


def test_every_run_goes_through_the_training_loop(report):
    result, root = report
    for key, run in result["runs"].items():
        domain, name, seed = key.split("/")
        folder = root / "out" / "logs" / f"{domain}-{name}-{seed}"
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "validation" in r] == [1, 2]  # eval_points=2 of 2 steps
        assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
        last = next(r for r in reversed(records) if "validation" in r)["validation"]
        assert last["codebook_0"]["nll"] == pytest.approx(run["nll"])
        assert not (folder / "final").exists() and not (folder / "checkpoints").exists()


def test_runs_of_a_comparison_share_steps_data_order_and_schedule(tmp_path):
    config = ReproductionConfig(max_steps=40, eval_points=4)
    specs = [
        RunSpec("gpt_s", "speech", "gpt_s", 1),
        RunSpec("hybrid", "speech", "hybrid", 1),
        RunSpec("flat8_gpt_s", "speech", "gpt_s", 1, flat=True),
    ]
    settings = [vars(_training_config(spec, config, 40, tmp_path)) for spec in specs]
    model_fields = {"preset", "model_overrides"}
    for other in settings[1:]:
        assert {k: v for k, v in other.items() if k not in model_fields} == {
            k: v for k, v in settings[0].items() if k not in model_fields
        }
    first = settings[0]
    assert first["max_steps"] == 40 and first["seed"] == 1 and first["eval_every"] == 10 and first["warmup_steps"] == 2
    assert not first["save_final"] and first["save_every"] == 0
    assert settings[2]["preset"] == "custom" and settings[2]["model_overrides"] == {}  # given as a ready model


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


def test_plan_and_cli_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--budget-minutes", "7"]))
    assert config.budget_minutes == 7 and config.seeds == (0, 1)
    main, ablations = plan_runs(config)
    assert sum(spec.model == "gpt_l" for spec in main) == 2 and len(main) == 10
    assert {spec.domain for spec in ablations} == {config.ablation_domain}
