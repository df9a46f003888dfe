"""The `mme-jd` command line. Each command has `--help`; failures exit non-zero with one line.

Commands: demo, train, evaluate, predict, publish, cues, inspect, app, bench. A command is a
`_<name>(args)` handler plus an `_add_<name>(commands)` function that declares its parser;
`build_parser` calls each adder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .data.sources import DATA_HELP, UnreadableRow, load_split, read_rows
from .files import atomic_write_text
from .modeling.configuration_mme_jd import IMAGE_COUNTERFACTUALS, MODES, TEXT_COUNTERFACTUALS


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars (loading weights, writing shards) and the
    libraries' deprecation warnings (meant for developers, e.g. peft calling a deprecated
    transformers property) while a command runs, so stderr holds the command's progress bar
    and its one-line errors."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch)(\.|$)")
            yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """The `--trust-remote-code` flag of a command that loads a model folder (off by default)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model folder run Python code it ships (its own auto_map classes); off by "
                             "default: a saved MME-JD folder needs none. Inspect the code before allowing it")


@contextlib.contextmanager
def _remote_code_needs_consent(model: str) -> Iterator[None]:
    """Turn transformers' refusal to run a folder's own code without `trust_remote_code=True`
    into one line that names the CLI's flag."""
    try:
        yield
    except ValueError as error:
        if "contains custom code" not in str(error):
            raise
        raise ValueError(
            f"{model!r} ships Python code of its own (auto_map) that loading it would run; inspect that code, then "
            "pass --trust-remote-code to allow it"
        ) from None


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    with _quiet_transformers():
        run_demo(args.output_dir, num_samples=args.samples)


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="run the main job on the embedded tiny default",
                               description="Build the tiny default, run every mode, save, reload in a fresh process.")
    demo.add_argument("--output-dir", default="demo_output", help="where the model and summary go (default: %(default)s)")
    demo.add_argument("--samples", type=int, default=6, help="synthetic rows to run (default: %(default)s)")
    demo.set_defaults(handler=_demo)


# ---------------------------------------------------------------------------- predict


def _pipeline_input(row: dict, folder: Path, image_column: str, text_column: str, label_column: str) -> dict:
    """A row as a pipeline input; a relative image path is relative to the input file's folder."""
    item: dict[str, Any] = {}
    if image_column in row:
        image = row[image_column]
        if isinstance(image, str) and image.strip() and not image.startswith(("http://", "https://")):
            try:
                image = os.path.join(folder, os.path.expanduser(image))
            except ValueError:  # "~user\0...": the pipeline reports the NUL in the path
                pass
        item["image"] = image
    if text_column in row:
        item["text"] = row[text_column]
    if row.get(label_column) not in (None, ""):
        item["label"] = row[label_column]
    return item


def check_output_path(output: str, input_path: str | os.PathLike) -> None:
    """Refuse, before any row is predicted, an output the predictions cannot go to: a folder,
    a path under a file, a folder without write permission, or the input file itself."""
    if output == "-":
        return
    target = Path(output)
    if target.is_dir():
        raise ValueError(f"--output {output!r} is a folder; give a file path, such as "
                         f"{str(target / 'predictions.jsonl')!r}.")
    if target.exists() and os.path.samefile(target, input_path):
        raise ValueError(f"--output {output!r} is the input file; writing there would destroy the rows: "
                         "give another path.")
    if target.exists() and not target.is_file():
        if not os.access(target, os.W_OK):
            raise ValueError(f"--output {output!r} cannot be written (permission denied).")
        return  # a device or FIFO (/dev/stdout): written in place
    folder = target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders that do not exist yet are created when writing
    if not folder.is_dir():
        raise ValueError(f"--output {output!r} cannot be created: {str(folder)!r} is a file, not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output!r} cannot be written: no permission to write in {str(folder)!r}.")


def _json_line(record: dict, encoding: str) -> str:
    """One JSON line, readable as is (ensure_ascii=False) when `encoding` can hold it, else
    with \\u escapes: an echoed input may hold a lone surrogate, which no encoder writes."""
    text = json.dumps(record, ensure_ascii=False, default=str)
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True, default=str)
    return text + "\n"


def _write_jsonl(records: list[dict], output: str) -> None:
    """JSON lines to stdout ('-'), to a device or FIFO in place, or to a file atomically
    (`atomic_write_text`: the file's mode is kept)."""
    if output == "-":
        sys.stdout.write("".join(_json_line(record, sys.stdout.encoding or "utf-8") for record in records))
        sys.stdout.flush()
        return
    text = "".join(_json_line(record, "utf-8") for record in records)
    target = Path(output)
    if target.exists() and not target.is_file():
        with target.open("w", encoding="utf-8") as handle:
            handle.write(text)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)


