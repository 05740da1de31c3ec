"""The tensor rasterizer against the numpy one it mirrors, on one view and on many at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animate4d.backend.mesh import raster, tensor_raster
from animate4d.backend.mesh.geometry import vertex_normals
from animate4d.backend.pipeline.cameras import orbit_camera
from tests.backend.meshes import tree_arrays


def _tree():
    v, f, _ = tree_arrays()
    v = (v - v.mean(0)) / np.abs(v - v.mean(0)).max() * 0.7
    return v, f


def _views(v, f, n):
    """n posed copies (rotated about the up axis, so each view sees a different pose) with
    their normals and colours as attributes, and a camera each."""
    poses, attrs = [], []
    for k in range(n):
        a = 0.4 * k
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        p = v @ rot.T
        poses.append(p)
        attrs.append(np.concatenate([(p + 1) / 2, vertex_normals(p, f)], 1))
    cams = [orbit_camera(50.0 + 15 * k, -60.0 + 40 * k, 64) for k in range(n)]
    return np.stack(poses), np.stack(attrs), cams


def _tensor_views(poses, attrs, f, cams, device):
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return tensor_raster.gbuffer(t(poses), torch.as_tensor(f, device=device), t(attrs), cams)


def test_many_views_at_once_match_the_numpy_rasterizer_view_by_view():
    v, f = _tree()
    poses, attrs, cams = _views(v, f, 4)
    img, covered, depth = _tensor_views(poses, attrs, f, cams, "cpu")
    assert img.shape == (4, 64, 64, 6) and covered.shape == depth.shape == (4, 64, 64)
    for k in range(4):
        want, want_cov, want_z = raster.gbuffer(poses[k], f, attrs[k], cams[k])
        assert want_cov.sum() > 400  # the object fills part of the view
        assert np.array_equal(covered[k].numpy(), want_cov)
        got = img[k].numpy()[want_cov]
        # Pixels on an edge between two triangles may take either side's values; almost all
        # agree to float32 precision.
        close = np.abs(got - want[want_cov]).max(1) < 1e-4
        assert close.mean() > 0.99
        assert np.allclose(depth[k].numpy()[want_cov], want_z[want_cov], atol=1e-4)
        assert np.isinf(depth[k].numpy()[~want_cov]).all()


def test_a_nearer_surface_hides_a_farther_one():
    cam = orbit_camera(70.0, 30.0, 32)
    # Two squares facing the camera, made in its frame (it looks down -z): a small red one
    # 1.5 in front, a large blue one 2.5 in front.
    quad = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    near = np.c_[quad * 0.2, np.full(4, -1.5)]
    far = np.c_[quad * 1.0, np.full(4, -2.5)]
    v = cam.camera_to_world(np.concatenate([far, near]))
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    colours = np.array([[0, 0, 1]] * 4 + [[1, 0, 0]] * 4, float)
    img, cov, depth = _tensor_views(v[None], colours[None], f, [cam], "cpu")
    assert np.allclose(img[0, 16, 16].numpy(), [1, 0, 0], atol=1e-5)  # the near one
    assert np.allclose(img[0, 16, 2].numpy(), [0, 0, 1], atol=1e-5)  # beside it, the far one
    assert abs(float(depth[0, 16, 16]) - 1.5) < 1e-4
    assert abs(float(depth[0, 16, 2]) - 2.5) < 1e-4
    assert bool(cov[0].all())


def test_cameras_of_one_call_share_a_resolution():
    v, f = _tree()
    poses, attrs, _ = _views(v, f, 2)
    with pytest.raises(ValueError, match="one resolution"):
        _tensor_views(poses, attrs, f, [orbit_camera(60, 0, 32), orbit_camera(60, 0, 48)],
                      "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gpu_gives_the_cpus_image():
    v, f = _tree()
    poses, attrs, cams = _views(v, f, 3)
    cpu = _tensor_views(poses, attrs, f, cams, "cpu")
    gpu = _tensor_views(poses, attrs, f, cams, "cuda")
    assert torch.equal(cpu[1], gpu[1].cpu())
    close = (cpu[0] - gpu[0].cpu()).abs().amax(-1)[cpu[1]] < 1e-4
    assert close.float().mean() > 0.99
