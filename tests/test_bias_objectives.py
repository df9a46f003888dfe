"""The objectives that use a cue-only view (METHOD §8): the training-only bias-only expert,
product of experts and learned-mixin +H against it, on a toy problem whose bias is known
exactly and on the tiny model (gradients, training, saving, resuming)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mme_jd.modeling.modeling_mme_jd import MixinGate, bias_ensemble_loss

torch.set_num_threads(1)


# --------------------------------------------------------------------------- the loss, exactly


def _toy_cue_problem(rows: int = 4000, cue_agreement: float = 0.95, seed: int = 0):
    """Two features: a binary cue (±1) that agrees with the label in `cue_agreement` of the
    rows, and a content feature N(±1, 1) given the label; the exact bias log p(y | cue) from
    the counts. Cue and content are independent given y, so the label's log-odds are the sum
    of theirs: a model that knows the cue exactly leaves the content, and nothing of the cue,
    to the expert."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (rows,), generator=generator)
    sign = 2.0 * labels - 1
    agrees = torch.rand(rows, generator=generator) < cue_agreement
    cue = torch.where(agrees, sign, -sign)
    content = sign + torch.randn(rows, generator=generator)
    features = torch.stack([cue, content], dim=1)
    bias = torch.zeros(rows, 2)
    for value in (-1.0, 1.0):
        rows_with = cue == value
        p_one = (labels[rows_with] == 1).float().mean()
        bias[rows_with] = torch.log(torch.stack([1 - p_one, p_one]))
    return features, labels, bias


