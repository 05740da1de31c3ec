"""`python -m benchmarks job`: one whole Animate124 job, as a worker runs it.

The bundled example and a prompt through `jobs.presets.method_for` and the stage runner
(`jobs.method.run_method`): preprocess, textual inversion, static, dynamic, refine, export,
one after another on one scene, on random weights at the real sizes (or `--models DIR`).
Reports the priors' construction, each stage's wall time (from the end of the stage before),
its set-up within it (up to its first step: priors moved, fields built, state loaded), its
steady time per step after the first `WARM_STEPS` (compilation and graph capture happen
there), its peak memory, and the total.
`--max-steps` caps every stage (a scaled job: the whole path, each stage's peak, in minutes);
`--memory-limit-gib` holds the allocator to a smaller card's budget. `--resume-dir` keeps the
job's checkpoints and the figures so far in a folder: a run stopped (a time limit, a lost
machine) is resumed by the same command, and its figures carry on from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

FIGURES = "figures.json"
WARM_STEPS = 20
"""Steps of a stage (compilation, graph capture, caches warming) before its steady step time
(`step_ms`) is taken."""


class _Snapshotting:
    """A checkpoint store that also writes the figures as they stand whenever the job saves a
    checkpoint: a run stopped later resumes from both, and no time is counted twice."""

    def __init__(self, store, snapshot):
        self.store, self.snapshot = store, snapshot

    def get(self, key: str) -> bytes | None:
        return self.store.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.store.put(key, data)
        self.snapshot()


def _write_json(path: Path, figures: dict) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(figures, indent=2) + "\n")
    os.replace(part, path)


def _resumed(folder: Path, out: dict) -> dict:
    """The figures a stopped run left in `folder`, checked to be of the same job."""
    figures = json.loads((folder / FIGURES).read_text())
    if figures.get("complete"):
        raise SystemExit(f"the job in {folder} is complete: its figures are in "
                         f"{folder / FIGURES}; remove the folder to measure again")
    same = ("preset", "max_steps", "memory_limit_gib", "frames", "device")
    differ = [k for k in same if figures.get(k) != out[k]]
    if differ:
        raise SystemExit(f"{folder} holds a job with other {', '.join(differ)} "
                         f"({', '.join(f'{k}={figures.get(k)!r}' for k in differ)}): resume "
                         "it with the same arguments, or give another folder")
    return figures


def run(args) -> dict:
    from importlib import resources

    import torch

    from animate4d.backend.jobs.checkpoints import FolderCheckpoints
    from animate4d.backend.jobs.method import run_method
    from animate4d.backend.jobs.presets import config_for, method_for
    from animate4d.backend.pipeline.config import TINY_SIZES, override, scaled
    from animate4d.backend.runtime.devices import limit_memory
    from animate4d.protocol.errors import OutOfGpuMemoryError
    from animate4d.protocol.options import JobOptions

    from . import device_name, pick_device

    device = pick_device(args.device)
    if args.memory_limit_gib:
        limit_memory(device, args.memory_limit_gib)
    cuda = device.type == "cuda"
    out = {"benchmark": "job", "preset": args.preset, "device": device_name(device),
           "max_steps": args.max_steps, "memory_limit_gib": args.memory_limit_gib,
           "frames": args.frames, "runs": 1, "stages": {}}
    folder = Path(args.resume_dir) if args.resume_dir else None
    if folder is not None and (folder / FIGURES).exists():
        previous = _resumed(folder, out)
        out.update(runs=previous["runs"] + 1, stages=previous["stages"],
                   construct_seconds=previous["construct_seconds"])
    config = config_for(args.preset, args.models)
    if args.tiny_sizes:
        config = override(config, TINY_SIZES)
    config = scaled(config, args.max_steps)
    image = resources.files("animate4d.backend").joinpath("examples", "panda.png").read_bytes()
    options = JobOptions(prompt="a panda is dancing", preset=args.preset, frames=args.frames)
    t_start = time.perf_counter()
    job = method_for(image, options, models=args.models, config=config, device=device,
                     random_weights=args.models is None)
    job.token_cache = False  # the token is learned, and timed, every time
    # A resumed run builds the priors again; the figure is the first run's.
    built = round(time.perf_counter() - t_start, 2)
    out.setdefault("construct_seconds", built)
    print(f"construct: {built} s", file=sys.stderr, flush=True)
    at = {"stage": None, "t0": time.perf_counter(), "start": 0, "warm": None}

    def synced() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def peaks(fig: dict, reset: bool) -> None:
        torch.cuda.synchronize(device)
        for key, value in (("peak_allocated_gb", torch.cuda.max_memory_allocated(device)),
                           ("peak_reserved_gb", torch.cuda.max_memory_reserved(device))):
            fig[key] = max(fig.get(key, 0.0), round(value / 1e9, 2))
        if reset:
            torch.cuda.reset_peak_memory_stats(device)

    def close(now: float) -> None:
        """The stage in hand ends at `now`: its time from the end of the one before (its
        set-up included), its peaks, and its steady step time where it ran enough steps."""
        name = at["stage"]
        if name is None:
            return
        fig = out["stages"][name]
        fig["seconds"] = round(fig["seconds"] + now - at["t0"], 2)
        if at["warm"] is not None:
            warm_step, t_warm = at["warm"]
            fig["step_ms"] = round(1000 * (now - t_warm) / (fig["steps"] - warm_step), 2)
        if cuda:
            peaks(fig, reset=True)
        print(f"{name}: {fig}", file=sys.stderr, flush=True)
        at.update(stage=None, t0=now, warm=None)

    def snapshot() -> None:
        """The figures as they would stand if the run stopped at the checkpoint just saved."""
        figures = json.loads(json.dumps(out))
        name = at["stage"]
        if name is not None:
            fig = figures["stages"][name]
            fig["seconds"] = round(fig["seconds"] + time.perf_counter() - at["t0"], 2)
            if cuda:
                peaks(fig, reset=False)
        _write_json(folder / FIGURES, figures)

    def progress(stage: str, step: int, total: int) -> None:
        # The runner calls this before each step, after the stage's set-up, and once more
        # with step == total when the stage is done (its last checkpoint saved).
        if stage != at["stage"]:
            now = synced()
            close(now)  # should the runner skip a stage's final call
            fig = out["stages"].setdefault(stage, {"seconds": 0.0, "steps": total,
                                                   "setup_seconds": 0.0})
            fig["setup_seconds"] = round(fig["setup_seconds"] + now - at["t0"], 2)
            at.update(stage=stage, start=step, warm=None)
            print(f"{stage}: set up in {now - at['t0']:.1f} s, from step {step} of {total}",
                  file=sys.stderr, flush=True)
        if step == at["start"] + WARM_STEPS and step < total:
            at["warm"] = (step, synced())
        if step == total:
            close(synced())

    checkpoints = None
    if folder is not None:
        checkpoints = _Snapshotting(FolderCheckpoints(folder / "checkpoints"), snapshot)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result = run_method(job, progress, checkpoints)
    except OutOfGpuMemoryError as e:  # a figure too: this preset does not fit this card
        name = at["stage"]  # None: it ran out in a stage's set-up
        at["warm"] = None  # a step time over the stage's total steps would be wrong
        close(synced())
        failed = out["stages"][name] if name else out
        failed["error"], failed["detail"] = "out of memory", e.message[:300]
        out["complete"] = False
        if folder is not None:
            _write_json(folder / FIGURES, out)
        print(f"{name}: {e.message}", file=sys.stderr, flush=True)
        return out
    close(synced())
    # Construction, then the stages (each with its set-up): over several runs, the time the
    # job would have taken in one, plus the set-ups that resuming repeats.
    out["total_seconds"] = round(out["construct_seconds"]
                                 + sum(f["seconds"] for f in out["stages"].values()), 1)
    out["total_minutes"] = round(out["total_seconds"] / 60, 2)
    out["vertices"], out["faces"] = result.num_vertices, len(result.faces)
    out["adjusted"] = result.metadata.get("adjusted", {})
    out["complete"] = True
    if folder is not None:
        _write_json(folder / FIGURES, out)
    return out


def add_parser(sub) -> None:
    from . import int_in, report

    p = sub.add_parser("job", help="one whole Animate124 job (priors built, every stage, "
                       "export): wall time and peak memory per stage",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="fast", choices=("fast", "paper"))
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--frames", type=int_in(2, 64), default=16)
    p.add_argument("--max-steps", type=int_in(1, 100_000), default=None,
                   help="cap every stage at this many steps (a scaled job)")
    p.add_argument("--memory-limit-gib", type=float, default=None,
                   help="hold the allocator to this many GiB (a smaller card's budget)")
    p.add_argument("--models", metavar="DIR",
                   help="models folder (default: random weights at the real sizes)")
    p.add_argument("--tiny-sizes", action="store_true",
                   help="the tiny models' renders and fields (with --models from "
                        "`animate4d models make-tiny`)")
    p.add_argument("--resume-dir", metavar="DIR",
                   help="keep checkpoints and the figures so far here; the same command "
                        "resumes a stopped run from them")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
