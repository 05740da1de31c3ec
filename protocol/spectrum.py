"""Motion as a spectrum: per-vertex trajectories as Fourier terms, loops and motion edits.

A clip's motion is its displacement from the rest pose, D[f] = frames[f] - vertices. A clip that
loops (metadata "loop": frame F would equal frame 0) is one period of a periodic signal, so its
displacement is exactly a sum of Fourier terms (Generative Image Dynamics writes motion the same
way, with its K = 16 lowest terms):

    d(t) = Re( sum_k c_k exp(2 pi i k t / F) ),   t in frames, k = 0..K

`terms` gives the c_k (complex, per vertex and axis; c_0 is the mean offset), `synthesize`
evaluates them at any time. Each edit takes an AnimatedMesh and returns a new one, the edit
appended to metadata["edits"]:

- `close_loop`: a clip that does not loop becomes one that does (choose the period, average
  its whole cycles into one, spread the jump at the seam smoothly over the frames beside it);
- `low_pass`: keep the K lowest terms;
- `scale_amplitude`: global, per term (band), weighted per vertex (a vertex group);
- `reverse`, and `retime`: speed, frame count and fps; a loop keeps whole cycles per clip and
  is resampled by its Fourier series, so it stays closed.

`edit` chains them in that order, checking every argument before doing any work.
numpy only: the Blender extension bundles this package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import limits
from .errors import InvalidRequestError
from .mesh import AnimatedMesh

MIN_LOOP_FRAMES = 4  # a period needs 3 frames and the seam one more to be judged
BLEND_FRACTION = 0.25  # of the period, on each side of the seam


# -- the spectrum -----------------------------------------------------------------------------
def displacements(mesh: AnimatedMesh) -> np.ndarray:
    """(F, N, 3) float32: each frame's offset from the rest pose."""
    return mesh.frames - mesh.vertices[None]


def is_loop(mesh: AnimatedMesh) -> bool:
    return mesh.metadata.get("loop") is True


