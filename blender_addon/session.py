"""The network side of the extension: one background thread, two queues.

Blender's main thread never waits on the network. Operators put commands in `commands`; the
thread talks to the server with the shared protocol client and puts what happens in `events`;
`drain()` (called by a timer in Blender, directly by tests) applies the events to the scene.
Nothing in the thread touches bpy.
"""

from __future__ import annotations

import queue
import threading
import time

from .deps import client as client_mod
from .deps import wire


class Session:
    def __init__(self, address: str, *, server_key=None, keypair=None, timeout_s: float = 10.0):
        self.address = address
        self.server_key, self.keypair, self.timeout_s = server_key, keypair, timeout_s
        self.commands: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="animate4d-session", daemon=True)
        self.thread.start()

    # -- called from Blender's main thread ---------------------------------------------
    def submit(self, token: str, image: bytes, image_name: str, options, mesh=None) -> None:
        self.commands.put(("submit", token, (image, image_name, options, mesh)))

    def cancel(self, job: str) -> None:
        self.commands.put(("cancel", job, None))

    def attach(self, job: str) -> None:
        self.commands.put(("attach", job, None))

    def stop(self) -> None:
        self._stop.set()

    # -- the thread ---------------------------------------------------------------------
    def _connect(self):
        c = client_mod.Client(self.address, server_key=self.server_key, keypair=self.keypair,
                              timeout_s=self.timeout_s, name="animate4d-blender",
                              reconnect_tries=3)
        welcome = c.connect()
        self.events.put(("connected", None, welcome))
        return c

    def _run(self) -> None:
        c, delay = None, 1.0
        while not self._stop.is_set():
            try:
                if c is None:
                    c = self._connect()
                    delay = 1.0
                self._do_commands(c)
                for job, body in c.events(timeout_s=0.2):
                    self._on_event(c, job, body)
                    if not self.commands.empty():
                        break
            except client_mod.ConnectionLost as e:
                self.events.put(("offline", None, f"{e}"))
                if c is not None:
                    c.close()
                c = None
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as e:  # never let the thread die silently
                self.events.put(("error", None, f"{type(e).__name__}: {e}"))
                time.sleep(0.5)
        if c is not None:
            c.close()

    def _do_commands(self, c) -> None:
        while True:
            try:
                kind, key, payload = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "submit":
                    image, name, options, mesh = payload
                    info = c.submit(image, options, image_name=name, mesh=mesh)
                    self.events.put(("accepted", key, info))
                elif kind == "cancel":
                    self.events.put(("state", key, c.cancel(key)))
                elif kind == "attach":
                    info = c.attach(key)
                    self.events.put(("state", key, info))
                    if info.state == wire.DONE:
                        self._fetch(c, key)
            except client_mod.ServerError as e:
                self.events.put(("job_error", key, (e.code, str(e))))
            except client_mod.ConnectionLost:
                self.commands.put((kind, key, payload))  # try again once back online
                raise

    def _on_event(self, c, job: str, body) -> None:
        if isinstance(body, wire.JobState):
            self.events.put(("state", job, body.job))
            if body.job.state == wire.DONE:
                self._fetch(c, job)
        elif isinstance(body, wire.Progress):
            self.events.put(("progress", job, body))
        elif isinstance(body, wire.Preview):
            self.events.put(("preview", job, body.png))

    def _fetch(self, c, job: str) -> None:
        self.events.put(("result", job, c.fetch_mesh(job)))
