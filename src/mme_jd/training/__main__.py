"""`python -m mme_jd.training` (and `accelerate launch -m mme_jd.training`): train a recipe.

Example, two CPU processes (DDP over gloo) on the tiny default and synthetic data:
    accelerate launch --cpu --num_processes 2 -m mme_jd.training --output-dir out --max-steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Declare the training options on `parser` (also `mme-jd train`'s)."""
    from ..data.sources import DATA_HELP
    from ..modeling.configuration_mme_jd import DEBIAS_OBJECTIVES, IMAGE_COUNTERFACTUALS, MODES, TEXT_COUNTERFACTUALS

    parser.add_argument("--output-dir", required=True, help="where stages and the final checkpoint go")
    parser.add_argument("--recipe", default="mme_jd", choices=MODES,
                        help="which stages to run (default: %(default)s)")
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (random tiny default), 'tiny-pretrained' (the cached pretrained tiny base), "
                             "or a folder / hub id of an image-text-to-text base model (default: %(default)s)")
    parser.add_argument("--dataset", default="synthetic",
                        help=f"{DATA_HELP}; training reads its train split and its validation_balanced (else "
                             "validation) split (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="folder of the real datasets (default: ../shared/data)")
    parser.add_argument("--num-train", type=int, default=6000, help="synthetic training rows (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=-1, help="steps per expert stage; -1 uses --epochs")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per expert stage (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="per-device batch size (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="expert stages' LR (default: %(default)s)")
    parser.add_argument("--debias-epochs", type=float, default=None,
                        help="epochs of the warm-started image_debias and text_debias stages (default: --epochs)")
    parser.add_argument("--debias-learning-rate", type=float, default=None,
                        help="peak learning rate of the debias stages (default: --learning-rate)")
    parser.add_argument("--text-counterfactual", default="swap",
                        choices=TEXT_COUNTERFACTUALS,
                        help="text builder for training (default: %(default)s)")
    parser.add_argument("--image-counterfactual", default="attention",
                        choices=IMAGE_COUNTERFACTUALS,
                        help="image builder (default: %(default)s)")
    parser.add_argument("--text-debias-objective", default=None, choices=DEBIAS_OBJECTIVES,
                        help="the text expert's objective (default: MMEJDTrainingConfig's, reversed)")
    parser.add_argument("--router-cost-tolerance", type=float, default=None,
                        help="keep the cheapest routing within this of the best validation worst-group "
                             "accuracy (default: MMEJDTrainingConfig's, 0.01; 0 = the best accuracy whatever it "
                             "costs)")
    parser.add_argument("--router-max-routed-share", type=float, default=None,
                        help="route at most this share of the validation samples (default: no limit)")
    parser.add_argument("--selection-max-accuracy-drop", type=float, default=None,
                        help="choose the routing and MID's lambda only among candidates whose validation accuracy "
                             "is at most this below the general expert's (default: no budget)")
    parser.add_argument("--router-selection-folds", type=int, default=None,
                        help="tune the routing on out-of-fold router scores over this many folds of the "
                             "validation split (default: MMEJDTrainingConfig's, 5; 0 = on the trained router's "
                             "in-sample scores)")
    parser.add_argument("--cue", action="append", default=None, metavar="NAME=REGEX",
                        help="a declared cue whose label x presence groups drive every validation-based choice "
                             "(router threshold and routed strategy, cost tolerance, MID's lambda) and whose "
                             "tokens/region the cue_only / cue_removed builders use: NAME=REGEX, "
                             "NAME=image:FUNCTION or a .json/.yaml file; repeat for several (without any: the "
                             "synthetic group column, else groups inferred from the general expert's reading of the text "
                             "cue-only input)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="skip finished stages, resume the interrupted one from its last complete checkpoint; "
                             "refused when the run was started with other settings")
    parser.add_argument("--force-restart", action="store_true",
                        help="remove the stages of an earlier run in --output-dir and start over")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="precision of the whole model, base and experts (default: the base's); bfloat16 / "
                             "float16 also train in that precision (TrainingArguments bf16 / fp16)")
    parser.add_argument("--autocast", default=None, choices=["bfloat16", "float16"],
                        help="mixed precision: the base's pass runs under torch.autocast in this dtype while the "
                             "weights, the updates, the heads and the logits stay float32 "
                             "(MMEJDConfig.autocast_dtype, saved with the model); faster than float32 on a GPU and "
                             "on a CPU with AVX512-BF16 or AMX (mme_jd.native_autocast_dtype tells), slower on "
                             "other CPUs. Not with --dtype")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each layer's activations in the backward pass: far less activation "
                             "memory for about a third more compute (see README, Training on a 2B-7B base)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1,
                        help="batches per optimizer step (default: %(default)s)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a --model folder / hub id run Python code of its own (a base architecture "
                             "outside transformers); off by default")
    return parser


