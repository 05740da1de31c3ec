"""animate4d.protocol: what the backend, the server, the CLI and the Blender extension share.

numpy and msgspec only (no torch, no bpy): the Blender extension ships a copy of this package,
so every import inside it is relative.
"""

from .camera import Camera
from .errors import (
    Animate4DError,
    CancelledError,
    FileFormatError,
    InvalidCameraError,
    InvalidImageError,
    InvalidMeshError,
    InvalidRequestError,
    LimitExceededError,
)
from .mesh import AnimatedMesh

__all__ = [
    "AnimatedMesh",
    "Animate4DError",
    "Camera",
    "CancelledError",
    "FileFormatError",
    "InvalidCameraError",
    "InvalidImageError",
    "InvalidMeshError",
    "InvalidRequestError",
    "LimitExceededError",
]
