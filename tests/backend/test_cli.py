"""The `animate4d` command as a user runs it: real subprocesses, exit codes and files."""

import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
from PIL import Image, ImageSequence

from animate4d.protocol import a4d
from tests.backend.helpers import reference_iou
from tests.conftest import blob_rgba, write_png


def animate4d(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "animate4d.backend", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_run_writes_the_files_and_prints_their_paths(tmp_path):
    rgba = blob_rgba(300, 360)
    png = write_png(tmp_path / "creature.png", rgba)
    out = tmp_path / "out"
    r = animate4d("run", png, "--prompt", "a creature is bouncing", "--preset", "preview",
                  "--frames", 8, "--fps", 8, "--out", out)
    assert r.returncode == 0, r.stderr
    paths = r.stdout.strip().splitlines()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["result.a4d", "result.glb", "preview.gif",
                                                     "mask.png"]
    mesh = a4d.load(out / "result.a4d")
    assert mesh.num_frames == 8 and mesh.fps == 8.0
    assert mesh.metadata["motion"]["modes"] == ["bounce"]
    assert reference_iou(mesh, rgba[..., 3] > 127) >= 0.9
    gif = Image.open(out / "preview.gif")
    assert sum(1 for _ in ImageSequence.Iterator(gif)) == 8
    assert "geometry" in r.stderr  # progress was shown


def test_run_with_a_camera_file_and_flags(tmp_path):
    from animate4d.protocol import Camera

    png = write_png(tmp_path / "c.png", blob_rgba(320, 240, centre=(120, 130), scale=0.6))
    cam = Camera.look_at((1.0, -4.0, 1.5), (0, 0, 0.5), fov_deg=30, resolution=(640, 480))
    (tmp_path / "cam.json").write_text(__import__("json").dumps(cam.to_dict()))
    r = animate4d("run", png, "--prompt", "x", "--camera", tmp_path / "cam.json",
                  "--target", "0,0,0.5", "--motion", "twist,nod", "--amplitude", "0.5",
                  "--no-preview", "--quiet", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    mesh = a4d.load(tmp_path / "o" / "result.a4d")
    assert mesh.metadata["motion"]["modes"] == ["twist", "nod"]
    assert not (tmp_path / "o" / "preview.gif").exists()
    mask = np.asarray(Image.open(png))[..., 3] > 127
    assert reference_iou(mesh, mask) >= 0.9


def test_demo_covers_the_bundled_example(tmp_path):
    r = animate4d("demo", "--out", tmp_path / "demo", "--frames", 6, "--no-preview")
    assert r.returncode == 0, r.stderr
    mesh = a4d.load(tmp_path / "demo" / "result.a4d")
    assert mesh.metadata["prompt"] == "a panda is dancing"
    with resources.files("animate4d.backend").joinpath("examples", "panda.png").open("rb") as f:
        mask = np.asarray(Image.open(f))[..., 3] > 127
    assert reference_iou(mesh, mask) >= 0.9


def _png_bytes(w, h, colour=(200, 200, 200, 255)):
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.png", b"just some text", "not an image"),
        ("empty.png", b"", "empty"),
        ("tiny.png", _png_bytes(1, 1), "at least 16 px"),
        ("clear.png", _png_bytes(64, 64, (0, 0, 0, 0)), "no foreground"),
        ("flat.png", _png_bytes(64, 64), "no foreground"),
    ],
)
def test_bad_images_fail_cleanly(tmp_path, name, data, message):
    p = tmp_path / name
    p.write_bytes(data)
    r = animate4d("run", p, "--prompt", "x", "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "result.a4d").exists()


def test_huge_image_is_refused_from_its_header(tmp_path):
    from tests.backend.test_image_io import _png_header_only

    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(30000, 30000))
    r = animate4d("run", p, "--prompt", "x", "--quiet", "--out", tmp_path / "o")
    assert r.returncode == 2 and "megapixels" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0"], "frames"),
        (["--camera", "{bad json"], "not valid JSON"),
        (["--target", "1,2"], "target"),
        (["--motion", "moonwalk"], "choose from"),
        (["--camera", "@/nonexistent/cam.json"], "--camera /nonexistent/cam.json: cannot read"),
        (["--camera", "/nonexistent/cam.json"], "--camera /nonexistent/cam.json: cannot read"),
        (["--mesh-resolution", "9"], "--mesh-resolution is 9; allowed: 32..512"),
        (["--motion-terms", "17"], "--motion-terms is 17"),
        (["--bogus"], "animate4d run: error: unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_fail_cleanly(tmp_path, blob_png, args, message):
    r = animate4d("run", blob_png, "--prompt", "x", "--quiet", "--out", tmp_path / "o", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_out_must_be_a_folder(tmp_path, blob_png):
    (tmp_path / "file").write_text("x")
    r = animate4d("run", blob_png, "--prompt", "x", "--quiet", "--out", tmp_path / "file")
    assert r.returncode == 2 and "not a folder" in r.stderr


@pytest.mark.parametrize("cmd", [[], ["run"], ["demo"]])
def test_help_is_complete(cmd):
    r = animate4d(*cmd, "--help")
    assert r.returncode == 0
    if cmd:
        for flag in ("--prompt", "--frames", "--fps", "--motion", "--amplitude", "--speed",
                     "--camera", "--target", "--out"):
            assert flag in r.stdout, flag
    else:
        assert "run" in r.stdout and "demo" in r.stdout


def test_a_worker_share_of_the_gpu_is_checked_before_it_joins():
    import torch

    r = animate4d("worker", "--gpu-memory-gib", "0")
    assert r.returncode == 2 and "a whole number from 1 to 1024" in r.stderr, r.stderr
    if torch.cuda.is_available():
        r = animate4d("worker", "--gpu-memory-gib", "1024", "--server", "tcp://127.0.0.1:9")
        assert r.returncode == 2 and "--gpu-memory-gib 1024: more than this GPU has" in r.stderr
    else:
        r = animate4d("worker", "--gpu-memory-gib", "20", "--server", "tcp://127.0.0.1:9")
        assert r.returncode == 2 and "no CUDA GPU to share" in r.stderr, r.stderr


def test_run_with_a_bad_device_says_so_and_leaves_no_output_folder(tmp_path, tiny_models):
    out = tmp_path / "out"
    png = write_png(tmp_path / "c.png", blob_rgba(160, 120, centre=(80, 60), scale=0.3))
    r = animate4d("run", str(png), "--prompt", "a panda is dancing",
                  "--preset", "fast", "--models", tiny_models, "--max-steps", "1",
                  "--device", "banana", "--out", str(out))
    assert r.returncode == 2 and "--device banana: not a device name" in r.stderr, r.stderr
    assert not out.exists()




def test_bench_gpu_measures_every_stage_and_projects_each_preset(tiny_models, tmp_path,
                                                                 capsys):
    """`animate4d bench gpu` drives the method's own stages (here on tiny models on the CPU):
    a time per step for every stepped stage and a projection for both GPU presets, whose
    totals follow their schedules (paper has more steps of every stage than fast)."""
    import json

    from animate4d.backend.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "gpu", "--models", str(tiny_models), "--device", "cpu",
                 "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stages"]) == {"preprocess", "textual_inversion", "static", "dynamic",
                                     "refine", "export"}
    assert all(result["stages"][s]["ms_per_step"] > 0
               for s in ("textual_inversion", "static", "dynamic", "refine"))
    paper, fast = result["presets"]["paper"], result["presets"]["fast"]
    assert paper["minutes"]["dynamic"] > fast["minutes"]["dynamic"] > 0
    assert paper["total_minutes"] > fast["total_minutes"]
    assert "paper:" in capsys.readouterr().err


