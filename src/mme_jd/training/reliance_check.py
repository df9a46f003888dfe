"""Whether a debias expert has anything to remove, decided on validation before it trains.

A debias expert exists to take away a modality's shortcut. Before its stage the `mme_jd`
recipe measures, on the router's validation split, how much the model trained so far (the last
trained debias expert, else the general expert) still follows that modality's cue-only input:

    reliance beyond chance = P(pred(x) = g(x*)) − Σ_k P(pred(x) = k)·P(g(x*) = k)

where g(x*) is the general expert's prediction on the cue-only counterfactual x* (the
general expert learned the shortcut, so its reading of x* is what the shortcut says) and the
subtracted term is the agreement of two independent predictors with the same class rates
(`evaluation.metrics.reliance_beyond_chance`).

The stage is skipped only when the general expert relied on that modality's cue (above
`MMEJDTrainingConfig.expert_skip_reliance`) and an earlier debias expert no longer does (at or
below it): a debias expert already removed the shortcut. The first debias stage always trains,
and so does any stage whose cue-only input the general expert reads flatly (no reliance to
measure), since a flat reading does not show there is no shortcut. (The image stage of a
dataset without images, such as MMSD offline, is skipped before any check: `train`.) A skipped
expert keeps the general expert's weights, the model's config lists it in `skipped_experts`, and
routing never sends a sample to it. On the synthetic benchmark the text expert (trained first:
its swap counterfactual keeps the image and flips the label, so it unlearns both cues) leaves no
image reliance, and the image stage, the most expensive one, is skipped.
"""

from __future__ import annotations

from typing import Any

#: The modality whose cue-only input each debias expert's check reads.
EXPERT_MODALITY = {"text_debias": "text", "image_debias": "image"}


def reliance_check(model, processor, rows, config, stage: str, reference: str,
                   general_passes: dict[str, Any]) -> dict[str, Any]:
    """Measure `reference`'s reliance on `stage`'s modality's cue-only input over `rows` and
    decide whether `stage` trains. `general_passes`: the general expert's logits on `rows`
    (`general_logits`) and on their cue-only inputs (`text_counterfactual_logits`,
    `image_counterfactual_logits`; `training.run.CueOnlyPasses`, which MID's λ fit reuses).
    Returns {stage, modality, reference, rows, reliance, reliance_beyond_chance,
    general_reliance_beyond_chance, threshold, needed}."""
    from ..evaluation.metrics import reliance_beyond_chance
    from ..inference import collect_outputs

    modality = EXPERT_MODALITY[stage]
    cue_reading = general_passes[f"{modality}_counterfactual_logits"].argmax(-1).numpy()
    general_predictions = general_passes["general_logits"].argmax(-1).numpy()
    if reference == "general":
        predictions = general_predictions
    else:
        predictions = collect_outputs(model, processor, rows, batch_size=config.inference_batch_size,
                                      expert=reference, description=f"{stage} check")["logits"].argmax(-1).numpy()
    beyond = reliance_beyond_chance(predictions, cue_reading)
    general_beyond = reliance_beyond_chance(general_predictions, cue_reading)
    threshold = config.expert_skip_reliance
    return {"stage": stage, "modality": modality, "reference": reference, "rows": len(rows),
            "reliance": round(float((predictions == cue_reading).mean()), 4), "reliance_beyond_chance": round(beyond, 4),
            "general_reliance_beyond_chance": round(general_beyond, 4), "threshold": threshold,
            "needed": stage_needed(reference, general_beyond, beyond, threshold)}


def stage_needed(reference: str, general_beyond: float, reference_beyond: float, threshold: float | None) -> bool:
    """Whether a debias stage trains: unless an earlier debias expert (`reference` is not the
    general expert) took away a reliance the general expert had (general's reliance beyond
    chance above `threshold`, the reference's at or below it). None: always."""
    if threshold is None or reference == "general":
        return True
    removed = general_beyond > threshold >= reference_beyond
    return not removed
