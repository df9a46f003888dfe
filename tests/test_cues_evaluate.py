"""Per-cue evaluation (`evaluate_model(cues=...)`, `mme-jd evaluate --cue`) on a tiny trained model."""

import json

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from mme_jd.cli import main
from mme_jd.cues import Cue
from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.evaluation.diagnostics import cue_figures, cue_label
from mme_jd.evaluation.run import evaluate_model
from mme_jd.inference import collect_outputs
from mme_jd.tiny import tiny_model
from mme_jd.training import MMEJDTrainingConfig, train
from mme_jd.training.run import INFERRED_GROUPS

CUES = [Cue("irony", pattern="#irony"), Cue("red", image="dominant hue", params={"hue": 0}, label="sarcastic")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_synthetic_benchmark(num_train=64, num_validation_balanced=16, num_test=48, seed=4,
                                    splits=["train", "validation_balanced", "test_ood"])
    output = tmp_path_factory.mktemp("cue_eval")
    args = TrainingArguments(output_dir=str(output), per_device_train_batch_size=16, max_steps=3, learning_rate=5e-3,
                             report_to="none", use_cpu=True, seed=0, disable_tqdm=True, save_strategy="no")
    model = tiny_model()
    train(model, data, args, MMEJDTrainingConfig(recipe="general"))
    return model, output / "final", data


def test_cue_figures_by_hand():
    predictions, labels = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    flags = np.array([True, True, False, False, True, False])
    assert cue_label(labels, flags) == 1
    figures = cue_figures(predictions, labels, flags, 1, cue_only_predictions=np.array([1, 1, 1, 1, 0, 0]),
                          label_names=["no", "yes"])
    # groups: y=no,absent {2, 5}: 1.0; y=no,present {1}: 0.0; y=yes,absent {3}: 0.0; y=yes,present {0, 4}: 1.0
    assert figures["worst_group_accuracy"] == 0.0 and figures["group_average_accuracy"] == 0.5
    assert figures["wrong_way_count"] == 2 and figures["wrong_way_accuracy"] == 0.0  # rows 1 and 3
    assert figures["reliance"] == pytest.approx(2 / 3) and figures["reliance_rows"] == 3
    assert figures["points_to"] == "yes"


def test_per_cue_report_on_a_tiny_trained_model(trained, tmp_path):
    model, folder, data = trained
    rows = data["test_ood"]
    results = evaluate_model(str(folder), rows, tmp_path, mode="general", batch_size=16, formats=("json", "md", "html"),
                             progress=False, cues=CUES)
    written = json.loads((tmp_path / "report.json").read_text())
    assert set(written["cues"]) == {"irony", "red"}
    irony, red = written["cues"]["irony"], written["cues"]["red"]
    # estimated on these rows, which reverse the cues: why a cue's label is better declared (as red's is)
    assert irony["points_to"] == "not_sarcastic" and irony["points_to_source"] == "estimated on these rows"
    assert red["points_to"] == "sarcastic"
    assert red["points_to_source"] == "declared" and red["kind"] == "image"
    # the figures equal those computed directly from the model's predictions
    direct = collect_outputs(model, model.processor, rows, batch_size=16, mode="general")
    predictions, labels = direct["logits"].argmax(-1).numpy(), direct["labels"].numpy()
    flags = np.array(["#irony" in t.split() for t in rows["text"]])
    cue_only = collect_outputs(model, model.processor, rows, batch_size=16, mode="general",
                               counterfactual_parts=("text",), text_counterfactual="cue_only", cues=CUES[:1])
    expected = cue_figures(predictions, labels, flags, 0, cue_only["text_counterfactual_logits"].argmax(-1).numpy(),
                           ["not_sarcastic", "sarcastic"])
    for key in ("worst_group_accuracy", "group_average_accuracy", "wrong_way_accuracy", "reliance"):
        assert irony[key] == pytest.approx(expected[key]), key
    # wrong way for red (points to sarcastic): the rows whose background disagrees with the label
    assert red["wrong_way_count"] == int(np.sum(np.array(rows["image_cue"]) != labels)) > len(labels) / 2
    markdown = (tmp_path / "report.md").read_text()
    assert "Declared cues" in markdown and "cue_groups.png" in markdown and "Wrong-way accuracy" in markdown
    assert (tmp_path / "cue_groups.png").is_file() and "Declared cues" in (tmp_path / "report.html").read_text()
    assert results["files"]["cue_groups"].endswith("cue_groups.png")


def test_evaluate_command_takes_cues(trained, tmp_path):
    _, folder, _ = trained
    code = main(["evaluate", str(folder), "--rows", "16", "--seed", "1", "--output-dir", str(tmp_path),
                 "--mode", "mme_jd", "--cue", "irony:sarcastic=#irony", "--cue", "red=image:dominant hue"])
    assert code == 0
    cues = json.loads((tmp_path / "report.json").read_text())["cues"]
    assert set(cues["irony"]["methods"]) == {"mixture", "general", "image_debias", "text_debias"}
    assert cues["irony"]["points_to_source"] == "declared" and cues["irony"]["points_to"] == "sarcastic"
    assert main(["evaluate", str(folder), "--output-dir", str(tmp_path), "--cue", "bad=("]) == 1
    assert main(["evaluate", str(folder), "--rows", "8", "--output-dir", str(tmp_path), "--cue", "x:nope=#x"]) == 1


# ---------------------------------------------------------------------------- selection with groups


def test_selection_falls_back_to_macro_f1_without_groups():
    from mme_jd.training.mid import fit_lambdas, selection_score

    labels = torch.tensor([0, 0, 0, 1])
    majority = torch.tensor([0, 0, 0, 0])
    assert selection_score(majority, labels, None) == pytest.approx((6 / 7) / 2)  # macro F1, not accuracy 0.75
    assert selection_score(majority, labels, torch.tensor([0, 0, 1, 1])) == 0.5  # worst-group accuracy
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 1.0]])
    text_cf = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.5, 0.0]])
    fitted = fit_lambdas(logits, text_cf, torch.zeros(4, 2), labels)
    assert fitted["selection_metric"] == "macro_f1" and fitted["worst_group_accuracy"] is None
    assert fitted["selection_score"] == 1.0 and fitted["lambda_text"] == pytest.approx(0.7)


