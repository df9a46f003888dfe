"""Robustness diagnostics, SpuCo-Evaluator style: group partitions in, figures out.

Everything here computes with numpy and returns plain Python values (floats, ints, strs, lists,
dicts with str keys) so that results go straight into `json.dump`.

* `group_accuracy`: per-group accuracy, worst-group and group-average accuracy.
* `label_cue_groups`: (label × cue) group ids and names for `group_accuracy`.
* `reliance`: how often the prediction on a cue-only counterfactual equals the original's.
* `cue_figures` / `cue_label`: per declared cue, its groups' accuracy, the accuracy where it
  points the wrong way and the reliance on its cue-only input.
* `mask_quality`: precision/recall/F1 of counterfactual masks against known core masks.
* `router_report`: router shares, per-strategy precision/recall, F-beta of leaving `none`
  (strategy names from `routing_mme_jd`, F-beta from `metrics.f_beta`).
* `expected_calibration_error`: ECE and the bins of a reliability diagram.
* `Evaluator`: all of the above that apply, in one dict (the input of `report.write_report`).

Convention shared with `metrics.classification_metrics`: a ratio whose denominator is 0
is reported as 0.0, and the counts that would reveal it are reported next to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..modeling.routing_mme_jd import STRATEGY_NAMES
from .metrics import f_beta

__all__ = [
    "DEFAULT_STRATEGY_NAMES",
    "Evaluator",
    "cue_figures",
    "cue_label",
    "expected_calibration_error",
    "group_accuracy",
    "label_cue_groups",
    "mask_quality",
    "reliance",
    "router_report",
    "to_builtin",
    "wrong_way_rows",
]

#: The router's strategies, by id (`routing_mme_jd.STRATEGY_NAMES`).
DEFAULT_STRATEGY_NAMES: tuple[str, ...] = STRATEGY_NAMES


# --------------------------------------------------------------------------- helpers


def to_builtin(value: Any) -> Any:
    """`value` with numpy scalars/arrays turned into Python floats/ints/bools/lists and
    mapping keys into strings, recursively (so that `json.dumps` accepts it)."""
    if isinstance(value, Mapping):
        return {str(key): to_builtin(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_builtin(item) for item in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator as a float, 0.0 when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else 0.0


def _as_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence, got shape {array.shape}.")
    return array


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Inputs differ in length: {lengths}.")
    (length,) = set(lengths.values())
    return length


# --------------------------------------------------------------------------- groups


def label_cue_groups(
    labels,
    cues,
    num_labels: int | None = None,
    num_cues: int | None = None,
    label_names: Sequence[str] | None = None,
    cue_names: Sequence[str] | None = None,
) -> tuple[list[int], list[str]]:
    """(label × cue) groups: `group = label · num_cues + cue`, with one name per group id.

    Returns `(groups, group_names)` for `group_accuracy`; every (label, cue) pair gets a
    name even when no sample falls in it, so that empty groups are reported as such.
    Names are `"y=<label>,cue=<cue>"` with the label/cue names when given.
    """
    labels = _as_1d(labels, "labels").astype(np.int64)
    cues = _as_1d(cues, "cues").astype(np.int64)
    _check_same_length(labels=labels, cues=cues)
    if num_labels is None:
        num_labels = len(label_names) if label_names else int(labels.max(initial=-1)) + 1
    if num_cues is None:
        num_cues = len(cue_names) if cue_names else int(cues.max(initial=-1)) + 1
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels}).")
    if cues.size and (cues.min() < 0 or cues.max() >= num_cues):
        raise ValueError(f"cues must lie in [0, {num_cues}).")
    label_names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
    cue_names = list(cue_names) if cue_names else [str(i) for i in range(num_cues)]
    groups = (labels * num_cues + cues).tolist()
    names = [f"y={label_names[y]},cue={cue_names[c]}" for y in range(num_labels) for c in range(num_cues)]
    return groups, names


def group_accuracy(
    predictions,
    labels,
    groups,
    group_names: Sequence[str] | Mapping[Any, str] | None = None,
) -> dict[str, Any]:
    """Per-group accuracy, worst-group accuracy and group-average accuracy.

    `groups` is either one group id per sample (ints or strings), or a partition
    `{group key: [sample indices]}` (SpuCo's `group_partition`). `group_names` names the
    groups: a sequence indexed by integer group id, or a mapping group key → name. Groups
    named in `group_names` (or keys of a partition) with no sample are *empty groups*:
    listed, counted as 0, and left out of every average.

    For a non-empty group g with sample set S_g:
        acc_g = |{i ∈ S_g : pred_i = label_i}| / |S_g|
        worst_group_accuracy   = min_g acc_g
        group_average_accuracy = (1/G) Σ_g acc_g      (G = number of non-empty groups)
    `overall_accuracy` is the plain sample accuracy, for reference.

    Returns `{"per_group_accuracy": {name: acc} (non-empty groups), "group_counts":
    {name: n} (all groups), "empty_groups": [names], "worst_group": name,
    "worst_group_accuracy", "group_average_accuracy", "overall_accuracy",
    "num_groups": G}`; keys are group names (str), in group order.
    """
    predictions = _as_1d(predictions, "predictions")
    labels = _as_1d(labels, "labels")
    n = _check_same_length(predictions=predictions, labels=labels)
    if n == 0:
        raise ValueError("Cannot compute group accuracy on empty input.")
    correct = predictions == labels

    if isinstance(groups, Mapping):
        members: dict[Any, np.ndarray] = {}
        for key, indices in groups.items():
            indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if indices.size and (indices.min() < 0 or indices.max() >= n):
                raise ValueError(f"Group {key!r} holds sample indices outside [0, {n}).")
            members[key] = indices
        if isinstance(group_names, Mapping):
            for key in group_names:
                members.setdefault(key, np.zeros(0, dtype=np.int64))
    else:
        group_ids = _as_1d(groups, "groups")
        _check_same_length(predictions=predictions, groups=group_ids)
        keys = sorted(set(group_ids.tolist()))
        if isinstance(group_names, Mapping):
            keys = list(group_names) + [k for k in keys if k not in group_names]
        elif group_names is not None:
            unknown = [k for k in keys if not (isinstance(k, (int, np.integer)) and 0 <= k < len(group_names))]
            if unknown:
                raise ValueError(
                    f"Group ids {unknown[:5]} have no name: with a sequence of group_names, "
                    f"groups must be integer ids in [0, {len(group_names)})."
                )
            keys = list(range(len(group_names)))
        members = {key: np.flatnonzero(group_ids == key) for key in keys}

    def name_of(key: Any) -> str:
        if isinstance(group_names, Mapping):
            return str(group_names.get(key, key))
        if group_names is not None and isinstance(key, (int, np.integer)) and 0 <= key < len(group_names):
            return str(group_names[key])
        return str(key)

    per_group: dict[str, float] = {}
    counts: dict[str, int] = {}
    empty: list[str] = []
    for key, indices in members.items():
        name = name_of(key)
        if name in counts:
            raise ValueError(f"Two groups share the name {name!r}; give distinct group_names.")
        counts[name] = int(indices.size)
        if indices.size == 0:
            empty.append(name)
        else:
            per_group[name] = float(correct[indices].mean())
    if not per_group:
        raise ValueError("Every group is empty: no sample belongs to any group.")
    worst = min(per_group, key=per_group.get)
    return {
        "per_group_accuracy": per_group,
        "group_counts": counts,
        "empty_groups": empty,
        "worst_group": worst,
        "worst_group_accuracy": per_group[worst],
        "group_average_accuracy": float(sum(per_group.values()) / len(per_group)),
        "overall_accuracy": float(correct.mean()),
        "num_groups": len(per_group),
    }


# --------------------------------------------------------------------------- reliance


def reliance(original_predictions, counterfactual_predictions) -> float:
    """Share of samples whose prediction on the cue-only counterfactual equals the
    prediction on the original:

        reliance = (1/N) Σ_i [pred(x_i*) = pred(x_i)]

    1.0 means the cue alone decides every prediction; a debiased model should be low
    (near chance for a cue that carries no label information).
    """
    original = _as_1d(original_predictions, "original_predictions")
    counterfactual = _as_1d(counterfactual_predictions, "counterfactual_predictions")
    n = _check_same_length(original=original, counterfactual=counterfactual)
    if n == 0:
        raise ValueError("Cannot compute reliance on empty input.")
    return float(np.mean(original == counterfactual))


# --------------------------------------------------------------------------- declared cues


def cue_label(labels, flags, num_labels: int | None = None) -> int | None:
    """The class a cue points to, estimated: the one whose rate the cue's presence raises most
    (argmax_k P(y=k | cue) / P(y=k)); None when no row has the cue."""
    labels = _as_1d(labels, "labels").astype(np.int64)
    flags = _as_1d(flags, "flags").astype(bool)
    if not flags.any():
        return None
    num_labels = num_labels or int(labels.max()) + 1
    base = np.bincount(labels, minlength=num_labels) / len(labels)
    present = np.bincount(labels[flags], minlength=num_labels) / flags.sum()
    return int(np.argmax(np.where(base > 0, present / np.maximum(base, 1e-12), 0.0)))


def wrong_way_rows(labels, flags, points_to: int) -> np.ndarray:
    """Rows where a cue points the wrong way (cue-conflicting rows): the cue is present and
    the label is not `points_to`, or the cue is absent and the label is `points_to`."""
    labels = _as_1d(labels, "labels").astype(np.int64)
    flags = _as_1d(flags, "flags").astype(bool)
    return (flags & (labels != points_to)) | (~flags & (labels == points_to))


def cue_figures(
    predictions,
    labels,
    flags,
    points_to: int | None,
    cue_only_predictions=None,
    label_names: Sequence[str] | None = None,
    num_labels: int | None = None,
) -> dict[str, Any]:
    """The figures of one declared cue (METHOD §6, per cue).

    * groups ``label × cue presence`` (`label_cue_groups`, cue values "absent" / "present"):
      per-group, worst-group and group-average accuracy (`group_accuracy`);
    * `wrong_way_accuracy`: accuracy on the rows where the cue points the wrong way: the cue is
      present and the label is not `points_to`, or absent and the label is `points_to`
      (`wrong_way_count` of them; None without `points_to` or without such rows);
    * `reliance`: on the rows WITH the cue, the share whose prediction on the cue-only input
      equals the prediction on the original (`reliance_rows` of them): 1.0 means the cue
      alone decides.
    """
    predictions = _as_1d(predictions, "predictions").astype(np.int64)
    labels = _as_1d(labels, "labels").astype(np.int64)
    flags = _as_1d(flags, "flags").astype(bool)
    _check_same_length(predictions=predictions, labels=labels, flags=flags)
    num_labels = num_labels or (len(label_names) if label_names else int(max(labels.max(), predictions.max())) + 1)
    groups, names = label_cue_groups(labels, flags.astype(np.int64), num_labels, 2, label_names, ["absent", "present"])
    per_group = group_accuracy(predictions, labels, groups, names)
    out: dict[str, Any] = {
        "points_to": (label_names[points_to] if label_names else str(points_to)) if points_to is not None else None,
        "present_share": float(flags.mean()),
        "worst_group_accuracy": per_group["worst_group_accuracy"],
        "worst_group": per_group["worst_group"],
        "group_average_accuracy": per_group["group_average_accuracy"],
        "groups": per_group,
        "wrong_way_accuracy": None,
        "wrong_way_count": 0,
    }
    if points_to is not None:
        wrong_way = wrong_way_rows(labels, flags, points_to)
        out["wrong_way_count"] = int(wrong_way.sum())
        if wrong_way.any():
            out["wrong_way_accuracy"] = float((predictions[wrong_way] == labels[wrong_way]).mean())
    if cue_only_predictions is not None:
        cue_only = _as_1d(cue_only_predictions, "cue_only_predictions").astype(np.int64)
        _check_same_length(predictions=predictions, cue_only_predictions=cue_only)
        out["reliance_rows"] = int(flags.sum())
        out["reliance"] = reliance(predictions[flags], cue_only[flags]) if flags.any() else None
    return to_builtin(out)


# --------------------------------------------------------------------------- masks


def _positions(mask, name: str) -> np.ndarray:
    """Masked positions of one sample: a boolean mask (any shape, flattened) → its True
    indices; otherwise a list of flat integer indices (duplicates ignored)."""
    array = np.asarray(mask)
    if array.dtype == np.bool_:
        return np.flatnonzero(array)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name}: a mask is either a boolean array or a list of integer positions, "
            f"got dtype {array.dtype}."
        )
    return np.unique(array.reshape(-1))


def mask_quality(predicted_masks, true_masks) -> dict[str, Any]:
    """Precision, recall and F1 of the masked positions (tokens, patches) against the truth.

    Each argument holds one mask per sample: a list of masked indices, or a boolean array
    (True = masked; a 2-D patch grid is flattened). With P_i the predicted and T_i the true
    positions of sample i:

        micro:      precision = Σ|P_i ∩ T_i| / Σ|P_i|,   recall = Σ|P_i ∩ T_i| / Σ|T_i|,
                    f1 = 2·Σ|P_i ∩ T_i| / (Σ|P_i| + Σ|T_i|)
        per sample: precision_i = |P_i ∩ T_i| / |P_i| averaged over samples with P_i ≠ ∅;
                    recall_i = |P_i ∩ T_i| / |T_i| and f1_i = 2|P_i ∩ T_i| / (|P_i| + |T_i|)
                    averaged over samples with T_i ≠ ∅.

    Samples with empty truth (nothing to mask) have no recall: they count only against
    precision (each position masked there is a false positive) and are left out of the
    per-sample recall and F1. `num_empty_truth` counts them and `empty_truth_clean` is
    the share of them where nothing was masked. Zero denominators give 0.0.
    """
    if len(predicted_masks) != len(true_masks):
        raise ValueError(
            f"predicted_masks and true_masks differ in length ({len(predicted_masks)} vs {len(true_masks)})."
        )
    if len(true_masks) == 0:
        raise ValueError("Cannot compute mask quality on empty input.")
    tp_total = predicted_total = true_total = 0
    precisions: list[float] = []
    recalls: list[float] = []
    f1s: list[float] = []
    empty_truth = empty_truth_clean = 0
    for predicted_mask, true_mask in zip(predicted_masks, true_masks):
        predicted = _positions(predicted_mask, "predicted_masks")
        true = _positions(true_mask, "true_masks")
        tp = int(np.intersect1d(predicted, true, assume_unique=True).size)
        tp_total += tp
        predicted_total += predicted.size
        true_total += true.size
        if predicted.size:
            precisions.append(tp / predicted.size)
        if true.size:
            recalls.append(tp / true.size)
            f1s.append(2 * tp / (predicted.size + true.size))
        else:
            empty_truth += 1
            empty_truth_clean += predicted.size == 0
    return {
        "precision": _ratio(tp_total, predicted_total),
        "recall": _ratio(tp_total, true_total),
        "f1": _ratio(2 * tp_total, predicted_total + true_total),
        "per_sample_precision": float(np.mean(precisions)) if precisions else 0.0,
        "per_sample_recall": float(np.mean(recalls)) if recalls else 0.0,
        "per_sample_f1": float(np.mean(f1s)) if f1s else 0.0,
        "true_positives": int(tp_total),
        "predicted_positions": int(predicted_total),
        "true_positions": int(true_total),
        "num_samples": len(true_masks),
        "num_empty_truth": int(empty_truth),
        "empty_truth_clean": _ratio(empty_truth_clean, empty_truth),
    }


# --------------------------------------------------------------------------- router


def _strategy_ids(values, names: Sequence[str], what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence, got shape {array.shape}.")
    if array.size == 0:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() >= len(names):
            raise ValueError(f"{what} holds ids outside [0, {len(names)}) for strategies {list(names)}.")
        return array.astype(np.int64)
    lookup = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in array.tolist()} - set(lookup))
    if unknown:
        raise ValueError(f"{what} holds unknown strategies {unknown}; known: {list(names)}.")
    return np.array([lookup[str(v)] for v in array.tolist()], dtype=np.int64)


def router_report(
    predicted_strategies,
    target_strategies=None,
    strategy_names: Sequence[str] = DEFAULT_STRATEGY_NAMES,
    beta: float = 0.5,
) -> dict[str, Any]:
    """Router figures: shares per strategy, per-strategy precision/recall, F-beta.

    Strategies are names (`"none"`, `"image"`, ...) or ids into `strategy_names`. The
    no-debias strategy is the one named `"none"` (the first name when none is so named);
    the others are the *debias* strategies.

        predicted_share[s] = |{i : pred_i = s}| / N      (target_share likewise)
        routed_away_share  = |{i : pred_i ≠ none}| / N   (routed inference costs ≈ 1 + this)

    With targets:
        precision[s] = |{pred = s ∧ target = s}| / |{pred = s}|,
        recall[s]    = |{pred = s ∧ target = s}| / |{target = s}|,
        accuracy     = |{pred = target}| / N.
    Leaving `none` as the positive event (any debias strategy, whichever):
        debias_precision = |{pred ≠ none ∧ target ≠ none}| / |{pred ≠ none}|
        debias_recall    = |{pred ≠ none ∧ target ≠ none}| / |{target ≠ none}|
        debias_fbeta     = (1+β²)·P·R / (β²·P + R)          (β = 0.5: precision first)
    `macro_debias_fbeta` is the mean of the per-strategy F-beta over the debias strategies
    present in the targets or predictions (0.0 when there is none). Zero denominators give 0.0.
    """
    names = [str(name) for name in strategy_names]
    if len(set(names)) != len(names):
        raise ValueError(f"strategy_names must be distinct, got {names}.")
    none_id = names.index("none") if "none" in names else 0
    predicted = _strategy_ids(predicted_strategies, names, "predicted_strategies")
    n = predicted.size
    if n == 0:
        raise ValueError("Cannot compute a router report on empty input.")
    predicted_counts = np.bincount(predicted, minlength=len(names))
    report: dict[str, Any] = {
        "strategy_names": names,
        "num_samples": int(n),
        "predicted_counts": {name: int(predicted_counts[i]) for i, name in enumerate(names)},
        "predicted_share": {name: float(predicted_counts[i] / n) for i, name in enumerate(names)},
        "routed_away_share": float(np.mean(predicted != none_id)),
    }
    if target_strategies is None:
        return report
    target = _strategy_ids(target_strategies, names, "target_strategies")
    _check_same_length(predicted_strategies=predicted, target_strategies=target)
    target_counts = np.bincount(target, minlength=len(names))
    per_strategy: dict[str, dict[str, float]] = {}
    debias_fbetas: list[float] = []
    for i, name in enumerate(names):
        hits = int(np.sum((predicted == i) & (target == i)))
        precision = _ratio(hits, predicted_counts[i])
        recall = _ratio(hits, target_counts[i])
        fbeta = f_beta(precision, recall, beta)
        per_strategy[name] = {
            "precision": precision,
            "recall": recall,
            "fbeta": fbeta,
            "support": int(target_counts[i]),
            "predicted": int(predicted_counts[i]),
        }
        if i != none_id and (predicted_counts[i] or target_counts[i]):
            debias_fbetas.append(fbeta)
    routed = predicted != none_id
    should = target != none_id
    debias_hits = int(np.sum(routed & should))
    debias_precision = _ratio(debias_hits, routed.sum())
    debias_recall = _ratio(debias_hits, should.sum())
    report.update(
        {
            "target_counts": {name: int(target_counts[i]) for i, name in enumerate(names)},
            "target_share": {name: float(target_counts[i] / n) for i, name in enumerate(names)},
            "accuracy": float(np.mean(predicted == target)),
            "per_strategy": per_strategy,
            "beta": float(beta),
            "debias_precision": debias_precision,
            "debias_recall": debias_recall,
            "debias_fbeta": f_beta(debias_precision, debias_recall, beta),
            "macro_debias_fbeta": float(np.mean(debias_fbetas)) if debias_fbetas else 0.0,
        }
    )
    return report


# --------------------------------------------------------------------------- calibration


def expected_calibration_error(probabilities, labels, num_bins: int = 15) -> dict[str, Any]:
    """Expected calibration error with equal-width confidence bins.

    `probabilities` is (N, C) class probabilities (softmax of the logits), or (N,) the
    probability of class 1 of a binary task. Confidence c_i = max_k p_ik, prediction
    ŷ_i = argmax_k p_ik. Bin b covers (b/B, (b+1)/B] (a confidence of 0 goes to bin 0).
    For a bin with samples S_b:

        conf_b = mean_{i∈S_b} c_i,   acc_b = mean_{i∈S_b} [ŷ_i = y_i]
        ECE = Σ_b (|S_b| / N) · |acc_b − conf_b|,   MCE = max_{b: S_b≠∅} |acc_b − conf_b|

    Returns `{"ece", "mce", "num_bins", "num_samples", "bins": [{"lower", "upper",
    "confidence", "accuracy", "count"}, ...]}` with all B bins (empty bins have count 0
    and confidence/accuracy None): the data of a reliability diagram.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = _as_1d(labels, "labels").astype(np.int64)
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}.")
    if probabilities.ndim == 1:
        probabilities = np.stack([1.0 - probabilities, probabilities], axis=1)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (N, C) or (N,), got shape {probabilities.shape}.")
    n = _check_same_length(probabilities=probabilities, labels=labels)
    if n == 0:
        raise ValueError("Cannot compute calibration on empty input.")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]; pass softmax(logits), not logits.")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bin_ids = np.digitize(confidence, edges[1:-1], right=True)  # edges[b] < c <= edges[b+1]
    bins: list[dict[str, Any]] = []
    ece = 0.0
    mce = 0.0
    for b in range(num_bins):
        in_bin = bin_ids == b
        count = int(in_bin.sum())
        entry: dict[str, Any] = {
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "confidence": None,
            "accuracy": None,
            "count": count,
        }
        if count:
            mean_confidence = float(confidence[in_bin].mean())
            accuracy = float(correct[in_bin].mean())
            gap = abs(accuracy - mean_confidence)
            ece += count / n * gap
            mce = max(mce, gap)
            entry["confidence"] = mean_confidence
            entry["accuracy"] = accuracy
        bins.append(entry)
    return {
        "ece": float(ece),
        "mce": float(mce),
        "num_bins": int(num_bins),
        "num_samples": int(n),
        "bins": bins,
    }


