"""Diagnostics: every figure on small cases computed by hand, plus edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mme_jd.evaluation.diagnostics import (
    Evaluator,
    expected_calibration_error,
    group_accuracy,
    label_cue_groups,
    mask_quality,
    reliance,
    router_report,
)

# A shared toy split: correct = [T, T, F, T, F, T]
PREDS = [1, 0, 1, 1, 0, 0]
LABELS = [1, 0, 0, 1, 1, 0]
GROUPS = [0, 0, 1, 1, 2, 2]  # group 0: 2/2 right, group 1: 1/2, group 2: 1/2


# --------------------------------------------------------------------------- groups


def test_group_accuracy_hand_computed():
    result = group_accuracy(PREDS, LABELS, GROUPS)
    assert result["per_group_accuracy"] == {"0": 1.0, "1": 0.5, "2": 0.5}
    assert result["group_counts"] == {"0": 2, "1": 2, "2": 2}
    assert result["empty_groups"] == []
    assert result["worst_group_accuracy"] == 0.5
    assert result["worst_group"] == "1"  # first of the tied worst groups
    assert result["group_average_accuracy"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert result["overall_accuracy"] == pytest.approx(4 / 6)
    assert result["num_groups"] == 3


def test_group_accuracy_empty_group_is_ignored():
    result = group_accuracy(PREDS, LABELS, GROUPS, group_names=["a", "b", "c", "d"])
    assert result["per_group_accuracy"] == {"a": 1.0, "b": 0.5, "c": 0.5}
    assert result["group_counts"] == {"a": 2, "b": 2, "c": 2, "d": 0}
    assert result["empty_groups"] == ["d"]
    assert result["num_groups"] == 3
    # the empty group does not drag the average down
    assert result["group_average_accuracy"] == pytest.approx(2 / 3)
    assert result["worst_group"] == "b"


def test_group_accuracy_all_samples_in_one_group():
    result = group_accuracy(PREDS, LABELS, [7] * 6)
    assert result["per_group_accuracy"] == {"7": pytest.approx(4 / 6)}
    assert result["worst_group_accuracy"] == pytest.approx(4 / 6)
    assert result["group_average_accuracy"] == pytest.approx(4 / 6)
    assert result["num_groups"] == 1


def test_group_accuracy_with_partition_and_mapping_names():
    # SpuCo-style partition {group key: sample indices}: majority 0-2 (2/3 right), minority 3-5 (2/3)
    partition = {"majority": [0, 1, 2], "minority": [3, 4], "unseen": []}
    result = group_accuracy(PREDS, LABELS, partition)
    assert result["per_group_accuracy"] == {"majority": pytest.approx(2 / 3), "minority": 0.5}
    assert result["empty_groups"] == ["unseen"]
    assert result["worst_group"] == "minority"
    assert result["group_average_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)

    named = group_accuracy(PREDS, LABELS, GROUPS, group_names={0: "maj", 1: "min-a", 2: "min-b", 3: "rare"})
    assert named["group_counts"] == {"maj": 2, "min-a": 2, "min-b": 2, "rare": 0}


def test_group_accuracy_string_groups():
    result = group_accuracy([1, 0, 0], [1, 1, 0], ["x", "y", "y"])
    assert result["per_group_accuracy"] == {"x": 1.0, "y": 0.5}


def test_group_accuracy_errors():
    with pytest.raises(ValueError, match="length"):
        group_accuracy(PREDS, LABELS, [0, 1])
    with pytest.raises(ValueError, match="no name"):
        group_accuracy(PREDS, LABELS, GROUPS, group_names=["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        group_accuracy(PREDS, LABELS, {"a": [], "b": []})
    with pytest.raises(ValueError, match="outside"):
        group_accuracy(PREDS, LABELS, {"a": [0, 6]})
    with pytest.raises(ValueError, match="empty"):
        group_accuracy([], [], [])


def test_label_cue_groups():
    groups, names = label_cue_groups([0, 0, 1, 1], [0, 1, 1, 1], num_cues=2, label_names=["neg", "pos"])
    assert groups == [0, 1, 3, 3]  # label·2 + cue
    assert names == ["y=neg,cue=0", "y=neg,cue=1", "y=pos,cue=0", "y=pos,cue=1"]
    result = group_accuracy([0, 1, 1, 0], [0, 0, 1, 1], groups, names)
    assert result["empty_groups"] == ["y=pos,cue=0"]
    assert result["per_group_accuracy"] == {"y=neg,cue=0": 1.0, "y=neg,cue=1": 0.0, "y=pos,cue=1": 0.5}
    assert result["worst_group_accuracy"] == 0.0
    assert result["group_average_accuracy"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- reliance


def test_reliance_hand_computed():
    # equal at positions 0 and 2: 2 of 4
    assert reliance([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert reliance([1, 0], [1, 0]) == 1.0
    assert reliance(np.array([0, 0]), np.array([1, 1])) == 0.0


def test_reliance_errors():
    with pytest.raises(ValueError, match="empty"):
        reliance([], [])
    with pytest.raises(ValueError, match="length"):
        reliance([1, 0], [1])


# --------------------------------------------------------------------------- masks


def test_mask_quality_index_lists_hand_computed():
    # s0: P={0,1,2} T={1,2,3} -> TP 2 ; s1: P={5} T={} (empty truth) ; s2: P={} T={4}
    predicted = [[0, 1, 2], [5], []]
    true = [[1, 2, 3], [], [4]]
    result = mask_quality(predicted, true)
    assert result == {
        "precision": 0.5,  # 2 / (3 + 1 + 0)
        "recall": 0.5,  # 2 / (3 + 0 + 1)
        "f1": 0.5,  # 2·2 / (4 + 4)
        "per_sample_precision": pytest.approx((2 / 3 + 0.0) / 2),  # samples with P ≠ ∅: s0, s1
        "per_sample_recall": pytest.approx((2 / 3 + 0.0) / 2),  # samples with T ≠ ∅: s0, s2
        "per_sample_f1": pytest.approx((4 / 6 + 0.0) / 2),  # s0: 2·2/(3+3), s2: 0
        "true_positives": 2,
        "predicted_positions": 4,
        "true_positions": 4,
        "num_samples": 3,
        "num_empty_truth": 1,
        "empty_truth_clean": 0.0,  # s1 masked something although nothing was to be masked
    }


def test_mask_quality_boolean_masks_equal_index_lists():
    def to_bool(indices, length=6):
        mask = np.zeros(length, dtype=bool)
        mask[indices] = True
        return mask

    predicted = [[0, 1, 2], [5], []]
    true = [[1, 2, 3], [], [4]]
    as_bool = mask_quality([to_bool(m) for m in predicted], np.stack([to_bool(m) for m in true]))
    assert as_bool == mask_quality(predicted, true)
    # a 2-D patch grid is flattened: P={0,3}, T={0,1} -> TP 1
    grid = mask_quality([np.array([[True, False], [False, True]])], [np.array([[True, True], [False, False]])])
    assert (grid["precision"], grid["recall"], grid["f1"]) == (0.5, 0.5, 0.5)
    # mixed forms: indices against a boolean mask
    mixed = mask_quality([[0, 3]], [np.array([True, True, False, False])])
    assert mixed["true_positives"] == 1


def test_mask_quality_all_truth_empty():
    clean = mask_quality([[], []], [[], []])
    assert clean["num_empty_truth"] == 2
    assert clean["empty_truth_clean"] == 1.0
    assert clean["precision"] == clean["recall"] == clean["f1"] == 0.0  # 0/0 -> 0.0
    assert clean["per_sample_recall"] == 0.0  # no sample has a defined recall
    dirty = mask_quality([[1], []], [[], []])
    assert dirty["empty_truth_clean"] == 0.5
    assert dirty["precision"] == 0.0


def test_mask_quality_errors():
    with pytest.raises(ValueError, match="empty"):
        mask_quality([], [])
    with pytest.raises(ValueError, match="length"):
        mask_quality([[1]], [[1], [2]])
    with pytest.raises(ValueError, match="boolean array or a list of integer"):
        mask_quality([[0.5]], [[1]])


# --------------------------------------------------------------------------- router


def test_router_report_hand_computed():
    predicted = ["none", "image", "none", "text", "both", "none"]
    target = [0, 1, 0, 0, 3, 2]  # none, image, none, none, both, text
    report = router_report(predicted, target)
    assert report["predicted_share"] == {"none": 0.5, "image": 1 / 6, "text": 1 / 6, "both": 1 / 6}
    assert report["target_share"] == {"none": 0.5, "image": 1 / 6, "text": 1 / 6, "both": 1 / 6}
    assert report["routed_away_share"] == 0.5
    assert report["accuracy"] == pytest.approx(4 / 6)
    per = report["per_strategy"]
    # none: predicted at 0,2,5; target at 0,2,3 -> hits 2
    assert (per["none"]["precision"], per["none"]["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert (per["image"]["precision"], per["image"]["recall"]) == (1.0, 1.0)
    assert (per["text"]["precision"], per["text"]["recall"], per["text"]["fbeta"]) == (0.0, 0.0, 0.0)
    assert (per["both"]["precision"], per["both"]["recall"]) == (1.0, 1.0)
    # routed away at {1,3,4}, should be at {1,4,5}: hits 2 -> P = R = 2/3 -> F0.5 = 2/3
    assert report["debias_precision"] == pytest.approx(2 / 3)
    assert report["debias_recall"] == pytest.approx(2 / 3)
    assert report["debias_fbeta"] == pytest.approx(2 / 3)
    assert report["macro_debias_fbeta"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert report["beta"] == 0.5


def test_router_report_fbeta_weighs_precision():
    # routed away at {0,1,2}, should be at {0,1}: hits 2 -> P = 2/3, R = 1
    # F0.5 = 1.25·(2/3)·1 / (0.25·(2/3) + 1) = (5/6) / (7/6) = 5/7
    report = router_report(["image", "image", "image", "none"], ["image", "text", "none", "none"])
    assert report["debias_precision"] == pytest.approx(2 / 3)
    assert report["debias_recall"] == 1.0
    assert report["debias_fbeta"] == pytest.approx(5 / 7)
    # image: P = 1/3, R = 1 -> F0.5 = (1.25/3) / (0.25/3 + 1) = 5/13; text: 0; both absent -> left out
    assert report["per_strategy"]["image"]["fbeta"] == pytest.approx(5 / 13)
    assert report["macro_debias_fbeta"] == pytest.approx((5 / 13 + 0.0) / 2)
    assert report["routed_away_share"] == 0.75
    # β = 1 gives the plain F1 = 2·(2/3)·1/(2/3 + 1) = 0.8
    assert router_report(["image", "image", "image", "none"], ["image", "text", "none", "none"], beta=1.0)[
        "debias_fbeta"
    ] == pytest.approx(0.8)


def test_router_report_without_targets_and_custom_names():
    shares = router_report([0, 0, 0, 1])
    assert shares["predicted_share"] == {"none": 0.75, "image": 0.25, "text": 0.0, "both": 0.0}
    assert "per_strategy" not in shares and "debias_fbeta" not in shares
    custom = router_report(["keep", "fix"], ["keep", "keep"], strategy_names=("keep", "fix"))
    assert custom["routed_away_share"] == 0.5  # no "none": the first name is the no-debias one
    assert custom["debias_precision"] == 0.0 and custom["debias_recall"] == 0.0
    assert custom["macro_debias_fbeta"] == 0.0


def test_router_report_errors():
    with pytest.raises(ValueError, match="unknown strategies"):
        router_report(["none", "imgae"], ["none", "none"])
    with pytest.raises(ValueError, match="outside"):
        router_report([0, 4], [0, 0])
    with pytest.raises(ValueError, match="empty"):
        router_report([], [])
    with pytest.raises(ValueError, match="length"):
        router_report([0, 1], [0])


# --------------------------------------------------------------------------- calibration


def test_ece_binary_hand_computed():
    # p(class 1) = [0.9, 0.8, 0.3, 0.6], labels [1, 0, 0, 1], 5 bins of width 0.2
    # confidence [0.9, 0.8, 0.7, 0.6], prediction [1, 1, 0, 1], correct [T, F, T, T]
    # bin (0.8,1.0]: {0.9}      conf 0.90 acc 1.0 gap 0.10 weight 1/4
    # bin (0.6,0.8]: {0.8, 0.7} conf 0.75 acc 0.5 gap 0.25 weight 2/4
    # bin (0.4,0.6]: {0.6}      conf 0.60 acc 1.0 gap 0.40 weight 1/4
    # ECE = 0.025 + 0.125 + 0.1 = 0.25, MCE = 0.4
    result = expected_calibration_error([0.9, 0.8, 0.3, 0.6], [1, 0, 0, 1], num_bins=5)
    assert result["ece"] == pytest.approx(0.25)
    assert result["mce"] == pytest.approx(0.4)
    assert [b["count"] for b in result["bins"]] == [0, 0, 1, 2, 1]
    assert result["bins"][3]["confidence"] == pytest.approx(0.75)
    assert result["bins"][3]["accuracy"] == 0.5
    assert result["bins"][0] == {"lower": 0.0, "upper": 0.2, "confidence": None, "accuracy": None, "count": 0}
    assert result["num_bins"] == 5 and result["num_samples"] == 4


def test_ece_multiclass_hand_computed():
    # confidence [0.7, 0.8, 0.4], prediction [0, 2, 2] vs labels [0, 1, 2] -> correct [T, F, T]
    # bin (0,0.5]: {0.4} gap |1 - 0.4| = 0.6, weight 1/3 ; bin (0.5,1]: conf 0.75 acc 0.5 gap 0.25, weight 2/3
    # ECE = 0.2 + 1/6 = 11/30
    probs = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]
    result = expected_calibration_error(probs, [0, 1, 2], num_bins=2)
    assert result["ece"] == pytest.approx(11 / 30)
    assert result["mce"] == pytest.approx(0.6)


def test_ece_perfect_and_errors():
    assert expected_calibration_error([1.0, 1.0, 0.0], [1, 1, 0])["ece"] == 0.0
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error([[2.0, -1.0]], [0])
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error([0.5], [1], num_bins=0)
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(np.zeros((0, 2)), [])


# --------------------------------------------------------------------------- evaluator


def _assert_plain_json(value):
    """Only plain Python types, all the way down."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            _assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain_json(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)


