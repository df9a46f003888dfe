"""Save and load: safetensors, auto_map, modeling files, processor; a fresh offline process
gets identical logits through AutoModel with trust_remote_code, and without it once `mme_jd`
is imported."""

import json
import os
import shutil
import subprocess
import sys

import torch
from conftest import TEXTS, nudge_experts

from mme_jd.modeling.counterfactual_mme_jd import build_triple

LOAD_SCRIPT = r"""
import sys, torch
from transformers import AutoModel
folder, out, remote = sys.argv[1], sys.argv[2], sys.argv[3] == "remote"
if not remote:
    import mme_jd  # registers the model type: no remote code needed
inputs = torch.load(folder + "/../inputs.pt")
model = AutoModel.from_pretrained(folder, trust_remote_code=True if remote else None).eval()
with torch.no_grad():
    out_model = model(**inputs, mode="mme_jd", return_experts=True)
without_code = None
if remote:  # the folder's own code is what runs: a copy without modeling_mme_jd.py cannot load
    try:
        AutoModel.from_pretrained(folder + "/../without-code", trust_remote_code=True)
    except Exception as error:
        without_code = type(error).__name__
torch.save({"logits": out_model.logits, "general": out_model.general_logits,
            "text": out_model.text_debias_logits, "router": out_model.router_logits,
            "module": type(model).__module__, "without_code": without_code}, out)
"""


def _run_fresh(folder, out, remote):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if remote:
        env["HF_MODULES_CACHE"] = str(out) + ".modules"
    # the remote-code process must not be able to import the package at all
    script = LOAD_SCRIPT if not remote else "import sys; sys.modules['mme_jd'] = None\n" + LOAD_SCRIPT
    result = subprocess.run([sys.executable, "-c", script, str(folder), str(out), "remote" if remote else "local"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=str(out.parent))
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def test_round_trip_in_a_fresh_offline_process(tiny_llava_model, images, tmp_path):
    model = tiny_llava_model
    nudge_experts(model)
    with torch.no_grad():
        model.router.out.bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0]))
    inputs = build_triple(model.processor, model.config, TEXTS, images, TEXTS)["original"]
    with torch.no_grad():
        expected = model(**inputs, mode="mme_jd", return_experts=True)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    folder = tmp_path / "model"
    model.save_pretrained(folder)

    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_mme_jd.py", "modeling_mme_jd.py",
            "counterfactual_mme_jd.py", "layouts_mme_jd.py", "routing_mme_jd.py", "processor_config.json", "tokenizer.json"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_mme_jd.MMEJDConfig",
                                  "AutoModel": "modeling_mme_jd.MMEJDModel"}
    assert not any(name.startswith(".mme-jd-save") for name in files)
    shutil.copytree(folder, tmp_path / "without-code")
    os.remove(tmp_path / "without-code" / "modeling_mme_jd.py")

    for remote in (True, False):
        got = _run_fresh(folder, tmp_path / f"out_{remote}.pt", remote)
        assert torch.equal(got["logits"], expected.logits)
        assert torch.equal(got["general"], expected.general_logits)
        assert torch.equal(got["text"], expected.text_debias_logits)
        assert torch.equal(got["router"], expected.router_logits)
        assert got["module"].startswith("transformers_modules") == remote
        if remote:
            assert got["without_code"] is not None


def test_save_keeps_other_files_and_replaces_the_model(tiny_llava_model, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    tiny_llava_model.save_pretrained(folder)
    first = (folder / "model.safetensors").read_bytes()
    nudge_experts(tiny_llava_model)
    tiny_llava_model.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "model.safetensors").read_bytes() != first
    assert not [n for n in os.listdir(folder) if n.startswith(".mme-jd-save")]


# ---------------------------------------------------------------------------- which code runs


def test_the_version_is_one_and_a_saved_folder_records_it(tiny_llava_model, tmp_path):
    import re
    from pathlib import Path

    import mme_jd
    from mme_jd.modeling.configuration_mme_jd import MME_JD_VERSION

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == MME_JD_VERSION == mme_jd.__version__
    tiny_llava_model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["mme_jd_version"] == MME_JD_VERSION


def test_a_folder_saved_by_another_version_warns_which_code_runs(tiny_llava_model, tmp_path):
    import pytest
    from transformers import AutoModel

    folder = tmp_path / "model"
    tiny_llava_model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["mme_jd_version"] = "0.0.1"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"saved by mme-jd 0\.0\.1.*installed mme_jd package"):
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__ == "mme_jd.modeling.modeling_mme_jd"


def test_a_folder_without_its_remote_code_warns_that_it_needs_the_package(tiny_llava_model, tmp_path):
    import pytest
    from transformers import AutoModel

    folder = tmp_path / "model"
    tiny_llava_model.save_pretrained(folder)
    os.remove(folder / "modeling_mme_jd.py")
    with pytest.warns(UserWarning, match=r"lacks modeling_mme_jd\.py.*only because"):
        AutoModel.from_pretrained(folder)
