import msgpack
import numpy as np
import pytest

from animate4d.protocol import AnimatedMesh, a4d, limits
from animate4d.protocol.errors import FileFormatError, InvalidMeshError, LimitExceededError


def make_mesh(n_frames=3, with_extras=True) -> AnimatedMesh:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 3)).astype(np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [1, 4, 3]], np.uint32)
    frames = v[None] + rng.normal(scale=0.1, size=(n_frames, 5, 3)).astype(np.float32)
    extras = {}
    if with_extras:
        extras = dict(colors=rng.integers(0, 256, (5, 4), dtype=np.uint8),
                      uvs=rng.random((5, 2), dtype=np.float32))
    t = np.eye(4)
    t[:3, 3] = (1.5, -2.0, 0.25)
    return AnimatedMesh(vertices=v, faces=f, frames=frames, fps=30.0, transform=t,
                        metadata={"prompt": "a cube is swaying", "seed": 7,
                                  "timings": {"geometry": 0.125}}, **extras)


def test_round_trip_is_bit_exact(tmp_path):
    m = make_mesh()
    # Values that lose bits in any text or float64 detour.
    m.frames[0, 0, 0] = np.float32(1e-38)
    m.frames[1, 2, 1] = np.nextafter(np.float32(1.0), np.float32(2.0))
    m.transform[0, 1] = 1.0 / 3.0
    path = a4d.save(m, tmp_path / "r.a4d")
    back = a4d.load(path)
    assert back.equals(m)
    assert back.frames.tobytes() == m.frames.tobytes()
    assert back.transform[0, 1] == 1.0 / 3.0
    assert back.metadata == m.metadata
    # Optional fields really are optional.
    plain = make_mesh(with_extras=False)
    assert a4d.loads(a4d.dumps(plain)).equals(plain)
    assert a4d.loads(a4d.dumps(plain)).colors is None


def test_file_is_plain_messagepack_readable_by_other_libraries(tmp_path):
    m = make_mesh()
    doc = msgpack.unpackb(a4d.dumps(m), raw=False)
    assert doc["format"] == "animate4d.animated_mesh" and doc["version"] == 1
    v = np.frombuffer(doc["vertices"]["data"], dtype=doc["vertices"]["dtype"])
    np.testing.assert_array_equal(v.reshape(doc["vertices"]["shape"]), m.vertices)
    assert doc["fps"] == 30.0
    assert doc["metadata"]["prompt"] == "a cube is swaying"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(faces=np.array([[0, 1, 9]])), "only 5 vertices"),
        (dict(faces=np.array([[0, -1, 2]])), "only 5 vertices"),
        (dict(faces=np.array([[0.0, 1.0, 2.0]])), "integer"),
        (dict(frames=np.zeros((2, 4, 3))), "frames must have shape (*, 5, 3)"),
        (dict(vertices=np.zeros((5, 2))), "vertices must have shape"),
        (dict(colors=np.zeros((5, 3), np.uint8)), "colors must be uint8"),
        (dict(colors=np.zeros((5, 4), np.float32)), "colors must be uint8"),
        (dict(fps=0.0), "fps"),
        (dict(fps=float("nan")), "fps"),
        (dict(transform=np.zeros((3, 4))), "transform must have shape"),
        (dict(metadata={"bad": object()}), "metadata"),
        (dict(frames=np.zeros((0, 5, 3))), "at least one frame"),
    ],
)
def test_validation_names_what_is_wrong(change, message):
    m = make_mesh()
    fields = dict(vertices=m.vertices, faces=m.faces, frames=m.frames, fps=m.fps,
                  transform=m.transform, colors=m.colors, uvs=m.uvs, metadata=m.metadata)
    fields.update(change)
    with pytest.raises(InvalidMeshError, match=None) as err:
        AnimatedMesh(**fields)
    assert message in str(err.value)


@pytest.mark.parametrize("where", ["vertices", "frames", "uvs", "transform"])
def test_nan_and_inf_are_refused(where):
    m = make_mesh()
    arr = getattr(m, where).copy()
    arr.flat[1] = np.nan if where != "uvs" else np.inf
    fields = dict(vertices=m.vertices, faces=m.faces, frames=m.frames, transform=m.transform,
                  uvs=m.uvs)
    fields[where] = arr
    with pytest.raises(InvalidMeshError, match="NaN or infinite"):
        AnimatedMesh(**fields)


