"""`mme-jd predict` under faults: every expected failure is one line on stderr and exit 1, found
before any row is predicted where it can be.

A corrupted-checkpoint matrix (truncated or missing weights, NaN weights, foreign or damaged
configs), bad output paths and devices, the output file's mode, a lone surrogate echoed to the
output, and a fuzz run over generated JSONL/CSV files with hostile rows. One tiny model is saved
per module; `cli.main` runs in-process (stderr captured at the file descriptor, so library
logging and warnings count), a subprocess only to check the real console entry point.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import random_images, write_bomb_png

from mme_jd import cli
from mme_jd.files import atomic_write_text

GOOD_TEXTS = ["the movie was great #irony", "my day is bad", "today is good fun", "awful movie today"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A saved tiny model (`model/`), good images and a hostile-file zoo (`data/`)."""
    from families import tiny_llava

    from mme_jd.base import from_base

    root = tmp_path_factory.mktemp("cli_faults")
    base, processor = tiny_llava()
    from_base(base, processor).save_pretrained(root / "model")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    for index, image in enumerate(random_images(3, seed=4)):
        image.save(data / "images" / f"{index}.png")
    write_bomb_png(data / "images" / "bomb.png")
    (data / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    (data / "images" / "empty.png").write_bytes(b"")
    (data / "images" / "a_folder.png").mkdir()
    (data / "images" / "dangling.png").symlink_to(data / "images" / "nowhere.png")
    (data / "good.jsonl").write_text(json.dumps({"image": "images/0.png", "text": GOOD_TEXTS[0]}) + "\n")
    return root


def _run(argv, capfd) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("mme-jd predict: error: ") and "Traceback" not in err, err
    # short: the problem and the fix, no traceback inside (a temporary folder's path, as long as
    # pytest makes it, not counted)
    assert len(re.sub(r"'/[^']*'", "'...'", lines[0])) < 400, lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- the checkpoint


def _truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _missing_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    save_file({name: torch.full_like(t, float("nan")) if t.is_floating_point() else t for name, t in tensors.items()},
              folder / "model.safetensors", metadata={"format": "pt"})


def _config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(config)))


CORRUPTIONS = {
    "truncated_weights": (_truncated, ["cannot read the weights", "model.safetensors", "download or copy it again"]),
    "missing_weights": (_missing_weights, ["cannot load the weights", "no file named model.safetensors"]),
    "nan_weights": (_nan_weights, ["refusing the MME-JD checkpoint", "NaN or infinity", "retrain"]),
    "foreign_llava_config": (lambda f: _config(f, lambda c: c["base_config"]),
                             ["holds a 'llava' model, not an MME-JD model", "mme_jd.from_base"]),
    "foreign_bert_config": (lambda f: _config(f, lambda c: {"model_type": "bert", "hidden_size": 32}),
                            ["holds a 'bert' model, not an MME-JD model"]),
    # without base_config the config would build the default 7B LLaVA (tens of GB)
    "config_without_base": (lambda f: _config(f, lambda c: {k: v for k, v in c.items() if k != "base_config"}),
                             ["has no base_config", "damaged"]),
    "config_with_wrong_types": (lambda f: _config(f, lambda c: {**c, "id2label": 5}),
                                ["config.json", "is damaged", "AttributeError"]),
    "config_not_json": (lambda f: (f / "config.json").write_text("{oops"), ["not a valid JSON file"]),
    "no_config": (lambda f: (f / "config.json").unlink(), ["holds no config.json"]),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_checkpoint_is_one_line(workspace, tmp_path, capfd, corruption):
    damage, words = CORRUPTIONS[corruption]
    model = tmp_path / "model"
    shutil.copytree(workspace / "model", model)
    damage(model)
    output = tmp_path / "out.jsonl"
    code, _, err = _run(["predict", model, workspace / "data" / "good.jsonl", "-o", output, "--no-progress"], capfd)
    _assert_one_line_error(code, err, *words)
    assert not output.exists()


def test_nan_weights_are_refused_before_any_row_is_predicted(workspace, tmp_path, capfd):
    """NaN weights never reach a prediction: the loader refuses them (a NaN logit from finite
    weights is reported per row instead: test_bad_input.py::test_nan_logits_are_reported_not_labelled)."""
    model = tmp_path / "model"
    shutil.copytree(workspace / "model", model)
    _nan_weights(model)
    output = tmp_path / "out.jsonl"
    code, _, err = _run(["predict", model, workspace / "data" / "good.jsonl", "-o", output, "--no-progress",
                         "--on-error", "report"], capfd)
    _assert_one_line_error(code, err, "NaN or infinity")
    assert not output.exists()


# ---------------------------------------------------------------------------- output path and device


def _never_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the output path was checked")


@pytest.mark.parametrize("case, words", [
    ("folder", ["is a folder", "give a file path"]),
    ("under_a_file", ["cannot be created", "is a file, not a folder"]),
    ("the_input", ["is the input file", "give another path"]),
    ("the_input_through_a_link", ["is the input file"]),
])
def test_bad_output_path_is_refused_before_the_work(workspace, tmp_path, capfd, monkeypatch, case, words):
    rows = tmp_path / "rows.jsonl"
    shutil.copy(workspace / "data" / "good.jsonl", rows)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "link.jsonl").symlink_to(rows)
    output = {"folder": tmp_path, "under_a_file": tmp_path / "a_file" / "out.jsonl", "the_input": rows,
              "the_input_through_a_link": tmp_path / "link.jsonl"}[case]
    monkeypatch.setattr(cli, "load_pipeline", _never_load)
    code, _, err = _run(["predict", workspace / "model", rows, "-o", output, "--no-progress"], capfd)
    _assert_one_line_error(code, err, *words)
    assert rows.read_text() == (workspace / "data" / "good.jsonl").read_text()


