"""CURVE key files (ZeroMQ's certificate format, as `animate4d keys` writes them).

NAME.key holds a public key; NAME.key_secret holds the public and the secret key. Give the
server's NAME.key to clients and workers; keep every .key_secret private.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import zmq
import zmq.auth

from .errors import Animate4DError


class KeyFileError(Animate4DError):
    code = "bad_key"


def generate(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (d / f"{name}.key_secret").exists():
        raise KeyFileError(f"{d / (name + '.key_secret')} exists already; not overwriting it")
    public, secret = zmq.curve_keypair()
    secret_path, public_path = d / f"{name}.key_secret", d / f"{name}.key"
    # The secret is private from its first byte: created 0600, never widened then narrowed.
    _write_certificate(secret_path, public, secret, 0o600)
    _write_certificate(public_path, public, None, 0o644)
    return public_path, secret_path


def _write_certificate(path: Path, public: bytes, secret: bytes | None, mode: int) -> None:
    """ZeroMQ's certificate format (what zmq.auth.load_certificate reads)."""
    kind = "Secret" if secret is not None else "Public"
    lines = [f"#   ****  Generated on {time.strftime('%Y-%m-%d %H:%M:%S')} by animate4d  ****",
             f"#   ZeroMQ CURVE **{kind}** Certificate",
             "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."
             if secret is not None else "#   Exchange securely, or use a secure mechanism "
                                        "to verify the contents of this file after exchange.",
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists already; not overwriting it") from None
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def load_public(path: str | os.PathLike) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the public key {path}: {e}") from None
    return public


def load_keypair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the key pair {path}: {e}") from None
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key: give the .key_secret file")
    return public, secret


def load_curve_files(server_key_path, keypair_path):
    """(server public key, own key pair) from the two files, or (None, None) if neither is
    given; giving only one is an error."""
    if not server_key_path and not keypair_path:
        return None, None
    if not (server_key_path and keypair_path):
        raise KeyFileError("CURVE needs both the server's public key and your key pair",
                           hint="give --server-key and --key together")
    return load_public(server_key_path), load_keypair(keypair_path)


def public_keys_in(directory: str | os.PathLike) -> set[bytes]:
    d = Path(directory)
    if not d.is_dir():
        return set()
    return {load_public(p) for p in sorted(d.glob("*.key"))}


def endpoint(text: str, *, bind: bool = False) -> str:
    """A ZeroMQ address as a person types it: `host:port` means `tcp://host:port`; `ipc://`
    and `inproc://` pass as they are. ValueError says what is wrong with anything else."""
    text = text.strip()
    if text.startswith(("ipc://", "inproc://")):
        return text
    if "://" in text and not text.startswith("tcp://"):
        raise ValueError(f"{text!r}: use tcp://HOST:PORT (or ipc://PATH)")
    address = text if text.startswith("tcp://") else "tcp://" + text
    host, _, port = address[len("tcp://"):].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        example = "tcp://127.0.0.1:5555" if bind else "tcp://HOST:5555"
        raise ValueError(f"{text!r} is not an address with a port: e.g. {example}")
    return address


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address stays on this machine: ipc/inproc, `localhost`, or a loopback
    IP address (compared as an address: `tcp://127.evil.example` is a host name, not one)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://"):].rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (resolved elsewhere), an interface name or `*`


def apply_client_curve(sock: zmq.Socket, server_public: bytes, keypair: tuple[bytes, bytes]):
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = keypair
