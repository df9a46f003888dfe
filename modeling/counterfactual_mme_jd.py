"""Counterfactual inputs of MME-JD (METHOD §3), shared by training and inference.

A counterfactual keeps the spurious context of one modality and removes its core semantics:

    text counterfactual  x_t* = (text with core words replaced, image of `other_modality`)
    image counterfactual x_v* = (text of `other_modality`,  image with salient patches filled)

Text builders work on words (`text.split()`), so their masks compare with word-level truth:
    lexical   every content word is core (a stop-word list and regexes keep the context:
              hashtags, emoji, @user, URLs, punctuation, numbers)
    saliency  the top `text_mask_ratio` words by a per-word score (the general expert's)
    given     core word positions supplied by the dataset
    swap      sentiment words replaced by a word of opposite polarity from a lexicon: a true
              counterfactual whose label flips
    cue_only  the declared text cues' words and function words kept, every other word masked:
              x_t* exact when the shortcut is known
    cue_removed  the declared text cues' words deleted (the rest unchanged): "what a user who
              knows the cue would try first", and a consistency-training input

Image builders work on image tokens (patches); `cue_only` keeps the declared image cues'
regions (`image_cue_keep_boxes`) and fills every other patch: a boolean mask per image token, applied to the
processor's `pixel_values` by `mask_image_tokens` (through the base family's layout,
layouts_mme_jd.py), so the processor runs once per batch and the masked patches are exactly the
model's patches. Scores come from `MMEJDModel.image_saliency`
(`attention`, `gradient`) or from dataset boxes (`given`, via `boxes_to_token_masks`).

`build_triple` makes the model inputs of originals and both counterfactuals in ONE processor
call, padded to one length, so a model can run all three in one batched forward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from .configuration_mme_jd import MMEJDConfig

# ---------------------------------------------------------------------------- text

# Social-media context stays in a text counterfactual: it is where shortcuts live.
_CONTEXT_PATTERNS = [
    re.compile(r"^#\w+"),  # hashtag
    re.compile(r"^@\w+"),  # user mention
    re.compile(r"^(https?://|www\.)\S+"),  # URL
    re.compile(r"^emoji_\w+$"),  # MMSD's emoji tokens
    re.compile(r"^[\W_]+$"),  # punctuation (and emoji characters, which are non-word)
    re.compile(r"^[+-]?\d[\d.,:%]*$"),  # numbers, times, percentages
    re.compile(r"^<\w+>$"),  # placeholders such as <user>, <url>
]

STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves im ive id dont doesnt didnt cant
    wont isnt arent wasnt werent its thats theres u ur lol rt via amp also get got gonna wanna
    really still even much many one two""".split()
)


def _strip_word(word: str) -> str:
    return word.strip(".,!?;:\"'()[]{}").lower()


def is_context_word(word: str) -> bool:
    """True for a word a text counterfactual keeps: stop words and social-media context."""
    if any(pattern.match(word) for pattern in _CONTEXT_PATTERNS):
        return True
    stripped = _strip_word(word).replace("'", "")
    return stripped == "" or stripped in STOP_WORDS


def _replace_words(words: list[str], positions: Sequence[int], mask_word: str) -> str:
    masked = list(words)
    for position in positions:
        masked[position] = mask_word
    return " ".join(masked)


def lexical_text_counterfactual(text: str, mask_word: str = "[MASK]") -> tuple[str, list[int]]:
    """Mask every content word. Returns (counterfactual text, masked word positions)."""
    words = text.split()
    positions = [i for i, word in enumerate(words) if not is_context_word(word)]
    return _replace_words(words, positions, mask_word), positions


def given_text_counterfactual(
    text: str, core_positions: Sequence[int], mask_word: str = "[MASK]"
) -> tuple[str, list[int]]:
    """Mask the core word positions the dataset gives."""
    words = text.split()
    bad = [p for p in core_positions if not 0 <= int(p) < len(words)]
    if bad:
        raise ValueError(
            f"core word positions {bad} are outside the text's {len(words)} words: {text!r}; "
            "positions index `text.split()`."
        )
    positions = sorted({int(p) for p in core_positions})
    return _replace_words(words, positions, mask_word), positions