@pytest.mark.parametrize("device, words", [
    ("cuda", ["--device cuda", "use --device cpu"]),
    ("cuda:1", ["--device cuda:1"]),
    ("gpu", ["'gpu' is not a device"]),
    ("meta", ["predictions run on cpu, cuda, mps or xpu"]),
])
def test_unusable_device_is_one_line(workspace, tmp_path, capfd, monkeypatch, device, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, whatever runs the test
    monkeypatch.setattr(cli, "load_model", _never_load)
    code, _, err = _run(["predict", workspace / "model", workspace / "data" / "good.jsonl", "-o",
                         tmp_path / "out.jsonl", "--device", device, "--no-progress"], capfd)
    _assert_one_line_error(code, err, *words)


def test_overwritten_output_keeps_its_mode(workspace, tmp_path, capfd):
    output = tmp_path / "out.jsonl"
    output.write_text("old\n")
    output.chmod(0o600)
    code, _, err = _run(["predict", workspace / "model", workspace / "data" / "good.jsonl", "-o", output,
                         "--no-progress"], capfd)
    assert code == 0, err
    assert stat.S_IMODE(output.stat().st_mode) == 0o600 and json.loads(output.read_text())["label"]
    link = tmp_path / "link.jsonl"
    link.symlink_to(output)
    atomic_write_text(link, "new\n")  # a link is followed: its target replaced, the link kept
    assert link.is_symlink() and output.read_text() == "new\n" and stat.S_IMODE(output.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "out.jsonl"]  # no temporary left


def test_output_to_a_fifo_is_written_in_place(workspace, tmp_path, capfd):
    """A FIFO or device (/dev/stdout, /dev/null) is written in place: replacing it with a
    file, as the atomic write did, turned /dev/null into a regular file when run as root. A
    FIFO in tmp_path stands for them, so a regression cannot harm the machine."""
    fifo = tmp_path / "predictions.fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    code, _, err = _run(["predict", workspace / "model", workspace / "data" / "good.jsonl", "-o", fifo,
                         "--no-progress"], capfd)
    reader.join(timeout=30)
    assert code == 0, err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and json.loads(received[0])["label"]


# ---------------------------------------------------------------------------- a lone surrogate end to end