def _fit_linear(features, labels, bias=None, gate: MixinGate | None = None, entropy_weight: float = 0.0):
    """The weights [cue, content] of a linear two-class model (logits [0, w·x + b]) trained to
    convergence (L-BFGS) with plain CE (bias None) or `bias_ensemble_loss` against `bias`."""
    weight = torch.zeros(2, requires_grad=True)
    offset = torch.zeros(1, requires_grad=True)
    params = [weight, offset] + (list(gate.parameters()) if gate is not None else [])
    optimizer = torch.optim.LBFGS(params, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        score = features @ weight + offset
        logits = torch.stack([torch.zeros_like(score), score], dim=1)
        if bias is None:
            loss = F.cross_entropy(logits, labels)
        else:
            loss = bias_ensemble_loss(logits, bias, labels, gate(features) if gate is not None else None,
                                      entropy_weight)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach()


def test_a_bias_only_expert_that_is_exactly_the_cue_makes_the_poe_loss_ignore_the_cue():
    """Plain CE leans on the 95%-agreeing cue; the product of experts with the exact bias
    log p(y | cue) gives the cue (nearly) no weight and keeps the content's."""
    features, labels, bias = _toy_cue_problem()
    plain = _fit_linear(features, labels)
    poe = _fit_linear(features, labels, bias)
    assert plain[0] > 2.0 and plain[1] > 1.5  # the cue's log-odds: log(0.95/0.05)/2 per unit
    assert abs(poe[0]) < 0.05 * plain[0], (plain.tolist(), poe.tolist())
    assert poe[1] == pytest.approx(plain[1].item(), rel=0.05)


def test_learned_mixin_leaves_the_expert_the_cue_share_its_gate_does_not_take():
    """Learned-mixin against the exact bias: with any constant gate g, the expert's cue weight
    (1 - g)·w_CE(cue) and the content's w_CE(content) reach plain CE's optimum, so the loss
    itself leaves g free and the expert ignores the cue only where g ≈ 1. Without the entropy
    term (w_H = 0) the gate stays near where it started (softplus(0) = 0.69, ending near 0.8-1):
    the expert keeps a small share of the cue. The entropy term rewards a sharper bias: the
    gate grows far past 1 and the expert learns the cue with the OPPOSITE sign. +H guards
    against the gate shrinking the bias away (g → 0: plain CE), not against this."""
    features, labels, bias = _toy_cue_problem()
    plain = _fit_linear(features, labels)
    for entropy_weight in (0.0, 0.1):
        torch.manual_seed(0)
        gate = MixinGate(2)
        weights = _fit_linear(features, labels, bias, gate, entropy_weight)
        mean_gate = gate(features).mean().item()
        assert weights[0].item() == pytest.approx((1 - mean_gate) * plain[0].item(), rel=0.05, abs=0.1 * plain[0].item())
        assert weights[1] == pytest.approx(plain[1].item(), rel=0.05)
        if entropy_weight == 0:
            assert 0.75 < mean_gate < 1.1 and abs(weights[0]) < 0.25 * plain[0], (plain.tolist(), weights.tolist())
        else:
            assert mean_gate > 2.0 and weights[0] < -plain[0], (plain.tolist(), weights.tolist())


def test_bias_ensemble_loss_arithmetic():
    """By hand: the product adds the two log-softmaxes; a gate of 1 with no entropy term is
    the product; a gate of 0 is plain CE; the bias gets no gradient."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    bias_logits = torch.tensor([[0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    expected = F.cross_entropy(F.log_softmax(logits, -1) + F.log_softmax(bias_logits, -1), labels)
    poe = bias_ensemble_loss(logits, bias_logits, labels)
    assert poe.item() == pytest.approx(expected.item())
    assert bias_ensemble_loss(logits, bias_logits, labels, torch.ones(2)).item() == pytest.approx(expected.item())
    assert bias_ensemble_loss(logits, bias_logits, labels, torch.zeros(2), 1.0).item() == pytest.approx(
        F.cross_entropy(logits, labels).item() + math.log(2))  # g = 0: a uniform bias, entropy log 2
    gate = torch.tensor([2.0, 0.5])
    scaled = gate[:, None] * F.log_softmax(bias_logits, -1)
    entropy = -(F.softmax(scaled, -1) * F.log_softmax(scaled, -1)).sum(-1).mean()
    mixin = F.cross_entropy(F.log_softmax(logits, -1) + scaled, labels) + 0.3 * entropy
    assert bias_ensemble_loss(logits, bias_logits, labels, gate, 0.3).item() == pytest.approx(mixin.item())
    poe.backward()
    assert bias_logits.grad is None and logits.grad is not None


# --------------------------------------------------------------------------- on the tiny model


@pytest.fixture(scope="module")
def data():
    from mme_jd.data.synthetic import make_synthetic_benchmark

    return make_synthetic_benchmark(num_train=96, num_validation_balanced=64, seed=1,
                                    splits=["train", "validation_balanced"])


def _args(output_dir, **overrides):
    from transformers import TrainingArguments

    values = dict(output_dir=str(output_dir), per_device_train_batch_size=16, max_steps=2, learning_rate=5e-3,
                  logging_steps=1, save_steps=1000, report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


def _collate(model, rows, stage: str, config, image_counterfactual: str = "given") -> dict:
    """One batch of `rows` as `stage` collates it (the counterfactual parts its loss uses)."""
    from mme_jd.data.collator import CounterfactualTripleCollator
    from mme_jd.training.stages import STAGES, stage_parts

    settings = config.loss_settings(stage)
    collator = CounterfactualTripleCollator(
        model.processor, model.config, parts=stage_parts(stage, settings),
        text_counterfactual=config.stage_text_counterfactual(stage), image_counterfactual=image_counterfactual,
        expert=STAGES[stage][0], loss_settings=settings)
    batch = collator([rows[i] for i in range(len(rows))])
    batch.pop("metadata")
    return batch


@pytest.mark.parametrize("expert", ["text_debias", "image_debias"])
@pytest.mark.parametrize("objective", ["poe_bias_only", "learned_mixin"])
def test_a_debias_expert_trains_alone_against_the_frozen_bias_only_expert(objective, expert, data, tmp_path):
    """The loss is `bias_ensemble_loss` of the expert on the originals and the bias-only
    expert (not general) on the cue-only view; gradients reach the expert's LoRA (and its
    learned-mixin gate) only: never the base, general, the other debias expert or the
    bias-only expert. Two Trainer steps give finite losses and change the expert only; at
    inference the expert runs alone."""
    from conftest import nudge_experts

    from mme_jd.modeling.modeling_mme_jd import is_expert_parameter
    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig
    from mme_jd.training.stages import run_expert_stage, stage_arguments

    part = expert.split("_")[0]
    config = MMEJDTrainingConfig(**{f"{expert}_objective": objective})
    assert config.stages() == ("general", "bias_only", "text_debias", "image_debias", "router", "mid")
    model = tiny_model()
    model.add_bias_only_expert()
    nudge_experts(model, scale=0.05)  # every expert differs, the bias-only one included
    settings = config.loss_settings(expert)
    batch = _collate(model, data["train"].select(range(16)), expert, config)
    model.loss_settings = settings
    if objective == "learned_mixin":
        model.add_mixin_gate(expert)
    model.set_trainable(expert)
    model.train()
    out = model(**batch)
    with torch.no_grad():
        bias = model.expert_forward("bias_only", batch[f"{part}_counterfactual"])[0]
        general = model.expert_forward("general", batch[f"{part}_counterfactual"])[0]
        gate = model.mixin_gates[expert](out.pooled_hidden_state) if objective == "learned_mixin" else None
        expected = bias_ensemble_loss(out.logits, bias, batch["labels"], gate, settings.mixin_entropy_weight)
        against_general = bias_ensemble_loss(out.logits, general, batch["labels"], gate, settings.mixin_entropy_weight)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert abs(out.loss.item() - against_general.item()) > 1e-4
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    own = {n for n, _ in model.named_parameters() if is_expert_parameter(n, expert) or n.startswith("mixin_gates.")}
    assert trained and trained <= own, sorted(trained - own)[:3]
    assert any(".lora_A." in n for n in trained) and any(".lora_B." in n for n in trained)
    assert any(n.startswith(f"mixin_gates.{expert}.") for n in trained) == (objective == "learned_mixin")
    assert all(p.grad is None for n, p in model.named_parameters() if n not in own)

    model.zero_grad(set_to_none=True)
    model.loss_settings = type(settings)()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = stage_arguments(_args(tmp_path), expert, str(tmp_path / expert))
    rows = data["train"].select(range(32))
    log = run_expert_stage(model, expert, rows, args, model.processor, config.stage_text_counterfactual(expert),
                           "given", loss_settings=settings)
    assert log["steps"] == 2 and all(math.isfinite(loss) for loss in log["losses"])
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(is_expert_parameter(k, expert) for k in changed), sorted(changed)[:3]
    assert len(model.mixin_gates) == 0 and model.loss_settings == type(settings)()  # the gate lived for its stage
    model.eval()
    with torch.no_grad():  # inference: the expert alone, no bias term
        alone = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}, expert=expert)
        assert torch.equal(alone.logits, model.expert_forward(expert, {k: batch[k] for k in (
            "input_ids", "attention_mask", "pixel_values")})[0])


def test_the_bias_only_expert_learns_the_cue_and_is_never_saved(data, tmp_path):
    """On rows whose label is the `#irony` cue, the bias_only stage lowers the bias-only
    expert's loss on the cue-only views (lexical: the hashtag is kept) and changes nothing
    else; `save_pretrained` writes the three experts and the router only, and the folder
    loads into a fresh model (no missing or unexpected tensor) with the same weights."""
    from safetensors import safe_open

    from mme_jd.modeling.modeling_mme_jd import MMEJDModel, is_expert_parameter, is_training_only_parameter
    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig
    from mme_jd.training.stages import run_expert_stage, stage_arguments

    rows = data["train"].map(lambda row: {"label": row["text_cue"]})
    config = MMEJDTrainingConfig(text_debias_objective="poe_bias_only")
    assert config.stage_text_counterfactual("bias_only") == "lexical"
    model = tiny_model()
    model.add_bias_only_expert()
    batch = _collate(model, rows, "bias_only", config)
    assert "text_counterfactual" in batch and "image_counterfactual" not in batch

    def bias_only_loss() -> float:
        model.eval()
        with torch.no_grad():
            out = model(**batch)  # the collator names the expert: "bias_only"
        expected = F.cross_entropy(model.expert_forward("bias_only", batch["text_counterfactual"])[0], batch["labels"])
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)  # CE(f_b(x*), y): the true labels
        return out.loss.item()

    before_loss = bias_only_loss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = stage_arguments(_args(tmp_path, max_steps=30, learning_rate=1e-2), "bias_only", str(tmp_path / "stage"))
    log = run_expert_stage(model, "bias_only", rows, args, model.processor, "lexical", "given",
                           loss_settings=config.loss_settings("bias_only"))
    assert log["parts"] == ["text"] and log["expert"] == "bias_only"
    after_loss = bias_only_loss()
    assert after_loss < 0.75 * before_loss, (before_loss, after_loss)
    state = model.state_dict()
    changed = {k for k in state if not torch.equal(before[k], state[k])}
    assert changed and all(is_expert_parameter(k, "bias_only") for k in changed), sorted(changed)[:3]

    model.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as weights:
        saved = set(weights.keys())
    assert not any("bias_only" in k or "mixin" in k for k in saved)
    kept = {k for k in state if not is_training_only_parameter(k)}
    assert len(saved) == len(kept) and len(kept) < len(state)
    reloaded = MMEJDModel.from_pretrained(tmp_path / "saved")  # refuses missing or unexpected tensors
    assert not reloaded.has_bias_only_expert
    fresh = reloaded.state_dict()
    assert set(fresh) == kept and all(torch.equal(fresh[k], state[k]) for k in kept)
    assert model.has_bias_only_expert  # saving leaves the live model as it was
    model.remove_training_only_parts()
    assert set(model.state_dict()) == kept


BOTH_AGAINST_THE_BIAS = dict(recipe="mme_jd", router_epochs=1, image_counterfactual="given",
                             image_debias_objective="poe_bias_only", text_debias_objective="learned_mixin",
                             expert_skip_reliance=None)  # both debias stages train, whatever the check says


def test_train_adds_the_bias_only_stage_and_saves_only_the_three_experts(data, tmp_path):
    """train(): the bias_only stage runs after general and before the debias stages, on the
    cue-only views both objectives use; the model has no training-only part afterwards, and
    neither the final checkpoint nor a stage's folder holds one (the bias_only stage keeps its
    weights beside its folder, for a resumed run); the final folder reloads through AutoModel."""
    from safetensors import safe_open
    from transformers import AutoModel

    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig, train
    from mme_jd.training.stages import TRAINING_ONLY_NAME

    model = tiny_model()
    report = train(model, data, _args(tmp_path, save_steps=2), MMEJDTrainingConfig(**BOTH_AGAINST_THE_BIAS))
    logs = {log["stage"]: log for log in report["stages"]}
    assert list(logs) == ["general", "bias_only", "text_debias", "image_debias", "router", "mid"]
    assert logs["bias_only"]["parts"] == ["text", "image"] and logs["bias_only"]["expert"] == "bias_only"
    assert logs["text_debias"]["loss_settings"]["text_debias_objective"] == "learned_mixin"
    assert all(math.isfinite(loss) for stage in ("bias_only", "image_debias", "text_debias")
               for loss in logs[stage]["losses"])
    assert not model.has_bias_only_expert and len(model.mixin_gates) == 0
    for folder in [tmp_path / "final", *(tmp_path / "stages" / s for s in logs if s not in ("router", "mid"))]:
        with safe_open(str(folder / "model.safetensors"), "pt") as weights:
            assert not any("bias_only" in k or "mixin" in k for k in weights.keys()), folder
    assert (tmp_path / "stages" / "bias_only" / TRAINING_ONLY_NAME).is_file()
    assert (tmp_path / "stages" / "text_debias" / "checkpoint-2" / TRAINING_ONLY_NAME).is_file()
    assert not (tmp_path / "final" / TRAINING_ONLY_NAME).exists()
    reloaded = AutoModel.from_pretrained(tmp_path / "final", trust_remote_code=True)
    assert set(reloaded.state_dict()) == set(model.state_dict())
    # the default objectives need no bias-only expert
    assert MMEJDTrainingConfig().stages() == ("general", "text_debias", "image_debias", "router", "mid")
    assert MMEJDTrainingConfig(recipe="mctd", text_debias_objective="learned_mixin").stages() == ("mctd",)


class _Interrupt(Exception):
    pass


RESUME_STEPS = dict(max_steps=4, save_steps=2)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The final weights of an uninterrupted run with both objectives against the bias."""
    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig, train

    model = tiny_model()
    train(model, data, _args(tmp_path_factory.mktemp("whole"), **RESUME_STEPS),
          MMEJDTrainingConfig(**BOTH_AGAINST_THE_BIAS))
    return model.state_dict()


