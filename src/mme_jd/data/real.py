"""Loaders for the real datasets, as :class:`datasets.DatasetDict` objects, from local files only.

Three public datasets are supported; each loader reads the files a user downloaded
(nothing is fetched from the network) and builds the ``train`` / ``validation`` / ``test``
splits with :meth:`datasets.Dataset.from_dict`.

**MMSD2.0** (:func:`load_mmsd2`; Qin et al., Findings of ACL 2023) -- multimodal sarcasm
detection, the debiased version of MMSD: the hashtag and emoji cues were removed from the
text and unreasonable labels were fixed. Files: ``mmsd2/train.json``, ``valid.json``,
``test.json`` (JSON lists of ``{"image_id": int, "text": str, "label": 0|1}``),
19,816 / 2,410 / 2,409 rows.

**MMSD** (:func:`load_mmsd`; Cai et al., ACL 2019) -- the original, biased version. Its text
keeps hashtags and ``emoji_...`` tokens, which are spurious cues of the label; training on
MMSD and testing on MMSD2.0 measures robustness to them. Files: ``mmsd1/train.txt`` (one
Python literal ``[id, text, label]`` per line, 29,040 lines), ``valid2.txt`` and
``test2.txt`` (``[id, text, hashtag_label, annotator_label]``). The training split is
*restricted to the 19,816 ids of MMSD2.0's train.json* so that the two versions differ only
in their text and labels (see :func:`load_mmsd`).

**MVSA-Single** (:func:`load_mvsa_single`; Niu et al., MMM 2016) -- multimodal sentiment
(negative / neutral / positive) with separate text and image labels. Files:
``mvsa_single/texts.jsonl``, ``splits.json`` and ``images/{id}.jpg``; 3,608 / 451 / 452 rows.

**Image stand-in for MMSD / MMSD2.0.** The tweet images of MMSD and MMSD2.0 are distributed
separately and are usually not available offline. When no ``image_dir`` is given, the
``image`` column is ``None`` for every row and ``image_description`` holds the five image
attribute words of that tweet from ``mmsd1/image_attributes.txt`` joined by spaces (see
:data:`MMSD_IMAGE_STAND_IN`). This substitution is never silent: it is announced with a
warning on the ``"mme_jd"`` logger and written into every split's ``info.description``
(note that ``datasets`` drops ``info.description`` on ``map``/``filter``; the ``image``
column being ``None`` is the durable signal). With ``image_dir``, ``image`` is the
(lazily decoded) file ``{image_dir}/{id}.jpg`` and ``image_description`` is ``None``.

Where the files are looked for: the ``data_dir`` argument, else :func:`default_data_dir`
(the ``MME_JD_DATA_DIR`` environment variable, else ``../shared/data`` beside the
repository root). ``data_dir`` may be the folder that holds ``mmsd2/``, ``mmsd1/`` and
``mvsa_single/``, or directly one dataset's own folder (its sibling folders are then looked
for beside it).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image, Value

from .sources import DATASET_NAMES  # the names accepted by load_dataset_by_name

__all__ = [
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "MMSD_IMAGE_STAND_IN",
    "SARCASM_LABELS",
    "SENTIMENT_LABELS",
    "SPLITS",
    "default_data_dir",
    "load_dataset_by_name",
    "load_mmsd",
    "load_mmsd2",
    "load_mvsa_single",
    "normalize_tweet",
]

logger = logging.getLogger("mme_jd")

PathLike = str | os.PathLike[str]

#: Environment variable naming the folder that holds ``mmsd2/``, ``mmsd1/``, ``mvsa_single/``.
DATA_DIR_ENV = "MME_JD_DATA_DIR"
#: Split names every loader produces, in this order.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: ``ClassLabel`` names of MMSD / MMSD2.0 (1 = sarcastic).
SARCASM_LABELS: tuple[str, ...] = ("not_sarcastic", "sarcastic")
#: ``ClassLabel`` names of MVSA-Single.
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
#: Documentation of the stand-in used when the MMSD / MMSD2.0 images are not available.
MMSD_IMAGE_STAND_IN = (
    "IMAGE STAND-IN: the tweet images of MMSD / MMSD2.0 are not available offline, so the "
    "`image` column is None for every row and `image_description` holds, for each tweet, the "
    "five attribute words detected in its image (mmsd1/image_attributes.txt, one line "
    "[id, w1, w2, w3, w4, w5] per image), joined by single spaces. These words are a weak, "
    "text-only substitute for the image: results obtained with them are not comparable with "
    "results on the real images. Pass image_dir= (a folder holding {id}.jpg) to use the images."
)

_MMSD2_FILES = {"train": "train.json", "validation": "valid.json", "test": "test.json"}
_MMSD_FILES = {"train": "train.txt", "validation": "valid2.txt", "test": "test2.txt"}
_ATTRIBUTES_FILE = "image_attributes.txt"
_MVSA_TEXTS = "texts.jsonl"
_MVSA_SPLITS = "splits.json"
_MVSA_KEYS = frozenset({"id", "text", "text_label", "image_label"})

_CITATIONS = {
    "mmsd2": "Qin et al. MMSD2.0: Towards a Reliable Multi-modal Sarcasm Detection System. "
    "Findings of ACL 2023.",
    "mmsd": "Cai, Cai and Wan. Multi-Modal Sarcasm Detection in Twitter with Hierarchical "
    "Fusion Model. ACL 2019.",
    "mvsa_single": "Niu, Zhu, Pang and El Saddik. Sentiment Analysis on Multi-View Social "
    "Data. MMM 2016.",
}


# --------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------


def _repository_root() -> Path | None:
    """The closest folder above this file that contains ``pyproject.toml``, if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def default_data_dir() -> Path | None:
    """The default folder holding ``mmsd2/``, ``mmsd1/`` and ``mvsa_single/``.

    Returns the ``MME_JD_DATA_DIR`` environment variable when it is set (whether or not the
    folder exists: the loaders then report what is missing), else ``../shared/data`` relative
    to the repository root (the folder containing ``pyproject.toml``) when that folder
    exists, else ``None``.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    root = _repository_root()
    if root is not None:
        candidate = (root.parent / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


def _fix_hint(sub: str) -> str:
    return (
        f"Pass data_dir= (the folder that holds {sub}/, or the {sub}/ folder itself) or set "
        f"the {DATA_DIR_ENV} environment variable to the folder that holds {sub}/."
    )


def _data_root(data_dir: PathLike | None, what: str, sub: str) -> Path:
    """``data_dir`` (or the default) as a Path; FileNotFoundError when there is none."""
    if data_dir is None:
        root = default_data_dir()
        if root is None:
            raise FileNotFoundError(
                f"{what}: no data folder given and none found (no data_dir argument, "
                f"{DATA_DIR_ENV} is not set and ../shared/data beside the repository root does "
                f"not exist). {_fix_hint(sub)}"
            )
    else:
        root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: data folder {root} does not exist. {_fix_hint(sub)}")
    return root


def _locate(root: Path, sub: str, files: Sequence[str], what: str, *, sibling: bool) -> Path:
    """The folder of dataset ``sub`` that holds every name in ``files``.

    Candidates, in order: ``root/sub``, ``root`` (``root`` is the dataset's own folder) and,
    when ``sibling`` is true, ``root/../sub`` (``root`` is another dataset's folder).
    """
    candidates: list[Path] = []
    for c in (root / sub, root, *((root.parent / sub,) if sibling else ())):
        if c not in candidates:
            candidates.append(c)
    present = [sum((c / f).is_file() for f in files) for c in candidates]
    for c, n in zip(candidates, present):
        if n == len(files):
            return c
    best = candidates[present.index(max(present))]
    missing = next(f for f in files if not (best / f).is_file())
    looked = ", ".join(str(c / missing) for c in candidates)
    raise FileNotFoundError(
        f"{what}: required file {sub}/{missing} not found; looked for it at: {looked}. "
        f"{_fix_hint(sub)}"
    )


def _normalize_splits(splits: str | Iterable[str] | None) -> list[str]:
    """Requested split names in canonical order; ValueError on unknown names."""
    if splits is None:
        return list(SPLITS)
    requested = [splits] if isinstance(splits, str) else list(splits)
    unknown = [s for s in requested if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; allowed: {list(SPLITS)}")
    if not requested:
        raise ValueError(f"splits is empty; choose among {list(SPLITS)}")
    return [s for s in SPLITS if s in requested]


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _malformed(path: Path, where: str, problem: str, text: str | None = None) -> ValueError:
    shown = f": {text[:120]!r}" if text is not None else ""
    return ValueError(f"malformed data in {path}, {where}: {problem}{shown}")


def _as_id(value: Any, path: Path, where: str, raw: str | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _malformed(path, where, f"id must be a string or an integer, got {value!r}", raw)
    out = str(value).strip()
    if not out:
        raise _malformed(path, where, "empty id", raw)
    return out


def _as_label(value: Any, names: Sequence[str], path: Path, where: str, raw: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(names):
        problem = f"label must be an integer in 0..{len(names) - 1}, got {value!r}"
        raise _malformed(path, where, problem, raw)
    return value


def _as_text(value: Any, path: Path, where: str, raw: str | None) -> str:
    if not isinstance(value, str):
        raise _malformed(path, where, f"text must be a string, got {type(value).__name__}", raw)
    return value.strip()


def _read_literal_lines(path: Path, n_fields: int, layout: str) -> list[tuple[int, str, list[Any]]]:
    """Parse a file of one Python literal list per line; ``(line_number, raw, fields)`` triples.

    Blank lines are skipped; a line that is not a list of ``n_fields`` items raises a
    ValueError naming the file and the line.
    """
    out: list[tuple[int, str, list[Any]]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                fields = ast.literal_eval(line)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
                problem = f"not a Python literal {layout} ({type(exc).__name__})"
                raise _malformed(path, f"line {lineno}", problem, line) from None
            if not isinstance(fields, (list, tuple)) or len(fields) != n_fields:
                raise _malformed(path, f"line {lineno}", f"expected a list {layout}", line)
            out.append((lineno, line, list(fields)))
    return out


@functools.lru_cache(maxsize=8)
def _parse_image_attributes(path: str, mtime_ns: int, size: int) -> Mapping[str, str]:
    """Parsed ``image_attributes.txt``: id -> the five words joined by spaces (cached).

    The cache key is the path plus its modification time and size, so an edited file is
    parsed again.
    """
    p = Path(path)
    table: dict[str, str] = {}
    for lineno, raw, fields in _read_literal_lines(p, 6, "[id, w1, w2, w3, w4, w5]"):
        where = f"line {lineno}"
        key = _as_id(fields[0], p, where, raw)
        words = fields[1:]
        if not all(isinstance(w, str) for w in words):
            raise _malformed(p, where, "attribute words must be strings", raw)
        table[key] = " ".join(w.strip() for w in words)
    return MappingProxyType(table)


def _image_attributes(path: Path) -> Mapping[str, str]:
    st = path.stat()
    return _parse_image_attributes(str(path.resolve()), st.st_mtime_ns, st.st_size)


def _load_json(path: Path) -> Any:
    """The JSON value in `path`; a `ValueError` naming the file, line and column when it is malformed."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON in {path}: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _read_mmsd2_split(path: Path) -> tuple[list[str], list[str], list[int]]:
    """``(ids, texts, labels)`` of one MMSD2.0 JSON file."""
    items = _load_json(path)
    if not isinstance(items, list):
        raise ValueError(
            f"malformed {path}: expected a JSON list of objects, got {type(items).__name__}"
        )
    ids: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    for i, item in enumerate(items):
        where = f"item {i} (0-based)"
        if not isinstance(item, dict) or not {"image_id", "text", "label"} <= item.keys():
            raise _malformed(path, where, 'expected {"image_id", "text", "label"}', repr(item))
        ids.append(_as_id(item["image_id"], path, where, repr(item)))
        texts.append(_as_text(item["text"], path, where, repr(item)))
        labels.append(_as_label(item["label"], SARCASM_LABELS, path, where, repr(item)))
    return ids, texts, labels


# --------------------------------------------------------------------------------------------
# Building the sarcasm datasets
# --------------------------------------------------------------------------------------------


def _image_columns(
    what: str,
    ids_by_split: Mapping[str, list[str]],
    image_dir: PathLike | None,
    attributes_path: Path | None,
) -> tuple[dict[str, list[str | None]], dict[str, list[str | None]], str]:
    """``image`` and ``image_description`` columns per split, and a description paragraph."""
    images: dict[str, list[str | None]] = {}
    descriptions: dict[str, list[str | None]] = {}
    if image_dir is not None:
        folder = Path(image_dir).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"{what}: image_dir {folder} does not exist.")
        missing: list[str] = []
        for split, ids in ids_by_split.items():
            paths = [str(folder / f"{i}.jpg") for i in ids]
            missing.extend(p for p in paths if not os.path.isfile(p))
            images[split] = list(paths)
            descriptions[split] = [None] * len(ids)
        if missing:
            total = sum(len(v) for v in ids_by_split.values())
            raise FileNotFoundError(
                f"{what}: image file {missing[0]} not found ({len(missing)} of {total} images "
                f"of the requested splits are missing from {folder}). image_dir must hold "
                "{id}.jpg for every id; leave image_dir=None to use the image attribute words "
                "stand-in instead."
            )
        return images, descriptions, f"Images: {folder}/{{id}}.jpg."
    assert attributes_path is not None
    table = _image_attributes(attributes_path)
    n_missing = 0
    for split, ids in ids_by_split.items():
        col = [table.get(i) for i in ids]
        n_missing += sum(d is None for d in col)
        images[split] = [None] * len(ids)
        descriptions[split] = col
    extra = (
        f" {n_missing} ids have no line in {attributes_path}; their image_description is None."
        if n_missing
        else ""
    )
    logger.warning(
        "%s: the tweet images are not available offline (no image_dir given): the `image` "
        "column is None and `image_description` holds the five image attribute words from %s "
        "as a stand-in (see mme_jd.data.real.MMSD_IMAGE_STAND_IN). Pass image_dir= to use the "
        "real images.%s",
        what,
        attributes_path,
        extra,
    )
    return images, descriptions, MMSD_IMAGE_STAND_IN + extra


def _build(
    name: str,
    split: str,
    columns: dict[str, list[Any]],
    features: Features,
    description: str,
) -> Dataset:
    info = DatasetInfo(
        description=description,
        citation=_CITATIONS[name],
        features=features,
        dataset_name=name,
    )
    return Dataset.from_dict(columns, features=features, info=info, split=split)


def _sarcasm_features(extra_labels: Sequence[str] = ()) -> Features:
    label = ClassLabel(names=list(SARCASM_LABELS))
    spec: dict[str, Any] = {"id": Value("string"), "text": Value("string"), "label": label}
    for col in extra_labels:
        spec[col] = ClassLabel(names=list(SARCASM_LABELS))
    spec["image"] = Image()
    spec["image_description"] = Value("string")
    return Features(spec)


def load_mmsd2(
    data_dir: PathLike | None = None,
    image_dir: PathLike | None = None,
    splits: str | Iterable[str] | None = None,
) -> DatasetDict:
    """Load MMSD2.0 (multimodal sarcasm detection, debiased) from local files.

    Args:
        data_dir: folder holding ``mmsd2/`` (and ``mmsd1/`` for the image stand-in), or the
            ``mmsd2/`` folder itself (``mmsd1/`` is then looked for beside it). Defaults to
            :func:`default_data_dir`.
        image_dir: folder holding the tweet images as ``{id}.jpg``. When given, ``image``
            holds these paths (decoded lazily by :class:`datasets.Image`) and every file must
            exist; when ``None``, ``image`` is ``None`` and ``image_description`` holds the
            image attribute words of ``mmsd1/image_attributes.txt``: a stand-in that is
            announced with a warning (see :data:`MMSD_IMAGE_STAND_IN`).
        splits: split names to build, among ``"train"``, ``"validation"``, ``"test"``
            (default: all three).

    Returns:
        A DatasetDict with columns ``id`` (str), ``text``, ``label`` (ClassLabel
        ``["not_sarcastic", "sarcastic"]``), ``image`` and ``image_description``;
        19,816 / 2,410 / 2,409 rows in the published files.

    Raises:
        FileNotFoundError: a data file or an image is missing (the message says which one,
            where it was looked for and how to fix it).
        ValueError: an unknown split name, or a malformed file (the message names the file
            and the line or item).
    """
    what = "MMSD2.0"
    wanted = _normalize_splits(splits)
    root = _data_root(data_dir, what, "mmsd2")
    folder = _locate(root, "mmsd2", [_MMSD2_FILES[s] for s in wanted], what, sibling=False)
    attributes = None
    if image_dir is None:
        mmsd1 = _locate(root, "mmsd1", [_ATTRIBUTES_FILE], what, sibling=True)
        attributes = mmsd1 / _ATTRIBUTES_FILE

    parsed = {s: _read_mmsd2_split(folder / _MMSD2_FILES[s]) for s in wanted}
    ids_by_split = {s: parsed[s][0] for s in wanted}
    images, descriptions, image_note = _image_columns(what, ids_by_split, image_dir, attributes)

    features = _sarcasm_features()
    out = DatasetDict()
    for s in wanted:
        ids, texts, labels = parsed[s]
        description = (
            f"MMSD2.0 multimodal sarcasm detection (debiased MMSD), split {s!r} from "
            f"{folder / _MMSD2_FILES[s]}. label: 1 = sarcastic. {image_note}"
        )
        columns = {
            "id": ids,
            "text": texts,
            "label": labels,
            "image": images[s],
            "image_description": descriptions[s],
        }
        out[s] = _build("mmsd2", s, columns, features, description)
    return out


def load_mmsd(
    data_dir: PathLike | None = None,
    image_dir: PathLike | None = None,
    splits: str | Iterable[str] | None = None,
) -> DatasetDict:
    """Load MMSD, the original (biased) multimodal sarcasm dataset, from local files.

    The text is kept as published (only surrounding whitespace is stripped): it still holds
    the hashtags (written ``# word``) and ``emoji_<n>`` tokens that are spurious cues of the
    label.

    * ``train`` comes from ``mmsd1/train.txt`` (29,040 lines ``[id, text, label]``) but is
      **restricted to the ids of MMSD2.0's** ``mmsd2/train.json`` (19,816 ids, all present in
      train.txt), in train.txt's order, so that MMSD and MMSD2.0 share the same tweets and
      differ only in text and labels. Its ``label`` is MMSD's own (distant, hashtag-based)
      label, also given as ``hashtag_label``; ``annotator_label`` is ``None``.
    * ``validation`` / ``test`` come from ``valid2.txt`` / ``test2.txt``
      (``[id, text, hashtag_label, annotator_label]``, all rows). ``label`` is the
      **annotator label** (the manually checked one); both source labels are kept.
    * ``mmsd2_label`` is MMSD2.0's label for the same id (``None`` if the id is not in
      MMSD2.0's file for that split); 934 of the 19,816 training labels differ from MMSD's.

    Args:
        data_dir: folder holding ``mmsd1/`` and ``mmsd2/``, or the ``mmsd1/`` folder itself
            (``mmsd2/`` is then looked for beside it). Defaults to :func:`default_data_dir`.
        image_dir: folder of ``{id}.jpg`` tweet images; see :func:`load_mmsd2` for the
            stand-in used when it is ``None``.
        splits: split names to build (default: all three).

    Returns:
        A DatasetDict with columns ``id`` (str), ``text``, ``label``, ``hashtag_label``,
        ``annotator_label``, ``mmsd2_label`` (all ClassLabel ``["not_sarcastic",
        "sarcastic"]``), ``image`` and ``image_description``; 19,816 / 2,410 / 2,409 rows.

    Raises:
        FileNotFoundError: a data file or an image is missing.
        ValueError: an unknown split name or a malformed line (file and line are named).
    """
    what = "MMSD"
    wanted = _normalize_splits(splits)
    root = _data_root(data_dir, what, "mmsd1")
    needed = [_MMSD_FILES[s] for s in wanted]
    if image_dir is None:
        needed.append(_ATTRIBUTES_FILE)
    folder = _locate(root, "mmsd1", needed, what, sibling=False)
    folder2 = _locate(root, "mmsd2", [_MMSD2_FILES[s] for s in wanted], what, sibling=True)
    attributes = folder / _ATTRIBUTES_FILE if image_dir is None else None

    columns_by_split: dict[str, dict[str, list[Any]]] = {}
    for s in wanted:
        path = folder / _MMSD_FILES[s]
        ids2, _, labels2 = _read_mmsd2_split(folder2 / _MMSD2_FILES[s])
        mmsd2_labels = dict(zip(ids2, labels2))
        names = ("id", "text", "label", "hashtag_label", "annotator_label", "mmsd2_label")
        cols: dict[str, list[Any]] = {k: [] for k in names}
        if s == "train":
            rows = _read_literal_lines(path, 3, "[id, text, label]")
            seen: set[str] = set()
            for lineno, raw, (id_, text, label) in rows:
                where = f"line {lineno}"
                key = _as_id(id_, path, where, raw)
                if key not in mmsd2_labels:
                    continue
                if key in seen:
                    raise _malformed(path, where, f"duplicate id {key}", raw)
                seen.add(key)
                lab = _as_label(label, SARCASM_LABELS, path, where, raw)
                cols["id"].append(key)
                cols["text"].append(_as_text(text, path, where, raw))
                cols["label"].append(lab)
                cols["hashtag_label"].append(lab)
                cols["annotator_label"].append(None)
                cols["mmsd2_label"].append(mmsd2_labels[key])
            absent = [i for i in ids2 if i not in seen]
            if absent:
                raise ValueError(
                    f"MMSD: {len(absent)} ids of {folder2 / _MMSD2_FILES[s]} are not in {path} "
                    f"(first: {absent[0]}); the MMSD training split is the MMSD2.0 training ids."
                )
        else:
            rows = _read_literal_lines(path, 4, "[id, text, hashtag_label, annotator_label]")
            for lineno, raw, (id_, text, hashtag, annotator) in rows:
                where = f"line {lineno}"
                key = _as_id(id_, path, where, raw)
                ann = _as_label(annotator, SARCASM_LABELS, path, where, raw)
                cols["id"].append(key)
                cols["text"].append(_as_text(text, path, where, raw))
                cols["label"].append(ann)
                cols["hashtag_label"].append(_as_label(hashtag, SARCASM_LABELS, path, where, raw))
                cols["annotator_label"].append(ann)
                cols["mmsd2_label"].append(mmsd2_labels.get(key))
        columns_by_split[s] = cols

    ids_by_split = {s: columns_by_split[s]["id"] for s in wanted}
    images, descriptions, image_note = _image_columns(what, ids_by_split, image_dir, attributes)

    features = _sarcasm_features(("hashtag_label", "annotator_label", "mmsd2_label"))
    out = DatasetDict()
    for s in wanted:
        cols = columns_by_split[s]
        cols["image"] = images[s]
        cols["image_description"] = descriptions[s]
        if s == "train":
            source = (
                f"{folder / _MMSD_FILES[s]} restricted to the ids of "
                f"{folder2 / _MMSD2_FILES[s]}; label = MMSD's hashtag-based label"
            )
        else:
            source = f"{folder / _MMSD_FILES[s]}; label = annotator_label"
        description = (
            f"MMSD multimodal sarcasm detection (original, with hashtag and emoji cues in the "
            f"text), split {s!r} from {source}. mmsd2_label = MMSD2.0's label for the same id. "
            f"label: 1 = sarcastic. {image_note}"
        )
        out[s] = _build("mmsd", s, cols, features, description)
    return out


# --------------------------------------------------------------------------------------------
# MVSA-Single
# --------------------------------------------------------------------------------------------


def _merge_sentiment(text_label: str, image_label: str) -> str | None:
    """The usual MVSA merge rule: equal labels stand, neutral yields, positive/negative drop."""
    if text_label == image_label:
        return text_label
    if text_label == "neutral":
        return image_label
    if image_label == "neutral":
        return text_label
    return None


def load_mvsa_single(
    data_dir: PathLike | None = None,
    splits: str | Iterable[str] | None = None,
) -> DatasetDict:
    """Load MVSA-Single (multimodal sentiment) from local files.

    Reads ``mvsa_single/texts.jsonl`` (``{"id", "text", "text_label", "image_label",
    "image"}`` per line), ``splits.json`` (``{"train": [ids], "validation": [ids],
    "test": [ids]}``) and the images ``images/{id}.jpg``. ``label`` follows the usual merge
    rule: equal text and image labels stand, a neutral label yields to the other one (a
    positive-against-negative tweet is not in any split).

    Args:
        data_dir: folder holding ``mvsa_single/``, or that folder itself. Defaults to
            :func:`default_data_dir`.
        splits: split names to build (default: all three).

    Returns:
        A DatasetDict with columns ``id`` (str), ``text``, ``image`` (:class:`datasets.Image`,
        decoded lazily from the path), ``label``, ``text_label``, ``image_label`` (ClassLabel
        ``["negative", "neutral", "positive"]``) and ``label_agreement`` (bool: text label ==
        image label); 3,608 / 451 / 452 rows.

    Raises:
        FileNotFoundError: a data file or an image is missing.
        ValueError: an unknown split name, a malformed line, an id of splits.json absent from
            texts.jsonl, or a split tweet whose labels cannot be merged.
    """
    what = "MVSA-Single"
    wanted = _normalize_splits(splits)
    root = _data_root(data_dir, what, "mvsa_single")
    folder = _locate(root, "mvsa_single", [_MVSA_TEXTS, _MVSA_SPLITS], what, sibling=False)
    folder = folder.resolve()
    texts_path, splits_path = folder / _MVSA_TEXTS, folder / _MVSA_SPLITS
    codes = {n: i for i, n in enumerate(SENTIMENT_LABELS)}

    records: dict[str, tuple[str, str, str, str]] = {}
    with open(texts_path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _malformed(texts_path, where, f"invalid JSON ({exc.msg})", line) from None
            if not isinstance(rec, dict) or not _MVSA_KEYS <= rec.keys():
                expected = '{"id", "text", "text_label", "image_label", "image"}'
                raise _malformed(texts_path, where, f"expected {expected}", line)
            key = _as_id(rec["id"], texts_path, where, line)
            for field in ("text_label", "image_label"):
                if rec[field] not in codes:
                    raise _malformed(
                        texts_path, where, f"{field} must be one of {list(SENTIMENT_LABELS)}", line
                    )
            image = rec.get("image") or f"images/{key}.jpg"
            if not isinstance(image, str):
                raise _malformed(texts_path, where, "image must be a relative path string", line)
            records[key] = (
                _as_text(rec["text"], texts_path, where, line),
                rec["text_label"],
                rec["image_label"],
                image,
            )

    split_ids = _load_json(splits_path)
    if not isinstance(split_ids, dict):
        raise ValueError(f"malformed {splits_path}: expected a JSON object {{split: [ids]}}")

    features = Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "image": Image(),
            "label": ClassLabel(names=list(SENTIMENT_LABELS)),
            "text_label": ClassLabel(names=list(SENTIMENT_LABELS)),
            "image_label": ClassLabel(names=list(SENTIMENT_LABELS)),
            "label_agreement": Value("bool"),
        }
    )
    out = DatasetDict()
    for s in wanted:
        ids = split_ids.get(s)
        if not isinstance(ids, list):
            raise ValueError(f"malformed {splits_path}: no list of ids for split {s!r}")
        cols: dict[str, list[Any]] = {name: [] for name in features}
        for id_ in ids:
            key = str(id_)
            if key not in records:
                raise ValueError(f"{splits_path}: id {key} of split {s!r} is not in {texts_path}")
            text, t_lab, i_lab, image = records[key]
            merged = _merge_sentiment(t_lab, i_lab)
            if merged is None:
                raise ValueError(
                    f"{splits_path}: id {key} of split {s!r} has text label {t_lab} and image "
                    f"label {i_lab}, which the merge rule drops"
                )
            path = folder / image
            if not path.is_file():
                raise FileNotFoundError(
                    f"{what}: image file {path} (id {key}, split {s!r}) not found; the "
                    f"mvsa_single/ folder must hold images/{{id}}.jpg. {_fix_hint('mvsa_single')}"
                )
            cols["id"].append(key)
            cols["text"].append(text)
            cols["image"].append(str(path))
            cols["label"].append(codes[merged])
            cols["text_label"].append(codes[t_lab])
            cols["image_label"].append(codes[i_lab])
            cols["label_agreement"].append(t_lab == i_lab)
        description = (
            f"MVSA-Single multimodal sentiment, split {s!r} from {splits_path} and {texts_path}. "
            "label merges text_label and image_label: equal labels stand, neutral yields to the "
            "other; label_agreement tells whether text_label == image_label."
        )
        out[s] = _build("mvsa_single", s, cols, features, description)
    return out


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------

_LOADERS = {"mmsd2": load_mmsd2, "mmsd": load_mmsd, "mvsa_single": load_mvsa_single}


_URL = re.compile(r"(https?://|www\.)\S+")
_MENTION = re.compile(r"@\w+")


def normalize_tweet(text: str) -> str:
    """URLs → ``"url"``, @mentions → ``"@user"``: the usual tweet normalisation.

    MVSA-Single's texts hold raw t.co links, which cost about 7 WordPieces each and carry
    nothing; the real-data benchmark maps it over every split's ``text`` column.
    """
    return _MENTION.sub("@user", _URL.sub("url", text))


def load_dataset_by_name(name: str, data_dir: PathLike | None = None, **kw: Any) -> DatasetDict:
    """Load one of :data:`DATASET_NAMES` (``"mmsd2"``, ``"mmsd"``, ``"mvsa_single"``).

    ``name`` is case-insensitive and ``-`` is read as ``_``; the keyword arguments go to the
    loader (``image_dir`` for the sarcasm datasets, ``splits`` for all).
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset name {name!r}; known names: {list(DATASET_NAMES)}")
    return _LOADERS[key](data_dir=data_dir, **kw)
