"""The training stages of MME-JD (METHOD §5), each a `transformers.Trainer` run.

    general       originals, CE(x, y)                        (plain fine-tuning = ERM)
    mctd          originals + both counterfactuals, reversed  (one model; general adapter)
    bias_only     cue-only inputs, CE(x*, y) with the true labels (the training-only bias-only
                  expert; only for the debias objectives that use it: BIAS_ONLY_OBJECTIVES)
    image_debias  originals + image counterfactuals           (warm start from general)
    text_debias   originals + text counterfactuals            (warm start from general)
    router        general's pooled states → strategy labels   (base and experts frozen)

Only the stage's own parameters are trainable (`MMEJDModel.set_trainable`); a debias expert
trained with `learned_mixin` trains its gate too, added for its stage and removed after. The
collator builds exactly the counterfactual parts a stage's loss uses. The loss reads the
stage's `MMEJDLossSettings` (`MMEJDTrainingConfig.loss_settings(stage)`), held by the model
while the stage runs.

Training-only weights (the bias-only expert, a gate) are never in a saved model folder
(`is_training_only_parameter`); while a stage runs with them, each Trainer checkpoint keeps
them beside it in `TRAINING_ONLY_NAME`, which a resumed stage loads back.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..data.collator import CounterfactualTripleCollator
from ..modeling.configuration_mme_jd import BIAS_ONLY_EXPERT, BIAS_ONLY_OBJECTIVES, MMEJDLossSettings

logger = logging.getLogger("mme_jd")

# stage → (expert trained, counterfactual parts built by the collator)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "general": ("general", ()),
    "mctd": ("general", ("text", "image")),
    "bias_only": (BIAS_ONLY_EXPERT, ("text", "image")),
    "image_debias": ("image_debias", ("image",)),
    "text_debias": ("text_debias", ("text",)),
}


#: The file beside a Trainer checkpoint (and in the bias_only stage's folder) that holds the
#: training-only weights a saved model folder never holds.
TRAINING_ONLY_NAME = "training_only.safetensors"


def debias_objective(loss_settings: MMEJDLossSettings, part: str) -> str:
    """The objective of the debias expert of counterfactual part "text" or "image"."""
    return {"text": loss_settings.text_debias_objective, "image": loss_settings.image_debias_objective}[part]


def stage_parts(stage: str, loss_settings: MMEJDLossSettings) -> tuple[str, ...]:
    """The counterfactual parts a stage's loss uses (a zero MCTD weight drops its part; the
    bias_only stage learns the cue-only views whose debias expert trains against it)."""
    parts = STAGES[stage][1]
    if stage == "mctd":
        weights = {"text": loss_settings.text_counterfactual_weight, "image": loss_settings.image_counterfactual_weight}
        parts = tuple(p for p in parts if weights[p] > 0)
    elif stage == "bias_only":
        parts = tuple(p for p in parts if debias_objective(loss_settings, p) in BIAS_ONLY_OBJECTIVES)
    return parts


def save_training_only(model, folder: str | Path) -> None:
    """Write the model's training-only weights (`training_only_state_dict`) into
    `folder/TRAINING_ONLY_NAME` (nothing when it has none)."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.training_only_state_dict().items()}
    if tensors:
        Path(folder).mkdir(parents=True, exist_ok=True)
        partial = Path(folder) / f".{TRAINING_ONLY_NAME}.partial"  # a killed write leaves no file under the name
        save_file(tensors, str(partial), metadata={"format": "pt"})
        partial.replace(Path(folder) / TRAINING_ONLY_NAME)


def load_training_only(model, folder: str | Path) -> None:
    """Load `folder/TRAINING_ONLY_NAME` into the model's training-only parts, which must be
    added already and match it exactly; a `ValueError` names what is missing."""
    from safetensors.torch import load_file

    path = Path(folder) / TRAINING_ONLY_NAME
    expected = set(model.training_only_state_dict())
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} has no {TRAINING_ONLY_NAME}: it does not hold the bias-only expert's or "
                         "the learned-mixin gate's weights this stage resumes with. Resume from a checkpoint of this "
                         "version, or start over (--force-restart).")
    tensors = load_file(str(path))
    if set(tensors) != expected:
        raise ValueError(f"{path} holds other training-only tensors than the model's ({len(tensors)} against "
                         f"{len(expected)}): it was written by another run; start over (--force-restart).")
    model.load_state_dict(tensors, strict=False)


class KeepTrainingOnlyWeights(TrainerCallback):
    """Writes the model's training-only weights beside each Trainer checkpoint
    (`checkpoint-N/TRAINING_ONLY_NAME`): the checkpoint's model file leaves them out."""

    def __init__(self, model):
        self.model = model

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            save_training_only(self.model, Path(args.output_dir) / f"checkpoint-{state.global_step}")


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
    runs; it gets its own back afterwards.

    The bias_only stage needs the bias-only expert added (`model.add_bias_only_expert()`;
    `train` adds it and warm-starts it from general); a debias expert whose objective is
    `learned_mixin` gets its gate for the stage (removed afterwards, with the stage's Trainer
    checkpoints keeping it in `TRAINING_ONLY_NAME` meanwhile)."""
    from transformers import Trainer

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {sorted(STAGES)} or 'router'.")
    expert = STAGES[stage][0]
    own_settings = model.loss_settings
    loss_settings = loss_settings or own_settings
    parts = stage_parts(stage, loss_settings)
    if stage == "bias_only" and not parts:
        raise ValueError(f"the bias_only stage trains the bias of the debias objectives {list(BIAS_ONLY_OBJECTIVES)}; "
                         "neither image_debias_objective nor text_debias_objective is one of them.")
    if stage == "bias_only" and not model.has_bias_only_expert:
        raise ValueError("the bias_only stage trains the bias-only expert: call model.add_bias_only_expert() first "
                         "(train() does, warm-starting it from general).")
    gated = stage in ("image_debias", "text_debias") and debias_objective(loss_settings, parts[0]) == "learned_mixin"
    if gated:
        model.add_mixin_gate(expert)
    model.set_trainable(expert)
    collator = CounterfactualTripleCollator(
        processor, model.config, include_counterfactuals=bool(parts), parts=parts or ("text", "image"),
        text_counterfactual=text_counterfactual, image_counterfactual=image_counterfactual,
        lexicon=lexicon, vocabulary=vocabulary, expert=expert, loss_settings=loss_settings,
    )
    if getattr(args, "train_sampling_strategy", None) == "group_by_length":
        train_dataset = with_length_column(train_dataset, args.length_column_name)
    callbacks = list(callbacks or [])
    if model.training_only_state_dict():
        callbacks.append(KeepTrainingOnlyWeights(model))
        if resume_from_checkpoint is True:  # the Trainer's "the last one", named here to load from it
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(args.output_dir) or True  # none: the Trainer says so
        if isinstance(resume_from_checkpoint, str):  # the Trainer loads the checkpoint's model file: it lacks them
            load_training_only(model, resume_from_checkpoint)
    model.train()
    model.loss_settings = loss_settings
    try:
        trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator,
                          callbacks=callbacks)
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        model.loss_settings = own_settings
        if gated:
            model.remove_mixin_gates()
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"stage": stage, "expert": expert, "parts": list(parts), "steps": result.global_step,
            "epochs": args.num_train_epochs, "learning_rate": args.learning_rate,
            "loss_settings": dataclasses.asdict(loss_settings), "train_loss": result.training_loss, "losses": losses,
            "seconds": round(result.metrics.get("train_runtime", 0.0), 2)}
