"""Seconds per 1,000 training rows of one general-stage pass on MMSD (MiniLM-LLaVA, batch 8), with
random batches and with length-grouped ones (`train_sampling_strategy="group_by_length"`), in one
process, one after the other, same rows and seed.

    python bench/length_grouping.py [--num-train 1000]

Writes bench/results/length_grouping.json and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "group_by_length")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import TrainingArguments

    from mme_jd.data.real import load_mmsd
    from mme_jd.files import atomic_write_text
    from mme_jd.minilm import minilm_mme_jd
    from mme_jd.provenance import run_environment
    from mme_jd.training import MMEJDTrainingConfig, train

    torch.set_num_threads(1)
    mmsd = load_mmsd()
    data = {"train": mmsd["train"].shuffle(seed=cli.seed).select(range(cli.num_train)),
            "validation": mmsd["validation"].select(range(16))}
    runs = {}
    for strategy in STRATEGIES:
        model = minilm_mme_jd("sarcasm", head="linear", lora_rank=8, lora_alpha=16)
        with tempfile.TemporaryDirectory() as folder:
            args = TrainingArguments(output_dir=folder, per_device_train_batch_size=cli.batch_size, num_train_epochs=1,
                                     learning_rate=1e-3, save_strategy="no", report_to="none", use_cpu=True,
                                     seed=cli.seed, disable_tqdm=True, logging_steps=50,
                                     train_sampling_strategy=strategy)
            started = time.perf_counter()
            report = train(model, data, args, MMEJDTrainingConfig(recipe="general", router_split="validation",
                                                                    mid_split="validation"))
        stage = report["stages"][0]
        runs[strategy] = {"stage_seconds": stage["seconds"], "seconds_per_1000_rows": round(1000 * stage["seconds"]
                                                                                          / cli.num_train, 1),
                          "train_loss": stage["train_loss"], "wall_seconds": round(time.perf_counter() - started, 1),
                          "load_average": os.getloadavg()[0]}
        print(f"{strategy}: {runs[strategy]['seconds_per_1000_rows']} s per 1000 rows", flush=True)
    results = {"dataset": "mmsd train (tweet images not available offline: grey stand-in + attribute words)",
               "num_train": cli.num_train, "batch_size": cli.batch_size, "seed": cli.seed, "runs": runs,
               "ratio_grouped_to_random": round(runs["group_by_length"]["stage_seconds"]
                                                / runs["random"]["stage_seconds"], 3),
               "environment": run_environment()}
    atomic_write_text(RESULTS / "length_grouping.json", json.dumps(results, indent=2) + "\n", make_parents=True)
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
