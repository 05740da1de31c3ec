"""The `animate4d` command: assembles the subcommands of backend/commands.

Exit codes: 0 done, 2 bad input or options (the message says what to change), 130 interrupted,
1 an internal error (a bug: the traceback is printed so that it can be reported). Client
commands add: 3 the job failed or was cancelled, 4 the server could not be reached.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback

from animate4d.protocol.errors import Animate4DError

from .commands import bench, keys, local, models, motion, remote, serve
from .runtime import devices, switches
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
    motion.add_parsers(sub)
    bench.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command. `parser`: another set of subcommands (each setting `func`) run with
    these exit codes and messages (the benchmarks in a checkout); default `animate4d`'s."""
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # told with the subcommand's own usage, not the top-level one
        commands = next((a for a in parser._actions
                         if isinstance(a, argparse._SubParsersAction)), None)
        chosen = commands.choices.get(getattr(args, commands.dest, None)) if commands else None
        (chosen or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    # SIGTERM (a scheduler, `kill`) stops a command as Ctrl-C does: with a message and exit
    # 130, not killed mid-write. `serve` and `worker` install their own handlers.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # The one place the environment's runtime switches are read; a command's own flags
        # may refine them (they install their own).
        switches.install(switches.from_environ())
        devices.prefer_expandable_segments()
        devices.keep_compiled_kernels()
        return args.func(args)
    except switches.SwitchError as e:
        print(f"animate4d: error: {e}", file=sys.stderr)
        return 2
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