@pytest.mark.parametrize("image, message", [("missing.png", "missing.png: no such file"),
                                            (".", "is a folder, not an image file")])
def test_submit_names_a_missing_image_before_reaching_any_server(tmp_path, image, message):
    r = animate4d("submit", image, "--prompt", "x", "--server", "127.0.0.1:9", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_addresses_are_read_as_people_type_them():
    from tests.backend.cluster import free_port

    r = animate4d("status", "--server", f"localhost:{free_port()}", "--timeout", "1")
    assert r.returncode == 4 and "nothing is listening there" in r.stderr, r.stderr
    r = animate4d("status", "--server", "localhost")
    assert r.returncode == 2 and "not an address with a port" in r.stderr
    r = animate4d("serve", "--bind", "http://0.0.0.0:80")
    assert r.returncode == 2 and "use tcp://HOST:PORT" in r.stderr


def test_serve_on_a_port_in_use_says_so(tmp_path):
    import socket

    from tests.backend.cluster import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = animate4d("serve", "--bind", f"127.0.0.1:{port}", "--workers-bind",
                      f"127.0.0.1:{free_port()}", "--store", tmp_path / "s")
    assert r.returncode == 2 and "cannot listen on" in r.stderr and "--bind" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_client_is_told_keys_were_refused_apart_from_no_server(tmp_path):
    from tests.backend.cluster import Cluster

    keys = tmp_path / "keys"
    assert animate4d("keys", "server", keys).returncode == 0
    assert animate4d("keys", "client", keys, "alice").returncode == 0
    assert animate4d("keys", "server", tmp_path / "other").returncode == 0
    assert animate4d("keys", "client", tmp_path / "other", "mallory").returncode == 0
    cluster = Cluster(tmp_path / "store", keys=keys)
    cluster.start_server()
    try:
        server = ["--server", cluster.client_addr, "--timeout", "3"]
        alice = ["--server-key", keys / "server.key",
                 "--key", keys / "issued" / "alice.key_secret"]
        r = animate4d("status", *server, *alice)
        for _ in range(20):  # the server may still be starting
            if r.returncode == 0:
                break
            r = animate4d("status", *server, *alice)
        assert r.returncode == 0, r.stderr
        r = animate4d("status", *server)
        assert r.returncode == 4 and "did not accept a connection without keys" in r.stderr
        r = animate4d("status", *server, "--server-key", keys / "server.key",
                      "--key", tmp_path / "other" / "issued" / "mallory.key_secret")
        assert r.returncode == 4 and "did not accept this client's keys" in r.stderr
    finally:
        cluster.stop()


def test_a_failed_run_leaves_no_empty_output_folder(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"PNG? no")
    r = animate4d("run", tmp_path / "bad.png", "--prompt", "x", "--out", tmp_path / "o")
    assert r.returncode == 2 and not (tmp_path / "o").exists(), r.stderr


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path, blob_png):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "animate4d.backend", "run", blob_png,
                             "--prompt", "x", "--frames", "400", "--out", tmp_path / "o"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    line = ""
    while "geometry" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()  # progress lines: the job is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert "terminate called" not in err and "Traceback" not in err


