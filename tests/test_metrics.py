"""Task metrics: hand-computed cases, edge cases, the evaluate module, scikit-learn cross-check."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from mme_jd.evaluation.metrics import METRIC_MODULE_PATH, classification_metrics, load_metric, recovery_ratio


def approx(expected: dict[str, float]):
    return pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- hand-computed


def test_binary_hand_computed():
    # preds [1,0,1,1] vs labels [1,0,0,1]
    # class 1: TP=2 FP=1 FN=0 -> P=2/3, R=1, F1=2·2/(2·2+1+0)=0.8
    # class 0: TP=1 FP=0 FN=1 -> P=1,   R=1/2, F1=2/(2+0+1)=2/3
    result = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])
    assert result == approx(
        {
            "accuracy": 0.75,
            "precision": 2 / 3,
            "recall": 1.0,
            "f1": 0.8,
            "macro_precision": (1 + 2 / 3) / 2,  # 5/6
            "macro_recall": (0.5 + 1) / 2,  # 0.75
            "macro_f1": (0.8 + 2 / 3) / 2,  # 0.7333
            "weighted_f1": (2 * 0.8 + 2 * 2 / 3) / 4,  # supports 2 and 2
        }
    )
    assert all(type(v) is float for v in result.values())


def test_three_classes_hand_computed():
    # preds [0,1,2,2,1,0] vs refs [0,1,1,2,2,2]
    # class 0: TP=1 FP=1 FN=0 support 1 -> P=1/2 R=1   F1=2/3
    # class 1: TP=1 FP=1 FN=1 support 2 -> P=1/2 R=1/2 F1=1/2
    # class 2: TP=1 FP=1 FN=2 support 3 -> P=1/2 R=1/3 F1=2/(2+1+2)=0.4
    preds, refs = [0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 2]
    result = classification_metrics(preds, refs)
    assert result == approx(
        {
            "accuracy": 0.5,
            "macro_precision": 0.5,
            "macro_recall": (1 + 0.5 + 1 / 3) / 3,
            "macro_f1": (2 / 3 + 0.5 + 0.4) / 3,
            "weighted_f1": (1 * 2 / 3 + 2 * 0.5 + 3 * 0.4) / 6,
        }
    )
    assert "f1" not in result  # no binary figures for 3 classes by default

    binary = classification_metrics(preds, refs, average="binary", pos_label=2)
    assert binary["precision"] == pytest.approx(0.5)
    assert binary["recall"] == pytest.approx(1 / 3)
    assert binary["f1"] == pytest.approx(0.4)


def test_pos_label_zero():
    # same data as the binary case, class 0 as positive: P=1, R=1/2, F1=2/3
    result = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], pos_label=0)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))


def test_class_never_predicted_counts_zero():
    # preds all 0 vs refs [0,1,0,1]
    # class 1: TP=0 FP=0 FN=2 -> P = 0/0 -> 0.0, R=0, F1=0
    # class 0: TP=2 FP=2 FN=0 -> P=1/2, R=1, F1=4/6
    result = classification_metrics([0, 0, 0, 0], [0, 1, 0, 1])
    assert result == approx(
        {
            "accuracy": 0.5,
            "precision": 0.0,
            "recall": 0.0,
            "f1": 0.0,
            "macro_precision": 0.25,
            "macro_recall": 0.5,
            "macro_f1": 1 / 3,
            "weighted_f1": (2 * 2 / 3 + 2 * 0.0) / 4,
        }
    )


def test_only_positive_class_present():
    result = classification_metrics([1, 1, 1], [1, 1, 1])
    assert result == approx(
        {
            "accuracy": 1.0,
            "precision": 1.0,
            "recall": 1.0,
            "f1": 1.0,
            # class 0 is absent from both: left out of the macro averages
            "macro_precision": 1.0,
            "macro_recall": 1.0,
            "macro_f1": 1.0,
            "weighted_f1": 1.0,
        }
    )


def test_only_negative_class_present_is_still_binary():
    # K is inferred as max(1, 2) = 2, so the positive class gets 0/0 -> 0.0 figures
    result = classification_metrics([0, 0], [0, 0])
    assert result["accuracy"] == 1.0
    assert (result["precision"], result["recall"], result["f1"]) == (0.0, 0.0, 0.0)
    assert result["macro_f1"] == 1.0
    assert result["weighted_f1"] == 1.0


def test_num_labels_with_an_absent_class():
    result = classification_metrics([0, 1], [0, 1], num_labels=3)
    assert result["macro_f1"] == 1.0
    assert "f1" not in result  # 3 classes: no binary figures


def test_accepts_numpy_and_integer_floats():
    result = classification_metrics(np.array([1.0, 0.0, 1.0, 1.0]), np.array([1, 0, 0, 1], dtype=np.int32))
    assert result["f1"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(predictions=[], references=[]), "empty"),
        (dict(predictions=[0, 1], references=[0]), "length"),
        (dict(predictions=[0, 3], references=[0, 1], num_labels=2), "num_labels"),
        (dict(predictions=[0.2, 0.8], references=[0, 1]), "integer"),
        (dict(predictions=[0, 1], references=[0, 1], average="micro"), "average"),
        (dict(predictions=[0, 1], references=[0, 1], pos_label=2), "pos_label"),
        (dict(predictions=[-1, 1], references=[0, 1]), "non-negative"),
    ],
)
def test_invalid_input_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(**kwargs)


# --------------------------------------------------------------------------- recovery ratio


def test_recovery_ratio_hand_computed():
    # the issue 15 prototype, F1 on MMSD2.0 test: ERM on MMSD 0.570, ERM on MMSD2.0 0.705 (gap 0.135)
    assert recovery_ratio(0.630, 0.570, 0.705) == pytest.approx(0.060 / 0.135)  # "cue removed": 0.444...
    assert recovery_ratio(0.630, 0.570, 0.705) == pytest.approx(4 / 9)
    assert recovery_ratio(0.574, 0.570, 0.705) == pytest.approx(0.004 / 0.135)  # MME-JD: 0.0296
    assert recovery_ratio(0.570, 0.570, 0.705) == 0.0  # ERM's own
    assert recovery_ratio(0.705, 0.570, 0.705) == pytest.approx(1.0)  # the cue-free reference's
    assert recovery_ratio(0.500, 0.570, 0.705) == pytest.approx(-0.070 / 0.135)  # lost ground: negative
    assert recovery_ratio(0.750, 0.570, 0.705) == pytest.approx(0.180 / 0.135)  # beat the reference: above 1
    assert recovery_ratio(np.float32(0.5), 0.25, 0.75) == pytest.approx(0.5)
    assert type(recovery_ratio(0.630, 0.570, 0.705)) is float


def test_recovery_ratio_is_nan_without_a_gap_and_refuses_non_f1_values():
    import math

    assert math.isnan(recovery_ratio(0.6, 0.570, 0.570))  # clean ERM no better: nothing to recover
    assert math.isnan(recovery_ratio(0.6, 0.705, 0.570))  # clean ERM worse
    for bad in (1.2, -0.1, float("nan"), "0.5", None, True):
        with pytest.raises(ValueError, match="must be an F1 score"):
            recovery_ratio(bad, 0.570, 0.705)
    with pytest.raises(ValueError, match="f1_erm_clean"):
        recovery_ratio(0.6, 0.570, 70.5)


# --------------------------------------------------------------------------- evaluate module


@pytest.fixture(scope="module")
def metric():
    pytest.importorskip("evaluate")
    return load_metric(keep_in_memory=True)


def test_metric_module_is_a_standalone_file():
    # evaluate.load copies the script elsewhere: it may import neither mme_jd nor siblings.
    tree = ast.parse(METRIC_MODULE_PATH.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the metric script"
            imported.add(node.module.split(".")[0])
    assert imported == {"__future__", "numpy", "datasets", "evaluate"}


def test_evaluate_module_matches_classification_metrics(metric):
    import evaluate

    assert isinstance(metric, evaluate.Metric)
    assert set(metric.features) == {"predictions", "references"}
    assert metric.features["predictions"].dtype == "int32"
    rng = np.random.default_rng(0)
    cases = [
        (dict(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1]), {}),
        (dict(predictions=[0, 1, 2, 2, 1, 0], references=[0, 1, 1, 2, 2, 2]), {}),
        (dict(predictions=[0, 1, 2, 2, 1, 0], references=[0, 1, 1, 2, 2, 2]), dict(average="binary", pos_label=2)),
        (dict(predictions=[0, 0, 0, 0], references=[0, 1, 0, 1]), dict(num_labels=2, pos_label=0)),
        (dict(predictions=rng.integers(0, 3, 50).tolist(), references=rng.integers(0, 3, 50).tolist()), {}),
    ]
    for inputs, kwargs in cases:
        via_evaluate = metric.compute(**inputs, **kwargs)
        direct = classification_metrics(inputs["predictions"], inputs["references"], **kwargs)
        assert via_evaluate == direct
    assert metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])["f1"] == pytest.approx(0.8)


def test_evaluate_module_add_batch(metric):
    metric.add_batch(predictions=[1, 0], references=[1, 0])
    metric.add_batch(predictions=[1, 1], references=[0, 1])
    assert metric.compute() == classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])


def test_evaluate_module_empty_input_raises(metric):
    with pytest.raises(ValueError, match="empty"):
        metric.compute(predictions=[], references=[])


# --------------------------------------------------------------------------- scikit-learn


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_matches_sklearn_on_random_inputs(num_classes):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(num_classes)
    for trial in range(20):
        n = int(rng.integers(1, 40))
        # skewed predictions so that some classes go unpredicted
        preds = rng.choice(num_classes, size=n, p=np.r_[0.6, np.full(num_classes - 1, 0.4 / (num_classes - 1))])
        refs = rng.integers(0, num_classes, size=n)
        ours = classification_metrics(preds, refs, num_labels=num_classes)
        kw = dict(zero_division=0)
        assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(refs, preds))
        assert ours["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(refs, preds, average="macro", **kw))
        assert ours["weighted_f1"] == pytest.approx(sklearn_metrics.f1_score(refs, preds, average="weighted", **kw))
        assert ours["macro_precision"] == pytest.approx(
            sklearn_metrics.precision_score(refs, preds, average="macro", **kw)
        )
        assert ours["macro_recall"] == pytest.approx(sklearn_metrics.recall_score(refs, preds, average="macro", **kw))
        if num_classes == 2:
            assert ours["f1"] == pytest.approx(sklearn_metrics.f1_score(refs, preds, pos_label=1, labels=[0, 1], **kw))
            assert ours["precision"] == pytest.approx(
                sklearn_metrics.precision_score(refs, preds, pos_label=1, labels=[0, 1], **kw)
            )
            assert ours["recall"] == pytest.approx(
                sklearn_metrics.recall_score(refs, preds, pos_label=1, labels=[0, 1], **kw)
            )


def test_reliance_beyond_chance_hand_computed():
    from mme_jd.evaluation.metrics import reliance_beyond_chance

    # agreement 3/4; class rates original (1/4, 3/4), cue-only (1/2, 1/2): chance 1/8 + 3/8 = 1/2
    assert reliance_beyond_chance([0, 1, 1, 1], [0, 1, 1, 0]) == pytest.approx(0.25)
    # a model that follows the cue exactly on a balanced split: 1 - 1/2
    assert reliance_beyond_chance([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    # one class everywhere agrees by chance only, however often it agrees
    assert reliance_beyond_chance([1, 1, 1, 1], [1, 1, 0, 1]) == pytest.approx(0.0)
    # a model that goes against the cue is below chance
    assert reliance_beyond_chance([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="one cue-only prediction per prediction"):
        reliance_beyond_chance([0, 1], [1])
