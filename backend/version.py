"""Versions recorded in every result's metadata, so a result says what made it."""

from __future__ import annotations

import platform
from importlib import metadata

from animate4d.protocol import a4d


def package_version() -> str:
    try:
        return metadata.version("animate4d")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def versions() -> dict[str, str]:
    import numpy

    return {
        "animate4d": package_version(),
        "a4d_format": str(a4d.VERSION),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }
