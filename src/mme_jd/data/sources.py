"""Data named by a string: what `--dataset` / DATA means on the command line, in one place.

    "synthetic"                      the synthetic benchmark, generated (`make_synthetic_benchmark`)
    "mmsd2", "mmsd", "mvsa_single"   the real datasets (`DATASET_NAMES`, loaded by
                                     `data.real.load_dataset_by_name`; case-insensitive, "-" read as "_")
    a folder                         a `datasets.save_to_disk` folder, as saved
    a .jsonl / .csv file             one `datasets.Dataset` of its text / image / label rows
                                     (image paths relative to the file)

`mme-jd train` / `python -m mme_jd.training` load their data with `load_data`; `mme-jd
evaluate`, `cues`, `inspect` and the browser check, which look at one split, with `load_split`;
`read_rows` also reads the input file of `mme-jd predict`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNTHETIC = "synthetic"
#: The real datasets `data.real` loads (named here, so that naming them needs no `datasets` import).
DATASET_NAMES: tuple[str, ...] = ("mmsd2", "mmsd", "mvsa_single")
#: How a command's help names the data it takes.
DATA_HELP = f"'{SYNTHETIC}', " + ", ".join(f"'{name}'" for name in DATASET_NAMES) + (
    ", a datasets.save_to_disk folder or a .jsonl/.csv file with text, image (and label) columns")

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class UnreadableRow:
    """A JSONL line that is not a JSON object (invalid JSON, an array, a number ...), kept in
    its place by `read_rows(..., keep_unreadable=True)` so that `--on-error report` predicts the
    other rows and reports this one as a bad row."""

    text: str
    problem: str


def read_rows(path: str | os.PathLike, input_format: str | None = None, *,
              keep_unreadable: bool = False) -> list[dict | UnreadableRow]:
    """The rows of a JSONL file (one JSON object per line, blank lines skipped) or a CSV file
    with a header; a UTF-8 byte order mark at the start is skipped. Raises FileNotFoundError /
    ValueError with the line at fault; with `keep_unreadable`, a JSONL line that is not a JSON
    object becomes an `UnreadableRow` instead (CSV errors still raise: the reader cannot resync)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {str(path)!r}")
    fmt = input_format or ("csv" if path.suffix.lower() == ".csv" else
                           "jsonl" if path.suffix.lower() in _JSONL_SUFFIXES else None)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its extension; use .jsonl or .csv, or --format."
        )
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return [dict(row) for row in csv.DictReader(handle)]
        rows: list[dict | UnreadableRow] = []
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                problem = None
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    problem = f"{path.name} line {number}: invalid JSON ({error.msg})."
                except (ValueError, RecursionError) as error:  # a 5000-digit number, nesting 10^5 deep
                    problem = f"{path.name} line {number}: unreadable JSON ({type(error).__name__}: {error})."
                else:
                    if not isinstance(row, dict):
                        problem = f"{path.name} line {number}: expected a JSON object, got {type(row).__name__}."
                if problem is None:
                    rows.append(row)
                elif keep_unreadable:
                    rows.append(UnreadableRow(line.rstrip("\r\n"), problem))
                else:
                    raise ValueError(problem)
        return rows
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} is not UTF-8 text ({error.reason}).") from None
    except csv.Error as error:
        raise ValueError(f"{str(path)!r} is not a valid CSV file ({error}).") from None


def _dataset_name(data: str) -> str | None:
    """The real dataset `data` names (as `load_dataset_by_name` reads it), else None."""
    key = data.strip().lower().replace("-", "_")
    return key if key in DATASET_NAMES else None


def default_test_split(data: str) -> str | None:
    """The split a named dataset is tested on ("test_balanced" for the synthetic benchmark,
    "test" for the real ones); None for a folder or file, whose own splits decide."""
    if data == SYNTHETIC:
        return "test_balanced"
    return "test" if _dataset_name(data) is not None else None


