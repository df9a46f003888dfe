"""Training stages on the Trainer: parameter isolation, loss going down, resume, reload
through AutoModel, and a 2-process DDP run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.tiny import tiny_model
from mme_jd.training import MMEJDTrainingConfig, train

torch.set_num_threads(2)


def _args(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=16, max_steps=2, learning_rate=5e-3,
                  logging_steps=1, save_steps=2, report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_benchmark(num_train=96, num_validation_balanced=64, seed=1,
                                    splits=["train", "validation_balanced"])


@pytest.fixture(scope="module")
def mme_jd_run(tmp_path_factory, data):
    output = tmp_path_factory.mktemp("mme_jd_run")
    model = tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # every expert trains (no reliance check): the tests below look at each stage's weights
    report = train(model, data, _args(output), MMEJDTrainingConfig(recipe="mme_jd", router_epochs=3,
                                                                    expert_skip_reliance=None))
    return output, model, initial, report


def load_file(path):
    """The state dict of a saved stage, loaded the way transformers maps checkpoint keys."""
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    return MMEJDModel.from_pretrained(Path(path).parent).state_dict()


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_each_stage_changes_only_its_own_parameters(mme_jd_run):
    output, model, initial, report = mme_jd_run
    names = [stage["stage"] for stage in report["stages"]]
    assert names == ["general", "text_debias", "image_debias", "router", "mid"]
    previous = {k: v for k, v in initial.items()}
    for stage in ("general", "text_debias", "image_debias", "router"):
        state = load_file(str(output / "stages" / stage / "model.safetensors"))
        changed = _changed(previous, state)
        assert changed, stage
        if stage == "router":
            assert all(k.startswith("router.") for k in changed)
        else:
            assert all(f".{stage}." in k and ".lora_" in k for k in changed), (stage, sorted(changed)[:3])
        previous = state
    # the debias experts are not MCTD: each trains at weight 1 on its own counterfactual (the mctd
    # recipe's w_v = 0 does not reach image_debias); the model gets its own loss settings back
    logs = {log["stage"]: log for log in report["stages"]}
    assert logs["image_debias"]["parts"] == ["image"] and logs["text_debias"]["parts"] == ["text"]
    assert logs["image_debias"]["loss_settings"]["image_counterfactual_weight"] == 1.0
    assert logs["text_debias"]["loss_settings"]["text_counterfactual_weight"] == 1.0
    assert model.loss_settings.router_class_weights == logs["router"]["router_class_weights"]
    assert model.loss_settings.image_counterfactual_weight == 1.0
    base_keys = [k for k in initial if ".lora_" not in k and not k.startswith("router.")]
    assert all(torch.equal(initial[k], previous[k]) for k in base_keys)  # the base stays frozen


def test_debias_experts_are_warm_started_from_general(mme_jd_run):
    output, _, initial, _ = mme_jd_run
    general = load_file(str(output / "stages" / "general" / "model.safetensors"))
    image_stage = load_file(str(output / "stages" / "image_debias" / "model.safetensors"))
    # image_debias moved away from general's weights
    a_key = next(k for k in general if ".lora_A.general." in k)
    assert not torch.equal(general[a_key], initial[a_key])
    image_key = a_key.replace(".general.", ".image_debias.")
    assert not torch.equal(image_stage[image_key], initial[image_key])
    assert torch.allclose(image_stage[image_key], general[a_key], atol=0.1)  # two small steps from general's


def test_report_logs_stage_times_router_shares_and_lambdas(mme_jd_run):
    output, model, _, report = mme_jd_run
    router = next(s for s in report["stages"] if s["stage"] == "router")
    assert abs(sum(router["routed_shares"].values()) - 1) < 1e-5 and 0 <= router["threshold"] <= 1
    mid = next(s for s in report["stages"] if s["stage"] == "mid")
    assert model.config.lambda_text == mid["lambda_text"] and model.config.lambda_image == mid["lambda_image"]
    assert all(s["seconds_total"] >= 0 and s["cpu_seconds_total"] >= 0 for s in report["stages"])
    saved = json.loads((output / "final" / "training_report.json").read_text())
    assert saved["recipe"] == "mme_jd" and saved["world_size"] == 1


def test_final_checkpoint_reloads_through_automodel_in_a_fresh_process(mme_jd_run, data):
    output, model, _, _ = mme_jd_run
    from mme_jd.data.collator import CounterfactualTripleCollator

    collator = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)
    batch = collator([data["validation_balanced"][i] for i in range(8)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        expected = model(**inputs, mode="mme_jd")
    torch.save(inputs, output / "inputs.pt")
    script = (
        "import sys, torch, json; sys.modules['mme_jd'] = None\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(output / 'final')!r}, trust_remote_code=True).eval()\n"
        f"out = m(**torch.load({str(output / 'inputs.pt')!r}))\n"
        f"torch.save({{'logits': out.logits, 'strategy': out.strategy}}, {str(output / 'reloaded.pt')!r})\n"
        "print(json.dumps([m.config.mode, m.config.router_threshold, m.config.lambda_text]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    mode, threshold, lambda_text = json.loads(result.stdout.strip().splitlines()[-1])
    assert (mode, threshold, lambda_text) == ("mme_jd", model.config.router_threshold, model.config.lambda_text)
    reloaded = torch.load(output / "reloaded.pt")
    assert torch.equal(reloaded["logits"], expected.logits) and torch.equal(reloaded["strategy"], expected.strategy)


def test_loss_goes_down_on_a_learnable_task(tmp_path, data):
    """The general stage learns 'is the #irony token present?' (a one-token task) from scratch."""
    from mme_jd.data.collator import CounterfactualTripleCollator

    rows = data["train"].map(lambda row: {"label": row["text_cue"]})
    dataset = {"train": rows, "validation_balanced": data["validation_balanced"]}
    model = tiny_model()
    batch = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)(
        [rows[i] for i in range(len(rows))]
    )
    batch.pop("metadata")

    def loss_and_accuracy():
        with torch.no_grad():
            out = model(**batch, expert="general")
        return out.loss.item(), (out.logits.argmax(-1) == batch["labels"]).float().mean().item()

    before, _ = loss_and_accuracy()
    report = train(model, dataset, _args(tmp_path, max_steps=30, learning_rate=1e-2, save_steps=1000),
                   MMEJDTrainingConfig(recipe="general"))
    after, accuracy = loss_and_accuracy()
    assert report["stages"][0]["steps"] == 30
    assert after < 0.75 * before and accuracy > 0.75, (before, after, accuracy)


class _Interrupt(Exception):
    pass


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Interrupt()


RESUME_STEPS = dict(max_steps=6, save_steps=3)


@pytest.fixture(scope="module")
def uninterrupted_general(tmp_path_factory, data):
    """The LoRA weights of an uninterrupted 6-step general run (checkpoints at steps 3 and 6)."""
    model = tiny_model()
    train(model, data, _args(tmp_path_factory.mktemp("uninterrupted"), **RESUME_STEPS),
          MMEJDTrainingConfig(recipe="general"))
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def _assert_same_lora(expected, model):
    got = model.state_dict()
    assert any(not torch.equal(expected[k], tiny_model().state_dict()[k]) for k in expected)
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key


def test_resume_reaches_the_same_weights(tmp_path, data, uninterrupted_general):
    config = MMEJDTrainingConfig(recipe="general")
    interrupted = tiny_model()
    with pytest.raises(_Interrupt):
        train(interrupted, data, _args(tmp_path, **RESUME_STEPS), config, callbacks=[_StopAt(4)])
    assert (tmp_path / "stages" / "general" / "checkpoint-3").is_dir()
    resumed = tiny_model()
    train(resumed, data, _args(tmp_path, **RESUME_STEPS), config, resume_from_checkpoint=True)
    _assert_same_lora(uninterrupted_general, resumed)


def test_resume_ignores_a_checkpoint_the_trainer_was_killed_writing(tmp_path, data, uninterrupted_general,
                                                                    monkeypatch):
    """A kill while the Trainer writes checkpoint-6 leaves it without trainer_state.json (written
    last); resuming must fall back to checkpoint-3, not fail on the partial one."""
    from transformers import Trainer

    config = MMEJDTrainingConfig(recipe="general")
    write_rng_state = Trainer._save_rng_state

    def killed_at_step_6(self, output_dir):
        if output_dir.endswith("checkpoint-6"):
            raise _Interrupt()
        return write_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_at_step_6)
    with pytest.raises(_Interrupt):
        train(tiny_model(), data, _args(tmp_path, **RESUME_STEPS), config)
    monkeypatch.undo()
    partial = tmp_path / "stages" / "general" / "checkpoint-6"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    resumed = tiny_model()
    report = train(resumed, data, _args(tmp_path, **RESUME_STEPS), config, resume_from_checkpoint=True)
    assert report["stages"][0]["steps"] == 6
    _assert_same_lora(uninterrupted_general, resumed)


def test_resume_refuses_other_settings_and_force_restart_starts_over(tmp_path, data):
    config = MMEJDTrainingConfig(recipe="general")
    train(tiny_model(), data, _args(tmp_path, max_steps=1), config)
    changes = {
        "learning_rate": (_args(tmp_path, max_steps=1, learning_rate=1e-2), config),
        "seed": (_args(tmp_path, max_steps=1, seed=1), config),
        "text_counterfactual": (_args(tmp_path, max_steps=1), MMEJDTrainingConfig(recipe="general",
                                                                                text_counterfactual="lexical")),
        # training knobs that left the model's config still count
        "router_cost_tolerance": (_args(tmp_path, max_steps=1), MMEJDTrainingConfig(recipe="general",
                                                                                  router_cost_tolerance=0.2)),
        "cf_target": (_args(tmp_path, max_steps=1), MMEJDTrainingConfig(recipe="general", cf_target="uniform")),
    }
    for name, (args, changed_config) in changes.items():
        with pytest.raises(ValueError, match=rf"{name}.*--force-restart"):
            train(tiny_model(), data, args, changed_config, resume_from_checkpoint=True)
    # the same settings resume (the finished stage is reused)
    report = train(tiny_model(), data, _args(tmp_path, max_steps=1), config, resume_from_checkpoint=True)
    assert report["stages"][0]["resumed"]
    # starting over trains again and the report records the settings the weights were trained with
    args, changed_config = changes["learning_rate"]
    report = train(tiny_model(), data, args, changed_config, resume_from_checkpoint=True, force_restart=True)
    assert "resumed" not in report["stages"][0]
    written = json.loads((tmp_path / "final" / "training_report.json").read_text())
    assert written["run_settings"]["optimizer"]["learning_rate"] == 1e-2


def test_two_process_distributed_run_gives_a_usable_checkpoint(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mme_jd.training",
               "--output-dir", str(tmp_path), "--num-train", "64", "--max-steps", "2", "--batch-size", "8",
               "--recipe", "mctd"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "final" / "training_report.json").read_text())
    assert report["world_size"] == 2 and report["stages"][0]["steps"] == 2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tmp_path / "final", trust_remote_code=True)
    assert model.config.mode == "mctd"


def test_cli_train_writes_a_checkpoint(tmp_path, capsys):
    from mme_jd.cli import main

    code = main(["train", "--output-dir", str(tmp_path), "--recipe", "general", "--num-train", "32",
                 "--max-steps", "1", "--batch-size", "8", "--router-cost-tolerance", "0.02",
                 "--router-selection-folds", "3", "--debias-epochs", "0.5", "--debias-learning-rate", "0.004",
                 "--selection-max-accuracy-drop", "0.03"])
    assert code == 0
    assert "checkpoint:" in capsys.readouterr().out
    report = json.loads((tmp_path / "final" / "training_report.json").read_text())
    assert report["recipe"] == "general" and report["stages"][0]["steps"] == 1
    assert report["settings"]["router_cost_tolerance"] == 0.02  # a training knob: not in config.json
    assert report["settings"]["router_selection_folds"] == 3
    assert report["settings"]["selection_max_accuracy_drop"] == 0.03
    assert (report["settings"]["debias_epochs"], report["settings"]["debias_learning_rate"]) == (0.5, 0.004)
    assert "router_cost_tolerance" not in json.loads((tmp_path / "final" / "config.json").read_text())
    capsys.readouterr()
    assert main(["train", "--output-dir", str(tmp_path), "--recipe", "general", "--num-train", "32",
                 "--max-steps", "1", "--batch-size", "8", "--router-cost-tolerance", "0.02",
                 "--router-selection-folds", "3", "--debias-epochs", "0.5", "--debias-learning-rate", "0.004",
                 "--learning-rate", "0.01", "--resume"]) == 1
    error = capsys.readouterr().err
    assert "learning_rate: 0.001 then, 0.01 now" in error and "--force-restart" in error
    assert main(["train", "--output-dir", str(tmp_path), "--dataset", "nope"]) == 1
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "--router-max-routed-share", "1.5"]) == 1
    assert "router_max_routed_share" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "--debias-learning-rate", "0"]) == 1
    assert "debias_learning_rate must be positive" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "--selection-max-accuracy-drop", "-0.1"]) == 1
    assert "selection_max_accuracy_drop" in capsys.readouterr().err


def test_cli_trains_the_told_text_expert_on_texts_less_the_declared_cue(tmp_path, capsys):
    """`--cue NAME=REGEX --text-counterfactual cue_removed --text-debias-objective augment`: the
    text stage keeps the label of the text less the cue, and the model keeps the declared cue;
    the objective without that builder is refused with the fix."""
    from mme_jd.cli import main

    told = ["--cue", "irony=#irony", "--text-counterfactual", "cue_removed", "--text-debias-objective", "augment"]
    assert main(["train", "--output-dir", str(tmp_path), "--recipe", "mme_jd", "--num-train", "32", "--max-steps", "2",
                 "--batch-size", "8", *told]) == 0
    report = json.loads((tmp_path / "final" / "training_report.json").read_text())
    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert stages["text_debias"]["loss_settings"]["text_debias_objective"] == "augment"
    assert stages["text_debias"]["steps"] == 2 and math.isfinite(stages["text_debias"]["train_loss"])
    assert "bias_only" not in stages
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert [cue["name"] for cue in config["cues"]] == ["irony"]
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "--cue", "irony=#irony",
                 "--text-debias-objective", "augment"]) == 1
    assert "set text_counterfactual='cue_removed'" in capsys.readouterr().err


def test_cli_trains_in_bf16_with_gradient_checkpointing_and_accumulation(tmp_path):
    """`--dtype bfloat16 --gradient-checkpointing --gradient-accumulation-steps 2`: the options of
    the README's 2B-7B launch lines reach the model and the Trainer; the weights are saved in bf16."""
    from safetensors import safe_open

    from mme_jd.cli import main

    assert main(["train", "--output-dir", str(tmp_path), "--recipe", "general", "--num-train", "32",
                 "--max-steps", "2", "--batch-size", "4", "--dtype", "bfloat16", "--gradient-checkpointing",
                 "--gradient-accumulation-steps", "2"]) == 0
    report = json.loads((tmp_path / "final" / "training_report.json").read_text())
    stage = report["stages"][0]
    assert stage["steps"] == 2 and math.isfinite(stage["train_loss"])
    optimizer = report["run_settings"]["optimizer"]
    assert optimizer["gradient_accumulation_steps"] == 2 and optimizer["bf16"] is True
    with safe_open(str(tmp_path / "final" / "model.safetensors"), "pt") as weights:
        lora = [name for name in weights.keys() if ".lora_A." in name]
        assert lora and all(weights.get_tensor(name).dtype == torch.bfloat16 for name in lora)


