"""Preview motion: a few low-frequency oscillation modes rooted at the base of the object.

Every mode is zero at phase 0, so frame 0 is the rest pose (the one that matches the image).
Each mode is a smooth deformation whose strength grows with height above the root (the lowest
point of the object), so the base stays planted. Every mode oscillates a whole number of cycles
over the clip, so the motion loops exactly: frame F would equal frame 0.

Object frame (Blender axes): X is across the reference view, Y is depth (away from the reference
camera), Z is up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from animate4d.protocol.errors import InvalidRequestError
from animate4d.protocol.options import MOTION_MODES as MODES

# Words in a prompt that choose modes; matched on word stems.
_WORDS = {
    "sway": ("sway", "swing", "rock", "wave", "waving", "wiggl", "wobbl", "shak", "lean", "bend"),
    "bounce": ("bounc", "jump", "hop", "bob", "squash", "stretch", "spring"),
    "breathe": ("breath", "pulse", "puls", "inflat", "throb", "idle", "sleep", "rest"),
    "twist": ("twist", "turn", "spin", "rotat", "look", "swivel"),
    "nod": ("nod", "bow", "peck", "tilt"),
}
_COMBOS = {
    "danc": ("sway", "bounce", "twist"),
    "walk": ("sway", "bounce"),
    "run": ("bounce", "sway"),
    "wind": ("sway",),
    "fly": ("bounce", "nod"),
    "flap": ("bounce", "nod"),
    "talk": ("nod", "breathe"),
    "sing": ("nod", "breathe"),
    "laugh": ("bounce", "breathe"),
}
DEFAULT_MODES = ("sway", "breathe")


def modes_from_prompt(prompt: str) -> tuple[str, ...]:
    """Motion modes named (or implied) by words in the prompt, in a stable order; may be empty."""
    found: set[str] = set()
    for word in re.findall(r"[a-z]+", prompt.lower()):
        for mode, stems in _WORDS.items():
            if any(word.startswith(s) for s in stems):
                found.add(mode)
        for stem, modes in _COMBOS.items():
            if word.startswith(stem):
                found.update(modes)
    return tuple(m for m in MODES if m in found)


def parse_modes(text: str) -> tuple[str, ...]:
    """'sway,bounce' -> ('sway', 'bounce'); unknown names are an error that lists the known."""
    names = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in MODES]
    if bad or not names:
        raise InvalidRequestError(
            f"unknown motion mode(s) {bad or [text]}; choose from {', '.join(MODES)}"
        )
    return names


@dataclass(frozen=True)
class MotionSpec:
    """Modes to apply, their strength (1 = the default look) and whole cycles per clip."""

    modes: tuple[str, ...]
    amplitude: float = 1.0
    cycles: int = 1


def cycles_for(speed_hz: float, frames: int, fps: float) -> int:
    """Whole cycles over the clip closest to `speed_hz` (at least one, so the loop closes)."""
    return max(1, round(speed_hz * frames / fps))


def spec_for(options) -> tuple[MotionSpec, str]:
    """The motion job options ask for, and what chose its modes: 'options', 'prompt' or
    'default'."""
    if options.motion is not None:
        modes, chosen_by = tuple(options.motion), "options"
    else:
        modes, chosen_by = modes_from_prompt(options.prompt), "prompt"
        if not modes:
            modes, chosen_by = DEFAULT_MODES, "default"
    cycles = cycles_for(options.speed, options.frames, options.fps)
    return MotionSpec(modes=modes, amplitude=options.amplitude, cycles=cycles), chosen_by


def describe(spec: MotionSpec, chosen_by: str, options) -> dict:
    """The result's `motion` metadata (protocol/README.md)."""
    return {"modes": list(spec.modes), "chosen_by": chosen_by, "amplitude": options.amplitude,
            "cycles": spec.cycles, "speed_hz": spec.cycles * options.fps / options.frames}


@dataclass(frozen=True)
class _Rig:
    root_z: float
    height: float
    axis_xy: np.ndarray  # (2,) vertical axis through the middle of the base


