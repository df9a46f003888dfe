"""Peer debiasing methods on the same base, collator and Trainer as MME-JD: JTT, Group DRO and DFR.

Both train the `general` expert (a LoRA adapter on the frozen base) through
`transformers.Trainer` with `CounterfactualTripleCollator` (originals only), so they differ from
ERM only in what the loss sees:

* JTT ("Just Train Twice", Liu et al. 2021): train ERM for a short first phase, collect its
  errors on the train split, then train again from the same initial weights on the train split
  with each error row repeated `upweight` times (rows duplicated: an upsampled dataset).
* Group DRO (Sagawa et al. 2020, online algorithm): group weights q (uniform at start); per
  batch, the mean loss of each group g present, `q_g ← q_g·exp(η·loss_g)`, q renormalised, and
  the loss `Σ_g q_g·loss_g`. Groups come from the collator's `metadata["group"]` (the dataset's
  `group` column: label × cue on the synthetic benchmark). A group absent from a batch enters
  the update with its last seen loss (`absent_group_loss="last"`, default; before it is first
  seen: the batch's mean group loss): with the literal update ("zero") a rare group, absent
  from most batches of 64, falls behind by exp(η·loss) at every batch without it, and on the
  synthetic benchmark (1% groups) q went to 0 on exactly the worst groups. Single-process:
  under DDP each process would keep its own q.

* DFR ("Deep Feature Reweighting", Kirichenko et al. 2023): keep the trained general expert's
  features and retrain only its class head (`head="linear"`) on a group-balanced subset of
  validation rows: every group cut to the smallest group's size, L2-regularised logistic
  regression on the head's inputs (the answer position's final hidden state), averaged over
  `subsets` random subsets as in the paper.

Knobs (`upweight`, first-phase epochs, η, DFR's L2 weight) are the caller's; the benchmark chooses them on the
group-balanced validation split.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer

from ..data.collator import CounterfactualTripleCollator
from .stages import run_expert_stage, stage_arguments, with_length_column

__all__ = [
    "GroupDROTrainer",
    "balanced_subset",
    "head_inputs",
    "train_dfr",
    "jtt_error_indices",
    "restore_expert",
    "snapshot_expert",
    "train_group_dro",
    "train_jtt",
    "upweighted_rows",
]


# ---------------------------------------------------------------------------- helpers


def snapshot_expert(model, expert: str = "general") -> dict[str, torch.Tensor]:
    """Copies of one expert's trainable tensors (`MMEJDModel.expert_parameters`: its LoRA
    matrices and, if any, its head), by parameter name."""
    return {name: param.detach().clone() for name, param in model.expert_parameters(expert)}


def restore_expert(model, snapshot: dict[str, torch.Tensor]) -> None:
    """Put back the tensors of `snapshot_expert`."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in snapshot.items():
            params[name].copy_(value)