# --------------------------------------------------------------------------- evaluator


class Evaluator:
    """All applicable diagnostics of one split in one JSON-able dict.

    Built once per split with the ground truth (`labels`, and `groups` with optional
    `group_names`, see `group_accuracy`); `evaluate` then takes a model's outputs::

        evaluator = Evaluator(labels, groups=groups, group_names=names, num_labels=2)
        results = evaluator.evaluate(predictions, probabilities=probs,
                                     counterfactual_predictions={"text": preds_text_cf},
                                     strategies=routes, target_strategies=router_labels)
        write_report(results, "out/")

    Output keys (each present only when its inputs are given):
      `num_samples`, `num_labels`; `metrics` (`classification_metrics`); `groups`
      (`group_accuracy`); `reliance` ({counterfactual name: reliance}); `calibration`
      (`expected_calibration_error`); `router` (`router_report`; shares only without
      targets); `mask_quality` (`mask_quality`).
    """

    def __init__(
        self,
        labels,
        groups=None,
        group_names: Sequence[str] | Mapping[Any, str] | None = None,
        num_labels: int | None = None,
        pos_label: int = 1,
        strategy_names: Sequence[str] = DEFAULT_STRATEGY_NAMES,
        num_bins: int = 15,
    ) -> None:
        self.labels = _as_1d(labels, "labels").astype(np.int64)
        if self.labels.size == 0:
            raise ValueError("Evaluator needs at least one label.")
        if groups is not None and not isinstance(groups, Mapping):
            groups = _as_1d(groups, "groups")
            _check_same_length(labels=self.labels, groups=groups)
        self.groups = groups
        self.group_names = group_names
        self.num_labels = int(num_labels) if num_labels is not None else None  # None: inferred
        self.pos_label = pos_label
        self.strategy_names = tuple(strategy_names)
        self.num_bins = num_bins

    def evaluate(
        self,
        predictions,
        probabilities=None,
        counterfactual_predictions: Mapping[str, Any] | None = None,
        strategies=None,
        target_strategies=None,
        predicted_masks=None,
        true_masks=None,
    ) -> dict[str, Any]:
        """Figures for `predictions` (class ids, one per label); see the class docstring.

        `counterfactual_predictions` maps a counterfactual's name (e.g. "text", "image")
        to the predictions on it; a bare sequence is named "counterfactual".
        """
        from .metrics import classification_metrics

        predictions = _as_1d(predictions, "predictions").astype(np.int64)
        n = _check_same_length(labels=self.labels, predictions=predictions)
        num_labels = self.num_labels
        if num_labels is None:
            num_labels = max(int(self.labels.max()) + 1, int(predictions.max(initial=0)) + 1, 2)
        results: dict[str, Any] = {
            "num_samples": int(n),
            "num_labels": int(num_labels),
            "metrics": classification_metrics(
                predictions, self.labels, num_labels=num_labels, pos_label=self.pos_label
            ),
        }
        if self.groups is not None:
            results["groups"] = group_accuracy(predictions, self.labels, self.groups, self.group_names)
        if counterfactual_predictions is not None:
            if not isinstance(counterfactual_predictions, Mapping):
                counterfactual_predictions = {"counterfactual": counterfactual_predictions}
            results["reliance"] = {
                str(name): reliance(predictions, cf) for name, cf in counterfactual_predictions.items()
            }
        if probabilities is not None:
            results["calibration"] = expected_calibration_error(probabilities, self.labels, self.num_bins)
        if strategies is not None:
            results["router"] = router_report(strategies, target_strategies, self.strategy_names)
        elif target_strategies is not None:
            raise ValueError("target_strategies given without strategies (the router's choices).")
        if predicted_masks is not None or true_masks is not None:
            if predicted_masks is None or true_masks is None:
                raise ValueError("mask quality needs both predicted_masks and true_masks.")
            results["mask_quality"] = mask_quality(predicted_masks, true_masks)
        results = to_builtin(results)
        _check_finite(results)
        return results


def _check_finite(value: Any, path: str = "results") -> None:
    """Fail loudly on NaN/inf: they are not valid JSON and mean a bug upstream."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} is {value}; expected a finite number.")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")
