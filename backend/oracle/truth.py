"""The ground truth the oracle priors know: an animated, vertex-coloured mesh in the pipeline's
object frame, rendered the way `pipeline.stages.Scene` renders (same cameras, times, shading
modes, lights and backgrounds), by the CPU rasterizer.

Times are the clip's, t in [0, 1]: a looping motion wraps (t = 1 is t = 0); one that does not
ends at t = 1. Frame k of an F-frame result shows time k / F.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animate4d.protocol import AnimatedMesh, Camera

from ..field.render import Shading, camera_rays
from ..mesh import raster
from ..mesh.geometry import vertex_normals
from ..preprocess.framing import canonical_camera
from ..synthetic import scenes

# Every frame of the truth fits in a sphere of this radius about the origin: inside the
# fields' [-1, 1] box with room to move, and filling most of the canonical camera's view
# (radius 1.8, 40 degrees: half the view at the object is 0.66 wide).
RADIUS = 0.6

# How finely a built-in scene is sampled in time: between samples, linear.
_DENSE = 64

# The truth is rendered at every SDS step, many times a step for the video oracle: meshes
# with more faces are simplified (the same collapses in every frame, so one topology) to this,
# plenty at the priors' resolutions.
MAX_FACES = 6000


@dataclass(frozen=True)
class Rendered:
    """One ground-truth image: rgb (3, H, W) in [0, 1] on its background, alpha (H, W),
    depth along the camera axis (H, W, 0 where nothing is hit)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor


class GroundTruth:
    """An animated mesh normalised into the object frame (frame 0 seen by the canonical
    camera is the reference view)."""

    def __init__(self, name: str, faces: np.ndarray, colours: np.ndarray, frames: np.ndarray,
                 loops: bool):
        """`frames` (T, N, 3): the motion sampled at times k / T (k < T) when it loops, at
        k / (T - 1) (both ends) when it does not."""
        self.name, self.loops = name, loops
        faces = np.asarray(faces, np.int64)
        colours = np.asarray(colours, np.float64)[:, :3] / 255.0
        f = np.asarray(frames, np.float64)
        if len(faces) > MAX_FACES:
            faces, colours, f = _simplified(faces, colours, f)
        self.faces, self.colours = faces, colours
        lo, hi = f.reshape(-1, 3).min(0), f.reshape(-1, 3).max(0)
        centre = (lo + hi) / 2
        scale = RADIUS / np.linalg.norm(f - centre, axis=-1).max()
        self.frames = (f - centre) * scale

    @classmethod
    def load(cls, source: str) -> GroundTruth:
        """A built-in scene's name (`synthetic.scenes`), or an .a4d clip (looping when its
        metadata says `loop`)."""
        if source in scenes.SCENES:
            m = scenes.motion(source)
            n = _DENSE if m.loops else _DENSE + 1
            times = np.arange(n) / (_DENSE if m.loops else n - 1)
            return cls(source, m.faces, m.colors, m.at(times), m.loops)
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{source!r} is neither a file nor a built-in scene "
                             f"({', '.join(scenes.SCENES)})")
        mesh = _read_animated(path)
        colours = (mesh.colors if mesh.colors is not None
                   else np.full((len(mesh.vertices), 4), 200, np.uint8))
        loops = bool(mesh.metadata.get("loop", False))
        frames = mesh.frames if loops else np.concatenate([mesh.frames, mesh.frames[-1:]])
        return cls(path.stem, mesh.faces, colours, frames, loops)

    def placed(self, to_frame) -> GroundTruth:
        """The same clip with every frame's vertices mapped by `to_frame` (an array of
        points -> the same points elsewhere): the truth in another object frame."""
        out = copy.copy(self)
        out.frames = np.asarray(to_frame(self.frames), np.float64)
        return out

    def still(self) -> GroundTruth:
        """The same object standing still at its frame 0 (what a motion learned on it should
        be: none)."""
        out = self.placed(lambda frames: np.repeat(frames[:1], len(frames), 0))
        out.name = f"{self.name} (still)"
        return out

    @property
    def diagonal(self) -> float:
        """The diagonal of the box holding every frame."""
        p = self.frames.reshape(-1, 3)
        return float(np.linalg.norm(p.max(0) - p.min(0)))

    def vertices(self, t: float) -> np.ndarray:
        """Vertex positions (N, 3) at time t."""
        n = len(self.frames)
        if self.loops:
            x = (float(t) % 1.0) * n
            k = int(np.floor(x)) % n
            return self._lerp(k, (k + 1) % n, x - np.floor(x))
        x = min(max(float(t), 0.0), 1.0) * (n - 1)
        k = min(int(np.floor(x)), n - 2)
        return self._lerp(k, k + 1, x - k)

    def _lerp(self, a: int, b: int, w: float) -> np.ndarray:
        return self.frames[a] * (1 - w) + self.frames[b] * w

    def render(self, camera: Camera, t: float, shading: Shading | None = None,
               background=(1.0, 1.0, 1.0)) -> Rendered:
        """The truth at time t through `camera`, shaded as `Scene.render` shades (albedo when
        `shading` is None)."""
        shading = shading or Shading(mode="albedo")
        v = self.vertices(t)
        normals = vertex_normals(v, self.faces)
        attrs, covered, depth = raster.gbuffer(v, self.faces,
                                               np.concatenate([self.colours, normals], 1),
                                               camera)
        albedo = torch.as_tensor(attrs[..., :3], dtype=torch.float32)
        n = torch.nn.functional.normalize(torch.as_tensor(attrs[..., 3:], dtype=torch.float32),
                                          dim=-1)
        rgb = _shade(albedo, n, camera, shading)
        alpha = torch.as_tensor(covered, dtype=torch.float32)[..., None]
        bg = torch.as_tensor(background, dtype=torch.float32)
        rgb = rgb * alpha + bg * (1 - alpha)
        z = torch.as_tensor(np.where(covered, depth, 0.0), dtype=torch.float32)
        return Rendered(rgb.permute(2, 0, 1).clamp(0, 1), alpha[..., 0], z)

    def reference(self, size: int) -> dict:
        """The reference view (frame 0 from the canonical camera) as preprocessing leaves it:
        rgb (3, S, S) on white, mask (S, S), relative inverse depth (S, S, larger = nearer,
        as the depth estimator gives)."""
        r = self.render(canonical_camera(size), 0.0)
        inverse = torch.where(r.alpha > 0, 1.0 / r.depth.clamp(min=1e-6), 0.0)
        return {"rgb": r.rgb, "mask": r.alpha, "depth": inverse}

    def at_frames(self, frames: int) -> np.ndarray:
        """Vertex positions (F, N, 3) of an F-frame clip (frame k at time k / F)."""
        return np.stack([self.vertices(k / frames) for k in range(frames)])


