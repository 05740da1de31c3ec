"""The SDS stages' regularisers (Animate124's entropy, orientation, normal-image smoothness and
time smoothness): each loss as defined, and the stages taking them with their weights."""

import random

import pytest
import torch
from torch import nn

from animate4d.backend.config import override
from animate4d.backend.field.fields import MotionField, SpectralMotionField
from animate4d.backend.field.render import Renderer, Shading, weight_entropy
from animate4d.backend.pipeline import config as a124
from animate4d.backend.pipeline import stages
from animate4d.backend.preprocess.framing import canonical_camera

ALL = ("entropy", "orientation", "normal_image")


class Ball(nn.Module):
    """Density `inside` within radius 0.5 and `outside` beyond it, with a thin smooth edge (so
    normals have a gradient), plus `grow` r^2: a solid ball, fog, or density growing outwards
    (its normals point in)."""

    def __init__(self, inside=1000.0, outside=0.0, grow=0.0):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))  # so it has a device
        self.inside, self.outside, self.grow = inside, outside, grow

    def forward(self, x, group=1):
        r = x.norm(dim=-1)
        s = torch.sigmoid((0.5 - r) / 0.003)
        dens = self.outside + (self.inside - self.outside) * s + self.grow * r * r
        return dens, torch.full((len(x), 3), 0.5)

    def density(self, x):
        return self.forward(x)[0]


def _render(field, regularisers=ALL, size=24):
    r = Renderer(field, samples=64, prune=False)
    return r.render([canonical_camera(size)], shading=Shading(mode="lambertian"),
                    regularisers=regularisers)


def _mean(out, key):
    return float(out[key].sum() / out["samples"].sum())


def test_weight_entropy_is_0_for_empty_and_opaque_samples_and_largest_at_one_half():
    w = torch.linspace(0, 1, 101)
    h = weight_entropy(w)
    assert float(h[0]) == pytest.approx(0, abs=3e-4) and float(h[-1]) == pytest.approx(0, abs=3e-4)
    assert int(h.argmax()) == 50 and float(h[50]) == pytest.approx(1.0)
    assert float(weight_entropy(torch.tensor(0.25))) == pytest.approx(0.811278, rel=1e-5)


def test_a_sharp_surface_has_less_entropy_than_fog():
    sharp = _mean(_render(Ball(inside=1e5)), "entropy")
    fog = _mean(_render(Ball(inside=2.0, outside=2.0)), "entropy")  # a few % a sample
    assert fog > 0.05 and sharp < fog / 5, (sharp, fog)


def test_means_over_samples_do_not_depend_on_whether_hidden_samples_were_pruned():
    cam = canonical_camera(24)
    full, pruned = (Renderer(Ball(inside=1e4), samples=64, prune=p, prune_above=0).render(
        [cam], shading=Shading(mode="lambertian"), regularisers=ALL) for p in (False, True))
    assert torch.equal(full["samples"], pruned["samples"])
    for key in ("entropy", "orientation"):
        assert _mean(pruned, key) == pytest.approx(_mean(full, key), rel=0.05, abs=1e-7)


def test_orientation_penalises_normals_facing_away_from_the_camera_by_sample_weight():
    solid = _render(Ball(inside=1e4))
    hollow = _render(Ball(inside=0.0, grow=200.0))  # seen from outside, normals point away
    assert _mean(solid, "orientation") < 1e-5
    assert _mean(hollow, "orientation") > 5e-3
    # weighted by the sample weights: where no light stops, nothing is penalised
    empty = _render(Ball(inside=0.0, outside=0.0))
    assert float(empty["orientation"].abs().max()) == 0.0


def test_orientation_and_the_normal_image_reach_only_the_normals():
    """The weights are held fixed in both (Animate124 detaches them): their gradients reach
    the density only through the normals' finite differences, so a constant density offset,
    which leaves the normals as they are, gets none."""
    offset = nn.Parameter(torch.zeros(()))

    class Shifted(Ball):
        def forward(self, x, group=1):
            d, a = super().forward(x, group)
            return d + offset, a

    def grad(key):
        offset.grad = None
        _render(Shifted(inside=1e4, outside=0.0))[key].sum().backward()
        return float(offset.grad)

    through_weights = grad("alpha")  # what a loss on the weights gives it
    assert abs(through_weights) > 1.0
    for key in ("orientation", "normal_image"):  # the differences' rounding only
        assert abs(grad(key)) < 1e-4 * abs(through_weights), key