def test_lone_surrogate_row_is_reported_and_echoed(workspace, tmp_path, capfd):
    rows = tmp_path / "rows.jsonl"
    image = workspace / "data" / "images" / "0.png"
    rows.write_text(json.dumps({"image": str(image), "text": "bad \udcff"}) + "\n"  # written as the escape \udcff
                    + json.dumps({"image": str(image), "text": GOOD_TEXTS[1]}) + "\n")
    assert "\\udcff" in rows.read_text()
    output = tmp_path / "out.jsonl"
    code, _, err = _run(["predict", workspace / "model", rows, "-o", output, "--no-progress"], capfd)
    _assert_one_line_error(code, err, "input 0: text is not valid Unicode", "'\\udcff'")
    code, _, err = _run(["predict", workspace / "model", rows, "-o", output, "--no-progress", "--on-error",
                         "report"], capfd)
    assert code == 1 and "1 of 2 rows failed" in err and "Traceback" not in err
    bad, good = (json.loads(line) for line in output.read_text(encoding="utf-8").splitlines())
    assert bad["input"]["text"] == "bad \udcff" and bad["error"].startswith("input 0: text is not valid Unicode")
    assert good["label"] and "error" not in good
    code, out, _ = _run(["predict", workspace / "model", rows, "-o", "-", "--no-progress", "--on-error", "report"],
                        capfd)
    assert [json.loads(line)["index"] for line in out.splitlines()] == [0, 1]


def test_unreadable_lines_are_bad_rows_with_report(workspace, tmp_path, capfd):
    """A JSONL line that is not a JSON object stops the run by default (its line named); with
    --on-error report it is a bad row in its place and the other rows are predicted. A byte
    order mark at the start of the file is skipped."""
    image = str(workspace / "data" / "images" / "1.png")
    good = json.dumps({"image": image, "text": GOOD_TEXTS[2]})
    lines = [good, "{oops", "[1, 2]", "[" * 100_000, '{"label": ' + "9" * 5000 + "}", "", good]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    code, _, err = _run(["predict", workspace / "model", rows, "-o", output, "--no-progress"], capfd)
    _assert_one_line_error(code, err, "rows.jsonl line 2: invalid JSON")
    code, _, err = _run(["predict", workspace / "model", rows, "-o", output, "--no-progress", "--on-error",
                         "report"], capfd)
    assert code == 1 and "predicted 2 of 6 rows" in err and "Traceback" not in err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    expected = [None, "input 1: rows.jsonl line 2: invalid JSON", "input 2: rows.jsonl line 3: expected a JSON object",
                "input 3: rows.jsonl line 4: unreadable JSON (RecursionError",
                "input 4: rows.jsonl line 5: unreadable JSON (ValueError", None]
    for record, start in zip(records, expected, strict=True):
        assert (record.get("error") is None) if start is None else record["error"].startswith(start), record
    assert records[2]["input"] == "[1, 2]" and records[0]["label"] and records[5]["label"]


# ---------------------------------------------------------------------------- fuzz

LABELS = ("not_sarcastic", "sarcastic")
GOOD_WORDS = "the movie was great terrible good bad #irony today my day is fun awful".split()
HOSTILE_TEXTS = [
    "bad \udcff", "\ud800", "\udfff\ud800 x", "", "   ", "\n\t", None, 0, -1, 10**30, -1e308, float("inf"), True, [],
    {"text": "x"}, "\x00", "a\x00b", "\ufeff", "look <image> here", "word " * 2000, "x" * 20_000, "🙂" * 50,
    "{text}", "\u202egnp.exe", "\r\n",
]
HOSTILE_IMAGES = [
    "images/missing.png", "images/a_folder.png", "images/corrupt.png", "images/empty.png", "images/bomb.png",
    "images/dangling.png", "images/0.png/x", "~\x00x", "\x00", "\udcff.png", "", "   ", None, 12, -5, float("inf"),
    [], {}, {"path": None}, {"bytes": "abc"}, "http://example.com/x.png", os.devnull, "/etc/passwd",
    "../" * 40 + "etc/passwd", "images", "images/" + "a" * 5000 + ".png",
]
HOSTILE_LABELS = ["²", "--1", "-1", 2, -1, 10**30, float("inf"), float("nan"), True, [], {}, "9" * 5000, "ironic"]
HOSTILE_LINES = ["", "   ", "{oops", "[1]", "null", "123", '"a string"', "[" * 5000, '{"image": ' + "9" * 5000 + "}",
                 '\ufeff{"image": "images/0.png", "text": "x"}', '{"image": "images/0.png", "text": NaN}', "\x00"]


