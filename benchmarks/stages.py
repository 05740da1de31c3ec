"""`python -m benchmarks stages --random-weights --preset paper`: ms per step (median) and peak GPU
memory of each stage at the preset's sizes, with every prior at its real architecture size and
random weights (the cost of the real ones), the share of each step spent inside the priors'
own forward passes, inside the backward passes the method needs of them (the VAE encoders in
SDS, the UNet in textual inversion) and elsewhere, and the projected wall time of the whole
schedule."""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from animate4d.backend.pipeline.config import STAGES
from animate4d.backend.runtime.devices import limit_memory

from . import device_name, int_in, pick_device, report, timed_ms
from .field import fit_solid_ball
from .phases import time_phases


class _PriorClock:
    """Time inside the hooked modules' forward passes, and apart from it inside their
    backward passes where the method needs one: the VAE encoders' (SDS gradients reach the
    render through them) and textual inversion's UNet (its training signal reaches the token
    through it).

    On CUDA the clock records events in the stream and reads them after the step (`totals`),
    so it adds no host syncs: a synchronising clock makes the GPU wait for the host at every
    mark and slows the step it measures. A backward pass is timed from the gradient reaching
    the module's output to it reaching every input that needs one (tensor hooks, which also
    fire around a compiled module's backward, where module backward hooks do not)."""

    def __init__(self, device):
        self.device = device
        self._spans: list[tuple[str, object, object]] = []  # (forward|backward, start, end)
        self._start = None
        self._depth = 0  # hooked modules may call each other (a CUDA-graph wrapper's inner)
        self._inputs: list = []
        self._handles = []

    def _mark(self):
        import torch

        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def reset(self) -> None:
        self._spans.clear()

    def totals(self) -> tuple[float, float]:
        """Seconds inside the priors' forward and backward passes since `reset` (on CUDA,
        once the step's work is done: after a synchronize)."""
        out = {"forward": 0.0, "backward": 0.0}
        for kind, a, b in self._spans:
            out[kind] += a.elapsed_time(b) / 1e3 if hasattr(a, "elapsed_time") else b - a
        return out["forward"], out["backward"]

    def hook(self, module):
        import torch

        def pre(m, args, kwargs):
            if self._depth == 0:
                self._start = self._mark()
                self._inputs = [v for v in (*args, *kwargs.values())
                                if torch.is_tensor(v) and v.requires_grad]
            self._depth += 1

        def post(m, args, kwargs, output):
            self._depth -= 1
            if self._depth == 0:
                self._spans.append(("forward", self._start, self._mark()))
                self._time_backward(_grad_tensors(output), self._inputs)
                self._inputs = []

        self._handles += [module.register_forward_pre_hook(pre, with_kwargs=True),
                          module.register_forward_hook(post, with_kwargs=True)]

    def _time_backward(self, outputs: list, inputs: list) -> None:
        if not outputs or not inputs:
            return  # no backward through it (SDS's UNets run without gradients)
        state = {"start": None, "left": len(inputs)}

        def start(grad):
            if state["start"] is None:
                state["start"] = self._mark()

        def end(grad):
            state["left"] -= 1
            if state["left"] == 0 and state["start"] is not None:
                self._spans.append(("backward", state["start"], self._mark()))

        for v in outputs:
            v.register_hook(start)
        for v in inputs:
            v.register_hook(end)

    def remove(self):
        """Unhook (a later stage may compile a module hooked here: hooks inside a compiled
        module would split its graph)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _grad_tensors(output) -> list:
    """The tensors in a module's output (a tensor, a tuple or a diffusers output) that carry
    gradients back into it."""
    import torch

    if torch.is_tensor(output):
        return [output] if output.requires_grad else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [v for item in output for v in _grad_tensors(item)]
    return []


def run(args) -> dict:
    import torch

    from animate4d.backend.config import override, parse_changes
    from animate4d.backend.pipeline import run as a124
    from animate4d.backend.pipeline import stages
    from animate4d.backend.pipeline.config import PRESETS
    from animate4d.backend.pipeline.optimisation import stage_optimiser
    from animate4d.backend.pipeline.run import occupancy_times, stage_stepper
    from animate4d.backend.pipeline.textual_inversion import TokenTrainer
    from animate4d.backend.priors import compiling, graphs
    from animate4d.backend.runtime import switches
    from animate4d.protocol.options import JobOptions

    device = pick_device(args.device)
    if args.memory_limit_gib is not None:
        limit_memory(device, args.memory_limit_gib)
    chosen = switches.active()
    if args.no_cuda_graphs:
        chosen = chosen.with_(cuda_graphs=False)
    if args.compile is not None:  # a bad name fails before any model loads
        chosen = chosen.with_(compile=switches.parse_parts(args.compile, "--compile"))
    switches.install(chosen)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    preset = PRESETS[args.preset]
    if args.tiny:
        from animate4d.backend.pipeline.config import tiny
        preset = tiny(preset, max_steps=10**6)
    preset = override(preset, parse_changes(args.set))
    # The method's own job object gives the stages; the bench sets its reference and scene.
    job = a124.Animate124(b"", JobOptions(prompt="a panda is dancing", preset=args.preset,
                                          frames=16), preset, models=args.models,
                          device=device, random_weights=args.random_weights)
    pool = job.pool
    s = preset.renderer.size
    mask = torch.zeros(s, s, device=device)
    mask[s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 1
    ref = stages.Reference(torch.ones(3, s, s, device=device) * 0.5, mask,
                           torch.rand(s, s, device=device))
    big = max(preset.textual_inversion.size, 256)
    prep = {"rgb": torch.rand(3, big, big)}
    out = {"benchmark": "stages", "preset": preset.name, "state": args.state,
           "changes": args.set or [], "device": device_name(device),
           "random_weights": args.random_weights, "torch": torch.__version__,
           "cuda_graphs": not args.no_cuda_graphs, "channels_last": args.channels_last,
           "cudnn_benchmark": args.cudnn_benchmark, "memory_limit_gib": args.memory_limit_gib,
           "compile": {st: ",".join(compiling.for_stage(st)) for st in args.stages},
           "adjusted": job.adjusted(), "stages": {}}
    rng = random.Random(0)
    scene = stages.Scene(preset, device)
    job._scene, job.ref, job.prep = scene, ref, prep
    if args.state == "fitted":
        fit_solid_ball(scene.canonical)
    elif args.state == "proxy":  # the bundled example's proxy, as `run --static-init proxy`
        from importlib import resources

        from animate4d.backend.pipeline.run import reference_view, start_from_proxy
        from animate4d.backend.preprocess.framing import find_crop
        from animate4d.backend.preprocess.image_io import load_image
        from animate4d.backend.preprocess.segment import foreground_mask

        image = load_image(resources.files("animate4d.backend").joinpath(
            "examples", "panda.png").read_bytes())
        mask = foreground_mask(image)
        rgb, view_mask = reference_view(image, mask, find_crop(mask), big)
        prep = job.prep = {"rgb": rgb, "mask": view_mask}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        start_from_proxy(scene, prep, preset)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out["proxy_seconds"] = round(time.perf_counter() - t0, 2)
        print("proxy start", out["proxy_seconds"], "s", flush=True)
    for stage in args.stages:
        clock = _PriorClock(device)
        # The last stage's priors and their state go before the reset (a prior still named
        # here stays on the GPU after `PriorPool.keep` drops it: 2.4 GB of SD would be carried
        # into the dynamic and refine stages).
        step = fn = opt = trainer = sd = stepper = None
        setup = 0.0  # one-off seconds per job before the stage's first step
        gc.collect()  # the last stage's closures and graphs, before the peak reset
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if stage == "textual_inversion":
                sd = pool.get("sd", stage)
                pool.keep("sd")
                for m in (sd.unet, sd.vae.encoder, sd.text_encoder):
                    clock.hook(m)
                if args.channels_last:
                    _channels_last(pool, args.channels_last)
                setup = time.perf_counter()
                ti = preset.textual_inversion
                trainer = TokenTrainer(sd, prep["rgb"], size=ti.size, batch=ti.batch, lr=ti.lr,
                                       views=ti.views)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                setup = time.perf_counter() - setup  # the bank of encoded views, once

                def step(p, trainer=trainer):
                    trainer.step()
            else:
                stage_obj = {"static": a124.Static, "dynamic": a124.Dynamic,
                             "refine": a124.Refine}[stage](job)
                fn = stage_obj.losses(scene)
                for prior in pool.loaded.values():
                    for name in ("unet", "controlnet", "image_encoder"):
                        if name in prior.parts:
                            part = prior.parts[name]
                            clock.hook(part)
                            if graphs.eager(part) is not part:  # refinement calls the inner
                                clock.hook(graphs.eager(part))
                    if "vae" in prior.parts:
                        clock.hook(prior.parts["vae"].encoder)
                if args.channels_last:
                    _channels_last(pool, args.channels_last)
                opt = stage_optimiser(scene, stage, preset)
                scene.refresh_occupancy(occupancy_times(stage))
                stepper = stage_stepper(stage, scene, ref, preset, fn, opt,
                                        stage_obj.cuda_graphs)

                def step(p, reference=False, stepper=stepper):
                    return stepper(rng, p, reference)

            # What the stage holds before its first step (its priors, the fields): run alone
            # and after other stages, it must be the same, or something was carried over.
            held = (round(torch.cuda.memory_allocated(device) / 1e9, 2)
                    if device.type == "cuda" else None)
            kinds = _time_kinds(stage, step, clock, device, args.warmup, args.iters)
            periodic = (_time_periodic(stage, scene, preset, device, args.iters)
                        if stage != "textual_inversion" else {"ms_per_step": 0.0})
            if args.profile or args.profile_gaps:
                out.setdefault("profiles", {})[stage] = _profile_kinds(
                    stage, step, device, gaps=args.profile_gaps)
            if args.phases:
                out.setdefault("phases", {})[stage] = time_phases(stage, step, device,
                                                                  args.iters)
            total_steps = preset.steps(stage)
            counts = _schedule_counts(stage, preset)
            minutes, shares = projection(kinds, counts, total_steps * periodic["ms_per_step"],
                                         setup)
            out["stages"][stage] = {
                "ms_per_step": round(minutes * 6e4 / total_steps, 1), "steps": total_steps,
                "projected_minutes": round(minutes, 1), "setup_seconds": round(setup, 2),
                "held_before_steps_gb": held,
                "prior_forward_share": round(shares["prior_forward_share"], 3),
                "prior_backward_share": round(shares["prior_backward_share"], 3),
                # The renders, fields, losses, optimiser and reference steps, and the host.
                "elsewhere_share": round(1 - sum(shares.values()), 3),
                "kinds": {k: dict(kinds[k], steps=round(counts[k])) for k in counts},
                "periodic": periodic,
                "peak_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
                if device.type == "cuda" else None,
                # CUDA graphs keep their pools reserved: what a 24 GB card must hold.
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 1e9, 2)
                if device.type == "cuda" else None}
        except torch.cuda.OutOfMemoryError as e:
            out["stages"][stage] = {"error": "out of memory", "detail": str(e)[:200],
                                    "peak_gb": round(torch.cuda.max_memory_allocated(device)
                                                     / 1e9, 2)}
        clock.remove()
        print(stage, out["stages"][stage], flush=True)
    done = [v for v in out["stages"].values() if "projected_minutes" in v]
    out["projected_minutes_total"] = round(sum(v["projected_minutes"] for v in done), 1)
    out["complete"] = len(done) == len(args.stages)
    return out


def _profile_kinds(stage: str, step, device, gaps: bool = False) -> dict:
    """Kernel profiles of the stage's SDS step and, apart, of its reference step (a quarter
    of the steps, with no prior: their cost is the renderer's and the optimiser's); `gaps`:
    with the GPU's idle gaps by launching call (`profile_steps`)."""
    from .field import profile_steps

    if stage == "textual_inversion":
        return {"step": profile_steps(lambda: step(0.5), device, rows=40, gaps=gaps)}
    return {"sds": profile_steps(lambda: step(0.5), device, rows=40, gaps=gaps),
            "reference": profile_steps(lambda: step(0.5, True), device, rows=25, gaps=gaps)}


