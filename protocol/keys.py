"""CURVE key files (ZeroMQ's certificate format, as `animate4d keys` writes them).

NAME.key holds a public key; NAME.key_secret holds the public and the secret key. Give the
server's NAME.key to clients and workers; keep every .key_secret private.
"""

from __future__ import annotations

import os
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
    public, secret = zmq.auth.create_certificates(str(d), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


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


def is_loopback(address: str) -> bool:
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def apply_client_curve(sock: zmq.Socket, server_public: bytes, keypair: tuple[bytes, bytes]):
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = keypair
