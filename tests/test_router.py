"""Router targets, threshold tuning and the routed mixture, on hand-computed cases."""

import pytest
import torch

from mme_jd.modeling.routing_mme_jd import STRATEGY_NAMES, Strategy, combine, expected_cost, route, strategy_targets
from mme_jd.training.router_labels import class_weights, mixture_logits, tune_threshold, tune_threshold_for_groups


def test_strategy_targets_pick_the_cheapest_right_strategy():
    labels = torch.tensor([1, 1, 1, 1, 1, 2])
    right, wrong = [0.0, 2.0, 0.0], [2.0, 0.0, 0.0]  # logits over three classes, label 1
    experts = {"general": torch.tensor([right, wrong, wrong, wrong, wrong, [2.0, 0.0, 0.0]]),
               "image_debias": torch.tensor([wrong, right, wrong, [0.0, 1.0, 0.0], wrong, [3.0, 0.0, 2.5]]),
               "text_debias": torch.tensor([wrong, wrong, right, [0.0, 2.0, 0.0], wrong, [0.0, 3.0, 2.5]])}
    # none (general right), image, text, text (both right: text is more sure of the label),
    # none (nothing right), both (each expert wrong, their mean [1.5, 1.5, 2.5] right)
    targets = strategy_targets(labels, experts)
    assert targets.tolist() == [0, 1, 2, 2, 0, 3]
    assert [STRATEGY_NAMES[t] for t in targets] == ["none", "image", "text", "text", "none", "both"]
    # equally sure: the tie goes to image
    experts["text_debias"][3] = experts["image_debias"][3]
    assert strategy_targets(labels, experts)[3] == Strategy.IMAGE


def test_routing_module_routes_and_combines_like_the_strategy_table():
    router_logits = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.6, 0.1], [0.2, 0.1, 0.2, 0.5],
                                            [0.4, 0.5, 0.05, 0.05]]))
    assert route(router_logits, 0.5).tolist() == [0, 2, 3, 1]
    assert route(router_logits, 0.5, "image").tolist() == [0, 1, 1, 1]
    assert route(router_logits, 0.85).tolist() == [0, 2, 0, 0]
    logits = {"general": torch.zeros(4, 2), "image_debias": torch.tensor([[2.0, 0.0]] * 4),
              "text_debias": torch.tensor([[0.0, 4.0]] * 4)}
    strategy = torch.tensor([0, 1, 2, 3])
    final = combine(strategy, logits, temperatures={"text_debias": 2.0})
    assert final.tolist() == [[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    product = combine(strategy, logits, "product")[3]
    assert torch.allclose(product, logits["image_debias"][3].log_softmax(-1) + logits["text_debias"][3].log_softmax(-1))
    with pytest.raises(ValueError, match="unknown routing strategy 'sound'"):
        route(router_logits, 0.5, "sound")
    assert Strategy.of("both") is Strategy.BOTH and Strategy.TEXT.label == "text"


def test_class_weights_are_inverse_frequency_and_zero_for_absent_classes():
    weights = class_weights(torch.tensor([0, 0, 0, 2]))
    assert weights[1] == 0 and weights[3] == 0
    assert torch.isclose(weights[0] * 3, weights[2] * 1)


def test_f05_threshold_prefers_precision():
    # P(none) per sample: away scores 0.9, 0.6, 0.2; only the first truly needs debiasing
    router_logits = torch.log(torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.4, 0.6, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0]]) + 1e-9)
    threshold, fbeta = tune_threshold(router_logits, torch.tensor([1, 0, 0]))
    assert 0.6 < threshold <= 0.9 and fbeta == pytest.approx(1.0)


class _Mixture(torch.nn.Module):
    """Just what the routed mixture reads of MMEJDModel: its config (routed strategy, both
    combination, temperatures)."""

    def __init__(self, routed_strategy=None):
        super().__init__()
        from mme_jd.modeling.configuration_mme_jd import MMEJDConfig

        self.config = MMEJDConfig(base_config={"model_type": "llava"}, routed_strategy=routed_strategy)


def test_routed_strategy_fixes_what_routed_samples_get_and_groups_tune_the_threshold():
    labels = torch.tensor([1, 0, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    experts = {"general": torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),  # right on group 0
               "image_debias": torch.tensor([[1.0, 0.0]] * 4),  # always class 0
               "text_debias": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])}  # always right
    # the router is more sure of `none` on group 0, and prefers image over text everywhere
    router_logits = torch.log(torch.tensor([[0.9, 0.06, 0.04, 0.0], [0.9, 0.06, 0.04, 0.0],
                                            [0.2, 0.5, 0.3, 0.0], [0.2, 0.5, 0.3, 0.0]]) + 1e-9)
    by_router = _Mixture()
    threshold, wga = tune_threshold_for_groups(by_router, router_logits, experts, labels, groups)
    assert wga == pytest.approx(0.5)  # routed samples go to the image expert: half of group 1 wrong
    fixed = _Mixture("text")
    threshold, wga = tune_threshold_for_groups(fixed, router_logits, experts, labels, groups)
    assert wga == pytest.approx(1.0) and 0.1 < threshold <= 0.8 + 1e-6  # group 1 → text, group 0 stays
    final, strategy = mixture_logits(fixed, router_logits, experts, threshold)
    assert strategy.tolist() == [0, 0, 2, 2]
    assert torch.equal(final.argmax(-1), labels)


def test_a_routed_share_budget_limits_the_threshold():
    # away scores 0.9, 0.6, 0.2: unlimited F0.5 routes sample 0 and 1 is wrong → best routes only 0
    router_logits = torch.log(torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.4, 0.6, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0]]) + 1e-9)
    targets = torch.tensor([1, 1, 0])
    threshold, _ = tune_threshold(router_logits, targets)
    assert threshold <= 0.6 + 1e-6  # both true debias samples routed
    threshold, fbeta = tune_threshold(router_logits, targets, max_routed_share=0.34)
    assert 0.6 < threshold <= 0.9 + 1e-6 and fbeta == pytest.approx(1.25 * 0.5 / (0.25 + 0.5))
    # worst-group tuning: text_debias fixes group 1 (two samples); a budget of one sample in four
    # routes only the more confident one and the worst group stays at 0.5
    labels = torch.tensor([1, 0, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    experts = {"general": torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
               "image_debias": torch.tensor([[1.0, 0.0]] * 4),
               "text_debias": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])}
    router_logits = torch.log(torch.tensor([[0.9, 0.0, 0.1, 0.0], [0.9, 0.0, 0.1, 0.0],
                                            [0.3, 0.0, 0.7, 0.0], [0.2, 0.0, 0.8, 0.0]]) + 1e-9)
    free, wga = tune_threshold_for_groups(_Mixture(), router_logits, experts, labels, groups)
    assert wga == pytest.approx(1.0)
    limited, wga = tune_threshold_for_groups(_Mixture(), router_logits, experts, labels, groups, max_routed_share=0.25)
    assert wga == pytest.approx(0.5) and limited > free
    _, strategy = mixture_logits(_Mixture(), router_logits, experts, limited)
    assert strategy.tolist() == [0, 0, 0, 2]


def test_cost_aware_routing_picks_the_cheapest_routing_within_the_tolerance():
    from mme_jd.training.router_labels import cheapest_routing

    labels = torch.tensor([1, 0, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    experts = {"general": torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),  # right on group 0
               "image_debias": torch.tensor([[1.0, 0.0]] * 4),
               "text_debias": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])}  # always right
    router_logits = torch.log(torch.tensor([[0.9, 0.0, 0.1, 0.0], [0.9, 0.0, 0.1, 0.0],
                                            [0.3, 0.0, 0.7, 0.0], [0.2, 0.0, 0.8, 0.0]]) + 1e-9)
    # routing group 1 to text costs 1.5 passes per sample; everything to text costs 1 (no general pass)
    assert expected_cost(torch.tensor([0, 0, 2, 2]), None, 0.5) == pytest.approx(1.5)
    assert expected_cost(torch.tensor([3, 0, 0, 0]), None, 0.5) == pytest.approx(1.5)
    assert expected_cost(torch.tensor([2, 2, 2, 2]), "text", 0.0) == 1.0
    assert expected_cost(torch.tensor([2, 2, 2, 2]), None, 0.0) == 2.0
    model = _Mixture()
    choice = cheapest_routing(model, router_logits, experts, labels, groups, tolerance=0.0)
    assert choice["routed_strategy"] == "text" and choice["threshold"] == 0.0
    assert choice["worst_group_accuracy"] == 1.0 and choice["cost"] == 1.0
    assert model.config.routed_strategy is None  # restored
    # with a text expert wrong on one group-0 sample, sending everything to it loses worst-group
    # accuracy: within a 0.5 tolerance it is still the cheapest, within 0 it is not
    experts["text_debias"] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    strict = cheapest_routing(model, router_logits, experts, labels, groups, tolerance=0.0)
    assert strict["worst_group_accuracy"] == 1.0 and strict["cost"] == pytest.approx(1.5)
    loose = cheapest_routing(model, router_logits, experts, labels, groups, tolerance=0.5)
    assert loose["cost"] == 1.0 and loose["worst_group_accuracy"] == pytest.approx(0.5)


