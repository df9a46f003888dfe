"""What JTT upweights on the synthetic benchmark: its first phase's error set, by row kind.

    python bench/jtt_error_set.py [--seeds 0,1,2]

For each seed, the bench's data and JTT first phase (`make bench` settings: ERM for
`BenchSettings.first_epochs` epochs on the pretrained tiny base), then the rows it gets wrong,
counted as noisy-label rows (label != clean_label) and cue-conflicting rows (a cue disagrees
with the label). Writes bench/results/jtt_error_set.json and prints one line per seed.

Why: JTT scores worst-group accuracy 0.011 in `make bench`, below ERM. The generator's cues follow
the *noisy* label, so a noisy row has both cues right and its core wrong: if ERM's errors are
mostly noisy rows, upweighting them teaches the cue, not the core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def error_set_kinds(seed: int, settings) -> dict:
    from transformers import set_seed

    from mme_jd.bench import DATA_SPLITS, training_arguments
    from mme_jd.data.synthetic import make_synthetic_benchmark
    from mme_jd.tiny import pretrained_tiny_model
    from mme_jd.training.peers import jtt_first_phase

    data = make_synthetic_benchmark(num_train=settings.num_train, num_test=settings.num_test,
                                    num_validation_balanced=settings.num_validation_balanced, seed=seed,
                                    p_cue=settings.p_cue, label_noise=settings.label_noise, splits=DATA_SPLITS)
    rows = data["train"]
    set_seed(seed)
    model = pretrained_tiny_model()
    # the bench's JTT arguments and first phase (`run_seed`: train_jtt with first_epochs)
    args = training_arguments(settings, seed, f"outputs/jtt_error_set/{seed}")
    _, indices = jtt_first_phase(model, rows, args, settings.first_epochs)
    errors = set(indices)
    label, clean, text_cue, image_cue = rows["label"], rows["clean_label"], rows["text_cue"], rows["image_cue"]
    noisy = {i for i in range(len(rows)) if label[i] != clean[i]}
    conflicting = {i for i in range(len(rows)) if text_cue[i] != label[i] or image_cue[i] != label[i]}
    cues_agree = sum(1 for i in errors & noisy if text_cue[i] == label[i] and image_cue[i] == label[i])
    return {"seed": seed, "rows": len(rows), "first_epochs": settings.first_epochs, "errors": len(errors),
            "noisy_rows": len(noisy), "conflicting_rows": len(conflicting),
            "errors_noisy": len(errors & noisy), "errors_conflicting": len(errors & conflicting),
            "errors_noisy_with_both_cues_agreeing": cues_agree,
            "share_of_errors_noisy": round(len(errors & noisy) / max(1, len(errors)), 4),
            "share_of_errors_conflicting": round(len(errors & conflicting) / max(1, len(errors)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "jtt_error_set.json"))
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mme_jd.bench import BenchSettings
    from mme_jd.files import atomic_write_text

    settings = BenchSettings.for_run(False)
    results = []
    for seed in cli.seeds:
        entry = error_set_kinds(seed, settings)
        results.append(entry)
        print(f"seed {seed}: {entry['errors']} errors of {entry['rows']} rows; noisy-label rows "
              f"{entry['errors_noisy']} ({entry['share_of_errors_noisy']:.0%}, {entry['errors_noisy_with_both_cues_agreeing']} "
              f"with both cues agreeing with the noisy label); cue-conflicting rows {entry['errors_conflicting']} "
              f"({entry['share_of_errors_conflicting']:.0%}) of {entry['conflicting_rows']}", flush=True)
    payload = {"settings": {"num_train": settings.num_train, "p_cue": settings.p_cue,
                            "label_noise": settings.label_noise, "learning_rate": settings.learning_rate},
               "seeds": results}
    atomic_write_text(Path(cli.results), json.dumps(payload, indent=2, default=str) + "\n", make_parents=True)
    print(f"wrote {cli.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
