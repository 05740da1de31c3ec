"""Runtime switches: how the GPU code runs, never what it computes.

Parsed once at the edge (`from_environ` for the `ANIMATE4D_*` variables, CLI flags on top)
and installed for the process with `install` (or for a block with `use`); library code asks
`active()` and never reads the environment. Every result records the switches that made it
(`Switches.record`). This is the only module that reads `ANIMATE4D_*` variables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# The prior parts that may be compiled ("vae" is the encoder only: the SDS stages never decode).
COMPILABLE = ("vae", "unet", "controlnet", "text_encoder")


class SwitchError(ValueError):
    """A switch with a value it cannot take (the message names the variable or flag)."""


def parse_parts(names: str, where: str = "ANIMATE4D_COMPILE") -> tuple[str, ...]:
    """'vae, unet' -> ('unet', 'vae'); unknown parts are an error naming `where`."""
    parts = tuple(sorted({p.strip() for p in names.split(",") if p.strip()}))
    unknown = [p for p in parts if p not in COMPILABLE]
    if unknown:
        raise SwitchError(f"{where}: cannot compile {', '.join(unknown)}; the parts that can "
                          f"be compiled are {', '.join(COMPILABLE)}")
    return parts


@dataclass(frozen=True)
class Switches:
    """The runtime switches of one process (defaults: the measured fastest choices)."""

    cuda_graphs: bool = True
    """Run the priors' UNet/ControlNet and the field stages' reference steps as CUDA graphs
    (CUDA only). Off: eager, without the graphs' own memory pools."""
    compile: tuple[str, ...] | None = None
    """Prior parts every stage compiles with torch.compile (CUDA only); None: each stage's
    measured choice (`priors.compiling.STAGE_DEFAULTS`)."""
    compile_mode: str | None = None
    """torch.compile's mode for every compiled part (None: its default mode)."""
    vae_attention: str = "chunked"
    """'chunked': the VAEs' attention in checkpointed chunks (long 1024-px sequences);
    'stock': diffusers' own processor."""
    fused_mlp: bool = True
    """The fields' small MLPs as one fused Triton kernel where it applies (CUDA)."""
    hashgrid: str = "auto"
    """Hash-grid kernels: 'auto' (Triton on CUDA), 'torch' or 'triton'."""

    def __post_init__(self):
        if self.vae_attention not in ("chunked", "stock"):
            raise SwitchError(f"ANIMATE4D_VAE_ATTENTION must be chunked or stock, not "
                              f"{self.vae_attention!r}")
        if self.hashgrid not in ("auto", "torch", "triton"):
            raise SwitchError(f"ANIMATE4D_HASHGRID must be auto, torch or triton, not "
                              f"{self.hashgrid!r}")

    def record(self) -> dict:
        """The switches as plain data, for a result's metadata."""
        out = asdict(self)
        out["compile"] = None if self.compile is None else list(self.compile)
        return out

    def with_(self, **changes) -> Switches:
        return replace(self, **changes)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value not in ("0", "1"):
        raise SwitchError(f"{name} must be 0 or 1, not {value!r}")
    return value == "1"


def from_environ(env: Mapping[str, str] | None = None) -> Switches:
    """The switches the `ANIMATE4D_*` variables ask for (unset: the defaults)."""
    env = os.environ if env is None else env
    compile_parts = env.get("ANIMATE4D_COMPILE")
    return Switches(
        cuda_graphs=_flag(env, "ANIMATE4D_CUDA_GRAPHS", True),
        compile=None if compile_parts is None else parse_parts(compile_parts),
        compile_mode=env.get("ANIMATE4D_COMPILE_MODE") or None,
        vae_attention=env.get("ANIMATE4D_VAE_ATTENTION") or "chunked",
        fused_mlp=_flag(env, "ANIMATE4D_FUSED_MLP", True),
        hashgrid=env.get("ANIMATE4D_HASHGRID") or "auto",
    )


_active = Switches()


def active() -> Switches:
    """The switches installed for this process (the defaults until the edge installs some)."""
    return _active


def install(switches: Switches) -> Switches:
    """Make `switches` the process's own; returns the ones they replace."""
    global _active
    previous, _active = _active, switches
    return previous


@contextlib.contextmanager
def use(switches: Switches) -> Iterator[Switches]:
    """`with use(s):` runs a block under `s` (tests, benchmarks comparing variants)."""
    previous = install(switches)
    try:
        yield switches
    finally:
        install(previous)


def models_folder(env: Mapping[str, str] | None = None) -> Path | None:
    """ANIMATE4D_MODELS: the default models folder (one sub-folder per role), or None."""
    value = (os.environ if env is None else env).get("ANIMATE4D_MODELS")
    return Path(value) if value else None


def cache_folder(env: Mapping[str, str] | None = None) -> Path:
    """ANIMATE4D_CACHE, else ~/.cache/animate4d: what is kept between jobs (learned tokens)."""
    value = (os.environ if env is None else env).get("ANIMATE4D_CACHE")
    return Path(value) if value else Path.home() / ".cache" / "animate4d"