def _kind(stage: str, reference: bool, losses) -> str:
    if stage == "textual_inversion":
        return "step"
    if reference:
        return "reference"
    # The dynamic stage asks Zero123 only on clips that start at time 0.
    return "sds+zero123" if stage == "dynamic" and "zero123" in losses else "sds"


def _time_kinds(stage, step, clock, device, warmup: int, iters: int) -> dict:
    """Median ms and prior shares of each kind of step the stage has (reference steps, SDS
    steps, and in the dynamic stage SDS steps with and without Zero123), `iters` of each
    after `warmup`. The dynamic stage's clips are drawn as in a run, so the bench steps until
    it has seen enough of both of its SDS kinds (at most 20 x iters tries per kind)."""
    import torch

    from animate4d.backend.pipeline.reference_graph import ReferenceGraph

    want = {"step"} if stage == "textual_inversion" else {"reference", "sds"}
    if stage == "dynamic":
        want.add("sds+zero123")
    seen: dict[str, list[tuple[float, float, float]]] = {k: [] for k in want}
    warm = dict.fromkeys(want, 0)
    # Reference steps: past their CUDA graph's eager warm-up and capture (once per stage).
    need = {k: max(warmup, ReferenceGraph.WARMUP + 1) if k == "reference" else warmup
            for k in want}
    tries = 0
    while any(len(v) < iters for v in seen.values()) and tries < 20 * iters * len(want):
        tries += 1
        reference = "reference" in want and len(seen["reference"]) < iters and tries % 2 == 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        clock.reset()
        t0 = time.perf_counter()
        # The losses go with the step: a loss kept alive keeps its autograd graph, whose
        # gradient accumulators a CUDA graph's capture would then share (and fail on).
        kind = _kind(stage, reference,
                     step(0.5) if stage == "textual_inversion" else step(0.5, reference))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if warm[kind] < need[kind]:
            warm[kind] += 1
        elif len(seen[kind]) < iters:
            seen[kind].append((time.perf_counter() - t0, *clock.totals()))
    out = {}
    for kind, rows in seen.items():
        if not rows:
            raise RuntimeError(f"the {stage} stage never took a {kind} step in {tries} steps")
        out[kind] = {
            "ms_per_step": round(statistics.median(t for t, _, _ in rows) * 1e3, 1),
            # The worst step shows stalls the median hides (kernels compiling mid-run).
            "max_ms": round(max(t for t, _, _ in rows) * 1e3, 1),
            "prior_forward_share": statistics.median(f / t for t, f, _ in rows),
            "prior_backward_share": statistics.median(b / t for t, _, b in rows),
            "timed": len(rows)}
    return out