def _good_row(rng: random.Random, folder: Path) -> dict:
    """A valid row; its image relative to `folder` (the input file's) or absolute."""
    index = rng.randrange(3)
    row = {"image": rng.choice([f"images/{index}.png", str(folder / "images" / f"{index}.png")]),
           "text": " ".join(rng.choice(GOOD_WORDS) for _ in range(rng.randint(1, 8)))}
    if rng.random() < 0.5:
        row["label"] = rng.choice([*LABELS, 0, 1, "0", "1"])
    return row


def _hostile_row(rng: random.Random, folder: Path) -> dict:
    """A good row with one to three fields made hostile, dropped or added."""
    row = _good_row(rng, folder)
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(["image", "text", "label", "drop", "extra"])
        if field == "drop":
            row.pop(rng.choice(["image", "text"]), None)
        elif field == "extra":
            row[rng.choice(["\udcff", "", "extra", "IMAGE"])] = rng.choice(HOSTILE_TEXTS)
        else:
            row[field] = rng.choice({"image": HOSTILE_IMAGES, "text": HOSTILE_TEXTS, "label": HOSTILE_LABELS}[field])
    return row


def _fuzz_jsonl(rng: random.Random, path: Path, count: int) -> list[bool | None]:
    """A JSONL file of good rows, hostile rows and hostile lines; per row read: True (good),
    False (hostile: a prediction or an error), None for lines that are no row (blank)."""
    lines, kinds = [], []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.45:
            lines.append(json.dumps(_good_row(rng, path.parent)))  # \\u escapes: surrogates survive
            kinds.append(True)
        elif roll < 0.85:
            lines.append(json.dumps(_hostile_row(rng, path.parent)))
            kinds.append(False)
        else:
            line = rng.choice(HOSTILE_LINES)
            lines.append(line)
            kinds.append(None if not line.strip() else False)
    bom = "\ufeff" if rng.random() < 0.5 else ""
    newline = rng.choice(["\n", "\r\n"])
    path.write_text(bom + newline.join(lines) + newline, encoding="utf-8", newline="")
    return [kind for kind in kinds if kind is not None]


