"""The Hub remote code in modeling/ imports only torch, transformers, peft, the standard
library and its sibling files; the wheel ships the same files as `mme_jd.modeling`."""

import ast
import sys
from pathlib import Path

import mme_jd.modeling

MODELING = Path(__file__).resolve().parents[1] / "modeling"
ALLOWED_THIRD_PARTY = {"torch", "transformers", "peft"}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], 0
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or "").split(".")[0], node.level


def test_modeling_files_import_only_allowed_modules():
    files = sorted(MODELING.glob("*.py"))
    assert {f.name for f in files} >= {"configuration_mme_jd.py", "modeling_mme_jd.py", "counterfactual_mme_jd.py"}
    offenders = []
    for path in files:
        for module, level in _imports(path):
            if level > 0:
                continue  # a sibling file
            if module not in ALLOWED_THIRD_PARTY and module not in sys.stdlib_module_names:
                offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_installed_package_uses_the_same_files():
    assert Path(mme_jd.modeling.__file__).resolve().parent == MODELING
