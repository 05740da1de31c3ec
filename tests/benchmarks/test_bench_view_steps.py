"""The `view-steps` benchmark times what it says: only its warp-at-0 variant asks the motion
field."""

import argparse

from animate4d.backend.field.fields import SpectralMotionField
from benchmarks import view_steps


def test_view_steps_variants_and_report(monkeypatch):
    calls = []
    warp = SpectralMotionField.warp
    monkeypatch.setattr(SpectralMotionField, "warp",
                        lambda self, x, t: calls.append(1) or warp(self, x, t))

    def run(variants):
        calls.clear()
        args = argparse.Namespace(device="cpu", state="fitted", variants=variants, iters=1,
                                  warmup=0, tiny=True, json=None)
        return view_steps.run(args)

    out = run(["as-is", "first-pass"])
    assert calls == []  # the static stage's renders are at time 0: no motion field
    assert set(out["ms"]) == {"as-is", "first-pass"}
    assert all(ms > 0 for v in out["ms"].values() for ms in v.values())
    assert set(out["ms"]["as-is"]) == {"sds", "reference"}
    assert out["samples"]["as-is"]["occupied"] > 0
    run(["warp-at-0"])
    assert calls  # the variant sends time 0 through the warp
