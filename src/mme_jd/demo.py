"""`make demo`: MME-JD removing a shortcut, end to end, in about two minutes on 2 CPU cores.

1. load the pretrained tiny base (shipped with the package: no download, no pretraining) and
   make a small synthetic sarcasm benchmark with a strong shortcut: in training, the text cue
   `#irony` and a reddish background agree with the label in `p_cue` (97%) of the rows;
2. fine-tune with the `mme_jd` recipe. Its first stage is plain fine-tuning of the general
   expert on the original rows: that expert IS the ERM model (the bench compares the same
   way). The debias experts and the router follow;
3. on `test_balanced` (cues independent of the label) print ERM's and MME-JD's accuracy and
   worst-group accuracy, and, side by side, a few cue-conflicting rows (the cue points the wrong
   way) with both predictions and MME-JD's routing strategy;
4. reload the saved checkpoint in a fresh offline process through `AutoModel.from_pretrained`
   with the folder's own remote code (the code this demo has just written; a Hub user's path)
   and check the logits are identical;
5. run `pipeline("multimodal-debias", model=<saved folder>)` on a few rows.

Every figure printed is computed in the run; `demo_summary.json` keeps them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RELOAD_SCRIPT = """
import sys, torch
sys.modules["mme_jd"] = None  # prove the folder needs only transformers + its remote code
from transformers import AutoModel
folder, batch_path, logits_path = sys.argv[1:4]
batch = torch.load(batch_path)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**batch, mode="mme_jd").logits
torch.save(logits, logits_path)
print(type(model).__module__)
"""

#: The demo's benchmark and training settings: the bench's (p_cue 0.97, label noise 0.1,
#: lr 2e-3, batch 64) on fewer rows, so that the whole demo fits in about two minutes.
DEMO_SETTINGS: dict[str, Any] = {"num_train": 3000, "num_validation_balanced": 400, "num_test": 800,
                                 "p_cue": 0.97, "label_noise": 0.1, "epochs": 3, "learning_rate": 2e-3,
                                 "batch_size": 64, "seed": 0}


def _cue_conflicting(row: dict) -> bool:
    """A row whose text cue or image cue points to the other label (2 classes: cue value 1
    goes with `sarcastic`)."""
    return row["text_cue"] != row["label"] or row["image_cue"] != row["label"]


def run_demo(output_dir: str | Path = "demo_output", num_samples: int = 6, threads: int | None = 1,
             **settings_overrides: Any) -> dict:
    """Run the demo (see the module docstring); returns the summary written to
    `<output_dir>/demo_summary.json`. `num_samples` cue-conflicting rows are printed;
    `settings_overrides` replace `DEMO_SETTINGS` entries (num_train, epochs, ...). `threads`
    (default 1, as in the bench: the same figures on every run of a machine, and no faster
    with 2 on a model this small; None keeps torch's setting)."""
    import torch
    from transformers import TrainingArguments

    from .data.synthetic import make_synthetic_benchmark
    from .evaluation.diagnostics import group_accuracy
    from .inference import collect_outputs
    from .modeling.configuration_mme_jd import ROUTER_STRATEGIES
    from .tiny import pretrained_tiny_model
    from .training import MMEJDTrainingConfig, train

    if threads:
        torch.set_num_threads(threads)
    unknown = set(settings_overrides) - set(DEMO_SETTINGS)
    if unknown:
        raise ValueError(f"unknown demo settings {sorted(unknown)}; choose among {sorted(DEMO_SETTINGS)}.")
    settings = {**DEMO_SETTINGS, **settings_overrides}
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(settings["seed"])
    model = pretrained_tiny_model()
    parameters = sum(p.numel() for p in model.parameters())
    data = make_synthetic_benchmark(
        num_train=settings["num_train"], num_validation_balanced=settings["num_validation_balanced"],
        num_test=settings["num_test"], p_cue=settings["p_cue"], label_noise=settings["label_noise"],
        seed=settings["seed"], splits=["train", "validation_balanced", "test_balanced"])
    print(f"[1/5] pretrained tiny base ({type(model.base_model_with_experts).__name__}, {parameters:,} parameters "
          f"with 3 LoRA experts and the router); synthetic sarcasm: {len(data['train'])} training rows in which "
          f"'#irony' and a reddish background agree with the label {settings['p_cue']:.0%} of the time", flush=True)

    args = TrainingArguments(
        output_dir=str(output_dir / "run"), per_device_train_batch_size=settings["batch_size"],
        num_train_epochs=settings["epochs"], learning_rate=settings["learning_rate"], warmup_steps=10,
        save_strategy="no", report_to="none", use_cpu=True, seed=settings["seed"], disable_tqdm=True,
        logging_strategy="no")  # the demo prints its own summary, not the Trainer's per-step logs
    print("[2/5] fine-tuning (recipe mme_jd: the general stage is plain fine-tuning, i.e. ERM; then the "
          "image and text debias experts and the router)", flush=True)
    training_started = time.perf_counter()
    report = train(model, data, args, MMEJDTrainingConfig(recipe="mme_jd"))
    training_seconds = time.perf_counter() - training_started
    stage_seconds = {stage["stage"]: stage.get("seconds_total") for stage in report["stages"]}

    test = data["test_balanced"]
    model.eval()
    erm = collect_outputs(model, model.processor, test, batch_size=256, mode="general")
    mme_jd = collect_outputs(model, model.processor, test, batch_size=256, mode="mme_jd")
    labels = erm["labels"].numpy()
    groups = test["group"]
    figures = {}
    for name, outputs in (("ERM", erm), ("MME-JD", mme_jd)):
        predictions = outputs["logits"].argmax(-1).numpy()
        per_group = group_accuracy(predictions, labels, groups)
        figures[name] = {"accuracy": float((predictions == labels).mean()),
                         "worst_group_accuracy": per_group["worst_group_accuracy"], "predictions": predictions}
    strategies = ROUTER_STRATEGIES
    names = model.config.id2label
    conflicting = [i for i in range(len(test)) if _cue_conflicting(test[i])]
    erm_right = int(sum(figures["ERM"]["predictions"][i] == labels[i] for i in conflicting))
    mme_jd_right = int(sum(figures["MME-JD"]["predictions"][i] == labels[i] for i in conflicting))
    disagree = [i for i in conflicting if figures["ERM"]["predictions"][i] != figures["MME-JD"]["predictions"][i]]
    print(f"[3/5] test_balanced ({len(test)} rows, cues independent of the label), after "
          f"{training_seconds:.0f} s of training (ERM stage {stage_seconds.get('general', 0):.0f} s):")
    print(f"      {'':8s} {'accuracy':>9s} {'worst-group acc.':>17s} {'right on cue-conflicting rows':>31s}")
    for name, right in (("ERM", erm_right), ("MME-JD", mme_jd_right)):
        print(f"      {name:8s} {figures[name]['accuracy']:9.3f} {figures[name]['worst_group_accuracy']:17.3f} "
              f"{right:>20d} of {len(conflicting)}")
    print(f"      they disagree on {len(disagree)} of the {len(conflicting)} cue-conflicting rows; a few of them "
          "(cue: which way '#irony' / the red background point):")
    shown = (disagree or conflicting)[:num_samples]
    examples = []
    for i in shown:
        row = test[i]
        cue = f"text→{names[int(row['text_cue'])][:3]} image→{names[int(row['image_cue'])][:3]}"
        erm_label = names[int(figures["ERM"]["predictions"][i])]
        mme_label = names[int(figures["MME-JD"]["predictions"][i])]
        strategy = strategies[int(mme_jd["strategy"][i])] if mme_jd.get("strategy") is not None else "-"
        print(f"      {row['text'][:40]!r:42s} label {names[int(row['label'])]:13s} {cue:22s} "
              f"ERM {erm_label:13s} MME-JD {mme_label:13s} ({strategy})")
        examples.append({"text": row["text"], "label": names[int(row["label"])], "text_cue": int(row["text_cue"]),
                         "image_cue": int(row["image_cue"]), "erm": erm_label, "mme_jd": mme_label,
                         "strategy": strategy})

    folder = Path(report["checkpoint"])
    identical, reloaded_by = _reload_in_fresh_process(model, test, folder, output_dir)
    print(f"[4/5] saved to {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    print(f"      reloaded in a fresh offline process via remote code ({reloaded_by}): logits identical = {identical}")
    pipeline_predictions = _pipeline_step(folder, [test[i] for i in shown[:3]])
    summary = {
        "settings": settings, "parameters": parameters, "training_seconds": round(training_seconds, 1),
        "stage_seconds": stage_seconds, "routing": {"threshold": model.config.router_threshold,
                                                    "routed_strategy": model.config.routed_strategy},
        "test_balanced": {name: {k: v for k, v in values.items() if k != "predictions"}
                          for name, values in figures.items()},
        "cue_conflicting_rows": len(conflicting), "right_on_cue_conflicting": {"ERM": erm_right, "MME-JD": mme_jd_right},
        "disagreements_on_cue_conflicting": len(disagree), "examples": examples,
        "reload_identical": identical, "pipeline": pipeline_predictions,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (output_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if not identical:
        raise RuntimeError("the reloaded model's logits differ from the saved model's")
    print(f"done in {summary['seconds']} s; summary in {output_dir / 'demo_summary.json'}")
    return summary


def _reload_in_fresh_process(model, rows, folder: Path, output_dir: Path) -> tuple[bool, str]:
    """Step 4: the saved folder's logits in a fresh offline process (remote code, no `mme_jd`)
    against this process's, on a few rows. Returns (identical, the reloaded model's module)."""
    import torch

    from .data.collator import CounterfactualTripleCollator

    collator = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)
    batch = collator([rows[i] for i in range(min(8, len(rows)))])
    original = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        expected = model(**original, mode="mme_jd").logits
    batch_path, logits_path = output_dir / "demo_batch.pt", output_dir / "reloaded_logits.pt"
    torch.save(original, batch_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(folder), str(batch_path), str(logits_path)],
                             env=env, capture_output=True, text=True, timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"reloading the saved model in a fresh process failed:\n{process.stderr[-2000:]}")
    reloaded = torch.load(logits_path)
    return bool(torch.equal(reloaded, expected)), process.stdout.strip()


def _pipeline_step(folder: Path, rows: list[dict]) -> list[dict]:
    """Step 5: the `multimodal-debias` pipeline on the saved folder, a few rows, printed."""
    from transformers import pipeline

    pipe = pipeline("multimodal-debias", model=str(folder), device="cpu")
    predictions = pipe([{"image": row["image"], "text": row["text"]} for row in rows])
    print(f"[5/5] pipeline('multimodal-debias', model={folder.name!r}) on {len(rows)} rows, "
          f"mode {pipe.model.config.mode}:")
    for row, prediction in zip(rows, predictions):
        print(f"      {row['text']!r:45s} → {prediction['label']} ({prediction['score']:.3f}), "
              f"strategy {prediction['strategy']}")
    return [{"text": row["text"], **prediction} for row, prediction in zip(rows, predictions)]