def _general_predictions(model, processor, rows, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..inference import collect_outputs

    outputs = collect_outputs(model, processor, rows, batch_size=batch_size, mode="general",
                              description="JTT error set")
    return outputs["logits"].argmax(-1), outputs["labels"]


# ---------------------------------------------------------------------------- JTT


def jtt_error_indices(model, processor, rows, batch_size: int = 128) -> list[int]:
    """Indices of the rows the model's general expert gets wrong (the JTT error set)."""
    predictions, labels = _general_predictions(model, processor, rows, batch_size)
    return torch.nonzero(predictions != labels).flatten().tolist()


def upweighted_rows(rows, error_indices: Sequence[int], upweight: int):
    """The JTT training set: every row once, plus `upweight - 1` more copies of each error row
    (so an error row is seen `upweight` times per epoch). `upweight` is an integer >= 1."""
    import datasets

    if int(upweight) != upweight or upweight < 1:
        raise ValueError(f"upweight must be an integer >= 1, got {upweight!r}.")
    if not len(error_indices) or upweight == 1:
        return rows
    errors = rows.select(list(error_indices))
    return datasets.concatenate_datasets([rows] + [errors] * (int(upweight) - 1))


def jtt_first_phase(model, rows, args, first_epochs: float, processor: Any = None, batch_size: int = 128,
                    callbacks: list | None = None) -> tuple[dict, list[int]]:
    """JTT's first phase: ERM on the general expert of `model` (in place) for `first_epochs`
    epochs of `rows`, then the indices of the rows it gets wrong. Returns (stage log, indices)."""
    processor = processor if processor is not None else model.processor
    first_args = stage_arguments(args, "jtt-first", f"{args.output_dir}/jtt_first", num_train_epochs=first_epochs)
    log = run_expert_stage(model, "general", rows, first_args, processor, model.config.text_counterfactual,
                           model.config.image_counterfactual, callbacks=callbacks)
    return log, jtt_error_indices(model, processor, rows, batch_size)


def train_jtt(
    model,
    dataset,
    args,
    upweight: int = 6,
    first_epochs: float = 1.0,
    train_split: str = "train",
    processor: Any = None,
    error_indices: Sequence[int] | None = None,
    batch_size: int = 128,
    callbacks: list | None = None,
) -> dict:
    """JTT on the general expert of `model` (trained in place).

    Phase 1 (skipped when `error_indices` is given): ERM for `first_epochs` epochs, then the
    rows of `dataset[train_split]` it gets wrong. Phase 2: the general expert back at the
    weights it had before phase 1, then ERM with `args` on `upweighted_rows(train, errors,
    upweight)`. Returns a log with both phases, the error set's size and `error_indices`.
    """
    processor = processor if processor is not None else model.processor
    rows = dataset[train_split]
    started, cpu_started = time.perf_counter(), time.process_time()
    initial = snapshot_expert(model, "general")
    log: dict[str, Any] = {"stage": "jtt", "upweight": int(upweight), "first_epochs": first_epochs}
    if error_indices is None:
        log["first_phase"], error_indices = jtt_first_phase(model, rows, args, first_epochs, processor, batch_size,
                                                            callbacks)
        restore_expert(model, initial)
        log["first_phase_seconds"] = round(time.perf_counter() - started, 2)
        log["first_phase_cpu_seconds"] = round(time.process_time() - cpu_started, 2)
    error_indices = [int(i) for i in error_indices]
    training_rows = upweighted_rows(rows, error_indices, upweight)
    second_args = stage_arguments(args, "jtt", f"{args.output_dir}/jtt_second")
    second_started, second_cpu = time.perf_counter(), time.process_time()
    log["second_phase"] = run_expert_stage(model, "general", training_rows, second_args, processor,
                                           model.config.text_counterfactual, model.config.image_counterfactual,
                                           callbacks=callbacks)
    log["second_phase_seconds"] = round(time.perf_counter() - second_started, 2)
    log["second_phase_cpu_seconds"] = round(time.process_time() - second_cpu, 2)
    log.update(num_errors=len(error_indices), error_share=len(error_indices) / max(1, len(rows)),
               train_rows=len(training_rows), error_indices=error_indices,
               seconds=round(time.perf_counter() - started, 2))
    return log


# ---------------------------------------------------------------------------- Group DRO


class GroupDROTrainer(Trainer):
    """A Trainer whose loss is the online Group DRO objective (see the module docstring).

    Args (besides the Trainer's): `num_groups` (group ids lie in [0, num_groups)),
    `step_size` η, `absent_group_loss`: "last" or "zero" (see the module docstring).
    `group_weights` holds q; `group_weight_history` q after every step and
    `group_loss_history` the per-group losses that updated it.
    """

    def __init__(self, *args, num_groups: int, step_size: float = 0.01, absent_group_loss: str = "last",
                 **kwargs):
        super().__init__(*args, **kwargs)
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}.")
        if absent_group_loss not in ("last", "zero"):
            raise ValueError(f"absent_group_loss must be 'last' or 'zero', got {absent_group_loss!r}.")
        self.num_groups = int(num_groups)
        self.step_size = float(step_size)
        self.absent_group_loss = absent_group_loss
        self.group_weights = torch.full((self.num_groups,), 1.0 / self.num_groups)
        self.last_group_losses = torch.full((self.num_groups,), float("nan"))
        self.group_weight_history: list[list[float]] = []
        self.group_loss_history: list[list[float]] = []

    def group_losses(self, losses: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss per group [G], count per group [G]); 0 for a group absent from the batch."""
        one_hot = F.one_hot(groups, self.num_groups).to(losses.dtype)
        counts = one_hot.sum(0)
        return (one_hot * losses[:, None]).sum(0) / counts.clamp(min=1), counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        metadata = inputs.get("metadata") or {}
        groups = metadata.get("group")
        if groups is None or any(g is None for g in groups):
            raise ValueError("Group DRO needs a `group` column in every training row (the collator's "
                             "metadata['group']).")
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        losses = F.cross_entropy(outputs.logits.float(), labels, reduction="none")
        group_ids = torch.as_tensor(groups, device=losses.device, dtype=torch.long)
        if group_ids.min() < 0 or group_ids.max() >= self.num_groups:
            raise ValueError(f"group ids must lie in [0, {self.num_groups}); got {sorted(set(groups))}.")
        group_losses, counts = self.group_losses(losses, group_ids)
        q = self.group_weights.to(losses.device)
        if model.training:
            with torch.no_grad():
                update = group_losses.detach().float().cpu()
                present = counts.cpu() > 0
                if self.absent_group_loss == "last":
                    self.last_group_losses[present] = update[present]
                    update = torch.where(torch.isnan(self.last_group_losses), update[present].mean(),
                                         self.last_group_losses)
                q = self.group_weights * torch.exp(self.step_size * update)
                q = q / q.sum()
            self.group_weights = q
            self.group_weight_history.append(q.tolist())
            self.group_loss_history.append(update.tolist())
            q = q.to(losses.device)
        loss = (q * group_losses).sum()
        return (loss, outputs) if return_outputs else loss


def train_group_dro(
    model,
    dataset,
    args,
    step_size: float = 0.01,
    train_split: str = "train",
    num_groups: int | None = None,
    processor: Any = None,
    callbacks: list | None = None,
    absent_group_loss: str = "last",
) -> dict:
    """Group DRO on the general expert of `model` (trained in place) over `dataset[train_split]`
    (rows with a `group` column). Returns the log with the final group weights q."""
    processor = processor if processor is not None else model.processor
    rows = dataset[train_split]
    if "group" not in rows.column_names:
        raise ValueError(f"Group DRO needs a `group` column; the split has {rows.column_names}.")
    if num_groups is None:
        num_groups = int(max(rows["group"])) + 1
    model.set_trainable("general")
    collator = CounterfactualTripleCollator(processor, model.config, include_counterfactuals=False, expert="general")
    stage_args = stage_arguments(args, "group-dro", f"{args.output_dir}/group_dro")
    if getattr(stage_args, "train_sampling_strategy", None) == "group_by_length":  # as `run_expert_stage`
        rows = with_length_column(rows, stage_args.length_column_name)
    model.train()
    trainer = GroupDROTrainer(model=model, args=stage_args, train_dataset=rows, data_collator=collator,
                              callbacks=callbacks, num_groups=num_groups, step_size=step_size,
                              absent_group_loss=absent_group_loss)
    result = trainer.train()
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"stage": "group_dro", "step_size": step_size, "absent_group_loss": absent_group_loss,
            "num_groups": num_groups, "steps": result.global_step,
            "train_loss": result.training_loss, "losses": losses,
            "group_weights": trainer.group_weights.tolist(), "group_weight_history": trainer.group_weight_history,
            "group_loss_history": trainer.group_loss_history,
            "seconds": round(result.metrics.get("train_runtime", 0.0), 2)}


# ---------------------------------------------------------------------------- DFR


def head_inputs(model, processor, rows, batch_size: int = 64, expert: str = "general") -> tuple[torch.Tensor, dict]:
    """What `expert`'s linear class head reads on `rows` (its input, captured by a forward hook)
    and the collected outputs (labels, groups, logits) of the same pass."""
    from ..inference import collect_outputs

    if model.config.head != "linear":
        raise ValueError(f"DFR retrains a linear class head; this model's head is {model.config.head!r}. Build it "
                         "with head='linear' (mme_jd.from_base(..., head='linear')).")
    captured: list[torch.Tensor] = []
    hook = model.heads[expert].register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    try:
        # in the rows' order: the hook captures the head's inputs batch by batch as they run
        outputs = collect_outputs(model, processor, rows, batch_size=batch_size, expert=expert,
                                  description="DFR features", group_column="cue_group"
                                  if "cue_group" in rows.column_names else "group", sort_by_length=False)
    finally:
        hook.remove()
    return torch.cat(captured).float().cpu(), outputs


def balanced_subset(groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of a group-balanced subset: from every group present, as many rows (drawn without
    replacement) as the smallest group has."""
    ids = torch.unique(groups)
    smallest = min(int((groups == g).sum()) for g in ids)
    chosen = [torch.nonzero(groups == g).flatten()[torch.randperm(int((groups == g).sum()), generator=generator)[:smallest]]
              for g in ids]
    return torch.cat(chosen).sort().values


