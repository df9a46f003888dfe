"""The `mme-jd` command line on a tiny saved model: predict (JSONL and CSV, relative image
paths, progress bar, bad rows), publish (dry run and a fake upload), --help of each command,
and the one-line non-zero exit on failure."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import random_images

from mme_jd import cli, hub

TEXTS = ["the movie was great #irony", "my day is bad", "today is good fun"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny model, and a data folder with images and JSONL / CSV rows (relative paths)."""
    from families import tiny_llava

    from mme_jd.base import from_base

    root = tmp_path_factory.mktemp("cli")
    base, processor = tiny_llava()
    from_base(base, processor).save_pretrained(root / "model")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    for index, image in enumerate(random_images(3, seed=2)):
        image.save(data / "images" / f"{index}.png")
    labels = ["sarcastic", 0, "1"]
    rows = [{"image": f"images/{i}.png", "text": text, "label": labels[i]} for i, text in enumerate(TEXTS)]
    (data / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    with (data / "rows.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command, options", [
    ("predict", ["--output", "--format", "--image-column", "--text-column", "--label-column", "--mode",
                 "--batch-size", "--top-k", "--explain", "--return-experts", "--on-error", "--device",
                 "--no-progress"]),
    ("publish", ["--report", "--output-dir", "--license", "--base-model", "--dataset", "--dataset-split", "--tag",
                 "--pipeline-tag", "--private", "--token", "--revision", "--commit-message", "--dry-run"]),
    ("demo", ["--output-dir", "--samples"]),
    ("inspect", ["--rows", "--output-dir", "--split", "--mode", "--text-counterfactual", "--image-counterfactual",
                 "--cue", "--batch-size", "--data-dir", "--seed", "--no-progress", "--trust-remote-code"]),
    ("app", ["--host", "--port", "--mode", "--text-counterfactual", "--image-counterfactual", "--cue",
             "--trust-remote-code"]),
])
def test_help_explains_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, (command, action.dest)
    for option in options:
        assert option in text, option


def test_predict_jsonl_with_relative_paths(workspace, capsys):
    out = workspace / "pred.jsonl"
    code, _, err = _run(["predict", workspace / "model", workspace / "data" / "rows.jsonl", "--output", out,
                         "--batch-size", "2", "--explain"], capsys)
    assert code == 0, err
    assert "predict: 100%" in err and "3/3" in err  # the progress bar
    assert "predicted 3 of 3 rows" in err and "strategies: none 3" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["input"]["text"] for r in records] == TEXTS
    assert [r["true_label"] for r in records] == ["sarcastic", "not_sarcastic", "sarcastic"]
    for record in records:
        assert record["strategy"] == "none" and record["label"] in record["scores"]
        assert record["counterfactuals"]["text"]["builder"] == "lexical"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".pred")]  # atomic write left no temp file


def test_predict_csv_to_stdout_matches_jsonl(workspace, capsys):
    code, out, err = _run(["predict", workspace / "model", workspace / "data" / "rows.csv", "--output", "-",
                           "--no-progress", "--mode", "mid", "--top-k", "1"], capsys)
    assert code == 0, err and "predict:" not in err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["strategy"] for r in records] == ["mid"] * 3
    assert all(len(r["scores"]) == 1 for r in records)
    code, _, _ = _run(["predict", workspace / "model", workspace / "data" / "rows.jsonl", "--no-progress",
                       "--mode", "mid", "--top-k", "1"], capsys)
    default_output = workspace / "data" / "rows.predictions.jsonl"
    assert code == 0 and default_output.is_file()
    from_jsonl = [json.loads(line) for line in default_output.read_text().splitlines()]
    assert [r["label"] for r in from_jsonl] == [r["label"] for r in records]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(from_jsonl, records))


