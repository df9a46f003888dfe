"""`evaluate_model`: a saved tiny model + synthetic rows → report files whose figures equal the
ones computed directly from `collect_outputs`."""

import json

import numpy as np
import pytest
import torch
from conftest import nudge_experts

from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.evaluation.diagnostics import expected_calibration_error
from mme_jd.evaluation.run import evaluate_model
from mme_jd.inference import collect_outputs
from mme_jd.tiny import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model().eval()
    nudge_experts(model, scale=0.3)
    with torch.no_grad():
        model.router.out.bias.copy_(torch.tensor([1.0, 0.3, 0.3, 0.0]))
    model.config.lambda_text, model.config.lambda_image = 0.3, 0.2
    data = make_synthetic_benchmark(num_test=64, seed=3, splits=["test_balanced", "test_ood"])
    # route about half of the samples away from `none`: the threshold at the median
    router_logits = collect_outputs(model, model.processor, data["test_balanced"], mode="mme_jd")["router_logits"]
    model.config.router_threshold = float((1 - router_logits.softmax(-1)[:, 0]).median())
    folder = tmp_path_factory.mktemp("evaluate") / "model"
    model.save_pretrained(folder)
    return model, folder, data


def _direct(model, rows, mode):
    extra = dict(counterfactual_parts=("text", "image"), text_counterfactual="lexical") if mode == "mid" else {}
    out = collect_outputs(model, model.processor, rows, batch_size=16, mode=mode, **extra)
    cue_only = collect_outputs(model, model.processor, rows, batch_size=16, mode="mid",
                               counterfactual_parts=("text", "image"), text_counterfactual="lexical")
    predictions, labels, groups = out["logits"].argmax(-1), out["labels"], out["groups"]
    per_group = [float((predictions[groups == g] == labels[groups == g]).float().mean()) for g in groups.unique()]
    return {
        "out": out,
        "accuracy": float((predictions == labels).float().mean()),
        "worst_group_accuracy": min(per_group),
        "reliance_text": float((predictions == cue_only["text_counterfactual_logits"].argmax(-1)).float().mean()),
        "reliance_image": float((predictions == cue_only["image_counterfactual_logits"].argmax(-1)).float().mean()),
        "ece": expected_calibration_error(out["logits"].softmax(-1).numpy(), labels.numpy())["ece"],
    }


def test_report_files_and_figures_match_collect_outputs(saved, tmp_path):
    model, folder, data = saved
    results = evaluate_model(str(folder), data["test_balanced"], tmp_path / "report", mode="mme_jd", batch_size=16,
                             formats=("json", "md"), progress=False)
    for name in ("report.json", "report.md", "groups.png", "routing.png", "reliability.png"):
        assert (tmp_path / "report" / name).is_file(), name
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {"metrics", "groups", "reliance", "calibration", "router", "experts", "evaluation"} <= set(written)
    assert set(written["reliance"]) == {"text", "image"}
    assert set(written["experts"]) == {"general", "image_debias", "text_debias"}
    markdown = (tmp_path / "report" / "report.md").read_text()
    for needle in ("Worst-group accuracy", "Reliance (text counterfactual)", "ECE", "Routed away from `none`"):
        assert needle in markdown

    direct = _direct(model, data["test_balanced"], "mme_jd")
    assert written["metrics"]["accuracy"] == pytest.approx(direct["accuracy"])
    assert written["groups"]["worst_group_accuracy"] == pytest.approx(direct["worst_group_accuracy"])
    assert written["reliance"]["text"] == pytest.approx(direct["reliance_text"])
    assert written["reliance"]["image"] == pytest.approx(direct["reliance_image"])
    assert written["calibration"]["ece"] == pytest.approx(direct["ece"])
    strategy = direct["out"]["strategy"]
    assert 0 < written["router"]["routed_away_share"] < 1
    assert written["router"]["routed_away_share"] == pytest.approx(float((strategy != 0).float().mean()))
    for index, name in enumerate(("none", "image", "text", "both")):
        assert written["router"]["predicted_share"][name] == pytest.approx(float((strategy == index).float().mean()))
    general = direct["out"]["general_logits"].argmax(-1)
    expert_accuracy = float((general == direct["out"]["labels"]).float().mean())
    assert written["experts"]["general"]["accuracy"] == pytest.approx(expert_accuracy)
    assert results["files"]["json"].endswith("report.json")
    assert "Sarcastic" not in written["groups"]["per_group_accuracy"]  # names are the synthetic groups'
    assert any(name.startswith("sarcastic|text_cue=") for name in written["groups"]["per_group_accuracy"])