def saliency_text_counterfactual(
    text: str, word_scores: Sequence[float], ratio: float, mask_word: str = "[MASK]"
) -> tuple[str, list[int]]:
    """Mask the top `ratio` share of words by score (at least one word when the text has any)."""
    words = text.split()
    if len(word_scores) != len(words):
        raise ValueError(f"got {len(word_scores)} word scores for {len(words)} words of {text!r}.")
    if not words:
        return text, []
    count = max(1, round(ratio * len(words)))
    order = sorted(range(len(words)), key=lambda i: (-float(word_scores[i]), i))
    return _replace_words(words, order[:count], mask_word), sorted(order[:count])


def swap_text_counterfactual(text: str, lexicon: Any, vocabulary: set[str] | None = None) -> tuple[str, list[int]]:
    """Replace each sentiment word by one of opposite polarity (`lexicon.opposite(word)`).

    `lexicon` is any object with `opposite(word, vocabulary=None) -> str | None` (for example
    `mme_jd.data.lexicon.load_lexicon()`). Surrounding punctuation and a leading '#' are kept.
    `vocabulary`, when given, restricts replacements to words a tokenizer knows.
    """
    words = text.split()
    positions = []
    for i, word in enumerate(words):
        match = re.match(r"^(#?)([\W_]*)(.*?)([\W_]*)$", word)
        prefix, lead, core, trail = match.groups()
        if not core:
            continue
        opposite = lexicon.opposite(core.lower(), vocabulary=vocabulary)
        if opposite:
            words[i] = f"{prefix}{lead}{opposite}{trail}"
            positions.append(i)
    return " ".join(words), positions


def is_function_word(word: str) -> bool:
    """True for a stop word or a word of punctuation only: what a `cue_only` text keeps besides
    the cue. Unlike `is_context_word`, hashtags, emoji, mentions, URLs and numbers are NOT
    kept: they may be other cues, and a cue-only input must hold exactly the declared cue."""
    stripped = _strip_word(word).replace("'", "")
    return stripped == "" or stripped in STOP_WORDS or bool(re.fullmatch(r"[\W_]+", word))


def _compile_cue_patterns(patterns: Sequence[str | re.Pattern]) -> list[re.Pattern]:
    if not patterns:
        raise ValueError(
            "the cue_only / cue_removed text builders need at least one declared text cue: declare one with "
            "mme_jd.cues.Cue(name, pattern=...) (MMEJDTrainingConfig.cues, MMEJDConfig.cues or --cue NAME=REGEX)."
        )
    return [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns]


def cue_word_positions(text: str, patterns: Sequence[str | re.Pattern]) -> list[int]:
    """Positions in `text.split()` of the words that a match of any cue regex overlaps.

    Regexes are searched in the whole text (so a cue may span several words, e.g. `yeah right`);
    a word is a cue word when its characters overlap a non-empty match.
    """
    compiled = _compile_cue_patterns(patterns)
    spans = [(m.start(), m.end()) for p in compiled for m in p.finditer(text) if m.end() > m.start()]
    positions = []
    for index, word in enumerate(re.finditer(r"\S+", text)):
        if any(start < word.end() and word.start() < end for start, end in spans):
            positions.append(index)
    return positions


def cue_only_text_counterfactual(
    text: str, patterns: Sequence[str | re.Pattern], mask_word: str = "[MASK]"
) -> tuple[str, list[int]]:
    """Keep the declared cues' words and function words, mask every other word.

    Returns (counterfactual text, masked word positions). A text without the cue becomes its
    function words and masks: what the model sees when only the (absent) cue is left.
    """
    words = text.split()
    keep = set(cue_word_positions(text, patterns))
    positions = [i for i, word in enumerate(words) if i not in keep and not is_function_word(word)]
    return _replace_words(words, positions, mask_word), positions


