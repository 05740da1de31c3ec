"""glTF 2.0 in mesh mode: read the artist's file, give it back with one morph target per frame.

Everything the file holds (materials, textures, UVs, normals, skins, other animations, extras)
is kept: the output is the input document with morph targets appended to each animated mesh
and one animation of their weights. A .gltf with separate .bin and image files comes back as
one .glb (buffers merged, images embedded).

All mesh nodes of the default scene are joined for the solver, in glTF scene space: each
primitive's POSITION accessor is one range of the joined vertices (primitives sharing an
accessor share the range), taken to the scene by its node's world matrix. Triangle strips and
fans become triangles for the solver only.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animate4d.protocol import limits
from animate4d.protocol.errors import FileFormatError, InvalidMeshError, LimitExceededError

from ..export.gltf import _ARRAY_BUFFER, _FLOAT, _Builder, _pack_glb

_DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32,
           5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_COMPRESSED = ("KHR_draco_mesh_compression", "EXT_meshopt_compression")


@dataclass
class _Range:
    node: int
    mesh: int
    accessor: int  # the POSITION accessor
    start: int  # first vertex in the joined mesh
    count: int
    world: np.ndarray  # node -> scene (4x4)


class GltfDocument:
    """A parsed glTF: its JSON, one merged binary buffer, and where its vertices are."""

    def __init__(self, doc: dict, blob: bytes, name: str):
        self.doc, self.blob, self.name = doc, bytearray(blob), name
        self.ranges: list[_Range] = []

    # -- reading --------------------------------------------------------------------------
    def accessor(self, index: int) -> np.ndarray:
        """(count, width) array; normalised integers come back as floats in [0, 1] / [-1, 1]."""
        try:
            acc = self.doc["accessors"][index]
            dtype = np.dtype(_DTYPES[acc["componentType"]]).newbyteorder("<")
            width, count = _WIDTH[acc["type"]], int(acc["count"])
            if not 0 <= count <= 3 * limits.MAX_FACES:  # before allocating anything
                raise LimitExceededError(f"'{self.name}': accessor {index} holds {count} "
                                         f"items; mesh mode reads at most "
                                         f"{3 * limits.MAX_FACES}", hint="decimate it first")
            out = np.zeros((count, width), dtype)
            if "bufferView" in acc:
                out[:] = self._strided(acc["bufferView"], acc.get("byteOffset", 0), dtype,
                                       count, width)
            sparse = acc.get("sparse")
            if sparse:
                idx_t = np.dtype(_DTYPES[sparse["indices"]["componentType"]]).newbyteorder("<")
                ids = self._strided(sparse["indices"]["bufferView"],
                                    sparse["indices"].get("byteOffset", 0), idx_t,
                                    sparse["count"], 1)[:, 0].astype(np.int64)
                vals = self._strided(sparse["values"]["bufferView"],
                                     sparse["values"].get("byteOffset", 0), dtype,
                                     sparse["count"], width)
                out[ids] = vals
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise FileFormatError(f"'{self.name}': accessor {index} cannot be read ({e})",
                                  hint="the file is damaged: export it again") from None
        if acc.get("normalized") and dtype.kind in "iu":
            return np.maximum(out / float(np.iinfo(dtype).max), -1.0)
        return out

    def _strided(self, view_index: int, offset: int, dtype, count: int, width: int):
        view = self.doc["bufferViews"][view_index]
        start = view.get("byteOffset", 0) + offset
        item = dtype.itemsize * width
        stride = view.get("byteStride") or item
        end = start + stride * (count - 1) + item if count else start
        if end > view.get("byteOffset", 0) + view["byteLength"] or end > len(self.blob):
            raise ValueError("it runs past the end of its buffer")
        raw = np.frombuffer(self.blob, np.uint8, end - start, start) if count else \
            np.zeros(0, np.uint8)
        if stride == item:
            return raw.view(dtype).reshape(count, width)
        rows = np.lib.stride_tricks.as_strided(raw, (count, item), (stride, 1))
        return np.ascontiguousarray(rows).view(dtype).reshape(count, width)

    def joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(vertices in scene space, triangles, UVs with Blender's origin or None) of every
        mesh node of the default scene; records the ranges for `with_morph_targets`."""
        try:
            return self._joined()
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise FileFormatError(f"'{self.name}' is not valid glTF ({type(e).__name__}: "
                                  f"{str(e)[:100]})", hint="export it again") from None

    def _joined(self):
        doc = self.doc
        used = set(doc.get("extensionsRequired", [])) | set(doc.get("extensionsUsed", []))
        if used & set(_COMPRESSED):
            raise InvalidMeshError(
                f"'{self.name}' is compressed ({', '.join(sorted(used & set(_COMPRESSED)))})",
                hint="export it again without Draco or meshopt compression")
        instances = _mesh_nodes(doc)
        if not instances:
            raise InvalidMeshError(f"'{self.name}' holds no mesh", hint="export a mesh object")
        meshes = [m for _, m, _ in instances]
        twice = sorted({m for m in meshes if meshes.count(m) > 1})
        if twice:
            raise InvalidMeshError(
                f"'{self.name}': mesh {twice[0]} is instanced by several nodes, and one mesh "
                "can only carry one set of morph targets",
                hint="make the instances single-user (Blender: Object > Relations > Make "
                     "Single User) and export again")
        animated = {ch["target"].get("node") for a in doc.get("animations", [])
                    for ch in a.get("channels", []) if ch.get("target", {}).get("path") ==
                    "weights"}
        for node, _, _ in instances:
            if node in animated:
                raise InvalidMeshError(
                    f"'{self.name}': node {node} already has a morph-weight animation",
                    hint="remove that animation (or apply its shape keys) and export again")
        verts, tris, uvs = [], [], []
        have_uvs = True
        n = 0
        for node, mesh_index, world in instances:
            seen: dict[int, _Range] = {}
            for prim in doc["meshes"][mesh_index].get("primitives", []):
                pos = prim.get("attributes", {}).get("POSITION")
                if pos is None:
                    continue
                rng = seen.get(pos)
                if rng is None:
                    p = self.accessor(pos).astype(np.float64)[:, :3]
                    rng = _Range(node, mesh_index, pos, n, len(p), world)
                    seen[pos] = rng
                    self.ranges.append(rng)
                    verts.append(p @ world[:3, :3].T + world[:3, 3])
                    uv = prim["attributes"].get("TEXCOORD_0")
                    if uv is not None and have_uvs:
                        t = self.accessor(uv).astype(np.float32)[:, :2]
                        uvs.append(np.stack([t[:, 0], 1.0 - t[:, 1]], axis=1))
                    else:
                        have_uvs = False
                    n += len(p)
                    if n > limits.MAX_VERTICES:
                        raise LimitExceededError(
                            f"'{self.name}' has more than {limits.MAX_VERTICES} vertices; "
                            "mesh mode takes at most that many", hint="decimate it first")
                tri = _triangles(self, prim, rng.count)
                if len(tri) and (tri.min() < 0 or tri.max() >= rng.count):
                    raise InvalidMeshError(f"'{self.name}': a primitive of mesh {mesh_index} "
                                           "indexes past its vertices",
                                           hint="the file is damaged: export it again")
                tris.append(tri + rng.start)
        if not verts:
            raise InvalidMeshError(f"'{self.name}' has no vertex positions",
                                   hint="export a mesh object")
        v = np.concatenate(verts)
        f = np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)
        return v, f, (np.concatenate(uvs) if have_uvs and uvs else None)

    # -- writing --------------------------------------------------------------------------
    def with_morph_targets(self, offsets: np.ndarray, fps: float, loop: bool) -> bytes:
        """The document as a .glb with frame k's displacement `offsets[k]` (scene space,
        joined vertices) as a new morph target of every animated mesh, and an animation that
        shows frame k from k/fps (STEP), back to frame 0 at F/fps when the clip loops."""
        doc = json.loads(json.dumps(self.doc))  # a copy: this object stays as it was read
        b = _Builder()
        b.blob, b.views, b.accessors = bytearray(self.blob), doc.setdefault("bufferViews", []), \
            doc.setdefault("accessors", [])
        n_frames = len(offsets)
        by_mesh: dict[int, dict[int, list[int]]] = {}
        for rng in self.ranges:
            local = offsets[:, rng.start : rng.start + rng.count]
            inv = np.linalg.inv(rng.world[:3, :3])
            if not np.array_equal(inv, np.eye(3)):  # scene -> the node's own frame
                local = local @ inv.T.astype(np.float32)
            by_mesh.setdefault(rng.mesh, {})[rng.accessor] = [
                b.add(local[k].astype(np.float32), "VEC3", _FLOAT, target=_ARRAY_BUFFER,
                      minmax=True) for k in range(n_frames)]
        times = np.arange(n_frames + 1, dtype=np.float32) / np.float32(fps)
        t_acc = b.add(times, "SCALAR", _FLOAT, minmax=True)
        samplers, channels = [], []
        for mesh_index, targets in by_mesh.items():
            mesh = doc["meshes"][mesh_index]
            old = 0
            for prim in mesh["primitives"]:
                pos = prim.get("attributes", {}).get("POSITION")
                old = len(prim.get("targets", []))
                new = [{"POSITION": a} for a in targets[pos]] if pos in targets else \
                    [{} for _ in range(n_frames)]
                prim["targets"] = prim.get("targets", []) + new
            rest = list(mesh.get("weights", [0.0] * old))
            mesh["weights"] = rest + [0.0] * n_frames
            extras = mesh.get("extras")
            if isinstance(extras, dict) or extras is None:
                names = list((extras or {}).get("targetNames", [f"target_{i}" for i in
                                                                range(old)]))
                mesh["extras"] = (extras or {}) | {
                    "targetNames": names + [f"frame_{k:04d}" for k in range(n_frames)]}
            weights = np.zeros((n_frames + 1, old + n_frames), np.float32)
            weights[:, :old] = rest
            weights[np.arange(n_frames), old + np.arange(n_frames)] = 1.0
            weights[n_frames, old + (0 if loop else n_frames - 1)] = 1.0
            w_acc = b.add(weights.reshape(-1), "SCALAR", _FLOAT)
            node = next(r.node for r in self.ranges if r.mesh == mesh_index)
            channels.append({"sampler": len(samplers),
                             "target": {"node": node, "path": "weights"}})
            samplers.append({"input": t_acc, "output": w_acc, "interpolation": "STEP"})
        doc.setdefault("animations", []).append(
            {"name": "animate4d_motion", "samplers": samplers, "channels": channels})
        doc["buffers"] = [{"byteLength": len(b.blob)}]
        return _pack_glb(doc, bytes(b.blob))