@pytest.mark.parametrize(("stage", "step", "finished"), [
    ("text_debias", 3, ["general", "bias_only"]),  # the gate and the bias from checkpoint-2
    ("image_debias", 1, ["general", "bias_only", "text_debias"]),  # before its first checkpoint: the bias from the
                                                                   # bias_only stage
])
def test_a_run_with_training_only_parts_resumes_to_the_same_weights(stage, step, finished, data, tmp_path,
                                                                     uninterrupted):
    """Killed in a stage that trains against the bias-only expert: the resumed run adds the
    bias-only expert back with its weights (from the bias_only stage's file, or from the
    Trainer checkpoint's file with the learned-mixin gate) and ends at the uninterrupted run's
    weights."""
    from transformers import TrainerCallback

    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig, train

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if args.run_name == f"mme-jd-{stage}" and state.global_step == step:
                raise _Interrupt()

    config = MMEJDTrainingConfig(**BOTH_AGAINST_THE_BIAS)
    with pytest.raises(_Interrupt):
        train(tiny_model(), data, _args(tmp_path, **RESUME_STEPS), config, callbacks=[Stop()])
    resumed = tiny_model()
    report = train(resumed, data, _args(tmp_path, **RESUME_STEPS), config, resume_from_checkpoint=True)
    assert [log["stage"] for log in report["stages"] if log.get("resumed")] == finished
    got = resumed.state_dict()
    assert set(uninterrupted) == set(got)
    lora = [k for k in uninterrupted if ".lora_" in k]
    assert any(not torch.equal(uninterrupted[k], tiny_model().state_dict()[k]) for k in lora)
    for key in lora:
        assert torch.allclose(uninterrupted[key], got[key], atol=1e-6), key