def max_terms(frames: int) -> int:
    """The most Fourier terms (besides the mean) that `frames` samples of one period hold."""
    return min(limits.MAX_MOTION_TERMS, max(0, (frames - 1) // 2))


def check_terms(k: int, frames: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidRequestError(f"terms must be a whole number, got {k!r}")
    k = int(k)
    most = max_terms(frames)
    if not 1 <= k <= most:
        why = (f"at most {limits.MAX_MOTION_TERMS}" if k > limits.MAX_MOTION_TERMS
               else f"a loop of {frames} frames holds 1..{most}")
        if most < 1:
            why = f"a loop of {frames} frames is too short for any"
        raise InvalidRequestError(f"{k} Fourier terms is beyond this clip: {why}",
                                  hint="use fewer terms, or a clip with more frames")
    return k


def apply_in_time(matrix: np.ndarray, d: np.ndarray) -> np.ndarray:
    """A linear map in time, (n, F) on a clip (F, N, 3) -> (n, N, 3) float32. Every edit in
    time is one such small matrix: one matrix product over all vertices, which BLAS does far
    faster than FFTs along the frame axis."""
    flat = d.reshape(d.shape[0], -1)
    return (np.asarray(matrix, np.float32) @ flat).reshape(matrix.shape[0], *d.shape[1:])


def terms_matrix(frames: int, k: int) -> np.ndarray:
    """(k + 1, frames) complex: samples of one period -> the one-sided Fourier terms 0..k."""
    x = np.fft.rfft(np.eye(frames), axis=0)[: k + 1] * (2.0 / frames)
    x[0] *= 0.5
    return x


def terms(d: np.ndarray, k: int | None = None) -> np.ndarray:
    """(k + 1, N, 3) complex64 one-sided Fourier terms of a looping displacement clip (F, N, 3);
    term 0 is the mean. Default k: all that F frames hold (at most MAX_MOTION_TERMS)."""
    f = d.shape[0]
    k = max_terms(f) if k is None else check_terms(k, f)
    t = terms_matrix(f, k)
    return (apply_in_time(t.real, d) + 1j * apply_in_time(t.imag, d)).astype(np.complex64)


def synthesize(c: np.ndarray, period: float, times) -> np.ndarray:
    """(T, N, 3) float32: the displacement the terms `c` give at `times` (in frames, any real);
    `period` in frames."""
    times = np.asarray(times, np.float64).reshape(-1)
    k = np.arange(c.shape[0])
    phase = 2.0 * np.pi * np.outer(times, k) / float(period)
    basis = np.concatenate([np.cos(phase), -np.sin(phase)], axis=1)
    coef = np.concatenate([c.real, c.imag], axis=0)
    return apply_in_time(basis, coef)


def _spectral_matrix(frames: int, gains: np.ndarray) -> np.ndarray:
    """(frames, frames): a loop's Fourier terms scaled by `gains` (one per rfft bin)."""
    x = np.fft.rfft(np.eye(frames), axis=0) * gains[:, None]
    return np.fft.irfft(x, n=frames, axis=0)


def _resample_matrix(f: int, n: int) -> np.ndarray:
    """(n, f): one period of f samples -> the same period at n samples (trigonometric
    interpolation: exact for motion the f samples hold, and the result is periodic again)."""
    if n == f:
        return np.eye(f)
    x = np.fft.rfft(np.eye(f), axis=0)
    m = min(f, n)
    y = np.zeros((n // 2 + 1, f), x.dtype)
    y[: m // 2 + 1] = x[: m // 2 + 1]
    if m % 2 == 0:  # the top kept bin is a Nyquist bin of the shorter length
        if n > f:
            y[m // 2] *= 0.5  # split between +F/2 and -F/2, which irfft(n) counts twice
        else:
            y[m // 2] = 2.0 * y[m // 2].real  # both halves alias onto n/2 when sampled
    return np.fft.irfft(y, n=n, axis=0) * (n / f)


# -- edits ------------------------------------------------------------------------------------
# Every edit is a linear map in time on the displacements: a small (frames out, frames in)
# matrix, the same for every vertex (the vertex-group weights of an amplitude edit scale one
# part of it per vertex). `edit` multiplies the matrices of its edits into one and applies that
# once, so a chain of edits costs about as much as one.
@dataclass(frozen=True)
class _State:
    frames: int
    fps: float
    loop: bool


@dataclass(frozen=True)
class _Step:
    matrix: np.ndarray  # (n, f)
    entry: dict  # what metadata["edits"] records
    after: _State
    weighted: np.ndarray | None = None  # (n, f): the part that the vertex weights scale


def _state(mesh: AnimatedMesh) -> _State:
    return _State(mesh.num_frames, mesh.fps, is_loop(mesh))


def _require_animation(mesh: AnimatedMesh, what: str, frames: int = 2) -> None:
    if mesh.num_frames < frames:
        raise InvalidRequestError(
            f"{what} needs an animation of at least {frames} frames; this one has "
            f"{mesh.num_frames}", hint="give the .a4d of an animated result")


def _require_loop(s: _State, what: str) -> None:
    if not s.loop:
        raise InvalidRequestError(f"{what} needs a looping clip, and this one does not loop",
                                  hint="close the loop first (--loop; Loop in Blender)")


def with_edit(mesh: AnimatedMesh, frames: np.ndarray, entries: dict | list[dict], *,
              loop: bool, fps: float | None = None) -> AnimatedMesh:
    """`mesh` with new frames (and fps), `entries` appended to metadata["edits"]."""
    md = dict(mesh.metadata)
    new = [entries] if isinstance(entries, dict) else list(entries)
    md["edits"] = [*md.get("edits", []), *new][-limits.MAX_EDITS_RECORDED:]
    md["loop"] = bool(loop)
    return replace(mesh, frames=frames, fps=mesh.fps if fps is None else fps, metadata=md)


def _apply_steps(mesh: AnimatedMesh, steps: list[_Step], *, weights=None,
                 d: np.ndarray | None = None) -> AnimatedMesh:
    if not steps:
        return mesh
    f = mesh.num_frames
    m, part = np.eye(f), None
    for st in steps:
        if st.weighted is not None:
            part = st.weighted @ m
        elif part is not None:
            part = st.matrix @ part
        m = st.matrix @ m
    if part is None and np.all((m == 0) | (m == 1)) and np.all(m.sum(axis=1) == 1):
        frames = mesh.frames[m.argmax(axis=1)]  # frames picked as they are, not rounded
    else:
        d = displacements(mesh) if d is None else d
        frames = apply_in_time(m, d)
        if part is not None:
            frames += apply_in_time(part, d) * weights[None, :, None]
        frames += mesh.vertices[None]
    last = steps[-1].after
    return with_edit(mesh, frames, [st.entry for st in steps], loop=last.loop, fps=last.fps)


def choose_period(d: np.ndarray) -> int:
    """The period (frames) with the smoothest seam. After P frames the clip comes back near frame
    0; the jump left (`_jump_row`) is spread over the blend width b, so the seam costs the
    velocity errors it leaves: |jump| / b, and the mismatch of the velocities leaving frame P
    and frame 0 (past the clip's end: the last velocity carried on by the mean acceleration at
    the clip's two ends, which cancels to third order for a clip that already loops). Ties go
    to the longer period, which keeps more of the clip."""
    f = d.shape[0]
    flat = d.reshape(f, -1)
    lo = max(3, math.ceil(f / 2))
    v0 = flat[1] - flat[0]
    last = flat[f - 1] - flat[f - 2]
    accel = (last - (flat[f - 2] - flat[f - 3]) + (flat[2] - flat[1]) - v0) / 2
    costs = []
    for p in range(f, lo - 1, -1):
        steps_past = p + 2 - f  # how far the velocity leaving frame p lies past the last one
        v = flat[p + 1] - flat[p] if steps_past <= 0 else last + steps_past * accel
        row = _jump_row(f, 0, p)  # 2 or 4 frames: summed directly, not as a product
        jump = sum(row[i] * flat[i] for i in np.flatnonzero(row))
        slope = 0.75 / _blend_width(p)  # smoothstep's steepest slope, on half the jump
        costs.append(float(np.sum(np.square(jump, dtype=np.float64)) * slope ** 2
                           + np.sum(np.square(v - v0, dtype=np.float64))))
    return f - int(np.argmin(costs))


def _jump_row(f: int, start: int, end: int) -> np.ndarray:
    """(f,): the jump of the cycle of frames start..end-1, where it continues (frame end) minus
    where it began. Past the clip's end, the continuation is extrapolated from the last two
    frames and, to cancel that's curvature error, the frame before `start` from the first two:
    the mean of the two jumps is right to third order for a clip that already loops."""
    row = np.zeros(f)
    if end < f:
        row[end] += 1.0
        row[start] -= 1.0
    else:
        row[[end - 1, end - 2, start, start + 1]] += [1.5, -0.5, -1.5, 0.5]
    return row


def _blend_width(p: int) -> int:
    return max(1, min(p // 2, round(p * BLEND_FRACTION)))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _seam_weights(p: int) -> np.ndarray:
    """(p,) weights of the seam's jump: +1/2 at frame 0 fading to 0, 0 in the middle, then
    fading to -1/2 at frame p (= frame 0 of the next cycle); flat at both ends."""
    b = _blend_width(p)
    r = np.arange(p, dtype=np.float64)
    w = np.zeros(p)
    w[:b] = 0.5 * (1.0 - _smoothstep(r[:b] / b))
    w[p - b:] = -0.5 * _smoothstep((r[p - b:] - (p - b)) / b)
    return w


def loop_matrix(f: int, p: int) -> np.ndarray:
    """(p, f): a clip of f frames -> a loop of period p. Its whole cycles averaged into one; the
    mean jump from each cycle's continuation back to its first frame (`_jump_row`) spread half
    on each side of the seam over a quarter period."""
    c = f // p
    avg = np.zeros((p, f))
    jump = np.zeros(f)
    for i in range(c):
        avg[np.arange(p), i * p + np.arange(p)] = 1.0 / c
        jump += _jump_row(f, i * p, (i + 1) * p) / c
    return avg + _seam_weights(p)[:, None] * jump[None]


def _check_period(period, f: int) -> int:
    if isinstance(period, bool) or not isinstance(period, int | np.integer) \
            or not 3 <= period <= f:
        raise InvalidRequestError(f"the loop's period must be a whole number of frames in "
                                  f"3..{f} (the clip's length), got {period!r}")
    return int(period)


def _loop_step(s: _State, d: np.ndarray, period: int | None) -> _Step:
    f = s.frames
    if period is None and s.loop:
        return _Step(np.eye(f), {"edit": "loop", "period": f, "already": True}, s)
    p = choose_period(d) if period is None else _check_period(period, f)
    return _Step(loop_matrix(f, p), {"edit": "loop", "period": p, "cycles": f // p},
                 _State(p, s.fps, True))


def close_loop(mesh: AnimatedMesh, period: int | None = None) -> AnimatedMesh:
    """A looping clip of `period` frames (default: chosen, see `choose_period`; see
    `loop_matrix` for how). A clip that already loops is returned as is (the edit recorded)
    unless a period is given."""
    _require_animation(mesh, "closing the loop", MIN_LOOP_FRAMES)
    d = displacements(mesh)
    return _apply_steps(mesh, [_loop_step(_state(mesh), d, period)], d=d)


def _terms_step(s: _State, k) -> _Step:
    _require_loop(s, "keeping Fourier terms")
    k = check_terms(k, s.frames)
    gains = (np.arange(s.frames // 2 + 1) <= k).astype(np.float64)
    return _Step(_spectral_matrix(s.frames, gains), {"edit": "terms", "terms": k}, s)


def low_pass(mesh: AnimatedMesh, k: int) -> AnimatedMesh:
    """Keep the mean and the k lowest Fourier terms of a looping clip (smoother motion)."""
    _require_animation(mesh, "keeping Fourier terms")
    return _apply_steps(mesh, [_terms_step(_state(mesh), k)])


def _check_amplitude(a, what="amplitude") -> float:
    a = float(a)
    if not (math.isfinite(a) and 0.0 <= a <= limits.MAX_EDIT_AMPLITUDE):
        raise InvalidRequestError(f"{what} must be in 0..{limits.MAX_EDIT_AMPLITUDE:g}, "
                                  f"got {a!r}")
    return a


def _check_bands(bands, f: int) -> dict[int, float]:
    top = f // 2
    out = {}
    for k, g in dict(bands).items():
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= top:
            raise InvalidRequestError(
                f"band {k!r} is beyond this clip: a loop of {f} frames has terms 0..{top} "
                "(term k: k cycles per clip)")
        out[int(k)] = _check_amplitude(g, f"band {k}'s amplitude")
    return out


def _check_weights(weights, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise InvalidRequestError(f"weights must be one per vertex ({n}), got {w.size}")
    if not np.all(np.isfinite(w)) or w.min() < 0.0 or w.max() > 1.0:
        raise InvalidRequestError("weights must be in 0..1 (a vertex group's weights)")
    return w.astype(np.float32)


def _amplitude_step(s: _State, amplitude, bands, weighted: bool) -> _Step:
    a = _check_amplitude(amplitude)
    bands = _check_bands(bands or {}, s.frames)
    f = s.frames
    scaled = a * np.eye(f)
    if bands:
        _require_loop(s, "scaling single Fourier terms")
        gains = np.ones(f // 2 + 1)
        for k, g in bands.items():
            gains[k] = g
        scaled = a * _spectral_matrix(f, gains)
    entry = {"edit": "amplitude", "amplitude": a}
    if bands:
        entry["bands"] = {str(k): g for k, g in bands.items()}
    if weighted:
        entry["weighted"] = True
        return _Step(np.eye(f), entry, s, weighted=scaled - np.eye(f))
    return _Step(scaled, entry, s)


def scale_amplitude(mesh: AnimatedMesh, amplitude: float = 1.0, *, bands=None,
                    weights=None) -> AnimatedMesh:
    """Scale the motion: every displacement by `amplitude`; `bands` {term k: gain} scales single
    Fourier terms (a looping clip); `weights` (one per vertex, 0..1, e.g. a vertex group) fades
    the edit from full (1) to none (0)."""
    _require_animation(mesh, "scaling the motion")
    w = None if weights is None else _check_weights(weights, mesh.num_vertices)
    step = _amplitude_step(_state(mesh), amplitude, bands, w is not None)
    return _apply_steps(mesh, [step], weights=w)


def _reverse_step(s: _State) -> _Step:
    f = s.frames
    order = (-np.arange(f)) % f if s.loop else np.arange(f)[::-1]
    return _Step(np.eye(f)[order], {"edit": "reverse"}, s)


def reverse(mesh: AnimatedMesh) -> AnimatedMesh:
    """Play the motion backwards; a loop keeps frame 0 where it is."""
    return _apply_steps(mesh, [_reverse_step(_state(mesh))])


def _retime_step(s: _State, speed, frames, fps, vertices: int) -> _Step:
    speed = float(speed)
    if not (math.isfinite(speed) and limits.MIN_EDIT_SPEED <= speed <= limits.MAX_EDIT_SPEED):
        raise InvalidRequestError(f"speed must be in {limits.MIN_EDIT_SPEED:g}.."
                                  f"{limits.MAX_EDIT_SPEED:g} (1: unchanged), got {speed!r}")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int | np.integer)
                               or not 1 <= frames <= limits.MAX_FRAMES):
        raise InvalidRequestError(f"frames must be a whole number in 1..{limits.MAX_FRAMES}, "
                                  f"got {frames!r}")
    fps = s.fps if fps is None else float(fps)
    if not (math.isfinite(fps) and 0.0 < fps <= limits.MAX_FPS):
        raise InvalidRequestError(f"fps must be in (0, {limits.MAX_FPS:g}], got {fps!r}")
    f = s.frames
    rate = speed * s.fps / fps  # source frames per output frame
    if s.loop:
        if frames is None:  # the same duration's worth of cycles, rounded, sets the length
            cycles = max(1, round(speed))
            n = max(1, round(cycles * f / rate))
        else:
            n = int(frames)
            cycles = max(1, round(n * rate / f))
        rate = cycles * f / n
        _check_size(n, vertices)
        # one cycle at n samples; output frame j lies at j * cycles / n of it
        matrix = _resample_matrix(f, n)[(np.arange(n) * cycles) % n]
    else:
        cycles = None
        n = int(math.floor((f - 1) / rate + 1e-9)) + 1 if frames is None else int(frames)
        _check_size(n, vertices)
        t = np.minimum(np.arange(n) * rate, f - 1)
        i0 = np.floor(t).astype(np.int64)
        i1 = np.minimum(i0 + 1, f - 1)
        matrix = np.zeros((n, f))
        np.add.at(matrix, (np.arange(n), i0), 1.0 - (t - i0))
        np.add.at(matrix, (np.arange(n), i1), t - i0)
    entry = {"edit": "retime", "speed": rate * fps / s.fps, "frames": n, "fps": fps}
    if cycles is not None:
        entry["cycles"] = cycles
    return _Step(matrix, entry, _State(n, fps, s.loop))


def retime(mesh: AnimatedMesh, *, speed: float = 1.0, frames: int | None = None,
           fps: float | None = None) -> AnimatedMesh:
    """Play the motion `speed` times as fast, as `frames` frames at `fps` (defaults: the clip's).

    A loop stays a loop: the clip holds a whole number of cycles, so speed is rounded to fit
    when `frames` is given, and without it the frame count is chosen (speed 2: the same frames,
    two cycles; speed 0.5: twice the frames); it is sampled by its Fourier series. A clip that
    does not loop is played once (or held on its last frame), linearly interpolated."""
    _require_animation(mesh, "changing speed or frames", 1)
    return _apply_steps(mesh, [_retime_step(_state(mesh), speed, frames, fps,
                                            mesh.num_vertices)])


def _check_size(frames: int, vertices: int) -> None:
    if frames * vertices > limits.MAX_FRAME_VERTICES:
        raise InvalidRequestError(
            f"{frames} frames x {vertices} vertices is more than the limit of "
            f"{limits.MAX_FRAME_VERTICES} vertex positions", hint="ask for fewer frames")


def edit(mesh: AnimatedMesh, *, loop: bool = False, period: int | None = None,
         terms: int | None = None, amplitude: float = 1.0, bands=None, weights=None,
         reverse_: bool = False, speed: float = 1.0, frames: int | None = None,
         fps: float | None = None) -> AnimatedMesh:
    """Every edit in one call, in this order: close the loop, keep `terms` Fourier terms, scale
    the amplitude, reverse, retime; applied as one matrix. Every argument is checked before the
    frames are touched. No edit asked for: `mesh` itself."""
    _require_animation(mesh, "editing the motion", MIN_LOOP_FRAMES if loop else 2)
    if period is not None and not loop:
        raise InvalidRequestError("a period is for closing the loop", hint="add --loop")
    w = None if weights is None else _check_weights(weights, mesh.num_vertices)
    s = _state(mesh)
    d = displacements(mesh) if loop else None
    steps = []
    if loop:
        steps.append(_loop_step(s, d, period))
    if terms is not None:
        steps.append(_terms_step(steps[-1].after if steps else s, terms))
    if amplitude != 1.0 or bands or w is not None:
        steps.append(_amplitude_step(steps[-1].after if steps else s, amplitude, bands,
                                     w is not None))
    if reverse_:
        steps.append(_reverse_step(steps[-1].after if steps else s))
    now = steps[-1].after if steps else s
    step = _retime_step(now, speed, frames, fps, mesh.num_vertices)
    if speed != 1.0 or frames is not None or step.after.fps != now.fps:
        steps.append(step)
    return _apply_steps(mesh, steps, weights=w, d=d)
