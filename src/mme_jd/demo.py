"""`make demo`: the main job on the embedded tiny default, end to end, in a minute or two.

1. build the tiny default model (a LLaVA-architecture VLM built offline) and a few rows of the
   synthetic spurious-cue benchmark;
2. run a forward pass in each mode (general, mid, mctd, mme_jd) on those rows;
3. save the model (weights, config with auto_map, remote code, processor), reload it in a
   fresh offline process through `AutoModel.from_pretrained(..., trust_remote_code=True)` and
   check the logits are identical;
4. run `pipeline("multimodal-debias", model=<saved folder>)` on a few of the rows and print
   each prediction with its strategy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RELOAD_SCRIPT = """
import sys, json, torch
sys.modules["mme_jd"] = None  # prove the folder needs only transformers + its remote code
from transformers import AutoModel
folder = sys.argv[1]
batch = torch.load(folder + "/../demo_batch.pt")
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**batch, mode="mme_jd").logits
torch.save(logits, folder + "/../reloaded_logits.pt")
print(type(model).__module__)
"""


def run_demo(output_dir: str | Path = "demo_output", num_samples: int = 6) -> dict:
    import torch

    from .data.collator import CounterfactualTripleCollator
    from .data.synthetic import make_synthetic_benchmark
    from .tiny import tiny_model

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = tiny_model().eval()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"[1/4] tiny default: {type(model.base_model_with_experts).__name__}, {parameters:,} parameters, "
          f"experts {list(model.config.expert_names)}")
    data = make_synthetic_benchmark(num_test=num_samples, splits=["test_balanced"], seed=0)["test_balanced"]
    rows = [data[i] for i in range(min(num_samples, len(data)))]
    collator = CounterfactualTripleCollator(model.processor, model.config, saliency_model=model)
    batch = collator(rows)
    names = model.config.id2label
    print(f"[2/4] forward in each mode on {len(rows)} synthetic rows (labels {[names[int(l)] for l in batch['labels']]}):")
    results = {}
    with torch.no_grad():
        for mode in ("general", "mid", "mctd", "mme_jd"):
            out = model(**{k: v for k, v in batch.items() if k != "labels"}, mode=mode)
            predictions = out.logits.argmax(-1).tolist()
            strategies = out.strategy.tolist() if out.strategy is not None else None
            results[mode] = {"logits": out.logits.tolist(), "predictions": predictions, "strategies": strategies}
            extra = f", strategies {[model.config.router_strategies[s] for s in strategies]}" if strategies else ""
            print(f"      {mode:8s} predictions {[names[p] for p in predictions]}{extra}")
    original = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        expected = model(**original, mode="mme_jd").logits
    folder = output_dir / "model"
    model.save_pretrained(folder)
    torch.save(original, output_dir / "demo_batch.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(folder)], env=env, capture_output=True,
                             text=True, timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"reloading the saved model in a fresh process failed:\n{process.stderr[-2000:]}")
    reloaded = torch.load(output_dir / "reloaded_logits.pt")
    identical = bool(torch.equal(reloaded, expected))
    files = sorted(p.name for p in folder.iterdir())
    print(f"[3/4] saved to {folder} ({', '.join(files)})")
    print(f"      reloaded in a fresh offline process via remote code ({process.stdout.strip()}): "
          f"logits identical = {identical}")
    pipeline_predictions = _pipeline_step(folder, rows[:3])
    summary = {"parameters": parameters, "modes": results, "saved_files": files, "reload_identical": identical,
               "pipeline": pipeline_predictions, "seconds": round(time.perf_counter() - started, 1)}
    (output_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    if not identical:
        raise RuntimeError("the reloaded model's logits differ from the saved model's")
    print(f"done in {summary['seconds']} s; summary in {output_dir / 'demo_summary.json'}")
    return summary


def _pipeline_step(folder: Path, rows: list[dict]) -> list[dict]:
    """Step 4: the `multimodal-debias` pipeline on the saved folder, a few rows, printed."""
    from transformers import pipeline

    pipe = pipeline("multimodal-debias", model=str(folder), device="cpu")
    predictions = pipe([{"image": row["image"], "text": row["text"]} for row in rows])
    print(f"[4/4] pipeline('multimodal-debias', model={folder.name!r}) on {len(rows)} rows, "
          f"mode {pipe.model.config.mode}:")
    for row, prediction in zip(rows, predictions):
        print(f"      {row['text']!r:45s} → {prediction['label']} ({prediction['score']:.3f}), "
              f"strategy {prediction['strategy']}")
    return [{"text": row["text"], **prediction} for row, prediction in zip(rows, predictions)]
