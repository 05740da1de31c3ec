"""Preview mode end to end, in process: placement, determinism and options."""

import numpy as np
import pytest

from animate4d.backend.preprocess.image_io import load_image
from animate4d.backend.preview.pipeline import run_preview
from animate4d.protocol import Camera
from animate4d.protocol.errors import InvalidCameraError, InvalidRequestError
from animate4d.protocol.options import JobOptions
from tests.backend.helpers import edges_are_manifold, reference_iou
from tests.conftest import blob_rgba, write_png


def _run(tmp_path, rgba, **opts):
    path = write_png(tmp_path / "in.png", rgba)
    opts = {"prompt": "a creature sways", "frames": 6} | opts
    return run_preview(path, JobOptions(**opts))


def test_the_bundled_example_is_decimated_to_the_export_budget_and_stays_closed():
    """At the default resolution the inflated panda has ~93k faces; the GPU pipeline's budget
    applies to previews too, without opening the surface or losing its outline."""
    from importlib import resources

    from animate4d.backend.mesh.geometry import EXPORT_FACES
    from animate4d.backend.preview.inflate import signed_volume

    image = load_image(resources.files("animate4d.backend").joinpath(
        "examples", "panda.png").read_bytes())
    mesh = run_preview(image, JobOptions(prompt="a panda is dancing", frames=2))
    assert EXPORT_FACES * 0.95 <= len(mesh.faces) <= EXPORT_FACES
    assert edges_are_manifold(mesh.faces) and len(mesh.vertices) == len(mesh.colors)
    assert signed_volume(mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64)) > 0
    alpha = image.rgba[..., 3] > 0.5
    assert reference_iou(mesh, alpha) >= 0.9


def test_frame0_covers_the_input_through_the_default_camera(tmp_path):
    rgba = blob_rgba(300, 360)
    mesh = _run(tmp_path, rgba)
    assert reference_iou(mesh, rgba[..., 3] > 127) >= 0.9
    assert edges_are_manifold(mesh.faces)
    assert mesh.colors is not None and mesh.metadata["loop"] is True


def test_off_centre_object_in_a_wide_image(tmp_path):
    rgba = blob_rgba(640, 360, centre=(480, 200), scale=0.6)
    mesh = _run(tmp_path, rgba)
    assert reference_iou(mesh, rgba[..., 3] > 127) >= 0.9


def test_user_camera_and_target_place_the_object(tmp_path):
    rgba = blob_rgba(400, 300, centre=(150, 170), scale=0.7)
    cam = Camera.look_at((3.0, -5.0, 2.0), (0.5, 0.5, 0.3), fov_deg=35, resolution=(800, 600))
    target = [0.5, 0.5, 0.3]
    mesh = _run(tmp_path, rgba, camera=cam.to_dict(), target=target)
    # The reference camera was fitted to the image's size (same aspect ratio).
    assert tuple(mesh.metadata["reference_camera"]["resolution"]) == (400, 300)
    assert reference_iou(mesh, rgba[..., 3] > 127) >= 0.9
    # The object's centre stands at the target's depth.
    centre_world = mesh.transform[:3, 3]
    depth = lambda p: -cam.world_to_camera(p)[2]  # noqa: E731
    assert depth(centre_world) == pytest.approx(depth(np.array(target)), rel=0.02)
    # Twice as far away: twice the size, same coverage.
    far = cam.location + 2.0 * (np.array(target) - cam.location)
    mesh2 = _run(tmp_path, rgba, camera=cam.to_dict(), target=far.tolist())
    s1 = np.linalg.norm(mesh.transform[:3, 0])
    s2 = np.linalg.norm(mesh2.transform[:3, 0])
    assert s2 / s1 == pytest.approx(2.0, rel=0.02)
    assert reference_iou(mesh2, rgba[..., 3] > 127) >= 0.9


def test_camera_with_another_aspect_ratio_is_refused(tmp_path):
    cam = Camera.look_at((0, -3, 0), resolution=(1920, 1080))
    with pytest.raises(InvalidCameraError, match="aspect ratio"):
        _run(tmp_path, blob_rgba(300, 300), camera=cam.to_dict())


def test_same_input_same_result(tmp_path):
    rgba = blob_rgba(200, 240)
    a = _run(tmp_path, rgba, seed=3)
    b = _run(tmp_path, rgba, seed=3)
    for name in ("vertices", "faces", "frames", "colors", "transform"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_prompt_and_flags_choose_the_motion(tmp_path):
    rgba = blob_rgba(200, 240)
    by_prompt = run_preview(write_png(tmp_path / "a.png", rgba),
                            JobOptions(prompt="a frog jumping", frames=4))
    assert by_prompt.metadata["motion"]["modes"] == ["bounce"]
    by_flag = run_preview(write_png(tmp_path / "b.png", rgba),
                          JobOptions(prompt="a frog jumping", frames=4, motion=["twist"]))
    assert by_flag.metadata["motion"]["modes"] == ["twist"]
    none = run_preview(write_png(tmp_path / "c.png", rgba), JobOptions(prompt="a frog", frames=4))
    assert none.metadata["motion"]["chosen_by"] == "default"


def test_colours_come_from_the_image(tmp_path):
    rgba = blob_rgba(300, 360)
    mesh = _run(tmp_path, rgba)
    # The head is yellow, the body orange-red: check the vertices that project into each.
    img = load_image(write_png(tmp_path / "c.png", rgba))
    cam = Camera.from_dict(mesh.metadata["reference_camera"])
    uv, _ = cam.project(mesh.frame_world(0))
    px = np.clip(np.rint(uv - 0.5).astype(int), 0, [img.size[0] - 1, img.size[1] - 1])
    expect = (img.rgba[px[:, 1], px[:, 0], :3] * 255).astype(int)
    inside = img.rgba[px[:, 1], px[:, 0], 3] > 0.5
    err = np.abs(mesh.colors[inside, :3].astype(int) - expect[inside])
    assert np.median(err) <= 4


@pytest.mark.parametrize("field, value", [("frames", 0), ("fps", -1.0), ("amplitude", 9.0),
                                          ("prompt", "x" * 5000), ("mesh_resolution", 8),
                                          ("motion", ["moonwalk"])])
def test_bad_options_are_refused_by_name(field, value, tmp_path):
    with pytest.raises(InvalidRequestError, match=field):
        _run(tmp_path, blob_rgba(100, 100), **{field: value})