def test_the_normal_image_is_the_weighted_normals_mapped_to_0_1():
    out = _render(Ball(inside=1e5), ("normal_image",))
    assert set(out) >= {"normal_image"} and "samples" not in out
    expected = (out["normal"] + out["alpha"][..., None]) / 2  # sum w (n + 1) / 2
    assert torch.allclose(out["normal_image"], expected, atol=1e-5)


def test_the_regularisers_ask_for_normals():
    r = Renderer(Ball(), samples=16)
    with pytest.raises(ValueError):
        r.render([canonical_camera(8)], shading=Shading(mode="albedo"),
                 regularisers=("orientation",))
    with pytest.raises(ValueError):
        r.render([canonical_camera(8)], shading=Shading(mode="lambertian"),
                 regularisers=("opacity",))


def test_without_regularisers_the_render_adds_nothing():
    out = _render(Ball(), ())
    assert set(out) == {"rgb", "alpha", "depth", "normal"}


def test_normal_smoothness_is_0_for_a_constant_normal_image_only():
    flat = torch.full((2, 12, 12, 3), 0.3)
    assert float(stages.normal_tv(flat)) == 0.0
    assert float(stages.normal_blur(flat)) == pytest.approx(0.0, abs=1e-12)
    torch.manual_seed(0)
    noisy = flat + 0.1 * torch.randn_like(flat)
    assert float(stages.normal_tv(noisy)) > 0.01 and float(stages.normal_blur(noisy)) > 0.005
    # first order: neighbours along each axis
    ramp = torch.arange(12.0).view(1, 12, 1, 1).expand(1, 12, 12, 3)
    assert float(stages.normal_tv(ramp)) == pytest.approx(1.0)


class Drift(nn.Module):
    """A known motion: displacement f(x) + v t."""

    def __init__(self, v):
        super().__init__()
        self.bound, self.v = 1.0, torch.tensor(v)

    def displacement(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        return torch.sin(3 * x) + self.v * t


def test_time_smoothness_is_0_for_a_motion_constant_in_time_and_grows_with_its_change():
    preset = a124.tiny()
    r = preset.regularisers
    assert float(stages.time_smoothness(Drift([0.0, 0.0, 0.0]), preset, "cpu")) == 0.0
    moving = stages.time_smoothness(Drift([0.3, 0.0, 0.4]), preset, "cpu")
    assert float(moving) == pytest.approx(r.time_smoothness * 0.25 * r.time_step**2, rel=1e-4)
    for motion in (MotionField(1.0, levels=4, log2_table=10),
                   SpectralMotionField(1.0, terms=2, levels=4, log2_table=10)):
        with torch.no_grad():  # a motion that moves (the spectral field starts still)
            motion.net[-1].weight.normal_(0, 0.1)
        loss = stages.time_smoothness(motion, preset, "cpu")
        assert float(loss.detach()) > 0
        loss.backward()  # reaches the motion's parameters
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in motion.parameters())


def test_entropy_ramps_in_as_animate124s_global_step():
    """lambda_entropy * min(1, 2 * global_step / iters): dynamic goes on from static's 5000 of
    15000, refine from 15000 of 20000."""
    paper = a124.PAPER
    w = paper.regularisers.entropy
    assert paper.entropy_weight("static", 0.0) == 0.0
    assert paper.entropy_weight("static", 0.25) == pytest.approx(w / 2)
    assert paper.entropy_weight("static", 0.5) == paper.entropy_weight("static", 1.0) == w
    assert paper.entropy_weight("dynamic", 0.0) == pytest.approx(w * 2 / 3)
    assert paper.entropy_weight("dynamic", 0.25) == pytest.approx(w)
    assert paper.entropy_weight("refine", 0.0) == pytest.approx(w)


class _Guidance:
    def __call__(self, rgb, *args, **kwargs):
        return type("Out", (), {"loss": rgb.mean()})()


