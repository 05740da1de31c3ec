"""The benchmarks live in the checkout's top-level `benchmarks/` folder, not in the installed
package: the repository's root goes on the path, whether pytest runs as `python -m pytest`
(which puts the working directory there) or as `pytest`, from any directory."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
