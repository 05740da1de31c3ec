"""Fields, renderer and extraction against exact references (analytic sphere, rigid motion)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from animate4d.backend.field import hashgrid_triton
from animate4d.backend.field.extract import (
    carry,
    extract,
    fill_from_neighbours,
    forward_warp,
)
from animate4d.backend.field.fields import CanonicalField, MotionField, SpectralMotionField
from animate4d.backend.field.render import (
    DecayingOccupancyGrid,
    OccupancyGrid,
    Renderer,
    Shading,
    camera_rays,
)
from animate4d.backend.preprocess.framing import canonical_camera
from tests.backend.helpers import edges_are_manifold

RADIUS = 0.5


class Sphere(nn.Module):
    """A solid sphere of constant density and albedo: the analytic reference field."""

    def __init__(self, density=1000.0, centre=(0.0, 0.0, 0.0), edge=0.003):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))  # so it has a device
        self.d, self.c, self.edge = density, torch.tensor(centre), edge

    def forward(self, x, group=1):
        r = (x - self.c.to(x)).norm(dim=-1)
        # A thin smooth edge (about 0.003), so that normals have a gradient while the tail
        # outside the radius stays negligible (density * exp(-distance / 0.003)).
        dens = self.d * torch.sigmoid((RADIUS - r) / self.edge)
        return dens, torch.full((len(x), 3), 0.5, device=x.device)

    def density(self, x):
        return self.forward(x)[0]


class Translate(nn.Module):
    """A known rigid motion: the scene moves by v * t (backward warp D = -v t)."""

    def __init__(self, v):
        super().__init__()
        self.v = torch.tensor(v)

    def displacement(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        return -self.v.to(x) * t * torch.ones(len(x), 1)

    def warp(self, x, t):
        return x + self.displacement(x, t)


class Box(nn.Module):
    """A solid cube of half-side `half` about the origin, its faces smooth over `edge` (wider
    than the normals' differences, so that they see the face's direction unbiased)."""

    def __init__(self, half=0.3, density=1000.0, edge=0.03):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.half, self.d, self.edge = half, density, edge

    def forward(self, x, group=1):
        dens = self.d * torch.sigmoid((self.half - x.abs().amax(-1)) / self.edge)
        return dens, torch.full((len(x), 3), 0.5, device=x.device)

    def density(self, x):
        return self.forward(x)[0]


class Rotate(nn.Module):
    """A known rigid motion: the scene turns about +Z by `angle` * t (backward warp: the
    point seen at x at time t is R(-angle t) x in the canonical frame)."""

    def __init__(self, angle):
        super().__init__()
        self.angle = angle

    def warp(self, x, t):
        a = -self.angle * torch.as_tensor(t, dtype=x.dtype).reshape(-1)
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1], x[:, 2]], -1)

    def displacement(self, x, t):
        return self.warp(x, t) - x


def test_rendered_sphere_has_the_right_alpha_and_depth():
    cam = canonical_camera(64)
    r = Renderer(Sphere(), samples=256, bound=1.0)
    out = r.render([cam], shading=Shading(mode="albedo"))
    alpha, depth = out["alpha"][0].numpy(), out["depth"][0].numpy()
    # Analytic: pixels whose ray passes within RADIUS of the centre see the sphere.
    o = torch.as_tensor(cam.location, dtype=torch.float64)
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
    d = torch.as_tensor(cam.pixel_rays(np.stack([u, v], -1).reshape(-1, 2)))
    b = (d * -o).sum(-1)
    miss2 = (o * o).sum() - b * b
    inside = (miss2 < RADIUS**2).numpy().reshape(64, 64)
    true_depth = (b - torch.sqrt((RADIUS**2 - miss2).clamp(min=0))).numpy().reshape(64, 64)
    # Near-tangent rays cross the edge's density tail over a long path: leave out a band of
    # +-0.04 (about 3 pixels) around the outline, where alpha is legitimately partial.
    edge = np.abs(np.sqrt(miss2.numpy().reshape(64, 64)) - RADIUS) < 0.04
    assert np.all(alpha[inside & ~edge] > 0.99)
    assert np.all(alpha[~inside & ~edge] < 0.01)
    step = 2 * math.sqrt(3) / 256
    assert np.abs(depth - true_depth)[inside & ~edge].max() < 2 * step + 0.01


def test_lambertian_shading_and_normals_point_out():
    cam = canonical_camera(32)
    r = Renderer(Sphere(), samples=128)
    out = r.render([cam], shading=Shading(mode="lambertian", ambient=0.0))
    centre = out["normal"][0, 16, 16]
    toward_camera = torch.tensor([0.0, -1.0, 0.0])
    assert float(centre @ toward_camera) > 0.95
    assert float(out["rgb"][0, 16, 16, 0]) == pytest.approx(0.5, abs=0.05)  # lit head-on


@pytest.mark.parametrize("normals", ["world", "jacobian"])
@pytest.mark.parametrize("per_ray_times", [False, True])
def test_shading_normals_turn_with_a_rotating_object(per_ray_times, normals):
    """Normals are the gradient of the density at time t in world space: a cube turned by 30
    degrees at time t shows its front face's normal turned by 30 degrees (the canonical
    density's gradient at the warped point would show it unturned, as at rest)."""
    angle = math.radians(30.0)
    cam = canonical_camera(16)  # looks along +Y: the front face's normal is (0, -1, 0)
    r = Renderer(Box(), Rotate(angle), samples=128, normals=normals)
    shading = Shading(mode="lambertian", ambient=0.0)

    def centre_normal(t):
        if per_ray_times:
            o, d = camera_rays(cam)
            out = r.render_rays(o, d, torch.full((len(o),), t), shading=shading)
            n = out["normal"].reshape(16, 16, 3)[8, 8]
        else:
            n = r.render([cam], [t], shading=shading)["normal"][0, 8, 8]
        return torch.nn.functional.normalize(n, dim=0)

    at_rest = centre_normal(0.0)
    assert at_rest.tolist() == pytest.approx([0.0, -1.0, 0.0], abs=0.02)
    for t in (0.5, 1.0):
        turned = torch.tensor([math.sin(angle * t), -math.cos(angle * t), 0.0])
        got = centre_normal(t)
        assert math.degrees(math.acos(min(1.0, float(got @ turned)))) < 2.0, (t, got)
    # The cheaper "canonical" normals light the turned face as it lies at rest.
    r = Renderer(Box(), Rotate(angle), samples=128, normals="canonical")
    assert centre_normal(1.0).tolist() == pytest.approx([0.0, -1.0, 0.0], abs=0.02)