def test_selection_groups_come_from_declared_cues_on_a_real_style_split(caplog):
    from mme_jd.training.run import selection_groups

    rows = make_synthetic_benchmark(num_validation=40, seed=5, splits=["validation"])["validation"]
    rows = rows.remove_columns(["group", "text_cue", "image_cue"])  # a real split has no group column
    with_cues = MMEJDTrainingConfig(cues=[Cue("irony", pattern="#irony")])
    out, column, sizes = selection_groups(rows, with_cues, "validation", "router selection")
    assert column == "cue_group" and sum(sizes.values()) == 40
    assert set(sizes) <= {"not_sarcastic|irony=0", "not_sarcastic|irony=1", "sarcastic|irony=0", "sarcastic|irony=1"}
    warned: dict = {}
    with caplog.at_level("WARNING", logger="mme_jd"):
        for step in ("router selection", "MID lambda selection"):
            assert selection_groups(rows, MMEJDTrainingConfig(infer_selection_groups=False), "validation", step,
                                    warned)[1] is None
    # by default the caller infers the groups (`CueOnlyPasses`): nothing to warn about here
    assert selection_groups(rows, MMEJDTrainingConfig(), "validation", "router selection", {})[1] is None
    assert sum("falls back to macro_f1" in r.message for r in caplog.records) == 1  # warned once


def test_training_selects_on_cue_groups_of_a_split_without_a_group_column(tmp_path):
    from mme_jd.training import refit_router

    data = make_synthetic_benchmark(num_train=32, num_validation=32, seed=6, splits=["train", "validation"])
    data["validation"] = data["validation"].remove_columns("group")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=2, report_to="none",
                             use_cpu=True, seed=0, disable_tqdm=True, save_strategy="no")
    config = MMEJDTrainingConfig(recipe="mid", router_split="validation", mid_split="validation", router_epochs=1,
                                 cues=[Cue("irony", pattern="#irony"), Cue("red", image="dominant hue")])
    model = tiny_model()
    report = train(model, data, args, config)
    mid = report["stages"][-1]
    assert mid["selection_groups"]["column"] == "cue_group" and mid["selection_metric"] == "worst_group_accuracy"
    assert sum(mid["selection_groups"]["sizes"].values()) == 32
    assert [c["name"] for c in model.config.cues] == ["irony", "red"]  # saved with the model
    router = refit_router(model, data, args, config)
    assert router["selection_groups"]["column"] == "cue_group" and router["validation_worst_group_accuracy"] is not None
    no_groups = refit_router(model, data, args, MMEJDTrainingConfig(router_split="validation", router_epochs=1,
                                                                   infer_selection_groups=False))
    assert no_groups["selection_metric"] == "macro_f1" and no_groups["validation_worst_group_accuracy"] is None
    inferred = refit_router(model, data, args, MMEJDTrainingConfig(router_split="validation", router_epochs=1))
    assert inferred["selection_groups"]["column"] == INFERRED_GROUPS
    assert inferred["selection_metric"] == "worst_group_accuracy"
    assert sum(inferred["selection_groups"]["sizes"].values()) == 32