def test_cli_trains_under_autocast_with_float32_weights_and_saves_the_precision(tmp_path, capsys):
    """`--autocast bfloat16`: mixed precision; the saved weights stay float32 and the saved config
    carries the precision, so the folder reloads computing as it was trained. With --dtype it
    is refused, naming both."""
    from safetensors import safe_open

    from mme_jd import MMEJDModel
    from mme_jd.cli import main

    assert main(["train", "--output-dir", str(tmp_path), "--recipe", "general", "--num-train", "32",
                 "--max-steps", "2", "--batch-size", "4", "--autocast", "bfloat16"]) == 0
    report = json.loads((tmp_path / "final" / "training_report.json").read_text())
    assert report["stages"][0]["steps"] == 2 and math.isfinite(report["stages"][0]["train_loss"])
    with safe_open(str(tmp_path / "final" / "model.safetensors"), "pt") as weights:
        lora = [name for name in weights.keys() if ".lora_A." in name]
        assert lora and all(weights.get_tensor(name).dtype == torch.float32 for name in lora)
    assert MMEJDModel.from_pretrained(tmp_path / "final").config.autocast_dtype == "bfloat16"
    assert MMEJDModel.from_pretrained(tmp_path / "final", autocast_dtype=None).config.autocast_dtype is None
    assert main(["train", "--output-dir", str(tmp_path / "both"), "--recipe", "general", "--num-train", "32",
                 "--max-steps", "2", "--autocast", "bfloat16", "--dtype", "bfloat16"]) != 0
    assert "pass one of the two" in capsys.readouterr().err


