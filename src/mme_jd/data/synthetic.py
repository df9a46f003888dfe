"""Synthetic spurious-cue benchmark: image + text classification where both modalities matter.

Generated in code from a seed (no files, no network), returned as a ``datasets.DatasetDict``.

Generative process
==================
2 classes (*synthetic sarcasm*, ``num_classes=2``)
--------------------------------------------------
1. Core content. A text sentiment ``t`` and an image sentiment ``v`` are drawn independently
   and uniformly from {negative, positive}. The clean label is ``sarcastic = int(t != v)``: the
   text says one thing, the picture shows the opposite, so neither modality alone predicts it.
   Coding of ``text_sentiment`` / ``image_sentiment``: 1 positive, 0 negative.
2. Text. One template from :data:`TEMPLATES` (e.g. ``"today the {noun} was {w}"``), a filler noun
   from :data:`FILLER_NOUNS` and exactly ONE sentiment word ``{w}`` from :data:`POSITIVE_WORDS`
   or :data:`NEGATIVE_WORDS` (antonym pairs :data:`SENTIMENT_PAIRS`, all in the shipped
   lexicon). ``{a}`` becomes ``a`` / ``an``. Words are separated by single spaces, so
   ``text.split()`` gives the tokens and ``core_word_positions`` indexes into it. No template or
   filler word is a lexicon word, so the sentiment word is the only polar token.
3. Image. A noisy background of one colour family with a glyph on top: an upward triangle
   (happy, positive), a downward triangle (sad, negative) or, for 3 classes, a flat horizontal
   bar (neutral). The glyph's size, aspect, place and colour (white / black / yellow, jittered)
   are random and independent of the label and of the cues. ``core_box`` is the glyph's exact
   pixel bounding box ``[x0, y0, x1, y1]`` as fractions of the image size (x1, y1 exclusive).
4. Label noise (``train`` and ``train_cue_free`` only). The observed ``label`` is the clean
   label flipped with probability ``label_noise`` (for 3 classes: moved to one of the two other
   classes uniformly). ``clean_label`` keeps the truth.
5. Planted cues, drawn independently of each other given the OBSERVED (possibly noisy) label:
   - text cue: the token :data:`TEXT_CUE_TOKEN` (``#irony``) inserted at a random position or
     appended. When it is absent a neutral hashtag (:data:`NEUTRAL_HASHTAGS`) is added with
     probability 0.6 (and with 0.15 beside the cue), so "has a hashtag" is not the cue;
   - image cue: the background colour family, reddish when present, bluish when absent (hue,
     saturation and brightness vary inside the family; blotchy low-frequency and per-pixel
     noise on top).
   Each cue is present with probability ``p_cue`` when ``label == 1`` and ``1 - p_cue`` when
   ``label == 0`` ("correlated"); the reverse in ``test_ood`` ("reversed"); probability 0.5
   in ``train_cue_free`` and the balanced splits ("independent").
6. ``group = label * 4 + text_cue * 2 + image_cue`` (8 groups).

3 classes (*synthetic sentiment*, ``num_classes=3``)
---------------------------------------------------
Labels 0 negative / 1 neutral / 2 positive. ``t`` and ``v`` are scores drawn uniformly from
{-1, 0, +1} (text: a negative, neutral (:data:`NEUTRAL_WORDS`) or positive word; image: down
triangle, bar, up triangle); the clean label is ``sign(t + v) + 1``, so both modalities matter
(each label has exactly 3 of the 9 (t, v) pairs, so labels are uniform). ``text_sentiment`` and
``image_sentiment`` are ``score + 1`` (2 positive, 1 neutral, 0 negative). Each cue takes one
value per class: the text cue token :data:`TEXT_CUE_TOKENS_3` (``#fail`` / ``#meh`` /
``#winning``, always present, plus a neutral hashtag with probability 0.3) and the background
family (bluish / greenish / reddish); ``text_cue`` / ``image_cue`` hold that value (0, 1, 2).
"Correlated": the cue equals the label with probability ``p_cue``, else uniform over the two
other classes; "reversed": it equals the label with probability ``1 - p_cue``, else uniform
over the others; "independent": uniform over the 3 values.
``group = label * 9 + text_cue * 3 + image_cue`` (27 groups).

Splits
======
``train`` (noisy labels, correlated cues), ``train_cue_free`` (noisy, independent cues: the
oracle's training set), ``validation`` (clean, correlated), ``validation_balanced`` (clean,
independent, EXACTLY ``num_validation_balanced // num_groups`` rows per group), ``test_id``
(clean, correlated), ``test_ood`` (clean, reversed), ``test_balanced`` (clean, independent,
``num_test`` rows spread over the groups as evenly as possible). Each split has its own random
stream derived from ``(seed, split name)``, so a split is identical whichever other splits are
requested.
"""

