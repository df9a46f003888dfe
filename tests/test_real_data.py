"""Tests of the real-dataset loaders (mme_jd.data.real).

Two kinds of tests:
* on the real files in ``../shared/data`` (found with ``default_data_dir()``), skipped with a
  clear reason when the folder or a file is absent;
* on tiny hand-written data folders under ``tmp_path`` (always run): error messages, the
  ``image_dir`` mode with a few fake jpgs, the stand-in text.
"""

from __future__ import annotations

import ast
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image as PILImage

from mme_jd.data import real
from mme_jd.data.real import (
    MMSD_IMAGE_STAND_IN,
    SARCASM_LABELS,
    SENTIMENT_LABELS,
    default_data_dir,
    load_dataset_by_name,
    load_mmsd,
    load_mmsd2,
    load_mvsa_single,
    normalize_tweet,
)

REQUIRED = {
    "mmsd2": ["mmsd2/train.json", "mmsd2/valid.json", "mmsd2/test.json", "mmsd1/image_attributes.txt"],
    "mmsd": [
        "mmsd1/train.txt",
        "mmsd1/valid2.txt",
        "mmsd1/test2.txt",
        "mmsd1/image_attributes.txt",
        "mmsd2/train.json",
        "mmsd2/valid.json",
        "mmsd2/test.json",
    ],
    "mvsa_single": ["mvsa_single/texts.jsonl", "mvsa_single/splits.json", "mvsa_single/images"],
}


def _real_root(name: str) -> Path:
    root = default_data_dir()
    if root is None:
        pytest.skip(
            "real data not found: MME_JD_DATA_DIR is not set and ../shared/data beside the "
            "repository root does not exist"
        )
    missing = [f for f in REQUIRED[name] if not (root / f).exists()]
    if missing:
        pytest.skip(f"real {name} data incomplete in {root}: missing {missing}")
    return root


@pytest.fixture(scope="module")
def mmsd2_real():
    return load_mmsd2(_real_root("mmsd2"))


@pytest.fixture(scope="module")
def mmsd_real():
    return load_mmsd(_real_root("mmsd"))


@pytest.fixture(scope="module")
def mvsa_real():
    return load_mvsa_single(_real_root("mvsa_single"))


# ------------------------------------------------------------------------------------------
# Real data
# ------------------------------------------------------------------------------------------


def test_mmsd2_rows_and_features(mmsd2_real):
    assert {k: v.num_rows for k, v in mmsd2_real.items()} == {
        "train": 19816,
        "validation": 2410,
        "test": 2409,
    }
    ds = mmsd2_real["train"]
    assert list(ds.features) == ["id", "text", "label", "image", "image_description"]
    assert ds.features["label"].names == list(SARCASM_LABELS)
    row = ds[0]
    assert isinstance(row["id"], str) and row["id"].isdigit()
    assert row["image"] is None and len(row["image_description"].split()) == 5
    assert all(d is not None for d in ds["image_description"])


def test_mmsd_rows_and_join(mmsd_real, mmsd2_real):
    assert {k: v.num_rows for k, v in mmsd_real.items()} == {
        "train": 19816,
        "validation": 2410,
        "test": 2409,
    }
    train, train2 = mmsd_real["train"], mmsd2_real["train"]
    assert list(train.features) == [
        "id",
        "text",
        "label",
        "hashtag_label",
        "annotator_label",
        "mmsd2_label",
        "image",
        "image_description",
    ]
    # Restricted to exactly the MMSD2.0 training ids, with MMSD2.0's label joined by id.
    assert set(train["id"]) == set(train2["id"])
    labels2 = dict(zip(train2["id"], train2["label"]))
    assert train["mmsd2_label"] == [labels2[i] for i in train["id"]]
    assert sum(a != b for a, b in zip(train["label"], train["mmsd2_label"])) == 934
    assert train["hashtag_label"] == train["label"]
    assert set(train["annotator_label"]) == {None}
    # Validation / test: label is the annotator label, both source labels kept.
    for split in ("validation", "test"):
        ds = mmsd_real[split]
        assert ds["label"] == ds["annotator_label"]
        assert None not in ds["hashtag_label"] and None not in ds["mmsd2_label"]
        assert set(ds["id"]) == set(mmsd2_real[split]["id"])


