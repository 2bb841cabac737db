"""The whisper-gpt command."""

from __future__ import annotations

import json

from whisper_gpt.cli import main


def test_presets_prints_parameter_counts_as_json(capsys) -> None:
    main(["presets", "--json"])
    rows = {row["preset"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"paper_gpt_s", "paper_hybrid", "paper_gpt_l"}
    assert rows["paper_gpt_s"]["params"] < rows["paper_hybrid"]["params"] < rows["paper_gpt_l"]["params"]
    assert all(abs(row["relative_difference"]) < 0.15 for row in rows.values())