def projection(kinds: dict, counts: dict, periodic_ms: float, setup_s: float) -> tuple:
    """(minutes, shares) of a whole stage: `counts[k]` steps of each kind at its median ms,
    plus `periodic_ms` in all of the work between steps and `setup_s` once; the priors'
    forward and backward shares of all of it (the rest, periodic work included, is
    elsewhere)."""
    total_ms = (sum(counts[k] * kinds[k]["ms_per_step"] for k in counts) + periodic_ms
                + setup_s * 1e3)
    shares = {key: sum(counts[k] * kinds[k]["ms_per_step"] * kinds[k][key] for k in counts)
              / total_ms for key in ("prior_forward_share", "prior_backward_share")}
    return total_ms / 6e4, shares


def _time_periodic(stage: str, scene, preset, device, iters: int) -> dict:
    """What a field stage does every few steps besides its steps, spread per step: the
    occupancy refresh (every `OCCUPANCY_EVERY` steps) and packing the fields' checkpoint
    (every `checkpoint_every`; sending it is the worker's, in the background). Median ms of
    `iters` of each."""

    from animate4d.backend.pipeline.run import (
        OCCUPANCY_EVERY,
        fields_checkpoint,
        occupancy_times,
    )

    def timed(fn) -> float:
        return statistics.median(timed_ms(fn, iters, 1, device))

    refresh = timed(lambda: scene.refresh_occupancy(occupancy_times(stage)))
    pack = timed(lambda: fields_checkpoint(scene, stage, 0))
    return {"occupancy_refresh_ms": round(refresh, 1), "checkpoint_ms": round(pack, 1),
            "ms_per_step": round(refresh / OCCUPANCY_EVERY + pack / preset.checkpoint_every,
                                 2)}