def test_predict_bad_rows(workspace, capsys, tmp_path):
    rows = tmp_path / "rows.jsonl"
    image = workspace / "data" / "images" / "0.png"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"image": str(image), "text": "fine"}, {"image": "missing.png", "text": "x"},
        {"image": str(image), "text": ""}, {"image": str(image), "text": "ok", "label": "ironic"},
    ]))
    out = tmp_path / "out.jsonl"
    code, _, err = _run(["predict", workspace / "model", rows, "-o", out, "--no-progress"], capsys)
    assert code == 1 and not out.exists()
    line = err.strip()
    assert "\n" not in line and line.startswith("mme-jd predict: error: 3 of 4 inputs are invalid")
    assert "input 1: image file not found" in line and "input 2: text is empty" in line and "input 3: label" in line
    code, _, err = _run(["predict", workspace / "model", rows, "-o", out, "--no-progress", "--on-error", "report"],
                        capsys)
    assert code == 1 and "3 of 4 rows failed" in err and len(err.strip().splitlines()) == 2  # summary + error
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert "error" not in records[0] and records[0]["label"]
    assert [r["error"].split(":")[0] for r in records[1:]] == ["input 1", "input 2", "input 3"]


@pytest.mark.parametrize("argv, words", [
    (["predict", "{model}", "{tmp}/nothing.jsonl"], "input file not found"),
    (["predict", "{tmp}/no_model", "{rows}"], "model folder not found"),
    (["predict", "{model}", "{tmp}/rows.txt"], "cannot tell the format"),
    (["predict", "{model}", "{tmp}/broken.jsonl"], "line 2: invalid JSON"),
    (["publish", "{tmp}/no_model", "me/x", "--dry-run"], "no saved model"),
    (["publish", "{model}", "me/x", "--report", "{tmp}/nothing.json", "--dry-run"], "evaluation report not found"),
])
def test_failures_exit_non_zero_with_one_line(workspace, capsys, tmp_path, argv, words):
    (tmp_path / "rows.txt").write_text("x")
    (tmp_path / "broken.jsonl").write_text('{"image": "a", "text": "b"}\n{oops\n')
    values = {"model": workspace / "model", "tmp": tmp_path, "rows": workspace / "data" / "rows.jsonl"}
    code, _, err = _run([a.format(**values) for a in argv], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"mme-jd {argv[0]}: error: ") and words in err, err


def test_publish_dry_run_and_fake_upload(workspace, capsys, tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"num_samples": 4, "metrics": {"accuracy": 0.75},
                                  "groups": {"worst_group_accuracy": 0.5, "worst_group": "g1"},
                                  "router": {"predicted_share": {"none": 0.75, "text": 0.25}}}))
    upload = tmp_path / "upload"
    code, out, err = _run(["publish", workspace / "model", "me/tiny", "--report", report, "--output-dir", upload,
                           "--base-model", "llava-hf/llava-1.5-7b-hf", "--dataset", "me/data", "--tag", "demo",
                           "--dry-run"], capsys)
    assert code == 0, err
    assert "dry run" in out and "nothing uploaded" in out
    card = (upload / "README.md").read_text()
    assert "base_model: llava-hf/llava-1.5-7b-hf" in card and "- demo" in card and "router_share_text" in card

    calls = []

    class FakeHfApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs.get("private")))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["allow_patterns"]))

    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    code, out, err = _run(["publish", workspace / "model", "me/tiny", "--output-dir", upload, "--private",
                           "--token", "hf_x"], capsys)
    assert code == 0, err
    assert calls[0] == ("init", "hf_x") and calls[1] == ("create_repo", "me/tiny", True)
    assert calls[2][0] == "upload_folder" and "model.safetensors" in calls[2][1] and "README.md" not in calls[2][1]
    assert calls[3] == ("upload_folder", ["README.md"])
    assert "uploaded to https://huggingface.co/me/tiny" in out

    class FailingApi(FakeHfApi):
        def create_repo(self, repo_id, **kwargs):
            raise OSError("401 Client Error: Unauthorized\nmore details")

    monkeypatch.setattr(hub, "HfApi", FailingApi)
    code, _, err = _run(["publish", workspace / "model", "me/tiny", "--output-dir", upload], capsys)
    assert code == 1 and err.strip() == "mme-jd publish: error: OSError: 401 Client Error: Unauthorized"


def test_console_script_entry_point(workspace, tmp_path):
    """`python -m mme_jd.cli` as a fresh process: exit status and streams."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-m", "mme_jd.cli", "predict", str(workspace / "model"),
                              str(tmp_path / "missing.jsonl")], capture_output=True, text=True, env=env, timeout=120)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1].startswith("mme-jd predict: error: input file not found")
