"""Layers point one way (DESIGN.md: data → training → evaluation → hub/cli/bench), checked on the
imports (ast) of every module under src/mme_jd and modeling/.

    rank 0  modeling         the Hub remote code (`mme_jd.modeling`): imports no other mme_jd module
    rank 1  utilities        files (atomic writes), provenance (checksums), hub_cards (templates)
    rank 2  data             loaders, synthetic benchmark, collator, data named by a string
    rank 3  models and cues  base / tiny / minilm (model builders: tiny needs the synthetic
                             vocabulary), inference (runs a model over collated rows), cues
                             (declared cues, image statistics, the finder)
    rank 4  training         the stages                 } two stages over the data: neither
    rank 4  evaluation       metrics, reports, gallery  } imports the other
    rank 5  top              hub, cli, bench, app, demo, browser_check

A module imports from its own group and from groups of lower rank; `mme_jd.evaluation.metrics`
(pure metric functions, no mme_jd import) is the one leaf that training and cues may also
import. `from PACKAGE import NAME` counts as an import of the module that PACKAGE's lazy table
(`_LAZY...`) maps NAME to. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"mme_jd": ROOT / "src" / "mme_jd", "mme_jd.modeling": ROOT / "modeling"}

#: (module prefix, group, rank); the longest matching prefix decides.
LAYERS = (
    ("mme_jd.modeling", "modeling", 0),
    ("mme_jd.files", "utilities", 1),
    ("mme_jd.provenance", "utilities", 1),
    ("mme_jd.hub_cards", "utilities", 1),
    ("mme_jd.data", "data", 2),
    ("mme_jd.base", "models and cues", 3),
    ("mme_jd.tiny", "models and cues", 3),
    ("mme_jd.minilm", "models and cues", 3),
    ("mme_jd.inference", "models and cues", 3),
    ("mme_jd.cues", "models and cues", 3),
    ("mme_jd.cues.report", "evaluation", 4),  # renders with evaluation.report's document model
    ("mme_jd.training", "training", 4),
    ("mme_jd.evaluation", "evaluation", 4),
    ("mme_jd.hub", "top", 5),
    ("mme_jd.cli", "top", 5),
    ("mme_jd.bench", "top", 5),
    ("mme_jd.app", "top", 5),
    ("mme_jd.demo", "top", 5),
    ("mme_jd.browser_check", "top", 5),
)
BENCH_SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
#: Leaf modules that any module of rank >= 3 may import (they import no mme_jd module).
LEAVES = {"mme_jd.evaluation.metrics"}

#: Known crossings, (importer, imported): each one is work left to do, with its reason.
EXCEPTIONS: set[tuple[str, str]] = set()


def _module_files() -> dict[str, Path]:
    """{module name: file} of every module of the package (modeling/ as `mme_jd.modeling`)."""
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package == "mme_jd" and parts[:1] == ["modeling"]:
                continue
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def _lazy_table(package: str) -> dict[str, str]:
    """{name: module} of a package's lazy re-exports (module-level dicts named `_LAZY...`)."""
    path = MODULES.get(package)
    if path is None or path.name != "__init__.py":
        return {}
    table = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.startswith("_LAZY")
                                                 for t in node.targets):
            for name, target in ast.literal_eval(node.value).items():
                table[name] = target if target.startswith("mme_jd") else f"{package}.{target}"
    return table


def _imports(module: str) -> set[str]:
    """The mme_jd modules `module` imports (resolved through packages' lazy tables)."""
    path = MODULES[module]
    package = module if _is_package(module) else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mme_jd"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                if base == "mme_jd" and module.startswith("mme_jd.modeling"):
                    base = "mme_jd.modeling"  # modeling/ is a flat folder: `.x` is a sibling
                target = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "mme_jd":
                target = node.module
            else:
                continue
            lazy = _lazy_table(target)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
                else:
                    found.add(lazy.get(alias.name, target))
    found.discard(module)
    return found


def _layer(module: str) -> tuple[str, int] | None:
    matches = [(prefix, group, rank) for prefix, group, rank in LAYERS
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        return None
    _, group, rank = max(matches, key=lambda match: len(match[0]))
    return group, rank


def _allowed(importer: str, imported: str) -> bool:
    if imported == "mme_jd":
        return True  # the package root: __version__ and register_auto_classes (the modeling layer's)
    group, rank = _layer(importer)
    imported_group, imported_rank = _layer(imported)
    if imported in LEAVES and rank >= 3:
        return True
    return imported_group == group or imported_rank < rank


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "mme_jd" and _layer(m) is None] == []


def test_layers_point_one_way():
    crossings = sorted((importer, imported) for importer in MODULES if importer != "mme_jd"
                       for imported in _imports(importer)
                       if imported in MODULES and not _allowed(importer, imported))
    assert [c for c in crossings if c not in EXCEPTIONS] == []
    assert sorted(EXCEPTIONS - set(crossings)) == [], "an exception is gone: delete it from EXCEPTIONS"


def test_the_remote_code_and_the_leaves_import_no_other_mme_jd_module():
    for module in [m for m in MODULES if m.startswith("mme_jd.modeling")] + sorted(LEAVES):
        outside = {m for m in _imports(module) if not m.startswith("mme_jd.modeling")}
        assert outside == set(), module
    for path in SOURCES["mme_jd.modeling"].glob("*.py"):  # flat remote code: siblings only
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name}: from {'.' * node.level}{node.module} import ..."


def test_imports_resolve_through_lazy_tables():
    assert "mme_jd.cues.declared" in _imports("mme_jd.training.run")  # `from ..cues import Cue`
    assert "mme_jd.training.run" in _imports("mme_jd.demo")  # `from .training import train` (lazy table)
    assert "mme_jd.modeling.configuration_mme_jd" in _imports("mme_jd.modeling.modeling_mme_jd")


def test_no_module_edits_sys_path():
    offenders = []
    for path in [*SOURCES["mme_jd"].rglob("*.py"), *SOURCES["mme_jd.modeling"].glob("*.py"), *BENCH_SCRIPTS]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_bench_scripts_import_only_public_names():
    """bench/*.py are users of the package: they import public names only."""
    private = []
    for path in BENCH_SCRIPTS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mme_jd"):
                modules = (node.module or "").split(".")
                names = [alias.name for alias in node.names]
                if any(part.startswith("_") for part in modules) or any(n.startswith("_") for n in names):
                    private.append(f"{path.name}:{node.lineno} from {node.module} import {', '.join(names)}")
    assert private == []