def test_limits_on_counts(monkeypatch):
    m = make_mesh(n_frames=4)
    monkeypatch.setattr(limits, "MAX_FRAMES", 3)
    with pytest.raises(LimitExceededError, match="4 frames"):
        AnimatedMesh(vertices=m.vertices, faces=m.faces, frames=m.frames)
    monkeypatch.setattr(limits, "MAX_FRAMES", 1000)
    monkeypatch.setattr(limits, "MAX_VERTICES", 4)
    with pytest.raises(LimitExceededError, match="5 vertices"):
        AnimatedMesh(vertices=m.vertices, faces=m.faces, frames=m.frames)
    monkeypatch.setattr(limits, "MAX_VERTICES", 100)
    monkeypatch.setattr(limits, "MAX_FRAME_VERTICES", 19)
    with pytest.raises(LimitExceededError, match="vertex positions"):
        AnimatedMesh(vertices=m.vertices, faces=m.faces, frames=m.frames)


def test_metadata_size_is_limited():
    m = make_mesh()
    with pytest.raises(LimitExceededError, match="metadata"):
        AnimatedMesh(vertices=m.vertices, faces=m.faces, frames=m.frames,
                     metadata={"x": "y" * (limits.MAX_METADATA_BYTES + 1)})


def test_truncated_files_give_a_clear_error(tmp_path):
    data = a4d.dumps(make_mesh())
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        p = tmp_path / f"t{cut}.a4d"
        p.write_bytes(data[:cut])
        with pytest.raises(FileFormatError) as err:
            a4d.load(p)
        assert str(p) in str(err.value)


def test_corrupt_and_foreign_files_give_a_clear_error(tmp_path):
    cases = {
        "empty": b"",
        "text": b"hello, this is not a mesh",
        "png": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "other_msgpack": msgpack.packb({"format": "something.else", "version": 1}),
        "newer": msgpack.packb({"format": "animate4d.animated_mesh", "version": 99}),
        "deep": msgpack.packb(_nested(500)),
        "very_deep": b"\x81\xa6format" + b"\x91" * 200_000 + b"\x00",
    }
    good = msgpack.unpackb(a4d.dumps(make_mesh()))
    wrong_dtype = dict(good, vertices=dict(good["vertices"], dtype="<f8"))
    short = dict(good, frames=dict(good["frames"], data=good["frames"]["data"][:-4]))
    bad_index = dict(good, faces=dict(good["faces"],
                                      data=np.full(12, 99, "<u4").tobytes()))
    wrong_type = dict(good, fps="fast")
    for name, doc in [("wrong_dtype", wrong_dtype), ("short", short),
                      ("bad_index", bad_index), ("wrong_type", wrong_type)]:
        cases[name] = msgpack.packb(doc)
    foreign = "not an animate4d mesh"
    expected = {"newer": "upgrade", "wrong_dtype": "<f8", "short": "holds",
                "bad_index": "only 5 vertices", "wrong_type": "fps", "empty": "empty",
                "text": foreign, "png": foreign, "other_msgpack": "something.else",
                "deep": foreign, "very_deep": foreign}
    assert set(expected) == set(cases)
    for name, data in cases.items():
        p = tmp_path / f"{name}.a4d"
        p.write_bytes(data)
        with pytest.raises(FileFormatError) as err:
            a4d.load(p)
        assert expected[name] in str(err.value), (name, str(err.value))
        assert str(p) in str(err.value)  # which file


def _nested(depth):
    x = 0
    for _ in range(depth):
        x = [x]
    return x


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    p = a4d.save(make_mesh(), tmp_path / "big.a4d")
    monkeypatch.setattr(limits, "MAX_A4D_BYTES", 100)
    with pytest.raises(LimitExceededError, match="limit"):
        a4d.load(p)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileFormatError, match="cannot read"):
        a4d.load(tmp_path / "nope.a4d")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    import os

    p = tmp_path / "r.a4d"
    a4d.save(make_mesh(), p)
    a4d.save(make_mesh(n_frames=5), p)
    assert a4d.load(p).num_frames == 5
    assert [x.name for x in tmp_path.iterdir()] == ["r.a4d"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # the user's usual permissions
