"""Interactive dynamics: poke a result and watch it respond (Generative Image Dynamics' modal
formulation, after Davis et al.'s image-space modal bases, on mesh vertices).

A looping clip's Fourier terms are its modes: term k (k cycles per clip) has the shape c_k
(complex, per vertex and axis) and the angular frequency w_k = 2 pi k fps / F. The shapes are
scaled together so that the largest moves by 1 (their relative strengths, which say how freely
the object moves in each, are kept). A force f at vertex p excites mode k by its shape there,
e_k = conj(c_k[p]) . f, as an impulse that gives the mode a peak of about e_k; each mode then
rings as a damped oscillator,

    q_k(t) = e_k (w_k / wd_k) exp(-z w_k t) sin(wd_k t),   wd_k = w_k sqrt(1 - z^2),

and the response is the sum, u(t) = Re( sum_k c_k q_k(t) ). So the response is linear in the
force, no force leaves the rest pose, it decays at the damping ratio z, a mode that does not move
at p is not excited, and the poked vertex starts along the force. Several pokes add up, each from
its own frame. A clip that does not loop is closed first (spectrum.close_loop) to find its modes.

The damping ratio is a parameter: a loop's spectrum has one exact line per term, with no width
to read a damping from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import limits, spectrum
from .errors import InvalidRequestError
from .mesh import AnimatedMesh

DEFAULT_DAMPING = 0.1


@dataclass(frozen=True)
class Poke:
    vertex: int
    force: tuple[float, float, float]  # object frame, object units
    frame: float = 0.0  # when, in frames of the response clip


@dataclass(frozen=True)
class Modes:
    parts: np.ndarray  # (2, K, N, 3) float32: the shapes' real and imaginary parts; max |c| = 1
    omega: np.ndarray  # (K,) angular frequencies, radians per second
    damping: float

    @property
    def shapes(self) -> np.ndarray:
        """(K, N, 3) complex: the mode shapes."""
        return self.parts[0] + 1j * self.parts[1]

    @property
    def num_vertices(self) -> int:
        return int(self.parts.shape[2])


def _check_damping(z) -> float:
    z = float(z)
    if not (math.isfinite(z) and 0.0 <= z <= limits.MAX_DAMPING):
        raise InvalidRequestError(f"damping must be a ratio in 0..{limits.MAX_DAMPING:g} "
                                  f"(0: rings forever), got {z!r}")
    return z


def modes(mesh: AnimatedMesh, *, terms: int | None = None,
          damping: float = DEFAULT_DAMPING) -> Modes:
    """The modes of a result's motion (its lowest `terms` Fourier terms; default all it holds)."""
    z = _check_damping(damping)
    f = mesh.num_frames
    if f < spectrum.MIN_LOOP_FRAMES:
        raise InvalidRequestError(
            f"poking needs an animation of at least {spectrum.MIN_LOOP_FRAMES} frames to take "
            f"its modes from; this one has {f}", hint="give the .a4d of an animated result")
    d = spectrum.displacements(mesh)
    period = f if spectrum.is_loop(mesh) else spectrum.choose_period(d)
    k = spectrum.max_terms(period) if terms is None else spectrum.check_terms(terms, period)
    t = spectrum.terms_matrix(period, k)[1:]
    if not spectrum.is_loop(mesh):
        t = t @ spectrum.loop_matrix(f, period)
    parts = spectrum.apply_in_time(np.concatenate([t.real, t.imag]), d)
    parts = parts.reshape(2, len(t), *d.shape[1:])
    size2 = np.einsum("rknx,rknx->kn", parts, parts)
    peak = math.sqrt(float(size2.max())) if size2.size else 0.0
    scale = float(np.abs(mesh.vertices).max()) or 1.0
    if not peak > 1e-6 * scale:
        raise InvalidRequestError("this clip does not move, so it has no modes to poke",
                                  hint="poke an animated result")
    parts *= np.float32(1.0 / peak)
    k = np.arange(1, len(t) + 1)
    return Modes(parts=parts, omega=2.0 * np.pi * k * mesh.fps / period, damping=z)


