"""The counterfactual-triple collator: dataset rows → one batch for `MMEJDModel`.

    rows ──► texts, images, labels
             │ text counterfactual: precomputed column `text_counterfactual`, else the builder
             │   (`cue_only` / `cue_removed`: the declared text cues of `cues`)
             │ image counterfactual masks: column `image_counterfactual_mask`, else `given`
             │   boxes (`core_box`), else `cue_only` (the declared image cues' regions kept),
             │   else the general expert's saliency (`saliency_model`)
             ▼
    ONE processor call over [originals; text counterfactuals; image counterfactuals]
             ▼
    {input_ids, attention_mask, pixel_values, ...,              (originals)
     labels, counterfactual_targets, text_counterfactual_valid,
     text_counterfactual: {...}, image_counterfactual: {...},   (same length, one forward)
     metadata: {group, text_mask_positions, text_counterfactual, image_mask, image_grid, ...}}
                                                                (ignored by the model)

Works with `transformers.Trainer` given `remove_unused_columns=False` and
`label_names=["labels"]`. Rows without an image (MMSD's tweets offline) get their
`image_description` words in the prompt, as the data loader announced, and no image tokens
(`MMEJDConfig.image_less_rows="text_only"`) or a flat grey stand-in image ("stand_in").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..modeling.configuration_mme_jd import MMEJDConfig, MMEJDLossSettings
from ..modeling.counterfactual_mme_jd import (boxes_to_token_masks, build_triple, call_processor,
                                              cue_only_token_masks, image_token_grids, mask_image_tokens,
                                              reversed_targets, text_counterfactuals, top_token_masks)
from .images import load_image

logger = logging.getLogger("mme_jd")

METADATA_COLUMNS = ("group", "text_cue", "image_cue", "clean_label", "core_word_positions", "core_box", "id")


def cue_specs(cues: Any) -> list[dict]:
    """Declared cues as `MMEJDConfig.cues` specs: `mme_jd.cues.Cue` objects (`.to_spec()`) or
    spec dicts, in order."""
    return [cue.to_spec() if hasattr(cue, "to_spec") else dict(cue) for cue in (cues or [])]


def _described(description: str) -> str:
    """The prompt suffix carrying a stand-in image description (nothing without one)."""
    return f" image : {description}" if description else ""


def _changed_words(text: str, counterfactual: str) -> list[int]:
    """Positions (in `text.split()`) of the words a precomputed counterfactual changed, for rows
    that carry no `text_mask_positions`. Words cut off at the end count as changed; words
    appended at the end count as a change of the last word."""
    words, cf_words = text.split(), counterfactual.split()
    changed = [i for i, (a, b) in enumerate(zip(words, cf_words)) if a != b]
    if len(cf_words) < len(words):
        changed += range(len(cf_words), len(words))
    elif len(cf_words) > len(words) and words and not changed:
        changed.append(len(words) - 1)
    return changed


@dataclass
class CounterfactualTripleCollator:
    """Collate rows into originals + text and image counterfactuals (see module docstring).

    Args:
        processor: the base model's processor.
        config: the model's `MMEJDConfig` (prompt, counterfactual strategies, ratios, fill).
        include_counterfactuals: False gives originals only (ERM training, inference).
        text_counterfactual / image_counterfactual: override the config's strategies.
        lexicon: the sentiment lexicon of the `swap` builder (default: the shipped one).
        saliency_model: the model whose general expert scores image tokens for the
            `attention` / `gradient` builders when rows carry no precomputed mask.
        vocabulary: restrict `swap` replacements to words the tokenizer knows (word-level
            tokenizers); None for sub-word tokenizers, which know every word.
        parts: which counterfactuals to build ("text", "image"); a training stage builds only
            what its loss uses.
        expert: when set, the batch carries `expert=...` so the model trains that expert.
        cues: the declared cues of the `cue_only` / `cue_removed` builders (`mme_jd.cues.Cue`
            objects or `MMEJDConfig.cues` specs; None: the config's `cues`).
        group_column: the column whose values become `metadata["group"]` ("group": the
            synthetic benchmark's; "cue_group": the groups of declared cues).
        loss_settings: the training losses' knobs the batch follows (`cf_target` of the
            `counterfactual_targets`; the text expert's objective, which decides whether its
            counterfactual keeps the image); None: the defaults. A training stage passes the
            model's (`model.loss_settings`).
    """

    processor: Any
    config: MMEJDConfig
    include_counterfactuals: bool = True
    text_counterfactual: str | None = None
    image_counterfactual: str | None = None
    lexicon: Any = None
    saliency_model: Any = None
    vocabulary: set[str] | None = None
    parts: tuple[str, ...] = ("text", "image")
    expert: str | None = None
    text_column: str = "text"
    image_column: str = "image"
    label_column: str = "label"
    cues: Any = None
    group_column: str = "group"
    loss_settings: MMEJDLossSettings | None = None
    _warned_stand_in: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.text_counterfactual = self.text_counterfactual or self.config.text_counterfactual
        self.image_counterfactual = self.image_counterfactual or self.config.image_counterfactual
        self.loss_settings = self.loss_settings or MMEJDLossSettings()
        specs = cue_specs(self.cues if self.cues is not None else getattr(self.config, "cues", None))
        self.text_cue_patterns = [spec["pattern"] for spec in specs if spec.get("kind") == "text"]
        self.image_cue_specs = [spec for spec in specs if spec.get("kind") == "image"]
        if self.text_counterfactual == "swap" and self.lexicon is None:
            from .lexicon import load_lexicon

            self.lexicon = load_lexicon()

    # ------------------------------------------------------------------ pieces
    def _texts_and_images(self, rows: list[dict]) -> tuple[list[str], list[Any], list[str]]:
        texts, images, descriptions = [], [], []
        for index, row in enumerate(rows):
            text = row.get(self.text_column)
            if not isinstance(text, str):
                raise ValueError(f"row {index}: column '{self.text_column}' must be a string, got {type(text).__name__}.")
            texts.append(text)
            description = row.get("image_description") or ""
            if row.get(self.image_column) is None and description and not self._warned_stand_in:
                logger.warning("rows without images: using the image description words as a stand-in in the prompt.")
                self._warned_stand_in = True
            descriptions.append(description if row.get(self.image_column) is None else "")
            image = row.get(self.image_column)  # None: `call_processor` follows `config.image_less_rows`
            images.append(None if image is None else load_image(image, index=index))
        return texts, images, descriptions

    def _text_counterfactual_keeps_image(self) -> bool:
        """A swap counterfactual is a complete input whose label flips: it keeps the image
        (`swap_other_modality`) for a reversed target; a `cue_removed` text is the whole input
        less the cue and keeps it too; the cue-only builders, and the bias input
        of the text expert's product-of-experts objective, follow `other_modality`."""
        poe = self.expert == "text_debias" and self.loss_settings.text_debias_objective == "poe"
        if self.text_counterfactual == "cue_removed":
            return True  # the whole input less the cue: its image stays
        if self.text_counterfactual == "swap" and not poe:
            return self.config.swap_other_modality == "keep"
        return self.config.other_modality == "keep"

    def _stand_in_prompts(self, texts: list[str], descriptions: list[str], built, parts) -> tuple[list, list | None]:
        """Text counterfactual prompts and image counterfactual texts when some rows' image side
        is words (a stand-in description): those words follow the IMAGE, not the text. The text
        counterfactual keeps them exactly when it keeps a real image (see
        `_text_counterfactual_keeps_image`);
        the image counterfactual gets them through the text builder (the core-removing edit
        available for words), beside the original text with "keep" or no text with "null"."""
        keep = self.config.other_modality == "keep"
        cf_prompts = None
        if built is not None:
            keep_image = self._text_counterfactual_keeps_image()
            cf_prompts = [cf + (_described(d) if keep_image else "") for (cf, _), d in zip(built, descriptions)]
        image_texts = None
        if "image" in parts and any(descriptions):
            builder = self.text_counterfactual if self.text_counterfactual in ("lexical", "swap") else "lexical"
            edited = text_counterfactuals([d or "" for d in descriptions], builder, self.config.mask_word,
                                          lexicon=self.lexicon, vocabulary=self.vocabulary)
            image_texts = []
            for text, description, (edited_words, _) in zip(texts, descriptions, edited):
                other = text if keep else ""
                image_texts.append((other + _described(edited_words)).strip() if description else other)
        return cf_prompts, image_texts

    def _text_counterfactual_texts(self, rows: list[dict], texts: list[str]) -> list[tuple[str, list[int]]]:
        if all("text_counterfactual" in row for row in rows):
            return [
                (row["text_counterfactual"], list(row["text_mask_positions"]) if row.get("text_mask_positions")
                 is not None else _changed_words(text, row["text_counterfactual"]))
                for row, text in zip(rows, texts)
            ]
        core = [row.get("core_word_positions") for row in rows] if self.text_counterfactual == "given" else None
        if core is not None and any(c is None for c in core):
            raise ValueError("text_counterfactual='given' needs a `core_word_positions` column in every row.")
        scores = None
        if self.text_counterfactual == "saliency":
            scores = [row.get("text_word_scores") for row in rows]
            if any(s is None for s in scores):
                scores = None  # text_counterfactuals says what is missing
        return text_counterfactuals(
            texts, self.text_counterfactual, self.config.mask_word, core_positions=core,
            ratio=self.config.text_mask_ratio, lexicon=self.lexicon, vocabulary=self.vocabulary,
            word_scores=scores, cue_patterns=self.text_cue_patterns,
        )

    def image_masks(self, rows: list[dict], original: dict) -> list[torch.Tensor]:
        """The image counterfactual's token mask per row (True: the patch is filled), for the
        processed originals `original`: a precomputed column, `given` boxes, the declared cues'
        regions (`cue_only`), else the saliency of `saliency_model`'s general expert. A row
        without an image (the flat grey stand-in, which filling with its own mean leaves as it
        is) masks nothing, and a batch of such rows needs no saliency pass."""
        if all(row.get("image_counterfactual_mask") is not None for row in rows):
            return [torch.as_tensor(row["image_counterfactual_mask"], dtype=torch.bool) for row in rows]
        if self.image_counterfactual == "given":
            if any(row.get("core_box") is None for row in rows):
                raise ValueError("image_counterfactual='given' needs a `core_box` column [x0, y0, x1, y1] in every row.")
            return boxes_to_token_masks([row["core_box"] for row in rows], image_token_grids(self.config, original))
        if self.image_counterfactual == "cue_only":
            return cue_only_token_masks(self.image_cue_specs, image_token_grids(self.config, original))
        has_image = [row.get(self.image_column) is not None for row in rows]
        if not any(has_image):
            return [torch.zeros(r * c, dtype=torch.bool) for r, c in image_token_grids(self.config, original)]
        if self.saliency_model is None:
            raise ValueError(
                f"image_counterfactual='{self.image_counterfactual}' needs the general expert's saliency: pass "
                "saliency_model= to the collator, or precompute an `image_counterfactual_mask` column with "
                "mme_jd.training.precompute_image_masks."
            )
        with torch.no_grad():
            device = next(self.saliency_model.parameters()).device
            scores, _ = self.saliency_model.image_saliency(
                {k: v.to(device) if torch.is_tensor(v) else v for k, v in original.items()}, self.image_counterfactual
            )
        masks = [m.cpu() for m in top_token_masks(scores, self.config.image_mask_ratio)]
        return [mask if image else torch.zeros_like(mask) for mask, image in zip(masks, has_image)]

    # ------------------------------------------------------------------ call
    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows.")
        texts, images, descriptions = self._texts_and_images(rows)
        prompts = [text + _described(d) for text, d in zip(texts, descriptions)]
        batch: dict[str, Any] = {}
        if self.label_column in rows[0] and rows[0][self.label_column] is not None:
            batch["labels"] = torch.tensor([int(row[self.label_column]) for row in rows], dtype=torch.long)
        metadata = {key: [row.get(key) for row in rows] for key in METADATA_COLUMNS if key in rows[0]}
        if self.group_column != "group":
            metadata.pop("group", None)
            if self.group_column in rows[0]:
                metadata["group"] = [row.get(self.group_column) for row in rows]
        if self.expert is not None:
            batch["expert"] = self.expert
        parts = tuple(self.parts) if self.include_counterfactuals else ()
        if not parts:
            inputs = dict(call_processor(self.processor, self.config, prompts, images))
            return {**inputs, **batch, "metadata": metadata}
        built = self._text_counterfactual_texts(rows, texts) if "text" in parts else None
        cf_prompts, image_texts = self._stand_in_prompts(texts, descriptions, built, parts)
        triple = build_triple(self.processor, self.config, prompts, images, cf_prompts, parts=parts,
                              image_counterfactual_texts=image_texts,
                              text_counterfactual_keeps_image=self._text_counterfactual_keeps_image())
        batch.update(triple["original"])
        if built is not None:
            batch["text_counterfactual"] = triple["text_counterfactual"]
            # a text counterfactual that changed no word is the original: no reversed target for it
            batch["text_counterfactual_valid"] = torch.tensor([len(p) > 0 for _, p in built])
            metadata["text_mask_positions"] = [p for _, p in built]
            metadata["text_counterfactual"] = [cf for cf, _ in built]
        if "image" in parts:
            masks = self.image_masks(rows, triple["original"])
            image_cf = triple["image_counterfactual"]
            image_cf["pixel_values"] = mask_image_tokens(self.config, image_cf, masks)
            batch["image_counterfactual"] = image_cf
            metadata["image_mask"] = [m.tolist() for m in masks]
            metadata["image_grid"] = [list(grid) for grid in image_token_grids(self.config, triple["original"])]
        if "labels" in batch:
            batch["counterfactual_targets"] = reversed_targets(
                batch["labels"], self.config.num_labels, self.loss_settings.cf_target
            )
        batch["metadata"] = metadata
        return batch
