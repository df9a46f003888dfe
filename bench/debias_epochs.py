"""MME-JD with its warm-started debias stages trained for fewer epochs than the general stage
(`MMEJDTrainingConfig.debias_epochs`), on the full synthetic benchmark's settings: only the
methods the mme_jd run gives (ERM = its general stage, MME-JD routed, each debias expert alone),
so training time × ERM compares within one run.

    python bench/debias_epochs.py [--epochs 1] [--learning-rate 3e-3] [--seeds 0,1,2]

Writes bench/results/synthetic_debias_epochs<E>[_lr<LR>]*.json / .md (the bench's format; the README is
not touched). Compare with the full run's `MME-JD routed` row in bench/results/synthetic.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KEPT = ("ERM", "MME-JD routed", "text_debias expert", "image_debias expert")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=1.0, help="debias_epochs (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="debias_learning_rate (default: the bench's learning rate)")
    parser.add_argument("--seeds", default="0,1,2")
    cli = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mme_jd.bench import REGISTRY, run_bench

    label = f"{cli.epochs:g}" + (f"_lr{cli.learning_rate:g}" if cli.learning_rate is not None else "")
    overrides = {"debias_epochs": cli.epochs}
    if cli.learning_rate is not None:
        overrides["debias_learning_rate"] = cli.learning_rate
    with tempfile.TemporaryDirectory() as work_dir:
        run_bench(seeds=[int(s) for s in cli.seeds.split(",")], output_dir=RESULTS, readme=None, work_dir=work_dir,
                  name=f"synthetic_debias_epochs{label}", training_overrides=overrides,
                  skip_methods=tuple(method.name for method in REGISTRY if method.name not in KEPT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
