"""Oracle priors: the production guidance modules, on priors that know a ground truth, pull
towards that truth, and only from the right camera, pose and time order."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from animate4d.backend.field.render import Shading
from animate4d.backend.mesh import raster
from animate4d.backend.meshmode.canonical import ObjectFrame
from animate4d.backend.oracle import bench
from animate4d.backend.oracle.priors import RenderLog, oracle_priors
from animate4d.backend.oracle.truth import GroundTruth
from animate4d.backend.pipeline import stages
from animate4d.backend.pipeline.cameras import orbit_camera, sample_clip
from animate4d.backend.pipeline.config import override
from animate4d.backend.preprocess.framing import canonical_camera
from animate4d.backend.priors import guidance
from animate4d.protocol import AnimatedMesh

SIZE = 24


@pytest.fixture(scope="module")
def lift():
    return GroundTruth.load("lift")


def _priors(truth, *, scale=1.0, looping=False):
    """Oracle priors and guidance at CFG `scale` (1: the SDS gradient is exactly the pull
    towards the target, no noise term)."""
    config = override(bench.SIZES["small"], {})
    log = RenderLog()
    priors = oracle_priors(truth, log, config, "cpu", looping=looping, factor=2)
    return log, priors, config


def _sds_gradient_norm(loss_fn, rgb):
    rgb = rgb.clone().requires_grad_(True)
    loss_fn(rgb).backward()
    return float(rgb.grad.norm())


def _log_render(log, truth, cameras, times, shading=None, background=(1.0, 1.0, 1.0)):
    """Put the truth's own renders in the log, as the scene would put its renders."""
    shading = shading or Shading(mode="albedo")
    rgb = torch.stack([truth.render(c, t, shading, background).rgb
                       for c, t in zip(cameras, times, strict=True)])
    log(cameras, times, shading, background, rgb)
    return rgb


def test_truth_is_normalised_into_the_box_and_seen_by_the_reference_camera(lift):
    assert np.linalg.norm(lift.frames, axis=-1).max() == pytest.approx(0.6, rel=1e-6)
    assert not lift.loops
    ref = lift.reference(128)
    want = raster.silhouette(lift.vertices(0.0), lift.faces, canonical_camera(128))
    # cv2's polygon fill takes the edge pixels a pixel-centre test leaves out: a few percent
    # of a thin capsule.
    assert raster.iou(ref["mask"].numpy() > 0.5, want) > 0.9
    # Inverse depth: larger is nearer, zero off the object.
    assert float(ref["depth"][ref["mask"] == 0].abs().max()) == 0.0
    assert float(ref["depth"].max()) > 0


def test_one_way_truth_ends_bent_and_looping_truth_comes_back(lift):
    assert np.abs(lift.vertices(1.0) - lift.vertices(0.0)).max() > 0.1
    bend = GroundTruth.load("bend")
    assert np.abs(bend.vertices(1.0) - bend.vertices(0.0)).max() < 1e-9


def test_truth_shading_follows_the_renderer_modes():
    ball = GroundTruth.load("ball")
    cam = orbit_camera(90.0, 0.0, SIZE)
    alb = ball.render(cam, 0.0, Shading(mode="albedo"))
    nor = ball.render(cam, 0.0, Shading(mode="normals"))
    lit = ball.render(cam, 0.0, Shading(mode="textureless", ambient=1.0))
    centre = SIZE // 2
    # The point facing the camera has its normal towards it (-Y): (n + 1) / 2 ~ (0.5, 0, 0.5).
    n = nor.rgb[:, centre, centre]
    assert float(n[1]) < 0.3 and abs(float(n[0]) - 0.5) < 0.2
    # Ambient 1: a white material is white wherever the object is.
    on = alb.alpha > 0.5
    assert torch.allclose(lit.rgb[:, on], torch.ones(1), atol=1e-5)


