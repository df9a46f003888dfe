"""One entry point that runs every stage of a recipe from one config and saves one checkpoint.

    recipe "general": general                                      (ERM baseline)
    recipe "mid":     general → fit λ_t, λ_v on the balanced validation split
    recipe "mctd":    mctd (general adapter on originals + both counterfactuals)
    recipe "mme_jd":  general → text_debias, image_debias (warm start; each skipped when validation
                      shows no reliance left for it to remove: `reliance_check`; image_debias also
                      when no training row has an image) → router → fit λ
                      (→ bias_only → ... when a debias objective trains against the bias-only
                      expert: `MMEJDTrainingConfig.stages()`)

Each finished stage saves its weights under `output_dir/stages/<stage>/` with a `done.json`
marker; a rerun with `resume_from_checkpoint=True` skips finished stages and resumes the
interrupted one from its last complete Trainer checkpoint, reaching the same weights as an
uninterrupted run with the same seed.

Every training knob is a field of `MMEJDTrainingConfig` (the model's config keeps what a
trained model reads); the knobs the forward's losses read reach the model, for each expert
stage, as `MMEJDTrainingConfig.loss_settings(stage)`.

Resuming is refused when the settings the weights depend on differ from those the run was
started with (`run_settings`: the training config, the optimiser's arguments, the model's
config, the data sizes; recorded in `output_dir/run_settings.json` and in every `done.json`):
finished stages trained with other settings would otherwise be reused silently.
`force_restart=True` removes the earlier run's stages and starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.lexicon import swap_vocabulary
from ..files import atomic_write_text
from ..modeling.configuration_mme_jd import (BIAS_ONLY_OBJECTIVES, CF_TARGETS, DEBIAS_OBJECTIVES, EXPERT_NAMES,
                                             LABEL_KEEPING_OBJECTIVES, MMEJDLossSettings, check_choice,
                                             check_range)
from ..modeling.modeling_mme_jd import is_expert_parameter, is_training_only_parameter
from ..modeling.routing_mme_jd import DEBIAS_EXPERTS, strategy_targets
from .mid import fit_lambdas
from .reliance_check import reliance_check
from .router_labels import DEFAULT_COST_TOLERANCE, DEFAULT_SELECTION_FOLDS, train_router
from .stages import (STAGES, TRAINING_ONLY_NAME, copy_expert, load_training_only, run_expert_stage,
                     save_training_only, stage_arguments, stage_parts)

logger = logging.getLogger("mme_jd")

RECIPES: dict[str, tuple[str, ...]] = {
    "general": ("general",),
    "mid": ("general", "mid"),
    "mctd": ("mctd",),
    # text first: its swap counterfactual keeps the image and flips the label, so it can leave
    # the image expert nothing to remove (`reliance_check` then skips that stage)
    "mme_jd": ("general", "text_debias", "image_debias", "router", "mid"),
}
#: Text builders of the cue-only view the bias-only expert learns from (and its debias expert
#: is trained against): each keeps the cue and masks the content.
BIAS_TEXT_COUNTERFACTUALS = ("lexical", "cue_only", "given")

#: The group column reported when the selection groups were inferred (`infer_selection_groups`).
INFERRED_GROUPS = "inferred: label x cue-only reading"

#: The warm-started debias stages, each preceded by its `reliance_check`.
DEBIAS_STAGES = ("text_debias", "image_debias")


@dataclass
class MMEJDTrainingConfig:
    """The MME-JD settings of a training run (TrainingArguments hold the optimiser's).

    recipe: "general", "mid", "mctd" or "mme_jd" (see the module docstring).
    text_counterfactual: text builder for training: "swap" (default: the only builder that
        removed both cues on the synthetic benchmark; a flipped label is real), "lexical",
        "given" (dataset truth: an upper bound), "saliency", "cue_only" (the declared cues
        kept) or "cue_removed" (the declared text cues deleted; only with the text expert's
        "augment" objective, which keeps the label).
    image_counterfactual: image builder: "attention" (default), "gradient" or "given".
    mid_text_counterfactual: text builder of MID's subtraction ("lexical": the cue-only input).
    train_split / router_split / mid_split: dataset split names; knobs are fitted on the
        group-balanced validation split, never on a test split.
    router_threshold_objective: "worst_group" (default: the threshold whose routed mixture
        has the best worst-group accuracy on router_split) or "f0.5" (METHOD §4's precision-
        first F0.5 of leaving `none`). On the synthetic benchmark F0.5 kept 86% of samples with
        the biased general expert (routed WGA 0.144 against 0.808 for the text expert alone).
    router_epochs, router_learning_rate: the router stage's schedule.
    expert_skip_reliance: before each debias stage, the reliance beyond chance on that
        modality's cue-only input, on router_split, of the general expert and of the last
        trained debias expert (`training.reliance_check`). The stage is skipped, and the expert
        listed in the model's `skipped_experts` (routing never uses it), when the general
        expert's is above this and the earlier debias expert's at or below it: that expert
        already removed the shortcut. The first debias stage always trains, as does one whose
        cue-only input the general expert reads flatly (nothing measured). None: no check.
        Default 0.05, about two standard errors of the figure on 400 validation rows; on the
        synthetic benchmark the general expert's image reliance is 0.07-0.21 and the text
        expert's at most 0.016 (the training logs of bench/results/synthetic_seed*.json).
    general_trained: the model's general expert is already trained (an ERM fine-tune of your
        own, or the general expert of another run with the same training split and schedule):
        recipes "mme_jd" and "mid" start from it and do not train the general stage (its log
        says `reused`). Refused for "general" and "mctd", which train that expert, and by
        `train` when the general expert's LoRA is still at its initialisation. On MMSD the
        bench trains its told MME-JD this way from the untold run's ERM (bench/real_data.py).
    debias_epochs: epochs of the image_debias and text_debias stages, which start from the
        trained general expert (None: the TrainingArguments' `num_train_epochs`, as every
        other stage). Set with `max_steps=-1`; `max_steps` > 0 bounds every stage alike.
    debias_learning_rate: the peak learning rate of the image_debias and text_debias stages
        (None: the TrainingArguments' `learning_rate`). With fewer `debias_epochs`, a higher
        rate keeps what the warm-started expert learns per run: on the synthetic benchmark the
        text stage at 2 epochs and 3e-3 tied 3 epochs at 2e-3 on validation worst-group
        accuracy (bench/results/debias_schedule_grid.json).
    router_cost_tolerance: cost-aware routing: the router stage keeps the (threshold, routed
        strategy) pair with the lowest expected inference cost among those whose validation
        worst-group accuracy is within this of the best (0: the best worst-group accuracy
        whatever it costs, ties to the cheaper). Routing every sample to one debias expert
        (threshold 0 with routed_strategy "image" or "text") costs one pass: the general pass
        and the router are then skipped. Default 0.01: on the synthetic benchmark (3 seeds) it
        sends every sample to the text expert, 0.98x a general forward at worst-group accuracy
        0.981 (bench/results/synthetic.md).
    router_selection_folds: the router trains on router_split and its routing (threshold,
        routed strategy) is tuned on the same split; with k ≥ 2 folds the routing is tuned on
        out-of-fold router scores (k routers, each trained without one fold: about k more
        seconds-long router fits, no extra expert pass), then the router is trained on every
        row. 0: tuned on the trained router's in-sample scores, which single out the rows it
        memorised: on MMSD (4,000 rows, 3 seeds; bench/results/real_mmsd-to-mmsd2_seed*.json
        at commit 69f20f2) in-sample tuning kept partial routings (9% and 17% routed) in two
        seeds, and routed MME-JD recovered 0.41 ± 0.26 of the shortcut's cost; out of fold,
        every seed routes every row to the text expert: 0.71 ± 0.09 (later runs with no
        accuracy budget: real_mmsd-to-mmsd2_nobudget_seed*.json, 0.70 ± 0.12).
    router_max_routed_share: an inference budget: when set, the router threshold is tuned only
        among thresholds that send at most this share of validation samples to a debias expert
        (routed cost ≈ 1 + share × an expert pass). None: no budget.
    selection_max_accuracy_drop: an accuracy budget on the router's routing and MID's λ: each
        is chosen only among the candidates whose accuracy on its selection split (router_split,
        mid_split) is at most this below the general expert's there (None: no budget; when no
        candidate keeps to it, the most accurate). Worst-group accuracy alone does not weigh
        what debiasing costs on data that still carries the cue: on MMSD (4,000 rows, 3 seeds,
        no budget; bench/results/real_mmsd-to-mmsd2_nobudget_seeds.md) routing every row to the
        text expert recovered 0.70 of the shortcut's cost on MMSD2.0 and lost 2.7 points of
        accuracy on MMSD's test split; at 0.015 the router sent 27-38% of the validation rows
        there, and MME-JD recovered 0.63 at 1.0 point below ERM (real_mmsd-to-mmsd2_seeds.md). With
        `validation_balanced`, "accuracy" is on the balanced split; the budget speaks of the
        in-distribution accuracy when the choices are made on a split drawn as the data is
        (`router_split="validation"`, as the real-data bench does).
    mctd_text_weight / mctd_image_weight: w_t, w_v of the MCTD loss
        CE(x, y) + w_t·CE(x_t*, ȳ) + w_v·CE(x_v*, ȳ) of the `mctd` recipe. The debias experts
        of `mme_jd` are not MCTD: each trains at weight 1 on its own counterfactual
        (`loss_settings`). The default w_v = 0: a masked image counterfactual has no defined
        label on a task that needs both modalities, and training it with a reversed target
        collapsed MCTD on the synthetic benchmark (ID 0.52, WGA 0.23,
        bench/results/synthetic_recipes_seed0.json); the swap text counterfactual carries the
        debiasing.
    cf_target: reversed target for more than two classes: "complement" (uniform over the
        classes other than y) or "uniform" (uniform over all classes).
    image_debias_objective / text_debias_objective: the debias experts' objectives (see
        `MMEJDLossSettings`): "reversed" (MCTD's reversed targets), "poe" (product of experts
        with the frozen general expert on the counterfactual), "poe_bias_only" or
        "learned_mixin" (Clark et al., 2019, with its entropy term) against the bias-only
        expert, or (text only, told) "augment": the input less the declared cue with the true
        label, which needs `text_counterfactual="cue_removed"` and a declared text cue. The last two add a `bias_only` stage after `general`: a fourth, training-only
        LoRA adapter, warm-started from general and trained on the cue-only inputs (built by
        `bias_text_counterfactual` and `image_counterfactual`) with the true labels, CE(f_b(x*),
        y), for the TrainingArguments' schedule (as general; `debias_epochs` does not apply),
        then frozen while the debias experts train against it on the same cue-only views.
        It is deleted after the last stage that uses it and never saved: the checkpoint holds
        the three experts and the router (a learned-mixin gate likewise). At inference each
        debias expert runs alone.
    mixin_entropy_weight: w_H, the weight of learned-mixin's entropy term (see
        `MMEJDLossSettings`; 0.1 is not tuned).
    bias_text_counterfactual: the text builder of the cue-only view of "poe_bias_only" /
        "learned_mixin": "lexical" (keeps hashtags, emoji and function words: needs no cue
        named), "cue_only" (keeps the declared text cues: exact when the shortcut is known) or
        "given" (dataset truth); None (default): "cue_only" when `cues` declare a text cue,
        else "lexical".
    use_vocabulary_for_swap: restrict swap replacements to the tokenizer's vocabulary (for
        word-level tokenizers such as the tiny default's).
    cues: declared cues (`mme_jd.cues.Cue`, or `MMEJDConfig.cues` spec dicts). They give the
        groups (``label × cue presence``, column ``cue_group``) of every validation-based
        choice (the router's threshold, routed strategy and cost tolerance; MID's λ), are
        saved in the model's config, and are what the `cue_only` / `cue_removed` builders
        keep or delete. Without cues the synthetic `group` column is used where present;
        with no groups at all they are inferred (`infer_selection_groups`).
    infer_selection_groups: with no cue declared and no `group` column, every validation-based
        choice scores worst-group accuracy over inferred groups: label × the general expert's
        prediction on the text cue-only input (`mid_text_counterfactual`; `mid.inferred_groups`),
        which needs no cue named. False: macro F1 on validation (warned once), which rewards
        the shortcut wherever validation carries it: on MMSD it kept 99.4% of samples with
        the general expert (`training.mid` says more).
    """

    recipe: str = "mme_jd"
    text_counterfactual: str = "swap"
    image_counterfactual: str = "attention"
    mid_text_counterfactual: str = "lexical"
    train_split: str = "train"
    router_split: str = "validation_balanced"
    mid_split: str = "validation_balanced"
    router_threshold_objective: str = "worst_group"
    router_epochs: float = 30.0
    router_learning_rate: float = 3e-3
    expert_skip_reliance: float | None = 0.05
    general_trained: bool = False
    debias_epochs: float | None = None
    debias_learning_rate: float | None = None
    router_cost_tolerance: float = DEFAULT_COST_TOLERANCE
    router_max_routed_share: float | None = None
    selection_max_accuracy_drop: float | None = None
    router_selection_folds: int = DEFAULT_SELECTION_FOLDS
    mctd_text_weight: float = 1.0
    mctd_image_weight: float = 0.0
    cf_target: str = MMEJDLossSettings.cf_target
    image_debias_objective: str = MMEJDLossSettings.image_debias_objective
    text_debias_objective: str = MMEJDLossSettings.text_debias_objective
    mixin_entropy_weight: float = MMEJDLossSettings.mixin_entropy_weight
    bias_text_counterfactual: str | None = None
    use_vocabulary_for_swap: bool = True
    inference_batch_size: int = 128
    cues: list[Any] | None = None
    infer_selection_groups: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice("recipe", self.recipe, tuple(RECIPES), owner)
        check_range("router_cost_tolerance", self.router_cost_tolerance, 0.0, 1.0, owner)
        if self.expert_skip_reliance is not None:
            check_range("expert_skip_reliance", self.expert_skip_reliance, -1.0, 1.0, owner)
        if self.router_max_routed_share is not None:
            check_range("router_max_routed_share", self.router_max_routed_share, 0.0, 1.0, owner)
        if self.selection_max_accuracy_drop is not None:
            check_range("selection_max_accuracy_drop", self.selection_max_accuracy_drop, 0.0, 1.0, owner)
        if self.router_selection_folds == 1 or self.router_selection_folds < 0:
            raise ValueError(f"{owner}: router_selection_folds must be 0 (in-sample) or at least 2; "
                             f"got {self.router_selection_folds}.")
        for name in ("mctd_text_weight", "mctd_image_weight"):
            check_range(name, getattr(self, name), 0.0, 100.0, owner)
        stages = RECIPES[self.recipe]
        if self.general_trained and (stages[0] != "general" or len(stages) == 1):
            raise ValueError(f"{owner}.general_trained=True starts the debias stages from a trained general expert; "
                             f"recipe {self.recipe!r} trains that expert itself: use recipe 'mme_jd' or 'mid', or "
                             "leave general_trained False.")
        for name in ("debias_epochs", "debias_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{owner}.{name} must be positive (or None: the TrainingArguments' value); got {value}.")
        check_choice("cf_target", self.cf_target, CF_TARGETS, owner)
        check_choice("image_debias_objective", self.image_debias_objective, DEBIAS_OBJECTIVES, owner)
        check_choice("text_debias_objective", self.text_debias_objective, DEBIAS_OBJECTIVES, owner)
        check_range("mixin_entropy_weight", self.mixin_entropy_weight, 0.0, 100.0, owner)
        check_choice("bias_text_counterfactual", self.bias_text_counterfactual, (None, *BIAS_TEXT_COUNTERFACTUALS),
                     owner)
        if self.cues:
            from ..cues import Cue

            self.cues = [c if isinstance(c, Cue) else Cue.from_spec(c) for c in self.cues]
        if self.bias_text_counterfactual == "cue_only" and not self._declares_a_text_cue:
            raise ValueError(f"{owner}.bias_text_counterfactual='cue_only' keeps the declared text cues, and none is "
                             "declared: declare them with cues=[Cue(name, pattern=...)] or use 'lexical'.")
        self._check_label_keeping(owner)

    def _check_label_keeping(self, owner: str) -> None:
        """The "augment" objective and the `cue_removed` builder go together: the input less
        the cue keeps its label, so reversing it (MCTD, "reversed") is undefined, and keeping the
        label of a cue-only view would teach the cue."""
        if self.image_debias_objective in LABEL_KEEPING_OBJECTIVES:
            raise ValueError(f"{owner}.image_debias_objective={self.image_debias_objective!r} trains on an input "
                             "less its cue with the true label, and no image builder removes a cue and keeps the "
                             "rest: use 'reversed', 'poe', 'poe_bias_only' or 'learned_mixin' for the image expert.")
        augment = self.text_debias_objective in LABEL_KEEPING_OBJECTIVES
        if augment and self.text_counterfactual != "cue_removed":
            raise ValueError(f"{owner}.text_debias_objective={self.text_debias_objective!r} keeps the label of the "
                             f"text counterfactual, which must be the input less the declared cue: set "
                             f"text_counterfactual='cue_removed' (got {self.text_counterfactual!r}, whose label "
                             "would not be the row's).")
        if self.text_counterfactual == "cue_removed":
            if self.recipe == "mctd" or (self.recipe == "mme_jd" and not augment):
                raise ValueError(f"{owner}.text_counterfactual='cue_removed' deletes the declared cue and keeps the "
                                 "label; reversing that label (MCTD, the 'reversed' objective) is undefined: use "
                                 "text_debias_objective='augment' with recipe 'mme_jd'.")
            if not self._declares_a_text_cue:
                raise ValueError(f"{owner}.text_counterfactual='cue_removed' deletes the declared text cues, and none "
                                 "is declared: declare them with cues=[Cue(name, pattern=...)].")

    @property
    def _declares_a_text_cue(self) -> bool:
        return any(cue.image is None for cue in self.cues or ())

    @property
    def needs_bias_only_expert(self) -> bool:
        """Whether a debias objective of this run trains against the bias-only expert."""
        return self.recipe == "mme_jd" and bool(
            {self.image_debias_objective, self.text_debias_objective} & set(BIAS_ONLY_OBJECTIVES))

    def stages(self) -> tuple[str, ...]:
        """The stages this run trains: the recipe's (`RECIPES`), with `bias_only` after
        `general` when a debias objective needs the bias-only expert."""
        stages = RECIPES[self.recipe]
        if self.needs_bias_only_expert:
            at = stages.index("general") + 1
            stages = (*stages[:at], "bias_only", *stages[at:])
        return stages

    def debias_schedule(self) -> dict[str, float]:
        """The TrainingArguments overrides of the debias stages (`debias_epochs`,
        `debias_learning_rate`; empty when both are None)."""
        overrides = {"num_train_epochs": self.debias_epochs, "learning_rate": self.debias_learning_rate}
        return {name: value for name, value in overrides.items() if value is not None}

    def stage_text_counterfactual(self, stage: str) -> str:
        """The text builder of an expert stage: the cue-only view's (`bias_text_counterfactual`,
        or by default "cue_only" with a declared text cue, else "lexical") for the bias_only
        stage and for a debias expert trained against the bias-only expert; the training builder
        `text_counterfactual` otherwise."""
        if self.uses_bias_only_expert(stage):
            return self.bias_text_counterfactual or ("cue_only" if self._declares_a_text_cue else "lexical")
        return self.text_counterfactual

    def uses_bias_only_expert(self, stage: str) -> bool:
        """Whether `stage` trains the bias-only expert or trains a debias expert against it."""
        objective = {"image_debias": self.image_debias_objective, "text_debias": self.text_debias_objective}
        return self.needs_bias_only_expert and (stage == "bias_only" or objective.get(stage) in BIAS_ONLY_OBJECTIVES)

    def loss_settings(self, stage: str) -> MMEJDLossSettings:
        """What the model's forward reads for its loss during expert stage `stage`: this
        config's target and objectives; the MCTD weights in the `mctd` stage, weight 1 on its
        own counterfactual for a debias expert (`MMEJDLossSettings`' default)."""
        weights = {}
        if stage == "mctd":
            weights = {"text_counterfactual_weight": self.mctd_text_weight,
                       "image_counterfactual_weight": self.mctd_image_weight}
        return MMEJDLossSettings(cf_target=self.cf_target, image_debias_objective=self.image_debias_objective,
                                 text_debias_objective=self.text_debias_objective,
                                 mixin_entropy_weight=self.mixin_entropy_weight, **weights)


def selection_groups(rows, config: MMEJDTrainingConfig, split: str, step: str, warned: dict[str, bool] | None = None):
    """(rows, group column or None, group sizes) for a validation-based selection step, logging
    which groups it uses and their sizes: the declared cues' ``cue_group`` (computed once as
    columns), else the synthetic `group` column, else none: `CueOnlyPasses` then infers them
    (`infer_selection_groups`), or selection scores macro F1 (warned once per `warned` dict)."""
    import numpy as np

    from ..training.mid import FALLBACK_SELECTION_METRIC

    if config.cues:
        from ..cues import CUE_GROUP_COLUMN, add_cue_columns, cue_group_names

        rows = add_cue_columns(rows, config.cues)
        column = CUE_GROUP_COLUMN
        feature = rows.features.get("label")
        labels = getattr(feature, "names", None) or [str(i) for i in range(int(max(rows["label"])) + 1)]
        names = cue_group_names([c.name for c in config.cues], labels)
    elif "group" in rows.column_names:
        column, names = "group", None
    elif config.infer_selection_groups:
        return rows, None, {}
    else:
        if warned is None or not warned.get("no_groups"):
            logger.warning("%s on %r: no groups (declare cues with MMEJDTrainingConfig.cues or --cue NAME=REGEX); "
                           "selection falls back to %s on validation.", step, split, FALLBACK_SELECTION_METRIC)
            if warned is not None:
                warned["no_groups"] = True
        return rows, None, {}
    ids, counts = np.unique(np.asarray(rows[column]), return_counts=True)
    sizes = {(names[i] if names and 0 <= i < len(names) else str(i)): int(n) for i, n in zip(ids.tolist(), counts)}
    print(f"[mme-jd] {step} on {split!r}: worst-group accuracy over {len(sizes)} groups of column {column!r}, "
          f"sizes {sizes}", flush=True)
    return rows, column, sizes


#: TrainingArguments the trained weights depend on (a resumed run must use the same).
WEIGHT_ARGUMENTS = (
    "learning_rate", "seed", "data_seed", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "lr_scheduler_type", "warmup_steps", "warmup_ratio", "optim", "bf16", "fp16", "world_size",
)
#: MMEJDTrainingConfig fields that change no weight (left out of the resume check).
_NOT_WEIGHT_SETTINGS = ("inference_batch_size",)
#: Model config keys that describe where or by what a config was saved, not the model.
_PROVENANCE_KEYS = ("transformers_version", "mme_jd_version", "architectures", "auto_map", "custom_pipelines")
RUN_SETTINGS_NAME = "run_settings.json"
#: The report `train` saves beside the final checkpoint (its `settings`: the MMEJDTrainingConfig).
TRAINING_REPORT_NAME = "training_report.json"


def run_settings(model, dataset, args, config: MMEJDTrainingConfig) -> dict[str, Any]:
    """What the weights of a run depend on, as JSON values: the training config, the
    optimiser's arguments (`WEIGHT_ARGUMENTS`), a digest of the model's config and the sizes
    of the splits used. Compared field by field when a run is resumed."""
    model_config = {k: v for k, v in model.config.to_dict().items()
                    if not k.startswith("_") and k not in _PROVENANCE_KEYS}
    digest = hashlib.sha256(json.dumps(model_config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    splits = sorted({config.train_split, config.router_split, config.mid_split})
    training = {k: v for k, v in asdict(config).items() if k not in _NOT_WEIGHT_SETTINGS}
    if config.cues:  # as saved specs: a custom image function's repr holds its memory address
        training["cues"] = [cue.to_spec() for cue in config.cues]
    settings = {
        "training": training,
        "optimizer": {name: getattr(args, name, None) for name in WEIGHT_ARGUMENTS},
        "model_config_sha256": digest,
        "data_rows": {split: len(dataset[split]) for split in splits},
    }
    return json.loads(json.dumps(settings, default=str))


def _flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key != "extra":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _setting_differences(before: dict, now: dict) -> list[str]:
    """'name: before → now' for every setting that differs."""
    before, now = _flatten(before), _flatten(now)
    return [f"{key.rsplit('.', 1)[-1]}: {before.get(key)!r} then, {now.get(key)!r} now"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


def _check_resumable(output_dir: Path, settings: dict, stages: tuple[str, ...]) -> None:
    """Raise a `ValueError` when the run in `output_dir`, or one of its finished stages, was
    trained with settings other than `settings`."""
    recorded = []
    started = output_dir / RUN_SETTINGS_NAME
    if started.is_file():
        recorded.append(("the run", json.loads(started.read_text())))
    for stage in stages:
        marker = _done_marker(output_dir, stage)
        if not marker.is_file():
            continue
        stage_settings = json.loads(marker.read_text()).get("settings")
        if stage_settings is None:
            logger.warning("stage %s in %s records no settings (finished by an earlier version): resuming without "
                           "checking them", stage, output_dir)
        else:
            recorded.append((f"its finished stage {stage!r}", stage_settings))
    for what, before in recorded:
        differences = _setting_differences(before, settings)
        if differences:
            raise ValueError(
                f"cannot resume the run in {str(output_dir)!r}: {what} was trained with other settings "
                f"({'; '.join(differences)}). Resume with the settings it was started with, or start over: "
                "--force-restart (train(..., force_restart=True)) or another --output-dir."
            )


def _last_complete_checkpoint(stage_dir: Path, needs: tuple[str, ...] = ()) -> Path | None:
    """The Trainer checkpoint to resume from: the highest-numbered `checkpoint-N` whose
    `trainer_state.json`, which the Trainer writes last, reads as JSON, and that holds the
    files `needs` (written after it, by a callback). A newer one without them was being
    written when the process was killed: resuming from it fails."""
    numbered = [p for p in stage_dir.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    for checkpoint in sorted(numbered, key=lambda p: int(p.name.rsplit("-", 1)[-1]), reverse=True):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if all((checkpoint / name).is_file() for name in needs):
            return checkpoint
    return None


def _remove_checkpoints(stage_dir: Path, keep: Path | None, why: str) -> None:
    """Remove the `checkpoint-N` folders of a stage other than `keep` (main process only)."""

    def remove() -> None:
        for checkpoint in stage_dir.glob("checkpoint-*"):
            if checkpoint.is_dir() and checkpoint != keep:
                logger.warning("removing %s: %s", checkpoint, why)
                shutil.rmtree(checkpoint, ignore_errors=True)

    _on_main_process(remove)


def _done_marker(output_dir: Path, stage: str) -> Path:
    return output_dir / "stages" / stage / "done.json"


def _on_main_process(write) -> None:
    """Run `write` on the main process only, then let every process continue together (DDP)."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        write()
    state.wait_for_everyone()


def _check_general_trained(model) -> None:
    """Refuse `general_trained` on a model whose general expert was never trained: PEFT starts
    every LoRA B matrix at zero, so an untrained expert's are all still zero."""
    lora_b = [p for n, p in model.named_parameters() if ".lora_B." in n and is_expert_parameter(n, "general")]
    if lora_b and all(not bool(p.detach().any()) for p in lora_b):
        raise ValueError("MMEJDTrainingConfig.general_trained=True, but the model's general expert is untrained (its "
                         "LoRA B matrices are all zero): load the trained model first, or leave general_trained False "
                         "so that the general stage trains it.")


def _save_stage(model, output_dir: Path, stage: str, log: dict, settings: dict) -> None:
    """Save a finished stage: the model's folder (never its training-only parts), the bias_only
    stage's training-only weights beside it (`TRAINING_ONLY_NAME`, for a resumed run), then the
    `done.json` marker."""

    def write() -> None:
        folder = output_dir / "stages" / stage
        model.save_pretrained(folder)
        if stage == "bias_only":
            save_training_only(model, folder)
        marker = {**log, "config": model.config.to_diff_dict(), "settings": settings}
        atomic_write_text(folder / "done.json", json.dumps(marker, indent=2, default=str))

    _on_main_process(write)


def _load_stage(model, output_dir: Path, stage: str) -> dict:
    """Load a finished stage's weights into `model` (through from_pretrained: transformers may
    store checkpoint keys in another layout and converts them on load)."""
    folder = output_dir / "stages" / stage
    saved = type(model).from_pretrained(folder)
    result = model.load_state_dict(saved.state_dict(), strict=False)
    missing = [key for key in result.missing_keys if not is_training_only_parameter(key)]
    if missing or result.unexpected_keys:  # a saved folder holds all but the training-only parts
        raise ValueError(f"the finished stage in {str(folder)!r} does not match the model (missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}): start over (--force-restart).")
    if stage == "bias_only":
        load_training_only(model, folder)
    log = json.loads((folder / "done.json").read_text())
    for key in ("router_threshold", "routed_strategy", "lambda_text", "lambda_image", "mode", "skipped_experts"):
        if key in log["config"]:
            setattr(model.config, key, log["config"][key])
    if log.get("router_class_weights") is not None:  # the router stage's, for the router's loss
        model.loss_settings.router_class_weights = log["router_class_weights"]
    return log


def train(
    model,
    dataset,
    args,
    config: MMEJDTrainingConfig | None = None,
    processor: Any = None,
    resume_from_checkpoint: bool = False,
    callbacks: list | None = None,
    force_restart: bool = False,
) -> dict:
    """Run a recipe's stages on `dataset` (a DatasetDict) and save `args.output_dir/final`.

    Args:
        model: an `MMEJDModel` (e.g. `mme_jd.from_base(...)` or the tiny default).
        dataset: splits named by the config (train, validation_balanced, ...).
        args: `transformers.TrainingArguments` for the expert stages (each stage writes into
            `args.output_dir/stages/<stage>/`).
        config: the MME-JD settings (`MMEJDTrainingConfig`).
        processor: the base's processor (default: `model.processor`).
        resume_from_checkpoint: skip finished stages and resume the interrupted one from its
            last complete Trainer checkpoint; refused (`ValueError`) when the run was started
            with other settings (`run_settings`).
        callbacks: `transformers.TrainerCallback`s of the expert stages' Trainers (the router
            trains on cached pooled states without a Trainer: `router_labels.fit_router`).
        force_restart: remove the stages of an earlier run in `args.output_dir` and start over.
    Returns a report: per-stage logs (steps, loss, seconds), router shares, fitted λs, and the
    `run_settings` the weights were trained with.
    """
    from transformers import set_seed

    config = config or MMEJDTrainingConfig()
    processor = processor if processor is not None else model.processor
    if processor is None:
        raise ValueError("train needs the base's processor: pass processor= or build the model with mme_jd.from_base.")
    for split in {config.train_split, config.router_split, config.mid_split}:
        if split not in dataset:
            raise ValueError(f"dataset has no split {split!r}; it has {list(dataset)}. Set the split names in "
                             "MMEJDTrainingConfig (train_split, router_split, mid_split).")
    output_dir = Path(args.output_dir)
    settings = run_settings(model, dataset, args, config)  # before this run changes the model's config
    stages = config.stages()
    if force_restart:
        _on_main_process(lambda: shutil.rmtree(output_dir / "stages", ignore_errors=True))
        resume_from_checkpoint = False
    elif resume_from_checkpoint:
        _check_resumable(output_dir, settings, stages)

    def record_settings() -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / RUN_SETTINGS_NAME, json.dumps(settings, indent=2))

    _on_main_process(record_settings)
    # the model keeps its inference builders (text: masked, usable on any input); the training
    # text builder (swap by default) is used only by the stages
    model.config.image_counterfactual = config.image_counterfactual
    model.config.skipped_experts = None  # this run decides which experts it skips
    if config.cues:
        model.config.cues = [cue.to_spec() for cue in config.cues]
        model.config.validate_fields()
    warned: dict[str, bool] = {}
    vocabulary = swap_vocabulary(processor, config.use_vocabulary_for_swap)
    report: dict[str, Any] = {"recipe": config.recipe, "settings": asdict(config), "run_settings": settings,
                              "stages": [], "world_size": args.world_size}
    cue_only_passes = CueOnlyPasses(model, processor, dataset, config, warned)
    # the training-only bias-only expert lives from its stage to the last stage that trains against it
    last_bias_use = max((i for i, s in enumerate(stages) if config.uses_bias_only_expert(s)), default=None)
    started = time.perf_counter()
    for index, stage in enumerate(stages):
        print(f"[mme-jd] stage {index + 1}/{len(stages)}: {stage}", flush=True)
        if stage == "bias_only":
            model.add_bias_only_expert()
        if resume_from_checkpoint and _done_marker(output_dir, stage).exists():
            log = _load_stage(model, output_dir, stage)
            log.pop("config", None)
            report["stages"].append({**log, "resumed": "skipped (finished before)"})
            if index == last_bias_use:
                model.remove_training_only_parts()
            continue
        stage_started, stage_cpu = time.perf_counter(), time.process_time()
        if stage == "general" and config.general_trained:
            _check_general_trained(model)
            log = {"stage": stage, "expert": stage, "reused": "the model's trained general expert (general_trained)"}
            log["seconds_total"] = round(time.perf_counter() - stage_started, 2)
            log["cpu_seconds_total"] = round(time.process_time() - stage_cpu, 2)
            _save_stage(model, output_dir, stage, log, settings)
            report["stages"].append(log)
            continue
        if stage == "image_debias" and not has_images(dataset[config.train_split]):
            # an image-less row has no image to mask: its image counterfactual is the bare prompt
            # (text deleted, image words masked), one input for every row; trained to reverse the
            # labels, the expert would learn contradictory targets on identical inputs
            check = {"stage": stage, "needed": False, "reason": "no training row has an image"}
            print(f"[mme-jd] {stage}: skipped, no row of {config.train_split!r} has an image", flush=True)
        elif stage in DEBIAS_STAGES and config.expert_skip_reliance is not None:
            check = reliance_check(model, processor, dataset[config.router_split], config, stage,
                                   reference=_last_trained_debias_expert(stages[:index], model.config),
                                   general_passes=cue_only_passes.get(config.router_split)[0])
            print(f"[mme-jd] {stage} check: reliance beyond chance {check['reliance_beyond_chance']} of "
                  f"{check['reference']} on the {check['modality']} cue-only input (threshold "
                  f"{check['threshold']}): {'train' if check['needed'] else 'skip'}", flush=True)
        else:
            check = None
        if check is not None and not check["needed"]:
            copy_expert(model, "general", stage)  # what a skipped expert holds
            model.config.skipped_experts = sorted({*(model.config.skipped_experts or ()), stage})
            log = {"stage": stage, "expert": stage, "skipped": True, "reliance_check": check}
            log["seconds_total"] = round(time.perf_counter() - stage_started, 2)
            log["cpu_seconds_total"] = round(time.process_time() - stage_cpu, 2)
            _save_stage(model, output_dir, stage, log, settings)
            report["stages"].append(log)
            if index == last_bias_use:
                model.remove_training_only_parts()
            continue
        set_seed(args.seed)  # after the check: a stage trains as it would without one
        if stage in ("general", "mctd", "bias_only", *DEBIAS_STAGES):
            if stage in ("bias_only", *DEBIAS_STAGES):
                copy_expert(model, "general", STAGES[stage][0])  # warm start
            schedule = config.debias_schedule() if stage in DEBIAS_STAGES else {}
            train_rows = dataset[config.train_split]
            loss_settings = config.loss_settings(stage)
            saliency_masks = config.image_counterfactual in ("attention", "gradient")
            if "image" in stage_parts(stage, loss_settings) and saliency_masks:
                train_rows = precompute_image_masks(model, processor, train_rows, config)
            stage_dir = output_dir / "stages" / stage
            # with training-only parts, a checkpoint is complete once their file is written beside it
            needs = (TRAINING_ONLY_NAME,) if model.has_bias_only_expert else ()
            resume = _last_complete_checkpoint(stage_dir, needs) if resume_from_checkpoint else None
            # checkpoints that are not resumed from belong to an earlier run (or were being written
            # when it was killed): the Trainer's rotation and a later resume would pick them up
            _remove_checkpoints(stage_dir, keep=resume, why="a checkpoint this run does not resume from (an "
                                "earlier run's, or one its Trainer was killed while writing)")
            log = run_expert_stage(
                model, stage, train_rows, stage_arguments(args, stage, str(stage_dir), **schedule), processor,
                config.stage_text_counterfactual(stage), config.image_counterfactual, vocabulary=vocabulary,
                resume_from_checkpoint=str(resume) if resume is not None else None, callbacks=callbacks,
                loss_settings=loss_settings,
            )
            if check is not None:
                log["reliance_check"] = check
        elif stage == "router":
            log = _router_stage(model, processor, dataset, args, config, cue_only_passes)
        elif stage == "mid":
            log = _mid_stage(model, config, cue_only_passes)
        log["seconds_total"] = round(time.perf_counter() - stage_started, 2)
        # this process's CPU time: on cores shared with other jobs it moves far less than wall time
        log["cpu_seconds_total"] = round(time.process_time() - stage_cpu, 2)
        print(f"[mme-jd] stage {stage} done in {log['seconds_total']} s: "
              + ", ".join(f"{k}={v}" for k, v in log.items() if k in ("train_loss", "threshold", "routed_shares",
                                                                      "lambda_text", "lambda_image")), flush=True)
        _save_stage(model, output_dir, stage, log, settings)
        report["stages"].append(log)
        if index == last_bias_use:
            model.remove_training_only_parts()
    model.config.mode = {"general": "general", "mid": "mid", "mctd": "mctd", "mme_jd": "mme_jd"}[config.recipe]
    final = output_dir / "final"
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["checkpoint"] = str(final)

    def write() -> None:
        model.save_pretrained(final, processor=processor)
        atomic_write_text(final / TRAINING_REPORT_NAME, json.dumps(report, indent=2, default=str))

    _on_main_process(write)
    return report


def has_images(rows) -> bool:
    """Whether any row of `rows` has an image (read from the Arrow column: nothing is decoded)."""
    if "image" not in rows.column_names:
        return False
    column = rows.select_columns(["image"]).with_format("arrow")[:].column("image")
    return column.null_count < len(rows)


def _last_trained_debias_expert(earlier_stages: tuple[str, ...], model_config) -> str:
    """The expert a debias stage's reliance check reads: the last debias expert trained before
    it in this run (not skipped), else the general expert."""
    skipped = set(model_config.skipped_experts or ())
    trained = [stage for stage in earlier_stages if stage in DEBIAS_STAGES and stage not in skipped]
    return trained[-1] if trained else "general"


def refit_router(model, dataset, args, config: MMEJDTrainingConfig | None = None, processor: Any = None) -> dict:
    """Run only the router stage again on a trained model (e.g. after changing the router
    settings): router labels on `config.router_split`, router training on cached pooled
    states, threshold and routed strategy. The base and the experts stay as they are."""
    config = config or MMEJDTrainingConfig()
    processor = processor if processor is not None else model.processor
    model.router.reset_parameters()
    passes = CueOnlyPasses(model, processor, dataset, config, {})
    return _router_stage(model, processor, dataset, args, config, passes)


def saved_training_settings(folder: str | Path) -> dict[str, Any] | None:
    """The `settings` (an `MMEJDTrainingConfig` as JSON) of the training report `train` saved
    in a model folder; None without a readable report."""
    path = Path(folder) / TRAINING_REPORT_NAME
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (ValueError, AttributeError):  # not JSON, or not an object
        return None
    return settings if isinstance(settings, dict) else None


def saved_training_config(folder: str | Path) -> MMEJDTrainingConfig | None:
    """The `MMEJDTrainingConfig` a saved model folder was trained with (`saved_training_settings`;
    fields this version does not know are dropped, declared cues come back as `Cue`s); None
    without a training report. A cue whose image test was a Python function cannot come back
    from JSON: declare it again."""
    from ..cues import Cue

    settings = saved_training_settings(folder)
    if settings is None:
        return None
    known = {f.name for f in dataclasses.fields(MMEJDTrainingConfig) if f.init}
    values = {key: value for key, value in settings.items() if key in known}
    try:
        values["cues"] = [Cue.from_spec(spec) for spec in values.get("cues") or ()] or None
        return MMEJDTrainingConfig(**values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"the training report of {folder} does not make a training config ({error}); declare the "
                         "cues again (--cue / cues=) or pass the config yourself.") from None


def precompute_image_masks(model, processor, rows, config: MMEJDTrainingConfig):
    """Add the `image_counterfactual_mask` column: the current general expert's top
    `image_mask_ratio` image tokens (`CounterfactualTripleCollator.image_masks`: nothing for a
    row without an image), computed once instead of in every epoch's collator."""
    from ..data.collator import CounterfactualTripleCollator

    if "image_counterfactual_mask" in rows.column_names:
        return rows
    collator = CounterfactualTripleCollator(processor, model.config, include_counterfactuals=False,
                                            image_counterfactual=config.image_counterfactual, saliency_model=model)
    masks: list[list[bool]] = []
    model.eval()
    for start in range(0, len(rows), config.inference_batch_size):
        batch_rows = [rows[i] for i in range(start, min(start + config.inference_batch_size, len(rows)))]
        batch = collator(batch_rows)
        original = {k: v for k, v in batch.items() if torch.is_tensor(v) and k != "labels"}
        masks.extend(m.tolist() for m in collator.image_masks(batch_rows, original))
    return rows.add_column("image_counterfactual_mask", masks)


def router_split_passes(model, processor, dataset, config, cue_only_passes: CueOnlyPasses) -> tuple:
    """What the router stage reads of `config.router_split`: (outputs, experts' logits by name,
    group column, group sizes); `outputs` has the labels, the general expert's pooled states
    and the selection groups (declared, given or inferred), as MID's λ fit reads them. The
    general expert's logits and pooled states come from the cue-only passes (the general expert
    has not changed since), so only the trained debias experts run here."""
    from ..inference import collect_outputs

    passes, group_column, sizes = cue_only_passes.get(config.router_split)
    experts = {"general": passes["general_logits"]}
    skipped = set(model.config.skipped_experts or ())
    for name in DEBIAS_EXPERTS:
        if name in skipped:  # it holds the general expert's weights: the same logits
            experts[name] = experts["general"]
            continue
        outputs = collect_outputs(model, processor, dataset[config.router_split], expert=name, progress=True,
                                  batch_size=config.inference_batch_size, description=f"router labels ({name})")
        if not torch.equal(outputs["labels"], passes["labels"]):
            raise RuntimeError("the router split's rows came back in another order than in its cue-only passes.")
        experts[name] = outputs["logits"]
    return passes, experts, group_column, sizes


def router_arguments(args, config):
    """The router stage's TrainingArguments: the run's, with the router's epochs and learning
    rate (`config.router_epochs`, `router_learning_rate`), 64 rows a step, no warm-up."""
    return stage_arguments(
        args, "router", str(Path(args.output_dir) / "stages" / "router"), num_train_epochs=config.router_epochs,
        learning_rate=config.router_learning_rate, max_steps=-1, per_device_train_batch_size=64,
        warmup_steps=0,
    )


def _router_stage(model, processor, dataset, args, config, cue_only_passes: CueOnlyPasses) -> dict:
    passes, experts, group_column, sizes = router_split_passes(model, processor, dataset, config, cue_only_passes)
    labels, pooled = passes["labels"], passes["pooled_hidden_state"]
    targets = strategy_targets(labels, experts, model.config.both_combination)
    router_args = router_arguments(args, config)
    log = train_router(model, pooled, targets, router_args,
                       threshold_objective=config.router_threshold_objective, expert_logits=experts,
                       labels=labels, groups=passes.get("groups"), cost_tolerance=config.router_cost_tolerance,
                       max_routed_share=config.router_max_routed_share, selection_folds=config.router_selection_folds,
                       max_accuracy_drop=config.selection_max_accuracy_drop)
    return {**log, "selection_groups": {"column": group_column, "sizes": sizes}}


class CueOnlyPasses:
    """The general expert's logits on a validation split's originals and on their cue-only inputs
    (MID's counterfactuals: `mid_text_counterfactual` text, `image_counterfactual` image), run
    once per split and training run: the reliance checks before the debias stages, MID's λ fit
    and the router's selection read the same passes, and the same selection groups (`groups` in
    the outputs: declared, given, or inferred from the text cue-only reading). Valid once the
    general stage is done (no later stage changes the general expert). `get(split)` → (outputs,
    group column or None, group sizes)."""

    def __init__(self, model, processor, dataset, config: MMEJDTrainingConfig, warned: dict[str, bool]):
        self.model, self.processor, self.dataset, self.config, self.warned = model, processor, dataset, config, warned
        self._passes: dict[str, tuple[dict, str | None, dict]] = {}

    def get(self, split: str) -> tuple[dict, str | None, dict]:
        if split not in self._passes:
            from ..inference import collect_outputs

            rows, group_column, sizes = selection_groups(self.dataset[split], self.config, split,
                                                         "reliance checks and MID lambda selection", self.warned)
            outputs = collect_outputs(self.model, self.processor, rows, batch_size=self.config.inference_batch_size,
                                      mode="mid", counterfactual_parts=("text", "image"),
                                      text_counterfactual=self.config.mid_text_counterfactual,
                                      image_counterfactual=self.config.image_counterfactual, progress=True,
                                      description="cue-only passes", group_column=group_column or "group")
            if group_column is None:
                outputs.pop("groups", None)
                if self.config.infer_selection_groups:
                    group_column, sizes = INFERRED_GROUPS, self._infer(rows, outputs, split)
            self._passes[split] = (outputs, group_column, sizes)
        return self._passes[split]

    @staticmethod
    def _infer(rows, outputs: dict, split: str) -> dict[str, int]:
        from .mid import inferred_groups

        outputs["groups"], sizes = inferred_groups(outputs["labels"], outputs["text_counterfactual_logits"].argmax(-1))
        names = getattr(rows.features.get("label"), "names", None)
        name = (lambda k: names[k] if names and 0 <= k < len(names) else str(k))
        named = {f"{name(label)}|cue-only reads {'any' if reading is None else name(reading)}": n
                 for (label, reading), n in sizes.items()}
        print(f"[mme-jd] selection on {split!r}: worst-group accuracy over {len(named)} inferred groups (label × the "
              f"general expert's prediction on the text cue-only input), sizes {named}", flush=True)
        return named


def _mid_stage(model, config, cue_only_passes: CueOnlyPasses) -> dict:
    outputs, group_column, sizes = cue_only_passes.get(config.mid_split)
    fitted = fit_lambdas(outputs["general_logits"], outputs["text_counterfactual_logits"],
                         outputs["image_counterfactual_logits"], outputs["labels"], outputs.get("groups"),
                         max_accuracy_drop=config.selection_max_accuracy_drop)
    model.config.lambda_text = fitted["lambda_text"]
    model.config.lambda_image = fitted["lambda_image"]
    return {"stage": "mid", **fitted, "selection_groups": {"column": group_column, "sizes": sizes}}