def test_general_trained_starts_from_the_models_general_expert_and_gives_the_one_run_checkpoint(
        mme_jd_run, data, tmp_path):
    """`general_trained`: a general recipe, then mme_jd from its general expert, reaches the
    weights of the one mme_jd run with the same arguments (every stage seeds itself); the
    general stage is logged as reused and its weights are left as they were."""
    _, one_run, _, _ = mme_jd_run
    model = tiny_model()
    train(model, data, _args(tmp_path / "erm"), MMEJDTrainingConfig(recipe="general"))
    general = {k: v.clone() for k, v in model.state_dict().items() if ".general." in k or k.startswith("heads.general")}
    report = train(model, data, _args(tmp_path / "debias"), MMEJDTrainingConfig(
        recipe="mme_jd", router_epochs=3, expert_skip_reliance=None, general_trained=True))
    first = report["stages"][0]
    assert first["stage"] == "general" and "reused" in first and "steps" not in first
    assert [stage["stage"] for stage in report["stages"]] == ["general", "text_debias", "image_debias", "router", "mid"]
    after = model.state_dict()
    assert general and all(torch.equal(after[k], v) for k, v in general.items())
    expected = one_run.state_dict()
    assert set(after) == set(expected)
    for key in expected:
        assert torch.allclose(after[key], expected[key], atol=1e-6), key