def test_render_log_finds_each_image_among_the_latest_renders(lift):
    log = RenderLog()
    cams = [orbit_camera(80.0, a, SIZE) for a in (0.0, 60.0, 120.0)]
    rgb = _log_render(log, lift, cams, [0.0, 0.5, 1.0])
    images = torch.nn.functional.interpolate(rgb[[2, 0]], (48, 48), mode="bilinear",
                                             align_corners=False) * 2 - 1
    views = log.find(images)
    assert [v.time for v in views] == [1.0, 0.0]
    assert log.find(torch.zeros(1, 3, 48, 48)) is None


def test_scene_tells_its_watchers_each_render():
    config = override(bench.SIZES["small"], {})
    scene = stages.Scene(config, "cpu")
    seen = []
    scene.watchers.append(lambda *a: seen.append(a))
    cams = [orbit_camera(90.0, 0.0, 8)] * 2
    scene.render(cams, [0.0, 0.5])
    assert len(seen) == 1 and seen[0][1] == [0.0, 0.5] and seen[0][4].shape == (2, 3, 8, 8)


def test_image_oracle_pulls_to_the_truth_from_the_same_camera_and_time(lift):
    log, priors, config = _priors(lift)
    sd = guidance.StableDiffusionGuidance(priors["sd"], replace(config.guidance.sd, scale=1.0))
    t = torch.tensor([300])
    cam = orbit_camera(70.0, 40.0, SIZE)
    rgb = _log_render(log, lift, [cam], [0.6])
    at_truth = _sds_gradient_norm(lambda x: sd(x, ["a thing"], t=t).loss, rgb)
    # The same picture claimed to be another time: the target moves, the gradient appears.
    log([cam], [0.0], Shading(mode="albedo"), (1.0, 1.0, 1.0), rgb)
    elsewhen = _sds_gradient_norm(lambda x: sd(x, ["a thing"], t=t).loss, rgb)
    assert at_truth < 1e-4 and elsewhen > 1e-2


def test_zero123_oracle_reads_the_pose_the_pipeline_passes(lift):
    log, priors, config = _priors(lift)
    z = guidance.Zero123Guidance(priors["zero123"], replace(config.guidance.zero123, scale=1.0))
    z.set_reference(lift.reference(SIZE)["rgb"][None])
    t = torch.tensor([300])
    # The truth at time 0 from polar 60, azimuth 70: Zero123 told d_polar -30, d_azimuth 70.
    rgb = _log_render(log, lift, [orbit_camera(60.0, 70.0, SIZE)], [0.0])
    right = _sds_gradient_norm(lambda x: z(x, -30.0, 70.0, 0.0, t=t).loss, rgb)
    flipped = _sds_gradient_norm(lambda x: z(x, -30.0, -70.0, 0.0, t=t).loss, rgb)
    upside = _sds_gradient_norm(lambda x: z(x, 30.0, 70.0, 0.0, t=t).loss, rgb)
    assert right < 1e-4
    assert flipped > 1e-2 and upside > 1e-2


def test_video_oracle_pulls_a_backwards_clip_towards_a_forward_one(lift):
    log, priors, config = _priors(lift)
    video = guidance.VideoGuidance(priors["video"], replace(config.guidance.video, scale=1.0))
    t = torch.tensor([50])  # little noise: the posterior is the nearest forward clip
    d = config.dynamic
    times = [k / d.time_steps for k in (0, 2, 4, 6)]  # a forward clip of the sampler's
    cams = [orbit_camera(80.0, 30.0 + 10 * k, SIZE) for k in range(4)]
    forward = _log_render(log, lift, cams, times)
    at_truth = _sds_gradient_norm(lambda x: video(x, "it lifts", t=t).loss, forward)
    backwards = _log_render(log, lift, cams, times[::-1])
    reversed_pull = _sds_gradient_norm(lambda x: video(x, "it lifts", t=t).loss, backwards)
    assert at_truth < 1e-3 * reversed_pull
    assert reversed_pull > 1e-2


