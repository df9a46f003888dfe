"""One place for routing: only `modeling/routing_mme_jd.py` defines strategy ids or lists the
strategies' names; the named router loads the positional keys of old checkpoints; the metrics
module that training imports stays a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ROUTING_MODULE = ROOT / "modeling" / "routing_mme_jd.py"
STRATEGY_WORDS = {"none", "image", "text", "both"}


def strategy_definitions(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place in `source` that writes down routing strategies itself:
    a literal tuple/list/set of strategy names (one naming `none` or `both` beside `image` or
    `text`: a bare ("text", "image") is a pair of modalities), or a strategy id bound to a
    constant (`TEXT = 2`, `NONE, IMAGE, TEXT, BOTH = range(4)`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            elements = [e for e in node.elts if not (isinstance(e, ast.Constant) and e.value is None)]
            words = [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if (len(words) == len(elements) and set(words) <= STRATEGY_WORDS
                    and set(words) & {"none", "both"} and set(words) & {"image", "text"}):
                found.append((node.lineno, f"names {tuple(words)}"))
        elif isinstance(node, ast.Assign):
            names = [t for target in node.targets
                     for t in (target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target])]
            ids = [n.id for n in names if isinstance(n, ast.Name) and n.id.strip("_").lower() in STRATEGY_WORDS]
            numbered = (isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)) or (
                isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "range")
            if ids and numbered and any(n.id.strip("_").isupper() for n in names if isinstance(n, ast.Name)):
                found.append((node.lineno, f"ids {', '.join(ids)}"))
    return found


def _python_files():
    for folder in ("src", "modeling", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "results" in path.relative_to(ROOT).parts:
                continue
            yield path


def test_the_scan_finds_what_it_looks_for():
    source = '''
_NONE, _IMAGE, _TEXT, _BOTH = range(4)
TEXT = 2
SHARES = {s: 0 for s in ("none", "image", "text", "both")}
ROUTED = ["image", "text", "both"]
CHOICES = (None, "image", "text", "both")
PARTS = ("text", "image")          # modalities, not strategies
CORRECTIONS = ("none", "linear")
text = 2                           # a variable, not an id
'''
    assert sorted(line for line, _ in strategy_definitions(source)) == [2, 3, 4, 5, 6]


def test_only_the_routing_module_defines_strategy_ids():
    offenders = {str(path.relative_to(ROOT)): strategy_definitions(path.read_text(encoding="utf-8"))
                 for path in _python_files() if path != ROUTING_MODULE}
    assert {path: found for path, found in offenders.items() if found} == {}
    assert strategy_definitions(ROUTING_MODULE.read_text(encoding="utf-8"))  # the one definition


def test_configuration_re_exports_the_routing_modules_names():
    from mme_jd.evaluation.diagnostics import DEFAULT_STRATEGY_NAMES
    from mme_jd.modeling.configuration_mme_jd import ROUTER_STRATEGIES
    from mme_jd.modeling.routing_mme_jd import STRATEGY_NAMES, Strategy

    assert ROUTER_STRATEGIES is STRATEGY_NAMES is DEFAULT_STRATEGY_NAMES
    assert STRATEGY_NAMES == ("none", "image", "text", "both")
    assert [STRATEGY_NAMES.index(s.label) for s in Strategy] == [int(s) for s in Strategy]


def test_the_metrics_module_imports_no_other_mme_jd_module():
    """Training imports `mme_jd.evaluation.metrics` (worst-group accuracy, F-beta): it stays a leaf."""
    path = ROOT / "src" / "mme_jd" / "evaluation" / "metrics.py"
    imported = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
    assert [name for name in imported if name.startswith(".") or name.split(".")[0] == "mme_jd"] == []


def test_worst_group_accuracy_and_f_beta_take_numpy_and_torch():
    import numpy as np

    from mme_jd.evaluation.metrics import f_beta, worst_group_accuracy

    predictions, labels, groups = [1, 0, 1, 1], [1, 0, 0, 1], [0, 0, 1, 1]
    assert worst_group_accuracy(predictions, labels, groups) == 0.5
    assert worst_group_accuracy(torch.tensor(predictions), torch.tensor(labels), torch.tensor(groups)) == 0.5
    assert worst_group_accuracy(np.array(predictions), np.array(labels)) == 0.75
    assert f_beta(1.0, 0.5, 0.5) == pytest.approx(1.25 * 0.5 / (0.25 + 0.5))
    assert f_beta(0.5, 0.5) == pytest.approx(0.5) and f_beta(0.0, 0.0, 0.5) == 0.0


def test_the_named_router_loads_a_state_dict_with_the_old_positional_keys():
    from mme_jd.modeling.modeling_mme_jd import MMEJDRouter

    router = MMEJDRouter(8, 6)
    old = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.GELU(), torch.nn.Linear(6, 4))
    router.load_state_dict(old.state_dict())  # strict: no key missing or unexpected
    pooled = torch.randn(3, 8)
    assert torch.equal(router(pooled), old(pooled))
    wrapped = torch.nn.Module()
    wrapped.router = MMEJDRouter(8, 6)
    wrapped.load_state_dict({f"router.{key}": value for key, value in old.state_dict().items()})
    assert torch.equal(wrapped.router(pooled), old(pooled))
    assert MMEJDRouter.old_checkpoint_keys() == {r"^router\.0\.": "router.hidden.", r"^router\.2\.": "router.out."}


def test_routing_never_sends_a_sample_to_a_skipped_expert():
    from mme_jd.modeling.routing_mme_jd import Strategy, route, usable_strategies

    assert usable_strategies(["image_debias"]) == (Strategy.NONE, Strategy.TEXT)
    assert usable_strategies(None) == tuple(Strategy)
    # rows whose router prefers image or both: with image_debias skipped they get text
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.2, 0.6], [0.7, 0.1, 0.1, 0.1]]))
    assert route(logits, 0.5).tolist() == [Strategy.IMAGE, Strategy.BOTH, Strategy.NONE]
    assert route(logits, 0.5, skipped_experts=["image_debias"]).tolist() == [Strategy.TEXT, Strategy.TEXT,
                                                                               Strategy.NONE]
    assert route(logits, 0.0, skipped_experts=["image_debias", "text_debias"]).tolist() == [Strategy.NONE] * 3
    with pytest.raises(ValueError, match="routed_strategy 'both' needs an expert this model's training skipped"):
        route(logits, 0.5, "both", skipped_experts=["image_debias"])


def test_a_config_refuses_a_routed_strategy_that_needs_a_skipped_expert():
    from mme_jd.modeling.configuration_mme_jd import MMEJDConfig

    with pytest.raises(ValueError, match="routed_strategy='image' needs an expert in skipped_experts"):
        MMEJDConfig(routed_strategy="image", skipped_experts=["image_debias"]).validate_fields()
    with pytest.raises(ValueError, match="only debias experts"):
        MMEJDConfig(skipped_experts=["general"]).validate_fields()
    MMEJDConfig(routed_strategy="text", skipped_experts=["image_debias"]).validate_fields()
