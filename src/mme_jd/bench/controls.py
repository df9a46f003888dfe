"""Random-mask controls: the counterfactual recipes (MID, MCTD, MME-JD) fed counterfactuals whose
masked words and patches are chosen at random, as many per row as the real builder masks."""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: The counterfactual columns the collator uses when a row has them.
COUNTERFACTUAL_COLUMNS = ("text_counterfactual", "text_mask_positions", "image_counterfactual_mask")


def without_counterfactual_columns(rows):
    """`rows` without precomputed counterfactual columns."""
    present = [name for name in COUNTERFACTUAL_COLUMNS if name in rows.column_names]
    return rows.remove_columns(present) if present else rows


def random_counterfactual_columns(rows, model, processor, text_builder: str, seed: int):
    """`rows` with the columns `text_counterfactual`, `text_mask_positions` and
    `image_counterfactual_mask` of the random-mask control.

    Text: the real builder (`text_builder`: "swap", "lexical", ...) decides how many words a
    row's counterfactual changes; the control masks that many words chosen at random (with the
    model's mask word; none where the builder changes none). Image: as many patches as the
    attention builder masks (`image_mask_ratio` of the image tokens, at least one) chosen at
    random. All images of the synthetic benchmark have one size, so one token grid serves all.
    """
    from ..data.lexicon import load_lexicon, swap_vocabulary
    from ..modeling.counterfactual_mme_jd import call_processor, image_token_grids, text_counterfactuals

    config = model.config
    texts = list(rows["text"])
    lexicon = load_lexicon() if text_builder == "swap" else None
    built = text_counterfactuals(texts, text_builder, config.mask_word, lexicon=lexicon,
                                 vocabulary=swap_vocabulary(processor), ratio=config.text_mask_ratio,
                                 core_positions=rows["core_word_positions"] if text_builder == "given" else None)
    rng = np.random.default_rng(seed)
    random_texts, positions = [], []
    for text, (_, changed) in zip(texts, built):
        words = text.split()
        chosen = sorted(rng.choice(len(words), size=min(len(changed), len(words)), replace=False).tolist())
        masked = set(chosen)
        random_texts.append(" ".join(config.mask_word if i in masked else w for i, w in enumerate(words)))
        positions.append(chosen)
    sample = call_processor(processor, config, texts[:1], [rows[0]["image"]])
    grid_rows, grid_cols = image_token_grids(config, sample)[0]
    tokens = grid_rows * grid_cols
    count = max(1, round(config.image_mask_ratio * tokens))
    masks = []
    for _ in range(len(rows)):
        mask = np.zeros(tokens, dtype=bool)
        mask[rng.choice(tokens, size=count, replace=False)] = True
        masks.append(mask.tolist())
    return (without_counterfactual_columns(rows).add_column("text_counterfactual", random_texts)
            .add_column("text_mask_positions", positions).add_column("image_counterfactual_mask", masks))


def random_dataset(data, model, processor, config, seed: int, splits: Sequence[str]):
    """A copy of `data` whose `splits` carry random-mask columns: the training split with the
    training text builder's counts (`config`: an `MMEJDTrainingConfig`), the others with MID's
    text builder's counts."""
    import datasets

    out = {}
    for index, split in enumerate(data):
        if split in splits:
            builder = config.text_counterfactual if split == config.train_split else config.mid_text_counterfactual
            out[split] = random_counterfactual_columns(data[split], model, processor, builder, seed * 1000 + index)
        else:
            out[split] = data[split]
    return datasets.DatasetDict(out)
