"""Synthetic benchmark, one seed: ERM, oracle, MID, MCTD and MME-JD on the pretrained tiny base.

    python bench/synthetic_recipes.py [--num-train 6000] [--epochs 3] [--seed 0]

One `mme_jd` training run gives ERM (its general expert), MID (fitted λ), each debias expert
alone and routed MME-JD; `mctd` and the oracle (general on the cue-free train split) are
trained on the same data. Writes bench/results/synthetic_recipes_seed<S>.json and prints a
table. (`make bench` of the evaluation issue extends this to seeds, peers and costs.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import TrainingArguments

from mme_jd.bench import recipe_figures
from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.files import atomic_write_text
from mme_jd.tiny import pretrained_tiny_model
from mme_jd.training import MMEJDTrainingConfig, train

SPLITS = ("test_id", "test_ood", "test_balanced")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", default="mme_jd,mctd,oracle")
    parser.add_argument("--image-debias-objective", default="reversed", choices=["reversed", "poe"])
    parser.add_argument("--text-counterfactual", default="swap", choices=["swap", "lexical", "given"],
                        help="'given' uses the generator's truth: an upper bound a real dataset does not allow")
    parser.add_argument("--image-counterfactual", default="attention", choices=["attention", "gradient", "given"])
    parser.add_argument("--tag", default="", help="suffix of the method names (e.g. ' [truth]')")
    parser.add_argument("--refit-router", action="store_true",
                        help="reuse OUTPUT/mme_jd/final, refit only its router with the current defaults, "
                             "and evaluate (minutes instead of a full training)")
    parser.add_argument("--output", default="outputs/bench")
    parser.add_argument("--p-cue", type=float, default=0.9, help="P(cue agrees with the label) in training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--swap-other-modality", default="keep", choices=["keep", "null"],
                        help="what a swap text counterfactual holds of the image (MMEJDConfig.swap_other_modality)")
    parser.add_argument("--results", default=None, help="JSON path (default bench/results/synthetic_recipes_seed<S>.json)")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    data = make_synthetic_benchmark(num_train=cli.num_train, num_test=1000, seed=cli.seed, p_cue=cli.p_cue,
                                    splits=["train", "train_cue_free", "validation_balanced", *SPLITS])
    results: dict = {"settings": vars(cli), "methods": {}, "training": {}, "runs": [vars(cli)]}
    if cli.refit_router:
        from transformers import AutoProcessor

        from mme_jd.modeling.modeling_mme_jd import MMEJDModel
        from mme_jd.training import refit_router

        folder = Path(cli.output) / "mme_jd" / "final"
        model = MMEJDModel.from_pretrained(folder).eval()
        model.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=False)  # a standard class
        args = TrainingArguments(output_dir=f"{cli.output}/refit", report_to="none", use_cpu=True, seed=cli.seed,
                                 disable_tqdm=True, per_device_train_batch_size=64)
        log = refit_router(model, data, args, MMEJDTrainingConfig())
        results["training"]["router refit" + cli.tag] = log
        print("router refit:", {k: v for k, v in log.items() if k in ("threshold", "routed_strategy",
                                                                        "routed_shares", "validation_worst_group_accuracy")})
        figures = recipe_figures(model, data, "mme_jd")["MME-JD routed"]
        name = "MME-JD routed (router refit: worst-group threshold, routed strategy)" + cli.tag
        results["methods"][name] = figures
        print(f"{name:40s}", "  ".join(f"{s}={f['accuracy']:.3f}" for s, f in figures.items()),
              f"WGA={figures['test_balanced']['worst_group_accuracy']:.3f}", flush=True)
    for recipe in (cli.recipes.split(",") if not cli.refit_router else []):
        model = pretrained_tiny_model(swap_other_modality=cli.swap_other_modality)
        args = TrainingArguments(
            output_dir=f"{cli.output}/{recipe}", per_device_train_batch_size=64, num_train_epochs=cli.epochs,
            learning_rate=cli.learning_rate, warmup_steps=10, logging_steps=50, save_strategy="no",
            report_to="none", use_cpu=True, seed=cli.seed, disable_tqdm=True,
        )
        config = MMEJDTrainingConfig(recipe="general" if recipe == "oracle" else recipe,
                                     train_split="train_cue_free" if recipe == "oracle" else "train",
                                     image_debias_objective=cli.image_debias_objective,
                                     text_counterfactual=cli.text_counterfactual,
                                     image_counterfactual=cli.image_counterfactual)
        started = time.perf_counter()
        report = train(model, data, args, config)
        results["training"][recipe + cli.tag] = {"seconds": round(time.perf_counter() - started, 1),
                                       "stages": [{k: v for k, v in s.items() if k != "losses"}
                                                  for s in report["stages"]]}
        for name, figures in recipe_figures(model, data, recipe).items():
            name = name + cli.tag
            results["methods"][name] = figures
            print(f"{name:40s}", "  ".join(f"{s}={f['accuracy']:.3f}" for s, f in figures.items()),
                  f"WGA={figures['test_balanced']['worst_group_accuracy']:.3f}", flush=True)
    out = Path(cli.results) if cli.results else Path(__file__).parent / "results" / f"synthetic_recipes_seed{cli.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # runs of other recipes with the same seed accumulate in one file
        previous = json.loads(out.read_text())
        previous["methods"].update(results["methods"])
        previous["training"].update(results["training"])
        previous.setdefault("runs", []).append(results["settings"])
        results = previous
    atomic_write_text(out, json.dumps(results, indent=2, default=str))
    print("wrote", out)


if __name__ == "__main__":
    main()
