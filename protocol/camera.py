"""The camera convention every stage shares: Blender's.

World is right-handed with Z up; a camera looks down its local -Z with +Y up and +X right.
Intrinsics follow Blender's camera data block (lens in mm, sensor size in mm, sensor fit,
shift), so a camera read off a Blender scene projects here exactly as Blender projects it.
Pixels: u grows to the right, v grows downwards, pixel (i, j) covers [i, i+1) x [j, j+1), so
the image centre is (W/2, H/2).

JSON form (the `--camera` flag, and later the wire):
    {"matrix_world": 4x4 rows, "resolution": [W, H],
     "lens": mm | "fov": degrees along the fitted side,
     "sensor_width": 36, "sensor_height": 24, "sensor_fit": "AUTO",
     "shift_x": 0, "shift_y": 0}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidCameraError
from .limits import MAX_CAMERA_JSON_BYTES

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
MAX_RESOLUTION = 16384


@dataclass(frozen=True)
class Camera:
    matrix_world: np.ndarray = field(repr=False)
    resolution: tuple[int, int]
    lens: float = 50.0
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0

    def __post_init__(self):
        m = np.asarray(self.matrix_world, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise InvalidCameraError("matrix_world must be a finite 4x4 matrix")
        if not np.allclose(m[3], (0, 0, 0, 1), atol=1e-6):
            raise InvalidCameraError("matrix_world's last row must be (0, 0, 0, 1)")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise InvalidCameraError("matrix_world has a degenerate rotation/scale part")
        object.__setattr__(self, "matrix_world", m)
        w, h = (int(x) for x in self.resolution)
        if not (1 <= w <= MAX_RESOLUTION and 1 <= h <= MAX_RESOLUTION):
            raise InvalidCameraError(
                f"resolution {w}x{h} is out of range (1..{MAX_RESOLUTION} per side)"
            )
        object.__setattr__(self, "resolution", (w, h))
        if self.sensor_fit not in SENSOR_FITS:
            raise InvalidCameraError(f"sensor_fit must be one of {SENSOR_FITS}")
        for name in ("lens", "sensor_width", "sensor_height"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and 1e-3 <= v <= 1e5):
                raise InvalidCameraError(f"{name} must be a positive number of millimetres")
        for name in ("shift_x", "shift_y"):
            if not (math.isfinite(float(getattr(self, name))) and abs(getattr(self, name)) <= 10):
                raise InvalidCameraError(f"{name} must be a finite number within [-10, 10]")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def look_at(
        cls,
        eye,
        target=(0.0, 0.0, 0.0),
        *,
        up=(0.0, 0.0, 1.0),
        fov_deg: float = 40.0,
        resolution=(512, 512),
    ) -> Camera:
        """A camera at `eye` looking at `target`, with the fitted side spanning `fov_deg`."""
        eye = np.asarray(eye, dtype=np.float64)
        forward = np.asarray(target, dtype=np.float64) - eye
        if np.linalg.norm(forward) < 1e-12:
            raise InvalidCameraError("look_at: eye and target coincide")
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.asarray(up, dtype=np.float64))
        if np.linalg.norm(right) < 1e-9:
            raise InvalidCameraError("look_at: view direction is parallel to up")
        right /= np.linalg.norm(right)
        cam_up = np.cross(right, forward)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, -forward, eye
        return cls(matrix_world=m, resolution=tuple(resolution), lens=_lens_for_fov(fov_deg))

    @classmethod
    def from_dict(cls, d: dict) -> Camera:
        if not isinstance(d, dict):
            raise InvalidCameraError("a camera must be a JSON object")
        known = {
            "matrix_world", "resolution", "lens", "fov", "sensor_width", "sensor_height",
            "sensor_fit", "shift_x", "shift_y",
        }
        unknown = set(d) - known
        if unknown:
            raise InvalidCameraError(
                f"unknown camera keys {sorted(unknown)}; known: {sorted(known)}"
            )
        for key in ("matrix_world", "resolution"):
            if key not in d:
                raise InvalidCameraError(f"camera is missing '{key}'")
        if "lens" in d and "fov" in d:
            raise InvalidCameraError("give either 'lens' (mm) or 'fov' (degrees), not both")
        try:
            m = np.array(d["matrix_world"], dtype=np.float64)
            res = [int(x) for x in d["resolution"]]
            kw = {k: float(d[k]) for k in ("sensor_width", "sensor_height", "shift_x", "shift_y")
                  if k in d}
            if "sensor_fit" in d:
                kw["sensor_fit"] = str(d["sensor_fit"]).upper()
            if "fov" in d:
                fov = float(d["fov"])
                if not (0.1 <= fov <= 179.0):
                    raise InvalidCameraError("fov must be between 0.1 and 179 degrees")
                kw["lens"] = _lens_for_fov(fov, kw.get("sensor_width", 36.0))
            elif "lens" in d:
                kw["lens"] = float(d["lens"])
        except (TypeError, ValueError) as e:
            raise InvalidCameraError(f"camera has a value of the wrong type: {e}") from None
        if len(res) != 2:
            raise InvalidCameraError("resolution must be [width, height]")
        return cls(matrix_world=m, resolution=tuple(res), **kw)

    @classmethod
    def from_json(cls, text: str | bytes) -> Camera:
        if len(text) > MAX_CAMERA_JSON_BYTES:
            raise InvalidCameraError(f"camera JSON is larger than {MAX_CAMERA_JSON_BYTES} bytes")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidCameraError(f"camera is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return {
            "matrix_world": self.matrix_world.tolist(),
            "resolution": list(self.resolution),
            "lens": self.lens,
            "sensor_width": self.sensor_width,
            "sensor_height": self.sensor_height,
            "sensor_fit": self.sensor_fit,
            "shift_x": self.shift_x,
            "shift_y": self.shift_y,
        }

    def with_resolution(self, resolution) -> Camera:
        d = self.to_dict()
        d["resolution"] = list(resolution)
        return Camera.from_dict(d)

    # -- intrinsics (Blender's BKE_camera_params_compute_viewplane) ----------------------
    def _fit(self) -> tuple[str, float]:
        w, h = self.resolution
        if self.sensor_fit == "AUTO":
            return ("HORIZONTAL" if w >= h else "VERTICAL"), self.sensor_width
        size = self.sensor_width if self.sensor_fit == "HORIZONTAL" else self.sensor_height
        return self.sensor_fit, size

    @property
    def _view_factor(self) -> float:
        fit, _ = self._fit()
        return float(self.resolution[0] if fit == "HORIZONTAL" else self.resolution[1])

    @property
    def focal_px(self) -> float:
        _, size = self._fit()
        return self.lens / size * self._view_factor

    @property
    def fov_deg(self) -> float:
        """Field of view along the fitted side (Blender's `angle`)."""
        _, size = self._fit()
        return math.degrees(2.0 * math.atan(size / (2.0 * self.lens)))

    @property
    def principal_point(self) -> tuple[float, float]:
        w, h = self.resolution
        vf = self._view_factor
        return w / 2.0 - self.shift_x * vf, h / 2.0 + self.shift_y * vf

    def intrinsics(self) -> np.ndarray:
        """3x3 K for camera-space points with +Y up and -Z forward: see `project`."""
        cx, cy = self.principal_point
        f = self.focal_px
        return np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=np.float64)

    # -- extrinsics ---------------------------------------------------------------------
    @property
    def rotation(self) -> np.ndarray:
        """World-from-camera rotation (orthonormal: object scale is ignored, as Blender does)."""
        r = self.matrix_world[:3, :3]
        u, _, vt = np.linalg.svd(r)
        rot = u @ vt
        if np.linalg.det(rot) < 0:
            raise InvalidCameraError("matrix_world mirrors space (negative determinant)")
        return rot

    @property
    def location(self) -> np.ndarray:
        return self.matrix_world[:3, 3].copy()

    def world_to_camera(self, points) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        return (p - self.location) @ self.rotation

    def camera_to_world(self, points) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.rotation.T + self.location

    def project(self, points) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates (..., 2) and depth in front of the camera."""
        pc = self.world_to_camera(points)
        depth = -pc[..., 2]
        safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
        cx, cy = self.principal_point
        f = self.focal_px
        uv = np.stack([cx + f * pc[..., 0] / safe, cy - f * pc[..., 1] / safe], axis=-1)
        return uv, depth

    def pixel_rays(self, uv) -> np.ndarray:
        """Unit world-space directions of the rays through pixel coordinates (..., 2)."""
        uv = np.asarray(uv, dtype=np.float64)
        cx, cy = self.principal_point
        f = self.focal_px
        d = np.stack(
            [(uv[..., 0] - cx) / f, -(uv[..., 1] - cy) / f, -np.ones(uv.shape[:-1])], axis=-1
        )
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        return d @ self.rotation.T


def _lens_for_fov(fov_deg: float, sensor: float = 36.0) -> float:
    return sensor / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
