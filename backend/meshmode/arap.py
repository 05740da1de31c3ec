"""The as-rigid-as-possible energy of the artist's vertices carried by the motion field
(Animate3D's ARAP term), for the GPU presets' mesh mode.

Energy (Sorkine and Alexa 2007, uniform weights, which unlike cotangent weights are never
negative on a poor triangulation): for each vertex i with one-ring N(i), rest positions c and
moved positions p,

    E_i = min over rotations R of  sum_{j in N(i)} |(p_j - p_i) - R (c_j - c_i)|^2

summed over the vertices and divided by the rings' squared rest lengths: dimensionless, zero
for any rigid motion, about s^2 for a uniform stretch by 1 + s. The best R_i (from the SVD of
the ring's covariance) is held fixed for the gradient: at a minimum over R, the gradient with
R fixed is the gradient of the minimum.

Where a vertex is at time t: the motion field is a backward warp (x + D(x, t) is the
canonical point seen at x), so the vertex c is at the x solving x + D(x, t) = c
(`field.extract.forward_warp`, Newton, no gradient). By the implicit function theorem
dx = -J^-1 dD(x, t), J the warp's Jacobian: one more Newton step from that solution, with J
held fixed, has this gradient and the solution's value.
"""

from __future__ import annotations

import numpy as np
import torch

from ..field.extract import forward_warp
from ..field.fields import warp_jacobian

NEWTON_ITERATIONS = 8  # the motion moves little between steps: a few Newton steps converge
JACOBIAN_EPS = 1e-3  # object-frame units, as forward_warp's
# A carried vertex whose residual is above this (object frame: a tenth of a voxel of the
# 256^3 export grid) is not where the motion takes it: its rings are left out of the energy,
# and the export fills it from its neighbours.
CONVERGED = 2e-3
# The share of the volume below which the fold energy starts: a bend or a twist keeps about
# all of it; a fold turns it negative.
FOLD_FLOOR = 0.5


def one_rings(faces: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each vertex's neighbours through the faces' edges, padded: ids (n, K) and a mask
    (n, K) of the real ones (K the largest valence; a vertex in no face has none)."""
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.sort(np.concatenate([e, e[:, ::-1]]), axis=1), axis=0)
    e = np.concatenate([e, e[:, ::-1]])
    e = e[np.lexsort((e[:, 1], e[:, 0]))]
    counts = np.bincount(e[:, 0], minlength=n)
    k = max(int(counts.max(initial=0)), 1)
    slot = np.arange(len(e)) - np.repeat(np.cumsum(counts) - counts, counts)
    ids = np.zeros((n, k), np.int64)
    mask = np.zeros((n, k), bool)
    ids[e[:, 0], slot] = e[:, 1]
    mask[e[:, 0], slot] = True
    return torch.as_tensor(ids), torch.as_tensor(mask)


def arap_energy(rest: torch.Tensor, moved: torch.Tensor, centres: torch.Tensor,
                rings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The normalised ARAP energy of the one-rings of `centres` (C,), their neighbours
    `rings` (C, K) under `mask` (C, K), vertices at `rest` and `moved` (N, 3)."""
    m = mask.to(rest.dtype)[..., None]
    e0 = (rest[rings] - rest[centres, None]) * m  # (C, K, 3)
    e1 = (moved[rings] - moved[centres, None]) * m
    with torch.no_grad():
        cov = e0.transpose(1, 2) @ e1  # sum_k e0 e1^T: (C, 3, 3)
        u, _, vh = torch.linalg.svd(cov.double())
        flip = torch.ones(len(cov), 3, dtype=u.dtype, device=u.device)
        flip[:, 2] = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
        rot = (vh.transpose(1, 2) * flip[:, None]) @ u.transpose(1, 2)  # R = V diag U^T
    residual = e1 - e0 @ rot.to(e0.dtype).transpose(1, 2)
    return residual.square().sum() / e0.square().sum().clamp(min=1e-20)


def carried(motion, rest: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Where the rest points (n, 3) are at times t (n,): the inverse of the backward warp,
    with the implicit gradient to the motion field (module docstring); and, without
    gradients, Newton's solution and its residual."""
    with torch.no_grad():
        x, residual = forward_warp(motion, rest, t, iterations=NEWTON_ITERATIONS,
                                   eps=JACOBIAN_EPS)
        jac = warp_jacobian(motion, x, t, JACOBIAN_EPS)
    r = x + motion.displacement(x, t) - rest
    step = torch.linalg.solve(jac, r.unsqueeze(-1)).squeeze(-1)
    return x - torch.nan_to_num(step), x, residual


def fold_energy(motion, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean of max(FOLD_FLOOR - det J, 0)^2 over the points x (n, 3) at times t (n,), J the
    backward warp's Jacobian there: zero where the warp keeps at least that share of the
    volume and its orientation, growing where it folds (det J <= 0), where no inverse exists
    and the vertices cannot be carried."""
    det = torch.linalg.det(warp_jacobian(motion, x, t, JACOBIAN_EPS))
    return torch.relu(FOLD_FLOOR - det).square().mean()


class ArapTerm:
    """The ARAP energy (and the pinned vertices' displacement) of the mesh's vertices at
    random times, on `centres` random one-rings per step."""

    def __init__(self, rest: np.ndarray, faces: np.ndarray, device,
                 pin: np.ndarray | None = None):
        self.rest = torch.as_tensor(rest, dtype=torch.float32, device=device)
        rings, mask = one_rings(faces, len(rest))
        self.rings, self.mask = rings.to(device), mask.to(device)
        self.has_ring = torch.as_tensor(mask.any(1).numpy().nonzero()[0], device=device)
        self.pin = None if pin is None or len(pin) == 0 else \
            torch.as_tensor(np.asarray(pin, np.int64), device=device)

    def __call__(self, motion, generator: torch.Generator, centres: int,
                 times: int) -> dict[str, torch.Tensor]:
        """{"arap": the mean energy over `times` random times of the rings whose vertices
        were carried (Newton converged), "fold": the fold energy at the carried vertices,
        "pin": the pinned vertices' mean squared displacement (when there is a pin)},
        unweighted."""
        dev = self.rest.device
        pick = torch.randperm(len(self.has_ring), generator=generator)[:centres]
        c = self.has_ring[pick.to(dev)]
        parts = [c, self.rings[c][self.mask[c]]]
        if self.pin is not None:
            parts.append(self.pin)
        used, where = torch.unique(torch.cat(parts), return_inverse=True)
        n = len(used)
        t = torch.rand(times, generator=generator).to(dev).repeat_interleave(n)
        moved, at, residual = carried(motion, self.rest[used].repeat(times, 1), t)
        moved = moved.reshape(times, n, 3)
        ok = (residual <= CONVERGED).reshape(times, n)
        local_rings = where[len(c): len(c) + int(self.mask[c].sum())]
        rings = torch.zeros_like(self.rings[c])
        rings[self.mask[c]] = local_rings
        rest = self.rest[used]
        centre_ids = where[: len(c)]
        out = {"arap": torch.stack([
            arap_energy(rest, moved[k], centre_ids, rings,
                        self.mask[c] & ok[k][rings] & ok[k][centre_ids, None])
            for k in range(times)]).mean(),
            "fold": fold_energy(motion, at, t)}
        if self.pin is not None:
            pinned = where[len(where) - len(self.pin):]
            out["pin"] = (moved[:, pinned] - rest[pinned]).square().sum(-1).mean()
        return out
