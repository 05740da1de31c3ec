"""Argument types shared by the commands: argparse shows their message and exits 2."""

from __future__ import annotations

import argparse

from animate4d.protocol import keys


def address(text: str) -> str:
    """A server address: `host:port` or `tcp://host:port` (or `ipc://PATH`)."""
    try:
        return keys.endpoint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def bind_address(text: str) -> str:
    """An address to listen on, as `address` reads it."""
    try:
        return keys.endpoint(text, bind=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
