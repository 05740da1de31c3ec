"""Make docs/images/demo.png for the README from a demo run's result.

    animate4d demo --out /tmp/demo && python scripts/make_readme_picture.py /tmp/demo
Top row: the input, then frames of the reference view; bottom row: the turntable view.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "animate4d-demo")
    frames = [np.asarray(f.convert("RGB"))
              for f in ImageSequence.Iterator(Image.open(out_dir / "preview.gif"))]
    panel = frames[0].shape[0]
    src = Image.open(ROOT / "backend" / "examples" / "panda.png").convert("RGBA")
    src = src.resize((panel, panel), Image.Resampling.LANCZOS)
    flat = Image.new("RGBA", src.size, (255, 255, 255, 255))
    flat.alpha_composite(src)
    picks = frames[:: max(1, len(frames) // 5)][:5]
    top = np.concatenate([np.asarray(flat.convert("RGB"))] + [f[:, :panel] for f in picks], 1)
    blank = np.full((panel, panel, 3), 255, np.uint8)
    bottom = np.concatenate([blank] + [f[:, panel:] for f in picks], 1)
    target = ROOT / "docs" / "images" / "demo.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([top, bottom], 0)).save(target, optimize=True)
    print(target)


if __name__ == "__main__":
    main()
