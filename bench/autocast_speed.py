"""CPU seconds of MiniLM-LLaVA in float32 and under bfloat16 autocast (`MMEJDConfig.autocast_dtype`),
in one process, one after the other, on one thread: a general-stage training pass over MMSD
training rows (batch 8, length-grouped, as `bench/real_data.py` trains), then one inference pass
(`collect_outputs`, batch 64) over MMSD's validation split with the trained model, and the two
models' accuracy there.

    python bench/autocast_speed.py [--num-train 1000]

Writes bench/results/autocast_speed.json (or --results) and prints the figures. Several at once
(e.g. three on 2 cores, as `bench/real_data.py --jobs 3` runs its seeds) show what sharing the
cores does to each precision. bfloat16 is fast only on a CPU with
AVX512-BF16 or AMX (`mme_jd.native_autocast_dtype`); the file records whether this one has them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = {"float32": None, "bfloat16 autocast": "bfloat16"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS / "autocast_speed.json"), help="JSON file to write")
    cli = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import TrainingArguments

    from mme_jd.base import native_autocast_dtype
    from mme_jd.data.real import load_mmsd, normalize_tweet
    from mme_jd.files import atomic_write_text
    from mme_jd.inference import collect_outputs
    from mme_jd.minilm import minilm_mme_jd
    from mme_jd.provenance import run_environment
    from mme_jd.training import MMEJDTrainingConfig, train

    torch.set_num_threads(1)
    mmsd = load_mmsd(splits=("train", "validation")).map(lambda text: {"text": normalize_tweet(text)},
                                                         input_columns=["text"])
    data = {"train": mmsd["train"].shuffle(seed=cli.seed).select(range(cli.num_train)),
            "validation": mmsd["validation"]}
    runs, logits = {}, {}
    for name, dtype in PRECISIONS.items():
        model = minilm_mme_jd("sarcasm", head="linear", lora_rank=8, lora_alpha=16, autocast_dtype=dtype)
        with tempfile.TemporaryDirectory() as folder:
            args = TrainingArguments(output_dir=folder, per_device_train_batch_size=8, num_train_epochs=1,
                                     learning_rate=1e-3, warmup_steps=0.06, save_strategy="no", report_to="none",
                                     use_cpu=True, seed=cli.seed, disable_tqdm=True, logging_steps=50,
                                     train_sampling_strategy="group_by_length")
            report = train(model, data, args, MMEJDTrainingConfig(recipe="general", router_split="validation",
                                                                    mid_split="validation"))
        stage = report["stages"][0]
        started = time.process_time()
        out = collect_outputs(model, model.processor, data["validation"], batch_size=64, mode="general")
        inference = time.process_time() - started
        logits[name] = out["logits"]
        runs[name] = {"training_cpu_seconds": stage["cpu_seconds_total"],
                      "training_cpu_seconds_per_1000_rows": round(1000 * stage["cpu_seconds_total"] / cli.num_train, 1),
                      "train_loss": round(stage["train_loss"], 4),
                      "inference_cpu_seconds": round(inference, 1),
                      "validation_accuracy": round(float((out["logits"].argmax(-1) == out["labels"]).float().mean()), 4)}
        print(f"{name}: {runs[name]}", flush=True)
    fp32, bf16 = (runs[name] for name in PRECISIONS)
    results = {"num_train": cli.num_train, "validation_rows": len(data["validation"]), "seed": cli.seed,
               "native_autocast_dtype": native_autocast_dtype("cpu"), "runs": runs,
               "training_ratio": round(bf16["training_cpu_seconds"] / fp32["training_cpu_seconds"], 3),
               "inference_ratio": round(bf16["inference_cpu_seconds"] / fp32["inference_cpu_seconds"], 3),
               "predictions_agreeing": round(float((logits["float32"].argmax(-1)
                                                    == logits["bfloat16 autocast"].argmax(-1)).float().mean()), 4),
               "environment": run_environment()}
    results["load_average_at_end"] = os.getloadavg()[0]
    atomic_write_text(Path(cli.results), json.dumps(results, indent=2) + "\n", make_parents=True)
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
