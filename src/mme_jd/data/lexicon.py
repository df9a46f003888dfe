"""A small general-purpose English sentiment lexicon with antonyms.

The shipped word list ``sentiment_lexicon.tsv`` (beside this module) is hand-written and not
tied to any benchmark. Each non-comment line is ``word<TAB>polarity<TAB>antonyms`` where
``polarity`` is ``positive``, ``negative`` or ``neutral`` and ``antonyms`` is a comma-separated
(possibly empty) list of words of the opposite polarity. Lines that are empty or start with
``#`` are ignored, and so is a header line ``word<TAB>polarity<TAB>antonyms``.

The lexicon serves the ``swap`` text counterfactual (core sentiment words are replaced by words
of opposite polarity, which flips the label) and the ``lexical`` core-token detector.
"""

from __future__ import annotations

import functools
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

__all__ = ["SentimentLexicon", "load_lexicon", "DEFAULT_LEXICON_PATH", "normalize_word", "swap_vocabulary"]

DEFAULT_LEXICON_PATH = Path(__file__).with_name("sentiment_lexicon.tsv")

_POLARITIES = {"positive": 1, "negative": -1, "neutral": 0}
_STRIP_CHARS = string.punctuation + "\u2018\u2019\u201c\u201d\u00ab\u00bb\u2026"
_HEADER = ("word", "polarity", "antonyms")


def normalize_word(word: str) -> str:
    """Lowercase ``word`` and strip surrounding punctuation, including a leading ``#``.

    Inner punctuation stays (``so-so`` → ``so-so``, ``#Great!`` → ``great``).
    """
    return word.strip().strip(_STRIP_CHARS).lower()


def _pick(options: list[str], key: str, rng: Any) -> str:
    """One of ``options``: by ``rng`` if given (numpy Generator or ``random.Random``), else by a
    stable hash of ``key`` (deterministic across processes, unlike ``hash``)."""
    if rng is None:
        return options[zlib.crc32(key.encode("utf-8")) % len(options)]
    if hasattr(rng, "integers"):  # numpy.random.Generator
        return options[int(rng.integers(len(options)))]
    return options[rng.randrange(len(options))]  # random.Random


