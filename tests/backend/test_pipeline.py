"""The Animate124 pipeline end to end on tiny models (CPU, a few steps per stage)."""

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

from animate4d.backend.jobs.checkpoints import MemoryCheckpoints  # noqa: E402
from animate4d.backend.pipeline import config as a124  # noqa: E402
from animate4d.backend.pipeline.cameras import sample_clip  # noqa: E402
from animate4d.backend.pipeline.reference_graph import ReferenceGraph  # noqa: E402
from animate4d.backend.pipeline.run import run_animate124  # noqa: E402
from animate4d.backend.pipeline.textual_inversion import (  # noqa: E402
    LossScale,
    TokenTrainer,
    cache_key,
    learn_token,
)
from animate4d.backend.priors import loading  # noqa: E402
from animate4d.protocol.errors import (  # noqa: E402
    CancelledError,
    MissingModelError,
    PreemptedError,
)
from animate4d.protocol.options import JobOptions  # noqa: E402

EXAMPLE_IMAGE = str(Path(__file__).parents[2] / "backend" / "examples" / "panda.png")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMATE4D_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_whole_pipeline_runs_and_a_job_killed_in_the_dynamic_stage_resumes(tiny_models):
    options = JobOptions(prompt="a panda is dancing", preset="fast", frames=4)
    preset = a124.tiny(max_steps=4)
    store = MemoryCheckpoints()
    seen = []

    def killed(stage, step, total):
        seen.append((stage, step))
        if stage == "dynamic" and step == 3:
            raise CancelledError("worker lost")

    with pytest.raises(CancelledError):
        run_animate124(EXAMPLE_IMAGE, options, killed, store, models=tiny_models,
                       preset=preset, device="cpu")
    assert {"a124/prep", "a124/token", "a124/fields"} <= set(store)
    assert ("static", 3) in seen

    resumed = []
    mesh = run_animate124(EXAMPLE_IMAGE, options, lambda s, i, n: resumed.append((s, i)),
                          store, models=tiny_models, preset=preset, device="cpu")
    stages_run = [s for s, _ in resumed]
    assert "static" not in stages_run and "textual_inversion" not in stages_run
    assert "preprocess" not in stages_run
    first_dynamic = min(i for s, i in resumed if s == "dynamic")
    assert first_dynamic == 2  # the checkpoint every 2 steps, not step 0
    assert "refine" in stages_run and "export" in stages_run
    assert mesh.frames.dtype.kind == "f" and bool((abs(mesh.frames) < 10).all())
    assert mesh.frames.shape[0] == 4 and len(mesh.faces) > 0
    assert mesh.metadata["preset"] == "fast"


