"""`make demo`'s job on a small budget: it trains, compares ERM with MME-JD on cue-conflicting
rows, reloads the checkpoint in a fresh process and runs the pipeline."""

from __future__ import annotations

import json

import pytest

from mme_jd.demo import run_demo


@pytest.mark.slow
def test_demo_trains_compares_reloads_and_runs_the_pipeline(tmp_path, capsys):
    summary = run_demo(tmp_path, num_samples=4, num_train=320, num_test=160, num_validation_balanced=80, epochs=1)
    printed = capsys.readouterr().out
    assert summary["reload_identical"] is True
    assert set(summary["test_balanced"]) == {"ERM", "MME-JD"}
    for figures in summary["test_balanced"].values():
        assert 0.0 <= figures["worst_group_accuracy"] <= figures["accuracy"] <= 1.0
    assert 0 < summary["cue_conflicting_rows"] < 160
    assert 1 <= len(summary["examples"]) <= 4 and len(summary["pipeline"]) == min(3, len(summary["examples"]))
    assert summary["stage_seconds"].keys() >= {"general", "image_debias", "text_debias", "router"}
    assert json.loads((tmp_path / "demo_summary.json").read_text())["seconds"] == summary["seconds"]
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "logits identical = True"):
        assert step in printed


def test_unknown_demo_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo settings"):
        run_demo(tmp_path, num_rows=10)
