"""Hostile input against a live server: garbage, lies and the wrong keys."""

import os
import random
import subprocess
import sys

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from animate4d.protocol import keys, wire
from animate4d.protocol.client import Client, ConnectionLost, ServerError
from animate4d.protocol.options import JobOptions
from tests.backend.cluster import Cluster, free_port
from tests.conftest import blob_rgba, write_png


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("fuzz") / "store")
    c.start_server()
    c.client().close()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(c.client_addr)
    yield c, sock
    sock.close(0)
    c.stop()


def _send(sock, stats, data: bytes) -> None:
    """Send one message and count its reply, waiting for it: the server drops replies to a
    client that lets more than a few pile up unread, so counts taken at full speed would
    depend on timing."""
    sock.send(data)
    stats["sent"] += 1
    answered = False
    while sock.poll(0 if answered else 2000):
        env, body = wire.decode(sock.recv())
        stats["errors" if isinstance(body, wire.Error) else "other"] += 1
        answered = True
    stats["silent"] += not answered


def _still_serving(sock) -> bool:
    """A ping is answered. The server drops replies to a client that has let too many pile
    up unread: such a client asks again, and so does this."""
    for attempt in range(3):
        sock.send(wire.encode(wire.Ping(), id=f"alive-{attempt}"))
        while sock.poll(5000):
            env, body = wire.decode(sock.recv())
            if env.re == f"alive-{attempt}":
                return isinstance(body, wire.Pong)
    return False


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20,
)
types = st.sampled_from(sorted(wire.BODIES) + ["", "x", "submitt"])


def _fuzzed(live, strategies: dict, build) -> dict:
    """Send 1,500 hypothesis-drawn messages (`build(**drawn)` -> bytes) to the live server,
    each awaiting its reply: the server must still be up and serving, and must have answered
    every one, nearly all with an error. Returns the counts."""
    c, sock = live
    stats = {"sent": 0, "errors": 0, "other": 0, "silent": 0}

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(**strategies)
    def send(**drawn):
        _send(sock, stats, build(**drawn))

    send()
    assert c.server.poll() is None, "the server died under fuzzed input"
    assert _still_serving(sock)
    assert stats["sent"] >= 1000 and stats["silent"] == 0, stats
    assert stats["errors"] > 0.9 * stats["sent"], stats
    return stats


def test_fuzz_envelopes_with_hostile_bodies(live):
    def build(type_, body, version, job):
        doc = {"v": version, "type": type_, "id": "f", "body": body, "job": job}
        return msgpack.packb(doc, use_bin_type=True)

    _fuzzed(live, dict(type_=types, body=msgpack_values,
                       version=st.sampled_from([1, 1, 1, 0, 2, -1]),
                       job=st.none() | st.text(max_size=80)), build)


def test_fuzz_random_bytes(live):
    stats = _fuzzed(live, dict(data=st.binary(max_size=300)), lambda data: data)
    assert stats["errors"] == stats["sent"], stats


def test_fuzz_crafted_attacks_then_server_is_healthy(live, tmp_path):
    c, sock = live
    stats = {"sent": 0, "errors": 0, "other": 0, "silent": 0}
    rng = random.Random(0)
    valid = wire.encode(wire.Submit(image=b"\x89PNG\r\n", options=JobOptions()))
    attacks = [
        b"\x91" * 200_000 + b"\x00",                      # deep nesting
        b"\xdd\xff\xff\xff\xff",                            # array claiming 4G items
        b"\xc6\x7f\xff\xff\xff" + b"x" * 10,                # bin claiming 2 GiB
        b"\xdf\xff\xff\xff\xff",                            # map claiming 4G entries
        msgpack.packb({"v": 1, "type": "fetch", "id": "a", "job": "../../etc/passwd",
                       "body": {"offset": -5, "length": 2**62}}),
        msgpack.packb({"v": 1, "type": "status", "id": "a", "job": "\x00" * 40}),
        msgpack.packb({"v": 1, "type": "heartbeat", "id": "a"}),   # a worker message
        msgpack.packb({"v": 1, "type": "chunk", "id": "a", "job": "x" * 22,
                       "body": {"offset": 0, "total": 1, "data": b"x"}}),
    ]
    attacks += [valid[: rng.randrange(1, len(valid))] for _ in range(200)]  # truncations
    attacks += [bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.05 else b
                      for b in valid) for _ in range(200)]          # bit flips
    before = rss_bytes(c.server.pid)
    for data in attacks:
        _send(sock, stats, data)
    # Several frames at once, and an oversized message (the socket drops the peer).
    sock.send_multipart([b"a", b"b", b"c"])
    big = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(c.client_addr)
    big.send(b"\x00" * (73 * 1024 * 1024))
    big.close(0)

    assert stats == {"sent": len(attacks), "errors": len(attacks), "other": 0, "silent": 0}
    assert _still_serving(sock)
    assert c.server.poll() is None
    assert rss_bytes(c.server.pid) - before < 150 * 2**20
    # A normal job still completes.
    c.start_worker()
    with c.client() as client:
        png = write_png(tmp_path / "c.png", blob_rgba(120, 140)).read_bytes()
        job = client.submit(png, JobOptions(frames=3, mesh_resolution=48))
        assert client.wait(job.id, timeout_s=60).state == wire.DONE