def read_gltf(data: bytes, name: str, base_dir: Path | None) -> GltfDocument:
    """A .glb's bytes, or a .gltf's text with its buffers and images beside it (base_dir)."""
    if data[:4] == b"glTF":
        doc, bin_chunk = _parse_glb(data, name)
    else:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FileFormatError(f"'{name}' is neither a .glb nor glTF JSON ({e})",
                                  hint="export it again as glTF 2.0") from None
        bin_chunk = None
    if not isinstance(doc, dict) or str(doc.get("asset", {}).get("version", "")) != "2.0":
        raise FileFormatError(f"'{name}' is not glTF 2.0", hint="export it again as glTF 2.0")
    blob = bytearray()
    starts = []
    for i, buf in enumerate(doc.get("buffers", [])):
        while len(blob) % 8:
            blob.append(0)
        starts.append(len(blob))
        if "uri" in buf:
            part = _fetch(buf["uri"], base_dir, name)
        elif i == 0 and bin_chunk is not None:
            part = bin_chunk
        else:
            raise FileFormatError(f"'{name}': buffer {i} has no data",
                                  hint="export it again as one .glb")
        if len(part) < buf.get("byteLength", 0):
            raise FileFormatError(f"'{name}': buffer {i} is shorter than it says (truncated?)",
                                  hint="export it again")
        blob += part
        if len(blob) > limits.MAX_MESH_FILE_BYTES:
            raise FileFormatError(f"'{name}' holds more than {limits.MAX_MESH_FILE_BYTES} bytes",
                                  hint="decimate it or drop unused data")
    for view in doc.get("bufferViews", []):
        try:
            view["byteOffset"] = starts[view["buffer"]] + view.get("byteOffset", 0)
        except (IndexError, KeyError, TypeError):
            raise FileFormatError(f"'{name}': a bufferView names a missing buffer",
                                  hint="the file is damaged: export it again") from None
        view["buffer"] = 0
    g = GltfDocument(doc, bytes(blob), name)
    for image in doc.get("images", []):  # embedded, so that the .glb stands alone
        if "uri" in image:
            data_ = _fetch(image["uri"], base_dir, name)
            mime = image.get("mimeType") or _mime(image["uri"])
            while len(g.blob) % 4:
                g.blob.append(0)
            doc.setdefault("bufferViews", []).append(
                {"buffer": 0, "byteOffset": len(g.blob), "byteLength": len(data_)})
            g.blob += data_
            image.pop("uri")
            image["bufferView"], image["mimeType"] = len(doc["bufferViews"]) - 1, mime
    doc["buffers"] = [{"byteLength": len(g.blob)}] if g.blob else []
    return g


