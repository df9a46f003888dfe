"""Run a model over a dataset in batches and keep every logit (training, evaluation, bench)."""

from __future__ import annotations

from typing import Any

import torch

from .data.collator import CounterfactualTripleCollator


def collect_outputs(
    model,
    processor,
    dataset,
    batch_size: int = 64,
    mode: str | None = None,
    counterfactual_parts: tuple[str, ...] = (),
    text_counterfactual: str | None = None,
    image_counterfactual: str | None = None,
    return_experts: bool = False,
    lexicon: Any = None,
    vocabulary: set[str] | None = None,
    progress: bool = False,
    description: str = "predict",
    cues: Any = None,
    group_column: str = "group",
    keep_metadata: bool = False,
    expert: str | None = None,
    sort_by_length: bool = True,
) -> dict[str, Any]:
    """Batched inference over `dataset` rows; returns the concatenated outputs.

    Rows run in batches of like text length (`length_order`: less padding) and come back in
    the dataset's order; `sort_by_length=False` runs them in that order, for a caller that
    captures activations with hooks as the batches run (`training.peers.head_inputs`).

    Keys: labels, groups (when the rows have them), logits, strategy, router_logits,
    general_logits, image_debias_logits, text_debias_logits, text_counterfactual_logits,
    image_counterfactual_logits, pooled_hidden_state: whichever the model computed.
    Image counterfactual masks come from the model's own saliency (`saliency_model=model`).
    `cues`: the declared cues of the `cue_only` / `cue_removed` builders (None: the model
    config's); `group_column`: the column `groups` come from ("cue_group" for declared cues).
    `keep_metadata`: also return "metadata", the collator's per-row lists concatenated over the
    batches (e.g. text_mask_positions, text_counterfactual, image_mask, image_grid: what each
    counterfactual changed, for the gallery).
    `expert`: run this one expert on every row (its logits are `logits`), whatever the mode.
    """
    from tqdm.auto import tqdm

    collator = CounterfactualTripleCollator(
        processor, model.config, include_counterfactuals=bool(counterfactual_parts),
        parts=counterfactual_parts or ("text", "image"), text_counterfactual=text_counterfactual,
        image_counterfactual=image_counterfactual, lexicon=lexicon, vocabulary=vocabulary, saliency_model=model,
        cues=cues, group_column=group_column,
    )
    model.eval()
    device = next(model.parameters()).device
    collected: dict[str, list[torch.Tensor]] = {}
    metadata_rows: dict[str, list] = {}
    order = length_order(dataset, collator.text_column) if sort_by_length else list(range(len(dataset)))
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc=description, disable=not progress, leave=False):
        rows = [dataset[i] for i in order[start:start + batch_size]]
        batch = collator(rows)
        metadata = batch.pop("metadata")
        if keep_metadata:
            for key, values in metadata.items():
                metadata_rows.setdefault(key, []).extend(values)
        labels = batch.pop("labels", None)
        batch.pop("counterfactual_targets", None)
        batch.pop("text_counterfactual_valid", None)
        batch = {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict)
                     else v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with torch.no_grad():
            out = model(**batch, mode=mode, expert=expert, return_experts=return_experts)
        values = {key: getattr(out, key) for key in (
            "logits", "strategy", "router_logits", "general_logits", "image_debias_logits", "text_debias_logits",
            "text_counterfactual_logits", "image_counterfactual_logits", "pooled_hidden_state")}
        if labels is not None:
            values["labels"] = labels
        if metadata.get("group") is not None and None not in metadata["group"]:
            values["groups"] = torch.tensor(metadata["group"])
        for key, value in values.items():
            if value is not None:
                collected.setdefault(key, []).append(value.detach().cpu())
    restore = torch.empty(len(order), dtype=torch.long)  # position of each row in the sorted pass
    restore[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    outputs: dict[str, Any] = {key: torch.cat(values)[restore] for key, values in collected.items()}
    if keep_metadata:
        outputs["metadata"] = {key: [values[i] for i in restore.tolist()] for key, values in metadata_rows.items()}
    return outputs


def length_order(dataset, text_column: str = "text") -> list[int]:
    """Row indices of `dataset` (a `datasets.Dataset` or a list of dicts) sorted by the length of
    their text, ties in row order: batches of like-length rows pad less (an MMSD tweet is 5 to
    60 words). `collect_outputs` runs its batches in this order and returns rows in the given one."""
    if hasattr(dataset, "column_names"):
        texts = dataset[text_column] if text_column in dataset.column_names else [None] * len(dataset)
    else:
        texts = [row.get(text_column) if isinstance(row, dict) else None for row in dataset]
    lengths = [len(text) if isinstance(text, str) else 0 for text in texts]
    return sorted(range(len(lengths)), key=lengths.__getitem__)
