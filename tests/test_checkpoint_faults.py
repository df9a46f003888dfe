"""Faults of saved checkpoints (issue 12, items 2, 5, 9).

* A save is atomic per folder: a process killed at any moment of `save_pretrained` leaves the
  folder wholly old or wholly new, and the next save removes what the killed one left.
* Loading refuses a checkpoint with missing, unexpected or non-finite tensors, or a truncated
  weights file, with an error that names them.
* A saved processor records nothing of the machine it was loaded on (`is_local`, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import mme_jd  # noqa: F401  (registers the model type)

SAVE_LEFTOVER_TAGS = (".mme-jd-save", ".mme-jd-old")


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A saved tiny MME-JD folder with distinct experts and router."""
    from conftest import nudge_experts
    from families import tiny_llava

    from mme_jd.base import from_base

    base, processor = tiny_llava()
    model = from_base(base, processor).eval()
    nudge_experts(model)
    folder = tmp_path_factory.mktemp("faults") / "model"
    model.save_pretrained(folder)
    return folder


def _leftovers(folder) -> list[str]:
    """Names a save leaves behind when it is killed, in the folder and beside it."""
    names = [*os.listdir(folder), *os.listdir(os.path.dirname(os.path.abspath(folder)))]
    return sorted(name for name in names if any(tag in name for tag in SAVE_LEFTOVER_TAGS))


# ---------------------------------------------------------------------------- kill during save

KILL_DURING_SAVE = r"""
import faulthandler, hashlib, json, os, random, signal, sys, threading, time
import torch
import tqdm
torch.set_num_threads(1)
# No tqdm monitor thread: a fork while it holds tqdm's lock deadlocks the child's first progress
# bar (save_pretrained's "Writing model shards"), as one run in a dozen did under load.
tqdm.tqdm.monitor_interval = 0
import mme_jd
from mme_jd.modeling.modeling_mme_jd import MMEJDModel

source, target, trials, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
DELAY = 0.02  # seconds before every rename, replace and link: a wide window between file moves
model = MMEJDModel.from_pretrained(source)


def use_version(version):
    # the weights and the config change together: a mix of the two saves is detectable
    with torch.no_grad():
        model.router.out.bias.fill_(float(version))
    model.config.router_threshold = (0.5, 0.25)[version]


def snapshot():
    files = {}
    for root, dirs, names in os.walk(target):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = os.path.join(root, name)
                files[os.path.relpath(path, target)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return files


def slowly(function):
    def slowed(*args, **kwargs):
        time.sleep(DELAY)
        return function(*args, **kwargs)
    return slowed


def save_in_a_child(version):
    assert threading.active_count() == 1, [thread.name for thread in threading.enumerate()]  # fork-safe
    pid = os.fork()
    if pid == 0:  # the child saves slowly; the parent kills it
        faulthandler.dump_traceback_later(60, exit=True)  # a hung child prints where, and fails fast
        os.replace, os.rename, os.link = slowly(os.replace), slowly(os.rename), slowly(os.link)
        use_version(version)
        model.save_pretrained(target)
        os._exit(0)
    return pid


os.makedirs(target)
with open(os.path.join(target, "notes.txt"), "w") as handle:
    handle.write("the user's own file")
versions = []
for version in (0, 1):
    use_version(version)
    model.save_pretrained(target)
    versions.append(snapshot())
started = time.perf_counter()  # how long a slowed save takes: the kills fall inside it
_, status = os.waitpid(save_in_a_child(0), 0)
assert os.waitstatus_to_exitcode(status) == 0, f"the timed save in a child failed: status {status}"
window = time.perf_counter() - started
current = 0
rng = random.Random(seed)
outcomes = []
left_behind = 0  # kills after which a staging folder was left (the next save must remove it)
for trial in range(trials):
    pid = save_in_a_child(1 - current)
    time.sleep(rng.uniform(0.0, window))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    left_behind += any(".mme-jd-" in n for n in os.listdir(os.path.dirname(target)) + os.listdir(target))
    state = snapshot()
    if state == versions[current]:
        outcomes.append("old")
    elif state == versions[1 - current]:
        outcomes.append("new")
        current = 1 - current
    else:
        changed = sorted(k for k in set(state) | set(versions[current]) if state.get(k) != versions[current].get(k))
        outcomes.append("mixed: " + ", ".join(changed))
        break
use_version(1 - current)
model.save_pretrained(target)
final_ok = snapshot() == versions[1 - current]
leftovers = sorted(n for n in os.listdir(os.path.dirname(target)) + os.listdir(target) if ".mme-jd-" in n)
print(json.dumps({"outcomes": outcomes, "window": window, "kills_that_left_a_staging_folder": left_behind,
                  "leftovers_after_next_save": leftovers, "next_save_ok": final_ok}))
"""