def _simplified(faces, colours, frames):
    """The clip with about MAX_FACES faces: frame 0 simplified by quadric collapses; each
    simplified vertex then follows the original vertex of its group nearest to it (replaying
    the collapses on later frames would place vertices by each frame's own quadrics, far off
    the surface), so every frame shares one topology and stays on the truth's surface."""
    import fast_simplification as fs

    tri = faces.astype(np.int32)
    points, new_faces, collapses = fs.simplify(frames[0].astype(np.float32), tri,
                                               target_count=MAX_FACES, return_collapses=True)
    _, _, group = fs.replay_simplification(frames[0].astype(np.float32), tri, collapses)
    gap = np.linalg.norm(frames[0] - points[group], axis=1)
    order = np.lexsort((gap, group))  # by group, nearest first
    first = np.ones(len(order), bool)
    first[1:] = group[order][1:] != group[order][:-1]
    keep = np.empty(len(points), np.int64)
    keep[group[order][first]] = order[first]
    return np.asarray(new_faces, np.int64), colours[keep], frames[:, keep]


def _shade(albedo: torch.Tensor, normal: torch.Tensor, camera: Camera,
           shading: Shading) -> torch.Tensor:
    """`field.render.Renderer`'s shading of surface points (H, W, 3)."""
    if shading.mode == "albedo":
        return albedo
    if shading.mode == "normals":
        return (normal + 1) / 2
    h, w = albedo.shape[:2]
    origin, direction = camera_rays(camera)
    if shading.light is not None:
        light = torch.as_tensor(shading.light, dtype=torch.float32).expand(h * w, 3)
    elif shading.light_offset is not None:
        offset = torch.as_tensor(shading.light_offset, dtype=torch.float32)
        light = torch.nn.functional.normalize(origin + offset, dim=-1)
    else:
        light = -direction
    lam = (normal.reshape(-1, 3) * light).sum(-1).clamp(min=0.0).reshape(h, w, 1)
    shade = shading.ambient + (1 - shading.ambient) * lam
    base = torch.ones_like(albedo) if shading.mode == "textureless" else albedo
    return base * shade


def _read_animated(path: Path) -> AnimatedMesh:
    if path.suffix.lower() != ".a4d":
        raise ValueError(f"{path.name}: the ground truth is a built-in scene "
                         f"({', '.join(scenes.SCENES)}) or an .a4d clip (a result of "
                         "`animate4d run`, or any animated mesh saved as .a4d)")
    from animate4d.protocol import a4d

    return a4d.load(path)