def check_pokes(pokes, vertices: int, frames: int) -> list[Poke]:
    pokes = list(pokes)
    if not pokes:
        raise InvalidRequestError("no poke given: name a vertex and a force")
    if len(pokes) > limits.MAX_POKES:
        raise InvalidRequestError(f"{len(pokes)} pokes is more than the limit of "
                                  f"{limits.MAX_POKES}")
    out = []
    for p in pokes:
        v = p.vertex
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v < vertices:
            raise InvalidRequestError(f"vertex {v!r} is out of range: the mesh has {vertices} "
                                      f"vertices (0..{vertices - 1})")
        force = np.asarray(p.force, np.float64)
        if force.shape != (3,):
            raise InvalidRequestError(f"a force is three numbers X,Y,Z, got {p.force!r}")
        if not np.all(np.isfinite(force)):
            raise InvalidRequestError(f"the force {tuple(p.force)} is not finite",
                                      hint="give three ordinary numbers")
        if np.linalg.norm(force) > limits.MAX_POKE_FORCE:
            raise InvalidRequestError(f"the force's size {np.linalg.norm(force):g} is more than "
                                      f"the limit of {limits.MAX_POKE_FORCE:g}")
        t = float(p.frame)
        if not (math.isfinite(t) and 0.0 <= t < frames):
            raise InvalidRequestError(f"a poke's frame must be in 0..{frames - 1} (the response "
                                      f"clip's frames), got {p.frame!r}")
        out.append(Poke(int(v), tuple(float(x) for x in force), t))
    return out


def respond(m: Modes, pokes, frames: int, fps: float) -> np.ndarray:
    """(frames, N, 3) float32: the displacement the pokes cause, frame j at time j / fps."""
    pokes = check_pokes(pokes, m.num_vertices, frames)
    t = np.arange(frames, dtype=np.float64) / fps
    w = m.omega[None]
    wd = w * math.sqrt(1.0 - m.damping ** 2)
    q = np.zeros((frames, len(m.omega)), np.complex128)
    for p in pokes:
        at = m.parts[:, :, p.vertex, :].astype(np.float64) @ np.asarray(p.force)
        e = at[0] - 1j * at[1]  # conj(shape at the vertex) . force
        tau = (t - p.frame / fps)[:, None]
        ring = (w / wd) * np.exp(-m.damping * w * np.maximum(tau, 0)) * np.sin(wd * tau)
        q += np.where(tau >= 0, ring, 0.0) * e[None]
    # Re(sum_k c_k q_k) = sum_k Re(c_k) Re(q_k) - Im(c_k) Im(q_k): one real matrix product.
    basis = np.concatenate([q.real, -q.imag], axis=1)
    return spectrum.apply_in_time(basis, m.parts.reshape(-1, *m.parts.shape[2:]))


def poke(mesh: AnimatedMesh, pokes, *, frames: int | None = None, fps: float | None = None,
         damping: float = DEFAULT_DAMPING, terms: int | None = None) -> AnimatedMesh:
    """The response clip: the rest pose moved by the pokes' response, `frames` frames (default:
    the clip's) at `fps` (default: the clip's). Arguments are checked before any work."""
    n = mesh.num_frames if frames is None else frames
    if isinstance(n, bool) or not isinstance(n, int | np.integer) \
            or not 1 <= n <= limits.MAX_FRAMES:
        raise InvalidRequestError(f"frames must be a whole number in 1..{limits.MAX_FRAMES}, "
                                  f"got {frames!r}")
    n = int(n)
    rate = mesh.fps if fps is None else float(fps)
    if not (math.isfinite(rate) and 0.0 < rate <= limits.MAX_FPS):
        raise InvalidRequestError(f"fps must be in (0, {limits.MAX_FPS:g}], got {fps!r}")
    spectrum._check_size(n, mesh.num_vertices)
    pokes = check_pokes(pokes, mesh.num_vertices, n)
    _check_damping(damping)
    m = modes(mesh, terms=terms, damping=damping)
    u = respond(m, pokes, n, rate)
    entry = {"edit": "poke", "damping": m.damping, "terms": len(m.omega), "frames": n,
             "pokes": [{"vertex": p.vertex, "force": list(p.force), "frame": p.frame}
                       for p in pokes]}
    return spectrum.with_edit(mesh, mesh.vertices[None] + u, entry, loop=False, fps=rate)