def test_textureless_normals_and_a_light_near_the_camera():
    cam = canonical_camera(32)
    r = Renderer(Sphere(), samples=128)

    def centre(**kw):
        return r.render([cam], shading=Shading(**kw))["rgb"][0, 16, 16]

    # A white material lit head-on, whatever the albedo (0.5 here).
    assert centre(mode="textureless", ambient=0.0).tolist() == pytest.approx([1.0] * 3, abs=0.05)
    # Normals as colours: the centre faces the camera, n = (0, -1, 0).
    assert centre(mode="normals").tolist() == pytest.approx([0.5, 0.0, 0.5], abs=0.05)
    # light_offset: the light towards normalize(camera + offset). Zero: lit head-on; an offset
    # that puts it behind the object leaves only the ambient term.
    o = torch.tensor(cam.location, dtype=torch.float32)
    assert centre(mode="lambertian", ambient=0.3, light_offset=torch.zeros(3)).tolist() == \
        pytest.approx([0.5] * 3, abs=0.05)
    assert centre(mode="lambertian", ambient=0.3, light_offset=-2 * o).tolist() == \
        pytest.approx([0.15] * 3, abs=0.02)
    with pytest.raises(ValueError, match="one of albedo"):
        Shading(mode="toon")


def test_motion_moves_the_render_and_the_occupancy_grid_skips_nothing_it_should_not():
    cam = canonical_camera(32)
    sphere, move = Sphere(), Translate((0.3, 0.0, 0.0))
    occ = OccupancyGrid(1.0, 32)
    r = Renderer(sphere, move, samples=96, occupancy=occ)
    frac = occ.update(r.density_at, times=[0.0, 1.0])
    assert 0.02 < frac < 0.5
    a0 = r.render([cam], [0.0], shading=Shading(mode="albedo"))["alpha"][0]
    a1 = r.render([cam], [1.0], shading=Shading(mode="albedo"))["alpha"][0]
    plain = Renderer(sphere, move, samples=96).render([cam], [1.0],
                                                      shading=Shading(mode="albedo"))["alpha"][0]
    torch.testing.assert_close(a1, plain)  # skipping empty space changes nothing
    # The silhouette's columns (alpha > 0.5: the sphere's density tail leaves faint alpha
    # around it, which pruning drops and an unpruned small render keeps).
    cols0 = (a0.max(0).values > 0.5).nonzero().float().mean()
    cols1 = (a1.max(0).values > 0.5).nonzero().float().mean()
    assert cols1 > cols0 + 3  # moved towards +X (right in the front view)


