"""What a preset costs on this machine: each Animate124 stage's time per step and peak GPU
memory, measured by running the method's own Stage objects for a run of consecutive steps of
their own schedule (reference and prior steps, occupancy refreshes, checkpoints in their real
proportions), and the projected time of each preset's whole schedule (`animate4d bench gpu`).
"""

from __future__ import annotations

import dataclasses
import time
from importlib import resources

import torch

from animate4d.protocol.options import JobOptions

from ..jobs.presets import SPECS
from .config import PRESETS, STAGES, Animate124Config
from .run import Animate124


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device) -> float | None:
    return (round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda"
            else None)


def _without_steps(part):
    return dataclasses.replace(part, steps=0) if dataclasses.is_dataclass(part) else part


def _step_cost_key(config: Animate124Config, stage: str):
    """What one step of `stage` costs depends on: its own part less its step count, and for
    the field stages the parts they share (counts such as `reference.first` left out)."""
    if stage == "textual_inversion":
        return _without_steps(config.textual_inversion)
    shared = dataclasses.replace(
        config, name="", checkpoint_every=0, textual_inversion=None,
        reference=dataclasses.replace(config.reference, first=0),
        **{s: _without_steps(getattr(config, s)) for s in ("static", "dynamic", "refine")})
    return shared, _without_steps(getattr(config, stage))


def _same_stage(a: Animate124Config, b: Animate124Config, stage: str) -> bool:
    """Whether a step of `stage` costs the same under both trees (only the counts differ)."""
    return _step_cost_key(a, stage) == _step_cost_key(b, stage)


def measure(config: Animate124Config, *, device, models=None, random_weights: bool = False,
            steps: int = 32, warmup: int = 8, stages=STAGES, progress=print) -> dict:
    """Seconds per step and peak memory of each stage of `config`, each timed over `steps`
    consecutive steps from the middle of its schedule after `warmup` untimed ones (CUDA
    graphs captured, kernels compiled). The canonical field starts from the bundled example's
    preview proxy: a real shape, as the later stages see one."""
    image = resources.files("animate4d.backend").joinpath("examples", "panda.png").read_bytes()
    options = JobOptions(prompt="a panda is dancing", preset=config.name
                         if config.name in SPECS else "paper", frames=16)
    job = Animate124(image, options, config, models=models, device=device,
                     random_weights=random_weights)
    job.token_cache = False  # the token is learned, and timed, every time
    device = job.device
    by_name = {s.name: s for s in job.stages}
    out: dict[str, dict] = {}

    def run_stage(name: str, timed: bool) -> None:
        stage = by_name[name]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = stage.steps // 2 if timed else 0
        count = min(stage.steps - start, warmup + steps) if timed else stage.steps
        t0 = time.perf_counter()
        ran = stage.setup(start) is not False
        _sync(device)
        setup = time.perf_counter() - t0
        times = []
        try:
            for i in range(start, start + count if ran else start):
                t0 = time.perf_counter()
                stage.step(i)
                _sync(device)
                times.append(time.perf_counter() - t0)
        finally:
            stage.release()
        if timed:
            kept = times[warmup:] or times
            out[name] = {"ms_per_step": round(1e3 * sum(kept) / max(len(kept), 1), 2),
                         "timed_steps": len(kept), "setup_s": round(setup, 2),
                         "peak_gb": _peak_gb(device)}
        else:
            out[name] = {"seconds": round(setup + sum(times), 2), "peak_gb": _peak_gb(device)}
        progress(f"{name}: {out[name]}")

    run_stage("preprocess", timed=False)
    if "textual_inversion" in stages:
        run_stage("textual_inversion", timed=True)
    else:  # the later stages need a token
        job.pool.token = torch.zeros(job.pool.get("sd").text_encoder.config.hidden_size)
    job.pool.keep()
    from .run import start_from_proxy

    start_from_proxy(job.scene(), job.prep, config)
    for name in ("static", "dynamic", "refine"):
        if name in stages:
            run_stage(name, timed=True)
    run_stage("export", timed=False)
    return out


def projection(measured: dict, config: Animate124Config) -> dict:
    """Minutes of each measured stage over `config`'s schedule, and their sum (preprocess
    and export once each; loading and compiling not counted)."""
    minutes = {}
    for name, figures in measured.items():
        if "ms_per_step" in figures:
            minutes[name] = round((figures["ms_per_step"] * config.steps(name) / 1e3
                                   + figures["setup_s"]) / 60, 2)
        else:
            minutes[name] = round(figures["seconds"] / 60, 2)
    return {"minutes": minutes, "total_minutes": round(sum(minutes.values()), 1)}


def bench(preset: str, *, device, models=None, random_weights=False, steps=32, warmup=8,
          progress=print) -> dict:
    """`animate4d bench gpu`: measure `preset`'s stages, and project every Animate124 preset
    whose steps cost the same (a stage of another preset whose step differs is measured too)."""
    from ..jobs.presets import config_for

    def tree(name: str) -> Animate124Config:
        return PRESETS[name] if random_weights else config_for(name, models)

    base = tree(preset)
    measured = measure(base, device=device, models=models, random_weights=random_weights,
                       steps=steps, warmup=warmup, progress=progress)
    result = {"device": torch.cuda.get_device_name(device) if torch.device(device).type ==
              "cuda" else "cpu", "measured_preset": preset, "stages": measured, "presets": {}}
    for name, spec in SPECS.items():
        if spec.method != "animate124":
            continue
        other = tree(name)
        figures = dict(measured)
        differ = [s for s in STAGES if not _same_stage(base, other, s)]
        if differ:
            figures |= measure(other, device=device, models=models,
                               random_weights=random_weights, steps=steps, warmup=warmup,
                               stages=differ, progress=progress)
            figures = {k: v for k, v in figures.items() if k in measured}
        result["presets"][name] = projection(figures, other)
    return result