def test_evaluator_gathers_everything():
    evaluator = Evaluator(np.array(LABELS), groups=np.array(GROUPS), group_names=["a", "b", "c", "d"], num_labels=2)
    results = evaluator.evaluate(
        np.array(PREDS),
        probabilities=np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.55, 0.45], [0.7, 0.3]]),
        counterfactual_predictions={"text": [1, 1, 1, 0, 0, 0], "image": np.array(PREDS)},
        strategies=["none", "image", "none", "text", "both", "none"],
        target_strategies=[0, 1, 0, 0, 3, 2],
        predicted_masks=[[0, 1, 2]],
        true_masks=[[1, 2, 3]],
    )
    assert set(results) == {
        "num_samples", "num_labels", "metrics", "groups", "reliance", "calibration", "router", "mask_quality",
    }
    assert results["num_samples"] == 6 and results["num_labels"] == 2
    # correct [T,T,F,T,F,T]; class 1: TP 2, FP 1, FN 1 -> F1 = 4/6
    assert results["metrics"]["accuracy"] == pytest.approx(4 / 6)
    assert results["metrics"]["f1"] == pytest.approx(2 / 3)
    assert results["groups"]["worst_group_accuracy"] == 0.5
    assert results["groups"]["empty_groups"] == ["d"]
    assert results["reliance"] == {"text": pytest.approx(4 / 6), "image": 1.0}
    assert results["router"]["debias_fbeta"] == pytest.approx(2 / 3)
    assert results["mask_quality"]["precision"] == pytest.approx(2 / 3)
    assert 0.0 <= results["calibration"]["ece"] <= 1.0
    _assert_plain_json(results)
    assert json.loads(json.dumps(results, allow_nan=False)) == results


def test_evaluator_minimal_and_bare_counterfactual():
    evaluator = Evaluator([1, 0, 0, 1])
    results = evaluator.evaluate([1, 0, 1, 1], counterfactual_predictions=[1, 1, 1, 0])
    assert set(results) == {"num_samples", "num_labels", "metrics", "reliance"}
    assert results["metrics"]["f1"] == pytest.approx(0.8)
    assert results["reliance"] == {"counterfactual": 0.5}
    shares = evaluator.evaluate([1, 0, 1, 1], strategies=[0, 0, 0, 1])["router"]
    assert shares["routed_away_share"] == 0.25 and "debias_fbeta" not in shares


def test_evaluator_errors():
    with pytest.raises(ValueError, match="length"):
        Evaluator([1, 0], groups=[0])
    evaluator = Evaluator([1, 0])
    with pytest.raises(ValueError, match="length"):
        evaluator.evaluate([1])
    with pytest.raises(ValueError, match="target_strategies"):
        evaluator.evaluate([1, 0], target_strategies=[0, 0])
    with pytest.raises(ValueError, match="both"):
        evaluator.evaluate([1, 0], predicted_masks=[[1]])