@dataclass(frozen=True)
class SentimentLexicon:
    """Word sets by polarity plus an antonym table.

    ``antonyms`` maps a word to the tuple of its listed opposite-polarity words (words without
    listed antonyms are absent from it). All words are lowercase.
    """

    positive: frozenset[str]
    negative: frozenset[str]
    neutral: frozenset[str] = frozenset()
    antonyms: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("positive", "negative", "neutral"):
            value = getattr(self, name)
            if not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))
        overlaps = {
            "positive/negative": self.positive & self.negative,
            "positive/neutral": self.positive & self.neutral,
            "negative/neutral": self.negative & self.neutral,
        }
        for pair, words in overlaps.items():
            if words:
                raise ValueError(f"words listed with two polarities ({pair}): {sorted(words)}")
        object.__setattr__(
            self, "antonyms", {k: tuple(v) for k, v in dict(self.antonyms).items() if v}
        )

    # ------------------------------------------------------------------ queries
    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self.polarity(word) is not None

    def __len__(self) -> int:
        return len(self.positive) + len(self.negative) + len(self.neutral)

    def polarity(self, word: str) -> int | None:
        """+1 positive, -1 negative, 0 neutral, ``None`` if unknown.

        Case-insensitive; surrounding punctuation and a leading ``#`` are ignored.
        """
        w = normalize_word(word)
        if w in self.positive:
            return 1
        if w in self.negative:
            return -1
        if w in self.neutral:
            return 0
        return None

    def words(self, polarity: int) -> frozenset[str]:
        """The words of one polarity (+1, -1 or 0)."""
        return {1: self.positive, -1: self.negative, 0: self.neutral}[polarity]

    def opposite(
        self,
        word: str,
        rng: Any = None,
        vocabulary: Collection[str] | None = None,
    ) -> str | None:
        """A word of the opposite polarity to ``word`` (lowercase, bare), or ``None``.

        - Unknown and neutral words give ``None``.
        - A listed antonym is preferred: the first eligible one, or one drawn by ``rng``.
        - Otherwise a word of the opposite polarity, chosen deterministically from a stable hash
          of the word (or drawn by ``rng``, a ``numpy.random.Generator`` or ``random.Random``).
        - With ``vocabulary`` (a set of words), only words in it are eligible; ``None`` if none is.
        """
        w = normalize_word(word)
        pol = self.polarity(w)
        if not pol:
            return None

        def eligible(cands: Collection[str]) -> list[str]:
            return [c for c in cands if vocabulary is None or c in vocabulary]

        listed = eligible(self.antonyms.get(w, ()))
        if listed:
            return listed[0] if rng is None else _pick(listed, w, rng)
        pool = eligible(sorted(self.words(-pol)))
        if not pool:
            return None
        return _pick(pool, w, rng)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (sorted lists)."""
        return {
            "positive": sorted(self.positive),
            "negative": sorted(self.negative),
            "neutral": sorted(self.neutral),
            "antonyms": {k: list(v) for k, v in sorted(self.antonyms.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SentimentLexicon":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                positive=frozenset(w.lower() for w in data["positive"]),
                negative=frozenset(w.lower() for w in data["negative"]),
                neutral=frozenset(w.lower() for w in data.get("neutral", ())),
                antonyms={
                    k.lower(): tuple(a.lower() for a in v)
                    for k, v in dict(data.get("antonyms", {})).items()
                },
            )
        except KeyError as exc:
            raise ValueError(f"lexicon dict lacks the key {exc}") from None

    @classmethod
    def from_tsv(cls, path: str | Path) -> "SentimentLexicon":
        """Parse a ``word<TAB>polarity<TAB>antonyms`` file; ``ValueError`` names a bad line."""
        path = Path(path)
        polarity_of: dict[str, str] = {}
        antonyms: dict[str, tuple[str, ...]] = {}
        lines: dict[str, int] = {}
        with path.open(encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, start=1):
                line = raw.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                where = f"{path}:{lineno}"
                cols = line.split("\t")
                if tuple(c.strip().lower() for c in cols) == _HEADER:
                    continue
                if len(cols) not in (2, 3):
                    raise ValueError(
                        f"{where}: expected 'word<TAB>polarity<TAB>antonyms' (2 or 3 tab-separated "
                        f"columns), got {len(cols)}: {line!r}"
                    )
                word = cols[0].strip().lower()
                pol = cols[1].strip().lower()
                if not word or any(ch.isspace() for ch in word):
                    raise ValueError(f"{where}: bad word {cols[0]!r} (empty or with spaces)")
                if pol not in _POLARITIES:
                    raise ValueError(
                        f"{where}: polarity must be positive, negative or neutral, got {cols[1]!r}"
                    )
                if word in polarity_of:
                    raise ValueError(f"{where}: duplicate word {word!r} (first on line {lines[word]})")
                ants = tuple(
                    a.strip().lower() for a in (cols[2] if len(cols) == 3 else "").split(",") if a.strip()
                )
                if ants and pol == "neutral":
                    raise ValueError(f"{where}: neutral word {word!r} cannot have antonyms")
                polarity_of[word] = pol
                lines[word] = lineno
                if ants:
                    antonyms[word] = ants
        # Antonyms that are themselves in the file must have the opposite polarity.
        for word, ants in antonyms.items():
            for a in ants:
                if a in polarity_of and _POLARITIES[polarity_of[a]] != -_POLARITIES[polarity_of[word]]:
                    raise ValueError(
                        f"{path}:{lines[word]}: antonym {a!r} of {word!r} has polarity "
                        f"{polarity_of[a]!r}, not the opposite of {polarity_of[word]!r}"
                    )
        return cls(
            positive=frozenset(w for w, p in polarity_of.items() if p == "positive"),
            negative=frozenset(w for w, p in polarity_of.items() if p == "negative"),
            neutral=frozenset(w for w, p in polarity_of.items() if p == "neutral"),
            antonyms=antonyms,
        )


@functools.lru_cache(maxsize=8)
def _load_cached(path: str) -> SentimentLexicon:
    return SentimentLexicon.from_tsv(path)


def load_lexicon(path: str | Path | None = None) -> SentimentLexicon:
    """Load a lexicon TSV (default: the shipped ``sentiment_lexicon.tsv``), cached per path."""
    resolved = Path(path) if path is not None else DEFAULT_LEXICON_PATH
    return _load_cached(str(resolved.resolve()))


def swap_vocabulary(processor: Any, enabled: bool = True) -> set[str] | None:
    """The words a ``swap`` replacement may use with this processor's tokenizer: its whole
    vocabulary when it is word-level (fewer than 5,000 entries, none with a sub-word marker
    ``▁``, ``Ġ`` or ``##``, as the tiny default's), else None (a sub-word tokenizer spells any
    word, so nothing is restricted). ``enabled=False``: None."""
    tokenizer = getattr(processor, "tokenizer", processor)
    vocab = tokenizer.get_vocab() if enabled else None
    if vocab and all(not token.startswith(("▁", "Ġ", "##")) for token in list(vocab)[:2000]) and len(vocab) < 5000:
        return set(vocab)
    return None