def _checkpointing_argument() -> str:
    """`activation_checkpointing`, the name transformers 5.24 gives `gradient_checkpointing`
    (deprecated there), where this transformers has it."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def run(args: argparse.Namespace) -> dict:
    import datasets
    import torch
    from transformers import TrainingArguments

    from ..data.sources import SYNTHETIC, load_data
    from . import MMEJDTrainingConfig, train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    # the synthetic benchmark is generated: only the training split and the balanced validation split
    splits = ["train", "validation_balanced"] if args.dataset == SYNTHETIC else None
    dataset = load_data(args.dataset, splits, args.data_dir, seed=args.seed, num_train=args.num_train)
    if not isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"--dataset {args.dataset!r} holds one split; training needs a train and a validation "
                         "split: a named dataset or a datasets.save_to_disk folder of a DatasetDict.")
    dtype = getattr(args, "dtype", None)
    if dtype not in (None, "float32") and getattr(args, "autocast", None):
        raise ValueError(f"--autocast {args.autocast} mixes precisions over float32 weights; --dtype {dtype} puts "
                         "the weights themselves in that dtype: pass one of the two.")
    if args.model == "tiny":
        from ..tiny import tiny_model

        model = tiny_model()
    elif args.model == "tiny-pretrained":
        from ..tiny import pretrained_tiny_model

        model = pretrained_tiny_model()
    else:
        from ..base import from_base

        model = from_base(args.model, trust_remote_code=args.trust_remote_code, dtype=dtype)
    if dtype is not None and args.model in ("tiny", "tiny-pretrained"):
        model = model.to(getattr(torch, dtype))
    if getattr(args, "autocast", None):
        model.config.autocast_dtype = args.autocast
    checkpointing = _checkpointing_argument()
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.max_steps,
        num_train_epochs=args.epochs, learning_rate=args.learning_rate, seed=args.seed, logging_steps=20,
        save_steps=200, save_total_limit=1, report_to="none", use_cpu=not torch.cuda.is_available(),
        bf16=dtype == "bfloat16", fp16=dtype == "float16",
        **{checkpointing: getattr(args, "gradient_checkpointing", False)},
        gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", 1),
        # several CPU processes (torchrun / accelerate launch) talk over gloo
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None,
    )
    split_names = {"validation_balanced": "validation_balanced" if "validation_balanced" in dataset else "validation"}
    from ..cues import parse_cues

    # flags left out keep MMEJDTrainingConfig's defaults
    given = {name: getattr(args, name) for name in ("text_debias_objective", "router_cost_tolerance",
                                                    "router_max_routed_share", "router_selection_folds",
                                                    "selection_max_accuracy_drop",
                                                    "debias_epochs", "debias_learning_rate")
             if getattr(args, name, None) is not None}
    config = MMEJDTrainingConfig(recipe=args.recipe, text_counterfactual=args.text_counterfactual,
                                 cues=parse_cues(getattr(args, "cue", None)) or None,
                                 image_counterfactual=args.image_counterfactual,
                                 router_split=split_names["validation_balanced"],
                                 mid_split=split_names["validation_balanced"], **given)
    return train(model, dataset, training_args, config, resume_from_checkpoint=args.resume,
                 force_restart=args.force_restart)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m mme_jd.training", description=__doc__))
    report = run(parser.parse_args(argv))
    print(json.dumps({"checkpoint": report["checkpoint"], "seconds": report["seconds"],
                      "stages": [{k: v for k, v in s.items() if k != "losses"} for s in report["stages"]]},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
