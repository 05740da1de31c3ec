"""Text from elsewhere (a server, a worker, another client's prompt), made safe to print.

A prompt or an error message may hold terminal escapes (ANSI colours, OSC titles and links),
NUL, or bidirectional overrides that make a line read differently from what it says; printed
raw they act on the terminal. `printable` shows each such character as an escape instead.
"""

from __future__ import annotations

import unicodedata


def printable(text: object, limit: int | None = None) -> str:
    """`text` with every control or formatting character (C0, DEL, C1, bidi overrides,
    zero-width marks, line breaks) written as a backslash escape; cut to `limit` characters."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "..."
    out = []
    for ch in s:
        if ch == "\\" or not _safe(ch):
            code = ord(ch)
            out.append("\\\\" if ch == "\\" else f"\\x{code:02x}" if code < 0x100
                       else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _safe(ch: str) -> bool:
    # Cc: C0, DEL and C1 controls; Cf: bidi overrides and isolates, zero-width joiners;
    # Cs/Co/Cn: surrogates, private use, unassigned; Zl/Zp: line and paragraph separators.
    category = unicodedata.category(ch)
    return category[0] != "C" and category not in ("Zl", "Zp")
