"""bench/real_seeds.py: mean ± std over per-seed real-data results files, its table and its plot."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

import real_seeds  # noqa: E402

ERM, ROUTED, JTT = "general (ERM)", "MME-JD routed", "JTT (error set, upweighted)"


def _result(seed: int, accuracy: float, routed_recovery: float, none_share: float, general_cpu: float,
            jtt: float | None = None) -> dict:
    """A hand-made results file of bench/real_data.py (sarcasm, mmsd-to-mmsd2)."""
    methods = {
        ROUTED: {"test": {"accuracy": accuracy + 0.1, "f1": 0.5, "macro_f1": 0.6, "recovery_ratio": routed_recovery,
                          "router_shares": {"none": none_share, "image": 0.0, "text": 1 - none_share, "both": 0.0}},
                 "test_mmsd": {"accuracy": 0.8, "f1": 0.7, "macro_f1": 0.75}},
        ERM: {"test": {"accuracy": accuracy, "f1": 0.4, "macro_f1": 0.55, "recovery_ratio": 0.0},
              "test_mmsd": {"accuracy": 0.8, "f1": 0.7, "macro_f1": 0.75}},
    }
    result = {
        "dataset": "mmsd-to-mmsd2",
        "settings": {"seed": seed, "task": "sarcasm", "epochs": 1.0, "rows": {"train": 40, "test": 20},
                     "output": f"outputs/seed{seed}"},
        "methods": methods,
        "training": {"mme_jd": {"stages": [{"stage": "general", "cpu_seconds_total": general_cpu},
                                           {"stage": "text_debias", "cpu_seconds_total": general_cpu}]}},
        "majority_baseline": {"test": {"accuracy": 0.55, "f1": 0.0, "macro_f1": 0.35}},
        "seconds": 10.0 * (seed + 1),
        "cpu_seconds": 20.0,
    }
    if jtt is not None:
        methods[JTT] = {"test": {"accuracy": 0.6, "f1": 0.45, "macro_f1": 0.58, "recovery_ratio": jtt}}
        result["training_ratios"] = {JTT: 3.0, ROUTED: 4.0}
    return result


@pytest.fixture
def results() -> list[dict]:
    return [_result(0, 0.5, 0.2, 0.9, 100.0, jtt=-0.3), _result(1, 0.6, 0.4, 0.8, 100.0),
            _result(2, 0.7, 0.6, 0.7, 100.0, jtt=-0.5)]


def test_mean_and_sample_std_over_seeds(results):
    aggregated = real_seeds.aggregate(results)
    assert aggregated["dataset"] == "mmsd-to-mmsd2" and aggregated["task"] == "sarcasm"
    assert aggregated["seeds"] == [0, 1, 2] and aggregated["seconds"] == [10.0, 20.0, 30.0]
    assert "seed" not in aggregated["settings"] and aggregated["settings"]["rows"] == {"train": 40, "test": 20}
    assert aggregated["differing_settings"] == []  # output paths differ, but are not settings of the run
    erm = aggregated["methods"][ERM]["test"]
    assert erm["accuracy"] == {"mean": 0.6, "std": 0.1, "n": 3}
    assert erm["f1"] == {"mean": 0.4, "std": 0.0, "n": 3}
    assert "weighted_f1" not in erm
    assert aggregated["methods"][ROUTED]["test"]["recovery_ratio"] == {"mean": 0.4, "std": 0.2, "n": 3}
    assert aggregated["methods"][ROUTED]["test_mmsd"]["macro_f1"] == {"mean": 0.75, "std": 0.0, "n": 3}
    # in two files only: aggregated over those two
    assert aggregated["methods"][JTT]["test"]["recovery_ratio"]["n"] == 2
    assert aggregated["methods"][JTT]["test"]["recovery_ratio"]["mean"] == -0.4
    assert aggregated["methods"][JTT]["test"]["recovery_ratio"]["std"] == pytest.approx(0.141421, abs=1e-6)
    # METHOD_ORDER first (ERM before MME-JD routed), unknown methods after
    assert list(aggregated["methods"]) == [ERM, ROUTED, JTT]
    assert aggregated["router_shares"][ROUTED]["test"] == {"none": 0.8, "image": 0.0, "text": 0.2, "both": 0.0}
    # training_ratios(): MME-JD = (100 + 100) / 100 = 2; a file's own "training_ratios" wins
    ratios = aggregated["training_ratios"]
    assert ratios[ERM] == {"mean": 1.0, "std": 0.0, "n": 3}
    assert ratios[JTT] == {"mean": 3.0, "std": 0.0, "n": 2}
    assert ratios[ROUTED]["n"] == 3 and ratios[ROUTED]["mean"] == pytest.approx((4.0 + 2.0 + 4.0) / 3, abs=1e-6)
    assert aggregated["majority_baseline"]["test"]["accuracy"] == {"mean": 0.55, "std": 0.0, "n": 3}


def test_one_file_has_std_zero(results):
    aggregated = real_seeds.aggregate(results[:1])
    assert aggregated["methods"][ERM]["test"]["accuracy"] == {"mean": 0.5, "std": 0.0, "n": 1}


def test_mismatched_files_raise(results):
    other = copy.deepcopy(results[1])
    other["dataset"] = "mmsd2"
    with pytest.raises(ValueError, match="different datasets"):
        real_seeds.aggregate([results[0], other])
    other = copy.deepcopy(results[1])
    other["settings"]["task"] = "sentiment"
    with pytest.raises(ValueError, match="different tasks"):
        real_seeds.aggregate([results[0], other])
    with pytest.raises(ValueError, match=r"repeat seed\(s\) \[0\]"):
        real_seeds.aggregate([results[0], copy.deepcopy(results[0])])
    with pytest.raises(ValueError, match="no results files"):
        real_seeds.aggregate([])


def test_differing_run_settings_are_named(results):
    results[2]["settings"]["rows"] = {"train": 400, "test": 20}
    aggregated = real_seeds.aggregate(results)
    assert aggregated["differing_settings"] == ["rows"]
    assert "Settings that differ between the files: rows" in real_seeds.markdown(aggregated)


def test_markdown_table(results):
    table = real_seeds.markdown(real_seeds.aggregate(results))
    assert table.startswith("| Test set | Method | Accuracy | F1 (pos.) / weighted F1 | Macro F1 | Recovery |")
    lines = table.splitlines()
    erm = next(line for line in lines if line.startswith("| MMSD → MMSD2.0 test | general (ERM) |"))
    assert "| 0.600 ± 0.100 | 0.400 ± 0.000 | 0.550 ± 0.000 | 0.00 ± 0.00 |  | 1.00 ± 0.00 |" in erm
    routed = next(line for line in lines if line.startswith("| MMSD → MMSD2.0 test | MME-JD routed |"))
    assert "| 0.40 ± 0.20 | 0.200 |" in routed  # recovery, routed away = 1 - mean share of "none"
    jtt = next(line for line in lines if line.startswith("| MMSD → MMSD2.0 test | JTT"))
    assert "-0.40 ± 0.14 (n=2)" in jtt
    order = [line.split(" | ")[1] for line in lines if line.startswith("| MMSD → MMSD2.0 test |")]
    assert order == ["majority class", ERM, ROUTED, JTT]
    assert any(line.startswith("| MMSD → MMSD test | MME-JD routed |") for line in lines)
    assert "seed(s) 0, 1, 2" in table and "train 40, test 20" in table


def test_recovery_plot_is_a_png_with_negative_bars(results, tmp_path):
    from PIL import Image

    path = real_seeds.recovery_plot(real_seeds.aggregate(results), tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
        assert 500 < width < 2000 and 100 < height < 600
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 4  # bars, lines and text were drawn
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left
    no_recovery = real_seeds.aggregate(results)
    for per_split in no_recovery["methods"].values():
        per_split["test"].pop("recovery_ratio", None)
    with pytest.raises(ValueError, match="no method has a recovery ratio"):
        real_seeds.recovery_plot(no_recovery, tmp_path / "none.png")


def test_cli_writes_json_table_and_plot(results, tmp_path, capsys):
    files = []
    for result in results:
        files.append(tmp_path / f"real_seed{result['settings']['seed']}.json")
        files[-1].write_text(json.dumps(result))
    assert real_seeds.main([*map(str, files), "--name", "fake", "--results-dir", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "real_fake_seeds.json").read_text())
    assert written["methods"][ERM]["test"]["accuracy"] == {"mean": 0.6, "std": 0.1, "n": 3}
    assert written["files"] == [str(f) for f in files]
    assert "0.600 ± 0.100" in (tmp_path / "out" / "real_fake_seeds.md").read_text()
    assert (tmp_path / "out" / "real_fake_recovery.png").read_bytes()[:4] == b"\x89PNG"
    assert "0.600 ± 0.100" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        real_seeds.main([str(files[0]), str(files[0]), "--name", "dup", "--results-dir", str(tmp_path / "out")])


def test_make_bench_aggregates_come_before_variants_in_the_tables(results, tmp_path):
    """real.md / the README show `make bench`'s own `real_<dataset>_seeds` first, then variants
    (another precision, another recipe) by name, whatever their alphabetical order."""
    import real_data

    aggregated = real_seeds.aggregate(results)
    for name in ("mmsd-to-mmsd2_fp32", "mmsd-to-mmsd2", "mmsd-to-mmsd2_told_lexical", "mvsa_single"):
        (tmp_path / f"real_{name}_seeds.json").write_text(json.dumps({**aggregated, "name": name}))
    shown = [line for line in real_data.seeds_markdown(tmp_path).splitlines() if line.startswith("`real_")]
    assert shown == ["`real_mmsd-to-mmsd2_seeds`:", "`real_mvsa_single_seeds`:",
                     "`real_mmsd-to-mmsd2_fp32_seeds`:", "`real_mmsd-to-mmsd2_told_lexical_seeds`:"]