Rig = _Rig  # mesh mode places its own (a root found on the mesh or pinned by the artist)


def rig_for(vertices: np.ndarray) -> _Rig:
    """Root height, body height and vertical axis of a rest pose."""
    z = vertices[:, 2]
    z0, z1 = float(z.min()), float(z.max())
    height = max(z1 - z0, 1e-6)
    base = vertices[z < z0 + 0.15 * height]
    return _Rig(z0, height, base[:, :2].mean(axis=0))


def animate(vertices: np.ndarray, spec: MotionSpec, frames: int) -> np.ndarray:
    """(F, N, 3) float32 positions of frames k = 0..F-1, i.e. pose(t = k / F)."""
    v = np.asarray(vertices, np.float64)
    rig = rig_for(v)
    out = np.empty((frames, len(v), 3), np.float32)
    for k in range(frames):
        out[k] = pose(v, spec, k / frames, rig)
    return out


def pose(vertices: np.ndarray, spec: MotionSpec, t: float, rig: _Rig | None = None,
         weights: np.ndarray | None = None) -> np.ndarray:
    """Positions at loop fraction `t` (0 and 1 give the same pose, the rest pose). `weights`:
    each vertex's share of the motion in [0, 1], 0 at the root, in place of its height
    fraction (mesh mode computes them through the mesh's volume)."""
    v = np.asarray(vertices, np.float64)
    rig = rig or rig_for(v)
    s = weights if weights is not None else np.clip((v[:, 2] - rig.root_z) / rig.height,
                                                    0.0, 1.0)  # height fraction, 0 at root
    phase = 2.0 * math.pi * spec.cycles * t
    p = v
    for mode in spec.modes:
        p = _APPLY[mode](p, s, rig, spec.amplitude, phase)
    return p


def _sway(p, s, rig, amp, phase):
    return _bend(p, s, rig, 0.22 * amp * math.sin(phase), axis="y")


def _nod(p, s, rig, amp, phase):
    return _bend(p, s, rig, 0.15 * amp * math.sin(phase), axis="x")


def _bend(p, s, rig, angle, axis):
    """Rotate each point about the root by `angle * s`: a bend that grows up the body."""
    a = angle * s
    c, sn = np.cos(a), np.sin(a)
    q = p.copy()
    lateral = 0 if axis == "y" else 1  # x bends about the y axis, y bends about the x axis
    dl = p[:, lateral] - rig.axis_xy[lateral]
    dz = p[:, 2] - rig.root_z
    q[:, lateral] = rig.axis_xy[lateral] + c * dl + sn * dz
    q[:, 2] = rig.root_z - sn * dl + c * dz
    return q


def _bounce(p, s, rig, amp, phase):
    """Squash and stretch about the root, keeping volume (at twice the base rate)."""
    k = 1.0 + 0.10 * amp * math.sin(2.0 * phase)
    q = p.copy()
    q[:, 2] = rig.root_z + (p[:, 2] - rig.root_z) * k
    q[:, :2] = rig.axis_xy + (p[:, :2] - rig.axis_xy) / math.sqrt(k)
    return q


def _breathe(p, s, rig, amp, phase):
    """Swell of the middle of the body, none at the root and the top."""
    k = 1.0 + 0.06 * amp * math.sin(phase) * (4.0 * s * (1.0 - s))
    q = p.copy()
    q[:, :2] = rig.axis_xy + (p[:, :2] - rig.axis_xy) * k[:, None]
    return q


def _twist(p, s, rig, amp, phase):
    """Turn about the vertical axis, growing with height."""
    a = 0.35 * amp * math.sin(phase) * s
    c, sn = np.cos(a), np.sin(a)
    d = p[:, :2] - rig.axis_xy
    q = p.copy()
    q[:, 0] = rig.axis_xy[0] + c * d[:, 0] - sn * d[:, 1]
    q[:, 1] = rig.axis_xy[1] + sn * d[:, 0] + c * d[:, 1]
    return q


_APPLY = {"sway": _sway, "bounce": _bounce, "breathe": _breathe, "twist": _twist, "nod": _nod}
