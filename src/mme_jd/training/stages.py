"""The training stages of MME-JD (METHOD §5), each a `transformers.Trainer` run.

    general       originals, CE(x, y)                        (plain fine-tuning = ERM)
    mctd          originals + both counterfactuals, reversed  (one model; general adapter)
    image_debias  originals + image counterfactuals           (warm start from general)
    text_debias   originals + text counterfactuals            (warm start from general)
    router        general's pooled states → strategy labels   (base and experts frozen)

Only the stage's own parameters are trainable (`MMEJDModel.set_trainable`). The collator
builds exactly the counterfactual parts a stage's loss uses. The loss reads the stage's
`MMEJDLossSettings` (`MMEJDTrainingConfig.loss_settings(stage)`), held by the model while the
stage runs.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from ..data.collator import CounterfactualTripleCollator
from ..modeling.configuration_mme_jd import MMEJDLossSettings

logger = logging.getLogger("mme_jd")

# stage → (expert trained, counterfactual parts built by the collator)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "general": ("general", ()),
    "mctd": ("general", ("text", "image")),
    "image_debias": ("image_debias", ("image",)),
    "text_debias": ("text_debias", ("text",)),
}


def stage_parts(stage: str, loss_settings: MMEJDLossSettings) -> tuple[str, ...]:
    """The counterfactual parts a stage's loss uses (a zero MCTD weight drops its part)."""
    parts = STAGES[stage][1]
    if stage == "mctd":
        weights = {"text": loss_settings.text_counterfactual_weight, "image": loss_settings.image_counterfactual_weight}
        parts = tuple(p for p in parts if weights[p] > 0)
    return parts


def copy_expert(model, source: str, target: str) -> None:
    """Warm start: copy the weights of expert `source` (its LoRA matrices and, if any, its head)
    into expert `target`."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in model.expert_parameters(target):
            param.copy_(params[name.replace(f".{target}.", f".{source}.")])


def stage_arguments(args, stage: str, output_dir: str, **overrides: Any):
    """The TrainingArguments of one stage: the user's, in the stage's own output folder, with
    what the triple collator needs."""
    fields = {f.name for f in dataclasses.fields(args) if f.init}
    values = {name: getattr(args, name) for name in fields}
    values.update(output_dir=output_dir, remove_unused_columns=False, label_names=["labels"],
                  run_name=f"mme-jd-{stage}", **overrides)
    if values.get("report_to") in (None, "all"):
        values["report_to"] = "none"
    return type(args)(**values)


def with_length_column(rows, column: str = "length"):
    """`rows` with a `column` of each row's length in words (its text's), for the Trainer's
    `train_sampling_strategy="group_by_length"`: batches of rows of like length pad less. The
    Trainer would otherwise look for `input_ids`, which raw rows do not have; words order rows as
    their token counts do, with no tokenizer pass. A column already there is kept."""
    if column in rows.column_names:
        return rows
    return rows.map(lambda text: {column: len((text or "").split())}, input_columns=["text"],
                    desc="row lengths")


def run_expert_stage(
    model,
    stage: str,
    train_dataset,
    args,
    processor,
    text_counterfactual: str,
    image_counterfactual: str,
    lexicon: Any = None,
    vocabulary: set[str] | None = None,
    resume_from_checkpoint: bool | str | None = None,
    callbacks: list | None = None,
    loss_settings: MMEJDLossSettings | None = None,
) -> dict:
    """Train one expert stage with the Trainer. Returns the stage's log (loss, steps, seconds,
    the loss settings). `loss_settings` (None: the model's own) are the model's while the stage
    runs; it gets its own back afterwards."""
    from transformers import Trainer

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {sorted(STAGES)} or 'router'.")
    expert = STAGES[stage][0]
    own_settings = model.loss_settings
    loss_settings = loss_settings or own_settings
    parts = stage_parts(stage, loss_settings)
    model.set_trainable(expert)
    collator = CounterfactualTripleCollator(
        processor, model.config, include_counterfactuals=bool(parts), parts=parts or ("text", "image"),
        text_counterfactual=text_counterfactual, image_counterfactual=image_counterfactual,
        lexicon=lexicon, vocabulary=vocabulary, expert=expert, loss_settings=loss_settings,
    )
    if getattr(args, "train_sampling_strategy", None) == "group_by_length":
        train_dataset = with_length_column(train_dataset, args.length_column_name)
    model.train()
    model.loss_settings = loss_settings
    try:
        trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator,
                          callbacks=callbacks)
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        model.loss_settings = own_settings
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"stage": stage, "expert": expert, "parts": list(parts), "steps": result.global_step,
            "loss_settings": dataclasses.asdict(loss_settings), "train_loss": result.training_loss, "losses": losses,
            "seconds": round(result.metrics.get("train_runtime", 0.0), 2)}