def test_bias_objective_settings_are_checked_and_reach_the_loss():
    from mme_jd.cues import Cue
    from mme_jd.modeling.configuration_mme_jd import MMEJDLossSettings
    from mme_jd.training import MMEJDTrainingConfig

    config = MMEJDTrainingConfig(text_debias_objective="learned_mixin", mixin_entropy_weight=0.36)
    assert config.loss_settings("text_debias").mixin_entropy_weight == 0.36
    assert config.stage_text_counterfactual("text_debias") == "lexical"  # the cue-only view, untold
    assert config.stage_text_counterfactual("image_debias") == "swap"  # its objective is "reversed"
    told = MMEJDTrainingConfig(text_debias_objective="poe_bias_only", cues=[Cue("irony", pattern="#irony")])
    assert told.stage_text_counterfactual("bias_only") == told.stage_text_counterfactual("text_debias") == "cue_only"
    assert MMEJDTrainingConfig(text_debias_objective="poe_bias_only", bias_text_counterfactual="given",
                               cues=[Cue("irony", pattern="#irony")]).stage_text_counterfactual("bias_only") == "given"
    with pytest.raises(ValueError, match="bias_text_counterfactual='cue_only'.*none is declared"):
        MMEJDTrainingConfig(bias_text_counterfactual="cue_only", cues=[Cue("mark", image="corner watermark")])
    with pytest.raises(ValueError, match="bias_text_counterfactual='swap' is not allowed"):
        MMEJDTrainingConfig(bias_text_counterfactual="swap")
    with pytest.raises(ValueError, match="mixin_entropy_weight"):
        MMEJDTrainingConfig(mixin_entropy_weight=-1)
    with pytest.raises(ValueError, match="text_debias_objective"):
        MMEJDLossSettings(text_debias_objective="mixin")


