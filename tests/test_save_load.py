"""Save and load: safetensors, auto_map, modeling files, processor; a fresh offline process
gets identical logits through AutoModel with trust_remote_code, and without it once `mme_jd`
is imported."""

import json
import os
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
torch.save({"logits": out_model.logits, "general": out_model.general_logits,
            "text": out_model.text_debias_logits, "router": out_model.router_logits,
            "module": type(model).__module__}, out)
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
        model.router[2].bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0]))
    inputs = build_triple(model.processor, model.config, TEXTS, images, TEXTS)["original"]
    with torch.no_grad():
        expected = model(**inputs, mode="mme_jd", return_experts=True)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    folder = tmp_path / "model"
    model.save_pretrained(folder)

    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_mme_jd.py", "modeling_mme_jd.py",
            "counterfactual_mme_jd.py", "processor_config.json", "tokenizer.json"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_mme_jd.MMEJDConfig",
                                  "AutoModel": "modeling_mme_jd.MMEJDModel"}
    assert not any(name.startswith(".mme-jd-save") for name in files)

    for remote in (True, False):
        got = _run_fresh(folder, tmp_path / f"out_{remote}.pt", remote)
        assert torch.equal(got["logits"], expected.logits)
        assert torch.equal(got["general"], expected.general_logits)
        assert torch.equal(got["text"], expected.text_debias_logits)
        assert torch.equal(got["router"], expected.router_logits)
        assert got["module"].startswith("transformers_modules") == remote


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