def cue_removed_text_counterfactual(text: str, patterns: Sequence[str | re.Pattern]) -> tuple[str, list[int]]:
    """Delete the declared cues' words. Returns (text without them, deleted word positions in
    the original `text.split()`); a text without the cue comes back unchanged with no position."""
    words = text.split()
    removed = cue_word_positions(text, patterns)
    dropped = set(removed)
    return " ".join(word for i, word in enumerate(words) if i not in dropped), removed


def text_counterfactuals(
    texts: Sequence[str],
    strategy: str,
    mask_word: str = "[MASK]",
    core_positions: Sequence[Sequence[int]] | None = None,
    word_scores: Sequence[Sequence[float]] | None = None,
    ratio: float = 0.3,
    lexicon: Any = None,
    vocabulary: set[str] | None = None,
    cue_patterns: Sequence[str | re.Pattern] | None = None,
) -> list[tuple[str, list[int]]]:
    """Build the text counterfactual of every text with one strategy (see module docstring).

    `cue_patterns`: the declared text cues' regexes, for "cue_only" and "cue_removed"."""
    if strategy in ("cue_only", "cue_removed"):
        compiled = _compile_cue_patterns(cue_patterns or [])
        if strategy == "cue_only":
            return [cue_only_text_counterfactual(t, compiled, mask_word) for t in texts]
        return [cue_removed_text_counterfactual(t, compiled) for t in texts]
    if strategy == "lexical":
        return [lexical_text_counterfactual(t, mask_word) for t in texts]
    if strategy == "given":
        if core_positions is None:
            raise ValueError(
                "text_counterfactual='given' needs core word positions per sample (a dataset column "
                "such as `core_word_positions`); use 'lexical' or 'swap' for data without them."
            )
        return [given_text_counterfactual(t, p, mask_word) for t, p in zip(texts, core_positions)]
    if strategy == "saliency":
        if word_scores is None:
            raise ValueError(
                "text_counterfactual='saliency' needs per-word scores from the general expert "
                "(MMEJDModel.text_token_saliency mapped to words) or a precomputed `text_counterfactual` column."
            )
        return [saliency_text_counterfactual(t, s, ratio, mask_word) for t, s in zip(texts, word_scores)]
    if strategy == "swap":
        if lexicon is None:
            raise ValueError(
                "text_counterfactual='swap' needs a sentiment lexicon: pass "
                "lexicon=mme_jd.data.lexicon.load_lexicon()."
            )
        return [swap_text_counterfactual(t, lexicon, vocabulary) for t in texts]
    raise ValueError(f"unknown text counterfactual strategy {strategy!r}; choose lexical, saliency, given, swap, "
                     "cue_only or cue_removed.")


def reversed_targets(labels: torch.Tensor, num_labels: int, cf_target: str = "complement") -> torch.Tensor:
    """Soft targets ȳ for counterfactuals (METHOD §4).

    Two classes: the other class. More: "complement" spreads the mass uniformly over the
    classes other than y; "uniform" over all classes.
    """
    labels = labels.long()
    if num_labels == 2 or cf_target == "complement":
        targets = torch.ones(labels.shape[0], num_labels, dtype=torch.float32, device=labels.device)
        targets.scatter_(1, labels[:, None], 0.0)
        return targets / (num_labels - 1)
    if cf_target == "uniform":
        return torch.full((labels.shape[0], num_labels), 1.0 / num_labels, device=labels.device)
    raise ValueError(f"unknown cf_target {cf_target!r}; choose 'complement' or 'uniform'.")


# ---------------------------------------------------------------------------- image


def image_token_grids(config: MMEJDConfig, inputs: dict) -> list[tuple[int, int]]:
    """The (rows, cols) grid of image tokens of each sample's image (by the family's layout:
    the square root of the sample's image-token count, or `image_grid_thw` over the merge size)."""
    return config.family.layout.token_grids(config, inputs)


