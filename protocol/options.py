"""JobOptions: what an artist asks for, shared by the CLI, the wire and every pipeline.

Defaults are the preview preset's. Ranges are checked by `validate()`, which raises
InvalidRequestError naming the field, the value and the allowed range.
"""

from __future__ import annotations

import math

import msgspec

from . import limits
from .errors import InvalidRequestError

PRESETS = ("preview", "fast", "paper")
MOTION_MODES = ("sway", "bounce", "breathe", "twist", "nod")


class JobOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prompt: str = ""
    preset: str = "preview"
    frames: int = 24
    fps: float = 24.0
    seed: int = 0
    # Motion: None picks modes from the prompt's words.
    motion: list[str] | None = None
    amplitude: float = 1.0
    speed: float = 1.0  # cycles per second, rounded to whole cycles per clip so it loops
    # GPU presets: a motion periodic over the clip (frame F would equal frame 0), as
    # `motion_terms` Fourier terms per point. Preview clips always loop.
    loop: bool = False
    motion_terms: int = 4
    # Placement: the reference camera (protocol.camera JSON) and the world point the object's
    # centre stands at the depth of. None: canonical front camera / world origin.
    camera: dict | None = None
    target: list[float] | None = None
    # Preview geometry
    thickness: float = 1.0
    mesh_resolution: int = 160

    def validate(self) -> JobOptions:
        if len(self.prompt) > limits.MAX_PROMPT_CHARS:
            _bad("prompt", f"{len(self.prompt)} characters", f"at most {limits.MAX_PROMPT_CHARS}")
        if self.preset not in PRESETS:
            _bad("preset", repr(self.preset), f"one of {', '.join(PRESETS)}")
        if not (1 <= self.frames <= limits.MAX_FRAMES):
            _bad("frames", self.frames, f"1..{limits.MAX_FRAMES}")
        if not (math.isfinite(self.fps) and 0 < self.fps <= limits.MAX_FPS):
            _bad("fps", self.fps, f"(0, {limits.MAX_FPS}]")
        if not (0 <= self.seed < 2**31):
            _bad("seed", self.seed, "0..2^31-1")
        if self.motion is not None:
            unknown = [m for m in self.motion if m not in MOTION_MODES]
            if unknown or not self.motion or len(self.motion) > len(MOTION_MODES):
                _bad("motion", self.motion, f"a list from {', '.join(MOTION_MODES)}")
        if not (math.isfinite(self.amplitude) and 0.0 <= self.amplitude <= 3.0):
            _bad("amplitude", self.amplitude, "0..3")
        if not (math.isfinite(self.speed) and 0.0 < self.speed <= 10.0):
            _bad("speed", self.speed, "(0, 10] cycles per second")
        if not (1 <= self.motion_terms <= limits.MAX_MOTION_TERMS):
            _bad("motion_terms", self.motion_terms, f"1..{limits.MAX_MOTION_TERMS}")
        if self.camera is not None:
            size = len(msgspec.json.encode(self.camera))
            if size > limits.MAX_CAMERA_JSON_BYTES:
                _bad("camera", f"{size} bytes of JSON", f"at most {limits.MAX_CAMERA_JSON_BYTES}")
        if self.target is not None and (
            len(self.target) != 3 or not all(math.isfinite(x) for x in self.target)
        ):
            _bad("target", self.target, "three finite numbers x, y, z")
        if not (math.isfinite(self.thickness) and 0.05 <= self.thickness <= 3.0):
            _bad("thickness", self.thickness, "0.05..3")
        if not (32 <= self.mesh_resolution <= 512):
            _bad("mesh_resolution", self.mesh_resolution, "32..512")
        return self


def _bad(name, value, allowed):
    text = str(value)  # never echo a huge value back
    if len(text) > 80:
        text = text[:80] + f"... ({len(text)} characters)"
    raise InvalidRequestError(f"{name} is {text}; allowed: {allowed}")