def test_mmsd_text_keeps_hashtag_and_emoji_cues(mmsd_real):
    train = mmsd_real["train"]
    with_hash = [y for t, y in zip(train["text"], train["label"]) if "#" in t]
    without = [y for t, y in zip(train["text"], train["label"]) if "#" not in t]
    # Measured on the 19,816 joined ids: 0.6048 (9,450 texts) against 0.2824 (10,366 texts).
    assert sum(with_hash) / len(with_hash) == pytest.approx(0.605, abs=0.002)
    assert sum(without) / len(without) == pytest.approx(0.282, abs=0.002)
    assert sum("emoji_" in t for t in train["text"]) > 1000


def test_mvsa_rows_labels_and_image(mvsa_real):
    assert {k: v.num_rows for k, v in mvsa_real.items()} == {
        "train": 3608,
        "validation": 451,
        "test": 452,
    }
    ds = mvsa_real["train"]
    assert list(ds.features) == [
        "id",
        "text",
        "image",
        "label",
        "text_label",
        "image_label",
        "label_agreement",
    ]
    for col in ("label", "text_label", "image_label"):
        assert ds.features[col].names == list(SENTIMENT_LABELS)
    counts: Counter[str] = Counter()
    for split in mvsa_real.values():
        counts.update(SENTIMENT_LABELS[y] for y in split["label"])
        agree = split["label_agreement"]
        assert agree == [t == i for t, i in zip(split["text_label"], split["image_label"])]
    assert counts == {"positive": 2683, "negative": 1358, "neutral": 470}
    image = ds[0]["image"]
    assert isinstance(image, PILImage.Image)
    assert max(image.size) <= 256 and image.size[0] > 0


def test_normalize_tweet_replaces_links_and_mentions_only():
    text = "@bob_1 look https://t.co/AbC12 and www.x.org/a?b=1 # irony emoji_12 @ alone"
    assert normalize_tweet(text) == "@user look url and url # irony emoji_12 @ alone"
    assert normalize_tweet("no links here") == "no links here"


def test_stand_in_is_announced_and_described(caplog):
    root = _real_root("mmsd2")
    with caplog.at_level(logging.WARNING, logger="mme_jd"):
        dd = load_mmsd2(root, splits=["validation"])
    assert list(dd) == ["validation"]
    warnings = [r for r in caplog.records if r.name == "mme_jd" and r.levelno == logging.WARNING]
    assert warnings and "stand-in" in warnings[0].getMessage()
    ds = dd["validation"]
    assert MMSD_IMAGE_STAND_IN in ds.info.description
    # The description is the five attribute words of that id, read here independently.
    first_id = ds[0]["id"]
    with open(root / "mmsd1/image_attributes.txt", encoding="utf-8") as fh:
        words = next(ast.literal_eval(line)[1:] for line in fh if f"'{first_id}'" in line)
    assert ds[0]["image_description"] == " ".join(words)
    assert set(ds["image"]) == {None}


def test_dataset_own_folder_and_dispatch():
    root = _real_root("mmsd")
    assert load_mmsd2(root / "mmsd2", splits="test")["test"].num_rows == 2409
    assert load_mmsd(root / "mmsd1", splits=["validation"])["validation"].num_rows == 2410
    root = _real_root("mvsa_single")
    dd = load_dataset_by_name("mvsa_single", root / "mvsa_single", splits=["validation"])
    assert dd["validation"].num_rows == 451


# ------------------------------------------------------------------------------------------
# Tiny hand-written data folders
# ------------------------------------------------------------------------------------------

