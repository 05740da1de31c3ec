"""The ground truth the oracle priors know: an animated, vertex-coloured mesh in the pipeline's
object frame, rendered the way `pipeline.stages.Scene` renders (same cameras, times, shading
modes, lights and backgrounds), by the tensor rasterizer on the job's device.

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
from ..mesh import tensor_raster
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
        self.device, self._tensors = torch.device("cpu"), None

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
        out._tensors = None
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
        a, b, w = self._bracket(t)
        return self._lerp(a, b, w)

    def _bracket(self, t: float) -> tuple[int, int, float]:
        """The two stored frames around time t and the weight of the second."""
        n = len(self.frames)
        if self.loops:
            x = (float(t) % 1.0) * n
            k = int(np.floor(x)) % n
            return k, (k + 1) % n, float(x - np.floor(x))
        x = min(max(float(t), 0.0), 1.0) * (n - 1)
        k = min(int(np.floor(x)), n - 2)
        return k, k + 1, float(x - k)

    def _lerp(self, a: int, b: int, w: float) -> np.ndarray:
        return self.frames[a] * (1 - w) + self.frames[b] * w

    def to(self, device) -> GroundTruth:
        """Render on `device` (the job's: the truth is rendered at every SDS step)."""
        self.device = torch.device(device)
        self._tensors = None
        return self

    def _on_device(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._tensors is None:
            dev = self.device
            self._tensors = (torch.as_tensor(self.frames, dtype=torch.float32, device=dev),
                             torch.as_tensor(self.faces, device=dev),
                             torch.as_tensor(self.colours, dtype=torch.float32, device=dev))
        return self._tensors

    def _vertices_at(self, times: list[float]) -> torch.Tensor:
        """`vertices` at each time, (B, N, 3) on the device."""
        frames = self._on_device()[0]
        pairs = [self._bracket(t) for t in times]
        a = frames[[p[0] for p in pairs]]
        b = frames[[p[1] for p in pairs]]
        w = torch.tensor([p[2] for p in pairs], dtype=torch.float32, device=frames.device)
        return a * (1 - w[:, None, None]) + b * w[:, None, None]

    def render(self, camera: Camera, t: float, shading: Shading | None = None,
               background=(1.0, 1.0, 1.0)) -> Rendered:
        """The truth at time t through `camera`, shaded as `Scene.render` shades (albedo when
        `shading` is None)."""
        r = self.render_many([camera], [t], shading, background)
        return Rendered(r.rgb[0], r.alpha[0], r.depth[0])

    def render_many(self, cameras: list[Camera], times: list[float],
                    shading: Shading | None = None, background=(1.0, 1.0, 1.0)) -> Rendered:
        """`render` for several (camera, time) pairs at once, on the truth's device: rgb
        (B, 3, H, W), alpha and depth (B, H, W). Cameras of one call share a resolution."""
        shading = shading or Shading(mode="albedo")
        _, faces, colours = self._on_device()
        v = self._vertices_at([float(t) for t in times])
        normals = _vertex_normals(v, faces)
        attrs = torch.cat([colours.expand(len(v), -1, -1), normals], -1)
        attrs, covered, depth = tensor_raster.gbuffer(v, faces, attrs, list(cameras))
        albedo = attrs[..., :3]
        n = torch.nn.functional.normalize(attrs[..., 3:], dim=-1)
        rgb = torch.stack([_shade(albedo[k], n[k], c, shading)
                           for k, c in enumerate(cameras)])
        alpha = covered.float()[..., None]
        bg = torch.as_tensor(background, dtype=torch.float32, device=rgb.device)
        rgb = rgb * alpha + bg * (1 - alpha)
        z = torch.where(covered, depth, torch.zeros_like(depth))
        return Rendered(rgb.permute(0, 3, 1, 2).clamp(0, 1), alpha[..., 0], z)

    def reference(self, size: int) -> dict:
        """The reference view (frame 0 from the canonical camera) as preprocessing leaves it:
        rgb (3, S, S) on white, mask (S, S), relative inverse depth (S, S, larger = nearer,
        as the depth estimator gives)."""
        r = self.render(canonical_camera(size), 0.0)
        inverse = torch.where(r.alpha > 0, 1.0 / r.depth.clamp(min=1e-6), 0.0)
        return {"rgb": r.rgb.cpu(), "mask": r.alpha.cpu(), "depth": inverse.cpu()}

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


def _vertex_normals(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """`geometry.vertex_normals` on tensors: area-weighted unit normals (B, N, 3)."""
    a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
    fn = torch.linalg.cross(b - a, c - a)  # twice the area long: area weighting for free
    out = torch.zeros_like(v)
    for k in range(3):
        out.index_add_(1, faces[:, k], fn)
    length = out.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], device=v.device).expand_as(out)
    return torch.where(length > 1e-12, out / length.clamp(min=1e-12), up)


def _shade(albedo: torch.Tensor, normal: torch.Tensor, camera: Camera,
           shading: Shading) -> torch.Tensor:
    """`field.render.Renderer`'s shading of surface points (H, W, 3)."""
    if shading.mode == "albedo":
        return albedo
    if shading.mode == "normals":
        return (normal + 1) / 2
    h, w = albedo.shape[:2]
    dev = albedo.device
    origin, direction = camera_rays(camera, dev)
    if shading.light is not None:
        light = torch.as_tensor(shading.light, dtype=torch.float32, device=dev).expand(h * w, 3)
    elif shading.light_offset is not None:
        offset = torch.as_tensor(shading.light_offset, dtype=torch.float32, device=dev)
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