def _fuzz_csv(rng: random.Random, path: Path, count: int) -> list[bool]:
    """A CSV file (image, text, label) of good and hostile rows: missing and extra fields, NULs,
    quotes, very long text (a CSV cannot carry lone surrogates: UTF-8 has none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "text", "label"])
    kinds = []
    for _ in range(count):
        row = _good_row(rng, path.parent)
        cells = [row["image"], row["text"], str(row.get("label", ""))]
        good = rng.random() < 0.5
        if not good:
            change = rng.choice(["short", "long", "nul", "quotes", "text", "image", "label", "empty"])
            if change == "short":
                cells = cells[: rng.randint(1, 2)]
            elif change == "long":
                cells += ["surplus", "cells"]
            elif change == "nul":
                cells[rng.randrange(3)] += "\x00"
            elif change == "quotes":
                cells[1] = 'say "hi", then\nleave'
            elif change == "empty":
                cells = ["", "", ""]
            else:
                column = ["image", "text", "label"].index(change)
                pool = {"image": HOSTILE_IMAGES, "text": HOSTILE_TEXTS, "label": HOSTILE_LABELS}[change]
                value = rng.choice(pool)
                cells[column] = value if isinstance(value, str) else json.dumps(value)
                cells[column] = cells[column].encode("utf-8", "replace").decode("utf-8")  # no surrogates in UTF-8
        writer.writerow(cells)
        kinds.append(good)
    bom = "\ufeff" if rng.random() < 0.5 else ""
    path.write_text(bom + buffer.getvalue(), encoding="utf-8", newline="")
    return kinds


def _check_report(code: int, err: str, output: Path, kinds: list[bool]) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [record["index"] for record in records] == list(range(len(kinds)))
    failed = 0
    for record, good in zip(records, kinds):
        if good:
            assert "error" not in record and record["label"] in LABELS and 0 <= record["score"] <= 1, record
        elif record.get("error"):
            failed += 1
            assert record["error"].startswith(f"input {record['index']}: ") and record["label"] is None, record
            assert len(record["error"]) < 600, record["error"]
        else:
            assert record["label"] in LABELS, record
    assert lines[0].startswith(f"predicted {len(kinds) - failed} of {len(kinds)} rows")
    assert (code, len(lines)) == ((1, 2) if failed else (0, 1)), err
    if failed:
        assert lines[1].startswith(f"mme-jd predict: error: {failed} of {len(kinds)} rows failed"), err


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_predict_over_hostile_files(workspace, tmp_path, capfd, seed):
    """Generated JSONL/CSV files with hostile rows: the CLI never prints a traceback, exits 0
    (all rows predicted) or 1 (one line), every good row gets a prediction and every bad one
    an 'input <i>: ...' error in its place; --on-error raise writes nothing and says one line."""
    rng = random.Random(seed)
    data = workspace / "data"
    for number, fmt in enumerate(["jsonl", "csv"]):
        path = data / f"fuzz_{seed}_{number}.{fmt}"
        kinds = (_fuzz_jsonl if fmt == "jsonl" else _fuzz_csv)(rng, path, rng.randint(12, 24))
        output = tmp_path / f"out_{number}.jsonl"
        batch = str(rng.choice([1, 3, 8]))
        mode = rng.choice(["general", "mid", "mme_jd"])
        code, _, err = _run(["predict", workspace / "model", path, "-o", output, "--no-progress", "--on-error",
                             "report", "--batch-size", batch, "--mode", mode], capfd)
        _check_report(code, err, output, kinds)
        raised = tmp_path / f"raised_{number}.jsonl"
        code, _, err = _run(["predict", workspace / "model", path, "-o", raised, "--no-progress", "--batch-size",
                             batch], capfd)
        if all(kinds):
            assert code == 0 and raised.exists(), err
        elif code == 1:
            _assert_one_line_error(code, err)
            assert not raised.exists()
        else:  # every hostile row happened to be a valid input
            assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize("content, words", [
    (b"image,text\n\xff\xfe,broken\n", "is not UTF-8 text"),
    (b"image,text\nimages/0.png," + b"x" * 200_000 + b"\n", "not a valid CSV file"),
    (b"\n\n   \n", "holds no rows"),
    (b"image,text\n", "holds no rows"),
])
def test_fuzz_hostile_whole_files_are_one_line(workspace, tmp_path, capfd, content, words):
    path = tmp_path / ("rows.csv" if content.startswith(b"image") else "rows.jsonl")
    path.write_bytes(content)
    code, _, err = _run(["predict", workspace / "model", path, "-o", tmp_path / "out.jsonl", "--no-progress"], capfd)
    _assert_one_line_error(code, err, words)


def test_many_bad_rows_are_one_short_line(workspace, tmp_path, capfd):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"image": f"missing_{i}.png", "text": "x"}) + "\n" for i in range(50)))
    code, _, err = _run(["predict", workspace / "model", rows, "-o", tmp_path / "out.jsonl", "--no-progress"], capfd)
    line = _assert_one_line_error(code, err, "50 of 50 inputs are invalid", "input 1: ", "... and 48 more")
    assert "input 2: " not in line


def test_console_entry_point_over_a_hostile_file(workspace, tmp_path):
    """The real process: stderr holds the summary and the one-line error, no warning, no traceback."""
    rows = tmp_path / "rows.jsonl"
    kinds = _fuzz_jsonl(random.Random(99), rows, 16)
    shutil.copytree(workspace / "data" / "images", tmp_path / "images", symlinks=True)
    output = tmp_path / "out.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    process = subprocess.run([sys.executable, "-m", "mme_jd.cli", "predict", str(workspace / "model"), str(rows),
                              "-o", str(output), "--no-progress", "--on-error", "report"],
                             capture_output=True, text=True, env=env, timeout=180)
    _check_report(process.returncode, process.stderr, output, kinds)