def test_general_trained_is_refused_where_nothing_was_trained_or_the_recipe_trains_general(data, tmp_path):
    with pytest.raises(ValueError, match="general expert is untrained"):
        train(tiny_model(), data, _args(tmp_path), MMEJDTrainingConfig(recipe="mid", general_trained=True))
    for recipe in ("general", "mctd"):
        with pytest.raises(ValueError, match=f"recipe '{recipe}' trains that expert itself"):
            MMEJDTrainingConfig(recipe=recipe, general_trained=True)


def test_debias_epochs_and_learning_rate_set_the_warm_started_stages_schedule(data, tmp_path):
    """`debias_epochs` trains image_debias and text_debias for their own number of epochs
    (here 1 against the general stage's 2: half its steps) at `debias_learning_rate`; both are
    settings a resume checks. The Trainer's own logged rate is the stage's peak."""
    config = MMEJDTrainingConfig(recipe="mme_jd", router_epochs=1, debias_epochs=1, debias_learning_rate=3e-3,
                                 expert_skip_reliance=None)
    args = _args(tmp_path, max_steps=-1, num_train_epochs=2, save_strategy="no", logging_steps=1, warmup_steps=0,
                 lr_scheduler_type="constant")
    class LoggedRates(TrainerCallback):
        rates: dict[str, set] = {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "learning_rate" in logs:
                self.rates.setdefault(args.run_name, set()).add(round(logs["learning_rate"], 9))

    report = train(tiny_model(), data, args, config, callbacks=[LoggedRates()])
    assert LoggedRates.rates["mme-jd-general"] == {args.learning_rate}
    assert LoggedRates.rates["mme-jd-text_debias"] == LoggedRates.rates["mme-jd-image_debias"] == {3e-3}
    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert stages["general"]["steps"] == 2 * len(data["train"]) // 16
    assert stages["image_debias"]["steps"] == stages["text_debias"]["steps"] == stages["general"]["steps"] // 2
    assert stages["general"]["learning_rate"] == args.learning_rate != 3e-3
    assert stages["text_debias"]["learning_rate"] == stages["image_debias"]["learning_rate"] == 3e-3
    assert report["run_settings"]["training"]["debias_epochs"] == 1
    assert report["run_settings"]["training"]["debias_learning_rate"] == 3e-3
    with pytest.raises(ValueError, match="debias_learning_rate must be positive"):
        MMEJDTrainingConfig(debias_learning_rate=0.0)


def test_a_debias_stage_with_no_reliance_left_is_skipped_and_the_checkpoint_still_routes(data, tmp_path):
    """The default check (expert_skip_reliance 0.05) on the tiny model: the text stage, the first,
    trains; the general expert follows the image cue-only input (reliance beyond chance 0.5 here)
    and the text expert does not (below 0), so the image stage is skipped: its expert keeps the
    general expert's weights, the checkpoint lists it and never routes to it, in a fresh process
    too; a resumed run keeps the list."""
    model = tiny_model()
    config = MMEJDTrainingConfig(recipe="mme_jd", router_epochs=2)
    report = train(model, data, _args(tmp_path), config)
    logs = {log["stage"]: log for log in report["stages"]}
    text, image = logs["text_debias"]["reliance_check"], logs["image_debias"]["reliance_check"]
    assert (text["modality"], text["reference"], text["rows"], text["needed"]) == ("text", "general", 64, True)
    assert logs["text_debias"]["steps"] == 2
    assert (image["modality"], image["reference"], image["needed"]) == ("image", "text_debias", False)
    assert image["general_reliance_beyond_chance"] > 0.05 >= image["reliance_beyond_chance"]
    assert logs["image_debias"]["skipped"] and "steps" not in logs["image_debias"]
    assert model.config.skipped_experts == ["image_debias"]
    state = model.state_dict()
    for key in (k for k in state if ".lora_" in k and ".general." in k):
        assert torch.equal(state[key.replace(".general.", ".image_debias.")], state[key])
    assert logs["router"]["routed_shares"]["image"] == logs["router"]["routed_shares"]["both"] == 0.0
    from mme_jd.data.collator import CounterfactualTripleCollator

    batch = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)(
        [data["validation_balanced"][i] for i in range(16)])
    torch.save({k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}, tmp_path / "inputs.pt")
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "model.config.router_threshold = 0.0  # every sample leaves `none`: the usable debias strategy only\n"
        "model.config.routed_strategy = None\n"
        "out = model(**torch.load(sys.argv[2]), mode='mme_jd')\n"
        "print(json.dumps({'skipped': model.config.skipped_experts, 'strategy': sorted(set(out.strategy.tolist()))}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "final"), str(tmp_path / "inputs.pt")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded == {"skipped": ["image_debias"], "strategy": [2]}  # text only, never image (1) or both (3)
    resumed = tiny_model()
    train(resumed, data, _args(tmp_path), config, resume_from_checkpoint=True)
    assert resumed.config.skipped_experts == ["image_debias"]


