"""The text expert alone at other debias schedules, warm-started from one general stage per seed
(the synthetic benchmark's full settings): worst-group accuracy and accuracy on
validation_balanced (what a choice may read) and on test_balanced, for each (debias epochs,
learning rate) given.

    python bench/debias_schedule_grid.py [--seeds 0,1,2] [--schedules 3:0.002,2:0.002,2:0.003,2:0.004]
    python bench/debias_schedule_grid.py --general-epochs 1,2 --schedules 3:0.002 \
        --results bench/results/general_schedule_grid.json

`--general-epochs`: the general stage's epochs (default the bench's, 3), each a fresh general
stage that the text schedules then warm-start from: MME-JD's general stage shorter than ERM's
(ERM keeps the bench's epochs) would cut its cost more than a shorter text stage, which trains
on two rows per sample. Each row records the general stage's and the text stage's CPU seconds
(the process's, one thread).

Writes bench/results/debias_schedule_grid.json (or `--results`). The text expert is what the mme_jd run routes
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


def run_seed(seed: int, schedules: list[tuple[float, float]], general_epochs: float | None = None) -> list[dict]:
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
        general_cpu = time.process_time()
        general_args = stage_arguments(args, "general", f"{folder}/general",
                                       **({"num_train_epochs": general_epochs} if general_epochs is not None else {}))
        run_expert_stage(model, "general", data["train"], general_args,
                         model.processor, config.text_counterfactual, config.image_counterfactual,
                         vocabulary=vocabulary, loss_settings=config.loss_settings("general"))
        general_cpu = time.process_time() - general_cpu
        for epochs, learning_rate in schedules:
            copy_expert(model, "general", "text_debias")
            set_seed(seed)
            started, cpu_started = time.perf_counter(), time.process_time()
            run_expert_stage(model, "text_debias", data["train"],
                             stage_arguments(args, "text_debias", f"{folder}/text", num_train_epochs=epochs,
                                             learning_rate=learning_rate),
                             model.processor, config.text_counterfactual, config.image_counterfactual,
                             vocabulary=vocabulary, loss_settings=config.loss_settings("text_debias"))
            results.append({"seed": seed, "general_epochs": general_args.num_train_epochs, "epochs": epochs,
                            "learning_rate": learning_rate, "seconds": round(time.perf_counter() - started, 1),
                            "cpu_seconds": round(time.process_time() - cpu_started, 1),
                            "general_cpu_seconds": round(general_cpu, 1),
                            "general_validation_balanced": scores(model, data["validation_balanced"], "general"),
                            "validation_balanced": scores(model, data["validation_balanced"], "text_debias"),
                            "test_balanced": scores(model, data["test_balanced"], "text_debias")})
            print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--schedules", default="3:0.002,2:0.002,2:0.003,2:0.004",
                        help="EPOCHS:LEARNING_RATE pairs, comma-separated")
    parser.add_argument("--general-epochs", default=None,
                        help="comma-separated epochs of the general stage, each its own run (default: the bench's)")
    parser.add_argument("--results", default=str(RESULTS / "debias_schedule_grid.json"))
    cli = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mme_jd.files import atomic_write_text
    from mme_jd.provenance import run_environment

    schedules = [tuple(float(v) for v in pair.split(":")) for pair in cli.schedules.split(",")]
    general = [float(e) for e in cli.general_epochs.split(",")] if cli.general_epochs else [None]
    rows = [row for seed in cli.seeds.split(",") for epochs in general
            for row in run_seed(int(seed), schedules, epochs)]
    payload = {"rows": rows, "environment": run_environment(),
               "note": "(worst-group accuracy, accuracy) per split; the text expert alone"}
    atomic_write_text(Path(cli.results), json.dumps(payload, indent=2) + "\n", make_parents=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