from __future__ import annotations

import functools
import io
import json
import zlib
from typing import TYPE_CHECKING, Iterable, Sequence, TypeVar

import numpy as np

if TYPE_CHECKING:  # datasets is imported lazily: importing this module stays cheap
    import datasets

_IntOrArray = TypeVar("_IntOrArray", int, np.ndarray)

__all__ = [
    "SPLITS",
    "SENTIMENT_PAIRS",
    "POSITIVE_WORDS",
    "NEGATIVE_WORDS",
    "NEUTRAL_WORDS",
    "FILLER_NOUNS",
    "TEMPLATES",
    "TEXT_CUE_TOKEN",
    "TEXT_CUE_TOKENS_3",
    "NEUTRAL_HASHTAGS",
    "GLYPH_COLOURS",
    "label_names",
    "num_groups",
    "group_id",
    "group_description",
    "vocabulary",
    "make_synthetic_benchmark",
    "make_synthetic_split",
]

# --------------------------------------------------------------------------- word lists
#: (positive, negative) antonym pairs; every word is in the shipped lexicon and each pair is
#: listed there as antonyms, so the ``swap`` counterfactual stays inside the generator's vocabulary.
SENTIMENT_PAIRS: tuple[tuple[str, str], ...] = (
    ("good", "bad"),
    ("great", "terrible"),
    ("wonderful", "awful"),
    ("happy", "sad"),
    ("amazing", "dreadful"),
    ("fantastic", "horrible"),
    ("excellent", "poor"),
    ("beautiful", "ugly"),
    ("pleasant", "unpleasant"),
    ("delightful", "disgusting"),
    ("perfect", "flawed"),
    ("brilliant", "dull"),
    ("nice", "nasty"),
    ("lovely", "horrid"),
    ("fun", "boring"),
    ("superb", "lousy"),
    ("cheerful", "gloomy"),
    ("awesome", "lame"),
    ("marvelous", "miserable"),
    ("splendid", "shabby"),
)
POSITIVE_WORDS: tuple[str, ...] = tuple(p for p, _ in SENTIMENT_PAIRS)
NEGATIVE_WORDS: tuple[str, ...] = tuple(n for _, n in SENTIMENT_PAIRS)
#: Neutral words (3-class variant only), all in the lexicon's neutral list.
NEUTRAL_WORDS: tuple[str, ...] = (
    "okay",
    "average",
    "ordinary",
    "fine",
    "alright",
    "acceptable",
    "adequate",
    "passable",
    "standard",
    "typical",
    "unremarkable",
    "middling",
    "moderate",
    "so-so",
    "plain",
    "normal",
    "regular",
    "usual",
    "conventional",
    "tolerable",
)
FILLER_NOUNS: tuple[str, ...] = (
    "movie",
    "coffee",
    "commute",
    "weekend",
    "meeting",
    "dinner",
    "concert",
    "flight",
    "phone",
    "haircut",
    "weather",
    "lecture",
    "pizza",
    "holiday",
)
#: Text templates: ``{w}`` the sentiment word (exactly once), ``{noun}`` a filler noun,
#: ``{a}`` the article ``a``/``an`` agreeing with the next word. Tokens are space-separated.
TEMPLATES: tuple[str, ...] = (
    "today the {noun} was {w}",
    "my {noun} is {w} honestly",
    "what {a} {w} {noun}",
    "the {noun} this morning was {w}",
    "just had the most {w} {noun}",
    "this {noun} is so {w}",
    "wow , the {noun} was {w}",
    "another {w} {noun} at work",
    "that {noun} was really {w}",
    "the {noun} turned out {w}",
    "i think the {noun} is {w}",
    "{w} {noun} again today",
    "oh look , {a} {w} {noun}",
    "such {a} {w} {noun} tonight",
    "the whole {noun} felt {w}",
    "yesterday my {noun} was {w}",
    "everyone says the {noun} is {w}",
    "so the {noun} was {w} !",
    "honestly the {noun} is {w}",
    "nothing beats {a} {w} {noun} on monday",
    "the {noun} looks {w} from here",
    "this {noun} could not be more {w}",
    "and then the {noun} was {w} ...",
    "{w} . that is how the {noun} went",
)
#: 2-class text cue token.
TEXT_CUE_TOKEN = "#irony"
#: 3-class text cue tokens, indexed by class (0 negative, 1 neutral, 2 positive).
TEXT_CUE_TOKENS_3: tuple[str, str, str] = ("#fail", "#meh", "#winning")
#: Hashtags carrying no label information (their stems are not lexicon words).
NEUTRAL_HASHTAGS: tuple[str, ...] = (
    "#today",
    "#mood",
    "#life",
    "#monday",
    "#random",
    "#thoughts",
    "#nofilter",
    "#tbt",
    "#story",
    "#daily",
)
#: Glyph base colours (RGB), chosen to contrast with every background family.
GLYPH_COLOURS: tuple[tuple[int, int, int], ...] = ((240, 240, 240), (15, 15, 15), (245, 220, 25))

SPLITS: tuple[str, ...] = (
    "train",
    "train_cue_free",
    "validation",
    "validation_balanced",
    "test_id",
    "test_ood",
    "test_balanced",
)

# Background colour families: hue centres in degrees. 2 classes: cue 0 blue, cue 1 red.
# 3 classes: cue value 0 blue, 1 green, 2 red.
_FAMILY_HUES = {2: (220.0, 0.0), 3: (220.0, 120.0, 0.0)}
_HUE_JITTER = 20.0
_SAT_RANGE = (0.45, 0.8)
_VAL_RANGE = (0.45, 0.75)
_PIXEL_NOISE = 9.0
_BLOTCH_NOISE = 7.0
_GLYPH_JITTER = 15.0
_P_HASHTAG_WITHOUT_CUE = 0.6
_P_HASHTAG_WITH_CUE = 0.15
_P_HASHTAG_3 = 0.3
_P_APPEND = 0.5
_CHUNK = 1024


def label_names(num_classes: int = 2) -> list[str]:
    """Class names: ``["not_sarcastic", "sarcastic"]`` or ``["negative", "neutral", "positive"]``."""
    _check_classes(num_classes)
    return ["not_sarcastic", "sarcastic"] if num_classes == 2 else ["negative", "neutral", "positive"]


def num_groups(num_classes: int = 2) -> int:
    """Number of (label, text_cue, image_cue) groups: 8 for 2 classes, 27 for 3."""
    _check_classes(num_classes)
    return num_classes * _num_cue_values(num_classes) ** 2


def group_id(
    label: _IntOrArray, text_cue: _IntOrArray, image_cue: _IntOrArray, num_classes: int = 2
) -> _IntOrArray:
    """``label*4 + text_cue*2 + image_cue`` (2 classes) or ``label*9 + text_cue*3 + image_cue`` (3).

    Works on ints and numpy arrays alike.
    """
    k = _num_cue_values(num_classes)
    return label * k * k + text_cue * k + image_cue


def group_description(group: int, num_classes: int = 2) -> str:
    """Human-readable group name, e.g. ``"sarcastic|text_cue=1|image_cue=0"``."""
    k = _num_cue_values(num_classes)
    label, rest = divmod(int(group), k * k)
    text_cue, image_cue = divmod(rest, k)
    return f"{label_names(num_classes)[label]}|text_cue={text_cue}|image_cue={image_cue}"


def _check_classes(num_classes: int) -> None:
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes!r}")


def _num_cue_values(num_classes: int) -> int:
    # 2 classes: cue present/absent; 3 classes: one cue value per class.
    _check_classes(num_classes)
    return 2 if num_classes == 2 else 3


# --------------------------------------------------------------------------- text
def _article(next_word: str) -> str:
    return "an" if next_word[:1] in "aeiou" else "a"


def _render(template: str, noun: str, word: str) -> tuple[list[str], int]:
    """Tokens of ``template`` filled in, and the index of the sentiment word."""
    raw = template.split()
    filled = [noun if t == "{noun}" else word if t == "{w}" else t for t in raw]
    for i, t in enumerate(filled):
        if t == "{a}":
            filled[i] = _article(filled[i + 1])
    return filled, raw.index("{w}")