@pytest.mark.parametrize("cls", [MotionField, SpectralMotionField])
def test_frame_zero_renders_the_canonical_field_without_asking_the_motion_field(cls):
    """D(x, 0) = 0 exactly, so a render at time 0 (every static-stage render, every reference
    step) skips the motion field's lookups and backward pass, and changes no value."""
    torch.manual_seed(0)
    canonical = CanonicalField(1.0, levels=4, log2_table=10)
    motion = cls(1.0, levels=4, log2_table=10, scale=1.0)
    calls = []
    warp = motion.warp
    motion.warp = lambda x, t: calls.append(len(x)) or warp(x, t)
    r = Renderer(canonical, motion, samples=24, prune_above=0)  # the first pass runs too
    cam = [canonical_camera(8)] * 2
    shading = Shading(mode="lambertian", light_offset=torch.tensor([0.3, -0.2, 1.0]))

    def rendered(times):
        canonical.zero_grad()
        out = r.render(cam, times, shading=shading, background=(0.2, 0.4, 0.6))
        out["rgb"].square().sum().backward()
        return out["rgb"].detach(), canonical.encoder.embeddings.grad.clone()

    zero = rendered([0.0, None])
    assert calls == []
    canonical_only = rendered(None)
    torch.testing.assert_close(zero, canonical_only, rtol=0, atol=0)
    # Forced through the warp (a time 0 per ray, as a tensor): the same picture.
    forced = r.render_rays(*camera_rays(cam[0]), torch.zeros(64), shading=shading,
                           background=(0.2, 0.4, 0.6))
    assert calls  # a tensor of times goes through the motion field
    torch.testing.assert_close(forced["rgb"].reshape(8, 8, 3), zero[0][0], atol=1e-6, rtol=0)
    calls.clear()
    rendered([0.0, 0.5])
    assert calls  # a moving frame in the batch: the whole batch is warped


def test_known_rigid_motion_moves_extracted_vertices_exactly():
    v = (0.2, -0.1, 0.15)
    mesh, report = extract(Sphere(), Translate(v), frames=6, resolution=64, threshold=500.0,
                           target_faces=4000)
    assert report["faces"] <= 4000 and edges_are_manifold(mesh.faces)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - RADIUS).max() < 0.02  # the level set of the sphere
    diag = np.linalg.norm(np.ptp(mesh.vertices, axis=0))
    for k in range(6):
        expected = mesh.vertices + np.array(v, np.float32) * (k / 6)
        assert np.abs(mesh.frames[k] - expected).max() < 1e-4 * diag
    assert report["warp_residual_max"] < 1e-5


def test_newton_inverts_a_warp_that_is_not_a_contraction():
    """A quarter turn about Z: |dD/dx| = sqrt(2) > 1, where the plain fixed point diverges."""

    class Turn(nn.Module):
        def displacement(self, x, t):
            a = math.pi / 2 * float(t)
            rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0],
                                [0, 0, 1]], dtype=x.dtype)
            return x @ rot.T - x

    torch.manual_seed(0)
    c = torch.rand(500, 3) - 0.5
    x, residual = forward_warp(Turn(), c, 1.0)
    assert float(residual.max()) < 1e-5
    torch.testing.assert_close(x + Turn().displacement(x, 1.0), c, atol=1e-5, rtol=0)
    naive = c.clone()
    for _ in range(12):
        naive = c - Turn().displacement(naive, 1.0)
    assert float((naive + Turn().displacement(naive, 1.0) - c).norm(dim=-1).max()) > 1.0


def test_carrying_through_time_inverts_a_swirl_that_newton_alone_loses():
    """A swirl: each point turned about Z by an angle that grows with its distance from the
    axis (3 rad at distance 1 by t = 1). Invertible (it keeps that distance), but from the
    fixed-point start Newton finds no root for many points; seeded by the solution a little
    earlier it finds every one."""

    class Swirl(nn.Module):
        def displacement(self, x, t):
            a = -3.0 * float(t) * x[:, :2].norm(dim=-1)
            cos, sin = torch.cos(a), torch.sin(a)
            turned = torch.stack([cos * x[:, 0] - sin * x[:, 1],
                                  sin * x[:, 0] + cos * x[:, 1], x[:, 2]], 1)
            return turned - x

    torch.manual_seed(0)
    c = torch.rand(2000, 3) - 0.5
    _, alone = forward_warp(Swirl(), c, 1.0)
    assert int((alone > 1e-3).sum()) > 500
    half, _ = carry(Swirl(), c, 0.5)
    x, residual = carry(Swirl(), c, 1.0, half, 0.5)  # on from where t = 0.5 left them
    assert float(residual.max()) < 1e-5
    torch.testing.assert_close(x + Swirl().displacement(x, 1.0), c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [MotionField, SpectralMotionField,
                                  lambda **kw: SpectralMotionField(period=2.0, **kw)],
                         ids=["4d-grid", "spectral-loop", "spectral-free"])
