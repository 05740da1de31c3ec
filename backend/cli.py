"""The `animate4d` command: assembles the subcommands of backend/commands.

Exit codes: 0 done, 2 bad input or options (the message says what to change), 130 interrupted,
1 an internal error (a bug: the traceback is printed so that it can be reported). Client
commands add: 3 the job failed or was cancelled, 4 the server could not be reached.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from animate4d.protocol.errors import Animate4DError

from .commands import keys, local, models, remote, serve
from .version import package_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animate4d",
        description="Turn one image and a motion prompt into an animated 3D mesh "
                    "(.a4d for Blender, .glb with morph targets for any 3D tool).",
        epilog="Examples:\n"
               "  animate4d demo\n"
               "  animate4d run cat.png --prompt 'a cat is waving' --frames 24 --out cat/\n"
               "  animate4d serve --local --store jobs/ &\n"
               "  animate4d submit cat.png --prompt 'a cat is waving' --wait --out cat/\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"animate4d {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    local.add_parsers(sub)
    serve.add_parsers(sub)
    remote.add_parsers(sub)
    keys.add_parsers(sub)
    models.add_parsers(sub)

    bench = sub.add_parser(
        "bench", help="measure speed and memory (figures for docs/BENCHMARKS.md)",
        description="Benchmarks. Each prints JSON on stdout.",
    )
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bench_sub.required = True
    from .bench import attention as bench_attention
    from .bench import clip_steps as bench_clip_steps
    from .bench import field as bench_field
    from .bench import hashgrid as bench_hashgrid
    from .bench import network as bench_network
    from .bench import preview as bench_preview
    from .bench import stages as bench_stages
    from .bench import synthetic as bench_synthetic
    from .bench import view_steps as bench_view_steps

    bench_preview.add_parser(bench_sub)
    bench_network.add_parsers(bench_sub)
    bench_hashgrid.add_parser(bench_sub)
    bench_field.add_parsers(bench_sub)
    bench_synthetic.add_parser(bench_sub)
    bench_stages.add_parser(bench_sub)
    bench_attention.add_parser(bench_sub)
    bench_view_steps.add_parser(bench_sub)
    bench_clip_steps.add_parser(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Animate4DError as e:
        from animate4d.protocol.client import ServerError
        from animate4d.protocol.text import printable

        # A server's words are escaped: they may carry terminal escapes.
        message = printable(e.message, 2000) if isinstance(e, ServerError) else e.message
        print(f"animate4d: error: {message}", file=sys.stderr)
        if e.hint:
            print(f"animate4d: {e.hint}", file=sys.stderr)
        return 4 if e.code == "connection_lost" else 2
    except KeyboardInterrupt:
        print("animate4d: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("animate4d: internal error (a bug): please report the traceback above",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
