"""Figures of the bench's methods on the test splits, and the inference passes they come from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .controls import without_counterfactual_columns
from .settings import TEST_SPLITS, BenchSettings


class SplitEvaluator:
    """Evaluators of the test splits (built once; every method's outputs share the row order)."""

    def __init__(self, data, num_labels: int):
        from ..evaluation.diagnostics import Evaluator
        from ..evaluation.run import synthetic_group_names

        self.evaluators = {}
        for split in TEST_SPLITS:
            rows = data[split]
            self.evaluators[split] = Evaluator(np.asarray(rows["label"]), groups=np.asarray(rows["group"]),
                                               group_names=synthetic_group_names(rows, num_labels),
                                               num_labels=num_labels)

    def figures(self, split: str, logits: torch.Tensor, cue_only: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The headline figures of `logits` on `split`, reliance measured against `cue_only`
        ({"text": logits, "image": logits} of the cue-only counterfactuals)."""
        from ..evaluation.run import headline_figures, prediction_figures

        return headline_figures(prediction_figures(self.evaluators[split], logits, cue_only))


def collect(model, rows, settings: BenchSettings, mode: str, **kwargs) -> dict[str, torch.Tensor]:
    """`collect_outputs` of `model` on `rows` in `mode`, in batches of the settings'."""
    from ..inference import collect_outputs

    return collect_outputs(model, model.processor, rows, batch_size=settings.inference_batch_size, mode=mode,
                           **kwargs)


def cue_only_pass(model, rows, settings: BenchSettings) -> dict[str, torch.Tensor]:
    """A mode "mid" pass: general logits, the cue-only counterfactuals' logits and MID's logits
    (lexical text counterfactual, the model's image saliency, or the rows' precomputed columns)."""
    return collect(model, rows, settings, "mid", counterfactual_parts=("text", "image"),
                   text_counterfactual="lexical")


def cue_only_logits(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cue-only counterfactuals' logits of a `cue_only_pass`, by part."""
    return {"text": outputs["text_counterfactual_logits"], "image": outputs["image_counterfactual_logits"]}


def cue_only_columns(model, rows, config) -> Any:
    """`rows` with the cue-only counterfactuals precomputed as columns: `text_counterfactual`
    (content words masked: the lexical builder) and `image_counterfactual_mask` (the top
    `image_mask_ratio` patches by `model`'s general-expert saliency, `config.image_counterfactual`).
    Computed once per split from the ERM model, so every method is measured on the same inputs."""
    from ..modeling.counterfactual_mme_jd import lexical_text_counterfactual
    from ..training.run import precompute_image_masks

    built = [lexical_text_counterfactual(text, model.config.mask_word) for text in rows["text"]]
    rows = precompute_image_masks(model, model.processor, without_counterfactual_columns(rows), config)
    return (rows.add_column("text_counterfactual", [text for text, _ in built])
            .add_column("text_mask_positions", [positions for _, positions in built]))


def validation_wga(model, data, settings: BenchSettings) -> float:
    """Worst-group accuracy of `model`'s general expert on validation_balanced (how the peers'
    knobs are chosen)."""
    from ..evaluation.metrics import worst_group_accuracy

    outputs = collect(model, data["validation_balanced"], settings, "general")
    return worst_group_accuracy(outputs["logits"].argmax(-1), outputs["labels"], outputs["groups"])


def strategy_shares(strategy: torch.Tensor) -> dict[str, float]:
    """The share of samples per routing strategy (`ROUTER_STRATEGIES` order)."""
    from ..modeling.configuration_mme_jd import ROUTER_STRATEGIES

    return {name: round(float((strategy == index).float().mean()), 4) for index, name in enumerate(ROUTER_STRATEGIES)}


#: The methods `recipe_figures` reads off one trained recipe.
RECIPE_METHODS = {
    "mme_jd": ("ERM (general expert)", "image_debias expert alone", "text_debias expert alone", "MME-JD routed",
               "MID (λ fitted on validation_balanced)"),
    "mctd": ("MCTD",),
    "oracle": ("oracle (cue-free train)",),
}


def recipe_figures(model, data, recipe: str, splits: tuple[str, ...] = TEST_SPLITS,
                   batch_size: int = 256) -> dict[str, dict]:
    """{method: {split: {"accuracy", "worst_group_accuracy"}}} of every method a trained recipe
    offers (`RECIPE_METHODS`): "mme_jd" gives ERM (its general expert), each debias expert alone,
    routed MME-JD (with `routed_away`, the share leaving `none`) and MID; "mctd" and "oracle"
    (recipe "general" trained on the cue-free split) their general expert. For the one-seed
    scripts of bench/ (synthetic_recipes.py, lr_sensitivity.py)."""
    from ..inference import collect_outputs
    from ..evaluation.metrics import worst_group_accuracy

    def figures(logits, outputs) -> dict:
        predictions = logits.argmax(-1)
        labels, groups = outputs["labels"], outputs["groups"]
        return {"accuracy": round(float((predictions == labels).float().mean()), 4),
                "worst_group_accuracy": round(worst_group_accuracy(predictions, labels, groups), 4)}

    if recipe not in RECIPE_METHODS:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPE_METHODS)}.")
    results: dict[str, dict] = {}
    for split in splits:
        rows = data[split]
        if recipe == "mme_jd":
            out = collect_outputs(model, model.processor, rows, batch_size=batch_size, mode="mme_jd",
                                  return_experts=True)
            mid = collect_outputs(model, model.processor, rows, batch_size=batch_size, mode="mid",
                                  counterfactual_parts=("text", "image"), text_counterfactual="lexical")
            erm, image, text, routed, mid_name = RECIPE_METHODS["mme_jd"]
            named = {erm: out["general_logits"], image: out["image_debias_logits"], text: out["text_debias_logits"],
                     routed: out["logits"], mid_name: mid["logits"]}
        else:
            out = collect_outputs(model, model.processor, rows, batch_size=batch_size, mode="general")
            named = {RECIPE_METHODS[recipe][0]: out["logits"]}
        for name, logits in named.items():
            results.setdefault(name, {})[split] = figures(logits, out)
        if recipe == "mme_jd":
            results[RECIPE_METHODS["mme_jd"][3]][split]["routed_away"] = round(
                float((out["strategy"] != 0).float().mean()), 4)
    return results
