import json
import math

import numpy as np
import pytest

from animate4d.protocol import Camera
from animate4d.protocol.errors import InvalidCameraError


def test_look_at_follows_blenders_convention():
    cam = Camera.look_at((0, -2, 0), (0, 0, 0), fov_deg=40, resolution=(200, 100))
    # Blender's front camera: rotation X 90 degrees; looks along +Y, up is +Z.
    np.testing.assert_allclose(cam.rotation @ (0, 0, -1), (0, 1, 0), atol=1e-12)
    np.testing.assert_allclose(cam.rotation @ (0, 1, 0), (0, 0, 1), atol=1e-12)
    uv, depth = cam.project(np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.2]]))
    np.testing.assert_allclose(uv[0], (100, 50))
    assert depth[0] == pytest.approx(2.0)
    assert uv[1, 0] > 100 and uv[1, 1] < 50  # +X is right, +Z is up (v grows downwards)
    assert cam.fov_deg == pytest.approx(40.0)


def test_pixel_rays_invert_project():
    cam = Camera.look_at((1, -3, 2), (0.2, 0, 0.1), fov_deg=55, resolution=(320, 240))
    rng = np.random.default_rng(1)
    pts = rng.normal(scale=0.3, size=(50, 3))
    uv, depth = cam.project(pts)
    rays = cam.pixel_rays(uv)
    to_pts = pts - cam.location
    cos = np.einsum("ij,ij->i", rays, to_pts / np.linalg.norm(to_pts, axis=1, keepdims=True))
    np.testing.assert_allclose(cos, 1.0, atol=1e-12)


def test_json_round_trip_and_fov_form():
    cam = Camera.look_at((0, -2, 0.5), fov_deg=30, resolution=(640, 480))
    back = Camera.from_json(json.dumps(cam.to_dict()))
    np.testing.assert_allclose(back.matrix_world, cam.matrix_world)
    assert back.focal_px == pytest.approx(cam.focal_px)
    by_fov = Camera.from_dict({"matrix_world": cam.matrix_world.tolist(),
                               "resolution": [640, 480], "fov": 30})
    assert by_fov.focal_px == pytest.approx(cam.focal_px)


@pytest.mark.parametrize(
    "d, message",
    [
        ({"resolution": [10, 10]}, "missing 'matrix_world'"),
        ({"matrix_world": np.eye(4).tolist(), "resolution": [0, 10]}, "resolution"),
        ({"matrix_world": np.eye(3).tolist(), "resolution": [10, 10]}, "4x4"),
        ({"matrix_world": np.zeros((4, 4)).tolist(), "resolution": [10, 10]}, "last row"),
        ({"matrix_world": np.eye(4).tolist(), "resolution": [10, 10], "lens": -5}, "lens"),
        ({"matrix_world": np.eye(4).tolist(), "resolution": [10, 10], "fov": 200}, "fov"),
        ({"matrix_world": np.eye(4).tolist(), "resolution": [10, 10], "lens": 5, "fov": 9},
         "not both"),
        ({"matrix_world": np.eye(4).tolist(), "resolution": [10, 10], "zoom": 2}, "unknown"),
        ({"matrix_world": "eye", "resolution": [10, 10]}, "wrong type"),
    ],
)
def test_bad_cameras_are_named(d, message):
    with pytest.raises(InvalidCameraError, match=message):
        Camera.from_dict(d)


def test_bad_json_is_a_camera_error():
    with pytest.raises(InvalidCameraError, match="not valid JSON"):
        Camera.from_json("{nope")


@pytest.mark.blender
@pytest.mark.parametrize(
    "res, fit, shift, lens",
    [
        ((640, 480), "AUTO", (0.0, 0.0), 50.0),
        ((480, 640), "AUTO", (0.1, -0.05), 35.0),
        ((800, 450), "VERTICAL", (0.0, 0.2), 85.0),
        ((300, 500), "HORIZONTAL", (-0.15, 0.0), 24.0),
    ],
)
def test_projection_matches_blender(res, fit, shift, lens):
    bpy = pytest.importorskip("bpy")
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Euler, Matrix, Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = res
    scene.render.resolution_percentage = 100
    data = bpy.data.cameras.new("cam")
    data.lens, data.sensor_width, data.sensor_height = lens, 36.0, 24.0
    data.sensor_fit = fit
    data.shift_x, data.shift_y = shift
    obj = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(obj)
    obj.matrix_world = Matrix.LocRotScale(Vector((0.7, -4.0, 1.2)),
                                          Euler((math.radians(80), 0.1, 0.3)), None)
    bpy.context.view_layer.update()

    cam = Camera(matrix_world=np.array(obj.matrix_world), resolution=res, lens=lens,
                 sensor_fit=fit, shift_x=shift[0], shift_y=shift[1])
    rng = np.random.default_rng(3)
    pts = rng.normal(scale=0.6, size=(40, 3))
    uv, depth = cam.project(pts)
    for p, (u, v), z in zip(pts, uv, depth, strict=True):
        ndc = world_to_camera_view(scene, obj, Vector(p))
        assert u == pytest.approx(ndc.x * res[0], abs=1e-3)
        assert v == pytest.approx((1.0 - ndc.y) * res[1], abs=1e-3)
        assert z == pytest.approx(ndc.z, abs=1e-5)