# -- CURVE ------------------------------------------------------------------------------
def _keys(tmp_path):
    d = tmp_path / "keys"
    run = lambda *a: subprocess.run([sys.executable, "-m", "animate4d.backend", "keys", *a],  # noqa: E731
                                    capture_output=True, text=True, check=True)
    run("server", str(d))
    run("client", str(d), "alice")
    run("client", str(d), "bob")
    run("client", str(d), "root", "--admin")
    run("client", str(d), "w", "--worker", "--out", str(d / "workers"))
    keys.generate(tmp_path / "outsider", "eve")  # a valid pair the server never allowed
    return d


def test_curve_keeps_clients_apart(tmp_path):
    d = _keys(tmp_path)
    cluster = Cluster(tmp_path / "store", keys=d)
    try:
        cluster.start_server()
        cluster.start_worker()
        server_key = keys.load_public(d / "server.key")

        def client(path, timeout=10.0):
            return cluster.client(server_key=server_key, keypair=keys.load_keypair(path),
                                  timeout_s=timeout)

        png = write_png(tmp_path / "c.png", blob_rgba(120, 140)).read_bytes()
        with client(d / "issued" / "alice.key_secret") as alice:
            assert not alice.welcome.admin
            job = alice.submit(png, JobOptions(frames=3, mesh_resolution=48))
            assert alice.wait(job.id, timeout_s=60).state == wire.DONE
        with client(d / "issued" / "bob.key_secret") as bob:
            assert job.id not in [j.id for j in bob.list()]
            for call in (bob.status, bob.cancel, bob.fetch, bob.attach, bob.delete):
                with pytest.raises(ServerError) as err:
                    call(job.id)
                assert err.value.code == "not_found"  # indistinguishable from no such job
        with client(d / "issued" / "root.key_secret") as root:
            assert root.welcome.admin
            assert job.id in [j.id for j in root.list()]
            assert root.fetch_mesh(job.id).num_frames == 3

        # A key the server never allowed, and no key at all: no answer, nothing learned.
        eve = Client(cluster.client_addr, server_key=server_key,
                     keypair=keys.load_keypair(tmp_path / "outsider" / "eve.key_secret"),
                     timeout_s=2.0, reconnect_tries=1)
        with pytest.raises(ConnectionLost):
            eve.connect()
        plain = Client(cluster.client_addr, timeout_s=2.0, reconnect_tries=1)
        with pytest.raises(ConnectionLost):
            plain.connect()
    finally:
        cluster.stop()


def test_server_refuses_an_open_address_without_curve(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "animate4d.backend", "serve", "--bind",
         f"tcp://0.0.0.0:{free_port()}", "--store", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "refusing" in r.stderr and "--keys" in r.stderr


def test_client_refuses_a_remote_server_without_keys():
    with pytest.raises(Exception, match="server key"):
        Client("tcp://192.0.2.1:5555")  # never contacted: refused before any connection


def test_key_files_are_private(tmp_path):
    d = _keys(tmp_path)
    assert oct(os.stat(d / "server.key_secret").st_mode & 0o777) == "0o600"