def test_video_oracle_leaves_the_truth_alone_at_any_noise(lift):
    """The truth's own clip is the target at every timestep, not only at little noise: the
    posterior mean over the forward clips with the times unknown ("noisy") is their blurred
    average at high noise, which pulls even the truth towards a smear."""
    log, priors, config = _priors(lift)
    video = guidance.VideoGuidance(priors["video"], replace(config.guidance.video, scale=1.0))
    d = config.dynamic
    times = [k / d.time_steps for k in (2, 4, 6, 8)]
    cams = [orbit_camera(80.0, 30.0 + 10 * k, SIZE) for k in range(4)]
    forward = _log_render(log, lift, cams, times)
    backwards = _log_render(log, lift, cams, times[::-1])
    for t in (50, 500, 950):
        t = torch.tensor([t])
        pulled = _sds_gradient_norm(lambda x, t=t: video(x, "it lifts", t=t).loss, backwards)
        _log_render(log, lift, cams, times)
        at_truth = _sds_gradient_norm(lambda x, t=t: video(x, "it lifts", t=t).loss, forward)
        assert at_truth < 1e-3 * pulled and pulled > 1e-3
    noisy = oracle_priors(lift, log, config, "cpu", factor=2, video_match="noisy")
    blurred = guidance.VideoGuidance(noisy["video"], replace(config.guidance.video, scale=1.0))
    assert _sds_gradient_norm(lambda x: blurred(x, "it lifts", t=torch.tensor([950])).loss,
                              forward) > 1e-3


def test_video_oracle_plays_a_looping_clip_on_over_the_seam():
    """A looping clip that runs over the seam (0.75, 0.875, 0, 0.125) is a forward clip:
    the target follows the frames' own order; the same times reversed are pulled."""
    ball = GroundTruth.load("ball")
    log, priors, config = _priors(ball, looping=True)
    video = guidance.VideoGuidance(priors["video"], replace(config.guidance.video, scale=1.0))
    times = [0.75, 0.875, 0.0, 0.125]
    cams = [orbit_camera(70.0, 20.0 * k, SIZE) for k in range(4)]
    t = torch.tensor([500])
    backwards = _log_render(log, ball, cams[::-1], times[::-1])
    pulled = _sds_gradient_norm(lambda x: video(x, "it bounces", t=t).loss, backwards)
    forward = _log_render(log, ball, cams, times)
    at_truth = _sds_gradient_norm(lambda x: video(x, "it bounces", t=t).loss, forward)
    assert at_truth < 1e-3 * pulled and pulled > 1e-3


def test_reversed_mirror_plays_backwards_and_forward_mirror_does_not():
    seen = {"forward": set(), "reverse": set()}
    for mode in seen:
        rng = random.Random(0)
        for _ in range(200):
            idx = sample_clip(rng, 4, 16, (4, 16), 0.2, 0.5, mirror=mode)
            seen[mode].add(bool(np.all(np.diff(idx) >= 0)))
    assert seen["forward"] == {True}
    assert seen["reverse"] == {True, False}


def test_oracle_job_runs_every_stage_and_scores_against_the_truth():
    lines = []
    result = bench.run("ball", changes={
        "static.steps": 2, "dynamic.steps": 2, "refine.steps": 2, "reference.first": 1,
        "static.proxy_points": 2**12, "export.resolution": 32}, log=lines.append)
    finished = [line.split()[0] for line in lines if line.split()[1] in ("1/1", "2/2")]
    assert finished == ["preprocess", "proxy", "static", "dynamic", "refine", "export"]
    assert len(result["chamfer_per_frame"]) == result["frames"] == 8
    assert np.isfinite(result["psnr_heldout"]) and result["seconds"] > 0
    # Two steps a stage leave the proxy's shape: near the ball, not on it (the converged
    # figures are docs/BENCHMARKS.md's, minutes each).
    assert 0.005 < result["chamfer_mean"] <= result["chamfer_max"] < 0.25, result