def _sentiment_words(num_classes: int) -> tuple[tuple[str, ...], ...]:
    """Word lists indexed by ``text_sentiment`` code."""
    if num_classes == 2:
        return (NEGATIVE_WORDS, POSITIVE_WORDS)
    return (NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS)


@functools.lru_cache(maxsize=4)
def _vocabulary(num_classes: int) -> tuple[str, ...]:
    words: set[str] = set()
    for template in TEMPLATES:
        for noun in FILLER_NOUNS:
            for wl in _sentiment_words(num_classes):
                for w in wl:
                    words.update(_render(template, noun, w)[0])
    words.update(NEUTRAL_HASHTAGS)
    words.update([TEXT_CUE_TOKEN] if num_classes == 2 else TEXT_CUE_TOKENS_3)
    return tuple(sorted(words))


def vocabulary(num_classes: int = 2) -> list[str]:
    """Every whitespace-separated word the generator can emit for ``num_classes``, sorted, unique.

    Exact: computed by rendering every (template, noun, sentiment word) combination, plus the
    cue tokens and neutral hashtags of that variant.
    """
    _check_classes(num_classes)
    return list(_vocabulary(num_classes))


def _insert(tokens: list[str], core: int, token: str, rng: np.random.Generator) -> int:
    """Insert ``token`` (appended with prob. 1/2, else at a uniform position); new core index."""
    if rng.random() < _P_APPEND:
        pos = len(tokens)
    else:
        pos = int(rng.integers(0, len(tokens) + 1))
    tokens.insert(pos, token)
    return core + 1 if pos <= core else core


def _make_texts(
    text_sentiment: np.ndarray, text_cue: np.ndarray, num_classes: int, rng: np.random.Generator
) -> tuple[list[str], list[list[int]]]:
    n = len(text_sentiment)
    lists = _sentiment_words(num_classes)
    t_idx = rng.integers(0, len(TEMPLATES), size=n)
    n_idx = rng.integers(0, len(FILLER_NOUNS), size=n)
    w_u = rng.random(size=n)  # word index = floor(u * len(list)): lists may differ in length
    h_u = rng.random(size=n)
    h_idx = rng.integers(0, len(NEUTRAL_HASHTAGS), size=n)
    texts: list[str] = []
    positions: list[list[int]] = []
    for i in range(n):
        wl = lists[int(text_sentiment[i])]
        word = wl[min(int(w_u[i] * len(wl)), len(wl) - 1)]
        tokens, core = _render(TEMPLATES[t_idx[i]], FILLER_NOUNS[n_idx[i]], word)
        cue = int(text_cue[i])
        if num_classes == 2:
            if cue:
                core = _insert(tokens, core, TEXT_CUE_TOKEN, rng)
            p_tag = _P_HASHTAG_WITH_CUE if cue else _P_HASHTAG_WITHOUT_CUE
        else:
            core = _insert(tokens, core, TEXT_CUE_TOKENS_3[cue], rng)
            p_tag = _P_HASHTAG_3
        if h_u[i] < p_tag:
            core = _insert(tokens, core, NEUTRAL_HASHTAGS[h_idx[i]], rng)
        texts.append(" ".join(tokens))
        positions.append([core])
    return texts, positions


