"""Declared cues: named, checkable properties of an input, and the groups they make.

    Cue("irony", pattern=r"#irony")                  a text cue: a regex searched in the text
    Cue("hashtags", tokens=["#not", "#sarcasm"])     a text cue: whole tokens, case-insensitive
    Cue("red", image="dominant hue", params={"hue": 0})   a built-in image cue
    Cue("logo", image=my_function)                   any function PIL image -> bool

Rows get one flag per cue (:func:`cue_flags`) and a group id ``label × cue presence``
(:func:`cue_group_ids`): with cues c_1..c_k, ``group = label · 2^k + Σ_j flag_j · 2^(k-j)``, so
two cues give 4 groups per label; with the synthetic benchmark's two cues declared in the
order (text, image) the ids equal its ``group`` column. :func:`add_cue_columns` computes the
flags once and keeps them as dataset columns ``cue_<name>`` plus ``cue_group``.

From the command line a cue is ``NAME=REGEX``, ``NAME=image:FUNCTION`` (a built-in function),
either as ``NAME:LABEL=...`` to declare the label it points to, or a JSON / YAML file of cue
objects (:func:`load_cues`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .image import IMAGE_CUE_FUNCTIONS

__all__ = [
    "CUE_GROUP_COLUMN",
    "Cue",
    "add_cue_columns",
    "cue_column",
    "cue_flags",
    "cue_group_ids",
    "cue_group_names",
    "load_cues",
    "parse_cue",
    "parse_cues",
]

logger = logging.getLogger("mme_jd")

#: The dataset column of the ``label × cue presence`` group ids.
CUE_GROUP_COLUMN = "cue_group"


def _token_pattern(tokens: Sequence[str]) -> str:
    """A regex matching any of `tokens` as a whole token, case-insensitively: not inside a
    longer word, hashtag or mention (so `#not` does not match `#nothing`)."""
    alternatives = "|".join(re.escape(t.strip()) for t in sorted(tokens, key=len, reverse=True) if t.strip())
    return rf"(?i)(?<![\w#@])(?:{alternatives})(?![\w])"


@dataclass(frozen=True)
class Cue:
    """A named cue: exactly one of `pattern` (text regex), `tokens` (text token list) or
    `image` (a built-in image cue name or a function of the PIL image returning a bool).

    params: keyword arguments of the image function (see `mme_jd.cues.image`); for a cue-only
        image counterfactual, ``params["keep_boxes"]`` (fractional [x0, y0, x1, y1] boxes)
        overrides the region kept (needed for a custom function).
    label: the label the cue points to (a class id or name); None: the class whose rate the
        cue raises most, estimated where it is needed (evaluation).
    """

    name: str
    pattern: str | None = None
    tokens: tuple[str, ...] | None = None
    image: str | Callable[..., bool] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    label: int | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[\w\- ]+", self.name):
            raise ValueError(f"cue name {self.name!r} must be a non-empty word (letters, digits, _ - or spaces): "
                             "it names a dataset column.")
        given = [k for k in ("pattern", "tokens", "image") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"cue {self.name!r}: give exactly one of pattern= (a text regex), tokens= (a text token "
                             f"list) or image= (an image function), got {given or 'none'}.")
        if self.tokens is not None:
            if isinstance(self.tokens, str) or not all(isinstance(t, str) and t.strip() for t in self.tokens):
                raise ValueError(f"cue {self.name!r}: tokens must be a list of non-empty strings, got {self.tokens!r}.")
            object.__setattr__(self, "tokens", tuple(self.tokens))
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except (re.error, TypeError) as error:
                raise ValueError(f"cue {self.name!r}: {self.pattern!r} is not a valid regular expression ({error}); "
                                 "escape special characters such as + ( [ with a backslash.") from None
        if isinstance(self.image, str) and self.image not in IMAGE_CUE_FUNCTIONS:
            raise ValueError(f"cue {self.name!r}: unknown image function {self.image!r}; built in: "
                             f"{sorted(IMAGE_CUE_FUNCTIONS)}, or pass a function of the PIL image.")
        if self.image is not None and not isinstance(self.image, str) and not callable(self.image):
            raise ValueError(f"cue {self.name!r}: image= must be a built-in name or a callable, got {self.image!r}.")

    @property
    def kind(self) -> str:
        """"text" or "image"."""
        return "image" if self.image is not None else "text"

    @property
    def text_pattern(self) -> str:
        """The regex of a text cue (a token list becomes a whole-token alternation)."""
        if self.kind != "text":
            raise ValueError(f"cue {self.name!r} is an image cue: it has no text pattern.")
        return self.pattern if self.pattern is not None else _token_pattern(self.tokens or ())

    @property
    def function_name(self) -> str:
        """The image function's name (a built-in name, else the callable's `__name__`)."""
        return self.image if isinstance(self.image, str) else getattr(self.image, "__name__", "custom")

    def in_text(self, text: str) -> bool:
        """Whether the text cue occurs in `text`."""
        return re.search(self.text_pattern, text or "") is not None

    def in_image(self, image: Any) -> bool:
        """Whether the image cue holds for `image` (any value `load_image` accepts)."""
        function = IMAGE_CUE_FUNCTIONS[self.image] if isinstance(self.image, str) else self.image
        params = {k: v for k, v in self.params.items() if k != "keep_boxes"}
        return bool(function(image, **params))

    def to_spec(self) -> dict[str, Any]:
        """The JSON-able spec `MMEJDConfig.cues` holds (a custom image function is kept by name
        only: its flags cannot be recomputed from a saved config, its region can)."""
        spec: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "text":
            spec["pattern"] = self.text_pattern
        else:
            spec["function"] = self.function_name
            spec["params"] = dict(self.params)
        if self.label is not None:
            spec["label"] = self.label
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Cue":
        """A cue from a spec dict or a JSON/YAML cue object: {"name", "pattern" | "tokens" |
        "image" | "function", "params", "label"} ("kind" is implied)."""
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"a cue object needs a 'name' and one of 'pattern', 'tokens' or 'image', got {spec!r}.")
        unknown = set(spec) - {"name", "kind", "pattern", "tokens", "image", "function", "params", "label"}
        if unknown:
            raise ValueError(f"cue {spec['name']!r}: unknown keys {sorted(unknown)}; allowed: name, pattern, tokens, "
                             "image (or function), params, label.")
        return cls(name=spec["name"], pattern=spec.get("pattern"),
                   tokens=tuple(spec["tokens"]) if spec.get("tokens") is not None else None,
                   image=spec.get("image", spec.get("function")), params=dict(spec.get("params") or {}),
                   label=spec.get("label"))


def parse_cue(argument: str) -> Cue:
    """A cue from ``NAME=REGEX`` or ``NAME=image:FUNCTION`` (the CLI's ``--cue``);
    ``NAME:LABEL=...`` also declares the label the cue points to (e.g. ``irony:sarcastic=#irony``)."""
    name, sep, value = argument.partition("=")
    if not sep or not name.strip() or not value:
        raise ValueError(f"--cue {argument!r}: expected NAME=REGEX (e.g. irony=#irony), NAME=image:FUNCTION "
                         f"(e.g. red=image:dominant hue), NAME:LABEL=... or a .json/.yaml file of cues.")
    name, _, label = name.partition(":")
    label_value: int | str | None = label.strip() or None
    if isinstance(label_value, str) and label_value.isdigit():
        label_value = int(label_value)
    if value.startswith("image:"):
        return Cue(name.strip(), image=value[len("image:"):].strip(), label=label_value)
    return Cue(name.strip(), pattern=value, label=label_value)


def load_cues(path: str | Path) -> list[Cue]:
    """Cues from a JSON or YAML file: a list of cue objects, or {name: cue object without
    'name' | a regex string}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cue file not found: {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # noqa: BLE001 - any parse error becomes one message naming the file
        raise ValueError(f"cannot read the cues of {str(path)!r}: {type(error).__name__}: {error}") from None
    if isinstance(data, dict):
        data = [{"name": k, **(v if isinstance(v, dict) else {"pattern": v})} for k, v in data.items()]
    if not isinstance(data, list):
        raise ValueError(f"{str(path)!r} must hold a list of cue objects or a {{name: cue}} mapping.")
    return [Cue.from_spec(item) for item in data]


def parse_cues(arguments: Iterable[str | Cue] | None) -> list[Cue]:
    """Cues from CLI arguments (each ``NAME=REGEX``, ``NAME=image:FUNCTION`` or a file) or
    Cue objects; names must be unique."""
    cues: list[Cue] = []
    for argument in arguments or ():
        if isinstance(argument, Cue):
            cues.append(argument)
        elif "=" not in argument and Path(argument).suffix.lower() in (".json", ".yaml", ".yml"):
            cues.extend(load_cues(argument))
        else:
            cues.append(parse_cue(argument))
    names = [c.name for c in cues]
    if len(set(names)) != len(names):
        raise ValueError(f"cue names must be unique, got {names}.")
    return cues


# ---------------------------------------------------------------------------- flags and groups


def cue_column(cue: Cue | str) -> str:
    """The dataset column holding a cue's flags: ``cue_<name>``."""
    return f"cue_{cue.name if isinstance(cue, Cue) else cue}"


def cue_flags(rows, cues: Sequence[Cue], text_column: str = "text", image_column: str = "image",
              progress: bool = False) -> dict[str, np.ndarray]:
    """{cue name: bool array, one flag per row} of a `datasets.Dataset` (or a dict of columns).

    Existing ``cue_<name>`` columns are reused (computed once). Rows without an image (MMSD's
    stand-in) have every image cue absent; that is announced once.
    """
    from tqdm.auto import tqdm

    columns = rows.column_names if hasattr(rows, "column_names") else list(rows)
    flags: dict[str, np.ndarray] = {}
    for cue in cues:
        if cue_column(cue) in columns:
            flags[cue.name] = np.asarray(rows[cue_column(cue)], dtype=bool)
        elif cue.kind == "text":
            if text_column not in columns:
                raise ValueError(f"text cue {cue.name!r} needs a {text_column!r} column; the rows have {columns}.")
            pattern = re.compile(cue.text_pattern)
            flags[cue.name] = np.array([pattern.search(t or "") is not None for t in rows[text_column]], dtype=bool)
        else:
            if image_column not in columns:
                raise ValueError(f"image cue {cue.name!r} needs an {image_column!r} column; the rows have {columns}.")
            images = rows.select_columns([image_column]) if hasattr(rows, "select_columns") else rows[image_column]
            values, missing = [], 0
            for item in tqdm(images, desc=f"cue {cue.name}", disable=not progress, leave=False):
                image = item[image_column] if isinstance(item, dict) else item
                missing += image is None
                values.append(image is not None and cue.in_image(image))
            if missing:
                logger.warning("image cue %r: %d of %d rows have no image; the cue counts as absent there.",
                               cue.name, missing, len(values))
            flags[cue.name] = np.asarray(values, dtype=bool)
    return flags


def cue_group_ids(labels, flags: Sequence[np.ndarray]) -> np.ndarray:
    """``label · 2^k + Σ_j flag_j · 2^(k-j)`` for k cues (flags in cue order)."""
    labels = np.asarray(labels, dtype=np.int64)
    groups = labels * (1 << len(flags))
    for j, flag in enumerate(flags):
        groups = groups + np.asarray(flag, dtype=np.int64) * (1 << (len(flags) - 1 - j))
    return groups


def cue_group_names(cue_names: Sequence[str], label_names: Sequence[str]) -> list[str]:
    """One name per group id of :func:`cue_group_ids`, e.g. ``"sarcastic|irony=1|red=0"``."""
    names = []
    for label in label_names:
        for bits in range(1 << len(cue_names)):
            parts = [f"{name}={(bits >> (len(cue_names) - 1 - j)) & 1}" for j, name in enumerate(cue_names)]
            names.append("|".join([str(label), *parts]))
    return names


def add_cue_columns(data, cues: Sequence[Cue], label_column: str = "label", progress: bool = False):
    """`data` (a Dataset or DatasetDict) with a bool column ``cue_<name>`` per cue and the
    ``cue_group`` column (:func:`cue_group_ids`; without a label column, no group column).

    Computed once: existing ``cue_<name>`` columns are kept as they are (rename a cue to
    recompute it); ``cue_group`` is rewritten from the flags of exactly these cues.
    """
    import datasets

    if isinstance(data, datasets.DatasetDict):
        return datasets.DatasetDict({split: add_cue_columns(rows, cues, label_column, progress)
                                     for split, rows in data.items()})
    if not cues:
        raise ValueError("add_cue_columns needs at least one cue; declare one with mme_jd.cues.Cue(...).")
    flags = cue_flags(data, cues, progress=progress)
    for cue in cues:
        if cue_column(cue) not in data.column_names:
            data = data.add_column(cue_column(cue), flags[cue.name].tolist())
    if label_column in data.column_names:
        groups = cue_group_ids(data[label_column], [flags[c.name] for c in cues])
        if CUE_GROUP_COLUMN in data.column_names:
            data = data.remove_columns(CUE_GROUP_COLUMN)
        data = data.add_column(CUE_GROUP_COLUMN, groups.tolist())
    return data