def test_the_bias_objectives_name_what_they_miss(data):
    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig

    model = tiny_model()
    config = MMEJDTrainingConfig(text_debias_objective="learned_mixin")
    batch = _collate(model, data["train"].select(range(4)), "text_debias", config)
    model.loss_settings = config.loss_settings("text_debias")
    model.train()
    with pytest.raises(ValueError, match="needs the trained bias-only expert"):
        model(**batch)
    with pytest.raises(ValueError, match="bias-only expert is not added"):
        model.expert_forward("bias_only", batch)
    model.add_bias_only_expert()
    with pytest.raises(ValueError, match=r"add_mixin_gate\('text_debias'\)"):
        model(**batch)
    with pytest.raises(ValueError, match="cue-only inputs"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
              expert="bias_only")
    with pytest.raises(ValueError, match="a learned-mixin gate belongs to a debias expert"):
        model.add_mixin_gate("general")


# --------------------------------------------------------------------------- told: "augment"


def test_augment_trains_the_text_expert_on_the_input_less_the_cue_with_its_label(data, tmp_path):
    """The "augment" objective (told): CE(x, y) + CE(x less the declared cue, y) over the rows
    the cue was in, on one batched pass of the text expert; gradients reach only its LoRA, and
    a Trainer stage changes only it."""
    from mme_jd.cues import Cue
    from mme_jd.data.synthetic import TEXT_CUE_TOKEN
    from mme_jd.modeling.modeling_mme_jd import _soft_cross_entropy, is_expert_parameter
    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig
    from mme_jd.training.stages import run_expert_stage, stage_arguments

    config = MMEJDTrainingConfig(text_counterfactual="cue_removed", text_debias_objective="augment",
                                 cues=[Cue("irony", tokens=[TEXT_CUE_TOKEN])])
    assert config.stages() == ("general", "text_debias", "image_debias", "router", "mid")  # no bias-only expert
    assert config.stage_text_counterfactual("text_debias") == "cue_removed"
    model = tiny_model()
    model.config.cues = [cue.to_spec() for cue in config.cues]
    rows = data["train"].select(range(16))
    batch = _collate(model, rows, "text_debias", config)
    valid = batch["text_counterfactual_valid"]
    has_cue = [TEXT_CUE_TOKEN in text.split() for text in rows["text"]]
    assert valid.tolist() == has_cue and 0 < sum(has_cue) < len(has_cue)
    model.loss_settings = config.loss_settings("text_debias")
    model.set_trainable("text_debias")
    model.train()
    out = model(**batch)
    with torch.no_grad():
        original = model.expert_forward("text_debias", {k: batch[k] for k in ("input_ids", "attention_mask",
                                                                           "pixel_values")})[0]
        removed = model.expert_forward("text_debias", batch["text_counterfactual"])[0]
        labels = batch["labels"]
        kept = F.cross_entropy(original, labels) + _soft_cross_entropy(removed, F.one_hot(labels, 2).float(), valid)
        reversed_ = F.cross_entropy(original, labels) + _soft_cross_entropy(removed, 1 - F.one_hot(labels, 2).float(),
                                                                           valid)
    assert out.loss.item() == pytest.approx(kept.item(), abs=1e-4)
    assert abs(out.loss.item() - reversed_.item()) > 1e-3  # the label is kept, not reversed
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(is_expert_parameter(n, "text_debias") for n in trained), sorted(trained)[:3]

    model.zero_grad(set_to_none=True)
    model.loss_settings = type(model.loss_settings)()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = stage_arguments(_args(tmp_path), "text_debias", str(tmp_path / "text_debias"))
    log = run_expert_stage(model, "text_debias", data["train"].select(range(32)), args, model.processor,
                           "cue_removed", "given", loss_settings=config.loss_settings("text_debias"))
    assert log["steps"] == 2 and all(math.isfinite(loss) for loss in log["losses"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(is_expert_parameter(k, "text_debias") for k in changed), sorted(changed)[:3]


def test_augment_and_cue_removed_are_refused_where_the_label_would_be_wrong():
    from mme_jd.cues import Cue
    from mme_jd.training import MMEJDTrainingConfig

    cue = [Cue("irony", pattern="#irony")]
    with pytest.raises(ValueError, match="text_counterfactual='cue_removed'.*got 'swap'"):
        MMEJDTrainingConfig(text_debias_objective="augment", cues=cue)
    with pytest.raises(ValueError, match="reversing that label.*is undefined"):
        MMEJDTrainingConfig(text_counterfactual="cue_removed", cues=cue)
    with pytest.raises(ValueError, match="reversing that label.*is undefined"):
        MMEJDTrainingConfig(recipe="mctd", text_counterfactual="cue_removed", text_debias_objective="augment", cues=cue)
    with pytest.raises(ValueError, match="none is declared"):
        MMEJDTrainingConfig(text_counterfactual="cue_removed", text_debias_objective="augment")
    with pytest.raises(ValueError, match="no image builder removes a cue"):
        MMEJDTrainingConfig(image_debias_objective="augment")