def test_router_stage_keeps_the_cheapest_routing_within_the_tolerance(tmp_path):
    """train_router's routing (worst-group objective): with the default router_cost_tolerance
    (0.01), sending every sample to the text expert when that matches the best worst-group
    accuracy (one pass, no general pass); with a text expert wrong on one group-0 sample, the
    router's own split (group 1 to text) at tolerance 0, and text for everyone again within 0.2."""
    from transformers import TrainingArguments

    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig
    from mme_jd.training.router_labels import train_router

    assert MMEJDTrainingConfig().router_cost_tolerance == 0.01  # train_router's default too
    labels = torch.tensor([1, 0, 1, 0] * 4)
    groups = torch.tensor([0, 0, 1, 1] * 4)
    experts = {"general": torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]] * 4),  # right on group 0
               "image_debias": torch.tensor([[1.0, 0.0]] * 16),
               "text_debias": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]] * 4)}  # always right
    model = tiny_model()
    # pooled states that tell the groups apart, so the router can learn group 0 → none, 1 → text
    hidden = model.router.hidden.in_features
    pooled = torch.stack([torch.full((hidden,), 1.0 if g == 0 else -1.0) for g in groups.tolist()])
    targets = torch.tensor([0, 0, 2, 2] * 4)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=40,
                             learning_rate=0.05, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True)

    def routing(**tolerance):
        report = train_router(model, pooled, targets, args, threshold_objective="worst_group",
                              expert_logits=experts, labels=labels, groups=groups, **tolerance)
        return report["validation_worst_group_accuracy"], report["routed_shares"]

    wga, _ = routing()  # the default tolerance
    assert wga == 1.0 and (model.config.routed_strategy, model.config.router_threshold) == ("text", 0.0)
    assert model.single_routed_expert == "text_debias"
    experts["text_debias"][0] = torch.tensor([1.0, 0.0])  # now wrong on one group-0 sample
    wga, shares = routing(cost_tolerance=0.0)
    assert wga == 1.0 and model.single_routed_expert is None
    assert shares["none"] == pytest.approx(0.5) and shares["text"] == pytest.approx(0.5)
    wga, _ = routing(cost_tolerance=0.2)
    assert wga == pytest.approx(7 / 8) and model.single_routed_expert == "text_debias"


