"""Tests for the synthetic spurious-cue benchmark."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from mme_jd.data import synthetic as syn
from mme_jd.data.lexicon import load_lexicon
from mme_jd.data.synthetic import (
    SPLITS,
    label_names,
    make_synthetic_benchmark,
    make_synthetic_split,
    num_groups,
    vocabulary,
)

P_CUE = 0.9
NOISE = 0.1
TOL = 0.02


# Split sizes for the 2-class statistics: +-0.02 is >= 2.5 standard deviations for every checked
# rate (4000 rows per label for rates near 0.5, 2000 for rates of 0.9); the seed is fixed.
BIG_SIZES = {
    "train": 8000,
    "train_cue_free": 8000,
    "validation": 4000,
    "validation_balanced": 400,
    "test_id": 4000,
    "test_ood": 4000,
    "test_balanced": 8000,
}


@pytest.fixture(scope="module")
def big():
    return datasets.DatasetDict(
        {
            name: make_synthetic_split(name, n, p_cue=P_CUE, label_noise=NOISE, seed=123)
            for name, n in BIG_SIZES.items()
        }
    )


@pytest.fixture(scope="module")
def three():
    return make_synthetic_benchmark(
        num_train=4000,
        num_validation=300,
        num_validation_balanced=540,
        num_test=3000,
        num_classes=3,
        seed=7,
    )


def _cols(ds, *names):
    """Columns as numpy arrays (int columns) or Python lists (others), straight from Arrow."""
    if ds._indices is not None:
        ds = ds.flatten_indices()
    out = []
    for n in names:
        col = ds.data.column(n)
        is_int = isinstance(ds.features[n], datasets.ClassLabel) or (
            isinstance(ds.features[n], datasets.Value) and ds.features[n].dtype.startswith("int")
        )
        out.append(col.to_numpy() if is_int else col.to_pylist())
    return out


def _images(ds, idx):
    return np.stack([np.asarray(ds[int(i)]["image"], dtype=np.float64) for i in idx])


# ----------------------------------------------------------------------- splits and schema
def test_splits_schema_and_sizes(big):
    assert tuple(big) == SPLITS
    for name, ds in big.items():
        assert len(ds) == BIG_SIZES[name]
        assert ds.features["label"].names == label_names(2) == ["not_sarcastic", "sarcastic"]
        assert type(ds.features["image"]).__name__ == "Image"
    row = big["train"][0]
    assert set(row) == {"id", "text", "image", "label", "clean_label", "text_sentiment", "image_sentiment",
                        "core_word_positions", "core_box", "text_cue", "image_cue", "group"}
    assert row["image"].size == (32, 32) and row["image"].mode == "RGB"
    assert len(set(_cols(big["train"], "id")[0]) | set(_cols(big["test_id"], "id")[0])) == 12000
    assert label_names(3) == ["negative", "neutral", "positive"]


def test_splits_argument_and_errors():
    d = make_synthetic_benchmark(num_test=20, splits=["test_ood", "test_id"])
    assert list(d) == ["test_id", "test_ood"]
    with pytest.raises(ValueError, match="unknown split"):
        make_synthetic_benchmark(splits=["dev"])
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_benchmark(num_classes=4, splits=["test_id"])


# ----------------------------------------------------------------------- cue correlations
@pytest.mark.parametrize(
    "split, p1",
    [
        ("train", P_CUE),
        ("validation", P_CUE),
        ("test_id", P_CUE),
        ("test_ood", 1 - P_CUE),
        ("test_balanced", 0.5),
        ("train_cue_free", 0.5),
    ],
)
def test_cue_rates(big, split, p1):
    label, tc, ic = _cols(big[split], "label", "text_cue", "image_cue")
    p0 = 1 - p1
    for cue in (tc, ic):
        assert abs(cue[label == 1].mean() - p1) < TOL, (split, cue[label == 1].mean())
        assert abs(cue[label == 0].mean() - p0) < TOL, (split, cue[label == 0].mean())
    # The two cues are drawn independently given the label.
    for y, p in ((1, p1), (0, p0)):
        both = (tc[label == y] & ic[label == y]).mean()
        assert abs(both - p * p) < TOL


def test_label_noise(big):
    for split in ("train", "train_cue_free"):
        label, clean = _cols(big[split], "label", "clean_label")
        assert abs((label != clean).mean() - NOISE) < TOL
        assert abs(label.mean() - 0.5) < TOL
    for split in ("validation", "validation_balanced", "test_id", "test_ood", "test_balanced"):
        label, clean = _cols(big[split], "label", "clean_label")
        assert (label == clean).all()
    # Cues follow the NOISY label: among flipped rows the cue still tracks `label`.
    label, clean, tc = _cols(big["train"], "label", "clean_label", "text_cue")
    flipped = label != clean
    assert tc[flipped & (label == 1)].mean() > 0.8
    assert tc[flipped & (label == 0)].mean() < 0.2


def test_balanced_groups(big):
    g = _cols(big["validation_balanced"], "group")[0]
    counts = np.bincount(g, minlength=8)
    assert len(counts) == 8 and (counts == 50).all()
    g = _cols(big["test_balanced"], "group")[0]
    counts = np.bincount(g, minlength=8)
    assert counts.max() - counts.min() <= 1 and counts.sum() == BIG_SIZES["test_balanced"]
    odd = make_synthetic_benchmark(
        num_validation_balanced=45, num_test=45, splits=["validation_balanced", "test_balanced"]
    )
    assert (np.bincount(odd["validation_balanced"]["group"], minlength=8) == 5).all()
    c = np.bincount(odd["test_balanced"]["group"], minlength=8)
    assert c.sum() == 45 and c.max() - c.min() <= 1


# ----------------------------------------------------------------------- core content
def test_labels_and_groups_consistent(big):
    for name, ds in big.items():
        label, clean, ts, vs, tc, ic, g = _cols(
            ds, "label", "clean_label", "text_sentiment", "image_sentiment", "text_cue", "image_cue", "group"
        )
        assert (clean == (ts != vs)).all(), name
        assert (g == label * 4 + tc * 2 + ic).all(), name
        assert set(np.unique(ts)) <= {0, 1} and set(np.unique(vs)) <= {0, 1}
        assert abs(ts.mean() - 0.5) < 0.05 and abs(vs.mean() - 0.5) < 0.05


def test_core_word_and_text_cue(big):
    lex = load_lexicon()
    for name in ("train", "test_ood"):
        rows = zip(*_cols(big[name], "text", "core_word_positions", "text_sentiment", "text_cue"))
        for text, pos, ts, tc in rows:
            tokens = text.split()
            assert text == " ".join(tokens)
            assert len(pos) == 1
            word = tokens[pos[0]]
            assert lex.polarity(word) == (1 if ts == 1 else -1), (text, pos)
            # The sentiment word is the only lexicon word; hashtags are not lexicon words.
            polar = [i for i, t in enumerate(tokens) if lex.polarity(t) is not None]
            assert polar == pos, text
            assert (syn.TEXT_CUE_TOKEN in tokens) == bool(tc), text
    # Neutral hashtags appear without the cue too: "has a hashtag" is not the cue.
    texts, tc = _cols(big["train"], "text", "text_cue")
    has_tag = np.array([any(t.startswith("#") for t in s.split()) for s in texts])
    assert 0.4 < has_tag[tc == 0].mean() < 0.8
    # Position of the cue token varies (inserted or appended).
    last = np.array([s.split()[-1] == syn.TEXT_CUE_TOKEN for s in texts])
    assert 0.3 < last[tc == 1].mean() < 0.9


def test_word_lists_against_lexicon():
    lex = load_lexicon()
    assert len(syn.SENTIMENT_PAIRS) >= 20
    for p, n in syn.SENTIMENT_PAIRS:
        assert lex.polarity(p) == 1 and lex.polarity(n) == -1
        assert n in lex.antonyms[p] and p in lex.antonyms[n]
    assert all(lex.polarity(w) == 0 for w in syn.NEUTRAL_WORDS)
    # A lexicon swap restricted to the generator's vocabulary always finds an antonym.
    vocab = set(vocabulary(2))
    for w in syn.POSITIVE_WORDS + syn.NEGATIVE_WORDS:
        o = lex.opposite(w, vocabulary=vocab)
        assert o is not None and lex.polarity(o) == -lex.polarity(w)
    assert 15 <= len(syn.TEMPLATES) <= 30
    filler = {t for tpl in syn.TEMPLATES for t in tpl.split() if not t.startswith("{")}
    filler |= set(syn.FILLER_NOUNS) | set(syn.NEUTRAL_HASHTAGS) | {"a", "an"}
    filler |= {syn.TEXT_CUE_TOKEN, *syn.TEXT_CUE_TOKENS_3}
    assert all(lex.polarity(w) is None for w in filler), [w for w in filler if lex.polarity(w) is not None]
    assert all(tpl.split().count("{w}") == 1 for tpl in syn.TEMPLATES)


def test_vocabulary_covers_generated_words(big, three):
    v2 = vocabulary(2)
    assert v2 == sorted(set(v2))
    emitted = {w for ds in big.values() for s in _cols(ds, "text")[0] for w in s.split()}
    assert emitted == set(v2)  # exact: nothing missing, nothing never emitted
    v3 = vocabulary(3)
    emitted3 = {w for ds in three.values() for s in _cols(ds, "text")[0] for w in s.split()}
    assert emitted3 <= set(v3)
    assert set(syn.NEUTRAL_WORDS) <= set(v3) and not set(syn.NEUTRAL_WORDS) & set(v2)
    assert set(syn.TEXT_CUE_TOKENS_3) <= set(v3) and syn.TEXT_CUE_TOKEN not in v3


# ----------------------------------------------------------------------- images
def _far_masks(imgs, boxes, thresh=60.0):
    """Pixels far from the background colour (median outside the glyph box), and box masks."""
    n, s = imgs.shape[:2]
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    in_box = np.stack(
        [(xx >= b[0] * s) & (xx < b[2] * s) & (yy >= b[1] * s) & (yy < b[3] * s) for b in boxes]
    )
    far = np.zeros(in_box.shape, dtype=bool)
    bg = np.zeros((n, 3))
    for i in range(n):
        bg[i] = np.median(imgs[i][~in_box[i]], axis=0)
        far[i] = np.linalg.norm(imgs[i] - bg[i], axis=-1) > thresh
    return far, in_box, bg


def test_core_box_contains_the_glyph(big):
    ds = big["test_balanced"]
    idx = np.arange(300)
    imgs = _images(ds, idx)
    boxes = np.asarray(ds.select(idx)["core_box"])
    sent = np.asarray(ds.select(idx)["image_sentiment"])
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert ((boxes >= 0) & (boxes <= 1)).all()
    far, in_box, _ = _far_masks(imgs, boxes)
    for i in range(len(idx)):
        inside = far[i][in_box[i]].mean()
        outside = far[i][~in_box[i]].mean()
        assert inside > 0.3, (i, inside)
        assert outside < 0.03, (i, outside)
        # The box is tight: the glyph touches all four sides (looked for within the box grown by
        # one pixel, so a stray noisy background pixel elsewhere does not count).
        s = imgs.shape[1]
        x0, y0, x1, y1 = (np.round(boxes[i] * s)).astype(int)
        near = np.zeros((s, s), dtype=bool)
        near[max(y0 - 1, 0): y1 + 1, max(x0 - 1, 0): x1 + 1] = True
        glyph = far[i] & near
        rows = np.nonzero(glyph.any(axis=1))[0]
        cols = np.nonzero(glyph.any(axis=0))[0]
        assert abs(rows.min() - boxes[i, 1] * s) <= 1 and abs(rows.max() + 1 - boxes[i, 3] * s) <= 1
        assert abs(cols.min() - boxes[i, 0] * s) <= 1 and abs(cols.max() + 1 - boxes[i, 2] * s) <= 1
        # Up triangle (positive) is wider at the bottom, down triangle (negative) at the top.
        box_far = glyph[rows.min(): rows.max() + 1]
        h = len(box_far)
        top, bottom = box_far[: h // 2].sum(), box_far[h - h // 2:].sum()
        assert (bottom > top) if sent[i] == 1 else (top > bottom), (i, sent[i], top, bottom)


def test_background_family_follows_image_cue(big):
    ds = big["train"]
    idx = np.arange(1500)
    imgs = _images(ds, idx)
    sub = ds.select(idx)
    boxes = np.asarray(sub["core_box"])
    ic = np.asarray(sub["image_cue"])
    _, _, bg = _far_masks(imgs, boxes)
    r_minus_b = bg[:, 0] - bg[:, 2]
    assert (r_minus_b[ic == 1] > 0).all() and (r_minus_b[ic == 0] < 0).all()
    whole = imgs.mean(axis=(1, 2))
    assert (whole[ic == 1, 0] - whole[ic == 1, 2]).mean() > 40
    assert (whole[ic == 0, 0] - whole[ic == 0, 2]).mean() < -40
    # Backgrounds vary inside a family.
    assert bg[ic == 1].std(axis=0).max() > 10 and bg[ic == 0].std(axis=0).max() > 10

    # The glyph colour is independent of label and cues.
    far, in_box, _ = _far_masks(imgs, boxes)
    glyph = np.stack([np.median(imgs[i][far[i] & in_box[i]], axis=0) for i in range(len(idx))])
    kind = np.where(glyph.mean(axis=1) < 80, 0, np.where(glyph[:, 2] > 150, 1, 2))  # black / white / yellow
    assert set(np.unique(kind)) == {0, 1, 2}
    label, tc = np.asarray(sub["label"]), np.asarray(sub["text_cue"])
    for var in (label, tc, ic):
        for k in range(3):
            assert abs((kind[var == 1] == k).mean() - (kind[var == 0] == k).mean()) < 0.08


# ----------------------------------------------------------------------- determinism
def test_determinism():
    kw = dict(num_train=40, num_validation=20, num_validation_balanced=16, num_test=24)
    a = make_synthetic_benchmark(seed=5, **kw)
    b = make_synthetic_benchmark(seed=5, **kw)
    c = make_synthetic_benchmark(seed=6, **kw)
    for name in SPLITS:
        assert a[name]["text"] == b[name]["text"]
        assert a[name]["label"] == b[name]["label"]
        assert a[name]["core_box"] == b[name]["core_box"]
        assert all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a[name]["image"], b[name]["image"])
        )
        assert a[name]["text"] != c[name]["text"]
        assert not all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a[name]["image"], c[name]["image"])
        )
    # A split does not depend on which other splits are requested.
    only = make_synthetic_benchmark(seed=5, splits=["test_ood"], **kw)["test_ood"]
    assert only["text"] == a["test_ood"]["text"] and only["group"] == a["test_ood"]["group"]
    assert np.array_equal(np.asarray(only[3]["image"]), np.asarray(a["test_ood"][3]["image"]))
    # Splits differ from each other.
    assert a["test_id"]["text"] != a["test_ood"]["text"]


def test_image_size_parameter():
    d = make_synthetic_benchmark(image_size=48, num_test=30, splits=["test_id"])
    img = d["test_id"][0]["image"]
    assert img.size == (48, 48)
    box = np.asarray(d["test_id"]["core_box"])
    assert np.allclose(box * 48, np.round(box * 48), atol=1e-3)


# ----------------------------------------------------------------------- 3 classes
def test_three_class_labels_and_groups(three):
    lex = load_lexicon()
    assert num_groups(3) == 27 and num_groups(2) == 8
    for name, ds in three.items():
        assert ds.features["label"].names == ["negative", "neutral", "positive"]
        label, clean, ts, vs, tc, ic, g = _cols(
            ds, "label", "clean_label", "text_sentiment", "image_sentiment", "text_cue", "image_cue", "group"
        )
        assert (clean == np.sign((ts - 1) + (vs - 1)) + 1).all(), name
        assert (g == label * 9 + tc * 3 + ic).all(), name
        assert set(np.unique(ts)) <= {0, 1, 2} and set(np.unique(tc)) <= {0, 1, 2}
        for text, pos, t, c in zip(*_cols(ds, "text", "core_word_positions", "text_sentiment", "text_cue")):
            tokens = text.split()
            assert lex.polarity(tokens[pos[0]]) == t - 1, text
            assert syn.TEXT_CUE_TOKENS_3[c] in tokens
            assert sum(tok in syn.TEXT_CUE_TOKENS_3 for tok in tokens) == 1
    # Label noise moves to another class; labels roughly uniform.
    label, clean = _cols(three["train"], "label", "clean_label")
    assert abs((label != clean).mean() - 0.1) < 0.02
    assert np.abs(np.bincount(clean) / len(clean) - 1 / 3).max() < 0.03
    # Cue == label with p_cue (correlated), 1 - p_cue (reversed), 1/3 (independent).
    expected = {"train": 0.9, "test_id": 0.9, "test_ood": 0.1, "train_cue_free": 1 / 3, "test_balanced": 1 / 3}
    for name, p in expected.items():
        label, tc, ic = _cols(three[name], "label", "text_cue", "image_cue")
        for cue in (tc, ic):
            assert abs((cue == label).mean() - p) < 0.025, (name, (cue == label).mean())
    counts = np.bincount(_cols(three["validation_balanced"], "group")[0], minlength=27)
    assert len(counts) == 27 and (counts == 20).all()
    c = np.bincount(_cols(three["test_balanced"], "group")[0], minlength=27)
    assert c.max() - c.min() <= 1


def test_three_class_images(three):
    ds = three["test_balanced"]
    idx = np.arange(240)
    imgs = _images(ds, idx)
    sub = ds.select(idx)
    boxes = np.asarray(sub["core_box"])
    vs, ic = np.asarray(sub["image_sentiment"]), np.asarray(sub["image_cue"])
    far, in_box, bg = _far_masks(imgs, boxes)
    # Neutral glyph: a flat bar filling its (wide, short) box; triangles fill about half.
    fill = np.array([far[i][in_box[i]].mean() for i in range(len(idx))])
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    assert (fill[vs == 1] > 0.75).all() and (fill[vs != 1] < 0.75).all()
    assert (w[vs == 1] > 1.8 * h[vs == 1]).all()
    # Background family: 0 bluish, 1 greenish, 2 reddish.
    dominant = bg.argmax(axis=1)  # 0 R, 1 G, 2 B
    assert (dominant[ic == 0] == 2).all()
    assert (dominant[ic == 1] == 1).all()
    assert (dominant[ic == 2] == 0).all()