MINI = {  # split -> [(id, text, mmsd2 label)]
    "train": [("101", "what a great day", 1), ("102", "rain again", 0), ("103", "i love mondays", 1)],
    "validation": [("201", "nice weather", 0), ("202", "best service ever", 1)],
    "test": [("301", "so fun", 1), ("302", "a cat", 0)],
}
WORDS = ["red", "cat", "sitting", "small", "table"]


def _write_mini(root: Path) -> Path:
    """A data folder with mmsd2/ and mmsd1/ for the ids of MINI; returns root."""
    (root / "mmsd2").mkdir(parents=True)
    (root / "mmsd1").mkdir()
    names2 = {"train": "train.json", "validation": "valid.json", "test": "test.json"}
    for split, rows in MINI.items():
        items = [{"image_id": int(i), "text": t, "label": y} for i, t, y in rows]
        (root / "mmsd2" / names2[split]).write_text(json.dumps(items), encoding="utf-8")
    train = [repr([i, f"{t} # sarcasm emoji_12 ", 1 - y if i == "102" else y]) for i, t, y in MINI["train"]]
    train.insert(1, repr(["999", "not in mmsd2 # tag", 1]))  # dropped by the restriction
    (root / "mmsd1" / "train.txt").write_text("\r\n".join(train) + "\r\n", encoding="utf-8")
    for split, name in (("validation", "valid2.txt"), ("test", "test2.txt")):
        lines = [repr([i, f"{t} # tag", 1, y]) for i, t, y in MINI[split]]
        (root / "mmsd1" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = [i for rows in MINI.values() for i, _, _ in rows]
    attrs = [repr([i, *WORDS]) for i in ids]
    (root / "mmsd1" / "image_attributes.txt").write_text("\n".join(attrs) + "\n", encoding="utf-8")
    return root


def _write_images(folder: Path, ids) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(ids):
        PILImage.new("RGB", (8 + k, 6), (10 * k, 0, 0)).save(folder / f"{i}.jpg")


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MME_JD_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_mini_stand_in_and_restriction(tmp_path, caplog):
    root = _write_mini(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mme_jd"):
        dd = load_mmsd(root)
    assert any("stand-in" in r.getMessage() for r in caplog.records if r.name == "mme_jd")
    train = dd["train"]
    assert train["id"] == ["101", "102", "103"]  # id 999 is not in MMSD2.0's train.json
    assert train["text"][0] == "what a great day # sarcasm emoji_12"
    assert train["label"] == [1, 1, 1] and train["mmsd2_label"] == [1, 0, 1]
    assert dd["validation"]["label"] == [0, 1] and dd["validation"]["hashtag_label"] == [1, 1]
    for ds in dd.values():
        assert set(ds["image_description"]) == {" ".join(WORDS)}
        assert MMSD_IMAGE_STAND_IN in ds.info.description


def test_image_dir_mode(tmp_path, caplog):
    root = _write_mini(tmp_path / "data")
    images = tmp_path / "images"
    all_ids = [i for rows in MINI.values() for i, _, _ in rows]
    _write_images(images, all_ids)
    with caplog.at_level(logging.WARNING, logger="mme_jd"):
        dd = load_mmsd2(root, image_dir=images)
        dd1 = load_mmsd(root, image_dir=images, splits=["train"])
    assert not [r for r in caplog.records if r.name == "mme_jd"]  # no stand-in, no warning
    row = dd["train"][1]
    assert row["id"] == "102" and row["image_description"] is None
    assert isinstance(row["image"], PILImage.Image) and row["image"].size == (9, 6)
    assert dd1["train"][2]["image"].size == (10, 6)
    assert "stand-in" not in dd["train"].info.description.lower()

    (images / "202.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"202\.jpg"):
        load_mmsd2(root, image_dir=images)
    # Only the requested splits need their images.
    assert load_mmsd2(root, image_dir=images, splits=["train", "test"])["test"].num_rows == 2


def test_missing_file_message(tmp_path, monkeypatch):
    _write_mini(tmp_path)
    (tmp_path / "mmsd2" / "valid.json").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mmsd2(tmp_path)
    msg = str(info.value)
    assert "valid.json" in msg and str(tmp_path / "mmsd2" / "valid.json") in msg
    assert "data_dir=" in msg and "MME_JD_DATA_DIR" in msg
    assert load_mmsd2(tmp_path, splits=["train"])["train"].num_rows == 3

    (tmp_path / "mmsd1" / "image_attributes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image_attributes.txt"):
        load_mmsd2(tmp_path, splits=["train"])
    with pytest.raises(FileNotFoundError, match="texts.jsonl"):
        load_mvsa_single(tmp_path)

    monkeypatch.setattr(real, "default_data_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="MME_JD_DATA_DIR"):
        load_mmsd2()


def test_malformed_lines(tmp_path):
    root = _write_mini(tmp_path / "a")
    path = root / "mmsd1" / "train.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = "['999', 'unterminated"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.txt.*line 2"):
        load_mmsd(root, splits=["train"])

    path = root / "mmsd1" / "valid2.txt"
    path.write_text(path.read_text(encoding="utf-8") + "['1', 'three fields only', 1]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"valid2\.txt.*line 3"):
        load_mmsd(root, splits=["validation"])

    broken = '[{"image_id": 1, "text": "x", "label": 1},\n{"image_id": 2,'
    (root / "mmsd2" / "test.json").write_text(broken, encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.json.*line 2"):
        load_mmsd2(root, splits=["test"])
    (root / "mmsd2" / "test.json").write_text('[{"image_id": 1, "text": "x", "label": 7}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.json.*item 0"):
        load_mmsd2(root, splits=["test"])

    mvsa = tmp_path / "b" / "mvsa_single"
    mvsa.mkdir(parents=True)
    rec = {"id": "1", "text": "hi", "text_label": "positive", "image_label": "neutral"}
    bad = dict(rec, id="2", text_label="happy")
    (mvsa / "texts.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    (mvsa / "splits.json").write_text(json.dumps({"train": ["1"], "validation": [], "test": []}))
    with pytest.raises(ValueError, match=r"texts\.jsonl.*line 2"):
        load_mvsa_single(mvsa.parent)


def test_mini_mvsa(tmp_path):
    folder = tmp_path / "mvsa_single"
    labels = {"1": ("positive", "neutral"), "2": ("negative", "negative"), "3": ("neutral", "negative")}
    folder.mkdir()
    with open(folder / "texts.jsonl", "w", encoding="utf-8") as fh:
        for i, (t, im) in labels.items():
            rec = {"id": i, "text": f"t{i}", "text_label": t, "image_label": im}
            fh.write(json.dumps(dict(rec, image=f"images/{i}.jpg")) + "\n")
    (folder / "splits.json").write_text(json.dumps({"train": ["1", "2"], "validation": ["3"], "test": []}))
    _write_images(folder / "images", labels)
    dd = load_dataset_by_name("MVSA-Single", folder)  # the dataset's own folder
    assert dd["train"]["label"] == [2, 0] and dd["validation"]["label"] == [0]
    assert dd["train"]["label_agreement"] == [False, True] and dd["test"].num_rows == 0
    assert isinstance(dd["validation"][0]["image"], PILImage.Image)
    (folder / "images" / "2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2\.jpg"):
        load_mvsa_single(folder)


def test_bad_names(tmp_path):
    _write_mini(tmp_path)
    with pytest.raises(ValueError, match="allowed.*train.*validation.*test"):
        load_mmsd2(tmp_path, splits=["train", "dev"])
    with pytest.raises(ValueError, match="mmsd2.*mmsd.*mvsa_single"):
        load_dataset_by_name("twitter15", tmp_path)
    assert list(load_dataset_by_name("mmsd2", tmp_path, splits=["test", "train"])) == ["train", "test"]
