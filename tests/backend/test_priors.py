"""Model registry, loading and the guidance modules, on tiny random models."""

import shutil
from dataclasses import replace

import pytest
import torch

pytest.importorskip("diffusers")

from animate4d.backend.jobs import presets  # noqa: E402
from animate4d.backend.priors import guidance, loading, registry  # noqa: E402
from animate4d.backend.priors.sds import TimestepRange, sds  # noqa: E402
from animate4d.protocol.errors import MissingModelError  # noqa: E402


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_tiny_models_are_complete_and_every_role_loads(tiny_models):
    assert [p for p, r in presets.missing_roles(tiny_models).items() if not r] == ["fast", "paper"]
    for role in set(registry.ROLES) - {"segment"}:  # an ONNX model: test_segmentation.py
        prior = loading.load(role, tiny_models)
        assert prior.parts and all(not p.requires_grad for m in prior.parts.values()
                                   if isinstance(m, torch.nn.Module) for p in m.parameters())


def test_a_missing_role_names_itself_the_folder_and_the_fetch_command(tiny_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "sd", models / "sd")
    (models / "sd" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingModelError) as err:
        loading.load("sd", models)
    text = str(err.value)
    assert "sd" in text and str(models / "sd") in text and "unet" in text
    assert "animate4d models fetch sd" in text
    with pytest.raises(MissingModelError, match="video"):
        registry.locate("video", models)
    assert [p for p, r in presets.missing_roles(models).items() if not r] == []


def test_timestep_range_and_annealing_are_honoured():
    r = TimestepRange(0.2, 0.6)
    t = r.sample(5000, 0.0, 1000, "cpu")
    assert t.min() >= 200 and t.max() <= 600 and t.max() >= 590
    a = TimestepRange(0.02, 0.98, anneal_to=0.5)
    assert a.sample(5000, 1.0, 1000, "cpu").max() <= 500
    assert a.sample(5000, 0.0, 1000, "cpu").max() > 900


def test_sds_gradient_is_the_weighted_cfg_residual():
    torch.manual_seed(0)
    ac = torch.linspace(0.99, 0.01, 1000)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    noise = torch.randn_like(x)
    uncond, cond = torch.randn_like(x), torch.randn_like(x)
    t = torch.tensor([100, 700])
    out = sds(x, lambda xt, tt: (uncond, cond), scale=7.0, alphas_cumprod=ac, t=t, noise=noise)
    out.loss.backward()
    w = (1 - ac[t]).view(-1, 1, 1, 1)
    expected = w * (uncond + 7.0 * (cond - uncond) - noise) / 2  # loss is averaged over B
    torch.testing.assert_close(x.grad, expected)


def test_sds_with_an_exact_denoiser_moves_the_render_to_the_target():
    """A denoiser that knows the clean image exactly: SDS descent pulls the image onto it."""
    torch.manual_seed(0)
    ac = torch.linspace(0.9999, 0.005, 1000)
    target = torch.rand(1, 3, 8, 8)
    image = torch.zeros(1, 3, 8, 8, requires_grad=True)

    def exact(x_t, t):
        ab = ac[t].view(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * target) / (1 - ab).sqrt()
        return eps, eps

    opt = torch.optim.SGD([image], lr=0.5)
    start = float((image.detach() - target).pow(2).mean())
    for _ in range(100):
        opt.zero_grad()
        t = TimestepRange(0.02, 0.98).sample(1, 0.0, 1000, "cpu")
        sds(image, exact, scale=1.0, alphas_cumprod=ac, t=t).loss.backward()
        opt.step()
    assert float((image.detach() - target).pow(2).mean()) < 0.01 * start


def _render(*shape):
    torch.manual_seed(1)
    return torch.rand(*shape, requires_grad=True)


def _check_grad(rgb, out):
    out.loss.backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert float(out.grad_norm) > 0


def _seeded(fn, seed=3):
    torch.manual_seed(seed)
    return fn()


def test_stable_diffusion_guidance_mixes_both_branches_in_its_range(tiny_models):
    sd = loading.load("sd", tiny_models)
    seen = []
    hook = sd.unet.register_forward_pre_hook(
        lambda m, args, kw: seen.append((args[1].clone(), kw["encoder_hidden_states"].clone())),
        with_kwargs=True)
    g = guidance.StableDiffusionGuidance(sd, replace(guidance.SD, scale=50.0))
    rgb = _render(2, 3, 12, 12)
    out = g(rgb, ["a panda, front view", "a panda, side view"])
    _check_grad(rgb, out)
    hook.remove()
    t, emb = seen[0]
    assert len(t) == 4 and ((t >= 200) & (t <= 600)).all()
    assert not torch.allclose(emb[:2], emb[2:])  # uncond and cond halves differ

    def grad(prompt, scale):
        g.scale = scale
        x = _render(1, 3, 12, 12)
        _seeded(lambda: g(x, [prompt]).loss.backward())
        return x.grad

    # scale 0 is the unconditional branch alone: the prompt cannot matter; scale 50 it does.
    torch.testing.assert_close(grad("a panda", 0.0), grad("a cat", 0.0))
    assert not torch.allclose(grad("a panda", 50.0), grad("a cat", 50.0))