def test_mesh_mode_truth_is_its_own_rest_pose_in_the_object_frame():
    truth = bench.in_mesh_frame(GroundTruth.load("bend"))
    source = bench.rest_pose(truth)
    frame = ObjectFrame.of(source.world_vertices(), source.faces)
    # The job's object frame is the truth's: what the oracles render is what the scene holds.
    assert np.abs(frame.to_object(truth.frames) - truth.frames).max() < 1e-12
    assert len(source.vertices) == truth.frames.shape[1]
    assert np.array_equal(source.faces, truth.faces)
    # Later frames move away from the rest pose: a score of the input alone is not zero.
    assert np.abs(truth.vertices(0.25) - truth.vertices(0.0)).max() > 0.05


def test_vertex_score_is_the_distance_to_the_same_vertex_over_the_diagonal():
    truth = GroundTruth.load("ball")
    frames = truth.at_frames(4).astype(np.float32)
    frames[2, 7] += [0.1 * truth.diagonal, 0.0, 0.0]
    mesh = AnimatedMesh(vertices=frames[0], faces=truth.faces.astype(np.uint32), frames=frames,
                        fps=24.0)
    s = bench.score_vertices(mesh, truth)
    assert s["vertex_error_max"] == pytest.approx(0.1, rel=1e-4)
    assert s["vertex_error_max_per_frame"][2] == pytest.approx(0.1, rel=1e-4)
    assert max(s["vertex_error_max_per_frame"][k] for k in (0, 1, 3)) < 1e-6
    assert s["vertex_error_per_frame"][2] == pytest.approx(0.1 / len(frames[0]), rel=1e-3)
    assert s["still_error_mean"] > 0.01  # the ball moves
    # The surface: the truth's own at the untouched frames (sampling noise only).
    assert max(s["chamfer_per_frame"][k] for k in (0, 1, 3)) < 0.005


def test_bench_oracle_mesh_runs_mesh_mode_and_scores_per_vertex(monkeypatch, tmp_path, capsys):
    import json

    from animate4d.backend.cli import main

    real = bench.run

    def small(source, **kw):  # the CLI's run at a size a test can afford
        return real(source, frames=2, changes={
            "mesh.fit_steps": 5, "mesh.occupancy_resolution": 32, "mesh.arap_vertices": 64,
            "dynamic.steps": 1}, **kw)

    monkeypatch.setattr(bench, "run", small)
    out = tmp_path / "r.json"
    # lift: a one-way motion, so frame 1 (half-way) is away from the rest pose
    assert main(["bench", "oracle", "lift", "--mesh", "--device", "cpu", "--json",
                 str(out)]) == 0
    assert "vertex error mean" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["mode"] == "mesh" and result["frames"] == 2 and not result["loops"]
    assert result["vertices"] == GroundTruth.load("lift").frames.shape[1]
    per_frame = result["vertex_error_per_frame"]
    assert len(per_frame) == len(result["vertex_error_max_per_frame"]) == 2
    # Frame 0 is the input, which is the truth's frame 0.
    assert result["vertex_error_max_per_frame"][0] < 1e-6
    assert all(np.isfinite(per_frame)) and result["vertex_error_max"] > 0
    for key in ("vertex_error_mean", "still_error_mean", "seconds", "peak_bytes"):
        assert np.isfinite(result[key]) and result[key] > 0
    assert 0 < result["fit"]["iou"] <= 1
    # The look the video oracle compared, from the views no step was drawn at.
    assert len(result["psnr_heldout_per_frame"]) == 2
    assert np.isfinite(result["psnr_heldout"])
    # How well the motion was inverted to carry the vertices (the export's own record).
    assert result["export"]["warp_residual_max"] >= 0
    assert 0 <= result["export"]["warp_unconverged_max"] <= result["vertices"]
