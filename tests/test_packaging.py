"""The wheel: built from a copy of the source tree, it holds every part the package reads at
run time and imports outside the source tree, with no editable install in sight."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "src", "modeling", "hub_cards")

IMPORT_CHECK = r"""
import sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import mme_jd, mme_jd.modeling, mme_jd.hub_cards, mme_jd.cues
from mme_jd.modeling import modeling_mme_jd, pipeline_mme_jd, counterfactual_mme_jd, configuration_mme_jd
from mme_jd.evaluation.metrics import METRIC_MODULE_PATH, classification_metrics
from mme_jd.data.lexicon import load_lexicon
from mme_jd.hub import template_path
from mme_jd import tiny
for module in (mme_jd, mme_jd.modeling, modeling_mme_jd, mme_jd.hub_cards):
    assert Path(module.__file__).resolve().is_relative_to(site), module.__file__
for path in (METRIC_MODULE_PATH, template_path(), tiny.shipped_pretrained_path()):
    assert path is not None and Path(path).resolve().is_relative_to(site) and Path(path).exists(), path
assert len(load_lexicon()) > 100
assert classification_metrics([0, 1, 1], [0, 1, 0])["accuracy"] > 0.6
model = tiny.pretrained_tiny_model()
print("ok", type(model).__name__)
"""


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:  # a copy: an in-tree build would leave build/ behind, and reuse a stale one
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(item, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         str(source), "-w", str(dist)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "warning" not in build.stderr.lower(), build.stderr[-3000:]  # a quiet build: no layout warnings
    wheels = list(dist.glob("mme_jd-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_holds_every_part_and_imports_outside_the_source_tree(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("mme_jd/modeling/modeling_mme_jd.py", "mme_jd/modeling/pipeline_mme_jd.py",
                     "mme_jd/hub_cards/model_card.md", "mme_jd/data/sentiment_lexicon.tsv",
                     "mme_jd/evaluation/metric/mme_jd_metrics.py", "mme_jd/py.typed",
                     "mme_jd/bench/report_template.md", "mme_jd/bench/readme_template.md"):
        assert expected in names, expected
    # every module of the source tree is in the wheel (a new subpackage missing from
    # pyproject.toml's `packages` would be left out silently)
    sources = {f"mme_jd/{p.relative_to(ROOT / 'src' / 'mme_jd').as_posix()}" for p in (ROOT / "src" / "mme_jd").rglob("*.py")}
    sources |= {f"mme_jd/modeling/{p.name}" for p in (ROOT / "modeling").glob("*.py")}
    sources |= {f"mme_jd/hub_cards/{p.name}" for p in (ROOT / "hub_cards").glob("*")
                if p.suffix in (".py", ".md")}
    assert not sources - names, sorted(sources - names)
    shipped = [n for n in names if n.startswith("mme_jd/pretrained/") and n.endswith("model.safetensors")]
    assert len(shipped) == 1, shipped
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -S: no .pth files, so the editable install of this checkout cannot answer the imports;
    # the dependencies come from this interpreter's site-packages, placed after the wheel
    dependencies = sysconfig.get_paths()["purelib"]
    run = subprocess.run([sys.executable, "-S", "-c", IMPORT_CHECK, str(site)], cwd=tmp_path,
                         env={"PYTHONPATH": f"{site}:{dependencies}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok MMEJDModel", run.stdout