def test_every_stage_trains_when_no_debias_expert_took_a_reliance_away(data, tmp_path):
    """Threshold 1: the general expert's image reliance (0.5) is not above it, so nothing was
    taken away and both debias stages train; the image stage's check reads the text expert."""
    model = tiny_model()
    report = train(model, data, _args(tmp_path), MMEJDTrainingConfig(recipe="mme_jd", router_epochs=2,
                                                                      expert_skip_reliance=1.0))
    logs = {log["stage"]: log for log in report["stages"]}
    assert logs["text_debias"]["reliance_check"]["reference"] == "general" and logs["text_debias"]["steps"] == 2
    assert logs["image_debias"]["reliance_check"]["reference"] == "text_debias" and logs["image_debias"]["steps"] == 2
    assert not model.config.skipped_experts


def test_a_stage_is_skipped_only_when_an_earlier_debias_expert_took_the_reliance_away():
    from mme_jd.training.reliance_check import stage_needed

    assert stage_needed("text_debias", general_beyond=0.2, reference_beyond=0.01, threshold=0.05) is False
    assert stage_needed("text_debias", general_beyond=0.2, reference_beyond=0.10, threshold=0.05) is True
    # a flat reading of the cue-only input by the general expert measures nothing: train
    assert stage_needed("text_debias", general_beyond=0.01, reference_beyond=0.0, threshold=0.05) is True
    # the first debias stage (no earlier debias expert) always trains
    assert stage_needed("general", general_beyond=0.0, reference_beyond=0.0, threshold=0.05) is True
    assert stage_needed("text_debias", general_beyond=0.2, reference_beyond=0.0, threshold=None) is True


