"""Publish an MME-JD model to the Hugging Face Hub: files, model card, upload.

    publish(model_folder, "user/my-mme-jd", report="eval/report.json", base_model=..., datasets=[...])

1. the model is loaded from its folder (or taken as given) and saved into a fresh upload folder
   with `MMEJDModel.save_pretrained`: weights, config.json (with `auto_map` and
   `custom_pipelines`), the remote code (configuration, modeling, counterfactual, inputs and
   pipeline files) and the processor;
2. the model card `README.md` is rendered from `hub_cards/model_card.md` (Jinja) through
   `huggingface_hub.ModelCard.from_template` with `ModelCardData`: license, base_model,
   datasets, metrics, pipeline_tag, tags and `eval_results` from an evaluation report (the
   JSON of `mme_jd.evaluation.report.write_report`: task metrics, worst-group and
   group-average accuracy, calibration error, the router's shares);
3. unless `dry_run`, `HfApi.create_repo(exist_ok=True)`, then `HfApi.upload_folder` twice:
   the model files first, the card last (transformers' `push_to_hub` writes its own
   README.md, so the card goes after the weights).

Each upload names its files explicitly (`allow_patterns`), so exactly the listed files go up.
The upload folder is built in a temporary sibling folder and moved into place, so a failed
publish never leaves a half-written folder; an existing folder is replaced only when an
earlier publish made it (it holds `.mme-jd-publish.json`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .evaluation.report import METRIC_LABELS
from .files import atomic_write_text

__all__ = ["PublishResult", "build_model_card", "eval_results_from_report", "load_report", "publish",
           "template_path"]

CARD_NAME = "README.md"
MARKER_NAME = ".mme-jd-publish.json"
DEFAULT_TAGS = ("mme-jd", "multimodal-debias", "debiasing", "mixture-of-experts", "lora", "custom_code")
DEFAULT_PIPELINE_TAG = "image-text-to-text"
_METRIC_NAMES = {
    **METRIC_LABELS,
    "worst_group_accuracy": "Worst-group accuracy",
    "group_average_accuracy": "Group-average accuracy",
    "ece": "Expected calibration error",
    "routed_away_share": "Share routed away from the general expert",
}


@dataclass
class PublishResult:
    """What `publish` wrote and sent.

    folder: the upload folder. files: the model files of the first upload (paths relative to
    the folder, sorted); the card (README.md) goes up after them. card: the rendered card.
    uploaded: False for a dry run. repo_id: the repository (as the Hub names it after
    create_repo). commits: what each `upload_folder` call returned.
    """

    folder: Path
    files: list[str]
    card: ModelCard
    repo_id: str
    uploaded: bool = False
    commits: list[Any] = field(default_factory=list)

    @property
    def upload_order(self) -> list[list[str]]:
        """The files of each upload, in order: the model files, then the card."""
        return [list(self.files), [CARD_NAME]]


# ---------------------------------------------------------------------------- template


def template_path() -> Path:
    """The model card template `hub_cards/model_card.md`.

    The repository's `hub_cards/` folder ships in the wheel as the package `mme_jd.hub_cards`
    (pyproject.toml maps it like `modeling/`), so an editable install reads the repository's
    file and a wheel its copy of it. An editable install made before that mapping existed
    reads the file from the source tree.
    """
    try:
        import mme_jd.hub_cards as cards

        return Path(cards.__file__).resolve().with_name("model_card.md")
    except ImportError:
        return Path(__file__).resolve().parents[2] / "hub_cards" / "model_card.md"


# ---------------------------------------------------------------------------- report


def load_report(report: str | os.PathLike | Mapping | None) -> dict | None:
    """An evaluation report as a dict (a path to its JSON, or the dict itself), checked."""
    if report is None:
        return None
    if isinstance(report, Mapping):
        data = dict(report)
        source = "the report"
    else:
        path = Path(report)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation report not found: {str(path)!r}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"evaluation report {str(path)!r} is not valid JSON ({error}).") from None
        source = repr(str(path))
    if not isinstance(data, dict) or not any(key in data for key in ("metrics", "groups", "router")):
        raise ValueError(
            f"{source} is not an evaluation report: expected a JSON object with 'metrics' (and 'groups', "
            "'router', ...) as mme_jd.evaluation.report.write_report writes."
        )
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def report_rows(report: Mapping | None) -> tuple[list[dict], list[dict], float | None]:
    """(metric rows, routing rows, routed-away share) of a report, for the card and eval_results.

    Metric rows: every number of report["metrics"], then worst-group and group-average accuracy
    (report["groups"]) and the expected calibration error (report["calibration"]["ece"]).
    Routing rows: report["router"]["predicted_share"] per strategy.
    """
    if not report:
        return [], [], None
    rows = []
    for key, value in (report.get("metrics") or {}).items():
        if _number(value) is not None:
            rows.append({"key": key, "name": _METRIC_NAMES.get(key, key), "value": _number(value)})
    groups = report.get("groups") or {}
    for key in ("worst_group_accuracy", "group_average_accuracy"):
        if _number(groups.get(key)) is not None:
            name = _METRIC_NAMES[key]
            if key == "worst_group_accuracy" and groups.get("worst_group") is not None:
                name = f"{name} ({groups['worst_group']})"
            rows.append({"key": key, "name": name, "value": _number(groups[key])})
    ece = (report.get("calibration") or {}).get("ece")
    if _number(ece) is not None:
        rows.append({"key": "ece", "name": _METRIC_NAMES["ece"], "value": _number(ece)})
    router = report.get("router") or {}
    routing = [
        {"strategy": str(strategy), "share": _number(share)}
        for strategy, share in (router.get("predicted_share") or {}).items()
        if _number(share) is not None
    ]
    return rows, routing, _number(router.get("routed_away_share"))


def eval_results_from_report(
    report: Mapping | None,
    dataset_type: str,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    task_type: str = DEFAULT_PIPELINE_TAG,
) -> list[EvalResult]:
    """`EvalResult`s of a report: its metrics (see `report_rows`), then the router's share of
    each strategy (`router_share_<strategy>`) and the share routed away."""
    metrics, routing, away = report_rows(report)
    entries = [(row["key"], row["name"], row["value"]) for row in metrics]
    entries += [(f"router_share_{row['strategy']}", f"Router share: {row['strategy']}", row["share"])
                for row in routing]
    if away is not None:
        entries.append(("routed_away_share", _METRIC_NAMES["routed_away_share"], away))
    return [
        EvalResult(task_type=task_type, task_name="Multimodal debiased classification", dataset_type=dataset_type,
                   dataset_name=dataset_name or dataset_type, dataset_split=dataset_split, metric_type=key,
                   metric_name=name, metric_value=value)
        for key, name, value in entries
    ]


# ---------------------------------------------------------------------------- card


def build_model_card(
    config: Any,
    repo_id: str,
    report: str | os.PathLike | Mapping | None = None,
    *,
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_split: str | None = "test",
    tags: Sequence[str] | None = None,
    pipeline_tag: str = DEFAULT_PIPELINE_TAG,
    template: str | os.PathLike | None = None,
    training: Mapping | None = None,
) -> ModelCard:
    """Render the model card of an MME-JD model (its `MMEJDConfig`) for `repo_id`.

    `training`: the settings the model was trained with (`MMEJDTrainingConfig` as a dict, the
    `settings` of the training report `train` saves beside the checkpoint); the card names the
    routing cost tolerance from them, and leaves that row out without them.

    The metadata (`ModelCardData`): license, base_model, datasets, metrics (the report's
    metric ids), pipeline_tag, tags (DEFAULT_TAGS + `tags`), library_name "transformers" and
    `eval_results` (see `eval_results_from_report`; they need a dataset: the first of
    `datasets`, else "custom"). The body comes from `template` (default `template_path()`).
    """
    from . import __version__

    report = load_report(report)
    datasets = [str(d) for d in (datasets or [])]
    dataset_type = datasets[0] if datasets else "custom"
    eval_results = eval_results_from_report(report, dataset_type, dataset_type, dataset_split, pipeline_tag)
    metrics, routing, away = report_rows(report)
    card_data = ModelCardData(
        license=license,
        base_model=base_model,
        datasets=datasets or None,
        metrics=[row["key"] for row in metrics] or None,
        pipeline_tag=pipeline_tag,
        tags=[*DEFAULT_TAGS, *(tags or [])],
        library_name="transformers",
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    words = list(config.label_words or [""] * len(config.id2label))
    labels = [{"id": i, "name": config.id2label[i], "word": words[i]} for i in range(len(config.id2label))]
    settings = {name: getattr(config, name) for name in (
        "mode", "lambda_text", "lambda_image", "router_threshold", "expert_execution", "correction",
        "text_counterfactual", "image_counterfactual", "image_mask_ratio")}
    settings["router_cost_tolerance"] = (training or {}).get("router_cost_tolerance")
    strategy = config.routed_strategy
    if config.single_routed_expert is not None:
        settings["routing"] = f"every sample to the `{config.single_routed_expert}` expert alone (one pass)"
    else:
        settings["routing"] = (f"samples the router sends away from `none` get "
                               f"{f'`{strategy}`' if strategy else 'the strategy the router picks'}")
    path = Path(template) if template is not None else template_path()
    if not path.is_file():
        raise FileNotFoundError(f"model card template not found: {str(path)!r}")
    return ModelCard.from_template(
        card_data, template_path=str(path), repo_id=repo_id, model_title=repo_id.split("/")[-1],
        base_model=base_model, labels=labels, settings=settings, eval_rows=metrics, routing=routing,
        routed_away_share=away, dataset_name=dataset_type, dataset_split=dataset_split,
        num_samples=(report or {}).get("num_samples"), mme_jd_version=__version__,
    )


# ---------------------------------------------------------------------------- folder


def _load_model(model_or_folder: Any, trust_remote_code: bool = False):
    """(model, processor, source folder or None) from a folder or an `MMEJDModel`. The
    folder's own Python code (`auto_map`) runs only when the caller sets `trust_remote_code`
    (the user's opt-in)."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        folder = Path(model_or_folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no saved model in {str(folder)!r} (config.json missing).")
        from transformers import AutoModel, AutoProcessor

        from . import register_auto_classes

        register_auto_classes()
        model = AutoModel.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        if getattr(model.config, "model_type", None) != "mme_jd":
            raise ValueError(f"{str(folder)!r} holds a {model.config.model_type!r} model, not an MME-JD model.")
        try:
            processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            if "custom code" in str(error) and not trust_remote_code:
                raise ValueError(
                    f"the processor saved in {str(folder)!r} is Python code of that folder (auto_map), which runs "
                    "only with your consent: inspect it, then pass trust_remote_code=True (--trust-remote-code)."
                ) from None
            raise ValueError(
                f"no processor saved in {str(folder)!r} ({error}); save the model with its processor "
                "(model.save_pretrained(folder, processor=processor))."
            ) from None
        return model, processor, folder
    model = model_or_folder
    if getattr(getattr(model, "config", None), "model_type", None) != "mme_jd":
        raise ValueError(f"publish needs an MME-JD model or its folder, got {type(model).__name__}.")
    if getattr(model, "processor", None) is None:
        raise ValueError("the model has no processor attached (model.processor); set it before publishing.")
    return model, model.processor, None


def _training_settings(folder: Path | None) -> dict | None:
    """The training settings of the training report saved in a model folder (None without one:
    the card goes without them)."""
    from .training.run import saved_training_settings

    return saved_training_settings(folder) if folder is not None else None


def _files(folder: Path) -> list[str]:
    return sorted(
        path.relative_to(folder).as_posix() for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def prepare_folder(model_or_folder: Any, folder: str | os.PathLike, repo_id: str, trust_remote_code: bool = False,
                   **card_options: Any) -> PublishResult:
    """Write the upload folder: model files (see the module docstring) and README.md.

    `folder` must not exist, be empty, or be an earlier publish's folder (it is replaced).
    trust_remote_code: let a model folder run Python code of its own (off by default)."""
    model, processor, source = _load_model(model_or_folder, trust_remote_code=trust_remote_code)
    card_options.setdefault("training", _training_settings(source))
    card = build_model_card(model.config, repo_id, **card_options)
    target = Path(folder).resolve()
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MARKER_NAME).is_file())):
        raise ValueError(
            f"the upload folder {str(target)!r} exists and was not written by `mme-jd publish`; choose another "
            "--output-dir or remove it."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        model.save_pretrained(staging, processor=processor)
        files = _files(staging)
        atomic_write_text(staging / CARD_NAME, str(card))
        atomic_write_text(staging / MARKER_NAME, json.dumps({"repo_id": repo_id, "files": files}, indent=2))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return PublishResult(folder=target, files=files, card=card, repo_id=repo_id)


# ---------------------------------------------------------------------------- publish


def publish(
    model_folder: str | os.PathLike | Any,
    repo_id: str,
    *,
    report: str | os.PathLike | Mapping | None = None,
    output_dir: str | os.PathLike | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_split: str | None = "test",
    tags: Sequence[str] | None = None,
    pipeline_tag: str = DEFAULT_PIPELINE_TAG,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api: Any = None,
    trust_remote_code: bool = False,
) -> PublishResult:
    """Save an MME-JD model with its processor, remote code, pipeline config and model card into
    an upload folder, and upload it to `repo_id` (see the module docstring).

    Args:
        model_folder: a folder written by `MMEJDModel.save_pretrained` (or a model object
            with its processor attached).
        repo_id: "user/name" on the Hub.
        report: an evaluation report (path to report.json, or its dict) for the card's
            `eval_results` and tables.
        output_dir: the upload folder (default: "<model_folder>-hub" beside the model, or
            "hub_upload/<name>" for a model object).
        license, base_model, datasets, dataset_split, tags, pipeline_tag: card metadata.
        private, token, revision, commit_message: passed to the Hub calls.
        dry_run: write the folder and card, upload nothing.
        api: an `HfApi`-like object (default `HfApi(token=token)`); tests pass a fake.
        trust_remote_code: let the model folder run Python code of its own (`auto_map`); off
            by default, an MME-JD folder needs none.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/") or " " in repo_id:
        raise ValueError(f"repo_id {repo_id!r} must look like 'user/name'.")
    report = load_report(report)  # fail before loading the model
    if output_dir is None:
        if isinstance(model_folder, (str, os.PathLike)):
            source = Path(model_folder).resolve()
            output_dir = source.with_name(source.name + "-hub")
        else:
            output_dir = Path("hub_upload") / repo_id.split("/")[-1]
    result = prepare_folder(
        model_folder, output_dir, repo_id, trust_remote_code=trust_remote_code, report=report, license=license,
        base_model=base_model, datasets=datasets, dataset_split=dataset_split, tags=tags, pipeline_tag=pipeline_tag,
    )
    if dry_run:
        return result
    api = api if api is not None else HfApi(token=token)
    created = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
    result.repo_id = getattr(created, "repo_id", None) or repo_id
    common = {"repo_id": result.repo_id, "folder_path": str(result.folder), "repo_type": "model",
              "revision": revision, "token": token}
    result.commits.append(api.upload_folder(
        **common, allow_patterns=list(result.files),
        commit_message=commit_message or "Upload MME-JD model (weights, processor, remote code, pipeline)",
    ))
    result.commits.append(api.upload_folder(**common, allow_patterns=[CARD_NAME], commit_message="Add model card"))
    result.uploaded = True
    return result
