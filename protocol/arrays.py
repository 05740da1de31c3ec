"""numpy arrays in MessagePack: {"dtype": str, "shape": [int], "data": bin}, C order.

One encoding for .a4d files, checkpoints and the wire. Decoding checks the dtype against what
the caller expects and the byte count against the shape before touching the data.
"""

from __future__ import annotations

import msgspec
import numpy as np

from .errors import FileFormatError

MAX_NDIM = 4


class Array(msgspec.Struct, forbid_unknown_fields=True):
    dtype: str
    shape: list[int]
    data: bytes


def pack(a: np.ndarray, dtype: str | None = None) -> Array:
    """`dtype` in numpy notation with byte order ('<f4'); default: the array's own."""
    dt = np.dtype(dtype) if dtype is not None else np.asarray(a).dtype.newbyteorder("<")
    a = np.ascontiguousarray(a, dtype=dt)
    return Array(dtype=dt.str, shape=list(a.shape), data=a.tobytes())


def unpack(arr: Array, dtype: str | None = None, *, name: str = "array") -> np.ndarray:
    """The array, checked: dtype (when given) and byte count must match. Always a copy."""
    if dtype is not None and arr.dtype != np.dtype(dtype).str:
        raise FileFormatError(f"'{name}' is stored as {arr.dtype!r}, expected {dtype!r}")
    try:
        dt = np.dtype(arr.dtype)
    except TypeError:
        raise FileFormatError(f"'{name}' has an unknown dtype {arr.dtype!r}") from None
    if dt.hasobject or len(arr.shape) > MAX_NDIM or any(d < 0 for d in arr.shape):
        raise FileFormatError(f"'{name}' has an impossible dtype/shape {arr.dtype} {arr.shape}")
    expected = int(np.prod(arr.shape, dtype=np.int64)) * dt.itemsize
    if expected != len(arr.data):
        raise FileFormatError(
            f"'{name}' has shape {arr.shape} ({expected} bytes) but holds {len(arr.data)} bytes"
        )
    return np.frombuffer(arr.data, dtype=dt).reshape(arr.shape).copy()
