"""write_report: JSON round trip, Markdown/HTML content, real PNG plots, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mme_jd.evaluation import report as report_module
from mme_jd.evaluation.diagnostics import Evaluator
from mme_jd.evaluation.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results() -> dict:
    evaluator = Evaluator([1, 0, 0, 1, 1, 0], groups=[0, 0, 1, 1, 2, 2], group_names=["a", "b", "c", "d"])
    results = evaluator.evaluate(
        [1, 0, 1, 1, 0, 0],
        probabilities=[[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.55, 0.45], [0.7, 0.3]],
        counterfactual_predictions={"text": [1, 1, 1, 0, 0, 0]},
        strategies=["none", "image", "none", "text", "both", "none"],
        target_strategies=[0, 1, 0, 0, 3, 2],
        predicted_masks=[[0, 1, 2]],
        true_masks=[[1, 2, 3]],
    )
    results["cost"] = {"inference_time_ratio": 1.25}  # an extra section, rendered generically
    return results


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert len(data) > 2000, f"{path.name} is suspiciously small ({len(data)} bytes)"


def test_write_report_all_formats(tmp_path, results):
    pytest.importorskip("matplotlib")
    written = write_report(results, tmp_path / "out", title="Toy run", formats=("json", "md", "html"))
    out = tmp_path / "out"
    assert written == {
        "json": out / "report.json",
        "md": out / "report.md",
        "html": out / "report.html",
        "groups": out / "groups.png",
        "routing": out / "routing.png",
        "reliability": out / "reliability.png",
    }
    # JSON: reloadable and equal to the input after a JSON round trip
    assert json.loads(written["json"].read_text()) == json.loads(json.dumps(results))
    # Markdown: title, worst-group accuracy with its value and group, the tables and the plots
    markdown = written["md"].read_text()
    assert markdown.startswith("# Toy run\n")
    assert "Worst-group accuracy" in markdown
    assert "| Worst-group accuracy | 0.5000 (b) |" in markdown
    assert "| b (worst) | 2 | 0.5000 |" in markdown
    assert "| d | 0 | — |" in markdown  # the empty group is shown, without an accuracy
    assert "| none | 0.5000 | 0.5000 | 0.6667 | 0.6667 | 0.6667 |" in markdown  # router shares table
    assert "inference_time_ratio" in markdown
    for name in ("groups.png", "routing.png", "reliability.png"):
        assert f"]({name})" in markdown
        _assert_png(out / name)
    # HTML: self-contained page with the same content, images by relative path
    page = written["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>Toy run</title>" in page
    assert "Worst-group accuracy" in page and '<img src="groups.png"' in page
    assert "<link" not in page and "<script" not in page
    # no temporary files left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written.values())


def test_plots_only_for_present_data(tmp_path):
    pytest.importorskip("matplotlib")
    written = write_report({"num_samples": 4, "metrics": {"accuracy": 0.75, "f1": 0.8}}, tmp_path)
    assert set(written) == {"json", "md"}
    assert not list(tmp_path.glob("*.png"))
    markdown = written["md"].read_text()
    assert "| F1 (positive class) | 0.8000 |" in markdown
    assert "Per-group" not in markdown and "Router" not in markdown


def test_json_only_draws_nothing(tmp_path, results):
    written = write_report(results, tmp_path, formats=("json",))
    assert set(written) == {"json"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_report_without_matplotlib(tmp_path, results, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    written = write_report(results, tmp_path)
    assert set(written) == {"json", "md"}
    assert not list(tmp_path.glob("*.png"))
    markdown = written["md"].read_text()
    assert "matplotlib is not installed" in markdown
    assert "Worst-group accuracy" in markdown


def test_json_write_is_atomic(tmp_path, results, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text('{"old": true}')

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(results, tmp_path, formats=("json",))
    assert json.loads(path.read_text()) == {"old": True}  # the previous report is intact
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # and no temporary file remains
    monkeypatch.undo()
    write_report(results, tmp_path, formats=("json",))
    assert json.loads(path.read_text())["num_samples"] == 6


def test_numpy_values_are_serialised(tmp_path):
    results = {"num_samples": np.int64(3), "metrics": {"accuracy": np.float32(0.5)}, "extra": np.arange(3)}
    written = write_report(results, tmp_path, formats=("json", "md"))
    assert json.loads(written["json"].read_text()) == {"num_samples": 3, "metrics": {"accuracy": 0.5}, "extra": [0, 1, 2]}


def test_invalid_formats(tmp_path, results):
    with pytest.raises(ValueError, match="pdf"):
        write_report(results, tmp_path, formats=("json", "pdf"))


def test_imports_stay_light():
    # `import evaluate` costs seconds and matplotlib is optional: neither may load until
    # load_metric() or a plot needs it. (What `import mme_jd` itself loads is not measured.)
    code = (
        "import sys, mme_jd; import mme_jd.evaluation as e; "
        "e.classification_metrics([1, 0], [1, 0]); e.Evaluator([1, 0]).evaluate([1, 0]); e.write_report; "
        "heavy = [m for m in ('matplotlib', 'evaluate') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
