import numpy as np
import pytest

from animate4d.backend.mesh.geometry import vertex_normals
from animate4d.backend.mesh.raster import iou, silhouette
from animate4d.backend.preprocess.framing import canonical_camera
from animate4d.backend.preview.inflate import inflate, poisson_height, signed_volume
from tests.backend.helpers import edges_are_manifold


def _disc(s=96, r=30, c=(48, 48)):
    yy, xx = np.mgrid[:s, :s]
    return (xx + 0.5 - c[0]) ** 2 + (yy + 0.5 - c[1]) ** 2 < r**2


def test_poisson_height_of_a_disc_is_a_sphere():
    h = poisson_height(_disc(r=30))
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(xx + 0.5 - 48, yy + 0.5 - 48)
    inner = r < 24
    np.testing.assert_allclose(h[inner], np.sqrt(30**2 - r[inner] ** 2), rtol=0.05)


def test_thin_parts_stay_thin():
    s = 128
    mask = _disc(s, 40, (64, 50))
    mask[90:, 62:66] = False
    mask[88:124, 62:66] = True  # a limb 4 px wide
    h = poisson_height(mask)
    assert h[100:120, 62:66].max() < 4.0  # its depth is about its width, not the body's
    assert h[50, 64] > 35


@pytest.mark.parametrize("shape", ["disc", "ring", "two_blobs", "creature"])
def test_inflated_mesh_is_closed_manifold_and_matches_the_outline(shape):
    s = 128
    yy, xx = np.mgrid[:s, :s]
    if shape == "disc":
        mask, genus_euler = _disc(s, 40, (64, 64)), [2]
    elif shape == "ring":
        mask = _disc(s, 45, (64, 64)) & ~_disc(s, 18, (64, 64))
        genus_euler = [0]  # a torus
    elif shape == "two_blobs":
        mask = _disc(s, 20, (35, 64)) | _disc(s, 25, (90, 64))
        genus_euler = [4]  # two spheres
    else:
        mask = _disc(s, 35, (64, 78)) | _disc(s, 20, (64, 30))
        mask[70:76, 90:120] = True
        genus_euler = [2]
    cam = canonical_camera(s)
    v, f = inflate(mask, cam)
    assert edges_are_manifold(f)
    euler = len(v) - len(np.unique(np.sort(np.concatenate(
        [f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1), axis=0)) + len(f)
    assert euler in genus_euler
    assert signed_volume(v, f) > 0  # outward-facing
    assert iou(silhouette(v, f, cam), mask) >= 0.95


def test_inflated_disc_is_round_in_depth():
    s = 128
    cam = canonical_camera(s)
    v, f = inflate(_disc(s, 40, (64, 64)), cam)
    width = np.ptp(v[:, 0])
    depth = np.ptp(v[:, 1])  # Y is depth in the object frame
    assert depth == pytest.approx(width, rel=0.08)
    thin, _ = inflate(_disc(s, 40, (64, 64)), cam, thickness=0.5)
    assert np.ptp(thin[:, 1]) == pytest.approx(0.5 * depth, rel=0.1)


def test_vertex_normals_of_a_sphere_point_outwards():
    s = 96
    v, f = inflate(_disc(s, 30, (48, 48)), canonical_camera(s))
    n = vertex_normals(v, f)
    radial = (v - v.mean(axis=0)) / np.linalg.norm(v - v.mean(axis=0), axis=1, keepdims=True)
    assert np.mean(np.einsum("ij,ij->i", n, radial)) > 0.97
    batch = vertex_normals(np.stack([v, v + 1.0]), f)
    np.testing.assert_allclose(batch[0], n)
    np.testing.assert_allclose(batch[1], n, atol=1e-9)