def test_a_worker_stopping_mid_stage_checkpoints_the_step_where_it_stopped(tiny_models):
    """SIGTERM on a worker: the field stage saves where it stands (step 3), not only at its
    every-2-steps checkpoint, so the job resumes elsewhere from there."""
    from animate4d.backend.pipeline.run import _torch_load

    options = JobOptions(prompt="a panda is dancing", preset="fast", frames=4)
    store = MemoryCheckpoints()

    def stopping(stage, step, total):
        if stage == "static" and step == 3:
            raise PreemptedError("the worker is stopping")

    with pytest.raises(PreemptedError):
        run_animate124(EXAMPLE_IMAGE, options, stopping, store, models=tiny_models,
                       preset=a124.tiny(max_steps=4), device="cpu")
    saved = _torch_load(store["a124/fields"])
    assert (saved["stage"], saved["step"]) == ("static", 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loop", [False, True])  # a looping motion: a 3D grid, Fourier terms
def test_whole_pipeline_on_the_gpu_replays_its_reference_graphs(tiny_models, monkeypatch, loop):
    """The job as a worker runs it on a GPU (fp16 priors, their graphs and compiled parts,
    the reference steps as CUDA graphs), not only the bench's steps: a valid mesh, and each
    field stage captured its reference graph and replayed it."""
    from animate4d.backend.pipeline import run

    made = []

    class Recorded(run.ReferenceGraph):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(run, "ReferenceGraph", Recorded)
    preset = a124.tiny(max_steps=24)  # a reference step every 4: 6 per stage, 3 warm-ups
    options = JobOptions(prompt="a panda is dancing", preset="fast", frames=4, loop=loop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = run_animate124(EXAMPLE_IMAGE, options, models=tiny_models, preset=preset,
                              device="cuda")
    failed = [str(w.message) for w in caught if "reference step failed" in str(w.message)]
    assert not failed, (failed, [g.captured for g in made])
    assert len(made) == 3  # static, dynamic, refine
    assert all(g.captured and g.calls > ReferenceGraph.WARMUP + 1 for g in made)
    assert mesh.frames.shape[0] == 4 and len(mesh.faces) > 0
    assert bool(np.isfinite(mesh.frames).all())
    assert mesh.metadata["loop"] is loop


def test_missing_models_are_named_before_any_work(tmp_path):
    with pytest.raises(MissingModelError) as err:
        run_animate124(EXAMPLE_IMAGE, JobOptions(prompt="x", preset="paper"),
                       models=tmp_path / "none", device="cpu")
    assert "animate4d models fetch" in str(err.value) and "zero123" in str(err.value)


def test_textual_inversion_learns_and_is_cached_by_image(tiny_models):
    sd = loading.load("sd", tiny_models)
    image = torch.rand(3, 24, 24)
    vec, cached = learn_token(sd, image, steps=3, size=16, batch=2, lr=1e-1)
    assert not cached
    start = sd.text_encoder.get_input_embeddings().weight[
        sd.tokenizer.convert_tokens_to_ids("object")]
    assert not torch.allclose(vec, start)  # it learned something
    again, cached = learn_token(loading.load("sd", tiny_models), image, steps=3, size=16,
                                batch=2, lr=1e-1)
    assert cached and torch.equal(again, vec)
    _, cached = learn_token(loading.load("sd", tiny_models), image.flip(-1), steps=3, size=16,
                            batch=2, lr=1e-1)
    assert not cached


def test_two_workers_keeping_the_same_token_at_once_both_succeed(monkeypatch):
    """Workers may share the cache folder and learn the same token together: one's write
    must not take the other's half-written file from under it."""
    from animate4d.backend.pipeline import textual_inversion as ti

    real_save, vectors = torch.save, [torch.ones(4), torch.full((4,), 2.0)]

    def save_then_let_the_other_worker_write(obj, path):
        real_save(obj, path)
        if torch.equal(obj, vectors[0]):  # the other worker stores between our save and move
            ti.store_token("k" * 32, vectors[1])

    monkeypatch.setattr(ti.torch, "save", save_then_let_the_other_worker_write)
    ti.store_token("k" * 32, vectors[0])
    monkeypatch.setattr(ti.torch, "save", real_save)
    assert torch.equal(ti.cached_token("k" * 32), vectors[0])  # the later move wins, whole
    assert [p.name for p in ti.cache_dir().iterdir()] == ["k" * 32 + ".pt"]


def test_textual_inversion_encodes_its_bank_of_views_once(tiny_models):
    """The VAE sees the bank of augmented views once, not a fresh batch every step."""
    sd = loading.load("sd", tiny_models)
    encode, encoded = sd.vae.encode, []
    sd.vae.encode = lambda x: encoded.append(len(x)) or encode(x)
    image = torch.rand(3, 24, 24)
    vec, _ = learn_token(sd, image, steps=6, size=16, batch=2, lr=1e-1, views=5,
                         use_cache=False)
    assert encoded == [2, 2, 1]  # 5 views in batches of 2, then 6 steps without the VAE
    assert torch.isfinite(vec).all()
    encoded.clear()  # a bank larger than the draws is cut to them: 3 steps x batch 2
    learn_token(sd, image, steps=3, size=16, batch=2, lr=1e-1, views=512, use_cache=False)
    assert sum(encoded) == 6


def test_textual_inversion_updates_an_fp32_master_copy_that_the_models_row_follows(
        tiny_models):
    """The token's gradient arrives (finite, non-zero) through the scaled loss; its loss on a
    fixed batch falls; the row in the model is the master copy rounded to the model's dtype."""
    import random

    sd = loading.load("sd", tiny_models)
    trainer = TokenTrainer(sd, torch.rand(3, 24, 24), size=16, batch=2, lr=1e-2, views=2)
    emb = sd.text_encoder.get_input_embeddings()
    assert trainer.vector.dtype == torch.float32 and trainer.scale.value == 2.0**16

    def fixed_batch():
        trainer.rng = random.Random(1)
        torch.manual_seed(1)

    fixed_batch()
    with torch.no_grad():
        before = trainer.loss()
    for _ in range(5):
        fixed_batch()
        trainer.step()
        grad = trainer.vector.grad
        assert torch.isfinite(grad).all() and grad.abs().max() > 0
        assert torch.equal(emb.weight[trainer.token], trainer.vector.to(emb.weight.dtype))
    fixed_batch()
    with torch.no_grad():
        assert trainer.loss() < before


def test_the_token_starts_from_the_initializer_word_and_it_keys_the_cache(tiny_models):
    sd = loading.load("sd", tiny_models)
    image = torch.rand(3, 24, 24)
    trainer = TokenTrainer(sd, image, size=16, batch=2, lr=1e-2, views=2, initializer="panda")
    emb = sd.text_encoder.get_input_embeddings().weight
    panda = sd.tokenizer("panda", add_special_tokens=False).input_ids[0]
    assert torch.equal(trainer.vector, emb[panda].float())
    keys = {cache_key(image, 3, 16, 2, 1e-1, "sd", 8, wd, init)
            for wd, init in ((1e-2, "object"), (0.0, "object"), (1e-2, "panda"))}
    assert len(keys) == 3


def test_textual_inversion_views_are_the_official_augmentations():
    """27 templates; views (3, S, S) in [0, 1], white where rotation exposes the corners, some
    grey, some mirrored, none alike."""
    import random

    from animate4d.backend.pipeline import textual_inversion as ti

    assert len(set(ti.TEMPLATES)) == 27 and all("{}" in t for t in ti.TEMPLATES)
    image = torch.ones(3, 40, 40)
    image[:, 10:30, 5:20] = torch.tensor([0.8, 0.2, 0.1])[:, None, None]
    rng = random.Random(0)
    views = torch.stack([ti._augment(image, 32, rng) for _ in range(60)])
    assert views.shape == (60, 3, 32, 32) and views.min() >= 0 and views.max() <= 1
    grey = (views[:, 0] - views[:, 1]).abs().amax((1, 2)) < 1e-6
    assert 0 < grey.sum() < 20
    mirrored = views[:, 0, :, :16].mean((1, 2)) > views[:, 0, :, 16:].mean((1, 2))
    assert 10 < mirrored.sum() < 50  # the red block drawn on the left of most views
    assert torch.cdist(views.flatten(1), views.flatten(1)).fill_diagonal_(1).min() > 0
    white = torch.ones(3, 40, 40)  # rotation and blur leave a white image white
    assert all(torch.allclose(ti._augment(white, 32, rng), torch.ones(3, 32, 32), atol=0.05)
               for _ in range(20))


def test_the_loss_scale_skips_an_overflowed_step_and_grows_after_a_run_of_good_ones():
    scale = LossScale(interval=3)
    assert not scale.update(torch.tensor([1.0, float("inf")])) and scale.value == 2.0**15
    assert not scale.update(torch.tensor([float("nan")])) and scale.value == 2.0**14
    assert all(scale.update(torch.ones(2)) for _ in range(3)) and scale.value == 2.0**15


def test_clip_sampling_follows_the_papers_rules():
    """Animate124's dnerf/provider.py: a fifth of the clips start at 0; half are mirrored
    (t -> 1 - t), which keeps them playing forward and anchors them at the end instead."""
    import random

    rng = random.Random(0)
    clips = [sample_clip(rng, 16, 256, (16, 256), 0.2, 0.5) for _ in range(2000)]
    assert all(len(c) == 16 and c.min() >= 0 and c.max() <= 1 for c in clips)
    assert all((np.diff(c) > 0).all() for c in clips)  # never played backwards
    starts_at_zero = sum(c[0] == 0 for c in clips) / len(clips)
    ends_at_one = sum(c[-1] == 1 for c in clips) / len(clips)
    assert 0.08 < starts_at_zero < 0.15 and 0.08 < ends_at_one < 0.15


def test_a_mirrored_clip_is_1_minus_t_still_playing_forward():
    import random

    for wrap in (False, True):
        for seed in range(50):  # the same draws, mirrored or not
            plain = sample_clip(random.Random(seed), 16, 256, (16, 256), 0.2, 0.0, wrap)
            mirrored = sample_clip(random.Random(seed), 16, 256, (16, 256), 0.2, 1.0, wrap)
            expected = 1 - plain[::-1]
            np.testing.assert_array_equal(mirrored, expected % 1 if wrap else expected)


def test_sds_views_are_above_the_object_half_the_time():
    """Animate124's rand_poses (nerf/provider.py, uniform_sphere_rate 0.5): half the views
    are the direction of a point in the half box above the object, polar 0-90 (below 45 for
    pi/12 of them), the others polar 45-135; azimuths all round."""
    import random

    from animate4d.backend.pipeline.cameras import random_view

    rng = random.Random(0)
    views = np.array([random_view(rng, a124.PAPER.views) for _ in range(4000)])
    polar, az = views[:, 0], views[:, 1]
    assert polar.min() >= 0 and polar.max() <= 135 and abs(az).max() <= 180
    assert 0.10 < (polar < 45).mean() < 0.16  # only the half drawn above reaches these
    assert 0.72 < (polar <= 90).mean() < 0.78
    assert all(0.2 < ((az > lo) & (az < lo + 90)).mean() < 0.3 for lo in (-180, -90, 0, 90))
    level = np.array([random_view(rng, replace(a124.PAPER.views, p_upper_hemisphere=0.0))
                      for _ in range(500)])
    assert level[:, 0].min() >= 45 and level[:, 0].max() <= 135


def test_a_moving_camera_turns_up_to_90_degrees_and_tilts_up_to_45_over_a_clip():
    """Animate124's rand_poses_trajectory (dnerf/provider.py, dynamic_cam_rate 0.9): frame k
    of n is k / n of the way through a turn drawn in +-90 degrees and a tilt in +-45."""
    import random

    from animate4d.backend.pipeline import stages

    rng, paper = random.Random(0), a124.PAPER
    clips = [stages.sample_clip_views(rng, paper, 0.5) for _ in range(2000)]
    n = paper.dynamic.clip_frames
    turn = np.array([c.azimuths[-1] - c.azimuths[0] for c in clips]) * n / (n - 1)
    tilt = np.array([c.polars[-1] - c.polars[0] for c in clips]) * n / (n - 1)
    moving = (turn != 0) | (tilt != 0)
    assert 0.87 < moving.mean() < 0.93
    assert 80 < abs(turn).max() <= 90 + 1e-6 and 40 < abs(tilt).max() <= 45 + 1e-6
    assert 0.45 < (abs(turn[moving]) > 45).mean() < 0.55  # uniform in +-90
    for c in clips[:50]:
        np.testing.assert_allclose(np.diff(c.azimuths), (c.azimuths[1] - c.azimuths[0]),
                                   atol=1e-9)
        np.testing.assert_allclose(np.diff(c.polars), (c.polars[1] - c.polars[0]), atol=1e-9)
    assert 0.10 < np.mean([c.polars[0] < 45 for c in clips]) < 0.16  # starts above, too


def test_a_quarter_of_the_sds_steps_fit_the_reference_view_alone():
    """Animate124's known_view_interval 4 and known_iters 100: reference steps replace SDS
    steps; the static stage starts with reference steps only."""
    paper = a124.PAPER
    for stage in ("static", "dynamic", "refine"):
        ref = [paper.reference_step(stage, i) for i in range(paper.steps(stage))]
        first = 100 if stage == "static" else 0
        assert all(ref[:first]) and ref[first::4] == [True] * len(ref[first::4])
        assert sum(ref) == first + (paper.steps(stage) - first) // 4
    assert not any(a124.scaled(paper, 20).reference_step("static", i) for i in (1, 2, 3))


def test_sds_renders_are_lit_and_backed_as_animate124_draws_them():
    import random

    from animate4d.backend.pipeline import stages

    rng, paper = random.Random(0), a124.PAPER
    assert {stages.sds_look(rng, paper, "static", 0.1)[0].mode for _ in range(50)} == {"normals"}
    looks = [stages.sds_look(rng, paper, "dynamic", 0.1) for _ in range(2000)]
    textureless = sum(s.mode == "textureless" for s, _ in looks) / len(looks)
    assert 0.17 < textureless < 0.23
    assert all(0.1 <= s.ambient <= 1.0 for s, _ in looks)
    assert len({bg for _, bg in looks}) == len(looks)  # a new background every time
    assert len({tuple(s.light_offset.tolist()) for s, _ in looks}) == len(looks)
    refine = {stages.sds_look(rng, paper, "refine", 0.1)[0].mode for _ in range(200)}
    assert refine == {"lambertian"}


class _Recording:
    """A guidance stand-in that records what it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, rgb, *args, **kwargs):
        self.calls.append((rgb, args))
        return type("Out", (), {"loss": rgb.mean()})()


def _refine_setup(changes=None):
    from animate4d.backend.pipeline import stages

    preset = a124.override(a124.tiny(), {
        "dynamic.clip_frames": 16, "dynamic.time_steps": 256, "dynamic.clip_span": (16, 256),
        "dynamic.p_start_at_zero": 1.0, "dynamic.p_mirror": 0.0,
        "dynamic.p_moving_camera": 1.0, **(changes or {})})
    torch.manual_seed(0)
    scene, frozen = stages.Scene(preset, "cpu"), stages.Scene(preset, "cpu")
    s = preset.renderer.size
    ref = stages.Reference(torch.ones(3, s, s), torch.ones(s, s), torch.rand(s, s))
    guide = stages.RefineGuidance(_Recording(), "tile prompt", _Recording(), "video prompt",
                                  _Recording())
    return preset, scene, frozen, ref, guide


@pytest.mark.parametrize("with_video", [True, False])
def test_refine_step_shows_the_clip_to_video_zero123_and_tile_as_animate124(monkeypatch,
                                                                            with_video):
    """Animate124's refine (dnerf/utils.py train_step, run-cn.sh): one clip of the dynamic
    stage's sampler with its moving camera, all 16 frames to the video prior, the first to
    Zero123 (the clip starts at time 0), frames 0 and 8 to ControlNet-tile, conditioned on
    the frozen model's renders of the same frames and cameras. A step without the video
    prior renders only the tile's frames."""
    import random

    from animate4d.backend.pipeline import stages

    preset, scene, frozen, ref, guide = _refine_setup()
    renders = []
    real = stages.Scene._render

    def recording(self, cameras, times, *args):
        rgb, out = real(self, cameras, times, *args)
        renders.append((self, list(cameras), list(times), rgb))
        return rgb, out

    monkeypatch.setattr(stages.Scene, "_render", recording)
    losses = stages.refine_step(scene, frozen, ref, preset, guide, random.Random(4), 0.5,
                                with_video=with_video)
    clip = stages.sample_clip_views(random.Random(4), preset, 0.5, stage="refine")
    assert clip.times[0] == 0.0 and len(set(clip.azimuths)) == 16  # from 0, camera moving
    (who, cams, times, rgb), (who_c, cams_c, times_c, cond) = renders
    shown = list(range(16)) if with_video else [0, 8]
    assert who is scene and times == [clip.times[k] for k in shown]
    assert np.array_equal([c.matrix_world for c in cams],
                          [clip.cameras[k].matrix_world for k in shown])
    assert rgb.shape[-1] == preset.refine.render_size
    assert who_c is frozen and times_c == [clip.times[0], clip.times[8]]
    assert np.array_equal([c.matrix_world for c in cams_c],
                          [clip.cameras[k].matrix_world for k in (0, 8)])
    (tile_rgb, (tile_cond, tile_prompt, _)), = guide.tile.calls
    assert torch.equal(tile_rgb, rgb[[0, shown.index(8)]]) and torch.equal(tile_cond, cond)
    assert tile_prompt == "tile prompt"
    if with_video:
        (video_rgb, (video_prompt, _)), = guide.video.calls
        assert torch.equal(video_rgb, rgb) and video_prompt == "video prompt"
    else:
        assert guide.video.calls == [] and "video" not in losses
    (z_rgb, (d_polar, d_az, d_radius, _)), = guide.zero123.calls
    assert torch.equal(z_rgb, rgb[:1])
    assert (d_polar, d_az, d_radius) == (clip.polars[0] - 90.0, clip.azimuths[0], 0.0)
    assert {"tile", "zero123"} <= set(losses)


def test_refine_step_asks_zero123_only_of_clips_from_time_0():
    import random

    from animate4d.backend.pipeline import stages

    preset, scene, frozen, ref, guide = _refine_setup({"dynamic.p_start_at_zero": 0.0})
    for seed in range(3):
        stages.refine_step(scene, frozen, ref, preset, guide, random.Random(seed), 0.5)
    assert guide.zero123.calls == [] and len(guide.video.calls) == 3


@pytest.mark.parametrize("every, video_steps", [(1, [1, 2, 3, 5, 6, 7]), (2, [1, 3, 6]),
                                                (0, [])])
def test_refine_stage_runs_the_video_prior_every_kth_prior_step(monkeypatch, every,
                                                                 video_steps):
    """`refine.video_every`: counted over the prior steps (every 4th step fits the
    reference), the video prior kept beside SD, the ControlNet and Zero123 unless 0."""
    import random
    from types import SimpleNamespace

    from animate4d.backend.pipeline import run as run_mod
    from animate4d.backend.pipeline import stages

    class Pool:
        def __init__(self):
            self.kept = None

        def get(self, role, stage="", cuda_graphs=True):
            return role

        def keep(self, *roles):
            self.kept = sorted(roles)

    class Stub:
        def __init__(self, *args):
            self.args = args

        def set_reference(self, rgb):
            pass

    for name in ("ControlNetTileGuidance", "VideoGuidance", "Zero123Guidance"):
        monkeypatch.setattr(run_mod.guidance, name, Stub)
    flags = []
    monkeypatch.setattr(stages, "refine_step",
                        lambda *a, with_video=True, **kw: flags.append(with_video) or {})
    preset = a124.override(a124.tiny(max_steps=8), {"refine.video_every": every})
    job = SimpleNamespace(config=preset, pool=Pool(), ref=None, object_prompt="a <t>",
                          motion_prompt="it moves", prep={"rgb": torch.ones(3, 4, 4)},
                          refine_normals=preset.renderer.normals, refine_cuda_graphs=True)
    losses = run_mod.Refine(job).losses(stages.Scene(preset, "cpu"))
    for step in range(8):
        losses(random.Random(step), step / 8, preset.reference_step("refine", step))
    assert [i for i, f in enumerate(flags) if f] == video_steps
    assert job.pool.kept == sorted(["controlnet_tile", "sd", "zero123",
                                    *(["video"] if every else [])])


def test_dynamic_and_refine_steps_clip_gradient_values():
    from animate4d.backend.pipeline.optimisation import optimise

    paper = a124.PAPER
    assert paper.clip_value("static") is None
    assert paper.clip_value("dynamic") == paper.clip_value("refine") == 1.0
    for clip, moved in ((None, [-5.0, 0.5]), (1.0, [-1.0, 0.5])):
        w = torch.nn.Parameter(torch.zeros(2))
        optimise(torch.optim.SGD([w], lr=1.0), {"a": (w * torch.tensor([5.0, -0.5])).sum()},
                 clip)
        assert w.detach().tolist() == pytest.approx(moved)


def test_a_parameter_a_step_does_not_reach_still_takes_its_adam_step():
    """The motion field is not reached by a reference step (time 0 skips it): it keeps moving
    on its Adam moments, as when that step reached it with a zero gradient."""
    from animate4d.backend.pipeline.optimisation import optimise

    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([a, b], lr=0.1)
    optimise(opt, {"both": (a + b).sum()}, None)
    before = b.item()
    optimise(opt, {"a only": a.sum()}, None)
    assert b.grad is not None and b.grad.item() == 0.0
    assert b.item() < before  # moved on by its first moment


class _Guidance:
    """Stands in for a guidance module: records what it was shown, returns a loss that
    reaches the render."""

    def __init__(self):
        self.calls = []

    def __call__(self, rgb, *args):
        self.calls.append((tuple(rgb.shape), args[:2]))
        return type("Out", (), {"loss": rgb.mean()})()


def test_the_dynamic_stage_shows_zero123_only_clips_that_play_from_time_0(monkeypatch):
    import random

    from animate4d.backend.pipeline import stages

    preset = a124.tiny()
    scene = stages.Scene(preset, "cpu")
    s = preset.renderer.size
    ref = stages.Reference(torch.ones(3, s, s), torch.ones(s, s), torch.rand(s, s))
    video, zero123 = _Guidance(), _Guidance()
    n = preset.dynamic.clip_frames

    def step(times, reference=False):
        monkeypatch.setattr(stages, "sample_clip", lambda *a: torch.tensor(times).numpy())
        losses = stages.dynamic_step(scene, ref, preset, video, zero123, "p",
                                     random.Random(0), 0.5, reference)
        return set(losses) - {"entropy", "orientation", "normal_tv", "normal_blur",
                              "time_smoothness"}  # the priors' and the reference's

    assert set(step([k / n for k in range(n)])) == {"video", "zero123"}
    assert zero123.calls[-1][0] == (1, 3, s, s)  # the clip's first frame
    assert video.calls[-1][0] == (n, 3, s, s)
    assert set(step([(k + 1) / n for k in range(n)])) == {"video"}  # starts later
    assert set(step([(n - 1 - k) / n for k in range(n)])) == {"video"}  # ends at 0
    calls = len(video.calls), len(zero123.calls)
    assert set(step([0.0] * n, reference=True)) >= {"ref_rgb", "ref_mask"}
    assert (len(video.calls), len(zero123.calls)) == calls  # no prior on a reference step


def _reference_view(size: int) -> dict:
    """The example's reference view as the pipeline prepares it (rgb on white, mask)."""
    from animate4d.backend.pipeline.run import reference_view
    from animate4d.backend.preprocess.framing import find_crop
    from animate4d.backend.preprocess.image_io import load_image
    from animate4d.backend.preprocess.segment import foreground_mask

    image = load_image(EXAMPLE_IMAGE)
    mask = foreground_mask(image)
    rgb, view_mask = reference_view(image, mask, find_crop(mask), size)
    return {"rgb": rgb, "mask": view_mask}


def test_the_static_stage_can_start_from_the_preview_proxy():
    """Fitted into the field, the proxy already shows the object from the reference view (its
    outline and colours); the density blob does not. Whether it helps the final result needs
    the real priors (docs/BENCHMARKS.md)."""
    from animate4d.backend.pipeline.run import start_from_proxy
    from animate4d.backend.pipeline.stages import Scene
    from animate4d.backend.preprocess.framing import canonical_camera

    torch.manual_seed(0)
    prep = _reference_view(64)
    preset = a124.tiny(max_steps=1)
    target = torch.nn.functional.interpolate(prep["mask"][None, None], (32, 32),
                                             mode="area")[0, 0] > 0.5
    scores = {}
    for start in ("blob", "proxy"):
        scene = Scene(preset, "cpu")
        if start == "proxy":
            start_from_proxy(scene, prep, preset, size=64)
        with torch.no_grad():
            alpha = scene.renderer.render([canonical_camera(32)])["alpha"][0] > 0.5
        scores[start] = float((alpha & target).sum() / (alpha | target).sum())
    assert scores["proxy"] > 0.75 and scores["proxy"] > scores["blob"] + 0.2, scores


def test_a_run_with_the_proxy_start_goes_end_to_end(tiny_models):
    options = JobOptions(prompt="a panda is dancing", preset="fast", frames=2)
    preset = a124.tiny(max_steps=1)

    stages_seen = []
    mesh = run_animate124(EXAMPLE_IMAGE, options, lambda s, i, n: stages_seen.append(s),
                          models=tiny_models,
                          preset=a124.override(preset, {"static.init": "proxy"}),
                          device="cpu")
    assert "proxy" in stages_seen and stages_seen.index("proxy") < stages_seen.index("static")
    assert mesh.metadata["timings"]["proxy"] > 0 and len(mesh.faces) > 0


def test_pool_keep_frees_a_dropped_prior_even_inside_a_reference_cycle():
    """A prior that a closure or wrapper holds in a cycle must go when its stage ends."""
    import weakref

    from animate4d.backend.pipeline.run import PriorPool

    class _Prior:
        parts = {}

    pool = PriorPool(None, "cpu")
    prior = _Prior()
    prior.self_ref = prior  # a cycle: reference counting alone never frees it
    pool.loaded["video"] = prior
    alive = weakref.ref(prior)
    del prior
    pool.keep("sd")
    assert alive() is None and not pool.loaded


def test_pool_keep_forgets_compiled_graphs_only_when_a_dropped_prior_was_compiled(monkeypatch):
    """Dynamo's code cache keeps a compiled module's memory alive after it is deleted."""
    from animate4d.backend.pipeline.run import PriorPool
    from animate4d.backend.priors import compiling, graphs

    resets = []
    monkeypatch.setattr(compiling, "forget_compiled", lambda: resets.append(1))

    class _Prior:
        def __init__(self, **parts):
            self.parts = parts

    pool = PriorPool(None, "cpu")
    vae = torch.nn.Module()
    vae.encoder = compiling.Compiled(torch.nn.Linear(2, 2))  # as static/dynamic compile it
    pool.loaded = {"sd": _Prior(unet=torch.nn.Linear(2, 2)), "zero123": _Prior(vae=vae),
                   "video": _Prior(unet=graphs.CudaGraphed(torch.nn.Linear(2, 2)))}
    pool.keep("sd", "zero123")  # drops video: graphed, not compiled
    assert not resets
    pool.keep("sd")  # drops zero123, whose VAE encoder was compiled
    assert resets == [1] and list(pool.loaded) == ["sd"]


def test_a_prior_dropped_between_stages_is_gone_when_the_next_stage_starts(tiny_models,
                                                                           monkeypatch):
    """Each stage holds only its own priors: nothing in the run still names one the pool has
    dropped (a stray name would keep textual inversion's SD on the GPU through the dynamic
    stage, and refinement would load a second copy beside it)."""
    import gc
    import weakref

    from animate4d.backend.pipeline import run as run_mod

    dropped, alive_at_start = [], {}
    keep, optimiser = run_mod.PriorPool.keep, run_mod.stage_optimiser

    def recording_keep(pool, *roles):
        dropped.extend((r, weakref.ref(p)) for r, p in pool.loaded.items() if r not in roles)
        keep(pool, *roles)

    def checking_optimiser(scene, stage, preset):  # called right after a stage's set-up
        gc.collect()
        alive_at_start[stage] = [r for r, ref in dropped if ref() is not None]
        return optimiser(scene, stage, preset)

    monkeypatch.setattr(run_mod.PriorPool, "keep", recording_keep)
    monkeypatch.setattr(run_mod, "stage_optimiser", checking_optimiser)
    run_animate124(EXAMPLE_IMAGE, JobOptions(prompt="a panda is dancing", preset="fast",
                                             frames=2),
                   models=tiny_models, preset=a124.tiny(max_steps=1), device="cpu")
    assert set(alive_at_start) == {"static", "dynamic", "refine"}
    assert [r for r, _ in dropped].count("sd") >= 1  # the dynamic stage drops SD
    assert alive_at_start == {"static": [], "dynamic": [], "refine": []}


def test_weighted_pearson_loss_equals_the_loss_on_the_indexed_pixels():
    """The reference depth loss takes the mask as 0/1 weights (no host sync per step): the
    same value and gradients as over the masked pixels alone; too few pixels, no loss."""
    from animate4d.backend.pipeline import stages

    torch.manual_seed(0)
    pred = torch.rand(24, 24, requires_grad=True)
    target, mask = torch.rand(24, 24), torch.rand(24, 24) > 0.6
    indexed = stages._pearson_loss(pred[mask], target[mask])
    (g_indexed,) = torch.autograd.grad(indexed, pred)
    weighted = stages._pearson_loss(pred, target, mask.float())
    (g_weighted,) = torch.autograd.grad(weighted, pred)
    assert torch.allclose(weighted, indexed, atol=1e-6)
    assert torch.allclose(g_weighted, g_indexed, atol=1e-6)
    assert float(g_weighted[~mask].abs().max()) == 0.0

    preset = a124.tiny()
    s = preset.renderer.size
    scene = stages.Scene(preset, "cpu")
    few = torch.zeros(s, s)
    few[0, :8] = 1  # 8 pixels: not enough for a correlation
    assert "ref_depth" not in stages.reference_losses(
        scene, stages.Reference(torch.ones(3, s, s), few, torch.rand(s, s)), preset)
    assert "ref_depth" in stages.reference_losses(
        scene, stages.Reference(torch.ones(3, s, s), torch.ones(s, s), torch.rand(s, s)), preset)


@pytest.mark.parametrize("flat", ["render", "reference"])
def test_pearson_loss_of_a_flat_side_has_finite_gradients(flat):
    """A constant depth on either side (an empty render, a flat depth map) has no
    correlation: loss 1 and zero, finite gradients, not the NaN that poisoned the whole
    field on the first step of the first GPU job."""
    from animate4d.backend.pipeline import stages

    torch.manual_seed(0)
    varied, constant = torch.rand(16, 16), torch.zeros(16, 16)  # an empty render's depth
    mask = (torch.rand(16, 16) > 0.3).float()
    pred = (constant if flat == "render" else varied).clone().requires_grad_(True)
    target = varied if flat == "render" else constant
    loss = stages._pearson_loss(pred, target, mask)
    (grad,) = torch.autograd.grad(loss, pred)
    assert float(loss.detach()) == pytest.approx(1.0)
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("poison, at, kept", [("nan", 5, ("static", 24)),
                                              ("empty", 13, ("dynamic", 12))])
def test_a_job_whose_scene_is_lost_stops_with_its_last_good_checkpoint(tiny_models,
                                                                        monkeypatch, poison,
                                                                        at, kept):
    """Fields gone NaN, or with no density left anywhere, end the job with a `diverged`
    error at the next checkpoint or occupancy refresh, not with torch's "does not require
    grad" after every later step was wasted, and the last good checkpoint is not replaced."""
    from animate4d.backend.pipeline import run
    from animate4d.protocol.errors import DivergedError

    real = run.stage_stepper

    def poisoned(stage, scene, *args):
        step_fn = real(stage, scene, *args)
        count = iter(range(10**6))

        def step(*a):
            losses = step_fn(*a)
            if stage == "dynamic" and next(count) == at:
                if poison == "nan":
                    with torch.no_grad():
                        next(scene.canonical.parameters()).fill_(float("nan"))
                else:  # a blob that takes the density away everywhere in the box
                    scene.canonical.blob_density, scene.canonical.blob_radius = -1e4, 10.0
            return losses
        return step

    monkeypatch.setattr(run, "stage_stepper", poisoned)
    store = MemoryCheckpoints()
    with pytest.raises(DivergedError) as err:
        run_animate124(EXAMPLE_IMAGE, JobOptions(prompt="a panda is dancing", preset="fast",
                                                 frames=4),
                       checkpoints=store, models=tiny_models, preset=a124.tiny(max_steps=24),
                       device="cpu")
    assert err.value.code == "diverged" and "dynamic stage" in str(err.value)
    assert ("non-finite" if poison == "nan" else "no density") in str(err.value)
    saved = run._torch_load(store.get("a124/fields"))
    assert (saved["stage"], saved["step"]) == kept
    assert all(bool(torch.isfinite(v).all()) for v in saved["canonical"].values())


def test_a_step_that_reaches_no_field_still_steps(tiny_models):
    """A render of empty space has no gradient: the step is a zero-gradient Adam step for
    every parameter, not torch's "element 0 of tensors does not require grad"."""
    from animate4d.backend.pipeline.optimisation import optimise

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    optimise(opt, {"background_only": torch.tensor(0.25)}, clip=1.0)
    assert opt.state[w]["step"] == 1 and torch.equal(w.detach(), torch.ones(3))



def test_a_step_whose_losses_reach_only_parameters_outside_the_optimiser_still_steps():
    """A reference step in a dynamic stage whose canonical field is frozen
    (`dynamic.canonical_lr_scale = 0`): its loss reaches the canonical field only, so the
    optimiser's own parameters (the motion's) take a zero-gradient step, not torch's error on
    an empty list of gradients to clip."""
    from animate4d.backend.pipeline.optimisation import optimise

    outside = torch.nn.Parameter(torch.ones(3))
    held = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([held], lr=0.1)
    optimise(opt, {"ref_rgb": (outside * 2).sum()}, clip=1.0)
    assert opt.state[held]["step"] == 1 and torch.equal(held.detach(), torch.ones(2))
    assert outside.grad is not None  # the loss's own gradient, left for nobody


# The losses of every optimiser step of a tiny job (seed 3, 4 steps per stage, one CPU thread:
# the sums' order, and so the last bits, depend on the thread count): what the method
# computes, step by step (Animate124's views, clips, Zero123 weights, coarse-to-fine levels,
# regularisers, blob, static prompt and token learning, refinement's video prior beside the
# tile, the decaying occupancy grid: docs/DECISIONS.md, "Animate124, faithfully"). The
# regularisers' gradients move the fields from the first SDS step on, so every later step's
# losses are theirs too.
RECORDED_LOSSES = [
    {"ref_rgb": 0.1554, "ref_mask": 0.0504415, "ref_depth": 0.0104917},
    {"sd": 3904.23, "zero123": 19233.5, "entropy": 0.000130625, "orientation": 2.12208e-05,
     "normal_tv": 0.0329242, "normal_blur": 0.0111057},
    {"sd": 3805.24, "zero123": 3443.53, "entropy": 0.000271396, "orientation": 6.15037e-05,
     "normal_tv": 0.034353, "normal_blur": 0.0107542},
    {"sd": 4659.99, "zero123": 89207.9, "entropy": 0.000194321, "orientation": 0.00010312,
     "normal_tv": 0.0309889, "normal_blur": 0.0106676},
    {"ref_rgb": 0.141748, "ref_mask": 0.0392686, "ref_depth": 0.00930469},
    {"video": 9343.22, "entropy": 0.000310592, "orientation": 3.42325e-05, "normal_tv": 0.0349538,
     "normal_blur": 0.0124237, "time_smoothness": 0},
    {"video": 1096.35, "entropy": 0.000304714, "orientation": 4.1782e-05, "normal_tv": 0.0361749,
     "normal_blur": 0.0121023, "time_smoothness": 2.96495e-08},
    {"video": 8393.14, "entropy": 0.000344727, "orientation": 3.82736e-05, "normal_tv": 0.022885,
     "normal_blur": 0.00734954, "time_smoothness": 7.65549e-08},
    {"ref_rgb": 0.144396, "ref_mask": 0.0442328, "ref_depth": 0.0102788},
    {"tile": 1547.55, "video": 9060.44, "entropy": 0.000296615, "orientation": 1.50345e-05,
     "normal_tv": 0.0347896, "normal_blur": 0.0118958, "time_smoothness": 1.3833e-07},
    {"tile": 418.125, "video": 700.167, "entropy": 0.00037143, "orientation": 2.44619e-05,
     "normal_tv": 0.02957, "normal_blur": 0.0108987, "time_smoothness": 1.48374e-07},
    {"tile": 1538.02, "video": 7471.56, "entropy": 0.000351428, "orientation": 1.74462e-05,
     "normal_tv": 0.0370639, "normal_blur": 0.0129217, "time_smoothness": 2.05687e-07},
]


# The priors' and the reference view's losses repeat to 1e-3 on any CPU. The regularisers
# do not, by the CPU's rounding alone (recorded on an Intel Xeon; an AMD EPYC differed by up to
# 0.4% in orientation, a mean over the samples that pass the pruning thresholds, and by 20% in
# the time smoothness, the squared difference of nearly equal displacements at ~1e-8): they are
# held to what that leaves them.
EXACT = {"rel": 1e-3, "abs": 1e-9}
RECORDED_TOLERANCE = {key: {"rel": 2e-2, "abs": 1e-9} for key in
                      ("entropy", "orientation", "normal_tv", "normal_blur")}
RECORDED_TOLERANCE["time_smoothness"] = {"rel": 0.5, "abs": 1e-9}


def test_tiny_job_takes_the_recorded_steps(tiny_models, monkeypatch):
    from animate4d.backend.pipeline import run

    seen = []
    real = run.optimise

    def recording(opt, losses, clip):
        seen.append({k: float(v.detach()) for k, v in losses.items()})
        return real(opt, losses, clip)

    monkeypatch.setattr(run, "optimise", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mesh = run_animate124(EXAMPLE_IMAGE, JobOptions(prompt="a panda is dancing", preset="fast",
                                                        frames=4, seed=3),
                              models=tiny_models, preset=a124.tiny(max_steps=4), device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert [sorted(s) for s in seen] == [sorted(r) for r in RECORDED_LOSSES]
    for step, (got, want) in enumerate(zip(seen, RECORDED_LOSSES, strict=True)):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, **RECORDED_TOLERANCE.get(key, EXACT)), \
                (step, key, got, want)
    # Marching cubes on a field whose last bits are the CPU's: a few surface cells come and go
    # (924 / 1,844 on the Intel Xeon that recorded the losses, 922 / 1,840 on an AMD EPYC).
    assert mesh.num_vertices == pytest.approx(924, rel=0.02)
    assert mesh.num_faces == pytest.approx(1844, rel=0.02)
    assert mesh.metadata["config"]["name"] == "fast"
    assert mesh.metadata["config"]["static"]["steps"] == 4
    assert set(mesh.metadata["switches"]) >= {"cuda_graphs", "compile", "hashgrid"}


def test_refine_prompts_with_the_learned_token(tiny_models, monkeypatch):
    """The dynamic stage drops SD and refine loads it again: the learned token must be in the
    SD that refine's ControlNet-tile guidance prompts with, not only in the first one."""
    from animate4d.backend.pipeline import run
    from animate4d.backend.priors import text

    seen = {}
    real = run.guidance.ControlNetTileGuidance

    def spying(sd, controlnet, config):
        vocab = sd.tokenizer.get_vocab()
        if text.PLACEHOLDER in vocab:
            seen["row"] = sd.text_encoder.get_input_embeddings().weight[
                vocab[text.PLACEHOLDER]].detach().float().clone()
        return real(sd, controlnet, config)

    monkeypatch.setattr(run.guidance, "ControlNetTileGuidance", spying)
    store = MemoryCheckpoints()
    run_animate124(EXAMPLE_IMAGE, JobOptions(prompt="a panda is dancing", preset="fast",
                                             frames=2),
                   checkpoints=store, models=tiny_models, preset=a124.tiny(max_steps=1),
                   device="cpu")
    token = run._torch_load(store["a124/token"]).float()
    assert "row" in seen, "refine's SD does not know the learned token"
    assert torch.allclose(seen["row"], token, atol=1e-6)


def test_looping_clips_run_on_across_the_seam():
    import random

    rng = random.Random(1)
    clips = [sample_clip(rng, 16, 256, (16, 256), 0.2, 0.5, wrap=True) for _ in range(500)]
    assert all(c.min() >= 0 and c.max() < 1 for c in clips)
    # Played forward (mirrored clips too), a clip's steps are equal modulo 1 (up to the
    # span's rounding), and some clips cross time 1 = time 0 into the start.
    steps = [np.diff(c) % 1.0 for c in clips]
    assert all(s.min() > 0 and s.max() - s.min() <= 1 / 256 + 1e-6 for s in steps)
    assert sum(bool((np.diff(c) < 0).any()) for c in clips) > 50
    plain = [sample_clip(rng, 16, 256, (16, 256), 0.2, 0.5) for _ in range(500)]
    assert not any((np.diff(c) < 0).any() for c in plain)


def test_a_looping_job_learns_a_periodic_motion_whose_clip_closes(tiny_models):
    from animate4d.backend.field.extract import forward_warp
    from animate4d.backend.field.fields import SpectralMotionField
    from animate4d.backend.jobs.method import run_method
    from animate4d.backend.pipeline.run import Animate124

    options = JobOptions(prompt="a panda is dancing", preset="fast", frames=4, loop=True,
                         motion_terms=3)
    job = Animate124(EXAMPLE_IMAGE, options, a124.tiny(max_steps=2), models=tiny_models,
                     device="cpu")
    mesh = run_method(job)
    motion = job.scene().motion
    assert isinstance(motion, SpectralMotionField) and motion.terms == 3 and motion.loops
    assert mesh.metadata["loop"] is True
    # The frame after the last one is frame 0 again: the clip closes.
    rest = torch.as_tensor(mesh.vertices)
    with torch.no_grad():
        after_last, _ = forward_warp(motion, rest, 1.0)
    np.testing.assert_allclose(after_last.numpy(), mesh.frames[0], atol=1e-5)
    assert float(np.abs(mesh.frames[1:] - mesh.frames[0]).max()) > 0  # and it does move


def test_loop_options_are_checked():
    from animate4d.protocol.errors import InvalidRequestError

    for k in (0, 17):
        with pytest.raises(InvalidRequestError, match="motion_terms"):
            JobOptions(loop=True, motion_terms=k).validate()


def test_the_scene_starts_from_animate124s_small_density_blob():
    """Animate124's `--blob_density 10 --blob_radius 0.2`: a seed at the centre of the box,
    not a ball filling half of it (the radius was 0.5)."""
    from animate4d.backend.pipeline import stages

    scene = stages.Scene(a124.tiny(max_steps=1), "cpu")
    at = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.5, 0.0]])
    want = 10.0 * torch.exp(-(at**2).sum(-1) / (2 * 0.2**2))
    torch.testing.assert_close(scene.canonical.blob(at), want)


