"""CPU seconds of one inference pass (`collect_outputs`, general expert, batch 64, one thread) over
MMSD's validation split with MiniLM-LLaVA, in the dataset's order and in batches of like text
length (`inference.length_order`, the default), in one process, one after the other.

    python bench/inference_length_order.py

Writes bench/results/inference_length_order.json and prints the figures.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mme_jd.data.real import load_mmsd, normalize_tweet
    from mme_jd.files import atomic_write_text
    from mme_jd.inference import collect_outputs
    from mme_jd.minilm import minilm_mme_jd

    torch.set_num_threads(1)
    # every validation row, in the file's order, normalised as bench/real_data.py does
    rows = load_mmsd(splits="validation")["validation"].map(
        lambda text: {"text": normalize_tweet(text)}, input_columns=["text"])
    model = minilm_mme_jd("sarcasm", head="linear")
    collect_outputs(model, model.processor, rows.select(range(64)), batch_size=64, mode="general")  # warm-up
    figures, logits = {}, {}
    for name, sort in (("dataset order", False), ("length order", True)):
        started = time.process_time()
        logits[name] = collect_outputs(model, model.processor, rows, batch_size=64, mode="general",
                                       sort_by_length=sort)["logits"]
        figures[name] = round(time.process_time() - started, 1)
    result = {"rows": len(rows), "cpu_seconds": figures,
              "ratio": round(figures["length order"] / figures["dataset order"], 3),
              "max_abs_logit_difference": float((logits["length order"] - logits["dataset order"]).abs().max())}
    atomic_write_text(RESULTS / "inference_length_order.json", json.dumps(result, indent=2), make_parents=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
