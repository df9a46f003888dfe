"""Tests for the shipped sentiment lexicon and ``SentimentLexicon``."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mme_jd.data.lexicon import DEFAULT_LEXICON_PATH, SentimentLexicon, load_lexicon


@pytest.fixture(scope="module")
def lex() -> SentimentLexicon:
    return load_lexicon()


def test_shipped_lexicon_size_and_shape(lex):
    assert len(lex.positive) >= 150
    assert len(lex.negative) >= 150
    assert len(lex.neutral) >= 40
    everything = lex.positive | lex.negative | lex.neutral
    assert all(w == w.lower() and w.strip() == w and " " not in w for w in everything)
    # Most polar words have an antonym that is itself in the file, of the opposite polarity.
    polar = lex.positive | lex.negative
    with_antonym = 0
    for w in polar:
        ants = [a for a in lex.antonyms.get(w, ()) if a in everything]
        for a in ants:
            assert lex.polarity(a) == -lex.polarity(w), (w, a)
        with_antonym += bool(ants)
    assert with_antonym / len(polar) > 0.85
    assert not any(lex.antonyms.get(w) for w in lex.neutral)


def test_common_words(lex):
    pairs = [("good", "bad"), ("love", "hate"), ("happy", "sad"), ("great", "terrible"), ("wonderful", "awful")]
    for pos, neg in pairs:
        assert lex.polarity(pos) == 1
        assert lex.polarity(neg) == -1
        assert neg in lex.antonyms[pos]
        assert pos in lex.antonyms[neg]
    for w in ("okay", "average", "ordinary"):
        assert lex.polarity(w) == 0


def test_polarity_normalisation(lex):
    assert lex.polarity("GOOD") == 1
    assert lex.polarity("#Happy!") == 1
    assert lex.polarity('"terrible,"') == -1
    assert lex.polarity("(okay)") == 0
    assert lex.polarity("so-so") == 0
    assert lex.polarity("xyzzy") is None
    assert lex.polarity("") is None
    assert "good" in lex and "#Good" in lex and "xyzzy" not in lex


def test_opposite_prefers_listed_antonym(lex):
    assert lex.opposite("good") == lex.antonyms["good"][0]
    assert lex.opposite("#Good!") == lex.antonyms["good"][0]
    assert lex.opposite("okay") is None
    assert lex.opposite("xyzzy") is None
    # Every polar word gets a word of the opposite polarity.
    for w in sorted(lex.positive | lex.negative):
        o = lex.opposite(w)
        assert o is not None and lex.polarity(o) == -lex.polarity(w), (w, o)
    # With an rng: still a listed antonym.
    rng = np.random.default_rng(0)
    assert {lex.opposite("good", rng=rng) for _ in range(50)} <= set(lex.antonyms["good"])


def test_opposite_vocabulary_filter(lex):
    ants = lex.antonyms["good"]
    assert lex.opposite("good", vocabulary={ants[-1], "great"}) == ants[-1]
    # No listed antonym in the vocabulary: any opposite-polarity word of the vocabulary.
    other = next(w for w in sorted(lex.negative) if w not in ants)
    assert lex.opposite("good", vocabulary={other, "great"}) == other
    # Only same-polarity or unknown words available: None.
    assert lex.opposite("good", vocabulary={"great", "xyzzy"}) is None
    assert lex.opposite("good", vocabulary=set()) is None


def test_opposite_without_listed_antonym_is_deterministic(lex):
    word = next(w for w in sorted(lex.positive) if not lex.antonyms.get(w))
    first = lex.opposite(word)
    assert first in lex.negative
    assert lex.opposite(word) == first
    assert SentimentLexicon.from_dict(lex.to_dict()).opposite(word) == first
    drawn = {lex.opposite(word, rng=np.random.default_rng(s)) for s in range(20)}
    assert drawn <= lex.negative and len(drawn) > 1
    assert lex.opposite(word, rng=random.Random(3)) in lex.negative
    vocab = {"bad", "awful", "great"}
    assert lex.opposite(word, vocabulary=vocab) in {"bad", "awful"}


def test_round_trip(lex):
    d = lex.to_dict()
    assert set(d) == {"positive", "negative", "neutral", "antonyms"}
    back = SentimentLexicon.from_dict(json.loads(json.dumps(d)))
    assert back == lex
    assert back.antonyms == lex.antonyms
    assert back.to_dict() == d


def test_load_is_cached_and_accepts_path(tmp_path, lex):
    assert load_lexicon() is load_lexicon()
    assert load_lexicon(DEFAULT_LEXICON_PATH) is lex
    p = tmp_path / "mini.tsv"
    p.write_text(
        "# comment\nword\tpolarity\tantonyms\n"
        "nice\tpositive\tmean\nmean\tnegative\tnice\nmeh\tneutral\t\nbland\tnegative\n"
    )
    mini = load_lexicon(p)
    assert mini.positive == {"nice"} and mini.negative == {"mean", "bland"} and mini.neutral == {"meh"}
    assert mini.opposite("nice") == "mean"
    assert mini.opposite("bland") == "nice"


@pytest.mark.parametrize(
    "body, lineno, needle",
    [
        ("good\tpositive\tbad\nbad\tnegativ\tgood\n", 2, "polarity"),
        ("good\tpositive\tbad\nbad\n", 2, "columns"),
        ("good\tpositive\tbad\tx\n", 1, "columns"),
        ("good\tpositive\t\n# c\ngood\tnegative\t\n", 3, "duplicate"),
        ("okay\tneutral\tbad\n", 1, "neutral"),
        ("good\tpositive\tgreat\ngreat\tpositive\t\n", 1, "antonym"),
        ("go od\tpositive\t\n", 1, "bad word"),
    ],
)
def test_malformed_tsv_names_the_line(tmp_path, body, lineno, needle):
    p = tmp_path / "bad.tsv"
    p.write_text(body)
    with pytest.raises(ValueError, match=rf"bad\.tsv:{lineno}\b.*{needle}"):
        SentimentLexicon.from_tsv(p)


def test_overlapping_polarities_rejected():
    with pytest.raises(ValueError, match="two polarities"):
        SentimentLexicon(positive=frozenset({"x"}), negative=frozenset({"x"}))
