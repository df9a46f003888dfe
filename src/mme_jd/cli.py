"""The `mme-jd` command line. Each command has `--help`; failures exit non-zero with one line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.output_dir, num_samples=args.samples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mme-jd", description="MME-JD: debias multimodal LLM classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the main job on the embedded tiny default",
                               description="Build the tiny default, run every mode, save, reload in a fresh process.")
    demo.add_argument("--output-dir", default="demo_output", help="where the model and summary go (default: %(default)s)")
    demo.add_argument("--samples", type=int, default=6, help="synthetic rows to run (default: %(default)s)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"mme-jd {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
