"""The `clip-steps` benchmark renders the same clips in every variant, and each variant changes
only what it says."""

import argparse

from animate4d.backend.field.render import Renderer
from benchmarks import clip_steps


def test_clip_steps_variants_render_the_same_clips(monkeypatch):
    seen = []
    visible = Renderer._visible

    def spy(self, *a, **k):
        seen.append((self.runs, self.point_chunk))
        return visible(self, *a, **k)

    render_rays = Renderer.render_rays

    def first_pass_always(self, *a, **k):  # tiny clips are under the first pass's threshold
        self.prune_above = 0
        return render_rays(self, *a, **k)

    monkeypatch.setattr(Renderer, "_visible", spy)
    monkeypatch.setattr(Renderer, "render_rays", first_pass_always)
    args = argparse.Namespace(device="cpu", state="fitted", variants=list(clip_steps.VARIANTS),
                              iters=2, warmup=1, tiny=True, json=None)
    out = clip_steps.run(args)
    assert set(out["ms"]) == set(clip_steps.VARIANTS) and all(v > 0 for v in out["ms"].values())
    # Three rounds, one step of each variant per round, each variant under its own settings.
    runs, small = Renderer.FIRST_PASS_RUNS, Renderer.POINT_CHUNK
    assert set(seen) == {(runs, None), ((8, 16), None), (runs, small)}
    assert len(seen) == 3 * len(clip_steps.VARIANTS)
    # The same clips (and jitter) in every variant: the same samples shaded, clip by clip,
    # whatever the first pass's runs (it keeps the same samples by design).
    shaded = out["shaded"]
    assert all(shaded[v] == shaded["as-is"] for v in clip_steps.VARIANTS)
    assert all(n > 0 for n in shaded["as-is"])