def train_dfr(model, processor, rows, l2: float = 1.0, subsets: int = 10, seed: int = 0,
              batch_size: int = 64, steps: int = 200,
              inputs: tuple[torch.Tensor, dict] | None = None) -> dict[str, Any]:
    """Refit the general expert's linear head on group-balanced subsets of `rows` (their `group`
    or `cue_group` column: label × cue), the weights averaged over `subsets` fits (each L-BFGS on
    the mean cross-entropy plus `l2`·‖W‖²/2 over the subset). The LoRA weights stay. `inputs`:
    `head_inputs(model, processor, rows)` when the caller has it (e.g. fits at several `l2`;
    the head does not change what it reads). Returns a log: subset size, groups, the loss of
    each fit."""
    features, outputs = inputs if inputs is not None else head_inputs(model, processor, rows, batch_size)
    if "groups" not in outputs:
        raise ValueError("DFR needs groups: give the rows a 'group' column, or declared cues' 'cue_group' "
                         "(mme_jd.cues.add_cue_columns).")
    labels, groups = outputs["labels"], outputs["groups"]
    head = model.heads["general"]
    generator = torch.Generator().manual_seed(seed)
    weights, biases, losses = [], [], []
    for _ in range(subsets):
        index = balanced_subset(groups, generator)
        x, y = features[index], labels[index]
        weight = head.weight.detach().float().cpu().clone().requires_grad_(True)
        bias = head.bias.detach().float().cpu().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.pow(2).sum() / 2
            loss.backward()
            return loss

        losses.append(float(optimizer.step(closure).detach()))
        weights.append(weight.detach())
        biases.append(bias.detach())
    with torch.no_grad():
        head.weight.copy_(torch.stack(weights).mean(0).to(head.weight))
        head.bias.copy_(torch.stack(biases).mean(0).to(head.bias))
    return {"stage": "dfr", "l2": l2, "subsets": subsets, "subset_rows": len(index),
            "groups": int(torch.unique(groups).numel()), "losses": [round(v, 4) for v in losses]}