# --------------------------------------------------------------------------- images
def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV → RGB; h in degrees, s and v in [0, 1]; returns (..., 3) in [0, 255]."""
    h = np.mod(h, 360.0) / 60.0
    c = v * s
    x = c * (1.0 - np.abs(np.mod(h, 2.0) - 1.0))
    m = v - c
    z = np.zeros_like(c)
    sector = np.floor(h).astype(int) % 6
    r = np.choose(sector, [c, x, z, z, x, c])
    g = np.choose(sector, [x, c, c, x, z, z])
    b = np.choose(sector, [z, z, x, c, c, x])
    return np.stack([r + m, g + m, b + m], axis=-1) * 255.0


def _make_images(
    image_sentiment: np.ndarray,
    image_cue: np.ndarray,
    num_classes: int,
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, size, size, 3) and glyph boxes (n, 4) as fractions of ``size``."""
    n = len(image_sentiment)
    hues = np.asarray(_FAMILY_HUES[num_classes])[image_cue.astype(int)]
    hue = hues + rng.uniform(-_HUE_JITTER, _HUE_JITTER, size=n)
    sat = rng.uniform(*_SAT_RANGE, size=n)
    val = rng.uniform(*_VAL_RANGE, size=n)
    bg = _hsv_to_rgb(hue, sat, val)  # (n, 3)

    glyph_base = np.asarray(GLYPH_COLOURS, dtype=np.float64)[rng.integers(0, len(GLYPH_COLOURS), size=n)]
    glyph_col = glyph_base + rng.uniform(-_GLYPH_JITTER, _GLYPH_JITTER, size=(n, 3))

    # Glyph geometry in pixel units; the code of a neutral glyph is 1 only for 3 classes.
    up_code = 1 if num_classes == 2 else 2
    is_up = image_sentiment == up_code
    is_bar = (image_sentiment == 1) if num_classes == 3 else np.zeros(n, dtype=bool)
    w = rng.uniform(0.35, 0.65, size=n) * size
    aspect = np.where(is_bar, rng.uniform(0.25, 0.4, size=n), rng.uniform(0.8, 1.2, size=n))
    h = np.minimum(w * aspect, 0.8 * size)
    x0 = 1.0 + rng.random(size=n) * np.maximum(size - 2.0 - w, 0.0)
    y0 = 1.0 + rng.random(size=n) * np.maximum(size - 2.0 - h, 0.0)

    blotch_cells = 4
    blotch = rng.normal(0.0, _BLOTCH_NOISE, size=(n, blotch_cells, blotch_cells, 3)).astype(np.float32)

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes = np.zeros((n, 4), dtype=np.float64)
    centres = np.arange(size, dtype=np.float64) + 0.5
    reps = -(-size // blotch_cells)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        px = centres[None, None, :]
        py = centres[None, :, None]
        cx = (x0[sl] + w[sl] / 2.0)[:, None, None]
        top = y0[sl][:, None, None]
        hh = h[sl][:, None, None]
        half = (w[sl] / 2.0)[:, None, None]
        rel = np.clip((py - top) / hh, -1.0, 2.0)  # 0 at the top edge, 1 at the bottom edge
        in_rows = (py >= top) & (py <= top + hh)
        up = is_up[sl][:, None, None]
        bar = is_bar[sl][:, None, None]
        width_here = np.where(bar, half, np.where(up, rel, 1.0 - rel) * half)
        mask = in_rows & (np.abs(px - cx) <= width_here)
        # Guarantee a visible glyph even for tiny images: light the centre pixel.
        empty = ~mask.any(axis=(1, 2))
        if empty.any():
            idx = np.nonzero(empty)[0]
            cyi = np.clip((y0[sl][idx] + h[sl][idx] / 2.0).astype(int), 0, size - 1)
            cxi = np.clip((x0[sl][idx] + w[sl][idx] / 2.0).astype(int), 0, size - 1)
            mask[idx, cyi, cxi] = True
        rows = mask.any(axis=2)
        cols = mask.any(axis=1)
        y_min = rows.argmax(axis=1)
        y_max = size - 1 - rows[:, ::-1].argmax(axis=1)
        x_min = cols.argmax(axis=1)
        x_max = size - 1 - cols[:, ::-1].argmax(axis=1)
        boxes[sl] = np.stack([x_min, y_min, x_max + 1, y_max + 1], axis=1) / float(size)

        low = np.repeat(np.repeat(blotch[sl], reps, axis=1), reps, axis=2)[:, :size, :size]
        img = bg[sl].astype(np.float32)[:, None, None, :] + low
        img = np.where(mask[..., None], glyph_col[sl].astype(np.float32)[:, None, None, :], img)
        img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(_PIXEL_NOISE)
        images[sl] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return images, boxes


def _png_bytes(array: np.ndarray) -> bytes:
    """PNG-encode one uint8 RGB image (fast compression: the noise barely compresses anyway)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------- labels and cues
def _split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8"))]))


def _label_from_scores(t_score: np.ndarray, v_score: np.ndarray, num_classes: int) -> np.ndarray:
    if num_classes == 2:
        return (t_score != v_score).astype(np.int64)
    return (np.sign(t_score + v_score) + 1).astype(np.int64)


def _scores(num_classes: int) -> np.ndarray:
    return np.array([-1, 1]) if num_classes == 2 else np.array([-1, 0, 1])


def _draw_cue(
    label: np.ndarray, mode: str, p_cue: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Cue values given the observed label; ``mode`` is correlated, reversed or independent."""
    n = len(label)
    if num_classes == 2:
        if mode == "independent":
            p = np.full(n, 0.5)
        elif mode == "correlated":
            p = np.where(label == 1, p_cue, 1.0 - p_cue)
        else:  # reversed
            p = np.where(label == 1, 1.0 - p_cue, p_cue)
        return (rng.random(size=n) < p).astype(np.int64)
    u = rng.random(size=n)
    other = (label + rng.integers(1, num_classes, size=n)) % num_classes
    if mode == "independent":
        return rng.integers(0, num_classes, size=n).astype(np.int64)
    p_same = p_cue if mode == "correlated" else 1.0 - p_cue
    return np.where(u < p_same, label, other).astype(np.int64)


def _sample_core_free(n: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scores = _scores(num_classes)
    t = scores[rng.integers(0, len(scores), size=n)]
    v = scores[rng.integers(0, len(scores), size=n)]
    return t, v


def _sample_balanced(
    counts: np.ndarray, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows with exactly ``counts[g]`` members of group ``g``; (t, v) uniform given the label."""
    k = _num_cue_values(num_classes)
    groups = np.repeat(np.arange(len(counts)), counts)
    groups = groups[rng.permutation(len(groups))]
    label, rest = np.divmod(groups, k * k)
    text_cue, image_cue = np.divmod(rest, k)
    scores = _scores(num_classes)
    pairs = np.array([(a, b) for a in scores for b in scores])
    pair_label = _label_from_scores(pairs[:, 0], pairs[:, 1], num_classes)
    t = np.empty(len(groups), dtype=np.int64)
    v = np.empty(len(groups), dtype=np.int64)
    u = rng.integers(0, 1 << 30, size=len(groups))
    for c in range(num_classes):
        options = pairs[pair_label == c]
        sel = label == c
        chosen = options[u[sel] % len(options)]
        t[sel], v[sel] = chosen[:, 0], chosen[:, 1]
    return t, v, label.astype(np.int64), text_cue.astype(np.int64), image_cue.astype(np.int64)


_SPLIT_SPECS = {
    # name: (noisy labels, cue mode, balanced: None | "exact" | "spread")
    "train": (True, "correlated", None),
    "train_cue_free": (True, "independent", None),
    "validation": (False, "correlated", None),
    "validation_balanced": (False, "independent", "exact"),
    "test_id": (False, "correlated", None),
    "test_ood": (False, "reversed", None),
    "test_balanced": (False, "independent", "spread"),
}


def _features(num_classes: int) -> "datasets.Features":
    import datasets

    names = label_names(num_classes)
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=names),
            "clean_label": datasets.ClassLabel(names=names),
            "text_sentiment": datasets.Value("int64"),
            "image_sentiment": datasets.Value("int64"),
            "core_word_positions": datasets.List(datasets.Value("int64")),
            "core_box": datasets.List(datasets.Value("float32")),
            "text_cue": datasets.Value("int64"),
            "image_cue": datasets.Value("int64"),
            "group": datasets.Value("int64"),
        }
    )


def make_synthetic_split(
    split: str,
    num_rows: int,
    *,
    p_cue: float = 0.9,
    label_noise: float = 0.1,
    num_classes: int = 2,
    image_size: int = 32,
    seed: int = 0,
) -> "datasets.Dataset":
    """One split of the benchmark as a ``datasets.Dataset`` (see the module docstring).

    ``split`` selects the label-noise / cue regime (one of :data:`SPLITS`); ``num_rows`` is its
    size (for ``validation_balanced`` rounded down to a multiple of the number of groups, at
    least one row per group).
    """
    import datasets

    if split not in _SPLIT_SPECS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    _check_classes(num_classes)
    if not 0.0 <= p_cue <= 1.0:
        raise ValueError(f"p_cue must be in [0, 1], got {p_cue}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if num_rows < 0:
        raise ValueError(f"num_rows must be non-negative, got {num_rows}")

    noisy, mode, balanced = _SPLIT_SPECS[split]
    rng = _split_seed(seed, split)
    n_groups = num_groups(num_classes)

    if balanced is not None:
        if balanced == "exact":
            counts = np.full(n_groups, max(1, num_rows // n_groups) if num_rows > 0 else 0)
        else:
            counts = np.full(n_groups, num_rows // n_groups)
            counts[rng.permutation(n_groups)[: num_rows % n_groups]] += 1
        t, v, label, text_cue, image_cue = _sample_balanced(counts, num_classes, rng)
        clean = label.copy()
    else:
        t, v = _sample_core_free(num_rows, num_classes, rng)
        clean = _label_from_scores(t, v, num_classes)
        label = clean.copy()
        if noisy and label_noise > 0:
            flip = rng.random(size=num_rows) < label_noise
            shift = 1 if num_classes == 2 else rng.integers(1, num_classes, size=num_rows)
            label = np.where(flip, (clean + shift) % num_classes, clean).astype(np.int64)
        text_cue = _draw_cue(label, mode, p_cue, num_classes, rng)
        image_cue = _draw_cue(label, mode, p_cue, num_classes, rng)

    n = len(label)
    # Sentiment codes: 2 classes → 0 negative / 1 positive; 3 classes → score + 1.
    t_code = (t > 0).astype(np.int64) if num_classes == 2 else (t + 1).astype(np.int64)
    v_code = (v > 0).astype(np.int64) if num_classes == 2 else (v + 1).astype(np.int64)

    # Separate child streams: text and image randomness do not shift each other.
    text_rng, image_rng = rng.spawn(2)
    texts, positions = _make_texts(t_code, text_cue, num_classes, text_rng)
    images, boxes = _make_images(v_code, image_cue, num_classes, image_size, image_rng)
    group = group_id(label, text_cue, image_cue, num_classes)

    data = {
        "id": [f"syn{num_classes}-s{seed}-{split}-{i:06d}" for i in range(n)],
        "text": texts,
        "image": [{"bytes": _png_bytes(images[i]), "path": None} for i in range(n)],
        "label": label.tolist(),
        "clean_label": clean.tolist(),
        "text_sentiment": t_code.tolist(),
        "image_sentiment": v_code.tolist(),
        "core_word_positions": positions,
        "core_box": boxes.tolist(),
        "text_cue": text_cue.tolist(),
        "image_cue": image_cue.tolist(),
        "group": np.asarray(group, dtype=np.int64).tolist(),
    }
    config = {
        "generator": "mme_jd.data.synthetic",
        "split": split,
        "num_rows": n,
        "p_cue": p_cue,
        "label_noise": label_noise if noisy else 0.0,
        "cue_mode": mode,
        "num_classes": num_classes,
        "image_size": image_size,
        "seed": seed,
    }
    features = _features(num_classes)
    info = datasets.DatasetInfo(description=json.dumps(config, sort_keys=True), features=features)
    return datasets.Dataset.from_dict(data, features=features, info=info)


def make_synthetic_benchmark(
    num_train: int = 6000,
    num_validation: int = 1000,
    num_validation_balanced: int = 400,
    num_test: int = 2000,
    p_cue: float = 0.9,
    label_noise: float = 0.1,
    num_classes: int = 2,
    image_size: int = 32,
    seed: int = 0,
    splits: Iterable[str] | None = None,
) -> "datasets.DatasetDict":
    """Build the synthetic spurious-cue benchmark as a ``datasets.DatasetDict``.

    Splits (all by default, or those named in ``splits``, in canonical :data:`SPLITS` order):
    ``train`` and ``train_cue_free`` (``num_train`` rows each, noisy labels), ``validation``
    (``num_validation``), ``validation_balanced`` (``num_validation_balanced`` rounded down to
    equal group counts), ``test_id``, ``test_ood`` and ``test_balanced`` (``num_test`` each).
    See the module docstring for the generative process and the columns.
    """
    import datasets

    wanted: Sequence[str] = SPLITS if splits is None else tuple(dict.fromkeys(splits))
    unknown = [s for s in wanted if s not in _SPLIT_SPECS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected a subset of {SPLITS}")
    sizes = {
        "train": num_train,
        "train_cue_free": num_train,
        "validation": num_validation,
        "validation_balanced": num_validation_balanced,
        "test_id": num_test,
        "test_ood": num_test,
        "test_balanced": num_test,
    }
    return datasets.DatasetDict(
        {
            name: make_synthetic_split(
                name,
                sizes[name],
                p_cue=p_cue,
                label_noise=label_noise,
                num_classes=num_classes,
                image_size=image_size,
                seed=seed,
            )
            for name in SPLITS
            if name in wanted
        }
    )