def top_token_masks(scores: Sequence[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Boolean masks of the top `ratio` share of tokens by score (at least one token)."""
    masks = []
    for score in scores:
        score = score.flatten().float()
        count = min(score.numel(), max(1, round(ratio * score.numel())))  # 0: a text-only sample
        mask = torch.zeros_like(score, dtype=torch.bool)
        mask[torch.topk(score, count).indices] = True
        masks.append(mask)
    return masks


def boxes_to_token_masks(boxes: Sequence[Sequence[float]], grids: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Token masks of fractional boxes [x0, y0, x1, y1]: the cells that the box covers by at
    least a quarter, and always the cell holding the box's centre."""
    masks = []
    for box, (rows, cols) in zip(boxes, grids):
        if rows == 0:  # a text-only sample (`MMEJDConfig.image_less_rows`): no image tokens to mask
            masks.append(torch.zeros(0, dtype=torch.bool))
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1):
            raise ValueError(f"box {list(box)} is not [x0, y0, x1, y1] in fractions of the image size.")
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        for r in range(rows):
            for c in range(cols):
                overlap_w = max(0.0, min(x1, (c + 1) / cols) - max(x0, c / cols))
                overlap_h = max(0.0, min(y1, (r + 1) / rows) - max(y0, r / rows))
                mask[r, c] = overlap_w * overlap_h * rows * cols >= 0.25
        mask[min(rows - 1, int((y0 + y1) / 2 * rows)), min(cols - 1, int((x0 + x1) / 2 * cols))] = True
        masks.append(mask.flatten())
    return masks


#: The region each built-in image cue keeps in a `cue_only` image counterfactual, as fractional
#: [x0, y0, x1, y1] boxes, from the cue's params: "corner watermark" the four corner squares of
#: side `size` (default 0.2); "border" the ring of width `width` (default 0.1); "dominant hue"
#: nothing: its statistic (the mean colour) is what the mean fill of every patch keeps.
def image_cue_keep_boxes(spec: dict) -> list[list[float]]:
    """The fractional boxes an image cue keeps (see above); `params["keep_boxes"]` overrides."""
    params = dict(spec.get("params") or {})
    if params.get("keep_boxes") is not None:
        return [[float(v) for v in box] for box in params["keep_boxes"]]
    function = spec.get("function")
    if function == "corner watermark":
        s = float(params.get("size", 0.2))
        return [[0, 0, s, s], [1 - s, 0, 1, s], [0, 1 - s, s, 1], [1 - s, 1 - s, 1, 1]]
    if function == "border":
        w = float(params.get("width", 0.1))
        return [[0, 0, 1, w], [0, 1 - w, 1, 1], [0, 0, w, 1], [1 - w, 0, 1, 1]]
    if function == "dominant hue":
        return []
    raise ValueError(
        f"image cue {spec.get('name')!r}: no region known for function {function!r}; give params['keep_boxes'] "
        "(fractional [x0, y0, x1, y1] boxes the cue-only image keeps) or use a built-in function "
        "('corner watermark', 'dominant hue', 'border')."
    )


def cue_only_token_masks(image_cues: Sequence[dict], grids: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Per image, the image tokens a `cue_only` counterfactual FILLS: every token outside the
    kept boxes of the declared image cues (all tokens when no cue keeps a region)."""
    if not image_cues:
        raise ValueError(
            "image_counterfactual='cue_only' needs at least one declared image cue: declare one with "
            "mme_jd.cues.Cue(name, image='corner watermark' | 'dominant hue' | 'border' | a function)."
        )
    boxes = [box for spec in image_cues for box in image_cue_keep_boxes(spec)]
    masks = []
    for rows, cols in grids:
        keep = torch.zeros(rows * cols, dtype=torch.bool)
        for box in boxes:
            keep |= boxes_to_token_masks([box], [(rows, cols)])[0]
        masks.append(~keep)
    return masks


def mask_image_tokens(
    config: MMEJDConfig, inputs: dict, token_masks: Sequence[torch.Tensor | None], fill: str | None = None
) -> torch.Tensor:
    """Return a copy of `inputs["pixel_values"]` with the masked image tokens' patches filled.

    `token_masks[i]` is a boolean vector over sample i's image tokens (row-major grid), or
    None to leave the image unchanged. `fill`: "mean" (the image's channel mean) or "zero".
    """
    return config.family.layout.mask_tokens(config, inputs, token_masks, fill or config.image_fill)


# ---------------------------------------------------------------------------- model inputs


def format_prompts(config: MMEJDConfig, texts: Sequence[str], image_placeholder: str | None = None) -> list[str]:
    """Fill the prompt template for each text."""
    placeholder = config.family.image_placeholder if image_placeholder is None else image_placeholder
    return [
        config.prompt_template.format(image=placeholder, text=text, question=config.question).strip()
        for text in texts
    ]


def call_processor(processor: Any, config: MMEJDConfig, texts: Sequence[str], images: Sequence[Any]) -> dict:
    """Run the processor once on prompts built from `texts` and their images.

    An image that is None is a row without one: it gets the flat grey stand-in
    (`inputs_mme_jd.load_image(None)`), and with `config.image_less_rows == "text_only"` its
    image tokens are then taken out of its row (`without_image_tokens`): the row is text only,
    its stand-in pixels stay only so that pixel_values keeps one entry per sample, and the model
    does not encode them (`MMEJDModel._encode`)."""
    from .inputs_mme_jd import load_image

    if len(texts) != len(images):
        raise ValueError(f"got {len(texts)} texts for {len(images)} images; give one image per text.")
    text_only = [image is None for image in images] if config.image_less_rows == "text_only" else []
    images = [load_image(None) if image is None else image for image in images]
    inputs = processor(text=format_prompts(config, texts), images=images, return_tensors="pt", padding=True)
    if any(text_only):
        inputs = without_image_tokens(inputs, torch.tensor(text_only), config.image_token_id,
                                      getattr(getattr(processor, "tokenizer", None), "pad_token_id", None) or 0)
    return inputs


def without_image_tokens(inputs: Any, rows: torch.Tensor, image_token_id: int, pad_token_id: int) -> dict:
    """`inputs` with the image tokens of the `rows` (a boolean per sample) deleted: every
    per-token tensor (input_ids, attention_mask, token_type_ids, ...) loses those positions, and
    the batch is re-padded (on the side it was padded on) to its new longest row. pixel_values
    and other per-image tensors are left as they are."""
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    shape = input_ids.shape
    keep = mask & ~((input_ids == image_token_id) & rows[:, None].to(input_ids.device))
    lengths = keep.sum(1)
    width = int(lengths.max())
    left = bool((~mask[:, 0]).any())  # a row that starts with padding: the batch is left-padded
    positions = torch.arange(width, device=input_ids.device)[None, :]
    target = positions >= (width - lengths)[:, None] if left else positions < lengths[:, None]
    out = dict(inputs)
    for key, value in inputs.items():
        if not torch.is_tensor(value) or key == "pixel_values" or value.shape[:2] != shape:
            continue
        fill = pad_token_id if key == "input_ids" else 0
        packed = torch.full((shape[0], width, *value.shape[2:]), fill, dtype=value.dtype, device=value.device)
        packed[target] = value[keep]
        out[key] = packed
    return out


def _split_rows(config: MMEJDConfig, inputs: dict, parts: int) -> list[dict]:
    """Split a batch of parts·B rows into `parts` batches of B rows (pixel rows by the layout)."""
    batch = inputs["input_ids"].shape[0] // parts
    out = [dict() for _ in range(parts)]
    for key, value in inputs.items():
        if not torch.is_tensor(value):
            for part in out:
                part[key] = value
        elif key == "pixel_values":
            for part, pixels in zip(out, config.family.layout.split_pixels(inputs, parts)):
                part[key] = pixels
        else:
            for p in range(parts):
                out[p][key] = value[p * batch : (p + 1) * batch]
    return out


def build_triple(
    processor: Any,
    config: MMEJDConfig,
    texts: Sequence[str],
    images: Sequence[Any],
    text_counterfactual_texts: Sequence[str] | None,
    image_token_masks: Sequence[torch.Tensor] | None = None,
    parts: Sequence[str] = ("text", "image"),
    image_counterfactual_texts: Sequence[str] | None = None,
    text_counterfactual_keeps_image: bool | None = None,
) -> dict[str, dict]:
    """Model inputs of the originals and of both counterfactuals, from ONE processor call.

    Returns {"original": ..., "text_counterfactual": ..., "image_counterfactual": ...} (only the
    counterfactual `parts` asked for), each a dict of tensors with the same sequence length. With `other_modality="null"` the text
    counterfactual's image is the image's mean (every patch filled) and the image
    counterfactual's text is empty. `image_token_masks` may be None and applied later with
    `apply_image_counterfactual` (when they come from the model's saliency on the original).
    `image_counterfactual_texts` overrides the image counterfactual's text (default: the
    original text with "keep", empty with "null"), e.g. for rows whose image side is words.
    `text_counterfactual_keeps_image` overrides `other_modality` for the text counterfactual's
    image (a `swap` counterfactual keeps it: see `MMEJDConfig.swap_other_modality`).
    """
    keep = config.other_modality == "keep"
    all_texts = list(texts)
    if "text" in parts:
        if text_counterfactual_texts is None:
            raise ValueError("build_triple needs text_counterfactual_texts when parts include 'text'.")
        all_texts += list(text_counterfactual_texts)
    if "image" in parts:
        if image_counterfactual_texts is not None:
            all_texts += list(image_counterfactual_texts)
        else:
            all_texts += list(texts) if keep else [""] * len(texts)
    count = 1 + len([p for p in parts if p in ("text", "image")])
    inputs = call_processor(processor, config, all_texts, list(images) * count)
    split = _split_rows(config, dict(inputs), count)
    result = {"original": split.pop(0)}
    if "text" in parts:
        text_cf = split.pop(0)
        keep_image = keep if text_counterfactual_keeps_image is None else text_counterfactual_keeps_image
        if not keep_image:
            grids = image_token_grids(config, text_cf)
            text_cf["pixel_values"] = mask_image_tokens(
                config, text_cf, [torch.ones(r * c, dtype=torch.bool) for r, c in grids]
            )
        result["text_counterfactual"] = text_cf
    if "image" in parts:
        image_cf = split.pop(0)
        if image_token_masks is not None:
            image_cf["pixel_values"] = mask_image_tokens(config, image_cf, image_token_masks)
        result["image_counterfactual"] = image_cf
    return result


def apply_image_counterfactual(config: MMEJDConfig, image_cf: dict, token_masks: Sequence[torch.Tensor]) -> dict:
    """Return the image-counterfactual inputs with `token_masks` applied to its pixels."""
    return {**image_cf, "pixel_values": mask_image_tokens(config, image_cf, token_masks)}


__all__ = [
    "STOP_WORDS",
    "is_context_word",
    "lexical_text_counterfactual",
    "given_text_counterfactual",
    "saliency_text_counterfactual",
    "swap_text_counterfactual",
    "is_function_word",
    "cue_word_positions",
    "cue_only_text_counterfactual",
    "cue_removed_text_counterfactual",
    "text_counterfactuals",
    "reversed_targets",
    "image_token_grids",
    "top_token_masks",
    "boxes_to_token_masks",
    "image_cue_keep_boxes",
    "cue_only_token_masks",
    "mask_image_tokens",
    "format_prompts",
    "call_processor",
    "without_image_tokens",
    "build_triple",
    "apply_image_counterfactual",
]