def _parse_glb(data: bytes, name: str):
    if len(data) < 20:
        raise FileFormatError(f"'{name}' is truncated", hint="export it again")
    _, version, total = struct.unpack_from("<4sII", data)
    if version != 2 or total > len(data):
        raise FileFormatError(f"'{name}' is not a whole glTF 2.0 binary (version {version}, "
                              f"{len(data)} of {total} bytes)", hint="export it again")
    pos, doc, bin_chunk = 12, None, None
    while pos + 8 <= total:
        length, kind = struct.unpack_from("<I4s", data, pos)
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"JSON" and doc is None:
            try:
                doc = json.loads(chunk)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise FileFormatError(f"'{name}': its JSON is damaged ({e})",
                                      hint="export it again") from None
        elif kind == b"BIN\0" and bin_chunk is None:
            bin_chunk = bytes(chunk)
        pos += 8 + length + (-length % 4)
    if doc is None:
        raise FileFormatError(f"'{name}' has no JSON chunk", hint="export it again")
    return doc, bin_chunk


def _fetch(uri: str, base_dir: Path | None, name: str) -> bytes:
    if uri.startswith("data:"):
        try:
            return base64.b64decode(uri.split(",", 1)[1], validate=False)
        except (IndexError, ValueError):
            raise FileFormatError(f"'{name}': a data URI cannot be decoded",
                                  hint="export it again") from None
    from urllib.parse import unquote

    path = Path(unquote(uri))
    if base_dir is None or path.is_absolute() or "://" in uri:
        raise FileFormatError(f"'{name}' refers to {uri!r}, which is not beside it",
                              hint="export it as one .glb (everything embedded)")
    try:
        return (base_dir / path).read_bytes()
    except OSError as e:
        raise FileFormatError(f"'{name}' needs {uri!r} beside it: {e.strerror}",
                              hint="copy the glTF's .bin and texture files along, or export "
                                   "one .glb") from None


