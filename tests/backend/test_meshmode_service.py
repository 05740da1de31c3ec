"""Mesh mode through a live server and worker: routed, run, and refused where it cannot run."""

import numpy as np
import pytest

from animate4d.backend.meshmode.preview import run_mesh_preview
from animate4d.backend.meshmode.source import MeshSource
from animate4d.protocol import arrays, wire
from animate4d.protocol.client import ServerError
from animate4d.protocol.options import JobOptions
from tests.backend.cluster import wait_until
from tests.backend.meshes import tree_arrays
from tests.conftest import blob_rgba, write_png

OPTIONS = JobOptions(prompt="a tree is dancing", frames=6)


def test_a_mesh_job_runs_on_a_worker_and_comes_back_on_the_same_vertices(cluster, tmp_path):
    v, f, n_trunk = tree_arrays()
    mesh_in = wire.MeshInput(vertices=arrays.pack(v, "<f4"), faces=arrays.pack(f, "<u4"),
                             pin=list(range(4)))
    render = write_png(tmp_path / "view.png", blob_rgba(64, 64)).read_bytes()
    cluster.start_server()
    with cluster.client() as c:
        # No worker yet: a mesh job waits like any other.
        waiting = c.submit(render, OPTIONS, image_name="tree.png", mesh=mesh_in)
        assert waiting.state == wire.QUEUED
        cluster.start_worker()
        final = c.wait(waiting.id, timeout_s=60)
        assert final.state == wire.DONE, final
        result = c.fetch_mesh(waiting.id)
        # Mesh mode with a preset no worker runs in mesh mode: refused at once, saying why.
        with pytest.raises(ServerError) as e:
            c.submit(render, JobOptions(prompt="x", preset="fast"), mesh=mesh_in)
        assert e.value.code == "unsupported" and "preview" in str(e.value)
        # A mesh that cannot be animated is refused at submit.
        bad = wire.MeshInput(vertices=arrays.pack(np.full((3, 3), np.nan), "<f4"),
                             faces=arrays.pack(np.array([[0, 1, 2]]), "<u4"))
        with pytest.raises(ServerError) as e:
            c.submit(render, OPTIONS, mesh=bad)
        assert e.value.code == "invalid_mesh" and "NaN" in str(e.value)
    local = run_mesh_preview(MeshSource(v.astype(np.float32).astype(np.float64),
                                        f.astype(np.int64), pin=np.arange(4)), OPTIONS)
    assert np.array_equal(result.vertices, v.astype(np.float32))
    assert np.array_equal(result.faces, f.astype(np.uint32))
    assert np.array_equal(result.frames, local.frames)
    assert result.metadata["root"]["pinned"] and result.num_frames == OPTIONS.frames
    wait_until(lambda: "done" in cluster.log("worker0"), 10, what="the worker's log")