def test_length_grouped_batches_train_from_raw_rows(data, tmp_path):
    """`train_sampling_strategy="group_by_length"` (batches of like length pad less): the stage
    gives the Trainer a `length` column (words of the text), which raw rows lack."""
    from mme_jd.training.stages import with_length_column

    rows = with_length_column(data["train"])
    assert rows["length"] == [len(text.split()) for text in data["train"]["text"]]
    report = train(tiny_model(), data, _args(tmp_path, train_sampling_strategy="group_by_length", save_strategy="no"),
                   MMEJDTrainingConfig(recipe="mme_jd", router_epochs=1, expert_skip_reliance=None))
    logs = {log["stage"]: log for log in report["stages"]}
    assert all(logs[stage]["steps"] == 2 and math.isfinite(logs[stage]["train_loss"])
               for stage in ("general", "text_debias", "image_debias"))
    assert logs["router"]["steps"] > 0  # the router trains on cached pooled states, in random batches


def test_refit_router_changes_only_the_router_and_sets_its_knobs(mme_jd_run, data, tmp_path):
    from mme_jd.training import refit_router

    _, model, _, _ = mme_jd_run
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = refit_router(model, data, _args(tmp_path), MMEJDTrainingConfig(router_epochs=2))
    changed = _changed(before, model.state_dict())
    assert changed and all(k.startswith("router.") for k in changed)
    assert log["threshold_objective"] == "worst_group" and model.config.router_threshold == log["threshold"]
    assert model.config.routed_strategy == log["routed_strategy"] in (None, "image", "text", "both")
    assert 0.0 <= log["validation_worst_group_accuracy"] <= 1.0


def test_an_accuracy_budget_holds_the_routing_and_mids_lambda_to_the_general_experts_accuracy(
        mme_jd_run, data, tmp_path):
    from mme_jd.training import refit_router

    _, model, _, _ = mme_jd_run
    log = refit_router(model, data, _args(tmp_path / "router"),
                       MMEJDTrainingConfig(router_epochs=2, selection_max_accuracy_drop=0.0))
    assert log["max_accuracy_drop"] == 0.0
    assert log["validation_accuracy"] >= log["validation_general_accuracy"] - 1e-9
    # MID's λ: a fresh general expert, its λ pair kept to the general expert's accuracy
    report = train(tiny_model(), data, _args(tmp_path / "mid"),
                   MMEJDTrainingConfig(recipe="mid", selection_max_accuracy_drop=0.0))
    mid = next(stage for stage in report["stages"] if stage["stage"] == "mid")
    assert mid["max_accuracy_drop"] == 0.0 and mid["accuracy"] >= mid["general_accuracy"] - 1e-9