def _mime(uri: str) -> str:
    guess = mimetypes.guess_type(uri.split("?")[0])[0]
    return guess if guess in ("image/png", "image/jpeg", "image/webp") else "image/png"


def _mesh_nodes(doc: dict) -> list[tuple[int, int, np.ndarray]]:
    """(node, mesh, node->scene matrix) for every mesh node of the default scene."""
    nodes = doc.get("nodes", [])
    scenes = doc.get("scenes", [])
    if scenes:
        roots = scenes[doc.get("scene", 0) if 0 <= doc.get("scene", 0) < len(scenes) else 0] \
            .get("nodes", [])
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    out, stack, visited = [], [(r, np.eye(4)) for r in roots], set()
    while stack:
        i, parent = stack.pop()
        if not isinstance(i, int) or not 0 <= i < len(nodes) or i in visited:
            raise FileFormatError("a glTF node hierarchy that is not a tree",
                                  hint="the file is damaged: export it again")
        visited.add(i)
        world = parent @ _local(nodes[i])
        if "mesh" in nodes[i]:
            out.append((i, int(nodes[i]["mesh"]), world))
        stack.extend((c, world) for c in nodes[i].get("children", []))
    return sorted(out, key=lambda x: x[0])


def _local(node: dict) -> np.ndarray:
    if "matrix" in node:
        return np.asarray(node["matrix"], np.float64).reshape(4, 4).T  # column-major
    m = np.eye(4)
    x, y, z, w = node.get("rotation", [0, 0, 0, 1])
    m[:3, :3] = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]) * np.asarray(node.get("scale", [1, 1, 1]), np.float64)
    m[:3, 3] = node.get("translation", [0, 0, 0])
    return m


def _triangles(g: GltfDocument, prim: dict, count: int) -> np.ndarray:
    mode = prim.get("mode", 4)
    idx = (g.accessor(prim["indices"])[:, 0].astype(np.int64) if "indices" in prim
           else np.arange(count, dtype=np.int64))
    if mode == 4:
        return idx[: len(idx) // 3 * 3].reshape(-1, 3)
    if mode == 5 and len(idx) >= 3:  # strip: every other triangle turned to keep the winding
        k = np.arange(len(idx) - 2)
        tri = np.stack([idx[k], idx[k + 1], idx[k + 2]], axis=1)
        tri[1::2] = tri[1::2][:, [1, 0, 2]]
        return tri
    if mode == 6 and len(idx) >= 3:  # fan
        k = np.arange(1, len(idx) - 1)
        return np.stack([np.full_like(k, idx[0]), idx[k], idx[k + 1]], axis=1)
    return np.zeros((0, 3), np.int64)  # points and lines: moved, but no faces
