"""Publishing: the rendered model card's metadata, the upload folder, exactly which files go up
(and in which order) through an injected fake HfApi, and `model.push_to_hub` carrying the
remote code. No test touches the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from mme_jd import hub
from mme_jd.evaluation.diagnostics import Evaluator
from mme_jd.evaluation.report import write_report

MODEL_FILES = ["config.json", "configuration_mme_jd.py", "counterfactual_mme_jd.py", "inputs_mme_jd.py",
               "layouts_mme_jd.py", "model.safetensors", "modeling_mme_jd.py", "pipeline_mme_jd.py",
               "processor_config.json", "routing_mme_jd.py", "tokenizer.json", "tokenizer_config.json"]


class FakeHfApi:
    """Records the Hub calls publish makes; uploads nothing."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        # what would go up: the folder's files that the allow patterns name (exact names here)
        sent = [name for name in present if name in kwargs["allow_patterns"]]
        self.calls.append(("upload_folder", kwargs["repo_id"], sent, kwargs))
        return f"commit-{len(self.calls)}"


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> Path:
    evaluator = Evaluator([1, 0, 0, 1, 1, 0], groups=[0, 0, 1, 1, 2, 2], group_names=["a", "b", "c"])
    results = evaluator.evaluate(
        [1, 0, 1, 1, 0, 0], probabilities=[[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.55, 0.45], [0.7, 0.3]],
        strategies=["none", "image", "none", "text", "both", "none"],
    )
    out = tmp_path_factory.mktemp("report")
    return write_report(results, out, formats=("json",))["json"]


@pytest.fixture
def model_folder(tiny_llava_model, tmp_path) -> Path:
    folder = tmp_path / "run" / "final"
    tiny_llava_model.save_pretrained(folder)
    (folder / "notes.txt").write_text("a file of the run that must not be uploaded")
    return folder


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_metadata_from_the_report(tiny_llava_model, report_path):
    report = json.loads(report_path.read_text())
    card = hub.build_model_card(tiny_llava_model.config, "me/mme-jd-tiny", report_path,
                                base_model="llava-hf/llava-1.5-7b-hf", datasets=["me/mmsd"], tags=["sarcasm"])
    meta = _front_matter(str(card))
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "llava-hf/llava-1.5-7b-hf"
    assert meta["datasets"] == ["me/mmsd"]
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["library_name"] == "transformers"
    assert {"mme-jd", "multimodal-debias", "custom_code", "sarcasm"} <= set(meta["tags"])
    assert meta["metrics"][:2] == ["accuracy", "macro_precision"] and "worst_group_accuracy" in meta["metrics"]
    (index,) = meta["model-index"]
    assert index["name"] == "mme-jd-tiny"
    (result,) = index["results"]
    assert result["dataset"] == {"name": "me/mmsd", "type": "me/mmsd", "split": "test"}
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    assert values["worst_group_accuracy"] == pytest.approx(report["groups"]["worst_group_accuracy"])
    assert values["group_average_accuracy"] == pytest.approx(report["groups"]["group_average_accuracy"])
    for strategy, share in report["router"]["predicted_share"].items():
        assert values[f"router_share_{strategy}"] == pytest.approx(share)
    assert values["routed_away_share"] == pytest.approx(0.5)
    # the card round-trips through huggingface_hub and the body has the tables
    parsed = ModelCard(str(card))
    assert parsed.data.eval_results[0].metric_type == "accuracy"
    body = parsed.text
    assert 'pipeline(model="me/mme-jd-tiny", trust_remote_code=True)' in body
    assert 'pipeline("multimodal-debias", model="me/mme-jd-tiny")' in body
    assert "| Worst-group accuracy (b) | 0.5000 |" in body
    assert "| none | 0.5000 |" in body and "| 1 | sarcastic | yes |" in body
    assert "| routing | samples the router sends away from `none` get the strategy the router picks |" in body


def test_card_names_a_single_expert_routing(tiny_llava_model):
    config = tiny_llava_model.config.__class__.from_dict(tiny_llava_model.config.to_dict())
    config.routed_strategy, config.router_threshold = "text", 0.0
    body = ModelCard(str(hub.build_model_card(config, "me/x", training={"router_cost_tolerance": 0.01}))).text
    assert "| routing | every sample to the `text_debias` expert alone (one pass) |" in body
    assert "cheaper routing) | 0.01 |\n| expert execution |" in body
    # the tolerance is a training setting: without the training report the card leaves its row out
    assert "cheaper routing" not in ModelCard(str(hub.build_model_card(config, "me/x"))).text


