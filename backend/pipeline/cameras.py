"""Camera and time sampling for the SDS stages (object frame: Z up, front view along +Y from
-Y, radius 1.8, as framing.canonical_camera)."""

from __future__ import annotations

import math
import random

import numpy as np

from animate4d.protocol import Camera

from ..preprocess.framing import CANONICAL_FOV_DEG, CANONICAL_RADIUS
from .config import ViewConfig


def orbit_camera(polar_deg: float, azimuth_deg: float, size: int,
                 radius: float = CANONICAL_RADIUS) -> Camera:
    """polar from +Z (90 = level), azimuth 0 = the reference (front) view, positive to the
    object's left."""
    p, a = math.radians(polar_deg), math.radians(azimuth_deg)
    eye = (radius * math.sin(p) * math.sin(a), -radius * math.sin(p) * math.cos(a),
           radius * math.cos(p))
    up = (0.0, 0.0, 1.0) if abs(math.sin(p)) > 1e-3 else (0.0, 1.0, 0.0)
    return Camera.look_at(eye, (0.0, 0.0, 0.0), fov_deg=CANONICAL_FOV_DEG,
                          resolution=(size, size), up=up)


def random_view(rng: random.Random, views: ViewConfig) -> tuple[float, float]:
    """(polar, azimuth) of one SDS view (Animate124's rand_poses): with
    views.p_upper_hemisphere, the direction of a point drawn uniformly in the half box
    [-1, 1]^2 x [0, 1] above the object (polar 0-90: overhead views the level band never
    gives; denser towards the box's corners than uniform on the hemisphere, as the official
    draw is); otherwise polar uniform in views.polar_deg. Azimuth uniform all round."""
    if rng.random() < views.p_upper_hemisphere:
        x, y, z = rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0), rng.uniform(0.0, 1.0)
        return (math.degrees(math.atan2(math.hypot(x, y), z)),
                math.degrees(math.atan2(x, -y)))  # orbit_camera's eye is (sin a, -cos a)
    return rng.uniform(*views.polar_deg), rng.uniform(-180.0, 180.0)


def sample_clip(rng: random.Random, frames: int, time_steps: int, span: tuple[int, int],
                p_start_at_zero: float, p_mirror: float, wrap: bool = False,
                mirror: str = "forward") -> np.ndarray:
    """Times of one training clip (Animate124's temporal sampling): a span of `span` time
    steps out of `time_steps`, starting at 0 with p_start_at_zero; with p_mirror each time t
    becomes 1 - t, re-sorted, so the clip still plays forward but is anchored at the end of
    the timeline (times in (0, 1]; a clip from 0 becomes one that ends at 1). A clip is never
    played backwards: the prior would teach a one-way motion both ways. `wrap` (a looping
    motion, where time 1 is time 0): times in [0, 1), a clip may start anywhere and run on
    past the end into the start, so the prior also sees the seam; a mirrored clip is then
    just another forward clip. `mirror="reverse"`: a mirrored clip is the clip's frames in
    reverse order instead (it plays backwards; `DynamicConfig.mirror`)."""
    s = rng.randint(max(span[0], frames), min(span[1], time_steps))
    last_start = time_steps - 1 if wrap else time_steps - s
    start = 0 if rng.random() < p_start_at_zero else rng.randint(0, last_start)
    idx = (start + np.floor(np.arange(frames) * s / frames)) % time_steps
    if rng.random() < p_mirror:
        if mirror == "reverse":
            idx = idx[::-1]
        else:
            idx = time_steps - idx[::-1]
            if wrap:
                idx %= time_steps
    return (idx / time_steps).astype(np.float32)
