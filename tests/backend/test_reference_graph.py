"""The reference step as a CUDA graph: its replays take the same steps as the step run
eagerly (GPU only; the dense render it is built on is checked on the CPU in test_field.py),
and the stages run it only where graphs are on."""

import warnings

import pytest
import torch

from animate4d.backend.pipeline import config as a124
from animate4d.backend.pipeline import run
from animate4d.backend.pipeline.optimisation import stage_optimiser
from animate4d.backend.pipeline.reference_graph import ReferenceGraph
from animate4d.backend.pipeline.stages import Reference, Scene

SIZE = 32


def _job(device):
    preset = a124.tiny(a124.PRESETS["paper"], 10**6)
    torch.manual_seed(0)
    scene = Scene(preset, device)
    gen = torch.Generator().manual_seed(1)
    ref = Reference(torch.rand(3, SIZE, SIZE, generator=gen).to(device),
                    (torch.rand(SIZE, SIZE, generator=gen) > 0.5).float().to(device),
                    torch.rand(SIZE, SIZE, generator=gen).to(device))
    return preset, scene, ref


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (graphs)")
def test_graph_replays_take_the_eager_steps():
    """Warm-up steps, the capture and its replays give the losses of the same steps run
    eagerly, step by step (no jitter, so both see the same samples), and the fields move."""
    seen = []
    for graph in (True, False):
        preset, scene, ref = _job("cuda")
        opt = stage_optimiser(scene, "dynamic", preset)
        step = ReferenceGraph(scene, ref, preset, opt, preset.clip_value("dynamic"),
                              jitter=False, graph=graph)
        losses = [{k: float(v) for k, v in step.step().items()} for _ in range(7)]
        assert step.captured == graph
        seen.append(losses)
    graphed, eager = seen
    for a, b in zip(graphed, eager, strict=True):
        assert a.keys() == b.keys() == {"ref_rgb", "ref_mask", "ref_depth"}
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-6), (k, graphed, eager)
    # the replays step the optimiser: the last loss is not the first
    assert abs(graphed[-1]["ref_rgb"] - graphed[0]["ref_rgb"]) > 1e-3 * graphed[0]["ref_rgb"]


def test_stages_take_reference_steps_through_the_graph_only_where_graphs_are_on(monkeypatch):
    """On the CPU (and with ANIMATE4D_CUDA_GRAPHS=0) a reference step is the stage's own
    (packed) reference losses and an optimiser step; no graph is made."""
    made = []
    monkeypatch.setattr(run, "ReferenceGraph", lambda *a, **k: made.append(a))
    preset, scene, ref = _job("cpu")
    opt = stage_optimiser(scene, "static", preset)
    calls = []

    def losses_fn(rng, progress, reference):
        calls.append(reference)
        return {"ref_rgb": sum(p.square().sum() for p in scene.canonical.parameters())}

    step = run.stage_stepper("static", scene, ref, preset, losses_fn, opt)
    before = [p.detach().clone() for p in scene.canonical.parameters()]
    step(None, 0.0, True)
    assert calls == [True] and made == []
    assert any(not torch.equal(a, p) for a, p in zip(before, scene.canonical.parameters(),
                                                     strict=True))


def test_a_failed_capture_leaves_the_step_eager_and_the_job_going(monkeypatch):
    """A capture that fails (a host sync some future change puts into the step, say) warns
    and takes the step eagerly, then and from then on: the job never dies of it."""
    from animate4d.backend.pipeline import reference_graph

    def failing(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(reference_graph, "capture", failing)
    monkeypatch.setattr(ReferenceGraph, "WARMUP", 0)  # the next step captures
    preset, scene, ref = _job("cpu")
    opt = stage_optimiser(scene, "static", preset)
    step = ReferenceGraph(scene, ref, preset, opt, None)
    step.use_graph = True  # as on a GPU (the warm-up, which needs one, is skipped here)
    before = [p.detach().clone() for p in scene.canonical.parameters()]
    with pytest.warns(RuntimeWarning, match="capture of the reference step failed"):
        losses = step.step()
    assert set(losses) == {"ref_rgb", "ref_mask", "ref_depth"}
    assert not step.captured and not step.use_graph
    assert any(not torch.equal(a, p) for a, p in zip(before, scene.canonical.parameters(),
                                                     strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.step()  # eager again, without another capture or warning