def test_cli_evaluate_writes_a_report_for_a_trained_checkpoint(mme_jd_run, tmp_path):
    from mme_jd.cli import main

    output, _, _, _ = mme_jd_run
    assert main(["evaluate", str(output / "final"), "--rows", "32", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert "worst_group_accuracy" in report["groups"] and (tmp_path / "report.md").is_file()


def test_run_settings_are_the_same_in_another_process(data, tmp_path):
    """What resume compares must not hold anything process-specific (a custom image cue's
    function is recorded by name, not by its repr with a memory address)."""
    from mme_jd.cues import Cue
    from mme_jd.training.run import run_settings

    def cues():
        def watermark(image):
            return False
        return [Cue("irony", pattern="#irony"), Cue("mark", image=watermark)]

    first = run_settings(tiny_model(), data, _args(tmp_path), MMEJDTrainingConfig(cues=cues()))
    second = run_settings(tiny_model(), data, _args(tmp_path / "elsewhere"), MMEJDTrainingConfig(cues=cues()))
    assert first == second and "0x" not in json.dumps(first)


def test_bf16_training_lowers_the_loss(tmp_path, data):
    """from_base(dtype=torch.bfloat16) puts the whole model (base, experts, router) in bf16, and
    a few bf16 steps through TrainingArguments(bf16=True) learn the one-token task on CPU."""
    from mme_jd.base import from_base
    from mme_jd.data.collator import CounterfactualTripleCollator
    from mme_jd.tiny import build_tiny_base

    rows = data["train"].map(lambda row: {"label": row["text_cue"]})
    base, processor = build_tiny_base()
    model = from_base(base, processor, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    batch = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)(
        [rows[i] for i in range(len(rows))])
    batch.pop("metadata")

    def loss() -> float:
        with torch.no_grad():
            return model(**batch, expert="general").loss.item()

    before = loss()
    train(model, {"train": rows, "validation_balanced": data["validation_balanced"]},
          _args(tmp_path, max_steps=30, learning_rate=1e-2, save_steps=1000, bf16=True),
          MMEJDTrainingConfig(recipe="general"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert loss() < 0.8 * before


def test_gradient_checkpointing_gives_the_same_gradients_and_weights(tmp_path, data):
    """Checkpointing recomputes activations instead of storing them: the expert's gradients are
    the same as without it, and a stage trained with TrainingArguments(activation_checkpointing=True)
    ends at the same weights."""
    from mme_jd.data.collator import CounterfactualTripleCollator

    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():  # a non-zero B, so that A's gradients are not zero
        for name, param in model.named_parameters():
            if ".lora_B.general." in name:
                param.normal_(0, 0.02)
    batch = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)(
        [data["train"][i] for i in range(32)])
    batch.pop("metadata")

    def gradients() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        params = model.set_trainable("general")
        model.train()
        model(**batch, expert="general").loss.backward()
        return [p.grad.clone() for p in params]

    plain = gradients()
    model.activation_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    checkpointed = gradients()
    assert sum(g.abs().sum().item() for g in plain) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))

    weights = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        fresh = tiny_model()
        train(fresh, data, _args(tmp_path / str(checkpointing), max_steps=3, save_steps=1000,
                                 activation_checkpointing=checkpointing), MMEJDTrainingConfig(recipe="general"))
        assert any(getattr(m, "gradient_checkpointing", False) for m in fresh.modules()) == checkpointing
        weights.append({n: p.detach().clone() for n, p in fresh.named_parameters() if ".lora_" in n})
    assert all(torch.allclose(weights[0][n], weights[1][n], atol=1e-6) for n in weights[0])


def test_each_stage_gets_its_loss_settings_from_the_training_config():
    """One default per knob: the mctd recipe's MCTD weights (w_v = 0), weight 1 on a debias
    expert's own counterfactual, the objectives and target of the training config."""
    from mme_jd.modeling.configuration_mme_jd import MMEJDLossSettings

    config = MMEJDTrainingConfig(text_debias_objective="poe", cf_target="uniform")
    mctd = config.loss_settings("mctd")
    assert (mctd.text_counterfactual_weight, mctd.image_counterfactual_weight) == (1.0, 0.0)
    for stage in ("general", "image_debias", "text_debias"):
        settings = config.loss_settings(stage)
        assert (settings.text_counterfactual_weight, settings.image_counterfactual_weight) == (1.0, 1.0)
        assert settings.text_debias_objective == "poe" and settings.cf_target == "uniform"
    # defaults equal to the model's own (what a direct model(**batch, labels=...) call reads)
    assert MMEJDTrainingConfig().loss_settings("text_debias") == MMEJDLossSettings()
    with pytest.raises(ValueError, match=r"MMEJDTrainingConfig.router_max_routed_share=1.5"):
        MMEJDTrainingConfig(router_max_routed_share=1.5)


def test_mctd_stage_trains_with_its_loss_settings_and_restores_the_models(tmp_path, data):
    from mme_jd.training.stages import run_expert_stage, stage_arguments

    model = tiny_model()
    own = model.loss_settings
    settings = MMEJDTrainingConfig(recipe="mctd").loss_settings("mctd")
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.loss_settings))
    args = stage_arguments(_args(tmp_path, max_steps=1), "mctd", str(tmp_path / "mctd"))
    log = run_expert_stage(model, "mctd", data["train"], args, model.processor, "swap", "given",
                           loss_settings=settings)
    assert log["parts"] == ["text"]  # w_v = 0 builds no image counterfactual
    assert seen and all(s is settings for s in seen)
    assert model.loss_settings is own