def test_jobs_are_named_by_the_start_of_their_id_as_the_server_logs_them(tmp_path, blob_png):
    from tests.backend.cluster import Cluster

    cluster = Cluster(tmp_path / "store")
    cluster.start_server()
    try:
        server = ["--server", cluster.client_addr]
        cluster.client().close()  # the server answers
        r = animate4d("submit", blob_png, "--prompt", "x", *server)
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().splitlines()[-1]
        r = animate4d("status", job[:8], *server)
        assert r.returncode == 0 and r.stdout.startswith("queued") and job in r.stdout, r.stderr
        r = animate4d("cancel", job[:8].upper(), *server)
        assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
        r = animate4d("status", "ffff" if not job.startswith("ffff") else "0000", *server)
        assert r.returncode == 2 and "no job of yours begins with" in r.stderr
        r = animate4d("delete", "xyz", *server)
        assert r.returncode == 2 and "no job has the id 'xyz'" in r.stderr
    finally:
        cluster.stop()


def test_a_stopped_gpu_run_resumes_from_its_checkpoints_with_the_same_command(
        tiny_models, tmp_path, monkeypatch, capsys):
    from animate4d.backend.cli import main
    from animate4d.backend.pipeline import stages

    png = write_png(tmp_path / "c.png", blob_rgba(160, 120, centre=(80, 60), scale=0.3))
    out = tmp_path / "out"
    argv = ["run", str(png), "--prompt", "a panda is dancing", "--preset", "fast",
            "--models", str(tiny_models), "--max-steps", "2", "--frames", "4",
            "--device", "cpu", "--no-preview", "--quiet", "--out", str(out)]
    real_dynamic, real_static = stages.dynamic_step, stages.static_step
    calls = {"static": 0, "dynamic": 0}

    def stop_at_dynamic(*a, **k):
        calls["dynamic"] += 1
        if calls["dynamic"] == 2:  # after the first dynamic step and its checkpoint
            raise KeyboardInterrupt
        return real_dynamic(*a, **k)

    def count_static(*a, **k):
        calls["static"] += 1
        return real_static(*a, **k)

    monkeypatch.setattr(stages, "dynamic_step", stop_at_dynamic)
    monkeypatch.setattr(stages, "static_step", count_static)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "the same command resumes from the last one" in err, err
    assert (out / ".checkpoints").is_dir() and not (out / "result.a4d").exists()
    assert calls["static"] == 2

    monkeypatch.setattr(stages, "dynamic_step", real_dynamic)
    calls.update(static=0)
    assert main(argv) == 0
    assert "resuming from the checkpoints" in capsys.readouterr().err
    assert calls["static"] == 0  # the static stage was done: not run again
    mesh = a4d.load(out / "result.a4d")
    assert mesh.num_frames == 4 and np.isfinite(mesh.frames).all()
    assert not (out / ".checkpoints").exists()  # the result is written: nothing to resume


def test_checkpoints_of_other_inputs_are_not_resumed(tmp_path):
    from animate4d.backend.jobs.checkpoints import RunCheckpoints, fingerprint

    one, other = fingerprint(b"image", {"prompt": "a"}), fingerprint(b"image", {"prompt": "b"})
    assert one != other and one == fingerprint(b"image", {"prompt": "a"})
    store = RunCheckpoints(tmp_path / "c", one)
    assert not store.holds
    store.put("a124/fields", b"123")
    assert RunCheckpoints(tmp_path / "c", one).get("a124/fields") == b"123"
    again = RunCheckpoints(tmp_path / "c", other)
    assert not again.holds and again.get("a124/fields") is None
    again.remove()
    assert not (tmp_path / "c").exists()