def test_routing_is_tuned_on_out_of_fold_router_scores(tmp_path):
    """The router trains on the split its routing is tuned on. On pooled states that carry no
    signal about which rows the text expert gets right, a router fitted to every row still
    separates them in sample (it memorises), so in-sample tuning keeps a partial routing that
    looks perfect (the general expert is right on the other rows); out-of-fold scores (`router_selection_folds`) show the memorised split is
    worth nothing on unseen rows, and the routing sends every row to the text expert, which
    is right on 3 rows in 4. The router's weights after cross-fitting are those it had before."""
    from transformers import TrainingArguments

    from mme_jd.tiny import tiny_model
    from mme_jd.training import MMEJDTrainingConfig
    from mme_jd.training.router_labels import out_of_fold_router_logits, train_router

    assert MMEJDTrainingConfig().router_selection_folds == 5
    with pytest.raises(ValueError, match="router_selection_folds must be 0"):
        MMEJDTrainingConfig(router_selection_folds=1)
    torch.manual_seed(0)
    rows = 80
    labels = torch.randint(0, 2, (rows,))
    groups = labels.clone()
    text_right = torch.rand(rows) < 0.75  # which rows the text expert gets right: unrelated to the states
    one_hot = torch.nn.functional.one_hot(labels, 2).float()
    experts = {"general": torch.where(text_right[:, None], 1 - one_hot, one_hot),  # right where text is not
               "image_debias": 1 - one_hot,
               "text_debias": torch.where(text_right[:, None], one_hot, 1 - one_hot)}
    targets = torch.where(text_right, 2, 0)  # text where it is right, else none
    model = tiny_model()
    hidden = model.router.hidden.in_features
    pooled = torch.randn(rows, hidden) * 3
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=60,
                             learning_rate=0.01, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True, seed=0)
    before = {name: value.clone() for name, value in model.router.state_dict().items()}
    held_out = out_of_fold_router_logits(model, pooled, targets, args, folds=5, seed=0)
    assert all(torch.equal(before[name], value) for name, value in model.router.state_dict().items())
    with pytest.raises(ValueError, match="at least 2 folds"):
        out_of_fold_router_logits(model, pooled[:6], targets[:6], args, folds=5)

    def report(folds):
        model.router.load_state_dict(before)
        return train_router(model, pooled, targets, args, threshold_objective="worst_group", expert_logits=experts,
                            labels=labels, groups=groups, cost_tolerance=0.0, selection_folds=folds)

    in_sample = report(0)
    assert in_sample["selection_scores"] == "in sample"
    in_sample_hits = (model.router(pooled).argmax(-1) == targets).float().mean()
    assert in_sample_hits > 0.95  # memorised
    assert in_sample["validation_worst_group_accuracy"] > 0.95 and in_sample["routed_strategy"] is None
    out_of_fold_hits = (held_out.argmax(-1) == targets).float().mean()
    assert out_of_fold_hits < 0.85  # about the base rate (0.75): nothing to learn
    crossed = report(5)
    assert crossed["selection_scores"] == "out of fold (5 folds)"
    assert crossed["validation_worst_group_accuracy"] < 0.9
    assert (crossed["routed_strategy"], crossed["threshold"]) == ("text", 0.0)
    assert crossed["routed_shares"]["text"] == 1.0
    # too few rows for the folds: in-sample scores, said in the log, not a failure at the end of a run
    model.router.load_state_dict(before)
    tiny = train_router(model, pooled[:8], targets[:8], args, threshold_objective="worst_group",
                        expert_logits={k: v[:8] for k, v in experts.items()}, labels=labels[:8], groups=groups[:8])
    assert tiny["selection_scores"] == "in sample (8 rows: too few for 5 folds)"


def test_fit_router_learns_separable_targets_on_the_arguments_schedule(tmp_path):
    """The router stage's plain training loop: the strategy targets of well-separated pooled
    states are learned, the step count follows the TrainingArguments (ceil(epochs × rows / batch)
    steps), only the router's weights change, and the same seed gives the same router."""
    import math

    from transformers import TrainingArguments

    from mme_jd.tiny import tiny_model
    from mme_jd.training.router_labels import fit_router

    torch.manual_seed(0)
    model = tiny_model()
    hidden = model.router.hidden.in_features
    targets = torch.arange(4).repeat(25)  # 100 rows, every strategy
    centres = torch.randn(4, hidden) * 4
    pooled = centres[targets] + torch.randn(100, hidden) * 0.3
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=32, num_train_epochs=12.5,
                             learning_rate=0.01, warmup_steps=0, report_to="none", use_cpu=True, seed=3)
    router_before = {k: v.clone() for k, v in model.router.state_dict().items()}
    rest_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("router.")}
    with torch.no_grad():
        accuracy_before = (model.router(pooled).argmax(-1) == targets).float().mean()
    fit, weights = fit_router(model, pooled, targets, args)
    assert fit.global_step == math.ceil(12.5 * math.ceil(100 / 32)) == 50
    assert math.isfinite(fit.training_loss) and fit.seconds >= 0
    assert torch.equal(weights, torch.ones(4))  # balanced targets
    with torch.no_grad():
        accuracy = (model.router(pooled).argmax(-1) == targets).float().mean()
    assert accuracy_before < 0.6 and accuracy == 1.0
    assert all(torch.equal(v, rest_before[k]) for k, v in model.state_dict().items() if not k.startswith("router."))
    assert not any(p.requires_grad for p in model.parameters())  # frozen again
    first = {k: v.clone() for k, v in model.router.state_dict().items()}
    model.router.load_state_dict(router_before)
    fit_router(model, pooled, targets, args, quiet=True)
    assert all(torch.equal(v, first[k]) for k, v in model.router.state_dict().items())


