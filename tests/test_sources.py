"""Data named by a string (`mme_jd.data.sources`): the one dispatch behind `--dataset` / DATA of
train, evaluate, cues and inspect."""

from __future__ import annotations

import json

import datasets
import pytest

from mme_jd.data.sources import DATA_HELP, DATASET_NAMES, default_test_split, load_data, load_split


def test_synthetic_generates_the_asked_splits_and_rows():
    data = load_data("synthetic", ["train", "validation_balanced"], seed=1, num_train=24)
    assert list(data) == ["train", "validation_balanced"] and data["train"].num_rows == 24
    one, split = load_split("synthetic", rows=12, seed=1)
    assert split == "test_balanced" and list(one) == ["test_balanced"] and one[split].num_rows == 12
    assert load_split("synthetic", "train", rows=8)[0]["train"].num_rows == 8


def test_default_test_splits():
    assert default_test_split("synthetic") == "test_balanced"
    assert all(default_test_split(name) == "test" for name in DATASET_NAMES)
    assert default_test_split("MVSA-Single") == "test"  # names as load_dataset_by_name reads them
    assert default_test_split("some/folder") is None
    assert all(name in DATA_HELP for name in ("synthetic", *DATASET_NAMES, "save_to_disk", ".jsonl"))


def test_a_file_and_a_folder_load_as_they_are(tmp_path):
    rows = [{"text": "the movie was great", "image": "images/0.png", "label": "1"},
            {"text": "a terrible day", "image": None, "label": 0}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded, split = load_split(str(path), rows=5)
    assert split is None and isinstance(loaded, datasets.Dataset)
    assert loaded["label"] == [1, 0]  # digit strings become ids
    assert loaded["image"][0] == str(tmp_path / "images" / "0.png")  # relative to the file
    folder = tmp_path / "saved"
    datasets.DatasetDict({"test": loaded}).save_to_disk(str(folder))
    assert list(load_data(str(folder), ["ignored"])) == ["test"]
    with pytest.raises(FileNotFoundError, match="not 'synthetic'"):
        load_data(str(tmp_path / "missing"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no rows"):
        load_data(str(tmp_path / "empty.jsonl"))
