"""`animate4d models fetch|check|make-tiny`: the pretrained weights the GPU presets need."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from animate4d.protocol.errors import InvalidRequestError


def _models_dir(args) -> Path:
    from ..runtime.switches import models_folder

    folder = args.models or models_folder()
    if not folder:
        raise InvalidRequestError("no models folder given",
                                  hint="pass --models DIR or set ANIMATE4D_MODELS")
    return Path(folder)


def _roles(names):
    from ..priors.registry import ROLES

    unknown = [n for n in names if n not in ROLES]
    if unknown:
        raise InvalidRequestError(f"unknown role(s) {', '.join(unknown)}",
                                  hint=f"roles: {', '.join(ROLES)}")
    return list(names) or list(ROLES)


def cmd_fetch(args) -> int:
    from huggingface_hub import snapshot_download

    from ..priors.registry import ROLES

    folder = _models_dir(args)
    for name in _roles(args.roles):
        role = ROLES[name]
        print(f"{name}: {role.repo}@{role.revision} -> {folder / name} "
              f"(~{role.disk_gb:g} GB; interrupted downloads resume)", file=sys.stderr)
        snapshot_download(role.repo, revision=role.revision, local_dir=folder / name,
                          allow_patterns=list(role.patterns))
    return cmd_check(args)


def cmd_check(args) -> int:
    from ..jobs.presets import SPECS
    from ..priors.registry import OPTIONAL_ROLES, ROLES, TINY_MARKER, folder_bytes, missing_files

    folder = _models_dir(args)
    complete, tiny_roles = set(), set()
    for name in _roles(args.roles):
        d = folder / name
        gaps = missing_files(ROLES[name], d)
        if gaps:
            optional = " (optional: GrabCut cuts photos out instead)" \
                if name in OPTIONAL_ROLES else ""
            print(f"{name:16} MISSING {', '.join(gaps[:4])} in {d}{optional}")
        else:
            complete.add(name)
            is_tiny = (d / TINY_MARKER).is_file()
            tiny_roles.update([name] if is_tiny else [])
            tiny = " (tiny random weights: for smoke runs, the output is noise)" if is_tiny else ""
            print(f"{name:16} ok      {folder_bytes(d) / 1e9:7.2f} GB  {d}{tiny}")
            if args.verbose:
                for f in sorted(p for p in d.rglob("*") if p.is_file()):
                    print(f"{'':24}{f.stat().st_size:>14,}  {f.relative_to(d)}")
    runnable = [n for n, s in SPECS.items() if set(s.roles) <= complete]
    smoke = [n for n in runnable if set(SPECS[n].roles) & tiny_roles]
    real = [n for n in runnable if n not in smoke]
    print(f"presets runnable with {folder}: {', '.join(real) or 'none'}"
          + (f"; as smoke runs only (tiny random weights): {', '.join(smoke)}" if smoke else ""))
    needed = [r for r in _roles(args.roles) if args.roles or r not in OPTIONAL_ROLES]
    return 0 if set(needed) <= complete else 2


def cmd_make_tiny(args) -> int:
    from ..priors.tiny import make_tiny

    out = make_tiny(args.dir, _roles(args.roles) if args.roles else None, seed=args.seed)
    print(out.resolve())
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="fetch and check the GPU presets' pretrained weights")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    for name, fn, text in (("fetch", cmd_fetch, "download roles from the Hugging Face Hub"),
                           ("check", cmd_check, "list what is present, with sizes")):
        q = msub.add_parser(name, help=text,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        q.add_argument("roles", nargs="*", metavar="ROLE",
                       help="sd, zero123, video, controlnet_tile, depth, segment (default: "
                            "all; segment is optional)")
        q.add_argument("--models", metavar="DIR", help="models folder (or ANIMATE4D_MODELS)")
        q.add_argument("--verbose", action="store_true", help="list every file")
        q.set_defaults(func=fn)
    t = msub.add_parser("make-tiny", help="write tiny random models in the real layouts "
                                          "(tests, CI, smoke runs; results are noise)")
    t.add_argument("dir", metavar="DIR", help="the models folder to write (one sub-folder per "
                                              "role, as `models fetch` writes them)")
    t.add_argument("roles", nargs="*", metavar="ROLE",
                   help="sd, zero123, video, controlnet_tile, depth, segment (default: all)")
    t.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    t.set_defaults(func=cmd_make_tiny)
