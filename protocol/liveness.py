"""Connection liveness that does not need Python to run: ZMTP heartbeats.

libzmq's own I/O thread sends a PING on a connection that has been quiet for `interval_s`,
answers the peer's PINGs, and closes a connection that has heard nothing for `timeout_s`
(TTL tells the peer to do the same). None of it takes the GIL, so a job thread that holds the
GIL for seconds (a long scipy or C call, torch.compile) does not make its worker look dead,
while a killed, frozen or unplugged peer is still noticed within `timeout_s`. The server sees
a closed worker connection as a failed send to its routing id (ROUTER_MANDATORY:
EHOSTUNREACH); a kill -9 closes the connection at once.
"""

from __future__ import annotations

import zmq


def zmtp_heartbeats(sock: zmq.Socket, interval_s: float, timeout_s: float) -> None:
    """Turn ZMTP heartbeats on for `sock`; call before bind or connect."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(interval_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(timeout_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TTL, max(100, int(timeout_s * 1000)))