def test_motion_is_zero_at_frame_zero_and_looping_closes(make):
    torch.manual_seed(0)
    m = make(log2_table=12, levels=4, base_resolution=4, finest_resolution=32)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    x = torch.rand(100, 3) * 2 - 1
    torch.testing.assert_close(m.displacement(x, 0.0), torch.zeros(100, 3), atol=1e-6, rtol=0)
    assert m.displacement(x, 0.3).abs().max() > 1e-4
    if getattr(m, "loops", False):
        torch.testing.assert_close(m.displacement(x, 1.0), torch.zeros(100, 3), atol=1e-5,
                                   rtol=0)
    elif isinstance(m, SpectralMotionField):  # a free motion ends where it likes
        assert m.displacement(x, 1.0).abs().max() > 1e-4


def test_spectral_motion_starts_still_and_learns_from_its_first_step():
    """The stage starts from the static model as it is (no random displacement as long as
    the motion to find), and a gradient moves it at once."""
    torch.manual_seed(0)
    m = SpectralMotionField(period=2.0, terms=3, log2_table=10, levels=3,
                            base_resolution=4, finest_resolution=16)
    x = torch.rand(64, 3) * 2 - 1
    assert m.displacement(x, 0.7).abs().max() == 0
    target = torch.tensor([0.0, 0.0, 0.05])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        (m.displacement(x, 0.7) - target).square().sum(-1).mean().backward()
        opt.step()
    got = m.displacement(x, 0.7).mean(0)
    assert float(got[2]) > 0.025 and float(got[:2].abs().max()) < 0.01


def test_spectral_motion_refuses_other_periods():
    with pytest.raises(ValueError, match="period"):
        SpectralMotionField(period=3.0)


def test_canonical_field_gradients_and_blob():
    f = CanonicalField(log2_table=12, levels=4, base_resolution=4, finest_resolution=32)
    x = torch.zeros(1, 3, requires_grad=True)
    dens, alb = f(x)
    assert float(dens.detach()) > 5.0  # the density blob at the centre
    assert alb.shape == (1, 3) and 0 < float(alb.detach().min()) < 1
    far = f(torch.full((1, 3), 0.95))[0]
    assert float(far.detach()) < float(dens.detach())
    (dens.sum() + alb.sum()).backward()
    assert f.encoder.embeddings.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["paper", "tiny"])
