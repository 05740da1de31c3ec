import threading

from animate4d.backend.jobs.checkpoints import MemoryCheckpoints
from animate4d.backend.preview.pipeline import run_preview
from animate4d.backend.server.scheduler import FairQueue
from animate4d.protocol import wire
from animate4d.protocol.options import JobOptions
from tests.backend.cluster import Cluster
from tests.conftest import blob_rgba, write_png


def test_owners_take_turns():
    q = FairQueue()
    for i in range(5):
        q.push("greedy", f"g{i}")
    q.push("modest", "m0")
    q.push("other", "o0")
    q.push("modest", "m1")
    order = [q.pop() for _ in range(8)]
    assert order == ["g0", "m0", "o0", "g1", "m1", "g2", "g3", "g4"]
    assert q.pop() is None


def test_positions_follow_the_pop_order_and_capabilities_are_respected():
    q = FairQueue()
    for job in ("a1", "a2", "b1"):
        q.push(job[0], job)
    assert q.positions() == {"a1": 0, "b1": 1, "a2": 2}
    assert q.pop(lambda j: j.startswith("b")) == "b1"  # a worker that can only run b's jobs
    q.push("a", "a0", front=True)  # a requeued job goes first
    assert q.pop() == "a0"
    assert q.remove("a2") and not q.remove("a2")
    assert len(q) == 1 and "a1" in q


def test_preview_resumes_from_its_checkpoints(tmp_path):
    png = write_png(tmp_path / "c.png", blob_rgba(160, 200)).read_bytes()
    opts = JobOptions(prompt="a dance", frames=16, mesh_resolution=64)
    store = MemoryCheckpoints()
    full = run_preview(png, opts, checkpoints=store)
    assert "base" in store and "frames_00000" in store and "frames_00014" in store
    # An attempt that died after the first four blocks of frames:
    partial = MemoryCheckpoints({k: v for k, v in store.items()
                                 if k == "base" or k < "frames_00008"})
    seen = []
    again = run_preview(b"not even needed", opts, lambda s, i, n: seen.append((s, i)), partial)
    assert [s for s, _ in seen if s != "motion"] == []  # no loading, no geometry
    assert min(i for s, i in seen if s == "motion") == 8
    assert again.frames.tobytes() == full.frames.tobytes()
    assert again.vertices.tobytes() == full.vertices.tobytes()


def test_the_server_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, animate4d.backend.server.server, animate4d.backend.cli as c;"
            "c.build_parser(); sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_many_clients_two_workers_nothing_lost_or_duplicated(tmp_path):
    """A small load: 8 clients submit 4 jobs each at once, 2 workers; every job done once."""
    cluster = Cluster(tmp_path / "store")
    try:
        cluster.start_server()
        cluster.start_worker()
        cluster.start_worker()
        png = write_png(tmp_path / "c.png", blob_rgba(64, 64)).read_bytes()
        opts = JobOptions(frames=2, mesh_resolution=32)
        jobs: dict[str, list[str]] = {}
        errors = []

        def client_session(n: int):
            try:
                with cluster.client(timeout_s=30) as c:
                    jobs[f"c{n}"] = [c.submit(png, opts, image_name=f"c{n}-{i}").id
                                     for i in range(4)]
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=client_session, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        all_ids = [j for ids in jobs.values() for j in ids]
        assert len(all_ids) == len(set(all_ids)) == 32
        with cluster.client(timeout_s=30) as c:
            for job in all_ids:
                assert c.wait(job, timeout_s=120).state == wire.DONE
            infos = c.list()
        assert sorted(i.id for i in infos) == sorted(all_ids)
        assert all(i.attempts == 1 for i in infos)  # each ran exactly once
        results = list((cluster.store / "jobs").glob("*/result.a4d"))
        assert len(results) == 32
    finally:
        cluster.stop()


def test_a_chatty_pipeline_is_coalesced_to_a_few_progress_events(tmp_path):
    """10,000 progress reports in a fraction of a second reach the client as a handful, and the
    last one (the stage's end) always arrives."""
    import numpy as np

    from animate4d.backend.server.server import Server
    from animate4d.backend.worker.worker import Worker
    from animate4d.protocol import AnimatedMesh
    from animate4d.protocol.client import Client
    from tests.backend.cluster import free_port

    attached = threading.Event()  # the job must not finish before the client follows it

    def chatty(image, options, progress, checkpoints):
        attached.wait(30)
        for i in range(10_001):
            progress("optimise", i, 10_000)
        v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
        return AnimatedMesh(vertices=v, faces=[[0, 1, 2]], frames=v[None])

    caddr, waddr = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    stop = threading.Event()
    server = Server(tmp_path / "store", caddr, waddr, log=lambda m: None)
    threading.Thread(target=server.run, args=(stop,), daemon=True).start()
    worker = Worker(waddr, pipelines={"preview": chatty}, log=lambda m: None)
    threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
    try:
        with Client(caddr, timeout_s=10) as c:
            png = write_png(tmp_path / "c.png", blob_rgba(64, 64)).read_bytes()
            job = c.submit(png, JobOptions(frames=1))
            c.attach(job.id)
            attached.set()
            steps = []
            final = c.wait(job.id, lambda j, b: steps.append(b.step)
                           if isinstance(b, wire.Progress) else None, timeout_s=30)
            assert final.state == wire.DONE
    finally:
        stop.set()
    assert 1 <= len(steps) <= 50, len(steps)
    assert steps[-1] == 10_000
