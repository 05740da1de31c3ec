"""The roles, where their weights come from, and what a complete local folder holds.

A models folder (`--models DIR`) has one sub-folder per role, each in the layout its library
saves: diffusers pipelines (`model_index.json` + one folder per component) for `sd`, `zero123`
and `video`; a single diffusers model for `controlnet_tile`; a transformers model for `depth`;
an ONNX export in the Hugging Face layout (`config.json`, `preprocessor_config.json`,
`onnx/model.onnx`) for `segment`, the optional learned background removal every preset uses
when it is present (GrabCut otherwise).
A role missing there is looked up in the Hugging Face cache (never downloaded at run time).

Revisions are "main" until someone with network access pins the commit hashes they fetched
(`models check` prints what is there); the layouts, not the hashes, are what the code relies on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from animate4d.protocol.errors import MissingModelError

from ..runtime.switches import models_folder


@dataclass(frozen=True)
class Role:
    name: str
    repo: str
    revision: str
    what: str
    # Sub-folders that must hold a config and weights ("" = the folder itself).
    components: tuple[str, ...]
    # Sub-folders that hold only configuration / vocabulary files.
    configs: tuple[str, ...] = ()
    # Files fetched from the repository (weights in fp16 where the repository has them).
    patterns: tuple[str, ...] = ()
    disk_gb: float = 0.0  # what `models fetch` writes, approximately
    # Files that must be there, for a role outside the diffusers/transformers layouts.
    files: tuple[str, ...] = ()


ROLES: dict[str, Role] = {r.name: r for r in (
    Role("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "main",
         "Stable Diffusion 1.5: SDS in the static stage, textual inversion",
         ("unet", "vae", "text_encoder"), ("tokenizer", "scheduler"),
         ("model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*",
          "unet/diffusion_pytorch_model.fp16.safetensors",
          "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors"),
         2.6),
    Role("zero123", "bennyguo/zero123-xl-diffusers", "main",
         "Zero-1-to-3 XL: novel-view SDS in the static and dynamic stages",
         ("unet", "vae", "image_encoder", "cc_projection"), ("scheduler",),
         ("model_index.json", "*/config.json", "scheduler/*.json", "*/*.safetensors",
          "*/*.bin", "feature_extractor/*"), 6.0),
    Role("video", "ali-vilab/text-to-video-ms-1.7b", "main",
         "ModelScope text-to-video 1.7B: video SDS in the dynamic stage",
         ("unet", "vae", "text_encoder"), ("tokenizer", "scheduler"),
         ("model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*",
          "unet/diffusion_pytorch_model.fp16.safetensors",
          "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors"),
         3.6),
    Role("controlnet_tile", "lllyasviel/control_v11f1e_sd15_tile", "main",
         "ControlNet 1.1 tile (SD 1.5): semantic refinement SDS",
         ("",), (), ("config.json", "diffusion_pytorch_model.fp16.safetensors"), 0.7),
    Role("depth", "Intel/dpt-beit-large-512", "main",
         "DPT-BEiT-L-512 (MiDaS 3.1): the reference view's depth",
         ("",), (), ("config.json", "preprocessor_config.json", "model.safetensors"), 1.4),
    Role("segment", "onnx-community/BiRefNet_lite-ONNX", "main",
         "BiRefNet-lite (MIT): background removal for photos without transparency",
         (), (), ("config.json", "preprocessor_config.json", "onnx/model.onnx"), 0.23,
         files=("preprocessor_config.json", "onnx/model.onnx")),
)}

# The file `animate4d models make-tiny` leaves in each role's folder: random weights at tiny
# sizes, for smoke runs and tests (a job on them takes the tiny sizes, `is_tiny`).
TINY_MARKER = "animate4d-tiny.json"

# Used when present, never required: without `segment` photos are cut out by GrabCut.
OPTIONAL_ROLES = ("segment",)

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def fetch_command(roles: str, models: Path | str | None) -> str:
    """The command that fetches `roles` (space-separated) into `models`, or into a folder
    the user names (`models fetch` needs one)."""
    return f"animate4d models fetch {roles} --models {models or 'DIR'}"


def missing_files(role: Role, folder: Path) -> list[str]:
    """What the loader needs and the folder lacks (empty: complete)."""
    if not folder.is_dir():
        return [f"{folder}/ (the folder)"]
    out = []
    for comp in role.components:
        d = folder / comp if comp else folder
        if not (d / "config.json").is_file():
            out.append(str(Path(comp, "config.json")))
        if not d.is_dir() or not any(f.name.endswith(WEIGHT_SUFFIXES) for f in d.iterdir()):
            out.append(str(Path(comp, "<weights>.safetensors")))
    for comp in role.configs:
        if not (folder / comp).is_dir() or not any((folder / comp).iterdir()):
            out.append(f"{comp}/")
    out += [f for f in role.files if not (folder / f).is_file()]
    if len(role.components) > 1 and not (folder / "model_index.json").is_file():
        out.append("model_index.json")
    return out


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _from_hf_cache(role: Role) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(role.repo, revision=role.revision,
                                      local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        return None


def locate(role_name: str, models: Path | str | None) -> Path:
    """The complete local folder of a role: MODELS/ROLE first, then the HF cache. Raises
    MissingModelError naming the role, where it looked and the fetch command."""
    role = ROLES[role_name]
    looked = []
    candidates = []
    if models is not None:
        candidates.append(Path(models) / role.name)
    elif models_folder() is not None:
        candidates.append(models_folder() / role.name)
    cached = _from_hf_cache(role)
    if cached is not None:
        candidates.append(cached)
    for folder in candidates:
        gaps = missing_files(role, folder)
        if not gaps:
            return folder
        looked.append(f"{folder} (missing {', '.join(gaps[:3])})")
    if cached is None:
        looked.append(f"the Hugging Face cache ({role.repo}@{role.revision}: not there)")
    raise MissingModelError(
        f"the {role.name} model ({role.what}) is not on this machine; looked in "
        + "; ".join(looked),
        hint=f"fetch it with: {fetch_command(role.name, models)}")


def available_roles(models: Path | str | None) -> set[str]:
    out = set()
    for name in ROLES:
        try:
            locate(name, models)
            out.add(name)
        except MissingModelError:
            pass
    return out


def is_tiny(models: Path | str | None, roles=None) -> bool:
    """Whether the models found for `roles` (default: all that are there) are tiny random ones
    (`animate4d models make-tiny`)."""
    found = []
    for name in roles or ROLES:
        with contextlib.suppress(MissingModelError):
            found.append(locate(name, models))
    return bool(found) and all((folder / TINY_MARKER).is_file() for folder in found)