def test_refine_on_a_small_card_shades_with_canonical_normals(tiny_models, monkeypatch):
    """World normals' refine does not fit a 24 GB card, nor canonical normals' beside CUDA
    graphs: there refine (its renders and the frozen model's targets alike) shades with
    canonical normals, its priors run eagerly, and the result says so."""
    from animate4d.backend.pipeline import run
    from animate4d.backend.priors import graphs

    monkeypatch.setattr(run.devices, "usable_memory", lambda device: 22 * 2**30)
    seen, asked = [], []
    real_step, real_get = run.stages.refine_step, run.PriorPool.get

    def spying(scene, frozen, *args, **kw):
        seen.append((scene.renderer.normals, frozen.renderer.normals))
        return real_step(scene, frozen, *args, **kw)

    def get(pool, role, stage="", cuda_graphs=True):
        prior = real_get(pool, role, stage, cuda_graphs)
        asked.append((stage, role, cuda_graphs,
                      any(isinstance(m, graphs.CudaGraphed) for m in prior.parts.values())))
        return prior

    monkeypatch.setattr(run.stages, "refine_step", spying)
    monkeypatch.setattr(run.PriorPool, "get", get)
    # Graphed parts as on a GPU (the CPU loads them unwrapped): refine must unwrap them.
    real_load = run.loading.load
    monkeypatch.setattr(run.loading, "load",
                        lambda *a, **kw: real_load(*a, **{**kw, "cuda_graphs": True}))
    mesh = run_animate124(EXAMPLE_IMAGE, JobOptions(prompt="a panda is dancing", preset="fast",
                                                    frames=2),
                          models=tiny_models, preset=a124.tiny(max_steps=2), device="cpu")
    assert seen and set(seen) == {("canonical", "canonical")}
    refine = [(role, graphed, wrapped) for stage, role, graphed, wrapped in asked
              if stage == "refine"]
    assert {role for role, _, _ in refine} >= {"sd", "controlnet_tile", "zero123"}
    assert all(not graphed and not wrapped for _, graphed, wrapped in refine)
    assert any(wrapped for stage, _, _, wrapped in asked if stage == "dynamic")
    assert mesh.metadata["adjusted"] == {"refine.normals": "canonical",
                                         "refine.cuda_graphs": False}
    assert mesh.metadata["config"]["renderer"]["normals"] == "world"  # the other stages'


@pytest.mark.parametrize("usable_gib, small", [(None, False), (22.0, True), (23.0, True),
                                               (40.0, False), (80.0, False)])
def test_refine_small_card_follows_the_cards_memory(usable_gib, small):
    refine = a124.PAPER.refine
    usable = None if usable_gib is None else int(usable_gib * 2**30)
    assert refine.small_card(usable) is small
    assert replace(refine, small_card_gib=0.0).small_card(usable) is False
    with pytest.raises(ValueError, match="small_card_normals"):
        replace(refine, small_card_normals="flat")


def test_usable_memory_is_none_off_the_gpu():
    from animate4d.backend.runtime.devices import usable_memory

    assert usable_memory("cpu") is None