def test_sd_view_embeddings_blend_front_side_and_back_by_azimuth(tiny_models):
    """Animate124's nerf/utils.py: r = 1 - |azimuth| / 90 of front and the rest of side within
    90 degrees of the front; beyond, r = 1 - (|azimuth| - 90) / 90 of side, the rest back."""
    sd = loading.load("sd", tiny_models)
    seen = []
    hook = sd.unet.register_forward_pre_hook(
        lambda m, args, kw: seen.append(kw["encoder_hidden_states"].clone()), with_kwargs=True)
    g = guidance.StableDiffusionGuidance(sd)
    front, side, back = g.embeddings(["a panda, front view", "a panda, side view",
                                      "a panda, back view"])
    views = g.view_embeddings("a panda", [30.0, -60.0, 135.0, -180.0, 0.0, 390.0])
    r, r1, r2 = 1 - 30 / 90, 1 - 60 / 90, 1 - (135 - 90) / 90
    for got, want in zip(views, [r * front + (1 - r) * side, r1 * front + (1 - r1) * side,
                                 r2 * side + (1 - r2) * back, back, front,
                                 r * front + (1 - r) * side], strict=True):
        torch.testing.assert_close(got, want)
    g(_render(2, 3, 12, 12), "a panda", azimuths=[30.0, 135.0])
    hook.remove()
    torch.testing.assert_close(seen[0][2:], views[[0, 2]])  # the cond half of the batch


def test_zero123_guidance_depends_on_pose_and_reference(tiny_models):
    z = loading.load("zero123", tiny_models)
    g = guidance.Zero123Guidance(z, replace(guidance.ZERO123, size=16))  # the tiny VAE's size
    with pytest.raises(RuntimeError, match="set_reference"):
        g(_render(1, 3, 8, 8), 0.0, 30.0, 0.0)
    g.set_reference(torch.rand(1, 3, 20, 20))
    rgb = _render(2, 3, 8, 8)
    _check_grad(rgb, g(rgb, torch.tensor([0.0, 10.0]), torch.tensor([30.0, -90.0]), 0.0))

    def grad(az):
        x = _render(1, 3, 8, 8)
        _seeded(lambda: g(x, 0.0, az, 0.0).loss.backward())
        return x.grad

    assert not torch.allclose(grad(30.0), grad(150.0))


def test_zero123_runs_at_256_px_weighted_by_the_angle_to_the_reference(tiny_models,
                                                                         monkeypatch):
    """Animate124's guidance/zero123_diffusers_utils.py: the reference and the renders go in
    at 256 px whatever the VAE's sample size, and each view's SDS weight is 40 x its
    great-circle angle to the reference view / 180."""
    from types import SimpleNamespace

    from animate4d.backend.priors.sds import SDSOutput

    z = loading.load("zero123", tiny_models)
    assert z.vae.config.sample_size != 256
    sizes, weights = [], []

    def encode(x):  # the tiny VAE's attention at 256 px would be minutes of CPU: sizes only
        sizes.append(tuple(x.shape[-2:]))
        lat = torch.zeros(len(x), 4, 2, 2)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: lat, sample=lambda: lat))

    def fake_sds(latents, predict, **kw):
        weights.append(kw["weight"])
        return SDSOutput(latents.sum(), torch.tensor(0.0), kw["t"])

    monkeypatch.setattr(z.vae, "encode", encode)
    monkeypatch.setattr(guidance, "sds", fake_sds)
    g = guidance.Zero123Guidance(z)  # the paper's settings
    g.set_reference(torch.rand(1, 3, 20, 20))
    # the reference, opposite it, overhead, to its side, and above-behind (135 degrees: the
    # angle between the directions, not the sum of the polar and azimuth differences)
    g(torch.rand(5, 3, 8, 8), torch.tensor([0.0, 0.0, -90.0, 0.0, -45.0]),
      torch.tensor([0.0, 180.0, 0.0, 90.0, 180.0]), 0.0)
    assert set(sizes) == {(256, 256)}
    assert weights[0].flatten().tolist() == pytest.approx([0.0, 40.0, 20.0, 20.0, 30.0],
                                                          abs=1e-3)


def test_video_guidance_sees_the_clip_as_one_video(tiny_models):
    v = loading.load("video", tiny_models)
    shapes = []
    v.unet.register_forward_pre_hook(lambda m, a: shapes.append(a[0].shape))
    g = guidance.VideoGuidance(v, replace(guidance.VIDEO, size=16))
    frames = _render(5, 3, 8, 8)
    _check_grad(frames, g(frames, "a panda is dancing"))
    assert shapes[0] == (2, 4, 5, 8, 8)  # cfg pair x (C, F, h, w)


def test_controlnet_tile_guidance_uses_its_condition(tiny_models):
    sd, cn = loading.load("sd", tiny_models), loading.load("controlnet_tile", tiny_models)
    # The paper's 1024 px on a tiny VAE would be minutes of CPU attention: the tiny models' size.
    g = guidance.ControlNetTileGuidance(sd, cn, replace(guidance.TILE, size=16))
    rgb = _render(2, 3, 16, 16)
    _check_grad(rgb, g(rgb, torch.rand(2, 3, 16, 16), "a photo of a panda"))

    def grad(cond):
        x = _render(1, 3, 16, 16)
        _seeded(lambda: g(x, cond, "a panda").loss.backward())
        return x.grad

    assert not torch.allclose(grad(torch.zeros(1, 3, 16, 16)), grad(torch.ones(1, 3, 16, 16)))


def test_depth_estimator_returns_the_input_size(tiny_models):
    d = guidance.DepthEstimator(loading.load("depth", tiny_models))
    depth = d(torch.rand(1, 3, 24, 20))
    assert depth.shape == (24, 20) and torch.isfinite(depth).all() and depth.std() > 0