def _budget_case():
    """22 rows: the general expert is right on group 0's 20 and wrong on group 1's 2; the text
    expert fixes group 1 but is wrong on 4 of group 0's rows, one of which the router is as sure
    of as of a group-1 row."""
    labels = torch.ones(22, dtype=torch.long)
    labels[20:] = 0
    groups = torch.zeros(22, dtype=torch.long)
    groups[20:] = 1
    general = torch.tensor([[0.0, 1.0]] * 22)
    text = torch.tensor([[0.0, 1.0]] * 22)
    text[[1, 3, 4, 5]] = torch.tensor([1.0, 0.0])  # wrong on these group-0 rows
    text[20:] = torch.tensor([1.0, 0.0])  # right on group 1
    experts = {"general": general, "image_debias": general.clone(), "text_debias": text}
    p_none = torch.full((22,), 0.95)
    p_none[[20, 1]] = 0.1  # one group-1 row and one row the text expert gets wrong
    p_none[[21, 3, 4, 5]] = 0.5
    router = torch.stack([p_none, torch.zeros(22), 1 - p_none, torch.zeros(22)], dim=1)
    return torch.log(router + 1e-9), experts, labels, groups


def test_an_accuracy_budget_keeps_the_routing_within_that_drop_of_the_general_expert():
    from mme_jd.training.router_labels import cheapest_routing

    router_logits, experts, labels, groups = _budget_case()
    general_accuracy = 20 / 22
    # no budget: every row to the text expert, the best worst-group accuracy, 4 rows lost
    free = cheapest_routing(_Mixture(), router_logits, experts, labels, groups, tolerance=0.0)
    assert free["worst_group_accuracy"] == pytest.approx(0.8)
    assert free["accuracy"] == pytest.approx(18 / 22) and free["accuracy"] < general_accuracy - 0.05
    # a 5-point budget: only the routing of the two surest rows keeps to it
    kept = cheapest_routing(_Mixture(), router_logits, experts, labels, groups, tolerance=0.0,
                            max_accuracy_drop=0.05)
    assert kept["accuracy"] >= general_accuracy - 0.05
    assert kept["worst_group_accuracy"] == pytest.approx(0.5) and kept["routed_share"] == pytest.approx(2 / 22)
    threshold, wga = tune_threshold_for_groups(_Mixture("text"), router_logits, experts, labels, groups,
                                               max_accuracy_drop=0.05)
    _, strategy = mixture_logits(_Mixture("text"), router_logits, experts, threshold)
    assert wga == pytest.approx(0.5) and sorted(torch.nonzero(strategy).flatten().tolist()) == [1, 20]
    # no drop at all: routing the two surest rows fixes one and breaks one, so it still keeps to it
    even = cheapest_routing(_Mixture(), router_logits, experts, labels, groups, tolerance=0.0, max_accuracy_drop=0.0)
    assert even["accuracy"] == pytest.approx(general_accuracy) and even["routed_share"] == pytest.approx(2 / 22)


def test_an_accuracy_budget_limits_mids_lambda_to_the_accuracy_it_keeps():
    from mme_jd.training.mid import fit_lambdas, within_accuracy_budget

    labels = torch.ones(22, dtype=torch.long)
    labels[20:] = 0
    groups = (labels == 0).long()
    general = torch.tensor([[0.0, 1.0]] * 22)  # class 1 everywhere: wrong on the 2 rows of label 0
    text_cf = torch.tensor([[0.0, 0.5]] * 22)
    text_cf[:4] = torch.tensor([0.0, 2.0])  # λ > 0.5 turns these 4 right rows wrong
    text_cf[20:] = torch.tensor([0.0, 1.5])  # λ > 2/3 turns these 2 wrong rows right
    image_cf = torch.zeros(22, 2)
    free = fit_lambdas(general, text_cf, image_cf, labels, groups)
    assert free["lambda_text"] == 0.7 and free["worst_group_accuracy"] == pytest.approx(0.8)
    assert free["accuracy"] == pytest.approx(18 / 22) and free["general_accuracy"] == pytest.approx(20 / 22)
    kept = fit_lambdas(general, text_cf, image_cf, labels, groups, max_accuracy_drop=0.05)
    assert kept["lambda_text"] == 0.0 and kept["accuracy"] == pytest.approx(20 / 22)
    assert fit_lambdas(general, text_cf, image_cf, labels, groups, max_accuracy_drop=0.1)["lambda_text"] == 0.7
    # when no candidate keeps to the budget, the most accurate ones are left to choose from
    candidates = [{"accuracy": 0.70, "score": 0.9}, {"accuracy": 0.74, "score": 0.2}, {"accuracy": 0.74, "score": 0.3}]
    assert within_accuracy_budget(candidates, 0.80, 0.02) == candidates[1:]
    assert within_accuracy_budget(candidates, 0.80, None) == candidates
    assert within_accuracy_budget(candidates, 0.75, 0.05) == candidates
