"""Bad input to the `multimodal-debias` pipeline: each case is handled (colour modes converted,
huge images shrunk) or raises a ValueError naming the input's index and the problem; a bad item
in a batch is reported, never dropped; a fuzz run of a few hundred random inputs raises nothing
else."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch
from conftest import random_images, write_bomb_png
from PIL import Image
from transformers import pipeline

import mme_jd  # noqa: F401  (registers the task)
from mme_jd.data.images import load_image
from mme_jd.modeling import inputs_mme_jd

GOOD_TEXT = "the movie was great #irony"


@pytest.fixture
def pipe(tiny_llava_model):
    return pipeline("multimodal-debias", model=tiny_llava_model)


@pytest.fixture
def good_image():
    return random_images(1, seed=5)[0]


@pytest.fixture
def files(tmp_path, good_image):
    paths = {"good": tmp_path / "good.png", "corrupt": tmp_path / "corrupt.png", "empty": tmp_path / "empty.jpg",
             "text": tmp_path / "notes.txt", "truncated": tmp_path / "truncated.png", "folder": tmp_path / "a_folder"}
    good_image.save(paths["good"])
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("not an image")
    paths["truncated"].write_bytes(paths["good"].read_bytes()[:60])
    paths["folder"].mkdir()
    return paths


def _raises(pipe, inputs, *words, index=0, **kwargs):
    with pytest.raises(ValueError) as caught:
        pipe(inputs, **kwargs)
    message = str(caught.value)
    assert f"input {index}:" in message, message
    for word in words:
        assert word in message, message
    return message


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize("case, words", [
    ("missing", ("not found",)),
    ("corrupt", ("not an image",)),
    ("empty", ("is empty (0 bytes)",)),
    ("text", ("not an image",)),
    ("truncated", ("cannot read",)),
    ("folder", ("folder",)),
])
def test_bad_image_files(pipe, files, case, words):
    path = files.get(case, files["good"].with_name("missing.png"))
    _raises(pipe, {"image": str(path), "text": GOOD_TEXT}, *words)


def test_unreadable_file(pipe, files):
    os.chmod(files["good"], 0)
    try:
        if os.access(files["good"], os.R_OK):
            pytest.skip("running as a user that can read any file (root)")
        _raises(pipe, {"image": str(files["good"]), "text": GOOD_TEXT}, "permission denied")
    finally:
        os.chmod(files["good"], 0o644)


@pytest.mark.parametrize("value, words", [
    (12, ("unsupported image type int",)),
    (["a"], ("unsupported image type list",)),
    ("http://example.com/cat.png", ("URLs are not fetched",)),
    ("", ("path is empty",)),
    (b"", ("bytes are empty",)),
    (b"garbage", ("not an image",)),
    ({"url": "x"}, ("'bytes' or 'path'",)),
    (np.zeros((2, 2, 2)), ("H×W",)),
    (np.zeros((0, 4, 3)), ("H×W",)),
    (np.full((4, 4), np.nan), ("NaN",)),
    (np.array([["a", "b"]]), ("cannot read the image array",)),
    (np.zeros((4, 4), dtype=complex), ("complex",)),
])
def test_bad_image_values(pipe, value, words):
    _raises(pipe, {"image": value, "text": GOOD_TEXT}, *words)


def test_image_none_is_rejected_by_a_stand_in_model(pipe):
    """A model that read image-less rows as the grey stand-in refuses a text-only input here
    (a text_only model takes it: tests/test_pipeline.py)."""
    pipe.model.config.image_less_rows = "stand_in"
    try:
        _raises(pipe, {"image": None, "text": GOOD_TEXT}, "image is None", "image_less_rows='text_only'")
    finally:
        pipe.model.config.image_less_rows = "text_only"


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "PA", "CMYK", "1", "I;16", "I", "F", "YCbCr", "HSV"])
def test_colour_modes_are_converted(pipe, good_image, mode):
    image = good_image.convert(mode) if mode not in ("I;16",) else good_image.convert("L").convert("I;16")
    assert load_image(image).mode == "RGB"
    result = pipe({"image": image, "text": GOOD_TEXT})
    assert result["label"] in ("not_sarcastic", "sarcastic")


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (8, 8))
    palette.info["transparency"] = 0
    assert load_image(palette).mode == "RGB"


def test_arrays_and_other_sources_are_accepted(pipe, good_image, files):
    array = np.array(good_image)  # writable: torch.from_numpy warns on a read-only array
    sources = [array, array / 255.0, torch.from_numpy(array).permute(2, 0, 1), array[..., 0],
               files["good"].read_bytes(), io.BytesIO(files["good"].read_bytes()), files["good"],
               {"bytes": files["good"].read_bytes(), "path": None}, {"path": str(files["good"])}]
    results = pipe([{"image": source, "text": GOOD_TEXT} for source in sources])
    reference = pipe({"image": good_image, "text": GOOD_TEXT})
    for result in results[:3] + results[4:]:
        assert abs(result["scores"]["sarcastic"] - reference["scores"]["sarcastic"]) < 1e-5
    assert results[3]["label"] in ("not_sarcastic", "sarcastic")  # greyscale from one channel


def test_huge_images_are_shrunk(pipe, tmp_path, monkeypatch):
    huge = Image.new("RGB", (3000, 2100), (10, 200, 30))
    loaded = load_image(huge)
    assert max(loaded.size) == inputs_mme_jd.MAX_IMAGE_SIDE
    assert loaded.size[0] / loaded.size[1] == pytest.approx(3000 / 2100, rel=1e-2)
    assert pipe({"image": huge, "text": GOOD_TEXT})["label"]
    path = tmp_path / "huge.jpg"
    huge.save(path, quality=50)
    assert max(load_image(str(path)).size) <= inputs_mme_jd.MAX_IMAGE_SIDE
    # beyond Pillow's decompression-bomb limit: a ValueError, not a DecompressionBombError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _raises(pipe, {"image": str(path), "text": GOOD_TEXT}, "too large")


def test_one_pixel_limit_between_pillows_warning_and_error(pipe, files, monkeypatch):
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that, and decodes: the pipeline
    refuses every image above MAX_IMAGE_PIXELS, the limit its message states."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 40×44 good image has 1,760 pixels
    path = files["good"]
    with pytest.warns(Image.DecompressionBombWarning):  # all Pillow does on its own
        lazy = Image.open(path)
    for source in (str(path), path.read_bytes(), lazy):  # a file, bytes, a PIL image not decoded yet
        _raises(pipe, {"image": source, "text": GOOD_TEXT}, "too large", "the limit is 1,000 pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert pipe({"image": str(path), "text": GOOD_TEXT})["label"]


def test_real_decompression_bomb_is_refused_from_its_header(pipe, tmp_path):
    """A 20 KB PNG of 13000×13000 pixels (1.3 GB as RGB) is refused before any decoding."""
    path = tmp_path / "bomb.png"
    write_bomb_png(path)
    assert path.stat().st_size < 50_000 and Image.MAX_IMAGE_PIXELS < 13000**2 < 2 * Image.MAX_IMAGE_PIXELS
    reported = pipe([{"image": str(path), "text": GOOD_TEXT}, {"image": random_images(1)[0], "text": GOOD_TEXT}],
                    errors="report")
    assert reported[0]["error"].startswith("input 0: ") and "169,000,000 pixels" in reported[0]["error"]
    assert f"the limit is {Image.MAX_IMAGE_PIXELS:,} pixels" in reported[0]["error"]
    assert reported[1]["label"]


# ---------------------------------------------------------------------------- text, labels, types


@pytest.mark.parametrize("text, words", [
    (None, ("text is None",)),
    ("", ("text is empty",)),
    ("   \n", ("text is empty",)),
    (42, ("text must be a string, got int",)),
    (["a"], ("text must be a string, got list",)),
    ("look <image> here", ("image placeholder",)),
    ("bad \udcff", ("not valid Unicode", "lone surrogate '\\udcff'")),
    ("\ud83d alone", ("not valid Unicode",)),
    ("word " * 400, ("tokens", "positions")),
])
def test_bad_text(pipe, good_image, text, words):
    _raises(pipe, {"image": good_image, "text": text}, *words)


def test_labels(pipe, good_image):
    assert pipe({"image": good_image, "text": GOOD_TEXT, "label": "sarcastic"})["true_label"] == "sarcastic"
    assert pipe({"image": good_image, "text": GOOD_TEXT, "label": 0})["true_label"] == "not_sarcastic"
    assert pipe({"image": good_image, "text": GOOD_TEXT, "label": "1"})["true_label"] == "sarcastic"
    assert pipe({"image": good_image, "text": GOOD_TEXT, "label": " 1 "})["true_label"] == "sarcastic"
    # "²" and "--1" pass str.isdigit after lstrip("-") but int() refuses them; 5000 digits exceed int()'s limit
    for label in ("ironic", 7, -1, True, 1.5, "-1", "²", "--1", "9" * 5000, "1e3", ""):
        _raises(pipe, {"image": good_image, "text": GOOD_TEXT, "label": label}, "is not one of the model's labels")


@pytest.mark.parametrize("item", [
    {"image": "images/" + "a" * 100_000 + ".png", "text": GOOD_TEXT},
    {"image": "http://x/" + "a" * 100_000, "text": GOOD_TEXT},
    {"image": "a\x00" * 10_000, "text": GOOD_TEXT},
    {"image": random_images(1)[0], "text": GOOD_TEXT, "label": "9" * 100_000},
    {"image": random_images(1)[0], "text": GOOD_TEXT, "label": 10**5000},  # an int too long for repr()
])
def test_long_values_are_shortened_in_messages(pipe, item):
    message = _raises(pipe, item)
    assert (len(message) < 400 and " ... " in message) or "too large to print" in message, message


@pytest.mark.parametrize("inputs, words", [
    ("just a string", ("inputs must be a dict",)),
    (42, ("inputs must be a dict",)),
    ([42], ("input 0: expected a dict",)),
    ([{"text": GOOD_TEXT}], ("missing 'image'",)),
    ([{"image": "x.png"}], ("missing 'text'",)),
])
def test_wrong_types(pipe, inputs, words):
    with pytest.raises(ValueError) as caught:
        pipe(inputs)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_bad_arguments(pipe, good_image):
    item = {"image": good_image, "text": GOOD_TEXT}
    for kwargs, words in (({"mode": "fast"}, "not a debiasing mode"), ({"top_k": 0}, "top_k"),
                          ({"batch_size": 0}, "batch_size"), ({"errors": "ignore"}, "errors"),
                          ({"explain": "yes"}, "explain"), ({"colour": 1}, "unknown argument")):
        with pytest.raises(ValueError, match=words):
            pipe(item, **kwargs)
    with pytest.raises(ValueError, match="one text per image"):
        pipe(images=[good_image, good_image], text=["a"])
    with pytest.raises(ValueError, match="not both"):
        pipe(item, text="x")
    with pytest.raises(ValueError, match="no input"):
        pipe()


# ---------------------------------------------------------------------------- batches


def test_one_bad_item_in_a_batch_is_reported(pipe, files):
    images = random_images(5, seed=9)
    inputs = [{"image": image, "text": GOOD_TEXT} for image in images]
    clean = pipe(inputs, batch_size=2)
    inputs[3] = {"image": str(files["corrupt"]), "text": GOOD_TEXT}  # found when decoding, in the 2nd batch
    _raises(pipe, inputs, "not an image", index=3, batch_size=2)
    inputs[1] = {"image": images[1], "text": ""}  # found by the first check
    message = _raises(pipe, inputs, "text is empty", index=1, batch_size=2)
    assert "input 3" not in message  # decoding problems are found batch by batch
    reported = pipe(inputs, batch_size=2, errors="report")
    assert len(reported) == 5
    assert reported[1]["error"].startswith("input 1: text is empty") and reported[1]["label"] is None
    assert reported[3]["error"].startswith("input 3: ") and "not an image" in reported[3]["error"]
    for index in (0, 2, 4):
        assert "error" not in reported[index]
        assert abs(reported[index]["score"] - clean[index]["score"]) < 1e-5
    many_bad = [{"image": 12, "text": GOOD_TEXT}, {"image": images[0], "text": None}]
    message = _raises(pipe, many_bad, "2 of 2 inputs are invalid", "input 1: text is None")


def test_lone_surrogate_is_reported_per_row(pipe, good_image):
    """A lone surrogate (JSON can carry "\\udcff") used to raise a TypeError in the tokenizer
    that aborted the whole batch; it is a bad input of its own row."""
    inputs = [{"image": good_image, "text": GOOD_TEXT}, {"image": good_image, "text": "bad \udcff"},
              {"image": good_image, "text": "my day is bad"}]
    reported = pipe(inputs, batch_size=3, errors="report")
    assert reported[1]["error"].startswith("input 1: text is not valid Unicode") and reported[1]["label"] is None
    assert reported[0]["label"] and reported[2]["label"]
    _raises(pipe, inputs, "lone surrogate", index=1)


@pytest.mark.parametrize("mode", ["general", "mme_jd"])
def test_nan_logits_are_reported_not_labelled(tiny_llava_model, good_image, mode):
    """Weights holding NaN (a corrupt checkpoint) give NaN logits: each row is an error, not
    label 0 with a NaN score."""
    with torch.no_grad():
        for parameter in tiny_llava_model.parameters():
            parameter.fill_(float("nan"))
    pipe = pipeline("multimodal-debias", model=tiny_llava_model)
    inputs = [{"image": good_image, "text": GOOD_TEXT}, {"image": good_image, "text": "my day is bad"}]
    reported = pipe(inputs, errors="report", mode=mode)
    for index, result in enumerate(reported):
        assert result["error"].startswith(f"input {index}: the model's logits are not finite"), result
        assert result["label"] is None and result["score"] is None
    _raises(pipe, inputs, "logits are not finite", "weights are corrupt", mode=mode)


def test_too_long_prompt_in_a_batch_is_reported(pipe, good_image):
    inputs = [{"image": good_image, "text": GOOD_TEXT}, {"image": good_image, "text": "word " * 400}]
    reported = pipe(inputs, errors="report")
    assert "error" not in reported[0] and "positions" in reported[1]["error"]


# ---------------------------------------------------------------------------- fuzz


def _random_input(rng: random.Random, files) -> object:
    image_choices = [
        lambda: Image.fromarray(np.random.default_rng(rng.randrange(10**6)).integers(
            0, 255, (rng.randint(1, 70), rng.randint(1, 70), 3), dtype=np.uint8)),
        lambda: Image.new(rng.choice(["L", "RGBA", "P", "CMYK", "1", "I", "F", "LA", "I;16"]),
                          (rng.randint(1, 50), rng.randint(1, 50))),
        lambda: np.random.default_rng(rng.randrange(10**6)).random(
            tuple(rng.randint(0, 6) for _ in range(rng.randint(0, 4)))) * rng.choice([1, 255, 1e6, -3]),
        lambda: np.random.default_rng(rng.randrange(10**6)).integers(
            0, 2**16, (rng.randint(1, 20), rng.randint(1, 20)), dtype=np.uint16),
        lambda: torch.rand(rng.choice([1, 3, 4, 5]), rng.randint(1, 30), rng.randint(1, 30)),
        lambda: str(rng.choice(list(files.values()))),
        lambda: rng.choice([None, 0, 3.5, "", "nope.png", b"", b"\x00" * 10, [], {}, {"path": None},
                            object(), "http://x/y.png", float("nan")]),
        lambda: os.urandom(rng.randint(0, 64)),
        lambda: np.array([["x"]]),
        lambda: np.full((8, 8, 3), rng.choice([np.inf, -np.inf, np.nan])),
    ]
    words = ["the", "movie", "was", "great", "#irony", "<image>", "[PAD]", "[MASK]", "é", "🙂", "{text}", "{}",
             "\n", "\t", "   ", "question", ":"]
    text_choices = [
        lambda: " ".join(rng.choice(words) for _ in range(rng.randint(0, 12))),
        lambda: "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 40))),
        lambda: rng.choice([None, 0, 1.5, [], {}, b"bytes", "", " " * 5]),
        lambda: "word " * rng.choice([10, 100, 300]),
    ]
    roll = rng.random()
    if roll < 0.04:
        return rng.choice([None, 1, "text", ["list"], ("tuple",)])
    item = {}
    if rng.random() > 0.03:
        item["image"] = rng.choice(image_choices)()
    if rng.random() > 0.03:
        item["text"] = rng.choice(text_choices)()
    if rng.random() < 0.15:
        item["label"] = rng.choice(["sarcastic", "not_sarcastic", "x", 0, 1, 2, -1, None, "1", 1.0, True])
    return item


def test_fuzz_only_value_errors(pipe, files):
    rng = random.Random(1234)
    inputs = [_random_input(rng, files) for _ in range(300)]
    # one call, every input reported in place: a prediction or an "input <i>: ..." error
    results = pipe(inputs, batch_size=16, errors="report")
    assert len(results) == len(inputs)
    good = 0
    for index, result in enumerate(results):
        if result.get("error"):
            assert result["error"].startswith(f"input {index}: "), result["error"]
        else:
            good += 1
            assert result["label"] in ("not_sarcastic", "sarcastic") and 0 <= result["score"] <= 1
    assert 30 < good < 270, good  # the fuzz mixes good and bad inputs
    # single calls: a result or a ValueError naming index 0, nothing else
    for item in inputs[:80]:
        try:
            result = pipe([item], mode=rng.choice(["general", "mid", "mme_jd"]))
        except ValueError as error:
            assert "input 0: " in str(error), str(error)
        else:
            assert result[0]["label"] in ("not_sarcastic", "sarcastic")