def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_model(saved_folder, tmp_path):
    target = tmp_path / "work" / "model"
    target.parent.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(saved_folder), str(target), "16", "0"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(outcome in ("old", "new") for outcome in report["outcomes"]), report
    assert "old" in report["outcomes"], report  # the kills did fall inside saves
    assert report["kills_that_left_a_staging_folder"] > 0, report
    assert report["next_save_ok"] and report["leftovers_after_next_save"] == [], report


def test_a_save_removes_the_staging_folders_of_earlier_killed_saves(saved_folder, tmp_path):
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    # what killed saves left: the staging folder of the earlier per-file save (inside the
    # folder) and a staging folder beside it
    (target / ".mme-jd-save-123-abc").mkdir()
    (target / ".mme-jd-save-123-abc" / "model.safetensors").write_bytes(b"a full copy of the weights")
    (tmp_path / ".model.mme-jd-save-456-def").mkdir()
    (tmp_path / ".model.mme-jd-save-456-def" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("beside the folder, not ours")
    MMEJDModel.from_pretrained(target).save_pretrained(target)
    assert _leftovers(target) == []
    assert (tmp_path / "notes.txt").is_file()


def test_a_save_keeps_the_folders_other_entries_and_drops_stale_weight_shards(saved_folder, tmp_path):
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    (target / "checkpoint-3").mkdir()
    (target / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (target / "done.json").write_text("{}")
    (target / "model-00001-of-00002.safetensors").write_bytes(b"a shard of an earlier sharded save")
    mode = os.stat(target).st_mode
    MMEJDModel.from_pretrained(target).save_pretrained(target)
    assert (target / "checkpoint-3" / "trainer_state.json").read_text() == "{}"
    assert (target / "done.json").is_file()
    assert not (target / "model-00001-of-00002.safetensors").exists()
    assert os.stat(target).st_mode == mode


# ---------------------------------------------------------------------------- saved processor


def test_a_saved_processor_records_nothing_of_where_it_was_loaded(saved_folder, tmp_path):
    from transformers import AutoProcessor

    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    model = MMEJDModel.from_pretrained(saved_folder)
    model.processor = AutoProcessor.from_pretrained(saved_folder, local_files_only=True)
    target = tmp_path / "model"
    model.save_pretrained(target)
    for name in os.listdir(target):
        if name.endswith(".json"):
            content = json.loads((target / name).read_text())
            assert not {"is_local", "local_files_only"} & set(content), name
    AutoProcessor.from_pretrained(target)  # still loads


# ---------------------------------------------------------------------------- corrupted checkpoints


def _rewrite_weights(folder, change) -> None:
    """Load `folder/model.safetensors`, let `change(tensors)` edit the dict, write it back."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _drop(fragment):
    def change(tensors):
        for key in [k for k in tensors if fragment in k]:
            del tensors[key]
    return change


def _add_unexpected(tensors):
    tensors["router.3.weight"] = torch.zeros(4, 4)


def _poison(fragment, value):
    def change(tensors):
        key = next(k for k in sorted(tensors) if fragment in k)
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
    return change


CORRUPTIONS = {
    "router missing": (_drop("router."), r"missing.*router\.hidden\.weight"),
    "text expert missing": (_drop(".text_debias."), r"missing.*text_debias"),
    "unexpected tensor": (_add_unexpected, r"unexpected.*router\.3\.weight"),
    "NaN in the router": (_poison("router.out.weight", float("nan")), r"NaN or infinity.*router\.out\.weight"),
    "inf in an expert": (_poison(".lora_B.image_debias.", float("inf")), r"NaN or infinity.*lora_B\.image_debias"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_loading_refuses_a_corrupted_checkpoint_naming_the_tensors(saved_folder, tmp_path, corruption):
    from transformers import AutoModel

    change, message = CORRUPTIONS[corruption]
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    _rewrite_weights(folder, change)
    with pytest.raises(ValueError, match=message):
        AutoModel.from_pretrained(folder)


def test_loading_refuses_a_checkpoint_without_a_linear_head(tmp_path):
    from families import tiny_llava

    from mme_jd.base import from_base
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    base, processor = tiny_llava()
    folder = tmp_path / "model"
    from_base(base, processor, head="linear").save_pretrained(folder)
    _rewrite_weights(folder, _drop("heads.image_debias."))
    with pytest.raises(ValueError, match=r"missing.*heads\.image_debias\.weight"):
        MMEJDModel.from_pretrained(folder)


def test_loading_refuses_a_truncated_weights_file_naming_it(saved_folder, tmp_path):
    from transformers import AutoModel

    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    path = folder / "model.safetensors"
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="model.safetensors"):
        AutoModel.from_pretrained(folder)


def test_a_sound_checkpoint_loads_silently_with_its_loading_info(saved_folder):
    import warnings

    from transformers import AutoModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = AutoModel.from_pretrained(saved_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not [str(w.message) for w in caught if "mme" in str(w.message).lower()]
    assert type(AutoModel.from_pretrained(saved_folder)).__name__ == "MMEJDModel"


def test_without_an_atomic_exchange_a_save_renames_and_recovers(saved_folder, tmp_path, monkeypatch):
    """Where renameat2 is missing the old folder is renamed aside, then the new one into place;
    a kill between the two renames leaves no target, and the next save puts the old one back."""
    from mme_jd.modeling import modeling_mme_jd
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    monkeypatch.setattr(modeling_mme_jd, "_exchange_entries", lambda first, second: False)
    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    (target / "notes.txt").write_text("mine")
    model = MMEJDModel.from_pretrained(target)
    model.config.router_threshold = 0.25
    model.save_pretrained(target)
    assert json.loads((target / "config.json").read_text())["router_threshold"] == 0.25
    assert (target / "notes.txt").read_text() == "mine" and _leftovers(target) == []

    os.rename(target, tmp_path / ".model.mme-jd-old-1-abcd")  # killed between the renames
    model.config.router_threshold = 0.75
    model.save_pretrained(target)
    assert json.loads((target / "config.json").read_text())["router_threshold"] == 0.75
    assert (target / "notes.txt").read_text() == "mine" and _leftovers(target) == []


def test_a_folder_that_cannot_be_swapped_is_saved_file_by_file(saved_folder, tmp_path, monkeypatch):
    from mme_jd.modeling import modeling_mme_jd
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    monkeypatch.setattr(modeling_mme_jd, "_can_stage_beside", lambda target: False)  # e.g. a mount point
    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    model = MMEJDModel.from_pretrained(target)
    model.config.router_threshold = 0.25
    model.save_pretrained(target)
    assert json.loads((target / "config.json").read_text())["router_threshold"] == 0.25
    assert _leftovers(target) == []


def test_saving_through_a_symbolic_link_keeps_the_link(saved_folder, tmp_path):
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    real = tmp_path / "real"
    shutil.copytree(saved_folder, real)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    model = MMEJDModel.from_pretrained(real)
    model.config.router_threshold = 0.25
    model.save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert json.loads((real / "config.json").read_text())["router_threshold"] == 0.25
    assert _leftovers(real) == []
