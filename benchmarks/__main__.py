"""`python -m benchmarks BENCHMARK ...`, from the root of a checkout (see README.md).

Each benchmark prints its figures as JSON on stdout (`--json OUT` also writes them to a file).
Exit codes as `animate4d`'s: 0 done, 2 bad options (the message says what to change), 1 a bug.
"""

from __future__ import annotations

import argparse
import sys

from animate4d.backend import cli

from . import (
    attention,
    blender_import,
    clip_steps,
    encoder_graphs,
    field,
    hashgrid,
    job,
    mesh_stages,
    network,
    oracle_motion,
    preview,
    stages,
    synthetic,
    view_steps,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Developer benchmarks: speed and memory figures for docs/BENCHMARKS.md. "
                    "Run from the root of a checkout with the project's .venv.")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    preview.add_parser(sub)
    network.add_parsers(sub)
    hashgrid.add_parser(sub)
    field.add_parsers(sub)
    synthetic.add_parser(sub)
    stages.add_parser(sub)
    attention.add_parser(sub)
    view_steps.add_parser(sub)
    clip_steps.add_parser(sub)
    blender_import.add_parser(sub)
    oracle_motion.add_parser(sub)
    mesh_stages.add_parser(sub)
    job.add_parser(sub)
    encoder_graphs.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