def test_without_images_or_groups_the_image_stage_is_skipped_and_selection_uses_inferred_groups(data, tmp_path):
    """A real-style split (no `group` column, no cue declared) whose rows have no image (MMSD
    offline): the image stage is skipped before any check (its counterfactual would be the row
    itself), and the router's and MID's choices score worst-group accuracy over the groups
    inferred from the general expert's reading of the text cue-only input."""
    from mme_jd.training.run import INFERRED_GROUPS, has_images

    image_less = data.map(lambda row: {"image": None}).remove_columns(["group"])
    assert has_images(data["train"]) and not has_images(image_less["train"])
    model = tiny_model()
    report = train(model, image_less, _args(tmp_path), MMEJDTrainingConfig(recipe="mme_jd", router_epochs=2))
    logs = {log["stage"]: log for log in report["stages"]}
    assert logs["image_debias"]["skipped"] and logs["image_debias"]["reliance_check"]["reason"] == \
        "no training row has an image"
    assert logs["text_debias"]["steps"] == 2 and model.config.skipped_experts == ["image_debias"]
    for stage in ("router", "mid"):
        groups = logs[stage]["selection_groups"]
        assert groups["column"] == INFERRED_GROUPS and sum(groups["sizes"].values()) == 64
        assert all(name.split("|")[0] in ("not_sarcastic", "sarcastic") for name in groups["sizes"])
    assert logs["router"]["selection_metric"] == "worst_group_accuracy"
    assert logs["mid"]["worst_group_accuracy"] is not None


def test_inferred_groups_split_each_label_by_the_cue_only_reading():
    """label × cue-only reading; a reading held by fewer than `min_rows` rows of a label folds
    that label into one group. A shortcut (prediction = cue-only reading) scores well on macro
    F1 and 0 on the inferred groups' worst-group accuracy."""
    from mme_jd.training.mid import inferred_groups, selection_score

    labels = torch.tensor([0] * 30 + [1] * 30)
    reading = torch.tensor([0] * 20 + [1] * 10 + [1] * 25 + [0] * 5)
    ids, sizes = inferred_groups(labels, reading, min_rows=10)
    assert sizes == {(0, 0): 20, (0, 1): 10, (1, None): 30}
    assert ids.tolist() == [0] * 20 + [1] * 10 + [2] * 30
    ids, sizes = inferred_groups(labels, reading, min_rows=5)
    assert sizes == {(0, 0): 20, (0, 1): 10, (1, 0): 5, (1, 1): 25}
    assert selection_score(reading, labels, None) > 0.7  # macro F1 rewards the shortcut (0.75)
    assert selection_score(reading, labels, ids) == 0.0  # the cue-conflicting rows: all wrong
    with pytest.raises(ValueError, match="one cue-only reading per label"):
        inferred_groups(labels, reading[:10])


def test_router_stage_reads_the_general_pass_of_the_cue_only_passes_and_runs_only_trained_experts(
        mme_jd_run, data, tmp_path, monkeypatch):
    """The router's labels: the general expert's logits and pooled states come from the cue-only
    passes (one pass over the router split, shared with the reliance checks and MID), a skipped
    expert's logits are the general expert's (it holds its weights), and only the trained debias
    experts run a pass of their own; the logits equal those of a full all-experts pass."""
    import copy

    import mme_jd.inference
    import mme_jd.training.run as run
    from mme_jd.inference import collect_outputs
    from mme_jd.training import refit_router
    from mme_jd.training.stages import copy_expert

    _, trained, _, _ = mme_jd_run
    model = copy.deepcopy(trained)
    copy_expert(model, "general", "image_debias")  # what a skipped expert holds
    model.config.skipped_experts = ["image_debias"]
    passes, seen = [], {}
    original_collect, original_train_router = mme_jd.inference.collect_outputs, run.train_router

    def counting_collect(*args, **kwargs):
        passes.append((kwargs.get("mode"), kwargs.get("expert"), kwargs.get("return_experts", False)))
        return original_collect(*args, **kwargs)

    def recording_train_router(model, pooled, targets, *args, **kwargs):
        seen.update(pooled=pooled, experts=kwargs["expert_logits"])
        return original_train_router(model, pooled, targets, *args, **kwargs)

    monkeypatch.setattr(mme_jd.inference, "collect_outputs", counting_collect)
    monkeypatch.setattr(run, "train_router", recording_train_router)
    refit_router(model, data, _args(tmp_path), MMEJDTrainingConfig(router_epochs=2))
    assert ("mid", None, False) in passes and (None, "text_debias", False) in passes
    assert all(expert != "image_debias" and not every for _, expert, every in passes)
    full = original_collect(model, model.processor, data["validation_balanced"], mode="mme_jd", return_experts=True)
    for name in ("general", "text_debias", "image_debias"):
        torch.testing.assert_close(seen["experts"][name], full[f"{name}_logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(seen["pooled"], full["pooled_hidden_state"], atol=1e-5, rtol=1e-4)