def test_mid_mode_on_a_model_object_and_a_dataset_dict(saved, tmp_path):
    model, _, data = saved
    results = evaluate_model(model, data, tmp_path / "mid", mode="mid", batch_size=32, formats="json",
                             split="test_ood", progress=False)
    assert (tmp_path / "mid" / "report.json").is_file() and not (tmp_path / "mid" / "report.md").exists()
    direct = _direct(model, data["test_ood"], "mid")
    assert results["metrics"]["accuracy"] == pytest.approx(direct["accuracy"])
    assert results["groups"]["worst_group_accuracy"] == pytest.approx(direct["worst_group_accuracy"])
    assert results["reliance"]["text"] == pytest.approx(direct["reliance_text"])
    assert "router" not in results and results["evaluation"]["lambda_text"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="split"):
        evaluate_model(model, data, tmp_path / "x", progress=False)
    assert np.isfinite(results["calibration"]["ece"])


def test_the_report_scores_the_router_against_its_training_targets(tmp_path, monkeypatch):
    """The evaluation report's router targets are the router stage's training targets, one rule
    (`routing_mme_jd.strategy_targets`, with the experts' confidences): on a row where both debias
    experts are right and the text expert is more confident, both say `text`. Each side gets
    the same expert logits through a stand-in for `collect_outputs`."""
    import datasets
    from conftest import random_images
    from transformers import TrainingArguments

    import mme_jd.inference
    import mme_jd.training.run as training_run
    from mme_jd.modeling.routing_mme_jd import STRATEGY_NAMES
    from mme_jd.training.run import MMEJDTrainingConfig, _router_stage

    labels = torch.tensor([1, 1, 0, 1])
    # row 0: general wrong, both debias experts right, text more confident (P 0.9 vs 0.6) → text
    # row 1: general right → none; row 2: only image right → image; row 3: nothing right → none
    general = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    image = torch.tensor([[0.0, 0.4055], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    text = torch.tensor([[0.0, 2.1972], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    outputs = {"labels": labels, "logits": general, "general_logits": general, "image_debias_logits": image,
               "text_debias_logits": text, "router_logits": torch.zeros(4, 4), "strategy": torch.zeros(4).long(),
               "pooled_hidden_state": torch.zeros(4, 8), "text_counterfactual_logits": general,
               "image_counterfactual_logits": general}

    def stand_in(*args, expert=None, **kwargs):  # one expert's pass: its logits are `logits`
        return {**outputs, "logits": outputs[f"{expert}_logits"]} if expert else dict(outputs)

    monkeypatch.setattr(mme_jd.inference, "collect_outputs", stand_in)
    trained_on = {}

    def train_router(model, pooled, targets, *args, **kwargs):
        trained_on["targets"] = targets
        return {}

    monkeypatch.setattr(training_run, "train_router", train_router)
    model = tiny_model().eval()
    rows = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "image": random_images(4), "label": labels.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path / "train"), report_to="none", use_cpu=True)
    splits, config = {"validation_balanced": rows}, MMEJDTrainingConfig()
    _router_stage(model, model.processor, splits, args, config,
                  training_run.CueOnlyPasses(model, model.processor, splits, config, {}))
    assert trained_on["targets"].tolist() == [2, 0, 1, 0]

    report = evaluate_model(model, rows, tmp_path / "report", mode="mme_jd", formats=("json",), progress=False)
    trained = trained_on["targets"]
    assert report["router"]["target_counts"] == {name: int((trained == i).sum()) for i, name in enumerate(STRATEGY_NAMES)}
    assert report["router"]["target_counts"] == {"none": 2, "image": 1, "text": 1, "both": 0}  # row 0: text


def test_collect_outputs_runs_like_length_batches_and_returns_rows_in_their_order(saved):
    """Batches of like text length (`length_order`), outputs and metadata back in the rows'
    order: every row's logits, label, group, routing and counterfactual text match a pass of
    that row alone."""
    from mme_jd.inference import length_order

    model, _, data = saved
    rows = data["test_balanced"].select(range(24))
    rows = rows.map(lambda row, i: {"text": row["text"] + " very" * (i % 5)}, with_indices=True)  # lengths vary
    order = length_order(rows)
    lengths = [len(text) for text in rows["text"]]
    assert sorted(order) == list(range(len(rows))) and order != list(range(len(rows)))
    assert [lengths[i] for i in order] == sorted(lengths)
    assert length_order([{"text": "a b c"}, {"text": "a"}, {"text": "a b"}]) == [1, 2, 0]
    out = collect_outputs(model, model.processor, rows, batch_size=8, mode="mme_jd", counterfactual_parts=("text",),
                          text_counterfactual="lexical", keep_metadata=True)
    assert out["labels"].tolist() == rows["label"] and out["groups"].tolist() == rows["group"]
    for i in (0, 7, 23):
        alone = collect_outputs(model, model.processor, rows.select([i]), batch_size=1, mode="mme_jd",
                                counterfactual_parts=("text",), text_counterfactual="lexical", keep_metadata=True)
        assert torch.allclose(out["logits"][i], alone["logits"][0], atol=1e-5)
        assert out["strategy"][i] == alone["strategy"][0]
        assert out["metadata"]["text_counterfactual"][i] == alone["metadata"]["text_counterfactual"][0]