def check_device(device: str | None) -> None:
    """Refuse a device this PyTorch cannot use (`--device cuda` on a CPU build, `cuda:3` with
    one GPU, a misspelt name) before the model is loaded."""
    if device is None:
        return
    import torch

    hint = "use --device cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; give cpu, cuda, cuda:N, mps or xpu.") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: this PyTorch has no MPS (Apple GPU) support here; {hint}.")
        return
    if parsed.type not in ("cuda", "xpu"):
        raise ValueError(f"--device {device!r}: predictions run on cpu, cuda, mps or xpu; {hint}.")
    backend = getattr(torch, parsed.type)
    if not backend.is_available():
        build = (f"this PyTorch build ({torch.__version__}) has no CUDA support; install a CUDA build of torch or "
                 if parsed.type == "cuda" and torch.version.cuda is None else f"no {parsed.type} device is visible; ")
        raise ValueError(f"--device {device}: {build}{hint}.")
    count = backend.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"--device {device}: only {count} {parsed.type} device(s) are visible "
                         f"({parsed.type}:0 to {parsed.type}:{count - 1}).")


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (library errors can run to a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no details'}"


def load_model(model: str, trust_remote_code: bool = False):
    """An MME-JD model from a saved folder (or Hub id); every expected failure is one short
    line naming the problem and the fix (FileNotFoundError, ValueError, RuntimeError). The
    package's registered classes load it; the folder's own code runs only when the caller
    passes `trust_remote_code` as true (the user's `--trust-remote-code`).

    The config is checked before anything is built: a foreign config (a plain LLaVA or BERT
    folder) would build the wrong model, and one without `base_config` would build the
    default 7B LLaVA."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModel, PretrainedConfig

    from . import register_auto_classes
    from .modeling.configuration_mme_jd import MMEJDConfig

    register_auto_classes()
    folder = Path(model)
    if not folder.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise FileNotFoundError(f"model folder not found: {model!r}")
    if folder.exists() and not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{model!r} holds no config.json: it is not a saved model folder; give a folder "
                                "written by `mme-jd train` or MMEJDModel.save_pretrained.")
    try:
        raw, _ = PretrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as error:
        raise RuntimeError(f"cannot read the config of {model!r}: {_first_line(error)}") from None
    model_type = raw.get("model_type")
    if model_type != MMEJDConfig.model_type:
        raise ValueError(f"{model!r} holds a {model_type!r} model, not an MME-JD model: wrap a base model first "
                         "(mme_jd.from_base(base, processor).save_pretrained(folder)) or give a folder saved by "
                         "`mme-jd train`.")
    if not isinstance(raw.get("base_config"), dict):
        raise ValueError(f"the config.json of {model!r} has no base_config (the base model's config): it is "
                         "damaged; save or download the model again.")
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"the config.json of {model!r} is damaged ({_first_line(error)}); save or download "
                         "the model again.") from None
    try:
        return AutoModel.from_pretrained(model, config=config, trust_remote_code=trust_remote_code)
    except ValueError as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        # the loader's own refusals already name the folder, what is wrong and the fix
        if message.startswith(("refusing the MME-JD checkpoint", "cannot read the weights of")):
            raise ValueError(message) from None
        raise RuntimeError(f"cannot load the weights of {model!r} ({_first_line(error)}): missing or damaged; "
                           "save or download the model again.") from None
    except (OSError, SafetensorError, ValueError, RuntimeError, KeyError) as error:
        raise RuntimeError(f"cannot load the weights of {model!r} ({_first_line(error)}): missing or damaged; "
                           "save or download the model again.") from None


def load_pipeline(model: str, device: str | None = None, trust_remote_code: bool = False):
    """The `multimodal-debias` pipeline of a saved model folder (or Hub id), on `device`
    (default: the first GPU, else cpu); failures as in `check_device` and `load_model`. The
    folder's own Python code (`auto_map`) runs only when `trust_remote_code` is true (the
    user's `--trust-remote-code`)."""
    from transformers import pipeline

    check_device(device)
    return pipeline("multimodal-debias", model=load_model(model, trust_remote_code=trust_remote_code),
                    device=device, trust_remote_code=trust_remote_code)


def predict_file(
    model: str,
    input_path: str | os.PathLike,
    output: str | None = None,
    *,
    mode: str | None = None,
    batch_size: int = 8,
    top_k: int | None = None,
    explain: bool = False,
    return_experts: bool = False,
    on_error: str = "raise",
    device: str | None = None,
    image_column: str = "image",
    text_column: str = "text",
    label_column: str = "label",
    input_format: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Predict every row of a JSONL/CSV file with the `multimodal-debias` pipeline (the
    `mme-jd predict` command). Each output line: {"index", "input": the row as read, "label",
    "score", "strategy", "scores", ...} or, for a bad row with on_error="report",
    {"index", "input", "error", ...} (the input of a line that is not a JSON object is its
    text). The rows, the output path and the device are checked before the model is loaded.
    Returns a summary (rows, predicted, failed, first_error, strategies, output).
    trust_remote_code: let the model folder run Python code of its own (off by default)."""
    from tqdm.auto import tqdm

    rows = read_rows(input_path, input_format, keep_unreadable=on_error == "report")
    if not rows:
        raise ValueError(f"{str(input_path)!r} holds no rows.")
    output = output or str(Path(input_path).with_name(Path(input_path).stem + ".predictions.jsonl"))
    check_output_path(output, input_path)
    folder = Path(input_path).resolve().parent
    # an unreadable line is given as {} (a bad input in its place) and its own problem reported below
    items = [{} if isinstance(row, UnreadableRow) else
             _pipeline_input(row, folder, image_column, text_column, label_column) for row in rows]
    pipe = load_pipeline(model, device, trust_remote_code=trust_remote_code)
    options = {"mode": mode, "top_k": top_k, "explain": explain, "return_experts": return_experts,
               "errors": on_error}
    with tqdm(total=len(items), desc="predict", unit="row", file=sys.stderr, disable=not progress) as bar:
        results = pipe(items, batch_size=batch_size, progress_callback=lambda done, total: bar.update(done - bar.n),
                       **{k: v for k, v in options.items() if v is not None})
    records = []
    for index, (row, result) in enumerate(zip(rows, results)):
        if isinstance(row, UnreadableRow):
            row, result = row.text, {**result, "error": f"input {index}: {row.problem}"}
        records.append({"index": index, "input": row, **result})
    _write_jsonl(records, output)
    errors = [record["error"] for record in records if record.get("error")]
    return {
        "rows": len(rows), "predicted": len(rows) - len(errors), "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "strategies": dict(Counter(r["strategy"] for r in results if r.get("strategy") is not None)),
        "output": output,
    }


def _predict(args: argparse.Namespace) -> None:
    with _quiet_transformers(), _remote_code_needs_consent(args.model):
        summary = predict_file(
            args.model, args.input, args.output, mode=args.mode, batch_size=args.batch_size, top_k=args.top_k,
            explain=args.explain, return_experts=args.return_experts, on_error=args.on_error, device=args.device,
            image_column=args.image_column, text_column=args.text_column, label_column=args.label_column,
            input_format=args.format, progress=not args.no_progress, trust_remote_code=args.trust_remote_code,
        )
    counts = ", ".join(f"{name} {count}" for name, count in summary["strategies"].items())
    print(f"predicted {summary['predicted']} of {summary['rows']} rows → {summary['output']}"
          + (f" (strategies: {counts})" if counts else ""), file=sys.stderr)
    if summary["failed"]:
        raise ValueError(f"{summary['failed']} of {summary['rows']} rows failed (first: {summary['first_error']}); "
                         f"their 'error' field in {summary['output']} says why")


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict", help="classify the image/text rows of a JSONL or CSV file",
        description=(
            "Run the multimodal-debias pipeline over the rows of a JSONL or CSV file and write one JSON\n"
            "line per row: the row's index and input, the predicted label, its score, the debiasing\n"
            "strategy and the scores of every class. A progress bar goes to stderr."
        ),
        epilog=(
            "A row's image is a file path, absolute or relative to the input file's folder; 'input N'\n"
            "in messages is the N-th row, counted from 0. With --on-error raise (default) a bad row\n"
            "stops the run (exit 1, nothing written); with report every row is written, bad ones with\n"
            "an 'error' field (a JSONL line that is not a JSON object too), and the exit status is 1\n"
            "when any row failed. The output path, the device and the model are checked before any\n"
            "row is predicted; every failure is one line on stderr and exit status 1.\n\n"
            "example: mme-jd predict my-mme-jd rows.jsonl --output predictions.jsonl --mode mme_jd"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("model", help="a saved MME-JD model folder (or a Hub id) with its processor")
    predict.add_argument("input",
                         help="the rows: a .jsonl file (one JSON object per line) or a .csv file with a header")
    predict.add_argument("--output", "-o", default=None,
                         help="where the predictions go, one JSON object per line (.jsonl), written atomically "
                              "(an existing file keeps its permissions; the input file is refused); "
                              "default: <input>.predictions.jsonl beside the input; '-' for stdout")
    predict.add_argument("--format", choices=("jsonl", "csv"), default=None,
                         help="the input's format (default: from its extension: .jsonl/.json or .csv)")
    predict.add_argument("--image-column", default="image",
                         help="the column holding the image path (default: %(default)s)")
    predict.add_argument("--text-column", default="text", help="the column holding the text (default: %(default)s)")
    predict.add_argument("--label-column", default="label",
                         help="an optional column with the true label (name or id), checked against the model's "
                              "labels and copied to 'true_label'; ignored when absent (default: %(default)s)")
    predict.add_argument("--mode", choices=("general", "mid", "mctd", "mme_jd"), default=None,
                         help="the debiasing mode (default: the model's config.mode)")
    predict.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (default: %(default)s)")
    predict.add_argument("--top-k", type=int, default=None,
                         help="keep the K most probable classes in 'scores' (default: every class)")
    predict.add_argument("--explain", action="store_true",
                         help="add the counterfactuals' scores and the masked words and image patches")
    predict.add_argument("--return-experts", action="store_true", help="add every expert's scores (and the router's)")
    predict.add_argument("--on-error", choices=("raise", "report"), default="raise",
                         help="bad rows (missing or corrupt image, empty text, unknown label ...): 'raise' stops "
                              "at the first, 'report' writes them with an 'error' field (default: %(default)s)")
    predict.add_argument("--device", default=None,
                         help="where the model runs: cpu, cuda, cuda:1, mps ... (default: the first GPU, else cpu)")
    predict.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    _add_trust_remote_code(predict)
    predict.set_defaults(handler=_predict)


# ---------------------------------------------------------------------------- publish


def _publish(args: argparse.Namespace) -> None:
    from .hub import publish

    try:
        with _quiet_transformers(), _remote_code_needs_consent(args.model):
            result = publish(
                args.model, args.repo_id, report=args.report, output_dir=args.output_dir, license=args.license,
                base_model=args.base_model, datasets=args.dataset, dataset_split=args.dataset_split, tags=args.tag,
                pipeline_tag=args.pipeline_tag, private=args.private or None, token=args.token,
                revision=args.revision, commit_message=args.commit_message, dry_run=args.dry_run,
                trust_remote_code=args.trust_remote_code,
            )
    except OSError as error:  # Hub errors (HTTP, missing token) are OSErrors; keep the one-line contract
        if isinstance(error, FileNotFoundError):
            raise
        lines = str(error).strip().splitlines()
        raise RuntimeError(f"{type(error).__name__}: {lines[0] if lines else 'no details'}") from None
    files = ", ".join(result.files)
    if result.uploaded:
        print(f"uploaded to https://huggingface.co/{result.repo_id}: {files}, then {result.upload_order[1][0]}")
    else:
        print(f"dry run: wrote {result.folder} ({files}, README.md); nothing uploaded")


def _add_publish(commands) -> None:
    publish = commands.add_parser(
        "publish", help="upload a saved model, its processor, remote code and model card to the Hub",
        description=(
            "Save the model with its processor, remote code (configuration, modeling, counterfactual, inputs and "
            "pipeline files) and pipeline config into an upload folder, render the model card (README.md) from "
            "hub_cards/model_card.md with the evaluation report's results, and upload the folder to the Hub: the "
            "model files first, the card last."
        ),
        epilog="example: mme-jd publish runs/final me/mme-jd-mmsd --report eval/report.json "
               "--base-model llava-hf/llava-1.5-7b-hf --dataset me/mmsd --dry-run",
    )
    publish.add_argument("model", help="a folder written by MMEJDModel.save_pretrained, with its processor")
    publish.add_argument("repo_id", help="the Hub repository, 'user/name' (created when missing)")
    publish.add_argument("--report", default=None,
                         help="an evaluation report.json (mme_jd.evaluation.report.write_report) for the card's "
                              "eval_results, metric table and routing shares")
    publish.add_argument("--output-dir", default=None,
                         help="the upload folder to write (default: <model>-hub beside the model); replaced when an "
                              "earlier publish wrote it, refused when it holds other files")
    publish.add_argument("--license", default="apache-2.0", help="the card's license id (default: %(default)s)")
    publish.add_argument("--base-model", default=None, help="the base model's Hub id, for the card's base_model")
    publish.add_argument("--dataset", action="append", default=None,
                         help="a dataset id the model was trained/evaluated on (repeat for several; the first is "
                              "the one of the eval results)")
    publish.add_argument("--dataset-split", default="test",
                         help="the split the report was computed on (default: %(default)s)")
    publish.add_argument("--tag", action="append", default=None, help="an extra card tag (repeat for several)")
    publish.add_argument("--pipeline-tag", default="image-text-to-text",
                         help="the card's pipeline_tag (default: %(default)s)")
    publish.add_argument("--private", action="store_true", help="create the repository as private")
    publish.add_argument("--token", default=None, help="a Hub token (default: the one of `hf auth login` / HF_TOKEN)")
    publish.add_argument("--revision", default=None, help="the branch to upload to (default: main)")
    publish.add_argument("--commit-message", default=None, help="the message of the model files' commit")
    publish.add_argument("--dry-run", action="store_true", help="write the upload folder and card, upload nothing")
    _add_trust_remote_code(publish)
    publish.set_defaults(handler=_publish)


# ---------------------------------------------------------------------------- main

# ---------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> None:
    from .training.__main__ import run

    with _remote_code_needs_consent(args.model):
        report = run(args)
    print(f"checkpoint: {report['checkpoint']} ({report['seconds']} s)")


def _add_train(commands) -> None:
    from .training.__main__ import add_arguments

    train = commands.add_parser(
        "train", help="train a recipe (general, mid, mctd, mme_jd) and save one checkpoint",
        description="Run every stage of a recipe through the Hugging Face Trainer and save "
                    "OUTPUT_DIR/final (reloads with AutoModel.from_pretrained(..., trust_remote_code=True)). "
                    "For several processes: accelerate launch -m mme_jd.training ... (same options).",
    )
    add_arguments(train)
    train.set_defaults(handler=_train)


# ---------------------------------------------------------------------------- reroute


def accuracy_budget(value: str) -> float | None:
    """An `--max-accuracy-drop` value: a share of accuracy in [0, 1], or "none" (no budget)."""
    if value.strip().lower() == "none":
        return None
    try:
        drop = float(value)
    except ValueError:
        drop = -1.0
    if not 0.0 <= drop <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share of accuracy in [0, 1] (0.015 = 1.5 points) or 'none'; "
                                         f"got {value!r}")
    return drop


def _routing_line(name: str, routing: dict) -> str:
    return f"{name}: threshold {routing['threshold']:.4f}, routed strategy {routing['routed_strategy'] or 'the router'}"


def _reroute(args: argparse.Namespace) -> None:
    import dataclasses

    from transformers import AutoProcessor, TrainingArguments

    from .cues import parse_cues
    from .training import MMEJDTrainingConfig
    from .training.run import refit_router, saved_training_config

    model_folder, output = Path(args.model), Path(args.output_dir)
    if output.exists() and output.resolve() == model_folder.resolve():
        raise ValueError(f"--output-dir {args.output_dir!r} is the model's own folder; give another folder (the "
                         "model you saved stays as it is).")
    if output.is_dir() and any(output.iterdir()) and not (output / "config.json").is_file():
        raise ValueError(f"--output-dir {args.output_dir!r} holds files but no saved model; give an empty or new "
                         "folder, or an earlier reroute's.")
    with _remote_code_needs_consent(args.model):
        model = load_model(args.model, trust_remote_code=args.trust_remote_code)
        processor = model.processor or AutoProcessor.from_pretrained(args.model,
                                                                     trust_remote_code=args.trust_remote_code)
    config = saved_training_config(model_folder) if model_folder.is_dir() else None
    if config is None:
        print(f"[mme-jd] {args.model}: no training report; the router stage runs with MMEJDTrainingConfig's "
              "defaults", flush=True)
        config = MMEJDTrainingConfig()
    changes: dict = {"router_split": args.split or config.router_split}
    for field, value in (("selection_max_accuracy_drop", args.max_accuracy_drop),
                         ("router_cost_tolerance", args.cost_tolerance),
                         ("router_max_routed_share", args.max_routed_share)):
        if value is not _KEEP:
            changes[field] = value
    if args.cue:
        changes["cues"] = parse_cues(args.cue)
    config = dataclasses.replace(config, **changes)
    if config.router_split.lower().startswith("test"):
        raise ValueError(f"--split {config.router_split!r}: the routing would be chosen on a test split, whose "
                         "figures would then mean nothing; choose it on a validation split.")
    dataset, split = load_split(args.dataset, config.router_split, args.data_dir, rows=args.rows, seed=args.seed)
    before = {"threshold": model.config.router_threshold, "routed_strategy": model.config.routed_strategy}
    training_args = TrainingArguments(output_dir=str(output / ".router-stage"), seed=args.seed, report_to="none",
                                      disable_tqdm=True)
    log = refit_router(model, dataset, training_args, config, processor)
    after = {"threshold": model.config.router_threshold, "routed_strategy": model.config.routed_strategy}
    model.save_pretrained(output, processor=processor)
    report = {"model": str(args.model), "dataset": args.dataset, "split": split, "rows": len(dataset[split]),
              "seed": args.seed, "before": before, "after": after,
              "settings": {key: getattr(config, key) for key in ("router_split", "selection_max_accuracy_drop",
                                                                 "router_cost_tolerance", "router_max_routed_share")},
              "cues": [cue.name for cue in config.cues or ()], "router_stage": log}
    atomic_write_text(output / "reroute_report.json", json.dumps(report, indent=2, default=str))
    shares = ", ".join(f"{name} {share:.0%}" for name, share in log["routed_shares"].items() if share)
    accuracy = log.get("validation_accuracy")
    print(_routing_line("before", before))
    print(_routing_line("after", after))
    print(f"on {split!r} ({len(dataset[split])} rows, router scores {log['selection_scores']}): {shares}"
          + (f"; accuracy {accuracy:.4f} against the general expert's {log['validation_general_accuracy']:.4f}"
             if accuracy is not None else "")
          + (f"; worst-group accuracy {log['validation_worst_group_accuracy']:.4f}"
             if log.get("validation_worst_group_accuracy") is not None else ""))
    print(f"saved to {output} (with reroute_report.json)")


#: An option left unset: the saved training config's value stays.
_KEEP = object()


def _add_reroute(commands) -> None:
    reroute = commands.add_parser(
        "reroute", help="choose a trained model's routing again under another accuracy budget or cost tolerance",
        description="Run the router stage alone on a saved MME-JD model: router labels on a validation split, a "
                    "router trained from scratch on cached pooled states, its threshold and routed strategy chosen "
                    "under the rules given here (else those the model was trained with, from its "
                    "training_report.json). The base and the experts are not trained: one pass of each expert "
                    "over the split, then seconds. Saves the rerouted model to --output-dir, never over the "
                    "model's own folder. MID's lambda is not chosen again.",
    )
    reroute.add_argument("model", help="a saved MME-JD model folder")
    reroute.add_argument("--dataset", default="synthetic", help=f"{DATA_HELP} (default: %(default)s)")
    reroute.add_argument("--split", default=None,
                         help="the split the routing is chosen on (default: the model's router split, "
                              "validation_balanced unless trained otherwise); never a test split")
    reroute.add_argument("--data-dir", default=None, help="folder of the real datasets (default: ../shared/data)")
    reroute.add_argument("--rows", type=int, default=1000, help="synthetic rows to generate (default: %(default)s)")
    reroute.add_argument("--seed", type=int, default=0, help="data and router seed (default: %(default)s)")
    reroute.add_argument("--max-accuracy-drop", type=accuracy_budget, default=_KEEP, metavar="DROP|none",
                         help="keep only routings whose accuracy on the split is at most this below the general "
                              "expert's (0.02 = 2 points; 'none': no budget; default: the model's)")
    reroute.add_argument("--cost-tolerance", type=float, default=_KEEP, metavar="T",
                         help="keep the cheapest routing within T of the best worst-group accuracy (0: the best "
                              "whatever it costs; default: the model's)")
    reroute.add_argument("--max-routed-share", type=float, default=_KEEP, metavar="SHARE",
                         help="route at most this share of the split's samples (default: the model's)")
    reroute.add_argument("--cue", action="append", default=None, metavar="NAME=REGEX",
                         help="declared cues whose label x presence groups score the routings (default: the "
                              "model's); repeat for several")
    reroute.add_argument("--output-dir", required=True, help="where the rerouted model goes")
    _add_trust_remote_code(reroute)
    reroute.set_defaults(handler=_reroute)


# ---------------------------------------------------------------------------- evaluate


def _evaluate(args: argparse.Namespace) -> None:
    from .cues import parse_cues
    from .evaluation.run import evaluate_model

    dataset, split = load_split(args.dataset, args.split, args.data_dir, rows=args.rows, seed=args.seed)
    cues = parse_cues(args.cue)
    with _remote_code_needs_consent(args.model):
        result = evaluate_model(args.model, dataset, args.output_dir, mode=args.mode, batch_size=args.batch_size,
                                split=split, formats=tuple(args.formats.split(",")), cues=cues or None,
                                trust_remote_code=args.trust_remote_code)
    print(f"report written to {args.output_dir}: " + ", ".join(sorted(str(k) for k in result.get("files", {}))))


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model on a dataset: JSON + Markdown report with plots",
        description="Run a saved MME-JD folder over a dataset split and write report.json, report.md "
                    "(and plots: per-group accuracy, routing shares, reliability diagram).",
    )
    evaluate.add_argument("model", help="a saved MME-JD model folder")
    evaluate.add_argument("--dataset", default="synthetic", help=f"{DATA_HELP} (default: %(default)s)")
    evaluate.add_argument("--split", default=None, help="split name (default: test_balanced for synthetic, else test)")
    evaluate.add_argument("--data-dir", default=None, help="folder of the real datasets (default: ../shared/data)")
    evaluate.add_argument("--rows", type=int, default=1000, help="synthetic rows to generate (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0, help="synthetic data seed (default: %(default)s)")
    evaluate.add_argument("--mode", default=None, choices=MODES,
                          help="debiasing mode (default: the model's)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    evaluate.add_argument("--formats", default="json,md", help="comma-separated: json, md, html (default: %(default)s)")
    evaluate.add_argument("--output-dir", required=True, help="where the report goes")
    evaluate.add_argument("--cue", action="append", default=None, metavar="NAME=REGEX",
                          help="a declared cue for per-cue figures (groups, wrong-way accuracy, reliance): "
                               "NAME=REGEX (text), NAME=image:FUNCTION ('dominant hue', 'border', 'corner "
                               "watermark'), NAME:LABEL=... to say which label it points to (else estimated on "
                               "the evaluated rows, wrong on a split that reverses it), or a .json/.yaml file of "
                               "cues; repeat for several")
    _add_trust_remote_code(evaluate)
    evaluate.set_defaults(handler=_evaluate)


# ---------------------------------------------------------------------------- cues


def _cues(args: argparse.Namespace) -> None:
    from .cues import find_cues, format_cue_table, write_cue_report

    data, _ = load_split(args.data, args.split, args.data_dir, rows=args.rows, seed=args.seed, p_cue=args.p_cue)
    report = find_cues(data, split=args.split, top=args.top, probe=not args.no_probe, max_images=args.max_images,
                       progress=not args.no_progress)
    report["dataset"] = args.data
    print(format_cue_table(report, args.top))
    output_dir = args.output_dir or f"cues-{Path(args.data).name}"
    written = write_cue_report(report, output_dir, formats=tuple(args.formats.split(",")), top=args.top)
    print(f"\nreport written to {output_dir}: " + ", ".join(sorted(p.name for p in written.values())))


def _add_cues(commands) -> None:
    cues = commands.add_parser(
        "cues", help="find likely shortcuts: tokens and image statistics ranked by association with the label",
        description="Rank every token (words, hashtags, emoji codes, @mentions, ...) and cheap global image "
                    "statistics of a training split by association with the label: log-odds ratio with an "
                    "informative Dirichlet prior, z-scored (Monroe et al. 2008), which does not reward rare "
                    "tokens. Prints the top of each list and writes cues.json, cues.md and the plot cues.png.",
        epilog="example: mme-jd cues mmsd --split train --top 15",
    )
    cues.add_argument("data", help=DATA_HELP)
    cues.add_argument("--split", default="train", help="the split to look at (default: %(default)s)")
    cues.add_argument("--top", type=int, default=20, help="how many tokens and statistics to show (default: %(default)s)")
    cues.add_argument("--output-dir", default=None, help="where the report goes (default: cues-<DATA>)")
    cues.add_argument("--formats", default="json,md", help="comma-separated: json, md, html (default: %(default)s)")
    cues.add_argument("--data-dir", default=None, help="folder of the real datasets (default: ../shared/data)")
    cues.add_argument("--rows", type=int, default=6000, help="synthetic rows to generate (default: %(default)s)")
    cues.add_argument("--seed", type=int, default=0, help="synthetic data seed (default: %(default)s)")
    cues.add_argument("--p-cue", type=float, default=0.9, help="synthetic cue strength (default: %(default)s)")
    cues.add_argument("--max-images", type=int, default=None, help="look at the first N images only (default: all)")
    cues.add_argument("--no-probe", action="store_true", help="skip the linear probe on the image statistics")
    cues.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    cues.set_defaults(handler=_cues)


# ---------------------------------------------------------------------------- inspect and app

def _add_builder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="the debiasing mode (default: the model's config.mode)")
    parser.add_argument("--text-counterfactual", choices=TEXT_COUNTERFACTUALS, default=None,
                        help="the text counterfactual builder to look at (default: the model's; swap and given "
                             "become lexical, as in evaluate)")
    parser.add_argument("--image-counterfactual", choices=IMAGE_COUNTERFACTUALS, default=None,
                        help="the image counterfactual builder (default: the model's, attention)")
    parser.add_argument("--cue", action="append", default=None, metavar="NAME=REGEX",
                        help="a declared cue: its words are marked and its cue-conflicting rows shown first; "
                             "NAME=REGEX, NAME=image:FUNCTION, NAME:LABEL=... or a .json/.yaml file (repeat)")


def _inspect(args: argparse.Namespace) -> None:
    from .cues import parse_cues
    from .evaluation.gallery import write_gallery

    with _quiet_transformers():
        dataset, split = load_split(args.data, args.split, args.data_dir, rows=args.rows, seed=args.seed)
        with _remote_code_needs_consent(args.model):
            result = write_gallery(args.model, dataset, args.output_dir, rows=args.rows, split=split, mode=args.mode,
                                   text_counterfactual=args.text_counterfactual,
                                   image_counterfactual=args.image_counterfactual, cues=parse_cues(args.cue) or None,
                                   batch_size=args.batch_size, progress=not args.no_progress,
                                   trust_remote_code=args.trust_remote_code)
    summary = result["summary"]
    sections = ", ".join(f"{key} {count}" for key, count in summary["sections"].items())
    accuracy = f", accuracy {summary['accuracy']:.3f}" if "accuracy" in summary else ""
    print(f"gallery of {summary['rows']} rows ({sections}{accuracy}) written to {result['html']}")


def _add_inspect(commands) -> None:
    inspect = commands.add_parser(
        "inspect", help="write a gallery: each row's counterfactuals, scores and routing, in one HTML file",
        description="Run a model over the first rows of a dataset and write OUTPUT_DIR/gallery.html (one "
                    "self-contained page: images embedded, no script, no network) and gallery.json. Per row: the "
                    "image with the image counterfactual's masked patches shaded, the text with its changed, kept "
                    "and cue words marked, the label, each expert's and each counterfactual's class scores, the "
                    "router's strategy and whether the prediction is right. Cue-conflicting rows come first, "
                    "then routed rows, then errors; a summary on top.",
        epilog="example: mme-jd inspect my-mme-jd mvsa_single --rows 60 --output-dir gallery --cue url=url",
    )
    inspect.add_argument("model", help="a saved MME-JD model folder")
    inspect.add_argument("data", help=DATA_HELP)
    inspect.add_argument("--rows", type=int, default=60, help="rows to show, from the split's start "
                                                              "(default: %(default)s)")
    inspect.add_argument("--output-dir", required=True, help="where gallery.html and gallery.json go")
    inspect.add_argument("--split", default=None, help="split (default: test_balanced for synthetic, else test)")
    _add_builder_options(inspect)
    inspect.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default: %(default)s)")
    inspect.add_argument("--data-dir", default=None, help="folder of the real datasets (default: ../shared/data)")
    inspect.add_argument("--seed", type=int, default=0, help="synthetic data seed (default: %(default)s)")
    inspect.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    _add_trust_remote_code(inspect)
    inspect.set_defaults(handler=_inspect)


def _app(args: argparse.Namespace) -> None:
    from .app import serve
    from .cues import parse_cues

    with _quiet_transformers(), _remote_code_needs_consent(args.model):
        serve(args.model, host=args.host, port=args.port, mode=args.mode, text_counterfactual=args.text_counterfactual,
              image_counterfactual=args.image_counterfactual, cues=parse_cues(args.cue) or None,
              trust_remote_code=args.trust_remote_code)


def _add_app(commands) -> None:
    from .app import DEFAULT_HOST, DEFAULT_PORT

    app = commands.add_parser(
        "app", help="a local page: upload an image, type a text, see what the model sees",
        description="Serve a small page (standard library only) where you upload an image, type a text and pick "
                    "a mode, and see the gallery's card for that input. Binds to 127.0.0.1 by default.",
        epilog="example: mme-jd app my-mme-jd --port 7860",
    )
    app.add_argument("model", help="a saved MME-JD model folder")
    app.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s, this machine "
                                                          "only; 0.0.0.0 exposes the app to the network)")
    app.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0: any free port)")
    _add_builder_options(app)
    _add_trust_remote_code(app)
    app.set_defaults(handler=_app)


# ---------------------------------------------------------------------------- bench


def _bench(args: argparse.Namespace) -> None:
    from .bench import run_from_args

    run_from_args(args)


def _add_bench(commands) -> None:
    from .bench import add_arguments

    bench = commands.add_parser(
        "bench", help="benchmark ERM, oracle, MID, MCTD, MME-JD and peers on the synthetic benchmark",
        description="Train and evaluate every method with the same base, data and seeds; write bench/results "
                    "and the README's results table. --quick: one seed, fewer rows (about 5 minutes on 2 idle cores).",
    )
    add_arguments(bench)
    bench.set_defaults(handler=_bench)


_COMMANDS = (_add_demo, _add_train, _add_reroute, _add_evaluate, _add_predict, _add_publish, _add_cues, _add_inspect,
             _add_app, _add_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mme-jd", description="MME-JD: debias multimodal LLM classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser


_LISTED_PROBLEMS = 3  # a message about more bad rows lists the first two, then how many more


def _one_line(error: BaseException) -> str:
    """An error message as one short line: its lines joined with " | "; of more than
    `_LISTED_PROBLEMS` listed problems (the lines after the first), the first ones and how
    many more, in `_LISTED_PROBLEMS` items."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    head, problems = lines[0], lines[1:]
    if len(problems) > _LISTED_PROBLEMS:
        shown = _LISTED_PROBLEMS - 1
        problems = [*problems[:shown], f"... and {len(problems) - shown} more"]
    return " | ".join([head, *problems])


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done; 1 a failure, told in one line on stderr
    ("mme-jd <command>: error: <what was wrong and what to do>"); 2 bad arguments (argparse);
    130 interrupted (Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError, RuntimeError) as error:  # OSError: FileNotFoundError, permissions, disk full
        print(f"mme-jd {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"mme-jd {args.command}: error: out of memory; use a smaller --batch-size or a larger machine.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mme-jd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