def test_static_stage_masks_the_fine_canonical_levels_for_its_first_part(preset):
    """Animate124 masks the top 8 of 16 grid levels for the first 3000 of 5000 static steps:
    meanwhile those levels contribute nothing; afterwards (and in later stages) they do."""
    from types import SimpleNamespace

    from animate4d.backend.pipeline import config as a124
    from animate4d.backend.pipeline.run import Static

    cfg = a124.PAPER if preset == "paper" else a124.tiny(a124.FAST, max_steps=10)
    levels, steps = cfg.field.grid_levels, cfg.static.steps
    torch.manual_seed(0)
    field = CanonicalField(1.0, levels=levels, log2_table=10, base_resolution=4,
                           finest_resolution=64)
    with torch.no_grad():
        field.encoder.embeddings.normal_(0, 0.5)
    stage = Static(SimpleNamespace(config=cfg))
    scene = SimpleNamespace(canonical=field)
    x = torch.rand(200, 3) * 2 - 1
    top = int(field.encoder.offsets[levels // 2])  # the first row of the top half's tables

    def fine_levels_change_the_density():
        before = field.density(x)
        with torch.no_grad():
            field.encoder.embeddings[top:] += 1.0
        after = field.density(x)
        with torch.no_grad():
            field.encoder.embeddings[top:] -= 1.0
        return not torch.equal(before, after)

    last_coarse = int(0.6 * steps) - 1
    if preset == "paper":
        assert last_coarse == 2999
    for step in (0, last_coarse):
        stage.before_step(scene, step)
        window = field.level_window.view(levels, -1)[:, 0]
        assert window.tolist() == [1.0] * (levels // 2) + [0.0] * (levels // 2)
        assert not fine_levels_change_the_density()
    for step in (last_coarse + 1, steps - 1):
        stage.before_step(scene, step)
        assert field.level_window.tolist() == [1.0] * field.encoder.output_dim
        assert fine_levels_change_the_density()
    assert CanonicalField(1.0, levels=levels, log2_table=10).level_window.min() == 1.0
    assert "level_window" not in field.state_dict()  # set by the stage, not saved


def test_one_batch_of_cameras_and_times_equals_separate_renders():
    cam = canonical_camera(16)
    r = Renderer(Sphere(), Translate((0.3, 0.0, 0.0)), samples=48)
    both = r.render([cam, cam], [0.0, 1.0], shading=Shading(mode="albedo"))["alpha"]
    for i, t in enumerate((0.0, 1.0)):
        alone = r.render([cam], [t], shading=Shading(mode="albedo"))["alpha"][0]
        torch.testing.assert_close(both[i], alone)
    assert not torch.allclose(both[0], both[1])


def test_occupancy_of_several_times_in_one_batch_is_the_union_of_each_time():
    """Several times are evaluated as one batch of points with a time each (in chunks that
    split times apart): the grid is the union of the single-time grids, and differs from
    any one of them when the object moves."""
    r = Renderer(Sphere(), Translate((0.6, 0.0, 0.0)), samples=32)
    times = [0.0, 0.5, 1.0]
    batched = OccupancyGrid(1.0, 16)
    batched.update(r.density_at, times=times, chunk=1000)  # 3 x 4096 points: 13 calls
    union = torch.zeros(16, 16, 16, dtype=torch.bool)
    for t in times:
        single = OccupancyGrid(1.0, 16)
        single.update(r.density_at, times=[t])
        assert not torch.equal(single.mask, batched.mask)
        union |= single.mask
    assert torch.equal(batched.mask, union)


def _slabs(left: float, right: float):
    """A density `left` where x < -0.5, `right` where x > 0.5, 0 between (cell-aligned on a
    16-cell grid of the box [-1, 1]^3)."""
    def density(x, t=None):
        return torch.where(x[:, 0] < -0.5, left, torch.where(x[:, 0] > 0.5, right, 0.0))
    return density


def test_decaying_occupancy_fades_an_emptied_region_gradually():
    """Animate124's grid keeps max(0.95 x kept, new) per cell: density that leaves a region
    takes many updates to leave the grid (a rebuilt grid drops it at once), while the
    update reports what the fields fill now."""
    grid = DecayingOccupancyGrid(1.0, 16, decay=0.95, threshold=10.0)
    left, right = (slice(0, 4), ...), (slice(12, 16), ...)
    grid.update(_slabs(100.0, 100.0))
    assert bool(grid.mask[left].all() and grid.mask[right].all())
    assert not bool(grid.mask[4:12].any())
    rebuilt = OccupancyGrid(1.0, 16)
    rebuilt.update(_slabs(100.0, 0.0), threshold=10.0)
    assert not bool(rebuilt.mask[13:].any())  # the old rule: gone in one update
    fills = grid.update(_slabs(100.0, 0.0))
    assert bool(grid.mask[right].all())  # kept at 95
    assert fills == pytest.approx(0.25)  # what the fields fill now: the left slab only
    assert torch.allclose(grid.density[right], torch.tensor(95.0))
    # The right slab's kept density falls by 0.95 per update; the mean stays above 25, so it
    # leaves once below 10: 100 x 0.95^k < 10 from k = 45 (the 45th update since it emptied).
    kept = [bool(grid.update(_slabs(100.0, 0.0)) and grid.mask[right].all())
            for _ in range(60)]
    assert kept == [True] * 43 + [False] * 17
    assert bool(grid.mask[left].all())
    # No density anywhere: the update says so at once, though the grid still remembers.
    assert grid.update(_slabs(0.0, 0.0)) == 0.0
    assert bool(grid.mask[left].all())


@pytest.mark.parametrize("left, right, occupied", [
    (2.0, 0.5, "left"),  # the mean, 0.625, is below 10: the fainter slab is skipped
    (50.0, 20.0, "both"),  # the mean, 17.5, is above 10: 10 holds, both slabs stay
])
def test_decaying_occupancy_threshold_is_the_smaller_of_the_mean_and_10(left, right,
                                                                         occupied):
    grid = DecayingOccupancyGrid(1.0, 16, decay=0.95, threshold=10.0)
    grid.update(_slabs(left, right))
    assert float(grid.density.mean()) == pytest.approx(0.25 * (left + right))
    assert bool(grid.mask[:4].all())
    assert bool(grid.mask[12:].all()) == (occupied == "both")
    assert bool(grid.mask[12:].any()) == (occupied == "both")
    assert not bool(grid.mask[4:12].any())


def test_decaying_occupancy_draws_a_point_in_every_cell_and_keeps_the_max_over_times():
    seen = []

    def density(x, t=None):
        seen.append(x.clone())
        return torch.ones(len(x))

    grid = DecayingOccupancyGrid(1.0, 8)
    grid.update(density)
    grid.update(density)
    cells = ((seen[0] + 1) / 2 * 8).floor()
    assert torch.equal(cells, ((seen[1] + 1) / 2 * 8).floor())  # the same cells, in order
    assert torch.equal(cells.long().unique(), torch.arange(8))
    assert not torch.equal(seen[0], seen[1])  # drawn anew within each cell
    centres = (cells + 0.5) / 8 * 2 - 1
    assert float((seen[0] - centres).abs().max()) < 1 / 8 + 1e-6
    assert float((seen[0] - centres).abs().max()) > 0.01
    # Several times (in one batch of points, chunks splitting times apart, or one at a
    # time): a cell is occupied where the density is at any of them.
    def moving(x, t):  # the left slab at time 0, the right one at time 1
        t = torch.as_tensor(t, dtype=x.dtype).expand(len(x))
        return torch.where(t < 0.5, _slabs(100.0, 0.0)(x), _slabs(0.0, 100.0)(x))

    for chunk in (1000, 2**18):
        both = DecayingOccupancyGrid(1.0, 16)
        both.update(moving, times=[0.0, 1.0], chunk=chunk)
        assert bool(both.mask[:4].all() and both.mask[12:].all())
        assert not bool(both.mask[4:12].any())


def test_dense_render_is_the_packed_render_without_occupancy_or_pruning():
    """`render_rays_dense` (every in-box sample in a (rays, samples) array, for CUDA-graph
    capture) gives the packed renderer's picture and gradients when that one skips nothing;
    rays that miss the box show the background."""
    torch.manual_seed(0)
    field = CanonicalField(1.0, levels=4, log2_table=10)
    r = Renderer(field, samples=32, prune=False)
    cam = canonical_camera(16)
    o, d = camera_rays(cam)
    o, d = torch.cat([o, o[:1] + 5.0]), torch.cat([d, d[:1]])  # the last ray misses the box
    bg = (0.2, 0.4, 0.6)
    results = []
    for render in (lambda: r.render_rays(o, d, shading=Shading(mode="albedo"), background=bg),
                   lambda: r.render_rays_dense(o, d, background=bg)):
        field.zero_grad()
        out = render()
        (out["rgb"].square().sum() + out["depth"].sum() + out["alpha"].sum()).backward()
        results.append((out, [p.grad.clone() for p in field.parameters()]))
    (packed, packed_grads), (dense, dense_grads) = results
    for key in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(dense[key], packed[key].detach(), atol=1e-5, rtol=1e-4)
    for a, b in zip(dense_grads, packed_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    assert dense["alpha"][:-1].max() > 0.5 and dense["alpha"][-1] == 0
    torch.testing.assert_close(dense["rgb"][-1].detach(), torch.tensor(bg))


def test_field_evaluation_in_point_chunks_changes_nothing():
    """The renderer bounds the points per field call; a chunk far smaller than the batch gives
    the same images and normals (lambertian exercises the normal path)."""
    cam = canonical_camera(16)
    whole = Renderer(Sphere(), Translate((0.3, 0.0, 0.0)), samples=32)
    small = Renderer(Sphere(), Translate((0.3, 0.0, 0.0)), samples=32, point_chunk=97)
    a = whole.render([cam, cam], [0.0, 1.0], shading=Shading(mode="lambertian"))
    b = small.render([cam, cam], [0.0, 1.0], shading=Shading(mode="lambertian"))
    for key in ("rgb", "alpha", "depth", "normal"):
        torch.testing.assert_close(a[key], b[key])
    assert a["alpha"].max() > 0.9


def test_points_per_call_follow_the_grid_path():
    """The default point chunk is large only where every field's grid runs the fused kernels
    (no per-point transients); the PyTorch path, or a field without a grid, keeps the small
    one, and a chunk given explicitly wins."""
    canonical, motion = CanonicalField(levels=2, log2_table=8), MotionField(levels=2,
                                                                           log2_table=8)
    r = Renderer(canonical, motion)
    assert r.points_per_call("cpu") == Renderer.POINT_CHUNK
    assert Renderer.FUSED_POINT_CHUNK > Renderer.POINT_CHUNK
    fused = hashgrid_triton.triton is not None  # the kernels need Triton, on CUDA
    assert r.points_per_call("cuda") == (Renderer.FUSED_POINT_CHUNK if fused
                                         else Renderer.POINT_CHUNK)
    motion.encoder.backend = "torch"  # one field on the PyTorch path: small chunks
    assert r.points_per_call("cuda") == Renderer.POINT_CHUNK
    motion.encoder.backend = "auto"
    assert Renderer(canonical, Translate((0.1, 0.0, 0.0))).points_per_call("cuda") \
        == Renderer.POINT_CHUNK
    assert Renderer(canonical, motion, point_chunk=97).points_per_call("cuda") == 97


class Counting(nn.Module):
    """Wraps a field and counts the points it is asked about with gradients on."""

    def __init__(self, field):
        super().__init__()
        self.field, self.points = field, 0

    def forward(self, x, group=1):
        self.points += len(x) if torch.is_grad_enabled() else 0
        return self.field(x)

    def density(self, x):
        return self.forward(x)[0]


def test_pruning_hidden_and_empty_samples_keeps_the_picture_and_its_gradients():
    """The no-grad first pass drops samples behind the opaque surface or in empty space: the
    render and the gradients match the full evaluation, with far fewer points reaching the
    gradient pass."""
    torch.manual_seed(0)
    field = CanonicalField(log2_table=12, levels=4, base_resolution=4, finest_resolution=32,
                           blob_density=30.0, blob_radius=0.25)
    with torch.no_grad():
        field.net[-1].bias[0] = -12.0  # empty outside the blob's core
    cam = canonical_camera(24)
    outs, grads, points = [], [], []
    for prune in (False, True):
        counted = Counting(field)
        occ = OccupancyGrid(1.0, 32)
        r = Renderer(counted, samples=64, occupancy=occ, prune=prune, prune_above=0)
        occ.update(r.density_at, threshold=0.01 / r.step_length)
        field.zero_grad()
        counted.points = 0
        out = r.render([cam], shading=Shading(mode="lambertian"))
        (out["rgb"] ** 2).sum().backward()
        outs.append(out)
        grads.append(field.encoder.embeddings.grad.clone())
        points.append(counted.points)
    full, pruned = outs
    assert float(full["alpha"].detach().max()) > 0.99  # the rays do reach an opaque core
    for key in ("rgb", "alpha", "normal"):
        torch.testing.assert_close(pruned[key], full[key], atol=2e-3, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), 0)
    assert float(cosine) > 0.999
    # Autograd keeps what the gradient pass computes: far fewer points reach it.
    assert points[1] < 0.7 * points[0]
    # A batch this small (fewer points to shade than `prune_above`) skips the first pass:
    # every occupied sample is shaded, with gradients, as without pruning.
    small = Renderer(Counting(field), samples=64, occupancy=occ,
                     prune_above=Renderer.NORMAL_STENCILS["canonical"] * 24 * 24 * 64)
    small.render([cam], shading=Shading(mode="lambertian"))
    seen = small.last_samples
    assert seen["occupied"] > 0 and seen["shaded"] == seen["occupied"]


def test_first_pass_stops_each_ray_behind_the_surface_and_keeps_the_same_samples():
    """The first pass takes a ray's occupied samples in runs and stops at the rays that
    are already opaque: behind a solid sphere's surface nothing more is evaluated, and what
    it keeps is exactly what one exhaustive run keeps."""
    cam = canonical_camera(24)

    class NoGradCount(Counting):
        def forward(self, x, group=1):
            self.points += 0 if torch.is_grad_enabled() else len(x)
            return self.field(x)

    kept, evaluated = [], []
    for runs in ((), (4, 8), Renderer.FIRST_PASS_RUNS):
        counted = NoGradCount(Sphere(density=1000.0))
        occ = OccupancyGrid(1.0, 32)
        r = Renderer(counted, samples=64, occupancy=occ, prune_above=0, first_pass_runs=runs)
        occ.update(r.density_at, threshold=0.01 / r.step_length)
        counted.points = 0
        r.render([cam], shading=Shading(mode="albedo"))  # grad mode: the first pass runs
        kept.append(r.last_samples["shaded"])
        evaluated.append(counted.points)
    occupied = r.last_samples["occupied"]
    assert evaluated[0] == occupied  # one run: every occupied sample
    # The sphere fills a third of the box's depth: most of a hit ray's samples are inside.
    assert evaluated[1] < 0.6 * occupied and evaluated[2] < 0.6 * occupied
    assert kept[0] == kept[1] == kept[2] and 0 < kept[1] < 0.5 * occupied


def test_packed_distortion_equals_the_direct_double_sum():
    from animate4d.backend.field.render import _packed_distortion

    torch.manual_seed(0)
    counts = [3, 0, 1, 7, 5]  # samples per ray, one ray with none
    ray = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    w = torch.rand(len(ray), dtype=torch.float64, requires_grad=True)
    m = torch.cat([torch.sort(torch.rand(c, dtype=torch.float64)).values for c in counts])
    got = _packed_distortion(w, m, ray, 0.1, len(counts))
    want = []
    for r in range(len(counts)):
        sel = ray == r
        wr, mr = w[sel], m[sel]
        pairs = (wr[:, None] * wr[None, :] * (mr[:, None] - mr[None, :]).abs()).sum()
        want.append(pairs + (wr**2).sum() * 0.1 / 3)
    want = torch.stack(want)
    torch.testing.assert_close(got, want)
    g1, = torch.autograd.grad(got.sum(), w)
    g2, = torch.autograd.grad(want.sum(), w)
    torch.testing.assert_close(g1, g2)


def test_distortion_is_smaller_for_a_sharper_surface():
    """The same opaque sphere, its surface soft or sharp: the render's distortion loss tells
    them apart (what the fit's w_distortion pushes towards)."""
    cam = canonical_camera(16)
    u, v = np.meshgrid(np.arange(16) + 0.5, np.arange(16) + 0.5)
    d = torch.as_tensor(cam.pixel_rays(np.stack([u, v], -1).reshape(-1, 2)), dtype=torch.float32)
    o = torch.as_tensor(cam.location, dtype=torch.float32).expand_as(d)
    losses = []
    for edge in (0.05, 0.003):  # soft over ~3 steps of 0.054, or sharp
        r = Renderer(Sphere(density=200.0, edge=edge), samples=64)
        out = r.render_rays(o, d, distortion=True)
        hit = out["alpha"] > 0.9
        assert int(hit.sum()) > 20
        losses.append(float(out["distortion"][hit].mean()))
    assert losses[1] < 0.5 * losses[0], losses


def _capsule_distance(x, a, b):
    a, b = torch.tensor(a), torch.tensor(b)
    ab = b - a
    h = (((x - a) @ ab) / (ab @ ab)).clamp(0, 1)
    return (x - a - h[:, None] * ab).norm(dim=-1)


class PocketedBall(nn.Module):
    """A solid ball (radius 0.5) with a hidden pocket (radius 0.2) at its centre, reached by
    an L-shaped tunnel (radius 0.09): up to z = 0.38, then out along +X. No straight line
    from outside reaches the pocket, so it must come out solid."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x, group=1):
        hollow = torch.minimum(
            x.norm(dim=-1) - 0.2,
            torch.minimum(_capsule_distance(x, (0, 0, 0), (0, 0, 0.38)) - 0.09,
                          _capsule_distance(x, (0, 0, 0.38), (0.7, 0, 0.38)) - 0.09))
        solid = torch.sigmoid((0.5 - x.norm(dim=-1)) / 0.004) * torch.sigmoid(hollow / 0.004)
        return 1000.0 * solid, torch.full((len(x), 3), 0.5)

    def density(self, x):
        return self.forward(x)[0]


def test_pockets_no_view_can_see_come_out_solid():
    kw = dict(frames=1, resolution=64, threshold=500.0, target_faces=20_000)
    plain, _ = extract(PocketedBall(), carve_views=0, **kw)
    carved, report = extract(PocketedBall(), **kw)
    # Without carving, the pocket's wall (radius 0.2) is a surface inside the ball.
    assert np.linalg.norm(plain.vertices, axis=1).min() < 0.25
    # With it, the pocket and the tunnel's hidden leg are solid; the visible leg of the tunnel
    # (its far end at radius ~0.38 is seen from +X) stays open.
    r = np.linalg.norm(carved.vertices, axis=1)
    assert r.min() > 0.28 and report["unseen_voxels_filled"] > 0
    assert np.abs(r - RADIUS).max() > 0.05  # the tunnel's mouth is still there
    assert edges_are_manifold(carved.faces)


def test_vertices_the_warp_cannot_invert_take_their_neighbours_motion():
    """On a grid mesh moved by a smooth (affine) motion, vertices given garbage and marked
    unconverged get back the motion their neighbours agree on."""
    n = 12
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    verts = np.stack([u.ravel(), v.ravel(), np.zeros(n * n)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[:-1, 1:].ravel(), \
        idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    truth = verts @ np.array([[1.1, 0.1, 0.0], [0.0, 0.9, 0.2], [0.0, 0.0, 1.0]]) + 0.05
    bad = np.zeros(n * n, bool)
    bad[idx[4:7, 4:7].ravel()] = True  # a patch of 9: the middle one has no good neighbour
    moved = np.where(bad[:, None], 5.0, truth)
    out = fill_from_neighbours(verts, faces, moved, bad)
    assert np.abs(out[~bad] - truth[~bad]).max() == 0
    assert np.abs(out[bad] - truth[bad]).max() < 0.03  # was 5 away


def test_camera_batch_projection_matches_the_protocol_camera_and_inverts_rays():
    from animate4d.backend.field.render import CameraBatch
    from animate4d.protocol import Camera

    cams = [Camera.look_at((1.0, -3.0, 0.5), fov_deg=50, resolution=(64, 48)),
            Camera.look_at((0.0, 0.0, 3.0), up=(0.0, 1.0, 0.0), resolution=(32, 32))]
    batch = CameraBatch(cams)
    x = torch.rand(50, 3) - 0.5
    for i, cam in enumerate(cams):
        uv, depth = cam.project(x.double().numpy())
        for index in (i, torch.full((50,), i)):
            uv2, depth2 = batch.project(index, x)
            np.testing.assert_allclose(uv2.numpy(), uv, atol=1e-4)
            np.testing.assert_allclose(depth2.numpy(), depth, atol=1e-5)
        o, d = batch.rays(torch.full((50,), i), torch.as_tensor(uv, dtype=torch.float32))
        torch.testing.assert_close(o + d * (x - o).norm(dim=-1, keepdim=True), x, atol=1e-4,
                                   rtol=0)
