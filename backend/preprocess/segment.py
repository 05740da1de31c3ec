"""The object's mask, from the best source there is, and what is wrong with it.

In order: the image's own transparency (an artist's cut-out, or `--mask FILE` merged into the
alpha by `with_mask`); the learned segmenter (the optional `segment` model role,
priors/segmenter.py) when it is on this machine; else GrabCut, seeded from the image border
(border = background, pixels unlike the border colours = probable foreground), run at a working
size of at most 512 px, its mask cleaned (largest components kept, holes filled).

Whatever made it, the mask is checked (`mask_problems`): a tiny object, one split into pieces,
or one that touches most of the image border each give a warning that says what to do. The
mask, its source and the warnings travel in the result's metadata ("segmentation"), so every
caller writes the same mask.png beside the result and prints the same warnings.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from animate4d.protocol.errors import InvalidImageError

from .image_io import LoadedImage, load_image

WORK_SIDE = 512
MIN_FOREGROUND_FRACTION = 0.002
# Warnings: the object covers less than this fraction of the image ...
SMALL_FOREGROUND_FRACTION = 0.03
# ... it has more than one piece of at least this fraction of the foreground ...
PIECE_FRACTION = 0.05
# ... or it covers more than this fraction of the image's outermost pixels.
BORDER_FRACTION = 0.5
# The mask PNG kept in the result's metadata (whose limit is 64 KiB in all).
MASK_PNG_BYTES = 40 * 1024

FIX = ("give the image a transparent background, or pass --mask FILE (white = object; "
       "mask.png beside the result is a start)")
SEGMENTER_HINT = "; or get the learned segmenter: animate4d models fetch segment --models DIR"


@dataclass(frozen=True)
class Cutout:
    mask: np.ndarray  # (H, W) float32 in [0, 1]: soft where alpha or the segmenter is soft
    source: str  # "alpha", "mask file", "segmenter" or "grabcut"
    warnings: tuple[str, ...] = field(default=())

    def metadata(self) -> dict:
        """The result's "segmentation" entry: source, warnings and the mask as a PNG."""
        return {"from": self.source, "warnings": list(self.warnings),
                "mask_png": mask_png(self.mask)}


def cut_out(image: LoadedImage, *, seed: int = 0, models=None) -> Cutout:
    """The object's mask from the best source on this machine, checked (see the module)."""
    if image.has_alpha:
        mask = image.rgba[..., 3].copy()
        source = image.alpha_from
    else:
        from ..priors import segmenter

        folder = segmenter.locate(models)
        if folder is not None:
            mask, source = segmenter.load(folder)(image.rgba[..., :3]), "segmenter"
        else:
            mask, source = _grabcut(image.rgba[..., :3], seed=seed).astype(np.float32), "grabcut"
    if source != "grabcut":
        # Specks of stray alpha would stretch the crop around the object: drop them.
        mask *= clean_mask(mask > 0.5, keep_fraction=0.02, fill_holes=False)
    hard = mask > 0.5
    frac = hard.mean()
    if frac < MIN_FOREGROUND_FRACTION or hard.sum() < 64:
        raise InvalidImageError(
            f"{image.source}: no foreground object found ({_how(source)})",
            hint=FIX + (SEGMENTER_HINT if source == "grabcut" else ""),
        )
    return Cutout(mask.astype(np.float32), source, tuple(mask_problems(hard, source)))


def foreground_mask(image: LoadedImage, *, seed: int = 0, models=None) -> np.ndarray:
    """(H, W) float32 in [0, 1]: `cut_out`'s mask alone."""
    return cut_out(image, seed=seed, models=models).mask


def _how(source: str) -> str:
    return {"alpha": "from the image's transparency", "mask file": "from the --mask file",
            "segmenter": "cut out by the learned segmenter",
            "grabcut": "cut out by GrabCut"}[source]


def mask_problems(hard: np.ndarray, source: str) -> list[str]:
    """Plain-words warnings for a mask that will likely give a poor result."""
    out = []
    how = _how(source)
    hint = FIX + (SEGMENTER_HINT if source == "grabcut" else "")
    frac = float(hard.mean())
    if frac < SMALL_FOREGROUND_FRACTION:
        out.append(f"the object ({how}) covers only {100 * frac:.1f}% of the image: likely "
                   f"only a part of it was found, or it has too few pixels for any detail; "
                   f"crop the image closer around the object, or {hint}")
    labels, n = ndimage.label(hard)
    if n > 1:
        sizes = ndimage.sum_labels(hard, labels, index=np.arange(1, n + 1))
        pieces = int((sizes >= PIECE_FRACTION * sizes.sum()).sum())
        if pieces > 1:
            out.append(f"the object ({how}) is split into {pieces} separate pieces, and each "
                       f"becomes its own blob; if it is one object, {hint}")
    edge = np.concatenate([hard[0], hard[-1], hard[1:-1, 0], hard[1:-1, -1]])
    if edge.mean() > BORDER_FRACTION:
        out.append(f"the object ({how}) touches {100 * edge.mean():.0f}% of the image border: "
                   f"the background was probably taken for the object, or the object is cut "
                   f"off by the frame; leave some background around it, or {hint}")
    return out


def mask_png(mask: np.ndarray, limit: int = MASK_PNG_BYTES) -> bytes:
    """The mask as a grayscale PNG (white = object) within `limit` bytes: soft at full size
    when that fits, else thresholded (1 bit), else halved until it fits."""
    m = np.clip(np.rint(np.asarray(mask, np.float32) * 255), 0, 255).astype(np.uint8)
    tries = [Image.fromarray(m, "L"), Image.fromarray(m > 127)]
    while True:
        for im in tries:
            buf = io.BytesIO()
            im.save(buf, "PNG", optimize=True)
            if buf.tell() <= limit or min(m.shape) <= 16:
                return buf.getvalue()
        m = cv2.resize(m, (max(1, m.shape[1] // 2), max(1, m.shape[0] // 2)),
                       interpolation=cv2.INTER_AREA)
        tries = [Image.fromarray(m > 127)]


def with_mask(image: LoadedImage, mask_file: str | Path) -> LoadedImage:
    """`image` with the artist's mask as its alpha: the mask file's transparency when it has
    some, else its brightness (white = object); resized to the image when the shapes agree."""
    m = load_image(mask_file)
    alpha = m.rgba[..., 3] if m.has_alpha else m.rgba[..., :3] @ np.float32([0.299, 0.587,
                                                                               0.114])
    (w, h), (mw, mh) = image.size, m.size
    if abs(mw / mh - w / h) > 0.01 * (w / h):
        raise InvalidImageError(
            f"the mask {mask_file} is {mw}x{mh} but the image is {w}x{h}",
            hint="make the mask the same size as the image (white = object, black = "
                 "background)")
    if (mw, mh) != (w, h):
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    if not (alpha < 0.5).any() or not (alpha > 0.5).any():
        raise InvalidImageError(
            f"the mask {mask_file} is all {'white' if (alpha > 0.5).any() else 'black'}",
            hint="paint the object white and the background black")
    rgba = image.rgba.copy()
    rgba[..., 3] = np.clip(alpha, 0.0, 1.0)
    return replace(image, rgba=rgba, has_alpha=True, alpha_from="mask file")


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
