"""Recentre and scale the object like Animate124's preprocessing, and place the result back.

The backend works in a normalised object frame: the object at the origin, the reference view
taken by the canonical camera at (0, -1.8, 0) looking along +Y (Blender's front view) with a
40 degree field of view, the object's larger side filling 1 - 2*border of that view. The input
image is cropped to a square around the foreground and scaled to that view.

The result's transform (object frame -> Blender world) is a similarity: the canonical camera's
view is turned towards the crop's centre in the user's camera, scaled so that the object's
angular size matches the crop's, and pushed to the depth of the target point. Seen through the
user's camera, frame 0 then covers the input image's foreground (exactly at the crop centre, to
within weak-perspective error elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from animate4d.protocol import Camera
from animate4d.protocol.errors import InvalidCameraError

CANONICAL_RADIUS = 1.8
CANONICAL_FOV_DEG = 40.0
DEFAULT_BORDER = 0.1  # Animate124's border_ratio 0.2: the object spans 80 % of the view


def canonical_camera(resolution: int | tuple[int, int]) -> Camera:
    """The front view at radius 1.8 with a 40 degree field of view (along the larger side).

    At a square size it sees the canonical reference view; at the input image's size it is the
    reference camera assumed when the user gives none.
    """
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    return Camera.look_at(
        (0.0, -CANONICAL_RADIUS, 0.0), (0.0, 0.0, 0.0),
        fov_deg=CANONICAL_FOV_DEG, resolution=resolution,
    )


@dataclass(frozen=True)
class Crop:
    """A square of the input image: original pixel = (x0, y0) + canonical pixel * side / size."""

    x0: int
    y0: int
    side: int
    image_size: tuple[int, int]  # (W, H) of the input

    def to_original(self, uv_canonical: np.ndarray, size: int) -> np.ndarray:
        return np.asarray(uv_canonical) * (self.side / size) + (self.x0, self.y0)


def find_crop(mask: np.ndarray, border: float = DEFAULT_BORDER) -> Crop:
    ys, xs = np.nonzero(mask > 0.5)
    x_lo, x_hi, y_lo, y_hi = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    extent = max(x_hi - x_lo, y_hi - y_lo)
    side = max(8, int(math.ceil(extent / (1.0 - 2.0 * border))))
    cx, cy = (x_lo + x_hi) / 2.0, (y_lo + y_hi) / 2.0
    return Crop(
        x0=int(round(cx - side / 2.0)), y0=int(round(cy - side / 2.0)), side=side,
        image_size=(mask.shape[1], mask.shape[0]),
    )


def crop_and_scale(rgba: np.ndarray, mask: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """The canonical reference view: (size, size, 4) float32, alpha = foreground mask."""
    h, w = mask.shape
    stack = np.dstack([rgba[..., :3], mask]).astype(np.float32)
    pad_l, pad_t = max(0, -crop.x0), max(0, -crop.y0)
    pad_r, pad_b = max(0, crop.x0 + crop.side - w), max(0, crop.y0 + crop.side - h)
    if pad_l or pad_t or pad_r or pad_b:
        stack = cv2.copyMakeBorder(stack, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_CONSTANT, value=0)
    x0, y0 = crop.x0 + pad_l, crop.y0 + pad_t
    square = stack[y0 : y0 + crop.side, x0 : x0 + crop.side]
    interp = cv2.INTER_AREA if crop.side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def fit_camera_to_image(camera: Camera, image_size: tuple[int, int]) -> Camera:
    """The reference camera at the image's resolution; its aspect ratio must match the image's."""
    cw, ch = camera.resolution
    iw, ih = image_size
    if abs(cw / ch - iw / ih) > 0.01 * (iw / ih):
        raise InvalidCameraError(
            f"the reference camera's frame is {cw}x{ch} but the image is {iw}x{ih}",
            hint="give the camera the image's aspect ratio (set the render resolution to match)",
        )
    return camera if (cw, ch) == (iw, ih) else camera.with_resolution((iw, ih))


def object_to_world(crop: Crop, camera: Camera, target=None) -> np.ndarray:
    """4x4 similarity taking the object frame to Blender world (see the module docstring).

    `camera` is the user's reference camera at the input image's resolution. `target` is the
    world point whose depth the object's centre takes; None means the world origin when it is in
    front of the camera, else unit scale.
    """
    size = crop.side
    centre = crop.to_original(np.array([size / 2.0, size / 2.0]), size)
    d = _cam_dir(camera, centre)
    # Angular size of the crop in the user's camera (mean of its two spans).
    spans = []
    for a, b in (((0, size / 2), (size, size / 2)), ((size / 2, 0), (size / 2, size))):
        da = _cam_dir(camera, crop.to_original(np.array(a, float), size))
        db = _cam_dir(camera, crop.to_original(np.array(b, float), size))
        spans.append(math.acos(float(np.clip(da @ db, -1.0, 1.0))))
    half_tan_user = math.tan(0.5 * sum(spans) / 2)
    half_tan_canon = math.tan(math.radians(CANONICAL_FOV_DEG) / 2)

    if target is None:
        target = np.zeros(3)
        if camera.world_to_camera(target)[2] >= 0:  # origin behind the camera
            target = None
    if target is None:
        scale = 1.0
        dist = CANONICAL_RADIUS * half_tan_canon / half_tan_user
    else:
        dist = float(camera.world_to_camera(np.asarray(target, float)) @ d)
        if dist <= 1e-6:
            raise InvalidCameraError("the target point is behind the reference camera")
        scale = dist * half_tan_user / (CANONICAL_RADIUS * half_tan_canon)

    # Virtual camera basis in the user's camera space: looks along d, up as close to +Y as can be.
    right = np.cross(d, (0.0, 1.0, 0.0))
    if np.linalg.norm(right) < 1e-9:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, d)
    basis = np.stack([right, up, -d], axis=1)

    canon = canonical_camera(size)
    # object -> canonical camera space, centre moved to the origin
    obj_to_canon = np.eye(4)
    obj_to_canon[:3, :3] = canon.rotation.T
    obj_to_canon[:3, 3] = -canon.rotation.T @ canon.location + (0.0, 0.0, CANONICAL_RADIUS)
    place = np.eye(4)
    place[:3, :3] = scale * basis
    place[:3, 3] = dist * d
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = camera.rotation
    cam_to_world[:3, 3] = camera.location
    return cam_to_world @ place @ obj_to_canon


def _cam_dir(camera: Camera, uv: np.ndarray) -> np.ndarray:
    """Unit camera-space direction of the ray through original pixel coordinates `uv`."""
    return camera.pixel_rays(uv) @ camera.rotation
