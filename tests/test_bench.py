"""The bench machinery on a tiny budget (random tiny model, 64 rows, 2 steps), JTT's upweighted
training set and Group DRO's group weights."""

import json
import math
from collections import Counter

import pytest
import torch
from transformers import TrainingArguments

from mme_jd import bench
from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.inference import collect_outputs
from mme_jd.modeling.configuration_mme_jd import ROUTER_STRATEGIES
from mme_jd.tiny import tiny_model
from mme_jd.training import peers


def _args(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=16, max_steps=3, learning_rate=5e-3,
                  save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_benchmark(num_train=64, num_validation_balanced=32, num_test=32, seed=2,
                                    splits=["train", "validation_balanced", "test_balanced"])


def test_bench_writes_every_method_and_figure(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nintro\n")
    summary = bench.run_bench(
        quick=True, output_dir=tmp_path / "results", model_factory=tiny_model, readme=readme, num_train=64,
        num_test=32, num_validation_balanced=32, max_steps=2, timing_repeats=1, jtt_upweights=(2, 3),
        group_dro_step_sizes=(0.1, 1.0), training_overrides={"router_epochs": 2}, skip_methods=(), progress=None,
    )
    results = tmp_path / "results"
    settings = bench.BenchSettings.for_run(quick=True)  # the schedule fields the run above keeps
    seed = json.loads((results / "synthetic_quick_seed0.json").read_text())
    assert list(seed["methods"]) == list(bench.METHODS)
    for name, entry in seed["methods"].items():
        for split in bench.TEST_SPLITS:
            figures = entry["splits"][split]
            for key in ("accuracy", "f1", "worst_group_accuracy", "reliance_text", "reliance_image"):
                assert 0.0 <= figures[key] <= 1.0, (name, split, key)
        if name == "MME-JD (general's schedule)":  # routed as the mme_jd run is; its inference is not timed again
            assert entry["inference_ratio"] is None and entry["knobs"]["debias_epochs"] == settings.epochs
        else:
            assert entry["inference_ratio"] > 0 and entry["samples_per_second"] > 0, name
        if "expert" not in name:
            assert entry["training_ratio"] > 0, name
    assert seed["methods"]["ERM"]["training_ratio"] == 1.0
    assert "mme_jd_generals_schedule" in seed["training"]  # trained on its own
    # the mme_jd run's debias stages on the bench's shorter schedule, the variant's on the general stage's
    stage_schedules = {run: {stage["stage"]: (stage.get("epochs"), stage.get("learning_rate"))
                             for stage in seed["training"][run]["stages"]}
                       for run in ("mme_jd", "mme_jd_generals_schedule")}
    assert stage_schedules["mme_jd"]["text_debias"] == (settings.debias_epochs, settings.debias_learning_rate)
    assert stage_schedules["mme_jd_generals_schedule"]["text_debias"] == (settings.epochs, settings.learning_rate)
    assert stage_schedules["mme_jd"]["general"] == (settings.epochs, settings.learning_rate)
    environment = seed["environment"]  # what made the figures, recorded in every results file
    assert environment["packages"]["transformers"] and environment["torch_threads"] == 1
    assert len(environment["base_weights_sha256"]) == 64
    assert environment["lock_sha256"] is None or len(environment["lock_sha256"]) == 64
    assert seed["methods"]["MME-JD all experts"]["identical_predictions_to_routed"] is True
    assert seed["methods"]["JTT"]["knobs"]["upweight"] in (2, 3)
    assert seed["methods"]["Group DRO"]["knobs"]["step_size"] in (0.1, 1.0)
    timing = seed["timing"]["mme_jd"]
    assert set(timing["ratio_to_general"]) == {"general", "mme_jd_routed", "mme_jd_all", "mme_jd_budget",
                                               "mme_jd_best_wga", "mid"}
    strategies = (None, *ROUTER_STRATEGIES[1:])
    routed = seed["methods"]["MME-JD routed"]["knobs"]
    assert routed["router_cost_tolerance"] == 0.01 and routed["routed_strategy"] in strategies  # the default
    best = seed["methods"]["MME-JD routed (best WGA)"]["knobs"]
    assert best["router_cost_tolerance"] == 0.0 and best["routed_strategy"] in strategies
    budget = seed["methods"]["MME-JD routed (budget)"]["knobs"]
    assert budget["routed_budget"] == 0.25 and 0.0 <= budget["router_threshold"] <= 1.0
    assert timing["ratio_to_general"]["general"] == 1.0
    assert {"general", "image_debias", "text_debias"} <= set(timing["breakdown"]["mme_jd_all"]["experts"])

    written = json.loads((results / "synthetic_quick.json").read_text())
    assert written["methods"]["MME-JD routed"]["splits"]["test_balanced"]["worst_group_accuracy"]["n"] == 1
    assert summary["methods"].keys() == written["methods"].keys()
    markdown = (results / "synthetic_quick.md").read_text()
    header = "| Method | ID acc | ID F1 | OOD acc | OOD F1 | Bal. acc | Bal. F1 | WGA |"
    assert header in markdown
    for name, description in bench.METHODS.items():  # each method's one description, from the registry
        assert f"| {name} |" in markdown and f"- **{name}**: {description}" in markdown
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n")
    assert text.count(bench.README_START) == 1 and text.count(bench.README_END) == 1
    assert "| MME-JD routed |" in text.split(bench.README_START)[1]
    assert not (results / "tmp").exists() or not any((results / "tmp").iterdir())


def test_quick_keeps_the_story_and_leaves_out_only_registry_methods():
    quick = bench.BenchSettings.for_run(True)
    assert set(quick.skip_methods) <= set(bench.METHODS)
    assert {"ERM", "Oracle", "MCTD", "MME-JD routed"}.isdisjoint(quick.skip_methods)
    # the oracle is trained as long as in the full run: in 3 epochs it is no ceiling
    assert quick.oracle_epochs == bench.BenchSettings.for_run(False).oracle_epochs
    with pytest.raises(ValueError, match="no such bench methods"):
        bench.run_seed(0, bench.BenchSettings.for_run(True, skip_methods=("ERN",)), tiny_model, None)


def test_time_variants_warms_up_then_rotates():
    calls = []
    seconds = bench.time_variants(calls.append, ["a", "b", "c"], repeats=3)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3, "c": 3}


def test_inference_variants_leave_the_trained_model_unchanged(data):
    """Other routings and executions run on configured copies: the model's config and weights
    stay as they were, and a copy at the model's own settings is the model itself."""
    model = tiny_model().eval()
    config, weights = model.config.to_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    rows = data["test_balanced"].select(range(16))
    timing = bench.measure_inference(model, rows, batch_size=8, repeats=1,
                                     variants=("general", "mme_jd_routed", "mme_jd_all", "mme_jd_text", "mid"),
                                     routings={"text": (0.0, "text")})
    assert model.config.to_dict() == config
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert set(timing["ratio_to_general"]) == {"general", "mme_jd_routed", "mme_jd_all", "mme_jd_text", "mid"}
    assert set(timing["breakdown"]["mme_jd_text"]["experts"]) == {"text_debias"}  # one pass: every row routed
    assert bench.configured_copy(model, expert_execution=model.config.expert_execution) is model
    copy = bench.routed_copy(model, bench.Routing(0.0, "image"))
    assert copy is not model and copy.config.routed_strategy == "image" and model.config.routed_strategy is None


def test_readme_section_is_replaced_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{bench.README_START}\nold\n{bench.README_END}\nb\n")
    bench.update_readme(readme, "new table")
    assert readme.read_text() == f"a\n{bench.README_START}\nnew table\n{bench.README_END}\nb\n"


def test_random_mask_columns_have_the_real_counts(data):
    model = tiny_model()
    rows = data["train"]
    out = bench.random_counterfactual_columns(rows, model, model.processor, "lexical", seed=0)
    from mme_jd.modeling.counterfactual_mme_jd import lexical_text_counterfactual

    tokens = len(out[0]["image_counterfactual_mask"])
    for row in out:
        _, real = lexical_text_counterfactual(row["text"])
        assert len(row["text_mask_positions"]) == len(real)
        words = row["text_counterfactual"].split()
        assert [i for i, w in enumerate(words) if w == model.config.mask_word] == row["text_mask_positions"]
        assert sum(row["image_counterfactual_mask"]) == max(1, round(model.config.image_mask_ratio * tokens))
    # random, not the builder's choice: some rows mask other words than the content words
    assert any(row["text_mask_positions"] != lexical_text_counterfactual(row["text"])[1] for row in out)


def test_jtt_upweights_the_first_phase_errors(data, tmp_path, monkeypatch):
    model = tiny_model()
    calls = []
    original = peers.run_expert_stage

    def recording(model, stage, train_dataset, *args, **kwargs):
        calls.append({"rows": train_dataset, "start": peers.snapshot_expert(model, "general")})
        log = original(model, stage, train_dataset, *args, **kwargs)
        if len(calls) == 1:  # the first phase's errors, computed independently
            out = collect_outputs(model, model.processor, train_dataset, mode="general")
            calls[0]["errors"] = torch.nonzero(out["logits"].argmax(-1) != out["labels"]).flatten().tolist()
        return log

    monkeypatch.setattr(peers, "run_expert_stage", recording)
    log = peers.train_jtt(model, data, _args(tmp_path), upweight=4, first_epochs=1.0)
    assert len(calls) == 2
    errors = calls[0]["errors"]
    assert 0 < len(errors) < len(data["train"]) and log["error_indices"] == errors
    second = calls[1]["rows"]
    assert len(second) == len(data["train"]) + 3 * len(errors) == log["train_rows"]
    counts = Counter(second["id"])
    ids = data["train"]["id"]
    for index, row_id in enumerate(ids):
        assert counts[row_id] == (4 if index in set(errors) else 1)
    # the second phase starts from the first phase's initial weights (retrained from scratch)
    assert all(torch.equal(calls[0]["start"][k], calls[1]["start"][k]) for k in calls[0]["start"])


def test_upweighted_rows_rejects_bad_weights(data):
    assert len(peers.upweighted_rows(data["train"], [0, 1], 1)) == len(data["train"])
    with pytest.raises(ValueError):
        peers.upweighted_rows(data["train"], [0], 2.5)


def test_group_dro_weights_move_toward_the_worst_group(data, tmp_path):
    model = tiny_model()
    step_size = 0.5
    log = peers.train_group_dro(model, data, _args(tmp_path, max_steps=6), step_size=step_size, num_groups=8)
    q = torch.tensor(log["group_weights"])
    history = torch.tensor(log["group_loss_history"])
    assert len(log["group_weight_history"]) == 6 and history.shape == (6, 8)
    assert q.sum().item() == pytest.approx(1.0)
    # online update: q ∝ exp(η · Σ_t loss_g,t), starting uniform
    expected = torch.softmax(step_size * history.sum(0), 0)
    assert torch.allclose(q, expected, atol=1e-5)
    cumulative = history.sum(0)
    assert q.argmax() == cumulative.argmax()  # the most weight on the worst group
    assert q.max() > 1 / 8 + 1e-3 and q.min() < 1 / 8
    assert not math.isnan(log["train_loss"])


class _FixedLogits(torch.nn.Module):
    """A stand-in model: returns the logits it is given (plus a trainable zero)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))

    def forward(self, logits, metadata=None, **_):
        from types import SimpleNamespace

        return SimpleNamespace(logits=logits + self.bias)


@pytest.mark.parametrize("absent", ["last", "zero"])
def test_group_dro_keeps_weighting_an_absent_worst_group(tmp_path, absent):
    trainer = peers.GroupDROTrainer(model=_FixedLogits(), args=_args(tmp_path), num_groups=3, step_size=1.0,
                                    absent_group_loss=absent)
    confident = torch.tensor([[4.0, -4.0]])
    wrong = torch.tensor([[-4.0, 4.0]])
    # batch 1: group 0 right (low loss), group 1 wrong (high loss), group 2 absent
    trainer.compute_loss(trainer.model, {"logits": torch.cat([confident, wrong]), "labels": torch.tensor([0, 0]),
                                         "metadata": {"group": [0, 1]}})
    q1 = trainer.group_weights.clone()
    assert q1[1] > q1[0] and q1.sum().item() == pytest.approx(1.0)
    # batch 2: only group 0
    trainer.compute_loss(trainer.model, {"logits": confident, "labels": torch.tensor([0]),
                                         "metadata": {"group": [0]}})
    q2 = trainer.group_weights
    if absent == "last":  # the worst group keeps its last loss: its weight still grows
        assert q2[1] > q1[1] and q2.argmax() == 1
    else:  # the literal update: an absent group falls behind
        assert q2[1] < q1[1]


TRAIN_AND_PREDICT = """
import sys, torch
torch.set_num_threads(1)
from transformers import TrainingArguments
from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.inference import collect_outputs
from mme_jd.modeling.configuration_mme_jd import ROUTER_STRATEGIES
from mme_jd.provenance import base_weights_sha256
from mme_jd.tiny import pretrained_tiny_model
from mme_jd.training import MMEJDTrainingConfig, train
torch.manual_seed(0)
model = pretrained_tiny_model()
data = make_synthetic_benchmark(num_train=96, num_validation_balanced=32, num_test=32, p_cue=0.97, seed=0,
                                splits=["train", "validation_balanced", "test_balanced"])
args = TrainingArguments(output_dir=sys.argv[1], per_device_train_batch_size=32, max_steps=3, learning_rate=2e-3,
                         save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
train(model, data, args, MMEJDTrainingConfig(recipe="mme_jd", router_epochs=2))
outputs = collect_outputs(model.eval(), model.processor, data["test_balanced"], mode="mme_jd")
torch.save({"logits": outputs["logits"], "base": base_weights_sha256(model)}, sys.argv[2])
"""


@pytest.mark.slow
def test_training_from_the_shipped_base_is_identical_in_two_processes(tmp_path):
    """The bench's figures reproduce because what they rest on does: the shipped base (no
    per-machine pretraining) and, at one torch thread, training and inference that give the
    same logits bit for bit in a fresh process."""
    import subprocess
    import sys

    results = []
    for run in ("first", "second"):
        path = tmp_path / f"{run}.pt"
        done = subprocess.run([sys.executable, "-c", TRAIN_AND_PREDICT, str(tmp_path / run), str(path)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(torch.load(path))
    assert results[0]["base"] == results[1]["base"]
    assert torch.equal(results[0]["logits"], results[1]["logits"])
