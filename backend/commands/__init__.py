"""The `animate4d` subcommands, one module per group; `backend/cli.py` assembles them."""