def _steps(preset, seed=0):
    """One static, dynamic and refine SDS step and a reference step of each, on one scene."""
    torch.manual_seed(seed)
    scene = stages.Scene(preset, "cpu")
    frozen = stages.Scene(preset, "cpu")
    s = preset.renderer.size
    ref = stages.Reference(torch.ones(3, s, s), torch.ones(s, s), torch.rand(s, s))
    g = _Guidance()
    out = {}
    for reference in (False, True):
        rng = random.Random(seed)
        out["static", reference] = stages.static_step(scene, ref, preset, g, g, "p", rng, 0.6,
                                                      reference)
        out["dynamic", reference] = stages.dynamic_step(scene, ref, preset, g, g, "p", rng,
                                                        0.6, reference)
        out["refine", reference] = stages.refine_step(
            scene, frozen, ref, preset, stages.RefineGuidance(g, "p", g, "p", g), rng, 0.6,
            reference)
    return out


REGULAR = {"entropy", "orientation", "normal_tv", "normal_blur"}


def test_every_sds_step_takes_the_regularisers_and_reference_steps_do_not():
    out = _steps(a124.tiny())
    assert set(out["static", False]) == {"sd", "zero123"} | REGULAR
    assert set(out["dynamic", False]) - {"zero123"} == {"video", "time_smoothness"} | REGULAR
    assert set(out["refine", False]) - {"zero123"} == {"tile", "video",
                                                       "time_smoothness"} | REGULAR
    for stage in ("static", "dynamic", "refine"):
        assert set(out[stage, True]) <= {"ref_rgb", "ref_mask", "ref_depth"}
        assert all(torch.isfinite(v) and v.requires_grad for v in out[stage, False].values())


def test_the_stages_weigh_the_regularisers_as_configured_and_0_turns_one_off(monkeypatch):
    base = a124.tiny()
    names = ("entropy", "orientation", "normal_tv", "normal_blur", "time_smoothness")
    doubled = override(base, {f"regularisers.{n}": 2 * getattr(base.regularisers, n)
                              for n in names})
    one, two = _steps(base), _steps(doubled)
    for key in [("static", False), ("dynamic", False), ("refine", False)]:
        for name in set(names) & set(one[key]):
            assert float(two[key][name].detach()) == pytest.approx(
                2 * float(one[key][name].detach()), rel=1e-4)
    asked = []
    real = Renderer.render

    def recording(self, *a, **kw):
        asked.append(kw.get("regularisers", ()))
        return real(self, *a, **kw)

    monkeypatch.setattr(Renderer, "render", recording)
    off = _steps(override(base, {f"regularisers.{n}": 0.0 for n in names}))
    assert set(off["static", False]) == {"sd", "zero123"}
    assert set(off["refine", False]) - {"zero123"} == {"tile", "video"}
    assert all(a == () for a in asked)  # nothing extra rendered
    no_entropy = _steps(override(base, {"regularisers.entropy": 0.0}))
    assert set(no_entropy["static", False]) == {"sd", "zero123"} | REGULAR - {"entropy"}


def test_a_priors_loss_takes_its_gradient_back_to_the_image_at_once():
    """`stages.prior_loss`: the same value and the same gradients as the loss itself, and
    the prior's graph is gone before the next prior's loss runs (on the old way every
    prior's encoder graph lived until the step's backward)."""
    import gc
    import weakref

    from animate4d.backend.pipeline.stages import prior_loss

    torch.manual_seed(0)
    field = torch.nn.Linear(3, 3)
    encoder = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 3)

    def sds_like(image):
        return (encoder(image * 2 - 1) ** 2).sum()

    want_value = sds_like(field(x))
    want_value.backward()
    want = [p.grad.clone() for p in field.parameters()]
    field.zero_grad()
    encoder.requires_grad_(False)  # a frozen prior: gradients reach only the image

    class Marker:
        pass

    class Tagged(torch.autograd.Function):
        """The identity, its graph node holding a marker: alive exactly while the graph is."""

        @staticmethod
        def forward(ctx, t):
            ctx.marker = Marker()
            held.append(weakref.ref(ctx.marker))
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            return g

    held = []

    def first(image):
        return sds_like(Tagged.apply(image))

    def second(image):
        gc.collect()
        held.append(held[0]() is None)  # the first prior's graph is gone by now
        return sds_like(image)

    rgb = field(x)
    a, b = prior_loss(first, rgb), prior_loss(second, rgb)
    assert held[1] is True
    torch.testing.assert_close(a, want_value.detach())
    (a + b).backward()
    for p, g in zip(field.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)
    with torch.no_grad():  # nothing to carry: the loss itself
        assert not prior_loss(sds_like, field(x)).requires_grad
