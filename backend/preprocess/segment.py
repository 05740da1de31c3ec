"""Foreground mask without weights: the alpha channel when there is one, else GrabCut.

GrabCut is seeded from the image border (border = background, pixels unlike the border colours
= probable foreground), run at a working size of at most 512 px, and its mask is cleaned
(largest components kept, holes filled) before being scaled back.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from animate4d.protocol.errors import InvalidImageError

from .image_io import LoadedImage

WORK_SIDE = 512
MIN_FOREGROUND_FRACTION = 0.002


def foreground_mask(image: LoadedImage, *, seed: int = 0) -> np.ndarray:
    """(H, W) float32 in [0, 1]: soft where alpha is soft, binary from GrabCut."""
    if image.has_alpha:
        mask = image.rgba[..., 3].copy()
        # Specks of stray alpha would stretch the crop around the object: drop them.
        mask *= clean_mask(mask > 0.5, keep_fraction=0.02, fill_holes=False)
    else:
        mask = _grabcut(image.rgba[..., :3], seed=seed).astype(np.float32)
    hard = mask > 0.5
    frac = hard.mean()
    if frac < MIN_FOREGROUND_FRACTION or hard.sum() < 64:
        raise InvalidImageError(
            f"{image.source}: no foreground object found",
            hint="use an image with a transparent background (PNG with alpha), or a subject "
            "that stands out clearly from a plain background",
        )
    return mask


def _grabcut(rgb: np.ndarray, *, seed: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = min(1.0, WORK_SIDE / max(h, w))
    small = cv2.resize(
        (rgb * 255).astype(np.uint8), (max(1, round(w * scale)), max(1, round(h * scale))),
        interpolation=cv2.INTER_AREA,
    )
    sh, sw = small.shape[:2]
    band = max(2, round(0.02 * max(sh, sw)))
    init = np.full((sh, sw), cv2.GC_PR_BGD, np.uint8)
    border = np.zeros((sh, sw), bool)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    # Pixels far (in colour) from every border colour are probably foreground.
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    border_px = lab[border][:: max(1, border.sum() // 2000)]
    dist = _min_colour_distance(lab.reshape(-1, 3), border_px).reshape(sh, sw)
    init[dist > 12.0] = cv2.GC_PR_FGD
    init[border] = cv2.GC_BGD
    if not np.any(init == cv2.GC_PR_FGD):
        return np.zeros((h, w), bool)
    cv2.setRNGSeed(seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), init, None, bgd, fgd, 5,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return np.zeros((h, w), bool)
    fg = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
    fg = clean_mask(fg)
    full = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return full > 0.5


def _min_colour_distance(px: np.ndarray, ref: np.ndarray, chunk: int = 4096) -> np.ndarray:
    # Cluster the reference colours so that the distance is cheap for any image.
    k = min(16, len(ref))
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    _, _, centres = cv2.kmeans(ref, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)
    out = np.empty(len(px), np.float32)
    for i in range(0, len(px), chunk):
        d = np.linalg.norm(px[i : i + chunk, None, :] - centres[None], axis=-1)
        out[i : i + chunk] = d.min(axis=1)
    return out


def clean_mask(
    mask: np.ndarray, keep_fraction: float = 0.15, *, fill_holes: bool = True
) -> np.ndarray:
    """Keep components at least `keep_fraction` of the largest one (and fill their holes)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1
    out = np.isin(labels, keep)
    return ndimage.binary_fill_holes(out) if fill_holes else out