def test_card_without_report(tiny_llava_model):
    meta = _front_matter(str(hub.build_model_card(tiny_llava_model.config, "me/x")))
    assert "model-index" not in meta and "base_model" not in meta and meta["license"] == "apache-2.0"


def test_bad_reports(tiny_llava_model, tmp_path):
    with pytest.raises(FileNotFoundError):
        hub.build_model_card(tiny_llava_model.config, "me/x", tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        hub.build_model_card(tiny_llava_model.config, "me/x", broken)
    with pytest.raises(ValueError, match="not an evaluation report"):
        hub.build_model_card(tiny_llava_model.config, "me/x", {"loss": 1})


def test_template_is_the_repository_file_and_ships_in_the_wheel():
    root = Path(__file__).resolve().parents[1]
    assert hub.template_path() == root / "hub_cards" / "model_card.md"
    pyproject = (root / "pyproject.toml").read_text()
    assert '"mme_jd.hub_cards" = "hub_cards"' in pyproject and '"mme_jd.hub_cards" = ["*.md"]' in pyproject


def test_publish_dry_run_writes_the_folder_and_uploads_nothing(model_folder, report_path):
    api = FakeHfApi()
    # the training report train() saves beside the checkpoint: the card's routing cost tolerance
    (model_folder / "training_report.json").write_text(json.dumps({"settings": {"router_cost_tolerance": 0.02}}))
    result = hub.publish(model_folder, "me/mme-jd-tiny", report=report_path, dry_run=True, api=api)
    assert api.calls == [] and not result.uploaded
    assert "cheaper routing) | 0.02 |" in (result.folder / "README.md").read_text()
    assert result.folder == model_folder.with_name("final-hub")
    assert result.files == MODEL_FILES
    assert sorted(p.name for p in result.folder.iterdir()) == sorted([*MODEL_FILES, "README.md", hub.MARKER_NAME])
    config = json.loads((result.folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"}
    assert "multimodal-debias-remote" in config["custom_pipelines"]
    assert _front_matter((result.folder / "README.md").read_text())["model-index"]
    # publishing again replaces the folder it wrote; a foreign folder is refused
    again = hub.publish(model_folder, "me/mme-jd-tiny", dry_run=True, api=api)
    assert again.files == MODEL_FILES and "model-index" not in _front_matter((again.folder / "README.md").read_text())
    foreign = model_folder.parent / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by `mme-jd publish`"):
        hub.publish(model_folder, "me/x", output_dir=foreign, dry_run=True)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_publish_uploads_the_model_files_then_the_card(model_folder, report_path, tmp_path):
    api = FakeHfApi()
    result = hub.publish(model_folder, "me/mme-jd-tiny", report=report_path, output_dir=tmp_path / "upload",
                         private=True, token="hf_fake", api=api)
    assert result.uploaded and result.commits == ["commit-2", "commit-3"]
    (create, name, options), first, second = api.calls
    assert (create, name) == ("create_repo", "me/mme-jd-tiny")
    assert options["private"] is True and options["exist_ok"] is True
    assert first[:3] == ("upload_folder", "me/mme-jd-tiny", MODEL_FILES)
    assert second[:3] == ("upload_folder", "me/mme-jd-tiny", ["README.md"])
    assert first[3]["folder_path"] == second[3]["folder_path"] == str(tmp_path / "upload")
    assert result.upload_order == [MODEL_FILES, ["README.md"]]
    assert "notes.txt" not in first[2] and hub.MARKER_NAME not in first[2]


def test_publish_rejects_bad_arguments(model_folder, tmp_path):
    with pytest.raises(ValueError, match="user/name"):
        hub.publish(model_folder, "not a repo", dry_run=True)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        hub.publish(tmp_path / "nothing", "me/x", dry_run=True)


def test_push_to_hub_alone_carries_the_remote_code(tiny_llava_model, monkeypatch):
    import transformers.utils.hub as transformers_hub

    sent = {}

    class FakeTransformersApi:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            sent["files"] = sorted(op.path_in_repo for op in operations)
            sent["repo_id"] = repo_id
            return "commit"

    monkeypatch.setattr(transformers_hub, "hf_api", lambda: FakeTransformersApi())
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card",
                        lambda repo_id, tags=None, token=None: ModelCard("---\nlicense: mit\n---\n# card"))
    tiny_llava_model.push_to_hub("me/pushed")
    assert sent["repo_id"] == "me/pushed"
    assert sent["files"] == sorted([*MODEL_FILES, "README.md"])
