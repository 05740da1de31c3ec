"""Build the Blender extension zip(s): the add-on, a copy of animate4d.protocol, and wheels.

    python scripts/build_addon.py --out dist/ [--platform linux-x64 ...]

One zip per platform (Blender's extension platforms), each carrying pyzmq and msgspec wheels for
the Pythons Blender ships (3.11 for 4.2-5.0, 3.13 for 5.1+). numpy comes with Blender. Wheels
are downloaded with pip from the package index into a cache (--wheel-cache) and reused.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pyzmq", "msgspec"]
PYTHONS = ["3.11", "3.13"]
_MAC = [f"macosx_{v}" for v in ("10_9", "10_13", "10_15", "11_0", "12_0", "13_0", "14_0")]
PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                  "manylinux_2_26_x86_64"],
    "macos-arm64": [f"{m}_{a}" for m in _MAC for a in ("arm64", "universal2")],
    "macos-x64": [f"{m}_{a}" for m in _MAC for a in ("x86_64", "universal2")],
    "windows-x64": ["win_amd64"],
}


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def download_wheels(platform: str, cache: Path) -> list[Path]:
    wheels: dict[str, Path] = {}
    for py in PYTHONS:
        dest = cache / platform / py
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", py,
               "--dest", str(dest), "--disable-pip-version-check"]
        for tag in PLATFORMS[platform]:
            cmd += ["--platform", tag]
        for pkg in PACKAGES:
            if not any(p.name.lower().startswith(pkg.lower() + "-") for p in dest.glob("*.whl")):
                r = subprocess.run([*cmd, pkg], capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"build_addon: no {pkg} wheel for {platform}, Python {py}:"
                                     f"\n{r.stderr.strip()[-800:]}")
        for w in dest.glob("*.whl"):
            wheels.setdefault(w.name, w)  # an abi3 wheel serves both Pythons once
    return sorted(wheels.values(), key=lambda p: p.name)


def manifest(platform: str, wheels: list[Path]) -> str:
    text = (ROOT / "blender_addon" / "blender_manifest.toml").read_text()
    text = re.sub(r'^version = ".*"$', f'version = "{version()}"', text, flags=re.M)
    text = re.sub(r"^platforms = \[\]$", f'platforms = ["{platform}"]', text, flags=re.M)
    listed = ", ".join(f'"./wheels/{w.name}"' for w in wheels)
    return re.sub(r"^wheels = \[\]$", f"wheels = [{listed}]", text, flags=re.M)


def build(platform: str, out: Path, cache: Path) -> Path:
    wheels = download_wheels(platform, cache)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "animate4d"
        shutil.copytree(ROOT / "blender_addon", stage,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(ROOT / "protocol", stage / "protocol",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (stage / "wheels").mkdir()
        for w in wheels:
            shutil.copy2(w, stage / "wheels" / w.name)
        (stage / "blender_manifest.toml").write_text(manifest(platform, wheels))
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"animate4d-{version()}-{platform.replace('-', '_')}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(stage.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(stage).as_posix())
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for the zip(s)")
    p.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                   help="build only these (repeatable; default: all)")
    p.add_argument("--wheel-cache", type=Path, default=ROOT / "build" / "wheel-cache",
                   help="where downloaded wheels are kept (default: build/wheel-cache)")
    args = p.parse_args()
    for platform in args.platform or sorted(PLATFORMS):
        print(build(platform, args.out, args.wheel_cache))


if __name__ == "__main__":
    main()
