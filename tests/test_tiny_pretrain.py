"""Pretraining of the tiny base on unimodal yes/no questions, and its cache on disk."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mme_jd import tiny
from mme_jd.tiny import TinySettings, pretrain_tiny_base, pretrained_cache_path, pretrained_tiny_base

# a few steps on a small pool: enough to write and read back a cache folder
SMALL = dict(steps=12, pool_size=192, batch_size=32, lr=2e-3, seed=7)
SMALL_EXTRA = dict(progress=False, probe_rows=32, zero_shot_rows=16)


def _sample_inputs(processor, count: int = 6):
    rows = tiny._pretraining_rows(count, 99, TinySettings().image_size)
    prompts = [tiny.PRETRAIN_TEMPLATE.format(image="<image>", text=t, question="is it sarcastic ?")
               for t in rows["text"]]
    return processor(text=prompts, images=list(rows["image"]), return_tensors="pt", padding=True)


def _logits(base, inputs):
    with torch.no_grad():
        return base(**inputs).logits


def test_short_pretraining_lowers_the_loss_and_learns_the_text_probe():
    base, processor, report = pretrain_tiny_base(
        steps=100, pool_size=1000, progress=False, probe_rows=300, zero_shot_rows=100
    )
    assert not base.training
    assert report["steps"] == 100 and report["pool_size"] == 1000 and report["seconds"] > 0
    assert report["final_loss"] < report["initial_loss"] - 0.1, report["loss_curve"]
    before, after = report["probe_accuracy_before"], report["probe_accuracy"]
    assert set(after) == {"text", "image"}
    # a random base answers at chance; 100 steps teach it to read the sentiment word (the
    # image question needs about 1,000 steps: the full run reaches 0.998 on both)
    assert before["text"] < 0.7 and after["text"] > 0.9, (before, after)
    assert after["image"] >= before["image"] - 0.05
    assert 0.0 <= report["zero_shot_sarcasm_accuracy"] <= 1.0
    json.dumps(report)  # the report is JSON-able


def test_cache_trains_once_and_loads_identical_weights(tmp_path, monkeypatch):
    trained = {}
    real = tiny.pretrain_tiny_base

    def spy(*args, **kwargs):
        base, processor, report = real(*args, **kwargs)
        trained.setdefault("bases", []).append(base)
        return base, processor, report

    monkeypatch.setattr(tiny, "pretrain_tiny_base", spy)
    base, processor = pretrained_tiny_base(cache_dir=tmp_path, **SMALL, **SMALL_EXTRA)
    folder = pretrained_cache_path(None, tmp_path, **SMALL)
    assert len(trained["bases"]) == 1
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(folder)]  # no staging folder left
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
                 "pretraining_report.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    with open(os.path.join(folder, "pretraining_report.json")) as handle:
        report = json.load(handle)
    assert report["steps"] == SMALL["steps"] and set(report["probe_accuracy"]) == {"text", "image"}
    assert tiny.pretrained_tiny_report(None, tmp_path, **SMALL) == report
    assert tiny.is_pretrained_tiny_cached(None, tmp_path, **SMALL)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached base was trained again")

    monkeypatch.setattr(tiny, "pretrain_tiny_base", no_training)
    again, again_processor = pretrained_tiny_base(cache_dir=tmp_path, **SMALL, **SMALL_EXTRA)
    _, built_processor = tiny.build_tiny_base()
    assert again_processor.tokenizer.get_vocab() == built_processor.tokenizer.get_vocab()
    inputs = _sample_inputs(again_processor)
    reference = _logits(trained["bases"][0], inputs)
    assert torch.equal(_logits(again, inputs), reference)
    assert torch.equal(_logits(base, inputs), reference)
    assert not torch.equal(_logits(tiny.build_tiny_base()[0], inputs), reference)  # it did train

    # the MMEJDModel on the cached base reads the same logits (experts start as no-ops)
    model = tiny.pretrained_tiny_model(cache_dir=tmp_path, pretraining=SMALL)
    from mme_jd.modeling.counterfactual_mme_jd import call_processor

    rows = tiny._pretraining_rows(4, 5, 32)
    model_inputs = call_processor(model.processor, model.config, list(rows["text"]), list(rows["image"]))
    with torch.no_grad():
        class_logits = model(**model_inputs, mode="general").logits
        lm_logits = again(**model_inputs).logits
    last = model_inputs["attention_mask"].sum(1) - 1
    expected = lm_logits[torch.arange(4), last][:, model.config.label_token_ids]
    assert torch.allclose(class_logits, expected, atol=1e-5)

    # rebuild trains again and replaces the folder
    monkeypatch.setattr(tiny, "pretrain_tiny_base", spy)
    pretrained_tiny_base(cache_dir=tmp_path, rebuild=True, **SMALL, **SMALL_EXTRA)
    assert len(trained["bases"]) == 2
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(folder)]


def test_cache_key_changes_with_settings_and_hyperparameters(tmp_path, monkeypatch):
    default = pretrained_cache_path(TinySettings(), tmp_path)
    assert default == pretrained_cache_path(None, tmp_path)
    assert os.path.dirname(default) == str(tmp_path)
    assert os.path.basename(default).startswith("tiny-pretrained-")
    others = [
        pretrained_cache_path(TinySettings(hidden_size=32), tmp_path),
        pretrained_cache_path(TinySettings(seed=1), tmp_path),
        pretrained_cache_path(None, tmp_path, steps=100),
        pretrained_cache_path(None, tmp_path, pool_size=1000),
        pretrained_cache_path(None, tmp_path, batch_size=32),
        pretrained_cache_path(None, tmp_path, lr=1e-3),
        pretrained_cache_path(None, tmp_path, seed=1),
    ]
    assert len({default, *others}) == len(others) + 1
    monkeypatch.setenv("MME_JD_CACHE", str(tmp_path / "elsewhere"))
    assert pretrained_cache_path() == str(tmp_path / "elsewhere" / os.path.basename(default))
    monkeypatch.delenv("MME_JD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained_cache_path() == str(tmp_path / "xdg" / "mme_jd" / os.path.basename(default))


def _complete_folder(path, marker: str) -> None:
    path.mkdir()
    (path / "config.json").write_text(marker)
    (path / "pretraining_report.json").write_text("{}")


def test_publish_keeps_the_folder_of_the_process_that_won_the_race(tmp_path):
    folder, staging = tmp_path / "tiny-pretrained-x", tmp_path / ".tiny-pretrained-x.tmp"
    _complete_folder(staging, "ours")
    assert tiny._publish(str(staging), str(folder)) is True
    assert (folder / "config.json").read_text() == "ours" and not staging.exists()
    _complete_folder(staging, "late")
    assert tiny._publish(str(staging), str(folder)) is False  # theirs stays, ours is removed
    assert (folder / "config.json").read_text() == "ours" and not staging.exists()
    _complete_folder(staging, "rebuilt")
    assert tiny._publish(str(staging), str(folder), replace=True) is True
    assert (folder / "config.json").read_text() == "rebuilt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-pretrained-x"]


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        pretrain_tiny_base(steps=0, progress=False)


BUILD_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from mme_jd.tiny import pretrain_tiny_base
base, _, _ = pretrain_tiny_base(steps=40, pool_size=512, batch_size=32, progress=False, probe_rows=0,
                                zero_shot_rows=0)
torch.save(base.state_dict(), sys.argv[2])
"""


@pytest.mark.slow
def test_pretraining_is_bit_identical_across_processes_and_close_across_thread_counts(tmp_path):
    """Same thread count, two processes: identical weights. 1 against 2 threads: CPU matmuls
    sum in another order, so the weights differ in the last bits (7.8e-6 after these 40 steps)
    and drift further over the full 2,500 steps. That is why the default base ships as a file
    (`mme_jd.tiny.shipped_pretrained_path`) instead of being rebuilt on each machine."""
    import subprocess
    import sys

    from mme_jd.provenance import tensors_sha256

    states = {}
    for name, threads in (("one", 1), ("one_again", 1), ("two", 2)):
        path = tmp_path / f"{name}.pt"
        run = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(threads), str(path)], capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        states[name] = torch.load(path)
    digests = {name: tensors_sha256(state.items()) for name, state in states.items()}
    assert digests["one"] == digests["one_again"]
    difference = max((states["one"][k] - states["two"][k]).abs().max().item() for k in states["one"])
    assert difference < 1e-4, difference


def test_the_default_base_ships_with_the_package_and_matches_its_checksum():
    folder = tiny.shipped_pretrained_path()
    assert folder is not None and folder.name == os.path.basename(pretrained_cache_path())
    tiny.verify_shipped(folder)  # the weights file matches SHA256SUMS
    report = tiny.pretrained_tiny_report()
    assert report["steps"] == 2500 and min(report["probe_accuracy"].values()) > 0.95, report["probe_accuracy"]
