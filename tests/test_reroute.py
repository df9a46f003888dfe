"""`mme-jd reroute`: a trained model's routing chosen again under other selection rules, the
base and the experts untouched, saved to another folder; `saved_training_config` brings back
the rules (and declared cues) the model was trained with."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

import mme_jd  # noqa: F401  (registers the model type)


def _digests(folder) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))
            if (folder / name).is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny mme_jd model trained a few steps with a declared cue, and its folder's digests."""
    from mme_jd.cli import main

    run = tmp_path_factory.mktemp("reroute") / "run"
    assert main(["train", "--output-dir", str(run), "--recipe", "mme_jd", "--num-train", "64", "--max-steps", "4",
                 "--batch-size", "16", "--cue", "irony=#irony", "--router-cost-tolerance", "0.05"]) == 0
    return run / "final"


def test_the_saved_training_config_comes_back_with_its_cues(trained, tmp_path):
    from mme_jd.cues import Cue
    from mme_jd.training import saved_training_config

    config = saved_training_config(trained)
    assert config.router_cost_tolerance == 0.05 and config.recipe == "mme_jd"
    assert config.cues == [Cue(name="irony", pattern="#irony")]
    assert saved_training_config(tmp_path) is None  # no training report
    (tmp_path / "training_report.json").write_text(json.dumps({"settings": {"cues": [{"name": "x", "image": 3}]}}))
    with pytest.raises(ValueError, match="declare the cues again"):
        saved_training_config(tmp_path)


def test_reroute_chooses_again_under_a_budget_and_saves_elsewhere(trained, tmp_path, capsys):
    from mme_jd.cli import main

    kept = _digests(trained)
    output = tmp_path / "rerouted"
    assert main(["reroute", str(trained), "--rows", "100", "--max-accuracy-drop", "0", "--cost-tolerance", "0",
                 "--output-dir", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "before: threshold" in printed and f"saved to {output}" in printed
    assert _digests(trained) == kept  # the model the user saved is as it was
    report = json.loads((output / "reroute_report.json").read_text())
    stage = report["router_stage"]
    assert report["settings"] == {"router_split": "validation_balanced", "selection_max_accuracy_drop": 0.0,
                                  "router_cost_tolerance": 0.0, "router_max_routed_share": None}
    assert report["cues"] == ["irony"] and stage["selection_groups"]["column"] == "cue_group"
    # a budget of 0: the routing kept is at least as accurate as the general expert on the split
    assert stage["validation_accuracy"] >= stage["validation_general_accuracy"] - 1e-9
    assert report["split"] == "validation_balanced" and report["rows"] > 0
    # the saved model routes with the new threshold, read back in a fresh process
    code = ("import json, sys, mme_jd; from transformers import AutoModel; "
            "m = AutoModel.from_pretrained(sys.argv[1]); "
            "print(json.dumps([m.config.router_threshold, m.config.routed_strategy]))")
    loaded = subprocess.run([sys.executable, "-c", code, str(output)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    threshold, routed = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert threshold == pytest.approx(report["after"]["threshold"]) and routed == report["after"]["routed_strategy"]
    assert threshold == pytest.approx(stage["threshold"])


def test_reroute_refuses_its_own_folder_a_test_split_and_a_bad_budget(trained, tmp_path, capsys):
    from mme_jd.cli import main

    assert main(["reroute", str(trained), "--output-dir", str(trained)]) == 1
    assert "the model's own folder" in capsys.readouterr().err
    assert main(["reroute", str(trained), "--split", "test_balanced", "--output-dir", str(tmp_path / "r")]) == 1
    assert "chosen on a test split" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["reroute", str(trained), "--output-dir", str(tmp_path / "busy")]) == 1
    assert "holds files but no saved model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reroute", str(trained), "--max-accuracy-drop", "2", "--output-dir", str(tmp_path / "r")])
    assert "expected a share of accuracy in [0, 1]" in capsys.readouterr().err
