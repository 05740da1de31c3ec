"""Draw the bundled example (backend/examples/panda.png): a cartoon panda on transparency.

Procedural, so the repository carries no third-party artwork; rerun to regenerate.
    python scripts/make_example_image.py [--size 1024]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

WHITE, BLACK, PINK = (246, 244, 238), (34, 34, 40), (236, 150, 160)


def draw(size: int) -> Image.Image:
    ss = 4  # supersampling for smooth edges
    s = size * ss / 1024.0
    im = Image.new("RGBA", (size * ss, size * ss), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)

    def ell(cx, cy, rx, ry, colour):
        d.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=colour)

    ell(390, 900, 95, 70, BLACK)  # feet
    ell(634, 900, 95, 70, BLACK)
    ell(512, 660, 235, 250, WHITE)  # body
    ell(300, 610, 80, 150, BLACK)  # arms
    ell(724, 610, 80, 150, BLACK)
    ell(512, 700, 120, 130, (252, 250, 246))  # belly
    ell(340, 150, 78, 78, BLACK)  # ears
    ell(684, 150, 78, 78, BLACK)
    ell(512, 330, 215, 195, WHITE)  # head
    ell(430, 320, 58, 72, BLACK)  # eye patches
    ell(594, 320, 58, 72, BLACK)
    ell(440, 305, 20, 22, (255, 255, 255))  # eyes
    ell(584, 305, 20, 22, (255, 255, 255))
    ell(445, 310, 9, 10, BLACK)
    ell(579, 310, 9, 10, BLACK)
    ell(512, 410, 34, 24, BLACK)  # nose
    ell(512, 455, 22, 12, PINK)  # mouth
    im = im.resize((size, size), Image.Resampling.LANCZOS)

    # Soft shading so the cartoon reads as round: darker towards the outline.
    a = np.asarray(im, np.float32)
    inside = a[..., 3] > 127
    dist = ndimage.distance_transform_edt(inside)
    shade = 0.72 + 0.28 * np.sqrt(np.clip(dist / (0.12 * size), 0, 1))
    a[..., :3] *= shade[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGBA")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "backend" /
                                        "examples" / "panda.png"))
    args = p.parse_args()
    draw(args.size).save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
