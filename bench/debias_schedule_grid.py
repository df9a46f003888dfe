"""The text expert alone at other debias schedules, warm-started from one general stage per seed
(the synthetic benchmark's full settings): worst-group accuracy and accuracy on
validation_balanced (what a choice may read) and on test_balanced, for each (debias epochs,
learning rate) given.

    python bench/debias_schedule_grid.py [--seeds 0,1,2] [--schedules 3:0.002,2:0.002,2:0.003,2:0.004]

Writes bench/results/debias_schedule_grid.json. The text expert is what the mme_jd run routes
every sample to on this benchmark, so its figures are MME-JD's; its stage's seconds are wall
time on whatever else shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def scores(model, rows, expert: str) -> tuple[float, float]:
    """(worst-group accuracy, accuracy) of one expert on `rows`."""
    from mme_jd.evaluation.metrics import worst_group_accuracy
    from mme_jd.inference import collect_outputs

    out = collect_outputs(model, model.processor, rows, batch_size=200, expert=expert)
    predictions = out["logits"].argmax(-1)
    return (round(worst_group_accuracy(predictions, out["labels"], rows["group"]), 4),
            round(float((predictions == out["labels"]).float().mean()), 4))


def run_seed(seed: int, schedules: list[tuple[float, float]]) -> list[dict]:
    import torch
    from transformers import set_seed

    from mme_jd.bench import BenchSettings, training_arguments, training_config
    from mme_jd.data.lexicon import swap_vocabulary
    from mme_jd.data.synthetic import make_synthetic_benchmark
    from mme_jd.tiny import pretrained_tiny_model
    from mme_jd.training.stages import copy_expert, run_expert_stage, stage_arguments

    torch.set_num_threads(1)
    settings = BenchSettings.for_run()
    data = make_synthetic_benchmark(num_train=settings.num_train, num_validation_balanced=settings.num_validation_balanced,
                                    num_test=settings.num_test, seed=seed, p_cue=settings.p_cue,
                                    label_noise=settings.label_noise)
    model = pretrained_tiny_model().eval()
    config = training_config(settings)
    vocabulary = swap_vocabulary(model.processor, config.use_vocabulary_for_swap)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        args = training_arguments(settings, seed, folder)
        set_seed(seed)
        run_expert_stage(model, "general", data["train"], stage_arguments(args, "general", f"{folder}/general"),
                         model.processor, config.text_counterfactual, config.image_counterfactual,
                         vocabulary=vocabulary, loss_settings=config.loss_settings("general"))
        for epochs, learning_rate in schedules:
            copy_expert(model, "general", "text_debias")
            set_seed(seed)
            started = time.perf_counter()
            run_expert_stage(model, "text_debias", data["train"],
                             stage_arguments(args, "text_debias", f"{folder}/text", num_train_epochs=epochs,
                                             learning_rate=learning_rate),
                             model.processor, config.text_counterfactual, config.image_counterfactual,
                             vocabulary=vocabulary, loss_settings=config.loss_settings("text_debias"))
            results.append({"seed": seed, "epochs": epochs, "learning_rate": learning_rate,
                            "seconds": round(time.perf_counter() - started, 1),
                            "validation_balanced": scores(model, data["validation_balanced"], "text_debias"),
                            "test_balanced": scores(model, data["test_balanced"], "text_debias")})
            print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--schedules", default="3:0.002,2:0.002,2:0.003,2:0.004",
                        help="EPOCHS:LEARNING_RATE pairs, comma-separated")
    cli = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mme_jd.files import atomic_write_text
    from mme_jd.provenance import run_environment

    schedules = [tuple(float(v) for v in pair.split(":")) for pair in cli.schedules.split(",")]
    rows = [row for seed in cli.seeds.split(",") for row in run_seed(int(seed), schedules)]
    payload = {"rows": rows, "environment": run_environment(),
               "note": "(worst-group accuracy, accuracy) per split; the text expert alone"}
    atomic_write_text(RESULTS / "debias_schedule_grid.json", json.dumps(payload, indent=2) + "\n", make_parents=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
