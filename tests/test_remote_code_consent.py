"""No code from a model folder runs without the user's consent (issue 12, item 1).

A folder whose `processor_config.json` names its own processor class (`auto_map`) must not get
that code run by `mme_jd`: not by `evaluate`, not when the pipeline is built around an
already loaded model, not by `predict` or `publish`. Only `trust_remote_code=True` (the CLI's
`--trust-remote-code`) may run it.
"""

from __future__ import annotations

import json
import shutil

import pytest

import mme_jd  # noqa: F401  (registers the model type and the pipeline task)

EVIL_MODULE = '''
import pathlib
pathlib.Path({marker!r}).write_text("the folder's code ran")

from transformers import LlavaProcessor


class EvilProc(LlavaProcessor):
    pass
'''


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A saved tiny MME-JD folder (its processor is a standard LlavaProcessor)."""
    from families import tiny_llava

    from mme_jd.base import from_base

    base, processor = tiny_llava()
    folder = tmp_path_factory.mktemp("consent") / "model"
    from_base(base, processor).save_pretrained(folder)
    return folder


def _plant_processor_code(folder, tmp_path, keep_processor_class: bool = True):
    """Copy `folder` and add a processor class of its own (`evil_proc.EvilProc`) whose import
    writes a marker file. Returns (the copy, the marker path)."""
    target = tmp_path / "evil-model"
    shutil.copytree(folder, target)
    marker = tmp_path / "marker.txt"
    (target / "evil_proc.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    config_path = target / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoProcessor": "evil_proc.EvilProc"}
    config_path.write_text(json.dumps(config))
    if not keep_processor_class:  # nothing names a standard class: the folder's code is the only processor
        for path in target.glob("*.json"):
            content = json.loads(path.read_text())
            content.pop("processor_class", None)
            path.write_text(json.dumps(content))
    return target, marker


def test_evaluate_loads_the_standard_processor_and_runs_no_folder_code(saved_folder, tmp_path):
    from mme_jd.evaluation.run import load_model

    folder, marker = _plant_processor_code(saved_folder, tmp_path)
    model, processor = load_model(str(folder))
    assert not marker.exists()
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(processor).__module__.startswith("transformers.")


def test_evaluate_refuses_a_processor_that_exists_only_as_folder_code(saved_folder, tmp_path):
    from mme_jd.evaluation.run import load_model

    folder, marker = _plant_processor_code(saved_folder, tmp_path, keep_processor_class=False)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(folder))
    assert not marker.exists()


def test_cli_evaluate_runs_no_folder_code(saved_folder, tmp_path, capsys):
    from mme_jd.cli import main

    folder, marker = _plant_processor_code(saved_folder, tmp_path, keep_processor_class=False)
    status = main(["evaluate", str(folder), "--rows", "8", "--output-dir", str(tmp_path / "report")])
    assert status == 1
    assert not marker.exists()
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("mme-jd evaluate: error:") and "--trust-remote-code" in last_line


def test_pipeline_around_a_loaded_model_runs_no_folder_code(saved_folder, tmp_path):
    from transformers import AutoModel

    from mme_jd.modeling.pipeline_mme_jd import MultimodalDebiasPipeline

    folder, marker = _plant_processor_code(saved_folder, tmp_path)
    model = AutoModel.from_pretrained(folder)
    pipe = MultimodalDebiasPipeline(model=model)
    assert not marker.exists()
    assert type(pipe.processor).__module__.startswith("transformers.")

    folder_only_code, marker = _plant_processor_code(saved_folder, tmp_path / "second", keep_processor_class=False)
    model = AutoModel.from_pretrained(folder_only_code)
    with pytest.raises(ValueError, match="trust_remote_code"):
        MultimodalDebiasPipeline(model=model)
    assert not marker.exists()


def test_predict_and_publish_run_no_folder_code(saved_folder, tmp_path):
    from mme_jd.cli import load_pipeline
    from mme_jd.hub import prepare_folder

    folder, marker = _plant_processor_code(saved_folder, tmp_path, keep_processor_class=False)
    with pytest.raises((ValueError, RuntimeError), match="trust.remote.code"):
        load_pipeline(str(folder))
    with pytest.raises(ValueError, match="trust.remote.code"):
        prepare_folder(str(folder), tmp_path / "upload", "me/model")
    assert not marker.exists()


def test_every_model_loading_command_has_a_trust_remote_code_flag_off_by_default():
    from mme_jd.cli import build_parser

    parser = build_parser()
    for command in (["evaluate", "folder", "--output-dir", "out"], ["predict", "folder", "rows.jsonl"],
                    ["publish", "folder", "me/model"], ["train", "--output-dir", "out"],
                    ["inspect", "folder", "synthetic", "--output-dir", "out"], ["app", "folder"]):
        assert parser.parse_args(command).trust_remote_code is False
        assert parser.parse_args([*command, "--trust-remote-code"]).trust_remote_code is True


def test_no_source_file_sets_trust_remote_code_itself():
    """No call in the package, its remote code or the bench scripts passes
    `trust_remote_code=True` (a literal): consent is the caller's to give."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*(root / "src").rglob("*.py"), *(root / "modeling").glob("*.py"), *(root / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "trust_remote_code" and isinstance(keyword.value, ast.Constant) \
                            and keyword.value.value is True:
                        offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
