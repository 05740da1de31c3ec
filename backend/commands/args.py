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


def whole_number(lo: int, hi: int):
    """An argparse type: a whole number from lo to hi, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: a whole number from {lo} to {hi}")
        return value

    return parse


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value
