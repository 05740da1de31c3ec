"""Where the protocol comes from: the copy bundled in the built extension, else an installed
animate4d (a development checkout)."""

try:  # the built extension: scripts/build_addon.py copies protocol/ here
    from .protocol import a4d, arrays, client, keys, options, wire  # noqa: F401
except ImportError:  # pragma: no cover - development
    from animate4d.protocol import a4d, arrays, client, keys, options, wire  # noqa: F401

try:  # the motion edits (motion.py): the same two places
    from .protocol import dynamics, errors, spectrum  # noqa: F401
except ImportError:  # pragma: no cover - development
    from animate4d.protocol import dynamics, errors, spectrum  # noqa: F401