def _schedule_counts(stage: str, preset) -> dict[str, float]:
    """How many steps of each kind the preset's stage takes (the dynamic stage's Zero123
    steps as their expected number: clips from time 0, not mirrored)."""
    total = preset.steps(stage)
    if stage == "textual_inversion":
        return {"step": total}
    ref = sum(preset.reference_step(stage, i) for i in range(total))
    counts = {"reference": ref, "sds": total - ref}
    if stage == "dynamic":
        p = preset.dynamic.p_start_at_zero * (1 - preset.dynamic.p_mirror)
        counts["sds+zero123"] = counts["sds"] * p
        counts["sds"] -= counts["sds+zero123"]
    return counts


def _channels_last(pool, which: str) -> None:
    import torch

    for prior in pool.loaded.values():
        for name in ("unet", "controlnet", "vae") if which == "all" else ("vae",):
            for m in prior.parts[name].modules() if name in prior.parts else ():
                # 2D convolutions only (the video UNet's 3D ones have no such layout);
                # activations follow the weights' layout.
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)


def add_parser(sub) -> None:
    p = sub.add_parser("stages", help="per-stage step time and GPU memory at a preset's sizes",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="paper", choices=("paper", "fast"))
    p.add_argument("--random-weights", action="store_true",
                   help="real architectures with random weights (no model files needed)")
    p.add_argument("--models", help="models folder (without --random-weights)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--iters", type=int_in(1, 100), default=5,
                   help="timed steps of each kind of step (1-100)")
    p.add_argument("--warmup", type=int_in(0, 50), default=2,
                   help="untimed steps of each kind first (0-50)")
    p.add_argument("--state", default="fitted", choices=("initial", "fitted", "proxy"),
                   help="the canonical field: the initial density blob (what the static stage "
                   "starts from), a fitted solid ball (what the later stages start from), or "
                   "the bundled example's preview proxy (`run --static-init proxy`), timed")
    p.add_argument("--memory-limit-gib", type=int_in(1, 1024), metavar="GIB",
                   help="let the process use at most this much GPU memory, as on a smaller "
                   "card (24: does the preset fit a 24 GB card?); a stage that runs out is "
                   "reported as out of memory")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="run the UNets and the reference step eagerly (ANIMATE4D_CUDA_GRAPHS=0)")
    p.add_argument("--channels-last", choices=("vae", "all"),
                   help="2D convolutions of the VAEs (or of every prior) in channels-last "
                   "memory format")
    p.add_argument("--compile", metavar="PARTS",
                   help="torch.compile these parts of every prior in every stage, "
                   "comma-separated: vae (the encoder), unet, controlnet, text_encoder; '' for "
                   "none (ANIMATE4D_COMPILE; default: each stage's measured choice)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN time its convolution algorithms for each shape")
    p.add_argument("--profile", action="store_true",
                   help="also list each stage's ops and kernels that take the most time")
    p.add_argument("--profile-gaps", action="store_true",
                   help="--profile, and charge the GPU's idle gaps to the code that launched "
                   "the next kernel (where a host-bound step loses its time)")
    p.add_argument("--phases", action="store_true",
                   help="also time each part of the steps (renders, priors, backward, "
                   "optimiser) between syncs: host time beside the time to the GPU's end")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke test)")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="change the preset's config, e.g. refine.video_every=2 (repeatable)")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=lambda a: report(run(a), a.json))