def _rows_of_file(path: Path) -> Any:
    import datasets

    records = read_rows(path)
    if not records:
        raise ValueError(f"{str(path)!r} holds no rows.")
    for record in records:
        image = record.get("image")
        if isinstance(image, str) and image.strip() and not os.path.isabs(image):
            record["image"] = str(path.resolve().parent / image)
        if isinstance(record.get("label"), str) and record["label"].strip().lstrip("-").isdigit():
            record["label"] = int(record["label"])
    return datasets.Dataset.from_list(records)


def load_data(data: str, splits: Sequence[str] | None = None, data_dir: str | os.PathLike | None = None, *,
              seed: int = 0, **synthetic: Any) -> Any:
    """The data `data` names (see the module docstring).

    Args:
        data: "synthetic", a real dataset's name, a `save_to_disk` folder or a .jsonl/.csv file.
        splits: the splits to generate or load (None: all of a named dataset's). A folder or
            file is returned as it is: its user picks the split.
        data_dir: the folder of the real datasets (default: `data.real.default_data_dir()`).
        seed: the synthetic benchmark's seed.
        synthetic: keyword arguments of `make_synthetic_benchmark` (row counts, `p_cue`),
            ignored for other data.

    Returns a `datasets.DatasetDict` (a named dataset or a folder of one) or a `datasets.Dataset`.
    """
    if data == SYNTHETIC:
        from .synthetic import make_synthetic_benchmark

        return make_synthetic_benchmark(seed=seed, splits=splits, **synthetic)
    name = _dataset_name(data)
    if name is not None:
        from .real import load_dataset_by_name

        return load_dataset_by_name(name, data_dir=data_dir, splits=list(splits) if splits else None)
    path = Path(data)
    if path.is_file():
        return _rows_of_file(path)
    if path.is_dir():
        import datasets

        return datasets.load_from_disk(str(path))
    raise FileNotFoundError(f"dataset {data!r}: not {DATA_HELP}.")


def load_split(data: str, split: str | None = None, data_dir: str | os.PathLike | None = None, *,
               rows: int | None = None, seed: int = 0, **synthetic: Any) -> tuple[Any, str | None]:
    """(dataset, split) for a command that looks at one split (evaluate, cues, inspect): of a
    named dataset, only `split` (default: `default_test_split(data)`), `rows` rows when
    generated; a folder or file as it is, with `split` (None: its user picks).

    `synthetic`: more keyword arguments of `make_synthetic_benchmark` (`p_cue`)."""
    split = split or default_test_split(data)
    if rows is not None:
        synthetic = {"num_train": rows, "num_validation": rows, "num_test": rows, **synthetic}
    return load_data(data, [split] if split else None, data_dir, seed=seed, **synthetic), split


def resolve_split(dataset: Any, split: str | None = None) -> tuple[Any, str | None]:
    """(rows, split) of what a user handed a command: a `datasets.Dataset` as it is; a
    DatasetDict's `split` (None: its only split, else "test"); a `save_to_disk` folder of either.
    Clear `ValueError`s for a missing split, a split given to a Dataset, no rows."""
    import datasets

    if isinstance(dataset, (str, os.PathLike)):
        dataset = datasets.load_from_disk(os.fspath(dataset))
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            if len(dataset) == 1:
                split = next(iter(dataset))
            elif "test" in dataset:
                split = "test"
            else:
                raise ValueError(f"the dataset has splits {list(dataset)}: pass split= to choose one.")
        if split not in dataset:
            raise ValueError(f"the dataset has no split {split!r}; it has {list(dataset)}.")
        return dataset[split], split
    if split is not None:
        raise ValueError("split= is only for a DatasetDict; a Dataset is evaluated as it is.")
    if len(dataset) == 0:
        raise ValueError("the dataset has no rows: give it at least one.")
    return dataset, None


__all__ = ["DATA_HELP", "DATASET_NAMES", "SYNTHETIC", "UnreadableRow", "default_test_split", "load_data", "load_split",
           "read_rows", "resolve_split"]
